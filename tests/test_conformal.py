"""Tests for ambig_bench.conformal (hand-computed values + simulated coverage)."""

from __future__ import annotations

import doctest
import functools
import math

import numpy as np
import pytest

from ambig_bench import conformal
from ambig_bench.conformal import (
    METHODS,
    aps_scores,
    calibrate,
    calibrate_parts,
    calibrate_per_class,
    conformal_quantile,
    label_coverage,
    lac_scores,
    prediction_sets,
    raps_scores,
    sample_labels,
    set_metrics,
    vote_coverage,
)

# Hand table: row 0 ranks classes 0,1,2; row 1 ranks classes 1,2,0.
PROBS = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])


def test_methods_tuple() -> None:
    assert METHODS == ("lac", "aps", "raps")


def test_module_docstring_example_runs() -> None:
    result = doctest.testmod(conformal)
    assert result.attempted > 0
    assert result.failed == 0


# --- conformal_quantile -------------------------------------------------------


def test_quantile_known_rank() -> None:
    scores = np.arange(1, 11) / 10.0  # 0.1 .. 1.0
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(scores)  # order of input must not matter
    # ceil(11 * 0.8) = 9 -> 9th smallest = 0.9
    assert conformal_quantile(shuffled, 0.2) == pytest.approx(0.9)
    # ceil(11 * 0.5) = 6 -> 0.6
    assert conformal_quantile(shuffled, 0.5) == pytest.approx(0.6)
    # exact integer rank: ceil(11 * (1 - 1/11)) = 10 -> 1.0, not inf
    assert conformal_quantile(shuffled, 1 / 11) == pytest.approx(1.0)


def test_quantile_rank_beyond_n_is_inf() -> None:
    scores = np.arange(1, 11) / 10.0
    # ceil(11 * 0.95) = 11 > 10
    assert conformal_quantile(scores, 0.05) == math.inf
    assert conformal_quantile(np.array([0.3]), 0.4) == math.inf  # ceil(2*0.6)=2 > 1


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_quantile_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        conformal_quantile(np.array([0.1, 0.2]), alpha)


def test_quantile_empty_scores() -> None:
    with pytest.raises(ValueError, match="n >= 1"):
        conformal_quantile(np.array([]), 0.1)


# --- per-label scores ----------------------------------------------------------


def test_lac_scores_hand_table() -> None:
    expected = np.array([[0.5, 0.7, 0.8], [0.9, 0.4, 0.7]])
    np.testing.assert_allclose(lac_scores(PROBS), expected)


def test_aps_scores_hand_table() -> None:
    # row 0: 0.5, 0.5+0.3, 0.5+0.3+0.2 ; row 1: class1 0.6, class2 0.9, class0 1.0
    expected = np.array([[0.5, 0.8, 1.0], [1.0, 0.6, 0.9]])
    np.testing.assert_allclose(aps_scores(PROBS), expected)


def test_aps_ties_broken_by_index() -> None:
    # classes 0 and 1 tie; class 0 is ranked first.
    np.testing.assert_allclose(aps_scores(np.array([[0.4, 0.4, 0.2]])), [[0.4, 0.8, 1.0]])
    np.testing.assert_allclose(aps_scores(np.array([[0.2, 0.4, 0.4]])), [[1.0, 0.4, 0.8]])


def test_aps_randomised_bounds_and_reproducible() -> None:
    det = aps_scores(PROBS)
    rand = aps_scores(PROBS, rng=np.random.default_rng(3))
    # det - U*p with U in [0, 1): between det - p and det
    assert np.all(rand <= det + 1e-12)
    assert np.all(rand >= det - PROBS - 1e-12)
    assert not np.allclose(rand, det)
    np.testing.assert_allclose(rand, aps_scores(PROBS, rng=np.random.default_rng(3)))


# --- calibrate: max over true labels -----------------------------------------------


def test_in_between_score_is_max_over_true_labels() -> None:
    probs = np.array([[0.5, 0.45, 0.05]])
    truth = np.array([[True, True, False]])
    # LAC per-label: 0.5, 0.55 -> max 0.55. n=1, alpha=0.6: ceil(2*0.4)=1 -> the score.
    assert calibrate(probs, truth, alpha=0.6, method="lac") == pytest.approx(0.55)
    # APS per-label: 0.5, 0.95 -> max 0.95
    assert calibrate(probs, truth, alpha=0.6, method="aps") == pytest.approx(0.95)
    # Same image with a clear-cut truth {0} scores only 0.5.
    clear = np.array([[True, False, False]])
    assert calibrate(probs, clear, alpha=0.6, method="lac") == pytest.approx(0.5)


def test_calibrate_unknown_method() -> None:
    truth = np.eye(3, dtype=bool)[[0, 1]]
    with pytest.raises(ValueError, match=r"'softmax'.*lac.*aps"):
        calibrate(PROBS, truth, alpha=0.1, method="softmax")


def test_calibrate_rejects_bad_truth() -> None:
    with pytest.raises(ValueError, match="at least one true label"):
        calibrate(PROBS, np.zeros((2, 3), dtype=bool), alpha=0.5)
    with pytest.raises(ValueError, match="shape"):
        calibrate(PROBS, np.ones((2, 2), dtype=bool), alpha=0.5)


# --- prediction_sets / set_metrics ----------------------------------------------------


def test_prediction_sets_hand_table() -> None:
    lac = prediction_sets(PROBS, 0.7, "lac")  # scores [[.5,.7,.8],[.9,.4,.7]]
    np.testing.assert_array_equal(lac, [[True, True, False], [False, True, True]])
    aps = prediction_sets(PROBS, 0.85, "aps")  # scores [[.5,.8,1],[1,.6,.9]]
    np.testing.assert_array_equal(aps, [[True, True, False], [False, True, False]])
    assert lac.dtype == bool


def test_prediction_sets_extremes() -> None:
    assert prediction_sets(PROBS, math.inf, "aps").all()
    # LAC with a tiny qhat gives empty sets, kept empty (size 0).
    empty = prediction_sets(PROBS, 0.1, "lac")
    assert not empty.any()
    truth = np.array([[True, False, False], [False, True, False]])
    assert set_metrics(empty, truth)["mean_size"] == 0.0


def test_set_metrics_hand_masks() -> None:
    sets = np.array(
        [
            [True, False, False],  # == truth            -> covered, exact
            [True, True, False],  # superset of truth    -> covered, not exact
            [True, False, False],  # misses label 1       -> not covered
            [False, True, True],  # == in-between truth  -> covered, exact
        ]
    )
    truth = np.array(
        [
            [True, False, False],
            [True, False, False],
            [True, True, False],
            [False, True, True],
        ]
    )
    m = set_metrics(sets, truth)
    assert m["coverage"] == pytest.approx(3 / 4)
    assert m["mean_size"] == pytest.approx((1 + 2 + 1 + 2) / 4)
    assert m["exact"] == pytest.approx(2 / 4)


def test_set_metrics_empty_is_nan() -> None:
    m = set_metrics(np.zeros((0, 3), dtype=bool), np.zeros((0, 3), dtype=bool))
    assert set(m) == {"coverage", "mean_size", "exact"}
    assert all(math.isnan(v) for v in m.values())


# --- simulated coverage ----------------------------------------------------------------


def _simulate(rng: np.random.Generator, n: int, k: int, p_between: float) -> tuple[np.ndarray, np.ndarray]:
    """Dirichlet probs; label drawn from probs; with p_between add a second label."""
    probs = rng.dirichlet(np.ones(k), size=n)
    u = rng.uniform(size=(n, 1))
    first = np.minimum((np.cumsum(probs, axis=1) < u).sum(axis=1), k - 1)
    truth = np.zeros((n, k), dtype=bool)
    truth[np.arange(n), first] = True
    between = rng.uniform(size=n) < p_between
    second = (first + rng.integers(1, k, size=n)) % k  # a different class
    truth[np.flatnonzero(between), second[between]] = True
    return probs, truth


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p_between", [0.0, 0.3])
def test_empirical_coverage(method: str, p_between: float) -> None:
    alpha, n_cal = 0.1, 2000
    rng = np.random.default_rng(12345)
    probs, truth = _simulate(rng, n_cal + 20000, 5, p_between)
    qhat = calibrate(probs[:n_cal], truth[:n_cal], alpha, method)
    assert math.isfinite(qhat)
    m = set_metrics(prediction_sets(probs[n_cal:], qhat, method), truth[n_cal:])
    assert m["coverage"] >= 1 - alpha - 0.02
    # Sets must be informative, not trivially "all 5 classes".
    assert m["mean_size"] < 5


def test_empirical_coverage_randomised_aps_is_tight() -> None:
    alpha, n_cal = 0.1, 2000
    rng = np.random.default_rng(7)
    probs, truth = _simulate(rng, n_cal + 20000, 5, 0.0)
    qhat = calibrate(probs[:n_cal], truth[:n_cal], alpha, "aps", rng=rng)
    sets = prediction_sets(probs[n_cal:], qhat, "aps", rng=rng)
    cov = set_metrics(sets, truth[n_cal:])["coverage"]
    # Continuous scores: coverage is within about 1/(n+1) of 1 - alpha, plus noise.
    assert 1 - alpha - 0.02 <= cov <= 1 - alpha + 0.03


# --- RAPS -----------------------------------------------------------------------------------------


def test_raps_scores_hand_table() -> None:
    # APS plus lam * max(0, rank - k_reg): ranks row 0: 1,2,3; row 1: 3,1,2.
    lam, k_reg = 0.1, 1
    expected = np.array([[0.5, 0.8 + 0.1, 1.0 + 0.2], [1.0 + 0.2, 0.6, 0.9 + 0.1]])
    np.testing.assert_allclose(raps_scores(PROBS, lam=lam, k_reg=k_reg), expected)
    np.testing.assert_allclose(raps_scores(PROBS, lam=0.0), aps_scores(PROBS))


def test_raps_sets_are_no_larger_than_aps_on_a_long_tail() -> None:
    """The penalty is what RAPS is for: many small probabilities no longer pad the sets."""
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(20, 0.1), size=3000)
    truth = np.zeros_like(probs, dtype=bool)
    truth[np.arange(len(probs)), [rng.choice(20, p=p) for p in probs]] = True
    sizes = {m: set_metrics(prediction_sets(probs[1000:], calibrate(probs[:1000], truth[:1000], 0.1, m), m),
                            truth[1000:])["mean_size"] for m in ("aps", "raps")}
    assert sizes["raps"] <= sizes["aps"]


@functools.cache  # several tests read the same predictions: fitted once
def digits_probabilities() -> tuple[np.ndarray, np.ndarray]:
    """Real images: scikit-learn's bundled handwritten digits (1,797, no download), each with the out-of-fold
    class probabilities of a logistic regression."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    x, y = load_digits(return_X_y=True)
    probs = cross_val_predict(LogisticRegression(max_iter=300, C=0.05), x / 16, y, cv=5, method="predict_proba")
    return probs, np.eye(10, dtype=bool)[y]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_coverage_on_real_images_held_back(method: str) -> None:
    """Calibrate on one half of real predictions, cover the held-back half: >= 1 - alpha - 0.02, averaged over
    50 random halvings (one halving alone wobbles by about ±0.015 at this size)."""
    probs, truth = digits_probabilities()
    alpha, rng = 0.1, np.random.default_rng(0)
    coverages = []
    for _ in range(50):
        order = rng.permutation(len(probs))
        cal, held = order[: len(order) // 2], order[len(order) // 2:]
        qhat = calibrate(probs[cal], truth[cal], alpha, method)
        coverages.append(set_metrics(prediction_sets(probs[held], qhat, method), truth[held])["coverage"])
    assert np.mean(coverages) >= 1 - alpha - 0.02
    assert min(coverages) >= 1 - alpha - 0.05


class _Fixed:
    """A 'prefit classifier' whose predict_proba returns given rows: X holds the row numbers."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs, self.classes_ = probs, np.arange(probs.shape[1])

    def fit(self, x, y):
        return self

    def predict_proba(self, x):
        return self.probs[np.asarray(x, dtype=int).ravel()]

    def predict(self, x):
        return self.predict_proba(x).argmax(1)


@pytest.mark.slow
def test_lac_sets_match_mapies_split_conformal_classifier() -> None:
    """The same scores through MAPIE (a test-only dependency): its LAC sets are ours, image by image."""
    mapie = pytest.importorskip("mapie.classification")
    from sklearn.base import BaseEstimator, ClassifierMixin

    probs, truth = digits_probabilities()
    cal, held = np.arange(0, 900), np.arange(900, len(probs))
    estimator = type("Fixed", (_Fixed, ClassifierMixin, BaseEstimator), {})(probs)
    for alpha in (0.05, 0.1, 0.2):
        theirs = mapie.SplitConformalClassifier(estimator, confidence_level=1 - alpha, conformity_score="lac",
                                                prefit=True)
        theirs.conformalize(cal[:, None], truth[cal].argmax(1))
        _, their_sets = theirs.predict_set(held[:, None])
        ours = prediction_sets(probs[held], calibrate(probs[cal], truth[cal], alpha, "lac"), "lac")
        assert np.array_equal(ours, their_sets[:, :, 0]), alpha


# --- class-conditional (Mondrian) and vote-aware calibration ---------------------------------------------------


def test_per_class_qhat_is_the_quantile_of_each_classes_own_scores() -> None:
    """Hand-computed: class k's qhat is the ceil((n_k+1)(1-alpha))-th smallest score 1 - p_k over the examples
    whose truth holds k (an in-between example counts for both its classes); NaN for a class no example holds."""
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.5, 0.5, 0.0], [0.2, 0.8, 0.0]])
    truth = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0]], dtype=bool)
    # class 0: scores 0.1, 0.4, 0.5 (n = 3; rank ceil(4 * 0.5) = 2 -> 0.4); class 1: 0.3, 0.5, 0.2 -> 0.3
    qhat = calibrate_per_class(probs, truth, 0.5, "lac")
    np.testing.assert_allclose(qhat, [0.4, 0.3, np.nan])
    sets = prediction_sets(probs, np.nan_to_num(qhat, nan=np.inf), "lac")
    assert sets.tolist() == [[True, False, True], [True, False, True], [False, True, True], [False, False, True],
                             [False, True, True]]
    n, covered = label_coverage(sets, truth)
    assert n.tolist() == [3, 3, 0] and covered[:2].tolist() == [2 / 3, 2 / 3] and math.isnan(covered[2])


def imbalanced(rng: np.random.Generator, n: int, p_between: float) -> tuple[np.ndarray, np.ndarray]:
    """Four classes of frequencies 55/30/10/5%; the model is sure of the common classes and unsure of the rare
    ones (its probability of the true class shrinks with the class's frequency); a share of images holds a
    second, random class too (in-between)."""
    labels = rng.choice(4, size=n, p=[0.55, 0.3, 0.1, 0.05])
    probs = np.array([rng.dirichlet(np.ones(4) + np.eye(4)[y] * (8, 4, 1, 0.3)[y]) for y in labels])
    truth = np.eye(4, dtype=bool)[labels]
    between = np.flatnonzero(rng.uniform(size=n) < p_between)
    truth[between, (labels[between] + rng.integers(1, 4, size=len(between))) % 4] = True
    return probs, truth


def test_class_conditional_sets_cover_every_class_at_one_minus_alpha() -> None:
    """300 random calibration/test halvings of 4,000 images: each class's labels are covered at 1 - alpha on
    average (within 0.015 below, and above by at most what the (n+1) correction allows), the rare class
    included, which marginal calibration under-covers. Per class alone, the in-between images' labels (their
    second class is one the model is unsure of here) are covered less; calibrated per class on the clear-cut and
    the in-between images each, both labels of an in-between image are covered at >= 1 - 2 alpha."""
    alpha, rng = 0.1, np.random.default_rng(5)
    probs, truth = imbalanced(rng, 4000, 0.2)
    between = truth.sum(1) == 2
    per_class, marginal, both, both_per_kind = [], [], [], []
    for _ in range(300):
        order = rng.permutation(len(probs))
        cal, test = order[:2000], order[2000:]
        sets = prediction_sets(probs[test], calibrate_per_class(probs[cal], truth[cal], alpha), "lac")
        per_class.append(label_coverage(sets, truth[test])[1])
        marginal.append(label_coverage(prediction_sets(probs[test], calibrate(probs[cal], truth[cal], alpha)),
                                       truth[test])[1])
        per_kind = calibrate_parts(probs[cal], truth[cal], alpha, parts=[~between[cal], between[cal]],
                                   per_class=True)
        for qhat, found in ((calibrate_per_class(probs[cal], truth[cal], alpha), both), (per_kind, both_per_kind)):
            sets = prediction_sets(probs[test][between[test]], qhat)
            found.append(set_metrics(sets, truth[test][between[test]])["coverage"])
    per_class, n_cal = np.mean(per_class, axis=0), truth.sum(0) / 2
    assert (per_class >= 1 - alpha - 0.015).all(), per_class
    assert (per_class <= 1 - alpha + 1 / (n_cal + 1) + 0.015).all(), per_class
    assert np.mean(marginal, axis=0)[3] < 1 - alpha - 0.05  # what the option is for
    assert np.mean(both) < 1 - 2 * alpha <= np.mean(both_per_kind) + 0.015


@pytest.mark.slow
def test_class_conditional_sets_match_mapie_calibrated_on_each_class() -> None:
    """MAPIE 1.x has no Mondrian / class-conditional classifier; a Mondrian set is split conformal run per group,
    so MAPIE's LAC classifier conformalized on the images of class k alone gives our column k, image by image."""
    mapie = pytest.importorskip("mapie.classification")
    from sklearn.base import BaseEstimator, ClassifierMixin

    probs, truth = digits_probabilities()
    labels, cal, held = truth.argmax(1), np.arange(0, 900), np.arange(900, len(probs))
    estimator = type("Fixed", (_Fixed, ClassifierMixin, BaseEstimator), {})(probs)
    ours = prediction_sets(probs[held], calibrate_per_class(probs[cal], truth[cal], 0.1, "lac"), "lac")
    for k in range(10):
        rows = cal[labels[cal] == k]
        theirs = mapie.SplitConformalClassifier(estimator, confidence_level=0.9, conformity_score="lac", prefit=True)
        with pytest.warns(UserWarning, match="less labels"):  # one class to conformalize on, as intended
            theirs.conformalize(rows[:, None], labels[rows])
        assert np.array_equal(theirs.predict_set(held[:, None])[1][:, k, 0], ours[:, k]), k


def test_labels_drawn_from_votes_follow_the_votes() -> None:
    votes = np.array([[3, 1, 0, 0], [0, 0, 0, 5], [0, 1, 0, 1]], dtype=float)
    rng = np.random.default_rng(0)
    drawn = np.mean([sample_labels(votes, rng) for _ in range(4000)], axis=0)
    np.testing.assert_allclose(drawn, votes / votes.sum(1, keepdims=True), atol=0.03)
    assert not drawn[votes == 0].any()  # never a class nobody voted for
    assert vote_coverage(np.array([[1, 0, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=bool), votes) == \
        pytest.approx((0.75 + 0 + 0) / 3)


def test_calibrating_on_drawn_labels_covers_the_votes() -> None:
    """Ambiguous images (votes spread over classes): 200 random halvings; sets calibrated on one label drawn
    from each calibration image's votes (Stutz et al., m = 1) hold 1 - alpha of a new image's votes on average;
    calibrated on the majority label they hold less."""
    alpha, rng = 0.1, np.random.default_rng(11)
    votes = rng.dirichlet(np.full(4, 0.4), size=3000)
    probs = np.array([rng.dirichlet(1 + 6 * v) for v in votes])
    drawn, majority = [], []
    for _ in range(200):
        order = rng.permutation(len(probs))
        cal, test = order[:1500], order[1500:]
        for labels, found in ((sample_labels(votes[cal], rng), drawn),
                              (np.eye(4, dtype=bool)[votes[cal].argmax(1)], majority)):
            found.append(vote_coverage(prediction_sets(probs[test], calibrate(probs[cal], labels, alpha)),
                                       votes[test]))
    assert 1 - alpha - 0.01 <= np.mean(drawn) <= 1 - alpha + 0.015
    assert np.mean(majority) < 1 - alpha - 0.03
