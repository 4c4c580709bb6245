"""Shared test set-up.

Without a GPU the Triton kernels are tested through the interpreter: TRITON_INTERPRET must be set
before Triton compiles the first kernel, so it is set here, before any test imports fbdl_fast.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # Under the interpreter `auto` would run every fused layer of every model test through numpy,
    # which is slow. Kernel and parity tests ask for the Triton path explicitly (the `triton`
    # fixture below); everything else runs the reference unless the caller set a backend.
    os.environ.setdefault("FBDL_FAST_BACKEND", "torch")


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


class _Refreshing(pytest.MonkeyPatch):
    """pytest's MonkeyPatch that makes fbdl_fast re-read the environment after each change (it
    reads FBDL_FAST_BACKEND and TRITON_INTERPRET once; fbdl_fast.ops.refresh() re-reads them)."""

    def setenv(self, name: str, value: str, prepend: str | None = None) -> None:
        super().setenv(name, value, prepend)
        _refresh()

    def delenv(self, name: str, raising: bool = True) -> None:
        super().delenv(name, raising)
        _refresh()

    def undo(self) -> None:
        super().undo()
        _refresh()


def _refresh() -> None:
    from fbdl_fast.ops import refresh

    refresh()


@pytest.fixture
def monkeypatch() -> Iterator[pytest.MonkeyPatch]:
    """pytest's own fixture, with fbdl_fast's settings kept in step with the environment."""
    patcher = _Refreshing()
    yield patcher
    patcher.undo()


@pytest.fixture
def triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the test with FBDL_FAST_BACKEND=triton: the kernels, or a BackendError."""
    monkeypatch.setenv("FBDL_FAST_BACKEND", "triton")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:  # not keywords: they hold param ids
            item.add_marker(skip)
