"""The statistics of ``ambig-bench compare`` and the report: across seeds, and across images.

Every strategy is trained with several random seeds; these helpers summarise a
metric over seeds and compare strategies *paired by seed* (same seed = same data
split and initialisation noise, so pairing removes that shared variance). Beside
them, tests paired by *image* (exact McNemar on 0/1 outcomes, a paired bootstrap
for anything else), equivalence by two one-sided tests against a margin, and the
sample size at which a difference of that margin would be resolved.

Example:
    >>> import pandas as pd
    >>> from ambig_bench.stats import mean_ci, paired_comparison
    >>> m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    >>> round(m, 4), round(hi - m, 4)
    (2.0, 2.4841)
    >>> df = pd.DataFrame({"strategy": ["soft"] * 3 + ["hard"] * 3,
    ...                    "seed": [0, 1, 2] * 2,
    ...                    "acc": [0.70, 0.72, 0.71, 0.75, 0.78, 0.76]})
    >>> row = paired_comparison(df, "acc", baseline="soft", margin=0.02).iloc[0]
    >>> row["test"], float(row["p_value"]), row["verdict"]
    ('sign', 0.25, 'undecided')
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

ArrayLike = Sequence[float] | np.ndarray | pd.Series

# Below this many non-zero differences the Wilcoxon test cannot reach small
# p-values (n=5 gives p >= 0.0625), so the simpler exact sign test is used.
MIN_WILCOXON = 6
# Largest n for which tied |differences| are handled by enumerating all 2**n
# sign flips (exact); beyond it the normal approximation is accurate enough.
MAX_ENUMERATE = 16

POWER = 0.8  # "about N more would resolve a difference of δ": N at which a level-5% test has this power

COLUMNS = ["strategy", "baseline", "metric", "n_pairs", "diff_mean", "diff_ci_low",
           "diff_ci_high", "test", "p_value", "diff_sd", "p_holm", "significant", "margin", "p_tost", "equivalent",
           "outcome", "verdict"]
# What a paired difference amounts to, given its margin δ (`classify`).
OUTCOMES = ("different", "negligible", "equivalent", "undecided")


def _finite(values: ArrayLike) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[~np.isnan(x)]


def _paired_diffs(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """a - b, dropping seeds where either side is missing (NaN)."""
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in length: {a.size} vs {b.size}")
    return _finite(a - b)


def mean_ci(values: ArrayLike, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval over seeds; NaNs are ignored."""
    x = _finite(values)
    if x.size == 0:
        return (np.nan, np.nan, np.nan)
    mean = float(x.mean())
    if x.size == 1:  # no spread information from a single seed
        return (mean, np.nan, np.nan)
    half = sps.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return (mean, float(mean - half), float(mean + half))


def paired_bootstrap_ci(a: ArrayLike, b: ArrayLike, level: float = 0.95,
                        n_boot: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b and a percentile bootstrap CI, resampling seeds."""
    d = _paired_diffs(a, b)
    if d.size == 0:
        return (np.nan, np.nan, np.nan)
    mean = float(d.mean())
    if np.ptp(d) == 0:  # avoid float noise from averaging identical values
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    # One (n_boot, n) index matrix: every row is a resample of the seeds.
    boot = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail])
    return (mean, float(lo), float(hi))


def paired_test(a: ArrayLike, b: ArrayLike) -> tuple[float, str]:
    """Two-sided p-value of a paired test on a - b and the test's name."""
    d = _paired_diffs(a, b)
    nz = d[d != 0]  # zero differences carry no sign information
    n = nz.size
    if n < MIN_WILCOXON:
        if n == 0:
            return (1.0, "sign")
        k = int((nz > 0).sum())
        p = 2 * sps.binom.cdf(min(k, n - k), n, 0.5)
        return (float(min(1.0, p)), "sign")
    abs_d = np.abs(nz)
    if np.unique(abs_d).size == n:
        method: str | sps.PermutationMethod = "exact"
    elif n <= MAX_ENUMERATE:
        # scipy's "exact" table assumes untied ranks; enumerating all sign
        # flips gives the exact null distribution for the tied midranks.
        method = sps.PermutationMethod(n_resamples=2**n)
    else:
        method = "asymptotic"
    res = sps.wilcoxon(nz, method=method)
    return (float(min(1.0, res.pvalue)), "wilcoxon")


def tost(diffs: ArrayLike, margin: float) -> float:
    """p-value of two one-sided t-tests (TOST) that the mean paired difference lies inside (-margin, +margin):
    the larger of the two one-sided p-values. Below 0.05 exactly when the 90% t-interval lies inside the margin."""
    d = _finite(diffs)
    if d.size < 2:
        return np.nan
    if np.ptp(d) <= 1e-12:  # no spread (but float noise): the mean is known exactly
        return 0.0 if abs(d.mean()) < margin else 1.0
    above = sps.ttest_1samp(d, -margin, alternative="greater").pvalue
    below = sps.ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(above, below))


def mcnemar_exact(a: ArrayLike, b: ArrayLike) -> tuple[float, int, int]:
    """Exact McNemar test on paired 0/1 outcomes (a image-wise against b): two-sided binomial test of the
    discordant images. Returns the p-value, the images only a got right and the images only b got right."""
    a, b = np.asarray(a, dtype=bool).ravel(), np.asarray(b, dtype=bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in length: {a.size} vs {b.size}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return (1.0, 0, 0)
    return (float(sps.binomtest(only_a, only_a + only_b, 0.5).pvalue), only_a, only_b)


def bootstrap_difference(statistic, n: int, clusters: ArrayLike | None = None, level: float = 0.95,
                         n_boot: int = 2000, seed: int = 0, chunk: int = 250) -> dict[str, float]:
    """A paired bootstrap of a difference over n paired rows (images). `statistic(weights)` takes an R×n matrix of
    resample counts (how often each row is drawn) and returns the R differences; resamples draw rows, or, given
    `clusters` (one label per row), whole clusters with all their rows. Returns the difference on every row once
    (`diff`), its percentile 95% interval (`low`, `high`), the 90% one that equivalence is judged by (`low90`,
    `high90`), the bootstrap standard error (`se`) and a two-sided p-value (how often the resampled difference
    falls on the other side of zero, doubled; at least 1 / n_boot)."""
    rng = np.random.default_rng(seed)
    if clusters is None:
        member, k = np.arange(n), n
    else:
        _, member = np.unique(np.asarray(clusters).ravel(), return_inverse=True)
        k = int(member.max()) + 1
    boot = np.concatenate([np.asarray(statistic(rng.multinomial(k, np.full(k, 1 / k), size=size)[:, member]), float)
                           for size in [chunk] * (n_boot // chunk) + [n_boot % chunk] if size])
    diff = float(np.asarray(statistic(np.ones((1, n))), float)[0])
    tail = (1 - level) / 2
    low, high, low90, high90 = np.quantile(boot, [tail, 1 - tail, 0.05, 0.95])
    # A side no resample reached says p < 1/n_boot, not p = 0: the resolution of n_boot resamples.
    p = 1.0 if np.ptp(boot) == 0 else min(1.0, max(2 * min(np.mean(boot <= 0), np.mean(boot >= 0)), 1 / n_boot))
    return {"diff": diff, "low": float(low), "high": float(high), "low90": float(low90), "high90": float(high90),
            "se": float(boot.std(ddof=1)), "p": float(p)}


def sample_size(sd: float, delta: float, alpha: float = 0.05, power: float = POWER) -> float:
    """How many paired units (seeds, images) a two-sided level-alpha test needs to detect a mean difference of
    `delta` with probability `power`, given the standard deviation `sd` of one unit's difference (normal
    approximation: n = ((z_{1-alpha/2} + z_power) sd / delta)^2). NaN where sd is unknown or zero."""
    if not sd > 0 or not delta > 0:
        return np.nan
    return float(((sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * sd / delta) ** 2)


def classify(significant: bool, equivalent: bool, diff: float, margin: float) -> str:
    """One of OUTCOMES. `different`: significant, and the mean difference at least the margin; `negligible`:
    significant, but inside the margin by TOST (shown smaller than the margin, not merely estimated smaller);
    `equivalent`: not significant and inside the margin by TOST; otherwise `undecided` (among them a significant
    difference whose mean is below the margin but whose interval reaches past it: whether it matters is open)."""
    if significant and equivalent:
        return "negligible"
    if significant and abs(diff) >= margin:
        return "different"
    return "equivalent" if equivalent and not significant else "undecided"


def against_margin(tests: pd.DataFrame, margin: float, alpha: float) -> pd.DataFrame:
    """A table of paired tests (`p_value`, `p_tost`, `diff_mean` per row) judged together: Holm across its rows,
    significance and equivalence at `alpha`, and each row's outcome against `margin` (`classify`). A row without a
    test (NaN p-values: too few pairs) is neither significant nor equivalent, so undecided."""
    tests["p_holm"] = holm(tests["p_value"].to_numpy(float))
    tests["significant"] = (tests["p_holm"] < alpha).astype(bool)  # NaN -> False
    tests["margin"] = margin
    tests["equivalent"] = (tests["p_tost"] < alpha).astype(bool)
    tests["outcome"] = [classify(r.significant, r.equivalent, r.diff_mean, margin) for r in tests.itertuples()]
    return tests


def holm(pvalues: ArrayLike) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values; NaN stays NaN and is not counted."""
    p = np.asarray(pvalues, dtype=float).ravel()
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    # Running max keeps adjusted p-values monotone in the raw p-value order.
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def paired_comparison(df: pd.DataFrame, metric: str, baseline: str, margin: float, level: float = 0.95,
                      alpha: float = 0.05, n_boot: int = 10000, seed: int = 0) -> pd.DataFrame:
    """Compare every strategy to ``baseline`` on ``metric``, pairing runs by seed; equivalence (TOST) and the
    outcome (`classify`) against ``margin``."""
    missing = {"strategy", "seed", metric} - set(df.columns)
    if missing:
        raise ValueError(f"missing column(s): {sorted(missing)}")
    strategies = list(pd.unique(df["strategy"]))
    if baseline not in strategies:
        raise ValueError(f"baseline strategy {baseline!r} not found; available: {strategies}")
    if df.duplicated(["strategy", "seed"]).any():
        raise ValueError("expected one run per (strategy, seed); found duplicates")
    wide = df.pivot(index="seed", columns="strategy", values=metric)
    rows = []
    for strat in (s for s in strategies if s != baseline):
        pair = wide[[strat, baseline]].dropna()
        a, b = pair[strat].to_numpy(float), pair[baseline].to_numpy(float)
        n = len(pair)
        row = {"strategy": strat, "baseline": baseline, "metric": metric, "n_pairs": n,
               "diff_mean": float(np.mean(a - b)) if n else np.nan,
               "diff_ci_low": np.nan, "diff_ci_high": np.nan, "test": "none", "p_value": np.nan,
               "diff_sd": np.nan, "p_tost": np.nan}
        if n >= 2:
            _, row["diff_ci_low"], row["diff_ci_high"] = paired_bootstrap_ci(
                a, b, level=level, n_boot=n_boot, seed=seed)
            row["p_value"], row["test"] = paired_test(a, b)
            row["diff_sd"], row["p_tost"] = float(np.std(a - b, ddof=1)), tost(a - b, margin)
        rows.append(row)
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_holm", "significant", "margin",
                                                                        "equivalent", "outcome", "verdict")])
    out = against_margin(out, margin, alpha)
    out["verdict"] = [_verdict(r.n_pairs, r.outcome, r.diff_mean, margin, baseline) for r in out.itertuples()]
    return out[COLUMNS]


def _verdict(n_pairs: int, outcome: str, diff: float, margin: float, baseline: str) -> str:
    if n_pairs < 2:
        return "too few paired seeds"
    return {"different": f"{'higher' if diff > 0 else 'lower'} than {baseline}",
            "negligible": f"negligible: significant but within ±{margin:g}",
            "equivalent": f"equivalent within ±{margin:g}",
            "undecided": "undecided"}[outcome]


def _overlap(lo1: float, hi1: float, lo2: float, hi2: float) -> bool:
    # NaN bounds (single seed) compare False, i.e. "no evidence of overlap".
    return bool(lo1 <= hi2 and lo2 <= hi1)


def rank_table(summary: pd.DataFrame, metrics: Sequence[str],
               higher_is_better: Mapping[str, bool]) -> pd.DataFrame:
    """Rank strategies per metric (1 = best); overlapping CIs share a rank."""
    out = pd.DataFrame({"strategy": summary["strategy"].to_numpy()})
    for m in metrics:
        if m not in higher_is_better:
            raise ValueError(f"higher_is_better has no entry for metric {m!r}")
        cols = [f"{m}_mean", f"{m}_ci_low", f"{m}_ci_high"]
        absent = [c for c in cols if c not in summary.columns]
        if absent:
            raise ValueError(f"summary lacks column(s) {absent}")
        mean, lo, hi = (summary[c].to_numpy(float) for c in cols)
        key = -mean if higher_is_better[m] else mean
        order = np.argsort(key, kind="stable")  # NaN means sort last
        ranks = pd.array([pd.NA] * len(mean), dtype="Int64")
        holder = -1  # index of the strategy holding the current group's rank
        for pos, i in enumerate(order, start=1):
            if np.isnan(mean[i]):
                continue  # no value -> no rank
            if holder >= 0 and (mean[i] == mean[holder]
                                or _overlap(lo[i], hi[i], lo[holder], hi[holder])):
                ranks[i] = ranks[holder]
            else:
                ranks[i], holder = pos, i
        out[m] = ranks
    return out


@functools.lru_cache
def min_holm_p(n_pairs: int, comparisons: int) -> float:
    """The smallest Holm-adjusted p-value `comparisons` paired tests on n seeds can give at all."""
    if n_pairs < 2:
        return 1.0
    # Every difference of one sign is the most extreme outcome of the sign and signed-rank tests.
    p, _ = paired_test(np.arange(1.0, n_pairs + 1), np.zeros(n_pairs))
    return min(1.0, comparisons * p)
