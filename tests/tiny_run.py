"""A run folder as `fbdl-fast train` writes it, built in a second from an untrained tiny CNN.

Tests of evaluate/predict that check plumbing (streaming, errors, order) need a run folder, not a
trained model: `make_run` writes config.json, tokenizer.json, label_map.json and best.pt with the
same helpers the CLI uses, without the training.
"""

from __future__ import annotations

import json
from pathlib import Path

from fbdl_fast.config import ModelConfig
from fbdl_fast.data import LabelMap
from fbdl_fast.models import create_model
from fbdl_fast.synthetic import CLASSES, generate_posts
from fbdl_fast.tokenizer import Tokenizer
from fbdl_fast.train import BEST_CHECKPOINT, Trainer

MAX_LENGTH = 32


def make_run(folder: Path, vocab_size: int = 200, seed: int = 0) -> Path:
    """Write a complete run folder for a tiny untrained CNN (columns: text, label)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.train(generate_posts(300, seed=seed).texts, vocab_size=vocab_size)
    config = ModelConfig(
        input_dim=16,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        batch_size=32,
        vocab_size=tokenizer.vocab_size,
        num_classes=len(CLASSES),
        max_seq_length=MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        seed=seed,
    )
    meta = {
        "model": "cnn",
        "model_config": config.to_dict(),
        "data": {"text_column": "text", "label_column": "label"},
    }
    (folder / "config.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    tokenizer.save(folder / "tokenizer.json")
    LabelMap(list(CLASSES)).save(folder / "label_map.json")
    Trainer(create_model("cnn", config), config, device="cpu").save_checkpoint(
        folder / BEST_CHECKPOINT
    )
    return folder
