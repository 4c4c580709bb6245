"""Multi-label classification: label sets read from CSV and JSONL, the
sigmoid losses (BCE and the fused focal loss's binary form), metrics against scikit-learn,
threshold tuning, the Trainer, and `train/evaluate/predict --multi-label`."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, hamming_loss

from fbdl_fast.checkpoint import load_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.data import LabelMap, PostsDataset, label_set, load_posts, make_loader, split_posts
from fbdl_fast.training.losses import create_loss
from fbdl_fast.training.multilabel import (
    MultiLabelLoss,
    multilabel_counts,
    multilabel_metrics,
    predict_labels,
    tune_thresholds,
)
from fbdl_fast.training.trainer import LAST_CHECKPOINT, Trainer
from test_train import assert_same_state
from tiny_run import (
    MULTI_LABEL_TRAIN,
    Bag,
    bag_config,
    multi_label_posts_jsonl,
    train_refusal,
    train_two_ranks_and_one,
)

# ----------------------------------------------------------------------------- reading labels


def test_label_sets_from_strings_and_lists() -> None:
    assert label_set("spam|negative") == ("spam", "negative")
    assert label_set(" spam | 3 |spam| ") == ("spam", 3)  # spaces dropped, "3" is 3, no repeats
    assert label_set("spam;ham", ";") == ("spam", "ham")
    assert label_set(["spam", "2"]) == ("spam", 2)
    assert label_set("") == label_set([]) == label_set(None) == ()  # a post with no label
    assert label_set(4) == (4,)
    with pytest.raises(ValueError, match=r"label 1.5 is a float"):
        label_set([1.5])


def test_csv_and_jsonl_load_the_same_label_sets(tmp_path: Path) -> None:
    rows = [("free money", "spam|negative"), ("nice day", ""), ("win now", "spam")]
    with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    (tmp_path / "p.jsonl").write_text(
        "".join(
            json.dumps({"text": t, "label": [x for x in y.split("|") if x]}) + "\n" for t, y in rows
        )
    )
    sets = [("spam", "negative"), (), ("spam",)]
    for name in ("p.csv", "p.jsonl"):
        posts = load_posts(tmp_path / name, label_separator="|")
        assert posts.labels == sets
    label_map = LabelMap.from_label_sets(sets)
    assert label_map.labels == ["negative", "spam"]
    np.testing.assert_array_equal(label_map.multi_hot(posts), [[1, 1], [0, 0], [0, 1]])
    (tmp_path / "bad.jsonl").write_text(
        '{"text": "a", "label": ["spam"]}\n{"text": "b", "label": {"x": 1}}\n'
    )
    with pytest.raises(ValueError, match=r"label \{'x': 1\} is a dict.*line 2 of"):
        load_posts(tmp_path / "bad.jsonl", label_separator="|")
    # The CSV's line 2 (its first post) holds "negative", which this map lacks.
    with pytest.raises(
        ValueError, match=r"unknown label 'negative'; the model knows: 'spam' \(line 2 of"
    ):
        LabelMap(["spam"]).multi_hot(load_posts(tmp_path / "p.csv", label_separator="|"))


# ----------------------------------------------------------------------------- losses

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, -0.2, 3.0], [-1.5, 1.0, 0.0], [0.3, 0.3, -2.0]])
TARGETS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_multilabel_losses_hand_computed(set_backend: Any, backend: str) -> None:
    """BCE, and the focal loss's binary form through the fused kernel (the interpreter here):
    gamma 0 is BCE, gamma 2 is (1 - p_t)^2 BCE averaged over every (post, class)."""
    set_backend(backend)
    logits, targets = LOGITS.clone().requires_grad_(), TARGETS.clone()
    p = torch.sigmoid(LOGITS)
    bce = -(TARGETS * p.log() + (1 - TARGETS) * (1 - p).log())  # (N, C)
    p_t = torch.where(TARGETS > 0, p, 1 - p)
    torch.testing.assert_close(MultiLabelLoss()(logits, targets), bce.mean())
    torch.testing.assert_close(MultiLabelLoss(gamma=0.0)(logits, targets), bce.mean())
    focal = create_loss(bag_config(multi_label=True, loss="focal", focal_gamma=2.0))
    value = focal(logits, targets)
    torch.testing.assert_close(value, ((1 - p_t) ** 2 * bce).mean())
    value.backward()  # the gradient agrees with autograd through the formula
    expected = LOGITS.clone().requires_grad_()
    q = torch.sigmoid(expected)
    q_t = torch.where(TARGETS > 0, q, 1 - q)
    ((1 - q_t) ** 2 * -q_t.log()).mean().backward()
    torch.testing.assert_close(logits.grad, expected.grad)
    with pytest.raises(ValueError, match=r"logits \(4, 3\) and targets \(4,\) must both be"):
        MultiLabelLoss()(LOGITS, torch.zeros(4))


def test_create_loss_for_multi_label_and_refusals() -> None:
    assert isinstance(create_loss(bag_config(multi_label=True)), MultiLabelLoss)
    assert create_loss(bag_config(multi_label=True)).gamma is None
    for option in ({"sampler": "balanced"}, {"class_weights": [1.0, 2.0, 1.0]}, {"loss": "dice"}):
        with pytest.raises(ValueError, match=r"is a single-label option, invalid with multi_label"):
            bag_config(multi_label=True, **option)


# ----------------------------------------------------------------------------- metrics


def test_metrics_match_scikit_learn_and_add_up() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(40, 4, generator=g)
    targets = (torch.rand(40, 4, generator=g) < 0.4).float()
    targets[:, 3] = 0  # a class never true ...
    probs[:, 3] = 0.1  # ... nor predicted: left out of macro-F1, as scikit-learn's nan rule
    thresholds = [0.5, 0.3, 0.7, 0.5]
    counts = multilabel_counts(probs, targets, thresholds)
    got = multilabel_metrics(counts)
    pred = predict_labels(probs, thresholds).numpy().astype(int)
    true = targets.numpy().astype(int)
    assert got["accuracy"] == pytest.approx(accuracy_score(true, pred))
    assert got["hamming_loss"] == pytest.approx(hamming_loss(true, pred))
    assert got["micro_f1"] == pytest.approx(f1_score(true, pred, average="micro"))
    macro = f1_score(true, pred, average="macro", zero_division=np.nan)
    assert got["macro_f1"] == pytest.approx(macro) and got["num_samples"] == 40
    halves = multilabel_counts(probs[:15], targets[:15], thresholds) + multilabel_counts(
        probs[15:], targets[15:], thresholds
    )
    assert torch.equal(halves, counts)  # what ranks and batches sum


def test_tune_thresholds_picks_the_best_f1_per_class() -> None:
    # Class 0: positives at 0.8, 0.35; negatives at 0.3, 0.1: the best thresholds are 0.35 up to
    # 0.30 exclusive... every t in (0.3, 0.35] catches both positives: 0.35 is on the grid.
    # Class 1: no positive: 0.5. Class 2: positives 0.9, 0.92 and a negative at 0.6: t in
    # (0.6, 0.9] all score 1, the nearest 0.5 is 0.65.
    probs = torch.tensor([[0.8, 0.2, 0.9], [0.35, 0.7, 0.92], [0.3, 0.1, 0.6], [0.1, 0.4, 0.05]])
    targets = torch.tensor([[1, 0, 1], [1, 0, 1], [0, 0, 0], [0, 0, 0]]).float()
    assert tune_thresholds(probs, targets) == [0.35, 0.5, 0.65]


# ----------------------------------------------------------------------------- the Trainer


def _multi_posts(n: int, seed: int) -> PostsDataset:
    """Class c present with probability 0.4; a post holds tokens 1 + 6c .. 6 + 6c of each."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < 0.4).astype(np.float32)
    ids = [
        np.concatenate(
            [[19], *[1 + 6 * c + rng.integers(0, 6, size=2) for c in np.flatnonzero(row)]]
        )
        for row in targets
    ]
    return PostsDataset(ids, targets)


def _multi_trainer(run_dir: Any = None, **overrides: Any) -> Trainer:
    torch.manual_seed(0)
    config = bag_config(multi_label=True, learning_rate=0.1, **overrides)
    return Trainer(Bag(), config, device="cpu", run_dir=run_dir, progress=False)


def test_trainer_learns_and_reports_multilabel_metrics() -> None:
    train = make_loader(_multi_posts(96, 1), 16, True, seed=2)
    val = make_loader(_multi_posts(40, 2), 16, False)
    trainer = _multi_trainer(max_epochs=4)
    history = trainer.fit(train, val)
    assert history.val_losses[-1] < history.val_losses[0]
    preds, probs = trainer.predict(val)
    assert preds.dtype == torch.bool and preds.shape == probs.shape == (40, 3)
    targets = torch.cat([b["labels"] for b in val])
    logits = torch.logit(probs.double()).float()
    expected = {
        "loss": F.binary_cross_entropy_with_logits(logits, targets).item(),
        **multilabel_metrics(multilabel_counts(probs, targets)),
    }
    got = trainer.evaluate(val)
    assert got.keys() == expected.keys() and got["accuracy"] > 0.5
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-5), key
    assert history.val_accs[-1] == got["accuracy"] and history.val_f1s[-1] == got["macro_f1"]
    trainer.thresholds = [1.0, 1.0, 1.0]  # nothing reaches them: every post gets no label
    assert not trainer.predict(val)[0].any()


def test_multilabel_resume_is_exact(tmp_path: Path) -> None:
    """Focal, dropout: 2 epochs == 1 epoch, a crash, a new Trainer resuming from last.pt."""
    train = make_loader(_multi_posts(48, 1), 8, True, seed=2)
    val = make_loader(_multi_posts(16, 2), 8, False)
    whole = _multi_trainer(tmp_path / "whole", loss="focal", dropout=0.2)
    whole.fit(train, val)
    crashed = _multi_trainer(tmp_path / "run", loss="focal", dropout=0.2)
    calls = {"n": 0}

    def crash(module: torch.nn.Module, args: Any) -> None:
        if module.training:
            calls["n"] += 1
            if calls["n"] > len(train):  # the first batch of epoch 2
                raise KeyboardInterrupt("simulated crash")

    crashed.model.register_forward_pre_hook(crash)
    with pytest.raises(KeyboardInterrupt):
        crashed.fit(train, val)
    torch.rand(100)  # the global RNG moves on: only the checkpoint's state restores it
    resumed = _multi_trainer(tmp_path / "run", loss="focal", dropout=0.2)
    resumed.fit(train, val, resume_from=tmp_path / "run" / LAST_CHECKPOINT)
    timeless = {"epoch_times": []}
    assert dataclasses.replace(resumed.history, **timeless) == dataclasses.replace(
        whole.history, **timeless
    )
    assert_same_state(resumed.state_dict(), whole.state_dict())


# ----------------------------------------------------------------------------- the CLI


def test_cli_multi_label_train_evaluate_predict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = multi_label_posts_jsonl(tmp_path / "posts.jsonl")
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--output", str(run), *MULTI_LABEL_TRAIN, "--epochs", "3"]
    assert main([*argv, "--multi-label", "--tune-thresholds"]) == 0
    meta = json.loads((run / "config.json").read_text())
    assert meta["model_config"]["multi_label"] is True
    assert meta["data"]["label_separator"] == "|"
    best = load_checkpoint(run / "best.pt")
    assert len(best["thresholds"]) == 3 and all(0 < t < 1 for t in best["thresholds"])
    # The thresholds are the tuned ones of best.pt on the validation split the command made.
    from fbdl_fast.training.loading import load_run

    loaded = load_run(run, device="cpu")
    posts = load_posts(data, label_separator="|")
    _, val = split_posts(posts, 0.1, 42, stratify=False)
    val_set = PostsDataset.from_texts(
        loaded.tokenizer, val.texts, loaded.label_map.multi_hot(val), max_length=32
    )
    # report.md gives best.pt's figures at those thresholds, as evaluate finds them.
    on_val = loaded.evaluate(val)
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "best.pt on them at its tuned thresholds: subset accuracy " in report
    assert f"macro-F1 {on_val.macro_f1:.4f}, Hamming loss {on_val.hamming_loss:.4f}" in report
    loaded.trainer.thresholds = None
    logits, labels, _ = loaded.trainer._forward_all(make_loader(val_set, 8, False), "v", True)
    assert best["thresholds"] == tune_thresholds(torch.sigmoid(logits), labels)
    capsys.readouterr()

    # evaluate: the metrics of predict's own labels, computed by scikit-learn.
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["thresholds"] == dict(zip(["negative", "spam", "sport"], best["thresholds"]))
    out = tmp_path / "pred.jsonl"
    assert main(["predict", "--run", str(run), "--data", str(data), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    names = ["negative", "spam", "sport"]
    for row in rows:  # the labels at or above their threshold, with their probabilities
        chosen = [n for n, t in zip(names, best["thresholds"]) if row["probabilities"][n] >= t]
        assert row["labels"] == chosen
        assert row["label_probabilities"] == [row["probabilities"][n] for n in chosen]
    true = LabelMap(names).multi_hot(posts).astype(int)
    pred = np.array([[n in row["labels"] for n in names] for row in rows]).astype(int)
    assert report["num_samples"] == len(rows) == 160
    assert report["subset_accuracy"] == pytest.approx(accuracy_score(true, pred))
    assert report["hamming_loss"] == pytest.approx(hamming_loss(true, pred))
    assert report["micro_f1"] == pytest.approx(f1_score(true, pred, average="micro"))
    assert report["macro_f1"] == pytest.approx(
        f1_score(true, pred, average="macro", zero_division=np.nan)
    )
    assert report["micro_f1"] > 0.6  # it learned the words

    # CSV in, CSV out: labels joined by the separator.
    csv_data = tmp_path / "posts.csv"
    with open(csv_data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), ("win free goal", "spam|sport"), ("hi", "")])
    out_csv = tmp_path / "pred.csv"
    assert (
        main(["predict", "--run", str(run), "--data", str(csv_data), "--output", str(out_csv)]) == 0
    )
    lines = list(csv.reader(out_csv.read_text().splitlines()))
    assert lines[0][:3] == ["text", "labels", "label_probabilities"]
    assert main(["evaluate", "--run", str(run), "--data", str(csv_data)]) == 0
    assert "subset_accuracy" in capsys.readouterr().out


def test_the_ngram_model_trains_multi_label_without_its_single_label_smoothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--model ngram's label smoothing (a default of one label a post) does not stand in the way
    of --multi-label: the run trains with none and learns; asking for it is still refused."""
    data = multi_label_posts_jsonl(tmp_path / "posts.jsonl")
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--model", "ngram", "--epochs", "4", "--multi-label"]
    assert main([*argv, "--output", str(run), "--quiet", "--threads", "1"]) == 0
    meta = json.loads((run / "config.json").read_text())
    assert meta["model_config"]["label_smoothing"] == 0.0
    assert meta["model_config"]["learning_rate"] == 2e-2  # the model's other defaults stay
    from fbdl_fast.training.loading import load_run

    report = load_run(run).evaluate(data)
    assert report.micro_f1 > 0.6
    (tmp_path / "refused").mkdir()
    options = ["--model", "ngram", "--multi-label", "--label-smoothing", "0.1"]
    refused = train_refusal(tmp_path / "refused", capsys, options)
    assert "--label-smoothing 0.1 is a single-label option" in refused


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--tune-thresholds"], "--tune-thresholds tunes --multi-label runs; add --multi-label"),
        (
            ["--multi-label", "--class-weights", "balanced"],
            "--class-weights balanced: single-label runs only, not --multi-label",
        ),
        (
            ["--multi-label", "--sampler", "balanced"],
            "--sampler 'balanced' is a single-label option, invalid with --multi-label",
        ),
        (["--multi-label", "--label-separator", ""], "--label-separator is empty"),
        (
            ["--multi-label", "--calibrate"],
            "--calibrate fits a softmax temperature: single-label runs only, not --multi-label",
        ),
    ],
)
def test_multi_label_option_errors_before_the_data_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], needle: str
) -> None:
    assert needle in train_refusal(tmp_path, capsys, options)


def test_evaluate_names_an_unknown_label_and_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = multi_label_posts_jsonl(tmp_path / "posts.jsonl", 60)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--output", str(run), *MULTI_LABEL_TRAIN, "--epochs", "1"]
    assert main([*argv, "--multi-label"]) == 0
    assert "thresholds" not in load_checkpoint(run / "best.pt")  # not tuned: 0.5 each
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": ["spam"]}\n{"text": "b", "label": ["spam", "eggs"]}\n')
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown label 'eggs'" in err and "(line 2 of" in err
    report = tmp_path / "report"  # an unknown label writes no report either
    assert main(["evaluate", "--run", str(run), "--data", str(bad), "--report", str(report)]) == 2
    assert "unknown label 'eggs'" in capsys.readouterr().err and not report.exists()


@pytest.mark.slow
def test_multi_label_under_torchrun_matches_one_process(tmp_path: Path) -> None:
    """2 gloo ranks with batch 8 == one process with batch 16: weights, and the validation
    metrics reduced over ranks (subset accuracy, macro-F1) equal the single process's."""
    from test_distributed import TINY

    data = multi_label_posts_jsonl(tmp_path / "posts.jsonl", 181)
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    train = ["train", "--data", str(data), *TINY, "--multi-label", "--quiet"]
    result = train_two_ranks_and_one(train, ddp, one)
    assert result.stdout.count("run saved to") == 1
    got, expected = load_checkpoint(ddp / LAST_CHECKPOINT), load_checkpoint(one / LAST_CHECKPOINT)
    for name, tensor in expected["model"].items():
        torch.testing.assert_close(got["model"][name], tensor, rtol=0, atol=1e-5, msg=name)
    for key in ("val_losses", "val_accs", "val_f1s", "train_accs"):
        assert got["history"][key] == pytest.approx(expected["history"][key], abs=1e-6), key
