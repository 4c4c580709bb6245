"""`train` and `distill` options made from one table (cli/options.py): every ModelConfig and
TrainRequest field has a flag or a stated reason for none, each flag reaches its field and the
run's config.json, the CLI's defaults are the library's, and the library's messages, which name
fields, come out naming flags.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fbdl_fast.cli import main
from fbdl_fast.cli.main import build_parser
from fbdl_fast.cli.options import FLAGS, MODEL_FLAGS, NOT_FLAGS, TOP_FLAGS, in_flag_terms
from fbdl_fast.cli.train import build_request
from fbdl_fast.config import ModelConfig
from fbdl_fast.training.request import TrainRequest, train_request
from minilm_run import minilm_argv, needs_minilm
from tiny_run import tiny_model_args, write_posts_csv


def test_every_field_has_a_flag_or_a_reason() -> None:
    """A ModelConfig or TrainRequest field added without a flag fails here until it gets one
    or a reason in NOT_FLAGS; a field is never both."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    fields |= {f.name for f in dataclasses.fields(TrainRequest)}
    flagged, unflagged = set(FLAGS), set(NOT_FLAGS)
    assert fields - flagged - unflagged == set()
    assert flagged & unflagged == set()
    assert (flagged | unflagged) - fields == set()  # no stale entry
    assert all(len(reason) > 20 for reason in NOT_FLAGS.values())
    table = [flag.flag for flag in (*TOP_FLAGS, *MODEL_FLAGS)]
    assert len(table) == len(set(table))  # one field a flag


def test_help_shows_the_new_flags_with_the_library_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--focal-gamma FOCAL_GAMMA --loss focal: the focusing parameter gamma" in text
    assert "--gradient-clip GRADIENT_CLIP largest global gradient norm" in text
    assert "(default: 2.0)" in text and "--kernel-sizes K,K,..." in text
    assert "--lr LR peak learning rate (default: 0.001; ngram: not used; minilm: 0.0001)" in text
    assert "--pooling {mean,cls}" in text and "--label-smoothing LABEL_SMOOTHING" in text
    assert main(["distill", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--focal-gamma" in text and "--kernel-sizes" in text and "--pooling" not in text


def test_cli_defaults_are_the_librarys() -> None:
    """`fbdl-fast train` with no options asks for what train_request gives by default: the
    request options' defaults are TrainRequest's, the model options the model's."""
    for model in ("transformer", "cnn"):
        args = build_parser().parse_args(["train", "--data", "p.csv", "--model", model])
        assert build_request(args) == train_request(model, data="p.csv")
    args = build_parser().parse_args(["train", "--data", "p.csv"])
    for flag in TOP_FLAGS[1:]:
        default = TrainRequest.__dataclass_fields__[flag.field].default
        assert getattr(args, flag.field) == default, flag.flag
    for name in ("progress_every", "encoding_errors", "threads", "class_weights", "device"):
        assert getattr(args, name) == TrainRequest.__dataclass_fields__[name].default, name


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("ModelConfig.max_seq_length=0 is invalid", "--max-length 0 is invalid"),
        ("val_fraction=1.0 is invalid", "--val-fraction 1.0 is invalid"),
        ("calibrate=True fits a temperature", "--calibrate fits a temperature"),
        ("spell_emoji=False: emoji", "--no-spell-emoji: emoji"),
        ("not multi_label=True (use tune_thresholds)", "not --multi-label (use --tune-thresholds)"),
        ("focal_alpha_from_weights=True takes", "--focal-alpha class-weights takes"),
        ("in [0, num_layers=6]", "in [0, --num-layers 6]"),
        ("model=minilm's 512 positions", "--model minilm's 512 positions"),
        ("vocab_size=3 is too small", "--vocab-size 3 is too small"),
        # Left alone: dotted names, paths, quoted labels, plain words.
        (
            "model_config.learning_rate (0.1 in the run",
            "model_config.learning_rate (0.1 in the run",
        ),
        ("runs/multi_label and 'class_weights'", "runs/multi_label and 'class_weights'"),
        ("the loss is cross_entropy", "the loss is cross_entropy"),
    ],
)
def test_messages_name_the_flags(message: str, expected: str) -> None:
    assert in_flag_terms(message) == expected


def test_new_flags_reach_the_run_config(tmp_path: Path) -> None:
    """--focal-gamma, --gradient-clip, --label-smoothing and --kernel-sizes: in the config the
    model trained with, recorded in config.json and in best.pt."""
    from fbdl_fast.checkpoint import load_checkpoint

    data = write_posts_csv(tmp_path / "posts.csv", 60, seed=5)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--output", str(run), *tiny_model_args(), "--quiet"]
    options = ["--epochs", "1", "--loss", "focal", "--focal-gamma", "1.5"]
    options += ["--gradient-clip", "0.25", "--label-smoothing", "0.1", "--kernel-sizes", "2,3"]
    assert main([*argv, *options]) == 0
    recorded = json.loads((run / "config.json").read_text())["model_config"]
    expected = {
        "focal_gamma": 1.5,
        "gradient_clip": 0.25,
        "label_smoothing": 0.1,
        "kernel_sizes": [2, 3],
    }
    assert {name: recorded[name] for name in expected} == expected
    saved = load_checkpoint(run / "best.pt")
    widths = [w.shape[-1] for k, w in saved["model"].items() if k.startswith("conv_layers.")]
    assert widths == [2, 3]  # the trained model's convolutions
    assert ModelConfig.from_dict(saved["config"]).kernel_sizes == (2, 3)


@needs_minilm
def test_pooling_reaches_a_fine_tuned_run(tmp_path: Path) -> None:
    data = write_posts_csv(tmp_path / "p.csv", 16, seed=1)
    assert main(minilm_argv(data, tmp_path / "run", 1, "--pooling", "cls")) == 0
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["model_config"]
    assert recorded["pooling"] == "cls"
