"""benches/studies/serving_table.py on tiny runs: every row built, scored and timed, the ONNX
rows through `predict`/`evaluate --checkpoint onnx|onnx-int8` as the others; the student
distilled with distill's defaults (no unlabelled posts unless --unlabelled); a second invocation
with another teacher re-distils only the student; the goals' arithmetic; a teacher folder left
as it was.

The "MiniLM" run here is a tiny CNN (no MiniLM in the tests): one trained by the CLI, with the
integrity manifest a real run has, or make_run's untrained one, without; the script treats the
--minilm folder as any run folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from fbdl_fast.checkpoint import load_checkpoint
from fbdl_fast.cli import main as cli_main
from tiny_run import load_bench_script, make_run, write_posts_csv

TINY = "--epochs 1 --input-dim 16 --hidden-dim 16 --vocab-size 200 --max-length 32"


serving = load_bench_script("studies/serving_table.py")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("serving")
    data = root / "data"
    data.mkdir()
    write_posts_csv(data / "train.csv", 240, seed=1)
    write_posts_csv(data / "test.csv", 50, seed=2)
    # unlabelled.csv (as datasets.py writes it): used only when --unlabelled names it
    write_posts_csv(data / "unlabelled.csv", 40, seed=3, header=("text", "section"))
    # A teacher trained by the CLI, so with the integrity manifest a real MiniLM run has.
    argv = ["train", "--data", str(data / "train.csv"), "--model", "cnn", *TINY.split()]
    assert cli_main([*argv, "--output", str(root / "teacher"), "--quiet"]) == 0
    teacher = root / "teacher"
    assert (teacher / "manifest.json").is_file()
    before = {p.name: _sha(p) for p in teacher.iterdir()}
    out = root / "out"
    argv = ["--data", str(data), "--minilm", str(teacher), "--out", str(out), "--threads", "1"]
    argv += ["--posts", "70", "--minilm-posts", "30", "--train-args", TINY]
    argv += ["--ngram-args", "--batch-size 64"]
    argv += ["--minilm-keep-fp32", "output_projection"]
    assert serving.main(argv) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return {"root": root, "out": out, "teacher": teacher, "before": before, "results": results}


def test_every_row_is_scored_timed_and_sized(built: dict[str, Any]) -> None:
    out, rows = built["out"], built["results"]["rows"]
    # The int8 ONNX row is there when this fbdl-fast's export offers the format.
    offered = serving.export_formats()
    assert {"int8", "onnx"} <= set(offered)
    assert list(rows) == [k for k in serving.ROWS if k != "onnx-int8" or k in offered]
    files = {
        "minilm": out / "minilm" / "best.pt",
        "minilm-int8": out / "minilm" / "model.int8.pt",
        "cnn": out / "cnn" / "best.pt",
        "ngram": out / "ngram" / "best.pt",
        "cnn-distilled": out / "cnn-distilled" / "best.pt",
        "cnn-distilled-int8": out / "cnn-distilled" / "model.int8.pt",
        "onnx": out / rows["onnx"]["run"] / "model.onnx",
        "onnx-int8": out / rows["onnx"]["run"] / "model.int8.onnx",
    }
    table = (out / "table.md").read_text(encoding="utf-8")
    for key, row in rows.items():
        assert row["size_mib"] == files[key].stat().st_size / 2**20
        assert row["posts"] == (30 if row["run"] == "minilm" else 70)
        timing = row["threads_1"]
        assert timing["posts_per_s"] == pytest.approx(row["posts"] / timing["wall_s"])
        assert timing["posts_per_cpu_s"] == pytest.approx(row["posts"] / timing["cpu_s"])
        # A Python process with torch imported: far above the launcher's own few MiB.
        assert timing["peak_rss_mib"] > 100
        assert f"| {row['title']} | {row['macro_f1']:.3f} | {row['accuracy']:.3f} |" in table
    # The n-gram row is `train --model ngram`'s run.
    ngram = json.loads((out / "ngram" / "config.json").read_text(encoding="utf-8"))
    assert ngram["model"] == "ngram"
    # The student was distilled on this teacher's cached logits with distill's defaults: no
    # unlabelled posts (the data folder's unlabelled.csv is not taken unasked), two augmented
    # variants of each training post.
    assert (out / "cnn-distilled" / "teacher_logits.pt").is_file()
    meta = json.loads((out / "cnn-distilled" / "config.json").read_text(encoding="utf-8"))
    assert meta["distillation"]["unlabelled_posts"] == 0
    assert meta["distillation"]["augment"]["variants"] == 2
    assert (out / "cnn-distilled" / "transfer_set.pt").is_file()
    assert "no unlabelled posts" in table and "(2 augmented variants a post)" in table
    assert "1-minute load average after each timing" in table
    # --minilm-keep-fp32 reaches the MiniLM's int8 export, and only that one
    kept = {
        run: load_checkpoint(out / run / "model.int8.pt")["kept_fp32"]
        for run in ("minilm", "cnn-distilled")
    }
    assert kept == {"minilm": ["output_projection"], "cnn-distilled": []}
    # The ONNX files are of the fp32 run with the best macro-F1.
    fp32 = ("minilm", "cnn", "cnn-distilled")
    assert {rows[k]["run"] for k in serving.ONNX_ROWS if k in rows} == {
        max(fp32, key=lambda k: rows[k]["macro_f1"])
    }


def test_scores_match_evaluate_and_onnx_runs_through_predict(
    built: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out, rows = built["out"], built["results"]["rows"]
    test = built["root"] / "data" / "test.csv"
    source = out / rows["onnx"]["run"]
    capsys.readouterr()
    argv = ["evaluate", "--run", str(source), "--data", str(test), "--json", "--quiet"]
    assert cli_main(argv) == 0
    scores = json.loads(capsys.readouterr().out)
    # onnxruntime's labels are torch's: the same scores as evaluate on the fp32 run.
    assert rows["onnx"]["macro_f1"] == pytest.approx(scores["macro_f1"], abs=1e-12)
    assert rows["onnx"]["accuracy"] == pytest.approx(scores["accuracy"], abs=1e-12)
    assert rows[rows["onnx"]["run"]]["macro_f1"] == pytest.approx(scores["macro_f1"], abs=1e-12)
    # Every row, ONNX included, is timed as `fbdl-fast predict --checkpoint ...` (its log: the
    # child's stderr, empty under --quiet; a failed child stops the script).
    assert not hasattr(serving, "_onnx_predict")
    for key, row in rows.items():
        cmd = serving.predict_cmd(source, row["checkpoint"], test, out / "x.jsonl", 1)
        assert cmd[1:4] == ["-m", "fbdl_fast", "predict"] and cmd[-2:] == [
            "--checkpoint",
            row["checkpoint"],
        ]
        assert (out / f"predict-{key}-1.log").read_text(encoding="utf-8") == ""


def test_the_given_minilm_folder_is_left_as_it_was(built: dict[str, Any]) -> None:
    teacher = built["teacher"]
    assert {p.name: _sha(p) for p in teacher.iterdir()} == built["before"]
    assert _sha(built["out"] / "minilm" / "best.pt") == built["before"]["best.pt"]
    assert (built["out"] / "minilm" / "manifest.json").is_file()


def _row(f1: float, rate: float | None) -> dict[str, Any]:
    timing = {"posts_per_s": rate, "posts_per_cpu_s": rate / 2 if rate else None}
    return {"macro_f1": f1} | ({} if rate is None else {"threads_1": timing})


def test_goals_from_hand_numbers() -> None:
    rows = {
        "minilm": _row(0.80, 100.0),
        "minilm-int8": _row(0.795, 160.0),
        "cnn": _row(0.60, 2000.0),
        "cnn-distilled": _row(0.74, 390.0),
        "ngram": _row(0.70, 20_500.0),
    }
    lines = serving.goals(rows, 1)
    # (0.74 - 0.60) / (0.80 - 0.60) = 70%; 390 / 100 = 3.9x; 0.5 points; 1.6x.
    assert "recovers 70% of the macro-F1 gap" in lines[0] and lines[0].endswith(": met")
    assert "0.600 -> 0.740 of 0.800" in lines[0]
    assert "3.9x as fast" in lines[1] and "NOT met (per CPU second: 3.9x)" in lines[1]
    assert "20,500 posts/s" in lines[2] and "met (10,250 per CPU second)" in lines[2]
    assert "NOT" not in lines[2]
    assert "costs 0.50 points" in lines[3] and "1.60x the fp32 throughput" in lines[3]
    assert "NOT" not in lines[3]
    rows["cnn-distilled"] = _row(0.7195, 400.0)
    rows["ngram"] = _row(0.70, 19_999.0)
    lines = serving.goals(rows, 1)
    assert "recovers 60%" in lines[0] and lines[0].endswith("NOT met")  # 59.75%, shown rounded
    assert "4.0x as fast" in lines[1] and "NOT" not in lines[1]
    assert "NOT met" in lines[2]


def test_goals_without_a_gap_or_timings() -> None:
    rows = {
        "minilm": _row(0.60, None),
        "minilm-int8": _row(0.58, None),
        "cnn": _row(0.62, None),
        "cnn-distilled": _row(0.70, None),
        "ngram": _row(0.50, None),
    }
    lines = serving.goals(rows, 1)
    # A teacher below the CNN leaves no gap: the share is not computed, so not a pass.
    assert lines[0].endswith("no gap to recover") and "%" not in lines[0]
    assert lines[1] == "- speed goals: not timed at 1 thread(s)"
    assert "costs 2.00 points" in lines[2] and lines[2].endswith("NOT met")


def test_another_teacher_redistils_only_the_student(built: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(built["out"], out)
    cnn, ngram = _sha(out / "cnn" / "best.pt"), _sha(out / "ngram" / "best.pt")
    teacher = make_run(tmp_path / "teacher", seed=1)
    data = built["root"] / "data"
    argv = ["--data", str(data), "--minilm", str(teacher), "--out", str(out), "--no-timing"]
    argv += ["--train-args", TINY, "--unlabelled", str(data / "unlabelled.csv")]
    assert serving.main(argv) == 0
    assert _sha(out / "minilm" / "best.pt") == _sha(teacher / "best.pt")
    meta = json.loads((out / "cnn-distilled" / "config.json").read_text(encoding="utf-8"))
    assert meta["distillation"]["teacher_sha256"] == _sha(teacher / "best.pt")
    # --unlabelled's posts are soft targets, and distill then makes no augmented variants.
    assert meta["distillation"]["unlabelled_posts"] == 40 and "augment" not in meta["distillation"]
    # The runs that do not learn from the teacher are reused.
    assert _sha(out / "cnn" / "best.pt") == cnn and _sha(out / "ngram" / "best.pt") == ngram
    # --no-timing: scored and sized, not timed; the table shows "-" for each timing.
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert all("threads_1" not in row and row["size_mib"] > 0 for row in results["rows"].values())
    table = (out / "table.md").read_text(encoding="utf-8")
    assert "| - | - | - |" in table and "40 unlabelled posts for distillation" in table
    assert "speed goals: not timed" in table


def test_a_minilm_folder_without_best_pt_is_refused(tmp_path: Path) -> None:
    teacher = make_run(tmp_path / "teacher")
    (teacher / "best.pt").unlink()
    with pytest.raises(SystemExit, match=r"best\.pt missing; expected a finished"):
        serving.copy_run(teacher, tmp_path / "copy")
