"""The one evaluation module: every strategy's test predictions are scored here, the same way.

Inputs are plain tensors (class probabilities over the K real classes, predicted sets, ambiguity
scores, and the truth), so metrics can be recomputed from a run's saved predictions.

>>> import torch
>>> probs = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0]])
>>> sets = torch.tensor([[True, False, False], [True, True, False]])
>>> m = evaluate(probs, sets, torch.tensor([0.1, 0.5]), torch.tensor([0, 0]), torch.tensor([-1, 1]))
>>> m["clear_acc"], m["between_set_acc"], m["between_balance"]
(1.0, 1.0, 0.5)
"""

from __future__ import annotations

import math

import torch
from sklearn.metrics import roc_auc_score

# name: (higher is better; None when neither end is better, one-line meaning) — the order of every table
METRICS: dict[str, tuple[bool | None, str]] = {
    "clear_acc": (True, "clear-cut images: top-1 accuracy over the K classes"),
    "clear_set_acc": (True, "clear-cut images: predicted set is exactly {y}"),
    "nll": (False, "clear-cut images: negative log-likelihood of y (nats)"),
    "ece": (False, "clear-cut images: expected calibration error of the top-1 confidence, 15 bins"),
    "between_set_acc": (True, "in-between images: predicted set is exactly {A, B}"),
    "between_top2": (True, "in-between images: A and B are the two most probable classes"),
    "between_mass": (True, "in-between images: mean p_A + p_B"),
    "between_balance": (None, "in-between images: mean p_A / (p_A + p_B); ideal = the soft share (0.5)"),
    "between_balance_err": (False, "in-between images: mean |p_A / (p_A + p_B) - share of A|"),
    "ambiguity_auroc": (True, "AUROC of the strategy's ambiguity score, in-between vs clear-cut"),
}
HIGHER_IS_BETTER = {name: v[0] for name, v in METRICS.items() if v[0] is not None}


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> float:
    """Σ_b (n_b / n) |accuracy_b - confidence_b| over equal-width confidence bins (Guo et al. 2017)."""
    if len(confidence) == 0:
        return math.nan
    # Bin b holds confidences in (b/bins, (b+1)/bins]; confidence 0 joins the first bin.
    which = (confidence * bins).ceil().long().clamp(1, bins) - 1
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.float().mean().item() * abs(correct[inside].float().mean().item()
                                                      - confidence[inside].mean().item())
    return ece


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
             label_b: torch.Tensor, share_a: torch.Tensor | None = None) -> dict[str, float]:
    """All metrics of METRICS from N×K probabilities, N×K bool sets, N ambiguity scores and the truth."""
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
        "n_clear": int(clear.sum()),
        "n_between": int(between.sum()),
    }


def set_objective(sets: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor) -> float:
    """What a decoding threshold is chosen to maximise: mean of clear_set_acc and between_set_acc."""
    between = label_b >= 0
    exact = (sets == label_set_mask(label_a, label_b, sets.shape[1])).all(1).float()
    parts = [exact[m].mean().item() for m in (~between, between) if m.any()]
    return sum(parts) / len(parts)
