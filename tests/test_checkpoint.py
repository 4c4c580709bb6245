"""Checkpoint files: atomic writes, RNG snapshots, clear errors on bad files."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fbdl_fast.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_round_trip_adds_format_version(tmp_path: Path) -> None:
    path = save_checkpoint({"w": torch.arange(3.0), "epoch": 2}, tmp_path / "c.pt")
    state = load_checkpoint(path)
    assert state["format_version"] == FORMAT_VERSION
    assert state["epoch"] == 2
    assert torch.equal(state["w"], torch.arange(3.0))
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint({"epoch": 1}, path)

    with pytest.raises((AttributeError, pickle.PicklingError)):  # torch.save fails half-way
        save_checkpoint({"epoch": 2, "unpicklable": lambda: None}, path)
    assert os.listdir(tmp_path) == ["c.pt"]
    assert load_checkpoint(path)["epoch"] == 1


def test_rng_state_restores_every_generator() -> None:
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]


def test_rng_state_survives_the_file(tmp_path: Path) -> None:
    save_checkpoint({"rng": rng_state()}, tmp_path / "r.pt")
    expected = (torch.rand(2), np.random.randn(2), random.random())
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert torch.equal(torch.rand(2), expected[0])
    assert np.array_equal(np.random.randn(2), expected[1])
    assert random.random() == expected[2]


def test_truncated_file_error_names_the_file(tmp_path: Path) -> None:
    good = save_checkpoint({"w": torch.zeros(1000)}, tmp_path / "good.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"bad\.pt.*truncated or corrupt"):
        load_checkpoint(bad)


def test_garbage_missing_and_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"text\.pt.*not an fbdl_fast checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match=r"nope\.pt.*does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"foreign\.pt.*not an fbdl_fast checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format_version": FORMAT_VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=rf"future\.pt.*format_version={FORMAT_VERSION + 1}"):
        load_checkpoint(tmp_path / "future.pt")


class NotTensors:
    """A pickled object weights_only refuses (its unpickling could run any code)."""


def test_a_pickle_of_other_objects_is_refused_without_torchs_hint(tmp_path: Path) -> None:
    torch.save({"format_version": FORMAT_VERSION, "x": NotTensors()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt.*not an fbdl_fast checkpoint") as err:
        load_checkpoint(tmp_path / "evil.pt")
    assert "weights_only" not in str(err.value)
