"""benches/studies/baselines.py on a tiny task folder: the rows, their scores, the choice of C
on validation, the fastText row when the module is missing, the JSON and a task folder
without its files."""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from tiny_run import load_bench_script

baselines = load_bench_script("studies/baselines.py")

WORDS = {"games": "puzzle arcade", "net": "http socket", "math": "algebra matrix"}


def write_task(folder: Path, per_label_train: int = 12, per_label_test: int = 4) -> Path:
    """train.csv / test.csv whose label is given away by its words: a separable task."""
    folder.mkdir(parents=True)
    for name, n in (("train.csv", per_label_train), ("test.csv", per_label_test)):
        lines = ["text,label"] + [
            f"{WORDS[label]} post {name[:-4]} {i},{label}" for label in WORDS for i in range(n)
        ]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def without_fasttext(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import fasttext` fails, as where it is not installed."""
    real_import = builtins.__import__

    def refuse(name: str, *args: object, **kwargs: object) -> object:
        if name == "fasttext":
            raise ImportError("No module named 'fasttext'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)


def test_rows_scores_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a separable task TF-IDF + LR is perfect and the smallest C wins the tie; the
    majority row scores one class of three (accuracy 1/3, macro-F1 (0.5 + 0 + 0) / 3); fastText
    is a row saying it was not measured; the JSON holds the rows and the validation scores."""
    without_fasttext(monkeypatch)
    task = write_task(tmp_path / "tiny")
    out = tmp_path / "report" / "baselines.json"
    assert baselines.main(["--task", str(task), "--c", "10", "1", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    rows = {row["model"]: row for row in saved["rows"]}
    assert set(rows) == {"majority class", "TF-IDF + LR", "fastText"}
    tfidf = rows["TF-IDF + LR"]
    assert (tfidf["macro_f1"], tfidf["accuracy"]) == (1.0, 1.0)
    assert tfidf["note"] == "C=1" and saved["tasks"]["tiny"]["tfidf"]["c"] == 1.0
    assert tfidf["train_s"] > 0 and tfidf["predict_posts_per_s"] > 0
    assert tfidf["train_cpu_s"] > 0 and tfidf["predict_cpu_posts_per_s"] > 0
    majority = rows["majority class"]
    assert majority["accuracy"] == pytest.approx(1 / 3)
    assert majority["macro_f1"] == pytest.approx(0.5 / 3)
    assert majority["predict_posts_per_s"] is None
    assert rows["fastText"]["macro_f1"] is None
    assert "not installed" in rows["fastText"]["note"]
    assert saved["tasks"]["tiny"]["sizes"]["train"] == 36
    assert saved["threads"] == 1


def test_table_marks_what_was_not_measured() -> None:
    """A row without numbers prints dashes; numbers print rounded, CPU time in brackets."""
    rows = [
        baselines.Row("t", "TF-IDF + LR", 0.71234, 0.8, 2.04, 4187.4, 1.96, 5012.6, "C=10"),
        baselines.Row("t", "fastText", note="not measured"),
    ]
    text = baselines.table(rows)
    assert "| t | TF-IDF + LR | 0.712 | 0.800 | 2.0 (2.0) | 4,187 (5,013) | C=10 |" in text
    assert "| t | fastText | — | — | — | — | not measured |" in text


def test_a_task_without_its_files_is_refused(tmp_path: Path) -> None:
    """A --task folder missing test.csv is named in one line with what a task folder holds."""
    task = tmp_path / "half"
    task.mkdir()
    (task / "train.csv").write_text("text,label\na,b\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"--task .*half has no test\.csv"):
        baselines.main(["--task", str(task), "--json", str(tmp_path / "x.json")])


class StubFastText:
    """A stand-in for the fasttext module: its model answers "__label__1" for every post."""

    trained_on: ClassVar[list[str]] = []

    class Model:
        def predict(self, texts: list[str]) -> tuple[list[tuple[str]], list[tuple[float]]]:
            return [("__label__1",)] * len(texts), [(1.0,)] * len(texts)

    @classmethod
    def train_supervised(cls, path: str, **settings: object) -> Model:
        cls.trained_on = Path(path).read_text(encoding="utf-8").splitlines()
        return cls.Model()


def test_fasttext_row_maps_its_labels_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fastText's "__label__1" is the label 1 even where the reader read the labels as numbers
    (man-page sections): with every answer 1, accuracy is the share of 1s in test.csv."""
    monkeypatch.setitem(sys.modules, "fasttext", StubFastText)
    task = tmp_path / "digits"
    task.mkdir()
    for name, n in (("train.csv", 6), ("test.csv", 2)):
        lines = ["text,label"] + [
            f"words {label} {i},{label}" for label in (1, 8) for i in range(n)
        ]
        (task / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    train, test = baselines.load_posts(task / "train.csv"), baselines.load_posts(task / "test.csv")
    row = baselines.run_fasttext("digits", train, test, seed=0)
    assert StubFastText.trained_on[0] == "__label__1 words 1 0"
    assert row.accuracy == 0.5 and row.macro_f1 == pytest.approx((2 / 3 + 0) / 2)
    assert row.predict_posts_per_s > 0 and row.predict_cpu_posts_per_s > 0
