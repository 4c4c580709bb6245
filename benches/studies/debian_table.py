"""The Debian package descriptions benchmark: every model trained and scored on one split.

    python benches/studies/datasets.py debian --out data/debian
    python benches/studies/debian_table.py --data data/debian --out runs/debian

Trains, on data/debian/train.csv, TF-IDF (1-2-grams) + logistic regression (scikit-learn) in
this process, then `fbdl-fast train` for the three from-scratch models and MiniLM fine-tuned
(each with its own defaults, one run after the other), scores each on test.csv (`fbdl-fast
evaluate`) and writes out/results.json and out/table.md: macro-F1, accuracy, training wall time
and process CPU time (the child's user + system time for fbdl-fast), and for the fbdl models
the training posts per second of epoch time (validation included), and the 1-minute load
average when each finished (the machine may be shared). `--train-per-class N` trains
every model on the same seeded sample of at most N posts per section (the test set stays whole).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from fbdl_fast.data import load_posts
from fbdl_fast.files import write_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import csv_text

FBDL_MODELS = ("transformer", "lstm", "cnn", "minilm")
MODELS = ("tfidf", *FBDL_MODELS)
TITLES = {
    "tfidf": "TF-IDF 1-2-grams + logistic regression",
    "transformer": "Transformer (from scratch)",
    "lstm": "BiLSTM (from scratch)",
    "cnn": "CNN (from scratch)",
    "minilm": "MiniLM fine-tuned",
}


def per_class_sample(
    rows: Sequence[tuple[str, str]], per_class: int, seed: int
) -> list[tuple[str, str]]:
    """At most `per_class` rows of each label, drawn seeded; independent of the rows' order."""
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in sorted(rows):
        by_label[row[1]].append(row)
    rng = random.Random(seed)
    kept: list[tuple[str, str]] = []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        kept += group[:per_class]
    rng.shuffle(kept)
    return kept


def read_rows(path: Path) -> list[tuple[str, str]]:
    posts = load_posts(path)
    assert posts.labels is not None
    return list(zip(posts.texts, map(str, posts.labels)))


def tfidf(train: Path, test: Path, seed: int) -> dict[str, float]:
    """TF-IDF (1-2-grams, sublinear tf) + logistic regression; scores and training times."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    train_rows, test_rows = read_rows(train), read_rows(test)
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        LogisticRegression(C=10.0, max_iter=2000, random_state=seed),
    )
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit([t for t, _ in train_rows], [y for _, y in train_rows])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    truth = [y for _, y in test_rows]
    guess = model.predict([t for t, _ in test_rows])
    return {
        "macro_f1": float(f1_score(truth, guess, average="macro")),
        "accuracy": float(accuracy_score(truth, guess)),
        "train_wall_s": wall,
        "train_cpu_s": cpu,
    }


def timed(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run `cmd` with its output in `log`; (wall, CPU user+system) seconds of the child."""
    before = os.times()
    wall = time.perf_counter()
    with open(log, "w", encoding="utf-8") as sink:
        done = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - wall
    after = os.times()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}); see {log}")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu


def fbdl(model: str, train: Path, test: Path, out: Path, args: argparse.Namespace) -> dict:
    """`fbdl-fast train` then `evaluate` on the test set; scores, times and posts/s."""
    run = out / model
    cli = [sys.executable, "-m", "fbdl_fast"]
    cmd = [*cli, "train", "--data", str(train), "--model", model, "--output", str(run)]
    cmd += ["--overwrite", "--seed", str(args.seed), "--threads", str(args.threads)]
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    cmd += shlex.split(args.train_args)
    wall, cpu = timed(cmd, out / f"{model}-train.log")
    evaluate = [*cli, "evaluate", "--run", str(run), "--data", str(test), "--json"]
    evaluate += ["--threads", str(args.threads)]
    scores = json.loads(subprocess.run(evaluate, capture_output=True, text=True, check=True).stdout)
    epochs = [
        json.loads(line)
        for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    epoch_s = sum(e["epoch_time_s"] for e in epochs if "epoch_time_s" in e)
    n_train = round(len(load_posts(train)) * (1 - 0.1))  # train's default --val-fraction
    return {
        "macro_f1": scores["macro_f1"],
        "accuracy": scores["accuracy"],
        "train_wall_s": wall,
        "train_cpu_s": cpu,
        "epochs": len(epochs),
        "posts_per_s": n_train * len(epochs) / epoch_s if epoch_s else None,
    }


def machine() -> str:
    """The CPU's model name and core count, as the table names the machine."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} cores"


def table(results: dict[str, dict], machine: str, note: str) -> str:
    lines = [
        f"Machine: {machine}. {note}",
        "",
        "| model | macro-F1 | accuracy | training wall | training CPU | epochs | posts/s | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        rate = f"{r['posts_per_s']:.0f}" if r.get("posts_per_s") else "-"
        load = f"{r['load_1min']:.1f}" if "load_1min" in r else "-"
        lines.append(
            f"| {TITLES[name]} | {r['macro_f1']:.3f} | {r['accuracy']:.3f} | "
            f"{r['train_wall_s']:.0f} s | {r['train_cpu_s']:.0f} s | {r.get('epochs', '-')} | "
            f"{rate} | {load} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder from datasets.py debian")
    parser.add_argument("--out", type=Path, required=True, help="folder for runs and the table")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--train-per-class", type=int, help="train on at most N posts per section (seeded)"
    )
    parser.add_argument("--epochs", type=int, help="override every fbdl model's default epochs")
    parser.add_argument(
        "--train-args",
        default="",
        help='more options for every `fbdl-fast train`, one string (e.g. "--lr 1e-4")',
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--machine", default=machine(), help="how the table names the machine")
    args = parser.parse_args(argv)
    train, test = args.data / "train.csv", args.data / "test.csv"
    for path in (train, test):
        if not path.is_file():
            raise SystemExit(
                f"{path} not found; build it with benches/studies/datasets.py debian --out"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    note = f"All {len(read_rows(train))} training posts, {len(read_rows(test))} test posts."
    if args.train_per_class is not None:
        if args.train_per_class < 1:
            raise SystemExit(f"--train-per-class {args.train_per_class}: expected 1 or more")
        rows = per_class_sample(read_rows(train), args.train_per_class, args.seed)
        train = args.out / "train-sample.csv"
        write_atomic(train, csv_text(rows))
        note = (
            f"Training set: at most {args.train_per_class} posts per section ({len(rows)}), "
            f"seeded; the whole test set ({len(read_rows(test))} posts)."
        )
    if args.train_args:
        note += f" fbdl-fast train options: {args.train_args}."
    results: dict[str, dict] = {}
    for name in args.models:
        print(f"{name} ...", file=sys.stderr, flush=True)
        if name == "tfidf":
            results[name] = tfidf(train, test, args.seed)
        else:
            results[name] = fbdl(name, train, test, args.out, args)
        results[name]["load_1min"] = os.getloadavg()[0]  # other work on the machine
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
        write_atomic(args.out / "results.json", json.dumps(results, indent=2) + "\n")
    write_atomic(args.out / "table.md", table(results, args.machine, note))
    print(table(results, args.machine, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
