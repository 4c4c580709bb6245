"""predict's output rows: the JSON lines it joins from strings are json.dumps's text, and the
probabilities rounded a chunk at a time are round()'s."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest

from fbdl_fast.cli.predict import _prediction_writer, _rounded_rows, _write_prediction
from fbdl_fast.training.loading import Prediction

NAMES = ["négatif", 'pos"itive', "3"]


def reference_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def written(prediction: Prediction, keep: list[str], kept: tuple, multi_label: bool) -> str:
    sink = io.StringIO()
    write = _prediction_writer(sink, "jsonl", NAMES, keep, multi_label)
    _write_prediction(write, prediction, _rounded_rows([prediction])[0], kept)
    return sink.getvalue()


@pytest.mark.parametrize("label", ['pos"itive', 3])
def test_a_json_line_is_json_dumps_text(label: object) -> None:
    probs = [0.0123456789, 0.9876543, 1e-9]
    text = 'emoji 😀 \\ "quoted" \n new line'
    prediction = Prediction(text, label, probs[1], dict(zip(NAMES, probs)))
    line = written(prediction, ["id", "user"], ("=7", None), multi_label=False)
    assert line == reference_line(
        {
            "id": "=7",
            "user": None,
            "text": prediction.text,
            "label": label,
            "probability": round(probs[1], 6),
            "probabilities": {n: round(v, 6) for n, v in zip(NAMES, probs)},
        }
    )


def test_a_multi_label_json_line_is_json_dumps_text() -> None:
    probs = [0.7, 0.61234567, 0.1]
    prediction = Prediction(
        "two labels", "négatif", 0.7, dict(zip(NAMES, probs)), ("négatif", "3"), (0.7, 0.1)
    )
    line = written(prediction, [], (), multi_label=True)
    assert line == reference_line(
        {
            "text": "two labels",
            "labels": ["négatif", "3"],
            "label_probabilities": [0.7, 0.1],
            "probabilities": {n: round(v, 6) for n, v in zip(NAMES, probs)},
        }
    )


def test_a_row_with_nan_is_still_what_json_dumps_writes() -> None:
    probs = [float("nan"), float("inf"), 0.5]
    prediction = Prediction("broken model", "3", 0.5, dict(zip(NAMES, probs)))
    line = written(prediction, [], (), multi_label=False)
    assert line == reference_line(
        {
            "text": "broken model",
            "label": "3",
            "probability": 0.5,
            "probabilities": dict(zip(NAMES, probs)),
        }
    )
    assert "NaN" in line and "Infinity" in line


def test_chunk_rounding_is_round_to_six_decimals() -> None:
    """On 200,000 float32 probabilities (what a model gives), as round() gives them."""
    rng = random.Random(0)
    rows = [list(np.float32([rng.random() for _ in range(4)]).tolist()) for _ in range(50_000)]
    chunk = [Prediction("t", "3", max(r), dict(zip([*NAMES, "x"], r))) for r in rows]
    rounded = _rounded_rows(chunk)
    expected = [[round(v, 6) for v in r] for r in rows]
    differing = sum(a != b for got, want in zip(rounded, expected) for a, b in zip(got, want))
    assert differing == 0
