"""Drop-in attention: torch's signatures, the fused kernel where it applies.

- `scaled_dot_product_attention`: torch.nn.functional's signature and mask convention (a boolean
  attn_mask is True where attention takes part). A key mask (broadcastable as [B, 1, 1, Lk]) or no
  mask goes through fbdl_fast.ops.attention (the kernel, or its reference); any other mask, and
  inputs that are not [B, H, L, D] alike, go to torch's own SDPA. Unlike torch, a key mask may be
  combined with is_causal.
- `MultiheadAttention`: a torch.nn.MultiheadAttention (same constructor, parameters and
  state_dict) whose forward runs the projections in torch and the attention in the kernel.
  Everything the kernel cannot express runs torch's own forward: need_weights=True,
  add_bias_kv, add_zero_attn, unbatched inputs, float key padding masks other than 0 / -inf, an
  attn_mask without the is_causal hint (with it, the kernel's causal masking is used, as torch
  trusts the hint), head dims outside (16, 32, 64, 128); and so does every call for which
  dispatch picks the reference (FBDL_FAST_BACKEND=torch, CPU tensors without the interpreter).

Mask conventions differ and are converted here: torch's MHA key_padding_mask is True where the
key is PADDED (ignored), SDPA's attn_mask and the op's key_mask are True where it takes part.
A query whose keys are all masked gets zeros from the kernel (torch gives NaN or zeros depending on
its backend).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from fbdl_fast.ops import attention as attention_op
from fbdl_fast.ops import decide, reference_at_once


def _key_mask(attn_mask: torch.Tensor, batch: int, keys: int) -> Optional[torch.Tensor]:
    """attn_mask as a bool [B, Lk] key mask if it is one (broadcastable as [B, 1, 1, Lk])."""
    if attn_mask.dtype != torch.bool or attn_mask.dim() > 4 or attn_mask.dim() == 0:
        return None
    shape = (1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape)  # left-pad like broadcasting
    if shape[1] != 1 or shape[2] != 1 or shape[3] != keys or shape[0] not in (1, batch):
        return None
    return attn_mask.reshape(shape[0], keys).expand(batch, keys)


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """torch.nn.functional.scaled_dot_product_attention, fused for key masks and causal masks.

    query [B, H, Lq, D], key [B, H, Lk, D], value [B, H, Lk, Dv]; attn_mask bool, True where
    attention takes part. Dropout applies whenever dropout_p > 0 (as in torch: pass 0.0 in eval).
    """
    kernel_shaped = (
        query.dim() == key.dim() == value.dim() == 4
        and query.shape[:2] == key.shape[:2] == value.shape[:2]
    )
    key_mask = None
    if attn_mask is not None and kernel_shaped:
        key_mask = _key_mask(attn_mask, query.shape[0], key.shape[2])
    if not kernel_shaped or (attn_mask is not None and key_mask is None):
        return F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
        )
    return attention_op.dispatch(query, key, value, key_mask, is_causal, scale, dropout_p)


def _padding_to_key_mask(
    key_padding_mask: Optional[torch.Tensor],
) -> tuple[Optional[torch.Tensor], Optional[str]]:
    """torch's key_padding_mask (True = padded, or float and added) as (key mask, None), where
    True = takes part; or (None, why not) when it is not a plain padding mask."""
    if key_padding_mask is None:
        return None, None
    if key_padding_mask.dtype == torch.bool:
        return ~key_padding_mask, None
    if key_padding_mask.is_floating_point():
        # torch's own layers turn bool masks into 0 / -inf float masks before calling attention:
        # that is padding. Any other value is an additive bias the kernel does not take.
        padded = key_padding_mask == float("-inf")
        if bool((padded | (key_padding_mask == 0)).all()):  # one host sync
            return ~padded, None
        return None, "a float key_padding_mask with values other than 0 and -inf"
    return None, f"key_padding_mask of dtype {key_padding_mask.dtype} (accepted: bool, float)"


class MultiheadAttention(torch.nn.MultiheadAttention):
    """torch.nn.MultiheadAttention with the attention itself in the fused kernel.

    Same constructor, parameters and state_dict as torch's (a torch state_dict loads as is);
    forward returns (output, None) on the fused path and exactly torch's result elsewhere.
    """

    def _unsupported(
        self,
        query: torch.Tensor,
        need_weights: bool,
        attn_mask: Optional[torch.Tensor],
        is_causal: bool,
    ) -> Optional[str]:
        """None when the fused forward can run these arguments (masks aside), else why not."""
        if need_weights:
            return "need_weights=True asks for the (L, S) weights, which the kernel never forms"
        if self.bias_k is not None or self.add_zero_attn:
            return "add_bias_kv / add_zero_attn are not in the kernel"
        if query.dim() != 3:
            return f"unbatched input (query has {query.dim()} dims)"
        if attn_mask is not None and not is_causal:
            return "an attn_mask other than the causal hint (is_causal=True)"
        if self.head_dim not in attention_op.HEAD_DIMS:
            return f"head_dim {self.head_dim} not in {attention_op.HEAD_DIMS}"
        return None

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
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """torch.nn.MultiheadAttention.forward; (output, None) on the fused path."""
        if is_causal and attn_mask is None:  # torch's rule: is_causal is only a hint
            raise RuntimeError(
                "MultiheadAttention: is_causal=True needs attn_mask (the causal "
                "mask it describes); pass both, or neither"
            )
        # The early exit first: CPU outside the interpreter, or backend torch, runs torch's own.
        if not reference_at_once(query):
            reason = self._unsupported(query, need_weights, attn_mask, is_causal)
            masks = () if key_padding_mask is None else (key_padding_mask,)
            tensors = (query, key, value, *masks)
            if decide(attention_op.OP, tensors, reason).path == "triton":
                # Checked only now: a float mask costs a host sync, worth it only for the kernel.
                key_mask, reason = _padding_to_key_mask(key_padding_mask)
                if reason is None or decide(attention_op.OP, tensors, reason).path == "triton":
                    return self._fused_forward(query, key, value, key_mask, is_causal), None
        return super().forward(
            query,
            key,
            value,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )

    def _fused_forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_mask: Optional[torch.Tensor],
        causal: bool,
    ) -> torch.Tensor:
        """Projections in torch, attention by dispatch; key_mask is True where a key takes part."""
        self_attention = self._qkv_same_embed_dim and query is key and key is value
        if not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        B, Lq, E = query.shape
        Lk = key.shape[1]
        H, Dh = self.num_heads, self.head_dim
        bias = self.in_proj_bias
        b_q, b_k, b_v = (None, None, None) if bias is None else bias.chunk(3)
        if self_attention:  # one projection instead of three
            q, k, v = F.linear(query, self.in_proj_weight, bias).chunk(3, dim=-1)
        else:
            if self._qkv_same_embed_dim:
                w_q, w_k, w_v = self.in_proj_weight.chunk(3)
            else:
                w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
            q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        q = q.reshape(B, Lq, H, Dh).transpose(1, 2)  # (B, H, Lq, Dh): a view, no copy
        k = k.reshape(B, Lk, H, Dh).transpose(1, 2)  # (B, H, Lk, Dh)
        v = v.reshape(B, Lk, H, Dh).transpose(1, 2)  # (B, H, Lk, Dh)
        dropout_p = self.dropout if self.training else 0.0
        out = attention_op.dispatch(q, k, v, key_mask, causal, None, dropout_p)  # (B, H, Lq, Dh)
        out = out.transpose(1, 2).reshape(B, Lq, E)  # (B, Lq, E)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        return out if self.batch_first else out.transpose(0, 1)


__all__ = ["MultiheadAttention", "scaled_dot_product_attention"]
