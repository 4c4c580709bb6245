"""What a trained run's predictions and evaluations are: the records `Run.predict` and
`Run.evaluate` (fbdl_fast.training.loading) return, and `fbdl-fast predict`/`evaluate` print."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from fbdl_fast.data import Label
    from fbdl_fast.reports.evaluation import Evaluation
    from fbdl_fast.reports.multilabel_report import MultiLabelDetails


@dataclass(frozen=True)
class Prediction:
    """One text's prediction (Run.predict): the most probable class and every class's
    probability, and for multi-label runs the classes at or above their thresholds.

    Example: Prediction(text='so happy today', label='positive', probability=0.91,
    probabilities={'negative': 0.03, 'positive': 0.91, ...}, labels=None, ...)."""

    text: str
    label: Label  # the most probable class
    probability: float  # its probability
    probabilities: dict[str, float]  # every class (label as str -> probability), in class order
    # Multi-label runs: the classes at or above their threshold (possibly none), in class
    # order, and their probabilities; None for single-label runs.
    labels: Optional[tuple[Label, ...]] = None
    label_probabilities: Optional[tuple[float, ...]] = None


@dataclass(frozen=True)
class RunEvaluation:
    """A single-label run's figures on labelled posts: what `fbdl-fast evaluate --json` prints.

    `details` holds the per-class scores, the confusion matrix, the most confused pairs and the
    calibration (fbdl_fast.reports.evaluation.Evaluation: `.text()`, `.write(folder)`)."""

    # The run's folder; an ensemble's is its runs' folders joined in one str (Ensemble.path).
    run: Union[Path, str]
    data: str  # the posts file as given, or the Posts' source
    checkpoint: str  # the file the weights came from (best.pt, model.onnx, ...)
    num_samples: int
    loss: float  # mean cross-entropy of predict's probabilities (RunEvaluation.of)
    accuracy: float
    macro_f1: float
    ece: float  # expected calibration error of the probabilities predict gives
    details: Evaluation = field(repr=False)

    @classmethod
    def of(
        cls, run: Union[Path, str], data: str, checkpoint: str, details: Evaluation
    ) -> RunEvaluation:
        """The record of `details`: its accuracy, macro-F1 and ECE lifted out, and as the loss
        the cross-entropy of the probabilities predict gives (calibrated where the run is):
        the same figure for a run and an ensemble, whatever criterion a run trained with
        (label smoothing, focal loss and class weights are training's choices, not the
        test's)."""
        loss = details.nll if details.nll_calibrated is None else details.nll_calibrated
        return cls(
            run=run,
            data=data,
            checkpoint=checkpoint,
            num_samples=len(details.labels),
            loss=loss,
            accuracy=details.accuracy,
            macro_f1=details.macro_f1,
            ece=details.ece,
            details=details,
        )

    def summary(self) -> dict[str, Any]:
        """The headline figures, as `fbdl-fast evaluate` prints them first."""
        names = ("run", "data", "checkpoint", "num_samples", "loss", "accuracy", "macro_f1", "ece")
        values = {name: getattr(self, name) for name in names}
        return {**values, "run": str(self.run)}

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: `fbdl-fast evaluate --json`'s object."""
        return {**self.summary(), **self.details.to_dict()}


@dataclass(frozen=True)
class MultiLabelEvaluation:
    """A multi-label run's figures on labelled posts at its thresholds: what `fbdl-fast evaluate
    --json` prints (subset accuracy: the posts whose whole label set is right). `details`: per
    class (fbdl_fast.reports.multilabel_report.MultiLabelDetails: `.write(folder)`)."""

    run: Path
    data: str
    checkpoint: str
    num_samples: int
    loss: float
    subset_accuracy: float
    micro_f1: float
    macro_f1: float
    hamming_loss: float
    thresholds: dict[str, float]  # label -> threshold used (0.5 where none was tuned)
    details: MultiLabelDetails = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """Every figure but the thresholds, as `fbdl-fast evaluate` prints them."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del values["thresholds"], values["details"]
        return {**values, "run": str(self.run)}

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: `fbdl-fast evaluate --json`'s object."""
        return {**self.summary(), "thresholds": dict(self.thresholds), **self.details.to_dict()}


__all__ = ["MultiLabelEvaluation", "Prediction", "RunEvaluation"]
