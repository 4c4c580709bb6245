"""`fbdl-fast distill`: train a small model on a trained run's soft targets."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fbdl_fast.cli.common import HelpFormatter, UsageError, check_device
from fbdl_fast.cli.options import add_train_options
from fbdl_fast.cli.train import cmd_train

if TYPE_CHECKING:
    pass


def cmd_distill(args: argparse.Namespace) -> int:
    """train, with the teacher's soft targets (fbdl_fast.distill): the teacher and the options
    of distillation are checked before the data is read."""
    from fbdl_fast.training.distill import Distillation

    if args.multi_label:
        raise UsageError("--multi-label: distill trains single-label students only")
    if args.sampler != "shuffle":
        raise UsageError(f"--sampler {args.sampler}: distill draws its posts with shuffle only")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("distill runs in one process; start it without torchrun")
    check_device(args.device)
    try:
        args.distill = Distillation.load(
            Path(args.teacher),
            temperature=args.temperature,
            alpha=args.alpha,
            checkpoint=args.teacher_checkpoint,
            device=args.device,
            unlabelled=None if args.unlabelled is None else Path(args.unlabelled),
            text_column=args.text_column,
            encoding_errors=args.encoding_errors,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    return cmd_train(args)


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
        "the run folder (teacher_logits.pt, reused by --resume). The output is an ordinary run.",
        epilog="example:\n  fbdl-fast distill --teacher runs/minilm --student cnn --data "
        "posts.csv --unlabelled more_posts.csv --output runs/cnn-distilled",
    )
    p.add_argument("--teacher", required=True, help="run folder of the teacher (any model)")
    p.add_argument(
        "--teacher-checkpoint",
        default=None,
        metavar="best|last|PATH",
        help="the teacher's weights (default: best, else last)",
    )
    p.add_argument(
        "--temperature", type=float, default=2.0, help="softmax temperature T of both, > 0"
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="weight of the teacher's soft targets, in [0, 1]; 1 - alpha weights the labels",
    )
    p.add_argument(
        "--unlabelled",
        default=None,
        metavar="FILE",
        help="more posts (its --text-column; labels ignored) trained on the teacher's soft "
        "targets only",
    )
    add_train_options(p, student=True)
    p.set_defaults(func=cmd_distill)
