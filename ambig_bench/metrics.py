"""The one evaluation module: every strategy's test predictions are scored here, the same way.

Inputs are plain tensors (class probabilities over the K real classes, predicted sets, ambiguity
scores, and the truth), so metrics can be recomputed from a run's saved predictions.

>>> import torch
>>> probs = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0]])
>>> sets = torch.tensor([[True, False, False], [True, True, False]])
>>> m = evaluate(probs, sets, torch.tensor([0.1, 0.5]), torch.tensor([0, 0]), torch.tensor([-1, 1]))
>>> m["clear_acc"], m["between_set_acc"], m["between_balance"]
(1.0, 1.0, 0.5)
>>> METRICS["ece"].direction
'lower is better'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

NON_NEGATIVE = (0.0, math.inf)  # bounds of a metric with no upper limit (NLL, set sizes)


@dataclass(frozen=True)
class Metric:
    """What a metric means, how to label its axis, and which end is better: the one place every table, ranking,
    verdict and figure reads it from."""

    description: str  # one line: what is measured, on which images
    label: str  # axis label, with its unit
    higher_is_better: bool | None  # None: neither end is better, so it is reported but never ranked
    bounds: tuple[float, float] = (0.0, 1.0)  # the values it can take: confidence intervals are clipped to them

    @property
    def direction(self) -> str:
        return {True: "higher is better", False: "lower is better", None: "not ranked"}[self.higher_is_better]


# The metrics of `evaluate`, in the order of every table.
METRICS: dict[str, Metric] = {
    "clear_acc": Metric("clear-cut images: top-1 accuracy over the K classes",
                        "clear-cut top-1 accuracy (fraction)", True),
    "clear_set_acc": Metric("clear-cut images: predicted set is exactly {y}",
                            "clear-cut exact-set accuracy (fraction)", True),
    "nll": Metric("clear-cut images: negative log-likelihood of y (nats)", "clear-cut NLL (nats)", False, NON_NEGATIVE),
    "ece": Metric("clear-cut images: expected calibration error of the top-1 confidence, 15 bins",
                  "clear-cut ECE (fraction)", False),
    "between_set_acc": Metric("in-between images: predicted set is exactly {A, B}",
                              "in-between set = {A, B} (fraction)", True),
    "between_top2": Metric("in-between images: A and B are the two most probable classes",
                           "in-between top-2 = {A, B} (fraction)", True),
    "between_mass": Metric("in-between images: mean p_A + p_B", "in-between p_A + p_B (probability)", True),
    "between_balance": Metric("in-between images: mean p_A / (p_A + p_B); ideal = the soft share (0.5)",
                              "in-between p_A / (p_A + p_B)", None),
    "between_balance_err": Metric("in-between images: mean |p_A / (p_A + p_B) - share of A|",
                                  "in-between |balance − share of A|", False),
    "ambiguity_auroc": Metric("AUROC of the strategy's ambiguity score, in-between vs clear-cut",
                              "ambiguity AUROC (0.5 = chance)", True),
    "human_ce": Metric("images with human votes: cross-entropy from the vote distribution to the predicted one, "
                       "-Σ_k v_k log p_k (nats; CIFAR-10H's measure)", "cross-entropy to human votes (nats)", False,
                       NON_NEGATIVE),
}
# Prediction-set quality on the test split (calibration.conformal_summary): conformal sets (cp_) next to the
# strategy's own threshold sets (thr_). Not ranked: a conformal set's coverage is a target, not a score.
SET_METRICS: dict[str, Metric] = {
    "cp_coverage": Metric("conformal sets hold every true label, all test images (guaranteed >= 1 - alpha)",
                          "conformal coverage (fraction)", None),
    "cp_size": Metric("mean conformal set size, all test images", "conformal set size (classes)", None, NON_NEGATIVE),
    "cp_clear_coverage": Metric("coverage on clear-cut images", "clear-cut conformal coverage (fraction)", None),
    "cp_clear_size": Metric("mean set size on clear-cut images", "clear-cut conformal set size (classes)", None,
                            NON_NEGATIVE),
    "cp_between_coverage": Metric("coverage on in-between images (both A and B in the set)",
                                  "in-between conformal coverage (fraction)", None),
    "cp_between_size": Metric("mean set size on in-between images", "in-between conformal set size (classes)",
                              None, NON_NEGATIVE),
    "cp_between_exact": Metric("conformal set is exactly {A, B} on in-between images",
                               "in-between conformal set = {A, B} (fraction)", None),
    "thr_clear_size": Metric("the strategy's own threshold sets: mean size on clear-cut images",
                             "clear-cut threshold set size (classes)", None, NON_NEGATIVE),
    "thr_between_coverage": Metric("threshold sets: A and B both in the set, in-between images",
                                   "in-between threshold coverage (fraction)", None),
    "thr_between_exact": Metric("threshold sets: exactly {A, B} on in-between images (= between_set_acc)",
                                "in-between threshold set = {A, B} (fraction)", None),
}
HIGHER_IS_BETTER = {name: m.higher_is_better for name, m in METRICS.items() if m.higher_is_better is not None}


def expected_calibration_error(confidence: torch.Tensor | np.ndarray, correct: torch.Tensor | np.ndarray,
                               bins: int = 15, weights: np.ndarray | None = None) -> float | np.ndarray:
    """Σ_b (n_b / n) |accuracy_b - confidence_b| over equal-width confidence bins (Guo et al. 2017).

    `weights` (R×N counts, e.g. a bootstrap's resamples): the R errors of the images so weighted, at once."""
    if len(confidence) == 0:
        return math.nan
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    # Bin b holds confidences in (b/bins, (b+1)/bins]; confidence 0 joins the first bin.
    which = np.clip(np.ceil(confidence * bins).astype(int), 1, bins) - 1
    # n_b |accuracy_b - confidence_b| = |Σ_{i in b} (correct_i - confidence_i)|: one pass, no loop over bins.
    signed = correct - confidence
    if weights is None:
        return float(np.abs(np.bincount(which, weights=signed, minlength=bins)).sum() / len(confidence))
    weights = np.asarray(weights, dtype=float)
    return np.abs((weights * signed) @ np.eye(bins)[which]).sum(1) / weights.sum(1)


def label_set_mask(label_a: torch.Tensor, label_b: torch.Tensor, k: int) -> torch.Tensor:
    """N×K bool true label sets: {label_a}, or {label_a, label_b} for an in-between image (label_b >= 0)."""
    truth = torch.zeros(len(label_a), k, dtype=torch.bool)
    rows = torch.arange(len(label_a))
    between = label_b >= 0
    truth[rows, label_a] = True
    truth[rows[between], label_b[between]] = True
    return truth


def mean(x: torch.Tensor) -> float:
    return x.float().mean().item() if len(x) else math.nan


def evaluate(probs: torch.Tensor, sets: torch.Tensor, ambiguity: torch.Tensor, label_a: torch.Tensor,
             label_b: torch.Tensor, share_a: torch.Tensor | None = None, votes: torch.Tensor | None = None
             ) -> dict[str, float]:
    """All metrics of METRICS from N×K probabilities, N×K bool sets, N ambiguity scores and the truth (with the
    N×K human vote shares where the images have votes; human_ce is NaN without)."""
    probs, n, k = probs.double(), len(probs), probs.shape[1]
    share_a = torch.full((n,), 0.5, dtype=torch.double) if share_a is None else share_a.double()
    between = label_b >= 0
    clear = ~between
    rows = torch.arange(n)
    exact = (sets == label_set_mask(label_a, label_b, k)).all(1)

    top1 = probs.argmax(1)
    p_y = probs[rows, label_a]
    c_top = probs[clear].max(1).values
    p_a, p_b = probs[rows, label_a], probs[rows, label_b.clamp_min(0)]
    mass = (p_a + p_b)[between]
    balance = (p_a[between] / mass.clamp_min(1e-12))
    top2 = probs.topk(min(2, k), dim=1).indices.sort(1).values
    pair_sorted = torch.stack([label_a, label_b], 1).sort(1).values

    labels_auc = between.numpy()
    both_kinds = 0 < labels_auc.sum() < len(labels_auc)
    return {
        "clear_acc": mean((top1 == label_a)[clear]),
        "clear_set_acc": mean(exact[clear]),
        "nll": mean(-p_y[clear].clamp_min(1e-12).log()),
        "ece": expected_calibration_error(c_top, (top1 == label_a)[clear]),
        "between_set_acc": mean(exact[between]),
        "between_top2": mean((top2 == pair_sorted).all(1)[between]),
        "between_mass": mean(mass),
        "between_balance": mean(balance),
        "between_balance_err": mean((balance - share_a[between]).abs()),
        "ambiguity_auroc": float(roc_auc_score(labels_auc, ambiguity.double().numpy())) if both_kinds
        else math.nan,
        "human_ce": mean(-(votes.double() * probs.clamp_min(1e-12).log()).sum(1)) if votes is not None
        else math.nan,
        "n_clear": int(clear.sum()),
        "n_between": int(between.sum()),
    }


def set_objective(sets: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor) -> float:
    """What a decoding threshold is chosen to maximise: mean of clear_set_acc and between_set_acc."""
    between = label_b >= 0
    exact = (sets == label_set_mask(label_a, label_b, sets.shape[1])).all(1).float()
    parts = [exact[m].mean().item() for m in (~between, between) if m.any()]
    return sum(parts) / len(parts)


def selection_loss(probs: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor) -> float:
    """What every strategy's tuning (L2 strength of a probe, the epoch that early stopping keeps) minimises on the
    validation split: the mean negative log-probability of each image's label set, -log p_a for a clear-cut image
    and -log(p_a + p_b) for an in-between one, over the N×K class probabilities.

    One criterion for all strategies, since the loss each trains on is not comparable across them (soft targets,
    sigmoids, an extra class, mixed images). Every strategy decodes to K class probabilities, so this is defined
    for all; it is a proper score on clear-cut images, and it does not care how a pair's mass is split between
    its two classes, so it favours no strategy's in-between target over another's.
    """
    probs = probs.double()
    mass = (probs * label_set_mask(label_a, label_b, probs.shape[1])).sum(1)
    return mean(-mass.clamp_min(1e-12).log())
