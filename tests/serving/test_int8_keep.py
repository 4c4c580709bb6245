"""`fbdl-fast export --format int8 --keep-fp32 NAMES`: named layers left in fp32, recorded in
model.int8.pt and rebuilt exactly by load_int8; bad names refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fbdl_fast.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.data.synthetic import generate_posts
from fbdl_fast.serving import int8
from fbdl_fast.training.loading import load_run
from test_export import _loader, _run

ATTENTION_0 = ["blocks.0.attn.in_proj", "blocks.0.attn.out_proj"]
ATTENTION_1 = ["blocks.1.attn.in_proj", "blocks.1.attn.out_proj"]


def _batch(run):  # type: ignore[no-untyped-def]
    batch = next(iter(_loader(run, generate_posts(8, seed=3).texts, 8)))
    return batch["input_ids"], batch["attention_mask"]


@pytest.mark.parametrize(
    ("model", "keep", "kept", "quantized"),
    [
        # a prefix at a dot boundary keeps both Linear layers of the first block's MLP; the
        # attentions' projections (swapped into plain Linears before quantizing) are int8
        (
            "transformer",
            "blocks.0.mlp",
            ["blocks.0.mlp.fc", "blocks.0.mlp.proj"],
            [
                *ATTENTION_0,
                *ATTENTION_1,
                "blocks.1.mlp.fc",
                "blocks.1.mlp.proj",
                "output_projection",
            ],
        ),
        (
            "transformer",
            " blocks.1.mlp.proj,output_projection",
            ["blocks.1.mlp.proj", "output_projection"],
            [*ATTENTION_0, "blocks.0.mlp.fc", "blocks.0.mlp.proj", *ATTENTION_1, "blocks.1.mlp.fc"],
        ),
        ("lstm", "lstm", ["lstm"], ["output_projection"]),
    ],
    ids=["transformer-prefix", "transformer-two", "lstm"],
)
def test_keep_fp32_is_recorded_and_rebuilt_bit_for_bit(
    tmp_path: Path,
    model: str,
    keep: str,
    kept: list[str],
    quantized: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The kept layers stay nn.Linear/nn.LSTM with their fp32 weights in the file (no int8
    values), model.int8.pt lists them and the int8 ones; load_int8 gives quantize_int8's logits
    with the same layers kept, bit for bit, and not those of the all-int8 model."""
    folder = _run(tmp_path, model, num_layers=2)
    argv = ["export", "--run", str(folder), "--format", "int8", "--keep-fp32", keep, "--quiet"]
    assert main(argv) == 0
    assert f"kept in fp32: {', '.join(kept)};" in capsys.readouterr().out
    state = load_checkpoint(folder / "model.int8.pt")
    assert state["kept_fp32"] == kept and state["quantized_modules"] == quantized
    run = load_run(folder, device="cpu")
    fp32 = dict(run.trainer.model.named_parameters())
    for name in kept:
        saved = [k for k in state["model"] if k.startswith(name + ".")]
        assert saved and not [k for k in saved if k.endswith(".int8")]
        for key in saved:
            assert torch.equal(state["model"][key], fp32[key].detach()), key
    loaded = int8.load_int8(run)
    modules = dict(loaded.named_modules())
    assert all(type(modules[name]) in (nn.Linear, nn.LSTM) for name in kept)
    assert all(type(modules[name]) not in (nn.Linear, nn.LSTM) for name in quantized)
    ids, mask = _batch(run)
    with torch.no_grad():
        got = loaded(ids, mask)
        assert torch.equal(got, int8.quantize_int8(run.trainer.model, kept)(ids, mask))
        assert not torch.equal(got, int8.quantize_int8(run.trainer.model)(ids, mask))


def test_file_without_kept_names_loads_all_int8(tmp_path: Path) -> None:
    """A model.int8.pt written before --keep-fp32 (no kept_fp32 key) loads with every Linear in
    int8, as it was written; a file whose kept layers contradict its int8 list is refused."""
    folder = _run(tmp_path, "transformer")
    assert main(["export", "--run", str(folder), "--format", "int8", "--quiet"]) == 0
    path = folder / "model.int8.pt"
    state = load_checkpoint(path)
    assert state["kept_fp32"] == []
    del state["kept_fp32"]
    save_checkpoint(state, path)
    run = load_run(folder, device="cpu")
    ids, mask = _batch(run)
    with torch.no_grad():
        got = int8.load_int8(run)(ids, mask)
        assert torch.equal(got, int8.quantize_int8(run.trainer.model)(ids, mask))
    state["kept_fp32"] = ["blocks.0.mlp.proj"]  # but its weights are int8 and listed as such
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match=r"model\.int8\.pt is damaged"):
        int8.load_int8(run)
    state["kept_fp32"] = []
    state["quantized_modules"] = ["output_projection"]  # the rebuilt model quantizes five
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match="damaged: it lists the int8 layers output_proj"):
        int8.load_int8(run)


def test_keep_fp32_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A name that covers no Linear/LSTM (unknown, not at a dot boundary, an embedding, MHA's
    raw in_proj_weight parameter), an empty list, or --keep-fp32 with onnx: one line each naming
    the problem (the quantizable layers listed), exit status 2, no model.int8.pt written."""
    folder = _run(tmp_path, "transformer")
    listed = (
        "quantizable: blocks.0.attn.in_proj, blocks.0.attn.out_proj, blocks.0.mlp.fc, "
        "blocks.0.mlp.proj, output_projection"
    )
    cases = [
        ("nope", "--keep-fp32 'nope' names no Linear or LSTM layer of this model", "int8"),
        ("blocks.0.ml", "'blocks.0.ml' names no Linear or LSTM layer of this model (a", "int8"),
        ("blocks.0.mlp.proj,embedding", "'embedding' names no Linear", "int8"),
        ("blocks.0.attn.in_proj_weight", listed, "int8"),
        (" , ", "accepted with --format int8 only, as module names", "int8"),
        ("blocks.0.mlp.proj", "accepted with --format int8 only", "onnx"),
    ]
    for keep, needle, fmt in cases:
        argv = ["export", "--run", str(folder), "--format", fmt, "--keep-fp32", keep, "--quiet"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
        if "names no" in needle:
            assert listed in err, err
    assert not (folder / "model.int8.pt").exists() and not (folder / "model.onnx").exists()
