"""Each fused op against the peers a user would pick instead, at the goals' shapes, in one process.

Every problem times ours in turns with its peers (peers.measure_row: measure.time_in_turns, CUDA
events, L2 flushed, median and p20-p80), after one untimed first call of each variant (its
compile: `first_call_s`) and a check of that call's result against float64 (`error`, relative).
A peer that cannot import, compile or run is a "not measured: why" variant of the row.

- LayerNorm, bf16 autocast (bf16 input, fp32 parameters), eps 1e-5, forward+backward and
  forward: torch eager, torch.compile (and max-autotune-no-cudagraphs with
  FBDL_FAST_PEERS_MAX_AUTOTUNE=1), Liger-Kernel's LigerLayerNorm, ours. CUDA: M = 16,384 rows,
  N = 768, 1,024, 4,096.
- Focal loss, bf16 logits, 1 in 16 targets ignored, mean, forward+backward and forward: at gamma
  2 the torch reference composition eager and compiled, ours; at gamma 0 (cross-entropy)
  F.cross_entropy on fp32-upcast logits (as autocast runs it), LigerCrossEntropyLoss and ours
  with gamma 0. Peak memory of each. CUDA: N = 8,192, C = 32,000, 50,257, 1,000, 5.
- Padded attention (key padding mask, lengths uniform in [L/4, L]), bf16, dropout 0, forward+
  backward and forward: SDPA pinned to each backend that accepts the mask, SDPA as torch picks,
  SDPA under torch.compile, ours padded; ours dense (no mask, same shape) as a reference point.
  CUDA: D = 64, H = 8, B * L = 32,768, L = 512 and 2,048.

The order is the value of the rows, for a stage stopped at its budget keeps those measured: each
op's goal shapes first, the forward+backward pass before the forward, focal loss last (its small
C are the least telling).

On a CPU (gpu_check --cpu-smoke, and the test command's smoke run) the same variants at tiny
shapes (focal loss at C = 1,000 only): torch.compile compiles C++ there; Liger imports where
installed, but its Triton kernels need a GPU, so its rows say why they were not measured.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Optional

import pytest
import torch
import torch.nn.functional as F

import peers
from fbdl_fast.nn import LayerNorm
from fbdl_fast.ops import attention as attention_op
from fbdl_fast.ops import focal_loss as focal_op
from measure import CUDA, dtype_name

DEVICE = "cuda" if CUDA else "cpu"
MODES = ("forward+backward", "forward")  # the goals' pass first
REPEATS, WARMUP = (50, 3) if CUDA else (3, 1)
# Ours against float64, relative: bf16 rounds at 2**-8 (0.4%); an indexing or masking mistake
# is of order 1.
OURS_TOLERANCE = 3e-2

# --- LayerNorm -------------------------------------------------------------------------------

LN_ROWS = 16384 if CUDA else 64
LN_HIDDEN = (768, 1024, 4096) if CUDA else (768,)
LN_EPS = 1e-5


def _autocast() -> torch.autocast:
    return torch.autocast(DEVICE, torch.bfloat16)


def _ln_step(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor, mode: str):
    """One call of `module` on x under bf16 autocast; forward+backward returns dx, dw, db."""
    inputs = [x, *module.parameters()]
    grad_out: list[torch.Tensor] = []  # dy in the module's output dtype, made at the first call

    def step() -> object:
        if mode == "forward":
            with torch.no_grad(), _autocast():
                return module(x)
        with _autocast():
            y = module(x)
        if not grad_out:
            grad_out.append(dy.to(y.dtype))
        return torch.autograd.grad(y, inputs, grad_out[0])

    return step


def _liger_layer_norm(like: torch.nn.LayerNorm) -> torch.nn.Module:
    liger = peers.import_peer("liger_kernel.transformers")
    module = liger.LigerLayerNorm(like.normalized_shape[0], eps=like.eps, bias=True)
    module.load_state_dict(like.state_dict())
    return module.to(DEVICE)


def _ln_check(x: torch.Tensor, dy: torch.Tensor, weight, bias, mode: str) -> Callable:
    """The relative error of a variant's first output against torch's layer_norm in float64."""
    x64 = x.detach().double().requires_grad_()
    w64, b64 = (p.detach().double().requires_grad_() for p in (weight, bias))
    y64 = F.layer_norm(x64, (x.shape[-1],), w64, b64, LN_EPS)
    truth = [y64.detach(), *torch.autograd.grad(y64, [x64, w64, b64], dy.double())]

    def error(variant: str, output: Any) -> float:
        got = [output] if mode == "forward" else list(output)
        want = truth[:1] if mode == "forward" else truth[1:]
        return max(peers.relative_error(g, w) for g, w in zip(got, want))

    return error


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hidden", LN_HIDDEN)
def bench_layer_norm_peers(hidden: int, mode: str) -> None:
    generator = torch.Generator(DEVICE).manual_seed(0)
    x = torch.randn(LN_ROWS, hidden, device=DEVICE, generator=generator).bfloat16()
    x.requires_grad_()
    dy = torch.randn(LN_ROWS, hidden, device=DEVICE, generator=generator)
    torch_ln = torch.nn.LayerNorm(hidden, eps=LN_EPS, device=DEVICE)
    with torch.no_grad():
        for p in torch_ln.parameters():
            p.copy_(torch.randn(p.shape, device=DEVICE, generator=generator))

    def fresh(make: Callable[[], torch.nn.Module]) -> Callable[[], Callable[[], object]]:
        return lambda: _ln_step(make(), x, dy, mode)

    def ours() -> torch.nn.Module:
        module = LayerNorm(hidden, eps=LN_EPS, device=DEVICE)
        module.load_state_dict(torch_ln.state_dict())
        return module

    factories = {
        "ours": fresh(ours),
        "torch eager": fresh(lambda: torch_ln),
        "torch.compile": fresh(lambda: peers.compiled(_copy(torch_ln))),
        "Liger LigerLayerNorm": fresh(lambda: _liger_layer_norm(torch_ln)),
    }
    if peers.max_autotune():
        factories["torch.compile max-autotune"] = fresh(
            lambda: peers.compiled(_copy(torch_ln), mode="max-autotune-no-cudagraphs")
        )
    row = peers.measure_row(
        "layer_norm_peers",
        {"rows": LN_ROWS, "hidden": hidden, "precision": "bf16-autocast", "mode": mode},
        factories,
        ours=["ours"],
        eager="torch eager",
        peers=[name for name in factories if name != "ours"],
        repeats=REPEATS,
        warmup=WARMUP,
        check=_ln_check(x, dy, torch_ln.weight, torch_ln.bias, mode),
        ours_tolerance=OURS_TOLERANCE,
    )
    assert row["ours"] is not None, row["variants"]


def _copy(module: torch.nn.Module) -> torch.nn.Module:
    clone = type(module)(module.normalized_shape, eps=module.eps, device=DEVICE)
    clone.load_state_dict(module.state_dict())
    return clone


# --- Padded attention ------------------------------------------------------------------------

ATTENTION_LENGTHS = (512, 2048) if CUDA else (64,)
HEAD_DIM = 64 if CUDA else 32
HEADS = 8 if CUDA else 2
TOKENS = 32768 if CUDA else 128  # B * L
ATTENTION_DTYPE = torch.bfloat16 if CUDA else torch.float32
SDPA_BACKENDS = ("flash", "cudnn", "efficient", "math")


def _attention_inputs(L: int):
    generator = torch.Generator(DEVICE).manual_seed(0)
    shape = (TOKENS // L, HEADS, L, HEAD_DIM)
    q, k, v, dout = (torch.randn(shape, device=DEVICE, generator=generator) for _ in range(4))
    q, k, v = (t.to(ATTENTION_DTYPE).requires_grad_() for t in (q, k, v))
    lengths = torch.randint(L // 4, L + 1, (shape[0],), device=DEVICE, generator=generator)
    key_mask = torch.arange(L, device=DEVICE)[None, :] < lengths[:, None]  # (B, L) True = real
    return q, k, v, dout.to(ATTENTION_DTYPE), key_mask


def _attention_step(fn: Callable, q, k, v, dout, mode: str):
    def step() -> object:
        if mode == "forward":
            with torch.no_grad():
                return fn(q, k, v)
        return torch.autograd.grad(fn(q, k, v), (q, k, v), dout)

    return step


def _sdpa(mask: torch.Tensor, backend: Optional[str]) -> Callable:
    """SDPA with the key mask as a boolean (B, 1, 1, L) mask, pinned to `backend` (None: as torch
    picks). The warnings of a backend that works are silenced; one that refuses raises."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    pinned = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    attn_mask = mask[:, None, None, :]

    def run(q, k, v):
        context = sdpa_kernel(pinned[backend]) if backend else contextlib.nullcontext()
        with context, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)

    return run


def _probed(fn: Callable, q, k, v) -> Callable:
    """`fn` after one call; a refusal raises with the warning that says why, if one came."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.no_grad():
                fn(q, k, v)
        except (RuntimeError, NotImplementedError, ValueError) as error:
            reasons = "; ".join(str(w.message).splitlines()[0] for w in caught[:2])
            raise RuntimeError(f"{str(error).splitlines()[0]} ({reasons})") from None
    return fn


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("L", ATTENTION_LENGTHS)
def bench_attention_peers(L: int, mode: str) -> None:
    q, k, v, dout, key_mask = _attention_inputs(L)

    def plain_sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])

    def of(make_fn: Callable[[], Callable]) -> Callable[[], Callable]:
        return lambda: _attention_step(make_fn(), q, k, v, dout, mode)

    factories = {
        "ours padded": of(lambda: lambda q, k, v: attention_op.dispatch(q, k, v, key_mask)),
        "ours dense": of(lambda: lambda q, k, v: attention_op.dispatch(q, k, v, None)),
        "SDPA": of(lambda: _sdpa(key_mask, None)),
        **{
            f"SDPA {name}": of(lambda name=name: _probed(_sdpa(key_mask, name), q, k, v))
            for name in SDPA_BACKENDS
        },
        "SDPA torch.compile": of(lambda: peers.compiled(plain_sdpa)),
    }
    problem = {
        "batch": q.shape[0], "heads": HEADS, "length": L, "head_dim": HEAD_DIM,
        "dtype": dtype_name(ATTENTION_DTYPE), "padded": True, "mode": mode,
    }  # fmt: skip
    row = peers.measure_row(
        "attention_peers",
        problem,
        factories,
        ours=["ours padded"],
        eager="SDPA",
        peers=[name for name in factories if name.startswith("SDPA")],
        repeats=REPEATS,
        warmup=WARMUP,
        check=_attention_check(q, k, v, dout, key_mask, mode),
        ours_tolerance=OURS_TOLERANCE,
    )
    assert row["ours"] is not None, row["variants"]


def _attention_check(q, k, v, dout, key_mask, mode: str) -> Callable:
    """Error against the masked reference in float64 ('ours dense' attends to the padding: it
    computes another function, and its error says so)."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out64 = attention_op.reference(q64, k64, v64, key_mask)
    truth = [out64.detach(), *torch.autograd.grad(out64, (q64, k64, v64), dout.double())]

    def error(variant: str, output: Any) -> float:
        got = [output] if mode == "forward" else list(output)
        want = truth[:1] if mode == "forward" else truth[1:]
        return max(peers.relative_error(g, w) for g, w in zip(got, want))

    return error


# --- Focal loss ------------------------------------------------------------------------------

FOCAL_CLASSES = (32000, 50257, 1000, 5) if CUDA else (1000,)  # a CPU: the paths, 4 compiles
GAMMAS = (2.0, 0.0)


def _focal_rows(n_classes: int) -> int:
    return 8192 if CUDA else max(16, min(8192, 2**16 // n_classes))


def _loss_step(loss_fn: Callable, logits: torch.Tensor, target: torch.Tensor, mode: str):
    def step() -> object:
        if mode == "forward":
            with torch.no_grad():
                return loss_fn(logits, target)
        return torch.autograd.grad(loss_fn(logits, target).float(), logits)

    return step


def _liger_cross_entropy() -> Callable:
    liger = peers.import_peer("liger_kernel.transformers")
    return liger.LigerCrossEntropyLoss(ignore_index=-100, reduction="mean")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("gamma", GAMMAS, ids=lambda g: f"gamma{g:g}")
@pytest.mark.parametrize("n_classes", FOCAL_CLASSES)
def bench_focal_loss_peers(n_classes: int, gamma: float, mode: str) -> None:
    generator = torch.Generator(DEVICE).manual_seed(0)
    n = _focal_rows(n_classes)
    logits = (3 * torch.randn(n, n_classes, device=DEVICE, generator=generator)).bfloat16()
    target = torch.randint(0, n_classes, (n,), device=DEVICE, generator=generator)
    target[::16] = -100

    def on_own_logits(loss_fn_of: Callable[[], Callable]) -> Callable[[], Callable]:
        # Each variant gets its own leaf copy: Liger's cross-entropy writes its gradient into its
        # input, which must not change what the others compute.
        return lambda: _loss_step(loss_fn_of(), logits.clone().requires_grad_(), target, mode)

    ours = f"ours gamma={gamma:g}"
    if gamma:
        factories = {
            ours: on_own_logits(lambda: lambda x, t: focal_op.dispatch(x, t, gamma)),
            "torch eager": on_own_logits(lambda: lambda x, t: focal_op.reference(x, t, gamma)),
            "torch.compile": on_own_logits(
                lambda: peers.compiled(lambda x, t: focal_op.reference(x, t, gamma))
            ),
        }
    else:
        factories = {
            ours: on_own_logits(lambda: lambda x, t: focal_op.dispatch(x, t, 0.0)),
            "torch eager": on_own_logits(lambda: lambda x, t: F.cross_entropy(x.float(), t)),
            "torch.compile": on_own_logits(
                lambda: peers.compiled(lambda x, t: F.cross_entropy(x.float(), t))
            ),
            "Liger LigerCrossEntropyLoss": on_own_logits(_liger_cross_entropy),
        }
    row = peers.measure_row(
        "focal_loss_peers",
        {"rows": n, "classes": n_classes, "gamma": gamma, "precision": "bf16", "mode": mode},
        factories,
        ours=[ours],
        eager="torch eager",
        peers=[name for name in factories if name != ours],
        repeats=REPEATS,
        warmup=WARMUP,
        check=_focal_check(logits, target, gamma, mode),
        ours_tolerance=OURS_TOLERANCE,
    )
    assert row["ours"] is not None, row["variants"]


def _focal_check(logits: torch.Tensor, target: torch.Tensor, gamma: float, mode: str) -> Callable:
    x64 = logits.detach().double().requires_grad_()
    loss64 = focal_op.reference(x64, target, gamma)
    (grad64,) = torch.autograd.grad(loss64, x64)

    def error(variant: str, output: Any) -> float:
        if mode == "forward":
            return peers.relative_error(output.reshape(()), loss64.detach())
        return peers.relative_error(output[0], grad64)

    return error
