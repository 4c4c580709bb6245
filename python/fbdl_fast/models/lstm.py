"""FacebookPostsLSTM: a bidirectional multi-layer LSTM that classifies a padded batch of posts.

token embedding -> bidirectional LSTM (num_layers, dropout between layers) over packed sequences
-> the last layer's final hidden states of both directions, concatenated -> linear head.

Packing (pack_padded_sequence) runs each direction over a post's real tokens only, so the
backward direction starts at the last real token, not at the padding, and padding never changes
the output. Batches must be right-padded (real tokens first), as collate produces them.

Initialisation: orthogonal weight matrices, one per gate block, so repeated multiplication by
weight_hh neither explodes nor vanishes early in training; zero biases except the forget gate's,
set to 1 so the cell remembers by default (Jozefowicz et al. 2015); Xavier for the head.

References: Hochreiter & Schmidhuber 1997; Saxe et al. 2014 (orthogonal init); Jozefowicz et al.
2015, "An Empirical Exploration of Recurrent Network Architectures" (forget-gate bias).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from fbdl_fast.config import ModelConfig
from fbdl_fast.init import init_module
from fbdl_fast.models._common import apply_init, check_inputs


class FacebookPostsLSTM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        H = config.hidden_dim
        self.embedding = nn.Embedding(config.vocab_size, config.input_dim, config.pad_token_id)
        self.lstm = nn.LSTM(
            config.input_dim,
            H,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,  # only acts between layers
            bidirectional=True,
            batch_first=True,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.output_projection = nn.Linear(2 * H, config.num_classes)
        apply_init(self, config.init, self._init_weights)

    def _init_weights(self) -> None:
        # Orthogonal weight_ih/weight_hh, gate block by gate block; all biases zero.
        init_module(self.lstm, nn.init.orthogonal_)
        H = self.config.hidden_dim
        for name, p in self.lstm.named_parameters():
            if name.startswith("bias_ih"):  # gates stacked as (input, forget, cell, output)
                nn.init.ones_(p.data[H : 2 * H])  # forget gate: bias_ih + bias_hh = 1
        nn.init.xavier_uniform_(self.output_projection.weight)
        nn.init.zeros_(self.output_projection.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """input_ids (B, L) and attention_mask (B, L), True on real tokens -> logits (B, C).

        Without attention_mask, every id other than config.pad_token_id counts as a real token.
        """
        mask = check_inputs(input_ids, attention_mask, self.config)  # (B, L) bool
        L = input_ids.shape[1]
        lengths = mask.sum(dim=1)  # (B,)
        positions = torch.arange(L, device=mask.device)
        assert torch.equal(mask, positions[None, :] < lengths[:, None]), (
            "FacebookPostsLSTM needs right-padded batches: attention_mask must be True on a "
            "prefix of each row"
        )
        x = self.dropout(self.embedding(input_ids))  # (B, L, E)

        # pack_padded_sequence rejects length 0: run empty posts over one (ignored) step and
        # zero their final state below.
        packed = pack_padded_sequence(
            x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        # CPU autocast sends the LSTM to oneDNN in bf16, which fails to build on CPUs without
        # native bf16 ("could not create a primitive descriptor", seen with input_dim !=
        # hidden_dim on an AVX2-only EPYC): on a CPU the recurrent core always runs in fp32.
        with torch.autocast("cpu", enabled=False):
            _, (h_n, _) = self.lstm(packed)  # h_n: (num_layers * 2, B, H), in input order
        h = torch.cat([h_n[-2], h_n[-1]], dim=1)  # (B, 2H): last layer, forward then backward
        h = torch.where((lengths > 0)[:, None], h, torch.zeros_like(h))
        return self.output_projection(self.dropout(h))  # (B, C)
