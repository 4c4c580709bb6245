"""Pieces every subcommand shares: the user-error type, progress on stderr, option types and
the options of commands that read a run folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional, Union

from fbdl_fast.training.loading import DEFAULT_THREADS, MAX_THREADS, SERVED_FORMATS
from fbdl_fast.training.predictor import MAX_BATCH_SIZE

if TYPE_CHECKING:
    from fbdl_fast.training.ensemble import Ensemble
    from fbdl_fast.training.loading import Run


# --device, worded the same in every command that has it (train and distill: options.py).
DEVICE_HELP = "cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)"


class UsageError(Exception):
    """A problem with what the user asked for; reported on stderr with exit status 2."""


def user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [UsageError, ValueError, OSError]
    # CheckpointError can only come from an imported fbdl_fast.checkpoint; importing it here
    # would load torch for every command, --help included.
    if "fbdl_fast.checkpoint" in sys.modules:
        errors.append(sys.modules["fbdl_fast.checkpoint"].CheckpointError)
    return tuple(errors)


def quiet_stdout() -> None:
    """After a BrokenPipeError on stdout (`... | head`: the reader has all it wants), point
    stdout at the null device, so that Python's flush at exit fails no second time."""
    # In-process, stdout may be no file (pytest's capture): nothing to redirect then.
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def say(args: argparse.Namespace, message: str) -> None:
    """Progress for people, on stderr (stdout carries results: tables, JSON, predictions)."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def text_column(args: argparse.Namespace, meta: dict[str, Any]) -> str:
    """--text-column, else the text column the run was trained with (its config.json)."""
    return str(args.text_column or meta.get("data", {}).get("text_column", "text"))


def check_device(name: Optional[str]) -> None:
    """UsageError unless `--device name` is a device this machine has (None: the default): the
    library's check (training.devices.check_device), its `device=` said as the flag."""
    from fbdl_fast.training.devices import check_device as check_device_name

    try:
        check_device_name(name)
    except ValueError as err:
        raise UsageError(str(err).replace("device=", "--device ")) from None


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def load_for_inference(args: argparse.Namespace) -> Union[Run, Ensemble]:
    """fbdl_fast.load_run of --run with --checkpoint (best, last, a path, int8, onnx or
    onnx-int8; the last three on the CPU only), --device and --threads; several --run folders
    are one fbdl_fast.load_ensemble, each with its --checkpoint (one given: every run's) and
    --weights."""
    from fbdl_fast.training.ensemble import load_ensemble
    from fbdl_fast.training.loading import load_run

    runs, checkpoints = args.run, args.checkpoint or [None]
    if len(checkpoints) not in (1, len(runs)):
        raise UsageError(
            f"--checkpoint given {len(checkpoints)} times for {plural(len(runs), 'run')}; "
            "give it once (every run's) or once a run, in the same order"
        )
    checkpoints = checkpoints * len(runs) if len(checkpoints) == 1 else checkpoints
    for which in checkpoints:
        if which in SERVED_FORMATS and args.device not in (None, "cpu"):
            raise UsageError(
                f"--checkpoint {which} runs on the CPU only; drop --device {args.device} or pass "
                "--device cpu"
            )
    if args.weights is not None and len(args.weights) != len(runs):
        raise UsageError(
            f"--weights gives {plural(len(args.weights), 'weight')} for "
            f"{plural(len(runs), 'run')}; give one a run"
        )
    if len(runs) == 1:
        if args.weights is not None:
            raise UsageError("--weights combines several --run folders; one was given")
        return load_run(
            Path(runs[0]), checkpoint=checkpoints[0], device=args.device, threads=args.threads
        )
    return load_ensemble(
        [Path(run) for run in runs],
        checkpoints=checkpoints,
        weights=args.weights,
        device=args.device,
        threads=args.threads,
    )


def weight_list(text: str) -> list[float]:
    """--weights: comma-separated numbers, each as fbdl_fast.load_ensemble accepts a weight."""
    from fbdl_fast.training.ensemble import check_weights

    try:
        values = [float(part) for part in text.split(",")]
        return check_weights(values, len(values))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of finite numbers >= 0, not all 0"
        ) from None


# argparse's wording for its built-in option types, and what each accepts.
BUILT_IN_TYPES = {"int": "an integer", "float": "a number"}


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr, status 2, as every other
    user error: the option, the value and what is accepted, then where the usage is. argparse's
    own prints the whole usage block (thirty lines for train) before the line that matters."""

    def error(self, message: str) -> NoReturn:
        match = re.fullmatch(r"(argument \S+: )invalid (\w+) value: (.*)", message)
        if match and match.group(2) in BUILT_IN_TYPES:
            head, kind, value = match.groups()
            message = f"{head}{value} is not {BUILT_IN_TYPES[kind]}"
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' line breaks; append a default unless the help already says it, or the
    option is a switch (--quiet, --no-spell-emoji: its help says what it does, and "(default:
    True)" on a --no-... flag reads as the opposite of the truth) or has no value by default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        switch = action.nargs == 0  # store_true, store_false, store_const
        # by identity: a default of 0 (== False) is a value to state
        unset = any(action.default is v for v in (None, False, argparse.SUPPRESS))
        unset = unset or action.default == []
        if "default" in text or switch or unset:
            return text
        return f"{text} (default: %(default)s)".lstrip()


def add_run_options(p: argparse.ArgumentParser, data_help: str, *, labelled: bool) -> None:
    """The options of a command that reads a run folder and a posts file: --run and --data
    first (--data required when the posts must be `labelled`, as evaluate's), then the columns
    (--label-column only for labelled posts: predict reads none), batch size, checkpoint,
    device, encoding, progress and threads."""
    p.add_argument(
        "--run",
        required=True,
        action="append",
        help="run folder written by `fbdl-fast train`; repeat it to combine several runs of "
        "the same classes as one ensemble (their probabilities' weighted geometric mean)",
    )
    p.add_argument("--data", required=labelled, default=None, help=data_help)
    p.add_argument(
        "--text-column",
        default=None,
        help="text column (default: the one the run was trained with)",
    )
    if labelled:
        p.add_argument(
            "--label-column",
            default=None,
            help="label column (default: the one the run was trained with)",
        )
    p.add_argument(
        "--batch-size",
        type=batch_size,
        default=None,
        help="posts per batch (default: the run's batch size)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        action="append",
        metavar="best|last|int8|onnx|onnx-int8|PATH",
        help="weights to use: best.pt or last.pt of the run, int8: its model.int8.pt (`export "
        "--format int8`), onnx: its model.onnx in onnxruntime (`export --format onnx`), "
        "onnx-int8: its model.int8.onnx (`export --format onnx-int8`; these three CPU only), or "
        "a checkpoint file (default: best, else last); with several --run, once for all or "
        "once a run, in their order",
    )
    p.add_argument(
        "--weights",
        type=weight_list,
        default=None,
        metavar="W1,W2,...",
        help="with several --run: each run's weight in the ensemble, in their order (default: "
        "equal)",
    )
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    add_encoding_option(p)
    add_progress_option(p)
    add_threads_option(p)


def add_progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress-every",
        type=non_negative_seconds,
        default=30.0,
        metavar="SECONDS",
        help="when stderr is not a terminal (a log file), a progress line (posts/s, ETA) every "
        "SECONDS; 0: after every batch",
    )


def non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):  # also NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds >= 0")
    return value


def add_encoding_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--encoding-errors",
        choices=["strict", "replace", "ignore"],
        default="strict",
        help="invalid UTF-8 in --data: strict = error naming the line, replace = U+FFFD, "
        "ignore = drop the bytes",
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def batch_size(text: str) -> int:
    """--batch-size of the commands that read a run: a positive integer up to the library's
    MAX_BATCH_SIZE, refused here so that the message names the flag, not `batch_size=`."""
    value = positive_int(text)
    if value > MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_BATCH_SIZE} posts a batch")
    return value


# --threads: one intra-op thread by default (torchrun does the same: OMP_NUM_THREADS=1), as
# in the library (fbdl_fast.training.loading.DEFAULT_THREADS). The batches are built in the main
# process (no loader workers), so extra torch threads only split each small matrix product, and
# on a busy machine they wait on each other: docs/library.md has the measurement
# (benches/studies/tour_vs_cli.py).


def thread_count(text: str) -> int:
    """--threads: a positive integer, at most MAX_THREADS (torch's count is 32-bit)."""
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_THREADS} threads")
    return value


def add_threads_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--threads",
        type=thread_count,
        default=DEFAULT_THREADS,
        help="CPU threads torch uses inside each operation (default: %(default)s: on a 2-core "
        "machine with another job running, 2 threads took 1.7x as long; docs/library.md); more "
        "can help a large model on a many-core machine with nothing else running",
    )
