"""Optimisers and learning-rate schedulers by name.

`create_optimizer(model, config)` builds config.optimizer_type over the model's trainable
parameters with config.learning_rate and config.weight_decay (with config.decay_biases_and_norms
False, two groups: `param_groups` puts biases and norm gains in one without decay);
`create_scheduler(optimizer, config, steps_per_epoch)` builds config.scheduler_type. Schedulers
differ in when they are stepped, and `scheduler_interval(name)` says which, so the trainer
needs no isinstance checks:

- "epoch"   (step, cosine): `scheduler.step()` once after each epoch;
- "plateau" (plateau):      `scheduler.step(val_loss)` once after each validation;
- "batch"   (one_cycle, linear): `scheduler.step()` after every optimizer step.

Besides torch.optim's, the registry holds Lion and AdaBelief, written here from their papers
(torch.optim has neither).

Keyword arguments override any default below (e.g. `create_optimizer(m, c, momentum=0.5)`).
The 0.x API's `OptimizerFactory` / `SchedulerFactory` namespaces, kept for compatibility, are thin
facades.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import torch
from torch import nn
from torch.optim import lr_scheduler

if TYPE_CHECKING:
    from fbdl_fast.config import ModelConfig

Params = Union[nn.Module, Iterable[torch.Tensor], Iterable[dict[str, Any]]]
Scheduler = Union[lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau]


def _optimizer(cls: type[torch.optim.Optimizer], **defaults: Any) -> Callable[..., Any]:
    """factory(params, **kwargs) -> cls(params, **{**defaults, **kwargs})."""

    def build(params: Any, **kwargs: Any) -> torch.optim.Optimizer:
        return cls(params, **{**defaults, **kwargs})

    build.__name__ = build.__qualname__ = cls.__name__
    build.__doc__ = f"torch.optim.{cls.__name__} with defaults {defaults}."
    return build


def _check_hyper(name: str, lr: float, betas: Any, eps: Optional[float], wd: float) -> None:
    """ValueError naming the optimiser, the hyper-parameter and what is accepted."""

    def real(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if not (real(lr) and lr >= 0):
        raise ValueError(f"{name}: lr={lr!r} is invalid; expected a finite number >= 0")
    if not (
        isinstance(betas, (tuple, list))
        and len(betas) == 2
        and all(real(b) and 0 <= b < 1 for b in betas)
    ):
        raise ValueError(f"{name}: betas={betas!r} is invalid; expected two numbers in [0, 1)")
    if eps is not None and not (real(eps) and eps > 0):
        raise ValueError(
            f"{name}: eps={eps!r} is invalid; expected a finite number > 0 (the update divides "
            "by sqrt(s) + eps, and s can be 0)"
        )
    if not (real(wd) and wd >= 0):
        raise ValueError(f"{name}: weight_decay={wd!r} is invalid; expected a finite number >= 0")


def _dense_grads(name: str, group: dict[str, Any]) -> Iterator[torch.Tensor]:
    """The group's parameters that have a gradient; sparse gradients are refused."""
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(f"{name} does not support sparse gradients (use a dense embedding)")
        yield p


def _closure_loss(closure: Optional[Callable[[], float]]) -> Optional[float]:
    """The loss `closure` returns (run with gradients on, as torch.optim's step does), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2):

        c = beta1 * m + (1 - beta1) * g
        p = p - lr * (sign(c) + weight_decay * p)      # decay decoupled, scaled by lr
        m = beta2 * m + (1 - beta2) * g

    No bias correction (the sign does not depend on the scale of c). Every coordinate moves by
    lr a step, so the paper uses an lr 3-10x smaller than AdamW's and a weight decay 3-10x
    larger, keeping lr * weight_decay about the same."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        _check_hyper("Lion", lr, betas, None, weight_decay)
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:  # type: ignore[override]
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in _dense_grads("Lion", group):
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, g = state["exp_avg"], p.grad
                assert g is not None  # _dense_grads yields the parameters with a gradient
                update = torch.lerp(g, m, beta1).sign_()  # beta1 * m + (1 - beta1) * g
                p.mul_(1 - lr * wd).add_(update, alpha=-lr)
                m.lerp_(g, 1 - beta2)  # beta2 * m + (1 - beta2) * g
        return loss


class AdaBelief(torch.optim.Optimizer):
    """AdaBelief (Zhuang et al. 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients", Algorithm 2), with decoupled weight decay as in AdamW:

        p = p * (1 - lr * weight_decay)
        m = beta1 * m + (1 - beta1) * g
        s = beta2 * s + (1 - beta2) * (g - m)**2 + eps     # eps inside the second moment
        p = p - lr * (m / (1 - beta1**t)) / (sqrt(s / (1 - beta2**t)) + eps)

    s estimates the variance of g around its running mean ("the belief"), not g's raw second
    moment: steps are large where the gradient is as predicted. eps enters twice, as in the
    paper and the authors' code, so eps_adabelief plays the part of eps_adam**2 (default 1e-16).
    No rectification (RAdam's warmup term) and no AMSGrad: the paper's plain algorithm."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
    ) -> None:
        _check_hyper("AdaBelief", lr, betas, eps, weight_decay)
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:  # type: ignore[override]
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, wd = group["eps"], group["weight_decay"]
            for p in _dense_grads("AdaBelief", group):
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_var"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t, m, s, g = state["step"], state["exp_avg"], state["exp_avg_var"], p.grad
                p.mul_(1 - lr * wd)
                m.lerp_(g, 1 - beta1)
                residual = g - m
                s.mul_(beta2).addcmul_(residual, residual, value=1 - beta2).add_(eps)
                denom = (s / (1 - beta2**t)).sqrt_().add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
        return loss


# name -> factory(params, lr=..., weight_decay=..., **kwargs) -> Optimizer
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    # Adam: weight_decay is L2 added to the gradient; AdamW: decoupled decay (the design's default).
    "adam": _optimizer(torch.optim.Adam, betas=(0.9, 0.999), eps=1e-8),
    "adamw": _optimizer(torch.optim.AdamW, betas=(0.9, 0.999), eps=1e-8),
    "sgd": _optimizer(torch.optim.SGD, momentum=0.9, nesterov=True),
    "rmsprop": _optimizer(torch.optim.RMSprop, alpha=0.99, eps=1e-8, momentum=0.9),
    "adagrad": _optimizer(torch.optim.Adagrad, eps=1e-10),
    # The papers' defaults; with lion, pass an lr 3-10x smaller than AdamW's (see Lion).
    "lion": _optimizer(Lion, betas=(0.9, 0.99)),
    "adabelief": _optimizer(AdaBelief, betas=(0.9, 0.999), eps=1e-16),
}


def _accepted(kind: str, name: Any, registry: dict[str, Any]) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; accepted: {', '.join(sorted(registry))}")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    decay_1d: bool = False,
    lr: Optional[float] = None,
    layer_decay: float = 1.0,
) -> list[dict[str, Any]]:
    """`model`'s trainable parameters in groups: matrices and embeddings with `weight_decay`,
    biases and norm gains (every 1-D parameter) with none unless `decay_1d`, as BERT fine-tuning
    does (and timm's param_groups_weight_decay: decaying a LayerNorm gain pulls it to 0, not to
    the identity).

    layer_decay < 1 (layer-wise LR decay, as in ELECTRA and BEiT fine-tuning) needs a model with
    `layer_index(name)` (BertClassifier): each depth gets its groups, with lr x layer_decay **
    (top depth - depth), the head keeping `lr`. Groups keep the parameters' order; empty ones
    are left out."""
    depth_of = getattr(model, "layer_index", None)
    if layer_decay != 1.0 and depth_of is None:
        raise ValueError(
            f"layer_decay={layer_decay} needs a model with layers to decay (layer_index(); "
            f"BertClassifier has it), not a {type(model).__name__}; use layer_decay=1.0"
        )
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    depths = [depth_of(n) if layer_decay != 1.0 and depth_of else 0 for n, _ in named]
    top = max(depths, default=0)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for depth in sorted(set(depths)):
        for decayed in (True, False):
            group: dict[str, Any] = {"params": [], "weight_decay": weight_decay if decayed else 0.0}
            if lr is not None and layer_decay != 1.0:
                group["lr"] = lr * layer_decay ** (top - depth)
            groups[(depth, decayed)] = group
    for (_, p), depth in zip(named, depths):
        groups[(depth, decay_1d or p.ndim > 1)]["params"].append(p)
    return [g for g in groups.values() if g["params"]]


def create_optimizer(model: Params, config: ModelConfig, **kwargs: Any) -> torch.optim.Optimizer:
    """Optimizer config.optimizer_type over `model`'s trainable parameters.

    `model` may also be an iterable of parameters or of param-group dicts. lr is
    config.learning_rate and weight_decay config.weight_decay unless kwargs say otherwise; with
    config.decay_biases_and_norms False biases and norm gains get no decay, and with
    config.layer_decay < 1 lower layers a smaller LR (`param_groups`). Frozen parameters
    (requires_grad False: ModelConfig.freeze_layers) are left out."""
    name = config.optimizer_type
    if name not in OPTIMIZERS:
        raise _accepted("optimizer_type", name, OPTIMIZERS)
    options = {"lr": config.learning_rate, "weight_decay": config.weight_decay, **kwargs}
    grouped = not config.decay_biases_and_norms or config.layer_decay != 1.0
    if isinstance(model, nn.Module) and grouped:
        params: list[Any] = param_groups(
            model,
            options["weight_decay"],
            decay_1d=config.decay_biases_and_norms,
            lr=options["lr"],
            layer_decay=config.layer_decay,
        )
    elif isinstance(model, nn.Module):
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        params = list(model)
    if not params:
        raise ValueError(f"optimizer {name!r}: the model has no trainable parameters")
    return OPTIMIZERS[name](params, **options)


def _step(
    optimizer: torch.optim.Optimizer,
    config: ModelConfig,
    steps_per_epoch: Optional[int],
    **kwargs: Any,
) -> Scheduler:
    # Three decays by 10x over the run: step_size is a third of max_epochs.
    options = {"step_size": max(1, config.max_epochs // 3), "gamma": 0.1, **kwargs}
    return lr_scheduler.StepLR(optimizer, **options)


def _cosine(
    optimizer: torch.optim.Optimizer,
    config: ModelConfig,
    steps_per_epoch: Optional[int],
    **kwargs: Any,
) -> Scheduler:
    # Half a cosine from learning_rate down to eta_min over max_epochs epochs.
    options = {"T_max": config.max_epochs, "eta_min": 0.0, **kwargs}
    return lr_scheduler.CosineAnnealingLR(optimizer, **options)


def _plateau(
    optimizer: torch.optim.Optimizer,
    config: ModelConfig,
    steps_per_epoch: Optional[int],
    **kwargs: Any,
) -> Scheduler:
    # Reduce well before early stopping gives up: half of config.patience epochs without a new
    # best validation loss divides the LR by 10.
    options = {"mode": "min", "factor": 0.1, "patience": max(1, config.patience // 2), **kwargs}
    return lr_scheduler.ReduceLROnPlateau(optimizer, **options)


def _require_steps_per_epoch(scheduler: str, steps_per_epoch: Optional[int]) -> int:
    """Schedulers that step every batch need the number of batches per epoch: returned."""
    if not (isinstance(steps_per_epoch, int) and steps_per_epoch >= 1):
        raise ValueError(
            f"scheduler '{scheduler}' steps every batch: steps_per_epoch={steps_per_epoch!r} is "
            "invalid; pass the number of batches per epoch (a positive integer)"
        )
    return steps_per_epoch


def _one_cycle(
    optimizer: torch.optim.Optimizer,
    config: ModelConfig,
    steps_per_epoch: Optional[int],
    **kwargs: Any,
) -> Scheduler:
    _require_steps_per_epoch("one_cycle", steps_per_epoch)
    # Momentum cycles inversely to the LR, where the optimizer has a momentum to cycle.
    defaults = optimizer.defaults
    has_momentum = "betas" in defaults or defaults.get("momentum", 0) > 0
    options = {
        "max_lr": config.learning_rate,
        "epochs": config.max_epochs,
        "steps_per_epoch": steps_per_epoch,
        "cycle_momentum": has_momentum,
        **kwargs,
    }
    return lr_scheduler.OneCycleLR(optimizer, **options)


class LinearWarmupDecay:
    """The LR factor at optimizer step t of a linear warmup then linear decay over `total` steps:
    t / warmup while t < warmup, then (total - t) / (total - warmup), down to 0 at t = total
    (Hugging Face's get_linear_schedule_with_warmup). A class, not a closure: LambdaLR saves a
    callable object's attributes in its state_dict, so a checkpoint records the schedule."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / self.warmup
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


def _linear(
    optimizer: torch.optim.Optimizer,
    config: ModelConfig,
    steps_per_epoch: Optional[int],
    **kwargs: Any,
) -> Scheduler:
    steps = _require_steps_per_epoch("linear", steps_per_epoch)
    total = kwargs.pop("total_steps", steps * config.max_epochs)
    # Warmup rounds up (as HF's warmup_ratio does): a fraction > 0 warms up at least one step.
    warmup = kwargs.pop("warmup_steps", math.ceil(config.warmup_fraction * total))
    return lr_scheduler.LambdaLR(optimizer, LinearWarmupDecay(warmup, total), **kwargs)


# name -> factory(optimizer, config, steps_per_epoch, **kwargs) -> scheduler
SCHEDULERS: dict[str, Callable[..., Scheduler]] = {
    "step": _step,
    "cosine": _cosine,
    "plateau": _plateau,
    "one_cycle": _one_cycle,
    "linear": _linear,  # warmup (config.warmup_fraction of all steps), then decay to 0
}

_INTERVALS = {
    "step": "epoch",
    "cosine": "epoch",
    "plateau": "plateau",
    "one_cycle": "batch",
    "linear": "batch",
}


def scheduler_interval(name: str) -> str:
    """When scheduler `name` is stepped: "epoch", "batch" (every optimizer step) or "plateau"
    (once per epoch, with the validation loss)."""
    if name not in _INTERVALS:
        raise _accepted("scheduler_type", name, SCHEDULERS)
    return _INTERVALS[name]


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    config: ModelConfig,
    steps_per_epoch: Optional[int] = None,
    **kwargs: Any,
) -> Optional[Scheduler]:
    """Scheduler config.scheduler_type over `optimizer`, or None when scheduler_type is None.

    steps_per_epoch (optimizer steps per epoch) is required by one_cycle and linear.
    """
    name = config.scheduler_type
    if name is None:
        return None
    if name not in SCHEDULERS:
        raise _accepted("scheduler_type", name, SCHEDULERS)
    return SCHEDULERS[name](optimizer, config, steps_per_epoch, **kwargs)


class OptimizerFactory:
    """The 0.x API's namespace, kept for compatibility over OPTIMIZERS."""

    create_optimizer = staticmethod(create_optimizer)


class SchedulerFactory:
    """The 0.x API's namespace, kept for compatibility over SCHEDULERS."""

    create_scheduler = staticmethod(create_scheduler)
    scheduler_interval = staticmethod(scheduler_interval)


__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "AdaBelief",
    "LinearWarmupDecay",
    "Lion",
    "OptimizerFactory",
    "SchedulerFactory",
    "create_optimizer",
    "create_scheduler",
    "param_groups",
    "scheduler_interval",
]
