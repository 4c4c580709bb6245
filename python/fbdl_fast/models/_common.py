"""What the models share: checking their inputs and choosing their initialiser."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from fbdl_fast.config import ModelConfig
from fbdl_fast.models.init import initialize


def check_inputs(
    input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], config: ModelConfig
) -> torch.Tensor:
    """Check the batch and return the (B, L) boolean mask, True on real tokens.

    Without attention_mask, every id other than config.pad_token_id counts as a real token.
    Raises ValueError for a batch the model would otherwise misread: not (B, L) integer ids of
    at least one token, a mask of another shape, or an id outside [0, config.vocab_size). Raised,
    not asserted: `python -O` strips asserts, and then a misread batch gives wrong logits
    silently (the n-gram model reads an id past the vocabulary as one of its hashed rows).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] < 1:
        raise ValueError("input_ids has length 0; pad every batch to at least 1 token")
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    check_id_range(input_ids, config.vocab_size)
    if attention_mask is None:
        return input_ids != config.pad_token_id
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
            f"{tuple(input_ids.shape)}"
        )
    return attention_mask.bool()


def check_id_range(
    input_ids: torch.Tensor,
    vocab_size: int,
    name: str = "input_ids",
    hint: str = "encode the posts with the run's own tokenizer",
) -> None:
    """ValueError when an id of `name` is outside [0, vocab_size), naming the first such id.

    A check of the values, so not while a graph is traced (torch.compile, torch.export,
    TorchScript: the graph must not branch on data). On a GPU it is an asynchronous device
    assert: reading the values back on the host would wait for the GPU at every batch.
    """
    if tracing() or input_ids.numel() == 0:
        return
    if input_ids.is_cuda:
        torch._assert_async(
            ((input_ids >= 0) & (input_ids < vocab_size)).all(), f"{name} outside [0, {vocab_size})"
        )
        return
    outside = (input_ids < 0) | (input_ids >= vocab_size)
    if bool(outside.any()):
        first = int(input_ids[outside][0])
        raise ValueError(f"{name} holds id {first}, outside [0, {vocab_size}): {hint}")


def check_length(length: int, max_seq_length: int) -> None:
    """ValueError when a batch is longer than the model's position table."""
    if length > max_seq_length:
        raise ValueError(f"sequence length {length} exceeds config.max_seq_length={max_seq_length}")


def tracing() -> bool:
    """True while torch.export, torch.compile or TorchScript traces the model: the graph they
    record must compute everything from the weights, with no cache of Python's and no branch
    on the values of a batch."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


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
