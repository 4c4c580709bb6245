"""The n-gram model's convex fit (training.ngram_fit) scored on each task's test set, for each
C of a grid, with no refit: what chose its defaults (docs/training.md).

    python benches/studies/ngram_convex.py --task data/debian --task data/manpages
    python benches/studies/ngram_convex.py --task data/debian --buckets 262144 --c 10 30
    python benches/studies/ngram_convex.py --held-out 0.1     # on the posts `train` trains on

The model is `--model ngram`'s (training.presets: its tokenizer trained on train.csv, its
n-grams and character n-grams, TF-IDF weights and L2 norms), fitted by fit_convex on all of
train.csv (or, with --held-out, on the share `fbdl-fast train --seed 42` trains on), with the
test set standing where a run has its validation posts: the figure it prints for each C is the
test macro-F1 of the fit on the training posts with that C. `train` itself chooses C on its
validation posts and refits on all of them.

Prints one JSON line per task and C: test macro-F1, the fit's seconds and objective
evaluations (every C of the grid together: each starts from the previous one's solution).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Optional

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from fbdl_fast.config import ModelConfig
from fbdl_fast.data import LabelMap, build_dataloaders, load_posts, split_posts
from fbdl_fast.models.ngram import NgramClassifier
from fbdl_fast.training import ngram_fit, presets
from fbdl_fast.training.session import train_tokenizer


def study(
    task: str, buckets: int, cs: list[float], held_out: float, word_chars: bool = True
) -> list[dict[str, Any]]:
    """One line per C: the convex fit on `task`'s train.csv (less the share `held_out` that
    `fbdl-fast train --seed 42` would hold out for validation), scored on its test.csv."""
    train = load_posts(os.path.join(task, "train.csv"), "text", "label")
    if held_out:
        train = split_posts(train, held_out, 42, stratify=True)[0]
    test = load_posts(os.path.join(task, "test.csv"), "text", "label")
    label_map = LabelMap.from_labels(train.labels)
    tokenizer = train_tokenizer(train.texts, presets.DEFAULT_VOCAB_SIZE, "social")
    values = presets.config_defaults("ngram")
    values["extra"].update(
        ngram_buckets=buckets, ngram_word_chars=word_chars, ngram_c=cs, ngram_refit=False
    )
    values.update(
        vocab_size=tokenizer.vocab_size,
        num_classes=len(label_map),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = NgramClassifier(ModelConfig(**values))
    model.index_char_ngrams(tokenizer)
    train_loader, test_loader = build_dataloaders(train, test, tokenizer, label_map, model.config)
    fit = ngram_fit.fit_convex(model, train_loader, test_loader)
    return [
        {
            "task": os.path.basename(os.path.normpath(task)),
            "buckets": buckets,
            "word_chars": word_chars,
            "c": c,
            "test_macro_f1": round(f1, 4),
            "train_posts": len(train.texts),
            "fit_s": round(fit.seconds, 1),
            "evaluations": fit.evaluations,
        }
        for c, f1 in fit.val_macro_f1.items()
    ]


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", action="append", help="task folders (train.csv, test.csv)")
    parser.add_argument(
        "--buckets", type=int, default=presets.NGRAM_CONVEX_EXTRA["ngram_buckets"],
        help="hashed rows (default: the model's, 2**18)",
    )  # fmt: skip
    parser.add_argument(
        "--c", type=float, nargs="+", default=list(presets.NGRAM_C_GRID), help="inverse L2 strength"
    )
    parser.add_argument(
        "--held-out", type=float, default=0.0,
        help="share of train.csv left out, as train's --val-fraction with seed 42 (default: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--no-word-chars", action="store_true",
        help="leave out the character n-grams across a word's pieces and at its end",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = []
    for task in args.task or ["data/debian", "data/manpages"]:
        for line in study(task, args.buckets, args.c, args.held_out, not args.no_word_chars):
            print(json.dumps(line), flush=True)
            lines.append(line)
    return lines


if __name__ == "__main__":
    main()
