"""What ties an exported file to its run, shared by the ONNX and the int8 formats.

`fbdl-fast export --run RUN --format onnx|int8|onnx-int8` writes one file into the run folder,
atomically, from the run's checkpoint (best, else last, or --checkpoint). Each file carries the
same provenance (`provenance`): the model's name, config, labels, tokenizer fingerprint, the
source checkpoint's name and SHA-256, its calibration temperature and (multi-label) its tuned
thresholds; `check_source` refuses a file made from another version of its checkpoint.

An export reads a loaded run (`ExportSource`: fbdl_fast.training.loading.Run is one); reading a
file back gives a `ServedModel` (the model and what the file carries), around which
fbdl_fast.training.loading builds the Run that predicts. Neither side needs the Trainer.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol

from fbdl_fast.checkpoint import CALIBRATION_KEY
from fbdl_fast.files import sha256_of

if TYPE_CHECKING:
    from torch import nn

    from fbdl_fast.config import ModelConfig
    from fbdl_fast.data import LabelMap
    from fbdl_fast.tokenizer import Tokenizer


FORMATS = ("onnx", "int8", "onnx-int8")
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.pt"
ONNX_INT8_FILE = "model.int8.onnx"  # the ONNX file with its weights in int8 (onnxruntime's)
FILES = {"onnx": ONNX_FILE, "int8": INT8_FILE, "onnx-int8": ONNX_INT8_FILE}


class ExportError(ValueError):
    """A run cannot be exported as asked; the message says why and what to do."""


class ExportSource(Protocol):
    """What an export reads from a loaded run: its folder's files, the checkpoint the weights
    came from, the model and what predictions need besides it."""

    path: Path
    meta: dict[str, Any]
    config: ModelConfig
    tokenizer: Tokenizer
    label_map: LabelMap
    checkpoint: Path
    # SHA-256 of the bytes the weights were loaded from (None: not known, hashed at the stamp)
    checkpoint_sha256: Optional[str]

    @property
    def model(self) -> nn.Module: ...

    @property
    def temperature(self) -> float: ...

    @property
    def thresholds(self) -> Optional[list[float]]: ...


@dataclass(frozen=True)
class ServedModel:
    """An exported file read back for serving: the model (forward(input_ids, attention_mask) ->
    logits, on the CPU) and what the file carries besides its weights."""

    model: nn.Module
    path: Path  # the file
    temperature: float  # the source checkpoint's calibration (1: none)
    thresholds: Optional[list[float]]  # multi-label: the tuned per-class thresholds, else None


def output_path(run_path: Path, fmt: str) -> Path:
    """Where `export --format fmt` writes in the run folder; ExportError for an unknown format."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not known; accepted: {', '.join(FORMATS)}")
    return run_path / FILES[fmt]


def provenance(run: ExportSource) -> dict[str, Any]:
    """What ties an exported file to `run`, as model.int8.pt stores it and model.onnx's metadata
    (fbdl_fast.serving.onnx.metadata): the model's name, config, labels, tokenizer fingerprint,
    the source checkpoint's name and SHA-256, its calibration temperature (train --calibrate; 1
    without) and its tuned thresholds (multi-label train --tune-thresholds; None without), so
    that the export's probabilities and label sets are its source's."""
    from fbdl_fast.runs import tokenizer_fingerprint

    return {
        "model_name": run.meta.get("model"),
        "config": run.config.to_dict(),
        "label_map": {"labels": list(run.label_map.labels)},
        "tokenizer_fingerprint": tokenizer_fingerprint(run.tokenizer),
        "source_checkpoint": {"name": run.checkpoint.name, "sha256": loaded_sha256(run)},
        CALIBRATION_KEY: {"temperature": run.temperature},
        "thresholds": run.thresholds,
    }


def run_lock(run: ExportSource) -> AbstractContextManager[None]:
    """The lock of `run`'s folder (fbdl_fast.runs.locked), which an export holds while it
    writes: a `train` of the same folder waits for it or is refused, and the reverse. Held
    already by this process (`fbdl-fast export` locks before loading): the export goes on."""
    from fbdl_fast.runs import locked, resolve_output

    return locked(resolve_output(Path(run.path)))


def loaded_sha256(run: ExportSource) -> str:
    """The SHA-256 of the checkpoint bytes `run`'s weights were loaded from, which an export
    stamps; ExportError when the checkpoint file no longer holds those bytes (replaced, say by
    a `train --overwrite` of the run, between the load and the stamp): the export would tie the
    old weights to the new file."""
    loaded = getattr(run, "checkpoint_sha256", None)
    current = sha256_of(run.checkpoint)
    if loaded is not None and current != loaded:
        raise ExportError(
            f"{run.checkpoint} changed while it was exported (SHA-256 {loaded[:12]}... loaded, "
            f"{current[:12]}... now): the run changed under the export; export it again"
        )
    return current


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
