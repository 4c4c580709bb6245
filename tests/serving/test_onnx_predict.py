"""`predict`/`evaluate --checkpoint onnx`: the run's model.onnx in onnxruntime gives best.pt's
labels, probabilities and scores; the metadata that ties the file to its run; threads; bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from fbdl_fast.checkpoint import add_calibration
from fbdl_fast.cli import main
from fbdl_fast.cli import predict as cli
from fbdl_fast.data import loader_order
from fbdl_fast.data.synthetic import generate_posts
from fbdl_fast.files import sha256_of
from fbdl_fast.runs import RUN_LABELS, tokenizer_fingerprint
from fbdl_fast.serving import onnx as onnx_runtime
from fbdl_fast.training.loading import load_run
from fbdl_fast.training.trainer import BEST_CHECKPOINT
from test_export import _loader, _run
from tiny_run import cli_refusal, make_run, write_posts_csv


def _export(folder: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["export", "--run", str(folder), "--format", "onnx", "--quiet"]) == 0
    capsys.readouterr()
    return folder / "model.onnx"


def _predict(folder: Path, out: Path, texts: list[str], *options: str) -> list[dict]:
    argv = ["predict", "--run", str(folder), "--output", str(out), "--overwrite", "--quiet"]
    assert main([*argv, *options, *[a for t in texts for a in ("--text", t)]]) == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(("model", "temperature"), [("transformer", None), ("cnn", 2.5)])
def test_onnx_predict_and_evaluate_match_best(
    tmp_path: Path, model: str, temperature: float | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """On padded batches of synthetic posts, --checkpoint onnx gives best.pt's labels and
    probabilities (within 1e-4; calibrated by best.pt's temperature where it has one) and
    evaluate the same accuracy and macro-F1; the file carries what ties it to the run."""
    folder = _run(tmp_path, model)
    if temperature is not None:  # as train --calibrate stores it
        add_calibration(folder / BEST_CHECKPOINT, {"temperature": temperature})
    _export(folder, capsys)
    props = {p.key: json.loads(p.value) for p in _metadata(folder / "model.onnx")}
    run = load_run(folder, device="cpu")
    assert props["fbdl_fast.source_checkpoint"] == {
        "name": "best.pt",
        "sha256": sha256_of(folder / BEST_CHECKPOINT),
    }
    assert props["fbdl_fast.tokenizer_fingerprint"] == tokenizer_fingerprint(run.tokenizer)
    assert props["fbdl_fast.label_map"] == {"labels": list(run.label_map.labels)}
    assert props["fbdl_fast.calibration"] == {"temperature": temperature or 1.0}
    assert load_run(folder, checkpoint="onnx").temperature == (temperature or 1.0)

    texts = generate_posts(40, seed=5).texts
    # Batches of 16 bucketed by length: several shapes, most posts padded.
    loader = _loader(run, texts, 16)
    assert sum(int((b["attention_mask"] == 0).any(dim=1).sum()) for b in loader) >= 10
    best = _predict(folder, tmp_path / "best.jsonl", texts, "--batch-size", "16")
    onnx = _predict(
        folder, tmp_path / "onnx.jsonl", texts, "--batch-size", "16", "--checkpoint", "onnx"
    )
    assert [r["label"] for r in onnx] == [r["label"] for r in best]
    got = torch.tensor([list(r["probabilities"].values()) for r in onnx])
    expected = torch.tensor([list(r["probabilities"].values()) for r in best])
    assert (got - expected).abs().max().item() <= 1e-4
    if temperature is not None:  # onnx's probabilities are softmax(logits / T), not softmax
        logits = torch.empty_like(got)
        logits[loader_order(loader)] = run.trainer.outputs(loader)[0]
        assert (got - torch.softmax(logits / temperature, -1)).abs().max().item() <= 1e-4
        assert (got - torch.softmax(logits, -1)).abs().max().item() > 1e-3

    labelled = tmp_path / "labelled.csv"
    write_posts_csv(labelled, 40, seed=6)
    scores = {}
    for checkpoint in ("best", "onnx"):
        argv = ["evaluate", "--run", str(folder), "--data", str(labelled), "--json", "--quiet"]
        assert main([*argv, "--checkpoint", checkpoint, "--batch-size", "16"]) == 0
        scores[checkpoint] = json.loads(capsys.readouterr().out)
    assert scores["onnx"]["checkpoint"] == "model.onnx"
    for key in ("accuracy", "macro_f1", "num_samples"):
        assert scores["onnx"][key] == scores["best"][key], key
    assert scores["onnx"]["loss"] == pytest.approx(scores["best"]["loss"], abs=1e-5)


def _metadata(path: Path) -> list:
    import onnx

    return [p for p in onnx.load(str(path)).metadata_props if p.key.startswith("fbdl_fast.")]


def test_onnx_session_threads_follow_predict_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """predict --threads N: onnxruntime's intra-op threads N, inter-op 1."""
    folder = make_run(tmp_path / "cnn")
    _export(folder, capsys)
    seen = []
    real = onnx_runtime.session

    def recording(model, threads=None):  # type: ignore[no-untyped-def]
        made = real(model, threads)
        options = made.get_session_options()
        seen.append((options.intra_op_num_threads, options.inter_op_num_threads))
        return made

    monkeypatch.setattr(onnx_runtime, "session", recording)
    for threads in (1, 2):
        _predict(
            folder,
            tmp_path / "p.jsonl",
            ["hello"],
            "--checkpoint",
            "onnx",
            "--threads",
            str(threads),
        )
    assert seen == [(1, 1), (2, 1)]


def test_predict_onnx_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No model.onnx yet, no onnxruntime, --device cuda, --checkpoint onnx as an export source,
    a truncated file, a file from an older export (no metadata), labels of another run, and a
    file made from another best.pt than the run's: each one line naming the file or what to do."""
    folder = make_run(tmp_path / "cnn")
    predict = ["predict", "--run", str(folder), "--checkpoint", "onnx", "--text", "hi", "--quiet"]
    again = f"export it again: `fbdl-fast export --run {folder} --format onnx`"

    def error(argv: list[str]) -> str:
        return cli_refusal(capsys, argv)

    err = error(predict)
    assert "model.onnx does not exist; write it with `fbdl-fast export --run" in err
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
        assert "--checkpoint onnx needs onnxruntime" in (err := error(predict))
        assert "pip install 'fbdl-fast[onnx]'" in err
    with monkeypatch.context() as patch:  # as on a machine with CUDA
        patch.setattr(cli, "check_device", lambda name: None)
        assert "--checkpoint onnx runs on the CPU only" in error([*predict, "--device", "cuda"])
    export = ["export", "--run", str(folder), "--format", "onnx", "--quiet"]
    assert "--checkpoint onnx is an export's output" in error([*export, "--checkpoint", "onnx"])

    path = _export(folder, capsys)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    err = error(predict)
    assert f"{path} is truncated or corrupt: onnxruntime cannot load it (" in err and again in err

    import onnx

    old = onnx.load_from_string(good)
    del old.metadata_props[:]
    path.write_bytes(old.SerializeToString())
    err = error(predict)
    assert "does not say which checkpoint and tokenizer it was made from" in err and again in err

    path.write_bytes(good)
    labels = folder / RUN_LABELS
    saved = labels.read_text(encoding="utf-8")
    shuffled = json.loads(saved)
    shuffled["labels"] = shuffled["labels"][::-1]
    labels.write_text(json.dumps(shuffled), encoding="utf-8")
    assert f"{labels} does not match the checkpoint model.onnx" in error(predict)
    labels.write_text(saved, encoding="utf-8")

    run = load_run(folder, device="cpu")
    with torch.no_grad():
        run.trainer.model.output_projection.bias.add_(1.0)
    run.trainer.save_checkpoint(folder / BEST_CHECKPOINT)
    err = error(predict)
    assert "was made from another best.pt" in err and again in err
    evaluate = ["evaluate", "--run", str(folder), "--checkpoint", "onnx", "--quiet"]
    assert "was made from another best.pt" in error([*evaluate, "--data", str(tmp_path / "x.csv")])


def test_sessions_leave_residual_adds_and_layer_norms_unfused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """onnxruntime's default session fuses a BERT's residual Add + LayerNormalization into
    SkipLayerNormalization (the control below), whose CPU kernel measured slower than the two
    it replaces; the sessions predict runs keep them as exported."""
    import onnx
    import onnxruntime

    path = _export(_run(tmp_path, "bert"), capsys)

    def operators(optimized: Path) -> set[str]:
        return {node.op_type for node in onnx.load(str(optimized)).graph.node}

    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "default.onnx")
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert "SkipLayerNormalization" in operators(tmp_path / "default.onnx")
    onnx_runtime.session(path, optimized=tmp_path / "served.onnx")
    served = operators(tmp_path / "served.onnx")
    assert "SkipLayerNormalization" not in served and "LayerNormalization" in served
