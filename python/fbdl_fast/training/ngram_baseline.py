"""The n-gram baseline fitted beside every run: is the model worth more than a linear model?

    baseline = fit_baseline(train, val, tokenizer, label_map, run_config)   # in memory
    baseline.comparison()   # "the n-gram baseline beats this model on validation macro-F1: ..."

`fbdl-fast train` (and fbdl_fast.train) fits, after the model, the n-gram model (models/ngram.py,
`--model ngram`'s defaults: the convex fit of training.ngram_fit, C chosen on the validation
posts and no refit on them; beside a run with a balanced sampler, which the convex fit has no
use for, the fit over epochs of presets.NGRAM_DEFAULTS) on the same split: the same training and
validation posts, the run's tokenizer and its ids, the same seed, class weights, sampler and
max_seq_length. It trains in memory (no second run folder) in seconds, and its validation figures
(of the fit over epochs: at its best epoch, the lowest validation loss) go into the TrainResult,
report.md, the final line, and baseline.json in the run folder (BASELINE_FILE,
`read_baseline`). The global random state is left as it was.

`baseline_skip_reason` says when no baseline is fitted: turned off (`baseline=False`,
`--no-baseline`), a run of the n-gram model itself, a multi-label run (its figures are not one
macro-F1 at the best epoch of a softmax), and a run of several processes (every rank would have to
fit it alike); the report says why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union, cast

from fbdl_fast.config import ModelConfig
from fbdl_fast.files import write_atomic
from fbdl_fast.training import presets

if TYPE_CHECKING:
    import torch

    from fbdl_fast.data import LabelMap, Posts
    from fbdl_fast.models.ngram import NgramClassifier
    from fbdl_fast.tokenizer import Tokenizer
    from fbdl_fast.training.request import TrainRequest
    from fbdl_fast.training.trainer import Trainer

BASELINE_FILE = "baseline.json"  # in the run folder: BaselineResult.to_dict()
logger = logging.getLogger(__name__)

TITLE = presets.BASELINE_TITLES[presets.BASELINE_MODEL]  # "n-gram baseline"


@dataclass
class BaselineResult:
    """The n-gram baseline's figures on the run's validation posts, at its best epoch, beside
    the run's model's (model_title, model_macro_f1: the run's best epoch)."""

    val_macro_f1: float
    val_acc: float
    val_loss: float
    best_epoch: int  # 1-based
    epochs: int
    seconds: float  # the baseline's fit: training and validation
    model_title: str  # the run's model, as people read it ("CNN")
    model_macro_f1: float  # the run's model at its best epoch

    @property
    def wins(self) -> bool:
        """True when the baseline's validation macro-F1 is above the model's."""
        return self.val_macro_f1 > self.model_macro_f1

    def comparison(self) -> str:
        """One line: the model's validation macro-F1 next to the baseline's, plainly saying
        when the baseline is better."""
        if self.wins:
            return (
                f"the {TITLE} beats this model on validation macro-F1: "
                f"{self.val_macro_f1:.4f} vs {self.model_macro_f1:.4f}"
            )
        return (
            f"validation macro-F1 {self.model_macro_f1:.4f} against the {TITLE}'s "
            f"{self.val_macro_f1:.4f}"
        )

    def report_line(self) -> str:
        """report.md's sentence: both figures, the baseline's fit, and the verdict."""
        lead = self.model_macro_f1 - self.val_macro_f1
        verdict = (
            f"**The {TITLE} beats this model** on validation macro-F1"
            if self.wins
            else f"The model is ahead of the {TITLE} by {lead:.4f}"
        )
        return (
            f"Validation macro-F1: {self.model_title} {self.model_macro_f1:.4f}, {TITLE} "
            f"{self.val_macro_f1:.4f} (hashed word and character n-grams, `--model "
            f"{presets.BASELINE_MODEL}`'s defaults, same split, tokenizer and seed; best epoch "
            f"{self.best_epoch} of {self.epochs}, fitted in {self.seconds:.1f}s). {verdict}. "
            f"Trained as a run of its own (`fbdl-fast train --model {presets.BASELINE_MODEL}`), "
            "it can also predict beside this model as one ensemble (`fbdl-fast predict --run "
            "THIS_RUN --run NGRAM_RUN`), which can score above either."
        )

    def to_dict(self) -> dict[str, Any]:
        return {"model": presets.BASELINE_MODEL, **dataclasses.asdict(self)}


def baseline_skip_reason(
    model: str, enabled: bool, multi_label: bool, world_size: int
) -> Optional[str]:
    """Why no baseline is fitted beside a run of `model`, as report.md says it; None: fit it."""
    if not enabled:
        return "turned off (`--no-baseline`, baseline=False)"
    if model == presets.BASELINE_MODEL:
        return "this run's model is the baseline"
    if multi_label:
        return "not fitted for multi-label runs"
    if world_size > 1:
        return f"not fitted when the run trains in {world_size} processes"
    return None


def baseline_config(run_config: ModelConfig) -> ModelConfig:
    """The n-gram model's config beside a run: `--model ngram`'s defaults, not refitted on the
    validation posts (the baseline is judged on them), or beside a run with a balanced sampler
    the fit over epochs (presets.ngram_gradient_defaults), with the run's vocabulary, classes,
    padding id, seed, class weights, sampler and max_seq_length."""
    # The convex fit has no sampler: beside a run with one, the fit over epochs.
    if run_config.sampler != "shuffle":
        values = presets.ngram_gradient_defaults()
    else:
        values = presets.config_defaults(presets.BASELINE_MODEL)
        values["extra"]["ngram_refit"] = False  # only its validation figures are wanted
    shared = ("vocab_size", "num_classes", "pad_token_id", "seed", "max_seq_length")
    values.update({name: getattr(run_config, name) for name in shared})
    values.update(class_weights=run_config.class_weights, sampler=run_config.sampler)
    return ModelConfig(**values)


def fit_baseline(
    train: Posts,
    val: Posts,
    tokenizer: Tokenizer,
    label_map: LabelMap,
    run_config: ModelConfig,
    *,
    model_title: str = "the model",
    model_macro_f1: float = float("nan"),
    device: Optional[Union[str, torch.device]] = None,
) -> BaselineResult:
    """Fit the n-gram baseline on `train`, validated on `val` (one label a post), with the run's
    `tokenizer` and `run_config` (baseline_config); return its best epoch's figures beside the
    model's. In memory; torch's global random state and the trainer's log are left untouched."""
    import torch

    from fbdl_fast.data import build_dataloaders
    from fbdl_fast.models import create_model
    from fbdl_fast.training.trainer import Trainer

    config = baseline_config(run_config)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]), _quiet_trainer():
        train_loader, val_loader = build_dataloaders(train, val, tokenizer, label_map, config)
        model = cast("NgramClassifier", create_model(presets.BASELINE_MODEL, config))
        model.index_char_ngrams(tokenizer)  # its character n-grams: the run's vocabulary's
        trainer = Trainer(model, config, device=device, label_map=label_map)
        history = trainer.fit(train_loader, val_loader)
    best = (history.best_epoch or history.epochs) - 1
    return BaselineResult(
        val_macro_f1=history.val_f1s[best],
        val_acc=history.val_accs[best],
        val_loss=history.val_losses[best],
        best_epoch=best + 1,
        epochs=history.epochs,
        seconds=time.perf_counter() - started,
        model_title=model_title,
        model_macro_f1=model_macro_f1,
    )


def write_baseline(run_dir: Path, result: BaselineResult) -> Path:
    """baseline.json in `run_dir` (atomically): the figures a later report reads back."""
    path = run_dir / BASELINE_FILE
    write_atomic(path, json.dumps(result.to_dict(), indent=2) + "\n")
    return path


def read_baseline(run_dir: Path) -> Optional[BaselineResult]:
    """The BaselineResult recorded in `run_dir`'s baseline.json; None when the run has none.
    ValueError naming the file when it is not one."""
    path = Path(run_dir) / BASELINE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data.pop("model", None)
        return BaselineResult(**data)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path} is not a baseline record ({err}); delete it or retrain") from None


def beside_run(
    request: TrainRequest, trainer: Trainer, train: Posts, val: Posts, tokenizer: Tokenizer
) -> Optional[BaselineResult]:
    """What a training session does once its run is finished and reported, before publishing
    it (rank 0): fit the baseline on the same `train` and `val` posts with the run's
    `tokenizer` and `trainer`'s config, labels and device, beside the model's best epoch in
    trainer.history, unless baseline_skip_reason says not; record it in trainer.run_dir
    (baseline.json) and add the comparison, or why there is none, to its report.md. Returns
    the result, or None when skipped."""
    from fbdl_fast.reports.run_report import RUN_REPORT, add_report_line

    run_dir, history = trainer.run_dir, trainer.history
    reason = baseline_skip_reason(
        request.model, request.baseline, request.multi_label, trainer.world_size
    )
    if reason is not None:
        if run_dir is not None and (run_dir / RUN_REPORT).is_file():
            add_report_line(run_dir, f"No {TITLE}: {reason}.")
        return None
    logger.info("fitting the %s on the same split", TITLE)
    best = (history.best_epoch or history.epochs) - 1
    result = fit_baseline(
        train,
        val,
        tokenizer,
        trainer.label_map,
        trainer.config,
        model_title=presets.TITLES.get(request.model, request.model),
        model_macro_f1=history.val_f1s[best] if history.epochs else float("nan"),
        device=trainer.device,
    )
    logger.info("%s fitted in %.1fs: %s", TITLE, result.seconds, result.comparison())
    if run_dir is not None:
        write_baseline(run_dir, result)
        if (run_dir / RUN_REPORT).is_file():
            add_report_line(run_dir, result.report_line())
    return result


@contextlib.contextmanager
def _quiet_trainer() -> Iterator[None]:
    """The trainer's per-epoch log lines are the run's model's: none for the baseline."""
    trainer_log = logging.getLogger("fbdl_fast.training.trainer")
    level = trainer_log.level
    trainer_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        trainer_log.setLevel(level)


__all__ = [
    "BASELINE_FILE",
    "BaselineResult",
    "baseline_config",
    "baseline_skip_reason",
    "beside_run",
    "fit_baseline",
    "read_baseline",
    "write_baseline",
]
