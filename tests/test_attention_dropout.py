"""Attention dropout drawn four keys per Philox call (tl.randint4x, kernels/attention.py _keep):
each of the four numbers is used once, the mask is a pure function of (seed, b, h, i, j) whatever
the tile shapes, and backward regenerates the forward's mask with the GPU's tile shapes, where
the forward's query blocks (128) differ from the backward's (64).

The probe: V = I (Lk = D = 64), so the output is the dropped, rescaled weight matrix and its zeros
are the kernel's keep mask.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from fbdl_fast.kernels import attention as kernels
from fbdl_fast.ops import attention as attention_op
from tolerances import assert_close

pytestmark = pytest.mark.usefixtures("on_kernel_device")

LK = 64


def probe(p: float, seed: int, lq: int = 64, batch: int = 2, heads: int = 2):
    torch.manual_seed(seed)
    q = torch.randn(batch, heads, lq, LK, requires_grad=True)
    k = torch.randn(batch, heads, LK, LK, requires_grad=True)
    v = torch.eye(LK).expand(batch, heads, LK, LK).clone().requires_grad_()
    out = attention_op.dispatch(q, k, v, None, False, None, p)
    return q, k, v, out


def block_config(block_m: int, block_n: int):
    def config(lq: int, lk: int, d: int, backward: bool) -> dict:
        return {
            "BLOCK_M": block_m,
            "BLOCK_N": block_n,
            "num_warps": 4,
            "num_stages": 1,
            "enable_fp_fusion": kernels.FP_FUSION,
        }

    return config


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_each_of_the_four_numbers_is_used_once(triton, p):
    _, _, _, out = probe(p, seed=11, lq=128)
    keep = (out != 0).reshape(-1, LK // 4, 4)  # (rows, groups of four keys, lane)
    n = keep.shape[0] * keep.shape[1]  # draws per lane: 8,192
    sd = (p * (1 - p) / n) ** 0.5
    for lane in range(4):  # each lane drops p of its keys
        assert abs(1.0 - keep[..., lane].float().mean().item() - p) < 5 * sd
    # Lanes are independent: two lanes of a group differ with probability 2p(1-p) (a number
    # used twice would make them equal).
    for a, b in itertools.combinations(range(4), 2):
        differ = (keep[..., a] != keep[..., b]).float().mean().item()
        assert abs(differ - 2 * p * (1 - p)) < 5 * (0.25 / n) ** 0.5


def test_mask_does_not_depend_on_tile_shapes(triton, monkeypatch):
    if torch.device(triton).type != "cpu":
        pytest.skip("block sizes are swapped in the interpreter only")
    masks = []
    for block_m, block_n in ((64, 64), (16, 32), (32, 16)):
        monkeypatch.setattr(kernels, "_launch_config", block_config(block_m, block_n))
        masks.append(probe(0.3, seed=12)[3] != 0)
    assert masks[0].float().mean() > 0.5
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])


def test_backward_mask_with_gpu_tile_shapes(triton, monkeypatch):
    # Forward 128 x 64, backward 64 x 64 (kernels._gpu_config) on 150 queries: the backward's
    # query blocks straddle the forward's, and must regenerate the same mask.
    if torch.device(triton).type != "cpu":
        pytest.skip("on a GPU every dropout test already runs the GPU's tile shapes")

    def gpu_config(lq: int, lk: int, d: int, backward: bool) -> dict:
        return {**kernels._gpu_config(backward), "enable_fp_fusion": kernels.FP_FUSION}

    monkeypatch.setattr(kernels, "_launch_config", gpu_config)
    p = 0.2
    q, k, v, out = probe(p, seed=13, lq=150, batch=1)
    keep = out.detach() != 0
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    probs = torch.softmax(leaves[0] @ leaves[1].transpose(-2, -1) * LK**-0.5, dim=-1)
    ref = probs * keep / (1.0 - p) @ leaves[2]
    rq, rk, rv = torch.autograd.grad(ref, leaves, dout)
    assert_close(out, ref.detach())
    for actual, wanted in ((dq, rq), (dk, rk), (dv, rv)):
        assert_close(actual, wanted)
