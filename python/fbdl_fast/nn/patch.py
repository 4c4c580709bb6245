"""patch(model): swap a model's torch layers for the fused fbdl_fast ones, in place.

Swapped: every torch.nn.LayerNorm -> fbdl_fast.nn.LayerNorm and every
torch.nn.MultiheadAttention -> fbdl_fast.nn.MultiheadAttention. Focal loss has no torch module to
replace: the library's own focal criterion (the losses registry's "focal", the trainer's
use_focal_loss) already is fbdl_fast.nn.FocalLoss and dispatches to the fused kernel by itself.

The new modules take over the old ones' Parameter objects (not copies), so an optimizer built
before the patch keeps training the same tensors, and `unpatch` puts the original modules back
with whatever the training changed.

torch.nn.TransformerEncoderLayer has an inference fast path (eval mode, no grad) that reads the
weights of its attention and norms directly and never calls their forward: a patched layer would
silently run torch's kernels there. torch skips that path for a layer that has forward hooks, so
patch() registers a no-op pre-hook on each such layer it touched, and reports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torch import nn

from fbdl_fast.nn.attention import MultiheadAttention
from fbdl_fast.nn.layer_norm import LayerNorm


@dataclass
class Swap:
    """One module replaced by patch(): where, what it was, what it is now."""

    name: str
    original: nn.Module
    replacement: nn.Module


@dataclass
class PatchReport:
    """What patch() did; pass it to unpatch() to restore the originals."""

    model: nn.Module
    swaps: list[Swap] = field(default_factory=list)
    # TransformerEncoderLayer/DecoderLayer names whose torch fast path was disabled by a hook.
    fast_path_disabled: list[str] = field(default_factory=list)
    _hooks: list[Any] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.swaps)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for swap in self.swaps:
            kind = type(swap.original).__name__
            counts[kind] = counts.get(kind, 0) + 1
        parts = [f"{n} {kind}" for kind, n in sorted(counts.items())] or ["nothing"]
        text = "patched " + ", ".join(parts)
        if self.fast_path_disabled:
            text += f"; torch fast path disabled on {len(self.fast_path_disabled)} encoder layer(s)"
        return text


def _layer_norm_args(old: nn.LayerNorm) -> dict[str, Any]:
    return {
        "normalized_shape": old.normalized_shape,
        "eps": old.eps,
        "elementwise_affine": old.elementwise_affine,
        "bias": getattr(old, "bias", None) is not None,
    }


def _attention_args(old: nn.MultiheadAttention) -> dict[str, Any]:
    return {
        "embed_dim": old.embed_dim,
        "num_heads": old.num_heads,
        "dropout": old.dropout,
        "bias": old.in_proj_bias is not None,
        "add_bias_kv": old.bias_k is not None,
        "add_zero_attn": old.add_zero_attn,
        "kdim": old.kdim,
        "vdim": old.vdim,
        "batch_first": old.batch_first,
    }


# torch class -> (fbdl_fast class, constructor arguments read off an instance)
_SWAPS: dict[type, tuple[type, Callable[[Any], dict[str, Any]]]] = {
    nn.LayerNorm: (LayerNorm, _layer_norm_args),
    nn.MultiheadAttention: (MultiheadAttention, _attention_args),
}
_FAST_PATH_LAYERS = (nn.TransformerEncoderLayer,)


def _replacement(old: nn.Module) -> Optional[nn.Module]:
    entry = _SWAPS.get(type(old))  # exact type: subclasses may change behaviour we'd lose
    if entry is None:
        return None
    cls, read_args = entry
    new = cls(**read_args(old), device="meta")  # no allocation: the old tensors move in below
    new._parameters = old._parameters
    new._buffers = old._buffers
    new._modules = old._modules
    new.train(old.training)
    leftover = [n for n, t in new.state_dict().items() if t.is_meta]
    if leftover:
        raise RuntimeError(
            f"patch: {cls.__name__} has state {leftover} that "
            f"{type(old).__name__} lacks; cannot swap in place"
        )
    return new


def _disable_fast_path(module: nn.Module, *args: Any) -> None:
    """A no-op forward pre-hook: its presence makes torch skip the encoder-layer fast path."""
    return None


def patch(model: nn.Module) -> PatchReport:
    """Swap every torch LayerNorm/MultiheadAttention inside `model` for fbdl_fast's, in place.

    Returns a PatchReport listing each swap; `unpatch(report)` restores the originals.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch() takes a torch.nn.Module, got {type(model).__name__}")
    if type(model) in _SWAPS:
        raise ValueError(
            f"patch() swaps the layers inside a model; got a bare "
            f"{type(model).__name__}: use fbdl_fast.nn.{type(model).__name__} instead"
        )
    report = PatchReport(model)
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent._modules.items()):
            new = _replacement(child) if child is not None else None
            if new is not None:
                setattr(parent, child_name, new)
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                report.swaps.append(Swap(name, child, new))
    swapped = {id(s.replacement) for s in report.swaps}
    for name, module in model.named_modules():
        if isinstance(module, _FAST_PATH_LAYERS) and any(
            id(m) in swapped for m in module.modules()
        ):
            report._hooks.append(module.register_forward_pre_hook(_disable_fast_path))
            report.fast_path_disabled.append(name)
    return report


def unpatch(report: PatchReport) -> None:
    """Put back the modules `patch` replaced (they share the parameters, so training carries)."""
    for handle in report._hooks:
        handle.remove()
    report._hooks.clear()
    modules = dict(report.model.named_modules())
    for swap in reversed(report.swaps):
        parent_name, _, child_name = swap.name.rpartition(".")
        parent = modules[parent_name] if parent_name else report.model
        swap.original.train(swap.replacement.training)
        setattr(parent, child_name, swap.original)
    report.swaps.clear()
    report.fast_path_disabled.clear()


__all__ = ["PatchReport", "Swap", "patch", "unpatch"]
