"""Reference baselines on the real tasks: what a model must beat to be worth serving.

    python benches/studies/datasets.py debian --out data/debian
    python benches/studies/datasets.py manpages --out data/manpages
    python benches/studies/baselines.py --task data/debian --task data/manpages

On each task folder's train.csv / test.csv (text,label, as datasets.py writes them):

- TF-IDF + logistic regression (scikit-learn, a dev-only reference): word 1-2-grams and
  character 2-5-grams inside word boundaries (char_wb), both with sublinear tf, one
  multinomial logistic regression over the two. C is picked from --c on a seeded, stratified 20%
  validation split of train.csv (best validation macro-F1; the smaller C on a tie), then the
  model is refitted on all of train.csv.
- fastText (supervised, word bigrams, 25 epochs, the usual reference setting) when the
  `fasttext` module imports; otherwise the row says it was not measured and why.
- the majority class of train.csv: the floor.

Per model: macro-F1 and accuracy on test.csv, the training time (vectorisers and classifier,
on all of train.csv) and the prediction throughput (posts/s over test.csv, text to label,
best of 3), all at one thread. Prints a markdown table and writes --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

# One thread for every native library, set before fbdl_fast (torch, numpy) is imported: the
# figures are per core.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

from fbdl_fast.data import Posts, load_posts  # noqa: E402
from fbdl_fast.files import write_atomic  # noqa: E402

C_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)
VALIDATION_FRACTION = 0.2
SEED = 0
FASTTEXT_EPOCHS = 25
PREDICT_REPEATS = 3


@dataclass
class Row:
    """One model on one task; the numbers are None where the model was not measured."""

    task: str
    model: str
    macro_f1: float | None = None
    accuracy: float | None = None
    train_s: float | None = None  # wall time
    predict_posts_per_s: float | None = None  # over wall time
    train_cpu_s: float | None = None  # process CPU time (user + system): steadier under load
    predict_cpu_posts_per_s: float | None = None
    note: str = ""


def scores(truth: Sequence[str], predicted: Sequence[str]) -> tuple[float, float]:
    """(macro-F1 over the labels of `truth`, accuracy)."""
    from sklearn.metrics import accuracy_score, f1_score

    labels = sorted(set(truth))
    macro = f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)
    return float(macro), float(accuracy_score(truth, predicted))


def tfidf_lr(c: float, seed: int) -> object:
    """The TF-IDF (word 1-2 + char_wb 2-5 grams, sublinear tf) + logistic regression pipeline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
    )
    return make_pipeline(features, LogisticRegression(C=c, max_iter=3000, random_state=seed))


def pick_c(
    texts: Sequence[str], labels: Sequence[str], grid: Sequence[float], seed: int
) -> tuple[float, dict[float, float]]:
    """The C of `grid` with the best macro-F1 on a stratified validation split of the training
    posts (the smaller C on a tie), and every C's validation macro-F1."""
    from sklearn.model_selection import train_test_split

    fit_x, val_x, fit_y, val_y = train_test_split(
        list(texts), list(labels), test_size=VALIDATION_FRACTION, random_state=seed,
        stratify=list(labels),
    )  # fmt: skip
    found: dict[float, float] = {}
    for c in sorted(grid):
        model = tfidf_lr(c, seed)
        model.fit(fit_x, fit_y)  # type: ignore[attr-defined]
        found[c] = scores(val_y, model.predict(val_x))[0]  # type: ignore[attr-defined]
    best = max(sorted(found), key=lambda c: (found[c], -c))
    return best, found


def timed(work: Callable[[], object]) -> tuple[object, float, float]:
    """(work(), wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def throughput(predict: Callable[[list[str]], object], texts: list[str]) -> tuple[float, float]:
    """Posts per second of predict(texts) over wall and over CPU time, each the best of
    PREDICT_REPEATS runs."""
    runs = [timed(lambda: predict(texts))[1:] for _ in range(PREDICT_REPEATS)]
    tick = 1e-9  # a clock's resolution: a run too short to measure is not infinitely fast
    wall, cpu = (max(tick, min(run[k] for run in runs)) for k in (0, 1))
    return len(texts) / wall, len(texts) / cpu


def run_tfidf(
    task: str, train: Posts, test: Posts, grid: Sequence[float], seed: int
) -> tuple[Row, dict]:
    """TF-IDF + LR on one task: C picked on validation, refitted on all of train, scored."""
    (best, found), search_s, _ = timed(lambda: pick_c(train.texts, train.labels, grid, seed))
    model = tfidf_lr(best, seed)
    _, train_s, train_cpu_s = timed(lambda: model.fit(list(train.texts), list(train.labels)))  # type: ignore[attr-defined]
    macro, accuracy = scores(test.labels, model.predict(list(test.texts)))  # type: ignore[attr-defined]
    rate, cpu_rate = throughput(model.predict, list(test.texts))  # type: ignore[attr-defined]
    edge = " (the grid's largest)" if best == max(grid) and len(grid) > 1 else ""
    note = f"C={best:g}{edge}"
    row = Row(task, "TF-IDF + LR", macro, accuracy, train_s, rate, train_cpu_s, cpu_rate, note)
    return row, {
        "c": best,
        "c_search_s": round(search_s, 2),
        "validation_macro_f1": {f"{c:g}": round(v, 4) for c, v in found.items()},
    }


def run_fasttext(task: str, train: Posts, test: Posts, seed: int) -> Row:
    """fastText supervised (bigrams, FASTTEXT_EPOCHS epochs, 1 thread), or a row saying why
    it was not measured."""
    try:
        import fasttext  # type: ignore[import-not-found]
    except ImportError:
        return Row(task, "fastText", note="not measured: the fasttext module is not installed")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.txt"
        lines = (f"__label__{label} {' '.join(text.split())}" for text, label in
                 zip(train.texts, train.labels))  # fmt: skip
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        model, train_s, train_cpu_s = timed(
            lambda: fasttext.train_supervised(
                str(path), epoch=FASTTEXT_EPOCHS, wordNgrams=2, thread=1, seed=seed, verbose=0
            )
        )
    texts = [" ".join(text.split()) for text in test.texts]

    # fastText answers "__label__1"; the reader may have read the label 1 as a number
    label_of = {f"__label__{label}": label for label in set(train.labels)}

    def predict(batch: list[str]) -> list[object]:
        return [label_of[labels[0]] for labels in model.predict(batch)[0]]

    macro, accuracy = scores(test.labels, predict(texts))
    rate, cpu_rate = throughput(predict, texts)
    note = f"wordNgrams=2, {FASTTEXT_EPOCHS} epochs"
    return Row(task, "fastText", macro, accuracy, train_s, rate, train_cpu_s, cpu_rate, note)


def run_majority(task: str, train: Posts, test: Posts) -> Row:
    """Every test post labelled with train.csv's most frequent label."""
    label = Counter(train.labels).most_common(1)[0][0]
    macro, accuracy = scores(test.labels, [label] * len(test.labels))
    return Row(task, "majority class", macro, accuracy, note=f"always {label}")


def evaluate_task(folder: Path, grid: Sequence[float], seed: int) -> tuple[list[Row], dict]:
    """Every baseline on folder/train.csv and folder/test.csv."""
    for name in ("train.csv", "test.csv"):
        if not (folder / name).is_file():
            raise SystemExit(
                f"baselines.py: --task {folder} has no {name}; a task folder holds train.csv "
                "and test.csv (build one with benches/studies/datasets.py)"
            )
    train, test = load_posts(folder / "train.csv"), load_posts(folder / "test.csv")
    task = folder.name
    tfidf_row, choice = run_tfidf(task, train, test, grid, seed)
    rows = [run_majority(task, train, test), tfidf_row, run_fasttext(task, train, test, seed)]
    sizes = {
        "train": len(train.texts),
        "test": len(test.texts),
        "per_class_train": dict(sorted(Counter(train.labels).items())),
    }
    return rows, {"sizes": sizes, "tfidf": choice}


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table; wall time first, process CPU time in brackets."""
    lines = [
        "| task | model | macro-F1 | accuracy | train s, wall (CPU) | "
        "predict posts/s, wall (CPU) | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        train = "—" if r.train_s is None else f"{r.train_s:.1f} ({_number(r.train_cpu_s, 1)})"
        rate = "—"
        if r.predict_posts_per_s is not None:
            cpu = r.predict_cpu_posts_per_s
            rate = f"{r.predict_posts_per_s:,.0f} ({'—' if cpu is None else f'{cpu:,.0f}'})"
        lines.append(
            f"| {r.task} | {r.model} | {_number(r.macro_f1, 3)} | {_number(r.accuracy, 3)} | "
            f"{train} | {rate} | {r.note} |"
        )
    return "\n".join(lines) + "\n"


def machine() -> str:
    """The CPU model and the number of cores the process sees."""
    model = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--task", type=Path, action="append", required=True,
        help="a folder with train.csv and test.csv (repeat for several tasks)",
    )  # fmt: skip
    parser.add_argument(
        "--c", type=float, nargs="+", default=list(C_GRID),
        help=f"logistic regression C values tried on validation (default: {C_GRID})",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=SEED, help=f"default: {SEED}")
    parser.add_argument(
        "--json", type=Path, default=Path("bench-report/baselines.json"), help="results file"
    )
    args = parser.parse_args(argv)
    if any(c <= 0 for c in args.c):
        parser.error(f"--c {args.c}: every C must be above 0")
    rows: list[Row] = []
    tasks: dict[str, dict] = {}
    for folder in args.task:
        found, details = evaluate_task(folder, args.c, args.seed)
        rows += found
        tasks[folder.name] = details
    text = table(rows)
    print(text, end="")
    result = {
        "command": " ".join(["python benches/studies/baselines.py", *(argv or sys.argv[1:])]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "threads": 1,
        # the machine may be shared: the 1-minute load average when the last task finished
        "load_average_1min": round(os.getloadavg()[0], 2),
        "rows": [asdict(r) for r in rows],
        "tasks": tasks,
    }
    write_atomic(args.json, json.dumps(result, indent=2) + "\n")
    print(f"written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
