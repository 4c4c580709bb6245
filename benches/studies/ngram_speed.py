"""The n-gram baseline's speed: training on 10,000 posts, and predicting at 1 thread.

    python benches/studies/ngram_speed.py --data data/debian/train.csv --repeats 3
    python benches/studies/ngram_speed.py            # 10,000 synthetic posts instead

The goals: under 30 s to train on 10,000 posts, at least 20,000 posts/s predicted at 1 thread.
Measured:

- train: `fbdl_fast.train(texts, labels, model="ngram", threads=1)` on the first 10,000 posts
  of --data (or generate_posts(10000)), with the defaults: the call's total seconds (data,
  tokenizer, fit, report, publishing) and the fit's, median of --repeats runs;
- predict, fp32 (best.pt), int8 (model.int8.pt) and onnx (model.onnx), each exported by
  `fbdl-fast export`: posts/s of `fbdl_fast.load_run(run, checkpoint=..., threads=1).predict`
  on --predict-posts posts (the data's texts repeated), median of --repeats after a warm-up;
  and of `fbdl-fast predict --data FILE --threads 1 --output OUT`, a new process each time:
  its wall time, and the same less the wall time of a one-post file (the process's start:
  imports and loading the run), to show what the steady rate is.

The machine is shared: medians of several runs, and the load average is printed beside them.
Prints a Markdown table and writes --json if given.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHECKPOINTS = ("best", "int8", "onnx")
# The console script beside this interpreter (the virtualenv's bin/), else the one on PATH.
CLI = str(Path(sys.executable).with_name("fbdl-fast"))
if not Path(CLI).is_file():
    CLI = "fbdl-fast"


def posts(data: str | None, n: int) -> tuple[list[str], list[str]]:
    """The first `n` (text, label) of a CSV with columns text,label, or n synthetic posts."""
    if data is None:
        from fbdl_fast.data.synthetic import generate_posts

        generated = generate_posts(n, seed=0)
        return list(generated.texts), [str(label) for label in generated.labels or []]
    with open(data, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))[:n]
    return [row["text"] for row in rows], [row["label"] for row in rows]


def time_train(texts: list[str], labels: list[str], out: Path) -> dict[str, float]:
    """One fbdl_fast.train of the n-gram model at 1 thread: total and fit seconds."""
    import fbdl_fast

    result = fbdl_fast.train(
        texts=texts, labels=labels, model="ngram", output=out, threads=1, overwrite=True
    )
    return {
        "total_s": result.total_seconds,
        "fit_s": result.training_seconds,
        "val_macro_f1": result.best["val_macro_f1"],
    }


def time_library_predict(run: Path, checkpoint: str, texts: list[str], repeats: int) -> float:
    """Median posts/s of load_run(run, checkpoint, threads=1).predict(texts), after a warm-up."""
    import fbdl_fast

    loaded = fbdl_fast.load_run(run, checkpoint=checkpoint, threads=1)
    loaded.predict(texts[:2000])
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        loaded.predict(texts)
        rates.append(len(texts) / (time.perf_counter() - started))
    return statistics.median(rates)


def time_cli_predict(run: Path, checkpoint: str, data: Path, out: Path) -> float:
    """Wall seconds of one `fbdl-fast predict` process over `data` at 1 thread."""
    command = [CLI, "predict", "--run", str(run)]
    command += ["--data", str(data), "--output", str(out), "--overwrite", "--quiet"]
    command += ["--threads", "1", "--checkpoint", checkpoint]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CSV with text,label (default: synthetic posts)")
    parser.add_argument("--train-posts", type=int, default=10_000)
    parser.add_argument("--predict-posts", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    texts, labels = posts(args.data, args.train_posts)
    figures: dict[str, Any] = {"posts": len(texts), "data": args.data or "synthetic"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = root / "run"
        trains = [time_train(texts, labels, run) for _ in range(args.repeats)]
        figures["train"] = {key: statistics.median(t[key] for t in trains) for key in trains[0]} | {
            "runs_total_s": [round(t["total_s"], 2) for t in trains]
        }
        for fmt in ("int8", "onnx"):
            subprocess.run(
                [CLI, "export", "--run", str(run), "--format", fmt, "--quiet"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        many = (texts * (args.predict_posts // len(texts) + 1))[: args.predict_posts]
        big, one = root / "predict.csv", root / "one.csv"
        for path, rows in ((big, many), (one, many[:1])):
            with open(path, "w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["text"])
                writer.writerows([t] for t in rows)
        figures["predict"] = {}
        for checkpoint in CHECKPOINTS:
            library = time_library_predict(run, checkpoint, many, args.repeats)
            walls = [
                time_cli_predict(run, checkpoint, big, root / "out.jsonl")
                for _ in range(args.repeats)
            ]
            starts = [
                time_cli_predict(run, checkpoint, one, root / "out.jsonl")
                for _ in range(args.repeats)
            ]
            wall, start = statistics.median(walls), statistics.median(starts)
            figures["predict"][checkpoint] = {
                "library_posts_per_s": library,
                "cli_wall_s": wall,
                "cli_start_s": start,
                "cli_posts_per_s": len(many) / wall,
                # None where the one-post process took as long: the noise of a shared machine
                # is then larger than the predicting itself.
                "cli_posts_per_s_after_start": len(many) / (wall - start) if wall > start else None,
            }
    figures["load_average"] = os.getloadavg()
    print(report(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


def report(figures: dict[str, Any]) -> str:
    """The figures as Markdown: the training line, then one predict row per checkpoint."""
    train = figures["train"]
    lines = [
        f"train, {figures['posts']:,} posts ({figures['data']}), 1 thread: total "
        f"{train['total_s']:.1f} s (runs: {train['runs_total_s']}), fit {train['fit_s']:.1f} s, "
        f"validation macro-F1 {train['val_macro_f1']:.3f}",
        "",
        "| checkpoint | load_run().predict posts/s | fbdl-fast predict posts/s | "
        "same, less the process start | process start (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in figures["predict"].items():
        after = row["cli_posts_per_s_after_start"]
        lines.append(
            f"| {name} | {row['library_posts_per_s']:,.0f} | {row['cli_posts_per_s']:,.0f} | "
            f"{'-' if after is None else f'{after:,.0f}'} | {row['cli_start_s']:.2f} |"
        )
    lines.append(f"\nload average during the run: {figures['load_average']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
