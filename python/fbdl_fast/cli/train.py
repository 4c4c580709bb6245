"""`fbdl-fast train`: train a model on a posts file and write a run folder."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from fbdl_fast import runs
from fbdl_fast.cli.common import TITLES, HelpFormatter, UsageError, check_device, plural, say
from fbdl_fast.cli.options import (
    CLASS_WEIGHT_CHOICES,
    FOCAL_ALPHA_FROM_WEIGHTS,
    TOKENIZER_STYLES,
    add_train_options,
    apply_model_defaults,
    in_flag_terms,
    model_config,
)
from fbdl_fast.files import sha256_of
from fbdl_fast.runs import PROG, RUN_TOKENIZER

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from fbdl_fast.data import LabelMap, Posts
    from fbdl_fast.tokenizer import Tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int, style: str = "social") -> Tokenizer:
    from fbdl_fast.tokenizer import Tokenizer

    return Tokenizer.train(list(texts), vocab_size=vocab_size, **TOKENIZER_STYLES[style])


def cmd_train(args: argparse.Namespace) -> int:
    from fbdl_fast.training import distributed

    apply_model_defaults(args)
    _check_train_options(args)  # named by their flags, before any data is read
    ctx = distributed.init_from_env(args.device)  # single process: starts nothing
    if not ctx.is_main:  # one voice: rank 0 prints and logs
        args.quiet = True
        logging.getLogger("fbdl_fast").setLevel(logging.WARNING)
    try:
        return _train(args, ctx)
    finally:
        distributed.teardown(ctx)


def _check_train_options(args: argparse.Namespace) -> None:
    """UsageError naming the flag for a train option no run can use: checked before the data."""
    from fbdl_fast.tokenizer import Tokenizer

    if not 0.0 < args.val_fraction < 1.0:
        raise UsageError(
            f"--val-fraction {args.val_fraction} is invalid; expected a value in (0, 1)"
        )
    check_device(args.device)
    _check_balance_options(args)
    try:
        model_config(args, max(args.vocab_size, 2), 2, 0)  # the data sets the real sizes
        if args.tokenizer in TOKENIZER_STYLES:  # else the checkpoint's (--model minilm)
            style = TOKENIZER_STYLES[args.tokenizer]
            Tokenizer.train(["x"], vocab_size=args.vocab_size, **style)
    except ValueError as err:
        raise UsageError(in_flag_terms(str(err))) from None


def _check_balance_options(args: argparse.Namespace) -> None:
    """UsageError for --class-weights / --focal-alpha values no run can use (the labels of a
    weights file are checked once the data is read)."""
    choice = args.class_weights
    if args.multi_label and choice != "none":
        raise UsageError(f"--class-weights {choice}: single-label runs only, not --multi-label")
    if not args.multi_label and args.tune_thresholds:
        raise UsageError("--tune-thresholds tunes --multi-label runs; add --multi-label")
    if args.multi_label and not args.label_separator:
        raise UsageError("--label-separator is empty; expected a character such as |")
    if args.multi_label and getattr(args, "calibrate", False):
        raise UsageError(
            "--calibrate fits a softmax temperature: single-label runs only, not --multi-label "
            "(tune its thresholds with --tune-thresholds)"
        )
    if choice not in CLASS_WEIGHT_CHOICES and not Path(choice).is_file():
        raise UsageError(
            f"--class-weights {choice!r} is neither balanced, none nor an existing file; "
            "accepted: balanced, none, or a JSON / CSV file of label weights"
        )
    alpha = args.focal_alpha
    if alpha is None:
        return
    if args.loss != "focal":
        raise UsageError(f"--focal-alpha {alpha} needs --loss focal (the loss is {args.loss})")
    if alpha == FOCAL_ALPHA_FROM_WEIGHTS:
        if choice == "none":
            raise UsageError(
                "--focal-alpha class-weights takes alpha from --class-weights; pass "
                "--class-weights balanced or FILE"
            )
        return
    try:
        value = float(alpha)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise UsageError(
            f"--focal-alpha {alpha!r} is invalid; accepted: class-weights or a number >= 0"
        )


def _class_weights(
    args: argparse.Namespace, train: Posts, label_map: LabelMap
) -> Optional[list[float]]:
    """--class-weights resolved against the data: None, balanced over the training posts, or
    the file's weights in label_map's order (UsageError naming unknown or missing labels)."""
    from fbdl_fast.data import class_counts, read_class_weights
    from fbdl_fast.training.losses import balanced_class_weights

    if args.class_weights == "none":
        return None
    if args.class_weights == "balanced":
        return balanced_class_weights(class_counts(label_map.encode_all(train), len(label_map)))
    try:
        return read_class_weights(args.class_weights, label_map)
    except ValueError as err:
        raise UsageError(f"--class-weights: {err}") from None


def _train(args: argparse.Namespace, ctx: Any) -> int:
    import contextlib

    from fbdl_fast.training import distributed

    started_all = time.perf_counter()
    # Under torchrun every rank must agree on the folder (the default name holds a timestamp).
    out = Path(
        distributed.broadcast_object(
            args.output or f"runs/{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    )
    with contextlib.ExitStack() as stack:
        # Rank 0 locks the run and checks the folders; every rank stops, or none.
        problem: Optional[str] = None
        notices: list[str] = []
        source = runs.partial_dir(out)
        if ctx.is_main:
            try:
                out = runs.resolve_output(out)
                stack.enter_context(runs.locked(out))
                source, notices = runs.prepare(out, args.resume, args.overwrite)
            except runs.RunError as err:
                problem = str(err)
        problem, out, source = distributed.broadcast_object((problem, out, source))
        if problem:
            raise UsageError(problem)
        for notice in notices:
            say(args, notice)
        return _train_run(args, ctx, out, source, started_all)


def _train_run(
    args: argparse.Namespace, ctx: Any, out: Path, source: Path, started_all: float
) -> int:
    """Train the run `out` (locked and checked by rank 0), continuing `source` with --resume."""
    from fbdl_fast import __version__
    from fbdl_fast.data import (
        LabelMap,
        build_dataloaders,
        describe_labels,
        label_warnings,
        load_posts,
        split_posts,
    )
    from fbdl_fast.models import (
        FINE_TUNED,
        architecture,
        create_model,
        pretrained_model_config,
    )
    from fbdl_fast.models.bert import load_tokenizer
    from fbdl_fast.tokenizer import Tokenizer
    from fbdl_fast.training import distributed
    from fbdl_fast.training.trainer import CompileError, Trainer

    partial = runs.partial_dir(out)
    pretrained = FINE_TUNED[args.model][1] if args.model in FINE_TUNED else None
    separator = args.label_separator if args.multi_label else None
    posts = load_posts(
        args.data,
        args.text_column,
        args.label_column,
        errors=args.encoding_errors,
        label_separator=separator,
    )
    assert posts.labels is not None
    if args.multi_label:
        label_map = LabelMap.from_label_sets(posts.labels)  # type: ignore[arg-type]
    else:
        label_map = LabelMap.from_labels(posts.labels)
    if len(label_map) < 2:
        raise UsageError(
            f"{args.data} has a single label ({label_map.labels[0]!r}); a "
            "classifier needs at least 2 classes"
        )
    # Multi-label posts: a random split (their label sets are too many to stratify on).
    train, val = split_posts(posts, args.val_fraction, args.seed, stratify=not args.multi_label)
    say(
        args,
        f"{len(posts)} posts from {args.data}: {len(train)} train / {len(val)} validation,"
        f" {len(label_map)} classes ({describe_labels(label_map.labels)})",
    )
    if ctx.is_main and not args.multi_label:  # (the warnings speak of one label a post)
        for warning in label_warnings(train, val):  # shown even with --quiet
            print(f"{PROG} train: warning: {args.data}: {warning}", file=sys.stderr)
    if args.resume:  # the run's own tokenizer, not a retrained one
        tokenizer = Tokenizer.from_file(source / RUN_TOKENIZER)
    elif pretrained is not None:  # the checkpoint's vocab.txt, read by every rank
        tokenizer = load_tokenizer(pretrained, spell_emoji=args.spell_emoji)
    else:  # rank 0 trains it, the others receive it
        text = (
            train_tokenizer(train.texts, args.vocab_size, args.tokenizer).to_str()
            if ctx.is_main
            else None
        )
        tokenizer = Tokenizer.from_str(distributed.broadcast_object(text))
    config = model_config(
        args,
        tokenizer.vocab_size,
        len(label_map),
        tokenizer.pad_token_id,
        class_weights=_class_weights(args, train, label_map),
    )
    if pretrained is not None:  # the checkpoint's sizes, and where its weights come from
        config = pretrained_model_config(config, pretrained)
    meta = {
        "model": args.model,
        "model_config": config.to_dict(),
        "data": {
            "source": str(args.data),
            "text_column": args.text_column,
            "label_column": args.label_column,
            "val_fraction": args.val_fraction,
            "sha256": sha256_of(args.data),  # --resume refuses other data under the same name
            "tokenizer_style": args.tokenizer,
            "tokenizer_vocab_size": args.vocab_size,  # asked for (the trained one may be less)
            "label_separator": separator,  # multi-label runs; None: one label a post
            # As asked for (the run's tokenizer.json holds it): --resume refuses a change.
            "spell_emoji": pretrained is not None and args.spell_emoji,
            "train_posts": len(train),
            "val_posts": len(val),
        },
        "training": {
            "accumulate": args.accumulate,
            "world_size": ctx.world_size,
            # the options as given; model_config holds the weights, sampler and decay they gave
            "class_weights": args.class_weights,
            "focal_alpha": args.focal_alpha,
            "sampler": args.sampler,
            "ema": args.ema,
            "calibrate": args.calibrate,
        },
        "fbdl_fast_version": __version__,
    }
    distill = getattr(args, "distill", None)  # `fbdl-fast distill`: its teacher and settings
    if distill is not None:
        meta["distillation"] = distill.meta(label_map)
    if args.resume:
        stored = runs.read_config(source)
        diffs = runs.resume_mismatch(stored, meta)
        if distill is not None:
            diffs += distill.resume_mismatch(stored, meta["distillation"])
        elif "distillation" in stored:  # its loss needs the teacher's logits
            diffs.append(f"the run was made by `{PROG} distill`: resume it with distill")
        if diffs or LabelMap.load(source / runs.RUN_LABELS) != label_map:
            raise UsageError(
                f"--resume continues {out} as it was started, but this command differs: "
                f"{'; '.join(diffs) or 'the labels in ' + str(args.data)}; repeat the "
                f"original options, or train a new run"
            )
        if ctx.is_main and source != partial:  # a finished run: continue a copy, publish it
            runs.continue_finished(out)
    elif ctx.is_main:
        runs.create(partial, meta, tokenizer, label_map)
    distributed.barrier()  # the partial folder exists before any rank trains
    criterion = None
    if distill is not None:  # training targets carry the teacher's logits (cached in the run)
        train_loader, val_loader, criterion = distill.loaders(
            partial, train, val, tokenizer, label_map, config, lambda m: say(args, m)
        )
    else:
        train_loader, val_loader = build_dataloaders(
            train, val, tokenizer, label_map, config, num_replicas=ctx.world_size, rank=ctx.rank
        )
    model = create_model(architecture(args.model), config, pretrained=pretrained)
    trainer = Trainer(
        model,
        config,
        run_dir=partial,  # the trainer writes on rank 0 only
        label_map=label_map,
        device=ctx.device or args.device,
        accumulate_steps=args.accumulate,
        max_nonfinite_steps=args.max_nonfinite,
        compile=args.compile,
        criterion=criterion,
        tokenizer_fingerprint=runs.tokenizer_fingerprint(tokenizer),
        log_every=args.progress_every,
    )
    resume_from = partial / runs.LAST_CHECKPOINT if args.resume else None
    say(
        args,
        f"{'resuming' if resume_from else 'training'} {TITLES[args.model]} "
        f"({sum(p.numel() for p in model.parameters()):,} parameters) on {trainer.device}"
        + (f" x {ctx.world_size} processes" if ctx.world_size > 1 else "")
        + f" for up to {plural(config.max_epochs, 'epoch')}",
    )
    started = time.perf_counter()
    try:
        history = trainer.fit(train_loader, val_loader, resume_from=resume_from)
    except BaseException as exc:
        kept = ctx.is_main and runs.discard(partial)  # nothing trained is worth keeping
        hint = (
            f"; the run so far is kept in {partial}: repeat the command with --resume to "
            f"continue it"
            if kept
            else ""
        )
        if isinstance(exc, (FloatingPointError, CompileError)):
            raise UsageError(f"{exc}{hint}") from exc
        if hint:
            say(args, hint.lstrip("; "))
        raise
    elapsed = time.perf_counter() - started
    if args.multi_label:  # its own ending: thresholds, and metrics of several labels a post
        if ctx.is_main:
            _finish_multi_label(args, trainer, val_loader, partial, out)
            print(
                f"run saved to {out}: {plural(history.epochs, 'epoch')}, training "
                f"{elapsed:.1f}s, total {time.perf_counter() - started_all:.1f}s"
            )
        return 0
    if ctx.is_main:
        fit = _finish_run(args, trainer, val_loader, partial, out, len(train))
        runs.publish(partial, out, args.overwrite or args.resume)
        best = (history.best_epoch or history.epochs) - 1
        skipped = sum(history.skipped_steps)
        print(
            f"run saved to {out}: {plural(history.epochs, 'epoch')}, training "
            f"{elapsed:.1f}s, total {time.perf_counter() - started_all:.1f}s; best epoch "
            f"{best + 1}: val_loss {history.val_losses[best]:.4f}, val_acc "
            f"{history.val_accs[best]:.4f}, val_macro_f1 {history.val_f1s[best]:.4f}"
            + (f"; {skipped} steps skipped (non-finite loss)" if skipped else "")
            + (
                f"; calibrated: temperature {fit.temperature:.4g}, validation ECE "
                f"{fit.ece_before:.4f} -> {fit.ece_after:.4f}"
                if fit is not None
                else ""
            )
        )
    return 0


def _load_for_validation(
    trainer: Any, val_loader: DataLoader, partial: Path
) -> tuple[Path, DataLoader]:
    """Rank 0, once training is done: load the checkpoint evaluate and predict use by default
    (best.pt, else last.pt) into `trainer`; return its path and a loader over all the
    validation posts (under DDP each rank validated its own shard only)."""
    from fbdl_fast.data import make_loader

    config = trainer.config
    if trainer.world_size > 1:
        val_loader = make_loader(
            val_loader.dataset, config.batch_size, shuffle=False, pad_token_id=config.pad_token_id
        )
    chosen = runs.checkpoint_path(partial, None)
    trainer.load_checkpoint(chosen, model_only=True)
    return chosen, val_loader


def _finish_run(
    args: argparse.Namespace,
    trainer: Any,
    val_loader: DataLoader,
    partial: Path,
    out: Path,
    train_posts: int,
) -> Optional[Any]:
    """Rank 0, once training is done: evaluate the checkpoint evaluate and predict use by default
    (best.pt, else last.pt) on the validation posts; with --calibrate fit its temperature there
    and store it in that checkpoint; write report.md and curves.png. Returns the TemperatureFit
    (None without --calibrate)."""
    from fbdl_fast import calibration, checkpoint
    from fbdl_fast.reports.evaluation import evaluate_logits
    from fbdl_fast.reports.run_report import write_run_report

    chosen, val_loader = _load_for_validation(trainer, val_loader, partial)
    logits, labels, _ = trainer.outputs(val_loader)
    fit, evaluation = None, None
    if bool(logits.isfinite().all()):
        fit = calibration.fit_temperature(logits, labels) if args.calibrate else None
        if fit is not None:
            checkpoint.add_calibration(chosen, fit.to_dict())
        names = [str(label) for label in trainer.label_map.labels]
        evaluation = evaluate_logits(
            logits, labels, names, None if fit is None else fit.temperature
        )
    else:  # a diverged model: the run is kept, with its curves, but nothing can be judged
        print(
            f"{PROG} train: warning: {chosen.name} gives NaN or infinite logits on validation "
            f"posts: no per-class report{' and no calibration' if args.calibrate else ''}",
            file=sys.stderr,
        )
    write_run_report(
        partial,
        trainer.history,
        evaluation,
        title=f"Run report: {out.name}",
        description=f"{TITLES[args.model]} trained on {args.data} ({train_posts} training / "
        f"{len(labels)} validation posts, {logits.shape[1]} classes)",
        checkpoint=chosen.name,
    )
    return fit


def _finish_multi_label(
    args: argparse.Namespace, trainer: Any, val_loader: DataLoader, partial: Path, out: Path
) -> None:
    """Rank 0, after training a multi-label run: with --tune-thresholds each class's threshold
    with the best F1 of best.pt's weights on the validation posts (all of them), stored in
    best.pt; the validation metrics at the thresholds; the run published."""
    import torch

    from fbdl_fast.reports.run_report import write_run_report
    from fbdl_fast.training.multilabel import (
        multilabel_counts,
        multilabel_metrics,
        store_thresholds,
        tune_thresholds,
    )

    chosen, val_loader = _load_for_validation(trainer, val_loader, partial)
    logits, labels, _ = trainer._forward_all(val_loader, "validation", need_labels=True)
    probs = torch.sigmoid(logits)
    if args.tune_thresholds:
        trainer.thresholds = tune_thresholds(probs, labels)
        store_thresholds(chosen, trainer.thresholds)
        shown = ", ".join(
            f"{label} {t:.2f}" for label, t in zip(trainer.label_map.labels, trainer.thresholds)
        )
        say(args, f"thresholds tuned on the validation posts, stored in {chosen.name}: {shown}")
    found = multilabel_metrics(multilabel_counts(probs, labels, trainer.thresholds))
    say(
        args,
        f"{chosen.name} on the validation posts: subset accuracy {found['accuracy']:.4f}, "
        f"micro-F1 {found['micro_f1']:.4f}, macro-F1 {found['macro_f1']:.4f}, Hamming loss "
        f"{found['hamming_loss']:.4f}",
    )
    write_run_report(  # the per-epoch figures; no single-label per-class table
        partial,
        trainer.history,
        None,
        title=f"Run report: {out.name}",
        description=f"{TITLES[args.model]} trained on {args.data}, several labels a post "
        f"({len(labels)} validation posts, {logits.shape[1]} classes)",
        checkpoint=chosen.name,
    )
    runs.publish(partial, out, args.overwrite or args.resume)


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
