"""End-to-end training steps: reference vs patched, fp32 vs bf16 autocast vs fp16 with GradScaler.

One step = forward, cross-entropy, backward, AdamW step (fbdl_fast.speed.training_step) on a
realistic post batch: 32 posts x 128 tokens, lengths uniform in [64, 128]. One benchmark per
model times every variant in turns against the reference fp32 step (measure.time_in_turns: CUDA
events on a GPU) and records each variant's speedup over it:
- `reference` is the model as built with ModelConfig(fused=False), `patched` a copy after
  fbdl_fast.patch (fused LayerNorm and attention);
- AMP on CUDA is bf16 autocast and fp16 autocast with a GradScaler; on a CPU bf16 autocast, as
  measured even where the CPU has no native bf16 and AMP is slower.

Models: the three reference models (256-wide, 2 layers) and `bert-base`, a BERT-base-sized
encoder (the Transformer at d = 768, 12 heads, feed-forward 3,072, 12 layers). Before anything
is timed the patched model's logits must match the reference's (fp32, eval).

Under --benchmark-disable on a CPU (the test command's smoke run) each model is tiny and each
variant runs once; a timed CPU run (`fbdl-fast bench`) leaves bert-base out.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fbdl_fast import ModelConfig, create_model, patch
from fbdl_fast.speed import training_step
from measure import CUDA, dtype_name, record, synchronized, time_in_turns

VOCAB = 30_522  # a BERT-sized vocabulary
DEVICE = "cuda" if CUDA else "cpu"
AMP_DTYPES = (torch.bfloat16, torch.float16) if CUDA else (torch.bfloat16,)
VARIANTS = [(kind, dtype) for dtype in (None, *AMP_DTYPES) for kind in ("reference", "patched")]
MODELS = {  # name: (architecture, sizes)
    "transformer": ("transformer", {"input_dim": 256, "hidden_dim": 512, "num_layers": 2}),
    "lstm": ("lstm", {"input_dim": 256, "hidden_dim": 512, "num_layers": 2}),
    "cnn": ("cnn", {"input_dim": 256, "hidden_dim": 512, "num_layers": 2}),
    "bert-base": ("transformer", {"input_dim": 768, "hidden_dim": 3072, "num_layers": 12}),
}
REPEATS = 20 if CUDA else 3  # a CPU step of these models takes 0.5-6 s
TINY = {"input_dim": 32, "hidden_dim": 32, "num_layers": 1}
# Patched and reference logits, fp32: on a CPU both run torch's code; on CUDA the kernels' own
# rounding (fp32 attention dots may use TF32) through up to 12 layers.
LOGIT_TOLERANCE = 2e-2 if CUDA else 1e-4


def _config(name: str, smoke: bool) -> ModelConfig:
    sizes = TINY if smoke else MODELS[name][1]
    heads = 12 if sizes["input_dim"] == 768 else (2 if smoke else 4)
    length = 16 if smoke else 128
    return ModelConfig(
        **sizes, num_heads=heads, dropout=0.1, vocab_size=VOCAB, num_classes=4,
        max_seq_length=length, fused=False,
    )  # fmt: skip


def _batch(batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]  # (B, L), True on real tokens
    ids = torch.randint(1, VOCAB, (batch, length), generator=generator) * mask
    labels = torch.randint(0, 4, (batch,), generator=generator)
    return ids.to(DEVICE), mask.to(DEVICE), labels.to(DEVICE)


def _max_logit_difference(reference, patched, ids, mask) -> float:
    reference.eval(), patched.eval()
    with torch.no_grad():
        return (reference(ids, mask) - patched(ids, mask)).abs().max().item()


def _variant_name(kind: str, amp_dtype) -> str:
    return f"{kind} {dtype_name(amp_dtype) if amp_dtype else 'fp32'}"


@pytest.mark.parametrize("name", list(MODELS))
def bench_training_step(benchmark, name: str) -> None:
    smoke = benchmark.disabled and not CUDA
    if name == "bert-base" and not (CUDA or smoke):
        pytest.skip(
            "bert-base is timed on CUDA only: 4 variants of a 12-layer step take minutes here"
        )
    config = _config(name, smoke)
    ids, mask, labels = _batch(4, 16) if smoke else _batch(32, 128)
    reference = create_model(MODELS[name][0], config).to(DEVICE)
    patched = copy.deepcopy(reference)
    swapped = patch(patched)
    logit_diff = _max_logit_difference(reference, patched, ids, mask)
    assert logit_diff <= LOGIT_TOLERANCE, f"patched {name} logits off by {logit_diff}"

    steps = {
        _variant_name(kind, amp_dtype): training_step(
            copy.deepcopy(patched if kind == "patched" else reference),
            ids,
            mask,
            labels,
            amp_dtype=amp_dtype,
        )
        for kind, amp_dtype in VARIANTS
    }
    for variant, step in steps.items():  # one step each, before any timing: finite losses
        loss = step()
        assert math.isfinite(loss), f"{name} {variant}: non-finite loss {loss}"
    timings = time_in_turns(
        steps, repeats=1 if smoke else REPEATS, warmup=0 if smoke else 1, host=False
    )
    baseline = timings["reference fp32"].median_s
    rows = {}
    for variant, timing in timings.items():
        rows[variant] = row = {
            "model": name,
            "variant": variant,
            "batch": list(ids.shape),
            "device": DEVICE,
            "parameters": sum(p.numel() for p in reference.parameters()),
            "patched_layers": swapped.summary(),
            **timing.summary("step"),
            "speedup": baseline / timing.median_s,
            "max_logit_diff_patched_vs_reference": logit_diff,
        }
        record("models", row)
    benchmark.group = f"train step {name}"
    benchmark.extra_info.update(
        model=name, role="candidate", variant="patched fp32", device=DEVICE, variants=rows,
        speedup=rows["patched fp32"]["speedup"],
    )  # fmt: skip
    benchmark.pedantic(synchronized(steps["patched fp32"]), rounds=1, warmup_rounds=0)
