"""`fbdl-fast export`: ONNX parity in onnxruntime, dynamic int8 through predict, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from devices import kernel_skip_reason
from fbdl_fast.checkpoint import load_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.cli import predict as cli
from fbdl_fast.config import ModelConfig
from fbdl_fast.data import PostsDataset, loader_order, make_loader
from fbdl_fast.data.synthetic import generate_posts
from fbdl_fast.models import create_model
from fbdl_fast.ops import _dispatch
from fbdl_fast.runs import RUN_CONFIG
from fbdl_fast.serving import int8
from fbdl_fast.serving import onnx as serving_onnx
from fbdl_fast.training.loading import Run, load_run
from fbdl_fast.training.trainer import BEST_CHECKPOINT, Trainer
from tiny_run import cli_refusal, make_run


def _run(tmp_path: Path, model: str, num_layers: int = 1) -> Path:
    """make_run's tiny run folder, its CNN replaced by `model` (fused layers where it has any,
    so that export must take their reference path)."""
    folder = make_run(tmp_path / model)
    meta = json.loads((folder / RUN_CONFIG).read_text(encoding="utf-8"))
    meta["model"] = model
    meta["model_config"]["fused"] = True
    meta["model_config"]["num_layers"] = num_layers
    (folder / RUN_CONFIG).write_text(json.dumps(meta), encoding="utf-8")
    config = ModelConfig.from_dict(meta["model_config"])
    Trainer(create_model(model, config), config, device="cpu").save_checkpoint(
        folder / BEST_CHECKPOINT
    )
    return folder


def _loader(run: Run, texts: list[str], batch_size: int) -> DataLoader:
    """Padded, length-bucketed batches of `texts`, as predict builds them."""
    dataset = PostsDataset.from_texts(run.tokenizer, texts, None, run.config.max_seq_length)
    return make_loader(dataset, batch_size, shuffle=False, pad_token_id=run.config.pad_token_id)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- ONNX


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "num_layers"),
    [("transformer", 2), ("cnn", 2), ("lstm", 1), ("lstm", 2), ("bert", 2), ("ngram", 1)],
    ids=["transformer", "cnn", "lstm-1", "lstm-2", "bert", "ngram"],
)
def test_onnx_parity_in_onnxruntime(
    tmp_path: Path,
    model: str,
    num_layers: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """model.onnx gives torch's logits (max abs diff <= 1e-4) on padded batches of synthetic
    posts of several batch sizes and lengths; batch and sequence axes are symbolic; the mask
    is a real input; the backend setting is as it was after the export. The LSTM (1 layer and
    the CLI's 2) goes through torch.export's exporter."""
    import onnx

    # Training runs the kernels under "auto"; where they cannot run (an interpreter broken by
    # this numpy), the torch backend trains, and the export must restore that setting instead.
    backend = "auto" if kernel_skip_reason() is None else "torch"
    monkeypatch.setenv("FBDL_FAST_BACKEND", backend)
    _dispatch.refresh()
    folder = _run(tmp_path, model, num_layers=num_layers)
    assert main(["export", "--run", str(folder), "--format", "onnx", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {folder / 'model.onnx'}" in out
    if model == "lstm":
        assert "dynamo exporter" in out, out
    assert os.environ["FBDL_FAST_BACKEND"] == backend and _dispatch.settings().backend == backend
    data = (folder / "model.onnx").read_bytes()
    graph = onnx.load_from_string(data).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param, value.name  # batch: symbolic
        if value.name != "logits":
            assert dims[1].dim_param, value.name  # sequence: symbolic
    run = load_run(folder, device="cpu")
    shapes, padded = set(), 0
    for batch in _loader(run, generate_posts(40, seed=5).texts, 16):
        ids, mask = batch["input_ids"], batch["attention_mask"].long()
        padded += int((mask == 0).any(dim=1).sum())
        shapes.add(tuple(ids.shape))
        with torch.no_grad():
            expected = run.trainer.model.eval()(ids, mask)
        got = serving_onnx.onnx_logits(data, ids, mask)
        assert (got - expected).abs().max().item() <= serving_onnx.ONNX_TOLERANCE
    assert len({s[0] for s in shapes}) >= 2 and len({s[1] for s in shapes}) >= 2
    assert padded >= 10  # posts with padding among them
    # The mask is read: hiding a real token changes that post's logits.
    ids, mask = batch["input_ids"], batch["attention_mask"].long()
    shorter = mask.clone()
    shorter[0, int(mask[0].sum()) - 1] = 0
    diff = (
        serving_onnx.onnx_logits(data, ids, shorter)[0]
        - serving_onnx.onnx_logits(data, ids, mask)[0]
    )
    assert diff.abs().max().item() > 1e-6


@pytest.mark.parametrize("failure", ["exporters", "parity"])
def test_onnx_export_refuses_a_file_that_fails(
    tmp_path: Path,
    failure: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Both exporters failing, or a file whose logits are off, is one error naming each
    exporter's problem; no model.onnx and no temporary file is left."""
    folder = make_run(tmp_path / "cnn")
    if failure == "exporters":

        def broken(model, example, max_length, dynamo):  # type: ignore[no-untyped-def]
            raise RuntimeError(f"cannot trace ({'dynamo' if dynamo else 'torchscript'})\nmore")

        monkeypatch.setattr(serving_onnx, "_onnx_bytes", broken)
        needle = (
            "dynamo: RuntimeError: cannot trace (dynamo); "
            "torchscript: RuntimeError: cannot trace (torchscript)"
        )
    else:
        real = serving_onnx.onnx_logits
        monkeypatch.setattr(serving_onnx, "onnx_logits", lambda *a: real(*a) + 0.01)
        needle = "torchscript: max |logit diff| 0.01 against torch on a padded (3, 11) batch"
    assert main(["export", "--run", str(folder), "--format", "onnx", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "could not be exported to ONNX" in err and needle in err, err
    assert err.count("\n") == 1
    assert not (folder / "model.onnx").exists() and _leftovers(folder) == []


def test_lstm_scan_recurrence_is_the_export_s_alone_and_matches_torch_lstm() -> None:
    """The scan form of the LSTM's packing-free path runs only inside scan_recurrence() (that
    is, while export_onnx traces with torch.export; torch.compile keeps torch.lstm: torch 2.11
    reports is_exporting() under torch.compile too and its inductor cannot compile the scan),
    and it computes what torch.lstm computes, on padded rows of odd lengths."""
    from fbdl_fast.models import lstm

    config = ModelConfig(
        vocab_size=50, num_classes=3, input_dim=8, hidden_dim=6, num_layers=2, dropout=0.0
    )
    model = create_model("lstm", config).eval()
    lengths = torch.tensor([7, 3, 1, 5])
    x = torch.randn(4, 7, 8, generator=torch.Generator().manual_seed(0))
    assert not lstm._scan_recurrence
    with torch.no_grad():
        expected = model._padded_final_states(x, lengths)
        with lstm.scan_recurrence():
            assert lstm._scan_recurrence
            scanned = model._padded_final_states(x, lengths)
        assert not lstm._scan_recurrence
        packed = model._packed_final_states(x, lengths)
    torch.testing.assert_close(scanned, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(scanned, packed, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("num_layers", [1, 3])
def test_lstm_of_any_depth_exports_through_torch_export(tmp_path: Path, num_layers: int) -> None:
    """A bidirectional LSTM of 1 or 3 layers exports with torch.export's exporter (no packing,
    no TorchScript), and its file gives torch's logits (packed path) within 1e-4 on batches
    of other shapes than the traced one: one post of one token, and posts of lengths 1 to the
    longest; what the padding holds does not change them (each direction reads only a post's
    real tokens)."""
    run = load_run(_run(tmp_path, "lstm", num_layers=num_layers), device="cpu")
    done = serving_onnx.export_onnx(run)
    assert done["exporter"] == "dynamo" and done["max_abs_diff"] <= serving_onnx.ONNX_TOLERANCE
    data = done["path"].read_bytes()
    config, model = run.config, run.trainer.model.eval()
    length = config.max_seq_length
    ids, mask = serving_onnx.padded_batch(5, length, config.vocab_size, config.pad_token_id, seed=3)
    mask[1, 1:] = 0  # a post of one token
    for batch in ((ids[:1, :1], mask[:1, :1]), (ids, mask)):
        with torch.no_grad():
            expected = model(*batch)
        got = serving_onnx.onnx_logits(data, *batch)
        assert (got - expected).abs().max().item() <= serving_onnx.ONNX_TOLERANCE
    other = torch.where(mask == 1, ids, (ids + 7) % config.vocab_size)  # other padding ids
    torch.testing.assert_close(serving_onnx.onnx_logits(data, other, mask), got, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- int8

QUANTIZED = {
    # the attention's projections too: int8.py swaps each attention for a LinearAttention
    "transformer": [
        "blocks.0.attn.in_proj",
        "blocks.0.attn.out_proj",
        "blocks.0.mlp.fc",
        "blocks.0.mlp.proj",
        "output_projection",
    ],
    "lstm": ["lstm", "output_projection"],
    "cnn": ["output_projection"],  # quantize_dynamic has no Conv1d: the convolutions stay fp32
    "ngram": ["output_projection"],  # its n-gram table is an embedding: fp32
}


@pytest.mark.parametrize("model", sorted(QUANTIZED))
def test_int8_export_then_predict(
    tmp_path: Path, model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """export --format int8 writes int8 weights per output channel (weights_only-loadable) for
    the Linear and LSTM layers; load_int8 rebuilds quantize_int8's model bit for bit; predict
    --checkpoint int8 gives its probabilities, not the fp32 ones; evaluate names the file."""
    folder = _run(tmp_path, model)
    assert main(["export", "--run", str(folder), "--format", "int8", "--quiet"]) == 0
    assert "dynamic int8" in capsys.readouterr().out
    state = load_checkpoint(folder / "model.int8.pt")
    assert state["quantized_modules"] == QUANTIZED[model]
    weights = state["model"]
    int8_keys = [k for k, v in weights.items() if v.dtype == torch.int8]
    assert int8_keys and all(k.endswith(".int8") for k in int8_keys)
    for key in int8_keys:  # per channel: one scale and zero point per output row, axis 0
        stem, rows = key.removesuffix(".int8"), weights[key].shape[0]
        assert weights[stem + ".scales"].dtype == torch.float64
        assert weights[stem + ".scales"].shape == (rows,)
        assert weights[stem + ".zero_points"].dtype == torch.int64
        assert weights[stem + ".zero_points"].shape == (rows,)
        assert int(weights[stem + ".axis"]) == 0 and stem + ".scale" not in weights
        assert len(set(weights[stem + ".scales"].tolist())) > 1, stem  # not one scale repeated

    texts = generate_posts(12, seed=9).texts
    out = tmp_path / "p.jsonl"
    argv = ["predict", "--run", str(folder), "--output", str(out), "--quiet"]
    assert main([*argv, "--checkpoint", "int8", *[a for t in texts for a in ("--text", t)]]) == 0
    got = torch.tensor(
        [list(json.loads(line)["probabilities"].values()) for line in out.read_text().splitlines()]
    )
    run = load_run(folder, device="cpu")
    reference = int8.quantize_int8(run.trainer.model)
    # The same batches as predict's: dynamic int8 scales each batch's activations as a whole.
    loader = _loader(run, texts, run.config.batch_size)
    expected = torch.empty_like(got)
    fp32 = torch.empty_like(got)
    with torch.no_grad():
        for batch in loader:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            expected_rows = torch.softmax(reference(ids, mask), -1)
            fp32_rows = torch.softmax(run.trainer.model.eval()(ids, mask), -1)
            for k, i in enumerate(loader_order(loader)[: len(ids)]):
                expected[i], fp32[i] = expected_rows[k], fp32_rows[k]
    assert len(loader) == 1  # one batch: loader_order's first len(ids) are its rows
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)  # 6 decimals in the file
    assert (got - fp32).abs().max().item() > 1e-5  # the int8 model ran
    with torch.no_grad():  # the file rebuilds the exported model exactly
        assert torch.equal(int8.load_int8(run)(ids, mask), reference(ids, mask))

    labelled = tmp_path / "l.csv"
    labelled.write_text("text,label\nhello world,positive\n", encoding="utf-8")
    evaluate = ["evaluate", "--run", str(folder), "--data", str(labelled), "--json"]
    assert main([*evaluate, "--checkpoint", "int8"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == "model.int8.pt"


@pytest.mark.parametrize("model", ["lstm", "transformer"])
def test_int8_file_with_weights_per_tensor_still_loads(tmp_path: Path, model: str) -> None:
    """A model.int8.pt written before weights per channel (NAME.int8, NAME.scale, NAME.zero_point
    per weight) loads into the model it was made from, bit for bit, not into today's per-channel
    one."""
    import copy
    import warnings

    from torch.ao.quantization import quantize_dynamic

    from fbdl_fast.checkpoint import save_checkpoint

    folder = _run(tmp_path, model)
    assert main(["export", "--run", str(folder), "--format", "int8", "--quiet"]) == 0
    run = load_run(folder, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The quantization that files were written with before: torch's default qconfig.
        per_tensor = quantize_dynamic(
            copy.deepcopy(run.trainer.model).eval(), {torch.nn.Linear, torch.nn.LSTM}, torch.qint8
        )
    old = int8.int8_state(per_tensor)
    stems = [k.removesuffix(".int8") for k in old if k.endswith(".int8")]
    assert stems and not [k for k in old if k.endswith((".scales", ".zero_points", ".axis"))]
    for stem in stems:  # the old layout: one float64 scale and one int64 zero point
        assert old[stem + ".scale"].dtype == torch.float64 and old[stem + ".scale"].dim() == 0
        assert old[stem + ".zero_point"].dtype == torch.int64
    path = folder / "model.int8.pt"
    state = load_checkpoint(path)
    state["model"] = old
    # and, as then, the attention left in fp32: no attention_linears key, its own int8 list
    del state["attention_linears"]
    state["quantized_modules"] = int8.quantizable(run.trainer.model, attention=False)
    save_checkpoint(state, path)

    batch = next(iter(_loader(run, generate_posts(8, seed=3).texts, 8)))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        got = int8.load_int8(run)(ids, mask)
        assert torch.equal(got, per_tensor(ids, mask))
        assert not torch.equal(got, int8.quantize_int8(run.trainer.model)(ids, mask))


def test_int8_engine_missing_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert int8.int8_engine_problem(["qnnpack", "none"]) is None
    folder = make_run(tmp_path / "cnn")
    assert main(["export", "--run", str(folder), "--format", "int8", "--quiet"]) == 0
    monkeypatch.setattr(int8, "supported_engines", lambda: ["none"])
    for argv in (
        ["export", "--run", str(folder), "--format", "int8"],
        ["predict", "--run", str(folder), "--checkpoint", "int8", "--text", "hi"],
    ):
        assert main([*argv, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "--format int8: this CPU has no int8 engine (torch.backends.quantized." in err
        assert "supported_engines = ['none']" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- bad input


def test_export_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Missing run folder, unknown format, corrupt checkpoint, --checkpoint int8 as a source:
    one line each, exit status 2, nothing written."""
    folder = make_run(tmp_path / "cnn")
    (folder / BEST_CHECKPOINT).write_bytes(b"PK\x03\x04 not really a zip archive")
    cases = [
        (["--run", str(tmp_path / "nope"), "--format", "onnx"], "does not exist"),
        (
            ["--run", str(folder), "--format", "tflite"],
            "--format 'tflite' is not known; accepted: onnx, int8",
        ),
        (["--run", str(folder), "--format", "int8"], "best.pt' is truncated or corrupt"),
        (["--run", str(folder), "--format", "onnx"], "best.pt' is truncated or corrupt"),
        (["--run", str(folder), "--format", "int8", "--checkpoint", "int8"], "export from best"),
    ]
    for argv, needle in cases:
        assert main(["export", *argv, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in folder.iterdir()) == [
        "best.pt",
        "config.json",
        "label_map.json",
        "tokenizer.json",
    ]


def test_predict_int8_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No model.int8.pt yet, a missing run, --device cuda, a corrupt file, and a file made from
    another best.pt than the run's (retrained since): each one line naming what to do."""
    folder = make_run(tmp_path / "cnn")
    predict = ["predict", "--run", str(folder), "--checkpoint", "int8", "--text", "hi", "--quiet"]

    def error(argv: list[str]) -> str:
        return cli_refusal(capsys, argv)

    err = error(predict)
    assert "model.int8.pt does not exist" in err and "fbdl-fast export --run" in err
    missing = [*predict[:2], str(tmp_path / "nope"), *predict[3:]]
    assert "does not exist" in error(missing)
    with monkeypatch.context() as patch:  # as on a machine with CUDA
        patch.setattr(cli, "check_device", lambda name: None)
        assert "runs on the CPU only" in error([*predict, "--device", "cuda"])
    assert main(["export", "--run", str(folder), "--format", "int8", "--quiet"]) == 0
    int8_file = folder / "model.int8.pt"
    good = int8_file.read_bytes()
    int8_file.write_bytes(good[: len(good) // 2])
    assert "model.int8.pt' is truncated or corrupt" in error(predict)
    int8_file.write_bytes(good)
    # The int8 file named as a torch checkpoint's path: one line saying how to read it.
    as_path = [*predict[:4], str(int8_file), *predict[5:]]
    assert "it is an int8 export: load it as the checkpoint int8" in error(as_path)
    run = load_run(folder, device="cpu")
    with torch.no_grad():
        run.trainer.model.output_projection.bias.add_(1.0)
    run.trainer.save_checkpoint(folder / BEST_CHECKPOINT)
    err = error(predict)
    assert "was made from another best.pt" in err and "export it again" in err


def test_int8_export_carries_the_calibration_temperature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A calibrated best.pt (train --calibrate) exported to int8: predict --checkpoint int8
    gives softmax(int8 logits / T) with best.pt's T, not the uncalibrated softmax."""
    from fbdl_fast.checkpoint import add_calibration

    folder = make_run(tmp_path / "cnn")
    add_calibration(folder / BEST_CHECKPOINT, {"temperature": 2.5})
    assert main(["export", "--run", str(folder), "--format", "int8", "--quiet"]) == 0
    capsys.readouterr()
    texts = generate_posts(6, seed=4).texts
    out = tmp_path / "p.jsonl"
    argv = ["predict", "--run", str(folder), "--output", str(out), "--checkpoint", "int8"]
    assert main([*argv, "--quiet", *[a for t in texts for a in ("--text", t)]]) == 0
    got = torch.tensor(
        [list(json.loads(line)["probabilities"].values()) for line in out.read_text().splitlines()]
    )
    run = load_run(folder, device="cpu")
    assert run.trainer.temperature == 2.5
    logits = torch.empty_like(got)
    loader = _loader(run, texts, run.config.batch_size)
    with torch.no_grad():
        for batch in loader:
            rows = int8.load_int8(run)(batch["input_ids"], batch["attention_mask"])
            logits[loader_order(loader)[: len(rows)]] = rows
    assert len(loader) == 1
    torch.testing.assert_close(got, torch.softmax(logits / 2.5, -1), atol=2e-6, rtol=0)
    assert (got - torch.softmax(logits, -1)).abs().max().item() > 1e-3
