"""benches/studies/hf_cpu.py's arithmetic: medians per post over turns, the speedup as the peer's
CPU over ours, a goal met only at or above its ratio, the stage split's shares; and the JSON
lines it times as predict's output. (The measured rows need MiniLM and HF weights: the study
itself runs them, see docs/results.md.)"""

from __future__ import annotations

import json

from tiny_run import load_bench_script

hf_cpu = load_bench_script("studies/hf_cpu.py")


def _turn(cpu_s: float, wall_s: float, units: int = 100) -> dict[str, float]:
    return {"cpu_s": cpu_s, "wall_s": wall_s, "units": units}


def test_per_unit_is_the_median_over_turns_in_milliseconds() -> None:
    """Three turns of 100 posts at 0.2, 0.9 and 0.3 s: the median, 3 ms a post, not the mean."""
    turns = [_turn(0.2, 1.0), _turn(0.9, 2.0), _turn(0.3, 3.0)]
    assert hf_cpu.per_unit(turns) == 3.0
    assert hf_cpu.per_unit(turns, "wall_s") == 20.0


def test_table_speedup_is_peer_over_ours_and_goals_hold_only_at_their_ratio() -> None:
    """ours-fp32 at 4 ms against HF's 4.4 (1.10×) misses 1.2; int8 at 1 ms against 1.25 (1.25×)
    meets it; the stage split shows each stage's share of their sum."""
    stages = {"tokenize": 0.1, "collate": 0.1, "model": 3.6, "output": 0.2}
    rows = {
        "ours-fp32": {"cpu_ms": 4.0, "wall_ms": 5.0, "stages": stages},
        "hf-fp32-sorted": {"cpu_ms": 4.4, "wall_ms": 5.0},
        "ours-int8": {"cpu_ms": 1.0, "wall_ms": 1.0},
        "hf-int8-sorted": {"cpu_ms": 1.25, "wall_ms": 2.0},
    }
    text = hf_cpu.table({"rows": rows})
    assert "| ours-fp32 | 4.000 | hf-fp32-sorted | 4.400 | 1.10× | 1.00× | ≥ 1.2: NOT met |" in text
    assert "| ours-int8 | 1.000 | hf-int8-sorted | 1.250 | 1.25× | 2.00× | ≥ 1.2: met |" in text
    assert "ours-onnx" not in text  # a row not measured is not compared
    assert "| ours-fp32 | 0.100 (2%) | 0.100 (2%) | 3.600 (90%) | 0.200 (5%) | 4.000 |" in text


def test_json_lines_are_predict_s_one_per_post() -> None:
    """Each post gets its text, its top label, its confidence and every probability."""
    size = hf_cpu.json_lines(["a", "b"], [[0.25, 0.75], [0.5, 0.5]], ["x", "y"])
    first = {"text": "a", "label": "y", "confidence": 0.75, "probabilities": {"x": 0.25, "y": 0.75}}
    second = {"text": "b", "label": "x", "confidence": 0.5, "probabilities": {"x": 0.5, "y": 0.5}}
    expected = "\n".join(json.dumps(line) for line in (first, second))
    assert size == len(expected)
