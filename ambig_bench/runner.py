"""Run experiments: one (strategy, seed) run -> data, training, evaluation -> a RunRecord the store writes.

Rerunning the same command reuses every finished run and trains the rest (the store's claim and DONE
marker). Runs of one shape can train together as one wide network (`run_together`, used by the
sequential executor on a GPU); their files are the same as when trained one by one.

$ ambig-bench run --strategy soft,hard --seeds 3 --out results/demo    # Ctrl-C, then the same again

>>> from ambig_bench.options import build
>>> from ambig_bench.runner import run_experiment
>>> result = run_experiment(build({"strategy": "soft", "epochs": 2}), out="results/doctest")  # doctest: +SKIP
>>> result.metrics["clear_acc"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch
from torch import nn

from ambig_bench import __version__
from ambig_bench.batched import copy_back, group_size, widen
from ambig_bench.checkpoint import FORMAT, model_files
from ambig_bench.config import RunConfig
from ambig_bench.data import LabelledImages
from ambig_bench.datasets import prepare
from ambig_bench.datasets.confusable import resolve_auto
from ambig_bench.errors import RunFailed
from ambig_bench.features import Probe, probe
from ambig_bench.keys import data_fingerprint, experiment_key
from ambig_bench.metrics import evaluate, set_objective
from ambig_bench.models import build_network, starting_weights
from ambig_bench.options import strategy_options
from ambig_bench.store import Claim, RunRecord, RunResult, RunStore, Status
from ambig_bench.strategies import STRATEGIES, Strategy
from ambig_bench.train import Job, device_layout, fit_reference, pick_device, predict_logits, train, tta_level

THRESHOLDS = [round(0.02 * i, 2) for i in range(1, 50)]  # candidate set-decoding thresholds, 0.02..0.98


class Reporter(Protocol):
    def start_run(self, name: str, epochs: int) -> None: ...
    def epoch(self, epoch: int, loss: float) -> None: ...
    def end_run(self, result: RunResult) -> None: ...


_data_cache: dict[tuple, LabelledImages] = {}


def prepare_data(cfg: RunConfig) -> LabelledImages:
    """The run's data; they depend on everything but the strategy, so one seed's data serve all strategies.

    The `natural` source judges images with a reference network trained here (`train.fit_reference`).
    """
    shared = {k: v for k, v in cfg.to_dict().items() if k not in ("strategy", "strategy_options", "runtime")}
    key = (cfg.seed, repr(shared), repr(data_fingerprint(cfg)))
    if key not in _data_cache:
        _data_cache.clear()  # keep one dataset in memory at a time
        reference = functools.partial(fit_reference, cfg, pick_device(cfg.runtime.device))
        _data_cache[key] = prepare(resolve_auto(cfg, reference), reference)  # --pairs auto: found here
    return _data_cache[key]


def environment(device: torch.device) -> dict:
    env = {
        "ambig_bench": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(), "device": str(device), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import torchvision  # optional for the tool, recorded when present

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


@dataclass
class Built:
    """A claimed run, ready to train: its data, strategy and untrained network."""

    claim: Claim
    data: LabelledImages
    strategy: Strategy
    model: nn.Module
    probe: Probe | None = None  # --freeze: only this head trains, over cached features

    @property
    def config(self) -> RunConfig:
        return self.claim.config


def build_run(cfg: RunConfig, data: LabelledImages, device: torch.device) -> tuple[Strategy, nn.Module]:
    """The run's strategy and its untrained model (Preprocess + network, from scratch or from its starting
    weights)."""
    strategy = STRATEGIES.get(cfg.strategy)(data.num_classes, data.pairs, strategy_options(cfg))
    torch.manual_seed(cfg.seed)  # same initial weights for every strategy of a seed (up to the head)
    model = build_network(cfg.model.name, data.subset("train").images, strategy.num_outputs, cfg.model.width,
                          starting_weights(cfg.model), cfg.model.backbone_lr)
    return strategy, device_layout(model.to(device), device)


def built_run(claim: Claim, data: LabelledImages, device: torch.device) -> Built:
    strategy, model = build_run(claim.config, data, device)
    return Built(claim, data, strategy, model, probe(model, data, device) if claim.config.model.freeze else None)


def trained_part(built: Built) -> tuple[nn.Module, LabelledImages]:
    """What trains and on what: the network on the images, or under --freeze its head on the features."""
    return (built.probe.head, built.probe.data) if built.probe else (built.model, built.data)


def training_config(cfg: RunConfig) -> RunConfig:
    """A head over features trains without image augmentation (the features are of the plain images)."""
    if not cfg.model.freeze:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, augment="off"))


def evaluate_run(built: Built, model: nn.Module, device: torch.device, history: list[dict], train_seconds: float,
                 batched_runs: int = 1) -> RunRecord:
    """Threshold on validation, metrics on test; everything a finished run writes."""
    cfg, data, strategy = built.config, built.data, built.strategy
    val, test = data.subset("val"), data.subset("test")
    # Models trained with augmentation are evaluated on mirrored and shifted views too (cheap, fair to every strategy).
    tta = tta_level(training_config(cfg), data.images)
    net, inputs = trained_part(built) if built.probe else (model, data)
    val_logits = predict_logits(net, inputs.subset("val").images, device, tta)
    test_logits = predict_logits(net, inputs.subset("test").images, device, tta)
    threshold = choose_threshold(strategy, val_logits, val)
    sets = strategy.predict_sets(test_logits, threshold or 0.5)
    metrics = evaluate(strategy.class_probs(test_logits), sets, strategy.ambiguity(test_logits),
                       test.label_a, test.label_b, test.share_a, test.votes)
    metrics.update(threshold=threshold, train_seconds=round(train_seconds, 3), epochs=cfg.train.epochs,
                   batched_runs=batched_runs, feature_seconds=round(built.probe.seconds, 3) if built.probe else 0.0)
    start = starting_weights(cfg.model)
    weights, meta = model_files(getattr(model, "_orig_mod", model), cfg, data, strategy, threshold, tta,
                                start.origin if start else {"weights": "random initialisation"})
    return RunRecord(
        metrics=metrics,
        data={"class_names": data.class_names, "pairs": data.pairs, **data.info,
              "image_shape": list(data.images.shape[1:])},
        env=environment(device), history=history,
        predictions=pd.concat([predictions_frame(strategy, val_logits, val, threshold, "val"),
                               predictions_frame(strategy, test_logits, test, threshold, "test")],
                              ignore_index=True),
        weights=weights, model_meta=meta, weights_format=FORMAT,
    )


def failure_reason(error: Exception, cfg: RunConfig, together: int = 1) -> str:
    if not isinstance(error, torch.cuda.OutOfMemoryError):
        return str(error)
    if together > 1:
        return (f"CUDA out of memory training {together} runs together at batch size {cfg.model.batch_size}; "
                "try --batch-runs off or a smaller --batch-size")
    advice = (f"try --batch-size {cfg.model.batch_size // 2}" if cfg.model.batch_size > 1
              else "try a smaller --width or --model")
    return f"CUDA out of memory at batch size {cfg.model.batch_size}; {advice}"


def train_group(group: list[Built], device: torch.device, reporter: Reporter | None) -> list[RunRecord | str]:
    """Train a group of runs with one recipe (alone when it has one run); each run's record or failure."""
    cfg = group[0].config
    if reporter:
        # Progress shows the first run's loss: the group's runs share every step but not their losses.
        first = group[0].claim.run_dir.name
        reporter.start_run(f"{len(group)} runs together, {first}" if len(group) > 1 else first, cfg.train.epochs)
    jobs = [Job(trained_part(b)[0], b.strategy, trained_part(b)[1].subset("train"), b.config.seed,
                reporter.epoch if reporter and i == 0 else None) for i, b in enumerate(group)]
    if len(group) == 1:
        trained = [torch.compile(group[0].model) if cfg.runtime.compile and not group[0].probe else group[0].model]
        module = jobs[0].model if group[0].probe else trained[0]
    else:
        trained = [b.model for b in group]
        module = device_layout(widen(trained).to(device), device)
    started = time.perf_counter()
    try:
        outcomes = train(jobs, training_config(cfg), device, module)
    except (RunFailed, torch.cuda.OutOfMemoryError) as e:
        outcomes = [failure_reason(e, cfg, len(group))] * len(group)
    seconds = time.perf_counter() - started
    if len(group) > 1:
        copy_back(module, trained)
    return [outcome if isinstance(outcome, str) else evaluate_run(b, model, device, outcome, seconds, len(group))
            for b, model, outcome in zip(group, trained, outcomes, strict=True)]


def train_claimed(claim: Claim, reporter: Reporter | None = None) -> RunRecord | str:
    """Train and evaluate one claimed run in this process: its record, or why it failed."""
    cfg = claim.config
    device = pick_device(cfg.runtime.device)
    [outcome] = train_group([built_run(claim, prepare_data(cfg), device)], device, reporter)
    return outcome


def claim(store: RunStore, cfg: RunConfig, force: bool, wait: bool, reporter: Reporter | None) -> Claim | RunResult:
    """The store's claim; a run that needs no training is reported at once (a busy one later, when it is done)."""
    claimed = store.claim(cfg, force, wait)
    if isinstance(claimed, RunResult) and reporter and claimed.status != Status.BUSY:
        reporter.end_run(claimed)
    return claimed


def finish(store: RunStore, claim: Claim, outcome: RunRecord | str, reporter: Reporter | None) -> RunResult:
    result = store.save(claim, outcome)
    if reporter:
        reporter.end_run(result)
    return result


def run_experiment(cfg: RunConfig, out: str | Path | None = None, force: bool = False,
                   reporter: Reporter | None = None, wait: bool = True) -> RunResult:
    """Train and evaluate one (strategy, seed) into `out` (default results/<dataset>); reuse the finished run unless
    `force`.

    When another process is training the same run, wait for it (then reuse its result), or with
    wait=False return at once with status "busy" so the caller can train other runs meanwhile.
    """
    cfg.validate()
    store = RunStore(out if out is not None else f"results/{cfg.data.dataset}")
    claimed = claim(store, cfg, force, wait, reporter)
    if isinstance(claimed, RunResult):
        return claimed
    try:
        outcome = train_claimed(claimed, reporter)
    except BaseException:
        claimed.release()
        raise
    return finish(store, claimed, outcome, reporter)


def run_together(runs: list[RunConfig], out: str, force: bool, reporter: Reporter | None,
                 wait: bool) -> list[RunResult]:
    """Train runs whose networks have one shape and see as many images per epoch as one wide network
    (`batched.py`), in groups as large as `batched.group_size` finds faster; files as if run one by one."""
    store = RunStore(out)
    results: list[RunResult | None] = [None] * len(runs)
    built: dict[int, Built] = {}
    try:
        device = pick_device(runs[0].runtime.device) if runs else torch.device("cpu")
        groups: dict[tuple, list[int]] = {}
        for i, cfg in enumerate(runs):
            cfg.validate()
            claimed = claim(store, cfg, force, wait, reporter)
            if isinstance(claimed, RunResult):
                results[i] = claimed
                continue
            try:
                data = prepare_data(cfg)
                built[i] = Built(claimed, data, *build_run(cfg, data, device))
            except BaseException:
                claimed.release()  # not yet in `built`, whose claims the finally below releases
                raise
            strategy, train_split = built[i].strategy, data.subset("train")
            shape = (experiment_key(cfg), strategy.num_outputs,
                     strategy.images_per_epoch(train_split.is_between), tuple(train_split.images.shape))
            groups.setdefault(shape, []).append(i)
        for (_, num_outputs, _, images_shape), members in groups.items():
            first = built[members[0]]
            size = group_size(first.config, first.model, images_shape, num_outputs, len(members), device)
            for start in range(0, len(members), size):
                chunk = members[start:start + size]
                outcomes = train_group([built[i] for i in chunk], device, reporter)
                for i, outcome in zip(chunk, outcomes, strict=True):
                    results[i] = finish(store, built.pop(i).claim, outcome, reporter)
    finally:
        for left in built.values():  # interrupted: nothing of theirs was written
            left.claim.release()
    return results
