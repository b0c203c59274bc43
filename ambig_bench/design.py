"""Pair design advice: for each pair (A, B) the runs of a results directory trained with, whether the data support
keeping A and B apart, merging them, or adding an extra class A&B, with the evidence.

Per group of the comparison (a sweep point) and pair, three pieces of evidence:
- separation: the share of clear-cut test images of A or B whose own class the baseline strategy's runs rank above
  the pair's other class (pairwise accuracy), with a 95% Wilson CI: over the images where each image was tested once
  (one run, or the out-of-fold pools of `--folds`), else over one seed's worth (random splits repeat images);
- in-between share: of the pair's test images, the share labelled `A|B` (votes and reference-network sources);
  blends are made, not found, so for them the share is the one the runs declared (`--between-fraction`);
- extra-class against soft on in-between and clear-cut accuracy: the comparison's paired tests (image by image where
  each image was tested once, else across seeds, as the verdicts), over every pair's images together.
`advise` turns them into one recommendation by rules with thresholds (THRESHOLDS, each with its reason); where the
tests do not decide it says "undecided" and what data would.

$ ambig-bench pairs --results results/demo

>>> advice(analyse("results/demo")).advice.tolist()  # doctest: +SKIP
['keep 4 and 9 apart', 'keep 3 and 8 apart']
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from ambig_bench.analysis import Comparison, better, folds_of, select, split_groups, worse
from ambig_bench.compare import tabulate
from ambig_bench.document import Block, Bullets, Heading, Paragraph, code
from ambig_bench.images import ONCE, PER_IMAGE, image_comparison, once_per_image
from ambig_bench.rundir import RunDir
from ambig_bench.verdicts import ALPHA, more_data, paired_cell

EXTRA, SOFT = "extra-class", "soft"
TESTED = {"in-between accuracy": "between_set_acc", "clear-cut accuracy": "clear_acc"}  # extra-class vs soft
VOTES_SOURCE = "human"  # the in-between source whose `A|B` labels are annotators' split votes


def limit(value: float, reason: str) -> Any:
    """A threshold field: its value and the reason for it (Thresholds.reasons prints them)."""
    return field(default=value, metadata={"reason": reason})


@dataclass(frozen=True)
class Thresholds:
    """The values the advice turns on, each with the reason for it (shown with the advice)."""

    separated: float = limit(0.9, "clear-cut A and B are separated well when the pairwise accuracy's 95% CI lies at "
                                  "or above 0.9: the network tells them apart at least 9 times in 10, so the "
                                  "distinction is learnt and errors come from the in-between images")
    chance: float = limit(0.6, "clear-cut A and B are confused near chance when even the CI's upper end is at most "
                               "0.6, within 0.1 of a coin flip (0.5): the distinction is not learnable from these "
                               "images")
    rare: float = limit(0.1, "in-between images are a small share of the pair's images at 0.1 or less: at most 1 "
                             "in 10, and below 1 in 10 test images an extra class changes few predictions")
    split: float = limit(0.5, "human votes that split more than half of the pair's images say the annotators "
                              "themselves cannot tell most of them apart")

    def reasons(self) -> list[str]:
        return [f"{f.name} = {getattr(self, f.name):g}: {f.metadata['reason']}" for f in fields(self)]


THRESHOLDS = Thresholds()


@dataclass
class Versus:
    """One strategy against soft on one metric, by the comparison's paired test."""

    outcome: str  # better | not worse | worse | undecided
    cell: str  # the difference, its CI and p-value (verdicts.paired_cell)
    more: str  # the data that would resolve it (where undecided)


@dataclass
class Evidence:
    """What the advice for one pair rests on."""

    pair: tuple[str, str]
    accuracy: tuple[float, float, float]  # pairwise accuracy: mean, 95% CI low, high (NaN without images)
    images: int  # clear-cut test images of A or B behind it (pooled over runs)
    interval: str  # how the CI was made
    share: float  # in-between share of the pair's images
    share_text: str
    votes: bool  # the in-between labels are split human votes
    extra: dict[str, Versus] | None  # extra-class against soft per TESTED metric; None without both strategies
    supported: list[str] = field(default_factory=list)  # better than soft in between, not worse on clear-cut


def pairwise(run: RunDir, a: int, b: int) -> np.ndarray:
    """Per clear-cut test image of class a or b: whether the run puts more probability on its class than on the
    other class of the pair (a tie counts as wrong)."""
    frame, _ = run.predictions()
    test = frame[(frame.split == "test") & (frame.label_b < 0) & frame.label_a.isin([a, b])]
    is_a = (test.label_a == a).to_numpy()
    p_a, p_b = test[f"p_{a}"].to_numpy(float), test[f"p_{b}"].to_numpy(float)
    return np.where(is_a, p_a > p_b, p_b > p_a)


def separation(runs: dict[int, RunDir], a: int, b: int, folds: int) -> tuple[tuple[float, float, float], int, str]:
    """Pairwise accuracy of A against B over `runs` (seed -> run), its 95% CI, the images and the CI's method."""
    per = {seed: pairwise(run, a, b) for seed, run in runs.items()}
    n = sum(len(x) for x in per.values())
    if n == 0:
        return (math.nan, math.nan, math.nan), 0, "no images"
    if len(per) == 1 or once_per_image(list(per), folds):
        right, counted, how = int(sum(x.sum() for x in per.values())), n, f"Wilson over {n} images"
        mean = right / n
    else:
        # Random splits repeat images across seeds, so the pool is not n independent images; the mean over seeds is
        # scored as one seed's worth of images: a conservative CI, never the zero width a t-interval gives seeds
        # that all score the same.
        mean = float(np.mean([x.mean() for x in per.values() if len(x)]))
        counted = max(1, round(n / len(per)))
        right, how = round(mean * counted), f"Wilson over {counted} images a seed, {len(per)} seeds averaged"
    ci = sps.binomtest(right, counted).proportion_ci(0.95, method="wilson")  # scipy's, not hand-written
    return (mean, float(ci.low), float(ci.high)), n, how


def between_share(runs: dict[int, RunDir], a: int, b: int) -> tuple[float, str]:
    """The share of the pair's test images (clear-cut A, clear-cut B, `A|B`) that are in between."""
    between = clear = 0
    for run in runs.values():
        test = run.predictions()[0].query("split == 'test'")
        pair = {a, b}
        between += int(sum({x, y} == pair for x, y in zip(test.label_a, test.label_b, strict=True)))
        clear += int(((test.label_b < 0) & test.label_a.isin([a, b])).sum())
    total = between + clear
    return (between / total if total else math.nan), f"{between} of {total} test images"


def against_soft(comparison: Comparison, where: dict) -> dict[tuple[str, str], Versus]:
    """Every other strategy against soft on each TESTED metric in one group, (strategy, metric) -> Versus: image by
    image where each image was tested once, else across seeds (the verdicts' choice). Empty without soft."""
    paired = comparison.paired_against(SOFT)
    if paired.empty:  # no soft runs, or soft alone: nothing to test (and no group columns to select on)
        return {}
    part, seeds = select(comparison.done, where), select(paired, where)
    if seeds.empty:
        return {}
    pools = {s: p for s, p in comparison.pools(where).items() if p}
    found = {}
    for metric in TESTED.values():
        images = pd.DataFrame()
        if metric in PER_IMAGE and SOFT in pools and len(pools) > 1:
            images = image_comparison(pools, metric, SOFT, comparison.margins[metric], folds_of(part), ALPHA)
            images = images.set_index("strategy")
        for _, row in seeds[seeds.metric == metric].iterrows():
            by_image = images.loc[row.strategy] if row.strategy in images.index else None
            test = by_image if by_image is not None and by_image.pool == ONCE else row
            outcome = ("better" if better(test) else "worse" if worse(test) else
                       "not worse" if test.outcome in ("equivalent", "negligible") else "undecided")
            more = more_data(row, by_image, comparison.margins[metric], part.strategy.nunique() - 1, metric)
            found[row.strategy, metric] = Versus(outcome, paired_cell(test), more if outcome == "undecided" else "")
    return found


def supported(tests: dict[tuple[str, str], Versus]) -> list[str]:
    """The strategies the paired tests find better than soft on in-between accuracy and not worse on clear-cut."""
    between, clear = TESTED.values()
    return [s for s, m in tests if m == between and tests[s, m].outcome == "better"
            and tests.get((s, clear), Versus("", "", "")).outcome != "worse"]


def share_text(e: Evidence) -> str:
    return f"{e.share:.3f}" if not math.isnan(e.share) else "unknown"


def interval(e: Evidence) -> str:
    mean, low, high = e.accuracy
    if math.isnan(mean):
        return "–"
    ci = f" [{low:.3f}, {high:.3f}]" if not math.isnan(low) else " (no CI)"
    return f"{mean:.3f}{ci} ({e.interval})"


def fallback(e: Evidence, reason: str) -> tuple[str, str]:
    """Soft, or what the paired tests support over it: keep A and B apart and train with the strategies better
    than soft, or add an extra class where extra-class is the only one."""
    a, b = e.pair
    chosen = [s for s in e.supported if s != EXTRA] or [s for s in e.supported if s == EXTRA]
    said = (f"{' and '.join(e.supported)} better than soft on in-between accuracy and not worse on clear-cut by the "
            "paired tests" if e.supported else "no strategy better than soft on in-between accuracy by the tests")
    if chosen == [EXTRA]:
        return f"add an extra class {a}&{b}", f"{reason}; {said}"
    return f"keep {a} and {b} apart, train with {' or '.join(chosen) or SOFT}", f"{reason}; {said}"


def advise(e: Evidence, t: Thresholds = THRESHOLDS) -> tuple[str, str]:
    """The recommendation for one pair and why (the rule that fired, with its numbers)."""
    a, b = e.pair
    mean, low, high = e.accuracy
    if e.images == 0:
        return "undecided", f"no clear-cut test images of {a} and {b} to measure how well they are told apart"
    if not math.isnan(high) and high <= t.chance:
        return f"merge {a} and {b}", (f"clear-cut {a} and {b} are told apart near chance: pairwise accuracy "
                                      f"{interval(e)}, its CI's upper end at most {t.chance:g}")
    if e.votes and e.share > t.split:
        return f"merge {a} and {b}", f"human votes split {e.share:.0%} of the pair's images (more than {t.split:.0%})"
    if math.isnan(low) or low <= 0.5:
        return "undecided", (f"pairwise accuracy {interval(e)} spans chance (0.5) and values above {t.chance:g}: "
                             f"more clear-cut test images of {a} and {b} would narrow it (`--folds`, more seeds)")
    rare = e.share <= t.rare if not math.isnan(e.share) else False
    if rare and low >= t.separated:
        also = (f"; {' and '.join(e.supported)} better than {SOFT} on in-between accuracy, for those few images"
                if e.supported else "")
        return f"keep {a} and {b} apart", (f"clear-cut {a} and {b} are separated (pairwise accuracy CI at or above "
                                           f"{t.separated:g}) and in-between images are rare ({share_text(e)}, at "
                                           f"most {t.rare:g}){also}")
    if rare:
        return fallback(e, f"in-between images are rare ({share_text(e)}) but clear-cut {a} and {b} are not shown "
                           f"separated (CI lower end {low:.3f}, below {t.separated:g})")
    if math.isnan(e.share):
        return fallback(e, "in-between share unknown")
    frequent = f"in-between images are frequent ({share_text(e)}, more than {t.rare:g})"
    if e.extra is None:
        return fallback(e, f"{frequent}; run {EXTRA} beside {SOFT} to test an extra class")
    against = {name: e.extra[m] for name, m in TESTED.items()}
    lost = [name for name, v in against.items() if v.outcome == "worse"]
    if lost:
        return fallback(e, f"{frequent}, but {EXTRA} is worse than {SOFT} on {' and '.join(lost)}")
    open_ = [f"{name}: {v.more}" for name, v in against.items() if v.outcome == "undecided"]
    if open_:
        return f"undecided: an extra class {a}&{b} or {SOFT}", (f"{frequent}; the paired tests of {EXTRA} against "
                                                               f"{SOFT} do not decide ({'; '.join(open_)} would)")
    return f"add an extra class {a}&{b}", (f"{frequent} and {EXTRA} is not worse than {SOFT} on in-between or "
                                           "clear-cut accuracy by the paired tests")


def evidence(comparison: Comparison, where: dict) -> list[Evidence]:
    """The evidence for every pair the baseline's runs of one group trained with."""
    part = select(comparison.done, where)
    base = part[part.strategy == comparison.baseline]
    runs = {int(r.seed): comparison.run_dirs[r.run] for r in base.itertuples()
            if comparison.run_dirs[r.run].predictions_file.exists()}
    if not runs:
        return []
    data = next(iter(runs.values())).data()
    names = data["class_names"]
    source = str(base.between_source.iloc[0]) if "between_source" in base else ""
    tests = against_soft(comparison, where)
    extra = {m: tests[EXTRA, m] for m in TESTED.values() if (EXTRA, m) in tests}
    found = []
    for a, b in data["pairs"]:
        accuracy, n, how = separation(runs, a, b, folds_of(part))
        if source == "blend" and "between_fraction" in base:
            share, said = float(base.between_fraction.iloc[0]), "--between-fraction: blends are made, not found"
        else:
            share, said = between_share(runs, a, b)
        found.append(Evidence((names[a], names[b]), accuracy, n, how, share, said, source == VOTES_SOURCE,
                              extra if len(extra) == len(TESTED) else None, supported(tests)))
    return found


def advice(comparison: Comparison, thresholds: Thresholds = THRESHOLDS) -> pd.DataFrame:
    """One row per group and pair: the advice, why, and the evidence as text."""
    rows = []
    for where, _ in split_groups(comparison.done, comparison.group_by):
        for e in evidence(comparison, where):
            said, why = advise(e, thresholds)
            tests = ("; ".join(f"{m} {v.cell} ({v.outcome})" for m, v in zip(TESTED.values(), e.extra.values(),
                                                                               strict=True))
                     if e.extra else f"needs runs of {EXTRA} and {SOFT}")
            rows.append(where | {"pair": f"{e.pair[0]}:{e.pair[1]}", "advice": said,
                                 f"pairwise accuracy ({comparison.baseline})": interval(e),
                                 "in-between share": f"{share_text(e)} ({e.share_text})",
                                 f"{EXTRA} − {SOFT}": tests, "why": why})
    return pd.DataFrame(rows)


def rules() -> list[str]:
    """The rules in the order they are tried."""
    return ["merge A and B when clear-cut A and B are confused near chance (pairwise accuracy CI at most `chance`), "
            "or human votes split more than `split` of the pair's images;",
            "undecided when the pairwise accuracy's CI reaches 0.5 yet is not near chance;",
            "keep A and B apart when they are separated (CI at or above `separated`) and in-between images are "
            "rare (share at most `rare`);",
            f"add an extra class A&B when in-between images are frequent and {EXTRA} is not worse than {SOFT} on "
            "in-between and clear-cut accuracy by the paired tests (undecided where a test is);",
            f"otherwise train with {SOFT}, or with what the paired tests find better than {SOFT} on in-between "
            f"accuracy and not worse on clear-cut ({EXTRA} only where nothing else is)."]


def design_blocks(comparison: Comparison, level: int = 2) -> list[Block]:
    """The report's section "Pair design" (nothing where no baseline run has predictions)."""
    table = advice(comparison)
    if table.empty:
        return []
    return [Heading("Pair design", level),
            Paragraph("For each trained pair: keep A and B apart, merge them, or add an extra class A&B. Pairwise "
                      f"accuracy: how often the runs of {code(comparison.baseline)} rank a clear-cut test image's "
                      "class above the pair's other class (95% CI). The paired tests of extra-class against soft pool "
                      "every pair's in-between images. Rules, tried in order:"),
            Bullets(rules()), Paragraph("Thresholds:"), Bullets(THRESHOLDS.reasons()),
            tabulate(table, comparison.group_by)]
