"""Attention dropout drawn four keys per Philox call (tl.randint4x, kernels/attention.py _keep):
each of the four numbers is used once, the mask is a pure function of (seed, b, h, i, j) whatever
the tile shapes, and backward regenerates the forward's mask with the GPU's tile shapes, where
the forward's query blocks (128) differ from the backward's (64).

The probe: V = I (Lk = D = 64), so the output is the dropped, rescaled weight matrix and its zeros
are the kernel's keep mask.
"""

from __future__ import annotations

import itertools

import numpy as np
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


def philox4x32(seed: int, c0: np.ndarray, c1: np.ndarray, rounds: int = 10) -> list[np.ndarray]:
    """Philox4x32 as Triton computes it (triton.language.random.philox_impl): counter
    (c0, c1, 0, 0), key (seed's low and high 32 bits), 10 rounds; four uint32 outputs."""
    mask = np.uint64(0xFFFFFFFF)
    c = [c0.astype(np.uint64), c1.astype(np.uint64), np.zeros_like(c0, np.uint64)]
    c.append(np.zeros_like(c0, np.uint64))
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    a, b = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    for _ in range(rounds):
        prod_b, prod_a = b * c[2], a * c[0]  # exact: both factors < 2**32
        c = [
            (prod_b >> np.uint64(32)) ^ c[1] ^ k0,
            prod_b & mask,
            (prod_a >> np.uint64(32)) ^ c[3] ^ k1,
            prod_a & mask,
        ]
        k0 = (k0 + np.uint64(0x9E3779B9)) & mask
        k1 = (k1 + np.uint64(0xBB67AE85)) & mask
    return c


def test_mask_is_the_documented_philox_function(kernel_device):
    # keep(b*h, i, j) = r_(j mod 4) >= p * 2**32, with (r_0..r_3) = Philox4x32(seed; counter of
    # key 4 * (j // 4)), counter = (bh * Lq + i) * Lk + 4 * (j // 4). p = 1/4 makes p * 2**32
    # exact in fp32. On a GPU this checks the compiled kernel's join/reshape order too.
    p, seed, batch, heads, lq = 0.25, (123456789 << 20) + 4321, 2, 3, 40
    q = torch.randn(batch, heads, lq, LK)
    k = torch.randn(batch, heads, LK, LK)
    v = torch.eye(LK).expand(batch, heads, LK, LK).contiguous()
    out, _ = kernels.attention_forward(q, k, v, None, False, LK**-0.5, p, seed)
    bh = np.arange(batch * heads).reshape(batch, heads, 1, 1)
    i = np.arange(lq).reshape(1, 1, lq, 1)
    j = np.arange(LK).reshape(1, 1, 1, LK)
    counter = ((bh * lq + i) * LK + 4 * (j // 4)).astype(np.uint64)
    r = philox4x32(seed, counter & np.uint64(0xFFFFFFFF), counter >> np.uint64(32))
    lane = np.broadcast_to(j % 4, counter.shape)
    numbers = np.choose(lane, r)
    want = torch.from_numpy(numbers >= np.uint64(int(p * 2**32)))
    assert torch.equal((out != 0).cpu(), want)
