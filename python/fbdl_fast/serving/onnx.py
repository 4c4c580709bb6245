"""ONNX: a run's model written as `model.onnx` (`fbdl-fast export --format onnx`) and served
by onnxruntime (`predict`/`evaluate --checkpoint onnx`).

Export: inputs `input_ids` and `attention_mask`, both int64 (B, L), the mask 1 on real tokens and 0
on padding (Hugging Face's convention); output `logits` (B, C). Batch and sequence axes are
dynamic (the sequence up to the run's max length). The fused ops are exported through their
PyTorch reference (FBDL_FAST_BACKEND=torch while exporting): the file holds plain ONNX operators
that any runtime runs. Two exporters are tried in turn: torch.export's (dynamo=True), then the
TorchScript one. Before anything is written, the file is run in onnxruntime on a padded batch of
another shape than the one it was traced with (a trace that froze a shape fails there) and its
logits must be within ONNX_TOLERANCE of torch's; otherwise the next exporter is tried, and
ExportError reports what each one did. The file written carries, in its metadata_props, what ties
it to the run (the source checkpoint's name and SHA-256, config, labels, tokenizer fingerprint,
calibration temperature, thresholds: metadata), which `read_onnx` checks before it serves the
file.

Measured with torch 2.15 (onnxscript 0.7, onnxruntime 1.32) on the tests' tiny runs: every model
exports with dynamo=True, max |logit diff| on the check batch: Transformer 7.5e-9, BERT 1.1e-8,
CNN 1.4e-6, LSTM 1.5e-7 with 1, 2 or 3 layers. The TorchScript exporter freezes the attention's
reshape to the traced shape, and fails on a 1-layer LSTM over packed sequences (an IndexError
inside it). The LSTM needs no packing here: under torch.export (torch.compiler.is_compiling() is
True) it takes its torch.compile path, each layer and direction on the padded batch, the
backward one on each post's tokens reversed by a gather, and models.lstm.scan_recurrence(), set
around the dynamo exporter, turns each direction's recurrence into a scan over torch.lstm_cell
(an ONNX Scan), so that the batch and sequence axes stay symbolic (also with torch 2.11, where
the tests pass the same way).

Serving: `export_onnx` writes the file and, through `with_metadata`, stamps it with what
ties it to its run (ONNX metadata_props, strings; JSON where structured): the source checkpoint's
name and SHA-256, the model config, the label list, the tokenizer fingerprint, the calibration
temperature and (multi-label) the tuned thresholds, as `export_int8` stores them in
model.int8.pt. `read_onnx` opens the file of a run folder (its config, tokenizer and labels
already read: runs.read_run_files) in an onnxruntime session (CPU provider, the intra-op threads
asked for, inter-op 1), checks the stamp against the run (runs.check_unit, and the source
checkpoint's current SHA-256) and returns an `OnnxModel` with the file's temperature and
thresholds; `load_run(..., checkpoint="onnx")` (fbdl_fast.training.loading) builds the Run
around it, so that predict's and evaluate's code (tokenization, batching, temperature, output)
is the same for every checkpoint.

The torch weights are never loaded (only hashed): serving from ONNX needs neither torch's copy
of the model nor best.pt's optimizer state in memory.

int8 (`export --format onnx-int8` -> model.int8.onnx, `--checkpoint onnx-int8`): the fp32 file,
exported and checked as above, through onnxruntime.quantization.quantize_dynamic with int8
weights per output channel (as export --format int8 has them), activations quantized per batch
on the fly. It quantizes every operator that holds a weight: the projections and the FFN
(MatMul), the attention's output projections and the head (Gemm) and the embedding tables
(Gather); the attention's own products (q.k, weights.v) stay fp32. The file is checked in
onnxruntime on the padded check batch (finite logits; its distance from torch's fp32 logits is
reported, not bounded: int8's error depends on the model) and carries, besides the same
metadata, fbdl_fast.quantization (QUANTIZATION); read_onnx refuses a model.int8.onnx without it
and a model.onnx with it. On the fine-tuned MiniLM of docs/results.md it is 2.2x cheaper than
the fp32 file at 1 thread, a quarter of its size, with the same test accuracy.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import torch
from torch import nn

from fbdl_fast.checkpoint import (
    CALIBRATION_KEY,
    CheckpointError,
    temperature_of,
)
from fbdl_fast.files import remove_stale_temps
from fbdl_fast.manifest import read_verified, write_recorded
from fbdl_fast.models.lstm import scan_recurrence
from fbdl_fast.serving.provenance import (
    FILES,
    ExportError,
    ExportSource,
    ServedModel,
    check_source,
    provenance,
    run_lock,
)

if TYPE_CHECKING:
    from fbdl_fast.runs import RunFiles

# The parity an exported file must reach against torch: max |logit diff| <= 1e-4.
ONNX_TOLERANCE = 1e-4
# What an int8 file's fbdl_fast.quantization says (read_onnx checks that it is there).
QUANTIZATION = {
    "tool": "onnxruntime.quantization.quantize_dynamic",
    "weights": "int8, symmetric, per output channel",
    "activations": "uint8, per batch, on the fly",
}
# The exporters tried in turn, as the stages name them.
EXPORTERS = {"dynamo": "torch.onnx.export, dynamo=True", "torchscript": "TorchScript exporter"}


# ====================
# ONNX
# ====================


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """FBDL_FAST_BACKEND=torch for the block (every fused op takes its PyTorch reference), then
    the environment and the dispatch settings as they were."""
    from fbdl_fast.ops import reference_backend

    with reference_backend():
        yield


def padded_batch(
    batch: int, length: int, vocab_size: int, pad_token_id: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) int64 (batch, length), right-padded: row 0 full, the others
    of random lengths 1..length, padding at pad_token_id. Seeded, global RNG untouched."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, length), generator=g)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()  # (B, L)
    return ids.masked_fill(mask == 0, pad_token_id), mask


def _onnx_bytes(
    model: nn.Module, example: tuple[torch.Tensor, ...], max_length: int, dynamo: bool
) -> bytes:
    """The ONNX file of `model` traced on `example`, with dynamic batch and sequence axes."""
    inputs, outputs = ["input_ids", "attention_mask"], ["logits"]
    if dynamo:
        from torch.export import Dim

        batch, sequence = Dim("batch"), Dim("sequence", max=max_length)
        axes = {0: batch, 1: sequence}
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            dynamic_shapes=(axes, axes),
            verbose=False,
            input_names=inputs,
            output_names=outputs,
        )
        assert program is not None
        return program.model_proto.SerializeToString()
    buffer = io.BytesIO()
    axes_ts = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        model,
        example,
        buffer,  # type: ignore[arg-type]  # the stub says a path; TorchScript writes to files too
        dynamo=False,
        dynamic_axes={"input_ids": axes_ts, "attention_mask": axes_ts, "logits": {0: "batch"}},
        input_names=inputs,
        output_names=outputs,
    )
    return buffer.getvalue()


def onnx_logits(onnx_model: bytes, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The logits onnxruntime computes with `onnx_model` (the file's bytes) on one batch."""

    return OnnxModel(session(onnx_model))(ids, mask)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the block: file descriptors 1 and 2 (C++ prints) go to a scratch file,
    sys.stdout/sys.stderr to a buffer, and logging is off (torch's exporters log graphs and
    warnings about their own internals). Everything as it was afterwards."""
    import logging
    import sys
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    logging_was = logging.root.manager.disable
    buffer = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            logging.disable(logging.CRITICAL)
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                yield
        finally:
            logging.disable(logging_was)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _reason(err: BaseException) -> str:
    """One line saying why an exporter failed: torch.export's exception summary when it gives
    one, else the error's first line."""
    lines = [line.strip() for line in _ANSI.sub("", str(err)).splitlines() if line.strip()]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1 :]
    text = lines[0] if lines else ""
    return f"{type(err).__name__}: {text[:240]}"


def export_onnx(
    run: ExportSource,
    path: Optional[Path] = None,
    say: Optional[Callable[[str], None]] = None,
    int8: bool = False,
) -> dict[str, Any]:
    """Write run's model as ONNX to `path` (default: the run's model.onnx, or model.int8.onnx
    with `int8`), atomically, after the onnxruntime check described in the module docstring,
    stamped with the run's metadata. Returns {"path", "exporter", "max_abs_diff", "bytes"} and,
    with `int8`, "int8_max_abs_diff" (the int8 file's logits against torch's fp32 ones on the
    check batch); ExportError when no exporter gives a file that passes. `say`, if given, is
    told each stage as it starts (tracing and exporting with an exporter, the parity check,
    quantizing, writing), as train_run's `say` is: an export can take a minute, most of it in
    the exporter."""
    fmt = "onnx-int8" if int8 else "onnx"
    try:
        import onnx  # noqa: F401  (the dynamo exporter's output type)
        import onnxruntime

        if int8:
            import onnxruntime.quantization  # noqa: F401
    except ImportError as err:
        raise ExportError(
            f"--format {fmt} needs onnx and onnxruntime ({err}); pip install 'fbdl-fast[onnx]'"
        ) from None
    with run_lock(run):
        path = path or run.path / FILES[fmt]
        return _export_onnx(run, path, say or (lambda message: None), int8)


def _export_onnx(
    run: ExportSource, path: Path, say: Callable[[str], None], int8: bool
) -> dict[str, Any]:
    remove_stale_temps(path)  # an export killed midway left its temporary file
    data, done, check, expected = _checked_fp32(run, say)
    props = metadata(run)
    if int8:
        data, done["int8_max_abs_diff"] = _quantized(data, check, expected, say)
        props[METADATA_PREFIX + QUANTIZATION_KEY] = json.dumps(QUANTIZATION)
    data = with_metadata(data, props)
    say(f"writing {path} ({len(data) / 1e6:.1f} MB) ...")
    write_recorded(path, data)  # atomically, its SHA-256 in the run's manifest
    return {"path": path, "bytes": len(data), **done}


def _checked_fp32(
    run: ExportSource, say: Callable[[str], None]
) -> tuple[bytes, dict[str, Any], tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The fp32 ONNX bytes of the first exporter whose file passes the onnxruntime check,
    {"exporter", "max_abs_diff"}, the check batch (ids, mask) and torch's logits on it."""
    config = run.config
    model = run.model.to("cpu").eval()
    length = max(2, min(8, config.max_seq_length))  # >= 2: torch.export specialises 0 and 1
    example = padded_batch(2, length, config.vocab_size, config.pad_token_id, seed=0)
    check_length = max(1, min(length + 3, config.max_seq_length))
    check = padded_batch(3, check_length, config.vocab_size, config.pad_token_id, seed=1)
    failures: list[str] = []
    with reference_ops(), torch.no_grad():
        expected = model(*check).float()
        for exporter, dynamo in (("dynamo", True), ("torchscript", False)):
            if failures:  # the previous exporter's, before the next one is tried
                say(f"not exported: {failures[-1]}")
            say(f"tracing and exporting the model ({EXPORTERS[exporter]}) ...")
            try:
                with warnings.catch_warnings(), _quiet():
                    # The exporters warn about their own internals (deprecations, constant
                    # folding) and print graphs when they fail; none of it is for the user.
                    warnings.simplefilter("ignore")
                    # A copy each time: a failed torch.export can leave fake tensors behind.
                    with scan_recurrence() if dynamo else contextlib.nullcontext():
                        data = _onnx_bytes(
                            copy.deepcopy(model), example, config.max_seq_length, dynamo
                        )
                say(
                    f"checking onnxruntime's logits against torch's on {check[0].shape[0]} "
                    f"padded posts of up to {check[0].shape[1]} tokens ..."
                )
                diff = (onnx_logits(data, *check) - expected).abs().max().item()
            except Exception as err:  # each exporter fails in its own way; the next is tried
                failures.append(f"{exporter}: {_reason(err)}")
                continue
            if not diff <= ONNX_TOLERANCE:  # also NaN
                batch = f"a padded {tuple(check[0].shape)} batch"
                failures.append(
                    f"{exporter}: max |logit diff| {diff:.3g} against torch on {batch}, above "
                    f"{ONNX_TOLERANCE:g}"
                    if math.isfinite(diff)
                    else f"{exporter}: max |logit diff| {diff:g}: the logits on {batch} are "
                    "not finite, which no tolerance accepts"
                )
                continue
            return data, {"exporter": exporter, "max_abs_diff": diff}, check, expected
    raise ExportError(
        f"{run.meta.get('model', type(model).__name__)} in {run.path} could not be exported to "
        f"ONNX with torch {torch.__version__}: " + "; ".join(failures)
    )


def without_initializer_value_info(model: Any) -> Any:
    """`model` (an onnx.ModelProto, changed in place and returned) with no value_info entry that
    names an initializer, in its graph and every subgraph.

    The dynamo exporter records each weight's shape in value_info as well. onnxruntime 1.30's
    quantize_dynamic (the GPU machine's) turns a Gemm with transB into a MatMul by transposing
    the weight in place under the same name, so that entry then contradicts the initializer and
    its shape inference refuses the model ("Inferred shape and existing shape differ"); 1.32
    writes a new initializer instead. An initializer's dims already give its shape, so the
    entries add nothing."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        weights = {tensor.name for tensor in graph.initializer}
        kept = [info for info in graph.value_info if info.name not in weights]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        for node in graph.node:
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else attribute.graphs)
    return model


def _quantized(
    data: bytes,
    check: tuple[torch.Tensor, torch.Tensor],
    expected: torch.Tensor,
    say: Callable[[str], None],
) -> tuple[bytes, float]:
    """The fp32 ONNX file `data` with its weights in int8 (QUANTIZATION) and the max |logit
    diff| of the result against torch's fp32 `expected` on the `check` batch; ExportError when
    quantizing fails or the int8 logits are not finite."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    say("quantizing the weights to int8 (onnxruntime.quantization.quantize_dynamic) ...")
    try:
        with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings(), _quiet():
            # It logs advice about its own pre-processing, which is not for the user.
            warnings.simplefilter("ignore")
            out = Path(scratch) / "int8.onnx"  # it writes a file, not bytes
            quantize_dynamic(
                without_initializer_value_info(onnx.load_from_string(data)),
                out,
                per_channel=True,
                weight_type=QuantType.QInt8,
            )
            data = out.read_bytes()
        say(f"checking the int8 file in onnxruntime on {check[0].shape[0]} padded posts ...")
        diff = (onnx_logits(data, *check) - expected).abs().max().item()
    except Exception as err:  # onnxruntime's errors share no base class below Exception
        raise ExportError(f"--format onnx-int8: quantizing failed ({_reason(err)})") from None
    if not math.isfinite(diff):
        raise ExportError(
            f"--format onnx-int8: the int8 file's logits on a padded {tuple(check[0].shape)} "
            "batch are not finite; serve the fp32 file (--format onnx) instead"
        )
    return data, diff


# ====================
# Serving
# ====================

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
QUANTIZATION_KEY = "quantization"  # in int8 files only (QUANTIZATION)


def metadata(run: ExportSource) -> dict[str, str]:
    """The metadata_props export_onnx stamps on `run`'s model.onnx (key -> JSON text): the
    export's provenance, the tuned thresholds of a multi-label run included."""
    return {METADATA_PREFIX + key: json.dumps(value) for key, value in provenance(run).items()}


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


# onnxruntime's graph rewrites left out of every session. SkipLayerNormFusion turns each residual
# Add + LayerNormalization into one SkipLayerNormalization, whose CPU kernel (onnxruntime 1.32)
# took 9-22% of a MiniLM's time at 1 thread where the Add and LayerNormalization it replaces
# took 3-8%: without it the fp32 file ran 8% and the int8 file 13% cheaper on the same batches
# (docs/results.md), the fp32 logits within 6e-6 of the fused graph's.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def session(
    model: Union[bytes, Path], threads: Optional[int] = None, optimized: Optional[Path] = None
) -> Any:
    """An onnxruntime InferenceSession on the CPU provider for `model` (a file or its bytes),
    its graph optimised as onnxruntime does by default less DISABLED_OPTIMIZERS; `threads`:
    intra-op threads (inter-op 1), else onnxruntime's default; `optimized`: where to write the
    graph onnxruntime runs (to see which operators it fused)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph-optimisation notes are not the user's
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    source = str(model) if isinstance(model, Path) else model
    return onnxruntime.InferenceSession(
        source,
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )


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


def _export_hint(folder: Path, fmt: str = "onnx") -> str:
    from fbdl_fast.runs import PROG

    return f"`{PROG} export --run {folder} --format {fmt}`"


def _stamp(onnx_session: Any, path: Path, folder: Path, fmt: str) -> dict[str, Any]:
    """The metadata `metadata` wrote, read back as the int8 file's state keys; CheckpointError
    when it is missing or damaged, or when the file's quantization is not `fmt`'s (an fp32 file
    renamed model.int8.onnx would serve fp32 under the int8 name, and the reverse)."""
    props = onnx_session.get_modelmeta().custom_metadata_map
    again = f"export it again: {_export_hint(folder, fmt)}"
    missing = [k for k in METADATA_KEYS if METADATA_PREFIX + k not in props]
    if missing:
        raise CheckpointError(
            f"{path} does not say which checkpoint and tokenizer it was made from (no "
            f"{METADATA_PREFIX}{missing[0]} in its metadata: an older export); {again}"
        )
    if (METADATA_PREFIX + QUANTIZATION_KEY in props) != (fmt == "onnx-int8"):
        held = "int8" if fmt == "onnx" else "fp32"
        raise CheckpointError(
            f"{path} holds {held} weights, not what --checkpoint {fmt} serves (no "
            f"{METADATA_PREFIX}{QUANTIZATION_KEY} as {FILES[fmt]} has it); {again}"
        )
    try:
        return {k: json.loads(props[METADATA_PREFIX + k]) for k in METADATA_KEYS}
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{path}: its {METADATA_PREFIX} metadata is damaged ({err}); {again}"
        ) from None


def read_onnx(
    run: RunFiles,
    path: Optional[Path] = None,
    threads: Optional[int] = None,
    fmt: str = "onnx",
) -> ServedModel:
    """The run folder `run`'s model.onnx (fmt "onnx") or model.int8.onnx ("onnx-int8"), or
    `path`, in an onnxruntime session on the CPU (`threads` intra-op threads, default
    torch.get_num_threads(); inter-op 1), as an OnnxModel with the temperature and thresholds
    its metadata carries. ExportError without onnxruntime; RunError without the file or when it
    belongs to another run or to another version of its checkpoint; CheckpointError naming a
    file onnxruntime cannot load or one whose weights are not `fmt`'s."""
    from fbdl_fast.runs import RunError, check_unit

    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ExportError(
            f"--checkpoint {fmt} needs onnxruntime ({err}); pip install 'fbdl-fast[onnx]'"
        ) from None
    folder = run.path
    path = path or folder / FILES[fmt]
    if not path.is_file():
        raise RunError(
            f"--checkpoint {fmt}: {path} does not exist; write it with {_export_hint(folder, fmt)}"
        )
    data, _ = read_verified(path)  # checked against the run's manifest, then served
    try:
        onnx_session = session(
            data, threads=torch.get_num_threads() if threads is None else threads
        )
    except Exception as err:  # onnxruntime's errors share no base class below Exception
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path} is truncated or corrupt: onnxruntime cannot load it ({reason}); export it "
            f"again: {_export_hint(folder, fmt)}"
        ) from None
    state = _stamp(onnx_session, path, folder, fmt)
    check_unit(folder, path, state, run.config, run.tokenizer, run.label_map)
    check_source(folder, path, state["source_checkpoint"], fmt)
    return ServedModel(
        OnnxModel(onnx_session), path, temperature_of(state, path), state["thresholds"]
    )
