"""What surprised a first user of the command line, and what it does now: predict keeps a
post's id, a semicolon CSV trains and predicts (and says its delimiter), train warns about too
few posts, each calibration line says what the temperature optimises, the ONNX export shows its
stages as they happen, and the demo explains the figures that look wrong.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import pytest

import fbdl_fast.training.trainer as trainer_module
from fbdl_fast.cli.main import main
from tiny_run import make_run, tiny_model_args

# The posts a tiny CNN trains on here: two classes told apart by their words.
WORDS = {"spam": ["win", "prize", "free", "click"], "ham": ["lunch", "today", "see", "you"]}


def semicolon_posts(path: Path, n: int) -> Path:
    """`n` posts (half each class) as a semicolon-delimited .csv with id, text and label."""
    rows = ["id;text;label"]
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        words = WORDS[label]
        rows.append(f"p{i};{words[i % 4]} {words[(i + 1) % 4]} number {i};{label}")
    path.write_text("\n".join(rows) + "\n", "utf-8")
    return path


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, str]:
    """(posts file, run folder, stdout, stderr) of a tiny CNN trained with --calibrate on a
    semicolon-delimited CSV through the CLI."""
    root = tmp_path_factory.mktemp("surprises")
    data = semicolon_posts(root / "posts.csv", 120)
    run = root / "run"
    out, err = io.StringIO(), io.StringIO()  # capsys is function-scoped: captured by hand
    argv = ["train", "--data", str(data), "--output", str(run), "--epochs", "2"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--calibrate", "--val-fraction", "0.3", *tiny_model_args()])
    assert code == 0, err.getvalue()
    return data, run, out.getvalue(), err.getvalue()


def test_a_semicolon_csv_trains_and_says_its_delimiter(
    calibrated: tuple[Path, Path, str, str],
) -> None:
    """Before, train stopped with "columns are: id;text;label"."""
    data, run, _, err = calibrated
    assert f"{data}: its header splits on semicolons (';'), not commas" in err
    assert json.loads((run / "label_map.json").read_text())["labels"] == ["ham", "spam"]


def test_train_says_what_the_temperature_optimises(calibrated: tuple[Path, Path, str, str]) -> None:
    """The last line's calibration names the NLL the temperature minimised (and it fell), and
    shows the ECE as a figure the temperature does not optimise."""
    _, _, out, _ = calibrated
    found = re.search(
        r"calibrated: temperature [\d.]+ fitted to minimise the validation NLL \(NLL "
        r"([\d.]+) -> ([\d.]+)\); validation ECE [\d.]+ -> [\d.]+ \(15 bins, not optimised, "
        r"36 posts\)",
        out,
    )
    assert found, out
    assert float(found[2]) <= float(found[1])


def test_evaluate_labels_each_figure_before_or_after_calibration(
    calibrated: tuple[Path, Path, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The top block labels each figure: the loss is the cross-entropy of the calibrated
    probabilities (the NLL after the temperature), the ECE shows before -> after it."""
    data, run, _, _ = calibrated
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--quiet"]) == 0
    top = capsys.readouterr().out.split("\n\n")[0]
    loss = re.search(
        r"^loss +([\d.]+) \(the cross-entropy of the calibrated probabilities\)$", top, re.M
    )
    ece = re.search(
        r"^ece +[\d.]+ -> [\d.]+ \(before -> after temperature [\d.]+, which train --calibrate "
        r"fitted to minimise the validation NLL; NLL here [\d.]+ -> ([\d.]+)\)$",
        top,
        re.M,
    )
    assert loss and ece, top
    assert loss[1] == ece[1]


def test_evaluate_loss_is_the_cross_entropy_of_predicts_probabilities(
    calibrated: tuple[Path, Path, str, str],
) -> None:
    """evaluate's loss is the mean -log of the probability predict gives the true class, for a
    calibrated run (not the raw logits' loss) as for an ensemble of it with itself."""
    import numpy as np

    from fbdl_fast import load_ensemble, load_run
    from fbdl_fast.data import load_posts

    data, run, _, _ = calibrated
    posts = load_posts(data, "text", "label")
    loaded = load_run(run)
    picked = [
        p.probabilities[str(label)] for p, label in zip(loaded.predict(posts.texts), posts.labels)
    ]
    want = -np.mean(np.log(picked))
    assert loaded.evaluate(data).loss == pytest.approx(want, rel=1e-5)
    assert load_ensemble([run, run]).evaluate(data).loss == pytest.approx(want, rel=1e-5)


def test_predict_keeps_the_id_column_by_default(
    calibrated: tuple[Path, Path, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An input with an id column gets it in every output row, CSV and JSON lines, without
    --keep-columns; --keep-columns '' keeps none, and an input without id gets none."""
    data, run, _, _ = calibrated
    argv = ["predict", "--run", str(run), "--data", str(data), "--quiet"]
    out = tmp_path / "p.csv"
    assert main([*argv, "--output", str(out)]) == 0
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["id", "text", "label"]
    assert [row[0] for row in rows[1:]] == [f"p{i}" for i in range(120)]
    jsonl = tmp_path / "p.jsonl"
    assert main([*argv, "--output", str(jsonl)]) == 0
    lines = [json.loads(line) for line in jsonl.read_text("utf-8").splitlines()]
    assert [line["id"] for line in lines] == [f"p{i}" for i in range(120)]
    assert main([*argv, "--keep-columns", "", "--output", str(tmp_path / "none.jsonl")]) == 0
    first = json.loads((tmp_path / "none.jsonl").read_text("utf-8").splitlines()[0])
    assert "id" not in first and first["text"] == lines[0]["text"]
    no_id = tmp_path / "no_id.csv"
    no_id.write_text("text\nwin a prize\n", "utf-8")
    assert main(["predict", "--run", str(run), "--data", str(no_id), "--quiet"]) == 0
    assert "id" not in json.loads(capsys.readouterr().out)


def test_train_warns_about_too_few_posts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """5 posts train (a warning, not an error), with one line naming the per-class minimum and
    one naming the total, even with --quiet."""
    data = tmp_path / "five.csv"
    rows = [
        "win a prize,spam",
        "free click,spam",
        "click now,spam",
        "lunch today,ham",
        "see you,ham",
    ]
    data.write_text("text,label\n" + "\n".join(rows) + "\n", "utf-8")
    argv = ["train", "--data", str(data), "--output", str(tmp_path / "run"), "--epochs", "1"]
    assert main([*argv, "--val-fraction", "0.4", *tiny_model_args(), "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert (
        f"fbdl-fast train: warning: {data}: 2 class(es) have fewer than 10 posts, too few to "
        "learn reliably (posts of each in all): ham (2), spam (3)"
    ) in err
    assert any(
        line.startswith(f"fbdl-fast train: warning: {data}: only 5 posts (3 train / 2 validation)")
        for line in err
    ), err


def test_onnx_export_shows_its_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Loading, tracing/exporting, the parity check and writing each get a line on stderr as
    they start, after the seconds elapsed; stdout keeps the one result line."""
    pytest.importorskip("onnxruntime")
    run = make_run(tmp_path / "run")
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 0
    captured = capsys.readouterr()
    stages = captured.err.splitlines()
    expected = [
        "loading the run",
        "exporting",
        "tracing and exporting the model (torch.onnx.export, dynamo=True)",
        "checking onnxruntime's logits against torch's on 3 padded posts",
        f"writing {run / 'model.onnx'}",
    ]
    assert len(stages) == len(expected), stages
    seconds = []
    for line, stage in zip(stages, expected):
        found = re.match(r"\[ *(\d+\.\d)s\] (.*)$", line)
        assert found and found[2].startswith(stage), line
        seconds.append(float(found[1]))
    assert seconds == sorted(seconds)
    assert captured.out.startswith(f"wrote {run / 'model.onnx'} (") and "s: onnxruntime" in (
        captured.out
    )


def test_demo_footnotes_explain_the_surprising_figures() -> None:
    """The AMP note only on a CPU without bf16 units; the train-below-validation note names the
    rows it is about."""
    from fbdl_fast.cli.demo import footnotes

    rows = [
        {"model": "CNN", "train_acc": 0.9, "val_acc": 0.8},
        {"model": "MiniLM (fine-tuned)", "train_acc": 0.67, "val_acc": 0.91},
    ]
    notes = footnotes(rows, "cpu", native_bf16=False)
    assert len(notes) == 2
    assert notes[0].startswith("* AMP Step below 1x is expected here: this CPU has no bf16 units")
    assert notes[1].startswith("* Train Acc below Val Acc (MiniLM (fine-tuned)) is expected")
    assert "averaged over the epoch" in notes[1] and "dropout on" in notes[1]
    assert footnotes(rows, "cpu", native_bf16=True) == notes[1:]
    assert footnotes(rows, "cuda", native_bf16=False) == notes[1:]
    assert footnotes(rows[:1], "cuda", native_bf16=False) == []


def test_demo_prints_the_amp_footnote_on_a_cpu_without_bf16(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The printed table is followed by the AMP note when the CPU has no bf16 units (simulated)
    and by none when it has them; --json prints the rows only."""
    argv = ["demo", "--quick", "--samples", "64", "--models", "cnn", "--device", "cpu", "--quiet"]
    monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda: False)
    assert main(argv) == 0
    assert "\n* AMP Step below 1x is expected here" in capsys.readouterr().out
    monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda: True)
    assert main(argv) == 0
    assert "AMP Step below 1x" not in capsys.readouterr().out
    monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda: False)
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["model"] == "CNN"
