"""Optimisers against torch.optim and hand-computed first steps; scheduler LR curves by hand."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

from fbdl_fast.config import ModelConfig
from fbdl_fast.optim import (
    OPTIMIZERS,
    SCHEDULERS,
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


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
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
    config.optimizer_type = "lion"  # after validation, which would refuse it
    with pytest.raises(ValueError, match=r"'lion'; accepted: adagrad, adam, adamw, rmsprop, sgd"):
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
    scheduler = SchedulerFactory.create_scheduler(optimizer, config)  # the seed's two-arg call
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
