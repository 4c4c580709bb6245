"""`fbdl-fast`: the command line (demo, train, evaluate, predict, export, distill, bench).

    fbdl-fast demo                                   # the reference models (+ MiniLM), compared
    fbdl-fast train --data posts.csv --output runs/first
    fbdl-fast train --model minilm --data posts.csv --output runs/m   # fine-tune all-MiniLM-L6-v2
    fbdl-fast evaluate --run runs/first --data test.csv [--json] [--report DIR]
    fbdl-fast predict --run runs/first --text "free prize!!! https://bit.ly/x" [--output p.jsonl]
    fbdl-fast export --run runs/first --format onnx   # or int8; then predict --checkpoint onnx
    fbdl-fast distill --teacher runs/m --student cnn --data posts.csv --output runs/cnn-d
    fbdl-fast bench                                  # pytest benches --benchmark-only

A run folder holds everything `evaluate` and `predict` need: config.json, tokenizer.json,
label_map.json, best.pt / last.pt and metrics.jsonl; train adds report.md and curves.png for
people (fbdl_fast.report). Its life cycle (one writer at a time, built
under `.NAME.partial` and renamed when done, --resume, --overwrite, loading and checking it) is
fbdl_fast.runs; this module parses options, calls it and prints.

`fbdl-fast train` runs unchanged under torchrun (`torchrun --nproc-per-node N -m fbdl_fast train
...`): gloo on CPUs, nccl on GPUs, --batch-size posts per process, rank 0 alone writes the run
folder and prints; the run folder must be on storage every process can read (for --resume).

User errors (a missing file, a bad column, an unknown label, a bad option value) print one line on
stderr and exit with status 2, and so does a full disk ("no space left on device while writing
FILE"); anything else is a bug and keeps its traceback. SIGTERM unwinds like Ctrl-C (status 143):
no temporary file is left, and an interrupted run keeps its partial folder. Heavy imports (torch)
happen inside the commands, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from fbdl_fast.cli.common import HelpFormatter, OneLineErrorParser, quiet_stdout, user_errors
from fbdl_fast.files import disk_full
from fbdl_fast.runs import PROG

if TYPE_CHECKING:
    pass

from fbdl_fast.cli import bench, demo, distill, evaluate, export, predict, train


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=PROG,
        formatter_class=HelpFormatter,
        description="Train, evaluate and use text classifiers for social-media posts.",
        epilog="examples:\n  fbdl-fast demo\n  fbdl-fast train --data posts.csv --output "
        "runs/first\n  fbdl-fast evaluate --run runs/first --data test.csv\n  "
        "fbdl-fast predict --run runs/first --text 'win a FREE phone!!!'\n\n"
        "`fbdl-fast COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo.add_parser(sub)
    train.add_parser(sub)
    distill.add_parser(sub)
    evaluate.add_parser(sub)
    predict.add_parser(sub)
    export.add_parser(sub)
    bench.add_parser(sub)
    return parser


def _version() -> str:
    from fbdl_fast import __version__

    return f"{PROG} {__version__}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error, else pytest's for bench)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors: argparse's own status
        return int(exit_.code or 0)
    if args.command == "bench" and args.pytest_args[:1] == ["--"]:
        args.pytest_args = args.pytest_args[1:]
    # The trainer logs one line per epoch; show them on stderr for this command only (a global
    # basicConfig would outlive main() when it is called in-process, e.g. from tests).
    logger = logging.getLogger("fbdl_fast")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    if not getattr(args, "quiet", False):
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    threads = getattr(args, "threads", None)
    previous_threads = _set_threads(threads) if threads else None
    # SIGTERM (kill, timeout, a scheduler) unwinds like Ctrl-C: temporary files are removed and
    # an interrupted run keeps its partial folder. Signal handlers live in the main thread only.
    previous_term = (
        signal.signal(signal.SIGTERM, _terminate)
        if threading.current_thread() is threading.main_thread()
        else None
    )
    try:
        return int(args.func(args))
    except BrokenPipeError:  # stdout's reader went away (`| head`): it has all it wants
        quiet_stdout()
        return 0
    except user_errors() as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{PROG} {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except Exception as err:  # a full disk under another name (torch wraps the OSError)
        full = disk_full(err)
        if full is None:
            raise
        print(
            f"{PROG} {args.command}: error: no space left on device while writing "
            f"{full.filename or 'a file'}",
            file=sys.stderr,
        )
        return 2
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        if previous_threads is not None:  # main() may run in-process: leave torch as found
            _set_threads(previous_threads)
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


class Terminated(BaseException):
    """SIGTERM arrived; a BaseException so that no `except Exception` swallows it."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def _set_threads(n: int) -> int:
    """Set torch's intra-op CPU threads; returns the previous setting."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    return previous


if __name__ == "__main__":
    raise SystemExit(main())
