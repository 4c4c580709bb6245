"""Weight initialisation by name: `initialize(model, "xavier_uniform")`.

Each entry of INITIALIZERS initialises ONE module in place (not its children) and is a no-op for
modules it does not know, so `model.apply(INITIALIZERS[name])` and `initialize(model, name)` are the
same thing. What each module gets:

- Linear, Conv1d/2d/3d: the weight is drawn by the initialiser, the bias is zeroed.
- Embedding: the weight is drawn by the initialiser and the padding row is zeroed again, so padding
  keeps embedding to zero.
- LSTM/GRU/RNN: every weight_ih_l*/weight_hh_l* matrix is initialised gate block by gate block
  (the stacked (G*H, in) matrix holds G independent gates; drawing the whole stack at once would
  compute the fans of a G-times taller matrix and, for orthogonal, mix the gates), biases zeroed.
- MultiheadAttention: the packed in-projection is initialised q/k/v block by block, its bias
  zeroed; the output projection is a Linear and handled as one.

Normalisation layers are left alone: their weight-1/bias-0 default is already the right start.
The 0.x API's `WeightInitializer` namespace is kept as a thin facade over the registry.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

TensorInit = Callable[[torch.Tensor], object]  # torch.nn.init functions return the tensor

# Module types whose weight is one matrix (or conv kernel) plus an optional bias.
_DENSE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _gate_blocks(module: nn.RNNBase) -> int:
    """Gates stacked in each weight_ih/weight_hh matrix of a recurrent layer."""
    if isinstance(module, nn.LSTM):
        return 4
    if isinstance(module, nn.GRU):
        return 3
    return 1  # nn.RNN


@torch.no_grad()
def _init_blocks(weight: torch.Tensor, blocks: int, init: TensorInit) -> None:
    """Apply `init` to each of `blocks` equal row blocks of `weight`, in place."""
    for block in weight.chunk(blocks, dim=0):  # views into weight: writes land in place
        init(block)


@torch.no_grad()
def init_module(module: nn.Module, init: TensorInit) -> None:
    """Initialise one module's own parameters with the tensor initialiser `init`; zero biases."""
    if isinstance(module, _DENSE):
        init(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        init(module.weight)
        if module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.RNNBase):
        blocks = _gate_blocks(module)
        for name, param in module.named_parameters(recurse=False):
            if name.startswith(("weight_ih", "weight_hh")):
                _init_blocks(param, blocks, init)
            elif name.startswith("weight_hr"):  # LSTM projection: one (proj, H) matrix
                init(param)
            elif name.startswith("bias"):
                nn.init.zeros_(param)
    elif isinstance(module, nn.MultiheadAttention):
        if module.in_proj_weight is not None:  # packed (3E, E): q, k, v blocks
            _init_blocks(module.in_proj_weight, 3, init)
        else:
            for proj in (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight):
                init(proj)
        if module.in_proj_bias is not None:
            nn.init.zeros_(module.in_proj_bias)


def _sparse(tensor: torch.Tensor, sparsity: float = 0.1, std: float = 0.01) -> None:
    """torch's sparse_ wants a 2-D tensor; conv kernels are viewed as (out, in * k...)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(
            f"sparse init: sparsity={sparsity!r} is invalid; expected a value in [0, 1)"
        )
    nn.init.sparse_(tensor.view(tensor.shape[0], -1), sparsity=sparsity, std=std)


_kaiming_uniform, _kaiming_normal = nn.init.kaiming_uniform_, nn.init.kaiming_normal_


def _registered(name: str, tensor_init: Callable[..., object]) -> Callable[..., None]:
    """Turn a tensor initialiser f(tensor, **kw) into a module initialiser g(module, **kw)."""

    def module_init(module: nn.Module, **kwargs: object) -> None:
        init_module(module, partial(tensor_init, **kwargs))

    module_init.__name__ = module_init.__qualname__ = name
    module_init.__doc__ = f"Initialise one module with {name} (kwargs go to torch.nn.init)."
    return module_init


# name -> initialiser(module, **kwargs); kwargs go to the torch.nn.init function
# (gain for xavier/orthogonal; a, mode, nonlinearity for kaiming; sparsity, std for sparse).
INITIALIZERS: dict[str, Callable[..., None]] = {
    "xavier_uniform": _registered("xavier_uniform", nn.init.xavier_uniform_),
    "xavier_normal": _registered("xavier_normal", nn.init.xavier_normal_),
    # He et al. for ReLU networks (gain sqrt(2)); nonlinearity= and a= can be overridden.
    "kaiming_uniform": _registered(
        "kaiming_uniform", partial(_kaiming_uniform, nonlinearity="relu")
    ),
    "kaiming_normal": _registered("kaiming_normal", partial(_kaiming_normal, nonlinearity="relu")),
    "orthogonal": _registered("orthogonal", nn.init.orthogonal_),
    "sparse": _registered("sparse", _sparse),
}


def get_initializer(name: str) -> Callable[..., None]:
    """The module initialiser registered as `name`; ValueError listing the names otherwise."""
    try:
        return INITIALIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown initializer {name!r}; accepted: {', '.join(sorted(INITIALIZERS))}"
        ) from None


def initialize(model: nn.Module, name: str, **kwargs: object) -> nn.Module:
    """Initialise every submodule of `model` (itself included) with initialiser `name`.

    kwargs are forwarded to the torch.nn.init function, e.g. `initialize(m, "orthogonal",
    gain=math.sqrt(2))`. Returns `model` so the call can be chained.
    """
    module_init = get_initializer(name)
    model.apply(partial(module_init, **kwargs))
    return model


class WeightInitializer:
    """The 0.x API's namespace, kept for compatibility: one static method per initialiser, each
    acting on a single module, so `model.apply(WeightInitializer.xavier_uniform_init)` works as
    before."""

    @staticmethod
    def xavier_uniform_init(module: nn.Module, gain: float = 1.0) -> None:
        INITIALIZERS["xavier_uniform"](module, gain=gain)

    @staticmethod
    def xavier_normal_init(module: nn.Module, gain: float = 1.0) -> None:
        INITIALIZERS["xavier_normal"](module, gain=gain)

    @staticmethod
    def kaiming_uniform_init(module: nn.Module, mode: str = "fan_in") -> None:
        INITIALIZERS["kaiming_uniform"](module, mode=mode)

    @staticmethod
    def kaiming_normal_init(module: nn.Module, mode: str = "fan_in") -> None:
        INITIALIZERS["kaiming_normal"](module, mode=mode)

    @staticmethod
    def orthogonal_init(module: nn.Module, gain: float = 1.0) -> None:
        INITIALIZERS["orthogonal"](module, gain=gain)

    @staticmethod
    def sparse_init(module: nn.Module, sparsity: float = 0.1, std: float = 0.01) -> None:
        INITIALIZERS["sparse"](module, sparsity=sparsity, std=std)

    initialize = staticmethod(initialize)


__all__ = ["INITIALIZERS", "WeightInitializer", "get_initializer", "init_module", "initialize"]
