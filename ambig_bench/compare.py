"""Render the analysis of a results directory (ambig_bench.analysis) and write it: comparison.md / .csv, paired.csv.

One row per strategy, each metric as mean and 95% CI; paired differences against the baseline; ranks.
comparison.md is a document of ambig_bench.document blocks; the report shows the same tables (`sections`).

$ ambig-bench compare results/demo --baseline soft

>>> c = compare("results/demo", baseline="soft")  # doctest: +SKIP
>>> print(comparison_markdown(c))  # doctest: +SKIP
# Comparison of strategies: demo
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ambig_bench.analysis import CONFORMAL_ALPHA, Comparison, analyse, parse_margins
from ambig_bench.document import Block, Bullets, Heading, Paragraph, Table, code, escape, to_markdown
from ambig_bench.document import markdown_table as markdown_table  # the CLI prints the summary with it
from ambig_bench.errors import UserError
from ambig_bench.io import remove_stale_temps, write_atomic, write_csv
from ambig_bench.metrics import HIGHER_IS_BETTER, METRICS, SET_METRICS
from ambig_bench.stats import min_holm_p
from ambig_bench.verdicts import flags, paired_cell

ONE_STRATEGY = ("Only one strategy has runs here, so there is nothing to compare it with: run more strategies "
                "into the same directory (e.g. `--strategy all`).")
CELLS = ("Cells are mean [low, high]: the mean over seeds and its 95% CI (Student t, clipped to the metric's "
         "range); n = seeds.")


def flag(name: str) -> str:
    """A config field's command-line spelling: between_fraction -> between-fraction."""
    return name.replace("_", "-")


MIN_SEEDS_FOR_CI = 3  # below this a t-interval over seeds is wider than most metrics' range: not shown


def fmt(mean: float, low: float, high: float, n: int = MIN_SEEDS_FOR_CI) -> str:
    """'0.912 [0.899, 0.925]': the mean and its 95% CI, one notation whether or not the interval was clipped to
    the metric's range (as the paired differences' bootstrap CIs, which are not symmetric either)."""
    if math.isnan(mean):
        return "–"
    if math.isnan(low) or n < MIN_SEEDS_FOR_CI:
        return f"{mean:.3f}" if n == 1 else f"{mean:.3f} (n too small)"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def summary_display(summary: pd.DataFrame, group_by: list[str], metrics=tuple(METRICS)) -> pd.DataFrame:
    """The human table: one column per metric holding 'mean [95% CI]' (see fmt)."""
    shown = summary[group_by + ["strategy", "n_seeds"]].rename(columns={"n_seeds": "n"}).copy()
    for m in metrics:
        if summary[f"{m}_mean"].notna().any():
            shown[m] = [fmt(r[f"{m}_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"], r["n_seeds"])
                        for _, r in summary.iterrows()]
    if summary.n_failed.any() and tuple(metrics) == tuple(METRICS):
        shown["failed"] = summary.n_failed
    if summary.n_unconverged.any() and tuple(metrics) == tuple(METRICS):
        shown["not converged"] = summary.n_unconverged
    return shown


HEADLINE = ("clear_acc", "between_set_acc", "between_top2", "ece", "ambiguity_auroc")  # the terminal's columns
BETTER, WORSE = "▲", "▼"  # significantly better / worse than the baseline by at least the margin (Holm, 5%)


def supported(comparison: Comparison) -> pd.DataFrame:
    """The paired differences a test supports beyond the margin, with `better` by the metric's direction (unranked
    metrics left out)."""
    paired = comparison.paired
    if paired.empty:
        return paired.assign(better=pd.Series(dtype=bool))
    rows = paired[(paired.outcome == "different") & paired.metric.map(lambda m: HIGHER_IS_BETTER.get(m) is not None)]
    return rows.assign(better=[(r.diff_mean > 0) == HIGHER_IS_BETTER[r.metric] for r in rows.itertuples()])


def headline(comparison: Comparison, metrics: tuple[str, ...] = HEADLINE) -> tuple[pd.DataFrame, list[str]]:
    """The short answer: each strategy's mean on a few metrics, marked where it differs significantly from the
    baseline, and one sentence per strategy naming those differences (the files hold every metric and CI)."""
    g = comparison.group_by
    wins = supported(comparison)
    marks = {(*(r[c] for c in g), r.strategy, r.metric): BETTER if r.better else WORSE for _, r in wins.iterrows()}
    table = comparison.summary[g + ["strategy", "n_seeds"]].rename(columns={"n_seeds": "n"}).copy()
    for m in metrics:
        cells = []
        for _, row in comparison.summary.iterrows():
            mark = marks.get((*(row[c] for c in g), row.strategy, m), "")
            cells.append(f"{row[f'{m}_mean']:.3f} {mark}".rstrip())
        table[m] = cells
    lines = []
    # An empty paired table has no group columns to group by (e.g. grid points with one strategy each).
    for key, part in (wins.groupby(g + ["strategy"], sort=False) if len(wins) else []):
        name = " ".join(str(k) for k in key) if isinstance(key, tuple) else key
        said = [f"{'better' if better else 'worse'} on " + ", ".join(f"{r.metric} ({r.diff_mean:+.3f})"
                                                                     for r in side.itertuples())
                for better, side in part.groupby("better", sort=False)]
        lines.append(f"{name} vs {comparison.baseline}: {'; '.join(said)}")
    if not lines and not comparison.paired.empty:
        lines.append(f"No difference from {comparison.baseline} beyond its margin is supported by a paired test. "
                     f"{attainable(comparison.paired)}")
    return table, lines + flags(comparison)


def paired_display(paired: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    """One row per strategy, one column per metric: difference [95% CI] and n.s. or the Holm p-value."""
    cells = paired.assign(cell=paired.apply(paired_cell, axis=1))
    index = group_by + ["strategy", "n_pairs"]
    shown = cells.pivot_table(index=index, columns="metric", values="cell", aggfunc="first", sort=False)
    return shown[[m for m in METRICS if m in shown.columns]].reset_index().rename(columns={"n_pairs": "n"})


def images_display(images: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    """One row per strategy and metric tested image by image: images, pool, test and the difference."""
    shown = images[group_by + ["strategy", "metric", "n_images", "pool", "test"]].rename(columns={"n_images": "n"})
    return shown.assign(difference=images.apply(paired_cell, axis=1)) if len(images) else shown


def margins_text(margins: dict[str, float]) -> str:
    return ", ".join(f"{m} ±{v:g}" for m, v in margins.items() if m in HIGHER_IS_BETTER)


def attainable(paired: pd.DataFrame) -> str:
    """What the seed count allows: with few seeds even a perfectly consistent difference is not significant."""
    n = int(paired.n_pairs.min())
    if n < 2:
        return "Too few paired seeds for any test."
    too_few = min_holm_p(n, max(1, paired.strategy.nunique())) >= 0.05
    return (f"With {n} paired seeds the smallest attainable p-value is {min_holm_p(n, 1):.3g} before Holm's "
            "correction" + (": more seeds are needed to detect any difference." if too_few else "."))


def setup_line(runs: pd.DataFrame, group_by: list[str]) -> str:
    first = runs.iloc[0]
    parts = [f"{flag(f)} {escape(first[f]) if first[f] else '(dataset default)'}" for f in
             ("dataset", "pairs", "between_source", "between_fraction", "model", "epochs")
             if f in runs and f not in group_by]
    return " · ".join(parts)


def tabulate(frame: pd.DataFrame, group_by: list[str], markdown: tuple[str, ...] = ()) -> Table:
    """A table of the documents: swept options headed as they are typed (between-fraction), metrics as named;
    cells are text except in the `markdown` columns."""
    return Table(frame.rename(columns={g: flag(g) for g in group_by}), markdown)


def lowest(rows: pd.DataFrame) -> str:
    """'0.812 (cat)': the lowest mean coverage of `rows` and whose it is; – for none measured."""
    rows = rows.dropna(subset=["coverage"])
    if rows.empty:
        return "–"
    worst = rows.loc[rows.coverage.idxmin()]
    return f"{worst.coverage:.3f} ({worst['name']})"


def conformal_groups_display(groups: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    """One row per strategy and calibration: overall coverage, the lowest class and in-between pair coverage (each
    over the test images of that class or pair, mean over seeds), mean set size, and vote coverage where the
    images have votes. conformal_groups.csv holds every class and pair."""
    rows = []
    keys = group_by + ["strategy", "calibration"]
    for key, part in groups.groupby(keys, sort=False):
        overall = part[(part.group == "all") & (part.part == "all")].iloc[0]
        row = dict(zip(keys, key, strict=True))
        row.update({"coverage": f"{overall.coverage:.3f}", "lowest class": lowest(part[part.group == "class"]),
                    "lowest pair (in-between)": lowest(part[(part.group == "pair") & (part.part == "between")]),
                    "size": f"{overall['size']:.2f}"})
        if groups.vote_coverage.notna().any():
            row["vote coverage"] = f"{overall.vote_coverage:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def sections(comparison: Comparison, level: int) -> list[Block]:
    """The summary, paired, conformal and rank tables with what they mean: comparison.md and the report share
    them (the report one heading level down)."""
    g, summary, baseline = comparison.group_by, comparison.summary, comparison.baseline
    blocks: list[Block] = [tabulate(summary_display(summary, g), g)]
    if not comparison.paired.empty:
        blocks += [Heading(f"Paired differences against {code(baseline)}", level),
                   Paragraph("Per seed, strategy minus baseline; bootstrap 95% CI; Wilcoxon signed-rank (≥ 6 seeds) "
                             "or exact sign test, Holm-corrected across strategies per metric. n.s. = no significant "
                             "difference at the 5% level; *within ±δ* = inside the metric's margin by two one-sided "
                             f"t-tests (margins: {margins_text(comparison.margins)}). "
                             f"{attainable(comparison.paired)}"),
                   tabulate(paired_display(comparison.paired, g), g)]
    elif comparison.runs.strategy.nunique() == 1:
        blocks.append(Paragraph(ONE_STRATEGY))
    if not comparison.images.empty:
        blocks += [Heading(f"Paired differences image by image against {code(baseline)}", level),
                   Paragraph("Test images paired by seed and row order, strategy minus baseline, pooled over seeds. "
                             "Out-of-fold pools (`--folds`, every fold tested once) hold each image once: exact "
                             "McNemar test on the discordant images for accuracies, paired bootstrap over images for "
                             "ECE. Otherwise images repeat across seeds and are not independent: a cluster bootstrap "
                             "resamples whole seeds. Holm-corrected across strategies per metric."),
                   tabulate(images_display(comparison.images, g), g)]
    if summary["cp_coverage_mean"].notna().any():
        blocks += [Heading(f"Conformal prediction sets (LAC, α = {CONFORMAL_ALPHA}, calibrated per kind on "
                           "validation)", level),
                   Paragraph("Split-conformal sets that hold every true label of at least 1 − α of clear-cut and of "
                             "in-between images (`ambig-bench predict` gives them per image), next to the "
                             "strategy's own threshold sets."),
                   tabulate(summary_display(summary, g, tuple(SET_METRICS)), g)]
    return blocks + [Heading("Ranks", level),
                     Paragraph("1 = best; strategies share a rank where their 95% CIs overlap."),
                     tabulate(comparison.ranks, g)]


def conformal_group_blocks(comparison: Comparison, level: int) -> list[Block]:
    """The coverage per class and per pair (comparison.md only: the report keeps to the summary tables)."""
    if comparison.conformal_groups.empty:
        return []
    return [Heading(f"Conformal coverage per class and per pair (LAC, α = {CONFORMAL_ALPHA})", level),
            Paragraph("Calibrated per kind (`kind`, as in \"Conformal prediction sets\") or per class (`class`: one "
                      "threshold per class, `--conformal-groups class`). A class's coverage: its test images' sets "
                      "that hold it; a pair's: its in-between images' sets that hold both classes. Mean over seeds; "
                      "the class or pair covered least is named. Vote coverage: the test images' mean vote share "
                      "inside the set. Every class and pair: `conformal_groups.csv`."),
            tabulate(conformal_groups_display(comparison.conformal_groups, comparison.group_by), comparison.group_by)]


def glossary() -> list[Block]:
    """What every metric means and which end is better (metrics.METRICS and SET_METRICS)."""
    return [Heading("Metrics"),
            Bullets([f"`{name}` ({m.direction}): {m.description}" for name, m in (METRICS | SET_METRICS).items()])]


def flag_blocks(comparison: Comparison, level: int) -> list[Block]:
    """The flags (verdicts.flags) under a heading of their own, where there are any."""
    found = flags(comparison)
    return [Heading("Flags", level), Bullets([escape(line) for line in found])] if found else []


def comparison_markdown(comparison: Comparison) -> str:
    """comparison.md."""
    return to_markdown([Heading(f"Comparison of strategies: {escape(comparison.results_dir.name)}", 1),
                        Paragraph(f"Setup: {setup_line(comparison.runs, comparison.group_by)}. {CELLS}"),
                        *([Paragraph(escape(comparison.skipped[-1]) + ".")] if comparison.skipped else []),
                        *flag_blocks(comparison, 2), *sections(comparison, 2),
                        *conformal_group_blocks(comparison, 2), *glossary()])


FORMATS = ("table", "json")  # what `ambig-bench compare --format` prints


def check_compare_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def records(frame: pd.DataFrame) -> list[dict]:
    """A DataFrame as JSON-ready rows: NaN (no CI with one seed, a metric a strategy lacks) becomes null."""
    return json.loads(frame.to_json(orient="records", double_precision=15)) if len(frame.columns) else []


def comparison_json(comparison: Comparison) -> str:
    """The comparison as JSON, for other tools: the summary (comparison.csv), the paired tests against the baseline
    (paired.csv) and the ranks, with the metrics' meanings and which options tell the experiments apart."""
    return json.dumps({
        "baseline": comparison.baseline, "group_by": comparison.group_by,
        "metrics": {name: {"description": m.description, "direction": m.direction}
                    for name, m in (METRICS | SET_METRICS).items()},
        "margins": comparison.margins, "flags": flags(comparison),
        "summary": records(comparison.summary), "paired": records(comparison.paired),
        "paired_images": records(comparison.images), "ranks": records(comparison.ranks),
        "conformal_groups": records(comparison.conformal_groups),
        "runs": records(comparison.runs), "skipped": comparison.skipped,
    }, indent=2, allow_nan=False) + "\n"


def write_comparison(comparison: Comparison) -> None:
    """comparison.csv (the summary), paired.csv, paired_images.csv, conformal_groups.csv (where runs have
    predictions) and comparison.md, into the results directory."""
    write_csv(comparison.results_dir / "comparison.csv", comparison.summary)
    if not comparison.conformal_groups.empty:
        write_csv(comparison.results_dir / "conformal_groups.csv", comparison.conformal_groups)
    write_csv(comparison.results_dir / "paired.csv", comparison.paired)
    write_csv(comparison.results_dir / "paired_images.csv", comparison.images)
    write_atomic(comparison.results_dir / "comparison.md", comparison_markdown(comparison))
    remove_stale_temps(comparison.results_dir / "*")  # what a compare or report killed mid-write left


def compare(results_dir: str | Path, baseline: str | None = None, margin: str | float | None = None) -> Comparison:
    """Analyse every run of `results_dir` and write comparison.csv / comparison.md / paired.csv /
    paired_images.csv there.

    `baseline`: the strategy the others are compared with (default: soft where it has runs, else the first);
    `margin`: the margins, as `--margin` takes them (analysis.parse_margins)."""
    comparison = analyse(results_dir, baseline, parse_margins(margin))
    write_comparison(comparison)
    return comparison
