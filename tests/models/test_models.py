"""The reference models: shapes, padding invariance, fused/reference parity, initialisation,
create_model and the product design's usage example."""

from __future__ import annotations

import copy
import dataclasses
import math
import subprocess
import sys

import pytest
import torch

import fbdl_fast
from fbdl_fast.config import ModelConfig
from fbdl_fast.models import (
    MODELS,
    FacebookPostsCNN,
    FacebookPostsLSTM,
    FacebookPostsTransformer,
    NgramClassifier,
    create_facebook_posts_model,
    create_model,
)
from fbdl_fast.models.cnn import masked_batch_norm_max
from fbdl_fast.ops.attention import AttentionFunction
from fbdl_fast.ops.layer_norm import LayerNormFunction
from kernel_calls import count_calls
from tolerances import assert_close

NAMES = ["transformer", "lstm", "cnn", "ngram"]
LENGTHS = [9, 5, 2, 1]  # real tokens per row of the test batch; 1 is shorter than every kernel


def tiny_config(**overrides: object) -> ModelConfig:
    values = dict(
        input_dim=32,
        hidden_dim=32,
        num_layers=2,
        num_heads=4,
        dropout=0.1,
        vocab_size=100,
        num_classes=3,
        max_seq_length=32,
    )
    return ModelConfig(**{**values, **overrides})


def make_batch(lengths: list[int], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random ids (never the pad id 0 on real tokens) and their mask."""
    width = width or max(lengths)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # (B, L)
    ids = torch.randint(1, 100, (len(lengths), width)).masked_fill(~mask, 0)
    return ids, mask


@pytest.mark.parametrize("name", NAMES)
def test_logits_shape_and_default_mask(name: str) -> None:
    model = create_model(name, tiny_config()).eval()
    ids, mask = make_batch(LENGTHS)
    with torch.no_grad():
        logits = model(ids, mask)
        # Without a mask, every non-pad id is a real token: the same batch, the same logits.
        implicit = model(ids)
    assert logits.shape == (len(LENGTHS), 3)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(implicit, logits, atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_padding_never_changes_logits(name: str) -> None:
    model = create_model(name, tiny_config()).eval()
    ids, mask = make_batch(LENGTHS)
    with torch.no_grad():
        logits = model(ids, mask)
        # Other ids under the padding, and 6 more columns of padding.
        noisy = torch.where(mask, ids, torch.randint(1, 100, ids.shape))
        wider = torch.cat([noisy, torch.randint(1, 100, (len(LENGTHS), 6))], dim=1)
        wider_mask = torch.cat([mask, torch.zeros(len(LENGTHS), 6, dtype=torch.bool)], dim=1)
        padded_differently = model(wider, wider_mask)
        # Each post alone, without any padding.
        alone = torch.cat([model(ids[i : i + 1, :n]) for i, n in enumerate(LENGTHS)])
        # The check is not vacuous: changing a real token does change the logits.
        changed = ids.clone()
        changed[:, 0] = (changed[:, 0] % 99) + 1
        other = model(changed, mask)
    torch.testing.assert_close(padded_differently, logits, atol=1e-6, rtol=0)
    assert_close(alone, logits)  # other batch shapes may sum in another order: fp32 tolerance
    assert (other - logits).abs().amax(dim=1).min() > 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_all_padding_row_gives_head_bias_and_finite_gradients(name: str) -> None:
    model = create_model(name, tiny_config())
    ids, mask = make_batch([4, 0, 3])
    ids[1] = torch.randint(1, 100, (4,))  # whatever sits under the padding
    model.eval()
    with torch.no_grad():
        logits = model(ids, mask)
    # An empty post pools to zeros, so its logits are the head's bias.
    torch.testing.assert_close(logits[1], model.output_projection.bias, atol=0, rtol=0)
    assert torch.isfinite(logits).all()

    model.train()
    model(ids, mask).sum().backward()
    for param_name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), param_name


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    model = create_model(name, tiny_config()).train()
    ids, mask = make_batch(LENGTHS)
    loss = torch.nn.functional.cross_entropy(model(ids, mask), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    for param_name, p in model.named_parameters():
        assert p.grad is not None, f"{param_name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{param_name} got an all-zero gradient"


@pytest.mark.parametrize("name", NAMES)
def test_fused_and_reference_models_share_weights_and_logits(name: str) -> None:
    fused = create_model(name, tiny_config(fused=True)).eval()
    reference = create_model(name, tiny_config(fused=False, seed=7)).eval()
    assert list(fused.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(fused.state_dict())
    ids, mask = make_batch(LENGTHS)
    with torch.no_grad():
        assert_close(fused(ids, mask), reference(ids, mask))


def test_fused_model_runs_the_kernels_and_shares_the_reference_logits(
    triton: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The case above on the Triton path (the interpreter on a CPU): the fused transformer's
    5 LayerNorms and 2 attentions run the kernels, with a key mask, and match torch's layers."""
    config = tiny_config(num_heads=2)  # head_dim 16: the kernel's smallest
    fused = create_model("transformer", dataclasses.replace(config, fused=True)).eval()
    reference = create_model("transformer", dataclasses.replace(config, fused=False)).eval()
    reference.load_state_dict(fused.state_dict())
    ids, mask = make_batch(LENGTHS)
    norm_calls = count_calls(monkeypatch, LayerNormFunction)
    attention_calls = count_calls(monkeypatch, AttentionFunction)
    with torch.no_grad():
        expected = reference(ids, mask)
        assert norm_calls == attention_calls == [], "the reference ran a kernel"
        logits = fused(ids, mask)
    assert (len(norm_calls), len(attention_calls)) == (5, 2)
    assert_close(logits, expected)


def test_fused_flag_picks_the_layer_classes() -> None:
    fused = create_model("transformer", tiny_config(fused=True))
    reference = create_model("transformer", tiny_config(fused=False))
    assert type(fused.blocks[0].attn) is fbdl_fast.nn.MultiheadAttention
    assert type(fused.blocks[0].ln_1) is fbdl_fast.nn.LayerNorm
    assert type(fused.ln_f) is fbdl_fast.nn.LayerNorm
    assert type(reference.blocks[0].attn) is torch.nn.MultiheadAttention
    assert type(reference.blocks[0].ln_1) is torch.nn.LayerNorm
    assert type(reference.ln_f) is torch.nn.LayerNorm


def test_create_model_registry_and_errors() -> None:
    assert {
        "transformer": FacebookPostsTransformer,
        "lstm": FacebookPostsLSTM,
        "cnn": FacebookPostsCNN,
        "ngram": NgramClassifier,
    } == MODELS
    assert create_facebook_posts_model is create_model
    assert fbdl_fast.create_model is create_model
    with pytest.raises(ValueError, match=r"'gru' is not known; accepted: transformer, lstm, cnn"):
        create_model("gru", tiny_config())
    with pytest.raises(TypeError, match="ModelConfig, got dict"):
        create_model("cnn", {"input_dim": 32})  # type: ignore[arg-type]


def test_create_model_draws_weights_from_config_seed() -> None:
    rng_before = torch.get_rng_state()
    a = create_model("lstm", tiny_config(seed=1)).state_dict()
    b = create_model("lstm", tiny_config(seed=1)).state_dict()
    c = create_model("lstm", tiny_config(seed=2)).state_dict()
    assert torch.equal(torch.get_rng_state(), rng_before)  # global random state untouched
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lstm.weight_hh_l0"], c["lstm.weight_hh_l0"])


def test_design_usage_example_and_parameter_count() -> None:
    # As written in the product design's "Usage Examples".
    config = ModelConfig(
        input_dim=768,
        hidden_dim=512,
        num_layers=6,
        num_heads=8,
        dropout=0.1,
        learning_rate=1e-4,
        vocab_size=10000,
        num_classes=5,
    )
    model = fbdl_fast.create_facebook_posts_model("transformer", config)
    assert isinstance(model, FacebookPostsTransformer)

    V, D, F, N, C, T = 10000, 768, 512, 6, 5, config.max_seq_length
    attention = 3 * D * D + 3 * D + D * D + D  # packed q/k/v projection + output projection
    feed_forward = D * F + F + F * D + D
    layer_norms = 2 * (2 * D)
    expected = V * D + T * D + N * (attention + feed_forward + layer_norms) + 2 * D + D * C + C
    assert expected == 26_997_509
    assert sum(p.numel() for p in model.parameters()) == expected

    ids, mask = make_batch([8, 3], width=8)
    with torch.no_grad():
        assert model.eval()(ids, mask).shape == (2, 5)


def test_lstm_recurrent_gate_blocks_are_orthogonal() -> None:
    H = 32
    model = create_model("lstm", tiny_config(hidden_dim=H))
    eye = torch.eye(H)
    hh = [n for n, _ in model.lstm.named_parameters() if n.startswith("weight_hh")]
    assert len(hh) == 4  # 2 layers x 2 directions
    for param_name, p in model.lstm.named_parameters():
        if param_name.startswith("weight_hh"):
            for gate in p.detach().split(H, dim=0):  # (H, H)
                torch.testing.assert_close(gate @ gate.T, eye, atol=1e-5, rtol=0)
        if param_name.startswith("bias"):
            # Forget gate (the second block) starts at bias_ih + bias_hh = 1, the rest at 0.
            expected = torch.zeros(4 * H)
            if param_name.startswith("bias_ih"):
                expected[H : 2 * H] = 1.0
            torch.testing.assert_close(p.detach(), expected, atol=0, rtol=0)


def test_cnn_convolutions_get_kaiming_std() -> None:
    E = H = 64
    model = create_model("cnn", tiny_config(input_dim=E, hidden_dim=H))
    for conv, k in zip(model.conv_layers, (3, 4, 5)):
        w = conv.weight.detach()
        assert w.shape == (H, E, k)
        std = math.sqrt(2.0 / (E * k))  # He et al.: gain sqrt(2) for ReLU over fan_in
        assert abs(w.std().item() / std - 1) < 0.05  # >= 12288 samples: ~5 standard errors
        assert abs(w.mean().item()) < 0.05 * std


def test_config_init_replaces_the_default_initialiser() -> None:
    E = H = 64
    model = create_model("cnn", tiny_config(input_dim=E, hidden_dim=H, init="xavier_uniform"))
    w = model.conv_layers[0].weight.detach()
    bound = math.sqrt(6.0 / (E * 3 + H * 3))  # Glorot: U(-b, b) over fan_in + fan_out
    assert w.abs().max() <= bound
    assert abs(w.std().item() / (bound / math.sqrt(3)) - 1) < 0.05
    # Whatever the initialiser, the padding embedding stays zero.
    assert torch.count_nonzero(model.embedding.weight[0]) == 0
    assert torch.count_nonzero(model.embedding.weight[1]) == E


def test_config_init_keeps_the_transformer_position_table() -> None:
    # A named initialiser visits modules; the bare position table keeps its N(0, 0.02) draw.
    model = create_model("transformer", tiny_config(init="xavier_normal", max_seq_length=512))
    assert abs(model.position_encoding.detach().std().item() / 0.02 - 1) < 0.05
    in_proj = model.blocks[0].attn.in_proj_weight.detach()  # (3D, D), xavier per q/k/v block
    assert abs(in_proj.std().item() / math.sqrt(2.0 / (32 + 32)) - 1) < 0.1


def test_bad_inputs_fail_with_clear_messages() -> None:
    ids, mask = make_batch([3, 2])
    transformer = create_model("transformer", tiny_config(max_seq_length=4))
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, length\), got shape"):
        transformer(ids[0])
    with pytest.raises(ValueError, match=r"attention_mask shape \(2, 2\) != input_ids"):
        transformer(ids, mask[:, :2])
    with pytest.raises(ValueError, match="sequence length 6 exceeds"):
        transformer(torch.ones(1, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids must hold integer token ids"):
        transformer(ids.float(), mask)
    left_padded = torch.tensor([[False, True, True]])
    with pytest.raises(ValueError, match="right-padded"):
        create_model("lstm", tiny_config())(torch.ones(1, 3, dtype=torch.long), left_padded)


@pytest.mark.parametrize("name", ["transformer", "lstm", "cnn", "ngram"])
@pytest.mark.parametrize("bad_id", [-1, 50, 1 << 20])
def test_an_id_outside_the_vocabulary_is_refused_by_every_model(name: str, bad_id: int) -> None:
    """An id past the vocabulary is a tokenizer that is not the run's: refused by name. The
    n-gram model would otherwise read it as one of its hashed bigram rows, silently."""
    config = tiny_config(vocab_size=50)
    model = create_model(name, config).eval()
    ids = torch.tensor([[2, 3, bad_id, 4]])
    with pytest.raises(ValueError, match=rf"input_ids holds id {bad_id}, outside \[0, 50\): "):
        model(ids, torch.ones_like(ids, dtype=torch.bool))


def test_models_refuse_bad_inputs_under_python_dash_o() -> None:
    """`python -O` strips assert statements: the checks are raised, so they hold there too."""
    script = (
        "import torch\n"
        "from fbdl_fast.config import ModelConfig\n"
        "from fbdl_fast.models import create_model\n"
        "config = ModelConfig(vocab_size=50, input_dim=8, hidden_dim=8, num_classes=2,"
        " num_heads=2, num_layers=1, max_seq_length=8)\n"
        "cases = [('lstm', torch.ones(1, 3, dtype=torch.long), torch.tensor([[0, 1, 1]]).bool()),"
        " ('ngram', torch.tensor([[2, 60]]), None),"
        " ('transformer', torch.ones(1, 9, dtype=torch.long), None)]\n"
        "for name, ids, mask in cases:\n"
        "    try:\n"
        "        create_model(name, config).eval()(ids, mask)\n"
        "    except ValueError as error:\n"
        "        print(name, 'refused:', error)\n"
        "    else:\n"
        "        print(name, 'accepted')\n"
    )
    done = subprocess.run(
        [sys.executable, "-O", "-c", script], capture_output=True, text=True, check=True
    )
    lines = done.stdout.splitlines()
    assert [line.split(" ", 2)[:2] for line in lines] == [
        ["lstm", "refused:"],
        ["ngram", "refused:"],
        ["transformer", "refused:"],
    ], done.stdout


def test_cnn_trains_on_a_batch_with_a_single_real_token() -> None:
    # Batch statistics need two values; one real token falls back to the running statistics.
    model = create_model("cnn", tiny_config(dropout=0.0)).train()
    ids, mask = make_batch([1])
    logits = model(ids, mask)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, model(ids, mask), atol=0, rtol=0)


@pytest.fixture
def unpacked_lstm(monkeypatch: pytest.MonkeyPatch) -> None:
    """FacebookPostsLSTM takes, in eager, the path it takes under torch.compile (no packing,
    one torch.lstm per layer and direction); tests/kernels/test_compile_ops.py compiles it for
    real."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)


def _logits_and_grads(model: torch.nn.Module, ids, mask) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    logits = model(ids, mask)
    weights = torch.linspace(-1.0, 1.0, logits.numel()).reshape(logits.shape)
    (logits * weights).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_lstm_unpacked_path_matches_the_packed_one(request: pytest.FixtureRequest) -> None:
    """Logits and every gradient (fp32, dropout off) on odd lengths, an empty post and ids other
    than the pad id under the padding, 3 layers, input and hidden sizes apart."""
    config = tiny_config(input_dim=24, hidden_dim=16, num_layers=3, dropout=0.0)
    model = create_model("lstm", config)
    ids, mask = make_batch([7, 3, 0, 1, 5])
    ids = torch.where(mask, ids, torch.randint(1, 100, ids.shape))
    expected, expected_grads = _logits_and_grads(model.train(), ids, mask)
    request.getfixturevalue("unpacked_lstm")
    logits, grads = _logits_and_grads(model, ids, mask)
    assert_close(logits, expected)
    torch.testing.assert_close(logits[2], model.output_projection.bias.detach(), atol=0, rtol=0)
    for name, grad in grads.items():
        assert_close(grad, expected_grads[name], msg=name)
    assert grads["lstm.weight_hh_l2_reverse"].abs().sum() > 0


def test_lstm_unpacked_path_reads_the_lstm_weights_as_they_are_now(
    request: pytest.FixtureRequest,
) -> None:
    """It reads the nn.LSTM's own parameters, after load_state_dict(assign=True), deepcopy and
    a dtype change."""
    model = create_model("lstm", tiny_config())
    other = create_model("lstm", tiny_config(seed=3)).eval()
    model.load_state_dict(other.state_dict(), assign=True)
    model = copy.deepcopy(model).double().eval()
    ids, mask = make_batch(LENGTHS)
    with torch.no_grad():
        expected = model(ids, mask)
        request.getfixturevalue("unpacked_lstm")
        logits = model(ids, mask)
        assert_close(logits.float(), other(ids, mask))
    assert_close(logits, expected)


def test_lstm_unpacked_path_checks_right_padding(unpacked_lstm: None) -> None:
    """Under compile the check is a graph op (torch._assert_async), raising at run time."""
    left_padded = torch.tensor([[False, True, True]])
    with pytest.raises(RuntimeError, match="right-padded"):
        create_model("lstm", tiny_config())(torch.ones(1, 3, dtype=torch.long), left_padded)


def _batch_norm_max_on_rows(bn: torch.nn.BatchNorm1d, x: torch.Tensor, mask: torch.Tensor):
    """What the CNN computed before its masked op: bn over the real positions gathered into
    rows (the running statistics, not updated, below two rows in training), scattered back
    into -inf, max over time."""
    rows = x.transpose(1, 2)[mask]  # (N real positions, C)
    if rows.shape[0] >= 2 or not bn.training:
        normed = bn(rows)
    else:
        normed = torch.nn.functional.batch_norm(
            rows, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
    out = torch.full_like(x.transpose(1, 2), float("-inf"))
    out[mask] = normed
    return out.max(dim=1).values  # (B, C)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_masked_batch_norm_max_is_batch_norm_over_the_real_positions(momentum) -> None:
    """The CNN's masked batch norm and max against nn.BatchNorm1d on the real positions gathered
    into rows: outputs, gradients, running statistics and num_batches_tracked, over training
    steps with >= 2, 1 and 0 real positions (the last two keep the running statistics), and in
    eval."""
    bn = torch.nn.BatchNorm1d(6, momentum=momentum)
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(6))
        bn.running_var.uniform_(0.5, 2.0)
    reference = copy.deepcopy(bn)
    for training, lengths in [(True, [7, 3, 0, 1, 5]), (True, [1, 0]), (True, [0, 0]),
                              (True, [4, 2]), (False, [6, 0, 2])]:  # fmt: skip
        bn.train(training), reference.train(training)
        _, mask = make_batch(lengths, width=7)
        x = torch.randn(len(lengths), 6, 7, requires_grad=True)
        out = masked_batch_norm_max(bn, x, mask[:, None, :])
        expected = _batch_norm_max_on_rows(reference, x, mask)
        assert_close(out, expected)
        g = torch.randn_like(expected).masked_fill(expected.isinf(), 0.0)
        grads = torch.autograd.grad((out * g).nansum(), [x, bn.weight, bn.bias])
        params = [x, reference.weight, reference.bias]
        expected_grads = torch.autograd.grad((expected * g).nansum(), params)
        for grad, expected_grad in zip(grads, expected_grads):
            assert_close(grad, expected_grad)
        for name, buffer in reference.named_buffers():
            torch.testing.assert_close(getattr(bn, name), buffer, msg=name)
    assert int(bn.num_batches_tracked) == 2


@pytest.mark.parametrize("training", [True, False])
def test_masked_batch_norm_max_backward_passes_gradcheck(training: bool) -> None:
    """Its hand-written backward (batch norm's gradient through the statistics) against
    finite differences in float64, an empty row included."""
    bn = torch.nn.BatchNorm1d(3).double().train(training)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -1.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
    _, mask = make_batch([5, 2, 0, 4])
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)

    def pooled(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        assert weight is bn.weight and bias is bn.bias  # perturbed in place by gradcheck
        return masked_batch_norm_max(bn, x, mask[:, None, :])[:2]  # the empty row is -inf

    bn.momentum = 0.0  # finite differences call it again and again: keep the running stats
    assert torch.autograd.gradcheck(pooled, (x, bn.weight, bn.bias))


@pytest.mark.parametrize("unpacked", [False, True], ids=["packed", "unpacked"])
def test_lstm_trains_under_cpu_bf16_autocast_with_a_narrow_embedding(
    unpacked: bool, request: pytest.FixtureRequest
) -> None:
    # oneDNN's bf16 LSTM fails to build on CPUs without native bf16 when input and hidden
    # sizes differ; the model keeps its recurrent core in fp32 under CPU autocast.
    if unpacked:
        request.getfixturevalue("unpacked_lstm")
    config = ModelConfig(
        input_dim=16,
        hidden_dim=32,
        num_layers=2,
        num_heads=2,
        vocab_size=50,
        num_classes=3,
        max_seq_length=12,
        dropout=0.0,
    )
    model = create_model("lstm", config)
    ids = torch.randint(1, 50, (4, 12))
    mask = torch.ones(4, 12, dtype=torch.bool)
    expected = model(ids, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, mask)
    logits.float().sum().backward()
    torch.testing.assert_close(logits.float(), expected, atol=0.05, rtol=0.05)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
