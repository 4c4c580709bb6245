"""What the kernel and model benches measure besides pytest-benchmark's own timing.

- `time_in_turns`: the figures the reports show. Each candidate and its reference are timed in
  turns (a, b, a, b, ...), so a drift of the machine cannot pass for a speedup. On CUDA each call
  is timed with CUDA events after the L2 cache is flushed (a 256 MiB write: the H100/H200 L2 is
  50-60 MB), at least 50 times, and the Python-side cost of a call (dispatch plus launch) is
  timed apart from the kernel time. On a CPU it is wall time per call.
- `peak_mib`: peak CUDA memory of one call (reset_peak_memory_stats).
- `saved_mib`: the memory autograd keeps between forward and backward.
- `record`: appends one result row as a JSON line to $FBDL_FAST_BENCH_RESULTS when it is set, so
  a run cut short by a time limit (benches/gpu/gpu_check.py) keeps every row measured until then.

pytest puts this folder on sys.path when it imports a bench file, so the benches import this
module as `measure`.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import torch

from fbdl_fast.reports.speed import interleaved_times

RESULTS_ENV = "FBDL_FAST_BENCH_RESULTS"
CUDA = torch.cuda.is_available()
CUDA_REPEATS = 50  # the fewest timed calls per variant on a GPU
L2_FLUSH_BYTES = 256 * 2**20
HOST_CALLS = 10  # calls averaged for the host-side time


@dataclass
class Timing:
    """One variant's time per call: median and the 20th/80th percentiles, in seconds."""

    median_s: float
    p20_s: float
    p80_s: float
    repeats: int
    host_s: Optional[float] = None  # Python-side time per call (dispatch + launch); CUDA only

    def summary(self, prefix: str) -> dict[str, Any]:
        """The figures as `{prefix}_ms`, `{prefix}_p20_ms`, ... for a result row."""
        row = {
            f"{prefix}_ms": self.median_s * 1e3,
            f"{prefix}_p20_ms": self.p20_s * 1e3,
            f"{prefix}_p80_ms": self.p80_s * 1e3,
        }
        if self.host_s is not None:
            row[f"{prefix}_host_us"] = self.host_s * 1e6
        return row


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _timing(values: list[float], host_s: Optional[float] = None) -> Timing:
    return Timing(
        statistics.median(values), _percentile(values, 0.2), _percentile(values, 0.8),
        len(values), host_s,
    )  # fmt: skip


_flush_buffer: Optional[torch.Tensor] = None


def _flush_l2() -> None:
    global _flush_buffer
    if _flush_buffer is None:
        _flush_buffer = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    _flush_buffer.zero_()


def _host_seconds(step: Callable[[], object]) -> float:
    """Wall time per call with no synchronisation inside: what Python spends to enqueue it."""
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(HOST_CALLS):
        step()
    elapsed = time.perf_counter() - started
    torch.cuda.synchronize()
    return elapsed / HOST_CALLS


def time_in_turns(
    steps: dict[str, Callable[[], object]],
    repeats: int = CUDA_REPEATS,
    warmup: int = 3,
    host: bool = True,
) -> dict[str, Timing]:
    """Time each step in turns; on CUDA with events around each call, the L2 flushed before it.

    On CUDA at least CUDA_REPEATS calls are timed and, with `host`, the Python-side time per call
    too (meaningful only for steps that do not synchronise themselves).
    """
    if not CUDA:
        times = interleaved_times(steps, repeats, warmup)
        return {name: _timing(values) for name, values in times.items()}

    for _ in range(warmup):
        for step in steps.values():
            step()
    repeats = max(repeats, CUDA_REPEATS)
    events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {n: [] for n in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            _flush_l2()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            events[name].append((start, end))
    torch.cuda.synchronize()
    return {
        name: _timing(
            [start.elapsed_time(end) / 1e3 for start, end in pairs],
            _host_seconds(steps[name]) if host else None,
        )
        for name, pairs in events.items()
    }


def synchronized(step: Callable[[], object]) -> Callable[[], object]:
    """`step`, then wait for the GPU: for pytest-benchmark's wall-clock timing of a CUDA step."""

    def run() -> object:
        result = step()
        if CUDA:
            torch.cuda.synchronize()
        return result

    return run


def peak_mib(step: Callable[[], object]) -> Optional[float]:
    """Peak CUDA memory of one call of `step` above what was allocated before it; None without
    CUDA."""
    if not CUDA:
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def saved_mib(forward: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> float:
    """MiB that autograd keeps between `forward` and its backward, each storage counted once;
    the storages of the tensors in `exclude` (say, the input) are not counted."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values()) / 2**20


def max_abs_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest |got - want|, computed in float64."""
    return (got.double() - want.double()).abs().max().item()


def within_parity(ours: float, yardstick: float, floor: float) -> bool:
    """FlashAttention's parity rule: our error against a high-precision truth is at most twice
    the error of the reference implementation in the same precision, or `floor` where that
    error is ~0. NaN never passes."""
    return ours == ours and ours <= max(2 * yardstick, floor)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def record(op: str, row: dict[str, Any]) -> None:
    """Append `row` (with `op`) as one JSON line to $FBDL_FAST_BENCH_RESULTS, if it is set.
    Under FBDL_FAST_AUTOTUNE=1 the op is recorded as `op+autotune`, so that the report keeps
    autotuned launches apart from the rule's."""
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    from fbdl_fast.ops import settings

    if settings().autotune:
        op = f"{op}+autotune"
    with open(path, "a", encoding="utf-8") as sink:
        sink.write(json.dumps({"op": op, **row}, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Timing):
        return asdict(value)
    if isinstance(value, torch.dtype):
        return dtype_name(value)
    return str(value)
