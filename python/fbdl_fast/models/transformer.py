"""FacebookPostsTransformer: a pre-LN Transformer encoder that classifies a padded batch of posts.

token embedding + learned position table -> num_layers blocks of
(LayerNorm -> multi-head self-attention with a key padding mask -> residual,
 LayerNorm -> feed-forward (input_dim -> hidden_dim -> input_dim) -> residual)
-> final LayerNorm -> mean over the real tokens -> linear head to num_classes.

Pre-LN (normalise the input of each sub-layer, keep the residual stream un-normalised) rather than
the original post-LN: gradients reach the lower blocks undamped, so training is stable without a
learning-rate warm-up, which the design's plain schedulers do not provide.

Padding never changes the output: padded keys get no attention weight and padded positions are
left out of the pooling. With config.fused the LayerNorm and attention layers are fbdl_fast.nn's
fused drop-ins, otherwise torch.nn's (the reference); both have the same state_dict.

References: Vaswani et al. 2017, "Attention Is All You Need"; Xiong et al. 2020, "On Layer
Normalization in the Transformer Architecture" (pre-LN); nanoGPT's model.py (layout, init).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

import fbdl_fast.nn
from fbdl_fast.config import ModelConfig
from fbdl_fast.models._common import apply_init, check_inputs, check_length


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.input_dim, config.hidden_dim)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(config.hidden_dim, config.input_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.gelu(self.fc(x)))


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers = fbdl_fast.nn if config.fused else nn
        self.ln_1 = layers.LayerNorm(config.input_dim)
        self.attn = layers.MultiheadAttention(
            config.input_dim, config.num_heads, dropout=config.dropout, batch_first=True
        )
        self.ln_2 = layers.LayerNorm(config.input_dim)
        self.mlp = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        h, _ = self.attn(h, h, h, key_padding_mask=key_padding_mask, need_weights=False)
        x = x + self.dropout(h)
        x = x + self.dropout(self.mlp(self.ln_2(x)))
        return x  # (B, L, D)


class FacebookPostsTransformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        D = config.input_dim
        self.embedding = nn.Embedding(config.vocab_size, D, padding_idx=config.pad_token_id)
        # Drawn here, not in _init_weights: a named initialiser (config.init) visits modules only.
        self.position_encoding = nn.Parameter(torch.randn(config.max_seq_length, D) * 0.02)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([TransformerBlock(config) for _ in range(config.num_layers)])
        layers = fbdl_fast.nn if config.fused else nn
        self.ln_f = layers.LayerNorm(D)  # pre-LN leaves the residual stream un-normalised
        self.output_projection = nn.Linear(D, config.num_classes)
        apply_init(self, config.init, self._init_weights)

    def _init_weights(self) -> None:
        # nanoGPT's scheme: N(0, 0.02) for every matrix (embeddings, position table, attention
        # and feed-forward weights), zero biases, LayerNorm gains left at one. Matched by shape and
        # name so fused and reference layers get the same treatment.
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """input_ids (B, L) and attention_mask (B, L), True on real tokens -> logits (B, C).

        Without attention_mask, every id other than config.pad_token_id counts as a real token.
        """
        mask = check_inputs(input_ids, attention_mask, self.config)  # (B, L) bool
        L, max_len = input_ids.shape[1], self.config.max_seq_length
        check_length(L, max_len)
        x = self.embedding(input_ids) + self.position_encoding[:L]  # (B, L, D)
        x = self.dropout(x)

        # A post with no real token would have every key masked, and a softmax over nothing is
        # NaN. Such rows attend to their padding instead; the pooling below discards the result.
        has_tokens = mask.any(dim=1)  # (B,)
        key_padding_mask = ~mask & has_tokens[:, None]  # (B, L), True = ignore this key
        for block in self.blocks:
            x = block(x, key_padding_mask)  # (B, L, D)
        x = self.ln_f(x)

        # Mean over the real tokens only; an empty post pools to zeros (logits = head bias).
        x = x.masked_fill(~mask[:, :, None], 0.0)  # (B, L, D)
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)  # (B, 1)
        pooled = x.sum(dim=1) / count  # (B, D)
        return self.output_projection(self.dropout(pooled))  # (B, C)
