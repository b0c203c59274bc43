"""Tests paired by image: the runs' test predictions, pooled over seeds, strategy against a reference image by image.

Within one experiment and seed every strategy's predictions.csv test rows are the same images in the same order,
so two strategies pair by (seed, row order within split == "test"). Pooled over seeds:
- with `--folds K` (K >= 2) and seeds covering every fold once, each image is tested once per strategy
  ("out-of-fold, each image once"): 0/1 outcomes get the exact McNemar test on the discordant images and a
  paired bootstrap over images for their CI; continuous ones (ECE) the paired bootstrap over images;
- otherwise the pool repeats images across seeds (random splits overlap), so images are not independent: every
  metric gets a cluster bootstrap that resamples whole seeds ("images repeat across seeds").
Equivalence is TOST: the two one-sided t-tests on McNemar's per-image differences, the 90% bootstrap interval
inside ±margin for the bootstraps.

>>> o = outcomes(RunDir(Path("results/demo/runs/soft-seed0-1a2b3c4d")))  # doctest: +SKIP
>>> list(o.columns)  # doctest: +SKIP
['between', 'correct', 'confidence', 'exact']
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ambig_bench.metrics import expected_calibration_error
from ambig_bench.rundir import RunDir
from ambig_bench.stats import against_margin, bootstrap_difference, mcnemar_exact, tost

# The metrics tested image by image: which images (in-between or clear-cut) and the per-image outcome
# (None: a metric of the whole set of images, bootstrapped).
PER_IMAGE = {"clear_acc": (False, "correct"), "between_set_acc": (True, "exact"), "ece": (False, None)}
ONCE, REPEATED = "out-of-fold, each image once", "images repeat across seeds"
MIN_CLUSTERS = 10  # seeds below which a pool of repeated images gets no test by image (see paired_images)
COLUMNS = ["strategy", "baseline", "metric", "n_images", "pool", "test", "diff_mean", "diff_ci_low", "diff_ci_high",
           "p_value", "diff_sd", "p_holm", "significant", "margin", "equivalent", "outcome"]


def parse_set(text: object) -> frozenset[int]:
    """pred_set "4|9" -> {4, 9} ("" or missing: the empty set)."""
    return frozenset(int(c) for c in text.split("|")) if isinstance(text, str) and text else frozenset()


def outcomes(run: RunDir) -> pd.DataFrame:
    """One row per test image, in predictions.csv order: in-between or not, top-1 = A (`correct`), the top-1
    probability (`confidence`) and whether the predicted set is exactly the label set (`exact`)."""
    frame, k = run.predictions()
    test = frame[frame.split == "test"].reset_index(drop=True)
    probs = test[[f"p_{i}" for i in range(k)]].to_numpy(float)
    truth = [frozenset({a} if b < 0 else {a, b}) for a, b in zip(test.label_a, test.label_b, strict=True)]
    return pd.DataFrame({"label_a": test.label_a, "label_b": test.label_b, "between": test.label_b.to_numpy() >= 0,
                         "correct": probs.argmax(1) == test.label_a.to_numpy(), "confidence": probs.max(1),
                         "exact": [parse_set(s) == t for s, t in zip(test.pred_set, truth, strict=True)]})


def once_per_image(seeds: list[int], folds: int) -> bool:
    """Whether seeds of a K-fold experiment test every fold exactly once (seed k tests fold k mod K)."""
    return folds >= 2 and sorted(s % folds for s in seeds) == list(range(folds))


def ece(confidence: np.ndarray, correct: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The ECE of the images under each row of bootstrap `weights` (metrics.expected_calibration_error)."""
    return expected_calibration_error(confidence, correct, weights=weights)


def paired_images(a: dict[int, pd.DataFrame], b: dict[int, pd.DataFrame], metric: str, margin: float,
                  folds: int, seed: int = 0) -> dict:
    """Strategy a against reference b on `metric`, image by image (a − b), pooled over the seeds both have whose
    test images are the same (by their labels, in order)."""
    between, column = PER_IMAGE[metric]
    seeds = [s for s in sorted(set(a) & set(b)) if a[s][["label_a", "label_b"]].equals(b[s][["label_a", "label_b"]])]
    parts = [(s, a[s][a[s].between == between], b[s][b[s].between == between]) for s in seeds]
    cluster = np.concatenate([np.full(len(x), s) for s, x, _ in parts]) if parts else np.zeros(0)
    x = pd.concat([x for _, x, _ in parts], ignore_index=True) if parts else pd.DataFrame()
    y = pd.concat([y for _, _, y in parts], ignore_index=True) if parts else pd.DataFrame()
    once = once_per_image(seeds, folds)
    row = {"metric": metric, "n_images": len(x), "pool": ONCE if once else REPEATED, "margin": margin}
    if len(x) < 2:
        return row | {"test": "none", "diff_mean": np.nan, "diff_ci_low": np.nan, "diff_ci_high": np.nan,
                      "p_value": np.nan, "diff_sd": np.nan, "p_tost": np.nan}
    if column is None:
        conf_a, conf_b = x.confidence.to_numpy(), y.confidence.to_numpy()
        right_a, right_b = x.correct.to_numpy(), y.correct.to_numpy()

        def statistic(weights):
            return ece(conf_a, right_a, weights) - ece(conf_b, right_b, weights)
    else:
        d = x[column].to_numpy(float) - y[column].to_numpy(float)

        def statistic(weights):
            return weights @ d / weights.sum(1)
    boot = bootstrap_difference(statistic, len(x), clusters=None if once else cluster, seed=seed)
    row |= {"diff_mean": boot["diff"], "diff_ci_low": boot["low"], "diff_ci_high": boot["high"],
            # the SD of one image's difference, as the bootstrap's standard error implies it
            "diff_sd": boot["se"] * np.sqrt(len(x))}
    equivalent = -margin < boot["low90"] and boot["high90"] < margin
    if once and column is not None:
        return row | {"test": "exact McNemar", "p_value": mcnemar_exact(x[column], y[column])[0],
                      "diff_sd": float(d.std(ddof=1)), "p_tost": tost(d, margin)}
    if not once and len(seeds) < MIN_CLUSTERS:
        # Resampling whole seeds: with few of them every resample has the sign of every seed (p at its floor), and
        # one seed has no spread at all; the test across seeds is the honest one there.
        return row | {"test": f"none (images repeat over {len(seeds)} seeds; needs {MIN_CLUSTERS})",
                      "p_value": np.nan, "p_tost": np.nan, "diff_ci_low": np.nan, "diff_ci_high": np.nan,
                      "diff_sd": np.nan}
    test = "paired bootstrap over images" if once else "cluster bootstrap over seeds"
    return row | {"test": test, "p_value": boot["p"], "p_tost": 0.0 if equivalent else 1.0}


def image_comparison(pools: dict[str, dict[int, pd.DataFrame]], metric: str, baseline: str, margin: float,
                     folds: int, alpha: float = 0.05) -> pd.DataFrame:
    """Every strategy of `pools` (strategy -> seed -> outcomes) against `baseline` on `metric`, image by image;
    Holm-corrected across the strategies like the tests across seeds."""
    rows = [{"strategy": s, "baseline": baseline} | paired_images(pool, pools[baseline], metric, margin, folds)
            for s, pool in pools.items() if s != baseline]
    out = pd.DataFrame(rows, columns=[*COLUMNS[:11], "p_tost"])
    return against_margin(out, margin, alpha)[COLUMNS]


def never_pair(pool: dict[int, pd.DataFrame]) -> bool:
    """Whether a strategy never answers "A or B": it has in-between test images, and none of them, in any seed,
    got the predicted set {A, B}."""
    frames = [f[f.between] for f in pool.values()]
    return sum(len(f) for f in frames) > 0 and not any(f.exact.any() for f in frames)
