"""What the kernel benches (bench_layer_norm, bench_focal_loss, bench_attention) measure besides
pytest-benchmark's own timing: peak CUDA memory and the memory autograd keeps.

Speedups are timed in turns against the reference with fbdl_fast.speed.interleaved_medians.
pytest puts this folder on sys.path when it imports a bench file, so they import this module as
`measure`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Callable, Optional

import torch


def peak_mib(step: Callable[[], object]) -> Optional[float]:
    """Peak CUDA memory of one call of `step` above what was allocated before it; None without
    CUDA."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
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
