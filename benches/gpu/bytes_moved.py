"""Bytes each kernel moves per element against the fewest its op must move.

Counted, not estimated: under TRITON_INTERPRET=1 every tl.load and tl.store of a launch goes
through the interpreter's builder (triton.runtime.interpreter.InterpreterBuilder), whose
create_masked_load / create_masked_store (and atomic read-modify-writes, as a load and a store)
are wrapped here to add up the bytes of the masked-in elements, per kernel. A value loaded twice
counts twice ("moved": what the loads and stores ask for, the upper figure if no cache catches
a repeat); "distinct" counts each address once per direction (what a perfect cache would let
through to memory).

The launches are the GPU's: LayerNorm's persistent grids and backward programs as on an H200
(132 SMs) and attention's block sizes from its _gpu_config (the interpreter's own are larger),
so the counts are what those launches read and write; the interpreter only executes them.

The minimum is the op's: every input read once and every output written once (LayerNorm: x,
weight, bias -> y forward; x, dy, weight -> dx, dweight, dbias backward; focal loss: logits,
target -> per-row loss, and logits, target, grad_output -> dlogits; attention: q, k, v, key
mask -> out, and q, k, v, out, dout, key mask -> dq, dk, dv, where only the K and V rows of keys
that take part need reading). Statistics a kernel saves for its
backward (mean/rstd, log-sum-exp and friends) count as traffic over the minimum. Per element:
divided by the elements of the main tensor (x, the logits, q).

Run `python benches/gpu/bytes_moved.py` to count and print the table (5-9 minutes on 2 shared
cores); `--write` also rewrites bytes_moved.json beside this file, which gpu_check puts in its
report (the GPU machine's Triton 3.6 cannot interpret these kernels: its interpreter fails on
numpy >= 2.4), with a hash of kernels/*.py so the report says when the kernels changed since the
count.
TRITON_INTERPRET must be on before the kernels are imported (the script turns it on; importing
this module imports no kernel, so gpu_report can read the table). tests/benches/test_bytes_moved.py
checks the counting on a toy kernel and each kernel against a bound at small shapes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    import torch

HERE = Path(__file__).resolve().parent
TABLE_FILE = HERE / "bytes_moved.json"
KERNELS = HERE.parents[1] / "python" / "fbdl_fast" / "kernels"
H200_SMS = 132


@dataclass
class Counts:
    """Bytes loaded and stored per kernel name (every access counted), launches per kernel,
    and the addresses touched (for `distinct`: each byte once, as a perfect cache would)."""

    loaded: dict[str, int] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)
    launches: dict[str, int] = field(default_factory=dict)
    touched: dict[tuple[str, int], list[Any]] = field(default_factory=dict)  # (way, size): arrays

    def add(self, kernel: str, way: str, pointers: Any, mask: Any) -> None:
        """Count one access: `way` "load" or "store", its pointer and mask handles."""
        import numpy as np

        addresses = pointers.data.reshape(-1)
        if mask is not None:
            addresses = addresses[np.broadcast_to(mask.data, pointers.data.shape).reshape(-1)]
        size = pointers.get_element_ty().primitive_bitwidth // 8
        side = self.loaded if way == "load" else self.stored
        side[kernel] = side.get(kernel, 0) + addresses.size * size
        self.touched.setdefault((way, size), []).append(addresses)

    def total(self) -> int:
        return sum(self.loaded.values()) + sum(self.stored.values())

    def distinct(self) -> int:
        """Bytes loaded plus bytes stored, each address counted once per way."""
        import numpy as np

        return sum(
            size * np.unique(np.concatenate(arrays)).size
            for (_, size), arrays in self.touched.items()
        )


@contextlib.contextmanager
def counting() -> Iterator[Counts]:
    """Count the bytes of every interpreted tl.load / tl.store inside the block, per kernel."""
    from triton.runtime import interpreter

    if not getattr(interpreter, "InterpreterBuilder", None):  # pragma: no cover
        raise RuntimeError("this Triton has no InterpreterBuilder to count loads and stores in")
    builder, grid = interpreter.InterpreterBuilder, interpreter.GridExecutor
    counts, current = Counts(), ["?"]
    load, store = builder.create_masked_load, builder.create_masked_store
    rmw = builder.create_atomic_rmw
    run = grid.__call__

    # The trailing arguments (cache policy, volatility, ...) differ between Triton versions:
    # pass them through untouched.
    def counted_load(self, ptrs, mask, *rest):
        counts.add(current[0], "load", ptrs, mask)
        return load(self, ptrs, mask, *rest)

    def counted_store(self, ptrs, value, mask, *rest):
        counts.add(current[0], "store", ptrs, mask)
        return store(self, ptrs, value, mask, *rest)

    def counted_rmw(self, op, ptr, val, mask, sem, scope):
        counts.add(current[0], "load", ptr, mask)
        counts.add(current[0], "store", ptr, mask)
        return rmw(self, op, ptr, val, mask, sem, scope)

    def named_run(self, *args, **kwargs):
        current[0] = self.fn.__name__
        counts.launches[current[0]] = counts.launches.get(current[0], 0) + 1
        return run(self, *args, **kwargs)

    patches = {
        (builder, "create_masked_load"): counted_load,
        (builder, "create_masked_store"): counted_store,
        (builder, "create_atomic_rmw"): counted_rmw,
        (grid, "__call__"): named_run,
    }
    saved = {key: getattr(*key) for key in patches}
    try:
        for (owner, name), replacement in patches.items():
            setattr(owner, name, replacement)
        yield counts
    finally:
        for (owner, name), original in saved.items():
            setattr(owner, name, original)


@contextlib.contextmanager
def gpu_launches(sms: int = H200_SMS) -> Iterator[None]:
    """Launch the kernels as on a GPU with `sms` SMs: LayerNorm's grids, attention's blocks."""
    from fbdl_fast.kernels import attention, layer_norm

    def attention_config(lq: int, lk: int, d: int, backward: bool) -> dict[str, int]:
        return {**attention._gpu_config(backward), "enable_fp_fusion": attention.FP_FUSION}

    patches = {
        (layer_norm, "_device_sms"): lambda x: sms,
        (layer_norm, "_backward_programs"): lambda x, rows: max(1, min(rows, 4 * sms)),
        (attention, "_launch_config"): attention_config,
    }
    saved = {key: getattr(*key) for key in patches}
    try:
        for (owner, name), replacement in patches.items():
            setattr(owner, name, replacement)
        yield
    finally:
        for (owner, name), original in saved.items():
            setattr(owner, name, original)


def _nbytes(*tensors: Optional[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


# ---------------------------------------------------------------------------------------------
# The ops' passes: (minimum bytes, elements, the launches to count)
# ---------------------------------------------------------------------------------------------

Pass = tuple[int, int, Callable[[], object]]


def layer_norm_passes(rows: int, hidden: int, precision: str) -> dict[str, Pass]:
    """Forward and backward of the fused LayerNorm; precision as in bench_layer_norm
    (bf16-autocast: bf16 x, fp32 weight/bias, fp32 y and dy)."""
    import torch

    from fbdl_fast.kernels import layer_norm as kernels

    x_dtype, p_dtype = {
        "fp32": (torch.float32, torch.float32),
        "bf16": (torch.bfloat16, torch.bfloat16),
        "bf16-autocast": (torch.bfloat16, torch.float32),
    }[precision]
    y_dtype = torch.float32 if precision == "bf16-autocast" else x_dtype
    x = torch.randn(rows, hidden).to(x_dtype)
    w, b = torch.randn(hidden).to(p_dtype), torch.randn(hidden).to(p_dtype)
    y, mean, rstd = kernels.layer_norm_forward(x, hidden, w, b, 1e-5, out_dtype=y_dtype)
    dy = torch.randn(rows, hidden).to(y_dtype)
    return {
        "forward": (
            _nbytes(x, w, b, y), x.numel(),
            lambda: kernels.layer_norm_forward(x, hidden, w, b, 1e-5, out_dtype=y_dtype),
        ),
        "backward": (
            _nbytes(x, dy, w, x, w, b), x.numel(),  # reads x, dy, w; writes dx, dw, db
            lambda: kernels.layer_norm_backward(dy, x, hidden, w, b, mean, rstd, True, True),
        ),
    }  # fmt: skip


def focal_loss_passes(rows: int, classes: int, dtype: str) -> dict[str, Pass]:
    """Forward (saving the backward's statistics, as in training) and backward, gamma 2, no
    weight, alpha or smoothing."""
    import torch

    from fbdl_fast.kernels import focal_loss as kernels

    logits = torch.randn(rows, classes).to(getattr(torch, dtype))
    target = torch.randint(0, classes, (rows,))
    options = dict(gamma=2.0, alpha=None, alpha_scale=1.0, weight=None, ignore_index=-100)
    loss, _, stats = kernels.focal_loss_forward(
        logits, target, label_smoothing=0.0, save_stats=True, **options
    )
    row_grad = torch.full((rows,), 1.0 / rows)
    backward_options = dict(weight=None, ignore_index=-100, label_smoothing=0.0)
    return {
        "forward": (
            _nbytes(logits, target, loss), logits.numel(),
            lambda: kernels.focal_loss_forward(
                logits, target, label_smoothing=0.0, save_stats=True, **options
            ),
        ),
        "backward": (
            _nbytes(logits, target, row_grad, logits), logits.numel(),
            lambda: kernels.focal_loss_backward(
                logits, target, stats, row_grad, **backward_options
            ),
        ),
    }  # fmt: skip


def attention_passes(
    batch: int, heads: int, length: int, head_dim: int, dtype: str, padded: bool
) -> dict[str, Pass]:
    """Forward and backward of the fused attention, self-attention of `length`; padded: key
    lengths spread evenly over [L/4, L] (the bench draws them uniformly there)."""
    import torch

    from fbdl_fast.kernels import attention as kernels

    shape = (batch, heads, length, head_dim)
    q, k, v, dout = (torch.randn(shape).to(getattr(torch, dtype)) for _ in range(4))
    key_mask = None
    if padded:
        lengths = torch.linspace(length // 4, length, batch).round().long()
        key_mask = torch.arange(length)[None, :] < lengths[:, None]  # (B, L)
    scale = head_dim**-0.5
    out, lse = kernels.attention_forward(q, k, v, key_mask, False, scale, 0.0, 0)
    # K and V rows of padded keys need not be read (every query sees no padded key).
    taking_part = 1.0 if key_mask is None else key_mask.float().mean().item()
    kv = round(taking_part * _nbytes(k, v))
    return {
        "forward": (
            _nbytes(q, key_mask, out) + kv, q.numel(),
            lambda: kernels.attention_forward(q, k, v, key_mask, False, scale, 0.0, 0),
        ),
        "backward": (
            _nbytes(q, out, dout, key_mask, q, k, v) + kv, q.numel(),  # dq, dk, dv written
            lambda: kernels.attention_backward(
                dout, q, k, v, out, lse, key_mask, False, scale, 0.0, 0
            ),
        ),
    }  # fmt: skip


# The table's problems, small enough for the interpreter: LayerNorm at the CUDA bench's smallest
# M (each program reads the parameters once, so their share per element falls as M grows), focal
# loss on 64 rows (per-row terms are ~1e-3 B an element), attention at L = 512 (K and V are read
# once per query block and Q, dO once per key block: their share grows with L).
ATTENTION = {"batch": 2, "heads": 2, "length": 512, "dtype": "bfloat16"}
PROBLEMS: list[tuple[str, dict[str, Any]]] = [
    ("layer_norm", {"rows": 4096, "hidden": 768, "precision": "bf16-autocast"}),
    ("layer_norm", {"rows": 4096, "hidden": 768, "precision": "fp32"}),
    ("layer_norm", {"rows": 1024, "hidden": 4096, "precision": "bf16-autocast"}),
    ("focal_loss", {"rows": 64, "classes": 32000, "dtype": "bfloat16"}),
    ("focal_loss", {"rows": 64, "classes": 50257, "dtype": "bfloat16"}),
    ("attention", {**ATTENTION, "head_dim": 64, "padded": False}),
    ("attention", {**ATTENTION, "head_dim": 64, "padded": True}),
    ("attention", {**ATTENTION, "head_dim": 128, "padded": True}),
]

PASSES = {
    "layer_norm": layer_norm_passes,
    "focal_loss": focal_loss_passes,
    "attention": attention_passes,
}


def _shape_text(problem: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v}" if not isinstance(v, bool) else (k if v else "") for k, v in problem.items()
    ).strip()


def count(op: str, problem: dict[str, Any], sms: int = H200_SMS) -> list[dict[str, Any]]:
    """One row per pass of `op` on `problem`: bytes per element moved (and per kernel) and the
    minimum, launched as on a GPU with `sms` SMs."""
    import torch

    torch.manual_seed(0)
    rows = []
    with gpu_launches(sms):
        passes = PASSES[op](**problem)
        for name, (minimum, elements, launch) in passes.items():
            with counting() as counts:
                launch()
            kernels = {
                kernel: round((counts.loaded[kernel] + counts.stored.get(kernel, 0)) / elements, 3)
                for kernel in counts.loaded
            }
            moved = counts.total() / elements
            rows.append({
                "op": op, "problem": _shape_text(problem), "pass": name,
                "moved_b_per_element": round(moved, 3),
                "distinct_b_per_element": round(counts.distinct() / elements, 3),
                "minimum_b_per_element": round(minimum / elements, 3),
                "ratio": round(moved * elements / minimum, 3),
                "kernels": kernels, "launches": dict(counts.launches),
            })  # fmt: skip
    return rows


def count_all(sms: int = H200_SMS) -> list[dict[str, Any]]:
    return [row for op, problem in PROBLEMS for row in count(op, problem, sms)]


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The report's table: one line per op, problem and pass."""
    lines = [
        "| op | problem | pass | minimum B/elem | moved B/elem | moved / minimum "
        "| distinct B/elem | by kernel (B/elem) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        kernels = ", ".join(f"{k} {v:g}" for k, v in row["kernels"].items())
        lines.append(
            f"| {row['op']} | {row['problem']} | {row['pass']} "
            f"| {row['minimum_b_per_element']:g} | {row['moved_b_per_element']:g} "
            f"| {row['ratio']:.2f}x | {row['distinct_b_per_element']:g} | {kernels} |"
        )
    return lines


def report_section(table: Optional[dict[str, Any]]) -> list[str]:
    """The report's section for a table as `with_staleness(load_table())` gives it."""
    if not table or not table.get("rows"):
        return []
    lines = [
        "## Bytes moved per element",
        "",
        f"Counted from every load and store under the Triton {table.get('triton')} interpreter, "
        f"launched as on {table.get('sms')} SMs (benches/gpu/bytes_moved.py): minimum = the op's "
        "inputs read once and outputs written once; moved = every access; distinct = each "
        "address once.",
        "",
    ]
    if table.get("stale"):
        lines += [
            "**Stale:** python/fbdl_fast/kernels changed since this count; rerun "
            "`python benches/gpu/bytes_moved.py --write`.",
            "",
        ]
    return [*lines, *markdown(table["rows"]), ""]


def with_staleness(table: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """`table` with "stale": whether the kernel sources differ from the counted ones."""
    if table is None:
        return None
    return {**table, "stale": table.get("kernels_sha256") != kernels_hash()}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {TABLE_FILE.name}")
    args = parser.parse_args(argv)
    if not any(name.startswith("fbdl_fast.kernels.") for name in sys.modules):
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are defined
    from fbdl_fast.kernels import interpreting

    if not interpreting():
        parser.error("counting needs TRITON_INTERPRET=1 before the kernels are imported")
    import triton

    rows = count_all()
    print("\n".join(markdown(rows)))
    if args.write:
        from fbdl_fast.files import write_atomic

        table = {
            "triton": triton.__version__, "sms": H200_SMS, "kernels_sha256": kernels_hash(),
            "rows": rows,
        }  # fmt: skip
        write_atomic(TABLE_FILE, json.dumps(table, indent=1) + "\n")
    return 0


def kernels_hash() -> str:
    """sha256 over the kernel sources (python/fbdl_fast/kernels/*.py, by name)."""
    digest = hashlib.sha256()
    for path in sorted(KERNELS.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def load_table(path: Path = TABLE_FILE) -> Optional[dict[str, Any]]:
    """The committed table, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


__all__ = [
    "Counts", "count", "count_all", "counting", "gpu_launches", "load_table", "markdown",
    "report_section", "with_staleness",
]  # fmt: skip

if __name__ == "__main__":
    sys.exit(main())
