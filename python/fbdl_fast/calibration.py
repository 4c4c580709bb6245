"""Calibration: how far a model's confidence is from its accuracy, and temperature scaling.

Expected calibration error (Guo et al., "On Calibration of Modern Neural Networks", 2017): the
top-label confidences (the largest probability of each sample) fall into 15 equal-width bins
(i/15, (i+1)/15]; ECE is the mean over samples of |accuracy of its bin - mean confidence of its
bin|, i.e. sum_b |B_b| / N * |acc(B_b) - conf(B_b)|. A reliability diagram plots the same bins.

Temperature scaling (same paper): one scalar T > 0 divides the logits, softmax(z / T). It is
fitted after training by minimising the negative log-likelihood on the validation logits with
LBFGS; argmax, hence accuracy and F1, is unchanged. T > 1 softens an over-confident model. T is
optimised as log T (so it stays positive), in float64, and kept within [TEMPERATURE_MIN,
TEMPERATURE_MAX]: a validation set the model gets all right would otherwise drive T to 0.

The binning works on (confidence, correct) pairs, so a multi-label model can pass one pair per
sample and label.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

ECE_BINS = 15
TEMPERATURE_MIN, TEMPERATURE_MAX = 0.01, 100.0


@dataclass
class Reliability:
    """Equal-width confidence bins: per bin its sample count, mean confidence and accuracy
    (both 0 for an empty bin). Bin i holds confidences in (i/bins, (i+1)/bins]; 0 goes to bin 0."""

    counts: list[int]
    confidence: list[float]
    accuracy: list[float]

    @property
    def bins(self) -> int:
        return len(self.counts)

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean |accuracy - confidence|."""
        total = sum(self.counts)
        return sum(
            n / total * abs(acc - conf)
            for n, acc, conf in zip(self.counts, self.accuracy, self.confidence)
        )

    def to_dict(self) -> dict[str, object]:
        return {"bins": self.bins, "ece": self.ece, **asdict(self)}


def reliability(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS
) -> Reliability:
    """Bin (confidence, correct) pairs: confidence in [0, 1], correct bool, both (N,)."""
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins={bins!r} is invalid; expected an integer >= 1")
    confidence = confidence.detach().double().cpu().flatten()
    correct = correct.detach().cpu().flatten()
    if confidence.numel() == 0 or confidence.shape != correct.shape:
        raise ValueError(
            f"confidence and correct must be non-empty and of one shape; got "
            f"{tuple(confidence.shape)} and {tuple(correct.shape)}"
        )
    if not torch.all((confidence >= 0) & (confidence <= 1)):  # NaN fails too
        raise ValueError("confidence holds values outside [0, 1] (or NaN); expected probabilities")
    # bin b holds (b/bins, (b+1)/bins]: bucketize's right=False puts x in b when
    # edges[b-1] < x <= edges[b], over the inner edges 1/bins .. (bins-1)/bins
    inner = torch.arange(1, bins, dtype=torch.float64) / bins
    index = torch.bucketize(confidence, inner)
    counts = torch.bincount(index, minlength=bins)
    sums = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    hits = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct.double())
    denominator = counts.clamp(min=1).double()
    return Reliability(
        counts.tolist(), (sums / denominator).tolist(), (hits / denominator).tolist()
    )


def top_label_reliability(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS
) -> Reliability:
    """Reliability of a classifier's top label: probs (N, C) rows summing to 1, labels (N,)."""
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(
            f"probs must be (N, C) and labels (N,); got {tuple(probs.shape)} and "
            f"{tuple(labels.shape)}"
        )
    confidence, predicted = probs.max(dim=1)
    return reliability(confidence, predicted == labels.to(predicted.device), bins)


def expected_calibration_error(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS
) -> float:
    """ECE of the top label over `bins` equal-width bins (15: Guo et al.'s choice)."""
    return top_label_reliability(probs, labels, bins).ece


def top_label(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, rows: int = 4096
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(top-label confidence (N,) float64, predicted class ids (N,) int64, mean NLL) of
    softmax(logits / temperature), computed `rows` posts at a time in float64: the (N, C)
    probabilities are never held whole (10,000 classes x 10,000 posts would be 800 MB)."""
    confidence, predicted, nll_sum = [], [], 0.0
    for start in range(0, logits.shape[0], rows):
        z = logits[start : start + rows].detach().double().cpu() / temperature
        y = labels[start : start + rows].detach().long().cpu()
        log_norm = torch.logsumexp(z, dim=1)
        top, ids = z.max(dim=1)
        confidence.append((top - log_norm).exp())
        predicted.append(ids)
        nll_sum += (log_norm - z.gather(1, y[:, None]).squeeze(1)).sum().item()
    return torch.cat(confidence), torch.cat(predicted), nll_sum / max(logits.shape[0], 1)


def _top_label_ece(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float, bins: int
) -> float:
    confidence, predicted, _ = top_label(logits, labels, temperature)
    return reliability(confidence, predicted == labels, bins).ece


def _check_logits(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2 or labels.shape != logits.shape[:1] or logits.shape[0] == 0:
        raise ValueError(
            f"logits must be (N, C) with N >= 1 and labels (N,); got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if not torch.isfinite(logits).all():
        raise ValueError("logits hold NaN or infinite values; a temperature cannot be fitted")


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / temperature) (float64)."""
    return F.cross_entropy(logits.double() / temperature, labels.long()).item()


@dataclass
class TemperatureFit:
    """A fitted temperature and what it changed on the data it was fitted on."""

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    num_samples: int
    bins: int = ECE_BINS

    def to_dict(self) -> dict[str, float | int | str]:
        return {"method": "temperature", **asdict(self)}


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100, bins: int = ECE_BINS
) -> TemperatureFit:
    """The T minimising the NLL of softmax(logits / T) on (logits (N, C), labels (N,)):
    LBFGS with a strong-Wolfe line search over log T, from T = 1. If the optimiser ends no
    better than T = 1 (it should not), T = 1 is kept."""
    _check_logits(logits, labels)
    z, y = logits.detach().double().cpu(), labels.detach().long().cpu()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    bounds = math.log(TEMPERATURE_MIN), math.log(TEMPERATURE_MAX)
    temperature = math.exp(min(max(log_t.item(), bounds[0]), bounds[1]))
    before, after = nll(z, y), nll(z, y, temperature)
    if not after <= before:  # NaN included
        temperature, after = 1.0, before
    return TemperatureFit(
        temperature=temperature,
        nll_before=before,
        nll_after=after,
        ece_before=_top_label_ece(z, y, 1.0, bins),
        ece_after=_top_label_ece(z, y, temperature, bins),
        num_samples=int(y.numel()),
        bins=bins,
    )


__all__ = [
    "ECE_BINS",
    "Reliability",
    "TemperatureFit",
    "expected_calibration_error",
    "fit_temperature",
    "nll",
    "reliability",
    "top_label",
    "top_label_reliability",
]
