"""Sweeps: run the same strategies over a grid of run options, then draw each metric against the varied value.

Every grid point is an ordinary run (same directory layout, reused when finished), all written into one
results directory, so `compare` groups them by the varying option and `report` tests the sweep claims.

$ ambig-bench sweep --dataset digits --strategy all --vary between-fraction=0.005,0.01,0.02,0.05,0.1 --seeds 5
$ ambig-bench sweep --strategy soft,reassign --vary between-fraction=0.02,0.2 --vary train-size=200,800
$ ambig-bench sweep --dataset folder --labels photos/labels.csv --vary between-train=8,15,30,60 --seeds 10

>>> parse_vary(["between-fraction=0.01,0.1", "epochs=5"])
{'between_fraction': [0.01, 0.1], 'epochs': [5]}
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path

from ambig_bench import options
from ambig_bench.analysis import analyse
from ambig_bench.config import ExperimentConfig, RunConfig, coerce
from ambig_bench.datasets.base import split_and_label
from ambig_bench.datasets.confusable import wants_auto_pairs
from ambig_bench.errors import UserError
from ambig_bench.executors import Executor, grid, run_all
from ambig_bench.io import write_atomic
from ambig_bench.plots import png_bytes, sweep_figure
from ambig_bench.prepare import raw_of
from ambig_bench.runner import Reporter
from ambig_bench.store import RunResult


def parse_vary(specs: list[str]) -> dict[str, list]:
    """`["between-fraction=0.01,0.1"]` -> {"between_fraction": [0.01, 0.1]}, values typed like the RunConfig field."""
    vary: dict[str, list] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        field = name.strip().replace("-", "_")
        flag = f"--vary {spec!r}"
        if not sep or not field or not values.strip():
            raise UserError(f"{flag}: expected OPTION=V1,V2,... e.g. between-fraction=0.01,0.05")
        opt = options.lookup(field)
        if opt.path[0] == "strategy_options":
            # Each value is a variant of the strategy, a row of its own beside the others, not a point of a curve.
            raise UserError(f"{flag}: {name.strip()} is {opt.path[1]}'s own option; run each value with `ambig-bench "
                            f"run --strategy {opt.path[1]} --{opt.flag.replace('_', '-')} V` into one --out, where "
                            "compare and report show each as a strategy of its own")
        if not options.in_experiment(opt):
            # strategy and seed have their own options; the others do not change results (not in the run key)
            raise UserError(f"{flag}: {name.strip()} cannot be swept (use --strategy / --seeds, or it does not "
                            "change results)")
        if field in vary:
            raise UserError(f"{flag}: {name.strip()} is varied twice")
        typed = [coerce(field, opt.kind, v.strip()) for v in values.split(",") if v.strip()]
        if len(set(typed)) != len(typed):
            raise UserError(f"{flag}: repeated value")
        vary[field] = typed
    return vary


def sweep_points(run: RunConfig, vary: dict[str, list]) -> list[RunConfig]:
    """One template run per combination of the varied values (the last --vary changes fastest)."""
    source = run.data.between_source
    if "between_fraction" in vary and source not in ("blend", "auto") and "between_source" not in vary:
        raise UserError(f"--vary between-fraction: only the blend source generates in-between images by "
                        f"fraction; with --between-source {source} the data fix them")
    # A varied model takes its own recipe (its models.MODELS entry) unless the recipe is varied too; every
    # point is built and checked here, so a bad value fails before any training, naming the option.
    points = [options.replace(run, **dict(zip(vary, values, strict=True)))
              for values in itertools.product(*vary.values())]
    check_data(points)
    return points


def check_data(points: list[RunConfig]) -> None:
    """Each point's data, prepared as far as they are without training (memory, files, splits, pairs, in-between
    images), so that a point whose data fail does before the first point trains: preflight prepares only the
    first run's data in full. Points that prepare the same data are checked once."""
    seen = set()
    for point in points:
        key = repr((point.data, point.source, point.loader))
        if key in seen or wants_auto_pairs(point):  # auto pairs are found by training: the run prepares them
            continue
        seen.add(key)
        split_and_label(raw_of(point), point, check_only=True)


def sweep_configs(exp: ExperimentConfig, vary: dict[str, list]) -> list[RunConfig]:
    """Every (grid point, seed, strategy) run of the sweep, in the order they are trained."""
    return [cfg for point in sweep_points(exp.run, vary) for cfg in grid(dataclasses.replace(exp, run=point))]


@dataclass
class SweepResult:
    runs: list[RunResult]  # one per (grid point, seed, strategy), in training order
    figures: list[Path]  # sweep-<option>.png written into the results directory


def run_sweep(exp: ExperimentConfig, vary: dict[str, list], reporter: Reporter | None = None,
              executor: Executor | None = None) -> SweepResult:
    """Train (or reuse) every run of the sweep into exp.out, then write the sweep figures there.

    Runs go through the same executors as `ambig-bench run` (--jobs, Ray), all grid points at once.
    """
    runs = run_all(sweep_configs(exp, vary), exp.out, exp.force, reporter, executor)
    figures = draw_sweep(exp.out, list(vary)) if any(r.status != "failed" for r in runs) else []
    return SweepResult(runs, figures)


def draw_sweep(results_dir: str | Path, fields: list[str] | None = None) -> list[Path]:
    """sweep-<field>.png per varied field: each metric against the field's value, per strategy, 95% CI bands."""
    results_dir = Path(results_dir)
    comparison = analyse(results_dir)
    paths = []
    for field in fields or comparison.group_by:
        if field not in comparison.group_by:
            continue  # a single value on disk: nothing to draw against
        name, fig = sweep_figure(comparison.summary, field, comparison.group_by)
        write_atomic(results_dir / name, png_bytes(fig))
        paths.append(results_dir / name)
    return paths
