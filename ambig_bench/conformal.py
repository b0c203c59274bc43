"""Split-conformal prediction sets for classifiers whose truth may be a label *set*.

Some calibration images are "in-between" two classes (A, B), so the truth of an
example is a boolean mask over the K classes: one True for a clear-cut image, two
for an in-between one.  The nonconformity score of an example is the **max** over
its true labels of the per-label score.  Why max: an example is then "covered"
only when the prediction set contains *every* true label (both A and B for an
in-between image), so the usual guarantee P(covered) >= 1 - alpha holds for that
stricter event under exchangeability.

Scores (lower = more conforming):
  * ``"lac"`` -- 1 - p_k (Sadinle et al., 2019).  A set may be empty when the
    model is unsure everywhere; it is kept empty and counts as size 0.
  * ``"aps"`` -- cumulative probability of classes ranked at or above k
    (Romano et al., 2020), optionally randomised with a ``np.random.Generator``.
  * ``"raps"`` -- APS plus a penalty ``lam * max(0, rank_k - k_reg)`` on classes
    ranked below ``k_reg`` (Angelopoulos et al., 2021): the long tail of
    unlikely classes that makes APS sets large is charged for, so sets shrink
    while the guarantee stays.

Example:
    >>> import numpy as np
    >>> probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.45, 0.05], [0.1, 0.1, 0.8]])
    >>> truth = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)
    >>> qhat = calibrate(probs, truth, alpha=0.5, method="lac")
    >>> round(qhat, 2)
    0.3
    >>> sets = prediction_sets(probs, qhat, "lac")
    >>> sets.astype(int).tolist()
    [[1, 0, 0], [0, 0, 0], [0, 0, 1]]
    >>> {k: round(v, 3) for k, v in set_metrics(sets, truth).items()}
    {'coverage': 0.667, 'mean_size': 0.667, 'exact': 0.667}

Class-conditional (Mondrian by label) calibration gives one qhat per class k, from the examples whose truth holds
k and their score for k, and label k enters a set when its score is at most qhat_k: each class's labels are then
covered at 1 - alpha on their own, a rare class included. That is an average over the class's images: its
in-between images may be covered less and its clear-cut ones more. Calibrated on the clear-cut and the in-between
images separately (`calibrate_parts`), every label of an in-between image is covered with probability
>= 1 - alpha, so both at once with probability >= 1 - 2 alpha on average over in-between images (union bound),
not 1 - alpha.

Where the truth is a distribution of votes rather than a set, `sample_labels` draws one label per calibration
example from its votes (Monte Carlo conformal prediction with m = 1 sample, Stutz et al., TMLR 2023): the sets
then hold a label drawn from the votes of a new image with probability >= 1 - alpha, which is what
`vote_coverage` measures without drawing.
"""

from __future__ import annotations

import math

import numpy as np

METHODS: tuple[str, ...] = ("lac", "aps", "raps")
# RAPS regularisation: the paper's ImageNet choice of lambda (0.01), with the penalty starting after the top-ranked
# class. Our K is small (2..100 classes), where the paper's tuned k_reg is small too.
RAPS_LAMBDA, RAPS_K_REG = 0.01, 1


def lac_scores(probs: np.ndarray) -> np.ndarray:
    """Per-label LAC score ``1 - p_k``, shape N x K."""
    return 1.0 - np.asarray(probs, dtype=float)


def aps_scores(probs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Per-label APS score, shape N x K.

    Score of label k = sum of the probabilities of the classes ranked at or above
    k (descending probability, ties broken by lower class index first).  With
    ``rng``, one U ~ Uniform(0, 1) per example is drawn and ``U * p_k`` is
    subtracted (randomised APS), which makes coverage exact rather than
    conservative at the cost of reproducibility without a seed.
    """
    p = np.asarray(probs, dtype=float)
    # A stable sort of -p keeps equal probabilities in index order, so ties are
    # deterministic and documented rather than left to the sort algorithm.
    order = np.argsort(-p, axis=1, kind="stable")
    cum = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
    scores = np.empty_like(p)
    np.put_along_axis(scores, order, cum, axis=1)
    if rng is not None:
        scores = scores - rng.uniform(size=(p.shape[0], 1)) * p
    return scores


def raps_scores(probs: np.ndarray, rng: np.random.Generator | None = None, lam: float = RAPS_LAMBDA,
                k_reg: int = RAPS_K_REG) -> np.ndarray:
    """Per-label RAPS score, shape N x K: the APS score of label k plus ``lam * max(0, rank_k - k_reg)``,
    where rank_k is k's 1-based rank by descending probability (ties by lower class index, as in APS)."""
    p = np.asarray(probs, dtype=float)
    order = np.argsort(-p, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(1, p.shape[1] + 1)[None, :].repeat(p.shape[0], 0), axis=1)
    return aps_scores(p, rng) + lam * np.maximum(0, rank - k_reg)


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n+1)(1-alpha))-th smallest score (1-based); +inf if that rank > n.

    The (n+1) correction is what turns the empirical quantile into a
    finite-sample coverage guarantee; +inf means "predict every class".
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    s = np.asarray(scores, dtype=float).ravel()
    n = s.size
    if n < 1:
        raise ValueError("need at least one calibration score (n >= 1), got n=0")
    # Subtract a tiny epsilon so float noise (e.g. 9.000000000000002) does not
    # bump an exact integer rank up by one.
    rank = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)
    if rank > n:
        return math.inf
    return float(np.partition(s, rank - 1)[rank - 1])


def _per_label_scores(probs: np.ndarray, method: str, rng: np.random.Generator | None) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"probs must be N x K, got shape {p.shape}")
    if method == "lac":
        return lac_scores(p)
    if method == "aps":
        return aps_scores(p, rng=rng)
    if method == "raps":
        return raps_scores(p, rng=rng)
    raise ValueError(f"unknown method {method!r}; valid methods are {METHODS}")


def _checked_truth(truth_mask: np.ndarray, per_label: np.ndarray) -> np.ndarray:
    truth = np.asarray(truth_mask, dtype=bool)
    if truth.shape != per_label.shape:
        raise ValueError(f"truth_mask shape {truth.shape} != probs shape {per_label.shape}")
    if not truth.any(axis=1).all():
        raise ValueError("every calibration example needs at least one true label")
    return truth


def calibrate(
    probs: np.ndarray,
    truth_mask: np.ndarray,
    alpha: float,
    method: str = "lac",
    *,
    rng: np.random.Generator | None = None,
) -> float:
    """Return qhat from calibration data; example score = max over true labels."""
    per_label = _per_label_scores(probs, method, rng)
    truth = _checked_truth(truth_mask, per_label)
    # Non-true labels get -inf so they never win the max.
    example_scores = np.where(truth, per_label, -np.inf).max(axis=1)
    return conformal_quantile(example_scores, alpha)


def calibrate_per_class(
    probs: np.ndarray,
    truth_mask: np.ndarray,
    alpha: float,
    method: str = "lac",
    *,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Class-conditional (Mondrian) qhat, a K-vector: for class k, the conformal quantile of the score of k over
    the examples whose truth holds k; NaN for a class no example holds (nothing to calibrate it on)."""
    per_label = _per_label_scores(probs, method, rng)
    truth = _checked_truth(truth_mask, per_label)
    return np.array([conformal_quantile(per_label[truth[:, k], k], alpha) if truth[:, k].any() else math.nan
                     for k in range(truth.shape[1])])


def calibrate_parts(
    probs: np.ndarray,
    truth_mask: np.ndarray,
    alpha: float,
    method: str = "lac",
    *,
    parts: list[np.ndarray] | None = None,
    per_class: bool = False,
) -> float | np.ndarray:
    """qhat that covers each part (boolean row masks, e.g. the clear-cut and the in-between images; default: all
    rows as one) at 1 - alpha on its own: the largest of the parts' qhats, as sets only grow with qhat.

    per_class: a K-vector, per class the largest over the parts holding it (`calibrate_per_class`); +inf for a
    class no part holds, which then is in every set (nothing to calibrate it on)."""
    parts = [np.ones(len(probs), dtype=bool)] if parts is None else [rows for rows in parts if rows.any()]
    if not per_class:
        return max(calibrate(probs[rows], truth_mask[rows], alpha, method) for rows in parts)
    qhat = np.fmax.reduce([calibrate_per_class(probs[rows], truth_mask[rows], alpha, method) for rows in parts])
    return np.where(np.isnan(qhat), np.inf, qhat)


def prediction_sets(
    probs: np.ndarray,
    qhat: float | np.ndarray,
    method: str = "lac",
    *,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Boolean N x K mask: label k is in the set when its score <= qhat (or qhat[k], a per-class K-vector).

    With LAC the set can be empty; it is returned as is (size 0).
    """
    return _per_label_scores(probs, method, rng) <= np.asarray(qhat, dtype=float)


def sample_labels(votes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """N x K bool, one True per row: a label drawn from each row's vote shares (rows need a positive sum)."""
    v = np.asarray(votes, dtype=float)
    cum = np.cumsum(v, axis=1)
    cum /= cum[:, -1:]  # the last entry is then exactly 1.0
    # u in (0, 1]: the drawn label is the first whose cumulative share reaches u, never one without votes.
    u = 1.0 - rng.uniform(size=(v.shape[0], 1))
    labels = (cum < u).sum(axis=1)
    return np.eye(v.shape[1], dtype=bool)[labels]


def vote_coverage(sets: np.ndarray, votes: np.ndarray) -> float:
    """Mean over images of the vote share inside the set (sum_k v_k [k in set], votes normalised per row): the
    probability that a label drawn from an image's votes is in its set."""
    v = np.asarray(votes, dtype=float)
    if v.shape[0] == 0:
        return math.nan
    return float(((v * np.asarray(sets, dtype=bool)).sum(axis=1) / v.sum(axis=1)).mean())


def label_coverage(sets: np.ndarray, truth_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class k: how many examples' truth holds k, and the share of them whose set holds k (NaN for none):
    what class-conditional calibration guarantees per class."""
    s, t = np.asarray(sets, dtype=bool), np.asarray(truth_mask, dtype=bool)
    n = t.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return n, np.where(n > 0, (s & t).sum(axis=0) / n, math.nan)


def set_metrics(sets: np.ndarray, truth_mask: np.ndarray) -> dict[str, float]:
    """Coverage (all true labels in set), mean set size, exact match rate."""
    s = np.asarray(sets, dtype=bool)
    t = np.asarray(truth_mask, dtype=bool)
    if s.shape != t.shape:
        raise ValueError(f"sets shape {s.shape} != truth_mask shape {t.shape}")
    if s.shape[0] == 0:
        # Means of empty arrays are undefined; say so explicitly instead of warning.
        return {"coverage": math.nan, "mean_size": math.nan, "exact": math.nan}
    return {
        "coverage": float(np.all(s | ~t, axis=1).mean()),
        "mean_size": float(s.sum(axis=1).mean()),
        "exact": float(np.all(s == t, axis=1).mean()),
    }
