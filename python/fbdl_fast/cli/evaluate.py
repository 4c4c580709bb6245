"""`fbdl-fast evaluate`: metrics of a trained run on labelled posts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from fbdl_fast.cli.common import (
    HelpFormatter,
    UsageError,
    add_run_options,
    check_device,
    load_for_inference,
    say,
)

if TYPE_CHECKING:
    from fbdl_fast.training.ensemble import Ensemble
    from fbdl_fast.training.loading import Run


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fbdl_fast.training.loading import RunEvaluation

    check_device(args.device)
    run = load_for_inference(args)
    result = run.evaluate(
        args.data,
        batch_size=args.batch_size,
        text_column=args.text_column,
        label_column=args.label_column,
        encoding_errors=args.encoding_errors,
        progress_every=args.progress_every,
    )
    if args.report:  # report.md and PNGs: single-label or multi-label, the library writes them
        write_report(args, run, result)
    if not isinstance(result, RunEvaluation):  # multi-label: the figures at the thresholds
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
            return 0
        for key, value in result.summary().items():
            print(f"{key:<16} {value:.4f}" if isinstance(value, float) else f"{key:<16} {value}")
        shown = ", ".join(f"{label} {t:.2f}" for label, t in result.thresholds.items())
        print(f"{'thresholds':<16} {shown}")
        return 0
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print("\n".join(summary_lines(result)))
        print()
        print(result.details.text(), end="")
    return 0


def write_report(args: argparse.Namespace, run: Union[Run, Ensemble], result: Any) -> None:
    """--report DIR: the evaluation's report set (result.details.write), said on stderr."""
    from fbdl_fast.training.ensemble import Ensemble

    members = run.runs if isinstance(run, Ensemble) else [run]
    named = " + ".join(f"{member.path.name} ({member.checkpoint.name})" for member in members)
    title = f"Evaluation of {named} on {Path(args.data).name}"
    folder = report_folder(Path(args.report))
    try:
        written = result.details.write(folder, title)
    except FileExistsError as err:
        raise UsageError(
            f"--report {folder} {err.strerror}; it is not replaced: choose a new or empty "
            "folder, or an earlier report folder"
        ) from None
    say(args, f"report written to {folder}: {', '.join(p.name for p in written)}")


def summary_lines(result: Any) -> list[str]:
    """evaluate's top block for a single-label run (a RunEvaluation). A calibrated
    checkpoint's figures each say which side of its temperature they are on: the loss is the
    cross-entropy of the probabilities predict gives (after it), the ECE and NLL are shown
    before -> after it, with what the temperature was fitted for."""
    details = result.details
    lines = []
    for key, value in result.summary().items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        if details.calibrated is not None and key == "loss":
            shown += " (the cross-entropy of the calibrated probabilities)"
        elif details.calibrated is not None and key == "ece":
            shown = (
                f"{details.reliability.ece:.4f} -> {details.calibrated.ece:.4f} (before -> "
                f"after temperature {details.temperature:.4g}, which train --calibrate fitted to "
                f"minimise the validation NLL; NLL here {details.nll:.4f} -> "
                f"{details.nll_calibrated:.4f})"
            )
        lines.append(f"{key:<12} {shown}")
    return lines


def report_folder(report: Path) -> Path:
    """Where --report REPORT writes: REPORT, or REPORT/evaluation when REPORT is a run folder,
    whose report.md is the training's and is never replaced."""
    from fbdl_fast.runs import EVALUATION_DIR, is_run

    return report / EVALUATION_DIR if is_run(report) else report


def add_parser(subparsers: Any) -> None:
    """Add `evaluate` and its options to the `fbdl-fast` parser."""
    p = subparsers.add_parser(
        "evaluate",
        formatter_class=HelpFormatter,
        help="metrics of a trained run on labelled posts",
        description="Load a run folder and report on a labelled file: loss, accuracy, "
        "macro-F1; per class precision, recall, F1 and support; the confusion matrix (counts "
        "and row-normalised); the most confused pairs; the expected calibration error (15 "
        "bins), before and after the temperature of a calibrated checkpoint (train "
        "--calibrate). Labels the run has never seen are an error.",
    )
    add_run_options(p, "labelled posts file (.csv, .tsv, .jsonl)", labelled=True)
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="also write DIR/report.md, DIR/confusion.png (heat map) and DIR/reliability.png "
        "(reliability diagram), or for a multi-label run DIR/report.md, DIR/per_class.png "
        "(F1 and support) and DIR/thresholds.png (F1 against each class's threshold), as one "
        "set; DIR is created, or an earlier report replaced (a "
        "folder holding other files is refused); a run folder gets them in DIR/evaluation",
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(func=cmd_evaluate)
