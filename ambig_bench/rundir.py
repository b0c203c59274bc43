"""Run directories: the one module that knows what a run directory holds, and the one reader of `runs/`.

    OUT/runs/<strategy>-seed<seed>-<experiment key>/
        config.json  data.json  env.json  history.csv  metrics.json  predictions.csv
        model.safetensors  model.json  DONE          (FAILED instead of the rest when training broke)

Nothing is ever half-written where it can be read back: a run is assembled in `runs/.tmp-<name>-<random>/`
and renamed into place whole, so a run counts as finished exactly when its directory holds DONE. Who may write
a run (its lock) is the run store's business (`store.py`); what is written, and how it is read back, is this
module's.

>>> [run.name for run in list_runs("results/demo")]  # doctest: +SKIP
['extra-class-seed0-1a2b3c4d', 'soft-seed0-1a2b3c4d']
>>> RunDir("results/demo/runs/soft-seed0-1a2b3c4d").metrics()["clear_acc"]  # doctest: +SKIP
0.91
"""

from __future__ import annotations

import io
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from safetensors.torch import load, save

from ambig_bench.errors import UserError
from ambig_bench.io import MAX_TEXT_BYTES, fsync_dir, read_json, read_text, write_atomic, write_csv, write_json
from ambig_bench.schema import (
    check_config,
    check_data,
    check_env,
    check_failed,
    check_metrics,
    check_predictions,
    flatten_config,
)

RUNS = "runs"  # OUT/runs/<run name>/
TMP_PREFIX = ".tmp-"  # .tmp-<run name>-<random>: a run being assembled
OLD_PREFIX = ".old-"  # .old-<run name>-<random>: a failed or --force'd run moved aside to be replaced

CONFIG, DATA, ENV, HISTORY = "config.json", "data.json", "env.json", "history.csv"
METRICS, PREDICTIONS, WEIGHTS, MODEL = "metrics.json", "predictions.csv", "model.safetensors", "model.json"
DONE, FAILED = "DONE", "FAILED"
MAX_PREDICTIONS_BYTES = 1 << 30  # predictions.csv: about 10 million rows of 10 classes

__all__ = ["flatten_config"]  # re-exported: the fields of a config.json by option name


def read_csv(path: Path, limit: int = MAX_TEXT_BYTES, dtype: dict | None = None) -> pd.DataFrame:
    """A CSV file of a run, read with io.read_text's limits (a regular file, never a FIFO); unparsable is one
    line naming the file."""
    try:
        return pd.read_csv(io.StringIO(read_text(path, limit, "CSV file")), dtype=dtype)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise UserError(f"{path}: unreadable CSV ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


@dataclass
class RunRecord:
    """Everything a finished run writes, in memory: the evaluation builds it, the store writes it (a Ray worker
    sends it back to the driver, which writes it)."""

    metrics: dict
    data: dict  # data.json: class names, pairs, counts, provenance
    env: dict  # env.json: versions, device, threads
    history: list[dict]  # history.csv: one row per epoch
    predictions: pd.DataFrame  # predictions.csv: every val and test image
    weights: dict  # model.safetensors: name -> CPU tensor
    model_meta: dict  # model.json: how to rebuild the network and decode its outputs
    weights_format: str  # the safetensors metadata "format" that the checkpoint reader expects

    # Sent to another process (a worker's record back to the driver), the weights travel as safetensors bytes:
    # tensors pickled as they are go through torch's shared-memory sockets under TMPDIR, which fail where its path
    # is longer than a Unix socket allows (107 bytes).
    def __getstate__(self) -> dict:
        return {**self.__dict__, "weights": save(self.weights)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, weights=load(state["weights"]))


class RunDir:
    """One run directory: what it holds, read back; and writing it whole (`write`, `write_failed`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._predictions: tuple[pd.DataFrame, int] | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def done(self) -> bool:
        return (self.path / DONE).exists()

    @property
    def failed(self) -> bool:
        return (self.path / FAILED).exists()

    @property
    def dangling(self) -> bool:
        """A symbolic link that leads nowhere (a loop, or its target gone)."""
        return self.path.is_symlink() and not self.path.exists()

    def check_link(self, force: bool = False) -> None:
        """Refuse a run directory that is a link leading nowhere (it could never be read nor replaced), and, for
        --force, one that is a link at all (replacing the run whole would replace the link, not its target)."""
        if self.dangling:
            raise UserError(f"{self.path}: a symbolic link that leads nowhere (a loop, or its target is gone); "
                            "remove it")
        if force and self.path.is_symlink():
            raise UserError(f"{self.path}: a symbolic link; --force replaces a run directory whole, which would "
                            f"replace the link and not the run it points to ({os.readlink(self.path)}): remove "
                            "the link or copy the run in its place")

    def files(self) -> dict[str, Path]:
        """The run's files by name (config.json, predictions.csv, model.safetensors, ...); none while absent."""
        return {p.name: p for p in sorted(self.path.glob("*")) if p.is_file()} if self.path.is_dir() else {}

    # -- reading: every file checked against its schema (ambig_bench.schema); UserError names file and field --
    def config(self) -> dict:
        """config.json as written (nested in groups; flat in runs of older versions), checked."""
        config = read_json(self.path / CONFIG)
        check_config(config, self.path / CONFIG)
        return config

    def options(self) -> dict:
        """config.json's fields by their flat option names (`schema.flatten_config`), checked."""
        return check_config(read_json(self.path / CONFIG), self.path / CONFIG)

    def metrics(self, bounds: Mapping[str, tuple[float, float]] | None = None, required: tuple[str, ...] = (),
                reserved: tuple[str, ...] = ()) -> dict:
        """metrics.json, checked (`schema.check_metrics`: the metrics of `bounds` within them, the `required` ones
        measured, none of the run's own fields nor `reserved`). A missing file is a UserError."""
        return check_metrics(read_json(self.path / METRICS), self.path / METRICS, bounds, required, reserved)

    def error(self) -> str:
        """Why training broke (FAILED)."""
        return check_failed(read_json(self.path / FAILED), self.path / FAILED)

    def data(self) -> dict:
        """data.json: class names, pairs, counts, provenance."""
        return check_data(read_json(self.required(DATA)), self.path / DATA)

    def env(self) -> dict:
        """env.json: versions, device, threads."""
        return check_env(read_json(self.required(ENV)), self.path / ENV)

    def recorded_source(self) -> str | None:
        """The in-between source the run used, as data.json records it (None where it has no record)."""
        return self.data().get("between_source") if self.path.joinpath(DATA).exists() else None

    def history(self) -> pd.DataFrame:
        """history.csv, one row per epoch (no rows for a failed run, which has none)."""
        path = self.path / HISTORY
        if not path.exists():
            return pd.DataFrame(columns=["epoch", "train_loss"])
        return read_csv(path)

    def predictions(self) -> tuple[pd.DataFrame, int]:
        """predictions.csv, checked (`check_predictions`; against data.json's classes and counts where it has
        them), and K. Read once per RunDir: compare and report look at it several times."""
        if self._predictions is None:
            path = self.path / PREDICTIONS
            if not path.exists() and not path.is_symlink():
                raise UserError(f"{path}: missing; a finished run writes it (rerun the run with --force if it "
                                "was written by a different version)")
            data = self.data() if (self.path / DATA).exists() else {}
            self._predictions = check_predictions(read_csv(path, MAX_PREDICTIONS_BYTES, {"pred_set": str}), path,
                                                  data)
        return self._predictions

    def check_present(self) -> None:
        """Read data.json, env.json and predictions.csv where the run has them: a damaged one is a UserError now,
        not when a report first needs it."""
        for name, read in ((DATA, self.data), (ENV, self.env), (PREDICTIONS, self.predictions)):
            if (self.path / name).exists():
                read()

    @property
    def predictions_file(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def model_file(self) -> Path:
        """model.json: how to rebuild the network and decode its outputs (checkpoint.read_model_json checks it)."""
        return self.path / MODEL

    @property
    def weights_file(self) -> Path:
        """model.safetensors (checkpoint.read_weights checks it)."""
        return self.path / WEIGHTS

    def required(self, name: str) -> Path:
        path = self.path / name
        if not path.is_file():
            raise UserError(f"{path}: missing from a finished run (written by a different version?); rerun it with "
                            f"--force or remove its directory")
        return path

    # -- writing -----------------------------------------------------------------------------------------------
    def write(self, config: dict, record: RunRecord) -> None:
        """Write a finished run whole: it appears with every file and DONE, or not at all."""
        with self.staged() as tmp:
            write_json(tmp / CONFIG, config)
            write_json(tmp / DATA, record.data)
            write_json(tmp / ENV, record.env)
            write_csv(tmp / HISTORY, pd.DataFrame(record.history))
            write_csv(tmp / PREDICTIONS, record.predictions)
            write_atomic(tmp / WEIGHTS, save(record.weights, metadata={"format": record.weights_format}))
            write_json(tmp / MODEL, record.model_meta)
            # A metric that could not be measured (no human votes: human_ce) is null; JSON has no NaN.
            write_json(tmp / METRICS, {k: None if isinstance(v, float) and not math.isfinite(v) else v
                                       for k, v in record.metrics.items()})
            write_atomic(tmp / DONE, b"")

    def write_failed(self, config: dict, error: str) -> None:
        """Write a run whose training broke: config.json and FAILED (why)."""
        with self.staged() as tmp:
            write_json(tmp / CONFIG, config)
            write_json(tmp / FAILED, {"error": error})

    def remove_leftovers(self) -> None:
        """Remove this run's temporary copies; only safe while holding the run's lock, when they are a killed
        process's."""
        for prefix in (TMP_PREFIX, OLD_PREFIX):
            for leftover in self.path.parent.glob(f"{prefix}{self.name}-*"):
                shutil.rmtree(leftover, ignore_errors=True)

    @contextmanager
    def staged(self) -> Iterator[Path]:
        """A fresh private directory that replaces the run when the block ends normally, removed otherwise."""
        tmp = self.path.parent / f"{TMP_PREFIX}{self.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
            self.replace_with(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def replace_with(self, tmp: Path) -> None:
        """Rename a complete run directory into place; an older one (failed, or --force) is first moved aside,
        so at every instant the run is either absent or complete."""
        if self.path.exists() or self.path.is_symlink():
            old = self.path.parent / f"{OLD_PREFIX}{self.name}-{uuid.uuid4().hex[:8]}"
            os.replace(self.path, old)
            os.replace(tmp, self.path)
            if old.is_symlink():  # a run directory that was a link: the link goes, what it pointed to stays
                old.unlink()
            else:
                shutil.rmtree(old)
        else:
            os.replace(tmp, self.path)
        fsync_dir(self.path.parent)


def runs_folder(results_dir: str | Path) -> Path:
    return Path(results_dir) / RUNS


def list_runs(results_dir: str | Path) -> list[RunDir]:
    """The finished and failed runs of a results directory, by name; runs being assembled or moved aside
    (`.tmp-`, `.old-`) and anything else that is not a run written whole (no config.json, or neither DONE nor
    FAILED) are left out. A link that leads nowhere is listed, so that its reader says so (`check_link`)."""
    folder = runs_folder(results_dir)
    found = [RunDir(p) for p in sorted(folder.glob("*")) if not p.name.startswith(".")]
    return [run for run in found if run.dangling or (run.path / CONFIG).exists() and (run.done or run.failed)]
