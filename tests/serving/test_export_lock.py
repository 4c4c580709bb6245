"""Export under the run's lock: `fbdl-fast export` holds the run folder's lock from before it
loads the checkpoint to after it writes, stamps the SHA-256 of the bytes it loaded, and refuses
when the checkpoint was replaced between its load and its stamp (say by a `train --overwrite`
that did not wait for the lock) instead of tying the old weights to the new file's hash.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fbdl_fast import runs
from fbdl_fast.checkpoint import load_checkpoint, save_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.serving import int8
from fbdl_fast.serving import onnx as serving_onnx
from tiny_run import cli_refusal, make_run

# the step of each export between its load of the weights and its stamp
STEPS = {"int8": (int8, "quantize_int8"), "onnx": (serving_onnx, "_onnx_bytes")}


def _replace_best(folder: Path) -> None:
    """Put other weights in best.pt (every float tensor of the model plus one), as a train of
    the same folder would."""
    state = load_checkpoint(folder / "best.pt")
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    state.pop("format_version")
    save_checkpoint(state, folder / "best.pt")


@pytest.mark.parametrize("fmt", ["int8", "onnx"])
def test_export_refuses_a_checkpoint_replaced_between_its_load_and_its_stamp(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """best.pt replaced while the export works on the weights it loaded: exit 2 with one line
    saying the run changed under the export, and no file written."""
    folder = make_run(tmp_path / "run")
    module, name = STEPS[fmt]
    step = getattr(module, name)

    def replaced_meanwhile(*args, **kwargs):  # type: ignore[no-untyped-def]
        _replace_best(folder)
        return step(*args, **kwargs)

    monkeypatch.setattr(module, name, replaced_meanwhile)
    err = cli_refusal(capsys, ["export", "--run", str(folder), "--format", fmt, "--quiet"])
    assert "best.pt changed while it was exported" in err and "export it again" in err
    assert not (folder / ("model.int8.pt" if fmt == "int8" else "model.onnx")).exists()


@pytest.mark.parametrize("fmt", ["int8", "onnx"])
def test_export_holds_the_run_lock_while_it_works(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While export turns the weights into its file, the run's lock file exists and names this
    process, so a train of the same folder is refused meanwhile; it is gone afterwards."""
    folder = make_run(tmp_path / "run")
    module, name = STEPS[fmt]
    step = getattr(module, name)
    holders = []

    def note_lock(*args, **kwargs):  # type: ignore[no-untyped-def]
        lock = runs.lock_path(folder)
        holders.append(lock.read_text(encoding="ascii").strip() if lock.exists() else None)
        return step(*args, **kwargs)

    monkeypatch.setattr(module, name, note_lock)
    assert main(["export", "--run", str(folder), "--format", fmt, "--quiet"]) == 0
    assert holders and set(holders) == {str(os.getpid())}
    assert not runs.lock_path(folder).exists()


def test_library_export_takes_the_lock_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """export_int8 called from Python (no CLI) holds the run's lock as well."""
    from fbdl_fast import load_run

    folder = make_run(tmp_path / "run")
    seen = []
    step = int8.quantize_int8

    def note_lock(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(runs.lock_path(folder).exists())
        return step(*args, **kwargs)

    monkeypatch.setattr(int8, "quantize_int8", note_lock)
    int8.export_int8(load_run(folder, device="cpu"))
    assert seen == [True]
