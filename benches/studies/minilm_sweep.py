"""Does `--model minilm`'s default recipe hold on real text? A small lr x epochs sweep.

    python benches/studies/datasets.py debian --out data/debian      # the two real tasks
    python benches/studies/datasets.py manpages --out data/manpages
    python benches/studies/minilm_sweep.py --tasks manpages,debian --posts 0 \\
        --lrs 3e-5,5e-5,1e-4 --epochs 3,6 --out runs/minilm_sweep_f1

For each task (data/TASK/train.csv and test.csv) and each (lr, epochs) cell, through the CLI:

    fbdl-fast train --model minilm --data TRAIN --lr LR --epochs E --threads 2 --output RUN
    fbdl-fast evaluate --run RUN --data data/TASK/test.csv --json

with the CLI's defaults otherwise (FINE_TUNE_DEFAULTS: linear schedule, warmup 0.06, early
stopping with patience 3 on the validation macro-F1, best.pt = the epoch with the highest
validation macro-F1). Each cell records the validation macro-F1 of every epoch, the best epoch
(the one best.pt holds), the test macro-F1 of best.pt, and train's wall and CPU time (user +
system of the child process). The default recipe's cell (FINE_TUNE_DEFAULTS' lr and epochs)
is marked.

`--posts N` trains on a stratified, seeded sample of N training posts (each label keeps its
share; the test set stays whole) when time is short; 0 keeps them all. The study is resumable:
a cell whose run folder (best.pt) and result (out/cells/NAME.json) exist is read back, not run
again; a run folder with its train timing but no result is only evaluated. It prints a markdown
table and writes out/results.json and out/table.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fbdl_fast.data.readers import load_posts
from fbdl_fast.files import write_atomic
from fbdl_fast.training.presets import FINE_TUNE_DEFAULTS

DEFAULT_LR = FINE_TUNE_DEFAULTS["learning_rate"]
DEFAULT_EPOCHS = FINE_TUNE_DEFAULTS["max_epochs"]


def read_rows(path: Path) -> list[tuple[str, str]]:
    """The (text, label) pairs of a single-label posts file."""
    posts = load_posts(path)
    if posts.labels is None:
        raise SystemExit(f"posts file {str(path)!r} has no labels; accepted: a labelled file")
    return list(zip(posts.texts, map(str, posts.labels)))


def stratified_sample(rows: Sequence[tuple[str, str]], n: int, seed: int) -> list[tuple[str, str]]:
    """`n` rows drawn seeded, each label keeping its share (largest remainders round up)."""
    if not 0 < n <= len(rows):
        raise SystemExit(f"--posts {n} is out of range; accepted: 1 to {len(rows)}, or 0 (all)")
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in sorted(rows):  # independent of the file's order
        by_label[row[1]].append(row)
    shares = {label: len(group) * n / len(rows) for label, group in by_label.items()}
    counts = {label: int(share) for label, share in shares.items()}
    by_remainder = sorted(shares, key=lambda label: (counts[label] - shares[label], label))
    for label in by_remainder[: n - sum(counts.values())]:
        counts[label] += 1
    rng = random.Random(seed)
    kept: list[tuple[str, str]] = []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        kept += group[: counts[label]]
    rng.shuffle(kept)
    return kept


def training_file(task_dir: Path, posts: int, seed: int, out: Path) -> Path:
    """The task's train.csv, or a stratified sample of it written under `out`."""
    train = task_dir / "train.csv"
    if not posts:
        return train
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["text", "label"])
    writer.writerows(stratified_sample(read_rows(train), posts, seed))
    path = out / "samples" / f"{task_dir.name}-n{posts}-seed{seed}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue().encode("utf-8"))
    return path


def cell_name(task: str, posts: int, lr: float, epochs: int) -> str:
    size = f"n{posts}" if posts else "all"
    return f"{task}-{size}-lr{lr:g}-e{epochs}"


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(train_csv: Path, run: Path, lr: float, epochs: int, args: argparse.Namespace) -> dict:
    """Run `fbdl-fast train` for one cell; its wall and CPU seconds and the command."""
    cmd = [sys.executable, "-m", "fbdl_fast", "train", "--model", "minilm"]
    cmd += ["--data", str(train_csv), "--lr", f"{lr:g}", "--epochs", str(epochs)]
    cmd += ["--threads", str(args.threads), "--seed", str(args.seed), "--output", str(run)]
    cmd += ["--overwrite", "--progress-every", "60"]
    log = run.parent / f"{run.name}.log"
    wall, cpu = time.perf_counter(), children_cpu_s()
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, check=False)
    wall, cpu = time.perf_counter() - wall, children_cpu_s() - cpu
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}); see {log}")
    return {"wall_s": wall, "cpu_s": cpu, "command": " ".join(cmd[2:])}


def epochs_of(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def evaluate(run: Path, test_csv: Path, threads: int) -> dict[str, float]:
    """`fbdl-fast evaluate --json` of the run's best.pt on the test posts."""
    cmd = [sys.executable, "-m", "fbdl_fast", "evaluate", "--run", str(run)]
    cmd += ["--data", str(test_csv), "--json", "--threads", str(threads)]
    scores = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return {"test_macro_f1": scores["macro_f1"], "test_accuracy": scores["accuracy"]}


def measure_cell(
    task_dir: Path, train_csv: Path, lr: float, epochs: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One cell's result: trained (unless its run and timing exist), then evaluated."""
    name = cell_name(task_dir.name, args.posts, lr, epochs)
    run, timing = args.out / "runs" / name, args.out / "cells" / f"{name}.train.json"
    timing.parent.mkdir(parents=True, exist_ok=True)
    run.parent.mkdir(parents=True, exist_ok=True)
    if not ((run / "best.pt").is_file() and timing.is_file()):
        write_atomic(timing, json.dumps(train(train_csv, run, lr, epochs, args)).encode("utf-8"))
    history = epochs_of(run)
    best = [e for e in history if e["best"]][-1]  # the epoch best.pt holds
    top = max(history, key=lambda e: e["val_f1"])
    return {
        "task": task_dir.name,
        "posts": args.posts or len(read_rows(train_csv)),
        "lr": lr,
        "epochs": epochs,
        "epochs_run": len(history),
        "stopped_early": any(e["stopped_early"] for e in history),
        "val_f1_per_epoch": [e["val_f1"] for e in history],
        "best_epoch": best["epoch"],
        "val_f1_best_epoch": best["val_f1"],
        "max_val_f1": top["val_f1"],
        "max_val_f1_epoch": top["epoch"],
        **evaluate(run, task_dir / "test.csv", args.threads),
        **{f"train_{k}": v for k, v in json.loads(timing.read_text(encoding="utf-8")).items()},
        "load_average_1min": os.getloadavg()[0],
    }


def table(results: Sequence[dict[str, Any]]) -> str:
    """The markdown table: one row a cell, the default recipe marked."""
    lines = [
        "| task | posts | lr | epochs | ran | best epoch | val F1 (best) | val F1 per epoch "
        "| test macro-F1 | train wall s | train CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        default = r["lr"] == DEFAULT_LR and r["epochs"] == DEFAULT_EPOCHS
        curve = " ".join(f"{f:.3f}" for f in r["val_f1_per_epoch"])
        lines.append(
            f"| {r['task']} | {r['posts']:,} | {r['lr']:g}{' (default)' if default else ''} "
            f"| {r['epochs']} | {r['epochs_run']} | {r['best_epoch']} "
            f"| {r['val_f1_best_epoch']:.3f} | {curve} | **{r['test_macro_f1']:.3f}** "
            f"| {r['train_wall_s']:.0f} | {r['train_cpu_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part]


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data"), help="folder of the task folders")
    p.add_argument("--tasks", default="manpages,debian", help="comma-separated task folders")
    p.add_argument("--lrs", type=floats, default=[3e-5, 5e-5, 1e-4])
    p.add_argument("--epochs", type=ints, default=[3, 6])
    p.add_argument("--posts", type=int, default=0, help="stratified training sample; 0: all")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, default=Path("runs/minilm_sweep"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "results.json"
    known = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else {}
    for task in args.tasks.split(","):
        task_dir = args.data / task
        if not (task_dir / "train.csv").is_file():
            raise SystemExit(f"--tasks {task!r}: no {task_dir / 'train.csv'}; build it first")
        train_csv = training_file(task_dir, args.posts, args.seed, args.out)
        for epochs in args.epochs:
            for lr in args.lrs:
                name = cell_name(task, args.posts, lr, epochs)
                if name in known and (args.out / "runs" / name / "best.pt").is_file():
                    continue
                known[name] = measure_cell(task_dir, train_csv, lr, epochs, args)
                write_atomic(saved, json.dumps(known, indent=2).encode("utf-8"))
                r = known[name]
                print(f"{name}: test macro-F1 {r['test_macro_f1']:.3f}", flush=True)
    order = sorted(known.values(), key=lambda r: (r["task"], r["posts"], r["epochs"], r["lr"]))
    report = table(order)
    write_atomic(args.out / "table.md", report.encode("utf-8"))
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
