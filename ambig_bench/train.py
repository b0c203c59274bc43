"""The training loop, identical for every strategy: read it top to bottom.

The whole training set lives on the device as uint8; batches are formed by indexing, normalised and
augmented on the device, and the loss is only read back once per epoch (no per-step host sync).

One loop trains one run or several at once (the grouped wide network of `batched.py`).

>>> from ambig_bench.options import build
>>> from ambig_bench.runner import run_experiment      # the usual way in: data, training, evaluation
>>> run_experiment(build({"strategy": "soft", "epochs": 2}), out="results/doctest")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ambig_bench.config import RunConfig
from ambig_bench.data import LabelledImages
from ambig_bench.errors import RunFailed, UserError
from ambig_bench.models import MODELS, Recipe, build_network
from ambig_bench.strategies import STRATEGIES, Labels, Strategy

EpochCallback = Callable[[int, float], None]  # (epoch finished, 1-based; mean training loss)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine")
        # Fixed input shapes: let cuDNN time its convolution algorithms once and keep the fastest.
        torch.backends.cudnn.benchmark = True
    return torch.device(name)


def labels_of(data: LabelledImages, device: torch.device) -> Labels:
    return Labels(data.label_a.to(device), data.label_b.to(device), data.share_a.float().to(device),
                  data.pair_index().to(device), data.votes.float().to(device) if data.votes is not None else None)


def shifted(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Each image read at an offset of (dy, dx) pixels (N×1 integer tensors), edges mirrored.

    Rows and columns are gathered through shifted, mirrored indices: two gathers, no padded copy.
    """
    n, c, h, w = x.shape

    def mirrored(offset: torch.Tensor, size: int) -> torch.Tensor:
        idx = (offset + torch.arange(size, device=x.device)).abs()
        return torch.where(idx > size - 1, 2 * (size - 1) - idx, idx)

    x = x.gather(2, mirrored(dy, h).view(n, 1, h, 1).expand(n, c, h, w))
    return x.gather(3, mirrored(dx, w).view(n, 1, 1, w).expand(n, c, h, w))


def augment(x: torch.Tensor, gen: torch.Generator, shift: int) -> torch.Tensor:
    """Random translation by up to `shift` pixels (edges mirrored) and random horizontal flip, on the device."""
    n = len(x)
    dy = torch.randint(-shift, shift + 1, (n, 1), generator=gen, device=x.device)
    dx = torch.randint(-shift, shift + 1, (n, 1), generator=gen, device=x.device)
    x = shifted(x, dy, dx)
    flip = torch.rand(n, generator=gen, device=x.device) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)


def resized_crop(x: torch.Tensor, gen: torch.Generator, min_scale: float) -> torch.Tensor:
    """Random-resized crops, on the device: each image's crop covers a random share of its area in
    [min_scale, 1] with an aspect ratio in [3/4, 4/3] at a random place, resampled (bilinear) to the full size."""
    n, device = len(x), x.device
    area = min_scale + (1 - min_scale) * torch.rand(n, generator=gen, device=device)
    ratio = torch.exp((torch.rand(n, generator=gen, device=device) * 2 - 1) * math.log(4 / 3))
    width, height = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)  # shares of the sides
    # affine_grid's coordinates run from -1 to 1: a crop of side share s may be centred anywhere in ±(1 - s).
    cx = (torch.rand(n, generator=gen, device=device) * 2 - 1) * (1 - width)
    cy = (torch.rand(n, generator=gen, device=device) * 2 - 1) * (1 - height)
    zero = torch.zeros(n, device=device)
    theta = torch.stack([torch.stack([width, zero, cx], 1), torch.stack([zero, height, cy], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    crops = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return crops.round().clamp(0, 255).to(x.dtype)


def augment_batch(x: torch.Tensor, gen: torch.Generator, cfg: RunConfig) -> torch.Tensor:
    """The recipe's augmentation: random-resized crops and flips (crop_scale < 1), else shifts and flips."""
    if cfg.model.crop_scale is not None and cfg.model.crop_scale < 1:
        x = resized_crop(x, gen, cfg.model.crop_scale)
        flip = torch.rand(len(x), generator=gen, device=x.device) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    return augment(x, gen, cfg.train.translate)


def use_augmentation(cfg: RunConfig, images: torch.Tensor) -> bool:
    augment_opt, shift = cfg.train.augment, cfg.train.translate
    on = augment_opt == "on" or (augment_opt == "auto" and images.shape[1] == 3 and images.shape[2] >= 24)
    if on and shift >= min(images.shape[2:]):  # auto: natural RGB photos, not digits or glyphs
        raise UserError(f"--translate {shift} must be smaller than the {images.shape[2]}x{images.shape[3]} images")
    return on


def tta_level(cfg: RunConfig, images: torch.Tensor) -> int:
    """Test-time views that match training: 0 none, 1 image + mirror, 2 also one-pixel shifts (airbench's levels)."""
    if not MODELS.get(cfg.model.name).recipe.test_views or not use_augmentation(cfg, images):
        return 0
    shifts = cfg.train.translate > 0 and not (cfg.model.crop_scale is not None and cfg.model.crop_scale < 1)
    return 2 if shifts else 1


def device_layout(t, device: torch.device):
    """A model or a 4-D batch in the memory layout its device runs fastest: channels_last on CUDA (cuDNN's bf16
    convolutions), unchanged elsewhere. Gathers and flips return NCHW, so batches pass through this after them."""
    return t.to(memory_format=torch.channels_last) if device.type == "cuda" else t


def timed(device: torch.device, fn: Callable[[], object]) -> float:
    """Wall seconds of `fn()`, with queued CUDA work finished on both sides so that it is all counted."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def autocast(device: torch.device):
    # bf16 on CUDA roughly doubles throughput; CPU stays fp32 so CPU results are exactly reproducible.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def make_optimizer(model: nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """One parameter group per learning-rate multiplier; frozen weights are left out.

    A layer's multiplier is its `lr_share` (layers that start from pretrained weights: --backbone-lr, under any
    optimizer) times, under SGD, its `lr_scale` (airbench's faster BatchNorm shifts). Under SGD a group's weight
    decay is divided by its lr_scale, so every parameter decays at the same rate per step whatever its learning
    rate (airbench's decoupled form). AdamW's steps do not scale with the gradient, so it ignores lr_scale.
    """
    by_scale: dict[tuple[float, float], list[nn.Parameter]] = {}
    for layer in model.modules():
        scale = getattr(layer, "lr_scale", 1.0) if cfg.model.optimizer == "sgd" else 1.0
        share = getattr(layer, "lr_share", 1.0)
        by_scale.setdefault((scale, share), []).extend(p for p in layer.parameters(recurse=False) if p.requires_grad)
    groups = [{"params": params, "lr_scale": scale * share, "lr": cfg.model.lr * scale * share,
               "weight_decay": cfg.model.weight_decay / scale} for (scale, share), params in by_scale.items() if params]
    if cfg.model.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.model.lr, momentum=cfg.model.momentum, nesterov=cfg.model.momentum > 0)
    # The fused kernel updates every parameter in one launch on CUDA.
    return torch.optim.AdamW(groups, lr=cfg.model.lr, fused=device.type == "cuda")


def lr_factor(schedule: str, epoch: int, step: int, n_steps: int, epochs: int, recipe: Recipe) -> float:
    """The learning rate at `step` of `epoch`, as a fraction of the peak; the recipe's constants shape it.

    linear: warm-up from 0 over the first epoch(s), then straight down to 0 (small-cnn's default).
    cosine: the same warm-up, then down to 0 along a half cosine (the fine-tuning recipes' default).
    triangle: airbench's: from 0.2 up to the peak at 23% of training, then down to 0.07 at the end.
    All are defined in epochs, so strategies with more images per epoch (duplicate) get the same curve over
    training as the others.
    """
    progress = (epoch + step / n_steps) / epochs
    if schedule == "triangle":
        start, rise = recipe.triangle_start, recipe.triangle_peak_at
        if progress < rise:
            return start + (1 - start) * progress / rise
        return 1 - recipe.triangle_drop * (progress - rise) / (1 - rise)
    warmup = recipe.warmup_epochs
    warm = min(1.0, (epoch * n_steps + step + 1) / (warmup * n_steps)) if epochs > warmup else 1.0
    if schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * progress))
    return warm * (1 - progress)


def set_learning_rate(optimizer: torch.optim.Optimizer, cfg: RunConfig, epoch: int, step: int, n_steps: int) -> None:
    recipe = MODELS.get(cfg.model.name).recipe
    factor = lr_factor(cfg.model.schedule, epoch, step, n_steps, cfg.train.epochs, recipe)
    for group in optimizer.param_groups:
        group["lr"] = cfg.model.lr * group["lr_scale"] * factor


class Lookahead:
    """airbench's lookahead: from 30% of training on, every 5 steps the weights (and BatchNorm statistics) move to a
    slow average of themselves, from which training continues. The average's memory grows as progress³, so the
    end of training averages most (the recipe's `lookahead_*` constants). Elementwise, so in a batched wide model
    each run is averaged on its own."""

    def __init__(self, model: nn.Module, recipe: Recipe) -> None:
        self.tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.average: list[torch.Tensor] | None = None
        self.recipe = recipe

    @torch.no_grad()
    def step(self, done: int, total: int) -> None:
        """After optimiser step number `done` (1-based) of `total`."""
        every = self.recipe.lookahead_every
        if done < self.recipe.lookahead_start * total or done % every:
            return
        if self.average is None:
            self.average = [t.clone() for t in self.tensors]
            return
        keep = self.recipe.lookahead_decay ** every * (done / total) ** self.recipe.lookahead_power
        for avg, t in zip(self.average, self.tensors, strict=True):
            avg.lerp_(t, 1 - keep)
            t.copy_(avg)

    @torch.no_grad()
    def finish(self) -> None:
        """Training ends on the average, not on the (up to 4) steps taken since its last update. Only here, as in
        airbench: resetting at every epoch's end would throw those steps away a dozen times."""
        for avg, t in zip(self.average, self.tensors, strict=True) if self.average else ():
            t.copy_(avg)


@dataclass
class Job:
    """One run to train: its network (already on the device), strategy, training split and seed."""

    model: nn.Module
    strategy: Strategy
    data: LabelledImages
    seed: int
    on_epoch: EpochCallback | None = None


def resident(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The training images on the device when they fit in half its free memory (the rest is the network's); else
    in pinned host memory, each batch copied over as it is formed: slower, but a dataset larger than the GPU trains."""
    if device.type != "cuda":
        return images.to(device)
    free, _ = torch.cuda.mem_get_info(device)
    if fits(images.numel() * images.element_size(), free):
        return images.to(device)
    return images.pin_memory()


def fits(nbytes: int, free: int) -> bool:
    return nbytes <= free // 2


def failure(mean_loss: float, epoch: int) -> str:
    return f"training loss became {mean_loss} in epoch {epoch}; try a lower --lr"


def train(jobs: list[Job], cfg: RunConfig, device: torch.device, module: nn.Module | None = None
          ) -> list[list[dict] | str]:
    """Train M >= 1 runs that share a recipe (cfg.model, cfg.train); each run's history, or why it failed.

    M = 1 trains the run's own network. For M > 1, `module` is the runs' networks fused side by side
    (`batched.widen`): one step feeds it every run's batch stacked along the channels, and the summed loss
    gives each run exactly its own gradient. Each run keeps its own generator, so it sees the same batches,
    targets and augmentations either way; only floating-point summation order can differ.
    """
    m_count = len(jobs)
    module = module if module is not None else jobs[0].model
    images = [resident(job.data.images, device) for job in jobs]
    labels = [labels_of(job.data, device) for job in jobs]
    gens = [torch.Generator(device=device).manual_seed(job.seed) for job in jobs]
    do_augment = use_augmentation(cfg, jobs[0].data.images)
    optimizer = make_optimizer(module, cfg, device)
    lookahead = Lookahead(module, MODELS.get(cfg.model.name).recipe) if cfg.model.lookahead == "on" else None
    batch_size, epochs = cfg.model.batch_size, cfg.train.epochs
    histories: list[list[dict] | str] = [[] for _ in jobs]
    for epoch in range(epochs):
        module.train()
        # Targets are drawn per epoch (reassign redraws its labels, duplicate adds copies).
        plans = [job.strategy.epoch_targets(lab, g) for job, lab, g in zip(jobs, labels, gens, strict=True)]
        orders = [torch.randperm(len(index), generator=g, device=device) for (index, _), g in zip(plans, gens,
                                                                                                  strict=True)]
        if len({len(o) for o in orders}) != 1:
            raise ValueError("runs see different numbers of images per epoch; they cannot share a batch")
        n_images = len(orders[0])
        n_steps = math.ceil(n_images / batch_size)
        loss_sums = torch.zeros(m_count, device=device)
        for step in range(n_steps):
            set_learning_rate(optimizer, cfg, epoch, step, n_steps)
            xs, ts = [], []
            for m in range(m_count):
                batch = orders[m][step * batch_size:(step + 1) * batch_size]
                index = plans[m][0][batch]
                x = images[m][index.to(images[m].device)].to(device, non_blocking=True)
                x = augment_batch(x, gens[m], cfg) if do_augment else x
                # Each run mixes its own batch with its own generator (mixup), whether trained alone or grouped.
                x, t = jobs[m].strategy.mix_batch(x, plans[m][1][batch], gens[m])
                xs.append(x)
                ts.append(t)
            if len({x.dtype for x in xs}) > 1:  # a mixing run's float images beside uint8 ones: same values
                xs = [x.float() for x in xs]
            # B×(M·C)×H×W: run m reads channel block m (for M = 1, the batch itself).
            x = xs[0] if m_count == 1 else torch.stack(xs, 1).flatten(1, 2)
            with autocast(device):
                logits = module(device_layout(x, device)).view(len(x), m_count, -1)
            losses = torch.stack([jobs[m].strategy.loss(logits[:, m], ts[m]) for m in range(m_count)])
            optimizer.zero_grad(set_to_none=True)
            # A run whose loss went non-finite must not stop the others: its own parameters are separate.
            losses.nan_to_num(0.0, 0.0, 0.0).sum().backward()
            optimizer.step()
            if lookahead:
                lookahead.step(epoch * n_steps + step + 1, epochs * n_steps)
            loss_sums += losses.detach() * len(x)
        means = (loss_sums / n_images).tolist()  # the one host sync per epoch
        for m, (job, mean_loss) in enumerate(zip(jobs, means, strict=True)):
            if isinstance(histories[m], str):
                continue
            if not math.isfinite(mean_loss):
                histories[m] = failure(mean_loss, epoch + 1)
                continue
            histories[m].append({"epoch": epoch + 1, "train_loss": mean_loss, "train_images": n_images})
            if job.on_epoch:
                job.on_epoch(epoch + 1, mean_loss)
        if all(isinstance(h, str) for h in histories):
            break
    if lookahead:
        lookahead.finish()
    return histories


def fit_reference(cfg: RunConfig, device: torch.device, data: LabelledImages, seed: int, epochs: int,
                  predict_on: list[torch.Tensor]) -> list[torch.Tensor]:
    """A plain cross-entropy reference network trained on `data` with the run's model and recipe for `epochs`
    epochs; its class probabilities for each image batch in `predict_on`. The `natural` source's judge."""
    torch.manual_seed(seed)
    model = build_network(cfg.model.name, data.images, data.num_classes, cfg.model.width).to(device)
    ref_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
    [outcome] = train([Job(model, STRATEGIES.get("hard")(data.num_classes, data.pairs), data, seed)], ref_cfg,
                      device)
    if isinstance(outcome, str):
        raise RunFailed(f"natural source's reference model: {outcome}")
    return [predict_logits(model, images, device).softmax(1) for images in predict_on]


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, device: torch.device, tta: int = 0,
                   batch_size: int = 2048) -> torch.Tensor:
    """Logits (float32, on the CPU) for uint8 images, in eval mode, in large batches.

    Test-time views (`tta_level`): at 1 the image and its mirror are averaged; at 2, as airbench does, the image
    and its mirror weigh 1/4 each and both of them shifted one pixel up-left and one down-right 1/8 each.
    """
    model.eval()

    def mirror_mean(x: torch.Tensor) -> torch.Tensor:
        x = device_layout(x, device)
        return (model(x).float() + model(x.flip(3)).float()) / 2

    out = []
    for start in range(0, len(images), batch_size):
        x = device_layout(images[start:start + batch_size].to(device, non_blocking=True), device)
        with autocast(device):
            if tta == 2:
                one = torch.ones(len(x), 1, dtype=torch.long, device=device)
                logits = (mirror_mean(x) / 2 + mirror_mean(shifted(x, -one, -one)) / 4
                          + mirror_mean(shifted(x, one, one)) / 4)
            elif tta == 1:
                logits = mirror_mean(x)
            else:
                logits = model(x).float()
        out.append(logits.cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)
