"""A run's integrity manifest: train and export record every artifact's SHA-256 in
RUN/manifest.json, every load checks the bytes it reads against it, and a file whose bytes
changed (8 bytes flipped in a checkpoint, int8 file or ONNX file; an edited tokenizer setting)
makes predict exit 2 with one line naming it instead of serving other predictions. A write cut
short at any point leaves a run that still loads; a folder without a manifest loads unverified.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from fbdl_fast import manifest
from fbdl_fast.checkpoint import load_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.manifest import MANIFEST, IntegrityError, read_verified, write_recorded
from fbdl_fast.runs import (
    RunError,
    check_unit,
    fingerprint_matches,
    read_run_files,
    tokenizer_fingerprint,
    vocabulary_fingerprint,
)
from tiny_run import cli_refusal, tiny_model_args, without_manifest, write_posts_csv

TEXTS = ["WIN a FREE phone!!! https://bit.ly/x", "so happy today", "@support my order never came"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN trained by the CLI (1 epoch), exported to int8, ONNX and int8 ONNX."""
    root = tmp_path_factory.mktemp("manifest")
    data = write_posts_csv(root / "posts.csv", 200, seed=0)
    run = root / "run"
    argv = ["train", "--data", str(data), "--output", str(run), "--epochs", "1", "--quiet"]
    assert main([*argv, *tiny_model_args()]) == 0
    for fmt in ("int8", "onnx", "onnx-int8"):
        assert main(["export", "--run", str(run), "--format", fmt, "--quiet"]) == 0
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run, for a test to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _predict(run: Path, checkpoint: str) -> list[str]:
    return ["predict", "--run", str(run), "--checkpoint", checkpoint, "--quiet"] + [
        a for t in TEXTS for a in ("--text", t)
    ]


def _flip(path: Path, payload: bytes) -> None:
    """Invert 8 bytes of `path` inside the first occurrence of `payload` (a tensor's bytes)."""
    data = bytearray(path.read_bytes())
    at = bytes(data).find(payload)
    assert at >= 0 and len(payload) >= 24
    for i in range(at + 8, at + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _output_layer_bytes(path: Path) -> bytes:
    """The raw bytes, as stored in the file, of the last weight matrix of `path` (best.pt: the
    classifier; model.int8.pt: its int8 values; model.onnx, model.int8.onnx: its last
    initializer)."""
    if path.suffix == ".onnx":
        import onnx

        inits = [
            i.raw_data for i in onnx.load(str(path)).graph.initializer if len(i.raw_data) >= 64
        ]
        return inits[-1]
    state = load_checkpoint(path)["model"]
    name = [k for k in state if k.endswith(".weight") or k.endswith(".weight.int8")][-1]
    return state[name].contiguous().numpy().tobytes()


def test_train_and_export_record_every_artifact(trained: Path) -> None:
    """manifest.json lists config, tokenizer, labels, both checkpoints and the three exports, each
    with the SHA-256 of the file's bytes as they are."""
    files = json.loads((trained / MANIFEST).read_text(encoding="utf-8"))["files"]
    names = [
        "best.pt",
        "config.json",
        "label_map.json",
        "last.pt",
        "model.int8.onnx",
        "model.int8.pt",
        "model.onnx",
        "tokenizer.json",
    ]
    assert sorted(files) == names
    for name in names:
        data = (trained / name).read_bytes()
        assert files[name] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


@pytest.mark.parametrize(
    ("name", "checkpoint"),
    [
        ("best.pt", "best"),
        ("model.int8.pt", "int8"),
        ("model.onnx", "onnx"),
        ("model.int8.onnx", "onnx-int8"),
    ],
)
def test_flipped_bytes_in_the_output_layer_are_refused_naming_the_file(
    run: Path, name: str, checkpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """8 bytes flipped inside the output layer's weights: predict exits 2 with one line naming
    the file ("changed since it was written"), where it used to serve other probabilities."""
    _flip(run / name, _output_layer_bytes(run / name))
    err = cli_refusal(capsys, _predict(run, checkpoint))
    assert str(run / name) in err and "changed since it was written; retrain or re-export" in err


def _edit_tokenizer_settings(path: Path) -> None:
    """Turn lowercasing off in tokenizer.json, its vocabulary untouched."""
    settings = json.loads(path.read_text(encoding="utf-8"))
    assert settings["normalizer"]["lowercase"] is True
    settings["normalizer"]["lowercase"] = False
    path.write_text(json.dumps(settings, indent=2), encoding="utf-8")


def test_edited_tokenizer_settings_are_refused_naming_the_file(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tokenizer.json with lowercasing turned off (same vocabulary): predict exits 2 naming it."""
    _edit_tokenizer_settings(run / "tokenizer.json")
    err = cli_refusal(capsys, _predict(run, "best"))
    assert str(run / "tokenizer.json") in err and "changed since it was written" in err


def test_the_checkpoint_s_tokenizer_fingerprint_covers_the_settings(run: Path) -> None:
    """Without the manifest, the checkpoint's fingerprint still tells an edited setting: the
    whole tokenizer is fingerprinted, while the vocabulary-only fingerprint of older
    checkpoints is still compared as that kind."""
    original = read_run_files(run).tokenizer
    without_manifest(run)
    _edit_tokenizer_settings(run / "tokenizer.json")
    files = read_run_files(run)
    state = load_checkpoint(run / "best.pt")
    assert state["tokenizer_fingerprint"] == tokenizer_fingerprint(original)
    assert vocabulary_fingerprint(files.tokenizer) == vocabulary_fingerprint(original)
    with pytest.raises(RunError, match=r"tokenizer\.json is not the tokenizer"):
        check_unit(run, run / "best.pt", state, files.config, files.tokenizer, files.label_map)
    old_kind = {**state, "tokenizer_fingerprint": vocabulary_fingerprint(original)}
    check_unit(run, run / "best.pt", old_kind, files.config, files.tokenizer, files.label_map)
    assert not fingerprint_matches(tokenizer_fingerprint(original), files.tokenizer)


def test_a_write_cut_short_at_either_step_leaves_a_run_that_loads(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the new hash is recorded but before the file is renamed leaves the old
    file, which loads; one after the rename but before the record is final leaves the new
    file, which loads; bytes that are neither are refused."""
    path = run / "best.pt"
    old, new = path.read_bytes(), path.read_bytes() + b"\0"
    real_write = manifest.write_atomic

    def crash_on(target: str):  # type: ignore[no-untyped-def]
        def write(p: Path, data: bytes | str) -> Path:
            if Path(p).name == target:
                raise OSError("killed")
            return real_write(p, data)

        return write

    monkeypatch.setattr(manifest, "write_atomic", crash_on("best.pt"))
    with pytest.raises(OSError, match="killed"):
        write_recorded(path, new)
    assert read_verified(path)[0] == old

    calls = []

    def second_manifest_write_crashes(p: Path, data: bytes | str) -> Path:
        if Path(p).name == MANIFEST:
            calls.append(p)
            if len(calls) == 2:
                raise OSError("killed")
        return real_write(p, data)

    monkeypatch.setattr(manifest, "write_atomic", second_manifest_write_crashes)
    with pytest.raises(OSError, match="killed"):
        write_recorded(path, new)
    assert read_verified(path)[0] == new
    path.write_bytes(old[:-1] + b"\1")
    with pytest.raises(IntegrityError, match=r"best\.pt changed since it was written"):
        read_verified(path)
    path.write_bytes(old[:300])
    cut = f"truncated or corrupt \\(300 bytes of {len(old)} written\\): changed since"
    with pytest.raises(IntegrityError, match=cut):
        read_verified(path)


def test_a_folder_without_manifest_loads_unverified(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs written before the manifest (none in the folder) load as before: a changed file is
    not refused for want of a record, and no manifest is written by loading."""
    without_manifest(run)
    assert main(_predict(run, "best")) == 0
    assert not (run / MANIFEST).exists()


def test_a_run_whose_manifest_went_missing_is_refused(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run written with a manifest (config.json says so) whose manifest.json was deleted is
    not read unverified as an older run is: predict exits 2 naming the missing file, even
    before a flipped byte in best.pt could be served."""
    _flip(run / "best.pt", _output_layer_bytes(run / "best.pt"))
    (run / MANIFEST).unlink()
    err = cli_refusal(capsys, _predict(run, "best"))
    assert f"{run / MANIFEST} is missing" in err and "restore it or retrain" in err


def test_a_damaged_manifest_is_one_line_naming_it(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """manifest.json that is not JSON: predict exits 2 naming it."""
    (run / MANIFEST).write_text("{not json", encoding="utf-8")
    err = cli_refusal(capsys, _predict(run, "best"))
    assert str(run / MANIFEST) in err and "damaged" in err
