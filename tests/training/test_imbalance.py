"""Class imbalance: balanced and file class weights, the focal loss's alpha
from them, the balanced sampler (seeded per epoch, cut between ranks), and `train`'s options."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fbdl_fast.cli import main
from fbdl_fast.data import (
    BucketBatchSampler,
    LabelMap,
    balanced_sample_weights,
    class_counts,
    load_posts,
    read_class_weights,
    split_posts,
)
from fbdl_fast.training.losses import balanced_class_weights, create_loss
from tiny_run import bag_config, tiny_model_args, train_refusal, write_csv

# ----------------------------------------------------------------------------- class weights


def test_balanced_class_weights_hand_computed() -> None:
    # 10 posts, 3 classes: w_c = 10 / (3 n_c); every class then weighs 10/3 in all.
    assert balanced_class_weights([6, 3, 1]) == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    assert balanced_class_weights([4, 4]) == [1.0, 1.0]  # a balanced set keeps its loss
    # A class absent from the training posts is the rarest: it gets the largest weight.
    assert balanced_class_weights([2, 0, 6]) == pytest.approx([8 / 6, 8 / 6, 8 / 18])
    with pytest.raises(ValueError, match=r"class counts \[0, 0\].*all 0|all 0"):
        balanced_class_weights([0, 0])


def test_class_counts_and_sample_weights() -> None:
    assert class_counts([0, 2, 2, 2], 4) == [1, 0, 3, 0]
    np.testing.assert_allclose(balanced_sample_weights([0, 2, 2, 2]), [1, 1 / 3, 1 / 3, 1 / 3])


LABELS = LabelMap(["ham", "spam", 3])


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("w.json", '{"spam": 2.5, "ham": 0.5, "3": 4}'),
        ("w.csv", "label,weight\nspam,2.5\nham,0.5\n3,4\n"),
        ("w.csv", "spam,2.5\nham,0.5\n3,4\n"),  # no header
        ("w.tsv", "spam\t2.5\nham\t0.5\n3\t4\n"),
    ],
)
def test_class_weights_file_in_label_order(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text, encoding="utf-8")
    assert read_class_weights(tmp_path / name, LABELS) == [0.5, 2.5, 4.0]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            '{"spam": 1, "ham": 1, "3": 1, "eggs": 2}',
            "unknown label(s) 'eggs'; the data's labels are 'ham', 'spam', 3",
        ),
        ('{"spam": 1, "3": 1}', "no weight for 'ham'"),
        ('{"spam": -1, "ham": 1, "3": 1}', "weight of label 'spam' (key 'spam') is -1"),
        ('{"spam": "x", "ham": 1, "3": 1}', "weight of label 'spam' (key 'spam') is 'x'"),
        ("[1, 2, 3]", "holds a list; expected a JSON object"),
        ("{", "is not valid JSON"),
    ],
)
def test_class_weights_file_errors_name_the_label(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "w.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        read_class_weights(path, LABELS)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_class_weights_csv_errors(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text("spam,1\nham,1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 2 of class weights file .* has 3 fields"):
        read_class_weights(path, LABELS)
    path.write_text("spam,1\nham,inf\n3,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"label 'ham' \(line 2\) is 'inf'; expected a finite"):
        read_class_weights(path, LABELS)


# ----------------------------------------------------------------------------- the losses

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [1.0, 1.0, -2.0]])
TARGETS = torch.tensor([0, 2, 1, 2])
WEIGHTS = [0.5, 2.0, 1.5]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_weighted_losses_hand_computed(set_backend, backend: str) -> None:  # type: ignore[no-untyped-def]
    """Cross-entropy weighted by class, focal with the weights as alpha, and focal with the
    weights as its class weights, on the reference and the fused kernel (interpreter here)."""
    set_backend(backend)
    logits, targets = LOGITS.clone(), TARGETS.clone()
    w = torch.tensor(WEIGHTS)
    nll = -F.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]  # (N,)
    p = torch.exp(-nll)
    config = bag_config(class_weights=WEIGHTS)
    ce = create_loss(config)(logits, targets)
    torch.testing.assert_close(ce, (w[targets] * nll).sum() / w[targets].sum())
    # --focal-alpha class-weights: alpha per class, a factor outside the mean's denominator.
    focal_alpha = create_loss(bag_config(loss="focal", focal_gamma=2.0, focal_alpha=WEIGHTS))
    expected = (w[targets] * (1 - p) ** 2 * nll).mean()
    torch.testing.assert_close(focal_alpha(logits, targets), expected)
    # --class-weights alone with focal: weights as cross-entropy's (in the denominator too).
    focal_w = create_loss(bag_config(loss="focal", focal_gamma=2.0, class_weights=WEIGHTS))
    expected = (w[targets] * (1 - p) ** 2 * nll).sum() / w[targets].sum()
    torch.testing.assert_close(focal_w(logits, targets), expected)


# ----------------------------------------------------------------------------- the sampler

# 300 posts: 270 of class 0, 27 of class 1, 3 of class 2.
SKEWED = [0] * 270 + [1] * 27 + [2] * 3


def _weighted(batch_size: int, **kwargs: object) -> BucketBatchSampler:
    lengths = np.random.default_rng(0).integers(1, 40, size=len(SKEWED)).tolist()
    weights = balanced_sample_weights(SKEWED)
    return BucketBatchSampler(lengths, batch_size, seed=11, weights=weights, **kwargs)  # type: ignore[arg-type]


def test_balanced_sampler_draws_classes_equally_per_seed_and_epoch() -> None:
    sampler = _weighted(16)
    sampler.set_epoch(0)
    first = [i for batch in sampler for i in batch]
    assert len(first) == len(SKEWED) and len(list(sampler)) == len(sampler)
    counts = Counter(SKEWED[i] for i in first)
    # Each class a third of 300 draws (binomial sd ~8.2): within 4 sd of 100.
    assert all(abs(counts[c] - 100) < 33 for c in range(3)), counts
    assert len(set(first)) < len(first)  # with replacement: the 3 rare posts repeat
    again = _weighted(16)
    again.set_epoch(0)
    assert [i for batch in again for i in batch] == first  # (seed, epoch) alone decide
    sampler.set_epoch(1)
    assert [i for batch in sampler for i in batch] != first


def test_balanced_sampler_ranks_take_disjoint_parts_of_one_draw() -> None:
    single = _weighted(16)
    shards = [_weighted(8, num_replicas=2, rank=r) for r in range(2)]
    for sampler in (single, *shards):
        sampler.set_epoch(3)
    batches = [list(s) for s in shards]
    assert len(batches[0]) == len(batches[1]) == len(single)
    for a, b, whole in zip(*batches, single):
        assert a + b == whole  # rank 0 the first half of each global batch, rank 1 the rest


def test_sampler_weights_are_checked() -> None:
    with pytest.raises(ValueError, match=r"weights= draws a training order; it needs shuffle"):
        BucketBatchSampler([1, 2], 1, shuffle=False, weights=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"weights must be 2 finite numbers >= 0, one per post"):
        BucketBatchSampler([1, 2], 1, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"weights are all 0"):
        BucketBatchSampler([1, 2], 1, weights=[0.0, 0.0])


# ----------------------------------------------------------------------------- the CLI


def _skewed_csv(path: Path) -> Path:
    """120 posts, 3 classes 80/30/10 (words drawn per class, so a model can learn them)."""
    rng = np.random.default_rng(4)
    words = {"ham": ["lunch", "meeting", "thanks"], "spam": ["win", "free", "click"]}
    words["eggs"] = ["breakfast", "fried", "omelette"]
    rows = []
    for label, n in (("ham", 80), ("spam", 30), ("eggs", 10)):
        rows += [(" ".join(rng.choice(words[label], size=5)), label) for _ in range(n)]
    return write_csv(path, rows)


TRAIN = [*tiny_model_args(), "--epochs", "1", "--quiet", "--device", "cpu", "--threads", "1"]


def test_train_records_balanced_weights_sampler_and_focal_alpha(tmp_path: Path) -> None:
    data = _skewed_csv(tmp_path / "posts.csv")
    run = tmp_path / "run"
    balance = ["--class-weights", "balanced", "--sampler", "balanced", "--loss", "focal"]
    argv = ["train", "--data", str(data), "--output", str(run), *TRAIN, *balance]
    assert main([*argv, "--focal-alpha", "class-weights"]) == 0
    meta = json.loads((run / "config.json").read_text())
    # The weights the training split gives (the same split the command made).
    posts = load_posts(data, "text", "label")
    label_map = LabelMap.from_labels(posts.labels or [])
    train, _ = split_posts(posts, 0.1, 42)
    counts = class_counts(label_map.encode_all(train), 3)
    assert counts == [9, 72, 27]  # eggs, ham, spam: stratified 90%
    expected = [108 / (3 * c) for c in counts]
    config = meta["model_config"]
    assert config["focal_alpha"] == pytest.approx(expected) and config["class_weights"] is None
    assert config["sampler"] == "balanced" and config["loss"] == "focal"
    training = meta["training"]
    assert training["class_weights"] == "balanced" and training["sampler"] == "balanced"
    assert training["focal_alpha"] == "class-weights"

    # A file: the weights as given, in the label map's order (eggs, ham, spam).
    weights = tmp_path / "weights.json"
    weights.write_text('{"spam": 3, "ham": 1, "eggs": 5}', encoding="utf-8")
    run2 = tmp_path / "run2"
    argv = ["train", "--data", str(data), "--output", str(run2), *TRAIN]
    assert main([*argv, "--class-weights", str(weights)]) == 0
    config = json.loads((run2 / "config.json").read_text())["model_config"]
    assert config["class_weights"] == [5.0, 1.0, 3.0] and config["sampler"] == "shuffle"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (
            ["--class-weights", "balance"],
            "--class-weights 'balance' is neither balanced, none nor an existing file; "
            "accepted: balanced, none, or a JSON / CSV file",
        ),
        (["--focal-alpha", "0.25"], "--focal-alpha 0.25 needs --loss focal"),
        (
            ["--loss", "focal", "--focal-alpha", "class-weights"],
            "--focal-alpha class-weights takes alpha from --class-weights",
        ),
        (
            ["--loss", "focal", "--focal-alpha", "-1"],
            "--focal-alpha -1.0 is invalid; expected a finite number >= 0",
        ),
        (
            ["--loss", "focal", "--focal-alpha", "abc"],
            "--focal-alpha 'abc' is invalid; accepted: class-weights or a number >= 0",
        ),
        (["--sampler", "weighted"], "argument --sampler: invalid choice: 'weighted'"),
    ],
)
def test_balance_option_errors_before_the_data_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], needle: str
) -> None:
    assert needle in train_refusal(tmp_path, capsys, options)


def test_weights_file_with_an_unknown_label_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _skewed_csv(tmp_path / "posts.csv")
    weights = tmp_path / "w.csv"
    weights.write_text("label,weight\nham,1\nspam,2\neggs,1\nbacon,4\n", encoding="utf-8")
    argv = ["train", "--data", str(data), "--output", str(tmp_path / "r"), *TRAIN]
    assert main([*argv, "--class-weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert f"--class-weights: class weights file {weights}: unknown label(s) 'bacon'" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()
