"""Which distilled student keeps MiniLM's quality with no unlabelled posts, on a real task.

    python benches/studies/datasets.py debian --out data/debian
    python benches/studies/distill_students.py --data data/debian --out runs/distill-students

Through the CLI (`fbdl-fast train` / `distill` / `evaluate`, one after the other, --threads 1),
on the same seeded sample of the training posts (--train-per-class N a section) and the whole
test set, with no --unlabelled file:

- teacher: MiniLM fine-tuned (`train --model minilm --epochs E --lr 1e-4`);
- cnn: the CNN from scratch (train's defaults);
- cnn-distilled: `distill --student cnn --student-embeddings own --augment 0` (distill's
  defaults before --augment and --student-embeddings existed);
- cnn-distilled-augment: the same with `--augment N` (the transfer set of training.augment);
- cnn-teacher-embeddings: `distill --student cnn --student-embeddings teacher --augment N`
  (distill's defaults now, for a MiniLM teacher and no --unlabelled, with N = 2);
- cnn-teacher-embeddings-no-augment: the same with --augment 0;
- minilm-L2: `distill --student minilm --student-layers 2 --augment 0` (the teacher's layers 3
  and 6);
- minilm-L2-augment: the same with `--augment N`.

It prints and writes out/results.json and out/table.md: each model's test macro-F1, its
predict throughput at 1 thread (Run.predict over the test posts, after one warm-up pass, posts
per second), the training wall time, and the share of the gap recovered, (student - cnn) /
(teacher - cnn). MiniLM fine-tuning on a shared 2-core CPU is slow: the defaults (200 posts a
section, 4 epochs at lr 1e-4 for the teacher and the MiniLM students, 32 tokens: Debian's
one-line descriptions are short, --augment 2) keep the whole study near half an hour there; the
numbers are for that sample, not the full task. `--only` runs a subset
(results of earlier steps are read back from results.json, so a study can be continued).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fbdl_fast.files import write_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from debian_table import per_class_sample, read_rows

STEPS = (
    "teacher",
    "cnn",
    "cnn-distilled",
    "cnn-distilled-augment",
    "cnn-teacher-embeddings",
    "cnn-teacher-embeddings-no-augment",
    "minilm-L2",
    "minilm-L2-augment",
)


def write_rows(path: Path, rows: Sequence[tuple[str, str]]) -> Path:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue().encode("utf-8"))
    return path


def command(step: str, train: Path, out: Path, args: argparse.Namespace) -> list[str]:
    """The fbdl-fast command line that makes `step`'s run folder."""
    cli = [sys.executable, "-m", "fbdl_fast"]
    common = ["--data", str(train), "--output", str(out / step), "--overwrite"]
    common += ["--threads", "1", "--max-length", str(args.max_length), "--quiet"]
    teacher = ["--teacher", str(out / "teacher")]
    augment, none = ["--augment", str(args.augment)], ["--augment", "0"]
    own, theirs = ["--student-embeddings", "own"], ["--student-embeddings", "teacher"]
    if step == "teacher":
        lr = ["--lr", str(args.teacher_lr)] if args.teacher_lr else []
        return [*cli, "train", "--model", "minilm", "--epochs", str(args.epochs), *lr, *common]
    if step == "cnn":
        return [*cli, "train", "--model", "cnn", *common]
    student = {
        "cnn-distilled": ["--student", "cnn", *own, *none],
        "cnn-distilled-augment": ["--student", "cnn", *own, *augment],
        "cnn-teacher-embeddings": ["--student", "cnn", *theirs, *augment],
        "cnn-teacher-embeddings-no-augment": ["--student", "cnn", *theirs, *none],
        "minilm-L2": ["--student", "minilm", "--student-layers", "2", *none],
        "minilm-L2-augment": ["--student", "minilm", "--student-layers", "2", *augment],
    }[step]
    epochs = ["--epochs", str(args.epochs)] if step.startswith("minilm") else []
    return [*cli, "distill", *teacher, *student, *epochs, *common]


def throughput(run: Path, texts: list[str]) -> float:
    """Posts per second of Run.predict over `texts` at 1 thread, after a warm-up pass."""
    from fbdl_fast.training.loading import load_run

    loaded = load_run(run, device="cpu", threads=1)
    loaded.predict(texts[:64])
    started = time.perf_counter()
    loaded.predict(texts)
    return len(texts) / (time.perf_counter() - started)


def measure(step: str, train: Path, test: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = command(step, train, out, args)
    started = time.perf_counter()
    with open(out / f"{step}.log", "w", encoding="utf-8") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}); see {out / step}.log")
    evaluate = [sys.executable, "-m", "fbdl_fast", "evaluate", "--run", str(out / step)]
    evaluate += ["--data", str(test), "--json", "--threads", "1"]
    scores = json.loads(subprocess.run(evaluate, capture_output=True, text=True, check=True).stdout)
    texts = [text for text, _ in read_rows(test)]
    return {
        "macro_f1": scores["macro_f1"],
        "accuracy": scores["accuracy"],
        "train_wall_s": wall,
        "predict_posts_per_s_1_thread": throughput(out / step, texts),
        "command": " ".join(cmd[2:]),
        "load_average_1min": os.getloadavg()[0],
    }


def table(results: dict[str, dict]) -> str:
    teacher, cnn = results.get("teacher"), results.get("cnn")
    lines = [
        "| model | macro-F1 | gap recovered | predict posts/s (1 thread) | x teacher | train s |",
        "|---|---|---|---|---|---|",
    ]
    for step in STEPS:
        r = results.get(step)
        if r is None:
            continue
        gap = "-"
        if teacher and cnn and step not in ("teacher", "cnn"):
            width = teacher["macro_f1"] - cnn["macro_f1"]
            if width > 0:
                gap = f"{(r['macro_f1'] - cnn['macro_f1']) / width:.0%}"
        speed = r["predict_posts_per_s_1_thread"]
        ratio = f"{speed / teacher['predict_posts_per_s_1_thread']:.1f}" if teacher else "-"
        lines.append(
            f"| {step} | {r['macro_f1']:.3f} | {gap} | {speed:,.0f} | {ratio} | "
            f"{r['train_wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/debian"))
    p.add_argument("--out", type=Path, default=Path("runs/distill-students"))
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--epochs", type=int, default=4, help="MiniLM teacher's and students' epochs")
    p.add_argument(
        "--teacher-lr",
        type=float,
        default=1e-4,
        help="the teacher's --lr (1e-4: the best Debian MiniLM of the sweep; 0: minilm's default)",
    )
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--augment", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--only", default=",".join(STEPS), help="comma-separated steps to run")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = per_class_sample(read_rows(args.data / "train.csv"), args.train_per_class, args.seed)
    train = write_rows(args.out / "train.csv", rows)
    test = args.data / "test.csv"
    saved = args.out / "results.json"
    results = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else {}
    for step in args.only.split(","):
        if step not in STEPS:
            raise SystemExit(f"--only {step!r} is not a step; accepted: {', '.join(STEPS)}")
        results[step] = measure(step, train, test, args.out, args)
        write_atomic(saved, json.dumps(results, indent=2).encode("utf-8"))
        print(f"{step}: macro-F1 {results[step]['macro_f1']:.3f}", flush=True)
    report = table(results)
    header = f"{len(rows)} training posts ({args.train_per_class} a section at most), "
    header += f"test {len(read_rows(test))} posts, {args.data}\n\n"
    write_atomic(args.out / "table.md", (header + report).encode("utf-8"))
    print(header + report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
