"""benches/gpu/gpu_check.py, the one command for a lent GPU: its report is always written (no CUDA,
a stage past its budget), its goals are judged from the rows, and the CPU smoke run measures."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
GPU_BENCHES = REPO / "benches" / "gpu"
sys.path.insert(0, str(GPU_BENCHES))

import gpu_check  # noqa: E402
import gpu_report  # noqa: E402


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(GPU_BENCHES / "gpu_check.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_without_cuda_it_exits_non_zero_after_writing_the_reason(tmp_path: Path) -> None:
    done = _run("--out", str(tmp_path))
    assert done.returncode == 2, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["checks"]["cuda"] is False
    assert "no CUDA device" in results["problems"][0]
    assert results["stages"][0]["status"] == "not run"
    assert "Cannot run:** no CUDA device" in (tmp_path / "report.md").read_text()
    assert "--cpu-smoke" in done.stderr


def test_a_stage_past_its_budget_is_stopped_and_counted(tmp_path: Path) -> None:
    slow = tmp_path / "test_sleeps.py"
    slow.write_text(
        textwrap.dedent(
            """
            import time

            def test_quick():
                pass

            def test_sleeps():
                time.sleep(60)
            """
        )
    )
    stage = gpu_check.Stage("sleepy", 8, [str(slow), "-p", "no:cacheprovider"])
    log = tmp_path / "log"
    gpu_check.run_stage(stage, dict(__import__("os").environ), log, tmp_path / "rows.jsonl")
    assert stage.status == "timeout"
    assert stage.elapsed_s is not None and stage.elapsed_s < 30
    assert "stopped at its budget of 8 s" in log.read_text()


def test_pytest_closing_counts_are_read_from_the_stage_log(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text(
        "===== a (budget 5 s): pytest\n3 passed in 1s\n"
        "===== b (budget 5 s): pytest\n.F\n1 failed, 4 passed, 2 skipped, 1 error in 2.0s\n"
    )
    assert gpu_check._test_counts(log, "a") == {"passed": 3}
    assert gpu_check._test_counts(log, "b") == {"failed": 1, "passed": 4, "skipped": 2, "error": 1}


def _ln_row(hidden: int, speedup: float, mode: str = "forward+backward", **extra) -> dict:
    return {"rows": 16384, "hidden": hidden, "precision": "bf16-autocast", "mode": mode,
            "speedup": speedup, "ours_ms": 1.0, "torch_ms": speedup, **extra}  # fmt: skip


def test_goals_take_the_worst_row_and_say_met_missed_or_not_measured() -> None:
    results = {
        "rows": {
            "layer_norm": [
                _ln_row(768, 1.7),
                _ln_row(1024, 1.4),  # the worst of the two: the 1.5x goal is missed
                _ln_row(4096, 1.3),
                _ln_row(8192, 1.25),
                _ln_row(768, 2.0, mode="forward", ours_pct_of_copy=91.0),
            ]
        }
    }
    verdicts = {g["goal"].split(" >=")[0].split(" <=")[0]: g for g in gpu_report.goals(results)}
    small = verdicts["LayerNorm fwd+bwd vs torch, bf16 autocast, N 768/1024"]
    assert (small["worst"], small["count"], small["verdict"]) == (1.4, 2, "missed")
    large = verdicts["LayerNorm fwd+bwd vs torch, bf16 autocast, N 4096/8192"]
    # 1.25 >= 1.2 against torch eager, but met only once it also holds against the best peer
    assert (large["worst"], large["verdict"]) == (1.25, "not measured against the peers")
    copy = verdicts["LayerNorm forward, % of the device copy's GB/s (M 16384/65536)"]
    assert (copy["worst"], copy["verdict"]) == (91.0, "met")
    assert verdicts["Attention: time with dropout 0.1 / without"]["verdict"] == "not measured"


def test_dropout_cost_pairs_each_problem_with_its_no_dropout_twin() -> None:
    def row(dropout: float, ms: float, length: int = 512) -> dict:
        return {"length": length, "head_dim": 64, "padded": True, "mode": "forward",
                "dropout": dropout, "ours_ms": ms}  # fmt: skip

    rows = [row(0.0, 2.0), row(0.1, 2.6), row(0.0, 1.0, 128), row(0.1, 1.1, 128)]
    assert gpu_report._dropout_cost(rows) == pytest.approx([1.3, 1.1])


def test_cpu_smoke_of_one_stage_measures_and_reports_every_problem(tmp_path: Path) -> None:
    done = _run("--cpu-smoke", "--only", "layer_norm", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [s["status"] for s in results["stages"]] == ["passed"]
    rows = results["rows"]["layer_norm"]
    problems = {(r["hidden"], r["precision"], r["mode"]) for r in rows}
    assert len(problems) == len(rows) == 2 * 4 * 2  # hidden x precision x pass
    assert all(r["ours_ms"] > 0 and r["torch_ms"] > 0 and r["speedup"] > 0 for r in rows)
    report = (tmp_path / "report.md").read_text()
    assert "## LayerNorm: fbdl_fast vs torch.nn.LayerNorm" in report
    assert "| 64 | 4096 | bf16-autocast | forward+backward |" in report
    assert not (tmp_path / "triton-cache").exists() and not (tmp_path / "rows.jsonl").exists()


def test_a_goal_over_malformed_rows_reports_the_error_instead_of_not_measured() -> None:
    results = {"rows": {"focal_loss": [{"mode": "forward+backward", "classes": 32000}]}}
    verdicts = {g["goal"].split(" >=")[0]: g for g in gpu_report.goals(results)}
    assert verdicts["Focal loss fwd+bwd vs the composition, C 32000/50257"]["verdict"] == (
        "error: KeyError('speedup')"
    )


def test_the_documented_device_command_installs_the_wheels_and_runs_this_script() -> None:
    """docs/gpu-budget.md's device command: the H100 kind, dist/ carried, our wheel installed
    without an index, then this script; `make gpu-wheel` fills dist/ with both wheels."""
    doc = (REPO / "docs" / "gpu-budget.md").read_text(encoding="utf-8")
    section = doc.split("## The device command\n", 1)[1].split("\n## ", 1)[0]
    assert '`kind: "nvidia-h100-x1"`' in section and '`carry: ["dist"]`' in section
    command = next(line for line in section.splitlines() if "gpu_check.py" in line)
    assert command.startswith(
        "python3 -m pip install -q --no-deps --no-index dist/fbdl_fast-*.whl &&"
    )
    script_args = command.split("python3 benches/gpu/gpu_check.py", 1)[1].split()
    assert (GPU_BENCHES / "gpu_check.py").is_file()
    assert script_args == ["--out", '"$OUT/gpu"']
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\ngpu-wheel:", 1)[1].split("\n\n", 1)[0]
    assert "--out dist" in recipe
    assert "pip download --quiet --no-deps --only-binary :all: liger-kernel==" in recipe


def test_junit_summary_counts_and_names_each_failed_test(tmp_path: Path) -> None:
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="1" skipped="0">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="assert 1 == 2"/>'
        '</testcase><testcase classname="tests.test_b" name="test_err">'
        "<error>Traceback: boom</error></testcase></testsuite></testsuites>"
    )
    summary = gpu_check.junit_summary(xml)
    assert (summary["tests"], summary["failures"], summary["errors"]) == (3, 1, 1)
    assert summary["failed"] == [
        {"test": "tests.test_a::test_bad", "message": "assert 1 == 2"},
        {"test": "tests.test_b::test_err", "message": "Traceback: boom"},
    ]
    report = gpu_report.markdown({"junit": {"kernel tests": summary}})
    assert "- kernel tests FAILED `tests.test_a::test_bad`: assert 1 == 2" in report
    assert gpu_check.junit_summary(tmp_path / "absent.xml") is None


def test_a_cpu_smoke_run_does_not_judge_the_gpu_goals() -> None:
    results = {"mode": "cpu-smoke", "rows": {"layer_norm": [_ln_row(768, 0.5)]}}
    verdict = gpu_report.goals(results)[0]
    assert (verdict["worst"], verdict["verdict"]) == (0.5, "not judged on a CPU")


def test_cpu_smoke_of_the_training_steps_reports_the_bert_rows(tmp_path: Path) -> None:
    done = _run("--cpu-smoke", "--only", "training steps", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]["models"]
    bert = [r for r in rows if r["model"] in ("minilm", "bert-base")]
    variants = ["reference fp32", "patched fp32", "reference bfloat16", "patched bfloat16"]
    assert [(r["model"], r["variant"]) for r in bert] == [
        (model, variant) for model in ("minilm", "bert-base") for variant in variants
    ]
    for r in bert:
        assert r["posts_per_s"] == pytest.approx(r["batch"][0] / r["step_ms"] * 1e3)
        assert r["patched_layers"].startswith("patched ")  # LayerNorm and attention swapped
        assert 0 <= r["errors"]["loss"] < 1e-2 and 0 <= r["errors"]["grad"] < 0.1
    # Dropout off, same weights, torch's code on both sides here: the errors are the same.
    for model in ("minilm", "bert-base"):
        for dtype in ("fp32", "bfloat16"):
            same = [r["errors"] for r in bert if r["model"] == model and dtype in r["variant"]]
            assert same[0] == same[1]
    report = (tmp_path / "report.md").read_text()
    assert "| minilm | patched bfloat16 | 4x16 |" in report
    assert "| transformer | patched fp32 | 4x16 |" in report and "logit diff" in report


def test_cpu_smoke_of_the_autotune_stage_keeps_its_rows_apart(tmp_path: Path) -> None:
    """The autotune stage runs a few kernel benches with FBDL_FAST_AUTOTUNE=1 (only that stage):
    its rows are recorded as `op+autotune`; the bytes-moved table (committed, counted under the
    interpreter) is in the report too."""
    autotune = {s.name: s for s in gpu_check.stages(tmp_path)}["autotune"]
    assert autotune.env == {"FBDL_FAST_AUTOTUNE": "1"}
    assert not autotune.default  # left out of the 8 minutes: run with --only
    done = _run("--cpu-smoke", "--only", "autotune", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["rows"]) == {"layer_norm+autotune"}  # no rule rows from this stage
    tuned = results["rows"]["layer_norm+autotune"]
    assert {(r["hidden"], r["precision"], r["mode"]) for r in tuned} == {
        (768, "bf16-autocast", "forward"), (768, "bf16-autocast", "forward+backward")
    }  # fmt: skip
    report = (tmp_path / "report.md").read_text()
    assert "## Autotune vs the rule (FBDL_FAST_AUTOTUNE=1)" in report
    assert "## Bytes moved per element" in report and results["bytes_moved"]["rows"]


def test_autotune_rows_are_set_beside_the_rules_of_the_same_problem() -> None:
    def row(ms: float, mode: str = "forward", hidden: int = 768) -> dict:
        return {"rows": 4096, "hidden": hidden, "precision": "bf16-autocast", "mode": mode,
                "ours_ms": ms, "speedup": 2.0}  # fmt: skip

    rows = {
        "layer_norm": [row(3.0), row(9.0, "forward+backward")],
        "layer_norm+autotune": [row(2.0), row(10.0, hidden=1024)],
    }
    lines = gpu_report._autotune(rows)
    problem = "rows=4096 hidden=768 precision=bf16-autocast mode=forward"
    assert f"| layer_norm | {problem} | 3 | 2 | 1.50x | 2.00x |" in lines
    assert any("hidden=1024" in line and "| n/a |" in line for line in lines)  # no rule row
    assert gpu_report._autotune({"layer_norm": rows["layer_norm"]}) == []
