"""The three common claims about in-between examples, judged on a sweep of between-fraction.

"soft, reassign and duplicate are equivalent asymptotically", "soft is more efficient with few in-between
examples", "extra-class and multilabel suffer when in-between examples are rare": each is marked supported,
contradicted or not decided by rules written into the report itself, from compare's paired tests. Also the
small helpers the report shares with it (labels of sweep slices, distinct values, the seeds a test needs).

$ ambig-bench sweep --strategy soft,reassign,duplicate,extra-class,multilabel --vary between-fraction=0.01,0.2
$ ambig-bench report results/demo      # the claims appear under "The common claims"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ambig_bench.analysis import Comparison, better, select, split_groups, worse
from ambig_bench.compare import flag
from ambig_bench.options import build, flat_values, outside_experiment
from ambig_bench.stats import min_holm_p
from ambig_bench.strategies import STRATEGIES
from ambig_bench.verdicts import paired_cell

ALPHA = 0.05  # significance level of every paired test (compare's, via stats.paired_comparison's default)


CLAIM_STRATEGIES = ["soft", "reassign", "duplicate", "extra-class", "multilabel"]


SWEEP_FRACTIONS = "0.005,0.01,0.02,0.05,0.1"


@dataclass
class Judgement:
    """A claim judged on the runs (of one slice of the other swept options)."""

    key: str  # a key of CLAIMS
    claim: str
    where: str  # the slice of other swept options it holds for ("" = the whole directory)
    verdict: str  # supported | contradicted | not decided | needs a sweep
    evidence: str
    figure: str  # file name under figures/ ("" = none)


def where_label(where: dict) -> str:
    return ", ".join(f"{flag(k)}={v}" for k, v in where.items())


def slug(where: dict) -> str:
    """A file-name part for a slice: user values (pairs, paths) reduced to characters safe in a name and a link."""
    return re.sub(r"[^0-9A-Za-z.=+-]+", "_", "".join(f"-{flag(k)}-{v}" for k, v in where.items()))


def seeds_needed(comparisons: int) -> int:
    return next(n for n in range(2, 64) if min_holm_p(n, comparisons) < ALPHA)


def distinct(values: list) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values))


CLAIMS = {
    "equivalent": "soft, reassign and duplicate are equivalent asymptotically",
    "efficient": "soft is more efficient with few in-between examples",
    "rare": "extra-class and multilabel suffer when in-between examples are rare",
}


def claim_rules(margins: dict[str, float]) -> list[str]:
    accuracy = f"±{margins['between_set_acc']:g} (between_set_acc) and ±{margins['clear_acc']:g} (clear_acc)"
    return [
        f"All tests are compare's paired tests against `soft` (per seed, strategy − soft; bootstrap 95% CI; exact "
        f"sign test below 6 seeds, Wilcoxon signed-rank from 6), Holm-corrected across the strategies of one "
        f"between-fraction, significant at {ALPHA}. The tests of one claim are not corrected further. "
        f"*Significantly* below means significant and at least the metric's margin ({accuracy}): a smaller "
        f"significant difference is negligible and counts for nothing.",
        f"**{CLAIMS['equivalent']}**: at the largest between-fraction, reassign − soft and duplicate − soft on "
        f"between_set_acc and clear_acc. *Contradicted* if any of the four differs significantly by the margin or "
        f"more; "
        f"*supported* if all four are equivalent within their margins (two one-sided t-tests at {ALPHA}) and the "
        f"seeds are enough for the test to reach significance at all; otherwise *not decided*.",
        f"**{CLAIMS['efficient']}**: at the smallest between-fraction, reassign − soft and duplicate − soft on "
        f"between_set_acc. *Supported* if both are significantly negative; *contradicted* if either is "
        f"significantly positive; otherwise *not decided*.",
        f"**{CLAIMS['rare']}**: extra-class − soft and multilabel − soft on between_set_acc. For each: "
        f"*contradicted* if significantly positive at the smallest between-fraction or significantly negative at "
        f"the largest; *supported* if significantly negative at the smallest (and not contradicted); otherwise "
        f"*not decided*. The claim is supported if it is for both, contradicted if it is for either.",
    ]


def lookup(paired: pd.DataFrame, where: dict, strategy: str, metric: str) -> pd.Series | None:
    rows = select(paired, where)
    rows = rows[(rows.strategy == strategy) & (rows.metric == metric)]
    return rows.iloc[0] if len(rows) else None


def judge_equivalent(paired: pd.DataFrame, largest: dict, comparisons: int) -> tuple[str, str]:
    tests = {(s, m): lookup(paired, largest, s, m) for s in ("reassign", "duplicate")
             for m in ("between_set_acc", "clear_acc")}
    missing = [f"{s}/{m}" for (s, m), r in tests.items() if r is None or np.isnan(r.diff_ci_low)]
    if missing:
        return "not decided", f"no paired test at {where_label(largest)} for {', '.join(missing)}"
    shown = "; ".join(f"{s} − soft on {m}: {paired_cell(r)}" for (s, m), r in tests.items())
    if any(r.outcome == "different" for r in tests.values()):
        return "contradicted", f"at {where_label(largest)}: {shown}"
    n = min(int(r.n_pairs) for r in tests.values())
    if min_holm_p(n, comparisons) >= ALPHA:
        return "not decided", (f"{n} seeds cannot reach significance with {comparisons} comparisons (need "
                               f"{seeds_needed(comparisons)}); at {where_label(largest)}: {shown}")
    outside = [f"{s}/{m}" for (s, m), r in tests.items() if r.outcome not in ("equivalent", "negligible")]
    if outside:
        return "not decided", (f"not shown equivalent within the margin for {', '.join(outside)}; at "
                               f"{where_label(largest)}: {shown}")
    return "supported", f"all equivalent within their margins; at {where_label(largest)}: {shown}"


def judge_efficient(paired: pd.DataFrame, smallest: dict) -> tuple[str, str]:
    tests = {s: lookup(paired, smallest, s, "between_set_acc") for s in ("reassign", "duplicate")}
    if any(r is None for r in tests.values()):
        return "not decided", f"reassign and duplicate both need runs at {where_label(smallest)}"
    shown = "; ".join(f"{s} − soft on between_set_acc: {paired_cell(r)}" for s, r in tests.items())
    if any(better(r) for r in tests.values()):
        return "contradicted", f"at {where_label(smallest)}: {shown}"
    if all(worse(r) for r in tests.values()):
        return "supported", f"at {where_label(smallest)}: {shown}"
    return "not decided", f"at {where_label(smallest)}: {shown}"


def judge_rare(paired: pd.DataFrame, smallest: dict, largest: dict) -> tuple[str, str]:
    verdicts, shown = [], []
    for s in ("extra-class", "multilabel"):
        low, high = lookup(paired, smallest, s, "between_set_acc"), lookup(paired, largest, s, "between_set_acc")
        if low is None or high is None:
            verdicts.append("not decided")
            shown.append(f"{s}: needs runs at both ends")
            continue
        if better(low) or worse(high):
            verdicts.append("contradicted")
        elif worse(low):
            verdicts.append("supported")
        else:
            verdicts.append("not decided")
        shown.append(f"{s} − soft on between_set_acc: {paired_cell(low)} at {where_label(smallest)}, "
                     f"{paired_cell(high)} at {where_label(largest)} ({verdicts[-1]})")
    verdict = ("contradicted" if "contradicted" in verdicts else
               "supported" if set(verdicts) == {"supported"} else "not decided")
    return verdict, "; ".join(shown)


# The alternatives users try beside soft targets; the report says how each fared against soft.
ALTERNATIVES = ("votes", "label-smoothing", "mixup")
ALTERNATIVE_METRICS = ("between_set_acc", "clear_acc", "ece", "human_ce")


def base_strategy(label: str) -> str:
    """`label-smoothing@smoothing-eps=0.2` -> `label-smoothing` (a strategy's row label without its options)."""
    return label.split("@")[0]


def judge_alternatives(runs: pd.DataFrame, paired_soft: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    """Per alternative to soft in the runs (and slice of the swept options): what it changes, and where the paired
    test against soft finds it better or worse (empty when no alternative ran)."""
    present = [s for s in dict.fromkeys(runs.strategy) if base_strategy(s) in ALTERNATIVES]
    described = STRATEGIES.describe()
    rows = []
    for where, part in split_groups(runs[runs.strategy.isin(present)], group_by):
        for strategy in dict.fromkeys(part.strategy):
            tests = [lookup(paired_soft, where, strategy, m) if not paired_soft.empty else None
                     for m in ALTERNATIVE_METRICS]
            tested = [t for t in tests if t is not None and not np.isnan(t.diff_mean)]
            wins = [f"{t.metric} {paired_cell(t)}" for t in tested if better(t)]
            losses = [f"{t.metric} {paired_cell(t)}" for t in tested if worse(t)]
            verdict = ("no `soft` runs to compare with" if not tested else
                       "a trade-off" if wins and losses else "better" if wins else "worse" if losses else
                       "no difference beyond the margin")
            rows.append(where | {"strategy": strategy, "what it changes": described[base_strategy(strategy)],
                                 "against soft": verdict, "better on": "; ".join(wins) or "–",
                                 "worse on": "; ".join(losses) or "–"})
    return pd.DataFrame(rows)


def sweep_command(comparison: Comparison) -> str:
    """The command that adds the sweep these claims need, keeping every other option of this directory, with
    the seeds the claims' tests need."""
    seeds = max(int(comparison.runs.seed.nunique()), seeds_needed(len(CLAIM_STRATEGIES) - 1))
    first = comparison.runs.iloc[0]
    defaults = flat_values(build({}))  # resolved (the default model's recipe), by flat name like compare's columns
    options = []
    for name in comparison.options:
        value = first[name]
        if (name not in defaults or name in outside_experiment() or name == "between_fraction" or value is None
                or value == defaults.get(name)):  # not a run option (data_version), or one the sweep sets itself
            continue
        if isinstance(value, bool | np.bool_):  # pandas hands booleans back as numpy.bool_
            options.append(f"--{flag(name)}" if value else f"--no-{flag(name)}")
        else:
            options.append(f"--{flag(name)} {value}")
    return " ".join(["ambig-bench sweep", *options, f"--strategy {','.join(CLAIM_STRATEGIES)}",
                     f"--vary between-fraction={SWEEP_FRACTIONS}", f"--seeds {seeds}",
                     f"--out results/{comparison.results_dir.name}-sweep"])


def judge_claims(comparison: Comparison, paired_soft: pd.DataFrame) -> list[Judgement]:
    """The three claims per slice of the other swept options ("needs a sweep" without a between-fraction sweep)."""
    sources = sorted(set(comparison.runs.between_source))
    if sources != ["blend"]:
        why = (f"between-fraction only sets how many blends are generated; with the {', '.join(sources)} source "
               "the in-between images are fixed by the data")
        return [Judgement(key, text, "", "not applicable", why, "") for key, text in CLAIMS.items()]
    if "between_fraction" not in comparison.group_by:
        why = f"one between-fraction here ({distinct(comparison.runs.between_fraction)}): see the command below"
        return [Judgement(key, text, "", "needs a sweep", why, "") for key, text in CLAIMS.items()]
    if paired_soft.empty:
        return [Judgement(key, text, "", "not decided", "no `soft` runs to compare against", "")
                for key, text in CLAIMS.items()]
    figure = "sweep-between-fraction.png"
    others = [f for f in comparison.group_by if f != "between_fraction"]
    verdicts = []
    for where, part in split_groups(comparison.done, others):
        fractions = sorted(part.between_fraction.unique())
        if len(fractions) < 2:
            verdicts += [Judgement(key, text, where_label(where), "not decided", "one between-fraction only", figure)
                         for key, text in CLAIMS.items()]
            continue
        smallest, largest = where | {"between_fraction": fractions[0]}, where | {"between_fraction": fractions[-1]}
        comparisons = int(select(part, largest).strategy.nunique()) - 1
        results = {"equivalent": judge_equivalent(paired_soft, largest, comparisons),
                   "efficient": judge_efficient(paired_soft, smallest),
                   "rare": judge_rare(paired_soft, smallest, largest)}
        verdicts += [Judgement(k, CLAIMS[k], where_label(where), v, e, figure) for k, (v, e) in results.items()]
    return verdicts

