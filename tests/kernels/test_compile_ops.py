"""torch.compile over the fused ops and the patched models.

The kernel launchers are torch.library custom ops with fake implementations (ops/_library.py), so
dynamo sees each as one opaque op and traces the autograd.Function around it. Checked here on the
CPU, in the interpreter, on both paths:

- no graph break (torch._dynamo.explain) for each op and for the three patched models;
- `torch.compile(fullgraph=True)` with aot_eager gives eager's outputs and gradients (inductor
  too, slow-marked: it builds C++);
- on the Triton path the graph holds the fbdl_fast custom ops, on the reference path none.

The patched LSTM and CNN swap nothing; they compile whole through their own code (models/): the
LSTM takes its unpacked path under compile (eager packs), so the compiled-vs-eager check also
compares its two paths, and the CNN's masked batch norm updates its running statistics inside
the graph, compared with eager's too.
"""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch

import fbdl_fast.nn.functional as FF
from fbdl_fast import ModelConfig, create_model, patch
from fbdl_fast.ops import _library
from fbdl_fast.ops import attention as attention_op
from fbdl_fast.ops import focal_loss as focal_op
from fbdl_fast.ops import layer_norm as layer_norm_op
from tiny_run import tiny_config
from tolerances import assert_close

PATHS = ["triton", "torch"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """FBDL_FAST_BACKEND for the test: the kernels (on the kernel device: CUDA where there is
    one, else the interpreter; conftest.py), or the reference."""
    if request.param == "triton":
        request.getfixturevalue("kernel_device")
    monkeypatch.setenv("FBDL_FAST_BACKEND", request.param)
    return request.param


def _layer_norm_case() -> tuple[Callable, list[torch.Tensor]]:
    inputs = [torch.randn(3, 5, 20), torch.randn(20), torch.randn(20)]
    return (lambda x, w, b: FF.layer_norm(x, (20,), w, b, 1e-5) * 2), inputs


def _focal_case() -> tuple[Callable, list[torch.Tensor]]:
    target = torch.tensor([0, 6, 3, -100, 2, 1])
    weight = torch.rand(7) + 0.5

    def loss(z: torch.Tensor) -> torch.Tensor:
        mean = FF.focal_loss(z, target, gamma=2.0, alpha=0.25, weight=weight, label_smoothing=0.1)
        return mean + FF.focal_loss(z, target, gamma=1.5, reduction="none").sum()

    return loss, [torch.randn(6, 7)]


def _attention_case() -> tuple[Callable, list[torch.Tensor]]:
    mask = torch.tensor([[True] * 13, [True] * 6 + [False] * 7])[:, None, None, :]

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return FF.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)

    return attend, [torch.randn(2, 2, 13, 16) for _ in range(3)]


CASES = {"layer_norm": _layer_norm_case, "focal_loss": _focal_case, "attention": _attention_case}
OP_NAMES = {
    "layer_norm": "layer_norm_forward",
    "focal_loss": "focal_loss_forward",
    "attention": "attention_forward",
}


def _run(fn: Callable, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.sum().backward()
    return out.detach(), [t.grad for t in leaves]


def _graph_code(explanation) -> str:
    """The code of every traced graph, with the subgraphs (autograd.Function bodies) inside."""
    modules = (m for graph in explanation.graphs for m in graph.modules())
    return "\n".join(m.code for m in modules if isinstance(m, torch.fx.GraphModule))


@pytest.mark.parametrize("op", list(CASES))
def test_op_has_no_graph_break(op: str, path: str) -> None:
    fn, inputs = CASES[op]()
    explanation = torch._dynamo.explain(fn)(*(t.requires_grad_() for t in inputs))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    in_graph = f"fbdl_fast.{OP_NAMES[op]}" in _graph_code(explanation)
    assert in_graph == (path == "triton")


@pytest.mark.parametrize("op", list(CASES))
def test_compiled_op_matches_eager(op: str, path: str) -> None:
    fn, inputs = CASES[op]()
    expected, expected_grads = _run(fn, inputs)
    out, grads = _run(torch.compile(fn, backend="aot_eager", fullgraph=True), inputs)
    assert_close(out, expected)
    for grad, expected_grad in zip(grads, expected_grads):
        assert_close(grad, expected_grad)


def test_compiled_attention_dropout_draws_eagers_mask(triton: str) -> None:
    """The dropout seed stays a tensor (read inside the op): no .item() breaks the graph, and the
    compiled call draws the same seed from torch's generator as an eager one."""
    q, k, v = (torch.randn(1, 2, 16, 16) for _ in range(3))

    def attend(q: torch.Tensor) -> torch.Tensor:
        return FF.scaled_dot_product_attention(q, k, v, dropout_p=0.3)

    explanation = torch._dynamo.explain(attend)(q)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch.manual_seed(5)
    expected = attend(q)
    torch.manual_seed(5)
    out = torch.compile(attend, backend="aot_eager", fullgraph=True)(q)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# ------------------------------------------------------------------------ patched models


def _config() -> ModelConfig:
    # Head dim 16: the attention kernel's smallest, so the patched attention runs it.
    return tiny_config(
        input_dim=32, hidden_dim=32, dropout=0.0, vocab_size=50, max_seq_length=16, fused=False
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([9, 4, 1])
    mask = torch.arange(9)[None, :] < lengths[:, None]  # (B, L), odd length and uneven padding
    return torch.randint(1, 50, (3, 9)) * mask, mask


def _patched(name: str) -> torch.nn.Module:
    model = create_model(name, _config()).train()
    patch(model)
    return model


MODELS = ["transformer", "lstm", "cnn"]
# patch() swaps nothing in the LSTM and CNN, so both paths run the same code there: the slower
# compiled-vs-eager checks run them on the reference path only.
MODEL_PATHS = [("transformer", p) for p in PATHS] + [("lstm", "torch"), ("cnn", "torch")]


@pytest.mark.parametrize("name", MODELS)
def test_patched_model_has_no_graph_break(name: str, path: str) -> None:
    explanation = torch._dynamo.explain(_patched(name))(*_batch())
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]


def test_patched_transformer_graph_holds_the_kernels(path: str) -> None:
    explanation = torch._dynamo.explain(_patched("transformer"))(*_batch())
    code = _graph_code(explanation)
    for op in ("layer_norm_forward", "attention_forward"):
        assert (f"fbdl_fast.{op}" in code) == (path == "triton")


def _logits_and_grads(model: torch.nn.Module, batch) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    logits = model(*batch)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2, 1])).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _check_compiled_model(name: str, backend: str) -> None:
    model = _patched(name)
    compiled = torch.compile(copy.deepcopy(model), backend=backend, fullgraph=True)
    batch = _batch()
    expected, expected_grads = _logits_and_grads(model, batch)
    logits, grads = _logits_and_grads(compiled, batch)
    assert_close(logits, expected)
    for param, grad in grads.items():
        assert_close(grad, expected_grads[param.removeprefix("_orig_mod.")])
    buffers = dict(model.named_buffers())  # the CNN's running statistics, updated in the graph
    for buffer_name, buffer in compiled.named_buffers():
        expected_buffer = buffers[buffer_name.removeprefix("_orig_mod.")]
        if buffer.is_floating_point():
            assert_close(buffer, expected_buffer)
        else:  # num_batches_tracked
            assert torch.equal(buffer, expected_buffer), buffer_name


@pytest.mark.parametrize(("name", "path"), MODEL_PATHS, indirect=["path"])
def test_patched_model_compiled_matches_eager(name: str, path: str) -> None:
    _check_compiled_model(name, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "path"), MODEL_PATHS, indirect=["path"])
def test_patched_model_inductor_matches_eager(name: str, path: str) -> None:
    _check_compiled_model(name, "inductor")


# ------------------------------------------------------------------------ the registration


@pytest.mark.skipif(not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck: 2.4+")
def test_fake_implementations_agree_with_the_kernels(kernel_device: str) -> None:
    """opcheck runs each op for real and on fake tensors and compares schemas, shapes, dtypes
    and strides."""
    x, w = torch.randn(4, 20), torch.randn(20)
    _, mean, rstd = layer_norm_op._forward(x, w, None, 20, 1e-5, False)
    q = torch.randn(1, 2, 13, 16)
    mask, seed = torch.tensor([[True] * 9 + [False] * 4]), torch.tensor([7], device="cpu")
    out, lse = attention_op._forward(q, q, q, mask, False, 0.25, 0.1, seed)
    z, t = torch.randn(5, 7), torch.tensor([1, 2, -100, 6, 0])
    _, _, stats = focal_op._forward(z, t, 2.0, None, 0.5, w[:7], -100, 0.1, True)
    calls = {
        layer_norm_op._forward: [
            (x, w, None, 20, 1e-5, False),
            (x, None, w, 20, 1e-5, False),
            (x.to(torch.bfloat16), w, w, 20, 1e-5, True),  # autocast: half in, fp32 out
        ],
        layer_norm_op._backward: [
            (torch.randn(4, 20), x, w, None, mean, rstd, 20, True, False),
            (torch.randn(4, 20), x, None, None, mean, rstd, 20, False, False),
            (torch.randn(4, 20), x.to(torch.bfloat16), w, w, mean, rstd, 20, True, True),
        ],
        attention_op._forward: [
            (q, q, q, mask, True, 0.25, 0.1, seed),
            (q, q, q, None, False, 1.0, 0.0, None),
        ],
        attention_op._backward: [
            (torch.randn_like(q), q, q, q, out, lse, mask, False, 0.25, 0.1, seed)
        ],
        focal_op._forward: [
            (z, t, 2.0, None, 0.5, w[:7], -100, 0.1, True),
            (z, t, 0.0, w[:7], 1.0, None, -100, 0.0, False),
        ],
        focal_op._backward: [
            (z, t, stats, torch.rand(5), w[:7], -100, 0.1),
            (z, t, stats, torch.tensor([3.0]).expand(5), None, -100, 0.0),
        ],
    }
    for call, arg_lists in calls.items():
        for args in arg_lists:
            torch.library.opcheck(call.op, args, test_utils=("test_schema", "test_faketensor"))


def test_without_custom_op_the_launcher_is_called_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a torch without torch.library.custom_op (before 2.4) define() hands back the eager
    launcher itself, so eager code keeps working."""
    monkeypatch.setattr(_library, "_custom_op", None)

    def impl(x: torch.Tensor) -> torch.Tensor:
        return x + 1

    assert _library.define("never_registered", "(Tensor x) -> Tensor", impl, impl) is impl
    assert not hasattr(torch.ops.fbdl_fast, "never_registered")
