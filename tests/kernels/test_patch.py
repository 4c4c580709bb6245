"""fbdl_fast.patch: swaps torch layers for fused ones in place, sharing the parameters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fbdl_fast.nn as fnn
from fbdl_fast.nn.patch import patch, unpatch
from fbdl_fast.ops.attention import AttentionFunction
from fbdl_fast.ops.layer_norm import LayerNormFunction
from kernel_calls import count_calls
from tolerances import assert_close


def _encoder(layers: int = 2) -> nn.Module:
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
    return nn.Sequential(
        nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False),
        nn.LayerNorm(16),
    )


def test_patch_swaps_every_layer_norm_and_attention_keeping_parameters() -> None:
    model = _encoder(layers=2)
    before = {name: p for name, p in model.named_parameters()}
    report = patch(model)
    kinds = sorted(type(s.original).__name__ for s in report.swaps)
    assert kinds == ["LayerNorm"] * 5 + ["MultiheadAttention"] * 2
    assert all(type(s.replacement).__module__.startswith("fbdl_fast.nn") for s in report.swaps)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before), "parameters must be shared"
    assert report.fast_path_disabled == ["0.layers.0", "0.layers.1"]
    assert "5 LayerNorm" in report.summary() and "2 MultiheadAttention" in report.summary()


def test_patched_model_matches_and_trains_with_an_optimizer_built_before() -> None:
    model = _encoder()
    reference = _encoder()
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(3, 5, 16)
    patch(model)
    model.train(), reference.train()
    torch.manual_seed(1)
    out = model(x)
    torch.manual_seed(1)
    expected = reference(x)
    torch.testing.assert_close(out, expected)
    out.square().mean().backward()
    weight = model[1].weight.detach().clone()
    optimizer.step()
    assert not torch.equal(model[1].weight, weight), "the optimizer must reach patched parameters"


def test_patched_model_runs_the_kernels_and_matches(
    triton: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The case above on the Triton path (the interpreter on a CPU): every swapped layer runs its
    kernel, and logits and gradients match torch's layers. head_dim 16 (the kernel's smallest),
    no dropout (the two would draw different masks)."""
    layer = nn.TransformerEncoderLayer(
        d_model=32, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True
    )
    model = nn.Sequential(
        nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False), nn.LayerNorm(32)
    )
    reference = copy.deepcopy(model)
    assert len(patch(model)) == 7
    norm_calls = count_calls(monkeypatch, LayerNormFunction)
    attention_calls = count_calls(monkeypatch, AttentionFunction)
    x = torch.randn(2, 5, 32)
    expected = reference(x)
    assert norm_calls == attention_calls == [], "the reference ran a kernel"
    out = model(x)
    assert (len(norm_calls), len(attention_calls)) == (5, 2)
    assert_close(out, expected)
    out.square().mean().backward()
    expected.square().mean().backward()
    grads = dict(model.named_parameters())
    for name, p in reference.named_parameters():
        assert_close(grads[name].grad, p.grad, msg=lambda m, n=name: f"{n}: {m}")


def test_eval_fast_path_runs_the_patched_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _encoder().eval()
    calls = []
    original_forward = fnn.MultiheadAttention.forward

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original_forward(self, *args, **kwargs)

    monkeypatch.setattr(fnn.MultiheadAttention, "forward", spy)
    report = patch(model)
    with torch.no_grad():
        model(torch.randn(2, 4, 16))
    assert len(calls) == 2, "torch's encoder fast path bypassed the patched attention"
    for handle in report._hooks:  # without the hooks, torch's fast path skips our forward
        handle.remove()
    calls.clear()
    with torch.no_grad():
        model(torch.randn(2, 4, 16))
    assert calls == [], "the hook is what keeps the patched attention running"


def test_unpatch_restores_the_original_modules_with_trained_weights() -> None:
    model = _encoder()
    originals = [type(m) for m in model.modules()]
    report = patch(model)
    with torch.no_grad():
        model[1].weight.add_(1.0)
    unpatch(report)
    assert [type(m) for m in model.modules()] == originals
    assert torch.equal(model[1].weight, torch.full((16,), 2.0))
    assert report.swaps == [] and len(model[0].layers[0]._forward_pre_hooks) == 0


def test_patch_rejects_non_modules_and_bare_layers() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        patch("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"fbdl_fast\.nn\.LayerNorm"):
        patch(nn.LayerNorm(4))
