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
from fbdl_fast.ops.attention import AttentionFunction
from fbdl_fast.ops.layer_norm import LayerNormFunction
from kernel_calls import count_calls
from tolerances import assert_close

# What patch() swaps in the transformer of _config() (one block): its two LayerNorms, the final
# one and the attention. The LSTM and the CNN hold neither: a test of the report says so.
TRANSFORMER_SWAPS = ["LayerNorm"] * 3 + ["MultiheadAttention"]


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


def _logits_and_grads(model: torch.nn.Module, batch, amp: bool, device: str):
    ids, mask, labels = batch
    model.zero_grad()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
        logits = model(ids, mask)
    torch.nn.functional.cross_entropy(logits.float(), labels).backward()
    return logits, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_patched_model_matches_reference(
    amp: bool, triton: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = create_model("transformer", _config()).train()
    patched = copy.deepcopy(reference)
    report = patch(patched)
    assert sorted(type(s.original).__name__ for s in report.swaps) == TRANSFORMER_SWAPS
    norm_calls = count_calls(monkeypatch, LayerNormFunction)
    attention_calls = count_calls(monkeypatch, AttentionFunction)
    batch = _batch()
    expected_logits, expected_grads = _logits_and_grads(reference, batch, amp, triton)
    assert norm_calls == attention_calls == [], "the reference ran a kernel"
    logits, grads = _logits_and_grads(patched, batch, amp, triton)
    # Every swapped layer ran its kernel once in the forward.
    assert (len(norm_calls), len(attention_calls)) == (3, 1)
    assert grads.keys() == expected_grads.keys()
    dtype = torch.bfloat16 if amp else torch.float32
    assert_close(logits.float(), expected_logits.float(), dtype=dtype)
    for key, grad in grads.items():
        assert_close(grad, expected_grads[key], dtype=dtype, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("name", ["lstm", "cnn"])
def test_patch_swaps_nothing_in_models_without_norms_or_attention(name: str) -> None:
    """The LSTM and the CNN hold no LayerNorm or MultiheadAttention: patch() leaves every module
    in place and says so (no parity to test there: the model would be compared with itself)."""
    model = create_model(name, _config())
    modules = list(model.modules())
    report = patch(model)
    assert len(report) == 0 and report.swaps == [] and report.fast_path_disabled == []
    assert report.summary() == "patched nothing"
    assert list(model.modules()) == modules
    assert not any(
        isinstance(m, (torch.nn.LayerNorm, torch.nn.MultiheadAttention)) for m in modules
    )
