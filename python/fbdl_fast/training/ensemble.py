"""Several trained runs of one task predicting as one: their probabilities combined.

    ensemble = fbdl_fast.load_ensemble(["runs/minilm", "runs/ngram"])
    ensemble.predict(["list directory contents"])[0].label
    ensemble.evaluate("test.csv").macro_f1

An ensemble's probability of a class is the weighted geometric mean of its runs' (each run's own
softmax, calibration temperature included), renormalised over the classes: log p = sum_i w_i
log p_i / sum_i w_i, then softmax. Equal weights by default. Runs that see posts differently
(a fine-tuned MiniLM and the n-gram baseline: other tokenizers, other errors) gain most: on both
real tasks of docs/serving.md the two together score about 2 points of macro-F1 above MiniLM
alone, for the n-gram model's cost on top of MiniLM's (a few percent).

The runs must be single-label and name the same classes in the same order (their label maps
equal): each is loaded as `load_run` loads it, any checkpoint or export, and runs its own
tokenizer and batches; the ensemble puts the rows back in input order before combining.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from fbdl_fast.training.loading import DEFAULT_THREADS, Run, load_run
from fbdl_fast.training.predictor import PathLike, Predictor
from fbdl_fast.training.results import RunEvaluation

if TYPE_CHECKING:
    import torch

    from fbdl_fast.config import ModelConfig
    from fbdl_fast.data import LabelMap, Posts


class Ensemble(Predictor):
    """Runs of one single-label task that predict and evaluate as one (module docstring).

    runs: loaded Runs (`load_run`), two or more; weights: one finite number >= 0 a run, not all
    zero (None: equal). ValueError naming the run for a multi-label run or one whose classes
    differ from the first's."""

    def __init__(self, runs: Sequence[Run], weights: Optional[Sequence[float]] = None) -> None:
        runs = list(runs)
        if len(runs) < 2:
            raise ValueError(f"an ensemble needs at least 2 runs, got {len(runs)}")
        first = runs[0]
        for run in runs:
            if run.config.multi_label:
                raise ValueError(
                    f"run {run.path} is multi-label; an ensemble combines single-label runs"
                )
            if run.label_map.labels != first.label_map.labels:
                raise ValueError(
                    f"run {run.path} has the classes {run.names}, run {first.path} {first.names}; "
                    "an ensemble combines runs of the same classes in the same order"
                )
        self.runs = runs
        self.weights = check_weights(weights, len(runs))

    def __repr__(self) -> str:
        members = ", ".join(f"{str(r.path)!r}: {w:g}" for r, w in zip(self.runs, self.weights))
        return f"Ensemble({{{members}}}, labels={self.label_map.labels!r})"

    # What Predictor reads (the first run's: the others agree on the classes).
    @property
    def meta(self) -> dict[str, Any]:  # type: ignore[override]
        return self.runs[0].meta

    @property
    def config(self) -> ModelConfig:  # type: ignore[override]
        return self.runs[0].config

    @property
    def label_map(self) -> LabelMap:  # type: ignore[override]
        return self.runs[0].label_map

    @property
    def path(self) -> str:
        """The runs' folders, joined by " + " (what evaluate reports as its run)."""
        return " + ".join(str(run.path) for run in self.runs)

    def _probabilities(self, texts: Sequence[str], batch_size: Optional[int]) -> torch.Tensor:
        return self._log_probabilities(texts, batch_size).exp().float()

    def _log_probabilities(self, texts: Sequence[str], batch_size: Optional[int]) -> torch.Tensor:
        """The combination's log-probabilities (float64, rows normalised), in input order."""
        import torch

        # Divided by the largest first: weights near float's maximum must not sum to inf.
        largest = max(self.weights)
        total = sum(weight / largest for weight in self.weights)
        log_p: Optional[torch.Tensor] = None
        for run, weight in zip(self.runs, self.weights):
            if weight == 0:
                continue
            probs = run._probabilities(texts, batch_size).cpu().double()  # ONNX runs: CPU
            # A probability that underflowed to 0 is the smallest normal one, so that no run
            # can veto a class outright (log 0) and the combination stays finite.
            share = weight / largest / total
            term = probs.clamp_min(torch.finfo(probs.dtype).tiny).log() * share
            log_p = term if log_p is None else log_p + term
        assert log_p is not None  # check_weights refuses all-zero weights
        return log_p.log_softmax(dim=1)

    def _evaluate_posts(
        self, posts: Posts, source: str, batch_size: Optional[int], progress_every: Optional[float]
    ) -> RunEvaluation:
        """evaluate's figures of the ensemble (the loss: the cross-entropy of the combined
        probabilities, as a run's); each run logs its own progress."""
        import torch

        from fbdl_fast.reports.evaluation import evaluate_logits

        labels = torch.tensor(self.label_map.encode_all(posts), dtype=torch.long)
        with contextlib.ExitStack() as stack:
            for run in self.runs:
                stack.enter_context(run._progress(progress_every))
            log_p = self._log_probabilities(posts.texts, batch_size)
        # The float64 log-probabilities themselves: their NLL is the loss, with no float32
        # rounding in between.
        details = evaluate_logits(log_p, labels, self.names, 1.0)
        checkpoints = " + ".join(run.checkpoint.name for run in self.runs)
        return RunEvaluation.of(self.path, source, checkpoints, details)


def load_ensemble(
    paths: Iterable[PathLike],
    *,
    checkpoints: Optional[Sequence[Optional[PathLike]]] = None,
    weights: Optional[Sequence[float]] = None,
    device: Optional[str] = None,
    threads: Optional[int] = DEFAULT_THREADS,
) -> Ensemble:
    """Load the run folders `paths` as one Ensemble.

        fbdl_fast.load_ensemble(["runs/minilm", "runs/ngram"], checkpoints=["onnx-int8", None])

    checkpoints: one a run, each as load_run's `checkpoint` ("best", "last", "int8", "onnx",
    "onnx-int8", a path, None: best, else last); None: each run's default. weights: see Ensemble.
    device and threads: as load_run's, for every run."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError("paths is one path; load_ensemble takes a list of run folders")
    if isinstance(checkpoints, (str, bytes, os.PathLike)):
        raise TypeError(
            f"checkpoints is one {type(checkpoints).__name__} ({checkpoints!r}); load_ensemble "
            "takes one a run, as a list: [checkpoint] * number of runs for the same everywhere"
        )
    paths = list(paths)  # any iterable of folders, read once
    chosen = list(checkpoints) if checkpoints is not None else [None] * len(paths)
    if len(chosen) != len(paths):
        raise ValueError(
            f"{len(chosen)} checkpoints for {len(paths)} runs; give one a run, or none"
        )
    check_weights(weights, len(paths))  # refused before any run is loaded
    runs = [
        load_run(Path(path), checkpoint=which, device=device, threads=threads)
        for path, which in zip(paths, chosen)
    ]
    return Ensemble(runs, weights)


def check_weights(weights: Optional[Sequence[float]], count: int) -> list[float]:
    """`weights` checked: one finite number >= 0 a run, not all 0 (None: all 1); ValueError
    naming the first that is not."""
    if weights is None:
        return [1.0] * count
    values = list(weights)
    if len(values) != count:
        raise ValueError(f"{len(values)} weights for {count} runs; give one a run")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"weight {value!r} is not accepted; expected a number >= 0")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"weight {value!r} is not accepted; expected a finite number >= 0")
    if not any(values):
        raise ValueError("every weight is 0; at least one run must count")
    return [float(v) for v in values]
