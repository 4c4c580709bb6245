"""Optimisers against torch.optim, the papers' update rules (Lion, AdaBelief) and hand-computed
first steps; scheduler LR curves by hand."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

from fbdl_fast.config import ModelConfig
from fbdl_fast.training.optim import (
    OPTIMIZERS,
    SCHEDULERS,
    AdaBelief,
    Lion,
    OptimizerFactory,
    SchedulerFactory,
    create_optimizer,
    create_scheduler,
    scheduler_interval,
)

LR, WD = 0.01, 0.05


def _config(**overrides: Any) -> ModelConfig:
    values: dict[str, Any] = {
        "input_dim": 16,
        "num_heads": 2,
        "learning_rate": LR,
        "weight_decay": WD,
    }
    values.update(overrides)
    return ModelConfig(**values)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    data = torch.randn(8, 5, generator=torch.Generator().manual_seed(3))
    for _ in range(steps):
        optimizer.zero_grad()
        model(data).pow(2).mean().backward()
        optimizer.step()


# The torch.optim call each registry entry must equal: the design's betas/eps, our defaults.
REFERENCE = {
    "adam": lambda p: torch.optim.Adam(p, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD),
    "adamw": lambda p: torch.optim.AdamW(p, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD),
    "sgd": lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9, nesterov=True, weight_decay=WD),
    "rmsprop": lambda p: torch.optim.RMSprop(
        p, lr=LR, alpha=0.99, eps=1e-8, momentum=0.9, weight_decay=WD
    ),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=LR, eps=1e-10, weight_decay=WD),
}


def test_registry_names() -> None:
    assert sorted(OPTIMIZERS) == sorted([*REFERENCE, *PAPER_RULES])


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_optimizer_matches_torch_optim(name: str) -> None:
    ours, theirs = _model(), None
    theirs = copy.deepcopy(ours)
    _train(ours, create_optimizer(ours, _config(optimizer_type=name)))
    _train(theirs, REFERENCE[name](theirs.parameters()))
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    start = _model()
    assert not torch.equal(next(iter(start.parameters())), next(iter(ours.parameters())))


def test_adamw_first_step_by_hand() -> None:
    # Step 1 of Adam: bias-corrected m / sqrt(v) = g / |g|, so p -= lr * sign(g) after the
    # decoupled decay p *= 1 - lr * wd.
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    optimizer = create_optimizer([p], _config(optimizer_type="adamw"))
    p.grad = torch.tensor([0.5, -0.25, 2.0])
    optimizer.step()
    expected = torch.tensor([1.0, -2.0, 3.0]) * (1 - LR * WD) - LR * torch.tensor([1.0, -1, 1])
    torch.testing.assert_close(p.detach(), expected, atol=1e-7, rtol=0)


def test_sgd_nesterov_first_step_by_hand() -> None:
    # g' = g + wd p; buffer b = g' on step 1; nesterov update g' + momentum * b = 1.9 g'.
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = create_optimizer([p], _config(optimizer_type="sgd"))
    p.grad = torch.tensor([0.5, 1.0])
    optimizer.step()
    g = torch.tensor([0.5, 1.0]) + WD * torch.tensor([1.0, -2.0])
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, -2.0]) - LR * 1.9 * g)


# ----------------------------------------------------------------------------- Lion, AdaBelief
# The papers' update rules, written out here element by element on float64 tensors, with the
# state each keeps; the registry's optimisers must take the same steps.


def _lion_rule(p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], group: dict[str, Any]):
    """Chen et al. 2023, Algorithm 2 (decoupled decay: p - lr * (sign(c) + wd * p))."""
    beta1, beta2 = group["betas"]
    m = state.get("m", torch.zeros_like(p))
    c = beta1 * m + (1 - beta1) * g
    p_new = p - group["lr"] * (torch.sign(c) + group["weight_decay"] * p)
    state["m"] = beta2 * m + (1 - beta2) * g
    return p_new


def _adabelief_rule(
    p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
) -> torch.Tensor:
    """Zhuang et al. 2020, Algorithm 2: eps inside s_t, bias-corrected m and s, eps again in the
    denominator; decoupled decay p * (1 - lr * wd) first."""
    beta1, beta2 = group["betas"]
    lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
    t = state.get("t", 0) + 1
    m = beta1 * state.get("m", torch.zeros_like(p)) + (1 - beta1) * g
    s = beta2 * state.get("s", torch.zeros_like(p)) + (1 - beta2) * (g - m) ** 2 + eps
    m_hat, s_hat = m / (1 - beta1**t), s / (1 - beta2**t)
    state.update(t=t, m=m, s=s)
    return p * (1 - lr * wd) - lr * m_hat / (torch.sqrt(s_hat) + eps)


PAPER_RULES = {"lion": _lion_rule, "adabelief": _adabelief_rule}


# eps None: the default (1e-16); 1e-3 makes its two places count
@pytest.mark.parametrize(
    ("name", "eps"), [("lion", None), ("adabelief", None), ("adabelief", 1e-3)]
)
def test_paper_rule_over_several_steps(name: str, eps: float | None) -> None:
    """Six steps on a tiny tanh network in float64, with two groups (decayed matrices, undecayed
    biases: decay_biases_and_norms=False), against the rule applied by hand to the same grads."""
    ours = _model().double()
    theirs = copy.deepcopy(ours)
    config = _config(optimizer_type=name, decay_biases_and_norms=False, weight_decay=0.2)
    optimizer = create_optimizer(ours, config, **({} if eps is None else {"eps": eps}))
    groups = optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.2, 0.0]
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    group_of = {
        id(q): groups[0] if decay[id(p)] else groups[1]
        for p, q in zip(ours.parameters(), theirs.parameters())
    }
    states: dict[int, dict[str, Any]] = {id(q): {} for q in theirs.parameters()}
    data = torch.randn(8, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    target = torch.randn(8, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for _ in range(6):
        for model in (ours, theirs):
            model.zero_grad()
            (model(data) - target).pow(2).mean().backward()
        optimizer.step()
        with torch.no_grad():
            for q in theirs.parameters():
                assert q.grad is not None
                q.copy_(PAPER_RULES[name](q, q.grad, states[id(q)], group_of[id(q)]))
        for a, b in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    start = _model().double()
    moved = [not torch.equal(a, b) for a, b in zip(start.parameters(), ours.parameters())]
    assert all(moved)


def test_lion_two_steps_by_hand() -> None:
    """Lion, lr 0.01, wd 0.05, betas (0.9, 0.99). Step 1 (m = 0): p = p (1 - lr wd) - lr sign(g).
    Step 2: c = 0.9 * m + 0.1 * g2 with m = 0.01 * g1; the first coordinate's c is
    0.9 * 0.005 - 0.1 * 0.001 = 0.0044 > 0 although g2 < 0: the momentum decides its sign."""
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    optimizer = create_optimizer([p], _config(optimizer_type="lion"))
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    p.grad = torch.tensor([0.5, -0.25, 2.0], dtype=torch.float64)
    optimizer.step()
    step1 = [1.0 * 0.9995 - 0.01, -2.0 * 0.9995 + 0.01, 3.0 * 0.9995 - 0.01]
    assert p.tolist() == pytest.approx(step1, abs=1e-15)
    p.grad = torch.tensor([-0.001, 1.0, -0.5], dtype=torch.float64)
    optimizer.step()
    # c = [0.0044, 0.09775, -0.032]: signs +, +, -
    step2 = [step1[0] * 0.9995 - 0.01, step1[1] * 0.9995 - 0.01, step1[2] * 0.9995 + 0.01]
    assert p.tolist() == pytest.approx(step2, abs=1e-15)
    m = optimizer.state[p]["exp_avg"]
    assert m.tolist() == pytest.approx([0.99 * 0.005 - 0.00001, -0.002475 + 0.01, 0.0198 - 0.005])


def test_adabelief_first_step_by_hand() -> None:
    """AdaBelief, lr 0.01, wd 0.05, betas (0.9, 0.999), eps 1e-3. Step 1: m = 0.1 g,
    s = 0.001 (0.9 g)^2 + eps, so m_hat = g and s_hat = 0.81 g^2 + eps / 0.001 = 0.81 g^2 + 1:
    p = p (1 - lr wd) - lr g / (sqrt(0.81 g^2 + 1) + 0.001). With eps outside s (Adam's
    placement) the step would be lr g / (0.9 |g| + eps), about lr: 2 to 5 times larger here."""
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    optimizer = create_optimizer([p], _config(optimizer_type="adabelief"), eps=1e-3)
    grads = [0.5, -0.25, 2.0]
    p.grad = torch.tensor(grads, dtype=torch.float64)
    optimizer.step()
    expected = [
        x * (1 - 0.01 * 0.05) - 0.01 * g / (math.sqrt(0.81 * g * g + 1.0) + 1e-3)
        for x, g in zip([1.0, -2.0, 3.0], grads)
    ]
    assert p.tolist() == pytest.approx(expected, abs=1e-15)
    state = optimizer.state[p]
    assert state["step"] == 1
    assert state["exp_avg_var"].tolist() == pytest.approx(
        [0.001 * 0.81 * g * g + 1e-3 for g in grads], abs=1e-15
    )


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("lion", {"lr": -0.1}, r"Lion: lr=-0.1 is invalid; expected a finite number >= 0"),
        ("lion", {"lr": float("nan")}, r"Lion: lr=nan is invalid"),
        ("lion", {"betas": (0.9, 1.0)}, r"Lion: betas=\(0.9, 1.0\) is invalid; expected two"),
        ("lion", {"betas": (0.9,)}, r"Lion: betas=\(0.9,\) is invalid"),
        ("lion", {"weight_decay": -1}, r"Lion: weight_decay=-1 is invalid; expected a finite"),
        ("adabelief", {"eps": 0.0}, r"AdaBelief: eps=0.0 is invalid; expected a finite number > 0"),
        ("adabelief", {"betas": (-0.1, 0.9)}, r"AdaBelief: betas=\(-0.1, 0.9\) is invalid"),
        ("adabelief", {"lr": "0.1"}, r"AdaBelief: lr='0.1' is invalid"),
    ],
)
def test_bad_hyper_parameters_name_the_optimiser(
    name: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        create_optimizer(_model(), _config(optimizer_type=name), **options)
    with pytest.raises(ValueError, match=r"-0.5 is invalid; expected a finite number >= 0"):
        {"lion": Lion, "adabelief": AdaBelief}[name](_model().parameters(), lr=-0.5)


@pytest.mark.parametrize("name", sorted(PAPER_RULES))
def test_paper_optimisers_resume_from_their_state_dict(name: str) -> None:
    """The state a checkpoint stores (read back with weights_only, as the trainer does) continues
    the run exactly; sparse gradients are refused by name."""
    import io

    model = _model()
    optimizer = create_optimizer(model, _config(optimizer_type=name))
    _train(model, optimizer, steps=2)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    _train(model, optimizer, steps=2)
    resumed = _model()
    resumed.load_state_dict(saved["model"])
    other = create_optimizer(resumed, _config(optimizer_type=name))
    other.load_state_dict(saved["optimizer"])
    _train(resumed, other, steps=2)
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    embedding = nn.Embedding(4, 2, sparse=True)
    sparse = create_optimizer(embedding, _config(optimizer_type=name))
    embedding(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match=r"does not support sparse gradients"):
        sparse.step()


def test_optimizer_skips_frozen_parameters_and_takes_overrides() -> None:
    model = _model()
    model[0].weight.requires_grad_(False)
    optimizer = OptimizerFactory.create_optimizer(model, _config(optimizer_type="sgd"))
    params = optimizer.param_groups[0]["params"]
    assert len(params) == 3 and all(p is not model[0].weight for p in params)
    group = create_optimizer(
        model, _config(optimizer_type="sgd"), momentum=0.5, nesterov=False
    ).param_groups[0]
    assert (group["lr"], group["weight_decay"], group["momentum"], group["nesterov"]) == (
        LR,
        WD,
        0.5,
        False,
    )
    group = create_optimizer(model, _config(optimizer_type="rmsprop")).param_groups[0]
    assert group["momentum"] == 0.9


def test_unknown_optimizer_and_no_parameters() -> None:
    config = _config()
    config.optimizer_type = "lamb"  # after validation, which would refuse it
    accepted = "adabelief, adagrad, adam, adamw, lion, rmsprop, sgd"
    with pytest.raises(ValueError, match=rf"'lamb'; accepted: {accepted}"):
        create_optimizer(_model(), config)
    with pytest.raises(ValueError, match="no trainable parameters"):
        create_optimizer(nn.ReLU(), _config())


def _lrs(
    scheduler: Any, optimizer: torch.optim.Optimizer, steps: int, metrics: list[float] | None = None
) -> list[float]:
    """LR before each of `steps` scheduler steps (optimizer.step first, as in training)."""
    lrs = []
    for i in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if metrics is None:
            scheduler.step()
        else:
            scheduler.step(metrics[i])
    lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def _optimizer(config: ModelConfig) -> torch.optim.Optimizer:
    return create_optimizer(nn.Linear(2, 2), config)


def test_step_schedule() -> None:
    config = _config(scheduler_type="step", learning_rate=0.1, max_epochs=9)
    optimizer = _optimizer(config)
    scheduler = create_scheduler(optimizer, config)
    # step_size = max_epochs // 3 = 3, gamma 0.1
    expected = [0.1] * 3 + [0.01] * 3 + [0.001] * 3 + [0.0001]
    assert _lrs(scheduler, optimizer, 9) == pytest.approx(expected, rel=1e-9)
    optimizer = _optimizer(config)
    scheduler = create_scheduler(optimizer, config, step_size=1, gamma=0.5)
    assert _lrs(scheduler, optimizer, 3) == pytest.approx([0.1, 0.05, 0.025, 0.0125])


def test_cosine_schedule() -> None:
    config = _config(scheduler_type="cosine", learning_rate=0.1, max_epochs=10)
    optimizer = _optimizer(config)
    scheduler = SchedulerFactory.create_scheduler(optimizer, config)  # the 0.x API's 2-arg call
    expected = [0.05 * (1 + math.cos(math.pi * e / 10)) for e in range(11)]
    assert _lrs(scheduler, optimizer, 10) == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_plateau_reduces_after_patience_epochs_without_improvement() -> None:
    config = _config(scheduler_type="plateau", learning_rate=0.1, patience=4)  # plateau: 2
    optimizer = _optimizer(config)
    scheduler = create_scheduler(optimizer, config)
    val_losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.5, 0.6, 0.6, 0.6]
    lrs = _lrs(scheduler, optimizer, len(val_losses), val_losses)
    # best 0.9 at epoch 1; the third epoch without improvement (> patience 2) cuts the LR by 10;
    # 0.5 is a new best, then three more bad epochs cut it again.
    expected = [0.1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01, 0.001]
    assert lrs == pytest.approx(expected, rel=1e-9)


def _anneal_cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


def test_one_cycle_curve_peaks_at_the_learning_rate() -> None:
    config = _config(scheduler_type="one_cycle", learning_rate=0.1, max_epochs=2)
    optimizer = _optimizer(config)
    scheduler = create_scheduler(optimizer, config, steps_per_epoch=10)
    lrs = _lrs(scheduler, optimizer, 19)  # 20 steps in all: LR at steps 0..19
    # warm up for 30% of the steps from lr/25 to lr, then anneal to lr/25/1e4 (cosine both ways)
    initial, peak, final = 0.1 / 25, 0.1, 0.1 / 25 / 1e4
    up_end, total = 0.3 * 20 - 1, 20 - 1
    expected = [
        _anneal_cos(initial, peak, i / up_end)
        if i <= up_end
        else _anneal_cos(peak, final, (i - up_end) / (total - up_end))
        for i in range(20)
    ]
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == 5
    assert scheduler_interval("one_cycle") == "batch"


def test_one_cycle_momentum_and_its_errors() -> None:
    config = _config(scheduler_type="one_cycle", learning_rate=0.1, max_epochs=1)
    optimizer = _optimizer(config)  # adamw: beta1 cycles 0.95 -> 0.85 at the LR peak
    scheduler = create_scheduler(optimizer, config, steps_per_epoch=10)
    assert optimizer.param_groups[0]["betas"][0] == pytest.approx(0.95)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["betas"][0] == pytest.approx(0.85)  # peak at step 0.3*10-1
    with pytest.raises(ValueError, match=r"one_cycle.*steps_per_epoch=None"):
        create_scheduler(optimizer, config)
    # adagrad has no momentum to cycle: still a valid one-cycle schedule
    adagrad = _optimizer(_config(optimizer_type="adagrad", scheduler_type="one_cycle"))
    scheduler = create_scheduler(adagrad, config, steps_per_epoch=4)
    assert adagrad.param_groups[0]["lr"] == pytest.approx(0.1 / 25)


def test_no_scheduler_intervals_and_unknown_names() -> None:
    config = _config(scheduler_type=None)
    assert create_scheduler(_optimizer(config), config) is None
    assert sorted(SCHEDULERS) == ["cosine", "linear", "one_cycle", "plateau", "step"]
    names = ("step", "cosine", "plateau", "one_cycle", "linear")
    assert [scheduler_interval(n) for n in names] == [
        "epoch",
        "epoch",
        "plateau",
        "batch",
        "batch",
    ]
    accepted = "cosine, linear, one_cycle, plateau, step"
    with pytest.raises(ValueError, match=rf"'warmup'; accepted: {accepted}"):
        scheduler_interval("warmup")
    config = _config()
    config.scheduler_type = "warmup"
    with pytest.raises(ValueError, match=r"scheduler_type 'warmup'"):
        create_scheduler(_optimizer(config), config)


def test_linear_schedule_warms_up_then_decays_to_zero() -> None:
    """LR after k optimizer steps of 'linear' (HF's get_linear_schedule_with_warmup), by hand:
    5 epochs x 10 steps = 50 steps, warmup ceil(0.06 * 50) = 3 steps, then (50 - k) / 47."""
    config = _config(scheduler_type="linear", max_epochs=5)
    assert config.warmup_fraction == 0.06  # the fine-tuning default
    optimizer = _optimizer(config)
    scheduler = create_scheduler(optimizer, config, steps_per_epoch=10)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(50):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    by_hand = {0: 0.0, 1: LR / 3, 2: 2 * LR / 3, 3: LR, 4: LR * 46 / 47, 26: LR * 24 / 47, 50: 0}
    for k, lr in by_hand.items():
        assert lrs[k] == pytest.approx(lr, abs=1e-15), k
    assert max(lrs) == pytest.approx(LR) and lrs.index(max(lrs)) == 3
    assert all(a > b for a, b in zip(lrs[3:50], lrs[4:51]))  # strictly down after the peak

    # No warmup: the peak LR from the first step, decaying over 4 x 2 = 8 steps.
    config = _config(scheduler_type="linear", max_epochs=4, warmup_fraction=0.0)
    optimizer = _optimizer(config)
    scheduler = create_scheduler(optimizer, config, steps_per_epoch=2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR * 7 / 8)
    with pytest.raises(ValueError, match=r"linear.*steps_per_epoch=None"):
        create_scheduler(optimizer, config)
    with pytest.raises(ValueError, match=r"warmup_fraction=1.0 is invalid"):
        _config(warmup_fraction=1.0)


def test_linear_schedule_state_resumes_the_curve() -> None:
    """A checkpoint's scheduler state, loaded into a scheduler built for another length, gives
    back the saved schedule (LambdaLR saves the LinearWarmupDecay's warmup and total)."""
    config = _config(scheduler_type="linear", max_epochs=2)
    optimizer = _optimizer(config)
    scheduler = create_scheduler(optimizer, config, steps_per_epoch=50)  # 100 steps, warmup 6
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [{"warmup": 6, "total": 100}]
    other = _optimizer(config)
    resumed = create_scheduler(other, config, steps_per_epoch=7)
    resumed.load_state_dict(state)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        other.step()
        resumed.step()
        assert other.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert other.param_groups[0]["lr"] == pytest.approx(LR * 85 / 94)


def test_weight_decay_spares_biases_and_norm_gains() -> None:
    """decay_biases_and_norms=False: two AdamW groups, matrices and embeddings decayed, every
    1-D parameter (biases, LayerNorm gains and shifts) not. With zero gradients an AdamW step
    is the decay alone: p * (1 - lr * wd) in the first group, p unchanged in the second."""
    model = nn.Sequential(nn.Embedding(7, 4), nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = create_optimizer(model, _config(decay_biases_and_norms=False))
    groups = [
        (g["weight_decay"], [names[id(p)] for p in g["params"]]) for g in optimizer.param_groups
    ]
    assert groups == [
        (WD, ["0.weight", "1.weight", "3.weight"]),
        (0.0, ["1.bias", "2.weight", "2.bias", "3.bias"]),  # 2.weight: the LayerNorm's gain
    ]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # LayerNorm's gain/shift start at 1/0: make every value non-trivial
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 1 - LR * WD if name in groups[0][1] else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=0, atol=1e-7)
    assert not torch.equal(model[1].weight, before["1.weight"])  # the decay did act

    # The default (every other model): one group, decay on everything, as before.
    default = create_optimizer(model, _config())
    assert [len(g["params"]) for g in default.param_groups] == [7]
    assert default.param_groups[0]["weight_decay"] == WD
    # A weight_decay keyword still reaches the decayed group only.
    override = create_optimizer(model, _config(decay_biases_and_norms=False), weight_decay=0.5)
    assert [g["weight_decay"] for g in override.param_groups] == [0.5, 0.0]


def test_layer_decay_gives_each_depth_its_lr() -> None:
    """layer_decay d on a 2-block BertClassifier: head lr, block 1 lr*d, block 0 lr*d**2,
    embeddings lr*d**3, each depth split into decayed matrices and undecayed 1-D parameters."""
    from fbdl_fast.models import create_model

    config = _config(
        hidden_dim=32,
        num_layers=2,
        vocab_size=30,
        max_seq_length=8,
        layer_decay=0.5,
        decay_biases_and_norms=False,
    )
    model = create_model("bert", config)
    optimizer = create_optimizer(model, config)
    got = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            got[id(p)] = (group["lr"], group["weight_decay"])
    expected_lr = {"embeddings": LR * 0.125, "blocks.0": LR * 0.25, "blocks.1": LR * 0.5}
    for name, p in model.named_parameters():
        prefix = next((k for k in expected_lr if name.startswith(k + ".")), None)
        lr = expected_lr[prefix] if prefix else LR  # the head
        assert got[id(p)] == (pytest.approx(lr), WD if p.ndim > 1 else 0.0), name
    assert len(optimizer.param_groups) == 8  # 4 depths x (decayed, not)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    # The linear schedule scales each group's own LR.
    config.scheduler_type, config.max_epochs = "linear", 1
    scheduler = create_scheduler(optimizer, config, steps_per_epoch=10)  # warmup 1 step
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups[:2]] == pytest.approx([LR * 0.125] * 2)
    with pytest.raises(ValueError, match=r"layer_decay=0.5 needs a model with layers"):
        create_optimizer(_model(), _config(layer_decay=0.5))
    with pytest.raises(ValueError, match=r"layer_decay=0 is invalid; expected a number in"):
        _config(layer_decay=0)


@pytest.mark.parametrize("name", sorted(PAPER_RULES))
def test_paper_optimisers_step_with_a_closure(name: str) -> None:
    """step(closure) returns the closure's loss, computed with gradients on under step's
    no_grad, and takes the same step as backward() then step()."""
    a = _model()
    b, start = copy.deepcopy(a), copy.deepcopy(a)
    opt_a = create_optimizer(a, _config(optimizer_type=name))
    opt_b = create_optimizer(b, _config(optimizer_type=name))
    data = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))

    def closure() -> torch.Tensor:
        opt_a.zero_grad()
        loss = a(data).pow(2).mean()
        loss.backward()
        return loss

    before = b(data).pow(2).mean()
    loss = opt_a.step(closure)
    before.backward()
    opt_b.step()
    assert loss is not None and loss.item() == before.item() and loss.requires_grad
    assert not torch.equal(a[0].weight, start[0].weight)  # a step was taken
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
