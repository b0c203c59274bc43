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
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ambig_bench.config import RunConfig
from ambig_bench.datasets.folder import read_labels_csv
from ambig_bench.errors import UserError
from ambig_bench.imageio import fingerprint, folder_key
from ambig_bench.locks import RunLock
from ambig_bench.options import experiment, run_label
from ambig_bench.rundir import RunDir, RunRecord, runs_folder


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
        return RunDir(self.run_dir).files()


def data_fingerprint(cfg: RunConfig) -> dict[str, str]:
    """What the user's data files hold: the labels CSV's bytes, and the images under --data-dir (by default the
    CSV's folder) by path, size and modification time. Relabelled or edited data make a new experiment, whose
    runs sit next to the old ones instead of being mistaken for them."""
    labels = cfg.data.labels
    root = cfg.data.data_dir or (str(Path(labels).expanduser().parent) if labels else None)
    if labels and cfg.data.dataset == "folder":
        # The CSV says which images are used: others under the folder (results, figures) are not the data.
        return {"labels": fingerprint(labels), "data_dir": listed_images_key(root, labels, fingerprint(labels))}
    given = {"data_dir": root, "labels": labels}
    return {name: fingerprint(path) for name, path in given.items() if path}


@functools.lru_cache(maxsize=8)
def listed_images_key(root: str, labels: str, labels_key: str) -> str:
    """The images a labels CSV lists, by path, size and modification time ("" when the CSV or an image cannot be
    read: the loader then says which, in one line). Keyed on the CSV's own fingerprint, so an edit re-reads it."""
    try:
        files = read_labels_csv(Path(labels).expanduser()).files
        return folder_key(Path(root).expanduser(), sorted(files))
    except (UserError, OSError):
        return ""


def weights_fingerprint(cfg: RunConfig) -> str:
    """The starting weights' bytes (a file, or a run directory's model.safetensors): retrained or replaced weights
    make a new experiment."""
    path = Path(cfg.model.weights).expanduser()
    return fingerprint(str(path / "model.safetensors" if path.is_dir() else path))


def data_version(cfg: RunConfig) -> dict[str, str]:
    """config.json's record of the data files' fingerprint ({} for built-in datasets): compare tells runs on
    relabelled or edited data apart by it."""
    files = data_fingerprint(cfg)
    return {"data_version": hashlib.sha1(json.dumps(files, sort_keys=True).encode()).hexdigest()[:8]} if files else {}


def experiment_key(cfg: RunConfig) -> str:
    """Hash of what makes runs comparable (`options.experiment`) and of the data files: one experiment."""
    content = experiment(cfg)
    if files := data_fingerprint(cfg):
        content["files"] = files
    if cfg.model.weights:
        content["weights_file"] = weights_fingerprint(cfg)
    return hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]


def run_name(cfg: RunConfig) -> str:
    return f"{run_label(cfg)}-seed{cfg.seed}-{experiment_key(cfg)}"


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
