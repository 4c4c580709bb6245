"""Attention on CPU tensors outside the interpreter: dispatch's early exit
runs torch's F.scaled_dot_product_attention (ops.attention.cpu_sdpa) instead of the plain
reference composition, and must keep the reference's results and its contract for queries
without a visible key (zeros, zero gradients), forward and backward, with and without dropout.
"""

from __future__ import annotations

import pytest
import torch

from fbdl_fast.ops import attention as attention_op
from tolerances import assert_close

# (B, H, Lq, Lk, D, Dv): odd sizes, cross lengths, a head dim the kernel has no tile for.
SHAPES = [(2, 3, 7, 7, 16, 16), (3, 2, 5, 13, 24, 40), (2, 1, 33, 17, 64, 8)]


@pytest.fixture
def cpu_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto, outside the interpreter: what a user's CPU call sees."""
    monkeypatch.setenv("FBDL_FAST_BACKEND", "auto")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def _inputs(B, H, Lq, Lk, D, Dv, dtype):
    q = torch.randn(B, H, Lq, D).to(dtype).requires_grad_()
    k = torch.randn(B, H, Lk, D).to(dtype).requires_grad_()
    v = torch.randn(B, H, Lk, Dv).to(dtype).requires_grad_()
    return q, k, v


def _mask(B: int, Lk: int, padded_rows: bool) -> torch.Tensor:
    """bool (B, Lk), True where the key takes part: random lengths >= 1, and with padded_rows
    the first sequence has no key at all (its queries see nothing)."""
    lengths = torch.randint(1, Lk + 1, (B,))
    if padded_rows:
        lengths[0] = 0
    return torch.arange(Lk)[None, :] < lengths[:, None]


def _run(fn, q, k, v, dout, *args):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, *args)
    return [out, *torch.autograd.grad(out, leaves, dout)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(
    ("masked", "causal", "padded_rows"),
    [(False, False, False), (True, False, False), (False, True, False), (True, True, True)],
    ids=["dense", "key_mask", "causal", "mask_causal_padded_rows"],
)
def test_cpu_sdpa_matches_reference(cpu_exit, dtype, shape, masked, causal, padded_rows):
    B, H, Lq, Lk, _, Dv = shape
    q, k, v = _inputs(*shape, dtype)
    key_mask = _mask(B, Lk, padded_rows) if masked else None
    scale = 0.3 if masked else None
    dout = torch.randn(B, H, Lq, Dv).to(dtype)
    args = (key_mask, causal, scale)
    ours = _run(attention_op.dispatch, q, k, v, dout, *args)
    wanted = _run(attention_op.reference, q, k, v, dout, *args)
    for name, got, want in zip(("out", "dq", "dk", "dv"), ours, wanted):
        assert got.dtype == want.dtype == dtype, name
        assert_close(got, want, msg=lambda m, name=name: f"{name}: {m}")
    # dispatch took SDPA (not the reference): bit for bit the cpu_sdpa result
    assert torch.equal(ours[0], attention_op.cpu_sdpa(q, k, v, *args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dropout_p", [0.0, 0.4])
def test_queries_without_keys_get_zeros_and_zero_gradients(cpu_exit, dtype, dropout_p):
    """The op's contract (ops/attention.py): a query that sees no key gets a zero output and
    contributes zero gradients; with causal + key mask that is every query before the first
    valid key. torch's plain softmax would give NaN."""
    B, H, L, D = 3, 2, 9, 16
    q, k, v = _inputs(B, H, L, L, D, D, dtype)
    key_mask = torch.ones(B, L, dtype=torch.bool)
    key_mask[0] = False  # sequence 0: no key
    key_mask[1, :4] = False  # sequence 1, causal: queries 0-3 see nothing
    for causal in (False, True):
        out, dq, dk, dv = _run(
            attention_op.dispatch, q, k, v, torch.randn(B, H, L, D).to(dtype), key_mask, causal,
            None, dropout_p,
        )  # fmt: skip
        for t in (out, dq, dk, dv):
            assert torch.isfinite(t).all()
        for t in (out, dq, dk, dv):
            assert torch.equal(t[0], torch.zeros_like(t[0]))
        if causal:
            assert torch.equal(out[1, :, :4], torch.zeros_like(out[1, :, :4]))
            assert torch.equal(dq[1, :, :4], torch.zeros_like(dq[1, :, :4]))
        assert out[2].abs().sum() > 0


def test_dropout_keeps_with_one_minus_p_and_scales(cpu_exit):
    """With V = I the output is the dropped, rescaled weight matrix: every entry is 0 or the
    undropped weight / (1 - p), about p of them are 0, torch.manual_seed repeats the mask, and
    backward uses the forward's mask (dV = out^T dout exactly when V = I)."""
    p, L = 0.25, 64
    q, k = torch.randn(4, 2, L, L), torch.randn(4, 2, L, L)
    v = torch.eye(L).expand(4, 2, L, L).clone().requires_grad_()
    weights = attention_op.reference(q, k, v.detach())
    torch.manual_seed(7)
    out = attention_op.dispatch(q, k, v, None, False, None, p)
    torch.manual_seed(7)
    again = attention_op.dispatch(q, k, v, None, False, None, p)
    assert torch.equal(out, again)
    dropped = out == 0
    assert abs(dropped.float().mean().item() - p) < 0.02  # 32,768 draws: 5 sigma is 0.012
    kept = ~dropped
    assert_close(out[kept], weights[kept] / (1 - p))
    dout = torch.randn_like(out)
    (dv,) = torch.autograd.grad(out, v, dout)
    assert_close(dv, out.detach().transpose(-2, -1) @ dout)


def test_inputs_sdpa_would_treat_otherwise_take_the_reference(cpu_exit, monkeypatch):
    """Mixed dtypes, empty keys and dropout_p = 1 keep the reference's result; argument errors
    are the reference's."""
    calls = []
    reference = attention_op.reference

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return reference(*args, **kwargs)

    monkeypatch.setattr(attention_op, "reference", spy)
    q, k, v = _inputs(1, 2, 4, 4, 16, 16, torch.float32)
    mixed = attention_op.dispatch(q, k, v.to(torch.bfloat16))
    assert mixed.dtype == torch.bfloat16 and len(calls) == 1
    assert_close(mixed, reference(q, k, v.to(torch.bfloat16)))
    none = attention_op.dispatch(q, k[:, :, :0], v[:, :, :0])
    assert torch.equal(none, torch.zeros(1, 2, 4, 16)) and len(calls) == 2
    dropped = attention_op.dispatch(q, k, v, dropout_p=1.0)
    assert torch.equal(dropped, torch.zeros(1, 2, 4, 16)) and len(calls) == 3
    attention_op.dispatch(q, k, v, torch.tensor([[True, False, True, True]]), True)
    assert len(calls) == 3  # the common case never reaches the reference
    with pytest.raises(ValueError, match="key_mask must be a bool tensor"):
        attention_op.dispatch(q, k, v, torch.ones(1, 4))
