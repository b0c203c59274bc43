"""Compare the runs of a results directory: one row per strategy, each metric as mean and 95% CI.

Against a baseline strategy (default `soft`), every metric's difference is paired by seed, with a
bootstrap CI and a Holm-corrected paired test; a rank table shares ranks where CIs overlap.

$ ambig-bench compare results/demo --baseline soft
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ambig_bench.config import RUN_FIELDS
from ambig_bench.errors import UserError
from ambig_bench.io import read_json, write_atomic, write_csv
from ambig_bench.metrics import HIGHER_IS_BETTER, METRICS
from ambig_bench.stats import mean_ci, min_holm_p, paired_comparison, rank_table

# Conformal set quality per run (ambig_bench.predict.conformal_summary): name -> meaning, shown in its own table.
CONFORMAL_ALPHA = 0.1
CONFORMAL = {
    "cp_coverage": "conformal sets hold every true label, all test images (guaranteed >= 1 - alpha)",
    "cp_size": "mean conformal set size, all test images",
    "cp_clear_coverage": "coverage on clear-cut images",
    "cp_clear_size": "mean set size on clear-cut images",
    "cp_between_coverage": "coverage on in-between images (both A and B in the set)",
    "cp_between_size": "mean set size on in-between images",
    "cp_between_exact": "conformal set is exactly {A, B} on in-between images",
    "thr_clear_size": "the strategy's own threshold sets: mean size on clear-cut images",
    "thr_between_coverage": "threshold sets: A and B both in the set, in-between images",
    "thr_between_exact": "threshold sets: exactly {A, B} on in-between images (= between_set_acc)",
}
ABSENT = "(absent)"  # a config field that a run written by an older version lacks
IDENTITY = ("strategy", "seed", "device", "download", "compile", "batch_runs")  # not part of an experiment


@dataclass
class Comparison:
    runs: pd.DataFrame  # one row per run: config fields, status, metrics
    summary: pd.DataFrame  # one row per (group, strategy): n, metric mean / CI
    paired: pd.DataFrame  # one row per (group, strategy, metric): paired difference vs the baseline
    ranks: pd.DataFrame  # one row per (group, strategy): rank per metric
    group_by: list[str]  # config fields that differ between experiments in the directory
    markdown: str


def load_runs(results_dir: Path) -> pd.DataFrame:
    """Every finished or failed run below results_dir/runs; unfinished (temporary) ones are ignored."""
    rows = []
    for run_dir in sorted((results_dir / "runs").glob("*")):
        if run_dir.name.startswith(".") or not (run_dir / "config.json").exists():
            continue
        if (run_dir / "DONE").exists():
            row = {"run": run_dir.name, "status": "done", "error": "", **read_json(run_dir / "metrics.json")}
        elif (run_dir / "FAILED").exists():
            row = {"run": run_dir.name, "status": "failed", "error": read_json(run_dir / "FAILED")["error"]}
        else:
            continue
        rows.append({**read_json(run_dir / "config.json"), **row})
    if not rows:
        raise UserError(f"{results_dir}: no finished runs found (run `ambig-bench run --out {results_dir}` first)")
    runs = pd.DataFrame(rows)
    # A run written before a config field existed lacks it: it is a different experiment from the runs that have
    # it, so it gets a value of its own rather than being merged with them (or dropped by a groupby).
    for name in RUN_FIELDS:
        if name in runs and runs[name].isna().any():
            kind = type(RUN_FIELDS[name].default)  # 0, not the 0.0 that pandas made of an int column with gaps
            runs[name] = [ABSENT if pd.isna(v) else str(kind(v)) for v in runs[name]]
    return runs


def varying_fields(runs: pd.DataFrame) -> list[str]:
    fields = [f for f in RUN_FIELDS if f not in IDENTITY and f in runs]
    return [f for f in fields if runs[f].astype(str).nunique() > 1]


def add_conformal(runs: pd.DataFrame, results_dir: Path) -> pd.DataFrame:
    """Per finished run, conformal sets calibrated on its validation predictions, scored on its test ones."""
    from ambig_bench.predict import conformal_summary

    rows = []
    for run, status in zip(runs.run, runs.status, strict=True):
        run_dir = results_dir / "runs" / run
        ok = status == "done" and (run_dir / "predictions.csv").exists()
        rows.append(conformal_summary(run_dir, CONFORMAL_ALPHA, "lac") if ok else {})
    extra = pd.DataFrame(rows, index=runs.index)
    return pd.concat([runs, extra[[c for c in CONFORMAL if c in extra]]], axis=1)


def summarise(runs: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    rows = []
    for key, group in runs.groupby(group_by + ["strategy"], sort=False):
        done = group[group.status == "done"]
        row = dict(zip(group_by + ["strategy"], key if isinstance(key, tuple) else (key,), strict=True))
        row.update(n_seeds=len(done), n_failed=int((group.status == "failed").sum()))
        for m in [*METRICS, *CONFORMAL]:
            values = done[m].astype(float) if m in done else pd.Series(dtype=float)
            row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = mean_ci(values.to_numpy())
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


def fmt(mean: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(low):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {(high - low) / 2:.3f}"


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def summary_display(summary: pd.DataFrame, group_by: list[str], metrics=tuple(METRICS)) -> pd.DataFrame:
    """The human table: one column per metric holding 'mean ± CI half-width'."""
    shown = summary[group_by + ["strategy", "n_seeds"]].rename(columns={"n_seeds": "n"}).copy()
    for m in metrics:
        if summary[f"{m}_mean"].notna().any():
            shown[m] = [fmt(r[f"{m}_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"]) for _, r in summary.iterrows()]
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
    parts = [f"{f.replace('_', '-')} {first[f] or '(dataset default)'}" for f in
             ("dataset", "pairs", "between_source", "between_fraction", "model", "epochs")
             if f in runs and f not in group_by]
    return " · ".join(parts)


def render_markdown(results_dir: Path, comparison: Comparison, baseline: str) -> str:
    g = comparison.group_by
    lines = [f"# Comparison of strategies: {results_dir.name}", "",
             f"Setup: {setup_line(comparison.runs, g)}. Cells are mean ± 95% CI half-width over seeds "
             "(Student t); n = seeds.", "",
             markdown_table(summary_display(comparison.summary, g)), ""]
    if not comparison.paired.empty:
        lines += [f"## Paired differences against `{baseline}`", "",
                  "Per seed, strategy minus baseline; bootstrap 95% CI; Wilcoxon signed-rank (≥ 6 seeds) or "
                  "exact sign test, Holm-corrected across strategies per metric. n.s. = no significant "
                  f"difference at the 5% level. {attainable(comparison.paired)}", "",
                  markdown_table(paired_display(comparison.paired, g)), ""]
    if comparison.summary["cp_coverage_mean"].notna().any():
        lines += [f"## Conformal prediction sets (LAC, α = {CONFORMAL_ALPHA}, calibrated per kind on validation)", "",
                  "Split-conformal sets that hold every true label of at least 1 − α of clear-cut and of in-between "
                  "images (`ambig-bench predict` gives them per image), next to the strategy's own threshold sets.",
                  "", markdown_table(summary_display(comparison.summary, g, tuple(CONFORMAL))), ""]
    lines += ["## Ranks", "", "1 = best; strategies share a rank where their 95% CIs overlap.", "",
              markdown_table(comparison.ranks), "", "## Metrics", ""]
    better = {True: "higher is better", False: "lower is better", None: "not ranked"}
    lines += [f"- `{m}` ({better[hib]}): {text}" for m, (hib, text) in METRICS.items()]
    lines += [f"- `{m}`: {text}" for m, text in CONFORMAL.items()]
    return "\n".join(lines) + "\n"


def compare(results_dir: str | Path, baseline: str = "soft") -> Comparison:
    """Summarise every run of `results_dir`, write comparison.csv / comparison.md / paired.csv there."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"{results_dir}: results directory not found")
    runs = add_conformal(load_runs(results_dir), results_dir)
    group_by = varying_fields(runs)
    twins = runs[runs.duplicated(group_by + ["strategy", "seed"], keep=False)]
    if len(twins):  # e.g. a run directory copied under another name
        raise UserError(f"{results_dir}: runs {', '.join(twins.run.head(2))} are the same strategy, seed and "
                        "configuration; remove one")
    summary = summarise(runs, group_by)
    if baseline not in set(runs.strategy):
        baseline_note = f"baseline {baseline!r} has no runs here"
        paired = pd.DataFrame()
    else:
        baseline_note, paired = "", paired_all(runs, group_by, baseline)
    comparison = Comparison(runs, summary, paired, ranks_all(summary, group_by), group_by, "")
    comparison = dataclasses.replace(comparison, markdown=render_markdown(results_dir, comparison, baseline)
                                     + (f"\n_Note: {baseline_note}._\n" if baseline_note else ""))
    write_csv(results_dir / "comparison.csv", summary)
    write_csv(results_dir / "paired.csv", paired)
    write_atomic(results_dir / "comparison.md", comparison.markdown)
    return comparison
