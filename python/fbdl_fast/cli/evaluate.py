"""`fbdl-fast evaluate`: metrics of a trained run on labelled posts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fbdl_fast.cli.common import (
    HelpFormatter,
    UsageError,
    add_run_options,
    check_device,
    load_for_inference,
    read_posts,
    run_loader,
    say,
)
from fbdl_fast.runs import Run

if TYPE_CHECKING:
    from fbdl_fast.data import Posts


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fbdl_fast.reports.evaluation import evaluate_logits

    check_device(args.device)
    run = load_for_inference(args)
    posts = read_posts(args, run.meta, with_labels=True)
    if run.config.multi_label:
        return _evaluate_multi_label(args, run, posts)
    labels = run.label_map.encode_all(posts)  # unknown label: error naming it and its line
    batch_size = args.batch_size or run.config.batch_size
    run.trainer.log_every = args.progress_every
    logits, ids, loss = run.trainer.outputs(run_loader(run, posts.texts, labels, batch_size))
    assert ids is not None
    names = [str(label) for label in run.label_map.labels]
    temperature = run.trainer.temperature
    evaluation = evaluate_logits(logits, ids, names, temperature)
    summary = {
        "run": str(run.path),
        "data": str(args.data),
        "checkpoint": run.checkpoint.name,
        "num_samples": len(ids),
        "loss": loss,
        "accuracy": evaluation.accuracy,
        "macro_f1": evaluation.macro_f1,
        "ece": evaluation.ece,
    }
    if args.report:
        title = f"Evaluation of {run.path.name} ({run.checkpoint.name}) on {Path(args.data).name}"
        written = evaluation.write(Path(args.report), title)
        say(args, f"report written to {args.report}: {', '.join(p.name for p in written)}")
    if args.json:
        print(json.dumps({**summary, **evaluation.to_dict()}, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:<12} {value:.4f}" if isinstance(value, float) else f"{key:<12} {value}")
        print()
        print(evaluation.text(), end="")
    return 0


def _evaluate_multi_label(args: argparse.Namespace, run: Run, posts: Posts) -> int:
    """evaluate of a multi-label run: loss, subset accuracy, micro/macro-F1 and Hamming loss at
    the checkpoint's thresholds (0.5 where none were tuned)."""
    from fbdl_fast.training.multilabel import DEFAULT_THRESHOLD

    if getattr(args, "report", None):
        raise UsageError(
            f"--report: {run.path} is a multi-label run; its report is the printed metrics "
            "(--json for all of them)"
        )
    targets = run.label_map.multi_hot(posts)  # unknown label: error naming it and its line
    batch_size = args.batch_size or run.config.batch_size
    run.trainer.log_every = args.progress_every
    result = run.trainer.evaluate(run_loader(run, posts.texts, targets, batch_size))  # type: ignore[arg-type]
    thresholds = run.trainer.thresholds or [DEFAULT_THRESHOLD] * len(run.label_map)
    report = {
        "run": str(run.path),
        "data": str(args.data),
        "checkpoint": run.checkpoint.name,
        "num_samples": int(result["num_samples"]),
        "loss": result["loss"],
        "subset_accuracy": result["accuracy"],
        "micro_f1": result["micro_f1"],
        "macro_f1": result["macro_f1"],
        "hamming_loss": result["hamming_loss"],
    }
    if args.json:
        names = [str(label) for label in run.label_map.labels]
        print(json.dumps({**report, "thresholds": dict(zip(names, thresholds))}, indent=2))
        return 0
    for key, value in report.items():
        print(f"{key:<16} {value:.4f}" if isinstance(value, float) else f"{key:<16} {value}")
    shown = ", ".join(f"{label} {t:.2f}" for label, t in zip(run.label_map.labels, thresholds))
    print(f"{'thresholds':<16} {shown}")
    return 0


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
    add_run_options(p)
    p.add_argument("--data", required=True, help="labelled posts file (.csv, .tsv, .jsonl)")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="also write DIR/report.md, DIR/confusion.png (heat map) and DIR/reliability.png "
        "(reliability diagram); DIR is created, files in it replaced",
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(func=cmd_evaluate)
