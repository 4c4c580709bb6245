"""Self-attention whose projections dynamic int8 can quantize.

torch.nn.MultiheadAttention (and fbdl_fast.nn's drop-in) keeps its input projection as a raw
Parameter (in_proj_weight) and its output projection as a NonDynamicallyQuantizableLinear, so
`quantize_dynamic` leaves both in fp32: in a transformer they are a third of the encoder's
matrix work. `LinearAttention` computes the same attention with both projections as plain
nn.Linear layers (q, k and v stacked in one, as in_proj_weight stacks them) and the attention
itself in torch's scaled_dot_product_attention; `with_linear_attention` swaps it in for every
attention that allows it, on a copy, before the int8 export quantizes the copy.

Swapped: batch-first or not, q/k/v of one width (one stacked in_proj_weight), without
add_bias_kv or add_zero_attn. Others stay as they are (fp32 projections). The swapped layer
serves what fbdl_fast's models ask of an attention: need_weights=False, a key_padding_mask
(bool, True where the key is padding, or float and added to the scores), an attn_mask (bool,
True where attention is NOT allowed, as torch's, or float and added).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class LinearAttention(nn.Module):
    """nn.MultiheadAttention's self-attention with `in_proj` (E -> 3E) and `out_proj` (E -> E)
    as nn.Linear layers, for dynamic int8; made from an attention by `from_attention`."""

    def __init__(
        self, embed_dim: int, num_heads: int, dropout: float, batch_first: bool, bias: bool
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}; accepted: "
                "a multiple of num_heads"
            )
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.dropout, self.batch_first = dropout, batch_first
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def from_attention(cls, attention: nn.MultiheadAttention) -> LinearAttention:
        """The same attention, its weights copied (the stacked q/k/v rows as they are)."""
        bias = attention.in_proj_bias is not None
        layer = cls(
            attention.embed_dim,
            attention.num_heads,
            attention.dropout,
            attention.batch_first,
            bias,
        )
        with torch.no_grad():
            layer.in_proj.weight.copy_(attention.in_proj_weight)
            layer.out_proj.weight.copy_(attention.out_proj.weight)
            if bias:
                layer.in_proj.bias.copy_(attention.in_proj_bias)
                layer.out_proj.bias.copy_(attention.out_proj.bias)
        return layer.train(attention.training)

    def _project(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, L, E): one stacked projection for self-attention; otherwise each input
        through the whole projection, keeping its third (the projection may be int8, whose
        weight cannot be split)."""
        if query is key and key is value:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
            return q, k, v
        q = self.in_proj(query).chunk(3, dim=-1)[0]
        k = self.in_proj(key).chunk(3, dim=-1)[1]
        v = self.in_proj(value).chunk(3, dim=-1)[2]
        return q, k, v

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[torch.Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        """nn.MultiheadAttention.forward for batched inputs with need_weights=False:
        (output, None)."""
        if need_weights:
            raise ValueError(
                "LinearAttention: need_weights=True asks for the attention weights, which this "
                "int8 attention never forms; accepted: need_weights=False"
            )
        if query.dim() != 3:
            raise ValueError(
                f"LinearAttention: query has {query.dim()} dims; accepted: batched inputs (3 dims)"
            )
        if not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        B, Lq, E = query.shape
        Lk, H = key.shape[1], self.num_heads
        q, k, v = self._project(query, key, value)
        q = q.reshape(B, Lq, H, E // H).transpose(1, 2)  # (B, H, Lq, Dh)
        k = k.reshape(B, Lk, H, E // H).transpose(1, 2)  # (B, H, Lk, Dh)
        v = v.reshape(B, Lk, H, E // H).transpose(1, 2)  # (B, H, Lk, Dh)
        mask = _scores_mask(key_padding_mask, attn_mask, B, Lq, Lk, H, q.dtype)
        dropout_p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        out = self.out_proj(out.transpose(1, 2).reshape(B, Lq, E))  # (B, Lq, E)
        return (out if self.batch_first else out.transpose(0, 1)), None


def _as_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """torch MHA's mask convention (bool True = not attended, or float added) as a float mask."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)


def _scores_mask(
    key_padding_mask: Optional[torch.Tensor],
    attn_mask: Optional[torch.Tensor],
    batch: int,
    queries: int,
    keys: int,
    heads: int,
    dtype: torch.dtype,
) -> Optional[torch.Tensor]:
    """The mask SDPA takes, broadcastable to (B, H, Lq, Lk): a bool one (True = attended) for
    a bool key padding mask alone, the cheap common case; otherwise the float sum."""
    if attn_mask is None and key_padding_mask is not None and key_padding_mask.dtype == torch.bool:
        return ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Lk)
    total: Optional[torch.Tensor] = None
    if key_padding_mask is not None:
        total = _as_additive(key_padding_mask, dtype)[:, None, None, :]
    if attn_mask is not None:
        extra = _as_additive(attn_mask, dtype)
        # torch's attn_mask is (Lq, Lk) or (B * H, Lq, Lk)
        extra = extra.reshape(batch, heads, queries, keys) if extra.dim() == 3 else extra
        total = extra if total is None else total + extra
    return total


def swappable(module: nn.Module) -> bool:
    """True for an nn.MultiheadAttention (or subclass) that LinearAttention computes exactly:
    one stacked in_proj_weight, no add_bias_kv, no add_zero_attn."""
    return (
        isinstance(module, nn.MultiheadAttention)
        and module._qkv_same_embed_dim
        and module.in_proj_weight is not None
        and module.bias_k is None
        and not module.add_zero_attn
    )


def with_linear_attention(model: nn.Module) -> nn.Module:
    """A copy of `model` with every `swappable` attention replaced by its LinearAttention (the
    same name: NAME.in_proj and NAME.out_proj are its projections); `model` is unchanged."""
    swapped = copy.deepcopy(model)
    for name, module in list(swapped.named_modules()):
        if not name or not swappable(module):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = swapped.get_submodule(parent_name) if parent_name else swapped
        setattr(parent, child, LinearAttention.from_attention(module))
    return swapped


def attention_layers(model: nn.Module) -> list[str]:
    """The names of `model`'s attentions that `with_linear_attention` swaps."""
    return [name for name, module in model.named_modules() if name and swappable(module)]
