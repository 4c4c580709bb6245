"""Fused attention with padded keys: the kernels stop at each sequence's key length (last True
index of the key mask + 1) and must give exactly what the reference gives on the whole mask.

Cases: odd lengths, a sequence with every key masked (length 0), lengths ending inside a key
block and exactly on a block boundary, masks with holes before the last valid key, causal and
not, fp32 and fp16, forward and every gradient against ops.attention.reference in fp32. Keys
past the length are filled with NaN for the kernel: it must not read them (a read would reach
the output through 0 * NaN), which is what skipping their tiles means.

Under the interpreter (conftest.py) the key blocks are 64 wide for these lengths (the host's
interpreter launch config), so length 64 ends exactly on a block boundary and 70 inside the second
block; a dK/dV program of the second block of a sequence of length <= 64 runs no query block.
"""

from __future__ import annotations

import pytest
import torch

from fbdl_fast.ops import attention as attention_op
from tolerances import assert_close

pytestmark = pytest.mark.usefixtures("on_kernel_device")

L = 99  # odd, two key blocks of 64 in the interpreter
# Per sequence: (key length, masked positions before it). 0: every key masked; 64: ends on the
# block boundary; 37 and 70: inside the first and second block; holes before the length.
SEQUENCES = [
    (99, []),
    (64, []),
    (37, []),
    (0, []),
    (70, [3, 10, 11, 12, 63, 64]),
    (1, []),
    (90, list(range(64))),  # the whole first block masked, the length in the second
]


def key_mask(sequences: list[tuple[int, list[int]]], length: int) -> torch.Tensor:
    """bool (B, length): True on the first n keys except the holes."""
    mask = torch.zeros(len(sequences), length, dtype=torch.bool)
    for b, (n, holes) in enumerate(sequences):
        mask[b, :n] = True
        mask[b, holes] = False
    return mask


def key_lengths(mask: torch.Tensor) -> list[int]:
    """1 + the last True index per row (0 for none), as the kernels compute it."""
    positions = torch.arange(1, mask.shape[1] + 1)
    return (mask.cpu() * positions).amax(1).tolist()


def poisoned(x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """A copy of x (B, H, L, D) with NaN at every key position at or past the sequence's length."""
    x = x.detach().clone()
    for b, n in enumerate(lengths):
        x[b, :, n:] = float("nan")
    return x


def check_padded(
    dtype: torch.dtype, causal: bool, D: int = 16, Lq: int = L, Lk: int = L, H: int = 2
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Kernel output and gradients (inputs NaN past each key length) vs the reference in fp32
    on the clean inputs; returns the kernel's (out, (dq, dk, dv))."""
    sequences = [(min(n, Lk), [h for h in holes if h < Lk]) for n, holes in SEQUENCES]
    if Lk > L:  # longer keys: one sequence ending inside the last key block, with a hole
        sequences.append((Lk - 7, [L + 1]))
    mask = key_mask(sequences, Lk)
    lengths = key_lengths(mask)
    assert lengths == [n for n, _ in sequences]
    B = len(sequences)
    q = torch.randn(B, H, Lq, D).to(dtype)
    k = torch.randn(B, H, Lk, D).to(dtype)
    v = torch.randn(B, H, Lk, D).to(dtype)
    leaves = [q.clone().requires_grad_(), poisoned(k, lengths), poisoned(v, lengths)]
    leaves[1].requires_grad_()
    leaves[2].requires_grad_()
    out = attention_op.dispatch(*leaves, mask, causal)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)

    ref_leaves = [t.float().requires_grad_() for t in (q, k, v)]
    ref = attention_op.reference(*ref_leaves, mask, causal)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dout.float())
    assert out.dtype == dtype
    for actual, wanted in zip((out, *grads), (ref, *ref_grads)):
        assert torch.isfinite(actual).all()
        assert_close(actual, wanted.detach(), dtype=dtype)
    _, dk, dv = grads
    for b, n in enumerate(lengths):  # keys past the length: exactly zero gradients
        assert torch.equal(dk[b, :, n:], torch.zeros_like(dk[b, :, n:]))
        assert torch.equal(dv[b, :, n:], torch.zeros_like(dv[b, :, n:]))
    return out, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_padded_keys_match_reference(triton, dtype, causal):
    check_padded(dtype, causal)


def test_padded_keys_head_dim_64_cross_attention(triton):
    # Lq != Lk, both odd; D=64.
    check_padded(torch.float32, causal=False, D=64, Lq=37, Lk=L, H=1)


def test_padded_queries_still_get_outputs(triton):
    # The key mask masks keys, not queries: a query past its sequence's key length still attends
    # to the valid keys (as in the reference and torch's SDPA); only length 0 gives zero rows.
    out, (dq, _, _) = check_padded(torch.float32, causal=False)
    lengths = [n for n, _ in SEQUENCES]
    for b, n in enumerate(lengths):
        tail, dq_tail = out[b, :, n:], dq[b, :, n:]
        if n == 0:
            assert torch.equal(tail, torch.zeros_like(tail))
            assert torch.equal(dq_tail, torch.zeros_like(dq_tail))
        elif n < L:
            assert (tail.abs().sum(-1) > 0).all()
            if n > 1:  # with one key the softmax is constant: dq = 0
                assert (dq_tail.abs().sum(-1) > 1e-3).all()


def test_padded_keys_with_dropout_same_mask_in_backward(triton):
    # V = I (Lk = D = 64): the output is the dropped, rescaled weight matrix, so its zeros are the
    # kernel's keep mask. Backward must regenerate it with the key loops stopped at the lengths.
    p = 0.25
    torch.manual_seed(5)
    sequences = [(64, []), (37, [2, 30]), (0, []), (50, list(range(20)))]
    mask = key_mask(sequences, 64)
    B, H, Lk = len(sequences), 2, 64
    q = torch.randn(B, H, 45, Lk, requires_grad=True)
    k = torch.randn(B, H, Lk, Lk, requires_grad=True)
    v = torch.eye(Lk).expand(B, H, Lk, Lk).clone().requires_grad_()
    out = attention_op.dispatch(q, k, v, mask, False, None, p)
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)

    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    scores = leaves[0] @ leaves[1].transpose(-2, -1) * Lk**-0.5
    visible = mask[:, None, None, :]
    weights = torch.exp(scores - scores.detach().amax(-1, keepdim=True)) * visible
    total = weights.sum(-1, keepdim=True)
    probs = weights / torch.where(total > 0, total, torch.ones_like(total))
    keep = out.detach() != 0
    assert not keep[2].any() and not (keep & ~visible).any()
    dropped = 1.0 - keep[visible.expand_as(keep)].float().mean().item()
    assert abs(dropped - p) < 0.04  # ~9,000 visible weights: 5 standard deviations is 0.023
    ref = probs * keep / (1.0 - p) @ leaves[2]
    rq, rk, rv = torch.autograd.grad(ref, leaves, dout)
    assert_close(out, ref.detach())
    for actual, wanted in ((dq, rq), (dk, rk), (dv, rv)):
        assert_close(actual, wanted)


@pytest.mark.parametrize(("D", "dtype"), [(16, torch.float32), (64, torch.float16)])
def test_gpu_tile_shapes_in_the_interpreter(triton, monkeypatch, D, dtype):
    # The GPU's block sizes (128 x 64 forward, 64 x 64 backward) run here on the interpreter:
    # L = 150 gives two query blocks of 128 in the forward and three key blocks of 64.
    if torch.device(triton).type != "cpu":
        pytest.skip("on a GPU every kernel test already runs the GPU's tile shapes")
    from fbdl_fast.kernels import attention as kernels

    def gpu_config(lq: int, lk: int, d: int, backward: bool) -> dict:
        return {**kernels._gpu_config(backward), "enable_fp_fusion": kernels.FP_FUSION}

    monkeypatch.setattr(kernels, "_launch_config", gpu_config)
    assert gpu_config(150, 150, D, False)["BLOCK_M"] == 128
    for causal in (False, True):
        check_padded(dtype, causal, D=D, Lq=150, Lk=150, H=1)
