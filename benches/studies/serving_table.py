"""The CPU serving table: accuracy, predict speed, memory and size of the serving forms of a
fine-tuned MiniLM, of a student distilled from it, of a CNN and of the n-gram baseline, on one
labelled split (one task per invocation).

    python benches/studies/serving_table.py --data data/manpages \
        --minilm runs/minilm_sweep_f1/runs/manpages-all-lr0.0001-e3 --out runs/serving/manpages
    python benches/studies/serving_table.py --data data/debian \
        --minilm runs/minilm_sweep_f1/runs/debian-all-lr0.0001-e3 --out runs/serving/debian

From --data (train.csv, test.csv) and a trained --minilm run folder it builds, under --out, with
the CLI's defaults throughout: the MiniLM run copied (so exports do not write into the given
folder; a changed --minilm replaces the copy and the student distilled from the old one), a CNN
trained from scratch (`fbdl-fast train --model cnn`), the n-gram baseline (`train --model
ngram`), the student: a CNN distilled from the MiniLM run (`fbdl-fast distill --student cnn`,
whose defaults without --unlabelled are the teacher's embeddings and `--augment 2`, what the
distill-students study found best; --unlabelled adds posts as soft targets only), the int8 files
of the MiniLM (--minilm-keep-fp32: its layers left in fp32) and of the student (`fbdl-fast export
--format int8`) and the ONNX file of the best-scoring fp32 model (`export --format onnx`, and
`--format onnx-int8` when this fbdl-fast's export offers it). Each row is scored on test.csv
(`fbdl-fast evaluate --checkpoint best|int8|onnx|onnx-int8`) and timed as a whole command:
`fbdl-fast predict --checkpoint ...` on a file of test.csv's texts repeated to --posts posts
(fewer for MiniLM: --minilm-posts), once per --threads value, in a child process whose wall time
and peak RSS (os.wait4's ru_maxrss) are recorded; tokenization included. The ONNX rows run in
onnxruntime with predict's --threads as its intra-op threads, and load no torch weights. Model
size: the file the command loads (best.pt also holds the optimizer's state). --no-timing builds
and scores only (the timings are best taken later, on a quiet machine: a second invocation reuses
the runs). Writes out/results.json and out/table.md atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fbdl_fast.data import load_posts
from fbdl_fast.files import sha256_of, write_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import csv_text
from debian_table import machine

# Row key -> (title, run folder under --out (ONNX: the best fp32 run), predict's --checkpoint).
ROWS = {
    "minilm": ("MiniLM fine-tuned (fp32)", "minilm", "best"),
    "minilm-int8": ("MiniLM fine-tuned (int8)", "minilm", "int8"),
    "cnn-distilled": ("Student: CNN distilled from MiniLM (fp32)", "cnn-distilled", "best"),
    "cnn-distilled-int8": ("Student: CNN distilled from MiniLM (int8)", "cnn-distilled", "int8"),
    "cnn": ("CNN from scratch", "cnn", "best"),
    "ngram": ("n-gram baseline", "ngram", "best"),
    "onnx": ("ONNX (onnxruntime), best model", None, "onnx"),
    "onnx-int8": ("ONNX int8 (onnxruntime), best model", None, "onnx-int8"),
}
# The rows whose ONNX forms are built: of the fp32 run with the best test macro-F1.
ONNX_ROWS = ("onnx", "onnx-int8")
FP32_RUNS = ("minilm", "cnn", "cnn-distilled")
RUN_FILES = ("config.json", "tokenizer.json", "label_map.json", "best.pt")


def cli(argv: list[str]) -> str:
    """`fbdl-fast ARGV` in this process; its stdout. A failure stops the script."""
    from fbdl_fast.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    if status != 0:
        raise SystemExit(f"fbdl-fast {' '.join(argv)} failed ({status})")
    return out.getvalue()


def copy_run(source: Path, target: Path) -> None:
    """The files of `source` that evaluate, predict and export read, copied into `target`; a
    copy of other weights (--minilm changed since the last invocation) is replaced first."""
    missing = [name for name in RUN_FILES if not (source / name).is_file()]
    if missing:
        raise SystemExit(
            f"--minilm {source}: {', '.join(missing)} missing; expected a finished "
            f"`fbdl-fast train --model minilm` run folder"
        )
    if (target / "best.pt").is_file() and sha256_of(target / "best.pt") != sha256_of(
        source / "best.pt"
    ):
        shutil.rmtree(target)  # its int8 and ONNX files are of the old weights too
    target.mkdir(parents=True, exist_ok=True)
    # A run written with an integrity manifest is refused without it; its other files (last.pt)
    # are only checked when read, which nothing here does.
    manifest = ["manifest.json"] if (source / "manifest.json").is_file() else []
    for name in [*RUN_FILES, *manifest]:
        if not (target / name).is_file():
            shutil.copy2(source / name, target / name)


def predict_file(test: Path, posts: int, path: Path) -> Path:
    """test.csv's rows repeated in order to `posts` rows (predict ignores the labels)."""
    found = load_posts(test)
    assert found.labels is not None
    rows = list(zip(found.texts, map(str, found.labels)))
    write_atomic(path, csv_text([rows[i % len(rows)] for i in range(posts)]))
    return path


# The child is started from a small launcher that fork()s it: Linux carries a process's peak RSS
# across exec, and a child spawned straight from this process (hundreds of MiB after training and
# evaluating in-process) would report this process's peak instead of its own.
LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
cpu = usage.ru_utime + usage.ru_stime
status = os.waitstatus_to_exitcode(status)
print(json.dumps({"status": status, "wall_s": wall, "cpu_s": cpu, "maxrss_kib": usage.ru_maxrss}))
"""


def measured(cmd: list[str], log: Path) -> dict[str, float]:
    """Run `cmd` as a child: wall seconds, CPU seconds (user + system) and peak RSS in MiB."""
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(log), *cmd],
        capture_output=True,
        text=True,
        check=True,
    )
    usage = json.loads(done.stdout)
    if usage["status"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({usage['status']}); see {log}")
    return {
        "wall_s": usage["wall_s"],
        "cpu_s": usage["cpu_s"],
        "peak_rss_mib": usage["maxrss_kib"] / 1024,  # ru_maxrss is in KiB on Linux
    }


def predict_cmd(run: Path, checkpoint: str, data: Path, output: Path, threads: int) -> list[str]:
    """The child command timed for one row at one thread count."""
    cmd = [sys.executable, "-m", "fbdl_fast", "predict", "--run", str(run), "--data", str(data)]
    cmd += ["--output", str(output), "--overwrite", "--threads", str(threads), "--quiet"]
    return [*cmd, "--device", "cpu", "--checkpoint", checkpoint]


def model_file(run: Path, checkpoint: str) -> Path:
    files = {"int8": "model.int8.pt", "onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
    return run / files.get(checkpoint, "best.pt")


def export_formats() -> list[str]:
    """The formats this fbdl-fast's `export --help` offers (onnx-int8 is newer than the rest)."""
    done = subprocess.run(
        [sys.executable, "-m", "fbdl_fast", "export", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    # The usage line names them: "--format onnx|int8|onnx-int8".
    return done.stdout.split("--format ", 1)[1].split(None, 1)[0].split("|")


def stale_student(student: Path, teacher: Path) -> bool:
    """Whether the distilled run in `student` was taught by other weights than `teacher`'s."""
    config = student / "config.json"
    if not (student / "best.pt").is_file() or not config.is_file():
        return False
    meta = json.loads(config.read_text(encoding="utf-8"))
    return meta["distillation"]["teacher_sha256"] != sha256_of(teacher / "best.pt")


def build(args: argparse.Namespace) -> dict[str, Any]:
    """Every run, export, score and timing; results.json rewritten after each step."""
    out: Path = args.out
    train, test = args.data / "train.csv", args.data / "test.csv"
    seed = ["--seed", str(args.seed), "--threads", str(args.train_threads), "--quiet"]
    extra = args.train_args.split()
    copy_run(args.minilm, out / "minilm")
    if stale_student(out / "cnn-distilled", out / "minilm"):
        shutil.rmtree(out / "cnn-distilled")
    for run, model in (("cnn", "cnn"), ("ngram", "ngram")):
        if not (out / run / "best.pt").is_file():
            options = args.ngram_args.split() if model == "ngram" else extra
            cmd = ["train", "--data", str(train), "--model", model, "--output", str(out / run)]
            cli([*cmd, "--overwrite", *seed, *options])
    if not (out / "cnn-distilled" / "best.pt").is_file():
        # Nothing but the teacher, the data and --unlabelled: the student is distill's defaults.
        distill = ["distill", "--teacher", str(out / "minilm"), "--student", "cnn"]
        distill += ["--data", str(train), "--output", str(out / "cnn-distilled"), "--overwrite"]
        if args.unlabelled is not None:
            distill += ["--unlabelled", str(args.unlabelled)]
        cli([*distill, *seed, *extra])
    for run in ("minilm", "cnn-distilled"):
        keep = (
            ["--keep-fp32", args.minilm_keep_fp32]
            if run == "minilm" and args.minilm_keep_fp32
            else []
        )
        cli(["export", "--run", str(out / run), "--format", "int8", *keep, "--quiet"])
    results: dict[str, Any] = {"rows": {}, "machine": args.machine}
    results["teacher"] = {"source": str(args.minilm), "sha256": sha256_of(out / "minilm/best.pt")}
    meta = json.loads((out / "cnn-distilled" / "config.json").read_text(encoding="utf-8"))
    results["distillation"] = meta["distillation"]

    def score(key: str, title: str, run: str, checkpoint: str) -> None:
        evaluate = ["evaluate", "--run", str(out / run), "--data", str(test), "--json"]
        scores = json.loads(
            cli([*evaluate, "--device", "cpu", "--checkpoint", checkpoint, "--quiet"])
        )
        results["rows"][key] = {
            "title": title,
            "run": run,
            "checkpoint": checkpoint,
            "macro_f1": scores["macro_f1"],
            "accuracy": scores["accuracy"],
            "size_mib": model_file(out / run, checkpoint).stat().st_size / 2**20,
        }

    for key, (title, run, checkpoint) in ROWS.items():
        if run is not None:  # the ONNX rows' run is the best fp32 one, known below
            score(key, title, run, checkpoint)
    best = max(FP32_RUNS, key=lambda k: results["rows"][k]["macro_f1"])
    offered = export_formats()
    for key in ONNX_ROWS:
        if key in offered:
            cli(["export", "--run", str(out / best), "--format", key, "--quiet"])
            score(key, f"{ROWS[key][0]} ({ROWS[best][0]})", best, key)
    write_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    if args.no_timing:
        return results
    sizes = {"minilm": args.minilm_posts, "other": args.posts}
    files = {k: predict_file(test, n, out / f"predict-{n}.csv") for k, n in sizes.items()}
    for key, row in results["rows"].items():
        run, checkpoint = out / row["run"], row["checkpoint"]
        which = "minilm" if row["run"] == "minilm" else "other"
        row["posts"] = sizes[which]
        for threads in args.threads:
            print(f"{key}, {threads} thread(s) ...", file=sys.stderr, flush=True)
            output = out / f"predictions-{key}-{threads}.jsonl"
            cmd = predict_cmd(run, checkpoint, files[which], output, threads)
            timing = measured(cmd, out / f"predict-{key}-{threads}.log")
            timing["posts_per_s"] = row["posts"] / timing["wall_s"]
            # On a shared machine the wall time counts the other jobs' turns too; the CPU time
            # at one thread is nearer what the command costs on a machine of its own.
            timing["posts_per_cpu_s"] = row["posts"] / timing["cpu_s"]
            timing["load_1min"] = os.getloadavg()[0]
            row[f"threads_{threads}"] = timing
            output.unlink()  # up to --posts lines each; only the timing is kept
            write_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def goals(rows: dict[str, dict], threads: int = 1) -> list[str]:
    """The serving table's goals, each with its numbers, at `threads` threads (the goals are
    stated at 1); a goal whose rows were not timed says so."""
    m, m8, c, d, n = (rows[k] for k in ("minilm", "minilm-int8", "cnn", "cnn-distilled", "ngram"))
    t = f"threads_{threads}"
    timed = all(t in row for row in (m, m8, d, n))

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    gap = m["macro_f1"] - c["macro_f1"]
    change = f"{c['macro_f1']:.3f} -> {d['macro_f1']:.3f} of {m['macro_f1']:.3f}"
    if gap > 0:
        recovered = (d["macro_f1"] - c["macro_f1"]) / gap
        lines = [
            f"- the student recovers {recovered:.0%} of the macro-F1 gap from the CNN from "
            f"scratch to MiniLM ({change}; goal >= 60%): {met(recovered >= 0.6)}"
        ]
    else:  # no gap to recover: the share is undefined, not a pass
        lines = [f"- MiniLM does not beat the CNN from scratch ({change}): no gap to recover"]
    int8_cost = (m["macro_f1"] - m8["macro_f1"]) * 100
    if not timed:
        return [
            *lines,
            f"- speed goals: not timed at {threads} thread(s)",
            f"- MiniLM int8 costs {int8_cost:.2f} points of macro-F1 (goal <= 1): "
            f"{met(int8_cost <= 1)}",
        ]
    speed = d[t]["posts_per_s"] / m[t]["posts_per_s"]
    cpu_speed = d[t]["posts_per_cpu_s"] / m[t]["posts_per_cpu_s"]
    ngram = n[t]["posts_per_s"]
    int8_speed = m8[t]["posts_per_s"] / m[t]["posts_per_s"]
    return [
        *lines,
        f"- the student predicts {speed:.1f}x as fast as MiniLM fp32 at {threads} thread(s) "
        f"(goal >= 4x): {met(speed >= 4)} (per CPU second: {cpu_speed:.1f}x)",
        f"- the n-gram baseline predicts {ngram:,.0f} posts/s at {threads} thread(s) "
        f"(goal >= 20,000): {met(ngram >= 20_000)} "
        f"({n[t]['posts_per_cpu_s']:,.0f} per CPU second)",
        f"- MiniLM int8 costs {int8_cost:.2f} points of macro-F1 (goal <= 1): "
        f"{met(int8_cost <= 1)}; {int8_speed:.2f}x the fp32 throughput at {threads} thread(s) "
        f"(goal >= 1.5x): {met(int8_speed >= 1.5)}",
    ]


def table(results: dict[str, Any], threads: Sequence[int]) -> str:
    head = "| Model | macro-F1 | accuracy | " + " | ".join(
        f"predict posts/s ({t} thr) | posts per CPU s ({t} thr) | peak RSS ({t} thr)"
        for t in threads
    )
    lines = [
        f"Machine: {results['machine']}. {results['note']}",
        "",
        head + " | model size on disk |",
        "|---|---:|---:|" + "---:|---:|---:|" * len(threads) + "---:|",
    ]
    loads = []
    for row in results["rows"].values():
        cells = [row["title"], f"{row['macro_f1']:.3f}", f"{row['accuracy']:.3f}"]
        for t in threads:
            timing = row.get(f"threads_{t}")
            if timing is None:
                cells += ["-", "-", "-"]
                continue
            loads.append(timing["load_1min"])
            cells += [f"{timing['posts_per_s']:,.0f}", f"{timing['posts_per_cpu_s']:,.0f}"]
            cells.append(f"{timing['peak_rss_mib']:,.0f} MiB")
        cells.append(f"{row['size_mib']:,.1f} MiB")
        lines.append("| " + " | ".join(cells) + " |")
    if loads:  # other jobs on the machine slow every row; how many there were, per timing
        lines += [
            "",
            f"1-minute load average after each timing: {min(loads):.2f} to {max(loads):.2f}.",
        ]
    lines += ["", "Goals:", *goals(results["rows"], 1 if 1 in threads else threads[0])]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train.csv, test.csv")
    parser.add_argument("--minilm", type=Path, required=True, help="trained MiniLM run folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for runs and the table")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--posts", type=int, default=100_000, help="posts predicted per timing")
    parser.add_argument(
        "--minilm-posts", type=int, default=None, help="posts per MiniLM timing (default --posts)"
    )
    parser.add_argument(
        "--unlabelled",
        type=Path,
        default=None,
        help="posts without labels for distill --unlabelled (e.g. DATA/unlabelled.csv, as "
        "benches/studies/datasets.py writes it); default none: distill's defaults on train.csv "
        "alone",
    )
    parser.add_argument(
        "--minilm-keep-fp32",
        default="",
        metavar="NAME[,NAME...]",
        help="layers the MiniLM's int8 export leaves in fp32 (export --keep-fp32); default none",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train-threads", type=int, default=1)
    parser.add_argument(
        "--train-args", default="", help="more options for the CNN's train and distill, one string"
    )
    parser.add_argument(
        "--ngram-args", default="", help="more options for train --model ngram, one string"
    )
    parser.add_argument(
        "--no-timing", action="store_true", help="build and score only; time nothing"
    )
    parser.add_argument("--machine", default=machine(), help="how the table names the machine")
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    for path in (args.data / "train.csv", args.data / "test.csv"):
        if not path.is_file():
            parser.error(f"{path} not found; expected a folder from benches/studies/datasets.py")
    if args.posts < 1 or (args.minilm_posts is not None and args.minilm_posts < 1):
        parser.error("--posts and --minilm-posts: expected 1 or more")
    if not args.threads or min(args.threads) < 1:
        parser.error(f"--threads {args.threads}: expected one or more counts >= 1")
    args.minilm_posts = args.minilm_posts or args.posts
    if args.unlabelled is not None and not args.unlabelled.is_file():
        parser.error(f"--unlabelled {args.unlabelled} not found")
    args.out.mkdir(parents=True, exist_ok=True)
    results = build(args)
    n_train, n_test = (
        len(load_posts(args.data / "train.csv")),
        len(load_posts(args.data / "test.csv")),
    )
    variants = results["distillation"].get("augment", {}).get("variants", 0)
    results["note"] = (
        f"{n_train} training posts, {n_test} test posts; MiniLM: {args.minilm}; the student: "
        f"`distill --student cnn` with its defaults ({variants} augmented variants a post), "
        + (
            f"{len(load_posts(args.unlabelled, label_column=None))} unlabelled posts for "
            "distillation; "
            if args.unlabelled is not None
            else "no unlabelled posts; "
        )
        + (
            f"MiniLM int8 with {args.minilm_keep_fp32} kept in fp32; "
            if args.minilm_keep_fp32
            else ""
        )
        + f"predict on test.csv's texts repeated "
        f"to {args.posts} posts (MiniLM rows: {args.minilm_posts}), one run per thread count, "
        f"whole commands (start-up and loading included)."
    )
    write_atomic(args.out / "results.json", json.dumps(results, indent=2) + "\n")
    text = table(results, args.threads)
    write_atomic(args.out / "table.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
