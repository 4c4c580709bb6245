"""Shared test set-up.

Without a GPU the Triton kernels are tested through the interpreter: TRITON_INTERPRET must be set
before Triton compiles the first kernel, so it is set here, before any test imports fbdl_fast.
With a GPU they are compiled and tested on CUDA tensors. Tests that run the kernels ask for the
`kernel_device` fixture (or `triton`, which adds FBDL_FAST_BACKEND=triton): their tensors are then
made on that device, and they skip, saying why, where the kernels cannot run (tests/devices.py).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():  # (devices.CUDA: the same answer, read before fbdl_fast loads)
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # Under the interpreter `auto` would run every fused layer of every model test through numpy,
    # which is slow. Kernel and parity tests ask for the Triton path explicitly (the `triton`
    # fixture below); everything else runs the reference unless the caller set a backend.
    os.environ.setdefault("FBDL_FAST_BACKEND", "torch")

# Imported after TRITON_INTERPRET is set: it imports fbdl_fast.
from devices import CUDA, KERNEL_DEVICE, kernel_skip_reason

# Fixtures through which a test asks for the kernel device (CUDA where there is one).
_KERNEL_FIXTURES = {"on_kernel_device", "kernel_device", "triton", "set_backend"}


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


# Where CUDA is, tests run as on a machine without it unless they ask for it (marked `cuda`, or
# through a kernel fixture): the trainer's, the CLI's and torchrun's default device is then the
# CPU, in this process (torch.cuda.is_available() is False) and in those it starts
# (CUDA_VISIBLE_DEVICES=""). Those tests compare with CPU results (fp32, exact reruns); what the
# GPU does is tested by the tests that ask for it. Per module, so that module fixtures (a run
# trained through the CLI) are made on the CPU too.
_IS_AVAILABLE = torch.cuda.is_available
_VISIBLE = os.environ.get("CUDA_VISIBLE_DEVICES")


def _show_cuda(patcher: pytest.MonkeyPatch, shown: bool) -> None:
    patcher.setattr(torch.cuda, "is_available", _IS_AVAILABLE if shown else lambda: False)
    if shown and _VISIBLE is None:
        patcher.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        patcher.setenv("CUDA_VISIBLE_DEVICES", _VISIBLE if shown else "")


@pytest.fixture(scope="module", autouse=True)
def _cpu_by_default() -> Iterator[None]:
    if not CUDA:
        yield
        return
    with pytest.MonkeyPatch.context() as patcher:
        _show_cuda(patcher, False)
        yield


@pytest.fixture(autouse=True)
def _cuda_when_asked(request: pytest.FixtureRequest) -> Iterator[None]:
    node = request.node
    if not CUDA or not (
        node.get_closest_marker("cuda") or _KERNEL_FIXTURES & set(node.fixturenames)
    ):
        yield
        return
    with pytest.MonkeyPatch.context() as patcher:
        _show_cuda(patcher, True)
        yield


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
def on_kernel_device() -> Iterator[str]:
    """Tensors and modules made without a device land on KERNEL_DEVICE for the test: CUDA where
    there is one (where dispatch runs the kernels), else the CPU. Skips nothing."""
    if KERNEL_DEVICE == "cpu":  # already the default: leave torch's factories untouched
        yield KERNEL_DEVICE
        return
    torch.set_default_device(KERNEL_DEVICE)
    try:
        yield KERNEL_DEVICE
    finally:
        torch.set_default_device(None)


@pytest.fixture
def kernel_device(on_kernel_device: str) -> str:
    """The device the Triton kernels run on in this test ("cuda", or "cpu" under the
    interpreter), made the default device; skips, with the reason, where they cannot run."""
    reason = kernel_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return on_kernel_device


@pytest.fixture
def triton(monkeypatch: pytest.MonkeyPatch, kernel_device: str) -> str:
    """Run the test with FBDL_FAST_BACKEND=triton on the kernel device: the kernels, or a
    BackendError."""
    monkeypatch.setenv("FBDL_FAST_BACKEND", "triton")
    return kernel_device


@pytest.fixture
def set_backend(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], None]:
    """set_backend(value) sets FBDL_FAST_BACKEND for the test; "triton" also does what the
    `kernel_device` fixture does (call it before making the tensors)."""

    def set_to(value: str) -> None:
        if value == "triton":
            request.getfixturevalue("kernel_device")
        monkeypatch.setenv("FBDL_FAST_BACKEND", value)

    return set_to


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which fbdl_fast is under test (the checkout's or an installed wheel's) and where the
    kernels run: the first thing to read in a log from another machine."""
    import fbdl_fast

    where = kernel_skip_reason() or f"on {KERNEL_DEVICE}"
    return [
        f"fbdl_fast {fbdl_fast.__version__} from {Path(fbdl_fast.__file__).parent}",
        f"Triton kernels: {where}",
    ]


# The summary line on the skips for want of the MiniLM weights (a hook: tests/skip_summary.py).
from skip_summary import pytest_terminal_summary  # noqa: E402, F401


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `-m kernel` selects every test that runs the Triton kernels (benches/gpu/gpu_check.py does).
    for item in items:
        if _KERNEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kernel)
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:  # not keywords: they hold param ids
            item.add_marker(skip)
