"""`fbdl-fast distill`: the loss against a hand computation, the teacher's logits cached once and
reused by --resume, a tiny end-to-end run that evaluate and predict take, and bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from fbdl_fast.checkpoint import load_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.data import LabelMap, load_posts, split_posts
from fbdl_fast.training import distill
from fbdl_fast.training import trainer as train
from fbdl_fast.training.distill import TEACHER_LOGITS, DistillationLoss, compute_logits
from fbdl_fast.training.loading import load_run
from tiny_run import make_run, tiny_model_args, write_csv, write_posts_csv

# ----------------------------------------------------------------------------- the loss


def _softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def test_loss_equals_a_hand_computation() -> None:
    """alpha * T^2 * mean over posts of KL(p_teacher || p_student) at T, plus (1 - alpha) *
    cross-entropy over the labelled posts only; plain ids give the cross-entropy alone."""
    student = [[1.0, -0.5, 0.3], [0.2, 0.9, -1.0], [-0.3, 0.4, 2.0]]
    teacher = [[2.0, 0.0, -1.0], [-1.0, 1.5, 0.5], [0.0, 0.0, 3.0]]
    labels = [0, 2, -1]  # the third post is unlabelled
    t, alpha = 2.0, 0.3
    kl = []
    for s_row, t_row in zip(student, teacher):
        p, q = _softmax(t_row, t), _softmax(s_row, t)
        kl.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
    ce = [-math.log(_softmax(student[i], 1.0)[labels[i]]) for i in (0, 1)]
    expected = alpha * t * t * sum(kl) / 3 + (1 - alpha) * sum(ce) / 2

    loss = DistillationLoss(nn.CrossEntropyLoss(), temperature=t, alpha=alpha)
    target = torch.cat(
        [torch.tensor(labels, dtype=torch.float32)[:, None], torch.tensor(teacher)], 1
    )
    logits = torch.tensor(student, requires_grad=True)
    got = loss(logits, target)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    got.backward()  # a differentiable loss
    assert logits.grad is not None and logits.grad[2].abs().sum() > 0  # unlabelled: soft term
    # Validation batches hold plain ids: the hard loss alone.
    plain = loss(torch.tensor(student[:2]), torch.tensor(labels[:2]))
    assert plain.item() == pytest.approx(sum(ce) / 2, rel=1e-6)
    # Training accuracy counts the label, or the teacher's top class for an unlabelled post.
    assert DistillationLoss.hard_labels(target).tolist() == [0, 2, 2]
    # A batch of unlabelled posts only: the soft term alone.
    only = loss(logits[2:].detach(), target[2:])
    assert only.item() == pytest.approx(alpha * t * t * kl[2], rel=1e-6)


# ----------------------------------------------------------------------------- end to end

TINY = [*tiny_model_args(max_length=24), "--batch-size", "16", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A posts CSV, an unlabelled file and a tiny Transformer teacher trained on the posts."""
    folder = tmp_path_factory.mktemp("distill")
    posts = write_posts_csv(folder / "posts.csv", 240, seed=3)
    unlabelled = write_posts_csv(folder / "more.csv", 60, seed=4)
    teacher = folder / "teacher"
    argv = ["train", "--data", str(posts), "--output", str(teacher), "--epochs", "1"]
    assert main([*argv, *TINY[2:], "--model", "transformer"]) == 0
    return {"posts": posts, "unlabelled": unlabelled, "teacher": teacher, "folder": folder}


def distill_argv(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    options = ["--teacher", str(data["teacher"]), "--data", str(data["posts"]), "--epochs", "2"]
    student = [a if a != "--model" else "--student" for a in TINY]
    return ["distill", *options, "--output", str(out), *student, *extra]


def test_distilled_run_is_an_ordinary_run(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """distill --unlabelled --calibrate: the cache holds the teacher's logits (its own
    tokenizer, the posts in order: training split then unlabelled), config.json the settings,
    and evaluate / predict read the run."""
    out = tmp_path / "student"
    extra = ["--unlabelled", str(data["unlabelled"]), "--calibrate", "--temperature", "3"]
    extra += ["--vocab-size", "150"]  # the student's own tokenizer, not the teacher's
    assert main(distill_argv(data, out, *extra)) == 0
    capsys.readouterr()

    posts = load_posts(data["posts"], "text", "label")
    train_posts, _ = split_posts(posts, 0.1, 42)
    texts = [*train_posts.texts, *load_posts(data["unlabelled"], "text", None).texts]
    cache = load_checkpoint(out / TEACHER_LOGITS)
    teacher = load_run(data["teacher"], device="cpu")
    assert teacher.tokenizer.vocab_size != load_run(out, device="cpu").tokenizer.vocab_size
    expected = compute_logits(teacher, texts)
    columns = [
        teacher.label_map.encode(label) for label in LabelMap.load(out / "label_map.json").labels
    ]
    torch.testing.assert_close(cache["logits"], expected[:, columns], rtol=0, atol=0)
    assert cache["texts_sha256"] == distill.texts_sha256(texts)

    meta = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert meta["model"] == "cnn"
    settings = meta["distillation"]
    assert (settings["temperature"], settings["alpha"]) == (3.0, 0.5)
    assert settings["unlabelled_posts"] == 60 and settings["teacher_model"] == "transformer"
    # train --calibrate is recorded (and the teacher, trained without it, says so too).
    assert meta["training"]["calibrate"] is True
    teacher_meta = json.loads((data["teacher"] / "config.json").read_text(encoding="utf-8"))
    assert teacher_meta["training"]["calibrate"] is False
    student = load_run(out, device="cpu")
    assert student.trainer.temperature != 1.0  # --calibrate stored it in best.pt

    # evaluate's accuracy is that of predict's labels on the same posts.
    assert main(["evaluate", "--run", str(out), "--data", str(data["posts"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    predictions = tmp_path / "p.jsonl"
    argv = ["predict", "--run", str(out), "--data", str(data["posts"]), "--quiet"]
    assert main([*argv, "--output", str(predictions)]) == 0
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["text"] for r in rows] == posts.texts
    right = sum(r["label"] == label for r, label in zip(rows, posts.labels or []))
    assert report["num_samples"] == len(rows) == 240
    assert report["accuracy"] == pytest.approx(right / len(rows))


def test_teacher_runs_once_and_resume_reuses_the_cache(
    data: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An interrupted distill resumes from the cached logits (the teacher is not run again, the
    cache is not rewritten) to the weights of an uninterrupted run; a cache of other posts is
    refused."""
    calls: list[int] = []
    original = distill.compute_logits

    def counting(run, texts, batch_size=None):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return original(run, texts, batch_size)

    monkeypatch.setattr(distill, "compute_logits", counting)
    whole = tmp_path / "whole"
    assert main(distill_argv(data, whole)) == 0
    # the training split, once, then its transfer set (--augment's default: 2 variants a post)
    assert calls == [216, 432]

    step = train.Trainer._train_group

    def interrupted(self, group):  # type: ignore[no-untyped-def]
        if self.epoch == 1:
            raise KeyboardInterrupt
        return step(self, group)

    out = tmp_path / "student"
    partial = tmp_path / ".student.partial"
    monkeypatch.setattr(train.Trainer, "_train_group", interrupted)
    assert main(distill_argv(data, out)) == 130
    assert load_checkpoint(partial / "last.pt")["epoch"] == 1
    cached = (partial / TEACHER_LOGITS).read_bytes()
    monkeypatch.setattr(train.Trainer, "_train_group", step)
    calls.clear()
    assert main([*distill_argv(data, out), "--resume"]) == 0
    assert calls == []  # the cache was reused
    assert (out / TEACHER_LOGITS).read_bytes() == cached
    resumed, uninterrupted = load_checkpoint(out / "last.pt"), load_checkpoint(whole / "last.pt")
    assert resumed["epoch"] == uninterrupted["epoch"] == 2
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name

    # Other settings, train instead of distill, or a cache that is not this run's: refused.
    assert main([*distill_argv(data, out, "--alpha", "0.7"), "--resume"]) == 2
    assert "distillation.alpha (0.5 in the run, 0.7 now)" in capsys.readouterr().err
    plain = ["train", "--data", str(data["posts"]), "--output", str(out), "--epochs", "2"]
    assert main([*plain, *TINY, "--resume"]) == 2
    assert "made by `fbdl-fast distill`: resume it with distill" in capsys.readouterr().err
    other = tmp_path / "other"
    assert main(distill_argv(data, other, "--unlabelled", str(data["unlabelled"]))) == 0
    calls.clear()
    texts = split_posts(load_posts(data["posts"], "text", "label"), 0.1, 42)[0].texts
    teacher = distill.Distillation.load(data["teacher"])
    labels = LabelMap.load(out / "label_map.json")
    torch.testing.assert_close(  # this run's cache: read back
        teacher.teacher_logits(out, texts, labels), load_checkpoint(out / TEACHER_LOGITS)["logits"]
    )
    assert calls == []
    (other / TEACHER_LOGITS).replace(out / TEACHER_LOGITS)  # the logits of more posts
    with pytest.raises(ValueError, match="logits of other posts or another teacher"):
        teacher.teacher_logits(out, texts, labels)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_its_name(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "student"
    cases = {
        "--teacher": (["--teacher", str(tmp_path / "nowhere")], "the folder does not exist"),
        "T=0": (["--temperature", "0"], "--temperature 0.0 is invalid; accepted: a number in"),
        "T huge": (["--temperature", "1e300"], "--temperature 1e+300 is invalid; accepted: a"),
        "T tiny": (["--temperature", "1e-300"], "--temperature 1e-300 is invalid; accepted: a"),
        "T<0": (["--temperature", "-1"], "--temperature -1.0 is invalid"),
        "T=nan": (["--temperature", "nan"], "--temperature nan is invalid"),
        "alpha<0": (["--alpha", "-0.1"], "--alpha -0.1 is invalid; accepted: a number in [0, 1]"),
        "alpha>1": (["--alpha", "1.5"], "--alpha 1.5 is invalid"),
        "alpha=0 unlabelled": (
            ["--alpha", "0", "--unlabelled", str(data["unlabelled"])],
            "--unlabelled with --alpha 0",
        ),
        # not offered (its targets are a softmax): argparse refuses it
        "multi-label": (["--multi-label"], "unrecognized arguments: --multi-label"),
    }
    for name, (extra, message) in cases.items():
        assert main(distill_argv(data, out, *extra)) == 2, name
        assert message in capsys.readouterr().err, name

    # A teacher trained on other labels: refused before any run folder is made.
    other_labels = make_run(tmp_path / "other-labels")
    LabelMap(["ham", "negative", "neutral", "positive"]).save(other_labels / "label_map.json")
    assert main(distill_argv(data, out, "--teacher", str(other_labels))) == 2
    err = capsys.readouterr().err
    assert "trained on other labels than the data's" in err
    assert "the teacher lacks ['spam']" in err and "the data lacks ['ham']" in err
    assert not out.exists() and not (tmp_path / ".student.partial").exists()

    # A teacher whose tokenizer.json is not the one its checkpoint was trained with (another
    # run's): the teacher would read the posts as other token ids. Refused, naming the file.
    mismatched = make_run(tmp_path / "mismatched")
    other = make_run(tmp_path / "other-tokenizer", vocab_size=150, seed=1)
    (mismatched / "tokenizer.json").write_bytes((other / "tokenizer.json").read_bytes())
    assert main(distill_argv(data, out, "--teacher", str(mismatched))) == 2
    err = capsys.readouterr().err
    assert f"--teacher {mismatched}" in err and "tokenizer.json" in err, err
    assert "belongs to another run" in err or "is not the tokenizer the checkpoint" in err, err
    assert not out.exists()

    # A corrupt teacher checkpoint: named.
    corrupt = make_run(tmp_path / "corrupt")
    (corrupt / "best.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    assert main(distill_argv(data, out, "--teacher", str(corrupt))) == 2
    err = capsys.readouterr().err
    assert f"--teacher {corrupt}" in err and "truncated or corrupt" in err
    assert not out.exists()
    # With a last.pt beside it, the way out is named as distill spells it.
    shutil.copy(make_run(tmp_path / "whole") / "best.pt", corrupt / "last.pt")
    assert main(distill_argv(data, out, "--teacher", str(corrupt))) == 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith("this run also has last.pt: pass --teacher-checkpoint last"), err


def test_unlabelled_file_without_its_text_column(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_csv(tmp_path / "u.csv", [("hello", "x")], header=("message", "label"))
    assert main(distill_argv(data, tmp_path / "s", "--unlabelled", str(bad))) == 2
    assert "'text'" in capsys.readouterr().err
