"""What the three reference models share: checking their inputs and choosing their initialiser."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from fbdl_fast.config import ModelConfig
from fbdl_fast.models.init import initialize


def check_inputs(
    input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], config: ModelConfig
) -> torch.Tensor:
    """Assert the batch's shapes and return the (B, L) boolean mask, True on real tokens.

    Without attention_mask, every id other than config.pad_token_id counts as a real token.
    """
    assert input_ids.dim() == 2, (
        f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}"
    )
    assert input_ids.shape[1] >= 1, "input_ids has length 0; pad every batch to at least 1 token"
    assert not input_ids.is_floating_point(), (
        f"input_ids must hold integer token ids, got dtype {input_ids.dtype}"
    )
    if attention_mask is None:
        return input_ids != config.pad_token_id
    assert attention_mask.shape == input_ids.shape, (
        f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
        f"{tuple(input_ids.shape)}"
    )
    return attention_mask.bool()


def apply_init(model: nn.Module, name: Optional[str], default: Callable[[], None]) -> None:
    """Initialise `model` with the registry initialiser `name`, or with `default` when None.

    Either way the padding row of model.embedding stays zero, as nn.Embedding(padding_idx=...)
    promises, whatever the initialiser did to it.
    """
    if name is None:
        default()
    else:
        initialize(model, name)
    embedding: nn.Embedding = model.embedding  # type: ignore[assignment]
    if embedding.padding_idx is not None:
        with torch.no_grad():
            embedding.weight[embedding.padding_idx].zero_()
