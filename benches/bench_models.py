"""End-to-end training steps: reference vs patched, fp32 vs bf16 autocast (vs fp16 with GradScaler).

One step = forward, cross-entropy, backward, AdamW step (fbdl_fast.reports.speed.training_step) on a
realistic post batch of 128 tokens, lengths uniform in [64, 128]. One benchmark per model times
every variant in turns against the reference fp32 step (measure.time_in_turns: CUDA events on a
GPU) and records each variant's speedup over it and its posts/s:
- `reference` is the model as built with ModelConfig(fused=False), `patched` a copy after
  fbdl_fast.patch (fused LayerNorm and attention);
- AMP is bf16 autocast (on CUDA also fp16 autocast with a GradScaler for the three reference
  models), measured on a CPU too, even where the CPU has no native bf16 and AMP is slower.

bench_training_step: the three reference models (256-wide, 2 layers), 32 posts; before anything
is timed the patched model's logits must match the reference's (fp32, eval).

bench_bert_training_step: the BERT encoder of models/bert.py at the shapes of MiniLM (hidden
384, 6 layers, 12 heads, feed-forward 1,536) and of bert-base (768, 12, 12, 3,072), random
weights, 64 / 32 posts on CUDA and 8 / 2 on a CPU. Before anything is timed, every variant's
loss and gradients are compared with a float64 copy of the same weights on the same batch
(dropout off), and each patched variant must be within the existing benches' parity rule of the
reference in the same precision.

Under --benchmark-disable on a CPU (the test command's smoke run) each model is tiny and each
variant runs once.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from fbdl_fast import ModelConfig, create_model, patch
from fbdl_fast.reports.speed import training_step
from measure import (
    CUDA,
    dtype_name,
    max_abs_error,
    record,
    synchronized,
    time_in_turns,
    within_parity,
)

VOCAB = 30_522  # a BERT-sized vocabulary
DEVICE = "cuda" if CUDA else "cpu"
AMP_DTYPES = (torch.bfloat16, torch.float16) if CUDA else (torch.bfloat16,)
VARIANTS = [(kind, dtype) for dtype in (None, *AMP_DTYPES) for kind in ("reference", "patched")]
MODELS = {  # name: (architecture, sizes)
    "transformer": ("transformer", {"input_dim": 256, "hidden_dim": 512, "num_layers": 2}),
    "lstm": ("lstm", {"input_dim": 256, "hidden_dim": 512, "num_layers": 2}),
    "cnn": ("cnn", {"input_dim": 256, "hidden_dim": 512, "num_layers": 2}),
}
REPEATS = 20 if CUDA else 3  # a CPU step of these models takes 0.5-6 s
TINY = {"input_dim": 32, "hidden_dim": 32, "num_layers": 1}
# Patched and reference logits, fp32: on a CPU both run torch's code; on CUDA the kernels' own
# rounding through 2 layers.
LOGIT_TOLERANCE = 2e-2 if CUDA else 1e-4


def _config(name: str, smoke: bool) -> ModelConfig:
    sizes = TINY if smoke else MODELS[name][1]
    heads = 2 if smoke else 4
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


def _time_variants(
    benchmark, name, reference, patched, swapped, batch, variants, smoke: bool, parity
) -> None:
    """Time one training step of each (kind, amp_dtype) variant, each on its own copy of
    `reference` or `patched`, in turns; record a row per variant with the columns
    `parity(variant)` gives, and hand the patched fp32 step to pytest-benchmark."""
    ids, mask, labels = batch
    steps = {
        _variant_name(kind, amp_dtype): training_step(
            copy.deepcopy(patched if kind == "patched" else reference),
            ids,
            mask,
            labels,
            amp_dtype=amp_dtype,
        )
        for kind, amp_dtype in variants
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
            "posts_per_s": ids.shape[0] / timing.median_s,
            "speedup": baseline / timing.median_s,
            **parity(variant),
        }
        record("models", row)
    benchmark.group = f"train step {name}"
    benchmark.extra_info.update(
        model=name, role="candidate", variant="patched fp32", device=DEVICE, variants=rows,
        speedup=rows["patched fp32"]["speedup"],
    )  # fmt: skip
    benchmark.pedantic(synchronized(steps["patched fp32"]), rounds=1, warmup_rounds=0)


@pytest.mark.parametrize("name", list(MODELS))
def bench_training_step(benchmark, name: str) -> None:
    smoke = benchmark.disabled and not CUDA
    config = _config(name, smoke)
    ids, mask, labels = _batch(4, 16) if smoke else _batch(32, 128)
    reference = create_model(MODELS[name][0], config).to(DEVICE)
    patched = copy.deepcopy(reference)
    swapped = patch(patched)
    logit_diff = _max_logit_difference(reference, patched, ids, mask)
    assert logit_diff <= LOGIT_TOLERANCE, f"patched {name} logits off by {logit_diff}"
    _time_variants(
        benchmark, name, reference, patched, swapped, (ids, mask, labels), VARIANTS, smoke,
        parity=lambda variant: {"max_logit_diff_patched_vs_reference": logit_diff},
    )  # fmt: skip


# --- BERT-sized encoders (models/bert.py), random weights --------------------------------------

BERT_MODELS = {  # name: BertClassifier sizes (the shapes of the checkpoints, not their weights)
    "minilm": {"input_dim": 384, "hidden_dim": 1536, "num_layers": 6, "num_heads": 12},
    "bert-base": {"input_dim": 768, "hidden_dim": 3072, "num_layers": 12, "num_heads": 12},
}
# Posts a step at 128 tokens: GPU-sized on CUDA; on a CPU small enough that the 4 variants of
# a timed run take seconds (one thread, see conftest.py), not minutes.
BERT_BATCH = {"minilm": 64, "bert-base": 32} if CUDA else {"minilm": 8, "bert-base": 2}
BERT_VARIANTS = [
    (kind, dtype) for dtype in (None, torch.bfloat16) for kind in ("reference", "patched")
]
BERT_TINY = {"input_dim": 32, "hidden_dim": 64, "num_layers": 2, "num_heads": 2}


def _bert_config(name: str, smoke: bool) -> ModelConfig:
    return ModelConfig(
        **(BERT_TINY if smoke else BERT_MODELS[name]), dropout=0.1, vocab_size=VOCAB,
        num_classes=4, max_seq_length=16 if smoke else 128, fused=False,
    )  # fmt: skip


def _loss_and_grads(model, ids, mask, labels, amp_dtype) -> tuple[torch.Tensor, dict]:
    """One forward and backward of `model` in train mode: the loss and every gradient."""
    model.train()
    model.zero_grad(set_to_none=True)
    with torch.autocast(DEVICE, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = model(ids, mask)
    loss = nn.functional.cross_entropy(logits.float() if amp_dtype else logits, labels)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def _errors(got: tuple[torch.Tensor, dict], truth: tuple[torch.Tensor, dict]) -> dict[str, float]:
    """The loss's error relative to max(1, |loss|), and the worst gradient error, each gradient's
    max abs error relative to its own largest entry (scale-free: the embedding and head
    gradients differ by orders of magnitude), both against the float64 truth."""
    (loss, grads), (loss64, grads64) = got, truth
    grad = max(
        max_abs_error(grads[n], g64) / max(g64.abs().max().item(), 1e-30)
        for n, g64 in grads64.items()
    )
    return {"loss": max_abs_error(loss, loss64) / max(1.0, abs(loss64.item())), "grad": grad}


def _check_bert_parity(reference, ids, mask, labels, config: ModelConfig) -> dict[str, dict]:
    """Errors of each variant's loss and gradients against a float64 copy of the same weights,
    on the same batch, dropout off so that every variant computes the same function.

    A patched variant must be within FlashAttention's rule (measure.within_parity) of the
    reference in the same precision: at most twice its error, or 8 eps of the precision where
    that error is ~0."""
    plain = create_model("bert", dataclasses.replace(config, dropout=0.0)).to(DEVICE)
    plain.load_state_dict(reference.state_dict())
    patched = copy.deepcopy(plain)
    patch(patched)
    truth = _loss_and_grads(copy.deepcopy(plain).double(), ids, mask, labels, None)
    errors = {}
    for kind, amp_dtype in BERT_VARIANTS:
        model = patched if kind == "patched" else plain
        errors[_variant_name(kind, amp_dtype)] = _errors(
            _loss_and_grads(model, ids, mask, labels, amp_dtype), truth
        )
    for kind, amp_dtype in BERT_VARIANTS:
        if kind != "patched":
            continue
        ours = errors[_variant_name(kind, amp_dtype)]
        yardstick = errors[_variant_name("reference", amp_dtype)]
        floor = 8 * torch.finfo(amp_dtype or torch.float32).eps
        failed = [k for k in ours if not within_parity(ours[k], yardstick[k], floor)]
        assert not failed, (
            f"{_variant_name(kind, amp_dtype)}: {failed} error(s) {ours} against float64 exceed "
            f"twice the reference's {yardstick} (floor {floor:.2g})"
        )
    return errors


@pytest.mark.parametrize("name", list(BERT_MODELS))
def bench_bert_training_step(benchmark, name: str) -> None:
    smoke = benchmark.disabled and not CUDA
    config = _bert_config(name, smoke)
    ids, mask, labels = _batch(4, 16) if smoke else _batch(BERT_BATCH[name], 128)
    reference = create_model("bert", config).to(DEVICE)
    errors = _check_bert_parity(reference, ids, mask, labels, config)
    patched = copy.deepcopy(reference)
    swapped = patch(patched)
    _time_variants(
        benchmark, name, reference, patched, swapped, (ids, mask, labels), BERT_VARIANTS, smoke,
        parity=lambda variant: {"errors": errors[variant]},
    )  # fmt: skip
