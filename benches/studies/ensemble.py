"""What the n-gram model adds to MiniLM as an ensemble: test macro-F1 and predict's cost.

For a folder that benches/studies/serving_table.py filled (minilm/ and ngram/ runs of one task,
MiniLM's exports), scores through `fbdl-fast evaluate` on the task's test.csv:
- each run alone;
- the two as one ensemble (`--run minilm --run ngram`, equal weights), with MiniLM's best.pt and
  with its int8 ONNX file;
- the CNN student distilled from MiniLM, alone and with the n-gram model, when the folder has it;
- the ensemble at each of --weights (the n-gram model's weight, MiniLM's 1 - w), to show how
  flat the choice is.
Then times `fbdl-fast predict` on the same --posts posts at 1 thread, whole commands in
alternating turns: each of those rows but the n-gram model alone (the serving table has its
speed; here what it adds to the others').

    python benches/studies/ensemble.py --data data/manpages --runs runs/serving/manpages-e6
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fbdl_fast.files import write_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_table import cli, measured, predict_file

MEMBERS = ("minilm", "ngram")  # the runs the study needs
STUDENT = "cnn-distilled"  # serving_table.py's student, when the folder has it


def evaluate(runs: Path, test: Path, members: dict[str, str], weights: str = "") -> dict:
    """`fbdl-fast evaluate --json` of the runs `members` (run folder under `runs` -> its
    checkpoint; several: one ensemble)."""
    argv = ["evaluate", "--data", str(test), "--json", "--quiet", "--device", "cpu"]
    for member, checkpoint in members.items():
        argv += ["--run", str(runs / member), "--checkpoint", checkpoint]
    if weights:
        argv += ["--weights", weights]
    figures = json.loads(cli(argv))
    return {k: figures[k] for k in ("macro_f1", "accuracy", "loss")}


def predict_argv(runs: Path, members: dict[str, str], data: Path, output: Path) -> list[str]:
    """The child `fbdl-fast predict` command of the runs `members`, at 1 thread."""
    cmd = [sys.executable, "-m", "fbdl_fast", "predict", "--data", str(data), "--threads", "1"]
    cmd += ["--output", str(output), "--overwrite", "--quiet", "--device", "cpu"]
    for member, checkpoint in members.items():
        cmd += ["--run", str(runs / member), "--checkpoint", checkpoint]
    return cmd


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="task folder with test.csv")
    parser.add_argument("--runs", type=Path, required=True, help="serving_table.py's --out")
    parser.add_argument("--posts", type=int, default=2000, help="posts predicted per timing")
    parser.add_argument("--turns", type=int, default=3, help="alternating timing turns")
    parser.add_argument(
        "--weights", default="0.3,0.4,0.6,0.7", help="n-gram weights to score besides 0.5"
    )
    parser.add_argument("--out", type=Path, default=None, help="results.json (default: RUNS)")
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    test = args.data / "test.csv"
    for path in (test, *(args.runs / m / "best.pt" for m in MEMBERS)):
        if not path.is_file():
            parser.error(f"{path} not found")
    onnx = "onnx-int8" if (args.runs / "minilm" / "model.int8.onnx").is_file() else None
    paths = {
        "minilm": {"minilm": "best"},
        "ngram": {"ngram": "best"},
        "ensemble": {"minilm": "best", "ngram": "best"},
    }
    if onnx:
        paths["minilm-onnx-int8"] = {"minilm": onnx}
        paths["ensemble-onnx-int8"] = {"minilm": onnx, "ngram": "best"}
    if (args.runs / STUDENT / "best.pt").is_file():
        paths["student"] = {STUDENT: "best"}
        paths["student-ensemble"] = {STUDENT: "best", "ngram": "best"}
    rows = {key: evaluate(args.runs, test, members) for key, members in paths.items()}
    for w in (float(x) for x in args.weights.split(",") if x):
        weights = f"{1 - w:g},{w:g}"
        rows[f"ensemble-w{w:g}"] = evaluate(args.runs, test, paths["ensemble"], weights)
    results: dict[str, Any] = {"task": str(args.data), "runs": str(args.runs), "scores": rows}
    data = predict_file(test, args.posts, args.runs / f"predict-{args.posts}.csv")
    del paths["ngram"]  # its speed is the serving table's; here: what it adds to MiniLM's
    times: dict[str, list[dict[str, float]]] = {key: [] for key in paths}
    for turn in range(args.turns):
        for key, members in paths.items():
            print(f"turn {turn + 1}: {key} ...", file=sys.stderr, flush=True)
            output = args.runs / f"predictions-ensemble-{key}.jsonl"
            cmd = predict_argv(args.runs, members, data, output)
            times[key].append(measured(cmd, args.runs / f"predict-ensemble-{key}.log"))
            output.unlink()
    results["timing"] = {
        key: {
            "posts": args.posts,
            "wall_s": statistics.median(t["wall_s"] for t in turns),
            "cpu_s": statistics.median(t["cpu_s"] for t in turns),
            # the least a turn took: what the command costs with the least interference
            "min_cpu_s": min(t["cpu_s"] for t in turns),
            "turns": turns,
        }
        for key, turns in times.items()
    }
    out = args.out or args.runs / "ensemble.json"
    write_atomic(out, json.dumps(results, indent=2) + "\n")
    for key, row in rows.items():
        print(f"{key:<22} macro-F1 {row['macro_f1']:.3f}  accuracy {row['accuracy']:.3f}")
    for key, row in results["timing"].items():
        print(
            f"{key:<22} {args.posts / row['wall_s']:,.0f} posts/s, "
            f"{args.posts / row['cpu_s']:,.0f} per CPU s (median), "
            f"{args.posts / row['min_cpu_s']:,.0f} (best turn)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
