"""Run experiments: one (strategy, seed) run -> a directory of results; a grid of them -> a results tree.

    results/demo/runs/<strategy>-seed<seed>-<config key>/
        config.json  data.json  env.json  history.csv  metrics.json  predictions.csv
        model.safetensors  model.json  DONE          (FAILED instead of the rest when training broke)

Nothing is ever half-written where it can be read back: a run is assembled in `runs/.tmp-<name>-<random>/`
and renamed into place whole, so a run counts as finished exactly when its directory holds DONE. A process
trains a run only while holding the run's lock (`OUT/.locks/`), so two invocations never clobber each
other, and leftovers of a killed process are removed when the run is next claimed. Rerunning the same
command reuses every finished run and trains the rest.

$ ambig-bench run --strategy soft,hard --seeds 3 --out results/demo    # Ctrl-C, then the same again

>>> from ambig_bench.config import RunConfig
>>> from ambig_bench.runner import run_experiment
>>> result = run_experiment(RunConfig(strategy="soft", epochs=2), out="results/doctest")  # doctest: +SKIP
>>> result.metrics["clear_acc"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pandas as pd
import torch
from torch import nn

from ambig_bench import __version__
from ambig_bench.checkpoint import save_checkpoint
from ambig_bench.config import ExperimentConfig, RunConfig
from ambig_bench.data import LabelledImages
from ambig_bench.datasets import BETWEEN_SOURCES, DATASETS, prepare
from ambig_bench.errors import RunFailed
from ambig_bench.io import fsync_dir, read_json, write_atomic, write_csv, write_json
from ambig_bench.locks import RunLock
from ambig_bench.metrics import evaluate, set_objective
from ambig_bench.models import MODELS, build_network
from ambig_bench.strategies import STRATEGIES, Strategy
from ambig_bench.train import device_layout, pick_device, predict_logits, train, tta_level

if TYPE_CHECKING:
    from ambig_bench.executors import Executor

THRESHOLDS = [round(0.02 * i, 2) for i in range(1, 50)]  # candidate set-decoding thresholds, 0.02..0.98
TMP_PREFIX = ".tmp-"  # .tmp-<run name>-<random>: a run being assembled
OLD_PREFIX = ".old-"  # .old-<run name>-<random>: a failed or --force'd run moved aside to be replaced


class Reporter(Protocol):
    def start_run(self, name: str, epochs: int) -> None: ...
    def epoch(self, epoch: int, loss: float) -> None: ...
    def end_run(self, result: RunResult) -> None: ...


@dataclass
class RunResult:
    config: RunConfig
    run_dir: Path
    status: str  # "done" (trained now), "reused" (finished earlier), "failed", or "busy" (another process
    #              is training it: nothing was written; only with run_experiment(wait=False))
    metrics: dict = field(default_factory=dict)
    error: str = ""


def check_names(cfg: RunConfig) -> None:
    """UserError for a dataset, in-between source or model name that no registry holds."""
    DATASETS.get(cfg.dataset)
    if cfg.between_source != "auto":  # resolved by the dataset when it loads
        BETWEEN_SOURCES.get(cfg.between_source)
    MODELS.get(cfg.model)


def run_name(cfg: RunConfig) -> str:
    return f"{cfg.strategy}-seed{cfg.seed}-{cfg.key()}"


_data_cache: dict[tuple, LabelledImages] = {}


def cached_prepare(cfg: RunConfig) -> LabelledImages:
    """Data depend on everything but the strategy: prepare once per seed, share across strategies."""
    key = (cfg.key(), cfg.seed, cfg.data_dir)
    if key not in _data_cache:
        _data_cache.clear()  # keep one dataset in memory at a time
        _data_cache[key] = prepare(cfg)
    return _data_cache[key]


def environment(device: torch.device) -> dict:
    env = {
        "ambig_bench": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(), "device": str(device), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def choose_threshold(strategy: Strategy, logits: torch.Tensor, val: LabelledImages) -> float | None:
    """The decoding threshold that maximises the set objective on the validation split."""
    if not strategy.uses_threshold:
        return None
    scores = [set_objective(strategy.predict_sets(logits, t), val.label_a, val.label_b) for t in THRESHOLDS]
    return THRESHOLDS[max(range(len(scores)), key=scores.__getitem__)]


def predictions_frame(strategy: Strategy, logits: torch.Tensor, data: LabelledImages, threshold: float | None,
                      split: str) -> pd.DataFrame:
    probs = strategy.class_probs(logits)
    sets = strategy.predict_sets(logits, threshold or 0.5)
    frame = pd.DataFrame({
        "split": split,
        "kind": ["between" if b else "clear" for b in data.is_between.tolist()],
        "label_a": data.label_a.numpy(), "label_b": data.label_b.numpy(), "share_a": data.share_a.numpy(),
        "ambiguity": strategy.ambiguity(logits).numpy(),
        "pred_set": ["|".join(str(k) for k in row.nonzero().squeeze(1).tolist()) for row in sets],
    })
    prob_cols = pd.DataFrame(probs.numpy(), columns=[f"p_{k}" for k in range(probs.shape[1])])
    return pd.concat([frame, prob_cols], axis=1)


def run_experiment(cfg: RunConfig, out: str | Path = "results/demo", force: bool = False,
                   reporter: Reporter | None = None, wait: bool = True) -> RunResult:
    """Train and evaluate one (strategy, seed); reuse the finished run unless `force`.

    When another process is training the same run, wait for it (then reuse its result), or with
    wait=False return at once with status "busy" so the caller can train other runs meanwhile.
    """
    cfg.validate()
    run_dir = Path(out) / "runs" / run_name(cfg)
    claimed = claim(cfg, run_dir, force, wait)
    if isinstance(claimed, RunLock):
        with claimed:
            result = train_run(cfg, run_dir, reporter)
    else:
        result = claimed
    if reporter and result.status != "busy":
        reporter.end_run(result)
    return result


def claim(cfg: RunConfig, run_dir: Path, force: bool, wait: bool) -> RunResult | RunLock:
    """The held lock of a run to train, or the result of one that needs no training (reused or busy)."""
    if not force and (metrics := finished_metrics(run_dir)) is not None:
        return RunResult(cfg, run_dir, "reused", metrics)
    lock = RunLock(run_dir.parent.parent / ".locks" / f"{run_dir.name}.lock")
    if not lock.acquire(wait):
        return RunResult(cfg, run_dir, "busy")
    # Holding the lock, nobody else is assembling this run: any temporary copy is a killed process's.
    for prefix in (TMP_PREFIX, OLD_PREFIX):
        for leftover in run_dir.parent.glob(f"{prefix}{run_dir.name}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    if not force and (metrics := finished_metrics(run_dir)) is not None:  # finished while we waited
        lock.release()
        return RunResult(cfg, run_dir, "reused", metrics)
    return lock


def finished_metrics(run_dir: Path) -> dict | None:
    """The metrics of a finished run, else None. A directory with DONE is complete: it arrived whole."""
    if not (run_dir / "DONE").exists():
        return None
    try:
        return read_json(run_dir / "metrics.json")
    except FileNotFoundError:  # moved aside this instant by a --force rerun in another process
        return None


def train_run(cfg: RunConfig, run_dir: Path, reporter: Reporter | None) -> RunResult:
    """Train, evaluate and write one run; the caller holds its lock."""
    device = pick_device(cfg.device)
    data = cached_prepare(cfg)
    if reporter:
        reporter.start_run(run_dir.name, cfg.epochs)
    with staged(run_dir) as tmp:
        write_json(tmp / "config.json", dataclasses.asdict(cfg))
        try:
            metrics = fit_and_save(cfg, data, device, tmp, reporter)
        except (RunFailed, torch.cuda.OutOfMemoryError) as e:
            error = failure_reason(e, cfg)
            write_json(tmp / "FAILED", {"error": error})
            return RunResult(cfg, run_dir, "failed", error=error)
        write_atomic(tmp / "DONE", "")
    return RunResult(cfg, run_dir, "done", metrics)


def failure_reason(error: Exception, cfg: RunConfig) -> str:
    if not isinstance(error, torch.cuda.OutOfMemoryError):
        return str(error)
    advice = (f"try --batch-size {cfg.batch_size // 2}" if cfg.batch_size > 1
              else "try a smaller --width or --model")
    return f"CUDA out of memory at batch size {cfg.batch_size}; {advice}"


def build_run(cfg: RunConfig, data: LabelledImages, device: torch.device) -> tuple[Strategy, nn.Module]:
    """The run's strategy and its untrained model (Preprocess fitted on the training images + network)."""
    strategy = STRATEGIES.get(cfg.strategy)(data.num_classes, data.pairs)
    torch.manual_seed(cfg.seed)  # same initial weights for every strategy of a seed (up to the head)
    model = build_network(cfg.model, data.subset("train").images, strategy.num_outputs, cfg.width).to(device)
    return strategy, device_layout(model, device)


def fit_and_save(cfg: RunConfig, data: LabelledImages, device: torch.device, tmp: Path,
                 reporter: Reporter | None) -> dict:
    """Everything that touches the device: build, train, evaluate; write the run's files into `tmp`."""
    strategy, model = build_run(cfg, data, device)
    trained = torch.compile(model) if cfg.compile else model
    started = time.perf_counter()
    history = train(trained, strategy, data.subset("train"), cfg, device, reporter.epoch if reporter else None)
    return evaluate_and_save(cfg, data, device, tmp, strategy, trained, history, time.perf_counter() - started)


def evaluate_and_save(cfg: RunConfig, data: LabelledImages, device: torch.device, tmp: Path, strategy: Strategy,
                      model: nn.Module, history: list[dict], train_seconds: float, batched_runs: int = 1) -> dict:
    """Threshold on validation, metrics on test; write every file of a finished run into `tmp`."""
    val, test = data.subset("val"), data.subset("test")
    # Models trained with augmentation are evaluated on mirrored and shifted views too (cheap, fair to every strategy).
    tta = tta_level(cfg, data.images)
    val_logits = predict_logits(model, val.images, device, tta)
    test_logits = predict_logits(model, test.images, device, tta)
    threshold = choose_threshold(strategy, val_logits, val)
    sets = strategy.predict_sets(test_logits, threshold or 0.5)
    metrics = evaluate(strategy.class_probs(test_logits), sets, strategy.ambiguity(test_logits),
                       test.label_a, test.label_b, test.share_a)
    metrics.update(threshold=threshold, train_seconds=round(train_seconds, 3), epochs=cfg.epochs,
                   batched_runs=batched_runs)

    write_json(tmp / "data.json", {"class_names": data.class_names, "pairs": data.pairs, **data.info,
                                   "image_shape": list(data.images.shape[1:])})
    write_json(tmp / "env.json", environment(device))
    write_csv(tmp / "history.csv", pd.DataFrame(history))
    write_csv(tmp / "predictions.csv", pd.concat([
        predictions_frame(strategy, val_logits, val, threshold, "val"),
        predictions_frame(strategy, test_logits, test, threshold, "test"),
    ], ignore_index=True))
    save_checkpoint(tmp, getattr(model, "_orig_mod", model), cfg, data, strategy, threshold)
    write_json(tmp / "metrics.json", metrics)
    return metrics


@contextmanager
def staged(run_dir: Path) -> Iterator[Path]:
    """A fresh private directory that replaces run_dir when the block ends normally, and is removed otherwise."""
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


def grid(exp: ExperimentConfig) -> list[RunConfig]:
    """Seeds outer, strategies inner: the data of a seed are prepared once and shared."""
    return [dataclasses.replace(exp.run, strategy=s, seed=exp.run.seed + i)
            for i in range(exp.seeds) for s in exp.strategies]


def run_grid(exp: ExperimentConfig, reporter: Reporter | None = None, executor: Executor | None = None
             ) -> list[RunResult]:
    """Every run of the grid, in this process or through `executor` (executors.py: --jobs N, Ray)."""
    from ambig_bench.executors import run_all

    return run_all(grid(exp), exp.out, exp.force, reporter, executor)
