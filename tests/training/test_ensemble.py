"""Several runs predicting as one (fbdl_fast.load_ensemble, `predict`/`evaluate` with several
--run): the weighted geometric mean of the runs' probabilities, in input order, and every
refusal in one line.

The two runs have tokenizers trained on different posts, so their length-sorted batches put
the posts in different orders: the combination must still pair each post's rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import fbdl_fast
from fbdl_fast.cli import main
from fbdl_fast.data import loader_order
from fbdl_fast.data.synthetic import generate_posts
from fbdl_fast.training.ensemble import Ensemble, load_ensemble
from fbdl_fast.training.loading import load_run
from tiny_run import make_run, write_posts_csv


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ensemble")
    return make_run(folder / "a", seed=0), make_run(folder / "b", vocab_size=150, seed=7)


def texts() -> list[str]:
    posts = generate_posts(70, seed=3).texts
    posts[5] = " ".join(posts[:9])  # one long post: truncated, and last in its run's order
    return posts


def geometric_mean(rows: list[np.ndarray], weights: list[float]) -> np.ndarray:
    log_p = sum(w * np.log(r) for r, w in zip(rows, weights)) / sum(weights)
    p = np.exp(log_p - log_p.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("weights", [None, [1.0, 3.0]])
def test_probabilities_are_the_weighted_geometric_mean_in_input_order(
    runs: tuple[Path, Path], weights: list[float] | None
) -> None:
    posts = texts()
    alone = [np.array(load_run(r).class_probabilities(posts), dtype=np.float64) for r in runs]
    # each run batches the posts in its own order: they differ, so the pairing is tested
    orders = [loader_order(load_run(r).loader(posts)) for r in runs]
    assert orders[0] != orders[1]
    ensemble = load_ensemble(runs, weights=weights)
    got = np.array(ensemble.class_probabilities(posts))
    want = geometric_mean(alone, weights or [1.0, 1.0])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    predictions = ensemble.predict(posts)
    assert [p.text for p in predictions] == posts
    names = ensemble.names
    assert [p.label for p in predictions] == [names[i] for i in want.argmax(axis=1)]
    assert all(math.isclose(sum(p.probabilities.values()), 1.0, rel_tol=1e-5) for p in predictions)


def test_a_zero_weight_leaves_the_other_run_alone(runs: tuple[Path, Path]) -> None:
    posts = texts()
    alone = np.array(load_run(runs[1]).class_probabilities(posts))
    got = np.array(load_ensemble(runs, weights=[0, 2.5]).class_probabilities(posts))
    np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-7)


def test_weights_are_relative_even_near_floats_largest(runs: tuple[Path, Path]) -> None:
    """Weights 5e307 and 1.5e308 combine as 1 and 3 (their sum is past float's range), numpy's
    floats count as numbers, and the folders may come from any iterable."""
    posts = texts()
    want = np.array(load_ensemble(runs, weights=[1.0, 3.0]).class_probabilities(posts))
    huge = load_ensemble(iter(runs), weights=[5e307, np.float64(1.5e308)])
    np.testing.assert_allclose(huge.class_probabilities(posts), want, rtol=1e-6)


def test_evaluate_scores_the_combined_probabilities(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    data = write_posts_csv(tmp_path / "gold.csv", 60, seed=5)
    ensemble = load_ensemble(runs, weights=[2, 1])
    result = ensemble.evaluate(data)
    gold = generate_posts(60, seed=5).labels
    probs = np.array(ensemble.class_probabilities(generate_posts(60, seed=5).texts))
    ids = [ensemble.names.index(label) for label in gold]
    assert result.num_samples == 60
    assert result.loss == pytest.approx(-np.mean(np.log(probs[np.arange(60), ids])), rel=1e-5)
    assert result.accuracy == pytest.approx(np.mean(probs.argmax(axis=1) == ids))
    assert str(runs[0]) in str(result.run) and str(runs[1]) in str(result.run)
    assert result.checkpoint == "best.pt + best.pt"


def test_the_public_names_and_repr(runs: tuple[Path, Path]) -> None:
    assert fbdl_fast.load_ensemble is load_ensemble and fbdl_fast.Ensemble is Ensemble
    ensemble = Ensemble([load_run(runs[0]), load_run(runs[1])], [1, 2])
    assert ensemble.weights == [1.0, 2.0] and "a': 1, " in repr(ensemble)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0], "1 weights for 2 runs; give one a run"),
        ([1.0, -1.0], "weight -1.0 is not accepted; expected a finite number >= 0"),
        ([1.0, float("nan")], "weight nan is not accepted"),
        ([True, 1.0], "weight True is not accepted; expected a number >= 0"),
        ([0, 0.0], "every weight is 0; at least one run must count"),
    ],
)
def test_bad_weights_are_refused_before_loading(
    runs: tuple[Path, Path], weights: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_ensemble([runs[0], runs[1].parent / "missing"], weights=weights)


def test_runs_that_cannot_be_combined_are_refused(runs: tuple[Path, Path], tmp_path: Path) -> None:
    other = make_run(tmp_path / "other", classes=("yes", "no"))
    with pytest.raises(ValueError, match="has the classes \\['yes', 'no'\\]"):
        load_ensemble([runs[0], other])
    tagged = make_run(tmp_path / "tagged", multi_label=True)
    with pytest.raises(ValueError, match="is multi-label; an ensemble combines single-label"):
        load_ensemble([runs[0], tagged])
    with pytest.raises(ValueError, match="at least 2 runs, got 1"):
        Ensemble([load_run(runs[0])])
    with pytest.raises(TypeError, match="paths is one path"):
        load_ensemble(str(runs[0]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="3 checkpoints for 2 runs"):
        load_ensemble(runs, checkpoints=["best", "best", "best"])
    with pytest.raises(TypeError, match=r"checkpoints is one str \('best'\); .* one a run"):
        load_ensemble(runs, checkpoints="best")  # type: ignore[arg-type]


def test_cli_predict_and_evaluate_with_several_runs(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    posts = texts()[:6]
    argv = ["predict", "--run", str(runs[0]), "--run", str(runs[1]), "--weights", "1,3"]
    assert main([*argv, "--quiet", *(x for p in posts for x in ("--text", p))]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = load_ensemble(runs, weights=[1, 3]).predict(posts)
    assert [r["label"] for r in rows] == [p.label for p in want]
    for row, p in zip(rows, want):
        assert row["probabilities"] == pytest.approx(p.probabilities, abs=1e-6)
    data = write_posts_csv(tmp_path / "gold.csv", 40, seed=5)
    evaluate = ["evaluate", "--run", str(runs[0]), "--run", str(runs[1]), "--data", str(data)]
    assert main([*evaluate, "--checkpoint", "best", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["macro_f1"] == pytest.approx(load_ensemble(runs).evaluate(data).macro_f1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weights", "1"], "--weights gives 1 weight for 2 runs; give one a run"),
        (["--weights", "1,x"], "is not a comma-separated list of finite numbers >= 0"),
        (["--weights", "0,0"], "is not a comma-separated list of finite numbers >= 0"),
        (
            ["--checkpoint", "best", "--checkpoint", "last", "--checkpoint", "best"],
            "--checkpoint given 3 times for 2 runs",
        ),
    ],
)
def test_cli_refuses_mismatched_ensemble_options_in_one_line(
    runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["predict", "--run", str(runs[0]), "--run", str(runs[1]), "--text", "hi", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 12


def test_cli_refuses_weights_for_one_run(
    runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "--run", str(runs[0]), "--text", "hi", "--weights", "1"]) == 2
    assert "--weights combines several --run folders; one was given" in capsys.readouterr().err
