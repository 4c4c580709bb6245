"""Normalisation layers: each against the statistics it computes, written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fbdl_fast.nn as fnn
from fbdl_fast.models.norms import NORMS, AdaptiveLayerNorm, NormalizationLayers, create_norm
from fbdl_fast.ops.layer_norm import LayerNormFunction
from kernel_calls import count_calls

EPS = 1e-5


def _standardise(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """(x - mean) / sqrt(biased var + eps) over `dims`: what every norm here computes."""
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + EPS)


def test_layer_norm_is_the_fused_drop_in_and_matches_torch() -> None:
    norm = create_norm("layer", 32)
    assert isinstance(norm, fnn.LayerNorm)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(4, 7, 32) * 3 + 2
    expected = _standardise(x, (-1,)) * norm.weight + norm.bias
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
    reference = create_norm("layer", 32, fused=False)
    assert type(reference) is nn.LayerNorm
    assert reference.state_dict().keys() == norm.state_dict().keys()


def test_layer_norm_drop_in_runs_the_kernel_and_matches_torch(
    triton: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The case above on the Triton path (the interpreter on a CPU), forward and backward."""
    norm = create_norm("layer", 32)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    calls = count_calls(monkeypatch, LayerNormFunction)
    x = (torch.randn(4, 7, 32) * 3 + 2).requires_grad_()
    expected = _standardise(x, (-1,)) * norm.weight + norm.bias
    y = norm(x)
    assert len(calls) == 1, "the Triton kernel did not run"
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, norm.weight, norm.bias), g)
    expected_grads = torch.autograd.grad(expected, (x, norm.weight, norm.bias), g)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_batch_norm_normalises_each_channel_over_the_batch_and_tracks_stats() -> None:
    norm = create_norm("batch", 6, momentum=0.2)
    x = torch.randn(64, 6) * torch.arange(1.0, 7.0) + 5  # channel c has std c+1, mean 5
    y = norm(x)
    torch.testing.assert_close(y, _standardise(x, (0,)), atol=1e-5, rtol=1e-5)
    # running stats move 20% of the way to the batch's (unbiased) statistics
    torch.testing.assert_close(norm.running_mean, 0.2 * x.mean(0))
    torch.testing.assert_close(norm.running_var, 0.8 + 0.2 * x.var(0, unbiased=True))


def test_instance_norm_normalises_each_sample_and_channel_over_length() -> None:
    norm = create_norm("instance", 5)
    x = torch.randn(3, 5, 20) * 4 - 1  # (N, C, L)
    torch.testing.assert_close(norm(x), _standardise(x, (2,)), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in norm.parameters()) == 0  # torch's default: no affine


def test_group_norm_normalises_groups_of_channels() -> None:
    norm = create_norm("group", 12, num_groups=3)
    x = torch.randn(2, 12, 10) * 2 + 3  # (N, C, L); groups of 4 channels
    expected = _standardise(x.view(2, 3, 4 * 10), (2,)).view(2, 12, 10)
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


def test_group_norm_default_groups_divide_the_channels() -> None:
    assert create_norm("group", 64).num_groups == 32
    assert create_norm("group", 48).num_groups == 16
    assert create_norm("group", 7).num_groups == 1
    with pytest.raises(ValueError, match=r"num_groups=5 .*12 channels.*divisor of 12"):
        create_norm("group", 12, num_groups=5)


def test_adaptive_layer_norm_starts_as_plain_layer_norm() -> None:
    norm = AdaptiveLayerNorm(16, cond_dim=8)
    assert isinstance(norm.norm, fnn.LayerNorm)
    assert not norm.norm.elementwise_affine  # the conditioning supplies scale and shift
    x, cond = torch.randn(3, 5, 16), torch.randn(3, 8)
    torch.testing.assert_close(norm(x, cond), F.layer_norm(x, (16,)), atol=1e-5, rtol=1e-5)


def test_adaptive_layer_norm_scale_and_shift_come_from_the_condition() -> None:
    dim, cond_dim = 4, 3
    norm = AdaptiveLayerNorm(dim, cond_dim)
    with torch.no_grad():
        norm.proj.weight.copy_(torch.randn(2 * dim, cond_dim))
        norm.proj.bias.copy_(torch.randn(2 * dim))
    x, cond = torch.randn(2, 6, dim), torch.randn(2, cond_dim)
    params = cond @ norm.proj.weight.T + norm.proj.bias  # (B, 2 * dim)
    scale, shift = params[:, :dim, None], params[:, dim:, None]  # (B, dim, 1)
    expected = (_standardise(x, (-1,)).transpose(1, 2) * (1 + scale) + shift).transpose(1, 2)
    torch.testing.assert_close(norm(x, cond), expected, atol=1e-5, rtol=1e-5)
    # Per-position conditioning: cond with x's leading dims gives each position its own scale.
    cond_seq = cond[:, None, :].expand(2, 6, cond_dim)
    torch.testing.assert_close(norm(x, cond_seq), expected, atol=1e-5, rtol=1e-5)
    # the conditioning is learned: gradients reach the projection
    norm(x, cond).pow(2).sum().backward()
    assert norm.proj.weight.grad is not None and norm.proj.weight.grad.abs().sum() > 0


def test_adaptive_layer_norm_rejects_mismatched_shapes() -> None:
    norm = create_norm("adaptive_layer", 8, cond_dim=4)
    with pytest.raises(ValueError, match=r"dim=8, cond_dim=4.*\(2, 3\)"):
        norm(torch.randn(5, 8), torch.randn(2, 3))


def test_facade_builds_the_seed_layers() -> None:
    bn = NormalizationLayers.batch_norm(10, eps=1e-3, momentum=0.3)
    assert isinstance(bn, nn.BatchNorm1d) and (bn.eps, bn.momentum) == (1e-3, 0.3)
    gn = NormalizationLayers.group_norm(4, 16, eps=1e-4)
    assert isinstance(gn, nn.GroupNorm) and (gn.num_groups, gn.num_channels, gn.eps) == (
        4,
        16,
        1e-4,
    )
    ln = NormalizationLayers.layer_norm(8, eps=1e-6)
    assert isinstance(ln, nn.LayerNorm) and ln.eps == 1e-6 and ln.normalized_shape == (8,)
    inorm = NormalizationLayers.instance_norm(8, affine=True)
    assert isinstance(inorm, nn.InstanceNorm1d) and inorm.weight.shape == (8,)
    ada = NormalizationLayers.adaptive_layer_norm(8, 3)
    assert isinstance(ada, AdaptiveLayerNorm) and ada.proj.in_features == 3


def test_unknown_norm_and_bad_dim() -> None:
    assert sorted(NORMS) == ["adaptive_layer", "batch", "group", "instance", "layer"]
    with pytest.raises(ValueError, match=r"'rms'.*adaptive_layer, batch, group, instance, layer"):
        create_norm("rms", 8)
    with pytest.raises(ValueError, match=r"dim=0 .*positive integer"):
        create_norm("layer", 0)


def test_adaptive_layer_norm_through_the_fused_kernel(
    triton: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The unweighted LayerNorm inside runs the Triton kernel (interpreter on CPU): same result.
    calls = count_calls(monkeypatch, LayerNormFunction)
    norm = AdaptiveLayerNorm(16, cond_dim=4)
    with torch.no_grad():
        norm.proj.weight.copy_(torch.randn(32, 4))
    x, cond = torch.randn(2, 3, 16), torch.randn(2, 4)
    scale, shift = norm.proj(cond).detach().chunk(2, dim=-1)
    expected = _standardise(x, (-1,)) * (1 + scale[:, None]) + shift[:, None]
    torch.testing.assert_close(norm(x, cond), expected, atol=1e-5, rtol=1e-5)
    assert len(calls) == 1, "the Triton kernel did not run"
