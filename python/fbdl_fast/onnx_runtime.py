"""A run's `model.onnx` served by onnxruntime: `predict`/`evaluate --checkpoint onnx`.

`fbdl_fast.export.export_onnx` writes the file and, through `with_metadata`, stamps it with what
ties it to its run (ONNX metadata_props, strings; JSON where structured): the source checkpoint's
name and SHA-256, the model config, the label list, the tokenizer fingerprint, the calibration
temperature and (multi-label) the tuned thresholds, as `export_int8` stores them in
model.int8.pt. `onnx_run` reads the run folder's config, tokenizer and labels, opens the file
in an onnxruntime session (CPU provider, intra-op threads = torch.get_num_threads() at load, so
predict's --threads holds, inter-op 1), checks the stamp against the run (runs._check_unit, and
the source checkpoint's current SHA-256) and returns a Run whose Trainer holds an `OnnxModel`:
evaluate's and predict's code (tokenization, batching, temperature, output) is the same for
every checkpoint.

The torch weights are never loaded (only hashed): serving from ONNX needs neither torch's copy
of the model nor best.pt's optimizer state in memory. Kept apart from export.py, which writes
the serving formats; this module is what reads one at serving time, with onnxruntime alone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union, cast

import torch
from torch import nn

from fbdl_fast.checkpoint import CALIBRATION_KEY, CheckpointError, temperature_of
from fbdl_fast.export import ONNX_FILE, ExportError, check_source, provenance

if TYPE_CHECKING:
    from fbdl_fast.config import ModelConfig
    from fbdl_fast.data import LabelMap
    from fbdl_fast.runs import Run
    from fbdl_fast.tokenizer import Tokenizer

# metadata_props keys (prefixed: the exporters may add their own) -> the int8 file's state keys.
METADATA_PREFIX = "fbdl_fast."
METADATA_KEYS = (
    "model_name",
    "config",
    "label_map",
    "tokenizer_fingerprint",
    "source_checkpoint",
    CALIBRATION_KEY,
    "thresholds",
)


def metadata(run: Run) -> dict[str, str]:
    """The metadata_props export_onnx stamps on `run`'s model.onnx (key -> JSON text): the
    export's provenance and, multi-label, the tuned thresholds."""
    state = {**provenance(run), "thresholds": run.trainer.thresholds}
    return {METADATA_PREFIX + key: json.dumps(value) for key, value in state.items()}


def with_metadata(data: bytes, props: dict[str, str]) -> bytes:
    """The ONNX file `data` with `props` set in its metadata_props (other entries kept)."""
    import onnx

    model = onnx.load_from_string(data)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def session(model: Union[bytes, Path], threads: Optional[int] = None) -> Any:
    """An onnxruntime InferenceSession on the CPU provider for `model` (a file or its bytes);
    `threads`: intra-op threads (inter-op 1), else onnxruntime's default."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph-optimisation notes are not the user's
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxModel(nn.Module):
    """An onnxruntime session as a module with the models' call: forward(input_ids,
    attention_mask) -> logits (B, C) float32 on the CPU. No parameters; inference only."""

    def __init__(self, onnx_session: Any) -> None:
        super().__init__()
        self.session = onnx_session

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # The file's inputs are int64 (the loader's mask may be bool or int32).
        feed = {
            "input_ids": input_ids.to("cpu", torch.int64).numpy(),
            "attention_mask": attention_mask.to("cpu", torch.int64).numpy(),
        }
        return torch.from_numpy(self.session.run(["logits"], feed)[0])


class _NotTrained:
    """The optimizer of an OnnxModel's Trainer, which predicts and evaluates only. Not a torch
    Optimizer (there are no parameters to give one): building any of those imports
    torch._dynamo, measured at +150 MiB peak RSS and 1.3 s per predict process here."""

    def __getattr__(self, name: str) -> Any:
        raise TypeError(f"a {ONNX_FILE} model is served, not trained (optimizer.{name})")


def _export_hint(folder: Path) -> str:
    from fbdl_fast.runs import PROG

    return f"`{PROG} export --run {folder} --format onnx`"


def _run_files(folder: Path) -> tuple[dict[str, Any], ModelConfig, Tokenizer, LabelMap]:
    """config.json (meta, ModelConfig), tokenizer.json and label_map.json of a run folder,
    refused as load_run refuses them, without reading any checkpoint."""
    from fbdl_fast.data import LabelMap
    from fbdl_fast.runs import RUN_LABELS, RUN_TOKENIZER, read_run_config
    from fbdl_fast.tokenizer import Tokenizer

    meta, config = read_run_config(folder)
    return (
        meta,
        config,
        Tokenizer.from_file(folder / RUN_TOKENIZER),
        LabelMap.load(folder / RUN_LABELS),
    )


def _stamp(onnx_session: Any, path: Path, folder: Path) -> dict[str, Any]:
    """The metadata `metadata` wrote, read back as the int8 file's state keys."""
    props = onnx_session.get_modelmeta().custom_metadata_map
    missing = [k for k in METADATA_KEYS if METADATA_PREFIX + k not in props]
    if missing:
        raise CheckpointError(
            f"{path} does not say which checkpoint and tokenizer it was made from (no "
            f"{METADATA_PREFIX}{missing[0]} in its metadata: an older export); export it again: "
            f"{_export_hint(folder)}"
        )
    try:
        return {k: json.loads(props[METADATA_PREFIX + k]) for k in METADATA_KEYS}
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{path}: its {METADATA_PREFIX} metadata is damaged ({err}); export it again: "
            f"{_export_hint(folder)}"
        ) from None


def onnx_run(folder: Path, path: Optional[Path] = None) -> Run:
    """The run at `folder` with its model.onnx (or `path`) in onnxruntime in place of its torch
    model, on the CPU: what evaluate and predict use for --checkpoint onnx. ExportError without
    onnxruntime; RunError without the file or when it belongs to another run or to another
    version of its checkpoint; CheckpointError naming a file onnxruntime cannot load."""
    from fbdl_fast.runs import Run, RunError, _check_unit
    from fbdl_fast.train import Trainer

    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ExportError(
            f"--checkpoint onnx needs onnxruntime ({err}); pip install 'fbdl-fast[onnx]'"
        ) from None
    path = path or folder / ONNX_FILE
    meta, config, tokenizer, label_map = _run_files(folder)
    if not path.is_file():
        raise RunError(
            f"--checkpoint onnx: {path} does not exist; write it with {_export_hint(folder)}"
        )
    try:
        # At load, as the torch checkpoints' threads are: predict's --threads is set by then.
        onnx_session = session(path, threads=torch.get_num_threads())
    except Exception as err:  # onnxruntime's errors share no base class below Exception
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path} is truncated or corrupt: onnxruntime cannot load it ({reason}); export it "
            f"again: {_export_hint(folder)}"
        ) from None
    state = _stamp(onnx_session, path, folder)
    _check_unit(folder, path, state, config, tokenizer, label_map)
    check_source(folder, path, state["source_checkpoint"], "onnx")
    # No EMA: its copy of the model would copy the session, which cannot be copied.
    trainer = Trainer(
        OnnxModel(onnx_session),
        dataclasses.replace(config, ema_decay=None),
        device="cpu",
        label_map=label_map,
        progress=False,
        optimizer=cast(torch.optim.Optimizer, _NotTrained()),
    )
    trainer.temperature = temperature_of(state, path)
    trainer.thresholds = state["thresholds"]
    return Run(folder, meta, config, tokenizer, label_map, trainer, path)


__all__ = ["METADATA_KEYS", "OnnxModel", "metadata", "onnx_run", "session", "with_metadata"]
