"""benches/studies/serving_table.py on tiny runs: every row built, scored and timed, the ONNX
row through `predict`/`evaluate --checkpoint onnx` as the others; the goals' arithmetic; a
teacher folder left as it was.

The "MiniLM" run here is make_run's tiny untrained CNN (no MiniLM in the tests): the script
treats the --minilm folder as any run folder.
"""

from __future__ import annotations

import hashlib
import json
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
    # unlabelled.csv (as datasets.py writes it): the distilled CNN's extra soft targets
    write_posts_csv(data / "unlabelled.csv", 40, seed=3, header=("text", "section"))
    teacher = make_run(root / "teacher")
    before = {p.name: _sha(p) for p in teacher.iterdir()}
    out = root / "out"
    argv = ["--data", str(data), "--minilm", str(teacher), "--out", str(out), "--threads", "1"]
    argv += ["--posts", "70", "--minilm-posts", "30", "--train-args", TINY]
    argv += ["--minilm-keep-fp32", "output_projection"]
    assert serving.main(argv) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return {"root": root, "out": out, "teacher": teacher, "before": before, "results": results}


def test_every_row_is_scored_timed_and_sized(built: dict[str, Any]) -> None:
    out, rows = built["out"], built["results"]["rows"]
    assert list(rows) == list(serving.ROWS)
    files = {
        "minilm": out / "minilm" / "best.pt",
        "minilm-int8": out / "minilm" / "model.int8.pt",
        "cnn": out / "cnn" / "best.pt",
        "cnn-distilled": out / "cnn-distilled" / "best.pt",
        "cnn-distilled-int8": out / "cnn-distilled" / "model.int8.pt",
        "onnx": out / rows["onnx"]["run"] / "model.onnx",
    }
    table = (out / "table.md").read_text(encoding="utf-8")
    for key, row in rows.items():
        assert row["size_mib"] == files[key].stat().st_size / 2**20
        assert row["posts"] == (30 if row["run"] == "minilm" else 70)
        timing = row["threads_1"]
        assert timing["posts_per_s"] == pytest.approx(row["posts"] / timing["wall_s"])
        # A Python process with torch imported: far above the launcher's own few MiB.
        assert timing["peak_rss_mib"] > 100
        assert f"| {row['title']} | {row['macro_f1']:.3f} | {row['accuracy']:.3f} |" in table
    # The distilled CNN was trained on this teacher's cached logits, with the data folder's
    # unlabelled posts by default.
    assert (out / "cnn-distilled" / "teacher_logits.pt").is_file()
    meta = json.loads((out / "cnn-distilled" / "config.json").read_text(encoding="utf-8"))
    assert meta["distillation"]["unlabelled_posts"] == 40
    assert "40 unlabelled posts for distillation" in table
    # --minilm-keep-fp32 reaches the MiniLM's int8 export, and only that one
    kept = {
        run: load_checkpoint(out / run / "model.int8.pt")["kept_fp32"]
        for run in ("minilm", "cnn-distilled")
    }
    assert kept == {"minilm": ["output_projection"], "cnn-distilled": []}
    # The ONNX file is of the fp32 run with the best macro-F1.
    fp32 = ("minilm", "cnn", "cnn-distilled")
    assert rows["onnx"]["run"] == max(fp32, key=lambda k: rows[k]["macro_f1"])


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


def test_goals_from_hand_numbers() -> None:
    def row(f1: float, rate: float) -> dict[str, Any]:
        return {"macro_f1": f1, "threads_1": {"posts_per_s": rate}}

    rows = {
        "minilm": row(0.80, 100.0),
        "minilm-int8": row(0.795, 160.0),
        "cnn": row(0.60, 2000.0),
        "cnn-distilled": row(0.72, 900.0),
    }
    lines = serving.goals(rows, 1)
    # (0.72 - 0.60) / (0.80 - 0.60) = 60%; 900 / 100 = 9x; 0.5 points; 1.6x.
    assert "recovers 60% of the macro-F1 gap" in lines[0] and lines[0].endswith(": met")
    assert "9.0x as fast" in lines[1] and lines[1].endswith("NOT met")
    assert "costs 0.50 points" in lines[2] and "1.60x the fp32 throughput" in lines[2]
    assert "NOT" not in lines[2]


def test_a_minilm_folder_without_best_pt_is_refused(tmp_path: Path) -> None:
    teacher = make_run(tmp_path / "teacher")
    (teacher / "best.pt").unlink()
    with pytest.raises(SystemExit, match=r"best\.pt missing; expected a finished"):
        serving.copy_run(teacher, tmp_path / "copy")
