"""The analysis of a results directory: its runs, one summary row per strategy, paired tests, ranks; no files.

Every metric is summarised as mean and 95% CI over seeds; against a baseline strategy (default `soft`), every
metric's difference is paired by seed, with a bootstrap CI, a Holm-corrected paired test and an equivalence test
against the metric's margin (MARGINS, `--margin`); the criteria's metrics are also paired image by image
(ambig_bench.images); a rank table shares ranks where CIs overlap. `compare` renders and writes it; `report` and
`sweep` read it without writing it.

>>> c = analyse("results/demo", baseline="soft")  # doctest: +SKIP
>>> c.summary[["strategy", "n_seeds", "clear_acc_mean"]]  # doctest: +SKIP
  strategy  n_seeds  clear_acc_mean
0     hard        3           0.860
1     soft        3           0.910
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ambig_bench import rundir
from ambig_bench.calibration import calibrate_run, conformal_summary, group_coverage
from ambig_bench.errors import UserError
from ambig_bench.images import PER_IMAGE, image_comparison, outcomes
from ambig_bench.metrics import HIGHER_IS_BETTER, METRICS, SET_METRICS
from ambig_bench.options import outside_experiment, strategy_label
from ambig_bench.rundir import RUNS, RunDir, list_runs
from ambig_bench.stats import mean_ci, paired_comparison, rank_table

CONFORMAL_ALPHA = 0.1  # the conformal sets of the comparison (SET_METRICS) miss a true label for at most 10%
CONFORMAL_GROUPINGS = ("kind", "class")  # calibrations whose coverage per class and per pair is reported
ABSENT = "(absent)"  # a config field that a run written by an older version lacks
DEFAULT = "(default)"  # a config field left unset (null): the model's or the dataset's own value
DEFAULT_BASELINE = "soft"
ACCURACIES = ("clear_acc", "clear_set_acc", "between_set_acc", "between_top2")  # what `--margin 0.01` sets
# The margin δ per metric: a difference smaller than δ is too small to matter. Two points of accuracy; one of ECE
# (its typical spread between strategies is a few points); 0.05 nats of NLL or cross-entropy; two points of the
# other fractions (probability mass, balance, AUROC).
MARGINS = {"clear_acc": 0.02, "clear_set_acc": 0.02, "nll": 0.05, "ece": 0.01, "between_set_acc": 0.02,
           "between_top2": 0.02, "between_mass": 0.02, "between_balance": 0.02, "between_balance_err": 0.02,
           "ambiguity_auroc": 0.02, "human_ce": 0.05}


@dataclass
class Comparison:
    results_dir: Path
    runs: pd.DataFrame  # one row per run: config fields, status, metrics
    summary: pd.DataFrame  # one row per (group, strategy): n, metric mean / CI
    paired: pd.DataFrame  # one row per (group, strategy, metric): paired difference vs the baseline
    ranks: pd.DataFrame  # one row per (group, strategy): rank per metric
    group_by: list[str]  # config fields that differ between experiments in the directory
    options: list[str]  # every config field of the runs, by its flat (option) name, in config.json's order
    baseline: str  # the strategy every other one is compared with
    run_dirs: dict[str, RunDir]  # the run directories by run name (the `run` column)
    margins: dict[str, float]  # the margin δ per metric (MARGINS, or as --margin set them)
    outcomes: dict[str, pd.DataFrame]  # per finished run with predictions: its test images' outcomes (images.py)
    images: pd.DataFrame  # one row per (group, strategy, metric of PER_IMAGE): paired by image against the baseline
    skipped: list[str] = field(default_factory=list)  # one line per run left out as damaged, then how many
    # one row per (group, strategy, calibration, class or pair): conformal coverage on test (conformal_groups)
    conformal_groups: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def done(self) -> pd.DataFrame:
        """The finished runs."""
        return self.runs[self.runs.status == "done"]

    def paired_against(self, strategy: str) -> pd.DataFrame:
        """The paired tests of every other strategy against `strategy` (empty where it has no runs or is alone)."""
        if strategy not in set(self.runs.strategy) or self.runs.strategy.nunique() < 2:
            return pd.DataFrame()
        if strategy == self.baseline:
            return self.paired
        return paired_all(self.runs, self.group_by, strategy, self.margins)

    def pools(self, where: dict) -> dict[str, dict[int, pd.DataFrame]]:
        """The test images' outcomes of the finished runs of one group: strategy -> seed -> outcomes."""
        part = select(self.done, where)
        return {s: {int(r.seed): self.outcomes[r.run] for r in g.itertuples() if r.run in self.outcomes}
                for s, g in part.groupby("strategy", sort=False)}


def parse_margins(text: str | float | None) -> dict[str, float]:
    """`--margin`: one number for every accuracy (ACCURACIES), or METRIC=VALUE,... (e.g. clear_acc=0.01,ece=0.005;
    `clear-acc` spelt with a dash works too); the other metrics keep MARGINS' defaults."""
    if text is None:
        return dict(MARGINS)
    text = str(text)
    items = [item.strip() for item in text.split(",")]
    if len(items) == 1 and "=" not in items[0]:
        pairs = [(m, items[0]) for m in ACCURACIES]
    else:
        pairs = [tuple(part.strip() for part in item.partition("=")[::2]) for item in items]
    margins = dict(MARGINS)
    for name, value in pairs:
        metric = name.replace("-", "_")
        if metric not in MARGINS:
            raise UserError(f"--margin {text}: unknown metric {name!r}; one of {', '.join(MARGINS)} (or one number "
                            "for every accuracy)")
        try:
            margins[metric] = float(value)
        except ValueError:
            raise UserError(f"--margin {text}: {value!r} is not a number (write METRIC=VALUE,... or one "
                            "number)") from None
        if not 0 < margins[metric] < float("inf"):
            raise UserError(f"--margin {text}: the margin of {metric} must be > 0, got {value}")
    return margins


def unconverged(runs: pd.DataFrame) -> pd.Series:
    """Per run: its metrics.json says it had not converged (runs that do not say are not counted here)."""
    return runs["converged"].isin([False]) if "converged" in runs else pd.Series(False, index=runs.index)


def folds_of(runs: pd.DataFrame) -> int:
    """The runs' --folds (0 where off, or absent in runs older than the option)."""
    return int(pd.to_numeric(runs["folds"], errors="coerce").fillna(0).max()) if "folds" in runs else 0


def choose_baseline(results_dir: Path, strategies: list[str], baseline: str | None) -> str:
    """The baseline asked for, which must have runs here; unasked, soft when present, else the first strategy."""
    if baseline is None:
        return DEFAULT_BASELINE if DEFAULT_BASELINE in strategies else sorted(strategies)[0]
    if baseline not in strategies:
        raise UserError(f"--baseline {baseline}: no runs of that strategy in {results_dir}; strategies present: "
                        f"{', '.join(sorted(strategies))}")
    return baseline


def no_runs(results_dir: Path) -> str:
    """Why a directory has no runs to compare, and what to pass instead."""
    said = f"{results_dir}: no finished runs found"
    if any((results_dir / name).exists() for name in (rundir.CONFIG, rundir.DONE, rundir.FAILED)):
        return (f"{said}: it is one run's directory; pass its results directory, the folder holding runs/: "
                f"{results_dir.parent.parent if results_dir.parent.name == RUNS else results_dir.parent}")
    if not (results_dir / RUNS).is_dir():
        return (f"{said}: not a results directory (it has no {RUNS}/ folder); a results directory is the --out "
                f"folder of `ambig-bench run`, holding {RUNS}/<strategy>-seed<N>-<key>/")
    return f"{said} (run `ambig-bench run --out {results_dir}` first)"


class SkippedRun(UserWarning):
    """A run left out of the analysis because one of its files is damaged: the message names the file and field."""


METRIC_BOUNDS = {name: m.bounds for name, m in METRICS.items()}
# Measured on every test split (every split holds clear-cut images): a run without them is damaged, never counted.
MEASURED = ("clear_acc", "clear_set_acc", "nll", "ece")


def read_run(run: RunDir) -> tuple[dict, dict]:
    """A run's config fields (flat; its strategy as compared, `strategy_label`) and its row (status, metrics or
    why it failed), every file of it checked first (ambig_bench.schema): a UserError names the file and field."""
    run.check_link()
    config = run.options()
    if run.done:
        metrics = run.metrics(METRIC_BOUNDS, MEASURED, reserved=tuple(SET_METRICS))
        clash = next((k for k, v in metrics.items() if k in config and config[k] != v), None)
        if clash:
            raise UserError(f"{run.path / rundir.METRICS}: field {clash!r} is {metrics[clash]!r}, but config.json "
                            f"says {config[clash]!r}")
        run.check_present()
        row = {"run": run.name, "status": "done", "error": "", **metrics}
    else:
        row = {"run": run.name, "status": "failed", "error": run.error()}
    if config.get("between_source") == "auto":
        # What `auto` chose for the run's data (human labels, or blends): its runs compare as that source.
        config["between_source"] = run.recorded_source() or "auto"
    # Runs of one strategy with different own options (mixup's α, ...) are different rows, as they are runs.
    return config | {"strategy": strategy_label(config["strategy"], config)}, row


def load_runs(results_dir: Path) -> tuple[pd.DataFrame, list[str], dict[str, RunDir], list[str]]:
    """Every finished or failed run of results_dir (`rundir.list_runs`), the config fields found in their
    config.json files, the run directories by name, and one line per run skipped as damaged (each also a
    SkippedRun warning, then one saying how many). Every run damaged is a UserError."""
    found = list_runs(results_dir)
    configs, rows, kept, skipped = [], [], [], []
    for run in found:
        try:
            config, row = read_run(run)
        except UserError as e:
            skipped.append(f"{e}; run skipped")
            continue
        configs.append(config)
        rows.append(row)
        kept.append(run)
    if not rows and skipped:
        raise UserError(f"{results_dir}: no run can be read ({len(skipped)} damaged), e.g. {skipped[0]}")
    if not rows:
        raise UserError(no_runs(results_dir))
    if skipped:
        skipped.append(f"{len(skipped)} of {len(found)} runs skipped as damaged; compared the other {len(rows)}")
    for line in skipped:
        warnings.warn(line, SkippedRun, stacklevel=2)
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
    return runs, options, {run.name: run for run in kept}, skipped


def varying_fields(runs: pd.DataFrame, options: list[str]) -> list[str]:
    outside = outside_experiment()
    return [f for f in options if f not in outside and runs[f].astype(str).nunique() > 1]


def add_conformal(runs: pd.DataFrame, run_dirs: dict[str, RunDir]) -> pd.DataFrame:
    """Per finished run, conformal sets calibrated on its validation predictions, scored on its test ones."""
    rows = []
    for name, status in zip(runs.run, runs.status, strict=True):
        run = run_dirs[name]
        ok = status == "done" and run.predictions_file.exists()
        rows.append(conformal_summary(run, CONFORMAL_ALPHA, "lac") if ok else {})
    extra = pd.DataFrame(rows, index=runs.index)
    return pd.concat([runs, extra[[c for c in SET_METRICS if c in extra]]], axis=1)


def conformal_groups(runs: pd.DataFrame, run_dirs: dict[str, RunDir], group_by: list[str]) -> pd.DataFrame:
    """Coverage per class and per pair (calibration.group_coverage) of LAC sets at CONFORMAL_ALPHA, calibrated per
    kind ("kind") and per class ("class") on each finished run's validation rows; per strategy, the mean and the
    lowest coverage over seeds and the test images counted over seeds."""
    frames = []
    for _, row in runs[runs.status == "done"].iterrows():
        run = run_dirs[row.run]
        if not run.predictions_file.exists():
            continue
        for groups in CONFORMAL_GROUPINGS:
            table = group_coverage(run, calibrate_run(run, CONFORMAL_ALPHA, "lac", True, groups))
            frames.append(table.assign(**{g: row[g] for g in group_by}, strategy=row.strategy, seed=row.seed,
                                       calibration=groups))
    if not frames:
        return pd.DataFrame()
    keys = group_by + ["strategy", "calibration", "group", "name", "part"]
    table = pd.concat(frames, ignore_index=True).groupby(keys, sort=False).agg(
        seeds=("seed", "nunique"), images=("images", "sum"), coverage=("coverage", "mean"),
        lowest=("coverage", "min"), size=("size", "mean"), vote_coverage=("vote_coverage", "mean")).reset_index()
    # As the summary: sweep values in increasing order, strategies by name, whatever the directory order.
    return table.sort_values(group_by + ["strategy"], kind="stable", ignore_index=True)


def summarise(runs: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    rows = []
    for key, group in runs.groupby(group_by + ["strategy"], sort=False):
        done = group[group.status == "done"]
        row = dict(zip(group_by + ["strategy"], key if isinstance(key, tuple) else (key,), strict=True))
        row.update(n_seeds=len(done), n_failed=int((group.status == "failed").sum()),
                   n_unconverged=int(unconverged(done).sum()))
        for m, metric in {**METRICS, **SET_METRICS}.items():
            values = done[m].astype(float) if m in done else pd.Series(dtype=float)
            mean, low, high = mean_ci(values.to_numpy())
            # A t-interval knows nothing of the metric's range: an accuracy's CI never reaches past 1.
            row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = mean, *np.clip([low, high], *metric.bounds)
        rows.append(row)
    # Sweep values in increasing order, strategies by name: the same table whatever the directory order.
    return pd.DataFrame(rows).sort_values(group_by + ["strategy"], kind="stable", ignore_index=True)


def paired_all(runs: pd.DataFrame, group_by: list[str], baseline: str, margins: dict[str, float]) -> pd.DataFrame:
    frames = []
    done = runs[runs.status == "done"]
    for key, group in (done.groupby(group_by) if group_by else [((), done)]):
        if baseline not in set(group.strategy):
            continue
        for m in METRICS:
            if group[m].isna().all():
                continue
            table = paired_comparison(group[["strategy", "seed", m]], m, baseline, margins[m])
            for name, value in zip(group_by, key if isinstance(key, tuple) else (key,), strict=True):
                table.insert(0, name, value)
            frames.append(table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def images_all(comparison: Comparison) -> pd.DataFrame:
    """The metrics of PER_IMAGE paired image by image against the baseline, per group (empty without predictions)."""
    frames = []
    for where, part in split_groups(comparison.done, comparison.group_by):
        pools = {s: p for s, p in comparison.pools(where).items() if p}
        if comparison.baseline not in pools or len(pools) < 2:
            continue
        for m in PER_IMAGE:
            table = image_comparison(pools, m, comparison.baseline, comparison.margins[m], folds_of(part))
            frames.append(table.assign(**where)[[*where, *table.columns]])
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


def split_groups(frame: pd.DataFrame, by: list[str]) -> list[tuple[dict, pd.DataFrame]]:
    """The rows of `frame` per combination of the `by` options' values, in increasing order."""
    if not by:
        return [({}, frame)]
    return [(dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)), part)
            for key, part in frame.groupby(by, sort=True)]


def select(frame: pd.DataFrame, where: dict) -> pd.DataFrame:
    """The rows of `frame` holding every value of `where` (option -> value)."""
    mask = np.ones(len(frame), dtype=bool)
    for k, v in where.items():
        mask &= (frame[k] == v).to_numpy()
    return frame[mask]


def worse(row: pd.Series) -> bool:
    """A paired test's row: significantly worse than the reference of the test, by at least the margin."""
    return row.outcome == "different" and (row.diff_mean < 0) == HIGHER_IS_BETTER[row.metric]


def better(row: pd.Series) -> bool:
    """A paired test's row: significantly better than the reference of the test, by at least the margin."""
    return row.outcome == "different" and (row.diff_mean > 0) == HIGHER_IS_BETTER[row.metric]


def analyse(results_dir: str | Path, baseline: str | None = None, margins: dict[str, float] | None = None
            ) -> Comparison:
    """Every run of `results_dir`: summary, paired tests (across seeds and across images) and ranks. Reads the
    runs, writes nothing.

    `baseline`: the strategy the others are compared with (default: soft where it has runs, else the first);
    `margins`: the margin per metric (default MARGINS, see parse_margins)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"{results_dir}: results directory not found")
    runs, options, run_dirs, skipped = load_runs(results_dir)
    runs = add_conformal(runs, run_dirs)
    group_by = varying_fields(runs, options)
    twins = runs[runs.duplicated(group_by + ["strategy", "seed"], keep=False)]
    if len(twins):  # e.g. a run directory copied under another name
        raise UserError(f"{results_dir}: runs {', '.join(twins.run.head(2))} are the same strategy, seed and "
                        "configuration; remove one")
    baseline = choose_baseline(results_dir, list(pd.unique(runs.strategy)), baseline)
    margins = margins or dict(MARGINS)
    summary = summarise(runs, group_by)
    paired = paired_all(runs, group_by, baseline, margins) if runs.strategy.nunique() > 1 else pd.DataFrame()
    done = runs[runs.status == "done"]
    found = {name: outcomes(run_dirs[name]) for name in done.run if run_dirs[name].predictions_file.exists()}
    comparison = Comparison(results_dir, runs, summary, paired, ranks_all(summary, group_by), group_by, options,
                            baseline, run_dirs, margins, found, pd.DataFrame(), skipped)
    comparison.images = images_all(comparison)
    comparison.conformal_groups = conformal_groups(runs, run_dirs, group_by)
    return comparison
