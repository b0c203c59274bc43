"""The label-budget curve: is labelling more in-between images worth it?

Read from a sweep of `--between-train` (the in-between training images kept, nested per seed: the 20 hold the 10,
and every point tests the same images). Per strategy and metric, the metric is fitted against log2 N, so the slope
is the gain of one doubling of the in-between labels; the answer extrapolates one doubling past the largest N at
most: "labelling N more in-between images is expected to gain about d (95% CI)", "the curve has flattened" (the
whole interval below the metric's margin), or undecided.

The points of one seed share their test images and clear-cut training images, so they are no independent draws:
the line is fitted per seed (least squares), and the seeds' slopes, which are independent, give the mean and its
Student-t interval (the summary-statistic approach to repeated measures). With every seed at every point, that mean
is the within-seed least-squares slope of all the runs pooled.

$ ambig-bench sweep --dataset folder --labels photos/labels.csv --strategy soft,hard --vary between-train=10,20,40
$ ambig-bench report results/folder       # its section "Is another in-between label worth it?"
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ambig_bench.analysis import Comparison, split_groups
from ambig_bench.metrics import METRICS
from ambig_bench.stats import mean_ci, sample_size

FIELD = "between_train"  # the swept option: in-between training images kept
CURVE_METRICS = ("between_set_acc", "clear_acc")
VERDICTS = ("gain", "flattened", "undecided")


def seed_lines(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per seed with two or more distinct N: the least-squares line of `metric` on log2 N (slope, intercept)."""
    rows = []
    for seed, part in runs.dropna(subset=[metric]).groupby("seed"):
        x = np.log2(part[FIELD].to_numpy(float))
        if len(np.unique(x)) >= 2:
            slope, intercept = np.polyfit(x, part[metric].to_numpy(float), 1)
            rows.append({"seed": seed, "slope": slope, "intercept": intercept})
    return pd.DataFrame(rows, columns=["seed", "slope", "intercept"])


def trend(runs: pd.DataFrame, metric: str) -> dict[str, float]:
    """The metric's change per doubling of N: mean of the seeds' slopes with its 95% t-interval, their spread,
    and the mean intercept (the fitted line at N = 1, for drawing)."""
    lines = seed_lines(runs, metric)
    slope, low, high = mean_ci(lines.slope.to_numpy())
    return {"n_seeds": len(lines), "slope": slope, "slope_ci_low": low, "slope_ci_high": high,
            "slope_sd": float(lines.slope.std(ddof=1)) if len(lines) > 1 else math.nan,
            "intercept": float(lines.intercept.mean()) if len(lines) else math.nan}


def answer(fit: dict[str, float], metric: str, margin: float, largest: int) -> tuple[str, str]:
    """(verdict of VERDICTS, the answer in words) for one more doubling of `largest` in-between training images.
    `gain`: the interval excludes no gain and the estimate reaches the margin; `flattened`: the whole interval is
    below the margin; `undecided` otherwise, with the seeds that would tell."""
    higher = METRICS[metric].higher_is_better is not False
    sign = 1 if higher else -1
    gain = sign * fit["slope"]
    low, high = sorted((sign * fit["slope_ci_low"], sign * fit["slope_ci_high"]))
    more = f"labelling {largest} more in-between images (to {2 * largest})"
    if not np.isfinite([gain, low, high]).all():
        return "undecided", f"{more}: no trend to tell, it needs two or more seeds trained at two or more values"
    interval = f"(95% CI [{fit['slope_ci_low']:.3f}, {fit['slope_ci_high']:.3f}])"
    change = f"expected to change {metric} by {fit['slope']:+.3f} {interval}{'' if higher else ', lower is better'}"
    if low > 0 and gain >= margin:
        return "gain", (f"{more} is expected to gain about {gain:.3f} on {metric} {interval}" if higher else
                        f"{more} is {change}")
    if high < margin:
        return "flattened", f"the curve has flattened: {more} is {change}, less than its margin {margin:g}"
    need = sample_size(fit["slope_sd"], margin)
    tell = (f"about {math.ceil(need - fit['n_seeds'])} more seeds would tell" if need > fit["n_seeds"] else
            "the gain is close to the margin")
    return "undecided", (f"undecided: {more} is {change}, an interval that holds gains both below and above its "
                         f"margin {margin:g}; {tell}")


def curve_runs(comparison: Comparison) -> pd.DataFrame:
    """The finished runs of a --between-train sweep with a number of in-between training images (a run at the
    default, all of them, has none); empty when the directory holds no such sweep."""
    if FIELD not in comparison.group_by:
        return comparison.done.iloc[:0]
    runs = comparison.done.assign(**{FIELD: pd.to_numeric(comparison.done[FIELD], errors="coerce")})
    return runs[runs[FIELD] > 0]


def label_curve(comparison: Comparison, metrics: tuple[str, ...] = CURVE_METRICS) -> pd.DataFrame:
    """One row per (other swept options, strategy, metric): the values of N, seeds, the gain per doubling with its
    95% CI, the fitted line, the verdict and the answer in words. Empty without a sweep of two or more N."""
    runs = curve_runs(comparison)
    if runs[FIELD].nunique() < 2:
        return pd.DataFrame()
    others = [g for g in comparison.group_by if g != FIELD]
    rows = []
    for where, part in split_groups(runs, others):
        for strategy, mine in part.groupby("strategy", sort=True):
            for metric in metrics:
                if metric not in mine or mine[metric].isna().all():
                    continue
                fit = trend(mine, metric)
                largest = int(mine[FIELD].max())
                verdict, words = answer(fit, metric, comparison.margins[metric], largest)
                rows.append(where | {"strategy": strategy, "metric": metric,
                                     "points": ", ".join(f"{n:g}" for n in sorted(mine[FIELD].unique())),
                                     **fit, "largest": largest, "verdict": verdict, "answer": words})
    return pd.DataFrame(rows)
