"""Expected calibration error and temperature scaling: hand-computed bins, the optimum against a
grid search, an over-confident model made honest, and the temperature's trip through a
checkpoint into Trainer.predict."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from fbdl_fast.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability,
    top_label,
    top_label_reliability,
)
from fbdl_fast.checkpoint import CheckpointError, add_calibration, load_checkpoint, temperature_of
from fbdl_fast.training.trainer import Trainer
from tiny_run import BAG_CLASSES, Bag, Posts, bag_config


def test_reliability_bins_by_hand() -> None:
    # Bins of width 1/15, right edge included: 0.0 and 1/15 in bin 0, 0.5 in bin 7, 1.0 in 14.
    confidence = torch.tensor([0.0, 1 / 15, 0.5, 0.52, 1.0, 1.0], dtype=torch.float64)
    correct = torch.tensor([False, True, True, False, True, False])
    rel = reliability(confidence, correct)
    assert rel.bins == 15
    assert (
        rel.counts[0] == 2 and rel.counts[7] == 2 and rel.counts[14] == 2 and sum(rel.counts) == 6
    )
    assert rel.accuracy[0] == 0.5 and rel.confidence[0] == pytest.approx(1 / 30)
    assert rel.confidence[7] == pytest.approx(0.51) and rel.accuracy[14] == 0.5
    expected = (2 * abs(0.5 - 1 / 30) + 2 * abs(0.5 - 0.51) + 2 * abs(0.5 - 1.0)) / 6
    assert rel.ece == pytest.approx(expected, abs=1e-12)


def _reference_ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE written the textbook way: a loop over the bins (lo, hi]."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (confidence > lo) & (confidence <= hi) if b else confidence <= hi
        if inside.any():
            gap = correct[inside].mean() - confidence[inside].double().mean()
            total += inside.double().mean().item() * abs(gap.item())
    return total


def _overconfident(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of 4 classes, right about 55% of the time, scaled to near-certainty."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    logits = torch.randn(n, 4, generator=g)
    logits[torch.arange(n), labels] += 1.2
    return 8 * logits, labels


def test_ece_matches_a_loop_over_the_bins() -> None:
    logits, labels = _overconfident(3000, seed=1)
    for scale in (1.0, 0.125, 0.02):
        probs = torch.softmax(logits * scale, dim=1)
        assert expected_calibration_error(probs, labels) == pytest.approx(
            _reference_ece(probs, labels), abs=1e-12
        )


def test_fitted_temperature_is_the_nll_minimum() -> None:
    logits, labels = _overconfident(2000, seed=2)
    fit = fit_temperature(logits, labels)
    z, picked = logits.double(), logits.double()[torch.arange(len(labels)), labels]

    def grid_minimum(low: float, high: float) -> tuple[float, float]:
        """The best of 201 temperatures spaced evenly in log T, and the step between them."""
        temperatures = torch.linspace(math.log(low), math.log(high), 201, dtype=torch.float64).exp()
        t = temperatures[:, None]  # (K, 1): every temperature's NLL at once
        nlls = (torch.logsumexp(z[None] / t[:, :, None], dim=2) - picked[None] / t).mean(dim=1)
        return temperatures[nlls.argmin()].item(), (math.log(high) - math.log(low)) / 200

    coarse, step = grid_minimum(1.0, 30.0)
    best, _ = grid_minimum(coarse * math.exp(-step), coarse * math.exp(step))  # 0.02% steps
    assert fit.temperature == pytest.approx(best, rel=2e-3)
    assert fit.temperature > 3  # over-confident by 8x: softened
    assert fit.nll_after == pytest.approx(nll(logits, labels, fit.temperature), abs=1e-12)
    assert fit.nll_after < fit.nll_before
    # Argmax is unchanged, so accuracy is too.
    assert torch.equal((logits / fit.temperature).argmax(1), logits.argmax(1))


def test_ece_drops_on_an_overconfident_model() -> None:
    """A Bag trained on posts whose labels are 30% noise, its head scaled x10: near-certain and
    right ~70% of the time. The temperature fitted on one half lowers ECE on the other half."""
    posts = Posts(1200, seed=5)
    g = torch.Generator().manual_seed(6)
    noisy = torch.rand(len(posts), generator=g) < 0.3
    posts.labels = torch.where(
        noisy, torch.randint(0, BAG_CLASSES, (len(posts),), generator=g), posts.labels
    )
    config = bag_config(max_epochs=3)
    trainer = Trainer(Bag(), config, device="cpu", progress=False)
    trainer.fit(DataLoader(posts, batch_size=64, shuffle=False), DataLoader(posts, batch_size=600))
    with torch.no_grad():
        trainer.model.head.weight.mul_(10)
        trainer.model.head.bias.mul_(10)
    logits, labels, _ = trainer.outputs(DataLoader(posts, batch_size=600))
    assert labels is not None
    val, test = slice(0, 600), slice(600, 1200)
    fit = fit_temperature(logits[val], labels[val])
    before = expected_calibration_error(torch.softmax(logits[test], 1), labels[test])
    after = expected_calibration_error(
        torch.softmax(logits[test] / fit.temperature, 1), labels[test]
    )
    accuracy = (logits[test].argmax(1) == labels[test]).double().mean().item()
    assert 0.6 < accuracy < 0.9 and before > 0.15  # over-confident, as built
    assert fit.temperature > 3 and after < before / 3
    assert fit.ece_after < fit.ece_before  # on the half it was fitted on, too


def test_a_model_that_is_always_right_keeps_a_bounded_temperature() -> None:
    logits, labels = 5 * torch.eye(3).repeat(2, 1), torch.arange(3).repeat(2)  # 2 posts a class
    fit = fit_temperature(logits, labels)
    assert 0.01 <= fit.temperature < 1 and fit.nll_after <= fit.nll_before


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_temperature(torch.tensor([[0.0, math.nan]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"logits must be \(N, C\)"):
        fit_temperature(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        reliability(torch.tensor([1.5]), torch.tensor([True]))
    with pytest.raises(ValueError, match="bins=0 is invalid"):
        reliability(torch.tensor([0.5]), torch.tensor([True]), bins=0)
    with pytest.raises(ValueError, match=r"probs must be \(N, C\)"):
        top_label_reliability(torch.ones(4), torch.zeros(4, dtype=torch.long))


def test_predict_applies_the_temperature_stored_in_the_checkpoint(tmp_path: Path) -> None:
    config = bag_config()
    trainer = Trainer(Bag(), config, device="cpu", progress=False)
    path = trainer.save_checkpoint(tmp_path / "best.pt")
    assert temperature_of(load_checkpoint(path)) == 1.0
    add_calibration(path, {"temperature": 2.5, "nll_before": 1.0})
    assert load_checkpoint(path)["calibration"] == {"temperature": 2.5, "nll_before": 1.0}
    loader = DataLoader(Posts(20, seed=2), batch_size=8)
    logits, _, _ = trainer.outputs(loader)
    loaded = Trainer(Bag(), config, device="cpu", progress=False)
    loaded.load_checkpoint(path, model_only=True)
    assert loaded.temperature == 2.5
    _, probs = loaded.predict(loader)
    torch.testing.assert_close(probs, torch.softmax(logits / 2.5, dim=1))
    # Resuming training from it drops the temperature: it was fitted for these weights only.
    loaded.load_checkpoint(path)
    assert loaded.temperature == 1.0


def test_damaged_calibration_names_the_checkpoint(tmp_path: Path) -> None:
    path = Trainer(Bag(), bag_config(), device="cpu").save_checkpoint(tmp_path / "best.pt")
    for bad in ({"temperature": -1.0}, {"temperature": math.inf}, {"t": 2.0}, 3.0):
        with pytest.raises(CheckpointError, match=rf"{path}.*damaged calibration"):
            temperature_of({"calibration": bad}, path)
    with pytest.raises(CheckpointError, match="damaged calibration"):
        add_calibration(path, {"temperature": 0.0})
    assert "calibration" not in load_checkpoint(path)  # nothing half-written


def test_top_label_in_blocks_equals_the_whole_softmax() -> None:
    logits, labels = _overconfident(50, seed=3)
    confidence, predicted, mean_nll = top_label(logits, labels, temperature=2.0, rows=7)
    probs = torch.softmax(logits.double() / 2.0, dim=1)
    torch.testing.assert_close(confidence, probs.max(dim=1).values, rtol=0, atol=1e-12)
    assert torch.equal(predicted, logits.argmax(dim=1))
    assert mean_nll == pytest.approx(nll(logits, labels, 2.0), abs=1e-12)
