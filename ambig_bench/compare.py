"""Compare the runs of a results directory: one row per strategy, each metric as mean and 95% CI.

Against a baseline strategy (default `soft`), every metric's difference is paired by seed, with a
bootstrap CI and a Holm-corrected paired test; a rank table shares ranks where CIs overlap. comparison.md
is a document of ambig_bench.document blocks; the report shows the same tables (`sections`).

$ ambig-bench compare results/demo --baseline soft

>>> c = compare("results/demo", baseline="soft")  # doctest: +SKIP
>>> c.summary[["strategy", "n_seeds", "clear_acc_mean"]]  # doctest: +SKIP
  strategy  n_seeds  clear_acc_mean
0     hard        3           0.860
1     soft        3           0.910
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ambig_bench.calibration import conformal_summary
from ambig_bench.document import Block, Bullets, Heading, Paragraph, Table, code, escape, to_markdown
from ambig_bench.document import markdown_table as markdown_table  # the CLI prints the summary with it
from ambig_bench.errors import UserError
from ambig_bench.io import read_json, write_atomic, write_csv
from ambig_bench.metrics import HIGHER_IS_BETTER, METRICS, SET_METRICS
from ambig_bench.options import outside_experiment, strategy_label
from ambig_bench.stats import mean_ci, min_holm_p, paired_comparison, rank_table

CONFORMAL_ALPHA = 0.1  # the conformal sets of the comparison (SET_METRICS) miss a true label for at most 10%
ABSENT = "(absent)"  # a config field that a run written by an older version lacks
DEFAULT = "(default)"  # a config field left unset (null): the model's or the dataset's own value
ONE_STRATEGY = ("Only one strategy has runs here, so there is nothing to compare it with: run more strategies "
                "into the same directory (e.g. `--strategy all`).")
CELLS = "Cells are mean ± 95% CI half-width over seeds (Student t); n = seeds."


@dataclass
class Comparison:
    runs: pd.DataFrame  # one row per run: config fields, status, metrics
    summary: pd.DataFrame  # one row per (group, strategy): n, metric mean / CI
    paired: pd.DataFrame  # one row per (group, strategy, metric): paired difference vs the baseline
    ranks: pd.DataFrame  # one row per (group, strategy): rank per metric
    group_by: list[str]  # config fields that differ between experiments in the directory
    options: list[str]  # every config field of the runs, by its flat (option) name, in config.json's order
    markdown: str  # comparison.md
    baseline: str = ""  # the strategy every other one is compared with


DEFAULT_BASELINE = "soft"


def choose_baseline(results_dir: Path, strategies: list[str], baseline: str | None) -> str:
    """The baseline asked for, which must have runs here; unasked, soft when present, else the first strategy."""
    if baseline is None:
        return DEFAULT_BASELINE if DEFAULT_BASELINE in strategies else sorted(strategies)[0]
    if baseline not in strategies:
        raise UserError(f"--baseline {baseline}: no runs of that strategy in {results_dir}; strategies present: "
                        f"{', '.join(sorted(strategies))}")
    return baseline


def flag(name: str) -> str:
    """A config field's command-line spelling: between_fraction -> between-fraction."""
    return name.replace("_", "-")


def flatten_config(config: dict, within: str = "") -> dict:
    """config.json's fields by their flat option names, whether the file is flat (older runs) or nested in groups.

    A group's `name` is named after the group ("model": {"name": ...} is the option `model`).

    >>> flatten_config({"strategy": "soft", "data": {"dataset": "digits"}, "model": {"name": "small-cnn", "lr": 0.1}})
    {'strategy': 'soft', 'dataset': 'digits', 'model': 'small-cnn', 'lr': 0.1}
    """
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, key))
        else:
            flat[within if key == "name" and within else key] = value
    return flat


def load_runs(results_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every finished or failed run below results_dir/runs (unfinished, temporary ones are ignored), and the
    config fields found in their config.json files."""
    configs, rows = [], []
    for run_dir in sorted((results_dir / "runs").glob("*")):
        if run_dir.name.startswith(".") or not (run_dir / "config.json").exists():
            continue
        if (run_dir / "DONE").exists():
            row = {"run": run_dir.name, "status": "done", "error": "", **read_json(run_dir / "metrics.json")}
        elif (run_dir / "FAILED").exists():
            row = {"run": run_dir.name, "status": "failed", "error": read_json(run_dir / "FAILED")["error"]}
        else:
            continue
        config = flatten_config(read_json(run_dir / "config.json"))
        if config.get("between_source") == "auto" and (run_dir / "data.json").exists():
            # What `auto` chose for the run's data (human labels, or blends): its runs compare as that source.
            config["between_source"] = read_json(run_dir / "data.json").get("between_source", "auto")
        # Runs of one strategy with different own options (mixup's α, ...) are different rows, as they are runs.
        configs.append(config | {"strategy": strategy_label(config["strategy"], config)})
        rows.append(row)
    if not rows:
        raise UserError(f"{results_dir}: no finished runs found (run `ambig-bench run --out {results_dir}` first)")
    runs = pd.DataFrame([config | row for config, row in zip(configs, rows, strict=True)])
    options = list(dict.fromkeys(name for config in configs for name in config))
    # A run written before a config field existed lacks it: it is a different experiment from the runs that have
    # it, so it gets a value of its own rather than being merged with them (or dropped by a groupby, as a null
    # would be; an unset field beside set ones likewise). The column becomes text, each value as written (0, not
    # the 0.0 pandas makes of an int column with gaps).
    for name in options:
        unset = [config.get(name) is None for config in configs]
        if any(unset) and not all(unset):
            runs[name] = [ABSENT if name not in config else DEFAULT if config[name] is None else str(config[name])
                          for config in configs]
    return runs, options


def varying_fields(runs: pd.DataFrame, options: list[str]) -> list[str]:
    outside = outside_experiment()
    return [f for f in options if f not in outside and runs[f].astype(str).nunique() > 1]


def add_conformal(runs: pd.DataFrame, results_dir: Path) -> pd.DataFrame:
    """Per finished run, conformal sets calibrated on its validation predictions, scored on its test ones."""
    rows = []
    for run, status in zip(runs.run, runs.status, strict=True):
        run_dir = results_dir / "runs" / run
        ok = status == "done" and (run_dir / "predictions.csv").exists()
        rows.append(conformal_summary(run_dir, CONFORMAL_ALPHA, "lac") if ok else {})
    extra = pd.DataFrame(rows, index=runs.index)
    return pd.concat([runs, extra[[c for c in SET_METRICS if c in extra]]], axis=1)


def summarise(runs: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    rows = []
    for key, group in runs.groupby(group_by + ["strategy"], sort=False):
        done = group[group.status == "done"]
        row = dict(zip(group_by + ["strategy"], key if isinstance(key, tuple) else (key,), strict=True))
        row.update(n_seeds=len(done), n_failed=int((group.status == "failed").sum()))
        for m, metric in {**METRICS, **SET_METRICS}.items():
            values = done[m].astype(float) if m in done else pd.Series(dtype=float)
            mean, low, high = mean_ci(values.to_numpy())
            # A t-interval knows nothing of the metric's range: an accuracy's CI never reaches past 1.
            row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = mean, *np.clip([low, high], *metric.bounds)
        rows.append(row)
    # Sweep values in increasing order, strategies by name: the same table whatever the directory order.
    return pd.DataFrame(rows).sort_values(group_by + ["strategy"], kind="stable", ignore_index=True)


def paired_all(runs: pd.DataFrame, group_by: list[str], baseline: str) -> pd.DataFrame:
    frames = []
    done = runs[runs.status == "done"]
    for key, group in (done.groupby(group_by) if group_by else [((), done)]):
        if baseline not in set(group.strategy):
            continue
        for m in METRICS:
            if group[m].isna().all():
                continue
            table = paired_comparison(group[["strategy", "seed", m]], m, baseline)
            for name, value in zip(group_by, key if isinstance(key, tuple) else (key,), strict=True):
                table.insert(0, name, value)
            frames.append(table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def ranks_all(summary: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    metrics = [m for m in HIGHER_IS_BETTER if summary[f"{m}_mean"].notna().any()]
    frames = []
    for key, group in (summary.groupby(group_by) if group_by else [((), summary)]):
        table = rank_table(group.reset_index(drop=True), metrics, HIGHER_IS_BETTER)
        for name, value in zip(group_by, key if isinstance(key, tuple) else (key,), strict=True):
            table.insert(0, name, value)
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


MIN_SEEDS_FOR_CI = 3  # below this a t-interval over seeds is wider than most metrics' range: not shown


def fmt(mean: float, low: float, high: float, n: int = MIN_SEEDS_FOR_CI) -> str:
    """'0.912 ± 0.013', or '0.995 [0.984, 1.000]' where the interval was clipped to the metric's range."""
    if math.isnan(mean):
        return "–"
    if math.isnan(low) or n < MIN_SEEDS_FOR_CI:
        return f"{mean:.3f}" if n == 1 else f"{mean:.3f} (n too small)"
    if not math.isclose(high - mean, mean - low, rel_tol=1e-6, abs_tol=1e-9):
        return f"{mean:.3f} [{low:.3f}, {high:.3f}]"
    return f"{mean:.3f} ± {(high - low) / 2:.3f}"


def summary_display(summary: pd.DataFrame, group_by: list[str], metrics=tuple(METRICS)) -> pd.DataFrame:
    """The human table: one column per metric holding 'mean ± CI half-width' (see fmt)."""
    shown = summary[group_by + ["strategy", "n_seeds"]].rename(columns={"n_seeds": "n"}).copy()
    for m in metrics:
        if summary[f"{m}_mean"].notna().any():
            shown[m] = [fmt(r[f"{m}_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"], r["n_seeds"])
                        for _, r in summary.iterrows()]
    if summary.n_failed.any() and tuple(metrics) == tuple(METRICS):
        shown["failed"] = summary.n_failed
    return shown


def paired_cell(r: pd.Series) -> str:
    """'+0.012 [+0.004, +0.020] p=0.01' (Holm-adjusted) or '... n.s.': in tables and in the report's prose."""
    if math.isnan(r.diff_mean):
        return "–"
    if math.isnan(r.diff_ci_low):
        return f"{r.diff_mean:+.3f} (too few seeds)"
    mark = f"p={r.p_holm:.2g}" if r.significant else "n.s."
    return f"{r.diff_mean:+.3f} [{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}] {mark}"


HEADLINE = ("clear_acc", "between_set_acc", "between_top2", "ece", "ambiguity_auroc")  # the terminal's columns
BETTER, WORSE = "▲", "▼"  # significantly better / worse than the baseline (paired test, Holm, 5%)


def supported(comparison: Comparison) -> pd.DataFrame:
    """The paired differences a test supports, with `better` by the metric's direction (unranked metrics left out)."""
    paired = comparison.paired
    if paired.empty:
        return paired.assign(better=pd.Series(dtype=bool))
    rows = paired[paired.significant & paired.metric.map(lambda m: HIGHER_IS_BETTER.get(m) is not None)]
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
        lines.append(f"No difference from {comparison.baseline} is supported by a paired test. "
                     f"{attainable(comparison.paired)}")
    return table, lines


def paired_display(paired: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    """One row per strategy, one column per metric: difference [95% CI] and n.s. or the Holm p-value."""
    cells = paired.assign(cell=paired.apply(paired_cell, axis=1))
    index = group_by + ["strategy", "n_pairs"]
    shown = cells.pivot_table(index=index, columns="metric", values="cell", aggfunc="first", sort=False)
    return shown[[m for m in METRICS if m in shown.columns]].reset_index().rename(columns={"n_pairs": "n"})


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


def sections(comparison: Comparison, baseline: str, level: int) -> list[Block]:
    """The summary, paired, conformal and rank tables with what they mean: comparison.md and the report share
    them (the report one heading level down)."""
    g, summary = comparison.group_by, comparison.summary
    blocks: list[Block] = [tabulate(summary_display(summary, g), g)]
    if not comparison.paired.empty:
        blocks += [Heading(f"Paired differences against {code(baseline)}", level),
                   Paragraph("Per seed, strategy minus baseline; bootstrap 95% CI; Wilcoxon signed-rank (≥ 6 seeds) "
                             "or exact sign test, Holm-corrected across strategies per metric. n.s. = no significant "
                             f"difference at the 5% level. {attainable(comparison.paired)}"),
                   tabulate(paired_display(comparison.paired, g), g)]
    elif comparison.runs.strategy.nunique() == 1:
        blocks.append(Paragraph(ONE_STRATEGY))
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


def glossary() -> list[Block]:
    """What every metric means and which end is better (metrics.METRICS and SET_METRICS)."""
    return [Heading("Metrics"),
            Bullets([f"`{name}` ({m.direction}): {m.description}" for name, m in (METRICS | SET_METRICS).items()])]


def document(results_dir: Path, comparison: Comparison, baseline: str) -> list[Block]:
    """comparison.md."""
    return [Heading(f"Comparison of strategies: {escape(results_dir.name)}", 1),
            Paragraph(f"Setup: {setup_line(comparison.runs, comparison.group_by)}. {CELLS}"),
            *sections(comparison, baseline, 2), *glossary()]


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
        "summary": records(comparison.summary), "paired": records(comparison.paired),
        "ranks": records(comparison.ranks), "runs": records(comparison.runs),
    }, indent=2) + "\n"


def compare(results_dir: str | Path, baseline: str | None = None) -> Comparison:
    """Summarise every run of `results_dir`, write comparison.csv / comparison.md / paired.csv there.

    `baseline`: the strategy the others are compared with (default: soft where it has runs, else the first)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"{results_dir}: results directory not found")
    runs, options = load_runs(results_dir)
    runs = add_conformal(runs, results_dir)
    group_by = varying_fields(runs, options)
    twins = runs[runs.duplicated(group_by + ["strategy", "seed"], keep=False)]
    if len(twins):  # e.g. a run directory copied under another name
        raise UserError(f"{results_dir}: runs {', '.join(twins.run.head(2))} are the same strategy, seed and "
                        "configuration; remove one")
    baseline = choose_baseline(results_dir, list(pd.unique(runs.strategy)), baseline)
    summary = summarise(runs, group_by)
    paired = paired_all(runs, group_by, baseline) if runs.strategy.nunique() > 1 else pd.DataFrame()
    comparison = Comparison(runs, summary, paired, ranks_all(summary, group_by), group_by, options, "", baseline)
    comparison.markdown = to_markdown(document(results_dir, comparison, baseline))
    write_csv(results_dir / "comparison.csv", summary)
    write_csv(results_dir / "paired.csv", paired)
    write_atomic(results_dir / "comparison.md", comparison.markdown)
    return comparison
