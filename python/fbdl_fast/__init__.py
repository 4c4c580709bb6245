"""fbdl_fast: fast, trustworthy text classifiers for social-media posts.

A Rust tokenizer turns posts into id arrays, reference PyTorch models (Transformer,
bidirectional LSTM, multi-kernel CNN) classify them, and fused Triton kernels (LayerNorm, focal
loss, attention) replace the hot layers where a GPU is present.

Importing the package is cheap: torch and Triton load on first use of a name that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fbdl_fast._tokenizer import __version__

# The public API: name -> module that defines it. Resolved lazily by __getattr__ below.
_PUBLIC = {
    "Tokenizer": "fbdl_fast.tokenizer",
    "ModelConfig": "fbdl_fast.config",
    "create_model": "fbdl_fast.models",
    "create_facebook_posts_model": "fbdl_fast.models",
    "FacebookPostsTransformer": "fbdl_fast.models",
    "FacebookPostsLSTM": "fbdl_fast.models",
    "FacebookPostsCNN": "fbdl_fast.models",
    "Trainer": "fbdl_fast.training.trainer",
    "FacebookPostsTrainer": "fbdl_fast.training.trainer",
    "History": "fbdl_fast.training.trainer",
    "load_run": "fbdl_fast.training.loading",
    "Run": "fbdl_fast.training.loading",
    "load_ensemble": "fbdl_fast.training.ensemble",
    "Ensemble": "fbdl_fast.training.ensemble",
    "WeightInitializer": "fbdl_fast.models.init",
    "NormalizationLayers": "fbdl_fast.models.norms",
    "LossFunctions": "fbdl_fast.training.losses",
    "OptimizerFactory": "fbdl_fast.training.optim",
    "SchedulerFactory": "fbdl_fast.training.optim",
    "backend": "fbdl_fast.ops",
    "patch": "fbdl_fast.nn.patch",
    "unpatch": "fbdl_fast.nn.patch",
    "train": "fbdl_fast.training.session",
}

__all__ = [  # noqa: RUF022 (grouped by purpose, not sorted)
    "__version__",
    "Tokenizer",
    "ModelConfig",
    "create_model",
    "create_facebook_posts_model",
    "FacebookPostsTransformer",
    "FacebookPostsLSTM",
    "FacebookPostsCNN",
    "Trainer",
    "FacebookPostsTrainer",
    "History",
    "load_run",
    "Run",
    "load_ensemble",
    "Ensemble",
    "WeightInitializer",
    "NormalizationLayers",
    "LossFunctions",
    "OptimizerFactory",
    "SchedulerFactory",
    "backend",
    "patch",
    "unpatch",
    "train",
]
assert set(__all__) == {"__version__", *_PUBLIC}, "keep __all__ and _PUBLIC in step"

if TYPE_CHECKING:
    from fbdl_fast.config import ModelConfig
    from fbdl_fast.models import (
        FacebookPostsCNN,
        FacebookPostsLSTM,
        FacebookPostsTransformer,
        create_facebook_posts_model,
        create_model,
    )
    from fbdl_fast.models.init import WeightInitializer
    from fbdl_fast.models.norms import NormalizationLayers
    from fbdl_fast.nn.patch import patch, unpatch
    from fbdl_fast.ops import backend
    from fbdl_fast.tokenizer import Tokenizer
    from fbdl_fast.training.ensemble import Ensemble, load_ensemble
    from fbdl_fast.training.loading import Run, load_run
    from fbdl_fast.training.losses import LossFunctions
    from fbdl_fast.training.optim import OptimizerFactory, SchedulerFactory
    from fbdl_fast.training.session import train
    from fbdl_fast.training.trainer import FacebookPostsTrainer, History, Trainer


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'fbdl_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
