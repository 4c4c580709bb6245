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
    from fbdl_fast.training.augment import DEFAULT_AUGMENT, AugmentSettings
    from fbdl_fast.training.distill import Distillation
    from fbdl_fast.training.request import TrainError, check_distillable

    _check_student_options(args)
    if args.augment is None:  # a transfer set when the training posts are all there is
        args.augment = DEFAULT_AUGMENT if args.unlabelled is None and args.alpha > 0 else 0
    if args.student_embeddings == "auto" and any(
        getattr(args, field, None) is not None for field, _ in OWN_TOKENIZER_OPTIONS
    ):
        args.student_embeddings = "own"  # sizes asked for: the student's own tokenizer
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
            student=request.model,
            student_layers=args.student_layers,
            student_embeddings=args.student_embeddings,
            augment=AugmentSettings(variants=args.augment),
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    return run_training(args, dataclasses.replace(request, distillation=distillation), config)


# Options of a student's own tokenizer and embeddings (--student-embeddings own).
OWN_TOKENIZER_OPTIONS = (
    ("vocab_size", "--vocab-size"),
    ("tokenizer_style", "--tokenizer"),
    ("input_dim", "--input-dim"),
)


def _check_student_options(args: argparse.Namespace) -> None:
    """UsageError for options that a student reading the teacher's tokenizer cannot use."""
    if args.augment is not None and args.augment < 0:
        raise UsageError(
            f"--augment {args.augment} is invalid; accepted: an integer >= 0 (variants per "
            "training post; 0: none)"
        )
    if args.model == "minilm" or args.student_embeddings != "teacher":
        return
    for field, flag in OWN_TOKENIZER_OPTIONS:
        if getattr(args, field, None) is not None:
            raise UsageError(
                f"{flag} {getattr(args, field)} with --student-embeddings teacher: the student "
                "reads the teacher's tokenizer and its embeddings' width; leave it out, or use "
                "--student-embeddings own"
            )


def add_parser(subparsers: Any) -> None:
    """Add `distill` and its options to the `fbdl-fast` parser."""
    p = subparsers.add_parser(
        "distill",
        formatter_class=HelpFormatter,
        help="train a small model on a trained run's soft targets",
        description="Train --student (transformer, lstm or cnn, with its own tokenizer unless "
        "--student-embeddings teacher; or minilm: --student-layers of a MiniLM teacher's "
        "layers, its embeddings, head and tokenizer) as train does, on alpha * T^2 * "
        "KL(teacher || student at temperature T) + (1 - alpha) * "
        "the loss on the labels (alpha weights the teacher). The teacher is any run folder, "
        "reading the posts with its own tokenizer; its logits are computed once and cached in "
        "the run folder (teacher_logits.pt, reused by --resume). The output is an ordinary run. "
        "train's options that distill refuses are not offered: minilm's fine-tuning options, "
        "--multi-label (its targets are a softmax) and --sampler (shuffle only).",
        epilog="example:\n  fbdl-fast distill --teacher runs/minilm --student cnn --data "
        "posts.csv --unlabelled more_posts.csv --output runs/cnn-distilled\n"
        "  fbdl-fast distill --teacher runs/minilm --student minilm --student-layers 2 --data "
        "posts.csv --augment 4 --output runs/minilm-l2",
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
        "--temperature", type=float, default=2.0, help="softmax temperature T of both, 0.01 to 100"
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
    g.add_argument(
        "--student-layers",
        type=int,
        default=None,
        metavar="K",
        help="--student minilm: K of the teacher's layers, evenly spaced and ending with its "
        "last (K=2 of 6: layers 3 and 6), with its embeddings, head and tokenizer (default: 2)",
    )
    g.add_argument(
        "--student-embeddings",
        choices=("auto", "own", "teacher"),
        default="auto",
        help="cnn, lstm, transformer: own (its own tokenizer and embeddings, drawn at random), "
        "teacher (the teacher's tokenizer and token embeddings, copied; --input-dim is their "
        "width, 384 for MiniLM) or auto: teacher for a MiniLM teacher unless --vocab-size, "
        "--tokenizer or --input-dim is given, else own",
    )
    g.add_argument(
        "--augment",
        type=int,
        default=None,
        metavar="N",
        help="N variants of each training post (words masked, replaced, cut to a span, "
        "reordered), labelled by the teacher as soft targets only; cached in the run folder "
        "(transfer_set.pt) (default: 2 without --unlabelled and with --alpha > 0, else 0)",
    )
    add_train_options(p, student=True)
    p.set_defaults(func=cmd_distill)
