"""The end of a training run, on rank 0: what the validation posts say about the checkpoint that
evaluate and predict use by default (best.pt, else last.pt).

    fit = finish_single_label(trainer, val_loader, run_dir, calibrate=True, ...)
    thresholds, metrics = finish_multi_label(trainer, val_loader, run_dir, tune=True, ...)

One label a post: the calibration's temperature, fitted there and stored in the checkpoint, and
the per-class evaluation. Several labels a post: each class's threshold, tuned there and stored,
and the metrics at the thresholds. Both write the run report (report.md, curves.png).
`check_val_split` refuses, before training, a validation split too small to calibrate on;
`load_for_validation` refuses a run whose model is not finite (no epoch ended with finite weights
and validation loss, or NaN weights in the checkpoint): such a run is never published.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, cast

from fbdl_fast import runs
from fbdl_fast.training.request import TrainError

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from fbdl_fast.calibration import TemperatureFit
    from fbdl_fast.data import Posts, PostsDataset
    from fbdl_fast.training.trainer import Trainer

Say = Callable[[str], None]


def check_val_split(val: Posts, calibrate: bool) -> None:
    """With `calibrate`, TrainError (before training) when the validation posts (one label each)
    are too few to fit a calibration temperature on: the minimum in posts and in classes, and
    what they hold."""
    from fbdl_fast.calibration import calibration_split_problem

    if not calibrate:
        return
    assert val.labels is not None
    problem = calibration_split_problem(val.labels)
    if problem is not None:
        raise TrainError(
            f"calibrate=True needs a larger validation split: {problem} in validation; "
            "give more posts or a larger val_fraction, or train without calibration"
        )


def refuse_diverged(trainer: Trainer, run_dir: Path, problem: str) -> TrainError:
    """The TrainError of a run that is not published because its model is not finite:
    `problem` (the epoch and what is not finite), the advice, and whether the run so far is
    kept to resume (it is when run_dir holds a last.pt: the trainer writes only finite ones)."""
    config = trainer.config
    kept = (run_dir / runs.LAST_CHECKPOINT).is_file()
    return TrainError(
        f"training diverged, so the run is not published: {problem}. Lower learning_rate "
        f"(now {config.learning_rate:g}) or gradient_clip (now {config.gradient_clip:g}; 0 is "
        "no clipping), or check the data; "
        + (
            f"the run so far, at its last epoch with finite weights, is kept in {run_dir}: "
            "repeat the command with resume=True to continue it"
            if kept
            else "no epoch ended with finite weights, so nothing was kept"
        )
    )


def check_best_is_finite(trainer: Trainer, run_dir: Path) -> None:
    """TrainError (refuse_diverged) unless some epoch ended with finite weights and a finite
    validation loss, i.e. the run has a best epoch: before the default checkpoint is loaded."""
    history = trainer.history
    if history.best_epoch is None and history.epochs:
        # The last few epochs: a long run's every epoch would not make a one-line message.
        losses = ", ".join(
            f"epoch {i + 1} validation loss {history.val_losses[i]:.4g}"
            for i in range(max(0, history.epochs - 3), history.epochs)
        )
        raise refuse_diverged(
            trainer,
            run_dir,
            f"none of {history.epochs} epoch{'s' if history.epochs != 1 else ''} ended with "
            f"finite weights and a finite validation loss ({losses})",
        )


def load_for_validation(
    trainer: Trainer, val_loader: DataLoader, run_dir: Path
) -> tuple[Path, DataLoader]:
    """Load the checkpoint evaluate and predict use by default (best.pt, else last.pt) of
    `run_dir` into `trainer`; return its path and a loader over all the validation posts (under
    DDP each rank validated its own shard only). TrainError, and nothing loaded, when no epoch
    ended finite; TrainError naming the tensor when the checkpoint's weights are not finite."""
    from fbdl_fast.data import make_loader
    from fbdl_fast.training.finite import nonfinite_tensor

    check_best_is_finite(trainer, run_dir)

    config = trainer.config
    if trainer.world_size > 1:
        val_loader = make_loader(
            cast("PostsDataset", val_loader.dataset),  # as made by make_loader
            config.batch_size,
            shuffle=False,
            pad_token_id=config.pad_token_id,
        )
    chosen = runs.checkpoint_path(run_dir, None)
    trainer.load_checkpoint(chosen, model_only=True)
    tensor = nonfinite_tensor(trainer.model.state_dict())
    if tensor is not None:  # written by an older version, or changed since
        epoch = trainer.history.best_epoch or trainer.history.epochs
        raise refuse_diverged(
            trainer, run_dir, f"{chosen.name} (epoch {epoch}) holds NaN or infinite {tensor}"
        )
    return chosen, val_loader


def finish_single_label(
    trainer: Trainer,
    val_loader: DataLoader,
    run_dir: Path,
    *,
    calibrate: bool,
    name: str,
    trained: str,
    train_posts: int,
    warn: Say,
) -> Optional[TemperatureFit]:
    """Evaluate the default checkpoint on the validation posts; with `calibrate` fit its
    temperature there and store it in that checkpoint; write report.md and curves.png, titled
    by the run's `name` and described as `trained` ("CNN trained on posts.csv") on
    `train_posts`. A model whose logits are not finite gets its curves, and `warn` says what it
    does not get; `warn` also says when the temperature's fit sits at a bound of its search
    range. Returns the TemperatureFit."""
    from fbdl_fast import calibration, checkpoint
    from fbdl_fast.reports.evaluation import evaluate_logits
    from fbdl_fast.reports.run_report import add_report_line, write_run_report

    chosen, val_loader = load_for_validation(trainer, val_loader, run_dir)
    # A model refitted on the validation posts too (the convex n-gram model) is judged and
    # calibrated by the fit that never saw them.
    logits, labels, _ = trainer.held_out_outputs or trainer.outputs(val_loader)
    assert labels is not None
    fit, evaluation = None, None
    if bool(logits.isfinite().all()):
        fit = calibration.fit_temperature(logits, labels) if calibrate else None
        if fit is not None:
            checkpoint.add_calibration(chosen, fit.to_dict())
            at_bound = fit.bound_warning()
            if at_bound is not None:  # stored all the same: the best temperature in its range
                warn(at_bound)
        names = [str(label) for label in trainer.label_map.labels]
        evaluation = evaluate_logits(
            logits, labels, names, None if fit is None else fit.temperature
        )
    else:  # a diverged model: the run is kept, with its curves, but nothing can be judged
        warn(
            f"{chosen.name} gives NaN or infinite logits on validation posts: no per-class "
            f"report{' and no calibration' if calibrate else ''}"
        )
    write_run_report(
        run_dir,
        trainer.history,
        evaluation,
        title=f"Run report: {name}",
        description=f"{trained} ({train_posts} training / {len(labels)} validation posts, "
        f"{logits.shape[1]} classes)",
        checkpoint=chosen.name
        if trainer.held_out_outputs is None
        else f"the fit without them ({chosen.name}: refitted with them)",
    )
    if trainer.fit_summary is not None:  # the C the convex fit chose, below the summary
        add_report_line(run_dir, trainer.fit_summary)
    return fit


def finish_multi_label(
    trainer: Trainer,
    val_loader: DataLoader,
    run_dir: Path,
    *,
    tune: bool,
    name: str,
    trained: str,
    say: Say,
) -> tuple[Optional[list[float]], dict[str, float]]:
    """With `tune`, each class's threshold with the best F1 of the default checkpoint's weights
    on the validation posts (all of them), stored in that checkpoint; the metrics at the
    thresholds, said and written at the top of report.md (with curves.png, as
    finish_single_label's; no single-label per-class table). Returns (the tuned thresholds or
    None: 0.5 each, the metrics)."""
    import torch

    from fbdl_fast.reports.run_report import write_run_report
    from fbdl_fast.training.multilabel import (
        multilabel_counts,
        multilabel_metrics,
        store_thresholds,
        tune_thresholds,
    )

    chosen, val_loader = load_for_validation(trainer, val_loader, run_dir)
    logits, labels, _ = trainer.outputs(val_loader)
    assert labels is not None
    probs = torch.sigmoid(logits)
    if tune:
        trainer.thresholds = tune_thresholds(probs, labels)
        store_thresholds(chosen, trainer.thresholds)
        shown = ", ".join(
            f"{label} {t:.2f}" for label, t in zip(trainer.label_map.labels, trainer.thresholds)
        )
        say(f"thresholds tuned on the validation posts, stored in {chosen.name}: {shown}")
    found = multilabel_metrics(multilabel_counts(probs, labels, trainer.thresholds))
    say(
        f"{chosen.name} on the validation posts: subset accuracy {found['accuracy']:.4f}, "
        f"micro-F1 {found['micro_f1']:.4f}, macro-F1 {found['macro_f1']:.4f}, Hamming loss "
        f"{found['hamming_loss']:.4f}"
    )
    at = "its tuned thresholds" if tune else "threshold 0.5"
    write_run_report(
        run_dir,
        trainer.history,
        None,
        title=f"Run report: {name}",
        description=f"{trained}, several labels a post ({len(labels)} validation posts, "
        f"{logits.shape[1]} classes). {chosen.name} on them at {at}: subset accuracy "
        f"{found['accuracy']:.4f}, micro-F1 {found['micro_f1']:.4f}, macro-F1 "
        f"{found['macro_f1']:.4f}, Hamming loss {found['hamming_loss']:.4f} (the per-epoch "
        "val acc, a subset accuracy, and val F1 are at threshold 0.5)",
        checkpoint=chosen.name,
    )
    thresholds = None if trainer.thresholds is None else list(trainer.thresholds)
    return thresholds, found


__all__ = [
    "check_best_is_finite",
    "check_val_split",
    "finish_multi_label",
    "finish_single_label",
    "load_for_validation",
    "refuse_diverged",
]
