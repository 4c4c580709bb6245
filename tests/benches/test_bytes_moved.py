"""benches/gpu/bytes_moved.py, the bytes table: the interpreter-side counter counts every
masked-in element of every load and store, and each kernel moves at most a stated multiple of
its op's minimum, touching nothing but the minimum and its own saved statistics."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import fbdl_fast.kernels

GPU_BENCHES = Path(__file__).resolve().parents[2] / "benches" / "gpu"
sys.path.insert(0, str(GPU_BENCHES))

import bytes_moved  # noqa: E402
from devices import kernel_skip_reason  # noqa: E402

pytestmark = [
    pytest.mark.skipif(
        not fbdl_fast.kernels.interpreting(),
        reason="counts loads in the Triton interpreter; with CUDA the kernels compile instead",
    ),
    pytest.mark.skipif(
        kernel_skip_reason() is not None, reason=f"the kernels cannot run: {kernel_skip_reason()}"
    ),
]


def _toy_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def toy(X, Y, Total, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        ok = offs < n
        x = tl.load(X + offs, mask=ok, other=0.0)
        again = tl.load(X + offs, mask=ok, other=0.0)  # the same values a second time
        first = tl.load(X)  # one scalar, unmasked
        tl.store(Y + offs, (x + again + first).to(Y.dtype.element_ty), mask=ok)
        tl.atomic_add(Total + offs * 0, x, mask=ok)  # n adds into one fp32 cell

    return toy


def test_counts_every_masked_in_element_once_per_access() -> None:
    toy = _toy_kernel()
    x, y, total = (
        torch.arange(20, dtype=torch.float32),
        torch.zeros(20, dtype=torch.float16),
        torch.zeros(1),
    )
    with bytes_moved.counting() as counts:
        toy[(1,)](x, y, total, 13, BLOCK=32)
        toy[(1,)](x, y, total, 5, BLOCK=32)
    # loads: 2 x n fp32 + 1 scalar + the atomic's n reads; stores: n fp16 + the atomic's n writes
    assert counts.loaded == {"toy": (2 * 18 + 2 + 18) * 4}
    assert counts.stored == {"toy": 18 * 2 + 18 * 4}
    assert counts.launches == {"toy": 2}
    assert counts.total() == counts.loaded["toy"] + counts.stored["toy"]
    # distinct: x[0:13] and the cell read; y[0:13] and the cell written (the second launch's
    # addresses are a subset)
    assert counts.distinct() == 13 * 4 + 4 + 13 * 2 + 4
    assert torch.equal(y[:13], (2 * x[:13] + x[0]).half())  # the kernel ran as written
    assert total.item() == sum(range(13)) + sum(range(5))


def test_counting_restores_the_interpreter() -> None:
    from triton.runtime import interpreter

    before = interpreter.InterpreterBuilder.create_masked_load
    with bytes_moved.counting():
        assert interpreter.InterpreterBuilder.create_masked_load is not before
    assert interpreter.InterpreterBuilder.create_masked_load is before


# (op, problem, sms): small shapes, each kernel variant once; launched as with `sms` SMs.
CASES = [
    ("layer_norm", {"rows": 64, "hidden": 768, "precision": "bf16-autocast"}, 2),
    ("layer_norm", {"rows": 16, "hidden": 4096, "precision": "fp32"}, 2),
    ("focal_loss", {"rows": 8, "classes": 5000, "dtype": "bfloat16"}, 132),
    ("focal_loss", {"rows": 32, "classes": 100, "dtype": "float32"}, 132),
    ("attention", {"batch": 2, "heads": 1, "length": 128, "head_dim": 64,
                   "dtype": "float16", "padded": False}, 132),
    ("attention", {"batch": 2, "heads": 1, "length": 128, "head_dim": 64,
                   "dtype": "float16", "padded": True}, 132),
]  # fmt: skip

# moved / minimum allowed, and why a kernel moves more than the minimum:
BOUNDS = {
    # the rows kernels load the weight and bias once a program for each of a tile's BLOCK_M rows
    # (so they sit in x's register layout; the repeats hit L1): +3 B an element here
    ("layer_norm", 768): {"forward": 1.6, "backward": 1.6},
    # one program a row (N > 2,048) loads the weight and bias for every row (L2 hits)
    ("layer_norm", 4096): {"forward": 2.0, "backward": 2.0},
    # one read of the logits each way; per-row statistics (16-28 bytes a row)
    ("focal_loss", 5000): {"forward": 1.01, "backward": 1.01},
    ("focal_loss", 100): {"forward": 1.1, "backward": 1.1},
    # forward: K and V once per query block (one block of 128 here), only keys taking part;
    # backward: dQ rereads K, V and dK/dV rereads Q, dO once per block of 64 (2 blocks here)
    ("attention", 128): {"forward": 1.05, "backward": 2.1},
}

# Bytes a row (or a query row) of statistics a forward saves for its backward, and what the
# backward writes besides the gradients (LayerNorm's fp32 partial dw/db rows, read back once).
STATS = {"layer_norm": 8, "focal_loss": 4 + 16, "attention": 4}


@pytest.mark.parametrize(
    ("op", "problem", "sms"),
    CASES,
    ids=[f"{op}-{bytes_moved._shape_text(p)}" for op, p, _ in CASES],
)
def test_each_kernel_within_its_bound_of_the_minimum(op, problem, sms) -> None:
    rows = {row["pass"]: row for row in bytes_moved.count(op, problem, sms)}
    size = problem.get("hidden") or problem.get("classes") or problem.get("length")
    for name, bound in BOUNDS[(op, size)].items():
        row = rows[name]
        minimum, moved = row["minimum_b_per_element"], row["moved_b_per_element"]
        distinct = row["distinct_b_per_element"]
        assert minimum <= distinct + 1e-3 <= moved + 2e-3, row  # nothing the op needs is skipped
        assert moved <= bound * minimum, f"{op} {name}: {moved} > {bound} x {minimum} ({row})"
    # The forward touches the minimum and its saved statistics, nothing else.
    forward = rows["forward"]
    per_row = problem.get("hidden") or problem.get("classes") or problem.get("head_dim")
    extra = forward["distinct_b_per_element"] - forward["minimum_b_per_element"]
    assert abs(extra - STATS[op] / per_row) < 2e-3, forward


def test_padded_keys_are_not_read() -> None:
    """Key padding (lengths spread over [L/4, L]) cuts the attention kernels' traffic: the
    forward reads only the K and V rows of keys that take part."""
    problem = {"batch": 2, "heads": 1, "length": 128, "head_dim": 64, "dtype": "float16"}
    dense = {r["pass"]: r for r in bytes_moved.count("attention", {**problem, "padded": False})}
    padded = {r["pass"]: r for r in bytes_moved.count("attention", {**problem, "padded": True})}
    # lengths 32 and 128: K and V hold 4 of the dense 8 bytes an element, 2.5 of them are read;
    # the padded run also reads the key mask (1 byte a key, 0.016-0.03 bytes an element here)
    saved = dense["forward"]["moved_b_per_element"] - padded["forward"]["moved_b_per_element"]
    assert 1.5 - 0.04 < saved <= 4 * (1 - (32 + 128) / 256)
    for name in ("forward", "backward"):
        assert padded[name]["moved_b_per_element"] < dense[name]["moved_b_per_element"]


def test_report_table_lists_every_pass() -> None:
    rows = [
        {"op": "focal_loss", "problem": "rows=8", "pass": p, "moved_b_per_element": 2.5,
         "distinct_b_per_element": 2.01, "minimum_b_per_element": 2.0, "ratio": 1.25,
         "kernels": {"k": 2.5}}
        for p in ("forward", "backward")
    ]  # fmt: skip
    lines = bytes_moved.markdown(rows)
    assert (
        len(lines) == 4
        and "| focal_loss | rows=8 | backward | 2 | 2.5 | 1.25x | 2.01 |" in lines[3]
    )


def test_report_shows_the_committed_table_and_says_when_it_is_stale() -> None:
    import gpu_report

    table = bytes_moved.load_table()
    assert table is not None, (
        "benches/gpu/bytes_moved.json missing: python benches/gpu/bytes_moved.py --write"
    )
    ops = {(row["op"], row["pass"]) for row in table["rows"]}
    assert ops == {(op, p) for op in ("layer_norm", "focal_loss", "attention")
                   for p in ("forward", "backward")}  # fmt: skip
    current = bytes_moved.with_staleness(table)
    report = gpu_report.markdown({"bytes_moved": current})
    assert "## Bytes moved per element" in report
    assert report.count("| attention |") == sum(r["op"] == "attention" for r in table["rows"])
    assert ("**Stale:**" in report) == current["stale"]
    changed = bytes_moved.with_staleness({**table, "kernels_sha256": "0" * 64})
    assert changed["stale"] and "**Stale:**" in "\n".join(bytes_moved.report_section(changed))
