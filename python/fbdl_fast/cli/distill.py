"""`fbdl-fast distill`: train a small model on a trained run's soft targets."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from fbdl_fast.cli.common import HelpFormatter, UsageError
from fbdl_fast.cli.options import add_train_options, in_flag_terms
from fbdl_fast.cli.train import build_request, run_training


def cmd_distill(args: argparse.Namespace) -> int:
    """train, with the teacher's soft targets (training.distill): the options and what
    distillation cannot do are checked before the teacher is loaded, the teacher before the
    data is read."""
    from fbdl_fast.training.distill import Distillation
    from fbdl_fast.training.request import TrainError, check_distillable

    request, config = build_request(args)
    try:
        check_distillable(request, request.validate(config))
    except TrainError as err:
        raise UsageError(in_flag_terms(str(err))) from None
    try:
        distillation = Distillation.load(
            Path(args.teacher),
            temperature=args.temperature,
            alpha=args.alpha,
            checkpoint=args.teacher_checkpoint,
            device=request.device,
            unlabelled=None if args.unlabelled is None else Path(args.unlabelled),
            text_column=request.text_column,
            encoding_errors=request.encoding_errors,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    return run_training(args, dataclasses.replace(request, distillation=distillation), config)


def add_parser(subparsers: Any) -> None:
    """Add `distill` and its options to the `fbdl-fast` parser."""
    p = subparsers.add_parser(
        "distill",
        formatter_class=HelpFormatter,
        help="train a small model on a trained run's soft targets",
        description="Train --student (transformer, lstm or cnn, with its own tokenizer) as "
        "train does, on alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * "
        "the loss on the labels (alpha weights the teacher). The teacher is any run folder, "
        "reading the posts with its own tokenizer; its logits are computed once and cached in "
        "the run folder (teacher_logits.pt, reused by --resume). The output is an ordinary run. "
        "train's options that distill refuses are not offered: minilm's (a student is trained "
        "from scratch), --multi-label (its targets are a softmax) and --sampler (shuffle only).",
        epilog="example:\n  fbdl-fast distill --teacher runs/minilm --student cnn --data "
        "posts.csv --unlabelled more_posts.csv --output runs/cnn-distilled",
    )
    # Its own group: the options group lists the required --data first, as every command does.
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", required=True, help="run folder of the teacher (any model)")
    g.add_argument(
        "--teacher-checkpoint",
        default=None,
        metavar="best|last|PATH",
        help="the teacher's weights (default: best, else last)",
    )
    g.add_argument(
        "--temperature", type=float, default=2.0, help="softmax temperature T of both, > 0"
    )
    g.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="weight of the teacher's soft targets, in [0, 1]; 1 - alpha weights the labels",
    )
    g.add_argument(
        "--unlabelled",
        default=None,
        metavar="FILE",
        help="more posts (its --text-column; labels ignored) trained on the teacher's soft "
        "targets only",
    )
    add_train_options(p, student=True)
    p.set_defaults(func=cmd_distill)
