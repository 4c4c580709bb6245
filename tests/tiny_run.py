"""Tiny runs for the tests: a run folder, the config, CLI options and posts CSV of a tiny model,
and a tiny bag-of-embeddings model with its posts and config for Trainer tests.

Tests of evaluate/predict that check plumbing (streaming, errors, order) need a run folder, not a
trained model: `make_run` writes config.json, tokenizer.json, label_map.json and best.pt with the
same helpers the CLI uses, without the training. `tiny_config` is that model's ModelConfig,
`tiny_model_args` its `fbdl-fast train` options; `write_csv` / `write_posts_csv` write the posts
file the CLI reads. `train_refusal` checks that train refuses options before reading the data;
`train_two_ranks_and_one` trains under torchrun (2 ranks) and in one process, to compare.
`load_bench_script` imports a script of benches/ (not a package) for the tests of its functions.

Trainer tests (accumulation, faults, distributed) need a model that trains in milliseconds and
whose weights can be compared exactly: `Bag`, fed by `Posts` and configured by `bag_config`.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from fbdl_fast.config import ModelConfig
from fbdl_fast.data import LabelMap
from fbdl_fast.data.synthetic import CLASSES, generate_posts
from fbdl_fast.models import create_model
from fbdl_fast.tokenizer import Tokenizer
from fbdl_fast.training.trainer import BEST_CHECKPOINT, Trainer

MAX_LENGTH = 32


def tiny_config(**overrides: Any) -> ModelConfig:
    """The tiny model's ModelConfig (width 16, one layer, 2 heads, the synthetic posts' 4
    classes), with `overrides`."""
    values: dict[str, Any] = {
        "input_dim": 16,
        "hidden_dim": 16,
        "num_layers": 1,
        "num_heads": 2,
        "num_classes": len(CLASSES),
    }
    return ModelConfig(**(values | overrides))


def make_run(
    folder: Path,
    vocab_size: int = 200,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
    **overrides: Any,
) -> Path:
    """Write a complete run folder for a tiny untrained CNN (columns: text, label) of `classes`;
    `overrides`: ModelConfig fields (multi_label=True, say)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.train(generate_posts(300, seed=seed).texts, vocab_size=vocab_size)
    config = tiny_config(
        batch_size=32,
        vocab_size=tokenizer.vocab_size,
        max_seq_length=MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        seed=seed,
        num_classes=len(classes),
        **overrides,
    )
    meta = {
        "model": "cnn",
        "model_config": config.to_dict(),
        "data": {"text_column": "text", "label_column": "label"},
    }
    (folder / "config.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    tokenizer.save(folder / "tokenizer.json")
    LabelMap(list(classes)).save(folder / "label_map.json")
    Trainer(create_model("cnn", config), config, device="cpu").save_checkpoint(
        folder / BEST_CHECKPOINT
    )
    return folder


def without_manifest(folder: Path) -> Path:
    """Make the run `folder` one written before the integrity manifest: no manifest.json, and no
    mention of one in config.json. Its files then load unverified, so a test reaches the
    checks behind the manifest."""
    (folder / "manifest.json").unlink()
    meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    del meta["manifest"]
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return folder


def tiny_model_args(model: str = "cnn", max_length: int = MAX_LENGTH) -> list[str]:
    """`fbdl-fast train` options of the tiny model `make_run` builds (vocabulary of 200)."""
    return [
        "--model",
        model,
        "--input-dim",
        "16",
        "--hidden-dim",
        "16",
        "--num-layers",
        "1",
        "--num-heads",
        "2",
        "--vocab-size",
        "200",
        "--max-length",
        str(max_length),
    ]


def write_csv(
    path: Path, rows: Iterable[tuple[str, str]], header: tuple[str, str] = ("text", "label")
) -> Path:
    """Write a posts CSV: the header line, then one (text, label) row per post."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_posts_csv(
    path: Path, n: int, seed: int, header: tuple[str, str] = ("text", "label")
) -> Path:
    """Write `n` synthetic posts (`generate_posts(n, seed)`) as a posts CSV."""
    posts = generate_posts(n, seed=seed)
    return write_csv(path, zip(posts.texts, posts.labels), header)


def load_bench_script(file: str) -> Any:
    """benches/FILE (e.g. "studies/datasets.py") imported as the module bench_STEM (registered
    in sys.modules, so that its dataclasses and pickling work)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benches" / file
    name = f"bench_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- CLI runs


def cli_refusal(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """`fbdl-fast ARGV`: asserts that it exits 2 with one line on stderr and no Traceback;
    returns that line for the caller's needle."""
    from fbdl_fast.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def train_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str]) -> str:
    """`fbdl-fast train` with `options` on a posts file that does not exist under `tmp_path`:
    asserts that it exits 2 before the data is read (stderr does not name the file, holds no
    Traceback) and creates nothing under `tmp_path`; returns stderr for the caller's needle."""
    from fbdl_fast.cli import main

    argv = ["train", "--data", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "r")]
    assert main([*argv, *options, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "missing.csv" not in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
    return err


def train_two_ranks_and_one(
    train: list[str], ddp: Path, one: Path
) -> subprocess.CompletedProcess[str]:
    """Run `train` (fbdl-fast options without --output and --batch-size) under torchrun as 2
    gloo ranks of batch 8 into `ddp`, then in this process with batch 16 into `one`: the same
    batches, so the weights agree to float rounding (see test_distributed.py). Returns the
    torchrun process, which exited 0."""
    from fbdl_fast.cli import main

    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    result = subprocess.run(
        [*torchrun, "2", "-m", "fbdl_fast", *train, "--output", str(ddp), "--batch-size", "8"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert main([*train, "--output", str(one), "--batch-size", "16"]) == 0
    return result


# ----------------------------------------------------------------------------- Trainer tests

BAG_CLASSES, BAG_SEQ, BAG_VOCAB = 3, 6, 20


class Bag(nn.Module):
    """Masked mean of embeddings -> linear head."""

    def __init__(self, vocab_size: int = BAG_VOCAB, num_classes: int = BAG_CLASSES) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 8, padding_idx=0)
        self.head = nn.Linear(8, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()  # (B, L, 1)
        return self.head((self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1))


class Posts(Dataset):
    """`n` posts of BAG_SEQ tokens; class c uses tokens 1 + 6c .. 6 + 6c, so `Bag` can learn it.

    padded: each post keeps 2..BAG_SEQ tokens and the rest is padding (id 0, masked out);
    otherwise every post is BAG_SEQ real tokens.
    """

    def __init__(self, n: int, seed: int = 1, padded: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, BAG_CLASSES, (n,), generator=g)
        self.ids = 1 + self.labels[:, None] * 6 + torch.randint(0, 6, (n, BAG_SEQ), generator=g)
        self.mask = torch.ones(n, BAG_SEQ, dtype=torch.bool)
        if padded:  # drawn after the ids, whose tails it then pads
            lengths = torch.randint(2, BAG_SEQ + 1, (n,), generator=g)
            self.mask = torch.arange(BAG_SEQ)[None, :] < lengths[:, None]
            self.ids = self.ids.masked_fill(~self.mask, 0)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def bag_config(**overrides: Any) -> ModelConfig:
    """The ModelConfig of `Bag` on `Posts` (2 epochs, AdamW, one_cycle, fp32), with `overrides`."""
    values: dict[str, Any] = {
        "input_dim": 8,
        "hidden_dim": 8,
        "num_layers": 1,
        "num_heads": 2,
        "dropout": 0.0,
        "vocab_size": BAG_VOCAB,
        "num_classes": BAG_CLASSES,
        "max_seq_length": BAG_SEQ,
        "learning_rate": 0.05,
        "max_epochs": 2,
        "patience": 10,
        "scheduler_type": "one_cycle",
        "use_mixed_precision": False,
        "seed": 3,
    }
    values.update(overrides)
    return ModelConfig(**values)


# A multi-label run's options and posts: three labels, each post holding each with probability 0.4
# and three of its words, so a small model learns them in a few epochs.
MULTI_LABEL_TRAIN = [
    *tiny_model_args(),
    "--quiet",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--lr",
    "0.01",
]
MULTI_LABEL_WORDS = {
    "spam": ["win", "free", "click"],
    "negative": ["awful", "hate", "worst"],
    "sport": ["goal", "match", "team"],
}


def multi_label_posts_jsonl(path: Path, n: int = 160) -> Path:
    """`n` multi-label posts as JSON lines (labels a JSON list), seeded."""
    rng = np.random.default_rng(7)
    lines = []
    for _ in range(n):
        labels = [label for label in MULTI_LABEL_WORDS if rng.random() < 0.4]
        words = [w for label in labels for w in rng.choice(MULTI_LABEL_WORDS[label], size=3)]
        lines.append(json.dumps({"text": " ".join([*words, "hello", "there"]), "label": labels}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
