"""`fbdl-fast predict` streams: chunks in input order, rows as produced, bounded memory, a bar.

The predictions are checked against the model run directly on each post alone, at positions on
both sides of chunk borders; memory is the resident size of the real command at the start of each
of 25 chunks of 100,000 posts, and the posts it has read by then.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fbdl_fast.cli import main
from fbdl_fast.cli import predict as cli
from fbdl_fast.data import Post, iter_posts
from fbdl_fast.data.synthetic import generate_posts
from fbdl_fast.training.loading import load_run
from tiny_run import MAX_LENGTH, make_run, write_posts_csv


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("stream") / "run")


def alone_probs(run_dir: Path, texts: list[str]) -> list[list[float]]:
    """Each text's class probabilities from the model run on that text alone (no padding)."""
    loaded = load_run(run_dir, device="cpu")
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


def read_then_close(argv: list[str], lines: int) -> tuple[list[str], str]:
    """`fbdl-fast ARGV | head -n LINES`: its first `lines` lines of stdout, stdout then closed
    as `head` closes it; asserts that the command exits 0. Returns (the lines, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fbdl_fast", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = [proc.stdout.readline().decode() for _ in range(lines)]
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    return first, err


def test_a_reader_that_stops_early_ends_predict_quietly(run: Path, tmp_path: Path) -> None:
    """`fbdl-fast predict ... | head -n 2`: exit 0, no error, though stdout closed mid-stream."""
    texts = generate_posts(3000, seed=7).texts  # ~400 KB of rows: more than a pipe buffer
    data = write_jsonl(tmp_path / "posts.jsonl", texts)
    argv = ["predict", "--run", str(run), "--data", str(data), "--threads", "1", "--quiet"]
    first, err = read_then_close(argv, 2)
    assert err == ""
    assert [json.loads(row)["text"] for row in first] == texts[:2]


def test_a_reader_gone_before_evaluate_prints_ends_it_quietly(run: Path, tmp_path: Path) -> None:
    """`fbdl-fast evaluate ... | head -n 3` where head has exited before the report is printed:
    exit 0 and nothing on stderr, as for predict (not an error of the user's, status 2)."""
    data = write_posts_csv(tmp_path / "posts.csv", 200, seed=7)
    argv = ["evaluate", "--run", str(run), "--data", str(data), "--threads", "1", "--quiet"]
    assert read_then_close(argv, 0) == ([], "")


# Runs `fbdl-fast predict` and records, as each chunk starts (every earlier chunk read, predicted
# and written), the process's resident memory and how many posts it has read from the file.
PER_CHUNK = """
import json, os, sys
from fbdl_fast import data
from fbdl_fast.cli.main import main
from fbdl_fast.training.loading import Run

page = os.sysconf("SC_PAGE_SIZE")
rss, read = [], [0]
original_chunk, original_iter = Run._probabilities, data.iter_posts

def iter_posts(*args, **kwargs):
    for post in original_iter(*args, **kwargs):
        read[0] += 1
        yield post

def predict_chunk(run, texts, batch_size=None):
    with open("/proc/self/statm") as f:
        rss.append((int(f.read().split()[1]) * page / 2**20, read[0]))
    return original_chunk(run, texts, batch_size)

Run._probabilities, data.iter_posts = predict_chunk, iter_posts
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump(rss, f)
sys.exit(code)
"""


def _per_chunk(argv: list[str], record: Path) -> tuple[list[float], list[int]]:
    """Run `fbdl-fast ARGV`; at the start of each predict chunk, its resident memory in MiB and
    the posts read so far."""
    proc = subprocess.run(
        [sys.executable, "-c", PER_CHUNK, str(record), *argv],
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    rss, read = zip(*json.loads(record.read_text()))
    return list(rss), list(read)


def _slope(values: list[float]) -> float:
    """The least-squares slope of values against their index."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    return num / sum((i - mean_x) ** 2 for i in range(n))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc/self/statm (Linux)")
def test_100k_posts_stream_with_bounded_memory(run: Path, tmp_path: Path) -> None:
    """The file is read one chunk ahead of the predictions, and memory stays flat from chunk to
    chunk: the growth over the last 20 of 25 chunks, not a peak against another run's (a peak
    depends on when the allocator hands pages back)."""
    texts = generate_posts(100_000, seed=3).texts
    data = write_jsonl(tmp_path / "100k.jsonl", texts)
    out = tmp_path / "100k-preds.jsonl"
    argv = ["predict", "--run", str(run), "--data", str(data), "--output", str(out)]
    argv += ["--batch-size", "512", "--threads", "1", "--quiet"]
    rss, read = _per_chunk(argv, tmp_path / "per_chunk.json")
    chunk = cli.PREDICT_CHUNK
    assert len(read) == math.ceil(100_000 / chunk) == 25
    assert read == [min((k + 1) * chunk, 100_000) for k in range(25)]
    # Chunk 1 warms up (the model's first batches, allocator arenas). Measured on 2 CPU cores:
    # 910-932 MiB at the start of chunks 2-25 (torch itself ~730 MiB), least-squares slopes of
    # 0.12-0.17 MiB per chunk over four runs; keeping each chunk's posts made it 1.2.
    slope = _slope(rss[1:])
    assert slope < 0.5, (slope, [round(r) for r in rss])

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


def test_predict_builds_no_optimizer(run: Path, tmp_path: Path) -> None:
    """A loaded run predicts without an optimizer: building one imports torch._dynamo (+150 MiB
    peak RSS and over a second per predict process on the CI machine)."""
    code = (
        "import sys\n"
        "from fbdl_fast.cli import main\n"
        f"assert main(['predict', '--run', {str(run)!r}, '--text', 'hello #world', '--quiet',"
        " '--device', 'cpu']) == 0\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout + done.stderr
