"""What verifying a run against its manifest costs a load: hash time against load time.

Every load hashes the bytes it reads (fbdl_fast.manifest.parse_verified): the checkpoint is
mapped once, a second thread hashes the mapping while torch.load reads the same open file. This
study times, in one process, on a MiniLM run (best.pt about 269 MB: the weights and the
optimizer's state), in turns so that a busy machine slows every variant alike:

- the checkpoint read: torch.load(path) with no check (what a load was before the manifest);
  torch.load(path, mmap=True) with no check (the read the manifest check now rides on);
  read_checkpoint (mapped, hashed in parallel, checked); SHA-256 of the file alone;
- load_run (config, tokenizer, label map, model built, best.pt's weights loaded): as shipped,
  and with the manifest check switched off (its hash and comparison replaced by no-ops).

The cost of the check is load_run's median with it against load_run's median without it; its
CPU time (process time, both threads) is given too. Without --run it first trains a one-epoch
MiniLM run on 16 posts (a minute or two) in a scratch folder.

    python benches/studies/manifest_cost.py [--run RUN] [--turns 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import torch

import fbdl_fast
from fbdl_fast import manifest
from fbdl_fast.checkpoint import read_checkpoint


def make_run(folder: Path) -> Path:
    """A one-epoch MiniLM run on 16 short posts: a full-size best.pt in about a minute."""
    data = folder / "posts.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(16):
            writer.writerow([f"post number {i} about topic {i % 4}", f"class{i % 4}"])
    run = folder / "minilm"
    fbdl_fast.train(data, output=run, model="minilm", epochs=1, batch_size=8, say=lambda line: None)
    return run


def timed(step: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a MiniLM run folder (default: train one)")
    parser.add_argument("--turns", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (load_run's default)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scratch = tempfile.TemporaryDirectory()
    run = args.run or make_run(Path(scratch.name))
    best = run / "best.pt"

    def unverified_load_run() -> None:
        with (
            mock.patch.object(manifest, "_sha256_view", lambda data: ""),
            mock.patch.object(manifest, "_check_digest", lambda *a: None),
        ):
            fbdl_fast.load_run(run, device="cpu")

    variants: dict[str, Callable[[], Any]] = {
        "torch.load(path), no check (before the manifest)": lambda: torch.load(
            best, map_location="cpu", weights_only=True
        ),
        "torch.load(path, mmap=True), no check": lambda: torch.load(
            best, map_location="cpu", weights_only=True, mmap=True
        ),
        "read_checkpoint: mapped, hashed in parallel, checked": lambda: read_checkpoint(best),
        "SHA-256 of best.pt alone": lambda: hashlib.sha256(best.read_bytes()).hexdigest(),
        "load_run, manifest check off": unverified_load_run,
        "load_run (as shipped)": lambda: fbdl_fast.load_run(run, device="cpu"),
    }
    walls: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    for step in variants.values():  # a warm-up turn: page cache, imports, allocator
        step()
    for _ in range(args.turns):
        for name, step in variants.items():
            wall, cpu = timed(step)
            walls[name].append(wall)
            cpus[name].append(cpu)

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} torch thread(s), {args.turns} turns; best.pt "
          f"{best.stat().st_size / 1e6:.1f} MB")  # fmt: skip
    print(f"{'variant':55s} {'wall median':>12s} {'range':>15s} {'CPU median':>11s}")
    for name in variants:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        print(f"{name:55s} {wall:10.3f} s {min(walls[name]):6.3f}-{max(walls[name]):.3f} s "
              f"{cpu:9.3f} s")  # fmt: skip
    shipped = statistics.median(walls["load_run (as shipped)"])
    unchecked = statistics.median(walls["load_run, manifest check off"])
    hashing = statistics.median(walls["SHA-256 of best.pt alone"])
    cpu_added = statistics.median(cpus["load_run (as shipped)"]) - statistics.median(
        cpus["load_run, manifest check off"]
    )
    print(f"the check adds {shipped - unchecked:+.3f} s wall to load_run "
          f"({(shipped - unchecked) / unchecked:+.1%}), {cpu_added:+.3f} s CPU "
          f"({cpu_added / unchecked:+.1%} of the unchecked load's wall time); the hash alone is "
          f"{hashing / unchecked:.0%} of that load if it ran in series")  # fmt: skip


if __name__ == "__main__":
    main()
