"""The peer rows of the GPU check (benches/gpu/peers.py, peer_report.py, gpu_check's peer
stages): a peer that cannot import, compile or run becomes a "not measured: why" variant of its
row while ours and the other peers are still timed; ours off float64 is never timed; a goal is
met only if it also holds against the best peer; the peers' wheels come from dist/ alone."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
GPU_BENCHES = REPO / "benches" / "gpu"
sys.path.insert(0, str(GPU_BENCHES))
sys.path.insert(0, str(REPO / "benches"))  # measure, which peers.py imports

import gpu_check  # noqa: E402
import gpu_report  # noqa: E402
import peer_report  # noqa: E402
import peers  # noqa: E402


def _cheap(scale: float):
    x = torch.randn(64, 64)
    return lambda: lambda: x * scale


def _liger_factory():
    liger = peers.import_peer("liger_kernel.transformers")
    return lambda: liger.LigerLayerNorm(64)(torch.randn(4, 64))


def test_a_hidden_peer_becomes_a_not_measured_row_and_the_others_are_timed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FBDL_FAST_PEERS_MISSING hides a package as if it were not installed: its variant says
    why, the row is still recorded, and the best peer is picked among those that ran."""
    monkeypatch.setenv(peers.MISSING_ENV, "liger_kernel, transformers")
    monkeypatch.setenv("FBDL_FAST_BENCH_RESULTS", str(tmp_path / "rows.jsonl"))
    with pytest.raises(ImportError, match="liger_kernel is hidden by FBDL_FAST_PEERS_MISSING"):
        peers.import_peer("liger_kernel.transformers")
    row = peers.measure_row(
        "layer_norm_peers",
        {"hidden": 64, "mode": "forward"},
        {"ours": _cheap(1.0), "torch eager": _cheap(2.0), "Liger": _liger_factory},
        ours=["ours"],
        eager="torch eager",
        peers=["torch eager", "Liger"],
        repeats=2,
        warmup=0,
    )
    assert row["variants"]["Liger"] == {
        "not_measured": "not measured: ImportError: liger_kernel is hidden by "
        "FBDL_FAST_PEERS_MISSING"
    }
    assert row["best_peer"] == "torch eager" and row["ours"] == "ours"
    assert row["variants"]["ours"]["ms"] > 0 and row["speedup_vs_best_peer"] > 0
    recorded = json.loads((tmp_path / "rows.jsonl").read_text())
    assert recorded["op"] == "layer_norm_peers" and "not_measured" in recorded["variants"]["Liger"]


def test_a_peer_that_fails_to_compile_or_run_says_why() -> None:
    """An error at build or at the first call (where torch.compile compiles) is the variant's
    reason, its type and first line; a step that works is unaffected."""

    def breaks_at_first_call():
        def step():
            raise RuntimeError("backend refused\nlong traceback text")

        return step

    built = peers.build({"ok": _cheap(1.0), "broken": breaks_at_first_call})
    assert built.not_measured == {"broken": "not measured: RuntimeError: backend refused"}
    assert set(built.steps) == {"ok"} and built.first_call_s["ok"] >= 0


def test_a_peer_that_warns_on_every_call_is_timed_and_its_warning_kept() -> None:
    """The test command turns warnings into errors; a peer's advice (a compiler's, say) must not
    drop its row: the first call's warnings are kept with the variant, the timed calls run."""
    import warnings

    def warns():
        def step():
            warnings.warn("use tensor cores", UserWarning, stacklevel=1)
            return 1

        return step

    row = peers.measure_row(
        "layer_norm_peers", {"hidden": 64}, {"ours": _cheap(1.0), "warns": warns},
        ours=["ours"], eager="warns", peers=["warns"], repeats=2, warmup=1,
    )  # fmt: skip
    assert row["variants"]["warns"]["warnings"] == ["use tensor cores"]
    assert row["variants"]["warns"]["ms"] > 0 and row["best_peer"] == "warns"


def test_ours_off_float64_fails_before_anything_is_timed() -> None:
    """A wrong result of ours never gets a speed: the error above the tolerance asserts."""
    with pytest.raises(AssertionError, match="ours off float64"):
        peers.measure_row(
            "layer_norm_peers",
            {"hidden": 64},
            {"ours": _cheap(1.0), "torch eager": _cheap(1.0)},
            ours=["ours"],
            eager="torch eager",
            peers=["torch eager"],
            repeats=1,
            warmup=0,
            check=lambda name, output: 0.5 if name == "ours" else 0.0,
            ours_tolerance=3e-2,
        )


def _peer_row(speedup_vs_best: float, best: str, hidden: int = 768) -> dict:
    return {"hidden": hidden, "mode": "forward+backward", "best_peer": best,
            "speedup_vs_best_peer": speedup_vs_best, "speedup_vs_eager": 2.0}  # fmt: skip


def _ln_row(hidden: int, speedup: float) -> dict:
    return {"rows": 16384, "hidden": hidden, "precision": "bf16-autocast",
            "mode": "forward+backward", "speedup": speedup}  # fmt: skip


def test_a_goal_met_against_torch_eager_is_missed_against_a_faster_peer() -> None:
    """LayerNorm at 768/1024 beats torch eager by 1.6x (>= 1.5) but torch.compile by only 1.1x
    (< 1.3): missed, naming the peer; without peer rows it is not met either."""
    eager_rows = [_ln_row(768, 1.6), _ln_row(1024, 1.7)]
    results = {
        "rows": {
            "layer_norm": eager_rows,
            "layer_norm_peers": [
                _peer_row(1.4, "Liger LigerLayerNorm"),
                _peer_row(1.1, "torch.compile", hidden=1024),
            ],
        }
    }
    name = "LayerNorm fwd+bwd vs torch, bf16 autocast, N 768/1024"
    goal = next(g for g in gpu_report.goals(results) if g["goal"].startswith(name))
    assert goal["goal"].endswith(">= 1.5 (vs the best peer >= 1.3)")
    assert goal["worst"] == 1.6 and goal["peer"]["worst"] == 1.1
    assert goal["verdict"] == "missed against torch.compile"
    assert "| 1.1 (torch.compile) | 2 |" in gpu_report.summary(results)

    without_peers = {"rows": {"layer_norm": eager_rows}}
    goal = next(g for g in gpu_report.goals(without_peers) if g["goal"].startswith(name))
    assert goal["verdict"] == "not measured against the peers"

    beaten = {"rows": {"layer_norm": eager_rows, "layer_norm_peers": [_peer_row(1.35, "x")]}}
    goal = next(g for g in gpu_report.goals(beaten) if g["goal"].startswith(name))
    assert goal["verdict"] == "met"


def test_the_minilm_goal_is_judged_against_hf_eager_and_its_best_variant() -> None:
    """The fine-tuning goal reads the training_peers rows: ours over HF eager, and over the
    faster of HF eager and compiled."""
    row = {"model": "minilm", "speedup_vs_eager": 1.8, "speedup_vs_best_peer": 1.2,
           "best_peer": "HF torch.compile"}  # fmt: skip
    goal = next(
        g for g in gpu_report.goals({"rows": {"training_peers": [row]}})
        if g["goal"].startswith("MiniLM fine-tuning step")
    )  # fmt: skip
    assert (goal["worst"], goal["peer"]["worst"]) == (1.8, 1.2)
    assert goal["verdict"] == "missed against HF torch.compile"


def test_the_peer_table_shows_why_a_peer_was_not_measured() -> None:
    """One line a variant; ours in bold; a peer that did not run shows its reason."""
    row = {
        "rows": 64, "hidden": 768, "precision": "bf16-autocast", "mode": "forward",
        "ours": "ours", "eager": "torch eager", "best_peer": "torch.compile",
        "speedup_vs_eager": 1.5, "speedup_vs_best_peer": 0.5, "memory_vs_best_peer": None,
        "variants": {
            "ours": {"ms": 2.0, "p20_ms": 1.9, "p80_ms": 2.1, "first_call_s": 0.01},
            "torch.compile": {"ms": 1.0, "p20_ms": 0.9, "p80_ms": 1.1, "first_call_s": 7.5},
            "Liger LigerLayerNorm": {"not_measured": "not measured: ImportError: no liger"},
        },
    }  # fmt: skip
    text = "\n".join(peer_report.section("layer_norm_peers", [row]))
    assert "best peer torch.compile; ours / torch eager 1.5x, ours / best peer 0.5x" in text
    assert "| **ours** | 2 (1.9-2.1) |" in text
    assert "| torch.compile | 1 (0.9-1.1) | - | - | 7.5 | - | 0.50x |" in text
    assert "| Liger LigerLayerNorm | not measured: ImportError: no liger |" in text


def _wheel(dist: Path, module: str) -> Path:
    """A minimal pure-Python wheel of `module` (version 1.0) in `dist`."""
    dist.mkdir(parents=True, exist_ok=True)
    path = dist / f"{module}-1.0-py3-none-any.whl"
    info = f"{module}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{module}/__init__.py", "VALUE = 42\n")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


def test_a_missing_peer_is_installed_from_dist_without_an_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that does not import is installed from its wheel in dist/ (--no-deps --no-index)
    into the stages' folder; with no wheel it is reported absent; an importable one is left
    (its version from its metadata, where it has any)."""
    monkeypatch.setattr(
        gpu_check, "PEER_PACKAGES",
        {"fbdl_fast_fake_peer": "fbdl-fast-fake-peer", "absent_peer_x": "absent-peer-x",
         "torch": "torch", "json": "no-such-distribution-x"},
    )  # fmt: skip
    _wheel(tmp_path / "dist", "fbdl_fast_fake_peer")
    found = gpu_check.install_peer_wheels(tmp_path / "dist", tmp_path / "site")
    assert found["fbdl_fast_fake_peer"] == (
        "installed now from dist/fbdl_fast_fake_peer-1.0-py3-none-any.whl (--no-deps)"
    )
    assert found["absent_peer_x"].startswith("absent: not installed and no absent_peer_x-*.whl")
    assert found["torch"] == f"{importlib.metadata.version('torch')}, installed"
    assert found["json"] == "installed (no package metadata: version unknown)"
    done = subprocess.run(
        [sys.executable, "-c", "import fbdl_fast_fake_peer as m; print(m.VALUE)"],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.stdout.strip() == "42", done.stderr


def test_stages_run_in_the_order_of_their_value_within_eight_minutes(tmp_path: Path) -> None:
    """Correctness, then the training step vs HF, then each op vs its best peer, then the rest;
    the default stages and the machine checks add up to the 480 s planned for an H100."""
    all_stages = gpu_check.stages(tmp_path)
    default = [s for s in all_stages if s.default]
    assert [s.name for s in default[:3]] == ["cuda tests", "training vs HF", "ops vs peers"]
    assert [s.rank for s in default] == sorted(s.rank for s in default)
    assert gpu_check.planned_seconds(all_stages) == 480
    assert [s.name for s in all_stages if not s.default] == ["bert-base vs HF", "autotune"]


@pytest.mark.slow
def test_cpu_smoke_of_the_hf_stage_without_transformers_still_times_ours(tmp_path: Path) -> None:
    """With transformers hidden, every HF variant is a 'not measured: why' row in report.md,
    and ours (reference, patched, patched and compiled) are timed on the CPU."""
    done = subprocess.run(
        [sys.executable, str(GPU_BENCHES / "gpu_check.py"), "--cpu-smoke",
         "--only", "training vs HF", "--out", str(tmp_path)],
        env={**os.environ, peers.MISSING_ENV: "transformers"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    (row,) = results["rows"]["training_peers"]
    hidden = "not measured: ImportError: transformers is hidden by FBDL_FAST_PEERS_MISSING"
    assert row["variants"]["HF eager"] == {"not_measured": hidden}
    assert row["variants"]["HF torch.compile"] == {"not_measured": hidden}
    for name in ("ours reference", "ours patched", "ours patched torch.compile"):
        assert row["variants"][name]["ms"] > 0 and row["variants"][name]["per_s"] > 0
    assert row["best_peer"] is None and row["encoder_errors"] is None
    report = (tmp_path / "report.md").read_text()
    assert f"| HF eager | {hidden} |" in report
