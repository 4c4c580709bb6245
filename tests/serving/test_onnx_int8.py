"""`export --format onnx-int8` -> model.int8.onnx, served by `--checkpoint onnx-int8`: int8 weights
that stay within int8's serving tolerance of best.pt with the same labels, the run's metadata,
and the refusals (no file, no onnxruntime, an fp32 file in its place or the reverse, another
best.pt). Changed bytes: tests/training/test_manifest.py; the library's predictions against the
CLI's: tests/training/test_old_runs.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest
import torch

from fbdl_fast.cli import main
from fbdl_fast.data.synthetic import generate_posts
from fbdl_fast.files import sha256_of
from fbdl_fast.manifest import write_recorded
from fbdl_fast.serving import onnx as serving_onnx
from fbdl_fast.training.loading import load_run
from fbdl_fast.training.trainer import BEST_CHECKPOINT
from test_export import _run
from test_int8_attention import PROBABILITY_TOLERANCE
from tiny_run import cli_refusal, make_run, write_posts_csv


def _export(folder: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["export", "--run", str(folder), "--format", fmt, "--quiet"]) == 0
    return capsys.readouterr().out


def _probabilities(folder: Path, checkpoint: str, texts: list[str], out: Path) -> torch.Tensor:
    argv = ["predict", "--run", str(folder), "--output", str(out), "--overwrite", "--quiet"]
    argv += ["--checkpoint", checkpoint, "--batch-size", "16"]
    assert main([*argv, *[a for t in texts for a in ("--text", t)]]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return torch.tensor([list(r["probabilities"].values()) for r in rows])


@pytest.mark.parametrize("model", ["transformer", "bert"])
def test_onnx_int8_export_then_predict_and_evaluate(
    tmp_path: Path, model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file holds int8 weights (MatMulInteger in the graph, int8 initializers) and carries
    the run's metadata plus fbdl_fast.quantization; predict --checkpoint onnx-int8 stays
    within int8's probability tolerance of best.pt, gives its labels where best.pt's top two
    are apart by more than that, and is not the fp32 file's output; evaluate names the file."""
    folder = _run(tmp_path, model, num_layers=2)
    said = _export(folder, "onnx-int8", capsys)
    assert "model.int8.onnx" in said and "--checkpoint onnx-int8" in said
    _export(folder, "onnx", capsys)
    path = folder / "model.int8.onnx"
    graph = onnx.load(str(path))
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("MatMulInteger") >= 2 * 3, ops  # per block: in_proj, FFN in and out
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.graph.initializer)
    props = {p.key: p.value for p in graph.metadata_props if p.key.startswith("fbdl_fast.")}
    assert json.loads(props["fbdl_fast.quantization"]) == serving_onnx.QUANTIZATION
    assert json.loads(props["fbdl_fast.source_checkpoint"])["sha256"] == sha256_of(
        folder / BEST_CHECKPOINT
    )

    texts = generate_posts(40, seed=5).texts
    got = _probabilities(folder, "onnx-int8", texts, tmp_path / "int8.jsonl")
    fp32 = _probabilities(folder, "best", texts, tmp_path / "best.jsonl")
    onnx_fp32 = _probabilities(folder, "onnx", texts, tmp_path / "onnx.jsonl")
    assert (got - fp32).abs().max().item() <= PROBABILITY_TOLERANCE
    assert (got - onnx_fp32).abs().max().item() > 1e-5  # the int8 weights ran
    top2 = fp32.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * PROBABILITY_TOLERANCE
    assert torch.equal(got.argmax(1)[clear], fp32.argmax(1)[clear])

    labelled = write_posts_csv(tmp_path / "labelled.csv", 20, seed=6)
    argv = ["evaluate", "--run", str(folder), "--data", str(labelled), "--json", "--quiet"]
    assert main([*argv, "--checkpoint", "onnx-int8"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == "model.int8.onnx"
    served = load_run(folder, checkpoint="onnx-int8")
    assert served.checkpoint.name == "model.int8.onnx"


def test_onnx_int8_refusals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each refusal is one line naming the file or what to do: no model.int8.onnx yet, no
    onnxruntime (predict and export), model.onnx's fp32 bytes written as model.int8.onnx, the
    int8 bytes as model.onnx, and a file made from another best.pt than the run's."""
    folder = make_run(tmp_path / "cnn")
    predict = ["predict", "--run", str(folder), "--checkpoint", "onnx-int8", "--text", "hi"]
    predict.append("--quiet")
    export = ["export", "--run", str(folder), "--format", "onnx-int8", "--quiet"]
    again = f"export it again: `fbdl-fast export --run {folder} --format onnx-int8`"

    err = cli_refusal(capsys, predict)
    assert "model.int8.onnx does not exist; write it with `fbdl-fast export --run" in err
    assert "--format onnx-int8`" in err
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
        assert "--checkpoint onnx-int8 needs onnxruntime" in cli_refusal(capsys, predict)
        assert "--format onnx-int8 needs onnx and onnxruntime" in cli_refusal(capsys, export)
    assert not (folder / "model.int8.onnx").exists()

    _export(folder, "onnx-int8", capsys)
    _export(folder, "onnx", capsys)
    path, fp32_path = folder / "model.int8.onnx", folder / "model.onnx"
    good, fp32 = path.read_bytes(), fp32_path.read_bytes()
    write_recorded(path, fp32)  # an fp32 file under the int8 name (recorded where a run has a
    # manifest, so that only the file's own stamp can tell)
    err = cli_refusal(capsys, predict)
    assert f"{path} holds fp32 weights, not what --checkpoint onnx-int8 serves" in err
    assert again in err
    write_recorded(fp32_path, good)
    onnx_predict = [a if a != "onnx-int8" else "onnx" for a in predict]
    assert "holds int8 weights, not what --checkpoint onnx serves" in cli_refusal(
        capsys, onnx_predict
    )

    write_recorded(path, good)
    assert main(predict) == 0
    capsys.readouterr()
    run = load_run(folder, device="cpu")
    with torch.no_grad():
        run.trainer.model.output_projection.bias.add_(1.0)
    run.trainer.save_checkpoint(folder / BEST_CHECKPOINT)
    err = cli_refusal(capsys, predict)
    assert "was made from another best.pt" in err and again in err
