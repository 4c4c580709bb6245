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
A fit needs a validation split of MIN_POSTS_PER_CLASS posts of each of MIN_CALIBRATION_CLASSES
classes (fit_temperature refuses less, and train does before training), and a fit whose optimum
lies at a bound of that range says so (TemperatureFit.bound, bound_warning): it tells nothing
about the model's calibration.

The binning works on (confidence, correct) pairs, so a multi-label model can pass one pair per
sample and label.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F

ECE_BINS = 15
TEMPERATURE_MIN, TEMPERATURE_MAX = 0.01, 100.0

# The smallest validation split a temperature is fitted on: MIN_POSTS_PER_CLASS posts of each of
# MIN_CALIBRATION_CLASSES classes. Why: T weighs how sure the model is when right against how sure
# it is when wrong, so a fit needs posts of more than one class and more than one post a class.
# With one post the NLL is monotone in 1/T whenever the model gets it right (T runs to its lower
# bound) and, with 2 classes, whenever it gets it wrong (T = 100: every probability 1/2, the
# stored result that prompted this check); posts of one class only say how sure to be of that
# class. Measured on a model calibrated at T = 1 (2 classes, logits N(0, 3^2), labels drawn from
# its softmax, 200 draws a size): with 1-8 posts about 1 fit in 5 lands outside [0.05, 20], with
# 16 posts 1 in 10, with 32 1 in 100. So this is where a fit becomes possible at all, not reliable:
# above it, a fit pinned at a bound is reported (TemperatureFit.bound_warning).
MIN_CALIBRATION_CLASSES = 2
MIN_POSTS_PER_CLASS = 2
MIN_CALIBRATION_POSTS = MIN_CALIBRATION_CLASSES * MIN_POSTS_PER_CLASS


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


def calibration_split_problem(labels: Sequence[Hashable]) -> Optional[str]:
    """Why a temperature cannot be fitted on posts with these labels (one a post), or None: the
    minimum (MIN_POSTS_PER_CLASS posts of each of MIN_CALIBRATION_CLASSES classes) and what the
    posts hold."""
    counts = Counter(labels)
    if sum(n >= MIN_POSTS_PER_CLASS for n in counts.values()) >= MIN_CALIBRATION_CLASSES:
        return None
    total = len(labels)
    shown = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
    held = ", ".join(f"{n} of class {label}" for label, n in shown[:10])
    if len(shown) > 10:
        held += f" and {len(shown) - 10} more classes"
    return (
        f"a temperature is fitted on at least {MIN_CALIBRATION_POSTS} posts, "
        f"{MIN_POSTS_PER_CLASS} of each of at least {MIN_CALIBRATION_CLASSES} classes; got "
        f"{total} post{'s' if total != 1 else ''}: {held}"
    )


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
    # "lower" or "upper" when the NLL's minimum over the search range lies at that bound
    bound: Optional[str] = None

    def to_dict(self) -> dict[str, float | int | str | None]:
        return {"method": "temperature", **asdict(self)}

    def summary(self) -> str:
        """The fit in one line, saying what T optimises: the NLL, which it lowers; the ECE is
        a binned measure T does not optimise, so on a small split it can rise."""
        return (
            f"temperature {self.temperature:.4g} fitted to minimise the validation NLL (NLL "
            f"{self.nll_before:.4f} -> {self.nll_after:.4f}); validation ECE "
            f"{self.ece_before:.4f} -> {self.ece_after:.4f} ({self.bins} bins, not optimised, "
            f"{self.num_samples} posts)"
        )

    def bound_warning(self) -> Optional[str]:
        """What a fit at a bound of the search range means for the probabilities, or None."""
        span = f"[{TEMPERATURE_MIN:g}, {TEMPERATURE_MAX:g}]"
        if self.bound == "upper":
            return (
                f"the calibration's temperature {self.temperature:.3g} sits at the upper bound "
                f"of its search range {span}: on the {self.num_samples} validation posts the "
                "model is sure and wrong so often that the NLL only falls as T grows, and every "
                "probability is near 1/2 (1/classes); check the validation labels, or train "
                "without calibration"
            )
        if self.bound == "lower":
            return (
                f"the calibration's temperature {self.temperature:.3g} runs toward the lower "
                f"bound of its search range {span}: the model gets every one of the "
                f"{self.num_samples} validation posts right, so the NLL only falls as T shrinks "
                "and the fit says nothing about its calibration (probabilities are pushed "
                "toward 1); calibrate on a larger or harder validation split"
            )
        return None


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100, bins: int = ECE_BINS
) -> TemperatureFit:
    """The T minimising the NLL of softmax(logits / T) on (logits (N, C), labels (N,)):
    LBFGS with a strong-Wolfe line search over log T, from T = 1. If the optimiser ends no
    better than T = 1 (it should not), T = 1 is kept. ValueError for fewer posts than
    MIN_POSTS_PER_CLASS of each of MIN_CALIBRATION_CLASSES classes; the fit's `bound` names the
    bound of [TEMPERATURE_MIN, TEMPERATURE_MAX] where the NLL's minimum over it lies, if any."""
    _check_logits(logits, labels)
    problem = calibration_split_problem(labels.detach().cpu().tolist())
    if problem is not None:
        raise ValueError(problem)
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
        bound=_bound_reached(z, y, after),
        temperature=temperature,
        nll_before=before,
        nll_after=after,
        ece_before=_top_label_ece(z, y, 1.0, bins),
        ece_after=_top_label_ece(z, y, temperature, bins),
        num_samples=int(y.numel()),
        bins=bins,
    )


def _bound_reached(z: torch.Tensor, y: torch.Tensor, at_fit: float) -> Optional[str]:
    """The bound of the search range whose NLL is no higher than the fit's (`at_fit`), if any.
    The NLL is convex in 1/T (a log-sum-exp of linear functions minus a linear one), so the
    range's minimum then lies at that bound: the unconstrained optimum is beyond it (T = 0 when
    every post is right), and LBFGS may stop short of the bound as the gradient vanishes (it
    stops near T = 0.1 when every post is right)."""
    for name, bound in (("lower", TEMPERATURE_MIN), ("upper", TEMPERATURE_MAX)):
        if nll(z, y, bound) <= at_fit:
            return name
    return None


__all__ = [
    "ECE_BINS",
    "MIN_CALIBRATION_CLASSES",
    "MIN_CALIBRATION_POSTS",
    "MIN_POSTS_PER_CLASS",
    "Reliability",
    "TemperatureFit",
    "calibration_split_problem",
    "expected_calibration_error",
    "fit_temperature",
    "nll",
    "reliability",
    "top_label",
    "top_label_reliability",
]
