"""Fused attention: kernel parity with softmax(QK^T * scale)V in fp32, masks, dropout, dispatch,
and the drop-in functional / MultiheadAttention against torch's.

Kernel tests (the `triton` fixture) run through the Triton interpreter on CPU, so shapes are
small; bf16 tl.dot needs a GPU (marked cuda), bf16 load-and-cast is tested here. With CUDA present
the same tests run the compiled kernels on the GPU, where half-precision results are held to
FlashAttention's rule instead (their dots round to the input dtype there).
"""

from __future__ import annotations

from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from compile_check import run_compile_script
from fbdl_fast import ops
from fbdl_fast.nn import MultiheadAttention
from fbdl_fast.nn.functional import scaled_dot_product_attention
from fbdl_fast.ops import attention as attention_op
from fbdl_fast.ops._dispatch import BackendError
from kernel_calls import count_calls
from tolerances import assert_close

# Every tensor and module here is made on the kernel device (conftest.py): the CPU, under the
# interpreter, on a machine without CUDA; CUDA where it is present.
pytestmark = pytest.mark.usefixtures("on_kernel_device")


def expected_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: Optional[torch.Tensor],
    causal: bool,
    scale: float,
    keep: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    upcast: bool = True,
) -> torch.Tensor:
    """softmax(QK^T * scale + mask)V in float32, written out; rows with no visible key are 0.

    keep: an explicit dropout keep mask (B, H, Lq, Lk), applied as keep * P / (1 - p).
    upcast=False computes in the inputs' dtype instead (the low-precision baseline).
    """
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    Lq, Lk = q.shape[2], k.shape[2]
    scores = q @ k.transpose(-2, -1) * scale  # (B, H, Lq, Lk)
    visible = torch.ones(q.shape[0], 1, Lq, Lk, dtype=torch.bool)
    if causal:
        visible = visible & torch.ones(Lq, Lk, dtype=torch.bool).tril()
    if key_mask is not None:
        visible = visible & key_mask[:, None, None, :]
    weights = torch.exp(scores - scores.detach().amax(-1, keepdim=True)) * visible
    total = weights.sum(-1, keepdim=True)
    probs = weights / torch.where(total > 0, total, torch.ones_like(total))
    if keep is not None:
        probs = probs * keep / (1.0 - dropout_p)
    return probs @ v


def make_inputs(
    B: int, H: int, Lq: int, D: int, dtype: torch.dtype = torch.float32, Lk: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    Lk = Lq if Lk is None else Lk
    q = torch.randn(B, H, Lq, D).to(dtype).requires_grad_()
    k = torch.randn(B, H, Lk, D).to(dtype).requires_grad_()
    v = torch.randn(B, H, Lk, D).to(dtype).requires_grad_()
    return q, k, v


def padding_mask(lengths: list[int], L: int) -> torch.Tensor:
    """bool (B, L), True on the first lengths[b] keys (the ones that take part)."""
    return torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]


def check_against_expected(q, k, v, key_mask, causal, scale=None, dtype=None):
    """Kernel output and dq, dk, dv vs the fp32 formula on the same (rounded) inputs."""
    scale_value = q.shape[-1] ** -0.5 if scale is None else scale
    out = attention_op.dispatch(q, k, v, key_mask, causal, scale)
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = expected_attention(*leaves, key_mask, causal, scale_value)
    rq, rk, rv = torch.autograd.grad(ref, leaves, dout.float())
    assert out.dtype == q.dtype
    for actual, wanted in ((out, ref), (dq, rq), (dk, rk), (dv, rv)):
        assert torch.isfinite(actual).all()
        assert_close(actual, wanted.detach(), dtype=dtype)
    return out, (dq, dk, dv), (ref, rq, rk, rv)


# --- kernel parity (interpreter) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("L", "D", "padded", "causal"),
    [
        (1, 16, False, False),
        (7, 16, True, False),
        (7, 64, False, True),
        (64, 16, True, True),
        (64, 64, False, False),
        (100, 16, True, True),  # two blocks, masked tail block
        (100, 64, False, True),
        (100, 64, True, False),
    ],
)
def test_kernel_matches_fp32_formula(triton, L, D, padded, causal):
    q, k, v = make_inputs(2, 2, L, D)
    key_mask = padding_mask([L, max(1, L // 2)], L) if padded else None
    check_against_expected(q, k, v, key_mask, causal)


def test_kernel_uses_the_given_scale(triton):
    q, k, v = make_inputs(1, 2, 20, 32)
    check_against_expected(q, k, v, padding_mask([13], 20), False, scale=0.37)


def test_kernel_cross_attention_lengths(triton):
    # Lq != Lk, causal in torch's top-left convention (query i sees keys j <= i).
    q, k, v = make_inputs(2, 1, 7, 16, Lk=100)
    check_against_expected(q, k, v, padding_mask([100, 3], 100), True)


@pytest.mark.parametrize("L", [7, 100])
def test_fully_masked_queries_give_zeros_and_zero_gradients(triton, L):
    # Batch 1 has every key padded; with causal masking query 0 of batch 0 sees only key 0,
    # which is padded too. Those rows must be exact zeros (not NaN) with zero gradients.
    key_mask = padding_mask([L, 0], L)
    key_mask[0, 0] = False
    q, k, v = make_inputs(2, 2, L, 16)
    out, (dq, dk, dv), _ = check_against_expected(q, k, v, key_mask, causal=True)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(out[0, :, 0], torch.zeros_like(out[0, :, 0]))
    for grad in (dq[1], dk[1], dv[1], dq[0, :, 0], dk[0, :, 0], dv[0, :, 0]):
        assert torch.equal(grad, torch.zeros_like(grad))


def check_flash_rule(q, k, v, key_mask, causal):
    """FlashAttention's rule for half precision on a GPU, where the kernel's dots round to the
    input dtype: output and gradients at most twice the error (against the fp32 formula) of the
    same formula computed in this dtype."""
    scale = q.shape[-1] ** -0.5
    out = attention_op.dispatch(q, k, v, key_mask, causal)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = expected_attention(*leaves, key_mask, causal, scale)
    ref_grads = torch.autograd.grad(ref, leaves, dout.float())
    low = expected_attention(q, k, v, key_mask, causal, scale, upcast=False)
    low_grads = torch.autograd.grad(low, (q, k, v), dout)
    for actual, baseline, wanted in zip((out, *grads), (low, *low_grads), (ref, *ref_grads)):
        error = (actual.float() - wanted.detach()).abs().max()
        baseline_error = (baseline.float() - wanted.detach()).abs().max()
        assert error <= 2 * baseline_error + 1e-5, (error, baseline_error)


def test_kernel_fp16(triton):
    q, k, v = make_inputs(2, 2, 100, 64, dtype=torch.float16)
    check = check_flash_rule if q.is_cuda else check_against_expected
    check(q, k, v, padding_mask([100, 37], 100), True)


def test_kernel_bf16_load_and_cast(triton):
    """bf16 inputs, key mask, no causal mask.

    In the interpreter (a CPU) this proves the bf16 plumbing only: the host sets UPCAST, so the
    kernel loads bf16 tiles, casts them to fp32 and computes every dot, exp and sum in fp32, and
    rounds the output to bf16 once; the result is held to the fp32 formula. It does not run a bf16
    tl.dot (the interpreter cannot), so it says nothing about bf16 dot accuracy, bf16
    accumulation, or the GPU's code for them: test_kernel_half_precision_on_gpu (cuda) covers
    those, against FlashAttention's rule. Where CUDA is, this test runs the bf16 dots too.
    """
    q, k, v = make_inputs(2, 2, 64, 16, dtype=torch.bfloat16)
    check = check_flash_rule if q.is_cuda else check_against_expected
    check(q, k, v, padding_mask([64, 20], 64), False)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [16, 32, 64, 128])
def test_kernel_half_precision_on_gpu(triton, dtype, D):
    q, k, v = make_inputs(2, 3, 300, D, dtype)
    check_flash_rule(q, k, v, padding_mask([300, 111], 300), True)


# --- dropout ------------------------------------------------------------------------------------


def _dropout_probe(p: float, seed: int):
    """Attention with V = I (Lk = D = 64): the output *is* the dropped, rescaled weight matrix."""
    torch.manual_seed(seed)
    B, H, L = 2, 2, 64
    q, k, _ = make_inputs(B, H, L, L)
    v = torch.eye(L).expand(B, H, L, L).clone().requires_grad_()
    out = attention_op.dispatch(q, k, v, None, False, None, p)
    return q, k, v, out


def test_dropout_statistics(triton):
    p = 0.3
    q, k, v, out = _dropout_probe(p, seed=1)
    probs = expected_attention(q.detach(), k.detach(), v.detach(), None, False, 64**-0.5)
    kept = out != 0
    fraction_dropped = 1.0 - kept.float().mean().item()
    assert abs(fraction_dropped - p) < 0.02  # 16384 draws: 5 standard deviations is 0.018
    # Kept weights are rescaled by exactly 1 / (1 - p), so E[out] = the undropped weights.
    assert_close(out[kept], probs[kept] / (1 - p))
    assert abs(out.detach().mean().item() / probs.mean().item() - 1.0) < 0.03


def test_dropout_mask_same_in_forward_and_backward(triton):
    p = 0.25
    q, k, v, out = _dropout_probe(p, seed=2)
    keep = out.detach() != 0
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    # The reference with the forward's own mask must give the same output and gradients: the
    # backward regenerated exactly that mask.
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    ref = expected_attention(*leaves, None, False, 64**-0.5, keep=keep, dropout_p=p)
    rq, rk, rv = torch.autograd.grad(ref, leaves, dout)
    assert_close(out, ref.detach())
    for actual, wanted in ((dq, rq), (dk, rk), (dv, rv)):
        assert_close(actual, wanted)


def test_dropout_is_seeded_by_torch_generator(triton):
    _, _, _, first = _dropout_probe(0.5, seed=3)
    _, _, _, again = _dropout_probe(0.5, seed=3)
    _, _, _, other = _dropout_probe(0.5, seed=4)
    assert torch.equal(first, again)
    assert not torch.equal(first != 0, other != 0)


# --- reference path and dispatch ---------------------------------------------------------------


def test_reference_matches_torch_sdpa_and_zeroes_empty_rows():
    q, k, v = make_inputs(2, 2, 9, 16)
    key_mask = padding_mask([9, 4], 9)
    out = attention_op.reference(q, k, v, key_mask, causal=True)
    torch_mask = key_mask[:, None, None, :] & torch.ones(9, 9, dtype=torch.bool).tril()
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=torch_mask))
    empty = attention_op.reference(q, k, v, padding_mask([0, 0], 9))
    assert torch.equal(empty, torch.zeros_like(empty))
    (grad,) = torch.autograd.grad(empty.sum(), q)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_dispatch_paths(monkeypatch):
    q, k, v = make_inputs(1, 1, 8, 16)
    monkeypatch.setenv("FBDL_FAST_BACKEND", "torch")
    assert ops.explain("attention", q, k, v).path == "torch"
    monkeypatch.setenv("FBDL_FAST_BACKEND", "auto")
    assert ops.explain("attention", q, k, v).path == "triton"  # CUDA, or the interpreter
    odd = make_inputs(1, 1, 8, 24)  # head dim 24 has no kernel tile
    decision = ops.explain("attention", *odd)
    assert decision.path == "torch" and "24" in decision.reason
    assert ops.explain("attention", q, k, v, dropout_p=1.0).path == "torch"
    monkeypatch.setenv("FBDL_FAST_BACKEND", "triton")
    with pytest.raises(BackendError, match="float64"):
        attention_op.dispatch(*(t.double() for t in (q, k, v)))


def test_bad_inputs_name_the_problem():
    q, k, v = make_inputs(2, 1, 8, 16)
    with pytest.raises(ValueError, match=r"key_mask must be a bool tensor of shape \(2, 8\)"):
        attention_op.dispatch(q, k, v, torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="dropout_p must be in"):
        attention_op.dispatch(q, k, v, dropout_p=1.5)
    with pytest.raises(ValueError, match="must be 4-D"):
        attention_op.dispatch(q[0], k[0], v[0])


# --- functional SDPA ------------------------------------------------------------------------------


def test_sdpa_key_mask_runs_the_kernel(triton, monkeypatch):
    calls = count_calls(monkeypatch, attention_op.AttentionFunction)
    q, k, v = make_inputs(2, 2, 30, 32)
    key_mask = padding_mask([30, 11], 30)
    out = scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
    assert len(calls) == 1, "a [B, 1, 1, Lk] bool mask must reach the kernel as a key mask"
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :]))
    shared = key_mask[1][None, None, None, :]  # one mask for the whole batch (stride 0)
    for mask in (shared, key_mask[1][None]):  # [1, 1, 1, Lk] and [1, Lk]: broadcast over B
        calls.clear()
        out = scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert len(calls) == 1, f"a key mask of shape {tuple(mask.shape)} took torch's SDPA"
        assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    calls.clear()
    causal = scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2)
    assert len(calls) == 1
    assert_close(causal, F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2))


def test_sdpa_other_masks_take_torch(triton, monkeypatch):
    # A per-query mask is not a key mask: torch's SDPA runs it (no BackendError even under triton).
    calls = count_calls(monkeypatch, attention_op.AttentionFunction)
    q, k, v = make_inputs(2, 2, 10, 16)
    mask = torch.rand(2, 1, 10, 10) > 0.3
    mask[..., 0] = True
    out = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert calls == []


# --- MultiheadAttention ---------------------------------------------------------------------------


def _mha_pair(batch_first: bool, **kwargs) -> tuple[MultiheadAttention, torch.nn.Module]:
    theirs = torch.nn.MultiheadAttention(32, 2, batch_first=batch_first, **kwargs)
    ours = MultiheadAttention(32, 2, batch_first=batch_first, **kwargs)
    ours.load_state_dict(theirs.state_dict())  # torch's state_dict loads as is
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    return ours, theirs


@pytest.mark.parametrize(("batch_first", "float_mask"), [(True, False), (False, True)])
def test_mha_matches_torch_with_padding(triton, batch_first, float_mask):
    ours, theirs = _mha_pair(batch_first, dropout=0.1)
    ours.eval(), theirs.eval()
    B, L = 3, 20
    x = torch.randn(B, L, 32) if batch_first else torch.randn(L, B, 32)
    key_padding_mask = ~padding_mask([20, 9, 1], L)  # torch's convention: True = padded
    if float_mask:  # what torch's own encoder layers pass: 0 on real keys, -inf on padding
        key_padding_mask = torch.zeros(B, L).masked_fill(key_padding_mask, float("-inf"))
    results = []
    for module in (ours, theirs):
        inp = x.clone().requires_grad_()
        out, weights = module(inp, inp, inp, key_padding_mask=key_padding_mask, need_weights=False)
        assert weights is None
        dout = torch.ones_like(out) + torch.arange(out.numel()).reshape(out.shape) % 3
        grads = torch.autograd.grad(out, (inp, *module.parameters()), dout)
        results.append((out, grads))
    (out, grads), (ref, ref_grads) = results
    assert_close(out, ref)
    for grad, ref_grad in zip(grads, ref_grads):
        assert_close(grad, ref_grad)
    # In training the module's dropout reaches the kernel: the result changes.
    ours.train()
    dropped, _ = ours(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)
    assert not torch.allclose(dropped, out)


def test_mha_cross_attention_with_kdim_vdim_and_causal_hint(triton):
    ours, theirs = _mha_pair(True, kdim=16, vdim=24)
    query, key, value = torch.randn(2, 12, 32), torch.randn(2, 12, 16), torch.randn(2, 12, 24)
    causal = torch.ones(12, 12, dtype=torch.bool).triu(1)  # torch MHA: True = not allowed
    kpm = ~padding_mask([12, 7], 12)
    kwargs = dict(key_padding_mask=kpm, need_weights=False, attn_mask=causal, is_causal=True)
    out, _ = ours(query, key, value, **kwargs)
    ref, _ = theirs(query, key, value, **kwargs)
    assert_close(out, ref)


def test_mha_reference_cases_equal_torch(monkeypatch):
    # need_weights=True and an additive float mask take torch's own forward: identical results.
    monkeypatch.setenv("FBDL_FAST_BACKEND", "auto")
    ours, theirs = _mha_pair(True)
    x = torch.randn(2, 6, 32)
    kpm = torch.zeros(2, 6)
    kpm[1, 4:] = float("-inf")
    kpm[0, 2] = -0.5  # a bias, not padding
    for kwargs in ({"need_weights": True}, {"need_weights": False, "key_padding_mask": kpm}):
        out, weights = ours(x, x, x, **kwargs)
        ref, ref_weights = theirs(x, x, x, **kwargs)
        assert torch.equal(out, ref)
        assert (weights is None and ref_weights is None) or torch.equal(weights, ref_weights)
    with pytest.raises(RuntimeError, match="is_causal=True needs attn_mask"):
        ours(x, x, x, need_weights=False, is_causal=True)


def test_mha_need_weights_under_forced_triton_says_why(triton):
    ours, _ = _mha_pair(True)
    x = torch.randn(2, 6, 32)
    with pytest.raises(BackendError, match="need_weights"):
        ours(x, x, x)


# Compiles the three kernels as a GPU launch would (the host's own block sizes, warps, stages and
# flags, read with the interpreter off), for sm_90, with tests/compile_check.py. D=64 with a key
# mask, causal masking and dropout; D=128 (the largest tiles) with none, so every constexpr
# branch is compiled once per dtype. Prints one line per kernel: name, dtype, D, whether a cubin
# came out and whether its shared memory fits an H100 block.
_COMPILE_FOR_H100 = """
import inspect
import torch
from compile_check import H100_SHARED_BYTES, compile_for_gpu
from fbdl_fast.kernels import attention as K

for dtype, name in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
    for d, features in ((64, True), (128, False)):
        types = dict.fromkeys(("Q", "K", "V", "O", "DO", "DQ", "DK", "DV"), f"*{name}")
        types.update(LSE="*fp32", DELTA="*fp32", KMASK="*u8" if features else f"*{name}",
                     sm_scale="fp32", qk_scale="fp32", dropout_p="fp32", seed="i64")
        flags = dict(HAS_MASK=features, CAUSAL=features, DROPOUT=features, **K._flags(dtype))
        fwd = K._launch_config(1024, 1024, d, backward=False)
        bwd = K._launch_config(1024, 1024, d, backward=True)
        for kernel, cfg, constants in (
            (K._attn_fwd, fwd, flags),
            (K._attn_bwd_dkdv, bwd, flags),
            (K._attn_bwd_dq, bwd, flags),
        ):
            params = inspect.signature(kernel.fn).parameters
            blocks = {k: v for k, v in cfg.items() if k.startswith("BLOCK")}
            options = {k: v for k, v in cfg.items() if k not in blocks}
            compiled = compile_for_gpu(
                kernel, {k: v for k, v in types.items() if k in params},
                dict(D=d, **blocks, **constants), default="i32", **options)
            fits = compiled.metadata.shared <= H100_SHARED_BYTES
            print(kernel.fn.__name__, name, d, "cubin" in compiled.asm, fits)
"""


@pytest.mark.slow
def test_kernels_compile_for_h100(tmp_path):
    """The interpreter runs the kernels as Python (and bf16 dots not at all): compiling finds what
    only the compiler rejects, on a machine without a GPU."""
    stdout = run_compile_script(_COMPILE_FOR_H100, tmp_path)
    kernels = ("_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq")
    assert stdout.splitlines() == [
        f"{kernel} {dtype} {d} True True"
        for dtype in ("fp16", "bf16")
        for d in (64, 128)
        for kernel in kernels
    ]
