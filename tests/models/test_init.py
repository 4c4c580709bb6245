"""Weight initialisers: the statistics each one promises, on matrices big enough to measure them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fbdl_fast.models.init import INITIALIZERS, WeightInitializer, initialize

FAN_IN, FAN_OUT = 1024, 512  # a (512, 1024) weight: 524k samples, std measured to ~0.1%
REL = 0.02  # relative tolerance on a measured std (sampling error is ~20x smaller)


def _big_linear() -> nn.Linear:
    return nn.Linear(FAN_IN, FAN_OUT)


def _assert_std(weight: torch.Tensor, expected: float) -> None:
    std = weight.std().item()
    assert abs(std - expected) < REL * expected, (std, expected)
    assert abs(weight.mean().item()) < 0.01 * expected


def _assert_uniform(weight: torch.Tensor, bound: float) -> None:
    # U(-b, b): every value inside, extremes reach the bound, std b / sqrt(3).
    assert weight.abs().max().item() <= bound
    assert weight.abs().max().item() > 0.999 * bound
    _assert_std(weight, bound / math.sqrt(3))


def test_xavier_uniform_bound_and_std() -> None:
    layer = initialize(_big_linear(), "xavier_uniform")
    _assert_uniform(layer.weight, math.sqrt(6 / (FAN_IN + FAN_OUT)))
    assert torch.count_nonzero(layer.bias) == 0


def test_xavier_normal_std() -> None:
    layer = initialize(_big_linear(), "xavier_normal")
    _assert_std(layer.weight, math.sqrt(2 / (FAN_IN + FAN_OUT)))
    assert torch.count_nonzero(layer.bias) == 0


def test_xavier_gain_kwarg_scales_the_bound() -> None:
    layer = initialize(_big_linear(), "xavier_uniform", gain=2.0)
    _assert_uniform(layer.weight, 2.0 * math.sqrt(6 / (FAN_IN + FAN_OUT)))


def test_kaiming_uniform_bound_and_std() -> None:
    # He init for ReLU: gain sqrt(2), bound gain * sqrt(3 / fan_in).
    layer = initialize(_big_linear(), "kaiming_uniform")
    _assert_uniform(layer.weight, math.sqrt(6 / FAN_IN))


def test_kaiming_normal_std_fan_in_and_fan_out() -> None:
    layer = initialize(_big_linear(), "kaiming_normal")
    _assert_std(layer.weight, math.sqrt(2 / FAN_IN))
    layer = initialize(_big_linear(), "kaiming_normal", mode="fan_out")
    _assert_std(layer.weight, math.sqrt(2 / FAN_OUT))


def test_kaiming_on_conv_uses_channels_times_kernel_as_fan_in() -> None:
    conv = initialize(nn.Conv1d(256, 512, kernel_size=4), "kaiming_normal")
    _assert_std(conv.weight, math.sqrt(2 / (256 * 4)))
    assert torch.count_nonzero(conv.bias) == 0


def test_orthogonal_linear_rows_are_orthonormal() -> None:
    layer = initialize(nn.Linear(64, 32), "orthogonal")
    w = layer.weight  # (32, 64): 32 orthonormal rows
    torch.testing.assert_close(w @ w.T, torch.eye(32), atol=1e-5, rtol=0)


def _assert_orthogonal_block(block: torch.Tensor, gain: float = 1.0) -> None:
    rows, cols = block.shape
    gram = block @ block.T if rows <= cols else block.T @ block
    torch.testing.assert_close(gram, gain**2 * torch.eye(min(rows, cols)), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("cls", "gates"), [(nn.LSTM, 4), (nn.GRU, 3)])
def test_orthogonal_rnn_every_matrix_gate_by_gate(cls: type[nn.RNNBase], gates: int) -> None:
    hidden = 16
    rnn = cls(12, hidden, num_layers=2, bidirectional=True)
    initialize(rnn, "orthogonal")
    names = [n for n, _ in rnn.named_parameters() if n.startswith("weight")]
    assert len(names) == 8  # ih and hh, 2 layers, 2 directions: none may be skipped
    for name in names:
        weight = getattr(rnn, name)
        assert weight.shape[0] == gates * hidden
        for block in weight.chunk(gates, dim=0):
            _assert_orthogonal_block(block)
        if name.startswith("weight_hh"):
            # Block by block, not the stack: the stacked (G*H, H) matrix has W^T W = G * I,
            # whereas an orthogonal draw of the whole stack would give I.
            torch.testing.assert_close(
                weight.T @ weight, gates * torch.eye(hidden), atol=1e-4, rtol=0
            )
    for name, param in rnn.named_parameters():
        if name.startswith("bias"):
            assert torch.count_nonzero(param) == 0, name


def test_orthogonal_gain_kwarg() -> None:
    rnn = initialize(nn.GRU(8, 8), "orthogonal", gain=2.0)
    for block in rnn.weight_hh_l0.chunk(3, dim=0):
        _assert_orthogonal_block(block, gain=2.0)


def test_xavier_on_lstm_uses_per_gate_fans() -> None:
    # Each gate block of weight_ih_l0 is (H, in): bound sqrt(6 / (H + in)), not sqrt(6/(4H + in)).
    hidden, inp = 256, 512
    lstm = initialize(nn.LSTM(inp, hidden), "xavier_uniform")
    _assert_uniform(lstm.weight_ih_l0, math.sqrt(6 / (hidden + inp)))


def test_sparse_zero_fraction_per_column_and_std() -> None:
    layer = initialize(nn.Linear(300, 200), "sparse", sparsity=0.25)
    w = layer.weight  # (200, 300): in every column ceil(0.25 * 200) = 50 entries are zero
    zeros_per_column = (w == 0).sum(dim=0)
    assert torch.equal(zeros_per_column, torch.full((300,), 50))
    _assert_std(w[w != 0], 0.01)
    assert torch.count_nonzero(layer.bias) == 0


def test_sparse_rejects_bad_sparsity() -> None:
    with pytest.raises(ValueError, match=r"sparsity=1\.5.*\[0, 1\)"):
        initialize(nn.Linear(4, 4), "sparse", sparsity=1.5)


def test_embedding_padding_row_stays_zero() -> None:
    emb = nn.Embedding(1000, 256, padding_idx=0)
    initialize(emb, "xavier_normal")
    assert torch.count_nonzero(emb.weight[0]) == 0
    _assert_std(emb.weight[1:], math.sqrt(2 / (1000 + 256)))


def test_multihead_attention_in_projection_block_by_block() -> None:
    dim = 128
    mha = nn.MultiheadAttention(dim, 4)
    initialize(mha, "xavier_uniform")
    # each (E, E) block of the packed (3E, E) in-projection: bound sqrt(6 / 2E)
    _assert_uniform(mha.in_proj_weight, math.sqrt(6 / (2 * dim)))
    assert torch.count_nonzero(mha.in_proj_bias) == 0
    assert torch.count_nonzero(mha.out_proj.bias) == 0


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16, padding_idx=0)
        self.lstm = nn.LSTM(16, 8, batch_first=True)
        self.conv = nn.Conv1d(16, 8, 3)
        self.block = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        self.norm = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_initialize_reaches_every_submodule_and_zeroes_biases(name: str) -> None:
    model = _Tiny()
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(7.0)
    assert initialize(model, name) is model
    for pname, param in model.named_parameters():
        if pname.startswith("norm."):
            assert torch.all(param == 7.0), pname  # norms keep their own parameters
        elif "bias" in pname:
            assert torch.count_nonzero(param) == 0, pname
        else:
            assert not torch.any(param == 7.0), pname  # every weight was redrawn
    assert torch.count_nonzero(model.emb.weight[0]) == 0


def test_unknown_initializer_lists_the_accepted_names() -> None:
    with pytest.raises(ValueError, match=r"'glorot'.*kaiming_normal.*xavier_uniform"):
        initialize(nn.Linear(2, 2), "glorot")


def test_facade_matches_registry_and_handles_recurrent_layers() -> None:
    torch.manual_seed(1)
    a = nn.Sequential(nn.Linear(8, 8), nn.Conv1d(4, 4, 3)).apply(
        WeightInitializer.xavier_uniform_init
    )
    torch.manual_seed(1)
    b = initialize(nn.Sequential(nn.Linear(8, 8), nn.Conv1d(4, 4, 3)), "xavier_uniform")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    # The 0.x API's orthogonal_init read module.weight, which an LSTM does not have.
    lstm = nn.LSTM(6, 6)
    WeightInitializer.orthogonal_init(lstm)
    for block in lstm.weight_hh_l0.chunk(4, dim=0):
        _assert_orthogonal_block(block)
    layer = nn.Linear(400, 100)
    WeightInitializer.sparse_init(layer, sparsity=0.5)
    assert torch.equal((layer.weight == 0).sum(dim=0), torch.full((400,), 50))
