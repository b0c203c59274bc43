"""Known-answer tests for ambig_bench.stats (fast, deterministic, no training)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pandas as pd
import pytest

from ambig_bench import stats
from ambig_bench.stats import (
    OUTCOMES,
    bootstrap_difference,
    classify,
    holm,
    mcnemar_exact,
    mean_ci,
    paired_bootstrap_ci,
    paired_comparison,
    paired_test,
    rank_table,
    sample_size,
    tost,
)

T_975_DF2 = 4.302652729749464  # t_{0.975, 2}, from tables / scipy


def _runs(per_strategy: dict[str, list[float]], seeds: list[int] | None = None) -> pd.DataFrame:
    rows = []
    for strat, vals in per_strategy.items():
        for seed, v in zip(seeds or range(len(vals)), vals, strict=True):
            rows.append({"strategy": strat, "seed": seed, "acc": v})
    return pd.DataFrame(rows)


def test_module_docstring_example_runs():
    result = doctest.testmod(stats)
    assert result.attempted > 0 and result.failed == 0


# --- mean_ci ---------------------------------------------------------------

def test_mean_ci_known_answer():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    half = T_975_DF2 * 1.0 / math.sqrt(3)  # sd = 1 with ddof=1
    assert m == 2.0
    assert half == pytest.approx(2.4841377, abs=1e-6)
    assert (lo, hi) == pytest.approx((2 - half, 2 + half))


def test_mean_ci_level_widens_interval():
    _, lo90, hi90 = mean_ci([1.0, 2.0, 3.0, 5.0], level=0.90)
    _, lo99, hi99 = mean_ci([1.0, 2.0, 3.0, 5.0], level=0.99)
    assert lo99 < lo90 and hi99 > hi90


def test_mean_ci_ignores_nan_and_edge_cases():
    assert mean_ci([1.0, np.nan, 2.0, 3.0]) == pytest.approx(mean_ci([1.0, 2.0, 3.0]))
    m, lo, hi = mean_ci([0.7])
    assert m == 0.7 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in mean_ci([]))
    assert all(math.isnan(v) for v in mean_ci([np.nan, np.nan]))


# --- paired_bootstrap_ci ---------------------------------------------------

def test_bootstrap_ci_contains_true_shift_and_is_deterministic():
    rng = np.random.default_rng(42)
    b = rng.normal(0.7, 0.02, size=10)
    a = b + 0.05 + rng.normal(0, 0.005, size=10)
    first = paired_bootstrap_ci(a, b, seed=3)
    assert first[1] < 0.05 < first[2]
    assert first[0] == pytest.approx(np.mean(a - b))
    assert paired_bootstrap_ci(a, b, seed=3) == first
    assert paired_bootstrap_ci(a, b, seed=4) != first


def test_bootstrap_ci_collapses_on_constant_difference():
    b = np.array([0.1, 0.2, 0.3, 0.4])
    m, lo, hi = paired_bootstrap_ci(b + 0.5, b + 0.5 - 0.25)
    assert m == lo == hi == pytest.approx(0.25)


def test_bootstrap_ci_length_mismatch_raises():
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])


# --- paired_test -----------------------------------------------------------

def test_paired_test_identical_gives_p_one():
    x = [0.7, 0.71, 0.69, 0.72, 0.7, 0.73, 0.68, 0.7]
    assert paired_test(x, x) == (1.0, "sign")


def test_paired_test_sign_exact_three_seeds():
    p, name = paired_test([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])
    assert name == "sign" and p == pytest.approx(0.25)  # 2 * 0.5**3


def test_paired_test_sign_mixed_signs():
    # 4 non-zero diffs, 1 negative: p = 2 * P(X <= 1), X ~ Bin(4, .5) = 2 * 5/16
    p, name = paired_test([1.0, 1.0, 1.0, 0.0, 5.0], [0.0, 0.0, 0.0, 1.0, 5.0])
    assert name == "sign" and p == pytest.approx(0.625)


def test_paired_test_wilcoxon_constant_shift_exact():
    b = np.linspace(0.6, 0.8, 10)
    p, name = paired_test(b + 0.5, b)
    assert name == "wilcoxon"
    # Ten tied positive diffs: exact p = 2 / 2**10 (only all-positive/all-negative).
    assert p == pytest.approx(2 / 2**10)


def test_paired_test_wilcoxon_untied_matches_exact_table():
    # diffs 1..5 positive, -6 negative: W- = 6. Of the 64 sign patterns, 14 have
    # a rank sum <= 6, so the exact two-sided p = 2 * 14/64.
    p, name = paired_test([1.0, 2.0, 3.0, 4.0, 5.0, -6.0], [0.0] * 6)
    assert name == "wilcoxon" and p == pytest.approx(28 / 64)


# --- holm ------------------------------------------------------------------

def test_holm_hand_example():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])


def test_holm_caps_at_one_and_passes_nan():
    out = holm([0.5, np.nan, 0.01, 0.9])
    assert math.isnan(out[1])
    # m = 3 (NaN not counted): sorted 0.01*3, 0.5*2 -> 1.0, 0.9*1 -> max(1.0, .9)
    np.testing.assert_allclose(out[[0, 2, 3]], [1.0, 0.03, 1.0])
    assert np.isnan(holm([np.nan, np.nan])).all()


# --- paired_comparison -----------------------------------------------------

def test_comparison_identical_strategy_not_significant():
    vals = [0.70, 0.72, 0.69, 0.75, 0.71, 0.73, 0.70, 0.74]
    out = paired_comparison(_runs({"soft": vals, "copy": vals}), "acc", "soft", margin=0.02)
    row = out.iloc[0]
    assert list(out.columns) == stats.COLUMNS
    assert row["strategy"] == "copy" and row["baseline"] == "soft" and row["metric"] == "acc"
    assert row["p_value"] == 1.0 and row["diff_mean"] == 0.0
    assert not row["significant"] and row["verdict"] == "equivalent within ±0.02"


def test_comparison_planted_shift_ten_seeds():
    rng = np.random.default_rng(0)
    soft = rng.normal(0.7, 0.02, size=10)
    df = _runs({"soft": list(soft), "hard": list(soft + 0.03), "worse": list(soft - 0.03)})
    out = paired_comparison(df, "acc", "soft", margin=0.02, n_boot=2000).set_index("strategy")
    assert out.loc["hard", "test"] == "wilcoxon" and out.loc["hard", "p_value"] < 0.01
    assert out.loc["hard", "verdict"] == "higher than soft"
    assert out.loc["worse", "verdict"] == "lower than soft"
    assert out.loc["hard", "diff_ci_low"] == pytest.approx(0.03)  # constant shift
    # Holm with two equal p-values doubles both.
    assert out.loc["hard", "p_holm"] == pytest.approx(2 * out.loc["hard", "p_value"])
    assert out["significant"].dtype == bool and out["significant"].all()


def test_comparison_three_seeds_sign_test_not_significant():
    df = _runs({"soft": [0.70, 0.72, 0.71], "hard": [0.75, 0.78, 0.76]})
    row = paired_comparison(df, "acc", "soft", margin=0.02).iloc[0]
    assert row["test"] == "sign" and row["p_value"] == pytest.approx(0.25)
    assert not row["significant"] and row["verdict"] == "undecided"


def test_comparison_pairs_only_shared_seeds_and_flags_too_few():
    df = pd.concat([
        _runs({"soft": [0.7, 0.71, 0.72, 0.73]}, seeds=[0, 1, 2, 3]),
        _runs({"hard": [0.8, 0.81, 0.82]}, seeds=[1, 2, 9]),
        _runs({"lonely": [0.5]}, seeds=[3]),
    ])
    out = paired_comparison(df, "acc", "soft", margin=0.02).set_index("strategy")
    assert out.loc["hard", "n_pairs"] == 2
    assert out.loc["hard", "diff_mean"] == pytest.approx(0.09)  # seeds 1, 2 only
    assert out.loc["lonely", "n_pairs"] == 1
    assert math.isnan(out.loc["lonely", "p_value"]) and math.isnan(out.loc["lonely", "p_holm"])
    assert out.loc["lonely", "verdict"] == "too few paired seeds"
    assert not out.loc["lonely", "significant"]
    # Only "hard" has a p-value, so Holm leaves it unchanged (m = 1).
    assert out.loc["hard", "p_holm"] == out.loc["hard", "p_value"]


def test_comparison_missing_baseline_raises():
    df = _runs({"hard": [0.7, 0.8], "label_smooth": [0.6, 0.7]})
    with pytest.raises(ValueError, match="baseline strategy 'soft' not found"):
        paired_comparison(df, "acc", "soft", margin=0.02)


def test_comparison_duplicate_runs_raise():
    df = _runs({"soft": [0.7, 0.8]}, seeds=[0, 0])
    with pytest.raises(ValueError, match="duplicates"):
        paired_comparison(df, "acc", "soft", margin=0.02)


# --- rank_table ------------------------------------------------------------

def _summary(rows: list[tuple[str, float, float, float]], m: str = "acc") -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["strategy", f"{m}_mean", f"{m}_ci_low", f"{m}_ci_high"])


def test_rank_table_overlap_chain_and_disjoint():
    summary = _summary([
        ("c", 0.84, 0.80, 0.88),  # overlaps b but not a -> new rank 3
        ("a", 0.95, 0.90, 1.00),
        ("b", 0.90, 0.85, 0.95),  # overlaps a -> shares rank 1
        ("d", 0.50, 0.45, 0.55),  # disjoint -> rank 4
    ])
    out = rank_table(summary, ["acc"], {"acc": True}).set_index("strategy")["acc"]
    assert out.to_dict() == {"c": 3, "a": 1, "b": 1, "d": 4}


def test_rank_table_lower_is_better_and_nan_ci():
    summary = pd.concat([
        _summary([("x", 0.10, 0.05, 0.15), ("y", 0.12, 0.08, 0.16), ("z", 0.30, 0.25, 0.35)],
                 m="ece"),
        _summary([("x", 0.7, np.nan, np.nan), ("y", 0.8, np.nan, np.nan),
                  ("z", 0.8, np.nan, np.nan)])[["acc_mean", "acc_ci_low", "acc_ci_high"]],
    ], axis=1)
    out = rank_table(summary, ["ece", "acc"], {"ece": False, "acc": True})
    assert list(out.columns) == ["strategy", "ece", "acc"]
    assert out.set_index("strategy")["ece"].to_dict() == {"x": 1, "y": 1, "z": 3}
    # Single-seed (NaN CI): rank by mean only, equal means tie.
    assert out.set_index("strategy")["acc"].to_dict() == {"x": 3, "y": 1, "z": 1}


def test_rank_table_requires_direction():
    with pytest.raises(ValueError, match="higher_is_better"):
        rank_table(_summary([("a", 0.9, 0.8, 1.0)]), ["acc"], {})


# --- equivalence, McNemar, bootstrap over images, sample size ---------------

@pytest.mark.parametrize("shift, spread", [(0.0, 0.005), (0.004, 0.01), (0.015, 0.01), (-0.03, 0.02)])
def test_tost_matches_statsmodels(shift, spread):
    from statsmodels.stats.weightstats import ttost_paired

    rng = np.random.default_rng(7)
    b = rng.normal(0.7, 0.02, size=12)
    a = b + shift + rng.normal(0, spread, size=12)
    assert tost(a - b, 0.02) == pytest.approx(ttost_paired(a, b, -0.02, 0.02)[0], rel=1e-9)


def test_tost_is_the_90_percent_interval_inside_the_margin():
    d = np.array([0.004, -0.002, 0.006, 0.001, 0.003, -0.001, 0.002, 0.005])
    half = stats.sps.t.ppf(0.95, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    inside = max(abs(d.mean() - half), abs(d.mean() + half))
    assert tost(d, inside * 1.001) < 0.05 < tost(d, inside * 0.999)
    assert tost([0.01, 0.01, 0.01], 0.02) == 0.0 and tost([0.03] * 3, 0.02) == 1.0  # no spread: exact
    assert math.isnan(tost([0.01], 0.02))


@pytest.mark.parametrize("only_a, only_b, both, neither", [(9, 1, 30, 10), (3, 3, 20, 0), (0, 6, 5, 5), (0, 0, 4, 4)])
def test_mcnemar_exact_matches_statsmodels_and_the_binomial(only_a, only_b, both, neither):
    from statsmodels.stats.contingency_tables import mcnemar

    a = np.array([1] * only_a + [0] * only_b + [1] * both + [0] * neither)
    b = np.array([0] * only_a + [1] * only_b + [1] * both + [0] * neither)
    p, n10, n01 = mcnemar_exact(a, b)
    assert (n10, n01) == (only_a, only_b)
    assert p == pytest.approx(mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue, rel=1e-12)
    n = only_a + only_b
    by_hand = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n) if n else 1.0
    assert p == pytest.approx(by_hand, rel=1e-12)


def test_bootstrap_difference_over_rows_and_clusters():
    d = np.array([1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    out = bootstrap_difference(lambda w: w @ d / w.sum(1), d.size, n_boot=4000)
    assert out["diff"] == pytest.approx(0.4)
    assert out["low"] <= out["low90"] < 0.4 < out["high90"] <= out["high"]
    # The bootstrap standard error of a mean is close to sd / sqrt(n) (ddof=0, as resampling gives).
    assert out["se"] == pytest.approx(d.std() / math.sqrt(d.size), rel=0.1)
    # The same as drawing row indices by hand: the percentile interval of the resampled means.
    rng = np.random.default_rng(1)
    by_hand = np.quantile([d[rng.integers(0, d.size, d.size)].mean() for _ in range(4000)], [0.025, 0.975])
    assert (out["low"], out["high"]) == pytest.approx(tuple(by_hand), abs=0.11)
    # Clusters move together: two clusters of identical rows give only the two cluster means and their average.
    values = np.repeat([0.0, 1.0], 5)
    boot = bootstrap_difference(lambda w: w @ values / w.sum(1), 10, clusters=np.repeat([7, 3], 5), n_boot=500)
    assert boot["low"] == 0.0 and boot["high"] == 1.0
    # Every resample on one side of zero: p is bounded by the resolution of the resamples, not 0.
    assert bootstrap_difference(lambda w: w @ (d + 5) / w.sum(1), d.size, n_boot=500)["p"] == 1 / 500
    assert bootstrap_difference(lambda w: 0.0 * w.sum(1), 5)["p"] == 1.0


def test_sample_size_by_hand_and_statsmodels():
    from statsmodels.stats.power import NormalIndPower

    z = stats.sps.norm.ppf(0.975) + stats.sps.norm.ppf(0.8)
    assert sample_size(0.05, 0.02) == pytest.approx((z * 0.05 / 0.02) ** 2)
    # statsmodels' one-sample normal power (ratio=0) adds the far tail's tiny probability: equal to 0.1%.
    assert sample_size(0.05, 0.02) == pytest.approx(
        NormalIndPower().solve_power(effect_size=0.02 / 0.05, alpha=0.05, power=0.8, ratio=0), rel=1e-3)
    assert math.isnan(sample_size(0.0, 0.02)) and math.isnan(sample_size(float("nan"), 0.02))


@pytest.mark.parametrize("significant, equivalent, diff, outcome", [
    (True, False, 0.05, "different"), (True, True, -0.005, "negligible"),
    (True, False, -0.01, "undecided"),  # significant, below the margin on the mean, but not shown inside it
    (False, True, 0.001, "equivalent"), (False, False, 0.03, "undecided"), (True, False, -0.02, "different")])
def test_classify(significant, equivalent, diff, outcome):
    assert classify(significant, equivalent, diff, 0.02) == outcome and outcome in OUTCOMES


def test_comparison_small_significant_shift_is_negligible():
    rng = np.random.default_rng(3)
    soft = rng.normal(0.7, 0.02, size=10)
    df = _runs({"soft": list(soft), "close": list(soft + 0.005 + rng.normal(0, 0.0005, size=10))})
    row = paired_comparison(df, "acc", "soft", margin=0.02).iloc[0]
    assert row["significant"] and row["equivalent"] and row["outcome"] == "negligible"
    assert row["verdict"] == "negligible: significant but within ±0.02"
