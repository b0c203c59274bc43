"""The Python API, for notebooks and scripts: what the CLI does, as functions that return objects. Training shows
its progress (bars in a notebook or terminal, lines in a log; `progress=False` for none) and prints nothing else.

`import ambig_bench as ab` gives these names (loaded on first use, so importing the package stays cheap).
docs/api.md walks through a session; tests/test_api_docs.py runs it.

>>> import ambig_bench as ab
>>> results = ab.run(strategies="soft,hard", seeds=2, dataset="digits", epochs=3, out="results/nb")  # doctest: +SKIP
>>> results[0].metrics["clear_acc"], results[0].files["predictions.csv"]  # doctest: +SKIP
>>> ab.compare_results("results/nb").summary  # doctest: +SKIP
>>> ab.load_run(results[0].run_dir).predict_arrays(images)["conformal"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ambig_bench import options as run_options
from ambig_bench import sweep as sweeps
from ambig_bench.analysis import Comparison
from ambig_bench.calibration import Calibration, calibrate_run, conformal_summary
from ambig_bench.compare import compare as compare_results
from ambig_bench.compare import comparison_json
from ambig_bench.config import ExperimentConfig, RunConfig
from ambig_bench.errors import RunFailed, UserError
from ambig_bench.executors import Executor, grid, open_executor, preflight, run_grid
from ambig_bench.experiments import experiment
from ambig_bench.export import Exported, export_onnx
from ambig_bench.predict import PredictionReport, Predictor, predict_paths
from ambig_bench.progress import showing
from ambig_bench.rundir import list_runs, runs_folder
from ambig_bench.runner import Reporter
from ambig_bench.store import RunResult, Status
from ambig_bench.suggest import Suggestions, suggest
from ambig_bench.sweep import SweepResult, parse_vary, sweep_configs
from ambig_bench.tracking import Tracked, Tracker, open_trackers, tracked

__all__ = [
    "Calibration", "Comparison", "ExperimentConfig", "PredictionReport", "Predictor", "RunConfig", "RunFailed",
    "RunResult", "SweepResult", "UserError", "calibrate_run", "compare_results", "comparison_json",
    "conformal_summary", "experiment", "export_run", "load_results", "load_run", "predict_images", "run",
    "run_sweep", "suggest_images",
]


@dataclass
class Session:
    """What a grid trains with: the executor and the trackers (see `session`)."""

    executor: Executor
    trackers: list[Tracker]
    notes: list[str]  # for the user before training, e.g. which in-between source `auto` chose

    logging: list[Tracked] = field(default_factory=list)

    def reporter(self, reporter: Reporter | None) -> Reporter | None:
        """`reporter`, plus logging each run trained now to the trackers."""
        with_trackers = tracked(reporter, self.trackers)
        if isinstance(with_trackers, Tracked):
            self.logging.append(with_trackers)
        return with_trackers

    def finish(self) -> None:
        """Wait until every run trained is logged to the trackers."""
        for logging in self.logging:
            logging.finish()

    @property
    def tracked(self) -> list[str]:
        """Where the trackers log, for the summary."""
        return [tracker.where for tracker in self.trackers]


@contextmanager
def session(exp: ExperimentConfig, configs: list[RunConfig], executor: str = "local", jobs: int = 1,
            ray_address: str = "", track: str | list[str] | None = None, verbose: bool = False) -> Iterator[Session]:
    """Check everything before anything is written (options, device, the first run's data, the trackers' extras),
    then create the results directory; the executor (a Ray instance it started) is closed on exit. The tracking
    libraries' own log lines are shown only when `verbose`."""
    with open_executor(executor, jobs, ray_address) as runs_on:
        notes = preflight(configs, runs_on)
        trackers = open_trackers(track, exp.out, verbose)
        try:
            (Path(exp.out) / "runs").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {exp.out}: cannot create the results directory ({e.strerror})") from None
        runs = Session(runs_on, trackers, notes)
        yield runs
        runs.finish()  # only after success: after an error or Ctrl-C, the logging thread ends on its own


@contextmanager
def reporting(total: int, reporter: Reporter | None, progress: bool) -> Iterator[Reporter | None]:
    """`reporter` when given, else the progress display (`progress.showing`) unless `progress` is False."""
    if reporter is not None or not progress:
        yield reporter
        return
    with showing(total) as shown:
        yield shown


def run(exp: ExperimentConfig | None = None, *, executor: str = "local", jobs: int = 1, ray_address: str = "",
        track: str | list[str] | None = None, reporter: Reporter | None = None, progress: bool = True,
        verbose: bool = False, **options: Any) -> list[RunResult]:
    """Train (or reuse) every (strategy, seed) run of `exp`, or of `experiment(**options)`; one RunResult per run
    (config, status, metrics, run_dir, files). `track`: "mlflow", "tensorboard" or both. Progress is shown on
    stderr (bars in a notebook or terminal) unless `progress=False` or a `reporter` of your own is given."""
    exp = exp or experiment(**options)
    configs = grid(exp)
    with session(exp, configs, executor, jobs, ray_address, track, verbose) as s, \
            reporting(len(configs), reporter, progress) as shown:
        return run_grid(exp, s.reporter(shown), s.executor)


def run_sweep(vary: dict[str, Sequence] | list[str], exp: ExperimentConfig | None = None, *, executor: str = "local",
              jobs: int = 1, ray_address: str = "", track: str | list[str] | None = None,
              reporter: Reporter | None = None, progress: bool = True, verbose: bool = False,
              **options: Any) -> SweepResult:
    """Train the grid at every combination of `vary` ({"between_fraction": [0.01, 0.1]} or the CLI's
    ["between-fraction=0.01,0.1"]) and draw the sweep figures into exp.out; progress as `run`."""
    exp = exp or experiment(**options)
    specs = vary if isinstance(vary, list) else [f"{k}={','.join(map(str, v))}" for k, v in vary.items()]
    values = parse_vary(specs)
    configs = sweep_configs(exp, values)
    with session(exp, configs, executor, jobs, ray_address, track, verbose) as s, \
            reporting(len(configs), reporter, progress) as shown:
        return sweeps.run_sweep(exp, values, s.reporter(shown), s.executor)


def load_results(results_dir: str | Path) -> list[RunResult]:
    """Every finished run of a results directory (status "reused"), in name order: config, metrics, files."""
    if not runs_folder(results_dir).is_dir():
        raise UserError(f"{results_dir}: no runs/ folder (run `ambig-bench run --out {results_dir}` first)")
    known = run_options.table()
    found = []
    for run in (run for run in list_runs(results_dir) if run.done):
        config = run_options.build({k: v for k, v in run.options().items() if k in known})
        found.append(RunResult(config, run.path, Status.REUSED, run.metrics()))
    return found


def load_run(run_dir: str | Path, alpha: float = 0.1, method: str = "lac", per_kind: bool = True,
             groups: str = "kind", truth: str = "sets") -> Predictor:
    """A finished run, ready to predict (`predict_arrays`, or `predict_images` for files), with conformal sets
    calibrated on its validation predictions at miscoverage `alpha` (`groups`: one threshold, or one per class;
    `truth`: the label sets, or labels drawn from the votes; docs/predict.md)."""
    return Predictor.load(run_dir, alpha, method, per_kind, groups, truth)


def predict_images(run_dir: str | Path, images: Sequence[str | Path], alpha: float = 0.1, method: str = "lac",
                   per_kind: bool = True, groups: str = "kind", truth: str = "sets") -> PredictionReport:
    """Predict image files and folders; unreadable files are reported per image (`.failed`), not raised."""
    return predict_paths(run_dir, images, alpha, method, per_kind, groups=groups, truth=truth)


def export_run(run_dir: str | Path, out: str | Path, alpha: float = 0.1, method: str = "lac", per_kind: bool = True,
               groups: str = "kind", truth: str = "sets") -> Exported:
    """Write a run as one ONNX graph (`ambig-bench export`), checked against `predict` before it is kept."""
    return export_onnx(run_dir, out, alpha, method, per_kind, groups, truth)


def suggest_images(source: str | Path, images: Sequence[str | Path], strategies: Sequence[str] = ()) -> Suggestions:
    """Rank images by how in-between the runs of `source` find them (`ambig-bench suggest`)."""
    return suggest(source, images, strategies)

