"""The peers a user would pick instead of fbdl_fast, measured beside ours in the same turns.

A peer is torch eager, torch.compile, Liger-Kernel or Hugging Face transformers. Each is built by
a factory that returns its step; `measure_row` builds every variant of one problem, runs each
once (torch.compile and Triton compile there: that first call's seconds are its `first_call_s`,
the compile cost the budget is planned from), then times the ones that ran in turns with
measure.time_in_turns (CUDA events, L2 flushed, median and p20-p80; wall time on a CPU), the
same method as every other bench. A peer whose import, compile or first call fails is kept as a
variant whose `not_measured` says why: a finding in the report, never a failed check.

FBDL_FAST_PEERS_MISSING=liger_kernel,transformers makes `import_peer` refuse those packages as
if they were not installed (the test of the "not measured" rows, and a way to skip a slow peer);
FBDL_FAST_PEERS_MAX_AUTOTUNE=1 adds torch.compile(mode="max-autotune-no-cudagraphs") variants
where a bench offers them (off by default: they do not fit the GPU check's 8 minutes).

Imported by benches/gpu/bench_peers.py, whose pytest run puts benches/ (measure) on sys.path.
"""

from __future__ import annotations

import importlib
import math
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Optional

import torch

from measure import CUDA, Timing, peak_mib, record, time_in_turns

MISSING_ENV = "FBDL_FAST_PEERS_MISSING"
MAX_AUTOTUNE_ENV = "FBDL_FAST_PEERS_MAX_AUTOTUNE"
# Every problem compiles its own graphs (dynamic=False, as a user with fixed shapes gets); past
# dynamo's default of 8 recompiles of one function it would fall back to eager without failing.
RECOMPILE_LIMIT = 256

Step = Callable[[], object]
Factory = Callable[[], Step]


def hidden_packages() -> set[str]:
    """The top-level packages FBDL_FAST_PEERS_MISSING names (comma-separated)."""
    return {name.strip() for name in os.environ.get(MISSING_ENV, "").split(",") if name.strip()}


def import_peer(module: str) -> ModuleType:
    """Import a peer's module; ImportError if it is absent or hidden by FBDL_FAST_PEERS_MISSING."""
    if module.split(".")[0] in hidden_packages():
        raise ImportError(f"{module.split('.')[0]} is hidden by {MISSING_ENV}")
    return importlib.import_module(module)


def max_autotune() -> bool:
    """Whether FBDL_FAST_PEERS_MAX_AUTOTUNE=1 asks for the max-autotune compiled variants."""
    return os.environ.get(MAX_AUTOTUNE_ENV, "") == "1"


def compiled(fn: Callable[..., Any], mode: Optional[str] = None) -> Callable[..., Any]:
    """torch.compile(fn) for fixed shapes (dynamic=False), with room for one graph a problem."""
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    return torch.compile(fn, mode=mode, dynamic=False)


def why(error: BaseException) -> str:
    """One line saying why a peer was not measured: the error's type and first line."""
    lines = str(error).strip().splitlines()
    first = lines[0][:240] if lines else ""
    return f"not measured: {type(error).__name__}: {first}".rstrip(": ")


def _synchronize() -> None:
    if CUDA:
        torch.cuda.synchronize()


@dataclass
class Built:
    """The variants of one problem that ran once, and why the others did not."""

    steps: dict[str, Step] = field(default_factory=dict)
    first_call_s: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    not_measured: dict[str, str] = field(default_factory=dict)


def build(
    factories: dict[str, Factory], check: Optional[Callable[[str, Any], float]] = None
) -> Built:
    """Build each variant and run it once, timing that first call (its compile, if any).

    `check` turns a variant's name and that call's output into its error. Warnings of the first
    call (a compiler's advice, say) are kept with the variant instead of failing it."""
    built = Built()
    for name, factory in factories.items():
        started = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step = factory()
                output = step()
                _synchronize()
        except Exception as error:  # a peer that cannot run here is a row, not a failed bench
            built.not_measured[name] = why(error)
            continue
        built.first_call_s[name] = time.perf_counter() - started
        built.steps[name] = step
        if caught:
            built.warnings[name] = sorted({str(w.message).splitlines()[0][:200] for w in caught})
        if check is not None:
            built.errors[name] = check(name, output)
        del output
    return built


def best(timings: dict[str, Timing], names: Iterable[str]) -> Optional[str]:
    """The fastest of `names` that were timed (by median), or None if none was."""
    timed = [name for name in names if name in timings]
    return min(timed, key=lambda name: timings[name].median_s) if timed else None


def _ratio(slower: Optional[Timing], faster: Optional[Timing]) -> Optional[float]:
    if slower is None or faster is None or not faster.median_s:
        return None
    return slower.median_s / faster.median_s


def measure_row(
    op: str,
    problem: dict[str, Any],
    factories: dict[str, Factory],
    *,
    ours: Iterable[str],
    eager: str,
    peers: Iterable[str],
    repeats: int,
    warmup: int,
    per_call: Optional[float] = None,
    check: Optional[Callable[[str, Any], float]] = None,
    ours_tolerance: Optional[float] = None,
) -> dict[str, Any]:
    """Build, time in turns and record one problem's row (op `op`), ours beside every peer.

    `ours` are our variants (the fastest of them is judged), `eager` the torch eager variant and
    `peers` every variant a user could pick instead (eager included). The row holds each variant
    (median and p20/p80 ms, peak MiB, first call s; or `not_measured`), the best peer, and
    speedup_vs_eager / speedup_vs_best_peer (their time over ours: above 1, ours is faster).
    `per_call` (say, posts a step) adds `per_s` to each timed variant. `check` gives each
    variant's `error` from its first output; an error of ours above `ours_tolerance` (or NaN)
    fails the bench before anything is timed: a wrong result never gets a speed.
    """
    ours, peers = list(ours), list(peers)
    built = build(factories, check)
    if ours_tolerance is not None:
        wrong = {n: e for n, e in built.errors.items() if n in ours and not e <= ours_tolerance}
        assert not wrong, f"{op} {problem}: ours off float64 by {wrong} > {ours_tolerance:g}"
    with warnings.catch_warnings():  # a peer's warnings were kept at its first call
        warnings.simplefilter("ignore")
        timings = time_in_turns(built.steps, repeats=repeats, warmup=warmup, host=False)
        peaks = {name: peak_mib(step) for name, step in built.steps.items()}
    variants: dict[str, dict[str, Any]] = {}
    for name in factories:
        if name in built.not_measured:
            variants[name] = {"not_measured": built.not_measured[name]}
            continue
        timing = timings[name]
        variants[name] = {
            **timing.summary(""),
            "peak_mib": peaks[name],
            "first_call_s": built.first_call_s[name],
        }
        if per_call is not None:
            variants[name]["per_s"] = per_call / timing.median_s
        if name in built.errors:
            variants[name]["error"] = built.errors[name]
        if name in built.warnings:
            variants[name]["warnings"] = built.warnings[name]
    ours_best, peer_best = best(timings, ours), best(timings, peers)
    ours_timing = timings.get(ours_best) if ours_best else None
    row = {
        **problem,
        "device": "cuda" if CUDA else "cpu",
        "variants": {name: _renamed(v) for name, v in variants.items()},
        "ours": ours_best,
        "eager": eager,
        "best_peer": peer_best,
        "speedup_vs_eager": _ratio(timings.get(eager), ours_timing),
        "speedup_vs_best_peer": _ratio(timings.get(peer_best) if peer_best else None, ours_timing),
    }
    peak_ours = variants.get(ours_best or "", {}).get("peak_mib")
    peak_peer = variants.get(peer_best or "", {}).get("peak_mib")
    row["memory_vs_best_peer"] = peak_ours / peak_peer if peak_ours and peak_peer else None
    record(op, row)
    return row


def _renamed(variant: dict[str, Any]) -> dict[str, Any]:
    """Timing.summary("") gives `_ms`, `_p20_ms`...: name them `ms`, `p20_ms`, `p80_ms`."""
    return {key.lstrip("_"): value for key, value in variant.items()}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float64 (NaN where `got` is not finite)."""
    got64, want64 = got.detach().double(), want.detach().double()
    if not torch.isfinite(got64).all():
        return math.nan
    return ((got64 - want64).norm() / want64.norm().clamp_min(1e-30)).item()
