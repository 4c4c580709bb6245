"""The benches measure fbdl_fast as users get it: FBDL_FAST_BACKEND=auto, so the Triton kernels on
CUDA and PyTorch's fallbacks on a CPU. The interpreter is switched off there (a correctness tool,
not something to time; the test command's tests/conftest.py switches it on for the tests run in
the same session) and torch runs on one thread: on a shared machine a parallel region waits for
its slowest thread, and descheduled workers turned medians of 0.1 ms into 60 ms."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from fbdl_fast.ops import refresh


@pytest.fixture(autouse=True)
def _dispatch_as_users_get_it(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("FBDL_FAST_BACKEND", "auto")
    threads = torch.get_num_threads()
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        torch.set_num_threads(1)
    refresh()  # dispatch reads the environment once
    yield
    monkeypatch.undo()
    torch.set_num_threads(threads)
    refresh()
