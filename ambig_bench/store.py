"""The run store: the one place that names, locks, stages and writes run directories.

    OUT/runs/<strategy>-seed<seed>-<experiment key>/
        config.json  data.json  env.json  history.csv  metrics.json  predictions.csv
        model.safetensors  model.json  DONE          (FAILED instead of the rest when training broke)

Nothing is ever half-written where it can be read back: a run is assembled in `runs/.tmp-<name>-<random>/`
and renamed into place whole, so a run counts as finished exactly when its directory holds DONE. A process
trains a run only while holding the run's lock (`OUT/.locks/`), so two invocations never clobber each
other, and leftovers of a killed process are removed when the run is next claimed. Every executor
(sequential, batched, process pool, Ray) goes through `claim` and `save`.

>>> store = RunStore("results/demo")
>>> claim = store.claim(cfg, force=False, wait=True)  # doctest: +SKIP
>>> result = claim if isinstance(claim, RunResult) else store.save(claim, record)  # doctest: +SKIP
"""

from __future__ import annotations

import enum
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from safetensors.torch import save

from ambig_bench.config import RunConfig
from ambig_bench.io import fsync_dir, read_json, write_atomic, write_csv, write_json
from ambig_bench.keys import data_version, run_name
from ambig_bench.locks import RunLock

TMP_PREFIX = ".tmp-"  # .tmp-<run name>-<random>: a run being assembled
OLD_PREFIX = ".old-"  # .old-<run name>-<random>: a failed or --force'd run moved aside to be replaced


class Status(enum.StrEnum):
    DONE = "done"  # trained now
    REUSED = "reused"  # finished earlier
    FAILED = "failed"  # training broke (non-finite loss, out of memory): FAILED holds why
    BUSY = "busy"  # another process is training it; nothing was written (only when not waiting)


@dataclass
class RunResult:
    config: RunConfig
    run_dir: Path
    status: Status
    metrics: dict = field(default_factory=dict)
    error: str = ""

    @property
    def files(self) -> dict[str, Path]:
        """The run's files by name (config.json, predictions.csv, model.safetensors, ...); none while busy."""
        return {p.name: p for p in sorted(self.run_dir.glob("*")) if p.is_file()} if self.run_dir.is_dir() else {}


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


@dataclass
class Claim:
    """A run this process may train: its lock is held until `save` or `release`."""

    config: RunConfig
    run_dir: Path
    lock: RunLock

    def release(self) -> None:
        self.lock.release()


class RunStore:
    """Run directories under `out/runs`, locks under `out/.locks`."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)

    def run_dir(self, cfg: RunConfig) -> Path:
        return self.out / "runs" / run_name(cfg)

    def finished(self, cfg: RunConfig) -> RunResult | None:
        """The result of a finished run, else None. A directory with DONE is complete: it arrived whole."""
        run_dir = self.run_dir(cfg)
        if not (run_dir / "DONE").exists():
            return None
        try:
            return RunResult(cfg, run_dir, Status.REUSED, read_json(run_dir / "metrics.json"))
        except FileNotFoundError:  # moved aside this instant by a --force rerun in another process
            return None

    def claim(self, cfg: RunConfig, force: bool, wait: bool) -> Claim | RunResult:
        """The run to train, with its lock held; or the result of one that needs no training (reused or busy)."""
        if not force and (done := self.finished(cfg)):
            return done
        run_dir = self.run_dir(cfg)
        lock = RunLock(self.out / ".locks" / f"{run_dir.name}.lock")
        if not lock.acquire(wait):
            return RunResult(cfg, run_dir, Status.BUSY)
        # Holding the lock, nobody else is assembling this run: any temporary copy is a killed process's.
        for prefix in (TMP_PREFIX, OLD_PREFIX):
            for leftover in run_dir.parent.glob(f"{prefix}{run_dir.name}-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        if not force and (done := self.finished(cfg)):  # finished while we waited
            lock.release()
            return done
        return Claim(cfg, run_dir, lock)

    def save(self, claim: Claim, outcome: RunRecord | str) -> RunResult:
        """Write a trained run (or, given a string, a failed one) and release its lock."""
        try:
            with self.staged(claim.run_dir) as tmp:
                write_json(tmp / "config.json", claim.config.to_dict() | data_version(claim.config))
                if isinstance(outcome, str):
                    write_json(tmp / "FAILED", {"error": outcome})
                    result = RunResult(claim.config, claim.run_dir, Status.FAILED, error=outcome)
                else:
                    self.write_record(tmp, outcome)
                    result = RunResult(claim.config, claim.run_dir, Status.DONE, outcome.metrics)
        finally:
            claim.release()
        return result

    @staticmethod
    def write_record(tmp: Path, record: RunRecord) -> None:
        write_json(tmp / "data.json", record.data)
        write_json(tmp / "env.json", record.env)
        write_csv(tmp / "history.csv", pd.DataFrame(record.history))
        write_csv(tmp / "predictions.csv", record.predictions)
        write_atomic(tmp / "model.safetensors", save(record.weights, metadata={"format": record.weights_format}))
        write_json(tmp / "model.json", record.model_meta)
        write_json(tmp / "metrics.json", record.metrics)
        write_atomic(tmp / "DONE", b"")

    @contextmanager
    def staged(self, run_dir: Path) -> Iterator[Path]:
        """A fresh private directory that replaces run_dir when the block ends normally, removed otherwise."""
        tmp = run_dir.parent / f"{TMP_PREFIX}{run_dir.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
            replace_dir(tmp, run_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: Path, run_dir: Path) -> None:
    """Rename a complete run directory into place; an older one (failed, or --force) is first moved aside,
    so at every instant run_dir is either absent or complete."""
    if run_dir.exists():
        old = run_dir.parent / f"{OLD_PREFIX}{run_dir.name}-{uuid.uuid4().hex[:8]}"
        os.replace(run_dir, old)
        os.replace(tmp, run_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, run_dir)
    fsync_dir(run_dir.parent)
