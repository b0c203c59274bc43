"""Experiment tracking: every run trained now is logged to MLflow and/or TensorBoard once the store has saved it.

A tracker reads the run's directory (config.json, history.csv, metrics.json, data.json and the other files), so
runs are tracked alike whatever trained them (here, --jobs N processes, Ray), and a reused run, which trains
nothing, logs nothing: rerunning a finished grid adds no MLflow run and no event file. Both are optional extras.

MLflow: one MLflow run per run, in the experiment $MLFLOW_EXPERIMENT_NAME (default `ambig-bench/<results
directory name>`), on the server or store of $MLFLOW_TRACKING_URI (default: `sqlite:///<out>/mlflow.db`, its
artifacts in `<out>/mlartifacts`). Params: the run's whole config by flat option name; metrics: training loss
per epoch (`train_loss`, step = epoch) and every final metric; tags: strategy, seed, dataset, between_source,
experiment_key; artifacts: the run's files. TensorBoard: `<out>/tensorboard/<run>/`, one event file per run.

$ ambig-bench run --strategy all --track mlflow        # then: mlflow ui --backend-store-uri sqlite:///results/demo/mlflow.db
$ ambig-bench run --strategy all --track tensorboard   # then: tensorboard --logdir results/demo/tensorboard

>>> results = run_grid(exp, reporter=tracked(None, open_trackers("mlflow", exp.out)))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from ambig_bench import cache
from ambig_bench.errors import UserError
from ambig_bench.io import write_atomic
from ambig_bench.keys import experiment_key
from ambig_bench.options import flat_values
from ambig_bench.registry import Registry
from ambig_bench.rundir import RunDir
from ambig_bench.runner import Reporter
from ambig_bench.store import RunResult, Status


class Tracker(Protocol):
    where: str  # where the runs go, for the closing summary

    def log(self, run: RunResult) -> None:
        """Log a run the store has just written (done or failed)."""


TRACKERS: Registry[type] = Registry("tracker")


def tags(run: RunResult) -> dict[str, str]:
    """What a run is, for filtering in the tracker: the source is the one used (`auto` resolved), from data.json."""
    return {"strategy": run.config.strategy, "seed": str(run.config.seed), "dataset": run.config.data.dataset,
            "between_source": RunDir(run.run_dir).recorded_source() or run.config.data.between_source,
            "experiment_key": experiment_key(run.config), "run_dir": str(run.run_dir.resolve())}


def final_metrics(run: RunResult) -> dict[str, float]:
    """The run's numeric, finite metrics (threshold is None for strategies without one)."""
    return {k: float(v) for k, v in run.metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def losses(run: RunResult) -> list[tuple[int, float]]:
    """(epoch, mean training loss) from history.csv; none for a failed run."""
    history = RunDir(run.run_dir).history()
    return [(int(e), float(loss)) for e, loss in zip(history.epoch, history.train_loss, strict=True)]


@TRACKERS.register("mlflow")
class MlflowTracker:
    """MLflow: params, per-epoch loss, final metrics, tags and the run's files ($MLFLOW_TRACKING_URI)."""

    def __init__(self, out: Path, verbose: bool = False) -> None:
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.exceptions import MlflowException
        except ImportError:
            raise UserError("--track mlflow needs MLflow: pip install 'ambig-bench[mlflow]'") from None
        quiet(verbose)  # after the import, which sets MLflow's own level
        self.entities, self.errors = (Metric, Param, RunTag), MlflowException
        store = (out / "mlflow.db").resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store}"
        artifacts = None if os.environ.get("MLFLOW_TRACKING_URI") else (out / "mlartifacts").resolve().as_uri()
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"ambig-bench/{out.resolve().name}"
        self.where = f"MLflow {uri if os.environ.get('MLFLOW_TRACKING_URI') else store}"
        try:
            if artifacts:  # our default store lives in the results directory
                out.mkdir(parents=True, exist_ok=True)
                if not store.exists():
                    write_atomic(store, empty_mlflow_store())
            self.client = MlflowClient(uri)
            found = self.client.get_experiment_by_name(name)
            self.experiment = found.experiment_id if found else self.client.create_experiment(name, artifacts)
        except (MlflowException, OSError) as e:
            raise UserError(f"--track mlflow: cannot use the tracking store {uri} ({first_line(e)})") from None

    def log(self, run: RunResult) -> None:
        metric, param, tag = self.entities
        try:
            created = self.client.create_run(self.experiment, run_name=run.run_dir.name, tags=tags(run))
            run_id = created.info.run_id
            params = [param(k, str(v)) for k, v in flat_values(run.config).items()]
            now = created.info.start_time
            metrics = [metric("train_loss", loss, now, epoch) for epoch, loss in losses(run)]
            metrics += [metric(k, v, now, run.config.train.epochs) for k, v in final_metrics(run).items()]
            for start in range(0, max(len(params), len(metrics)), 100):  # MLflow takes 100 params per batch
                self.client.log_batch(run_id, metrics=metrics[start:start + 100], params=params[start:start + 100])
            if run.error:
                self.client.set_tag(run_id, "error", run.error[:5000])
            self.client.log_artifacts(run_id, str(run.run_dir))
            self.client.set_terminated(run_id, "FAILED" if run.status == Status.FAILED else "FINISHED")
        except self.errors as e:
            raise UserError(f"--track mlflow: cannot log {run.run_dir.name} ({first_line(e)}); the run itself is "
                            "saved") from None


@TRACKERS.register("tensorboard")
class TensorBoardTracker:
    """TensorBoard: <out>/tensorboard/<run>/, training loss per epoch, final metrics and the config as text."""

    def __init__(self, out: Path, verbose: bool = False) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--track tensorboard needs TensorBoard: pip install 'ambig-bench[tensorboard]'") from None
        quiet(verbose)
        self.writer_type, self.root = SummaryWriter, out / "tensorboard"
        self.where = f"TensorBoard {self.root}"

    def log(self, run: RunResult) -> None:
        if run.status == Status.FAILED:
            return  # no curve to show; the run's FAILED file says why
        log_dir = self.root / run.run_dir.name
        for old in log_dir.glob("events.out.tfevents.*"):  # retrained (--force): the old curve is obsolete
            old.unlink()
        writer = self.writer_type(log_dir=str(log_dir))
        try:
            for epoch, loss in losses(run):
                writer.add_scalar("train/loss", loss, epoch)
            for k, v in final_metrics(run).items():
                writer.add_scalar(f"final/{k}", v, run.config.train.epochs)
            config = json.dumps({**tags(run), **flat_values(run.config)}, indent=1, default=str)
            writer.add_text("config", f"```\n{config}\n```")
        finally:
            writer.close()


def empty_mlflow_store() -> bytes:
    """A new SQLite tracking store as MLflow's own migrations build it. Building one runs some 70 schema
    migrations (seconds); the result depends only on the MLflow and SQLAlchemy versions, so it is built once into
    the cache and copied for each new results directory."""
    import mlflow
    import sqlalchemy
    from mlflow import MlflowClient

    def build() -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            MlflowClient(f"sqlite:///{Path(tmp) / 'mlflow.db'}").search_experiments()  # creates the tables
            return (Path(tmp) / "mlflow.db").read_bytes()

    return cache.cached(cache.file("mlflow-store", [mlflow.__version__, sqlalchemy.__version__]), BYTES, build)


BYTES: cache.Format[bytes] = cache.Format(Path.read_bytes, lambda f, data: f.write(data), ())
TRACKER_LOGGERS = ("mlflow", "alembic", "tensorboard")  # the libraries' own loggers (INFO: database creation...)


def quiet(verbose: bool) -> None:
    """The tracking libraries' own log lines at warning level, unless `verbose` (-v)."""
    for name in TRACKER_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def parse_track(kinds: str | list[str] | None) -> list[str]:
    """`"mlflow,tensorboard"` (or a list) -> checked names; "" or None -> none."""
    names = kinds if isinstance(kinds, list) else (kinds or "").split(",")
    names = [n.strip() for n in names if n.strip()]
    for n in names:
        TRACKERS.get(n)
    return list(dict.fromkeys(names))


def open_trackers(kinds: str | list[str] | None, out: str | Path, verbose: bool = False) -> list[Tracker]:
    """The trackers named by --track (a comma list of mlflow, tensorboard): a missing extra or an unusable store
    fails here, before any run trains. Their libraries log at warning level unless `verbose`."""
    return [TRACKERS.get(name)(Path(out), verbose) for name in parse_track(kinds)]


class Tracked:
    """A Reporter that passes everything on to `reporter` (may be None) and logs each run saved now to the
    trackers: a reused run (status reused) or one another process is training (busy) is not logged. Logging
    happens on one background thread, while the next runs train; `finish` waits for it."""

    def __init__(self, reporter: Reporter | None, trackers: list[Tracker]) -> None:
        self.reporter, self.trackers = reporter, trackers
        self.logging = ThreadPoolExecutor(1, thread_name_prefix="tracking")  # one at a time: runs log in order
        self.pending: list[Future] = []

    def start_run(self, name: str, epochs: int) -> None:
        if self.reporter:
            self.reporter.start_run(name, epochs)

    def epoch(self, name: str, epoch: int, loss: float) -> None:
        if self.reporter:
            self.reporter.epoch(name, epoch, loss)

    def end_run(self, result: RunResult) -> None:
        if result.status in (Status.DONE, Status.FAILED):
            self.pending.append(self.logging.submit(self.log, result))
        if self.reporter:
            self.reporter.end_run(result)

    def log(self, result: RunResult) -> None:
        for tracker in self.trackers:
            tracker.log(result)

    def finish(self) -> None:
        """Wait until every run is logged; a tracker's error (a UserError) is raised here."""
        self.logging.shutdown(wait=True)
        for done in self.pending:
            done.result()


def tracked(reporter: Reporter | None, trackers: list[Tracker]) -> Reporter | None:
    """`reporter`, plus logging to the trackers when there are any."""
    return Tracked(reporter, trackers) if trackers else reporter
