"""Optimisers and learning-rate schedulers by name.

`create_optimizer(model, config)` builds config.optimizer_type over the model's trainable
parameters with config.learning_rate and config.weight_decay; `create_scheduler(optimizer, config,
steps_per_epoch)` builds config.scheduler_type. Schedulers differ in when they are stepped, and
`scheduler_interval(name)` says which, so the trainer needs no isinstance checks:

- "epoch"   (step, cosine): `scheduler.step()` once after each epoch;
- "plateau" (plateau):      `scheduler.step(val_loss)` once after each validation;
- "batch"   (one_cycle):    `scheduler.step()` after every optimizer step.

Keyword arguments override any default below (e.g. `create_optimizer(m, c, momentum=0.5)`).
The seed's `OptimizerFactory` / `SchedulerFactory` namespaces are thin facades.
"""

from __future__ import annotations

from collections.abc import Iterable
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


# name -> factory(params, lr=..., weight_decay=..., **kwargs) -> Optimizer
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    # Adam: weight_decay is L2 added to the gradient; AdamW: decoupled decay (the design's default).
    "adam": _optimizer(torch.optim.Adam, betas=(0.9, 0.999), eps=1e-8),
    "adamw": _optimizer(torch.optim.AdamW, betas=(0.9, 0.999), eps=1e-8),
    "sgd": _optimizer(torch.optim.SGD, momentum=0.9, nesterov=True),
    "rmsprop": _optimizer(torch.optim.RMSprop, alpha=0.99, eps=1e-8, momentum=0.9),
    "adagrad": _optimizer(torch.optim.Adagrad, eps=1e-10),
}


def _accepted(kind: str, name: Any, registry: dict[str, Any]) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; accepted: {', '.join(sorted(registry))}")


def create_optimizer(model: Params, config: ModelConfig, **kwargs: Any) -> torch.optim.Optimizer:
    """Optimizer config.optimizer_type over `model`'s trainable parameters.

    `model` may also be an iterable of parameters or of param-group dicts. lr is
    config.learning_rate and weight_decay config.weight_decay unless kwargs say otherwise.
    """
    name = config.optimizer_type
    if name not in OPTIMIZERS:
        raise _accepted("optimizer_type", name, OPTIMIZERS)
    if isinstance(model, nn.Module):
        params: list[Any] = [p for p in model.parameters() if p.requires_grad]
    else:
        params = list(model)
    if not params:
        raise ValueError(f"optimizer {name!r}: the model has no trainable parameters")
    options = {"lr": config.learning_rate, "weight_decay": config.weight_decay, **kwargs}
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


def _one_cycle(
    optimizer: torch.optim.Optimizer,
    config: ModelConfig,
    steps_per_epoch: Optional[int],
    **kwargs: Any,
) -> Scheduler:
    if not (isinstance(steps_per_epoch, int) and steps_per_epoch >= 1):
        raise ValueError(
            f"scheduler 'one_cycle' steps every batch: steps_per_epoch={steps_per_epoch!r} is "
            "invalid; pass the number of batches per epoch (a positive integer)"
        )
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


# name -> factory(optimizer, config, steps_per_epoch, **kwargs) -> scheduler
SCHEDULERS: dict[str, Callable[..., Scheduler]] = {
    "step": _step,
    "cosine": _cosine,
    "plateau": _plateau,
    "one_cycle": _one_cycle,
}

_INTERVALS = {"step": "epoch", "cosine": "epoch", "plateau": "plateau", "one_cycle": "batch"}


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

    steps_per_epoch (batches per epoch) is required by one_cycle only.
    """
    name = config.scheduler_type
    if name is None:
        return None
    if name not in SCHEDULERS:
        raise _accepted("scheduler_type", name, SCHEDULERS)
    return SCHEDULERS[name](optimizer, config, steps_per_epoch, **kwargs)


class OptimizerFactory:
    """The seed's namespace over OPTIMIZERS."""

    create_optimizer = staticmethod(create_optimizer)


class SchedulerFactory:
    """The seed's namespace over SCHEDULERS."""

    create_scheduler = staticmethod(create_scheduler)
    scheduler_interval = staticmethod(scheduler_interval)


__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "OptimizerFactory",
    "SchedulerFactory",
    "create_optimizer",
    "create_scheduler",
    "scheduler_interval",
]
