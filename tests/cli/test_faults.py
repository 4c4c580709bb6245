"""Faults: non-finite losses, a run SIGKILLed and resumed, broken or missing checkpoints, two
writers on one run, a run killed before its first epoch, a full disk."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from fbdl_fast.checkpoint import load_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.training.trainer import LAST_CHECKPOINT, METRICS_LOG, NonFiniteLossError, Trainer
from tiny_run import Bag, Posts, bag_config, tiny_model_args, write_posts_csv

# ----------------------------------------------------------------------------- non-finite losses


class NanOnSteps(nn.Module):
    """Cross-entropy, but NaN at the given training calls (0-based; validation is not counted)."""

    def __init__(self, bad: set[int]) -> None:
        super().__init__()
        self.bad, self.calls = bad, 0

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(logits, labels)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls - 1 in self.bad:
                return loss * math.nan
        return loss


class Batches:
    """A fixed list of batches, re-iterable like a loader."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Any:
        return iter(self.batches)


def test_non_finite_steps_are_skipped_counted_and_logged(tmp_path: Path) -> None:
    """Two poisoned steps per run leave the weights of a run that never saw those batches."""
    batches = list(DataLoader(Posts(40), batch_size=8))  # 5 steps per epoch
    val = DataLoader(Posts(12, seed=2), batch_size=6)
    torch.manual_seed(0)
    # Calls 1 and 3 of epoch 1 and call 2 of epoch 2 (call 7) are NaN.
    poisoned = Trainer(
        Bag(), bag_config(), device="cpu", criterion=NanOnSteps({1, 3, 7}), run_dir=tmp_path
    )
    history = poisoned.fit(Batches(batches), val)
    assert history.skipped_steps == [2, 1]
    log = [json.loads(line) for line in (tmp_path / METRICS_LOG).read_text().splitlines()]
    assert [entry["skipped_steps"] for entry in log] == [2, 1]
    assert all(torch.isfinite(p).all() for p in poisoned.model.parameters())

    # The same run without the poisoned batches: epoch 1 lacks batches 1 and 3, epoch 2 batch 2.
    # The scheduler is built for 5 steps per epoch in both (skipped steps do not step it).
    class PerEpoch(Batches):
        def __init__(self) -> None:
            super().__init__(batches)
            self.epoch = 0
            self.batch_sampler = self  # the trainer calls set_epoch on it

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self) -> Any:
            drop = {1, 3} if self.epoch == 0 else {2}
            return iter([b for i, b in enumerate(self.batches) if i not in drop])

    torch.manual_seed(0)
    clean = Trainer(Bag(), bag_config(), device="cpu")
    clean_history = clean.fit(PerEpoch(), val)
    for name, tensor in clean.model.state_dict().items():
        assert torch.equal(poisoned.model.state_dict()[name], tensor), name
    assert poisoned.global_step == clean.global_step == 7
    assert history.train_losses == clean_history.train_losses  # means over the steps taken


def test_non_finite_steps_in_a_row_stop_before_a_poisoned_checkpoint(tmp_path: Path) -> None:
    batches = list(DataLoader(Posts(40), batch_size=8))
    val = DataLoader(Posts(12, seed=2), batch_size=6)
    torch.manual_seed(0)
    # Epoch 1 is clean; from the 2nd step of epoch 2 on every loss is NaN.
    trainer = Trainer(
        Bag(),
        bag_config(max_epochs=3),
        device="cpu",
        criterion=NanOnSteps(set(range(6, 100))),
        run_dir=tmp_path,
        max_nonfinite_steps=3,
    )
    with pytest.raises(NonFiniteLossError, match=r"epoch 2: 3 optimizer steps in a row") as err:
        trainer.fit(Batches(batches), val)
    assert "keep the weights of epoch 1" in str(err.value)
    last = load_checkpoint(tmp_path / LAST_CHECKPOINT)
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    assert len((tmp_path / METRICS_LOG).read_text().splitlines()) == 1
    # A streak is broken by a good step: 2 bad, 1 good, 2 bad never reaches 3.
    torch.manual_seed(0)
    survivor = Trainer(
        Bag(),
        bag_config(max_epochs=1),
        device="cpu",
        criterion=NanOnSteps({0, 1, 3, 4}),
        max_nonfinite_steps=3,
    )
    assert survivor.fit(Batches(batches), val).skipped_steps == [4]


# ----------------------------------------------------------------------------- kill and resume

TINY = [*tiny_model_args(max_length=24), "--batch-size", "8", "--threads", "1", "--quiet"]
RUN_FILES = {"config.json", "tokenizer.json", "label_map.json", "best.pt", "last.pt"}
RUN_FILES.update({METRICS_LOG, "report.md", "curves.png", "manifest.json", "baseline.json"})


@pytest.fixture(scope="module")
def posts_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_posts_csv(tmp_path_factory.mktemp("faults") / "posts.csv", 400, seed=5)


def train_argv(data: Path, out: Path, epochs: int = 5, *extra: str) -> list[str]:
    options = ["--data", str(data), "--output", str(out), "--epochs", str(epochs)]
    return ["train", *options, *TINY, *extra]


# Runs `fbdl-fast train` and SIGKILLs it from inside at a known point: in epoch 2, after its first
# optimizer step (last.pt then holds epoch 1, and the model in memory has moved past it). A kill
# from outside would race with the run's own pace.
KILL_IN_EPOCH_2 = """
import os, signal, sys
from fbdl_fast.training import trainer as train
from fbdl_fast.cli import main

original = train.Trainer._train_group
calls = []

def train_group(self, group):
    if self.epoch == 1:  # one epoch completed: this is epoch 2
        calls.append(self.global_step)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return original(self, group)

train.Trainer._train_group = train_group
sys.exit(main(sys.argv[1:]))
"""


def test_sigkilled_run_resumes_to_the_uninterrupted_weights(
    posts_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    partial = tmp_path / ".killed.partial"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_IN_EPOCH_2, *train_argv(posts_csv, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists()  # the final name only ever holds a finished run
    assert load_checkpoint(partial / LAST_CHECKPOINT)["epoch"] == 1

    assert main([*train_argv(posts_csv, out), "--resume"]) == 0
    assert not partial.exists()
    assert {p.name for p in out.iterdir()} == RUN_FILES  # no temporary file left behind
    log = [json.loads(line) for line in (out / METRICS_LOG).read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2, 3, 4, 5]

    whole = tmp_path / "whole"
    assert main(train_argv(posts_csv, whole)) == 0
    resumed, uninterrupted = load_checkpoint(out / "last.pt"), load_checkpoint(whole / "last.pt")
    assert resumed["epoch"] == uninterrupted["epoch"] == 5
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    assert resumed["history"]["val_losses"] == uninterrupted["history"]["val_losses"]
    whole_log = [json.loads(line) for line in (whole / METRICS_LOG).read_text().splitlines()]
    timeless = [{k: v for k, v in e.items() if k != "epoch_time_s"} for e in log]
    assert timeless == [{k: v for k, v in e.items() if k != "epoch_time_s"} for e in whole_log]


def test_resume_refusals_name_the_problem(
    posts_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main([*train_argv(posts_csv, out, 1), "--resume"]) == 2
    assert "--resume: no checkpoint to continue" in capsys.readouterr().err

    assert main(train_argv(posts_csv, out, 1)) == 0
    capsys.readouterr()
    # Other options than the run was started with: named, nothing changed.
    assert main([*train_argv(posts_csv, out, 1, "--lr", "0.01"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "model_config.learning_rate (0.001 in the run, 0.01 now)" in err
    assert main([*train_argv(posts_csv, out, 1, "--accumulate", "2"), "--resume"]) == 2
    assert "training.accumulate (1 in the run, 2 now)" in capsys.readouterr().err

    # An interrupted run (it has a last.pt) in the way of a fresh one.
    shutil.copytree(out, tmp_path / ".other.partial")
    assert main(train_argv(posts_csv, tmp_path / "other", 1)) == 2
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err

    # A truncated last.pt: a one-line error naming the file, no traceback.
    last = out / LAST_CHECKPOINT
    last.write_bytes(last.read_bytes()[:300])
    assert main([*train_argv(posts_csv, out, 1), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "last.pt" in err and "truncated or corrupt" in err and "Traceback" not in err


def test_finished_run_resumes_to_itself(posts_csv: Path, tmp_path: Path) -> None:
    """--resume on a finished run: nothing left to train, the run is republished unchanged."""
    out = tmp_path / "done"
    assert main(train_argv(posts_csv, out, 1)) == 0
    before = load_checkpoint(out / LAST_CHECKPOINT)["model"]
    assert main([*train_argv(posts_csv, out, 1), "--resume"]) == 0
    after = load_checkpoint(out / LAST_CHECKPOINT)["model"]
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert len((out / METRICS_LOG).read_text().splitlines()) == 1


def test_history_from_an_older_checkpoint_counts_no_skipped_steps() -> None:
    from fbdl_fast.training.trainer import History

    old = {"train_losses": [1.0, 0.5], "val_losses": [1.1, 0.6], "best_epoch": 2}
    assert History.from_dict(old).skipped_steps == [0, 0]
    assert History.from_dict({**old, "skipped_steps": [3, 1]}).skipped_steps == [3, 1]


# ----------------------------------------------------------------------------- one run, one writer


def test_a_second_writer_is_refused_while_the_first_lives(
    posts_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run's lock names the live writer; a lock left by a killed one
    never blocks."""
    out = tmp_path / "run"
    holder_code = (
        "import sys; from pathlib import Path; from fbdl_fast.runs import locked\n"
        "with locked(Path(sys.argv[1])):\n    print('locked', flush=True); sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", holder_code, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            assert main(train_argv(posts_csv, out, 1)) == 2
            err = capsys.readouterr().err
            assert f"run {out} is being written by another process (PID {holder.pid};" in err
            assert err.count("\n") == 1 and "Traceback" not in err
            assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock"]  # nothing else
        finally:
            holder.kill()  # SIGKILL: no clean-up, the lock file stays behind
    assert (tmp_path / ".run.lock").is_file()
    assert main(train_argv(posts_csv, out, 1)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the stale lock is gone too
    assert {p.name for p in out.iterdir()} == RUN_FILES


def test_a_partial_folder_with_nothing_to_resume_is_replaced(
    posts_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run killed before its first epoch ended leaves a partial folder with no
    last.pt; a plain train replaces it with a notice, --resume says there is nothing to resume."""
    out, partial = tmp_path / "run", tmp_path / ".run.partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    (partial / ".last.pt.abc.tmp").write_bytes(b"cut short")
    assert main([*train_argv(posts_csv, out, 1), "--resume"]) == 2
    assert "--resume: no checkpoint to continue" in capsys.readouterr().err
    argv = [a for a in train_argv(posts_csv, out, 1) if a != "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"{partial} holds a run that never finished an epoch (nothing to resume)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert {p.name for p in out.iterdir()} == RUN_FILES


class _FullDisk:
    """A file whose writes fail with ENOSPC, as on a full disk."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._f.__exit__(*exc)


def fill_disk(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """From now on, writing a file called `name` (or its atomic temporary) fails with ENOSPC."""
    fdopen = os.fdopen

    def full_fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        f = fdopen(fd, *args, **kwargs)
        target = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        return _FullDisk(f) if target == name or target.startswith(f".{name}.") else f

    monkeypatch.setattr(os, "fdopen", full_fdopen)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_resume_on_a_full_disk_leaves_the_run_resumable(
    posts_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """--resume of a finished run copies it; on a full disk the copy fails with
    one line naming the file, leaves no half-copied partial folder, and works once space is
    free. ENOSPC while training (torch.save of last.pt) or predicting gives the same line."""
    out = tmp_path / "run"
    assert main(train_argv(posts_csv, out, 1)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with monkeypatch.context() as m:
        fill_disk(m, "tokenizer.json")
        assert main([*train_argv(posts_csv, out, 1), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"no space left on device while writing {tmp_path / '.run.copy'}/tokenizer.json" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no partial, copy or lock
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main([*train_argv(posts_csv, out, 1), "--resume"]) == 0  # space is free again
    assert (out / "tokenizer.json").read_bytes() == before["tokenizer.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]

    fresh = tmp_path / "fresh"
    with monkeypatch.context() as m:
        fill_disk(m, LAST_CHECKPOINT)
        assert main(train_argv(posts_csv, fresh, 1)) == 2
    err = capsys.readouterr().err
    assert f"no space left on device while writing {tmp_path / '.fresh.partial'}/last.pt" in err
    assert "Traceback" not in err and "unexpected pos" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing to resume: removed

    preds = tmp_path / "preds.csv"
    with monkeypatch.context() as m:
        fill_disk(m, preds.name)
        assert (
            main(["predict", "--run", str(out), "--data", str(posts_csv), "--output", str(preds)])
            == 2
        )
    err = capsys.readouterr().err
    assert err.endswith(
        f"error: no space left on device while writing {preds}; free some space and retry\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no half file, no temporary


def interrupt_after_epoch_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C once epoch 1's files are written: the run stays in its partial folder."""
    end_of_epoch = Trainer._end_of_epoch

    def end_then_interrupt(self: Trainer, improved: bool) -> None:
        end_of_epoch(self, improved)
        if self.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_end_of_epoch", end_then_interrupt)


def test_resume_refuses_a_symlink_in_the_run_folder(
    posts_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """A dangling metrics.jsonl link in a partial folder used to make --resume
    create the file it points to, outside the run."""
    out, partial = tmp_path / "run", tmp_path / ".run.partial"
    with monkeypatch.context() as m:
        interrupt_after_epoch_1(m)
        assert main(train_argv(posts_csv, out, 2)) == 130
    assert load_checkpoint(partial / LAST_CHECKPOINT)["epoch"] == 1
    outside = tmp_path / "elsewhere" / "metrics.jsonl"
    (partial / METRICS_LOG).unlink()
    (partial / METRICS_LOG).symlink_to(outside)
    capsys.readouterr()
    assert main([*train_argv(posts_csv, out, 2), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{partial / METRICS_LOG} is a symbolic link (to {outside}); a run folder holds " in err
    assert not outside.parent.exists() and not out.exists()
    (partial / METRICS_LOG).unlink()  # the user removes it: the run continues
    assert main([*train_argv(posts_csv, out, 2), "--resume"]) == 0
    assert load_checkpoint(out / LAST_CHECKPOINT)["epoch"] == 2


def test_metrics_log_is_not_appended_through_a_link(tmp_path: Path) -> None:
    from fbdl_fast.files import append_line

    target = tmp_path / "target.txt"
    (tmp_path / "log.jsonl").symlink_to(target)
    with pytest.raises(OSError, match=r"log\.jsonl is a symlink; fbdl_fast does not write"):
        append_line(tmp_path / "log.jsonl", "{}\n")
    assert not target.exists()


def test_resume_refuses_other_data_or_vocab_size(
    posts_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Config.json records the data's SHA-256 and the asked vocabulary size."""
    data = tmp_path / "posts.csv"
    shutil.copy(posts_csv, data)
    out = tmp_path / "run"
    assert main(train_argv(data, out, 1)) == 0
    before = (out / LAST_CHECKPOINT).read_bytes()
    other = write_posts_csv(tmp_path / "other.csv", 400, seed=6)  # same labels, other posts
    assert main([*train_argv(other, out, 1), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"this command differs: the data: {other} has other contents than {str(data)!r}" in err
    data.write_text(data.read_text(encoding="utf-8") + "one more post,positive\n", "utf-8")
    assert main([*train_argv(data, out, 1), "--resume"]) == 2  # same name, other contents
    assert f"the data: {data} has other contents than {str(data)!r}" in capsys.readouterr().err
    bigger = [a if a != "200" else "300" for a in train_argv(posts_csv, out, 1)]
    assert main([*bigger, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "data.tokenizer_vocab_size (200 in the run, 300 now)" in err
    assert "the data:" not in err  # same contents as the run's data, under another name
    assert (out / LAST_CHECKPOINT).read_bytes() == before
    assert main([*train_argv(posts_csv, out, 1), "--resume"]) == 0  # moved, same bytes: fine
