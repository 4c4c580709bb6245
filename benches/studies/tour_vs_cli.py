"""The README's Python tour against the same work through the CLI, and what torch's threads cost.

Each turn runs in fresh processes (imports, training, loading, predicting: everything a user
waits for), in a scratch folder:

- tour: the README's "A tour" block as written (fbdl_fast.train with its default threads=1, then
  fbdl_fast.load_run(...).predict);
- cli: the same posts written to a CSV, `fbdl-fast train` with the tour's options, then
  `fbdl-fast predict --text ...` on the tour's two texts;
- tour, torch's threads: the tour with threads=torch.get_num_threads() (one per core: what a
  Python user got before the library set threads itself).

The variants are run in turns (tour, cli, threads; tour, cli, threads; ...) so that a busy machine
slows them alike; the table gives each one's median and range of wall times. --busy N keeps N
CPU-bound processes running beside them (a shared machine: another job, a second training run).

    python benches/studies/tour_vs_cli.py [--turns 3] [--busy 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def tour_code() -> str:
    """The README's tour block, as test_readme.py runs it."""
    section = README.read_text(encoding="utf-8").split("## A tour\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    if match is None:
        raise SystemExit(f"no python block under '## A tour' in {README}")
    return match.group(1)


def tour_options(code: str) -> tuple[int, str, int, list[str]]:
    """The tour's posts, model, epochs and the texts it predicts, read from its code."""
    posts = int(re.search(r"generate_posts\((\d+)", code)[1])  # type: ignore[index]
    model = re.search(r'model="(\w+)"', code)[1]  # type: ignore[index]
    epochs = int(re.search(r"epochs=(\d+)", code)[1])  # type: ignore[index]
    texts = json.loads("[" + re.search(r"run\.predict\(\[(.*?)\]\)", code)[1] + "]")  # type: ignore[index]
    return posts, model, epochs, texts


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_tour(code: str, cwd: Path) -> float:
    (cwd / "tour.py").write_text(code, encoding="utf-8")
    return timed([sys.executable, "tour.py"], cwd)


def run_cli(posts: int, model: str, epochs: int, texts: list[str], cwd: Path) -> float:
    write = textwrap.dedent(
        f"""
        import csv
        from fbdl_fast.data.synthetic import generate_posts
        posts = generate_posts({posts}, seed=0)
        with open("posts.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(zip(posts.texts, posts.labels))
        """
    )
    subprocess.run([sys.executable, "-c", write], cwd=cwd, check=True)  # not timed: the data
    cli = [sys.executable, "-m", "fbdl_fast"]
    train = [*cli, "train", "--data", "posts.csv", "--model", model, "--epochs", str(epochs)]
    predict = [*cli, "predict", "--run", "runs/cli", "--quiet"]
    for text in texts:
        predict += ["--text", text]
    return timed([*train, "--output", "runs/cli", "--quiet"], cwd) + timed(predict, cwd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes kept beside")
    parser.add_argument("--json", type=Path, default=None, help="also write the times here")
    args = parser.parse_args()
    spin = [sys.executable, "-c", "while True: pass"]
    busy = [subprocess.Popen(spin) for _ in range(args.busy)]
    try:
        measure(args)
    finally:
        for process in busy:
            process.kill()
            process.wait()


def measure(args: argparse.Namespace) -> None:

    code = tour_code()
    posts, model, epochs, texts = tour_options(code)
    import torch

    cores = torch.get_num_threads()
    threaded = code.replace("output=", f"threads={cores}, output=", 1)
    assert threaded != code, "the tour's fbdl_fast.train call has no output= to add threads to"
    variants = {
        "tour (fbdl_fast.train + load_run.predict, threads=1)": lambda d: run_tour(code, d),
        "cli (fbdl-fast train + fbdl-fast predict, --threads 1)": lambda d: run_cli(
            posts, model, epochs, texts, d
        ),
        f"tour with torch's threads (threads={cores})": lambda d: run_tour(threaded, d),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for turn in range(args.turns):
        for name, run in variants.items():
            with tempfile.TemporaryDirectory() as scratch:
                seconds = run(Path(scratch))
            times[name].append(seconds)
            print(f"turn {turn + 1}: {name}: {seconds:.1f} s", file=sys.stderr)

    tour = statistics.median(next(iter(times.values())))
    print(
        f"{posts} synthetic posts, {model}, {epochs} epochs; {platform.processor() or 'CPU'}, "
        f"{os.cpu_count()} cores, {args.busy} CPU-bound process(es) beside; {args.turns} turns in "
        "alternation, wall time per turn\n"
    )
    print("| variant | median | range | vs tour |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median:.1f} s | {min(values):.1f}-{max(values):.1f} s | "
            f"{median / tour:.2f}x |"
        )
    if args.json:
        args.json.write_text(json.dumps(times, indent=2))


if __name__ == "__main__":
    main()
