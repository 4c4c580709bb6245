"""Patched reference models agree with the unpatched ones, forward and backward.

The patched model runs the Triton kernels (on CUDA where there is one, else through the
interpreter on a CPU, hence the small sizes); the reference model is the same weights with torch's
layers. Dropout is 0 so both see the same computation.
"""

from __future__ import annotations

import copy

import pytest
import torch

from fbdl_fast import ModelConfig, create_model, patch
from fbdl_fast.ops.attention import TritonAttention
from fbdl_fast.ops.layer_norm import LayerNormFunction
from tolerances import assert_close

# (model, expected swaps): the LSTM and the CNN have no LayerNorm or attention to swap.
MODELS = [("transformer", 4), ("lstm", 0), ("cnn", 0)]


def _config() -> ModelConfig:
    return ModelConfig(
        input_dim=32,
        hidden_dim=32,
        num_layers=1,
        num_heads=2,
        dropout=0.0,
        vocab_size=50,
        num_classes=3,
        max_seq_length=16,
        fused=False,
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([9, 4, 1])
    mask = torch.arange(9)[None, :] < lengths[:, None]  # (B, L), odd length and uneven padding
    ids = torch.randint(1, 50, (3, 9)) * mask
    return ids, mask, torch.tensor([0, 2, 1])


def _count_calls(monkeypatch: pytest.MonkeyPatch, function: type) -> list[int]:
    calls: list[int] = []
    original = function.apply

    def counted(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(function, "apply", counted)
    return calls


def _logits_and_grads(model: torch.nn.Module, batch, amp: bool, device: str):
    ids, mask, labels = batch
    model.zero_grad()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
        logits = model(ids, mask)
    torch.nn.functional.cross_entropy(logits.float(), labels).backward()
    return logits, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize(("name", "swaps"), MODELS)
def test_patched_model_matches_reference(
    name: str, swaps: int, amp: bool, triton: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = create_model(name, _config()).train()
    patched = copy.deepcopy(reference)
    assert len(patch(patched)) == swaps
    kernel_calls = _count_calls(monkeypatch, LayerNormFunction)
    attention_calls = _count_calls(monkeypatch, TritonAttention)
    batch = _batch()
    expected_logits, expected_grads = _logits_and_grads(reference, batch, amp, triton)
    assert kernel_calls == [] and attention_calls == [], "the reference ran a kernel"
    logits, grads = _logits_and_grads(patched, batch, amp, triton)
    if swaps:
        assert kernel_calls and attention_calls, "the patched model did not run the kernels"
    assert grads.keys() == expected_grads.keys()
    dtype = torch.bfloat16 if amp else torch.float32
    assert_close(logits.float(), expected_logits.float(), dtype=dtype)
    for key, grad in grads.items():
        assert_close(grad, expected_grads[key], dtype=dtype, msg=lambda m, k=key: f"{k}: {m}")
