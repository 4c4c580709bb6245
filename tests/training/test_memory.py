"""The memory a run may use is read from the device the run is on: the card's whole memory for
CUDA (which card: the index in "cuda:N"), the host's available memory for the CPU, nothing for a
device whose memory is not known here (so the estimate refuses nothing there)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fbdl_fast.training import memory


@pytest.fixture
def two_cards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A machine with two CUDA cards of 16 GB and 80 GB, as torch reports them."""
    asked: list[int] = []
    sizes = [16 * 10**9, 80 * 10**9]

    def properties(index: int) -> SimpleNamespace:
        asked.append(index)
        return SimpleNamespace(total_memory=sizes[index])

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 7)
    return asked


def test_cuda_memory_is_the_named_cards(two_cards: list[int]) -> None:
    assert memory.available_bytes("cuda:1") == 80 * 10**9
    assert memory.available_bytes("cuda") == 16 * 10**9
    assert two_cards == [1, 0]


def test_no_device_means_cuda_when_there_is_one(two_cards: list[int]) -> None:
    assert memory.available_bytes(None) == 16 * 10**9
    assert memory.available_bytes("cpu") == 7  # the host's, not a card's


def test_no_cuda_and_unknown_devices_refuse_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 7)
    assert memory.available_bytes("cuda:0") is None  # the device check says why
    assert memory.available_bytes("mps") is None
    assert memory.available_bytes(None) == 7
