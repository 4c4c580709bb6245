"""Serving formats of a trained run: ONNX (`model.onnx`) and dynamic int8 (`model.int8.pt`).

`fbdl-fast export --run RUN --format onnx|int8` writes either file into the run folder,
atomically, from the run's checkpoint (best, else last, or --checkpoint).

ONNX: inputs `input_ids` and `attention_mask`, both int64 (B, L), the mask 1 on real tokens and 0
on padding (Hugging Face's convention); output `logits` (B, C). Batch and sequence axes are
dynamic (the sequence up to the run's max length). The fused ops are exported through their
PyTorch reference (FBDL_FAST_BACKEND=torch while exporting): the file holds plain ONNX operators
that any runtime runs. Two exporters are tried in turn: torch.export's (dynamo=True), then the
TorchScript one. Before anything is written, the file is run in onnxruntime on a padded batch of
another shape than the one it was traced with (a trace that froze a shape fails there) and its
logits must be within ONNX_TOLERANCE of torch's; otherwise the next exporter is tried, and
ExportError reports what each one did. The file written carries, in its metadata_props, what ties
it to the run (the source checkpoint's name and SHA-256, config, labels, tokenizer fingerprint,
calibration temperature: fbdl_fast.onnx_runtime.metadata), which `predict --checkpoint onnx`
(fbdl_fast.onnx_runtime.onnx_run) checks before it serves the file.

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

int8: `torch.ao.quantization.quantize_dynamic` turns every nn.Linear and nn.LSTM into its dynamic
int8 form (CPU only): weights int8 per output channel (per_channel_dynamic_qconfig: one symmetric
scale per row of each weight matrix, the LSTM's gate matrices included; every torch CPU engine
runs them), activations quantized per batch on the fly. Per channel rather than torch's default
per tensor: on the Debian task's MiniLM it cost 1.06 points of macro-F1 instead of 1.34, at 1-3%
less speed (README, "Serving on a CPU"). `--keep-fp32 NAME[,NAME...]` (`kept_fp32`) leaves
named layers in fp32: module names as in model.named_modules(), exact or a prefix ending at a dot
("blocks.0" keeps every quantizable layer of the first block); a name that covers no Linear or
LSTM is refused with a few valid ones. On that MiniLM, the first block's FFN output projection
(blocks.0.mlp.proj) is the layer whose int8 weights cost most (benches/int8_sensitivity.py).
Not quantized:
the embeddings, the attention's input projection (a raw parameter of nn.MultiheadAttention) and
its output projection (a NonDynamicallyQuantizableLinear, left out by torch on purpose), and the
CNN's convolutions: quantize_dynamic's default mapping has no Conv1d (a dynamic int8 Conv1d exists
in torch.ao.nn.quantized.dynamic but only through an explicit mapping, which this module does not
use). The file is a checkpoint (fbdl_fast.checkpoint, read with weights_only): the int8 weights as
plain tensors (int8 values, per-channel scales, zero points and axis; files written with weights
per tensor, a scale and a zero point, still load) and the other parameters in fp32, with the config,
label map, tokenizer fingerprint, the SHA-256 of the checkpoint it came from, the int8 layers
(quantized_modules) and the layers kept in fp32 (kept_fp32; files without it: none). `load_int8`
rebuilds the quantized model from it exactly; `predict --checkpoint int8` uses it. A CPU without
an int8 engine (torch.backends.quantized.supported_engines) is refused with ExportError.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from fbdl_fast.checkpoint import (
    CALIBRATION_KEY,
    CheckpointError,
    load_checkpoint,
    require_keys,
    save_checkpoint,
    temperature_of,
)
from fbdl_fast.files import open_atomic, sha256_of
from fbdl_fast.models.lstm import scan_recurrence

if TYPE_CHECKING:
    from fbdl_fast.runs import Run

FORMATS = ("onnx", "int8")
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.pt"
# The parity an exported file must reach against torch (issue 15: max |logit diff| <= 1e-4).
ONNX_TOLERANCE = 1e-4
INT8_FORMAT = "int8-dynamic"
# model.int8.pt's list of the layers export --keep-fp32 left in fp32.
KEPT_KEY = "kept_fp32"
# Engines that run quantized Linear/LSTM kernels on a CPU ("none" is not one).
INT8_ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")


class ExportError(ValueError):
    """A run cannot be exported as asked; the message says why and what to do."""


def output_path(run_path: Path, fmt: str) -> Path:
    """Where `export --format fmt` writes in the run folder; ExportError for an unknown format."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not known; accepted: {', '.join(FORMATS)}")
    return run_path / (ONNX_FILE if fmt == "onnx" else INT8_FILE)


# ====================
# ONNX
# ====================


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """FBDL_FAST_BACKEND=torch for the block (every fused op takes its PyTorch reference), then
    the environment and the dispatch settings as they were."""
    from fbdl_fast.ops import _dispatch

    before = os.environ.get(_dispatch.ENV_VAR)
    os.environ[_dispatch.ENV_VAR] = "torch"
    _dispatch.refresh()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_dispatch.ENV_VAR, None)
        else:
            os.environ[_dispatch.ENV_VAR] = before
        _dispatch.refresh()


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
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["logits"]}
    if dynamo:
        from torch.export import Dim

        batch, sequence = Dim("batch"), Dim("sequence", max=max_length)
        axes = {0: batch, 1: sequence}
        program = torch.onnx.export(
            model, example, dynamo=True, dynamic_shapes=(axes, axes), verbose=False, **names
        )
        assert program is not None
        return program.model_proto.SerializeToString()
    buffer = io.BytesIO()
    axes_ts = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        model,
        example,
        buffer,
        dynamo=False,
        dynamic_axes={"input_ids": axes_ts, "attention_mask": axes_ts, "logits": {0: "batch"}},
        **names,
    )
    return buffer.getvalue()


def onnx_logits(onnx_model: bytes, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The logits onnxruntime computes with `onnx_model` (the file's bytes) on one batch."""
    from fbdl_fast.onnx_runtime import OnnxModel, session

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


def export_onnx(run: Run, path: Optional[Path] = None) -> dict[str, Any]:
    """Write run's model as ONNX to `path` (default: the run's model.onnx), atomically, after the
    onnxruntime check described in the module docstring, stamped with the run's metadata.
    Returns {"path", "exporter", "max_abs_diff", "bytes"}; ExportError when no exporter gives a
    file that passes."""
    from fbdl_fast.onnx_runtime import metadata, with_metadata

    try:
        import onnx  # noqa: F401  (the dynamo exporter's output type)
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ExportError(
            f"--format onnx needs onnx and onnxruntime ({err}); pip install 'fbdl-fast[onnx]'"
        ) from None
    path = path or run.path / ONNX_FILE
    config = run.config
    model = run.trainer.model.to("cpu").eval()
    length = max(2, min(8, config.max_seq_length))  # >= 2: torch.export specialises 0 and 1
    example = padded_batch(2, length, config.vocab_size, config.pad_token_id, seed=0)
    check_length = max(1, min(length + 3, config.max_seq_length))
    check = padded_batch(3, check_length, config.vocab_size, config.pad_token_id, seed=1)
    failures = []
    with reference_ops(), torch.no_grad():
        expected = model(*check).float()
        for exporter, dynamo in (("dynamo", True), ("torchscript", False)):
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
                diff = (onnx_logits(data, *check) - expected).abs().max().item()
            except Exception as err:  # each exporter fails in its own way; the next is tried
                failures.append(f"{exporter}: {_reason(err)}")
                continue
            if not diff <= ONNX_TOLERANCE:  # also NaN
                failures.append(
                    f"{exporter}: max |logit diff| {diff:.3g} against torch on a padded "
                    f"{tuple(check[0].shape)} batch, above {ONNX_TOLERANCE:g}"
                )
                continue
            data = with_metadata(data, metadata(run))
            with open_atomic(path, "wb") as f:
                f.write(data)
            return {"path": path, "exporter": exporter, "max_abs_diff": diff, "bytes": len(data)}
    raise ExportError(
        f"{run.meta.get('model', type(model).__name__)} in {run.path} could not be exported to "
        f"ONNX with torch {torch.__version__}: " + "; ".join(failures)
    )


# ====================
# int8
# ====================


def supported_engines() -> list[str]:
    """torch's quantized engines on this machine ("none" alone: no int8 kernels)."""
    return list(torch.backends.quantized.supported_engines)


def int8_engine_problem(engines: Optional[list[str]] = None) -> Optional[str]:
    """None when this CPU has an int8 engine for quantized Linear/LSTM (`supported_engines()`,
    or `engines`), else the reason, for ExportError's message."""
    engines = supported_engines() if engines is None else list(engines)
    if any(engine in INT8_ENGINES for engine in engines):
        return None
    return (
        f"this CPU has no int8 engine (torch.backends.quantized.supported_engines = {engines}; "
        f"int8 needs one of {', '.join(INT8_ENGINES)}); export --format onnx, or predict in fp32"
    )


def _check_engine() -> None:
    problem = int8_engine_problem()
    if problem is not None:
        raise ExportError(f"--format int8: {problem}")


def quantizable(model: nn.Module) -> list[str]:
    """The names (as in model.named_modules()) of the layers dynamic int8 quantizes: every module
    whose type is exactly nn.Linear or nn.LSTM. Subclasses are left out on purpose:
    nn.MultiheadAttention's out_proj is a NonDynamicallyQuantizableLinear, and quantizing it
    breaks the attention (torch's type-keyed spec skips it the same way)."""
    return [name for name, m in model.named_modules() if type(m) in (nn.Linear, nn.LSTM)]


def kept_fp32(model: nn.Module, names: Sequence[str]) -> list[str]:
    """The quantizable layers of `model` that `names` keep in fp32 (export --keep-fp32), in
    model order. Each name is a module name, exact or a prefix ending at a dot boundary
    ("blocks.0" keeps every Linear of the first block, "blocks.0.mlp.proj" that one layer; not
    "blocks.0.ml"). ExportError for a name that covers no quantizable layer."""
    layers = quantizable(model)
    kept: set[str] = set()
    for name in names:
        found = [layer for layer in layers if layer == name or layer.startswith(name + ".")]
        if not found:
            shown = ", ".join(layers[:6]) + (
                f", ... ({len(layers)} in all)" if len(layers) > 6 else ""
            )
            raise ExportError(
                f"--keep-fp32 {name!r} names no Linear or LSTM layer of this model (a module "
                f"name, exact or a prefix ending at a dot); quantizable: {shown or 'none'}"
            )
        kept.update(found)
    return [layer for layer in layers if layer in kept]


def _quantize_dynamic(model: nn.Module, keep_fp32: Sequence[str] = ()) -> nn.Module:
    """A copy of `model` with its nn.Linear and nn.LSTM layers (`quantizable`) in dynamic int8,
    except the layers `keep_fp32` names (`kept_fp32`), weights per output channel (torch's
    per_channel_dynamic_qconfig: symmetric, one scale per row of each weight matrix, axis 0).
    LSTM.from_float takes that qconfig too: each gate matrix (weight_ih/weight_hh of every layer
    and direction) gets per-row scales. The spec is keyed by module name, so that single layers
    can stay fp32; with nothing kept it quantizes what the type-keyed spec did."""
    kept = set(kept_fp32(model, keep_fp32))
    with warnings.catch_warnings():
        # torch.ao.quantization says it is deprecated in favour of torchao; quantize_dynamic is
        # still torch's own dynamic int8 path and the one this format is defined by.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        spec = {n: per_channel_dynamic_qconfig for n in quantizable(model) if n not in kept}
        return quantize_dynamic(copy.deepcopy(model).eval(), spec, torch.qint8)


def quantize_int8(model: nn.Module, keep_fp32: Sequence[str] = ()) -> nn.Module:
    """`model` (fp32, unchanged) as a new dynamic int8 model for CPU inference, the layers
    `keep_fp32` names (see `kept_fp32`) left in fp32."""
    _check_engine()
    return _quantize_dynamic(model.to("cpu"), keep_fp32)


def _quantized(
    module: nn.Module,
) -> Optional[dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]]]:
    """{weight name: (int8 weight, bias)} of a dynamic int8 Linear or LSTM, else None."""
    import torch.ao.nn.quantized.dynamic as nnqd

    if isinstance(module, nnqd.Linear):
        return {"weight": (module.weight(), module.bias())}
    if isinstance(module, nnqd.LSTM):
        found = module._weight_bias()
        return {
            name: (weight, found["bias"][name.replace("weight", "bias")])
            for name, weight in found["weight"].items()
        }
    return None


def int8_state(qmodel: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a quantize_int8 model as plain tensors (weights_only-loadable): per int8
    weight NAME.int8 (values) and, weights per channel, NAME.scales (float64, one per channel),
    NAME.zero_points (int64) and NAME.axis (int64), or, per tensor, NAME.scale and
    NAME.zero_point; NAME's bias; every other parameter and buffer in fp32 under its own name."""
    state: dict[str, torch.Tensor] = {}
    inside: set[str] = set()
    for prefix, module in qmodel.named_modules():
        weights = _quantized(module)
        if weights is None:
            continue
        inside.add(prefix)
        for name, (weight, bias) in weights.items():
            key = f"{prefix}.{name}"
            state[key + ".int8"] = weight.int_repr()
            state.update(_qparams(key, weight))
            if bias is not None:
                state[f"{prefix}.{name.replace('weight', 'bias')}"] = bias.detach().clone()
    for name, tensor in qmodel.state_dict().items():
        if isinstance(tensor, torch.Tensor) and not any(name.startswith(p + ".") for p in inside):
            state[name] = tensor.detach().clone()
    return state


def _qparams(key: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """The quantization parameters of the int8 weight `key` as plain tensors (see int8_state)."""
    scheme = weight.qscheme()
    if scheme in (torch.per_channel_affine, torch.per_channel_symmetric):
        return {
            key + ".scales": weight.q_per_channel_scales().to(torch.float64).clone(),
            key + ".zero_points": weight.q_per_channel_zero_points().to(torch.int64).clone(),
            key + ".axis": torch.tensor(weight.q_per_channel_axis(), dtype=torch.int64),
        }
    if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return {
            key + ".scale": torch.tensor(weight.q_scale(), dtype=torch.float64),
            key + ".zero_point": torch.tensor(weight.q_zero_point(), dtype=torch.int64),
        }
    raise ExportError(f"{key}: int8 weights per channel or per tensor expected, got {scheme}")


def _qweight(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """The int8 weight `key` of an int8_state: per channel (NAME.scales) or, as files written
    before per-channel weights have it, per tensor (NAME.scale)."""
    values = state[key + ".int8"]
    if key + ".scales" in state:
        return torch._make_per_channel_quantized_tensor(
            values,
            state[key + ".scales"].to(torch.float64),
            state[key + ".zero_points"].to(torch.int64),
            int(state[key + ".axis"]),
        )
    return torch._make_per_tensor_quantized_tensor(
        values, float(state[key + ".scale"]), int(state[key + ".zero_point"])
    )


def model_from_int8_state(
    fp32: nn.Module, state: dict[str, torch.Tensor], keep_fp32: Sequence[str] = ()
) -> nn.Module:
    """The dynamic int8 model `int8_state` described, built on `fp32` (a model of the same
    config, whose own weights are replaced) with the layers `keep_fp32` names in fp32, as it
    was quantized: exactly the quantized weights that were saved."""
    import torch.ao.nn.quantized.dynamic as nnqd

    qmodel = _quantize_dynamic(fp32, keep_fp32)
    modules = [(p, m) for p, m in qmodel.named_modules() if isinstance(m, (nnqd.Linear, nnqd.LSTM))]
    inside = tuple(prefix + "." for prefix, _ in modules)
    current = qmodel.state_dict()
    plain = {
        n for n, v in current.items() if isinstance(v, torch.Tensor) and not n.startswith(inside)
    }
    missing = sorted(plain - set(state))
    if missing:
        raise KeyError(f"no weights for {', '.join(missing[:5])}")
    # The quantized modules' own entries (packed weights, scale) are loaded as they are and
    # replaced below: their state_dict loading requires them.
    current.update({k: state[k] for k in plain})  # keeps its _metadata (module versions)
    qmodel.load_state_dict(current)
    for prefix, module in modules:
        if isinstance(module, nnqd.Linear):
            bias = state.get(f"{prefix}.bias")
            module.set_weight_bias(_qweight(state, f"{prefix}.weight"), bias)
        else:
            _set_lstm_weights(module, prefix, state)
    return qmodel.eval()


def _set_lstm_weights(module: nn.Module, prefix: str, state: dict[str, torch.Tensor]) -> None:
    """Rebuild a dynamic int8 LSTM's packed cells from saved int8 weights, layer by layer and
    direction by direction, as torch's LSTM.from_float packs them."""
    import torch.ao.nn.quantized.dynamic as nnqd

    cells = []
    directions = 2 if module.bidirectional else 1
    for layer in range(module.num_layers):
        for direction in range(directions):
            suffix = f"_l{layer}{'_reverse' if direction else ''}"
            packed, biases = [], []
            for kind in ("ih", "hh"):
                bias = state[f"{prefix}.bias_{kind}{suffix}"]
                weight = _qweight(state, f"{prefix}.weight_{kind}{suffix}")
                packed.append(torch.ops.quantized.linear_prepack(weight, bias))
                biases.append(bias)
            params = torch.ops.quantized.make_quantized_cell_params_dynamic(
                packed[0], packed[1], biases[0], biases[1], True
            )
            cells.append(nnqd.modules.rnn.PackedParameter(params))
    module._all_weight_values = nn.ModuleList(cells)


def export_int8(
    run: Run, path: Optional[Path] = None, keep_fp32: Sequence[str] = ()
) -> dict[str, Any]:
    """Write the run's model in dynamic int8 to `path` (default: the run's model.int8.pt),
    atomically, the layers `keep_fp32` names (see `kept_fp32`) left in fp32. Returns {"path",
    "bytes", "quantized": [module names], "kept_fp32": [module names], "fp32_bytes": the fp32
    weights' size in memory}."""
    _check_engine()
    path = path or run.path / INT8_FILE
    kept = kept_fp32(run.trainer.model, keep_fp32)  # a bad name: refused before any work
    qmodel = quantize_int8(run.trainer.model, kept)
    quantized = _quantized_names(qmodel)
    state = {
        "format": INT8_FORMAT,
        "model": int8_state(qmodel),
        "quantized_modules": quantized,
        # the layers left in fp32 (files without the key: none), so that load_int8 rebuilds
        # this model and no other
        KEPT_KEY: kept,
        **provenance(run),
    }
    save_checkpoint(state, path)
    return {
        "path": path,
        "bytes": path.stat().st_size,
        "quantized": quantized,
        "kept_fp32": kept,
        "fp32_bytes": sum(
            t.numel() * t.element_size() for t in run.trainer.model.state_dict().values()
        ),
    }


def _quantized_names(qmodel: nn.Module) -> list[str]:
    return [name for name, m in qmodel.named_modules() if _quantized(m) is not None]


def provenance(run: Run) -> dict[str, Any]:
    """What ties an exported file to `run`, as model.int8.pt stores it and model.onnx's metadata
    (fbdl_fast.onnx_runtime.metadata): the model's name, config, labels, tokenizer fingerprint,
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


def load_int8(run: Run, path: Optional[Path] = None) -> nn.Module:
    """The dynamic int8 model `export_int8` wrote for `run` (loaded from its source checkpoint),
    checked against the run: RunError/CheckpointError naming the file when it belongs to
    another run or to another version of the checkpoint; ExportError without an int8 engine."""
    return _load_int8(run, path)[0]


def _load_int8(run: Run, path: Optional[Path] = None) -> tuple[nn.Module, float]:
    """load_int8's model and the calibration temperature the file carries (1 without one)."""
    from fbdl_fast.models import architecture, create_model
    from fbdl_fast.runs import PROG, RunError, _check_unit

    _check_engine()
    path = path or run.path / INT8_FILE
    if not path.is_file():
        raise RunError(
            f"--checkpoint int8: {path} does not exist; write it with `{PROG} export --run "
            f"{run.path} --format int8`"
        )
    state = load_checkpoint(path, map_location="cpu")
    require_keys(state, ("format", "model", "config", "source_checkpoint"), path)
    if state["format"] != INT8_FORMAT:
        raise CheckpointError(f"{path} holds format {state['format']!r}, not {INT8_FORMAT!r}")
    _check_unit(run.path, path, state, run.config, run.tokenizer, run.label_map)
    check_source(run.path, path, state["source_checkpoint"], "int8")
    fp32 = create_model(architecture(run.meta["model"]), run.config)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = model_from_int8_state(fp32, state["model"], state.get(KEPT_KEY, []))
    except (KeyError, RuntimeError, ExportError) as err:
        raise CheckpointError(f"{path} is damaged ({type(err).__name__}: {err})") from None
    listed = state.get("quantized_modules")
    if listed is not None and list(listed) != _quantized_names(model):
        raise CheckpointError(
            f"{path} is damaged: it lists the int8 layers {', '.join(listed) or 'none'}, but its "
            f"fp32 layers ({', '.join(state.get(KEPT_KEY, [])) or 'none'}) leave "
            f"{', '.join(_quantized_names(model)) or 'none'}"
        )
    return model, temperature_of(state, path)


def int8_run(run: Run, path: Optional[Path] = None) -> Run:
    """`run` with its int8 model (`load_int8`) in place of its fp32 one, on the CPU: what
    evaluate and predict use for --checkpoint int8."""
    import dataclasses

    from fbdl_fast.train import Trainer

    path = path or run.path / INT8_FILE
    model, temperature = _load_int8(run, path)
    trainer = Trainer(model, run.config, device="cpu", label_map=run.label_map, progress=False)
    trainer.temperature = temperature
    return dataclasses.replace(run, trainer=trainer, checkpoint=path)


__all__ = [
    "FORMATS",
    "INT8_FILE",
    "ONNX_FILE",
    "ONNX_TOLERANCE",
    "ExportError",
    "check_source",
    "export_int8",
    "export_onnx",
    "int8_engine_problem",
    "int8_run",
    "int8_state",
    "kept_fp32",
    "load_int8",
    "model_from_int8_state",
    "onnx_logits",
    "output_path",
    "padded_batch",
    "provenance",
    "quantizable",
    "quantize_int8",
    "reference_ops",
    "supported_engines",
]
