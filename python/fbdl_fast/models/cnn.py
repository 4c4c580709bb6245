"""FacebookPostsCNN: a multi-kernel 1-D convolutional classifier for a padded batch of posts.

token embedding -> for each width k in config.kernel_sizes (3, 4, 5):
Conv1d(k, hidden_dim filters) -> batch norm -> ReLU -> max over time
-> the pooled features of every width, concatenated -> dropout -> linear head.

Padding never changes the output. Padded embeddings are zeroed before the convolution and the
time axis gets k - 1 zeros on the right, so there is one window per token, starting at it: a
window that runs past a post's end sees zeros whatever the padding ids or the padded length, and
posts shorter than a kernel still have windows. Windows starting on padding are left out of the
batch-norm statistics and set to -inf before the max. An empty post pools to zeros.

Initialisation: Kaiming (He) normal for the convolutions, which ReLU follows; Xavier for the head.

References: Kim 2014, "Convolutional Neural Networks for Sentence Classification"; Ioffe &
Szegedy 2015 (batch norm); He et al. 2015 (Kaiming init).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fbdl_fast.config import ModelConfig
from fbdl_fast.models._common import apply_init, check_inputs


class FacebookPostsCNN(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        E, H = config.input_dim, config.hidden_dim
        self.embedding = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        # No conv bias: the batch norm right after subtracts any constant shift anyway.
        self.conv_layers = nn.ModuleList(
            [nn.Conv1d(E, H, kernel_size=k, bias=False) for k in config.kernel_sizes]
        )
        self.batch_norms = nn.ModuleList([nn.BatchNorm1d(H) for _ in config.kernel_sizes])
        self.dropout = nn.Dropout(config.dropout)
        self.output_projection = nn.Linear(H * len(config.kernel_sizes), config.num_classes)
        apply_init(self, config.init, self._init_weights)

    def _init_weights(self) -> None:
        for conv in self.conv_layers:
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
        nn.init.xavier_uniform_(self.output_projection.weight)
        nn.init.zeros_(self.output_projection.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """input_ids (B, L) and attention_mask (B, L), True on real tokens -> logits (B, C).

        Without attention_mask, every id other than config.pad_token_id counts as a real token.
        """
        mask = check_inputs(input_ids, attention_mask, self.config)  # (B, L) bool
        x = self.embedding(input_ids).masked_fill(~mask[:, :, None], 0.0)  # (B, L, E)
        x = x.transpose(1, 2)  # (B, E, L), channels first for Conv1d

        pooled = []
        for conv, bn in zip(self.conv_layers, self.batch_norms):
            k = conv.kernel_size[0]
            h = conv(F.pad(x, (0, k - 1)))  # (B, H, L): window t covers tokens t .. t+k-1
            h = h.transpose(1, 2)  # (B, L, H)
            # Batch norm over the windows that start on a real token only, so that training
            # statistics do not depend on how much padding the batch happens to carry.
            out = h.new_full(h.shape, float("-inf"))  # (B, L, H)
            out[mask] = F.relu(_batch_norm(bn, h[mask])).to(out.dtype)  # (N real tokens, H)
            pooled.append(out.max(dim=1).values)  # (B, H); -inf for an empty post
        h = torch.cat(pooled, dim=1)  # (B, H * len(kernel_sizes))
        h = torch.where(mask.any(dim=1)[:, None], h, torch.zeros_like(h))  # empty posts -> 0
        return self.output_projection(self.dropout(h))  # (B, C)


def _batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """bn(x) for x of shape (N, H); with fewer than two rows in training, where batch statistics
    do not exist (a batch holding a single one-token post), the running statistics stand in."""
    if not bn.training or x.shape[0] >= 2:
        return bn(x)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
