"""Nothing a user made is lost: --resume keeps what the user put in a run folder, --output of
predict is created exclusively, evaluate --report never replaces a run's own report, a report
appears whole or not at all, and an export cleans up the temp files a killed export left."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fbdl_fast.cli import main
from tiny_run import tiny_model_args, write_posts_csv

TINY = [*tiny_model_args(max_length=24), "--batch-size", "8", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def posts_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_posts_csv(tmp_path_factory.mktemp("no_loss") / "posts.csv", 200, seed=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, posts_csv: Path) -> Path:
    """A finished one-epoch run (not to be changed by the tests that read it)."""
    out = tmp_path_factory.mktemp("no_loss_run") / "run"
    argv = ["train", "--data", str(posts_csv), "--output", str(out), "--epochs", "1", *TINY]
    assert main(argv) == 0
    return out


def test_resume_of_a_finished_run_keeps_the_users_files_and_folders(
    posts_csv: Path, tmp_path: Path
) -> None:
    """train --resume of a finished run republishes it with every file and folder the user put
    inside (an evaluate --report folder, a note), byte for byte."""
    out = tmp_path / "run"
    argv = ["train", "--data", str(posts_csv), "--output", str(out), "--epochs", "1", *TINY]
    assert main(argv) == 0
    (out / "eval" / "deeper").mkdir(parents=True)
    (out / "eval" / "report.md").write_text("# mine\n", encoding="utf-8")
    (out / "eval" / "deeper" / "data.bin").write_bytes(b"\x00\x01")
    (out / "notes.txt").write_text("keep me\n", encoding="utf-8")
    assert main([*argv, "--resume"]) == 0
    assert (out / "eval" / "report.md").read_text(encoding="utf-8") == "# mine\n"
    assert (out / "eval" / "deeper" / "data.bin").read_bytes() == b"\x00\x01"
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me\n"
    assert (out / "best.pt").is_file()


def test_open_atomic_without_replace_never_replaces_a_file_that_appeared(tmp_path: Path) -> None:
    """open_atomic(replace=False): a file created by another writer while this one wrote is
    kept, this writer gets FileExistsError, and no temporary file is left; a free name gets the
    complete file."""
    from fbdl_fast.files import open_atomic

    target = tmp_path / "out.csv"
    with pytest.raises(FileExistsError), open_atomic(target, replace=False) as f:
        f.write("mine\n")
        target.write_text("theirs\n", encoding="utf-8")  # the other writer finished first
    assert target.read_text(encoding="utf-8") == "theirs\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    free = tmp_path / "free.csv"
    with open_atomic(free, replace=False) as f:
        f.write("whole\n")
    assert free.read_text(encoding="utf-8") == "whole\n"


def test_a_second_predict_writer_without_overwrite_is_refused(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """Two predict --output FILE at once: the one that finishes second, without --overwrite,
    exits 2 naming the file and leaves the first one's predictions as they were; with
    --overwrite it replaces them."""
    from fbdl_fast.cli import predict

    out = tmp_path / "predictions.csv"
    argv = ["predict", "--run", str(trained), "--text", "hello", "--output", str(out), "--quiet"]
    original = predict._write_prediction

    def other_writer_first(*args: Any) -> None:
        if not out.exists():
            out.write_text("the other writer's rows\n", encoding="utf-8")
        original(*args)

    monkeypatch.setattr(predict, "_write_prediction", other_writer_first)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"output file {out} was created by another writer" in err and "Traceback" not in err
    assert out.read_text(encoding="utf-8") == "the other writer's rows\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]
    assert main([*argv, "--overwrite"]) == 0
    assert out.read_text(encoding="utf-8").startswith("text,")


def test_evaluate_report_into_a_run_folder_keeps_the_training_report(
    trained: Path, posts_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """evaluate --report RUN writes RUN/evaluation/ and leaves the run's own report.md as it
    was; a second evaluation replaces the first one's set."""
    import shutil

    run = shutil.copytree(trained, tmp_path / "run")
    training_report = (run / "report.md").read_bytes()
    argv = ["evaluate", "--run", str(run), "--data", str(posts_csv), "--report", str(run)]
    assert main(argv) == 0
    assert f"report written to {run / 'evaluation'}: report.md" in capsys.readouterr().err
    assert (run / "report.md").read_bytes() == training_report
    assert sorted(p.name for p in (run / "evaluation").iterdir()) == [
        "confusion.png",
        "reliability.png",
        "report.md",
    ]
    assert (
        (run / "evaluation" / "report.md")
        .read_text(encoding="utf-8")
        .startswith("# Evaluation of run")
    )
    assert main(argv) == 0
    assert (run / "report.md").read_bytes() == training_report


def test_a_report_is_written_whole_or_not_at_all(
    trained: Path, posts_csv: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    """A report whose writing fails midway (the disk fills on its second file) leaves the
    earlier report in the folder exactly as it was and no temporary folder beside it."""
    import errno

    from fbdl_fast.reports import evaluation

    folder = tmp_path / "eval"
    argv = ["evaluate", "--run", str(trained), "--data", str(posts_csv), "--report", str(folder)]
    assert main([*argv, "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    (folder / "report.md").write_text("# the earlier report\n", encoding="utf-8")
    before["report.md"] = b"# the earlier report\n"
    original = evaluation.write_atomic
    calls: list[Path] = []

    def full_disk_on_second(path: Path, data: Any) -> Path:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(path, data)

    monkeypatch.setattr(evaluation, "write_atomic", full_disk_on_second)
    assert main([*argv, "--quiet"]) == 2
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


def test_evaluate_report_never_replaces_a_folder_of_other_files(
    trained: Path, posts_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--report DIR where DIR holds files that are not a report's: exit 2 naming DIR and one
    of its files, DIR untouched."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("x", encoding="utf-8")
    argv = ["evaluate", "--run", str(trained), "--data", str(posts_csv), "--report", str(folder)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--report {folder} holds files of its own (thesis.tex)" in err
    assert [p.name for p in folder.iterdir()] == ["thesis.tex"]


KILLED_WRITER = """
import os, signal, sys
from fbdl_fast.files import open_atomic

with open_atomic(sys.argv[1], "wb") as f:
    f.write(b"half an export")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_write(target: Path) -> Path:
    """The temporary file a writer of `target` SIGKILLed midway leaves behind."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], check=False)
    assert result.returncode == -9
    (stale,) = [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]
    return stale


@pytest.mark.parametrize("fmt, name", [("int8", "model.int8.pt"), ("onnx", "model.onnx")])
def test_an_export_removes_the_temp_file_a_killed_export_left(
    trained: Path, tmp_path: Path, fmt: str, name: str
) -> None:
    """export --format FMT removes the temporary file an export of the same file left when it
    was killed, and nothing else: another file's temp, a user's file with a like name and the
    temp file a live writer holds stay."""
    import shutil

    from fbdl_fast.files import open_atomic

    run = shutil.copytree(trained, tmp_path / "run")
    stale = _killed_write(run / name)
    others = [run / f".{name}.notes.tmp", run / ".best.pt.abcd1234.tmp"]
    for other in others:
        other.write_bytes(b"not ours to remove")
    with open_atomic(run / name, "wb") as live:  # another writer, still writing
        known = {stale, *others}
        (live_tmp,) = [
            p for p in run.iterdir() if p.name.startswith(f".{name}.") and p not in known
        ]
        assert main(["export", "--run", str(run), "--format", fmt, "--quiet"]) == 0
        assert not stale.exists()
        assert all(other.read_bytes() == b"not ours to remove" for other in others)
        assert live_tmp.exists()
        live.write(b"x")
    assert (run / name).read_bytes() == b"x"  # the live writer finished last


def test_a_report_through_a_link_replaces_the_linked_folder(
    trained: Path, posts_csv: Path, tmp_path: Path
) -> None:
    """--report LINK, a symlink to an earlier report folder: the folder it points to gets the
    new set, the link stays a link, and nothing is left beside either."""
    target = tmp_path / "reports" / "eval"
    argv = ["evaluate", "--run", str(trained), "--data", str(posts_csv), "--quiet"]
    assert main([*argv, "--report", str(target)]) == 0
    (target / "report.md").write_text("# old\n", encoding="utf-8")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    assert main([*argv, "--report", str(link)]) == 0
    assert link.is_symlink() and (target / "report.md").read_text(encoding="utf-8") != "# old\n"
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["eval"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "reports"]


def test_writes_go_on_where_the_filesystem_has_no_locks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem refusing flock (ENOLCK, some network mounts): open_atomic still writes,
    and remove_stale_temps keeps every temp file, as it cannot tell a live writer's."""
    import errno
    import fcntl

    from fbdl_fast import files

    def no_locks(_fd: int, _op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    stale = tmp_path / ".model.onnx.abcd1234.tmp"
    stale.write_bytes(b"half")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    files.write_atomic(tmp_path / "model.onnx", b"whole")
    assert (tmp_path / "model.onnx").read_bytes() == b"whole"
    assert files.remove_stale_temps(tmp_path / "model.onnx") == [] and stale.exists()
