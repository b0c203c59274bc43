"""Several runs as one wide network: M copies of a model side by side, each with its own data.

Every layer of the M models is fused into one layer M times as wide (convolutions and BatchNorm become
grouped, linear layers a batched product), so one kernel launch does the work of M. The copies never
mix: grouped layers keep their channels apart. `train.train` trains the wide network like any other;
this module only builds it (`widen`), writes each run's slice back (`copy_back`) and decides how many
runs to fuse (`group_size`).

On a GPU the sequential executor trains a grid this way by itself (`--batch-runs auto`): runs whose
networks have the same shape and see the same number of images per epoch (the seeds of a strategy,
and strategies such as soft, hard, reassign, multilabel and partial) share one wide model, when a few
timed training steps show that faster than one network at a time (`group_size`).
$ ambig-bench run --dataset fashion-mnist --strategy all --seeds 5 --device cuda     # batched
$ ambig-bench run --dataset fashion-mnist --strategy all --seeds 5 --batch-runs off  # one at a time
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ambig_bench import budget
from ambig_bench.config import RunConfig
from ambig_bench.models import MODELS, Preprocess, Scale
from ambig_bench.train import autocast, device_layout, make_optimizer, run_part, timed

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
    for multiplier in ("lr_scale", "lr_share"):  # per-layer learning rates (BN shifts, --backbone-lr)
        if hasattr(first, multiplier):
            setattr(wide, multiplier, getattr(first, multiplier))
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
    if isinstance(first, (*ELEMENTWISE, Scale)):
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
        shape = getattr(first, name).shape
        for i, m in enumerate(models):
            getattr(m, name).copy_(run_part(tensor, shape, i, len(models)).reshape(shape))


MAX_GROUP = 16  # runs per wide model: beyond this the GPU is full anyway and memory grows linearly
PROBE_WARMUP, PROBE_STEPS = 3, 5  # training steps run untimed (kernel selection, allocation), then timed
PROBE_MARGIN = 0.9  # batch only when the wide model costs at most this share of training the runs one by one


def batching_on(cfg: RunConfig) -> bool:
    if cfg.runtime.compile:  # a compiled model is already fused; compiling the wide one per group costs more
        return False
    # torchvision backbones have layers widen cannot fuse; a linear probe's head is too small to gain from it.
    if not MODELS.get(cfg.model.name).widenable or cfg.model.freeze:
        return False
    return cfg.runtime.batch_runs == "on" or (cfg.runtime.batch_runs == "auto" and cfg.runtime.device != "cpu"
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
    size = min(n_runs, MAX_GROUP, max(1, budget.largest(network_bytes(model))))
    if cfg.runtime.batch_runs == "on" or size == 1:
        return size
    try:
        alone = step_seconds(widen([model]), cfg, images_shape, num_outputs, 1, device)
        together = step_seconds(widen([model] * size), cfg, images_shape, num_outputs, size, device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return 1
    return size if together <= PROBE_MARGIN * size * alone else 1


def network_bytes(model: nn.Module) -> int:
    """What one network of a wide model holds while it trains, activations aside: float32 weights, gradients and
    two optimizer moments (Adam's; SGD's momentum takes one). A group is never larger than the memory holds."""
    return 4 * 4 * sum(p.numel() for p in model.parameters())


def step_seconds(wide: nn.Module, cfg: RunConfig, images_shape: tuple, num_outputs: int, m_count: int,
                 device: torch.device) -> float:
    """Seconds per training step of `wide` (a copy: the runs' own models are untouched) on random images."""
    n, c, h, w = images_shape
    batch = min(cfg.model.batch_size, n)
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
