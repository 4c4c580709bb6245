"""`fbdl-fast train`: train a model on a posts file and write a run folder.

The options become a TrainRequest and a ModelConfig template (training.request.train_request),
fbdl_fast.training.session.train_run trains the run, and this module prints its last line. The
library's messages name fields; they are shown here in flag terms (cli.options.in_flag_terms).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fbdl_fast.cli.common import HelpFormatter, UsageError, plural, say
from fbdl_fast.cli.options import add_train_options, in_flag_terms, train_fields
from fbdl_fast.runs import PROG

if TYPE_CHECKING:
    from fbdl_fast.config import ModelConfig
    from fbdl_fast.training.request import TrainRequest
    from fbdl_fast.training.session import TrainResult


def cmd_train(args: argparse.Namespace) -> int:
    """Train the run the options describe; print where it was saved and how it went."""
    request, config = build_request(args)
    return run_training(args, request, config)


def build_request(args: argparse.Namespace) -> tuple[TrainRequest, ModelConfig]:
    """The TrainRequest and ModelConfig template of the options, with --model's defaults for the
    model options left out; UsageError naming the flag of a value no run can use."""
    from fbdl_fast.training.request import train_request

    fields = train_fields(args)
    try:
        return train_request(fields.pop("model"), **fields)
    except ValueError as err:  # TrainError, or ModelConfig's own check of a value
        raise UsageError(in_flag_terms(str(err))) from None


def run_training(args: argparse.Namespace, request: TrainRequest, config: ModelConfig) -> int:
    """train_run, its progress on stderr unless --quiet, its warnings always; the last line on
    stdout (rank 0 only under torchrun)."""
    from fbdl_fast.training.session import train_run

    speak = None if args.quiet else lambda message: say(args, message)
    try:
        with _warnings_on_stderr():
            result = train_run(request, config, say=speak)
    except ValueError as err:  # TrainError, or a library check deeper in (the split's)
        raise UsageError(in_flag_terms(str(err))) from None
    except BaseException as exc:  # e.g. Ctrl-C: say where the run was kept to --resume it
        for note in getattr(exc, "__notes__", ()):
            say(args, in_flag_terms(note))
        raise
    if result.is_main:
        print(final_line(result))
    return 0


def final_line(result: TrainResult) -> str:
    """`run saved to RUN: N epochs, training Xs, total Ys` and, for one label a post, the best
    epoch's figures, skipped steps, the calibration and the n-gram baseline's macro-F1."""
    line = (
        f"run saved to {result.run_dir}: {plural(result.history.epochs, 'epoch')}, training "
        f"{result.training_seconds:.1f}s, total {result.total_seconds:.1f}s"
    )
    if result.multi_label:  # its figures were said on stderr (subset accuracy, F1s)
        return line
    best = result.best
    line += (
        f"; best epoch {result.best_epoch}: val_loss {best['val_loss']:.4f}, val_acc "
        f"{best['val_acc']:.4f}, val_macro_f1 {best['val_macro_f1']:.4f}"
    )
    if result.skipped_steps:
        line += f"; {result.skipped_steps} steps skipped (non-finite loss)"
    fit = result.calibration
    if fit is not None:
        line += f"; calibrated: {fit.summary()}"
    if result.baseline is not None:  # the n-gram baseline fitted on the same split
        line += f"; {result.baseline.comparison()}"
    return line


# The modules whose logged warnings train shows with its prefix.
WARNING_LOGGERS = ("training.session", "data.readers")


@contextlib.contextmanager
def _warnings_on_stderr() -> Iterator[None]:
    """The session's warnings (about the labels, a diverged model) and the posts reader's (labels
    merged, NUL bytes) on stderr as `fbdl-fast train: warning: ...`, shown even with --quiet."""
    loggers = [logging.getLogger(f"fbdl_fast.{name}") for name in WARNING_LOGGERS]
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter(f"{PROG} train: warning: %(message)s"))
    # Their other lines (the reader's count of empty posts) as the CLI's own handler says them.
    plain = logging.StreamHandler(sys.stderr)
    plain.addFilter(lambda record: record.levelno < logging.WARNING)
    plain.setFormatter(logging.Formatter("%(message)s"))
    propagate = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.addHandler(plain)
        logger.propagate = False  # not twice through the CLI's own handler of fbdl_fast
    try:
        yield
    finally:
        for logger, before in zip(loggers, propagate):
            logger.removeHandler(handler)
            logger.removeHandler(plain)
            logger.propagate = before


def add_parser(subparsers: Any) -> None:
    """Add `train` and its options to the `fbdl-fast` parser."""
    p = subparsers.add_parser(
        "train",
        formatter_class=HelpFormatter,
        help="train a model on a CSV/JSONL file",
        description="Split the posts (seeded, stratified), train a tokenizer on the training "
        "texts and a model on the ids, and write a run folder: config.json, "
        "tokenizer.json, label_map.json, best.pt, last.pt, metrics.jsonl, and report.md with "
        "curves.png (per-epoch figures, the validation posts' per-class table).",
        epilog="example:\n  fbdl-fast train --data posts.csv --text-column message "
        "--label-column sentiment --model lstm --epochs 10 --output runs/lstm",
    )
    add_train_options(p)
    p.set_defaults(func=cmd_train)
