"""Atomic writes: all or nothing, usual permissions, nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fbdl_fast.files import open_atomic, write_atomic


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.txt"
    write_atomic(path, "old\n")
    write_atomic(path, "new ✓\n")
    assert path.read_text(encoding="utf-8") == "new ✓\n"
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["a.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    write_atomic(path, "old")
    with pytest.raises(OSError, match="disk full"), open_atomic(path) as f:
        f.write("half")
        raise OSError("disk full")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644


def test_unsupported_mode_is_named() -> None:
    with pytest.raises(ValueError, match="mode='a'"), open_atomic("x", "a"):
        pass
