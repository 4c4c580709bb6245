"""export's ONNX parity check refuses a file whose logits differ from torch's by NaN, not only
by more than the tolerance: a NaN difference compares false with every number."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fbdl_fast.cli import main
from fbdl_fast.serving import onnx as serving_onnx
from fbdl_fast.training.loading import load_run
from tiny_run import make_run


@pytest.mark.parametrize("where", ["every logit", "one logit"])
def test_export_refuses_nan_logits_from_the_onnx_file(
    tmp_path: Path,
    where: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The exported file's logits are NaN (all of them, or a single one among finite ones):
    both exporters are refused, export exits 2 in one line, and no model.onnx is written."""
    folder = make_run(tmp_path / "cnn")
    # Stand-ins for the exporters (slow, and not what is tested): any bytes will do, as the
    # check reads the file's logits through onnx_logits, replaced here too.
    monkeypatch.setattr(serving_onnx, "_onnx_bytes", lambda *a: b"onnx")

    model = load_run(folder).model.to("cpu").eval()

    def nan_logits(data: bytes, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with serving_onnx.reference_ops(), torch.no_grad():
            logits = model(ids, mask).float()  # torch's own: every other logit matches exactly
        if where == "every logit":
            return logits.fill_(float("nan"))
        logits[1, 2] = float("nan")
        return logits

    monkeypatch.setattr(serving_onnx, "onnx_logits", nan_logits)
    assert main(["export", "--run", str(folder), "--format", "onnx", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "could not be exported to ONNX" in err, err
    assert "dynamo: max |logit diff| nan: the logits on a padded" in err
    assert "torchscript: max |logit diff| nan" in err and "not finite" in err
    assert not (folder / "model.onnx").exists()
