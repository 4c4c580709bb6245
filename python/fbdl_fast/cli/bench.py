"""`fbdl-fast bench`: run the speed benchmarks (pytest-benchmark) and write a report."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fbdl_fast.cli.common import HelpFormatter, UsageError

if TYPE_CHECKING:
    pass


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib.util
    import json
    import tempfile

    import fbdl_fast
    from fbdl_fast.reports import bench as report

    candidates = (
        [Path(args.benches)]
        if args.benches
        else [Path.cwd() / "benches", Path(fbdl_fast.__file__).resolve().parents[2] / "benches"]
    )
    benches = next((p for p in candidates if p.is_dir()), None)
    if benches is None:
        raise UsageError(
            f"no benches/ folder found (looked in {', '.join(map(str, candidates))})"
            "; the benchmarks ship with the source repository: run this from a checkout "
            "or pass --benches DIR"
        )
    output = Path(args.output)
    command = [sys.executable, "-m", "pytest", str(benches), "--benchmark-only", *args.pytest_args]
    if args.dry_run:
        print(" ".join(command))
        return 0
    if importlib.util.find_spec("pytest_benchmark") is None:
        raise UsageError("pytest-benchmark is not installed; pip install 'fbdl-fast[dev]'")
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "benchmarks.json"
        status = subprocess.call([*command, f"--benchmark-json={raw}"])
        if not raw.is_file():  # pytest stopped before the end of the session
            print(f"bench: pytest exited with {status} and wrote no results", file=sys.stderr)
            return status or 1
        # A failed benchmark does not lose the others: the report holds every one that ran.
        rows = report.rows_from_pytest_benchmark(json.loads(raw.read_text()))
    machine = report.machine_info()
    paths = report.write_report(rows, machine, output)
    print(report.markdown_table(rows, machine))
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    if status != 0:
        print(
            f"bench: some benchmarks failed (pytest exit status {status}; see its output "
            f"above); the report holds the {len(rows)} that ran",
            file=sys.stderr,
        )
    return status


def add_parser(subparsers: Any) -> None:
    """Add `bench` and its options to the `fbdl-fast` parser."""
    p = subparsers.add_parser(
        "bench",
        formatter_class=HelpFormatter,
        help="run the speed benchmarks (pytest-benchmark)",
        description="Run `pytest benches --benchmark-only` on the benches/ folder of this source "
        "tree: kernel and AMP speedups as ratios against the reference layers, "
        "measured on this machine, then write a report (markdown table, JSON with every "
        "figure and the machine's description, PNG bar chart of the speedups). Extra "
        "arguments after -- go to pytest, e.g. `fbdl-fast bench -- -k layer_norm`.",
    )
    p.add_argument(
        "--benches",
        default=None,
        help="benches folder (default: ./benches or the one beside the installed sources)",
    )
    p.add_argument(
        "--output",
        default="bench-report",
        help="folder for report.md, report.json and speedups.png (default: bench-report)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed on to pytest")
    p.set_defaults(func=cmd_bench)
