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

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from safetensors.torch import load, save

from ambig_bench.errors import UserError
from ambig_bench.io import fsync_dir, read_json, write_atomic, write_csv, write_json

RUNS = "runs"  # OUT/runs/<run name>/
TMP_PREFIX = ".tmp-"  # .tmp-<run name>-<random>: a run being assembled
OLD_PREFIX = ".old-"  # .old-<run name>-<random>: a failed or --force'd run moved aside to be replaced

CONFIG, DATA, ENV, HISTORY = "config.json", "data.json", "env.json", "history.csv"
METRICS, PREDICTIONS, WEIGHTS, MODEL = "metrics.json", "predictions.csv", "model.safetensors", "model.json"
DONE, FAILED = "DONE", "FAILED"


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


class RunDir:
    """One run directory: what it holds, read back; and writing it whole (`write`, `write_failed`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def done(self) -> bool:
        return (self.path / DONE).exists()

    @property
    def failed(self) -> bool:
        return (self.path / FAILED).exists()

    def files(self) -> dict[str, Path]:
        """The run's files by name (config.json, predictions.csv, model.safetensors, ...); none while absent."""
        return {p.name: p for p in sorted(self.path.glob("*")) if p.is_file()} if self.path.is_dir() else {}

    # -- reading -----------------------------------------------------------------------------------------------
    def config(self) -> dict:
        """config.json as written (nested in groups; flat in runs of older versions)."""
        return read_json(self.path / CONFIG)

    def options(self) -> dict:
        """config.json's fields by their flat option names (`flatten_config`)."""
        return flatten_config(self.config())

    def metrics(self) -> dict:
        """metrics.json (FileNotFoundError while a --force rerun elsewhere has moved the run aside)."""
        return read_json(self.path / METRICS)

    def error(self) -> str:
        """Why training broke (FAILED)."""
        return read_json(self.path / FAILED)["error"]

    def data(self) -> dict:
        """data.json: class names, pairs, counts, provenance."""
        return read_json(self.required(DATA))

    def env(self) -> dict:
        """env.json: versions, device, threads."""
        return read_json(self.required(ENV))

    def recorded_source(self) -> str | None:
        """The in-between source the run used, as data.json records it (None where it has no record)."""
        return read_json(self.path / DATA).get("between_source") if (self.path / DATA).exists() else None

    def history(self) -> pd.DataFrame:
        """history.csv, one row per epoch (no rows for a failed run, which has none)."""
        path = self.path / HISTORY
        return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["epoch", "train_loss"])

    def predictions(self) -> tuple[pd.DataFrame, int]:
        """predictions.csv, checked (split, label_a, label_b, pred_set, p_0..p_{K-1}, val rows), and K.

        pred_set stays text ("4|9"; "" for an empty set), so a set like "3" is never read as a number.
        """
        path = self.path / PREDICTIONS
        try:
            frame = pd.read_csv(path, dtype={"pred_set": str})
        except FileNotFoundError:
            raise UserError(f"{path}: missing; a finished run writes it (rerun the run with --force if it was "
                            "written by a different version)") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: unreadable ({e})") from None
        k = sum(c.startswith("p_") for c in frame.columns)
        needed = ["split", "label_a", "label_b", "pred_set"] + [f"p_{i}" for i in range(max(k, 2))]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise UserError(f"{path}: not an ambig-bench predictions file (missing columns {', '.join(missing)})")
        if not (frame.split == "val").any():
            raise UserError(f"{path}: no validation rows to calibrate conformal sets on")
        return frame.assign(pred_set=frame.pred_set.fillna("")), k

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
            write_json(tmp / METRICS, record.metrics)
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
        if self.path.exists():
            old = self.path.parent / f"{OLD_PREFIX}{self.name}-{uuid.uuid4().hex[:8]}"
            os.replace(self.path, old)
            os.replace(tmp, self.path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, self.path)
        fsync_dir(self.path.parent)


def runs_folder(results_dir: str | Path) -> Path:
    return Path(results_dir) / RUNS


def list_runs(results_dir: str | Path) -> list[RunDir]:
    """The finished and failed runs of a results directory, by name; runs being assembled or moved aside
    (`.tmp-`, `.old-`) and anything else that is not a run written whole (no config.json, or neither DONE nor
    FAILED) are left out."""
    folder = runs_folder(results_dir)
    found = [RunDir(p) for p in sorted(folder.glob("*")) if not p.name.startswith(".")]
    return [run for run in found if (run.path / CONFIG).exists() and (run.done or run.failed)]
