"""The run pipeline: plan -> claim -> prepare -> train(group) -> evaluate -> save, for every run of a grid.

One sequence for every executor: `run_pipeline` plans which runs are claimed together, claims them in the run
store, hands the claims to a `Placement` (where they are prepared, trained and evaluated: here, in local
worker processes or as Ray tasks; `executors.py`) and saves each outcome the placement gives back. A single
run is a group of one; runs of one shape may train together as one wide network (`batched.py`) where the
placement allows it. Rerunning the same command reuses every finished run and trains the rest (the store's
claim and DONE marker).

$ ambig-bench run --strategy soft,hard --seeds 3 --out results/demo    # Ctrl-C, then the same again

>>> from ambig_bench.options import build
>>> from ambig_bench.runner import run_experiment
>>> result = run_experiment(build({"strategy": "soft", "epochs": 2}), out="results/doctest")  # doctest: +SKIP
>>> result.metrics["clear_acc"]  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import time
from collections import deque
from pathlib import Path
from typing import Protocol

import torch

from ambig_bench.batched import batching_on
from ambig_bench.config import RunConfig
from ambig_bench.errors import RunFailed
from ambig_bench.evaluation import evaluate_run
from ambig_bench.metrics import selection_loss
from ambig_bench.prepare import Group, PreparedRun, groups_of, prepare_run
from ambig_bench.probe import fit_head
from ambig_bench.rundir import RunRecord
from ambig_bench.store import Claim, RunResult, RunStore, Status
from ambig_bench.train import Job, Validation, pick_device, train

Outcome = RunRecord | str  # a trained run's record, or why it failed


class Reporter(Protocol):
    """Hears of each run by its directory name: it starts training, finishes an epoch, is saved (or reused).
    Runs may train at once (--jobs N, a group of runs trained together)."""

    def start_run(self, name: str, epochs: int) -> None: ...
    def epoch(self, name: str, epoch: int, loss: float) -> None: ...
    def end_run(self, result: RunResult) -> None: ...


class Placement(Protocol):
    """Where claimed runs are prepared, trained and evaluated. The pipeline claims and saves; a placement only
    turns the claims it is given into outcomes."""

    slots: int  # batches of claims that may be training at once

    def together(self, cfg: RunConfig) -> bool:
        """Whether the run may share one wide network with the other runs of its shape."""

    def start(self, claims: list[Claim]) -> None:
        """Begin training a batch of claimed runs."""

    def busy(self) -> int:
        """Batches started whose outcomes are not all given back yet."""

    def next_done(self) -> list[tuple[Claim, Outcome]]:
        """Wait for the next group to finish: each of its claims (as given to `start`) with its outcome."""

    def stop(self) -> None:
        """After an error or Ctrl-C: abandon what is still training."""


def failure_reason(error: Exception, cfg: RunConfig, together: int = 1) -> str:
    if not isinstance(error, torch.cuda.OutOfMemoryError):
        return str(error)
    if together > 1:
        return (f"CUDA out of memory training {together} runs together at batch size {cfg.model.batch_size}; "
                "try --batch-runs off or a smaller --batch-size")
    advice = (f"try --batch-size {cfg.model.batch_size // 2}" if cfg.model.batch_size > 1
              else "try a smaller --width or --model")
    return f"CUDA out of memory at batch size {cfg.model.batch_size}; {advice}"


def validation(run: PreparedRun) -> Validation | None:
    """The run's validation split, scored by the one criterion for every strategy (`metrics.selection_loss` of its
    class probabilities); None when the split is empty."""
    val, images = run.data.subset("val"), run.inputs.subset("val").images
    if not len(images):
        return None
    return Validation(images, lambda logits: selection_loss(run.strategy.class_probs(logits), val.label_a,
                                                             val.label_b))


def train_group(group: Group, device: torch.device, reporter: Reporter | None, names: list[str]) -> list[Outcome]:
    """Train a group's runs in one loop, then evaluate each; `names` are the runs' directory names (progress)."""
    runs, cfg = group.runs, group.runs[0].recipe
    if reporter and not cfg.model.freeze:  # a probe has no epochs; it takes a fraction of a second
        for name in names:  # the runs of a group share every step, not their losses: each has its own progress
            reporter.start_run(name, cfg.train.epochs)
    started = time.perf_counter()
    try:
        if cfg.model.freeze:  # the head over cached features, fitted to its optimum (frozen runs train alone)
            outcomes = [fit_head(run.trainable[-1], run.strategy, run.inputs, run.config.seed, device) for run in runs]
        else:
            jobs = [Job(run.trainable, run.strategy, run.inputs.subset("train"), run.config.seed,
                        functools.partial(reporter.epoch, name) if reporter else None, validation(run))
                    for run, name in zip(runs, names, strict=True)]
            outcomes = train(jobs, cfg, device, group.module)
    except (RunFailed, torch.cuda.OutOfMemoryError) as e:
        outcomes = [failure_reason(e, cfg, len(runs))] * len(runs)
    seconds = time.perf_counter() - started
    group.write_back()
    return [outcome if isinstance(outcome, str) else evaluate_run(run, device, outcome, seconds, len(runs))
            for run, outcome in zip(runs, outcomes, strict=True)]


class Here:
    """Claimed runs trained in this process, one group at a time; runs of one shape as one wide network where
    `batching` and the run's own --batch-runs allow it."""

    slots = 1

    def __init__(self, reporter: Reporter | None = None, batching: bool = False) -> None:
        self.reporter, self.batching = reporter, batching
        self.queue: deque[tuple[Group, list[Claim], torch.device]] = deque()

    def together(self, cfg: RunConfig) -> bool:
        return self.batching and batching_on(cfg)

    def start(self, claims: list[Claim]) -> None:
        device = pick_device(claims[0].config.runtime.device)
        prepared = [prepare_run(claim.config, device) for claim in claims]
        claim_of = {id(run): claim for run, claim in zip(prepared, claims, strict=True)}
        for group in groups_of(prepared, device):
            self.queue.append((group, [claim_of[id(run)] for run in group.runs], device))

    def busy(self) -> int:
        return len(self.queue)

    def next_done(self) -> list[tuple[Claim, Outcome]]:
        group, claims, device = self.queue.popleft()
        outcomes = train_group(group, device, self.reporter, [c.run_dir.name for c in claims])
        return list(zip(claims, outcomes, strict=True))

    def stop(self) -> None:
        self.queue.clear()


def train_claimed(claims: list[Claim], reporter: Reporter | None = None) -> list[Outcome]:
    """Prepare, train and evaluate claimed runs in this process (what a worker process or a Ray task does for the
    driver, which saves); each run's outcome, in order. `reporter` hears of the epochs (end_run is the driver's)."""
    here = Here(reporter)
    here.start(claims)
    done: dict[int, Outcome] = {}
    while here.busy():
        done.update((id(claim), outcome) for claim, outcome in here.next_done())
    return [done[id(claim)] for claim in claims]


def plan(runs: list[RunConfig], where: Placement) -> list[list[int]]:
    """Batches of runs claimed and prepared together: first every run that may share a wide network, then each
    other run on its own."""
    together = [i for i, cfg in enumerate(runs) if where.together(cfg)]
    return ([together] if together else []) + [[i] for i in range(len(runs)) if i not in together]


def run_pipeline(runs: list[RunConfig], out: str | Path, force: bool, reporter: Reporter | None, wait: bool,
                 where: Placement) -> list[RunResult]:
    """Train (or reuse) every run into `out` through `where`; one result per run, in order. With wait=False, runs
    another process holds come back "busy" at once."""
    for cfg in runs:
        cfg.validate()
    store = RunStore(out)
    results: dict[int, RunResult] = {}
    unsaved: dict[int, tuple[int, Claim]] = {}  # id(claim) -> (run index, claim): trained by `where`, not saved

    def save_next() -> None:
        for claim, outcome in where.next_done():
            i, _ = unsaved.pop(id(claim))
            results[i] = store.save(claim, outcome)
            if reporter:
                reporter.end_run(results[i])

    try:
        for batch in plan(runs, where):
            claims = []
            for i in batch:
                claimed = store.claim(runs[i], force, wait)
                if isinstance(claimed, Claim):
                    unsaved[id(claimed)] = i, claimed
                    claims.append(claimed)
                    continue
                results[i] = claimed
                if reporter and claimed.status != Status.BUSY:  # a busy one is reported when it is done
                    reporter.end_run(claimed)
            if claims:
                where.start(claims)
            while where.busy() >= where.slots:
                save_next()
        while where.busy():
            save_next()
    finally:
        if unsaved:  # an error or Ctrl-C: nothing of these runs was written
            where.stop()
            for _, claim in unsaved.values():
                claim.release()
    return [results[i] for i in range(len(runs))]


def run_experiment(cfg: RunConfig, out: str | Path | None = None, force: bool = False,
                   reporter: Reporter | None = None, wait: bool = True) -> RunResult:
    """Train and evaluate one (strategy, seed) into `out` (default results/<dataset>); reuse the finished run unless
    `force`.

    When another process is training the same run, wait for it (then reuse its result), or with
    wait=False return at once with status "busy" so the caller can train other runs meanwhile.
    """
    out = out if out is not None else f"results/{cfg.data.dataset}"
    [result] = run_pipeline([cfg], out, force, reporter, wait, Here(reporter))
    return result
