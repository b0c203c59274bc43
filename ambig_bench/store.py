"""The run store: names the run of a config, locks it, and has it written (ambig_bench.rundir writes it whole).

A process trains a run only while holding the run's lock (`OUT/.locks/`), so two invocations never clobber each
other, and leftovers of a killed process are removed when the run is next claimed. Every executor (sequential,
batched, process pool, Ray) goes through `claim` and `save`.

>>> store = RunStore("results/demo")
>>> claim = store.claim(cfg, force=False, wait=True)  # doctest: +SKIP
>>> result = claim if isinstance(claim, RunResult) else store.save(claim, record)  # doctest: +SKIP
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from ambig_bench.config import RunConfig
from ambig_bench.errors import UserError
from ambig_bench.keys import data_version, run_name
from ambig_bench.locks import RunLock
from ambig_bench.rundir import RunDir, RunRecord, runs_folder


class Status(enum.StrEnum):
    DONE = "done"  # trained now
    REUSED = "reused"  # finished earlier
    FAILED = "failed"  # training broke (non-finite loss, out of memory): FAILED holds why
    BUSY = "busy"  # another process is training it; nothing was written (only when not waiting)

    def __repr__(self) -> str:  # a word in a notebook's echo and in a RunResult's repr, as str() gives
        return repr(self.value)


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
        return RunDir(self.run_dir).files()


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
        return runs_folder(self.out) / run_name(cfg)

    def finished(self, cfg: RunConfig) -> RunResult | None:
        """The result of a finished run, else None. A directory with DONE is complete: it arrived whole."""
        run = RunDir(self.run_dir(cfg))
        if not run.done:
            return None
        try:
            return RunResult(cfg, run.path, Status.REUSED, run.metrics())
        except UserError:
            if not run.done:  # moved aside this instant by a --force rerun in another process
                return None
            raise

    def claim(self, cfg: RunConfig, force: bool, wait: bool) -> Claim | RunResult:
        """The run to train, with its lock held; or the result of one that needs no training (reused or busy)."""
        run_dir = self.run_dir(cfg)
        RunDir(run_dir).check_link(force)  # before any training: a link it could never replace is refused
        if not force and (done := self.finished(cfg)):
            return done
        lock = RunLock(self.out / ".locks" / f"{run_dir.name}.lock")
        if not lock.acquire(wait):
            return RunResult(cfg, run_dir, Status.BUSY)
        # Holding the lock, nobody else is assembling this run: any temporary copy is a killed process's.
        RunDir(run_dir).remove_leftovers()
        if not force and (done := self.finished(cfg)):  # finished while we waited
            lock.release()
            return done
        return Claim(cfg, run_dir, lock)

    def save(self, claim: Claim, outcome: RunRecord | str) -> RunResult:
        """Write a trained run (or, given a string, a failed one) and release its lock."""
        run = RunDir(claim.run_dir)
        try:
            config = claim.config.to_dict() | data_version(claim.config)
            if isinstance(outcome, str):
                run.write_failed(config, outcome)
                return RunResult(claim.config, claim.run_dir, Status.FAILED, error=outcome)
            run.write(config, outcome)
            return RunResult(claim.config, claim.run_dir, Status.DONE, outcome.metrics)
        finally:
            claim.release()
