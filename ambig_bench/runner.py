"""Run experiments: one (strategy, seed) run -> a directory of results; a grid of them -> a results tree.

    results/demo/runs/<strategy>-seed<seed>-<config key>/
        config.json  data.json  env.json  history.csv  metrics.json  predictions.csv
        model.safetensors  model.json  DONE

A run directory is assembled under a temporary name and renamed into place once complete, so a run
counts as finished exactly when its directory (with DONE) exists; rerunning reuses it.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch
from torch import nn

from ambig_bench import __version__
from ambig_bench.config import ExperimentConfig, RunConfig
from ambig_bench.data import LabelledImages
from ambig_bench.datasets import prepare
from ambig_bench.errors import RunFailed
from ambig_bench.io import read_json, write_csv, write_json
from ambig_bench.metrics import evaluate, set_objective
from ambig_bench.models import build_model
from ambig_bench.strategies import STRATEGIES, Strategy
from ambig_bench.train import Preprocess, pick_device, predict_logits, train

THRESHOLDS = [round(0.02 * i, 2) for i in range(1, 50)]  # candidate set-decoding thresholds, 0.02..0.98


class Reporter(Protocol):
    def start_run(self, name: str, epochs: int) -> None: ...
    def epoch(self, epoch: int, loss: float) -> None: ...
    def end_run(self, result: RunResult) -> None: ...


@dataclass
class RunResult:
    config: RunConfig
    run_dir: Path
    status: str  # "done" (trained now), "reused" (finished earlier) or "failed"
    metrics: dict = field(default_factory=dict)
    error: str = ""


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
                   reporter: Reporter | None = None) -> RunResult:
    """Train and evaluate one (strategy, seed); reuse the finished run unless `force`."""
    cfg.validate()
    run_dir = Path(out) / "runs" / run_name(cfg)
    if (run_dir / "DONE").exists() and not force:
        result = RunResult(cfg, run_dir, "reused", read_json(run_dir / "metrics.json"))
        if reporter:
            reporter.end_run(result)
        return result

    device = pick_device(cfg.device)
    data = cached_prepare(cfg)
    strategy = STRATEGIES.get(cfg.strategy)(data.num_classes, data.pairs)
    train_data, val, test = data.subset("train"), data.subset("val"), data.subset("test")
    torch.manual_seed(cfg.seed)  # same initial weights for every strategy of a seed (up to the head)
    _, channels, size, _ = data.images.shape
    net = build_model(cfg.model, channels, size, strategy.num_outputs, cfg.width)
    model = nn.Sequential(Preprocess.fit(train_data.images), net).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    trained = torch.compile(model) if cfg.compile else model

    tmp = run_dir.parent / f".tmp-{run_dir.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        if reporter:
            reporter.start_run(run_dir.name, cfg.epochs)
        started = time.perf_counter()
        try:
            history = train(trained, strategy, train_data, cfg, device, reporter.epoch if reporter else None)
        except RunFailed as e:
            write_json(tmp / "config.json", dataclasses.asdict(cfg))
            write_json(tmp / "FAILED", {"error": str(e)})
            finish(tmp, run_dir)
            result = RunResult(cfg, run_dir, "failed", error=str(e))
            if reporter:
                reporter.end_run(result)
            return result
        train_seconds = time.perf_counter() - started

        val_logits = predict_logits(trained, val.images, device)
        test_logits = predict_logits(trained, test.images, device)
        threshold = choose_threshold(strategy, val_logits, val)
        sets = strategy.predict_sets(test_logits, threshold or 0.5)
        metrics = evaluate(strategy.class_probs(test_logits), sets, strategy.ambiguity(test_logits),
                           test.label_a, test.label_b, test.share_a)
        metrics.update(threshold=threshold, train_seconds=round(train_seconds, 3), epochs=cfg.epochs)

        write_json(tmp / "config.json", dataclasses.asdict(cfg))
        write_json(tmp / "data.json", {"class_names": data.class_names, "pairs": data.pairs, **data.info,
                                       "image_shape": list(data.images.shape[1:])})
        write_json(tmp / "env.json", environment(device))
        write_csv(tmp / "history.csv", pd.DataFrame(history))
        write_csv(tmp / "predictions.csv", pd.concat([
            predictions_frame(strategy, val_logits, val, threshold, "val"),
            predictions_frame(strategy, test_logits, test, threshold, "test"),
        ], ignore_index=True))
        from ambig_bench.checkpoint import save_checkpoint

        save_checkpoint(tmp, model, cfg, data, strategy, threshold)
        write_json(tmp / "metrics.json", metrics)
        (tmp / "DONE").write_text("")
        finish(tmp, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = RunResult(cfg, run_dir, "done", metrics)
    if reporter:
        reporter.end_run(result)
    return result


def finish(tmp: Path, run_dir: Path) -> None:
    """Move a complete run directory into place, replacing an unfinished or failed one."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    os.replace(tmp, run_dir)


def grid(exp: ExperimentConfig) -> list[RunConfig]:
    """Seeds outer, strategies inner: the data of a seed are prepared once and shared."""
    return [dataclasses.replace(exp.run, strategy=s, seed=exp.run.seed + i)
            for i in range(exp.seeds) for s in exp.strategies]


def run_grid(exp: ExperimentConfig, reporter: Reporter | None = None) -> list[RunResult]:
    return [run_experiment(cfg, exp.out, exp.force, reporter) for cfg in grid(exp)]
