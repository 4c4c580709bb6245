"""`fbdl-fast predict` streams: chunks in input order, rows as produced, bounded memory, a bar.

The predictions are checked against the model run directly on each post alone, at positions on
both sides of chunk borders; memory is the peak RSS of the real command (os.wait4 reports the
child's own maximum) on 10,000 and on 100,000 posts.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fbdl_fast import cli
from fbdl_fast.cli import load_run, main
from fbdl_fast.data import Post, iter_posts
from fbdl_fast.synthetic import generate_posts
from tiny_run import MAX_LENGTH, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("stream") / "run")


def alone_probs(run_dir: Path, texts: list[str]) -> list[list[float]]:
    """Each text's class probabilities from the model run on that text alone (no padding)."""
    loaded = load_run(run_dir, "cpu")
    model = loaded.trainer.model.eval()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = loaded.tokenizer.encode_batch([text], max_length=MAX_LENGTH).input_ids
            ids_t = torch.as_tensor(ids)
            logits = model(ids_t, torch.ones_like(ids_t, dtype=torch.bool))
            out.append(torch.softmax(logits.float(), dim=-1)[0].tolist())
    return out


def write_jsonl(path: Path, texts: list[str]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return path


def test_chunks_keep_input_order_and_match_the_model_on_each_post(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "PREDICT_CHUNK", 7)  # 50 posts: 8 chunks, the last one short
    texts = generate_posts(50, seed=4).texts
    texts[10] = " ".join(texts[:8])  # one long post, truncated to max_length
    data = write_jsonl(tmp_path / "posts.jsonl", texts)
    out = tmp_path / "preds.jsonl"
    argv = ["predict", "--run", str(run), "--data", str(data), "--batch-size", "3"]
    argv += ["--threads", "1"]  # a tiny model runs fastest on one thread of a busy machine
    assert main([*argv, "--output", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == texts
    names = ["positive", "negative", "neutral", "spam"]
    for row, expected in zip(rows, alone_probs(run, texts)):
        assert [row["probabilities"][n] for n in names] == pytest.approx(expected, abs=2e-6)
        assert row["label"] == names[max(range(4), key=expected.__getitem__)]

    out_csv = tmp_path / "preds.csv"  # the same rows as CSV
    assert main([*argv, "--output", str(out_csv), "--quiet"]) == 0
    with open(out_csv, newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == ["text", "label", "probability", *[f"prob_{n}" for n in names]]
    # a text that a spreadsheet would run as a formula (an @mention) starts with ' in CSV
    assert [r[0] for r in table[1:]] == [cli._csv_cell(t) for t in texts]
    assert any(t.startswith("@") for t in texts)
    assert [r[1] for r in table[1:]] == [r["label"] for r in rows]
    assert [float(r[2]) for r in table[1:]] == [r["probability"] for r in rows]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bar_only_on_a_terminal(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, terminal: bool
) -> None:
    data = write_jsonl(tmp_path / "posts.jsonl", generate_posts(30, seed=5).texts)
    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    out = tmp_path / "p.jsonl"
    assert main(["predict", "--run", str(run), "--data", str(data), "--output", str(out)]) == 0
    text = stderr.getvalue()
    assert text.endswith(f"30 predictions written to {out}\n")
    assert ("predict: " in text and "30 posts" in text) is terminal
    stderr.seek(0)
    stderr.truncate()
    argv = ["predict", "--run", str(run), "--data", str(data), "--output", str(out)]
    assert main([*argv, "--overwrite", "--quiet"]) == 0
    assert stderr.getvalue() == ""  # --quiet: no bar, no message


def test_a_reader_that_stops_early_ends_predict_quietly(run: Path, tmp_path: Path) -> None:
    """`fbdl-fast predict ... | head -n 2`: exit 0, no error, though stdout closed mid-stream."""
    texts = generate_posts(3000, seed=7).texts  # ~400 KB of rows: more than a pipe buffer
    data = write_jsonl(tmp_path / "posts.jsonl", texts)
    argv = ["predict", "--run", str(run), "--data", str(data), "--threads", "1", "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fbdl_fast", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = [json.loads(proc.stdout.readline()) for _ in range(2)]
    proc.stdout.close()  # what `head` does once it has its lines
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""
    assert [row["text"] for row in first] == texts[:2]


def _peak_rss_mib(argv: list[str]) -> float:
    """Run `python -m fbdl_fast ARGV`; its own peak resident memory in MiB (Linux: KiB units)."""
    proc = subprocess.Popen([sys.executable, "-m", "fbdl_fast", *argv], stderr=subprocess.PIPE)
    assert proc.stderr is not None
    with proc.stderr:
        err = proc.stderr.read()  # small: --quiet
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err.decode()
    return usage.ru_maxrss / 1024


@pytest.mark.slow
def test_100k_posts_stream_with_bounded_memory(run: Path, tmp_path: Path) -> None:
    texts = generate_posts(100_000, seed=3).texts
    small = write_jsonl(tmp_path / "10k.jsonl", texts[:10_000])
    large = write_jsonl(tmp_path / "100k.jsonl", texts)
    peaks = {}
    for name, data in (("10k", small), ("100k", large)):
        out = tmp_path / f"{name}-preds.jsonl"
        argv = ["predict", "--run", str(run), "--data", str(data), "--output", str(out)]
        peaks[name] = _peak_rss_mib([*argv, "--batch-size", "512", "--threads", "1", "--quiet"])
    # Measured on 2 CPU cores: 1139 MiB (10k) vs 1137 MiB (100k), torch itself ~730 MiB; the
    # former whole-file predict grew by 77 MiB from 10k to 100k posts.
    assert peaks["100k"] < peaks["10k"] + 40, peaks

    checks = {0: None, 4095: None, 4096: None, 8191: None, 8192: None, 99_999: None}
    count = 0
    with open(tmp_path / "100k-preds.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            row = json.loads(line)
            assert row["text"] == texts[i]
            probs = row["probabilities"]
            assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-4)
            assert row["probability"] == probs[row["label"]] == max(probs.values())
            if i in checks:
                checks[i] = list(probs.values())
            count += 1
    assert count == 100_000
    expected = alone_probs(run, [texts[i] for i in checks])
    for got, want in zip(checks.values(), expected):
        assert got == pytest.approx(want, abs=2e-6)


def test_iter_posts_yields_before_reading_the_whole_file(tmp_path: Path) -> None:
    data = tmp_path / "posts.csv"
    data.write_bytes(b"text\nfirst\nsecond\n" + b"x" * 100 + b"\nbad \xff\n")
    posts = iter_posts(data, label_column=None)
    assert next(posts) == Post(2, "first", None)
    assert next(posts) == Post(3, "second", None)
    with pytest.raises(ValueError, match=r"byte 0xff on line 5"):
        list(posts)
