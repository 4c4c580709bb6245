"""The bench report: speedups from pytest-benchmark JSON, the markdown table, a PNG that decodes."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from fbdl_fast.chart import FASTER, SLOWER, bar_chart_png
from fbdl_fast.report import markdown_table, rows_from_pytest_benchmark, write_report

MACHINE = {"cpu": "Test CPU", "cores": 2, "gpu": None, "torch": "2.x", "triton": "3.x"}


def _bench(
    group: str, variant: str, median: float, role: str = "candidate", **extra: float
) -> dict:
    return {
        "group": group,
        "name": f"bench[{variant}]",
        "param": variant,
        "stats": {"median": median},
        "extra_info": {"variant": variant, "role": role, **extra},
    }


def _sample() -> dict:
    return {
        "benchmarks": [
            _bench("layer_norm fwd", "torch", 2.0, role="reference"),
            _bench("layer_norm fwd", "fbdl_fast", 0.5),
            _bench("train step cnn", "patched fp32", 3.0),  # no reference in its group
            _bench("train step lstm", "reference fp32", 1.0, role="reference"),
            _bench("train step lstm", "patched fp32", 2.0, speedup=0.9),
        ]
    }


def _decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = 1 + 3 * width
    assert len(raw) == stride * height
    return width, height, [raw[y * stride + 1 : (y + 1) * stride] for y in range(height)]


def test_speedup_is_reference_median_over_candidate_median() -> None:
    rows = rows_from_pytest_benchmark(_sample())
    speedups = {(r.group, r.variant): r.speedup for r in rows}
    assert speedups[("layer_norm fwd", "fbdl_fast")] == pytest.approx(4.0)
    assert speedups[("layer_norm fwd", "torch")] is None
    assert speedups[("train step cnn", "patched fp32")] is None
    # A speedup the benchmark measured itself (timed in turns) wins over the ratio of medians.
    assert speedups[("train step lstm", "patched fp32")] == pytest.approx(0.9)


def test_markdown_names_the_machine_and_each_row() -> None:
    table = markdown_table(rows_from_pytest_benchmark(_sample()), MACHINE)
    assert "Test CPU (2 cores), no GPU" in table
    assert "| layer_norm fwd | fbdl_fast | 500 ms | 4.00x |" in table
    assert "| layer_norm fwd | torch | 2 s | reference |" in table


def test_bar_lengths_are_proportional_to_the_values() -> None:
    width, _, rows = _decode_png(bar_chart_png("t", ["a", "b"], [2.0, 0.5]))

    def bar_length(color: tuple[int, int, int]) -> int:
        pixel = bytes(color)
        return max(sum(row[x : x + 3] == pixel for x in range(0, 3 * width, 3)) for row in rows)

    faster, slower = bar_length(FASTER), bar_length(SLOWER)
    assert faster == pytest.approx(4 * slower, abs=4)  # 2.0 vs 0.5, up to rounding and text


def test_write_report_writes_three_files(tmp_path: Path) -> None:
    paths = write_report(rows_from_pytest_benchmark(_sample()), MACHINE, tmp_path / "out")
    assert [p.name for p in paths] == ["report.md", "report.json", "speedups.png"]
    document = json.loads(paths[1].read_text())
    assert document["machine"]["cpu"] == "Test CPU"
    assert [r["speedup"] for r in document["results"]] == [None, 4.0, None, None, 0.9]
    assert _decode_png(paths[2].read_bytes())[0] > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)


def test_chart_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match="2 labels for 1 values"):
        bar_chart_png("t", ["a", "b"], [1.0])


FAKE_BENCHES = """
import time


def test_slow(benchmark):
    benchmark.group = "sleep"
    benchmark.extra_info.update(variant="slow", role="reference")
    benchmark.pedantic(time.sleep, args=(0.02,), rounds=3)


def test_fast(benchmark):
    benchmark.group = "sleep"
    benchmark.extra_info.update(variant="fast", role="candidate")
    benchmark.pedantic(time.sleep, args=(0.005,), rounds=3)
"""


def test_bench_command_runs_the_suite_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fbdl_fast.cli import main

    benches = tmp_path / "benches"
    benches.mkdir()
    (benches / "test_fake.py").write_text(FAKE_BENCHES)
    out = tmp_path / "report"
    assert main(["bench", "--benches", str(benches), "--output", str(out), "--", "-q"]) == 0
    document = json.loads((out / "report.json").read_text())
    rows = {r["variant"]: r for r in document["results"]}
    assert rows["slow"]["speedup"] is None
    # The ratio of the two medians measured in that run (no assertion on the times themselves).
    expected = rows["slow"]["median_s"] / rows["fast"]["median_s"]
    assert rows["fast"]["speedup"] == pytest.approx(expected)
    assert document["machine"]["cores"] >= 1 and document["machine"]["torch"]
    assert "| sleep | fast |" in capsys.readouterr().out
    assert (out / "speedups.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_command_writes_the_report_of_the_benches_that_ran_when_one_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fbdl_fast.cli import main

    benches = tmp_path / "benches"
    benches.mkdir()
    broken = "\n\ndef test_broken(benchmark):\n    benchmark(lambda: None)\n    assert False\n"
    (benches / "test_fake.py").write_text(FAKE_BENCHES + broken)
    out = tmp_path / "report"
    assert main(["bench", "--benches", str(benches), "--output", str(out), "--", "-q"]) == 1
    variants = {r["variant"] for r in json.loads((out / "report.json").read_text())["results"]}
    assert {"slow", "fast"} <= variants
    assert "the report holds the" in capsys.readouterr().err


def test_interleaved_medians_time_each_step_in_turns() -> None:
    from fbdl_fast.speed import interleaved_medians

    order: list[str] = []
    medians = interleaved_medians(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1
    )
    assert order == ["a", "b"] * 4  # one warm-up turn, then three timed turns
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())
