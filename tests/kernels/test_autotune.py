"""Opt-in autotune: FBDL_FAST_AUTOTUNE=1 makes the LayerNorm forward
(rows up to 2,048) and the attention kernels pick their launch by Triton's autotune on CUDA,
among candidates whose first is the documented rule's; the interpreter keeps the rule.

Here: the setting is read once and refreshed; the shared-memory estimates against hand counts
and sm_90 compile figures; no candidate over the limits; every candidate's launch matches the
reference in the interpreter; on CUDA (marked) the tuned path itself.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import fbdl_fast.ops
from fbdl_fast.kernels import attention as attention_kernels
from fbdl_fast.kernels import layer_norm as ln_kernels
from fbdl_fast.ops import _dispatch
from fbdl_fast.ops import attention as attention_op
from fbdl_fast.ops import layer_norm as ln_op
from tolerances import assert_close

pytestmark = pytest.mark.usefixtures("on_kernel_device")


@pytest.mark.parametrize(("value", "on"), [(None, False), ("0", False), ("1", True), ("yes", True)])
def test_setting_read_once_and_refreshed(monkeypatch, value, on) -> None:
    if value is None:
        monkeypatch.delenv("FBDL_FAST_AUTOTUNE", raising=False)
    else:
        monkeypatch.setenv("FBDL_FAST_AUTOTUNE", value)  # conftest's monkeypatch refreshes
    assert _dispatch.autotune() is on and fbdl_fast.ops.settings().autotune is on
    monkeypatch.setitem(os.environ, "FBDL_FAST_AUTOTUNE", "0" if on else "1")  # no refresh
    assert _dispatch.autotune() is on  # not re-read until refresh


# --- shared-memory estimates and pruning ------------------------------------------------------


def test_layer_norm_shared_memory_estimate_by_hand() -> None:
    # N = 1,024, bf16 x, fp32 y (autocast): 4 rows a tile of 1,024 bf16 (8 KiB) copied one
    # stage ahead, y's 16-byte re-layout 4 x 256 fp32 (4 KiB), 4 means and rstds (32 bytes):
    # what test_ptx_facts bounds the compiled kernel by (tile + 4,096 + 64).
    rule = ln_kernels._rows_config(1024, 2)
    assert ln_kernels._rows_smem(rule, 2, 4) == 8192 + 4096 + 32
    assert ln_kernels._rows_smem(rule, 2, 2) == 8192 + 32
    three = rule._replace(num_stages=3)
    assert ln_kernels._rows_smem(three, 4, 4) == 2 * 4 * 1024 * 4 + 32


@pytest.mark.parametrize("x_size", [2, 4])
def test_layer_norm_candidates_rule_first_and_within_limits(x_size: int) -> None:
    for n in [1, 16, 100, 256, 511, 768, 1000, 1024, 1500, 2048]:
        for y_size in {x_size, 4}:
            candidates = ln_kernels._rows_candidates(n, x_size, y_size)
            assert candidates[0] == ln_kernels._rows_config(n, x_size)
            assert len(set(candidates)) == len(candidates) >= 2
            for c in candidates:
                rows_per_thread = c.block_m // (
                    c.num_warps * 32 // ln_kernels._rows_lanes(n, x_size)[0]
                )
                smem = ln_kernels._rows_smem(c, x_size, y_size)
                assert smem <= ln_kernels.SMEM_LIMIT, (n, c)
                assert smem * c.programs_per_sm <= ln_kernels.SM_SHARED_BYTES, (n, c)
                registers = ln_kernels._rows_registers(n, x_size, rows_per_thread)
                assert registers <= ln_kernels.MAX_REGISTERS, (n, c)
                assert registers * 32 * c.num_warps * c.programs_per_sm <= 65536, (n, c)
                assert c.split * c.lane_n >= n and c.block_m % c.num_warps == 0


def test_attention_shared_memory_estimate_covers_the_compiled_kernels() -> None:
    # sm_90 compile (triton 3.9, fp16): dK/dV with 64 x 64 tiles and 2 stages takes 53,760 bytes
    # at D = 64 and 102,912 at D = 128 (kernels/attention.py history); the estimate must not be
    # under them, or pruning would keep launches that cannot start.
    assert attention_kernels._smem_bytes(64, 64, 2, 64, 2, "dkdv") >= 53760
    assert attention_kernels._smem_bytes(64, 64, 2, 128, 2, "dkdv") >= 102912
    # forward at D = 128 by hand: Q 128 x 128, K and V 64 x 128 in 3 stages, P 128 x 64, 2 bytes
    assert attention_kernels._smem_bytes(128, 64, 3, 128, 2, "forward") == 2 * (
        128 * 128 + 3 * 2 * 64 * 128 + 128 * 64
    )


@pytest.mark.parametrize("kernel", ["forward", "dq", "dkdv"])
def test_attention_candidates_rule_first_and_within_limits(kernel: str) -> None:
    rule = attention_kernels._gpu_config(kernel != "forward")
    for d in attention_kernels.HEAD_DIMS:
        for size in (2, 4):
            candidates = attention_kernels._candidates(kernel, d, size)
            first = candidates[0]
            assert {**first.kwargs, "num_warps": first.num_warps,
                    "num_stages": first.num_stages} == rule  # fmt: skip
            for c in candidates[1:] if size == 4 else candidates:  # fp16/bf16: the rule fits too
                smem = attention_kernels._smem_bytes(
                    c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages, d, size, kernel
                )
                assert smem <= attention_kernels.SMEM_LIMIT, (kernel, d, size, c)
            if size == 2:
                assert len(candidates) >= 4  # pruning leaves a real choice in half precision
            # the autotuner's prune hook gives the same list for a call of that D and dtype
            q = torch.empty(0, dtype=torch.float16 if size == 2 else torch.float32)
            hooked = attention_kernels._prune(kernel)(
                attention_kernels._configs(kernel), {"Q": q}, D=d
            )
            assert [str(c) for c in hooked] == [str(c) for c in candidates]


# --- every candidate matches the reference in the interpreter --------------------------------


def _interpreter_only(device: str) -> None:
    if torch.device(device).type != "cpu":
        pytest.skip("launch configs are swapped in the interpreter only (CUDA: test below)")


@pytest.mark.parametrize(
    ("n", "x_dtype", "y_dtype"),
    [(64, torch.bfloat16, torch.float32), (768, torch.bfloat16, torch.float32),
     (768, torch.float32, torch.float32), (2048, torch.float16, torch.float16)],
)  # fmt: skip
def test_every_layer_norm_candidate_matches(triton, monkeypatch, n, x_dtype, y_dtype) -> None:
    _interpreter_only(triton)
    x = (torch.randn(37, n) * 2 + 1).to(x_dtype)  # 37 rows: partial tiles for every BLOCK_M
    w, b = torch.randn(n, dtype=y_dtype), torch.randn(n, dtype=y_dtype)
    want = F.layer_norm(x.double(), (n,), w.double(), b.double(), 1e-5)
    candidates = ln_kernels._rows_candidates(
        n, x.element_size(), torch.empty(0, dtype=y_dtype).element_size()
    )
    for config in candidates:
        monkeypatch.setattr(ln_kernels, "_rows_config", lambda *_, c=config: c)
        y, mean, rstd = ln_kernels.layer_norm_forward(x, n, w, b, 1e-5, out_dtype=y_dtype)
        assert_close(y, want, msg=lambda m, c=config: f"{c}: {m}")
        assert_close(mean, x.double().mean(-1))
        assert_close(rstd, (x.double().var(-1, unbiased=False) + 1e-5).rsqrt())


def test_every_attention_candidate_matches(triton, monkeypatch) -> None:
    _interpreter_only(triton)
    from test_attention import check_against_expected, make_inputs, padding_mask

    forward = attention_kernels._candidates("forward", 64, 2)
    backward = attention_kernels._candidates("dq", 64, 2)
    assert len(backward) == len(attention_kernels._candidates("dkdv", 64, 2))
    pairs = list(zip(forward, backward)) + [(forward[0], c) for c in backward[len(forward) :]]
    for fwd, bwd in pairs:

        def config(lq, lk, d, backward, fwd=fwd, bwd=bwd):
            c = bwd if backward else fwd
            return {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages,
                    "enable_fp_fusion": attention_kernels.FP_FUSION}  # fmt: skip

        monkeypatch.setattr(attention_kernels, "_launch_config", config)
        q, k, v = make_inputs(1, 2, 150, 64, torch.float16)  # 150: partial blocks of 64 and 128
        check_against_expected(q, k, v, padding_mask([97], 150), causal=True)


def test_interpreter_keeps_the_rule_with_autotune_on(triton, monkeypatch) -> None:
    _interpreter_only(triton)
    monkeypatch.setenv("FBDL_FAST_AUTOTUNE", "1")
    assert _dispatch.autotune()

    def no_tuner(*args, **kwargs):
        raise AssertionError("an autotuner was built in the interpreter")

    monkeypatch.setattr(attention_kernels, "_tuned", no_tuner)
    monkeypatch.setattr(ln_kernels, "_tuned_rows", no_tuner)
    x = torch.randn(5, 64, requires_grad=True)
    assert_close(ln_op.dispatch(x, (64,)), F.layer_norm(x, (64,)))
    q = torch.randn(1, 1, 16, 16)
    assert_close(attention_op.dispatch(q, q, q), attention_op.reference(q, q, q))


# --- the tuned path itself, on CUDA ------------------------------------------------------------


@pytest.mark.cuda
def test_autotuned_launches_match_and_pick_a_candidate(triton, monkeypatch) -> None:
    if torch.device(triton).type != "cuda":
        pytest.skip("Triton's autotune times launches on a GPU")
    monkeypatch.setenv("FBDL_FAST_AUTOTUNE", "1")
    x = torch.randn(300, 768, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(768, requires_grad=True)
    with torch.autocast("cuda", torch.bfloat16):
        y = ln_op.dispatch(x, (768,), w)
    assert_close(y, F.layer_norm(x.double(), (768,), w.double()), dtype=torch.bfloat16)
    tuner, _ = ln_kernels._tuned_rows(768, 2, 4)
    assert str(tuner.best_config) in {str(c) for c in tuner.configs}
    q, k, v = (
        torch.randn(2, 2, 200, 64, dtype=torch.float16, requires_grad=True) for _ in range(3)
    )
    mask = torch.arange(200)[None, :] < torch.tensor([[200], [77]])
    out = attention_op.dispatch(q, k, v, mask)
    assert_close(
        out, attention_op.reference(q.float(), k.float(), v.float(), mask), dtype=torch.float16
    )
    out.sum().backward()
    for kernel in ("forward", "dq", "dkdv"):
        assert attention_kernels._tuned(kernel).best_config is not None


# --- every candidate compiles for sm_90 within the limits (slow: ~20 compiles) ----------------

_COMPILE_SCRIPT = r"""
import inspect, json, re
import torch
from compile_check import compile_aligned
from fbdl_fast.kernels import attention as A, layer_norm as LN


def row(compiled, estimate, **what):
    ptx = compiled.asm["ptx"]
    local = len(re.findall(r"\b(?:ld|st)\.local", ptx))
    return dict(what, shared=compiled.metadata.shared, estimate=estimate, ptx_local=local)


out = []
# Attention at D = 128 in fp16 with a key mask and dropout: the most shared memory.
types = dict.fromkeys(("Q", "K", "V", "O", "DO", "DQ", "DK", "DV"), "*fp16")
types.update(LSE="*fp32", DELTA="*fp32", KMASK="*u8", sm_scale="fp32", qk_scale="fp32",
             dropout_p="fp32", seed="i64")
flags = dict(HAS_MASK=True, CAUSAL=False, DROPOUT=True, **A._flags(torch.float16))
for name, kernel in (("forward", A._attn_fwd), ("dq", A._attn_bwd_dq), ("dkdv", A._attn_bwd_dkdv)):
    params = list(inspect.signature(kernel.fn).parameters)
    strides = [p for p in params if re.fullmatch(r"s[qkvodm][bhmn]", p) and p != "smn"]
    for c in A._candidates(name, 128, 2):
        compiled = compile_aligned(
            kernel, {k: v for k, v in types.items() if k in params},
            dict(D=128, **c.kwargs, **flags), divisible=strides + ["Lq", "Lk"], ones=["smn"],
            num_warps=c.num_warps, num_stages=c.num_stages, enable_fp_fusion=A.FP_FUSION)
        blocks = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        out.append(row(compiled, A._smem_bytes(*blocks, c.num_stages, 128, 2, name),
                       kernel=name, config=str(c)))
# The LayerNorm rows forward at 1,024 under autocast (bf16 x, fp32 y, weight and bias).
for c in LN._rows_candidates(1024, 2, 4):
    compiled = compile_aligned(
        LN._forward_rows_kernel,
        {"X": "*bf16", "Y": "*fp32", "W": "*fp32", "B": "*fp32", "Mean": "*fp32",
         "Rstd": "*fp32", "stride_xm": "i64", "eps": "fp32"},
        {"HAS_WEIGHT": True, "HAS_BIAS": True, "BLOCK_M": c.block_m, "SPLIT": c.split,
         "LANE_N": c.lane_n, "NUM_STAGES": c.num_stages},
        divisible=["stride_xm", "N"], ones=["stride_xn"], num_warps=c.num_warps,
        num_stages=c.num_stages, enable_fp_fusion=LN.FP_FUSION)
    out.append(row(compiled, LN._rows_smem(c, 2, 4), kernel="layer_norm_rows", config=str(c)))
print(json.dumps(out))
"""


@pytest.mark.slow
def test_every_candidate_compiles_for_sm90_within_its_estimate(tmp_path) -> None:
    import json

    from compile_check import H100_SHARED_BYTES, run_compile_script

    rows = json.loads(run_compile_script(_COMPILE_SCRIPT, tmp_path).strip().splitlines()[-1])
    assert len(rows) == sum(
        len(attention_kernels._candidates(k, 128, 2)) for k in ("forward", "dq", "dkdv")
    ) + len(ln_kernels._rows_candidates(1024, 2, 4))
    for row in rows:
        assert row["shared"] <= H100_SHARED_BYTES, row
        assert row["estimate"] >= row["shared"], row  # pruning by the estimate is safe
        assert row["ptx_local"] == 0, row
