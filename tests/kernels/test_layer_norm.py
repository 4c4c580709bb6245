"""Fused LayerNorm against torch.nn.LayerNorm: output and the gradients of input, weight and bias.

The Triton kernels run under the `triton` fixture (or `kernel_device`, for the launchers called
directly): on CUDA tensors where CUDA is, else on CPU tensors through the interpreter
(TRITON_INTERPRET=1, set in conftest.py); each parity test also checks that the Triton path ran.
The reference is torch.nn.LayerNorm in float64 on the same values, so the tolerance
(tests/tolerances.py) bounds our error against the exact answer; half-precision results must land
within rounding of it.

The interpreter costs milliseconds per row, so the cases below cover each size, dtype, affine mode
and row count once rather than their full cross product.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compile_check import run_compile_script
from fbdl_fast.kernels import layer_norm as kernels
from fbdl_fast.nn import LayerNorm, functional
from fbdl_fast.nn.layer_norm import layer_norm
from fbdl_fast.ops import layer_norm as op
from tolerances import assert_close

FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16
TRITON_GRAD_FN = "LayerNormFunctionBackward"


def _modules(shape, dtype: torch.dtype, affine: str, eps: float = 1e-5):
    """Ours in `dtype` with random parameters, and torch's in float64 with the same values.
    affine: "affine" (weight and bias), "no_bias" (weight only), "none"."""
    kwargs = dict(eps=eps, elementwise_affine=affine != "none", bias=affine == "affine")
    ours = LayerNorm(shape, dtype=dtype, **kwargs)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_()  # the defaults (ones, zeros) would hide a swapped weight and bias
    ref = torch.nn.LayerNorm(shape, dtype=torch.float64, **kwargs)
    ref.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    return ours, ref


def _check(
    ours: torch.nn.Module,
    ref: torch.nn.Module,
    base: torch.Tensor,
    view: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    dy: Optional[torch.Tensor] = None,
) -> None:
    """Forward view(base) through both modules, backward dy, compare everything."""
    base = base.detach().requires_grad_()
    base64 = base.detach().double().requires_grad_()
    y = ours(view(base))
    assert type(y.grad_fn).__name__ == TRITON_GRAD_FN, "the Triton path did not run"
    y_ref = ref(view(base64))
    assert y.dtype == base.dtype and y.shape == y_ref.shape
    dy = torch.randn(y.shape, dtype=y.dtype, device=y.device) if dy is None else dy
    y.backward(dy)
    y_ref.backward(dy.double())
    assert_close(y, y_ref)
    assert_close(base.grad, base64.grad)
    for (name, p), p_ref in zip(ours.named_parameters(), ref.parameters()):
        assert p.grad is not None, name
        assert_close(p.grad, p_ref.grad)


# (normalized size, rows, dtype, affine): every size in fp32 plus half precision on a subset;
# rows from 1 to 300, counts not divisible by the backward's program count included.
PARITY = [
    (1, 5, FP32, "affine"),
    (7, 300, FP32, "affine"),
    (64, 37, FP32, "affine"),
    (100, 20, FP32, "affine"),
    (768, 8, FP32, "affine"),
    (1000, 6, FP32, "affine"),
    (4096, 2, FP32, "affine"),
    (7, 2, FP32, "none"),
    (100, 1, FP32, "none"),
    (768, 3, FP32, "no_bias"),
    (7, 13, FP16, "affine"),
    (100, 9, FP16, "affine"),
    (768, 4, FP16, "affine"),
    (1000, 3, FP16, "no_bias"),
    (7, 13, BF16, "affine"),
    (64, 11, BF16, "affine"),
    (768, 4, BF16, "affine"),
    (1000, 3, BF16, "none"),
    (4096, 1, BF16, "affine"),
]


@pytest.mark.parametrize("n, rows, dtype, affine", PARITY)
def test_matches_torch(triton, n: int, rows: int, dtype: torch.dtype, affine: str) -> None:
    ours, ref = _modules(n, dtype, affine)
    _check(ours, ref, torch.randn(rows, n, dtype=dtype) * 3 + 1)


def test_3d_input(triton) -> None:
    ours, ref = _modules(100, FP32, "affine")
    _check(ours, ref, torch.randn(2, 5, 100))


def test_multi_dim_normalized_shape(triton) -> None:
    ours, ref = _modules((4, 25), BF16, "affine")
    _check(ours, ref, torch.randn(2, 3, 4, 25, dtype=BF16))


@pytest.mark.parametrize("layout", ["transposed", "column_slice", "column_step"])
def test_non_contiguous_input(triton, layout: str) -> None:
    ours, ref = _modules(64, FP32, "affine")
    base, view = {
        "transposed": (torch.randn(64, 3, 5), lambda t: t.permute(1, 2, 0)),  # rows copied
        "column_slice": (torch.randn(6, 80), lambda t: t[:, 8:72]),  # row stride 80, a view
        "column_step": (torch.randn(6, 128), lambda t: t[:, ::2]),  # column stride 2, a view
    }[layout]
    assert not view(base).is_contiguous()
    _check(ours, ref, base, view)


def test_non_contiguous_and_broadcast_grads(triton) -> None:
    ours, ref = _modules(100, FP32, "affine")
    _check(ours, ref, torch.randn(9, 100), dy=torch.randn(100, 9).t())
    _check(ours, ref, torch.randn(9, 100), dy=torch.randn(1, 100).expand(9, 100))  # stride 0


@pytest.mark.parametrize("eps", [1e-1, 1e-12])
def test_eps(triton, eps: float) -> None:
    ours, ref = _modules(64, FP32, "affine", eps=eps)
    _check(ours, ref, torch.randn(4, 64) * 0.1)  # variance 0.01: eps=0.1 changes the result


def test_weight_only_gradients(triton) -> None:
    ours, ref = _modules(64, FP32, "affine")
    x = torch.randn(5, 64)
    ours(x).sum().backward()
    ref(x.double()).sum().backward()
    assert_close(ours.weight.grad, ref.weight.grad)
    assert_close(ours.bias.grad, ref.bias.grad)


def test_mixed_precision_parameters(triton) -> None:
    """A bf16 input with fp32 parameters (what CPU autocast feeds): output bf16, grads fp32."""
    ours, ref = _modules(100, FP32, "affine")
    base = torch.randn(6, 100, dtype=BF16).requires_grad_()
    y = ours(base)
    assert type(y.grad_fn).__name__ == TRITON_GRAD_FN
    torch_y = F.layer_norm(base.detach(), (100,), ours.weight.detach(), ours.bias.detach())
    assert y.dtype == torch_y.dtype == BF16
    base64 = base.detach().double().requires_grad_()
    dy = torch.randn(6, 100, dtype=BF16)
    y.backward(dy)
    ref(base64).backward(dy.double())
    assert_close(y, ref(base64))
    assert_close(base.grad, base64.grad)
    assert ours.weight.grad.dtype == FP32
    assert_close(ours.weight.grad, ref.weight.grad, dtype=BF16)  # dy is bf16-rounded


def test_long_rows_take_the_tiled_path(triton) -> None:
    """Rows wider than MAX_TILE are walked in tiles (forward three passes, backward two)."""
    n = kernels.MAX_TILE + 1808
    ours, ref = _modules(n, FP32, "affine")
    _check(ours, ref, torch.randn(3, n))


@pytest.mark.parametrize("dtype, affine", [(FP32, "affine"), (BF16, "no_bias"), (FP32, "none")])
def test_tiled_path_small_tiles(kernel_device: str, dtype: torch.dtype, affine: str) -> None:
    """The tiled path with 32-wide tiles over 100 values: partial last tile, several programs."""
    n, rows = 100, 5  # 5 rows: 3 programs of 2, 2 and 1 rows
    x = torch.randn(rows, n, dtype=dtype)
    w = torch.randn(n, dtype=dtype) if affine != "none" else None
    b = torch.randn(n, dtype=dtype) if affine == "affine" else None
    dy = torch.randn(rows, n, dtype=dtype)
    y, mean, rstd = kernels.layer_norm_forward(x, n, w, b, 1e-5, max_tile=32)
    dx, dw, db = kernels.layer_norm_backward(
        dy, x, n, w, b, mean, rstd, w is not None, b is not None, max_tile=32
    )
    leaves = [t.double().requires_grad_() if t is not None else None for t in (x, w, b)]
    y_ref = F.layer_norm(leaves[0], (n,), leaves[1], leaves[2], 1e-5)
    y_ref.backward(dy.double())
    assert_close(y, y_ref)
    assert_close(mean, x.double().mean(-1), dtype=FP32)
    assert_close(rstd, torch.rsqrt(x.double().var(-1, unbiased=False) + 1e-5), dtype=FP32)
    assert_close(dx, leaves[0].grad)
    for grad, leaf in ((dw, leaves[1]), (db, leaves[2])):
        assert (grad is None) == (leaf is None)
        if grad is not None:
            assert_close(grad, leaf.grad)


def test_bf16_output_is_rounded_to_nearest(kernel_device: str) -> None:
    """bf16 results are the fp32 results rounded to nearest even (torch's .to(bfloat16)), not
    truncated as the interpreter's own cast would; ~1/256 of them round up across a binade."""
    n = 768
    x, w, b = (torch.randn(s, dtype=BF16) for s in ((4, n), (n,), (n,)))
    y, _, _ = kernels.layer_norm_forward(x, n, w, b, 1e-5)
    y32, _, _ = kernels.layer_norm_forward(x.float(), n, w.float(), b.float(), 1e-5)
    assert torch.equal(y, y32.to(BF16))
    dy = torch.randn(4, n, dtype=BF16)
    _, mean, rstd = kernels.layer_norm_forward(x.float(), n, w.float(), b.float(), 1e-5)
    dx, _, _ = kernels.layer_norm_backward(dy, x, n, w, b, mean, rstd, False, False)
    dx32, _, _ = kernels.layer_norm_backward(
        dy.float(), x.float(), n, w.float(), b.float(), mean, rstd, False, False
    )
    assert torch.equal(dx, dx32.to(BF16))


def _bf16_ties(pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """fp32 values exactly halfway between two bf16 neighbours (low 16 bits 0x8000), half of
    them above a bf16 with an even last bit, half above an odd one, plus values one fp32 ulp off
    a tie each way; magnitudes in [1/16, 16), both signs. Returns them as fp32 and, computed in
    the integer bits (not by any cast), their round-to-nearest-even bf16 bit patterns."""
    rng = np.random.default_rng(seed)
    sign = rng.integers(0, 2, pairs, dtype=np.uint32) << 15
    exponent = rng.integers(123, 131, pairs, dtype=np.uint32) << 7  # 2**-4 .. 2**3
    mantissa = rng.integers(0, 128, pairs, dtype=np.uint32)
    mantissa[: pairs // 2] &= ~np.uint32(1)  # even last bit: a tie stays down
    mantissa[pairs // 2 :] |= 1  # odd: a tie goes up
    high = sign | exponent | mantissa  # the bf16 below (in magnitude) each value
    low = np.resize(np.array([0x8000, 0x8000, 0x8001, 0x7FFF], dtype=np.uint32), pairs)
    bits = (high << 16) | low
    tie, odd = low == 0x8000, (high & 1) == 1
    up = (low == 0x8001) | (tie & odd)
    expected = (high + up).astype(np.uint16)  # +1 in the bits: the next bf16 away from zero
    return bits.view(np.float32), expected


def _as_bf16(bits: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(bits.astype(np.int16)).view(BF16)


@pytest.mark.parametrize("max_tile", [8192, 32], ids=["one-tile", "tiled"])
def test_bf16_rounds_exact_ties_to_even(kernel_device: str, max_tile: int) -> None:
    """Inputs built so the kernels' fp32 results are exact bf16 ties, against round-half-to-even
    computed in the bits: random inputs almost never hold a tie, so ties-away passes them.
    Forward: constant rows normalise to exactly 0, so y = bias, the ties. Backward (the autocast
    combination: bf16 x, fp32 dy): x = +-2 alternating, mean 0 and rstd 0.5 given, dy = 2t in the
    pattern t, t, -t, -t, so both row means of the dx formula are exactly 0 and dx = t."""
    n = 64
    ties, expected_bits = _bf16_ties(n, seed=3)
    expected = _as_bf16(expected_bits).to(kernel_device)
    t = torch.from_numpy(ties).to(kernel_device)
    assert torch.equal(t.cpu().to(BF16), expected.cpu()), "the construction itself is wrong"

    x = torch.full((3, n), 3.0, dtype=BF16)
    y, mean, _ = kernels.layer_norm_forward(x, n, torch.ones(n), t, 1e-5, max_tile=max_tile)
    assert torch.equal(mean, torch.full((3,), 3.0)), "constant rows must have an exact mean"
    assert y.dtype == BF16 and torch.equal(y, expected.expand(3, n))

    x = torch.tensor([2.0, -2.0] * (n // 2), dtype=BF16).expand(3, n).contiguous()
    # Built on the CPU, then moved: ties t0, t0, -t0, -t0, t1, t1, -t1, -t1, ...
    pick = torch.arange(n, device="cpu") // 4
    signs = torch.tensor([1.0, 1.0, -1.0, -1.0], device="cpu").repeat(n // 4)
    dy = (2 * torch.from_numpy(ties)[pick] * signs).expand(3, n).contiguous().to(kernel_device)
    mean, rstd = torch.zeros(3), torch.full((3,), 0.5)
    dx, _, _ = kernels.layer_norm_backward(
        dy, x, n, None, None, mean, rstd, False, False, max_tile=max_tile
    )
    want = _as_bf16(expected_bits)[pick] * signs.to(BF16)  # a sign change is exact
    assert dx.dtype == BF16 and torch.equal(dx.cpu(), want.expand(3, n))


def test_no_rows(triton) -> None:
    ours, _ = _modules(64, FP32, "affine")
    x = torch.randn(0, 64, requires_grad=True)
    y = ours(x)
    assert y.shape == (0, 64)
    y.sum().backward()
    assert torch.equal(ours.weight.grad, torch.zeros(64))
    assert torch.equal(ours.bias.grad, torch.zeros(64))


def test_no_grad_forward(triton) -> None:
    ours, ref = _modules(64, BF16, "affine")
    x = torch.randn(3, 64, dtype=BF16)
    with torch.no_grad():
        y = ours(x)
    assert y.grad_fn is None
    assert_close(y, ref(x.double()))


def test_autocast_matches_torch(triton: str) -> None:
    """Under autocast our output dtype is torch's: on the CPU torch leaves layer_norm alone (no
    autocast rule), so the input's dtype; on CUDA its fp32 list gives fp32."""
    ours, ref = _modules(64, FP32, "affine")
    torch_ln = torch.nn.LayerNorm(64)
    torch_ln.load_state_dict(ours.state_dict())
    for x in (torch.randn(3, 64), torch.randn(3, 64, dtype=BF16)):
        with torch.autocast(triton, dtype=BF16):
            y, y_torch = ours(x), torch_ln(x)
        assert y.dtype == y_torch.dtype == (x.dtype if triton == "cpu" else FP32)
        assert type(y.grad_fn).__name__ == TRITON_GRAD_FN
        assert_close(y, ref(x.double()))


def test_autocast_rule_agrees_with_torch() -> None:
    """AUTOCAST_FP32_DEVICES lists exactly the devices where torch registers an autocast kernel for
    layer_norm (its fp32 list)."""
    for device, key in (("cpu", "AutocastCPU"), ("cuda", "AutocastCUDA")):
        registered = torch._C._dispatch_has_kernel_for_dispatch_key("aten::layer_norm", key)
        assert registered == (device in op.AUTOCAST_FP32_DEVICES), device


@pytest.mark.cuda
def test_cuda_autocast_gives_fp32(triton) -> None:
    ours = LayerNorm(768, device="cuda")
    x = torch.randn(4, 768, device="cuda", dtype=FP16)
    with torch.autocast("cuda", dtype=FP16):
        y, y_torch = ours(x), F.layer_norm(x, (768,), ours.weight, ours.bias)
    assert y.dtype == y_torch.dtype == FP32
    assert_close(y, y_torch)


@pytest.mark.cuda
@pytest.mark.parametrize("n", [768, 1024, 4096, 8192, 12000])
@pytest.mark.parametrize("dtype", [FP32, FP16, BF16], ids=str)
def test_cuda_parity_at_model_sizes(triton, n: int, dtype: torch.dtype) -> None:
    """On a GPU: the compiled kernels (not the interpreter) at the benchmarked sizes."""
    ours, ref = _modules(n, dtype, "affine")
    ours.cuda()
    ref.cuda()
    _check(ours, ref, torch.randn(4096, n, dtype=dtype, device="cuda"))


# Compiles the kernels as a GPU launch would (contiguous rows: Triton specialises a stride of 1)
# for sm_90, with tests/compile_check.py. Prints one line per kernel.
_COMPILE_FOR_H100 = """
from compile_check import compile_for_gpu
from fbdl_fast.kernels import layer_norm as K

for block, one_tile in ((1024, True), (4096, False)):
    flags = {"BLOCK_N": block, "ONE_TILE": one_tile}
    options = {"num_warps": K._num_warps(block), "enable_fp_fusion": K.FP_FUSION}
    kernel = compile_for_gpu(K._forward_kernel, {
        "X": "*bf16", "Y": "*bf16", "W": "*fp32", "B": "*fp32", "Mean": "*fp32", "Rstd": "*fp32",
        "stride_xm": "i64", "N": "i32", "eps": "fp32"},
        {"stride_xn": 1, "HAS_WEIGHT": True, "HAS_BIAS": True, **flags}, **options)
    print("_forward_kernel", block, "cubin" in kernel.asm)
    kernel = compile_for_gpu(K._backward_kernel, {
        "X": "*bf16", "DY": "*bf16", "DX": "*bf16", "W": "*fp32", "Mean": "*fp32",
        "Rstd": "*fp32", "DW": "*fp32", "DB": "*fp32", "C1": "*fp32", "C2": "*fp32",
        "stride_xm": "i64", "stride_dym": "i64", "M": "i32", "N": "i32",
        "rows_per_program": "i32"},
        {"stride_xn": 1, "stride_dyn": 1, "HAS_WEIGHT": True, "COMPUTE_DW": True,
         "COMPUTE_DB": True, **flags}, **options)
    print("_backward_kernel", block, "cubin" in kernel.asm)
"""


@pytest.mark.slow
def test_kernels_compile_for_h100(tmp_path: Path) -> None:
    """The interpreter runs Python, not the compiler: this catches what only compiling finds
    (types, constexpr branches, the bf16 bit rounding) on a machine without a GPU."""
    stdout = run_compile_script(_COMPILE_FOR_H100, tmp_path)
    assert stdout.splitlines() == [
        "_forward_kernel 1024 True",
        "_backward_kernel 1024 True",
        "_forward_kernel 4096 True",
        "_backward_kernel 4096 True",
    ]


def test_gradcheck_reference_float64() -> None:
    """The reference path (FBDL_FAST_BACKEND=torch, the test default) in float64."""
    x = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert op.explain(x, (5,), w, b).path == "torch"
    assert torch.autograd.gradcheck(lambda *t: layer_norm(t[0], (5,), t[1], t[2]), (x, w, b))
    assert torch.autograd.gradcheck(lambda t: layer_norm(t, (2, 5), eps=1e-3), (x,))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"bias": False}, {"elementwise_affine": False}, {"eps": 1e-6, "normalized_shape": (3, 8)}],
)
def test_state_dict_round_trip(kwargs: dict) -> None:
    shape = kwargs.pop("normalized_shape", 8)
    theirs = torch.nn.LayerNorm(shape, **kwargs)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    ours = LayerNorm(shape, **kwargs)
    assert isinstance(ours, torch.nn.LayerNorm)
    assert repr(ours) == repr(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    back = torch.nn.LayerNorm(shape, **kwargs)
    back.load_state_dict(ours.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    x = torch.randn(2, *ours.normalized_shape)
    assert torch.equal(ours(x), theirs(x))  # the reference path (test default) is torch's own


def test_signatures_match_torch() -> None:
    assert functional.layer_norm is layer_norm
    ours = inspect.signature(layer_norm).parameters
    assert list(ours) == list(inspect.signature(F.layer_norm).parameters)
    assert [p.default for p in ours.values()][2:] == [None, None, 1e-5]
    assert list(inspect.signature(LayerNorm).parameters) == list(
        inspect.signature(torch.nn.LayerNorm).parameters
    )


def test_module_constructor_arguments() -> None:
    ln = LayerNorm([4, 6], eps=1e-3, elementwise_affine=True, bias=False, dtype=torch.float64)
    assert ln.normalized_shape == (4, 6) and ln.eps == 1e-3 and ln.bias is None
    assert ln.weight.dtype == torch.float64 and torch.equal(ln.weight, torch.ones(4, 6).double())


def test_normalized_shape_forms() -> None:
    """Whatever F.layer_norm takes as a shape; a float shape is refused, then an equal int one is
    still accepted (no check is cached by value: 8.0 == 8)."""
    x = torch.randn(3, 2, 4)
    expected = F.layer_norm(x, (2, 4))
    for shape in ((2, 4), [2, 4], torch.Size([2, 4]), range(2, 5, 2), [np.int64(2), 4]):
        assert torch.equal(layer_norm(x, shape), expected), shape
    assert torch.equal(layer_norm(x, np.int64(4)), F.layer_norm(x, (4,)))
    with pytest.raises(ValueError, match=r"got \(4\.0,\)"):
        layer_norm(x, (4.0,))
    assert torch.equal(layer_norm(x, (4,)), F.layer_norm(x, (4,)))


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.randn(3, 8), (7,)), r"input of shape \(3, 8\) does not end with normalized_shape"),
        ((torch.randn(8), (2, 8)), r"input of shape \(8,\) does not end"),
        ((torch.randn(3, 8), ()), r"normalized_shape must be an int or a non-empty sequence"),
        ((torch.randn(3, 8), [8.0]), r"non-empty sequence of ints, got \[8\.0\]"),
        ((torch.randn(3, 8), (8,), torch.ones(7)), r"weight has shape \(7,\)"),
        ((torch.randn(3, 8), (8,), None, torch.ones(2, 4)), r"bias has shape \(2, 4\)"),
    ],
)
def test_bad_arguments(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        layer_norm(*args)
