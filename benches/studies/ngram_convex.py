"""A lead for the n-gram model (models/ngram.py): its own rows fitted as TF-IDF + logistic
regression is fitted, convex and on all the training posts, scored on the test set.

    python benches/studies/ngram_convex.py --task data/debian --task data/manpages
    python benches/studies/ngram_convex.py --task data/debian --buckets 262144 --c 10 30
    python benches/studies/ngram_convex.py --held-out 0.1     # on the posts `train` trains on

`--model ngram` trains a 32-wide table and a linear head with AdamW, holding 10% of the posts
out for early stopping. This study keeps the model's features exactly (its tokenizer trained on
train.csv, the ids' unigrams and hashed bigrams, each vocabulary entry's character n-grams, the
rows its forward gathers) and changes the rest:

- weights: each row of a post weighted by its inverse document frequency in train.csv
  (scikit-learn's smoothed idf, 1 + ln((1 + n) / (1 + df)); 0 for a row no training post has,
  as TfidfVectorizer drops what it never saw), each of the two groups (n-grams,
  character n-grams) with its own idf and divided by its own L2 norm, as TfidfVectorizer weighs
  each of its blocks, with one difference a forward over a post's rows can afford: a row that
  occurs twice has twice its weight, and adds its weight squared twice to the norm (a
  scikit-learn one-off on these rows measured the same macro-F1 as TfidfVectorizer's norm);
- model: a table as wide as the classes, summed (the logits themselves: a linear model over
  the rows), and a bias;
- fit: the L2-regularised cross-entropy (scikit-learn's objective: C times the summed loss plus
  half the squared weights) minimised by torch's L-BFGS to convergence, over all of train.csv,
  at one thread, with no validation split: a convex fit has no epoch to choose (--held-out
  leaves out the posts `fbdl-fast train` holds out, to tell the fit's share from the data's).

Prints one JSON line per task and C: test macro-F1 and accuracy, the fit's seconds and
objective evaluations. The model and its fit are a study, not a library path: the figures say
whether building it is worth it (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from typing import Any, Optional

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import torch.nn.functional as F

from fbdl_fast.config import ModelConfig
from fbdl_fast.data import LabelMap, Posts, build_dataloaders, load_posts, split_posts
from fbdl_fast.metrics import macro_f1
from fbdl_fast.models.ngram import NgramClassifier, ngram_rows
from fbdl_fast.tokenizer import Tokenizer
from fbdl_fast.training import presets
from fbdl_fast.training.session import train_tokenizer

Bags = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # rows, their weights, post offsets


@torch.no_grad()
def post_rows(model: NgramClassifier, loader: Any) -> list[tuple[list[Bags], torch.Tensor]]:
    """Per batch: the rows of each group its forward pools ((B, N) rows, (B, N) bool real) and
    the labels, in loader order."""
    found = []
    for batch in loader:
        ids, mask = batch["input_ids"].long(), batch["attention_mask"].bool()
        rows, weights = ngram_rows(
            ids, mask, model.config.vocab_size, model.buckets, model.order, model.hashing
        )
        groups = [(rows, weights > 0)]
        if model.char_limit:
            char_rows, real = model.char_rows(ids, mask)
            groups.append((char_rows.clamp(min=0), real))
        found.append((groups, batch["labels"]))
    return found


def inverse_document_frequency(batches: list, table_rows: int) -> list[torch.Tensor]:
    """Per group, (table_rows,) smoothed idf over the posts of `batches`: a row's df counts the
    posts whose group has it, each once (TfidfVectorizer's idf of each of its blocks); 0 for a
    row none has."""
    groups = len(batches[0][0])
    df = [torch.zeros(table_rows, dtype=torch.float64) for _ in range(groups)]
    posts = 0
    for found, labels in batches:
        for counts, (rows, real) in zip(df, found):
            post = torch.arange(rows.shape[0])[:, None].expand_as(rows)[real]
            unique = torch.unique(post * table_rows + rows[real])
            counts += torch.bincount(unique % table_rows, minlength=table_rows).double()
        posts += labels.shape[0]
    # A row no training post has gets no weight: TfidfVectorizer's vocabulary leaves out what
    # it never saw, and its smoothed idf (the largest) would only shrink a test post's other
    # weights through the norm.
    return [
        torch.where(counts > 0, torch.log((1 + posts) / (1 + counts)) + 1, 0.0).float()
        for counts in df
    ]


def weighted_bags(batches: list, idf: list[torch.Tensor]) -> Bags:
    """All posts as one bag of rows for F.embedding_bag: (rows, per-row weights (idf over the
    group's L2 norm), offsets) and the labels."""
    rows, weights, offsets, labels = [], [], [], []
    start = 0
    for groups, batch_labels in batches:
        weight_groups = []
        for group_idf, (group_rows, real) in zip(idf, groups):
            w = group_idf[group_rows] * real
            weight_groups.append(w / w.pow(2).sum(1, keepdim=True).sqrt().clamp(min=1e-12))
        all_rows, all_weights = torch.cat([g[0] for g in groups], 1), torch.cat(weight_groups, 1)
        keep = all_weights > 0
        counts = keep.sum(1)
        offsets.append(start + torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]]))
        start += int(counts.sum())
        rows.append(all_rows[keep])
        weights.append(all_weights[keep])
        labels.append(batch_labels)
    return torch.cat(rows), torch.cat(weights), torch.cat(offsets), torch.cat(labels)


def scores(bags: Bags, table: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(posts, classes) logits: each post's weighted rows of `table` summed, plus `bias`."""
    rows, weights, offsets = bags
    return F.embedding_bag(rows, table, offsets, mode="sum", per_sample_weights=weights) + bias


def posts_matrix(bags: Bags) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bags as a sparse (posts, rows used) matrix in CSR, its transpose, and which table
    row each column is: a row no post has stays 0 at the optimum, so it is left out."""
    rows, weights, offsets = bags
    ends = torch.cat([offsets[1:], torch.tensor([rows.shape[0]])])
    post = torch.repeat_interleave(torch.arange(len(offsets)), ends - offsets)
    used, column = torch.unique(rows, return_inverse=True)
    shape = (len(offsets), len(used))
    coo = torch.sparse_coo_tensor(
        torch.stack([post, column]), weights, shape, check_invariants=True
    ).coalesce()
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state": products only
        warnings.simplefilter("ignore", UserWarning)
        return coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr(), used


def fit(bags: Bags, labels: torch.Tensor, table_rows: int, classes: int, c: float) -> dict:
    """L-BFGS to convergence on C * sum of losses + |W|^2 / 2 (scaled by 1 / (C n)), over the
    posts as a sparse matrix, its gradient written out: X^T (softmax - onehot) / n + W / (C n).
    An embedding bag with autograd computes the same in 4-5 times the time."""
    posts, posts_t, used = posts_matrix(bags)
    table = torch.zeros(len(used), classes)
    bias = torch.zeros(classes)
    optimizer = torch.optim.LBFGS(
        [table, bias], max_iter=1000, history_size=10, line_search_fn="strong_wolfe",
        tolerance_grad=1e-6, tolerance_change=1e-9,
    )  # fmt: skip
    evaluations = [0]
    n = labels.shape[0]
    scale = 1.0 / (2.0 * c * n)
    onehot = F.one_hot(labels, classes).float()

    @torch.no_grad()
    def objective() -> torch.Tensor:
        log_p = torch.log_softmax(posts @ table + bias, dim=1)
        loss = -log_p.gather(1, labels[:, None]).mean() + scale * table.pow(2).sum()
        residual = (log_p.exp() - onehot) / n
        table.grad = posts_t @ residual + 2 * scale * table
        bias.grad = residual.sum(0)
        evaluations[0] += 1
        return loss

    started = time.perf_counter()
    optimizer.step(objective)
    full = torch.zeros(table_rows, classes)
    full[used] = table
    return {
        "table": full,
        "bias": bias.clone(),
        "fit_s": round(time.perf_counter() - started, 1),
        "evaluations": evaluations[0],
    }


def ngram_model(
    train: Posts,
    label_map: LabelMap,
    buckets: int,
    vocab_size: int = presets.DEFAULT_VOCAB_SIZE,
    word_chars: bool = False,
) -> tuple[Tokenizer, NgramClassifier]:
    """`train`'s tokenizer, as `fbdl-fast train` trains it, and the n-gram model of --model
    ngram's defaults with `buckets` hashed rows, its character n-grams indexed."""
    tokenizer = train_tokenizer(train.texts, vocab_size, "social")
    values = presets.config_defaults("ngram")
    values["extra"] = {**values["extra"], "ngram_buckets": buckets, "ngram_word_chars": word_chars}
    config = ModelConfig(
        **values,
        vocab_size=tokenizer.vocab_size,
        num_classes=len(label_map),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = NgramClassifier(config)
    model.index_char_ngrams(tokenizer)
    return tokenizer, model


def study(
    task: str, buckets: int, cs: list[float], held_out: float, word_chars: bool = False
) -> list[dict[str, Any]]:
    """One line per C: the convex fit on `task`'s train.csv (less the share `held_out` that
    `fbdl-fast train --seed 42` would hold out for validation), scored on its test.csv."""
    train = load_posts(os.path.join(task, "train.csv"), "text", "label")
    if held_out:
        train = split_posts(train, held_out, 42, stratify=True)[0]
    test = load_posts(os.path.join(task, "test.csv"), "text", "label")
    label_map = LabelMap.from_labels(train.labels)
    tokenizer, model = ngram_model(train, label_map, buckets, word_chars=word_chars)
    # Validation batches are unshuffled: the test loader is the validation one.
    train_loader, test_loader = build_dataloaders(train, test, tokenizer, label_map, model.config)
    table_rows = model.embedding.num_embeddings
    started = time.perf_counter()
    train_batches = post_rows(model, train_loader)
    idf = inverse_document_frequency(train_batches, table_rows)
    *train_bags, train_labels = weighted_bags(train_batches, idf)
    features_s = time.perf_counter() - started
    *test_bags, test_labels = weighted_bags(post_rows(model, test_loader), idf)
    lines = []
    for c in cs:
        fitted = fit(tuple(train_bags), train_labels, table_rows, len(label_map), c)
        predicted = scores(tuple(test_bags), fitted["table"], fitted["bias"]).argmax(1)
        lines.append(
            {
                "task": os.path.basename(os.path.normpath(task)),
                "buckets": buckets,
                "word_chars": word_chars,
                "c": c,
                "test_macro_f1": round(macro_f1(predicted, test_labels, len(label_map)), 4),
                "test_accuracy": round(float((predicted == test_labels).float().mean()), 4),
                "train_posts": len(train.texts),
                "features_s": round(features_s, 1),
                "fit_s": fitted["fit_s"],
                "evaluations": fitted["evaluations"],
            }
        )
    return lines


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", action="append", help="task folders (train.csv, test.csv)")
    parser.add_argument("--buckets", type=int, default=1 << 16, help="hashed rows (model's: 2**16)")
    parser.add_argument("--c", type=float, nargs="+", default=[10.0], help="inverse L2 strength")
    parser.add_argument(
        "--held-out", type=float, default=0.0,
        help="share of train.csv left out, as train's --val-fraction with seed 42 (default: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--word-chars", action="store_true",
        help="also the character n-grams across a word's pieces and at its end (ngram_word_chars)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = []
    for task in args.task or ["data/debian", "data/manpages"]:
        for line in study(task, args.buckets, args.c, args.held_out, args.word_chars):
            print(json.dumps(line), flush=True)
            lines.append(line)
    return lines


if __name__ == "__main__":
    main()
