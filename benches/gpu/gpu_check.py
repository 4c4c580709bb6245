"""The one command that proves the kernels on a lent GPU and brings back every figure.

On the GPU machine, from a checkout with the wheel installed (`make gpu-wheel` builds it here):

    pip install --no-deps --no-index dist/fbdl_fast-*.whl
    python3 benches/gpu/gpu_check.py --out DIR

Without a GPU, `--cpu-smoke` runs every stage on the CPU (the cuda tests skip, the benches time
the PyTorch fallbacks on tiny shapes): that proves the pipeline and the report here.

It checks the machine first (CUDA and the GPU, a C compiler and Python.h for Triton's launcher,
the versions, FBDL_FAST_BACKEND and TRITON_INTERPRET unset), installs the peers' wheels it finds
in dist/ that do not import (Liger-Kernel, `make gpu-wheel` downloads it; `pip install --no-deps
--no-index --target` a folder put on the stages' PYTHONPATH, never from an index, and the report
says so), points TRITON_CACHE_DIR and TORCHINDUCTOR_CACHE_DIR under DIR (empty: every compile is
paid, as on a fresh machine), then runs each stage in a subprocess with its own time budget.
After every stage, after a failure or a timeout too, it rewrites DIR/results.json (every check,
stage and figure) and DIR/report.md (the same as tables, with the goals met or missed, against
torch eager and against the best peer); DIR/gpu_check.log has every stage's output,
DIR/cuda-tests.xml and DIR/kernel-tests.xml the test stages' JUnit reports.

The stages run in the order of the value of their figures, each stopped at its budget: (1)
correctness on CUDA, (2) the fine-tuning step against Hugging Face transformers, (3) each op
against its best peer (torch.compile, Liger-Kernel, SDPA's backends), (4) the rest (our benches
against torch eager at every shape, the three models' steps, every kernel parity test). A stage
of rank 4 stopped at its budget is cut, not failed: its rows until then are kept. The whole
check is planned for 8 minutes on an H100 with empty caches, and runs on an H200 as well; the
budget table and how each figure was derived: docs/gpu-budget.md. The budget leaves out two
stages, run with --only: "bert-base vs HF" (two compiles of a 12-layer model) and "autotune".
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))  # bytes_moved and gpu_report, beside this file

import bytes_moved  # noqa: E402
import gpu_report  # noqa: E402

RESULTS_ENV = "FBDL_FAST_BENCH_RESULTS"  # measure.RESULTS_ENV: where the benches append rows
CHECK_BUDGET_S = 15
DIST = REPO / "dist"
# The peers' packages: module name -> distribution name. A wheel of a missing one is installed
# from dist/ (liger-kernel: `make gpu-wheel` downloads it); transformers is on the GPU image.
PEER_PACKAGES = {"liger_kernel": "liger-kernel", "transformers": "transformers"}
# --cpu-smoke: the budgets are the H100's; two shared CPU cores compile the same graphs slower
# (the training stage took 73 s of its 140 on a quiet machine here, 134 s under load). The
# stages whose timeout is a failure get this factor there; those of rank 4 are cut as planned.
CPU_SMOKE_SLACK = 2.0
RANKS = {
    1: "correctness on CUDA",
    2: "the training step vs HF",
    3: "each op vs its best peer",
    4: "the rest",
}


@dataclass
class Stage:
    """One subprocess: a pytest run of some tests or benches, stopped at its budget."""

    name: str
    budget_s: float
    args: list[str]
    status: str = "not run"  # passed | failed | timeout | cut (rank 4 at its budget) | not run
    returncode: Optional[int] = None
    elapsed_s: Optional[float] = None
    tests: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # set for this stage only
    rank: int = 4  # RANKS: the value of its figures; a stage of rank 4 is cut at its budget
    default: bool = True  # run without --only

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rank": self.rank,
            "budget_s": self.budget_s,
            "status": self.status,
            "returncode": self.returncode,
            "elapsed_s": self.elapsed_s,
            "tests": self.tests,
        }


JUNIT = {"cuda tests": "cuda-tests.xml", "kernel tests": "kernel-tests.xml"}


def stages(out: Path) -> list[Stage]:
    def tests(name: str, marks: str) -> list[str]:
        return ["-m", marks, "tests", f"--junitxml={out / JUNIT[name]}", "-p", "no:cacheprovider"]

    bench = ["--benchmark-disable", "-p", "no:cacheprovider"]
    # A few kernel benches again with autotuned launches (rows recorded as `op+autotune`): one
    # LayerNorm key (N, dtypes) a width and one attention specialisation, ~25 compiles.
    autotune = [
        "benches/bench_layer_norm.py", "benches/bench_attention.py", *bench,
        "-k", "(768 or 1024) and autocast or 512 and 64 and padded and dropout0.0",
    ]  # fmt: skip
    hf_training = ["benches/gpu/bench_hf_training.py", *bench]
    return [
        Stage("cuda tests", 75, tests("cuda tests", "cuda"), rank=1),
        Stage("training vs HF", 140, [*hf_training, "-k", "minilm"], rank=2),
        Stage("ops vs peers", 130, ["benches/gpu/bench_op_peers.py", *bench], rank=3),
        Stage("layer_norm", 25, ["benches/bench_layer_norm.py", *bench]),
        Stage("focal_loss", 20, ["benches/bench_focal_loss.py", *bench]),
        Stage("attention", 30, ["benches/bench_attention.py", *bench]),
        Stage("training steps", 20, ["benches/bench_models.py", *bench]),
        # Every parity test of the kernels (tests/conftest.py marks them `kernel`), on CUDA.
        Stage("kernel tests", 25, tests("kernel tests", "kernel and not cuda")),
        # Left out by the budget (docs/gpu-budget.md): run with --only.
        Stage("bert-base vs HF", 200, [*hf_training, "-k", "bert"], default=False),
        Stage("autotune", 45, autotune, env={"FBDL_FAST_AUTOTUNE": "1"}, default=False),
    ]


def planned_seconds(all_stages: list[Stage]) -> float:
    """The whole check's plan: the machine checks and every stage run by default."""
    return CHECK_BUDGET_S + sum(stage.budget_s for stage in all_stages if stage.default)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def machine_checks() -> dict[str, Any]:
    """What the machine is and whether it can run the kernels. Imports torch and fbdl_fast."""
    checks: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable}
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    checks["c_compiler"] = compiler
    python_h = Path(sysconfig.get_paths()["include"]) / "Python.h"
    checks["python_h"] = str(python_h) if python_h.is_file() else None
    checks["environment"] = {
        name: os.environ.get(name) for name in ("FBDL_FAST_BACKEND", "TRITON_INTERPRET")
    }
    for module in ("torch", "triton", "numpy", "fbdl_fast", "pytest", "pytest_benchmark"):
        try:
            imported = __import__(module)
            checks[module] = getattr(imported, "__version__", "?")
        except Exception as error:  # a missing or broken install is a finding, not a crash
            checks[module] = f"unavailable: {type(error).__name__}: {error}"
    try:
        import fbdl_fast

        checks["fbdl_fast_location"] = str(Path(fbdl_fast.__file__).parent)
        import torch

        checks["cuda"] = torch.cuda.is_available()
        checks["cuda_version"] = torch.version.cuda
        if checks["cuda"]:
            properties = torch.cuda.get_device_properties(0)
            checks["gpu"] = properties.name
            checks["capability"] = f"{properties.major}.{properties.minor}"
            checks["multiprocessors"] = properties.multi_processor_count
            checks["memory_gib"] = round(properties.total_memory / 2**30, 1)
        else:
            checks["gpu"] = None
    except Exception as error:
        checks["cuda"] = False
        checks["gpu"] = None
        checks["import_error"] = f"{type(error).__name__}: {error}"
    checks["nvidia_smi"] = _nvidia_smi()
    return checks


def _nvidia_smi() -> Optional[str]:
    if shutil.which("nvidia-smi") is None:
        return None
    query = "name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw"
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as error:
        return f"failed: {error}"
    return done.stdout.strip() or done.stderr.strip()


def problems(checks: dict[str, Any], cpu_smoke: bool) -> list[str]:
    """What stops a GPU run, in words; empty when the stages can run."""
    found = []
    if not cpu_smoke and not checks.get("cuda"):
        found.append(
            "no CUDA device: torch.cuda.is_available() is False "
            f"({checks.get('import_error') or 'torch ' + str(checks.get('torch'))}); "
            "run on a GPU machine, or pass --cpu-smoke to check the pipeline on a CPU"
        )
    if str(checks.get("fbdl_fast", "")).startswith("unavailable"):
        found.append(f"fbdl_fast does not import: {checks['fbdl_fast']}")
    if not cpu_smoke and checks.get("cuda"):
        if not checks["c_compiler"]:
            found.append("no C compiler (cc/gcc/$CC): Triton cannot build its launcher")
        if not checks["python_h"]:
            found.append("no Python.h: Triton cannot build its launcher")
    return found


def install_peer_wheels(dist: Path, target: Path) -> dict[str, str]:
    """Each peer package: its version if it imports here, else installed from a wheel in `dist`
    into `target` (pip --no-deps --no-index: never from an index), else why it is absent."""
    found = {}
    for module, distribution in PEER_PACKAGES.items():
        if importlib.util.find_spec(module) is not None:
            try:
                found[module] = f"{importlib.metadata.version(distribution)}, installed"
            except importlib.metadata.PackageNotFoundError:  # importable without metadata
                found[module] = "installed (no package metadata: version unknown)"
            continue
        wheels = sorted(dist.glob(f"{module}-*.whl"))
        if not wheels:
            found[module] = f"absent: not installed and no {module}-*.whl in {dist}"
            continue
        command = [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
            "--no-compile", "--target", str(target), str(wheels[-1]),
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as error:
            found[module] = f"absent: installing {wheels[-1].name} failed: {error}"
            continue
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["?"])[-1]
            found[module] = f"absent: installing {wheels[-1].name} failed: {reason}"
            continue
        found[module] = f"installed now from {wheels[-1].relative_to(dist.parent)} (--no-deps)"
    return found


def ceilings() -> dict[str, float]:
    """The machine's two ceilings, measured: device copy bandwidth and bf16 matmul rate."""
    import torch

    def seconds(step, repeats: int = 10) -> float:
        step()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            step()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / repeats

    source = torch.randn(2**28, device="cuda")  # 1 GiB
    target = torch.empty_like(source)
    copy_s = seconds(lambda: target.copy_(source))
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    matmul_s = seconds(lambda: a @ b)
    return {
        "copy_gbps": 2 * 2**30 / copy_s / 1e9,  # bytes read + bytes written
        "bf16_matmul_tflops": 2 * 8192**3 / matmul_s / 1e12,
    }


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


def run_stage(stage: Stage, env: dict[str, str], log: Path, rows_file: Path) -> None:
    """Run one stage's pytest in its own process group; stop it at its budget."""
    command = [sys.executable, "-m", "pytest", "-q", *stage.args]
    started = time.monotonic()
    with log.open("a", encoding="utf-8") as sink:
        sink.write(f"\n===== {stage.name} (budget {stage.budget_s:.0f} s): {' '.join(command)}\n")
        sink.flush()
        process = subprocess.Popen(
            command, cwd=REPO, env={**env, **stage.env, RESULTS_ENV: str(rows_file)},
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            stage.returncode = process.wait(timeout=stage.budget_s)
            stage.status = "passed" if stage.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            _stop(process)
            stage.status = "timeout"
            sink.write(f"\n===== {stage.name}: stopped at its budget of {stage.budget_s} s\n")
    stage.elapsed_s = round(time.monotonic() - started, 1)
    stage.tests = _test_counts(log, stage.name)


def _stop(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def _test_counts(log: Path, name: str) -> dict[str, int]:
    """pytest's closing counts for the stage `name`, read from the last line that has them."""
    text = log.read_text(encoding="utf-8", errors="replace")
    section = text.rsplit(f"===== {name} (budget", 1)[-1].split("\n===== ", 1)[0]
    for line in reversed(section.splitlines()):
        counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
                  for n, kind in _COUNT.findall(line)}  # fmt: skip
        if counts:
            return counts
    return {}


def junit_summary(path: Path) -> Optional[dict[str, Any]]:
    """Counts from a JUnit XML file, and each failed test with the start of its message (the
    device's output comes back cut, this does not); None if there is no readable file."""
    if not path.is_file():
        return None
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    summary: dict[str, Any] = {key: sum(int(s.get(key, 0)) for s in suites) for key in keys}
    summary["failed"] = [
        {
            "test": f"{case.get('classname')}::{case.get('name')}",
            "message": (problem.get("message") or problem.text or "")[:400],
        }
        for case in root.iter("testcase")
        for problem in list(case)
        if problem.tag in ("failure", "error")
    ]
    return summary


def read_rows(rows_file: Path) -> list[dict[str, Any]]:
    if not rows_file.is_file():
        return []
    rows = []
    for line in rows_file.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a stopped stage
            continue
    return rows


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the report")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="run every stage on the CPU, tiny shapes"
    )
    parser.add_argument(
        "--triton-cache",
        type=Path,
        help="TRITON_CACHE_DIR for the stages (default: OUT/triton-cache, removed at the end)",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="STAGE", help="run only these stages (by name)"
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    log.write_text("", encoding="utf-8")
    results: dict[str, Any] = {
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checks": {},
        "problems": [],
        "stages": [],
        "junit": {},
        "rows": {},
        "planned_s": planned_seconds(stages(out)),
        # counted here with the interpreter (bytes_moved.py); the GPU's Triton cannot run it
        "bytes_moved": bytes_moved.with_staleness(bytes_moved.load_table()),
    }
    all_stages = stages(out)
    if args.only:
        unknown = set(args.only) - {stage.name for stage in all_stages}
        if unknown:
            parser.error(f"unknown stage(s) {sorted(unknown)}; stages: "
                         f"{', '.join(s.name for s in all_stages)}")  # fmt: skip
        all_stages = [stage for stage in all_stages if stage.name in args.only]
    else:
        all_stages = [stage for stage in all_stages if stage.default]
    if args.cpu_smoke:
        for stage in all_stages:
            if stage.rank < 4:
                stage.budget_s *= CPU_SMOKE_SLACK
    results["stages"] = [stage.summary() for stage in all_stages]

    def save() -> None:
        results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        )
        gpu_report.write(out, results)

    started = time.monotonic()
    results["checks"] = checks = machine_checks()
    results["problems"] = problems(checks, args.cpu_smoke)
    if results["problems"]:
        save()
        print("\n".join(["gpu_check: cannot run:", *results["problems"]]), file=sys.stderr)
        return 2
    if checks.get("cuda") and not args.cpu_smoke:
        try:
            checks["ceilings"] = ceilings()
            import torch

            torch.cuda.empty_cache()  # give the stages the memory the ceilings took
        except Exception as error:  # a finding to report, not a reason to stop
            checks["ceilings"] = {"error": f"{type(error).__name__}: {error}"}
    checks["elapsed_s"] = round(time.monotonic() - started, 1)
    save()

    cache = args.triton_cache or out / "triton-cache"
    env = {key: value for key, value in os.environ.items() if key not in checks["environment"]}
    env.pop("FBDL_FAST_AUTOTUNE", None)  # the autotune stage sets it; the others run the rule
    env.update(
        TRITON_CACHE_DIR=str(cache),
        TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"),  # torch.compile's too: paid in full
        PYTHONUNBUFFERED="1",
    )
    peer_site = Path(tempfile.mkdtemp(prefix="fbdl-fast-peers-"))
    checks["peer_packages"] = install_peer_wheels(DIST, peer_site)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(peer_site), env.get("PYTHONPATH")]))
    save()
    rows_file = out / "rows.jsonl"
    for stage in all_stages:
        rows_file.unlink(missing_ok=True)
        run_stage(stage, env, log, rows_file)
        if stage.status == "timeout" and stage.rank == 4:
            stage.status = "cut"  # the ranking's choice: its rows until then are kept
        for row in read_rows(rows_file):
            results["rows"].setdefault(row.pop("op"), []).append(row)
        if stage.name in JUNIT:
            results["junit"][stage.name] = junit_summary(out / JUNIT[stage.name])
        results["stages"] = [s.summary() for s in all_stages]
        results["compiled_kernels"] = len(list(cache.rglob("*.cubin"))) if cache.is_dir() else 0
        save()
        print(f"gpu_check: {stage.name}: {stage.status} in {stage.elapsed_s} s {stage.tests}",
              file=sys.stderr)  # fmt: skip
    rows_file.unlink(missing_ok=True)
    shutil.rmtree(peer_site, ignore_errors=True)
    if args.triton_cache is None:
        shutil.rmtree(cache, ignore_errors=True)  # keep OUT small: it travels back
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    save()
    print(gpu_report.summary(results))  # the per-op tables are in report.md
    return 0 if all(stage.status in ("passed", "cut") for stage in all_stages) else 1


if __name__ == "__main__":
    sys.exit(main())
