"""The benchmark report `fbdl-fast bench` writes: pytest-benchmark's JSON made into speedups.

Input is pytest-benchmark's JSON (`--benchmark-json`). Each benchmark in a group may mark itself
`extra_info["role"] = "reference"`; every other member of the group gets a speedup, the
reference's median time divided by its own, both measured in the same run on the same machine.
A benchmark that measured its speedup itself (`extra_info["speedup"]`, e.g. by timing its step
and the reference's in turns) reports that figure instead. Written as a markdown table, a JSON
file and a PNG bar chart.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from fbdl_fast.files import write_atomic
from fbdl_fast.reports.chart import bar_chart_png

if TYPE_CHECKING:
    pass


@dataclass
class Row:
    """One benchmark: its group, its variant, its median time and its speedup over the reference."""

    group: str
    variant: str
    median_s: float
    speedup: Optional[float] = None  # reference median / this median; None without a reference
    extra: dict[str, Any] = field(default_factory=dict)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, GPU, library versions."""
    import numpy
    import torch

    from fbdl_fast import __version__

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "fbdl_fast": __version__,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rows_from_pytest_benchmark(data: dict[str, Any]) -> list[Row]:
    """Rows, with speedups, from the dict pytest-benchmark writes with --benchmark-json."""
    benchmarks = data.get("benchmarks", [])
    references: dict[str, float] = {}
    for bench in benchmarks:
        if bench.get("extra_info", {}).get("role") == "reference":
            references[bench["group"] or bench["name"]] = bench["stats"]["median"]
    rows = []
    for bench in benchmarks:
        group = bench["group"] or bench["name"]
        extra = dict(bench.get("extra_info", {}))
        median = bench["stats"]["median"]
        reference = references.get(group)
        if extra.get("role") == "reference":
            speedup = None
        elif "speedup" in extra:  # measured by the benchmark itself, e.g. timed in turns
            speedup = float(extra.pop("speedup"))
        else:
            speedup = None if reference is None else reference / median
        variant = str(extra.pop("variant", bench.get("param") or bench["name"]))
        rows.append(Row(group, variant, median, speedup, extra))
    return rows


def markdown_table(rows: list[Row], machine: dict[str, Any]) -> str:
    """The report as markdown: the machine, then one line per benchmark."""
    gpu = machine.get("gpu") or "no GPU"
    lines = [
        f"Measured on {machine['cpu']} ({machine['cores']} cores), {gpu}; "
        f"torch {machine['torch']}, triton {machine.get('triton')}.",
        "",
        "| Benchmark | Variant | Median time | Speedup vs reference |",
        "|---|---|---:|---:|",
    ]
    for row in rows:
        speedup = (
            "reference"
            if row.extra.get("role") == "reference"
            else (f"{row.speedup:.2f}x" if row.speedup is not None else "-")
        )
        lines.append(
            f"| {row.group} | {row.variant} | {_format_seconds(row.median_s)} | {speedup} |"
        )
    return "\n".join(lines) + "\n"


def _format_seconds(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def write_report(rows: list[Row], machine: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write report.md, report.json and speedups.png into `out_dir` (each atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, machine)
    document = {"machine": machine, "results": [asdict(row) for row in rows]}
    ranked = [(row, row.speedup) for row in rows if row.speedup is not None]
    labels = [f"{row.group} | {row.variant}" for row, _ in ranked]
    chart = bar_chart_png(
        f"speedup vs reference ({machine.get('gpu') or 'cpu'})",
        labels,
        [speedup for _, speedup in ranked],
    )
    paths = [out_dir / "report.md", out_dir / "report.json", out_dir / "speedups.png"]
    write_atomic(paths[0], table)
    write_atomic(paths[1], json.dumps(document, indent=2))
    write_atomic(paths[2], chart)
    return paths
