"""Dispatch on the CPU.

- CPU tensors outside the interpreter take the reference by an early exit that never reaches the
  decision (`reference_at_once`); the decision is replaced by a tripwire here to prove it.
- FBDL_FAST_BACKEND and TRITON_INTERPRET are read once; `fbdl_fast.ops.refresh()` re-reads them
  (conftest's monkeypatch calls it after every change, so other tests need not).
- One rule reads TRITON_INTERPRET everywhere (fbdl_fast.kernels.interpreting): every spelling
  Triton takes as true runs every op's kernel, and its result matches the reference. With "true"
  the attention kernel used to read the flag as false and skip its bf16 upcast, giving results off
  by up to 8e8.
"""

from __future__ import annotations

import os

import pytest
import torch

import fbdl_fast.kernels
import fbdl_fast.ops
from fbdl_fast.ops import _dispatch
from fbdl_fast.ops import attention as attention_op
from fbdl_fast.ops import focal_loss as focal_op
from fbdl_fast.ops import layer_norm as layer_norm_op
from tolerances import assert_close

TRUE = ["1", "true", "TRUE", "Yes", "yes", "y", "Y", "on", "ON"]  # Triton 3.9 reads these as true
FALSE = [None, "", "0", "false", "off", "no", " 1", "2", "t"]  # and these as false


def _interpret(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", value)


def _inputs() -> dict[str, tuple]:
    """Small inputs for each op, as (args of dispatch); attention in bf16, where a wrong reading
    of the flag shows (the kernel then computes on raw bf16 bits)."""
    x = torch.randn(3, 20)
    logits, target = torch.randn(5, 7), torch.tensor([0, 6, 3, -100, 2])
    q, k, v = (torch.randn(1, 2, 16, 16, dtype=torch.bfloat16) for _ in range(3))
    return {
        "layer_norm": (x, (20,), torch.randn(20), torch.randn(20)),
        "focal_loss": (logits, target),
        "attention": (q, k, v, torch.tensor([[True] * 11 + [False] * 5])),
    }


OPS = {"layer_norm": layer_norm_op, "focal_loss": focal_op, "attention": attention_op}


@pytest.mark.parametrize("spelling", TRUE)
def test_every_true_spelling_runs_every_kernel(
    monkeypatch: pytest.MonkeyPatch, kernel_device: str, spelling: str
) -> None:
    if kernel_device != "cpu":
        pytest.skip("an interpreter test: where CUDA is, Triton compiles the kernels instead")
    monkeypatch.setenv("FBDL_FAST_BACKEND", "auto")
    _interpret(monkeypatch, spelling)
    assert fbdl_fast.kernels.interpreting() and fbdl_fast.ops.interpreting()
    from fbdl_fast.kernels import attention as attention_kernels

    assert attention_kernels._flags(torch.bfloat16)["UPCAST"], "the kernel's reading differs"
    for name, args in _inputs().items():
        op = OPS[name]
        decision = fbdl_fast.ops.explain(name, *args)
        assert decision.path == "triton", decision
        assert "interpreter" in decision.reason
        assert_close(op.dispatch(*args), op.reference(*args))


@pytest.mark.parametrize("spelling", FALSE)
def test_every_false_spelling_takes_the_early_exit(
    monkeypatch: pytest.MonkeyPatch, spelling: str | None
) -> None:
    monkeypatch.setenv("FBDL_FAST_BACKEND", "auto")
    _interpret(monkeypatch, spelling)
    assert not fbdl_fast.kernels.interpreting() and not fbdl_fast.ops.interpreting()
    for name, args in _inputs().items():
        decision = fbdl_fast.ops.explain(name, *args)
        assert decision.path == "torch" and "inputs are on cpu" in decision.reason, decision


def _tripwire(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the full decision fail wherever the ops or the nn layers would call it."""

    def decide(*args, **kwargs):
        raise AssertionError("the early exit was not taken")

    import fbdl_fast.nn.attention

    for module in (layer_norm_op, focal_op, attention_op, fbdl_fast.nn.attention):
        monkeypatch.setattr(module, "decide", decide)


@pytest.mark.parametrize(("backend", "interpret"), [("auto", None), ("auto", "0"), ("torch", "1")])
def test_cpu_reference_skips_the_decision(
    monkeypatch: pytest.MonkeyPatch, backend: str, interpret: str | None
) -> None:
    monkeypatch.setenv("FBDL_FAST_BACKEND", backend)
    _interpret(monkeypatch, interpret)
    _tripwire(monkeypatch)
    for name, args in _inputs().items():
        op = OPS[name]
        # attention's CPU path is torch's SDPA (parity with the reference:
        # tests/kernels/test_attention_cpu.py)
        expected = (attention_op.cpu_sdpa if name == "attention" else op.reference)(*args)
        torch.testing.assert_close(op.dispatch(*args), expected, rtol=0, atol=0)
    norm = fbdl_fast.nn.LayerNorm(20)
    x = torch.randn(2, 20)
    torch.testing.assert_close(norm(x), torch.nn.functional.layer_norm(x, (20,), norm.weight))
    mha = fbdl_fast.nn.MultiheadAttention(16, 2, batch_first=True)
    torch_mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    torch_mha.load_state_dict(mha.state_dict())
    h = torch.randn(2, 5, 16)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    out, weights = mha(h, h, h, key_padding_mask=pad)
    expected_out, expected_weights = torch_mha(h, h, h, key_padding_mask=pad)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    torch.testing.assert_close(weights, expected_weights, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("backend", "interpret"), [("auto", "1"), ("triton", "1"), ("triton", "0")]
)
def test_no_early_exit_where_the_kernel_may_run(
    monkeypatch: pytest.MonkeyPatch, backend: str, interpret: str
) -> None:
    """Under the interpreter, or with triton asked for (which must raise on a plain CPU), the
    full decision runs."""
    monkeypatch.setenv("FBDL_FAST_BACKEND", backend)
    _interpret(monkeypatch, interpret)
    assert not _dispatch.reference_at_once(torch.zeros(1))
    _tripwire(monkeypatch)
    with pytest.raises(AssertionError, match="early exit was not taken"):
        layer_norm_op.dispatch(torch.randn(2, 4), (4,))


def test_early_exit_keeps_the_argument_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FBDL_FAST_BACKEND", "auto")
    _interpret(monkeypatch, None)
    assert _dispatch.reference_at_once(torch.zeros(1))
    with pytest.raises(ValueError, match=r"input of shape \(3, 8\) does not end with"):
        layer_norm_op.dispatch(torch.randn(3, 8), (7,))
    with pytest.raises(ValueError, match="weight has shape"):
        layer_norm_op.dispatch(torch.randn(3, 8), (8,), torch.ones(7))
    with pytest.raises(ValueError, match="normalized_shape must be"):
        layer_norm_op.dispatch(torch.randn(3, 8), "8")
    with pytest.raises(ValueError, match="target 9 is out of range"):
        focal_op.dispatch(torch.randn(2, 5), torch.tensor([9, -100]))
    with pytest.raises(ValueError, match="key_mask must be a bool tensor"):
        q = torch.randn(1, 1, 4, 16)
        attention_op.dispatch(q, q, q, torch.ones(1, 4))


def test_focal_target_check_lets_ignore_index_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """The range check looks closer only when an extreme is out of range; ignore_index (negative
    or past C) is not an error there."""
    monkeypatch.setenv("FBDL_FAST_BACKEND", "auto")
    _interpret(monkeypatch, None)
    logits = torch.randn(3, 4)
    for ignore in (-100, 4, 1000):
        target = torch.tensor([1, ignore, 3])
        loss = focal_op.dispatch(logits, target, ignore_index=ignore, reduction="none")
        assert loss[1] == 0 and loss[0] > 0


def test_environment_is_read_once_and_refreshed_on_request() -> None:
    before = fbdl_fast.ops.settings()
    saved = os.environ.get("FBDL_FAST_BACKEND")
    try:
        os.environ["FBDL_FAST_BACKEND"] = "triton" if before.backend != "triton" else "torch"
        assert fbdl_fast.ops.settings() == before  # not seen until refreshed
        assert fbdl_fast.backend() == before.backend
        after = fbdl_fast.ops.refresh()
        assert after.backend == os.environ["FBDL_FAST_BACKEND"] == fbdl_fast.backend()
        assert after.interpret == fbdl_fast.kernels.interpreting()
    finally:
        if saved is None:
            os.environ.pop("FBDL_FAST_BACKEND", None)
        else:
            os.environ["FBDL_FAST_BACKEND"] = saved
        fbdl_fast.ops.refresh()
    assert fbdl_fast.ops.settings() == before


def test_one_truth_rule() -> None:
    assert [fbdl_fast.kernels.flag(s) for s in TRUE] == [True] * len(TRUE)
    assert [fbdl_fast.kernels.flag(s) for s in FALSE] == [False] * len(FALSE)
