"""What moves the n-gram baseline (models/ngram.py) on the real tasks: validation macro-F1 of
variants of it, each the mean over seeded validation splits, never the test set.

    python benches/studies/ngram_levers.py                       # the defaults, both tasks
    python benches/studies/ngram_levers.py '{"pooling": "idf"}' '{"vocab": 16000}'
    python benches/studies/ngram_levers.py '{"extra": {}}'       # without character n-grams

Each argument is one variant, a JSON object of:

- ModelConfig fields over the defaults of the fit over epochs (presets.NGRAM_DEFAULTS):
  "learning_rate", "label_smoothing", "input_dim", "extra" ({"ngram_buckets": ...,
  "ngram_char_grams": 48}, {} for no character n-grams), "optimizer_type", ...;
- "vocab" and "style": the tokenizer trained on the split's training posts (8000, "social");
- "pooling": "mean" (the model's), "idf" (rows weighted by their inverse document frequency in
  the training posts, as TF-IDF), "l2" (sum over the L2 norm of the weights instead of their
  count) or "idf-l2";
- "direct": true, the table's width is the number of classes and there is no hidden layer
  (fastText with no hidden layer, a plain linear model over the n-grams);
- "drop": the share of a post's n-grams dropped at each training step;
- "char_mix": true, the character n-grams averaged into each token's own row (fastText's word
  vectors) instead of pooled apart;
- "tfidf": C, instead of the model, baselines.py's TF-IDF (word 1-2 + char_wb 2-5-grams) +
  logistic regression with that C, on the same split: the bar on validation.
- "convex": C, instead of training the model, scikit-learn's logistic regression (L-BFGS to
  convergence, L2 with that C) on the model's own features: the table rows its forward pools
  (the hashed n-grams and the character n-grams, word_chars included when "extra" asks for
  them), weighted as "weights" says: "mean" (the model's pooling: each group's mean, the two
  summed) or "tfidf" (each group's counts through sublinear tf, idf and an L2 norm, as
  baselines.py's TfidfVectorizer, the two side by side). What a convex fit of a linear model
  over exactly these rows reaches, against the model trained by AdamW.

For every task (--task, default data/debian and data/manpages) and seed (--seeds, 42 1 2: each a
stratified 90/10 split of train.csv, as `fbdl-fast train` splits with --seed) the variant is
trained as a run trains it (the run's loaders, Trainer, early stopping on the validation loss)
at one thread; the line printed is the validation macro-F1 at the best epoch, per seed and its
mean, and the seconds a fit took (wall time on a shared machine: a rough figure).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any, Optional

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from fbdl_fast.config import ModelConfig
from fbdl_fast.data import LabelMap, build_dataloaders, load_posts, split_posts
from fbdl_fast.models.ngram import NgramClassifier, ngram_rows
from fbdl_fast.training import presets
from fbdl_fast.training.session import train_tokenizer
from fbdl_fast.training.trainer import Trainer

POOLINGS = ("mean", "idf", "l2", "idf-l2")


class Variant(NgramClassifier):
    """The n-gram model with the study's other poolings, widths and dropouts."""

    def __init__(
        self,
        config: ModelConfig,
        pooling: str = "mean",
        direct: bool = False,
        drop: float = 0.0,
        char_mix: bool = False,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; accepted: {', '.join(POOLINGS)}")
        if direct:  # one column a class, read as logits
            config = ModelConfig(
                **{**vars(config), "input_dim": config.num_classes, "num_heads": 1}
            )
        super().__init__(config)
        self.pooling, self.direct, self.drop, self.char_mix = pooling, direct, drop, char_mix
        self.register_buffer("idf", torch.ones(self.embedding.num_embeddings))
        if direct:  # no head: the pooled row is the logits, with a bias of their own
            self.output_projection = torch.nn.Identity()
            self.bias = torch.nn.Parameter(torch.zeros(config.num_classes))

    @torch.no_grad()
    def fit_idf(self, loader: Any) -> None:
        """idf = log((1 + posts) / (1 + posts with the row)) + 1 (scikit-learn's smooth idf)."""
        seen = torch.zeros_like(self.idf)
        posts = 0
        for batch in loader:
            ids, mask = batch["input_ids"], batch["attention_mask"].bool()
            rows, weights = ngram_rows(
                ids, mask, self.config.vocab_size, self.buckets, 2, self.hashing
            )
            for row, weight in zip(rows, weights):
                seen[torch.unique(row[weight > 0])] += 1
            posts += len(ids)
        self.idf.copy_(torch.log((1 + posts) / (1 + seen)) + 1)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        if self.word_chars:  # whole-word character n-grams: the model's own forward
            return super().forward(input_ids, attention_mask)
        mask = attention_mask.bool()
        rows, weights = ngram_rows(
            input_ids, mask, self.config.vocab_size, self.buckets, 2, self.hashing
        )
        if "idf" in self.pooling:
            weights = weights * self.idf[rows]
        if self.training and self.drop:
            weights = weights * (torch.rand_like(weights) >= self.drop)
        vectors = self.embedding(rows)
        grams = self.char_grams[input_ids.long()] if self.char_limit else None
        if grams is not None and self.char_mix:  # a token's row: the mean of it and its grams
            real = (grams >= 0).float()
            own = vectors[:, : input_ids.shape[1]]
            summed = torch.einsum("blk,blkd->bld", real, self.embedding(grams.clamp(min=0)))
            mixed = (own + summed) / (1 + real.sum(2, keepdim=True))
            vectors = torch.cat([mixed, vectors[:, input_ids.shape[1] :]], dim=1)
        if self.pooling.endswith("l2"):
            norms = weights.pow(2).sum(1, keepdim=True).sqrt()
        else:
            norms = weights.sum(1, keepdim=True)
        pooled = torch.bmm((weights / norms.clamp(min=1e-6))[:, None, :], vectors)[:, 0]
        if grams is not None and not self.char_mix:  # the model's own: pooled apart
            flat = grams.flatten(1)
            real = ((flat >= 0) & mask.repeat_interleave(self.char_limit, dim=1)).float()
            real = real / real.sum(1, keepdim=True).clamp(min=1.0)
            pooled = pooled + torch.bmm(real[:, None], self.embedding(flat.clamp(min=0)))[:, 0]
        if self.direct:
            return pooled + self.bias
        return self.output_projection(self.dropout(pooled))


def fit(task: str, seed: int, spec: dict[str, Any], tokenizers: dict) -> dict[str, Any]:
    """One variant on one seeded split of `task`: validation figures at its best epoch."""
    spec = dict(spec)
    vocab, style = spec.pop("vocab", presets.DEFAULT_VOCAB_SIZE), spec.pop("style", "social")
    model_args = {k: spec.pop(k) for k in ("pooling", "direct", "drop", "char_mix") if k in spec}
    posts = load_posts(os.path.join(task, "train.csv"), "text", "label")
    label_map = LabelMap.from_labels(posts.labels)
    train, val = split_posts(posts, 0.1, seed, stratify=True)
    if "tfidf" in spec:
        return tfidf(train, val, float(spec["tfidf"]), seed)
    convex = spec.pop("convex", None)
    weighting = spec.pop("weights", "mean")
    key = (task, seed, vocab, style)
    if key not in tokenizers:
        tokenizers[key] = train_tokenizer(train.texts, vocab, style)
    tokenizer = tokenizers[key]
    values = {**presets.ngram_gradient_defaults(), **spec}  # the fit over epochs: its levers
    config = ModelConfig(
        **values,
        vocab_size=tokenizer.vocab_size,
        num_classes=len(label_map),
        pad_token_id=tokenizer.pad_token_id,
        seed=seed,
    )
    started = time.perf_counter()
    train_loader, val_loader = build_dataloaders(train, val, tokenizer, label_map, config)
    torch.manual_seed(seed)
    model = Variant(config, **model_args)
    model.index_char_ngrams(tokenizer)
    if convex is not None:
        return convex_fit(model, train_loader, val_loader, float(convex), weighting, started)
    if "idf" in model.pooling:
        model.fit_idf(train_loader)
    trainer = Trainer(model, model.config, label_map=label_map, device="cpu", progress=False)
    history = trainer.fit(train_loader, val_loader)
    best = (history.best_epoch or history.epochs) - 1
    return {
        "val_macro_f1": round(history.val_f1s[best], 4),
        "best_epoch": best + 1,
        "seconds": round(time.perf_counter() - started, 1),
    }


@torch.no_grad()
def feature_counts(model: NgramClassifier, loader: Any) -> tuple[Any, Any, list[int]]:
    """(n-gram counts, character n-gram counts, labels) of a loader's posts: two scipy CSR
    matrices (posts x table rows) of the rows the model's forward pools, in loader order."""
    from scipy import sparse

    blocks: dict[str, list[Any]] = {"ngrams": [], "chars": []}
    labels: list[int] = []
    width = model.embedding.num_embeddings
    for batch in loader:
        ids, mask = batch["input_ids"].long(), batch["attention_mask"].bool()
        rows, weights = ngram_rows(
            ids, mask, model.config.vocab_size, model.buckets, model.order, model.hashing
        )
        char_rows, char_real = model.char_rows(ids, mask)
        found = {
            "ngrams": (rows, weights > 0),
            "chars": (char_rows, char_real),
        }
        for name, (r, real) in found.items():
            post, slot = real.nonzero(as_tuple=True)
            values = torch.ones(len(post)).numpy()
            shape = (ids.shape[0], width)
            coo = (values, (post.numpy(), r[post, slot].numpy()))
            blocks[name].append(sparse.csr_matrix(coo, shape=shape))  # duplicates summed
        labels += batch["labels"].tolist()
    return sparse.vstack(blocks["ngrams"]), sparse.vstack(blocks["chars"]), labels


def convex_fit(
    model: NgramClassifier, train: Any, val: Any, c: float, weighting: str, started: float
) -> dict[str, Any]:
    """ "convex": logistic regression on the model's own rows, scored on the validation posts."""
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import normalize

    (a, b, y), (va, vb, vy) = feature_counts(model, train), feature_counts(model, val)
    if weighting == "mean":  # each group's mean (rows summed), the two added, as the forward
        x, vx = (
            (normalize(a, "l1") + normalize(b, "l1")),
            (normalize(va, "l1") + normalize(vb, "l1")),
        )
    elif weighting == "tfidf":
        ta, tb = TfidfTransformer(sublinear_tf=True), TfidfTransformer(sublinear_tf=True)
        x = sparse.hstack([ta.fit_transform(a), tb.fit_transform(b)]).tocsr()
        vx = sparse.hstack([ta.transform(va), tb.transform(vb)]).tocsr()
    else:
        raise ValueError(f"weights={weighting!r}; accepted: mean, tfidf")
    fitted = LogisticRegression(C=c, max_iter=3000).fit(x, y)
    macro = f1_score(vy, fitted.predict(vx), average="macro")
    return {
        "val_macro_f1": round(float(macro), 4),
        "best_epoch": 0,
        "seconds": round(time.perf_counter() - started, 1),
    }


def tfidf(train: Any, val: Any, c: float, seed: int) -> dict[str, Any]:
    """baselines.py's TF-IDF + logistic regression fitted on `train`, scored on `val`."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from baselines import scores, tfidf_lr

    started = time.perf_counter()
    model = tfidf_lr(c, seed)
    model.fit(list(train.texts), list(train.labels))
    found = scores(list(val.labels), model.predict(list(val.texts)))[0]
    return {
        "val_macro_f1": round(found, 4),
        "best_epoch": 0,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="*", default=["{}"], help="JSON objects (see above)")
    parser.add_argument("--task", action="append", help="task folders (train.csv)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tokenizers: dict = {}
    for text in args.variants:
        spec = json.loads(text)
        line: dict[str, Any] = {"variant": spec}
        for task in args.task or ["data/debian", "data/manpages"]:
            found = [fit(task, seed, spec, tokenizers) for seed in args.seeds]
            name = os.path.basename(os.path.normpath(task))
            line[name] = round(statistics.mean(r["val_macro_f1"] for r in found), 4)
            line[name + "_seeds"] = [r["val_macro_f1"] for r in found]
            line[name + "_best_epochs"] = [r["best_epoch"] for r in found]
            line[name + "_fit_s"] = round(statistics.mean(r["seconds"] for r in found), 1)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
