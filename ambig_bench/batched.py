"""Train several runs as one wide network: M copies of a model side by side, each with its own data.

Every layer of the M models is fused into one layer M times as wide (convolutions and BatchNorm become
grouped, linear layers a batched product), so one kernel launch does the work of M. The copies never
mix: grouped layers keep their channels apart and the summed loss gives each copy exactly its own
gradient. Each run keeps its own generator, so it sees the same batches, targets and augmentations as
when trained alone (`train.train`); only floating-point summation order can differ.

On a GPU the sequential executor trains a grid this way by itself (`--batch-runs auto`): runs whose
networks have the same shape and see the same number of images per epoch (the seeds of a strategy,
and strategies such as soft, hard, reassign, multilabel and partial) share one wide model, when a few
timed training steps show that faster than one network at a time (`group_size`).
$ ambig-bench run --dataset fashion-mnist --strategy all --seeds 5 --device cuda     # batched
$ ambig-bench run --dataset fashion-mnist --strategy all --seeds 5 --batch-runs off  # one at a time
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ambig_bench.config import RunConfig
from ambig_bench.data import LabelledImages
from ambig_bench.datasets import prepare
from ambig_bench.io import write_atomic, write_json
from ambig_bench.locks import RunLock
from ambig_bench.train import (
    EpochCallback,
    Lookahead,
    Preprocess,
    augment,
    autocast,
    device_layout,
    labels_of,
    make_optimizer,
    set_learning_rate,
    timed,
    use_augmentation,
)

ELEMENTWISE = (nn.ReLU, nn.GELU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity)


class GroupedLinear(nn.Module):
    """M independent linear layers applied to M channel blocks of a B×(M·in) input."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # M × out × in
        self.bias = nn.Parameter(bias) if bias is not None else None  # M × out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, out, inp = self.weight.shape
        y = torch.einsum("bmi,moi->bmo", x.view(len(x), m, inp), self.weight.to(x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(len(x), m * out)


def widen(models: list[nn.Module]) -> nn.Module:
    """One module computing all M models at once on inputs stacked along channels (B×(M·C)×H×W)."""
    first = models[0]
    if isinstance(first, nn.Sequential):
        return nn.Sequential(*[widen([m[i] for m in models]) for i in range(len(first))])
    wide = widen_layer(models)
    # Frozen weights stay frozen and learning-rate multipliers stay, so the wide layer trains like each one.
    for name, param in first.named_parameters(recurse=False):
        getattr(wide, name).requires_grad_(param.requires_grad)
    if hasattr(first, "lr_scale"):
        wide.lr_scale = first.lr_scale
    return wide


def widen_layer(models: list[nn.Module]) -> nn.Module:
    first = models[0]
    cat = lambda name: torch.cat([getattr(m, name).detach() for m in models])  # noqa: E731
    if isinstance(first, Preprocess):
        return Preprocess(cat("mean").flatten(), cat("std").flatten())
    if isinstance(first, nn.Conv2d):
        conv = nn.Conv2d(first.in_channels * len(models), first.out_channels * len(models), first.kernel_size,
                         first.stride, first.padding, groups=first.groups * len(models), bias=first.bias is not None)
        conv.weight.data.copy_(cat("weight"))
        if first.bias is not None:
            conv.bias.data.copy_(cat("bias"))
        return conv
    if isinstance(first, nn.BatchNorm2d):
        bn = nn.BatchNorm2d(first.num_features * len(models), first.eps, first.momentum, first.affine)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).data.copy_(cat(name))
        return bn
    if isinstance(first, nn.Linear):
        bias = torch.stack([m.bias.detach() for m in models]) if first.bias is not None else None
        return GroupedLinear(torch.stack([m.weight.detach() for m in models]).clone(), bias)
    if isinstance(first, ELEMENTWISE) or type(first).__name__ == "Scale":
        return first
    raise TypeError(f"cannot batch layer {type(first).__name__}; train these runs one at a time")


@torch.no_grad()
def copy_back(wide: nn.Module, models: list[nn.Module]) -> None:
    """Write each model's slice of the trained wide module back into the model (weights and BN stats)."""
    first = models[0]
    if isinstance(first, nn.Sequential):
        for i in range(len(first)):
            copy_back(wide[i], [m[i] for m in models])
        return
    for name, tensor in list(wide.named_parameters(recurse=False)) + list(wide.named_buffers(recurse=False)):
        if name == "num_batches_tracked":
            for m in models:
                m.num_batches_tracked.copy_(tensor)
            continue
        single = getattr(first, name)
        # The model axis is the first one that grew M-fold (dim 1 for Preprocess's 1×C×1×1 buffers);
        # GroupedLinear keeps a separate leading model axis.
        grown = [d for d in range(single.dim()) if tensor.dim() == single.dim()
                 and tensor.shape[d] == len(models) * single.shape[d]]
        for m, part in zip(models, tensor.chunk(len(models), dim=grown[0] if grown else 0), strict=True):
            getattr(m, name).copy_(part.reshape(single.shape))


def train_many(models: list[nn.Module], strategies: list, datas: list[LabelledImages], cfgs: list[RunConfig],
               device: torch.device, on_epoch: list[EpochCallback | None] | None = None) -> list[list[dict] | str]:
    """Train M models (same architecture and optimiser settings) at once; returns each history or failure."""
    cfg, m_count = cfgs[0], len(models)
    wide = device_layout(widen(models).to(device), device)
    trains = [d.subset("train") for d in datas]
    images = [t.images.to(device) for t in trains]
    labels = [labels_of(t, device) for t in trains]
    gens = [torch.Generator(device=device).manual_seed(c.seed) for c in cfgs]
    do_augment = use_augmentation(cfg, trains[0].images)
    optimizer = make_optimizer(wide, cfg, device)
    lookahead = Lookahead(wide) if cfg.lookahead == "on" else None
    histories: list[list[dict] | str] = [[] for _ in models]
    for epoch in range(cfg.epochs):
        wide.train()
        plans = [s.epoch_targets(lab, g) for s, lab, g in zip(strategies, labels, gens, strict=True)]
        orders = [torch.randperm(len(index), generator=g, device=device) for (index, _), g in zip(plans, gens,
                                                                                                  strict=True)]
        if len({len(o) for o in orders}) != 1:
            raise ValueError("runs see different numbers of images per epoch; they cannot share a batch")
        n_steps = math.ceil(len(orders[0]) / cfg.batch_size)
        loss_sums = torch.zeros(m_count, device=device)
        for step in range(n_steps):
            set_learning_rate(optimizer, cfg, epoch, step, n_steps)
            xs, batches = [], []
            for m in range(m_count):
                batch = orders[m][step * cfg.batch_size:(step + 1) * cfg.batch_size]
                x = images[m][plans[m][0][batch]]
                xs.append(augment(x, gens[m], cfg.translate) if do_augment else x)
                batches.append(batch)
            x = device_layout(torch.stack(xs, 1).flatten(1, 2), device)  # B×(M·C)×H×W: model m reads block m
            with autocast(device):
                logits = wide(x).view(len(x), m_count, -1)
            losses = torch.stack([strategies[m].loss(logits[:, m], plans[m][1][batches[m]]) for m in range(m_count)])
            optimizer.zero_grad(set_to_none=True)
            # A run whose loss went non-finite must not stop the others: its own parameters are separate.
            losses.nan_to_num(0.0, 0.0, 0.0).sum().backward()
            optimizer.step()
            if lookahead:
                lookahead.step(epoch * n_steps + step + 1, cfg.epochs * n_steps)
            loss_sums += losses.detach() * len(x)
        means = (loss_sums / len(orders[0])).tolist()  # the one host sync per epoch
        for m, mean_loss in enumerate(means):
            if isinstance(histories[m], str):
                continue
            if not math.isfinite(mean_loss):
                histories[m] = f"training loss became {mean_loss} in epoch {epoch + 1}; try a lower --lr"
                continue
            histories[m].append({"epoch": epoch + 1, "train_loss": mean_loss, "train_images": len(orders[0])})
            if on_epoch and on_epoch[m]:
                on_epoch[m](epoch + 1, mean_loss)
    if lookahead:
        lookahead.finish()
    copy_back(wide, models)
    return histories


MAX_GROUP = 16  # runs per wide model: beyond this the GPU is full anyway and memory grows linearly
PROBE_WARMUP, PROBE_STEPS = 3, 5  # training steps run untimed (kernel selection, allocation), then timed
PROBE_MARGIN = 0.9  # batch only when the wide model costs at most this share of training the runs one by one


def batching_on(cfg: RunConfig) -> bool:
    if cfg.compile:  # a compiled model is already fused; compiling the wide one per group costs more
        return False
    return cfg.batch_runs == "on" or (cfg.batch_runs == "auto" and cfg.device != "cpu"
                                      and torch.cuda.is_available())


def group_size(cfg: RunConfig, model: nn.Module, images_shape: tuple, num_outputs: int, n_runs: int,
               device: torch.device) -> int:
    """How many of `n_runs` runs of one shape to train as one wide model.

    `--batch-runs on`: as many as MAX_GROUP allows. `auto`: the same, but only if a few timed training steps of
    the wide model beat that many steps of one network alone; else 1 (one at a time). Grouped convolutions are a
    large win for small networks and can be a loss for big ones, and where the line falls depends on the network
    and the GPU, so it is measured here rather than guessed. Augmentation is the same work either way and is left
    out of the timing.
    """
    size = min(n_runs, MAX_GROUP)
    if cfg.batch_runs == "on" or size == 1:
        return size
    try:
        alone = step_seconds(widen([model]), cfg, images_shape, num_outputs, 1, device)
        together = step_seconds(widen([model] * size), cfg, images_shape, num_outputs, size, device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return 1
    return size if together <= PROBE_MARGIN * size * alone else 1


def step_seconds(wide: nn.Module, cfg: RunConfig, images_shape: tuple, num_outputs: int, m_count: int,
                 device: torch.device) -> float:
    """Seconds per training step of `wide` (a copy: the runs' own models are untouched) on random images."""
    n, c, h, w = images_shape
    batch = min(cfg.batch_size, n)
    wide = device_layout(wide.to(device), device)  # widen builds its layers on the CPU
    x = device_layout(torch.randint(0, 256, (batch, m_count * c, h, w), dtype=torch.uint8, device=device), device)
    y = torch.randint(0, num_outputs, (batch * m_count,), device=device)
    optimizer = make_optimizer(wide, cfg, device)
    wide.train()

    def steps(count: int) -> None:
        for _ in range(count):
            with autocast(device):
                logits = wide(x)
            loss = F.cross_entropy(logits.float().view(batch * m_count, -1), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    steps(PROBE_WARMUP)
    return timed(device, lambda: steps(PROBE_STEPS)) / PROBE_STEPS


def run_batched(runs: list[RunConfig], out: str, force: bool, reporter, wait: bool) -> list:
    """The sequential executor's grid with runs of one shape trained together; files as if run one by one."""
    from ambig_bench import runner

    results: list = [None] * len(runs)
    claimed: dict[int, RunLock] = {}
    for i, cfg in enumerate(runs):
        cfg.validate()
        outcome = runner.claim(cfg, Path(out) / "runs" / runner.run_name(cfg), force, wait)
        if isinstance(outcome, RunLock):
            claimed[i] = outcome
        else:
            results[i] = outcome
            if reporter and outcome.status != "busy":
                reporter.end_run(outcome)
    try:
        datas: dict[tuple, LabelledImages] = {}
        groups: dict[tuple, list[int]] = {}
        device = runner.pick_device(runs[0].device)
        built = {}
        for i in claimed:
            key = (runs[i].key(), runs[i].seed, runs[i].data_dir)
            if key not in datas:  # the strategies of one seed share their data
                datas[key] = prepare(runs[i])
            strategy, model = runner.build_run(runs[i], datas[key], device)
            built[i] = (datas[key], strategy, model)
            train = datas[key].subset("train")
            per_epoch = len(strategy.epoch_targets(labels_of(train, torch.device("cpu")),
                                                   torch.Generator().manual_seed(0))[0])
            shape = (runs[i].key(), strategy.num_outputs, per_epoch, tuple(train.images.shape))
            groups.setdefault(shape, []).append(i)
        for (_, num_outputs, _, images_shape), members in groups.items():
            size = group_size(runs[members[0]], built[members[0]][2], images_shape, num_outputs, len(members), device)
            for start in range(0, len(members), size):
                chunk = members[start:start + size]
                for i, result in zip(chunk, train_group([runs[i] for i in chunk], [built[i] for i in chunk],
                                                        out, device, reporter), strict=True):
                    results[i] = result
    finally:
        for lock in claimed.values():
            lock.release()
    return results


def train_group(cfgs: list[RunConfig], built: list[tuple], out: str, device: torch.device, reporter) -> list:
    """Train one group (alone when it has one run) and write each run's directory."""
    from ambig_bench import runner

    datas, strategies, models = (list(x) for x in zip(*built, strict=True))
    if reporter:
        # Progress shows the first run's loss: the group's runs share every step but not their losses.
        first = runner.run_name(cfgs[0])
        reporter.start_run(f"{len(cfgs)} runs together, {first}" if len(cfgs) > 1 else first, cfgs[0].epochs)
    started = time.perf_counter()
    try:
        callbacks = [reporter.epoch if reporter else None] + [None] * (len(cfgs) - 1)
        outcomes = train_many(models, strategies, datas, cfgs, device, callbacks)
    except torch.cuda.OutOfMemoryError:
        outcomes = [f"CUDA out of memory training {len(cfgs)} runs together at batch size {cfgs[0].batch_size}; "
                    "try --batch-runs off or a smaller --batch-size"] * len(cfgs)
    seconds = time.perf_counter() - started
    results = []
    for cfg, data, strategy, model, outcome in zip(cfgs, datas, strategies, models, outcomes, strict=True):
        run_dir = Path(out) / "runs" / runner.run_name(cfg)
        with runner.staged(run_dir) as tmp:
            write_json(tmp / "config.json", dataclasses.asdict(cfg))
            if isinstance(outcome, str):
                write_json(tmp / "FAILED", {"error": outcome})
                result = runner.RunResult(cfg, run_dir, "failed", error=outcome)
            else:
                metrics = runner.evaluate_and_save(cfg, data, device, tmp, strategy, model, outcome, seconds,
                                                   len(cfgs))
                write_atomic(tmp / "DONE", "")
                result = runner.RunResult(cfg, run_dir, "done", metrics)
        results.append(result)
        if reporter:
            reporter.end_run(result)
    return results
