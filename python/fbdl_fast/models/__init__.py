"""The three reference classifiers, by name.

Every model maps a padded batch to logits: `model(input_ids, attention_mask) -> (B, num_classes)`
with input_ids (B, L) and attention_mask (B, L) True on real tokens; padding never changes the
output. create_model draws the initial weights from config.seed, so the same config gives the same
model, without touching the global random state.
"""

from __future__ import annotations

import torch
from torch import nn

from fbdl_fast.config import ModelConfig
from fbdl_fast.models.cnn import FacebookPostsCNN
from fbdl_fast.models.lstm import FacebookPostsLSTM
from fbdl_fast.models.transformer import FacebookPostsTransformer

MODELS: dict[str, type[nn.Module]] = {
    "transformer": FacebookPostsTransformer,
    "lstm": FacebookPostsLSTM,
    "cnn": FacebookPostsCNN,
}


def create_model(name: str, config: ModelConfig) -> nn.Module:
    """Build the model registered as `name` ("transformer", "lstm" or "cnn") from `config`."""
    if name not in MODELS:
        raise ValueError(f"model name {name!r} is not known; accepted: {', '.join(MODELS)}")
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a fbdl_fast.ModelConfig, got {type(config).__name__}")
    with torch.random.fork_rng(devices=[]):  # weights from config.seed; global RNG untouched
        torch.manual_seed(config.seed)
        return MODELS[name](config)


create_facebook_posts_model = create_model  # the product design's name

__all__ = [
    "MODELS",
    "FacebookPostsCNN",
    "FacebookPostsLSTM",
    "FacebookPostsTransformer",
    "create_facebook_posts_model",
    "create_model",
]
