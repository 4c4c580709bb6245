"""The n-gram model's convex fit: its rows fitted as TF-IDF + logistic regression is fitted.

    fit = fit_convex(model, train_loader, val_loader, config)   # C chosen, model refitted
    fit.c, fit.val_macro_f1                                     # {C: held-out macro-F1}

A model with config.extra["ngram_fit"] = "convex" (models/ngram.py, the default of new
`--model ngram` runs: training.presets.NGRAM_DEFAULTS) is a linear model over its hashed rows:
each row of a post weighted by its inverse document frequency among the training posts
(scikit-learn's smoothed idf, 1 + ln((1 + n) / (1 + df)); 0 for a row no training post has, as
TfidfVectorizer drops what it never saw), the n-grams and the character n-grams each divided by
their own L2 norm, the table as wide as the classes. Its weights minimise the L2-regularised
cross-entropy (scikit-learn's objective, C times the summed loss plus half the squared
weights), convex, so fitted to convergence by torch's L-BFGS rather than over epochs:

1. the rows of every post are gathered once, through the model's own forward pieces
   (ngram_rows, char_rows), and the posts become one sparse matrix (CSR), its gradient
   written out (an embedding bag with autograd took 4-5 times as long);
2. C is chosen among config.extra["ngram_c"] (presets.NGRAM_C_GRID, TF-IDF + LR's grid in
   benches/studies/baselines.py) by macro-F1 on the validation posts, fitted on the training
   posts only, each C starting from the previous one's solution (smaller C first);
3. with config.extra["ngram_refit"] (True by default), refitted with that C on the training
   and validation posts together, idf included, as TF-IDF + LR is refitted on all its posts:
   on Debian the held-out 10% is worth 0.9 points of test macro-F1 (docs/training.md).

What the run reports as validation figures is the fit of step 2, which never saw those posts
(ConvexFit.val_logits); the served weights are step 3's. Class weights weigh each post's loss,
label smoothing its target. Not for a multi-label run, a balanced sampler (a full-batch fit
has no order to balance: use class weights), another loss, an EMA of the weights or several
processes: ValueError saying so (presets.convex_ngram_problem). The last digits of its figures
depend on the number of threads, which split its sums.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F

from fbdl_fast import metrics
from fbdl_fast.config import ModelConfig
from fbdl_fast.models.ngram import ngram_rows
from fbdl_fast.training import presets

if TYPE_CHECKING:
    from fbdl_fast.models.ngram import NgramClassifier

# L-BFGS: scikit-learn's lbfgs solver stops at a gradient of 1e-4 (max abs); these, on the mean
# loss, reach the same macro-F1 to the fourth digit (benches/studies/ngram_convex.py).
MAX_ITERATIONS = 1000
TOLERANCE_GRAD = 1e-6
TOLERANCE_CHANGE = 1e-9
GROUPS = 2  # the n-grams and the character n-grams: each its own idf and norm


@dataclass
class PostRows:
    """Every post's rows, per group: (post index, table row) of each occurrence (an n-gram
    that occurs twice is there twice), and the posts' labels."""

    groups: list[tuple[torch.Tensor, torch.Tensor]]
    labels: torch.Tensor

    @property
    def posts(self) -> int:
        return int(self.labels.shape[0])

    def __add__(self, other: PostRows) -> PostRows:
        shift = self.posts
        groups = [
            (torch.cat([post, other_post + shift]), torch.cat([row, other_row]))
            for (post, row), (other_post, other_row) in zip(self.groups, other.groups)
        ]
        return PostRows(groups, torch.cat([self.labels, other.labels]))


@dataclass
class ConvexFit:
    """What the convex fit chose and how long it took."""

    c: float  # the C chosen on validation macro-F1
    val_macro_f1: dict[float, float]  # every C tried: macro-F1 on the validation posts
    val_logits: torch.Tensor  # (validation posts, classes): the chosen C's fit before the refit
    val_labels: torch.Tensor
    refit_posts: int  # posts of the refit (training + validation); 0: not refitted
    seconds: float
    evaluations: int  # objective and gradient evaluations, every fit together

    def summary(self) -> str:
        """One sentence for report.md: the C chosen among which, and the refit."""
        tried = ", ".join(f"{c:g}: {f1:.4f}" for c, f1 in self.val_macro_f1.items())
        refit = (
            f", then refitted with it on all {self.refit_posts} posts (training and "
            "validation; this report's validation figures are the fit on the training posts "
            "alone)"
            if self.refit_posts
            else ""
        )
        return (
            f"Convex fit (TF-IDF-weighted rows, L-BFGS to convergence): C = {self.c:g} chosen "
            f"by validation macro-F1 ({tried}){refit}; {self.seconds:.1f}s."
        )


def check_convex(config: ModelConfig, world_size: int = 1) -> None:
    """ValueError, saying what is accepted, for what the convex fit cannot do
    (presets.convex_ngram_problem)."""
    problem = presets.convex_ngram_problem(config, world_size)
    if problem is not None:
        raise ValueError(problem)


@torch.no_grad()
def post_rows(model: NgramClassifier, loader: Iterable[Any]) -> PostRows:
    """The rows `model`'s forward pools for each post of `loader` (batches with input_ids,
    attention_mask and labels), in the loader's order."""
    vocab_size, device = model.config.vocab_size, model.embedding.weight.device
    found: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(GROUPS)]
    labels, start = [], 0
    for batch in loader:
        ids, mask = batch["input_ids"].long().cpu(), batch["attention_mask"].bool().cpu()
        rows, weights = ngram_rows(ids, mask, vocab_size, model.buckets, model.order, model.hashing)
        groups = [(rows, weights > 0)]
        if model.char_limit:  # gathered from the model's buffers, where they are
            char_rows, real = model.char_rows(ids.to(device), mask.to(device))
            groups.append((char_rows.cpu(), real.cpu()))
        for kept, (group_rows, real) in zip(found, groups):
            post = torch.arange(start, start + ids.shape[0])[:, None].expand_as(group_rows)
            kept.append((post[real], group_rows[real]))
        labels.append(batch["labels"].cpu())
        start += ids.shape[0]
    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    groups = [
        (torch.cat([p for p, _ in kept]), torch.cat([r for _, r in kept])) if kept else empty
        for kept in found
    ]
    return PostRows(groups, torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long))


def inverse_document_frequency(posts: PostRows, table_rows: int) -> torch.Tensor:
    """(GROUPS, table_rows): per group, each row's smoothed idf over `posts` (its df counts
    the posts having it, each once); 0 for a row none has."""
    idf = torch.zeros(GROUPS, table_rows)
    for group, (post, row) in enumerate(posts.groups):
        unique = torch.unique(post * table_rows + row)
        df = torch.bincount(unique % table_rows, minlength=table_rows).double()
        smoothed = torch.log((1 + posts.posts) / (1 + df)) + 1
        idf[group] = torch.where(df > 0, smoothed, 0.0).float()
    return idf


def weighted_matrix(posts: PostRows, idf: torch.Tensor, table_rows: int) -> torch.Tensor:
    """The posts as a sparse (posts, table_rows) COO matrix, coalesced: each occurrence of a
    row weighs its group's idf over the norm of the post's weights in that group (as the
    model's forward pools them), occurrences and groups of one row summed."""
    indices, values = [], []
    for group, (post, row) in enumerate(posts.groups):
        weight = idf[group][row]
        squares = torch.zeros(posts.posts).index_add_(0, post, weight.pow(2))
        norm = squares.sqrt().clamp(min=1e-12)
        keep = weight > 0
        indices.append(torch.stack([post[keep], row[keep]]))
        values.append((weight / norm[post])[keep])
    return torch.sparse_coo_tensor(
        torch.cat(indices, 1), torch.cat(values), (posts.posts, table_rows), check_invariants=True
    ).coalesce()


class _Problem:
    """One L2-regularised softmax regression over a sparse matrix's used columns."""

    def __init__(
        self,
        matrix: torch.Tensor,
        labels: torch.Tensor,
        classes: int,
        sample_weights: torch.Tensor,
        label_smoothing: float,
    ) -> None:
        rows, columns = matrix.indices()
        self.used, column = torch.unique(columns, return_inverse=True)
        shape = (matrix.shape[0], len(self.used))
        compact = torch.sparse_coo_tensor(
            torch.stack([rows, column]), matrix.values(), shape, check_invariants=True
        )
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            self.x = compact.coalesce().to_sparse_csr()
            self.x_t = compact.t().coalesce().to_sparse_csr()
        self.labels, self.classes = labels, classes
        target = F.one_hot(labels, classes).float()
        self.target = target * (1 - label_smoothing) + label_smoothing / classes
        self.sample_weights = sample_weights[:, None]

    def solve(self, c: float, start: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Minimise mean(s * loss) + |W|^2 / (2 C n) from `start` (table_rows, classes) and
        `bias` (updated in place); returns the full table and the evaluations made."""
        table = start[self.used].clone()
        n = self.x.shape[0]
        scale = 1.0 / (2.0 * c * n)
        evaluations = [0]
        optimizer = torch.optim.LBFGS(
            [table, bias], max_iter=MAX_ITERATIONS, history_size=10,
            line_search_fn="strong_wolfe", tolerance_grad=TOLERANCE_GRAD,
            tolerance_change=TOLERANCE_CHANGE,
        )  # fmt: skip

        @torch.no_grad()
        def objective() -> torch.Tensor:
            log_p = torch.log_softmax(self.x @ table + bias, dim=1)
            losses = -(self.target * log_p).sum(1, keepdim=True) * self.sample_weights
            residual = (log_p.exp() - self.target) * self.sample_weights / n
            table.grad = self.x_t @ residual + 2 * scale * table
            bias.grad = residual.sum(0)
            evaluations[0] += 1
            return losses.sum() / n + scale * table.pow(2).sum()

        optimizer.step(objective)
        full = torch.zeros_like(start)
        full[self.used] = table
        return full, evaluations[0]


def _problem(posts: PostRows, idf: torch.Tensor, table_rows: int, config: ModelConfig) -> _Problem:
    weights = torch.ones(config.num_classes)
    if config.class_weights is not None:
        weights = torch.tensor(config.class_weights, dtype=torch.float32)
    return _Problem(
        weighted_matrix(posts, idf, table_rows),
        posts.labels,
        config.num_classes,
        weights[posts.labels],
        float(config.label_smoothing),
    )


def _logits(matrix: torch.Tensor, table: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.sparse.mm(matrix, table) + bias


@torch.no_grad()
def load_weights(
    model: NgramClassifier, idf: torch.Tensor, table: torch.Tensor, bias: torch.Tensor
) -> None:
    """Write a fit into the model: the rows' idf, the table, an identity head with the bias."""
    device = model.embedding.weight.device
    model.row_idf.copy_(idf.to(device))
    model.embedding.weight.copy_(table.to(device))
    model.output_projection.weight.copy_(torch.eye(table.shape[1], device=device))
    model.output_projection.bias.copy_(bias.to(device))


def fit_convex(
    model: NgramClassifier,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any],
    config: Optional[ModelConfig] = None,
    world_size: int = 1,
) -> ConvexFit:
    """Fit the convex n-gram `model` in place (see the module's docstring): C chosen on
    `val_loader`'s posts, then (config.extra["ngram_refit"], default True) refitted on both
    loaders' posts. The loaders' order does not matter."""
    config = model.config if config is None else config
    if not model.convex:
        raise ValueError("fit_convex fits a model with extra ngram_fit='convex'")
    check_convex(config, world_size)
    started = time.perf_counter()
    table_rows = model.embedding.num_embeddings
    train, val = post_rows(model, train_loader), post_rows(model, val_loader)
    if not train.posts or not val.posts:
        raise ValueError("the convex fit needs training and validation posts; got none")
    idf = inverse_document_frequency(train, table_rows)
    problem = _problem(train, idf, table_rows, config)
    val_matrix = weighted_matrix(val, idf, table_rows)
    table = torch.zeros(table_rows, config.num_classes)
    bias = torch.zeros(config.num_classes)
    scores: dict[float, float] = {}
    best: Optional[tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]] = None
    evaluations = 0
    for c in presets.ngram_c_grid(config.extra):  # smallest first, each from the previous solution
        table, used = problem.solve(c, table, bias)
        evaluations += used
        logits = _logits(val_matrix, table, bias)
        scores[c] = metrics.macro_f1(logits.argmax(1), val.labels, config.num_classes)
        if best is None or scores[c] > scores[best[0]]:  # a tie keeps the smaller C
            best = (c, table.clone(), bias.clone(), logits)
    assert best is not None  # check_convex: a non-empty grid
    chosen, table, bias, val_logits = best
    refit_posts = 0
    if config.extra.get("ngram_refit", True):
        everything = train + val
        idf = inverse_document_frequency(everything, table_rows)
        refit = _problem(everything, idf, table_rows, config)
        table, used = refit.solve(chosen, table, bias)
        evaluations += used
        refit_posts = everything.posts
    load_weights(model, idf, table, bias)
    return ConvexFit(
        c=chosen,
        val_macro_f1=scores,
        val_logits=val_logits,
        val_labels=val.labels,
        refit_posts=refit_posts,
        seconds=time.perf_counter() - started,
        evaluations=evaluations,
    )


__all__ = ["ConvexFit", "PostRows", "check_convex", "fit_convex", "post_rows"]
