"""What ties an exported file to its run, shared by the ONNX and the int8 formats.

`fbdl-fast export --run RUN --format onnx|int8` writes either file into the run folder,
atomically, from the run's checkpoint (best, else last, or --checkpoint). Each file carries the
same provenance (`provenance`): the model's name, config, labels, tokenizer fingerprint, the
source checkpoint's name and SHA-256 and its calibration temperature; `check_source` refuses a
file made from another version of its checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fbdl_fast.checkpoint import (
    CALIBRATION_KEY,
)
from fbdl_fast.files import sha256_of

if TYPE_CHECKING:
    from fbdl_fast.runs import Run


FORMATS = ("onnx", "int8")
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.pt"


class ExportError(ValueError):
    """A run cannot be exported as asked; the message says why and what to do."""


def output_path(run_path: Path, fmt: str) -> Path:
    """Where `export --format fmt` writes in the run folder; ExportError for an unknown format."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not known; accepted: {', '.join(FORMATS)}")
    return run_path / (ONNX_FILE if fmt == "onnx" else INT8_FILE)


def provenance(run: Run) -> dict[str, Any]:
    """What ties an exported file to `run`, as model.int8.pt stores it and model.onnx's metadata
    (fbdl_fast.serving.onnx.metadata): the model's name, config, labels, tokenizer fingerprint,
    the source checkpoint's name and SHA-256, and its calibration temperature (train
    --calibrate; 1 without), so that the export's probabilities are calibrated as its source's."""
    from fbdl_fast.runs import tokenizer_fingerprint

    return {
        "model_name": run.meta.get("model"),
        "config": run.config.to_dict(),
        "label_map": {"labels": list(run.label_map.labels)},
        "tokenizer_fingerprint": tokenizer_fingerprint(run.tokenizer),
        "source_checkpoint": {"name": run.checkpoint.name, "sha256": sha256_of(run.checkpoint)},
        CALIBRATION_KEY: {"temperature": run.trainer.temperature},
    }


def check_source(folder: Path, path: Path, source: dict[str, Any], fmt: str) -> None:
    """RunError when the exported file `path` was made from another version of its source
    checkpoint ({"name", "sha256"}) than the one in the run `folder` now."""
    from fbdl_fast.runs import PROG, RunError

    current = folder / str(source.get("name"))
    if not current.is_file() or sha256_of(current) != source.get("sha256"):
        raise RunError(
            f"{path} was made from another {source.get('name')} than the one in {folder} "
            f"now; export it again: `{PROG} export --run {folder} --format {fmt}`"
        )
