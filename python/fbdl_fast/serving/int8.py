"""int8: `torch.ao.quantization.quantize_dynamic` turns every nn.Linear and nn.LSTM into its dynamic
int8 form (CPU only): weights int8 per output channel (per_channel_dynamic_qconfig: one symmetric
scale per row of each weight matrix, the LSTM's gate matrices included; every torch CPU engine
runs them), activations quantized per batch on the fly. Per channel rather than torch's default
per tensor: on the Debian task's MiniLM it cost 1.06 points of macro-F1 instead of 1.34, at 1-3%
less speed (docs/serving.md). `--keep-fp32 NAME[,NAME...]` (`kept_fp32`) leaves
named layers in fp32: module names as in model.named_modules(), exact or a prefix ending at a dot
("blocks.0" keeps every quantizable layer of the first block); a name that covers no Linear or
LSTM is refused with a few valid ones. On that MiniLM, the first block's FFN output projection
(blocks.0.mlp.proj) is the layer whose int8 weights cost most (benches/studies/int8_sensitivity.py).
The attention's input projection (a raw parameter of nn.MultiheadAttention) and output projection
(a NonDynamicallyQuantizableLinear, left out by torch on purpose) are quantized too: each attention
is first swapped for serving.int8_attention's LinearAttention, the same computation with both
projections as nn.Linear layers (NAME.in_proj, q/k/v stacked, and NAME.out_proj); a MiniLM then has
25 int8 Linears instead of 13 (HF's BertForSequenceClassification quantized the same way: 38, its
pooler and separate q, k, v included). Files written before that (no attention_linears key) keep
their attention in fp32 and load as they were written.
Not quantized: the embeddings and the
CNN's convolutions: quantize_dynamic's default mapping has no Conv1d (a dynamic int8 Conv1d exists
in torch.ao.nn.quantized.dynamic but only through an explicit mapping, which this module does not
use). The file is a checkpoint (fbdl_fast.checkpoint, read with weights_only): the int8 weights as
plain tensors (int8 values, per-channel scales, zero points and axis; files written with weights
per tensor, a scale and a zero point, still load) and the other parameters in fp32, with the config,
label map, tokenizer fingerprint, the SHA-256 of the checkpoint it came from, its calibration
temperature and tuned thresholds (files without them: those of the checkpoint it came from), the
int8 layers (quantized_modules) and the layers kept in fp32 (kept_fp32; files without it: none).
`read_int8` rebuilds the quantized model from it exactly, with what the file carries;
`load_run(..., checkpoint="int8")` (fbdl_fast.training.loading) serves it. A CPU without an int8
engine (torch.backends.quantized.supported_engines) is refused with ExportError.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from fbdl_fast.checkpoint import (
    CheckpointError,
    load_checkpoint,
    require_keys,
    save_checkpoint,
    temperature_of,
)
from fbdl_fast.files import remove_stale_temps
from fbdl_fast.serving.int8_attention import swappable, with_linear_attention
from fbdl_fast.serving.provenance import (
    INT8_FILE,
    ExportError,
    ExportSource,
    ServedModel,
    check_source,
    provenance,
    run_lock,
)

if TYPE_CHECKING:
    import torch.ao.nn.quantized.dynamic as nnqd

    from fbdl_fast.runs import RunFiles

INT8_FORMAT = "int8-dynamic"
KEPT_KEY = "kept_fp32"
# True in files whose attentions were swapped for LinearAttention before quantizing (their
# projections int8); files without the key were written with the attention left in fp32.
ATTENTION_KEY = "attention_linears"
# Engines that run quantized Linear/LSTM kernels on a CPU ("none" is not one).
INT8_ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")


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


def quantizable(model: nn.Module, attention: bool = True) -> list[str]:
    """The names of the layers dynamic int8 quantizes, as in the named_modules() of the model
    it quantizes: every module whose type is exactly nn.Linear or nn.LSTM and, with `attention`,
    the projections NAME.in_proj and NAME.out_proj of each attention NAME that
    with_linear_attention swaps. Subclasses of nn.Linear are left out on purpose:
    nn.MultiheadAttention's own out_proj is a NonDynamicallyQuantizableLinear, and quantizing it
    inside that module breaks the attention (torch's type-keyed spec skips it the same way)."""
    names = []
    for name, module in model.named_modules():
        if attention and name and swappable(module):
            names += [f"{name}.in_proj", f"{name}.out_proj"]  # LinearAttention's order
        elif type(module) in (nn.Linear, nn.LSTM):
            names.append(name)
    return names


def kept_fp32(model: nn.Module, names: Sequence[str], attention: bool = True) -> list[str]:
    """The quantizable layers of `model` that `names` keep in fp32 (export --keep-fp32), in
    model order. Each name is a module name, exact or a prefix ending at a dot boundary
    ("blocks.0" keeps every Linear of the first block, "blocks.0.mlp.proj" that one layer; not
    "blocks.0.ml"; "blocks.0.attn" both projections of that attention). ExportError for a name
    that covers no quantizable layer. `attention`: as in quantizable."""
    layers = quantizable(model, attention)
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


def _quantize_dynamic(
    model: nn.Module, keep_fp32: Sequence[str] = (), attention: bool = True
) -> nn.Module:
    """A copy of `model` with its nn.Linear and nn.LSTM layers (`quantizable`) in dynamic int8,
    except the layers `keep_fp32` names (`kept_fp32`), weights per output channel (torch's
    per_channel_dynamic_qconfig: symmetric, one scale per row of each weight matrix, axis 0).
    With `attention`, each attention is first swapped for a LinearAttention, so that its
    projections are quantized too (without: they stay fp32, as in files written before).
    LSTM.from_float takes that qconfig too: each gate matrix (weight_ih/weight_hh of every layer
    and direction) gets per-row scales. The spec is keyed by module name, so that single layers
    can stay fp32."""
    kept = set(kept_fp32(model, keep_fp32, attention))
    prepared = with_linear_attention(model) if attention else copy.deepcopy(model)
    with warnings.catch_warnings():
        # torch.ao.quantization says it is deprecated in favour of torchao; quantize_dynamic is
        # still torch's own dynamic int8 path and the one this format is defined by.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        layers = quantizable(prepared, attention=False)  # the swap is done: plain Linears
        spec = {n: per_channel_dynamic_qconfig for n in layers if n not in kept}
        return quantize_dynamic(prepared.eval(), spec, torch.qint8, inplace=True)


def quantize_int8(
    model: nn.Module, keep_fp32: Sequence[str] = (), attention: bool = True
) -> nn.Module:
    """`model` (fp32, unchanged) as a new dynamic int8 model for CPU inference, the layers
    `keep_fp32` names (see `kept_fp32`) left in fp32; `attention=False` leaves the attentions'
    projections in fp32 too, as int8 files written before they were quantized have them."""
    _check_engine()
    return _quantize_dynamic(model.to("cpu"), keep_fp32, attention)


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
    fp32: nn.Module,
    state: dict[str, torch.Tensor],
    keep_fp32: Sequence[str] = (),
    attention: bool = True,
) -> nn.Module:
    """The dynamic int8 model `int8_state` described, built on `fp32` (a model of the same
    config, whose own weights are replaced) with the layers `keep_fp32` names in fp32 and, with
    `attention`, its attentions swapped for LinearAttention, as it was quantized: exactly the
    quantized weights that were saved."""
    import torch.ao.nn.quantized.dynamic as nnqd

    qmodel = _quantize_dynamic(fp32, keep_fp32, attention)
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


def _set_lstm_weights(module: nnqd.LSTM, prefix: str, state: dict[str, torch.Tensor]) -> None:
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
    run: ExportSource, path: Optional[Path] = None, keep_fp32: Sequence[str] = ()
) -> dict[str, Any]:
    """Write the run's model in dynamic int8 to `path` (default: the run's model.int8.pt),
    atomically, the layers `keep_fp32` names (see `kept_fp32`) left in fp32. Returns {"path",
    "bytes", "quantized": [module names], "kept_fp32": [module names], "fp32_bytes": the fp32
    weights' size in memory}."""
    _check_engine()
    with run_lock(run):
        return _export_int8(run, path or run.path / INT8_FILE, keep_fp32)


def _export_int8(run: ExportSource, path: Path, keep_fp32: Sequence[str]) -> dict[str, Any]:
    remove_stale_temps(path)  # an export killed midway left its temporary file
    kept = kept_fp32(run.model, keep_fp32)  # a bad name: refused before any work
    qmodel = quantize_int8(run.model, kept)
    quantized = _quantized_names(qmodel)
    state = {
        "format": INT8_FORMAT,
        "model": int8_state(qmodel),
        "quantized_modules": quantized,
        # the layers left in fp32 (files without the key: none), so that load_int8 rebuilds
        # this model and no other
        KEPT_KEY: kept,
        ATTENTION_KEY: True,  # the attentions' projections are int8 (LinearAttention)
        **provenance(run),
    }
    save_checkpoint(state, path)
    return {
        "path": path,
        "bytes": path.stat().st_size,
        "quantized": quantized,
        "kept_fp32": kept,
        "fp32_bytes": sum(t.numel() * t.element_size() for t in run.model.state_dict().values()),
    }


def _quantized_names(qmodel: nn.Module) -> list[str]:
    return [name for name, m in qmodel.named_modules() if _quantized(m) is not None]


def load_int8(run: RunFiles, path: Optional[Path] = None) -> nn.Module:
    """The dynamic int8 model `export_int8` wrote for `run` (see `read_int8`)."""
    return read_int8(run, path).model


def read_int8(run: RunFiles, path: Optional[Path] = None) -> ServedModel:
    """The dynamic int8 model `export_int8` wrote for the run folder `run` (`path`, default its
    model.int8.pt), with the calibration temperature and thresholds it carries, checked against
    the run: RunError/CheckpointError naming the file when it belongs to another run or to
    another version of its source checkpoint; ExportError without an int8 engine."""
    from fbdl_fast.models import architecture, create_model
    from fbdl_fast.runs import PROG, RunError, check_unit

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
    check_unit(run.path, path, state, run.config, run.tokenizer, run.label_map)
    check_source(run.path, path, state["source_checkpoint"], "int8")
    fp32 = create_model(architecture(run.model_name), run.config)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = model_from_int8_state(
                fp32, state["model"], state.get(KEPT_KEY, []), bool(state.get(ATTENTION_KEY))
            )
    except (KeyError, RuntimeError, ExportError) as err:
        raise CheckpointError(f"{path} is damaged ({type(err).__name__}: {err})") from None
    listed = state.get("quantized_modules")
    if listed is not None and list(listed) != _quantized_names(model):
        raise CheckpointError(
            f"{path} is damaged: it lists the int8 layers {', '.join(listed) or 'none'}, but its "
            f"fp32 layers ({', '.join(state.get(KEPT_KEY, [])) or 'none'}) leave "
            f"{', '.join(_quantized_names(model)) or 'none'}"
        )
    return ServedModel(model, path, temperature_of(state, path), _thresholds(run, state))


def _thresholds(run: RunFiles, state: dict[str, Any]) -> Optional[list[float]]:
    """The tuned thresholds of a multi-label run's int8 file. Files written before they carried
    them take those of the checkpoint they were made from (check_source vouched for it)."""
    if "thresholds" in state or not run.config.multi_label:
        return state.get("thresholds")
    source = run.path / str(state["source_checkpoint"]["name"])
    return load_checkpoint(source, map_location="cpu").get("thresholds")
