"""End-to-end training steps of the three reference models: reference vs patched, fp32 vs AMP.

One step = forward, loss, backward, optimizer step, at a realistic post batch (32 posts x 128
tokens, a quarter of each row padding on average). Every benchmark in a group records its
`variant`; `fbdl-fast bench` divides the reference fp32 time by each variant's time measured in
the same run. On CUDA, AMP is fp16 with a GradScaler and bf16; on a CPU it is bf16 autocast,
reported as measured even where the CPU has no native bf16 and AMP is slower.

Under --benchmark-disable (the test command's smoke run) each step runs once on a tiny batch.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fbdl_fast import ModelConfig, create_model, patch
from fbdl_fast.speed import amp_dtype_for, interleaved_medians, training_step

VOCAB = 30_522  # a BERT-sized vocabulary
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
AMP_DTYPES = (torch.float16, torch.bfloat16) if DEVICE == "cuda" else (amp_dtype_for(DEVICE),)
VARIANTS = [("reference", None), ("patched", None)] + [
    (kind, dtype) for dtype in AMP_DTYPES for kind in ("reference", "patched")
]


def _config(smoke: bool) -> ModelConfig:
    if smoke:  # one untimed step that exercises the same code on a tiny model
        return ModelConfig(
            input_dim=32,
            hidden_dim=32,
            num_layers=1,
            num_heads=2,
            vocab_size=VOCAB,
            num_classes=4,
            max_seq_length=16,
            fused=False,
        )
    return ModelConfig(
        input_dim=256,
        hidden_dim=512,
        num_layers=2,
        num_heads=4,
        dropout=0.1,
        vocab_size=VOCAB,
        num_classes=4,
        max_seq_length=128,
        fused=False,
    )


def _batch(batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]  # (B, L), True on real tokens
    ids = torch.randint(1, VOCAB, (batch, length), generator=generator) * mask
    labels = torch.randint(0, 4, (batch,), generator=generator)
    return ids.to(DEVICE), mask.to(DEVICE), labels.to(DEVICE)


def _models(name: str, smoke: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    reference = create_model(name, _config(smoke)).to(DEVICE)
    patched = copy.deepcopy(reference)
    patch(patched)
    return reference, patched


def _max_logit_difference(
    reference: torch.nn.Module, patched: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor
) -> float:
    reference.eval(), patched.eval()
    with torch.no_grad():
        return (reference(ids, mask) - patched(ids, mask)).abs().max().item()


@pytest.mark.parametrize("name", ["transformer", "lstm", "cnn"])
@pytest.mark.parametrize(
    ("kind", "amp_dtype"),
    VARIANTS,
    ids=[f"{k}-{str(d).removeprefix('torch.') if d else 'fp32'}" for k, d in VARIANTS],
)
def bench_training_step(benchmark, name: str, kind: str, amp_dtype: torch.dtype | None) -> None:
    smoke = benchmark.disabled
    batch = _batch(4, 16) if smoke else _batch(32, 128)
    reference, patched = _models(name, smoke)
    ids, mask, labels = batch
    logit_diff = _max_logit_difference(reference, patched, ids, mask)
    model = patched if kind == "patched" else reference
    step = training_step(model, ids, mask, labels, amp_dtype=amp_dtype)

    benchmark.group = f"train step {name}"
    benchmark.extra_info.update(
        model=name,
        variant=f"{kind} {str(amp_dtype).removeprefix('torch.') if amp_dtype else 'fp32'}",
        role="reference" if (kind, amp_dtype) == ("reference", None) else "candidate",
        batch=list(ids.shape),
        device=DEVICE,
        max_logit_diff_patched_vs_reference=logit_diff,
    )
    is_reference = (kind, amp_dtype) == ("reference", None)
    loss = benchmark.pedantic(step, rounds=1 if smoke else 5, warmup_rounds=0 if smoke else 1)
    assert math.isfinite(loss), f"training step produced a non-finite loss {loss}"
    if not (smoke or is_reference):
        # The speedup the report shows: this step and a reference fp32 step timed in turns, so
        # that the machine's drift between two separate benchmarks cannot pass for a speedup.
        base = training_step(copy.deepcopy(reference), ids, mask, labels)
        seconds = interleaved_medians({"reference": base, "candidate": step}, repeats=3)
        benchmark.extra_info["speedup"] = seconds["reference"] / seconds["candidate"]
