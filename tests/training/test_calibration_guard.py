"""Calibration says when it cannot work: a validation split too small to fit a temperature is
refused before training (naming the minimum in posts and in classes), and a fitted temperature
pinned at a bound of its search range is reported instead of stored silently."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fbdl_fast.calibration import TEMPERATURE_MAX, fit_temperature
from fbdl_fast.cli import main
from fbdl_fast.training.request import TrainError
from fbdl_fast.training.session import train
from tiny_run import tiny_model_args, write_csv

MINIMUM = "at least 4 posts, 2 of each of at least 2 classes"
REFUSED = f"needs a larger validation split: a temperature is fitted on {MINIMUM}"


def test_fit_temperature_refuses_a_split_too_small() -> None:
    """One post (the probe's case: it stored T = 100, every probability about 0.5), or posts of
    one class, or one post of a class: refused, with the minimum."""
    with pytest.raises(ValueError, match=f"{MINIMUM}; got 1 post: 1 of class 1$"):
        fit_temperature(torch.tensor([[3.0, 0.0]]), torch.tensor([1]))
    with pytest.raises(ValueError, match=f"{MINIMUM}; got 5 posts: 5 of class 1"):
        fit_temperature(torch.randn(5, 3), torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match=f"{MINIMUM}; got 3 posts: 2 of class 0, 1 of class 2"):
        fit_temperature(torch.randn(3, 3), torch.tensor([0, 0, 2]))


def test_a_fit_pinned_at_the_upper_bound_is_reported() -> None:
    """Confidently wrong on every post: the NLL falls all the way to T = 100."""
    logits = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [0.0, 4.0]])
    fit = fit_temperature(logits, torch.tensor([1, 1, 0, 0]))
    assert fit.temperature == pytest.approx(TEMPERATURE_MAX)
    assert fit.bound == "upper"
    warning = fit.bound_warning()
    assert warning is not None
    assert "the calibration's temperature 100 sits at the upper bound of its search range" in (
        warning
    )
    assert "every probability is near 1/2" in warning
    assert fit.to_dict()["bound"] == "upper"


def test_a_fit_that_runs_toward_the_lower_bound_is_reported() -> None:
    """Right on every post: the NLL only falls as T goes to 0, wherever the optimiser stopped."""
    logits, labels = 5 * torch.eye(3).repeat(2, 1), torch.arange(3).repeat(2)
    fit = fit_temperature(logits, labels)
    assert fit.bound == "lower"
    warning = fit.bound_warning()
    assert warning is not None and "toward the lower bound of its search range" in warning


def test_an_interior_fit_is_not_reported() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(400, 3, generator=generator)
    labels = torch.distributions.Categorical(logits=logits / 2).sample()  # over-confident x2
    fit = fit_temperature(logits, labels)
    assert 1.2 < fit.temperature < 4 and fit.bound is None and fit.bound_warning() is None


def _posts_csv(path: Path, per_class: int) -> Path:
    rows = [(f"win a free prize now {i}", "spam") for i in range(per_class)]
    rows += [(f"see you at lunch today {i}", "ham") for i in range(per_class)]
    return write_csv(path, rows)


def test_train_refuses_calibration_on_a_split_too_small_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """10 posts with --val-fraction 0.1: one validation post of each class. Refused in flag
    terms before any training, and no run folder (nor .partial) is left."""
    data = _posts_csv(tmp_path / "posts.csv", 5)
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--output", str(out), "--calibrate", "--epochs", "1"]
    assert main([*argv, "--val-fraction", "0.1", "--quiet", *tiny_model_args()]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert f"--calibrate {REFUSED}" in err
    assert "; got 2 posts: 1 of class ham, 1 of class spam in validation" in err
    assert "a larger --val-fraction" in err
    assert "training CNN" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["posts.csv"]


def test_train_from_python_refuses_it_as_a_train_error(tmp_path: Path) -> None:
    texts = [f"post {i}" for i in range(10)]
    labels = ["a"] * 5 + ["b"] * 5
    with pytest.raises(
        TrainError,
        match=f"calibrate=True {REFUSED}",
    ):
        train(
            texts=texts,
            labels=labels,
            model="cnn",
            calibrate=True,
            val_fraction=0.1,
            output=tmp_path / "run",
            epochs=1,
        )
    assert not (tmp_path / "run").exists()


def test_train_warns_when_the_temperature_is_pinned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Posts so easy that the model gets every validation post right: the temperature runs
    toward its lower bound, and train says so with its warning prefix."""
    data = _posts_csv(tmp_path / "posts.csv", 40)
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--output", str(out), "--calibrate", "--epochs", "4"]
    assert main([*argv, "--val-fraction", "0.2", "--lr", "0.01", *tiny_model_args()]) == 0
    err = capsys.readouterr().err
    assert "fbdl-fast train: warning: the calibration's temperature" in err
    assert "toward the lower bound of its search range" in err
