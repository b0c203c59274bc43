"""Where the runs of a grid are trained: here one after another, in N local processes, or as Ray tasks.

Every executor runs the one pipeline (`runner.run_pipeline`: plan -> claim -> prepare -> train -> evaluate ->
save) and decides only where a batch of claimed runs is prepared, trained and evaluated (a `runner.Placement`).
The driver claims and writes every run through the one run store (`store.py`); worker processes and Ray tasks
send each run's record back. So a run's directory is the same whatever trained it, and resuming, locking and
`compare` work unchanged. Runs that another invocation is training are skipped first and waited for at the end.

$ ambig-bench run --strategy all --seeds 5 --jobs 2                          # two local processes
$ ambig-bench run --strategy all --seeds 5 --executor ray                    # a local Ray instance
$ ambig-bench run --strategy all --seeds 5 --executor ray --ray-address auto # an existing cluster

>>> from ambig_bench.executors import grid, open_executor, preflight, run_grid
>>> with open_executor("local", jobs=2) as executor:  # doctest: +SKIP
...     preflight(grid(exp), executor)
...     results = run_grid(exp, executor=executor)
"""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import multiprocessing
import multiprocessing.pool
import multiprocessing.queues
import os
import queue
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ambig_bench.config import ExperimentConfig, RunConfig
from ambig_bench.datasets import pairs_of
from ambig_bench.datasets.base import untested_folds
from ambig_bench.datasets.confusable import wants_auto_pairs
from ambig_bench.errors import UserError, stop_on_sigterm
from ambig_bench.imageio import fingerprint
from ambig_bench.keys import listed_images_key
from ambig_bench.prepare import forget_data, prepare_data, raw_of, untrained
from ambig_bench.runner import Here, Outcome, Reporter, run_pipeline, train_claimed
from ambig_bench.store import Claim, RunResult, RunStore, Status
from ambig_bench.train import pick_device, use_augmentation

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    def check_device(self, device: str) -> None:
        """UserError when runs could not get `device` (--device) where this executor trains them."""

    def run(self, runs: list[RunConfig], out: str, force: bool, reporter: Reporter | None,
            wait: bool) -> list[RunResult]:
        """One result per run, in order; with wait=False, runs another process holds come back "busy"."""


def sendable(claims: list[Claim]) -> list[Claim]:
    """The claims as another process receives them: without their locks, which the driver holds until it saves."""
    return [dataclasses.replace(claim, lock=None) for claim in claims]


class Sequential:
    """One run after another in this process (the default); runs of one shape as one wide network where their
    --batch-runs allows it (decided run by run: a sweep can vary the model, --freeze or --batch-runs)."""

    def check_device(self, device: str) -> None:
        pick_device(device)

    def run(self, runs: list[RunConfig], out: str, force: bool, reporter: Reporter | None,
            wait: bool) -> list[RunResult]:
        return run_pipeline(runs, out, force, reporter, wait, Here(reporter, batching=True))


def cpu_count() -> int:
    """CPUs this process may use (its affinity where the OS has one, e.g. Linux; all of them elsewhere)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Events:
    """A worker's Reporter: sends each run's start and epochs to the driver, which shows them."""

    def __init__(self, events: multiprocessing.queues.SimpleQueue) -> None:
        self.events = events

    def start_run(self, name: str, epochs: int) -> None:
        self.events.put(("start_run", name, epochs))

    def epoch(self, name: str, epoch: int, loss: float) -> None:
        self.events.put(("epoch", name, epoch, loss))

    def end_run(self, result: RunResult) -> None:  # the driver saves, and reports, every run
        pass


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WORKER: dict[str, object] = {}  # in a worker process: its parent's pid and its Events


def die_with(parent: int) -> None:
    """End this process when `parent` (the driver) is gone, so a kill -9 of the driver leaves no worker training,
    printing or handing back runs. Linux: the kernel sends SIGKILL (prctl; the standard library has no wrapper,
    so ctypes). Elsewhere: a thread polls the parent's pid."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        def watch() -> None:
            while True:
                time.sleep(0.2)
                orphaned_exit(parent)

        threading.Thread(target=watch, daemon=True).start()
    orphaned_exit(parent)  # the parent died before prctl took effect


def orphaned_exit(parent: int) -> None:
    """Exit at once, silently, when the driver is gone (this process was re-parented)."""
    if os.getppid() != parent:
        os._exit(0)


def _start_worker(threads: int, parent: int, events: multiprocessing.queues.SimpleQueue) -> None:
    die_with(parent)
    torch.set_num_threads(threads)
    # Ctrl-C is the parent's to handle: it stops the workers itself, without a traceback from each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    WORKER.update(parent=parent, events=Events(events))


def _train_in_worker(claims: list[Claim]) -> list[Outcome]:
    outcomes = train_claimed(claims, WORKER["events"])
    orphaned_exit(WORKER["parent"])  # nobody to hand the runs to
    return outcomes


class InProcesses:
    """Each claimed run trained in one of a pool's worker processes, `slots` at a time."""

    def __init__(self, pool: multiprocessing.pool.Pool, slots: int, events: multiprocessing.queues.SimpleQueue,
                 reporter: Reporter | None) -> None:
        self.pool, self.slots, self.events, self.reporter = pool, slots, events, reporter
        self.running: dict[int, list[Claim]] = {}
        self.finished: queue.Queue[tuple[int, list[Outcome] | BaseException]] = queue.Queue()
        self.tokens = itertools.count()

    def together(self, cfg: RunConfig) -> bool:
        return False

    def start(self, claims: list[Claim]) -> None:
        token = next(self.tokens)
        self.running[token] = claims
        done = lambda outcome: self.finished.put((token, outcome))  # noqa: E731
        self.pool.apply_async(_train_in_worker, (sendable(claims),), callback=done, error_callback=done)

    def busy(self) -> int:
        return len(self.running)

    def next_done(self) -> list[tuple[Claim, Outcome]]:
        while True:
            self.relay()
            try:
                token, outcomes = self.finished.get(timeout=0.1)
                break
            except queue.Empty:
                continue
        self.relay()  # a worker puts its events (synchronously) before it hands back its runs
        claims = self.running.pop(token)
        if isinstance(outcomes, BaseException):  # e.g. a UserError on the worker: the driver's to report
            raise outcomes
        return list(zip(claims, outcomes, strict=True))

    def relay(self) -> None:
        """The workers' progress events so far, passed to the reporter."""
        while not self.events.empty():
            kind, *args = self.events.get()
            if self.reporter:
                getattr(self.reporter, kind)(*args)

    def stop(self) -> None:
        self.running.clear()  # the executor terminates the pool


@dataclass
class ProcessPool:
    """`jobs` runs at a time in local worker processes; the reporter hears of each run as it finishes."""

    jobs: int

    def check_device(self, device: str) -> None:
        pick_device(device)

    def run(self, runs: list[RunConfig], out: str, force: bool, reporter: Reporter | None,
            wait: bool) -> list[RunResult]:
        # Share the cores: N processes each using every core would thrash. Results are bit-identical to a
        # sequential run with the same torch thread count, which env.json records.
        threads = max(1, cpu_count() // self.jobs)
        # Forking a process whose torch thread pools are running can deadlock; spawn starts clean. Each worker
        # loads the data itself (the decoded images come from the disk cache) and keeps them for its next run.
        slots = min(self.jobs, len(runs))
        context = multiprocessing.get_context("spawn")
        quiet_resource_tracker()
        events = context.SimpleQueue()  # written whole by each put, so a run's events arrive before its outcome
        pool = context.Pool(slots, _start_worker, (threads, os.getpid(), events))
        try:
            results = run_pipeline(runs, out, force, reporter, wait, InProcesses(pool, slots, events, reporter))
            pool.close()
        except BaseException:
            # Ctrl-C or an error: stop every worker now. A run cut short leaves only its temporary directory,
            # removed when the run is next claimed, exactly as after kill -9.
            pool.terminate()
            raise
        finally:
            pool.join()
        return results


def quiet_resource_tracker() -> None:
    """After a kill -9 of this process, multiprocessing's resource tracker removes the pool's semaphores and warns
    about each "leaked" one; that cleanup is expected, so its warnings are filtered (the tracker, started with the
    first semaphore, takes this process's -W options)."""
    rule = "ignore:resource_tracker:UserWarning"
    if rule not in sys.warnoptions:
        sys.warnoptions.append(rule)


@dataclass
class Refused:
    """A UserError raised on a worker (e.g. the data are missing on that node), re-raised on the driver."""

    message: str


def train_remote(claims: list[Claim]) -> list[Outcome] | Refused:
    """On a Ray worker: train runs the driver claimed (and holds the locks of); their outcomes for the driver to
    write."""
    try:
        return train_claimed(claims)
    except UserError as e:
        return Refused(str(e))


class OnRay:
    """Each claimed run a Ray task, `slots` at a time."""

    def __init__(self, ray, task_resources, slots: int) -> None:
        self.ray, self.task_resources, self.slots = ray, task_resources, slots
        self.remote = ray.remote(train_remote)
        self.running: dict[object, list[Claim]] = {}

    def together(self, cfg: RunConfig) -> bool:
        return False

    def start(self, claims: list[Claim]) -> None:
        task = self.remote.options(**self.task_resources(claims[0].config)).remote(sendable(claims))
        self.running[task] = claims

    def busy(self) -> int:
        return len(self.running)

    def next_done(self) -> list[tuple[Claim, Outcome]]:
        [ref], _ = self.ray.wait(list(self.running), num_returns=1)
        outcomes = self.ray.get(ref)  # a task that raised leaves its claims unsaved: the pipeline releases them
        claims = self.running.pop(ref)
        if isinstance(outcomes, Refused):
            raise UserError(outcomes.message)
        return list(zip(claims, outcomes, strict=True))

    def stop(self) -> None:
        for ref in self.running:
            self.ray.cancel(ref, force=True)
        self.running.clear()


class RayExecutor:
    """Each run is a Ray task asking for one GPU where the cluster has GPUs, else one CPU."""

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'ambig-bench[ray]'") from None
        self.ray = ray
        check_reachable(address)
        self.started = not ray.is_initialized()  # a caller's own ray.init() is used and left running
        if self.started:
            try:
                ray.init(address=address or None, include_dashboard=False, logging_level="WARNING",
                         **ray_temp_dir(address))
            except (ConnectionError, RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"--ray-address {address or '(local)'}: cannot start or reach Ray ({first})") \
                    from None
            stop_on_sigterm()  # ray.init replaces our SIGTERM handler with one that aborts, leaving tasks running
        self.resources = ray.cluster_resources()

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()

    def check_device(self, device: str) -> None:
        if device.startswith("cuda:"):
            raise UserError(f"--device {device}: with --executor ray, Ray picks the GPU; use --device cuda")
        if device == "cuda" and not self.resources.get("GPU"):
            raise UserError("--device cuda: the Ray cluster has no GPU")

    def task_resources(self, cfg: RunConfig) -> dict[str, float]:
        if cfg.runtime.device != "cpu" and self.resources.get("GPU"):
            return {"num_gpus": 1, "num_cpus": 1}
        return {"num_cpus": 1}

    def run(self, runs: list[RunConfig], out: str, force: bool, reporter: Reporter | None,
            wait: bool) -> list[RunResult]:
        # Claim (lock) only as many runs as can train at once, so another invocation can take the rest.
        slots = max(1, int(self.resources.get("GPU" if "num_gpus" in self.task_resources(runs[0]) else "CPU", 1)))
        return run_pipeline(runs, out, force, reporter, wait, OnRay(self.ray, self.task_resources, slots))


RAY_SOCKET_ROOM = 60  # characters Ray appends to its temp dir for a socket path (session name, sockets/plasma_store)


def ray_temp_dir(address: str) -> dict[str, str]:
    """A local Ray's sockets live under TMPDIR/ray, and a Unix socket path has at most 107 bytes: where TMPDIR is
    long, start Ray under /tmp/ray instead (a cluster keeps its own)."""
    if address or len(tempfile.gettempdir()) + RAY_SOCKET_ROOM <= 107:
        return {}
    return {"_temp_dir": "/tmp/ray"}


def check_reachable(address: str) -> None:
    """Ray retries an address nobody answers on for minutes; refuse it in seconds instead."""
    if address in ("", "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise UserError(f"--ray-address {address}: nothing answers at {host}:{port} ({e.strerror or e})") from None


@contextmanager
def open_executor(kind: str = "local", jobs: int = 1, ray_address: str = "") -> Iterator[Executor]:
    """The executor for --executor/--jobs/--ray-address; a Ray instance it started is shut down on exit."""
    if kind not in EXECUTORS:
        raise UserError(f"--executor must be {' or '.join(EXECUTORS)}, got {kind!r}")
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    if kind == "local":
        if ray_address:
            raise UserError("--ray-address needs --executor ray")
        yield Sequential() if jobs == 1 else ProcessPool(jobs)
        return
    if jobs != 1:
        raise UserError("--jobs is for --executor local; Ray runs as many runs at once as the cluster has "
                        "GPUs (or CPUs)")
    executor = RayExecutor(ray_address)
    try:
        yield executor
    finally:
        executor.close()


def preflight(runs: list[RunConfig], executor: Executor | None = None) -> list[str]:
    """Prepare without training, refusing bad input before any file is written: every run's options, the device,
    the first run's data in full and its starting weights, and for every other data setting of the grid (sweep
    points) its files, class pairs and image size. The data loaded here stay in memory for the runs
    (`prepare.prepare_data`). The first run's data notes for the user (e.g. which in-between source `auto` chose),
    and a warning where the seeds leave some of the --folds untested."""
    fingerprint.cache_clear()  # the data files as they are now key this command's runs
    listed_images_key.cache_clear()
    forget_data()
    for cfg in runs:
        cfg.validate()
    (executor or Sequential()).check_device(runs[0].runtime.device)
    data = prepare_data(runs[0])
    untrained(runs[0], data, torch.device("cpu"))  # starting weights that are missing or do not fit fail here
    loads: dict[str, list[RunConfig]] = {}  # runs by what their loader reads (all data options but the pairs)
    for cfg in runs:
        loads.setdefault(repr({**dataclasses.asdict(cfg.data), "pairs": None}), []).append(cfg)
    for group in loads.values():
        raw = raw_of(group[0])  # the first run's images are already in memory
        for cfg in group:
            if not wants_auto_pairs(cfg):  # found from the data when the run prepares it
                pairs_of(raw, cfg)
            use_augmentation(cfg, raw.images)  # a shift as large as the images is refused here
    return [*data.info.get("notes", []), *untested_folds(runs)]


def run_all(runs: list[RunConfig], out: str | Path, force: bool = False, reporter: Reporter | None = None,
            executor: Executor | None = None) -> list[RunResult]:
    """Train (or reuse) every run into `out`: first those no other process is training, then the others."""
    out = str(out)
    executor = executor or Sequential()
    store = RunStore(out)
    results: list[RunResult | None] = [None] * len(runs)
    for i, cfg in enumerate(runs):
        cfg.validate()
        # Finished runs are reused here, so resuming a finished grid starts no worker process or Ray task.
        if not force and (done := store.finished(cfg)):
            results[i] = done
            if reporter:
                reporter.end_run(done)
    todo = [i for i, r in enumerate(results) if r is None]
    for wait in (False, True):
        # First pass: skip runs another invocation is training; second: wait for each, then reuse it
        # (or train it, if that process died).
        if todo:
            for i, result in zip(todo, executor.run([runs[i] for i in todo], out, force, reporter, wait),
                                 strict=True):
                results[i] = result
        todo = [i for i, r in enumerate(results) if r.status == Status.BUSY]
    return results


def grid(exp: ExperimentConfig) -> list[RunConfig]:
    """Seeds outer, strategies inner: the data of a seed are prepared once and shared."""
    return [dataclasses.replace(exp.run, strategy=s, seed=exp.run.seed + i)
            for i in range(exp.seeds) for s in exp.strategies]


def run_grid(exp: ExperimentConfig, reporter: Reporter | None = None, executor: Executor | None = None
             ) -> list[RunResult]:
    """Every run of the grid, in this process or through `executor` (--jobs N, Ray)."""
    return run_all(grid(exp), exp.out, exp.force, reporter, executor)
