"""Seed-level statistics used by ``ambig-bench compare``.

Every strategy is trained with several random seeds; these helpers summarise a
metric over seeds and compare strategies *paired by seed* (same seed = same data
split and initialisation noise, so pairing removes that shared variance).

Example:
    >>> import pandas as pd
    >>> from ambig_bench.stats import mean_ci, paired_comparison
    >>> m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    >>> round(m, 4), round(hi - m, 4)
    (2.0, 2.4841)
    >>> df = pd.DataFrame({"strategy": ["soft"] * 3 + ["hard"] * 3,
    ...                    "seed": [0, 1, 2] * 2,
    ...                    "acc": [0.70, 0.72, 0.71, 0.75, 0.78, 0.76]})
    >>> row = paired_comparison(df, "acc", baseline="soft").iloc[0]
    >>> row["test"], float(row["p_value"]), row["verdict"]
    ('sign', 0.25, 'no significant difference')
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

COLUMNS = ["strategy", "baseline", "metric", "n_pairs", "diff_mean", "diff_ci_low",
           "diff_ci_high", "test", "p_value", "p_holm", "significant", "verdict"]


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


def paired_comparison(df: pd.DataFrame, metric: str, baseline: str, level: float = 0.95,
                      alpha: float = 0.05, n_boot: int = 10000, seed: int = 0) -> pd.DataFrame:
    """Compare every strategy to ``baseline`` on ``metric``, pairing runs by seed."""
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
               "diff_ci_low": np.nan, "diff_ci_high": np.nan, "test": "none", "p_value": np.nan}
        if n >= 2:
            _, row["diff_ci_low"], row["diff_ci_high"] = paired_bootstrap_ci(
                a, b, level=level, n_boot=n_boot, seed=seed)
            row["p_value"], row["test"] = paired_test(a, b)
        rows.append(row)
    out = pd.DataFrame(rows, columns=COLUMNS[:9])
    out["p_holm"] = holm(out["p_value"].to_numpy(float))
    out["significant"] = (out["p_holm"] < alpha).astype(bool)  # NaN -> False
    out["verdict"] = [_verdict(r.n_pairs, r.significant, r.diff_mean, baseline)
                      for r in out.itertuples()]
    return out[COLUMNS]


def _verdict(n_pairs: int, significant: bool, diff: float, baseline: str) -> str:
    if n_pairs < 2:
        return "too few paired seeds"
    if not significant:
        return "no significant difference"
    return f"{'higher' if diff > 0 else 'lower'} than {baseline}"


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
