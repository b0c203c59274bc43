"""Verdicts per criterion, and the flags a reader must see before trusting any of them.

For each criterion (CRITERIA) the strategy with the best mean is tested against every other one, the tests
Holm-corrected across those comparisons: image by image where the pool is out-of-fold (each image once, the more
powerful test), else across seeds. Each comparison's outcome, against the metric's margin δ, is `different`,
`negligible` (significant but smaller than δ), `equivalent` (TOST within ±δ) or `undecided` (stats.classify), and
the criterion gets one verdict (`verdict`):
- "X is better by d [95% CI]" only if X beats every other strategy by a significant difference of at least δ;
- "undecided: the 95% CI is ±w; about N more seeds (or M more test images) would resolve a difference of δ" where
  any comparison is undecided (N from the observed spread of the paired differences: stats.sample_size);
- otherwise "equivalent within ±δ" / "negligible" for the strategies tied with X, and which are worse beyond δ.
No winner is named for a criterion whose strategies include runs that had not converged.

>>> verdicts = leads(analyse("results/demo"))  # doctest: +SKIP
>>> verdicts.answer.iloc[0]  # doctest: +SKIP
'equivalent within ±0.02: soft (best mean) and extra-class'
"""

from __future__ import annotations

import math

import pandas as pd

from ambig_bench.analysis import Comparison, folds_of, select, split_groups, unconverged
from ambig_bench.images import ONCE, PER_IMAGE, image_comparison, never_pair
from ambig_bench.metrics import HIGHER_IS_BETTER
from ambig_bench.stats import min_holm_p, paired_comparison, sample_size

ALPHA = 0.05  # significance level of every paired test
CRITERIA = {"clear-cut accuracy": "clear_acc", "in-between accuracy": "between_set_acc", "calibration": "ece"}
IMAGES = {"clear_acc": "clear-cut", "between_set_acc": "in-between", "ece": "clear-cut"}  # the images a metric is on
FIX = "raise --epochs"  # the fix for an unconverged run that records no reason


def and_join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def paired_cell(r: pd.Series) -> str:
    """'+0.012 [+0.004, +0.020] p=0.01' (Holm-adjusted), '... n.s.', with ≈ where equivalent within the margin."""
    if math.isnan(r.diff_mean):
        return "–"
    if math.isnan(r.diff_ci_low):
        return f"{r.diff_mean:+.3f} (too few seeds)"
    mark = f"p={r.p_holm:.2g}" if r.significant else "n.s."
    if r.outcome in ("equivalent", "negligible"):
        mark += f", within ±{r.margin:g}"
    return f"{r.diff_mean:+.3f} [{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}] {mark}"


def seeds_to_significance(n: int, comparisons: int) -> int:
    """More seeds at which the paired test across seeds can reach significance at all (Holm, `comparisons`)."""
    return next((m for m in range(max(n, 2), max(n, 2) + 64) if min_holm_p(m, comparisons) < ALPHA), n) - n


def more_data(seeds: pd.Series, images: pd.Series | None, margin: float, comparisons: int, metric: str) -> str:
    """'about 7 more seeds or about 300 more in-between test images': what would resolve a difference of δ,
    from the observed spread of the paired differences (80% power, at level 5% / comparisons: Bonferroni's bound on
    the Holm-corrected tests the verdict uses). Where the spread says the data at hand
    are already enough, an estimate of "1 more" would mislead: it says so instead."""
    n = int(seeds.n_pairs)
    need = sample_size(seeds.diff_sd, margin, alpha=ALPHA / comparisons)
    more = seeds_to_significance(n, comparisons) if math.isnan(need) else math.ceil(need) - n
    options = [f"about {more} more seed{'s' if more > 1 else ''}"] if more > 0 else []
    if images is not None and images.n_images >= 2:
        need = sample_size(images.diff_sd, margin, alpha=ALPHA / comparisons)
        more_images = math.ceil(need) - int(images.n_images) if not math.isnan(need) else 0
        if more_images > 0:
            pooled = "" if images.pool == ONCE else " (pooled over seeds)"
            options.append(f"about {more_images} more {IMAGES[metric]} test image{'s' if more_images > 1 else ''}"
                           f"{pooled}")
    if not options:
        return "a repeat with new seeds (by the observed spread the present number is enough at 80% power)"
    return " or ".join(options)


def judge(leader: str, tests: pd.DataFrame, metric: str, margin: float, more: dict[str, str]) -> tuple[str, str]:
    """The verdict from `tests` (other − leader, indexed by strategy, in order of mean): answer and evidence.
    `more`: per strategy, the data that would resolve its comparison."""
    higher = HIGHER_IS_BETTER[metric]
    worse = [s for s, t in tests.iterrows() if t.outcome == "different" and (t.diff_mean < 0) == higher]
    ahead = [s for s, t in tests.iterrows() if t.outcome == "different" and s not in worse]
    undecided = [s for s, t in tests.iterrows() if t.outcome == "undecided"] + ahead
    tied = {k: [s for s, t in tests.iterrows() if t.outcome == k] for k in ("equivalent", "negligible")}
    if len(worse) == len(tests):
        runner = tests.iloc[0]
        sign = -1 if higher else 1  # the leader's advantage, positive
        low, high = sorted((sign * runner.diff_ci_low, sign * runner.diff_ci_high))
        return (f"**{leader}** is better by {sign * runner.diff_mean:.3f} [{low:.3f}, {high:.3f}]",
                f"significantly better than all {len(tests)} others, each by {margin:g} or more on the mean; "
                f"closest {tests.index[0]} − {leader}: {paired_cell(runner)}")
    if undecided:
        s = undecided[0]
        t = tests.loc[s]
        half = (t.diff_ci_high - t.diff_ci_low) / 2
        width = f"±{half:.3f}" if not math.isnan(half) else "unknown (too few seeds)"
        return (f"undecided: the 95% CI of {s} − {leader} is {width}; {more[s]} would resolve a difference of "
                f"{margin:g}", f"{leader} has the best mean; {s} − {leader}: {paired_cell(t)}"
                + (f"; also undecided: {', '.join(undecided[1:])}" if len(undecided) > 1 else ""))
    parts = []
    if tied["equivalent"]:
        parts.append(f"equivalent within ±{margin:g}: {and_join([f'{leader} (best mean)', *tied['equivalent']])}")
    if tied["negligible"]:
        parts.append(f"negligible: {and_join(tied['negligible'])} − {leader} significant but smaller than "
                     f"{margin:g}")
    if worse:
        parts.append(f"worse beyond ±{margin:g}: {', '.join(worse)}")
    evidence = "; ".join(f"{s} − {leader}: {paired_cell(t)}" for s, t in tests.iterrows() if s not in worse)
    return "; ".join(parts), evidence


def lead_row(comparison: Comparison, where: dict, criterion: str, metric: str) -> dict:
    """One criterion's verdict in one group: the leader by mean against every other strategy."""
    part = select(comparison.done, where)
    summary = select(comparison.summary, where)
    higher = HIGHER_IS_BETTER[metric]
    ranked = summary[summary.n_seeds > 0].dropna(subset=[f"{metric}_mean"]).sort_values(
        f"{metric}_mean", ascending=not higher, kind="stable")
    row = where | {"criterion": criterion, "metric": metric}
    if len(ranked) < 2:
        return row | {"answer": "not decided", "evidence": "fewer than two strategies have this metric",
                      "test": "–"}
    leader, others = ranked.strategy.iloc[0], list(ranked.strategy.iloc[1:])
    margin = comparison.margins[metric]
    seeds = paired_comparison(part[["strategy", "seed", metric]], metric, leader, margin, alpha=ALPHA)
    seeds = seeds.set_index("strategy").loc[others]
    images = None
    pools = {s: p for s, p in comparison.pools(where).items() if p and s in set(ranked.strategy)}
    if metric in PER_IMAGE and set(pools) == set(ranked.strategy):
        images = image_comparison(pools, metric, leader, margin, folds_of(part), ALPHA).set_index(
            "strategy").loc[others]
    by_image = images is not None and (images.pool == ONCE).all()
    tests = images if by_image else seeds
    more = {s: more_data(seeds.loc[s], images.loc[s] if images is not None else None, margin, len(others), metric)
            for s in others}
    answer, evidence = judge(leader, tests, metric, margin, more)
    best = ranked.iloc[0]
    evidence = f"{leader} mean {best[f'{metric}_mean']:.3f}; {evidence}"
    if images is not None and not by_image:
        runner = others[0]
        evidence += f"; by image ({images.loc[runner].pool}): {runner} − {leader} {paired_cell(images.loc[runner])}"
    if metric == "between_set_acc" and (note := threshold_note(comparison, where)):
        evidence += f"; {note}"
    test = (f"image by image ({ONCE}, {images.test.iloc[0]})" if by_image else "across seeds")
    bad = unconverged(part)
    if bad.any():
        evidence = f"the runs alone would say: {answer.replace('**', '')}; {evidence}"
        answer = f"no winner named: {int(bad.sum())} of {len(part)} runs had not converged ({fixes(part[bad])})"
    return row | {"answer": answer, "evidence": evidence, "test": test}


def leads(comparison: Comparison) -> pd.DataFrame:
    """One verdict per (group, criterion); agreement with human votes is a criterion where the images have votes."""
    rows = []
    for where, _ in split_groups(comparison.done, comparison.group_by):
        summary = select(comparison.summary, where)
        criteria = CRITERIA | ({"agreement with human votes": "human_ce"}
                               if summary.human_ce_mean.notna().any() else {})
        rows += [lead_row(comparison, where, c, m) for c, m in criteria.items()]
    return pd.DataFrame(rows)


def fix(reason: object) -> str:
    """The fix an unconverged run's reason names after its last colon ('...: raise --epochs'); a reason without
    one as it is; FIX where the run records none."""
    if not isinstance(reason, str) or not reason.strip():
        return FIX
    return reason.rsplit(": ", 1)[1] if ": " in reason else reason


def fixes(runs: pd.DataFrame) -> str:
    """The distinct fixes of unconverged runs' reasons ('raise --epochs'), in order; FIX where none records one."""
    return ", ".join(dict.fromkeys(fix(r) for r in runs.get("convergence", pd.Series(dtype=str)))) or FIX


def flags(comparison: Comparison) -> list[str]:
    """What the reader must know before trusting a number: runs that had not converged (or do not say), strategies
    that never answer "A or B", scores that come through a threshold tuned on validation."""
    done = comparison.done
    lines = []
    bad = unconverged(done)
    if bad.any():
        who = ", ".join(f"{s} {n}" for s, n in done[bad].strategy.value_counts(sort=False).items())
        lines.append(f"{int(bad.sum())} of {len(done)} runs had not converged: {fixes(done[bad])} ({who}); no winner "
                     "is named for a criterion whose strategies include them.")
    unknown = (done["converged"].isna() if "converged" in done else pd.Series(True, index=done.index))
    if unknown.any():
        lines.append(f"{int(unknown.sum())} of {len(done)} runs do not record whether they converged (written before "
                     "runs recorded it): unknown.")
    for where, _ in split_groups(done, comparison.group_by):
        at = ", ".join(f"{k.replace('_', '-')}={v}" for k, v in where.items())
        for strategy, pool in comparison.pools(where).items():
            if pool and never_pair(pool):
                lines.append(f"{strategy}{f' ({at})' if at else ''} never answers “A or B”: none of its in-between "
                             f"test images, in {len(pool)} runs, got the set {{A, B}} (in-between set accuracy 0).")
    if "threshold" in done and done.threshold.notna().any():
        tuned = done[done.threshold.notna()].groupby("strategy", sort=False).threshold.agg(["min", "max"])
        values = ", ".join(f"{s} {lo:.2f}" + (f"–{hi:.2f}" if hi > lo else "") for s, (lo, hi) in tuned.iterrows())
        plain = [s for s in dict.fromkeys(done.strategy) if s not in tuned.index]
        verb = "comes" if len(tuned) == 1 else "come"
        lines.append(f"In-between set accuracy (and every set metric) of {', '.join(tuned.index)} {verb} through a "
                     f"decoding threshold tuned on validation to maximise the set objective ({values})"
                     + (f"; {', '.join(plain)} decode{'s' if len(plain) == 1 else ''} without one." if plain else "."))
    return lines


def threshold_note(comparison: Comparison, where: dict) -> str:
    """'through a threshold tuned on validation: hard, soft' for a group ('' where no run used one)."""
    part = select(comparison.done, where)
    if "threshold" not in part or part.threshold.isna().all():
        return ""
    return "set accuracy through a threshold tuned on validation: " + ", ".join(
        dict.fromkeys(part[part.threshold.notna()].strategy))
