"""The n-gram baseline fitted beside every run (training/ngram_baseline.py): on the run's split,
tokenizer and seed, in the TrainResult, report.md, baseline.json and the CLI's last line; off
with baseline=False / --no-baseline; skipped for the n-gram model itself and multi-label runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import fbdl_fast
from fbdl_fast.cli import main
from fbdl_fast.cli.main import build_parser
from fbdl_fast.cli.train import build_request
from fbdl_fast.data import LabelMap, split_posts
from fbdl_fast.data.synthetic import generate_posts
from fbdl_fast.tokenizer import Tokenizer
from fbdl_fast.training.ngram_baseline import (
    BASELINE_FILE,
    BaselineResult,
    baseline_config,
    fit_baseline,
    read_baseline,
)
from fbdl_fast.training.presets import NGRAM_DEFAULTS
from fbdl_fast.training.session import TrainResult
from tiny_run import multi_label_posts_jsonl, write_posts_csv

TINY = {"input_dim": 16, "hidden_dim": 16, "vocab_size": 200, "max_seq_length": 32}


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainResult]:
    """A tiny CNN trained for 2 epochs through fbdl_fast.train, with the baseline (default)."""
    root = tmp_path_factory.mktemp("baseline")
    posts = generate_posts(240, seed=3)
    result = fbdl_fast.train(
        texts=posts.texts,
        labels=posts.labels,
        model="cnn",
        output=root / "run",
        epochs=2,
        class_weights="balanced",
        **TINY,
    )
    return root, result


def test_train_fits_the_baseline_on_the_same_split(
    cnn_run: tuple[Path, TrainResult],
) -> None:
    """result.baseline holds the figures of the n-gram model fitted on the run's own training
    and validation posts with its tokenizer, seed and class weights (fitting it again from
    those gives the same figures), next to the model's best epoch; baseline.json has them."""
    _, result = cnn_run
    baseline = result.baseline
    assert baseline is not None
    assert baseline.model_title == "CNN"
    assert baseline.model_macro_f1 == result.best["val_macro_f1"]
    run = fbdl_fast.load_run(result.run_dir)
    posts = generate_posts(240, seed=3)
    train, val = split_posts(posts, 0.1, run.config.seed, stratify=True)
    assert len(val) == json.loads((result.run_dir / "config.json").read_text())["data"]["val_posts"]
    config = baseline_config(run.config)
    assert config.class_weights == run.config.class_weights is not None  # balanced
    assert config.input_dim == NGRAM_DEFAULTS["input_dim"] and config.seed == run.config.seed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the run's: the fit's sums split by thread, so do its last digits
    try:
        again = fit_baseline(
            train,
            val,
            run.tokenizer,
            LabelMap.load(result.run_dir / "label_map.json"),
            run.config,
            model_title="CNN",
            model_macro_f1=result.best["val_macro_f1"],
        )
    finally:
        torch.set_num_threads(threads)
    assert (again.val_macro_f1, again.val_loss, again.best_epoch) == (
        baseline.val_macro_f1,
        baseline.val_loss,
        baseline.best_epoch,
    )
    assert read_baseline(result.run_dir) == baseline
    assert json.loads((result.run_dir / BASELINE_FILE).read_text())["model"] == "ngram"


def test_report_and_last_line_name_both_figures(
    cnn_run: tuple[Path, TrainResult],
) -> None:
    """report.md's second paragraph gives the model's validation macro-F1 next to the
    baseline's; the CLI's last line carries the comparison."""
    from fbdl_fast.cli.train import final_line

    _, result = cnn_run
    baseline = result.baseline
    assert baseline is not None
    paragraphs = (result.run_dir / "report.md").read_text().split("\n\n")
    assert paragraphs[2].startswith(
        f"Validation macro-F1: CNN {result.best['val_macro_f1']:.4f}, n-gram baseline "
        f"{baseline.val_macro_f1:.4f} ("
    )
    assert final_line(result).endswith(f"; {baseline.comparison()}")


def test_comparison_says_plainly_when_the_baseline_wins() -> None:
    """The baseline ahead: 'beats this model' with both figures; behind: both figures, no
    such claim; report.md's line says the same in bold."""
    wins = BaselineResult(0.61, 0.6, 0.9, 2, 3, 1.5, "CNN", 0.55)
    assert wins.comparison() == (
        "the n-gram baseline beats this model on validation macro-F1: 0.6100 vs 0.5500"
    )
    assert "**The n-gram baseline beats this model**" in wins.report_line()
    loses = BaselineResult(0.50, 0.5, 1.0, 2, 3, 1.5, "CNN", 0.55)
    assert loses.comparison() == "validation macro-F1 0.5500 against the n-gram baseline's 0.5000"
    assert "beats" not in loses.report_line() and "ahead of the n-gram baseline by 0.0500" in (
        loses.report_line()
    )
    for result in (wins, loses):  # how to serve the two together
        assert "`fbdl-fast predict --run THIS_RUN --run NGRAM_RUN`" in result.report_line()


def small_split(n: int, seed: int) -> tuple[Any, Any, Tokenizer, LabelMap, fbdl_fast.ModelConfig]:
    """Synthetic posts split 75/25, a tokenizer trained on the training part, the labels, and a
    one-epoch config sized to them: what fit_baseline takes."""
    posts = generate_posts(n, seed=seed)
    train, val = split_posts(posts, 0.25, 0, stratify=True)
    tokenizer = Tokenizer.train(train.texts, vocab_size=200)
    labels = LabelMap.from_labels(posts.labels)
    config = fbdl_fast.ModelConfig(
        vocab_size=tokenizer.vocab_size, num_classes=len(labels), pad_token_id=0, max_epochs=1
    )
    return train, val, tokenizer, labels, config


def test_fitting_the_baseline_leaves_the_random_state_alone() -> None:
    """fit_baseline draws its weights and order from the run's seed, not torch's global RNG,
    and leaves that RNG where it was."""
    train, val, tokenizer, labels, config = small_split(80, seed=2)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = fit_baseline(train, val, tokenizer, labels, config)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)
    assert fit_baseline(train, val, tokenizer, labels, config).val_loss == first.val_loss


def test_the_baseline_indexes_the_runs_tokenizer_before_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fit_baseline gives the n-gram model the run's own tokenizer's character n-grams (the
    default) before its first step: without them it would train without its character
    features."""
    from fbdl_fast.models.ngram import NgramClassifier

    train, val, tokenizer, labels, config = small_split(60, seed=4)
    indexed = []
    original = NgramClassifier.index_char_ngrams

    def spy(model: NgramClassifier, given: Tokenizer) -> None:
        original(model, given)
        indexed.append((given, int((model.char_grams >= 0).sum())))

    monkeypatch.setattr(NgramClassifier, "index_char_ngrams", spy)
    fit_baseline(train, val, tokenizer, labels, config)
    assert len(indexed) == 1 and indexed[0][0] is tokenizer and indexed[0][1] > 0


def test_no_baseline_turns_it_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--no-baseline (baseline=False): no baseline.json, report.md says it was turned off, the
    last line has no comparison; the flag defaults to on."""
    args = build_parser().parse_args(["train", "--data", "p.csv"])
    assert build_request(args)[0].baseline is True
    data = write_posts_csv(tmp_path / "posts.csv", 120, seed=1)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--output", str(run), "--model", "cnn", "--epochs", "1"]
    argv += ["--input-dim", "16", "--hidden-dim", "16", "--vocab-size", "200", "--quiet"]
    assert main([*argv, "--no-baseline"]) == 0
    assert "n-gram baseline" not in capsys.readouterr().out
    assert not (run / BASELINE_FILE).exists() and read_baseline(run) is None
    report = (run / "report.md").read_text()
    assert "No n-gram baseline: turned off (`--no-baseline`, baseline=False)." in report


def test_multi_label_runs_say_why_they_have_no_baseline(tmp_path: Path) -> None:
    """A multi-label run fits no baseline and its report says so."""
    data = multi_label_posts_jsonl(tmp_path / "posts.jsonl", n=80)
    result = fbdl_fast.train(
        data, model="cnn", output=tmp_path / "run", epochs=1, multi_label=True, **TINY
    )
    assert result.baseline is None and not (result.run_dir / BASELINE_FILE).exists()
    report = (result.run_dir / "report.md").read_text()
    assert "No n-gram baseline: not fitted for multi-label runs." in report
