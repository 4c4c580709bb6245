"""The three reference classifiers and the BERT encoder, by name.

Every model maps a padded batch to logits: `model(input_ids, attention_mask) -> (B, num_classes)`
with input_ids (B, L) and attention_mask (B, L) True on real tokens; padding never changes the
output. create_model draws the initial weights from config.seed, so the same config gives the same
model, without touching the global random state.

"bert" (models/bert.py) can also start from pretrained weights: create_model("bert", config,
pretrained="all-minilm-l6-v2" or a BERT-format folder). The checkpoint's config.json then sets the
architecture (input_dim, hidden_dim, num_layers, num_heads, vocab_size, pad_token_id,
type_vocab_size, layer_norm_eps, and max_seq_length: the checkpoint's position table, cut to
config.max_seq_length when that is shorter); everything else (num_classes, dropout, pooling,
fused, seed for the new head) comes from `config`. The returned model's config is that merged one,
and its extra["pretrained"] records the weights' source, file and sha256, so a run that saves its
config says where its weights came from. A saved model is rebuilt with create_model("bert",
model.config) and its state_dict: the merged config has the checkpoint's sizes.

MODELS holds the from-scratch models (the three reference models and "ngram", the hashed
n-gram baseline of models/ngram.py), PRETRAINED_MODELS the encoders; `model_name(model)`
names a model of either (what a checkpoint records to rebuild it), and FINE_TUNED maps the
`fbdl-fast train --model` names of pretrained checkpoints ("minilm") to (model, checkpoint).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from fbdl_fast.config import ModelConfig
from fbdl_fast.models import bert
from fbdl_fast.models.bert import BertClassifier
from fbdl_fast.models.cnn import FacebookPostsCNN
from fbdl_fast.models.lstm import FacebookPostsLSTM
from fbdl_fast.models.ngram import NgramClassifier
from fbdl_fast.models.transformer import FacebookPostsTransformer

MODELS: dict[str, type[nn.Module]] = {
    "transformer": FacebookPostsTransformer,
    "lstm": FacebookPostsLSTM,
    "cnn": FacebookPostsCNN,
    "ngram": NgramClassifier,  # the fastText-style baseline every run is compared with
}
# Encoders that can load pretrained weights (create_model's `pretrained`).
PRETRAINED_MODELS: dict[str, type[nn.Module]] = {"bert": BertClassifier}
# Pretrained checkpoints by the name a run folder records: name -> (create_model name, pretrained).
FINE_TUNED: dict[str, tuple[str, str]] = {"minilm": ("bert", "all-minilm-l6-v2")}


def model_name(model: nn.Module) -> Optional[str]:
    """The create_model() name of `model`'s class ("transformer", ..., "bert"); None for a
    model create_model cannot build."""
    known = {**MODELS, **PRETRAINED_MODELS}
    return next((name for name, cls in known.items() if type(model) is cls), None)


def architecture(name: str) -> str:
    """The create_model() name behind a run's model name: "minilm" -> "bert", others as is."""
    return FINE_TUNED[name][0] if name in FINE_TUNED else name


def pretrained_model_config(
    config: ModelConfig, pretrained: Union[str, os.PathLike[str]]
) -> ModelConfig:
    """`config` merged with the BERT checkpoint `pretrained` (a known name or a folder): its
    sizes (see the module docstring), and extra["pretrained"] = {name, file, sha256} of its
    weights. What create_model(..., pretrained=) builds; a run saves it to be rebuilt later."""
    folder = bert.resolve_pretrained(pretrained)
    weights = bert.weights_file(folder)
    source = {"name": os.fspath(pretrained), "file": str(weights.resolve())}
    source["sha256"] = bert.sha256(weights)
    config = bert.pretrained_config(config, folder)
    return dataclasses.replace(config, extra={**config.extra, "pretrained": source})


def create_model(
    name: str,
    config: ModelConfig,
    *,
    pretrained: Optional[Union[str, os.PathLike[str]]] = None,
) -> nn.Module:
    """Build the model registered as `name` ("transformer", "lstm", "cnn", "ngram" or "bert") from
    `config`; for "bert", `pretrained` (a known name or a BERT-format folder) loads its weights."""
    known = {**MODELS, **PRETRAINED_MODELS}
    if name not in known:
        raise ValueError(f"model name {name!r} is not known; accepted: {', '.join(known)}")
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a fbdl_fast.ModelConfig, got {type(config).__name__}")
    if pretrained is not None and name not in PRETRAINED_MODELS:
        raise ValueError(
            f"model {name!r} has no pretrained weights; pretrained= is accepted for: "
            f"{', '.join(PRETRAINED_MODELS)}"
        )
    weights = None
    if pretrained is not None:
        config = pretrained_model_config(config, pretrained)
        weights = Path(config.extra["pretrained"]["file"])
    with torch.random.fork_rng(devices=[]):  # weights from config.seed; global RNG untouched
        torch.manual_seed(config.seed)
        model = known[name](config)
    if weights is not None:
        bert.load_pretrained(model, weights)  # type: ignore[arg-type]
    return model


create_facebook_posts_model = create_model  # the product design's name

__all__ = [
    "FINE_TUNED",
    "MODELS",
    "PRETRAINED_MODELS",
    "BertClassifier",
    "FacebookPostsCNN",
    "FacebookPostsLSTM",
    "FacebookPostsTransformer",
    "NgramClassifier",
    "architecture",
    "create_facebook_posts_model",
    "create_model",
    "model_name",
    "pretrained_model_config",
]
