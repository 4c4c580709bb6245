"""FacebookPostsLSTM: a bidirectional multi-layer LSTM that classifies a padded batch of posts.

token embedding -> bidirectional LSTM (num_layers, dropout between layers) over each post's real
tokens -> the last layer's final hidden states of both directions, concatenated -> linear head.

Each direction runs over a post's real tokens only, so the backward direction starts at the last
real token, not at the padding, and padding never changes the output. Batches must be
right-padded (real tokens first), as collate produces them. Two ways to get there, one result:

- eager: pack_padded_sequence and nn.LSTM (cuDNN on a GPU; on a CPU the packed steps skip the
  padding);
- under torch.compile (which cannot trace packing, nor an nn.LSTM module without
  torch._dynamo.config.allow_rnn): the nn.LSTM's own weights, one torch.lstm call per layer and
  direction on the padded batch. The backward direction reads each row's real tokens reversed
  (a gather; padding stays after them, so it never reaches a real step) and the final states are
  gathered at each row's last real token. Under fbdl_fast.serving.onnx's ONNX export, the same path
  with each direction's recurrence as a scan over torch.lstm_cell, so that the batch and
  sequence sizes stay symbolic. The state_dict is the same every way.

Initialisation: orthogonal weight matrices, one per gate block, so repeated multiplication by
weight_hh neither explodes nor vanishes early in training; zero biases except the forget gate's,
set to 1 so the cell remembers by default (Jozefowicz et al. 2015); Xavier for the head.

References: Hochreiter & Schmidhuber 1997; Saxe et al. 2014 (orthogonal init); Jozefowicz et al.
2015, "An Empirical Exploration of Recurrent Network Architectures" (forget-gate bias).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Optional, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from fbdl_fast.config import ModelConfig
from fbdl_fast.models._common import apply_init, check_inputs
from fbdl_fast.models.init import init_module

RIGHT_PADDED = (
    "FacebookPostsLSTM needs right-padded batches: attention_mask must be True on a prefix of "
    "each row"
)


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
        # The same dict object as the nn.LSTM's parameters (it follows .to(), load_state_dict
        # and deepcopy), not a registered attribute, so the state_dict is unchanged. The
        # compiled path reads the weights here: dynamo breaks the graph on any access to an
        # nn.LSTM module. (None of its values is None: nn.LSTM registers every weight and bias.)
        self._lstm_parameters = cast(dict[str, torch.Tensor], self.lstm._parameters)
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
        prefix = positions[None, :] < lengths[:, None]  # (B, L): the right-padded mask
        compiling = torch.compiler.is_compiling()
        if compiling:  # checked by a graph op: no data-dependent branch, no graph break
            torch._assert_async((mask == prefix).all(), RIGHT_PADDED)
        elif not torch.equal(mask, prefix):
            raise ValueError(RIGHT_PADDED)
        x = self.dropout(self.embedding(input_ids))  # (B, L, E)

        # CPU autocast sends the LSTM to oneDNN in bf16, which fails to build on CPUs without
        # native bf16 ("could not create a primitive descriptor", seen with input_dim !=
        # hidden_dim on an AVX2-only EPYC): on a CPU the recurrent core always runs in fp32.
        with torch.autocast("cpu", enabled=False):
            if compiling:
                h = self._padded_final_states(x, lengths)
            else:
                h = self._packed_final_states(x, lengths)
        h = torch.where((lengths > 0)[:, None], h, torch.zeros_like(h))  # empty posts -> 0
        return self.output_projection(self.dropout(h))  # (B, C)

    def _packed_final_states(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The last layer's final hidden states (B, 2H), forward then backward direction, from
        nn.LSTM over packed sequences; rows of length 0 hold a value to be discarded."""
        # pack_padded_sequence rejects length 0: empty posts run over one (ignored) step.
        packed = pack_padded_sequence(
            x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        _, (h_n, _) = self.lstm(packed)  # h_n: (num_layers * 2, B, H), in input order
        return torch.cat([h_n[-2], h_n[-1]], dim=1)

    def _padded_final_states(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """_packed_final_states without packing and without touching the nn.LSTM module: one
        single-direction torch.lstm call per layer and direction on the padded batch."""
        B, L, _ = x.shape
        H, num_layers = self.config.hidden_dim, self.config.num_layers
        weights = self._lstm_parameters
        positions = torch.arange(L, device=x.device)[None, :]  # (1, L)
        # Reverses each row's first `length` positions and keeps the padding after them:
        # its own inverse, so it also puts the backward direction's outputs back in order.
        reverse = torch.where(
            positions < lengths[:, None], lengths[:, None] - 1 - positions, positions
        )
        last = (lengths - 1).clamp(min=0)[:, None]  # (B, 1): the last real step, 0 when empty
        zeros = x.new_zeros(B, H)
        layer_input = x
        for layer in range(num_layers):
            if layer > 0:  # nn.LSTM's dropout between layers
                layer_input = F.dropout(layer_input, self.config.dropout, self.training)
            outputs = []
            for suffix in ("", "_reverse"):
                names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                params = [weights[f"{name}_l{layer}{suffix}"] for name in names]
                steps = layer_input if not suffix else _gather_steps(layer_input, reverse)
                out = _lstm_direction(steps, zeros, params, self.training)  # (B, L, H)
                if layer == num_layers - 1:  # the state after each row's last real step
                    outputs.append(_gather_steps(out, last)[:, 0])
                else:
                    outputs.append(out if not suffix else _gather_steps(out, reverse))
            layer_input = torch.cat(outputs, dim=-1)
        return layer_input  # (B, 2H)


# True while fbdl_fast.serving.onnx traces a model for ONNX (scan_recurrence): the packing-free path
# then runs each direction as a scan. Not torch.compiler.is_exporting(), which torch 2.11 also
# reports under torch.compile, whose inductor cannot compile this scan.
_scan_recurrence = False


@contextlib.contextmanager
def scan_recurrence() -> Iterator[None]:
    """Inside the block the LSTM's packing-free path (taken while torch compiles or exports)
    runs each direction's recurrence as a scan over torch.lstm_cell, for torch.export."""
    global _scan_recurrence
    before, _scan_recurrence = _scan_recurrence, True
    try:
        yield
    finally:
        _scan_recurrence = before


def _lstm_direction(
    steps: torch.Tensor, zeros: torch.Tensor, params: list[torch.Tensor], train: bool
) -> torch.Tensor:
    """One direction of one LSTM layer over steps (B, L, I) from zero states zeros (B, H) ->
    its hidden state after each step (B, L, H). params: weight_ih, weight_hh, bias_ih, bias_hh;
    train as torch.lstm's (cuDNN keeps what the backward pass needs only when it is True)."""
    if _scan_recurrence:
        # torch.export keeps aten.lstm in the graph but computes its output shape through
        # its C++ decomposition, which unbinds the time axis: the sequence length would be
        # frozen to the traced one. A scan over torch.lstm_cell keeps it symbolic (an ONNX
        # Scan in torch.onnx's dynamo exporter); the same cell maths, step by step.
        from torch._higher_order_ops.scan import scan

        def step(state: tuple, x_t: torch.Tensor) -> tuple:
            h, c = torch.lstm_cell(x_t, state, *params)
            return (h, c), h.clone()  # scan's outputs may not alias its carried state

        # over the time axis moved first: scan's dim and output layout vary across versions
        _, out = scan(step, (zeros, zeros.clone()), steps.transpose(0, 1), dim=0)
        return out.transpose(0, 1)
    state = zeros[None]  # (1, B, H): one layer, one direction
    out, _, _ = torch.lstm(steps, (state, state), params, True, 1, 0.0, train, False, True)
    return out


def _gather_steps(seq: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """seq (B, L, F) at the steps index (B, K) of each row -> (B, K, F)."""
    # gather on an expanded index, not take_along_dim: torch.export freezes the batch and
    # sequence sizes at take_along_dim's broadcasting.
    return seq.gather(1, index[:, :, None].expand(-1, -1, seq.shape[2]))
