"""The training loop, identical for every strategy: read it top to bottom.

The whole training set lives on the device as uint8; batches are formed by indexing, normalised and
augmented on the device, and the loss is only read back once per epoch (no per-step host sync): at the epoch's
end, beside one pass over the validation split that scores the epoch by the strategy-neutral criterion
(`Validation`, `metrics.selection_loss`), recorded in the history as `val_loss`.

One loop trains one run or several at once (the grouped wide network of `batched.py`). Early stopping
(`--early-stopping`, on by default for fine-tuning from starting weights) is keep-best: every run trains all its
epochs, with the same schedule, and ends on the weights of its epoch with the lowest validation criterion
(`KeepBest`); the history marks that epoch `kept`. There is no patience to tune, and one rule for every strategy.

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
class Validation:
    """A run's validation images as its trainable part sees them, and the criterion that scores its logits on them
    (lower is better): `metrics.selection_loss` of the strategy's class probabilities, the same for every strategy,
    given by the caller (the loop knows no metric)."""

    images: torch.Tensor
    score: Callable[[torch.Tensor], float]


@dataclass
class Job:
    """One run to train: its network (already on the device), strategy, training split and seed, and its validation
    split (None: no `val_loss`, no early stopping)."""

    model: nn.Module
    strategy: Strategy
    data: LabelledImages
    seed: int
    on_epoch: EpochCallback | None = None
    val: Validation | None = None


def run_part(wide: torch.Tensor, single: torch.Size, m: int, count: int) -> torch.Tensor:
    """Run m's part (a view) of a tensor of the wide network of `count` runs (`batched.widen`), whose run's own
    tensor has shape `single`: the first axis that grew count-fold (dim 1 for Preprocess's 1×C×1×1 buffers);
    GroupedLinear keeps a separate leading model axis. A network of one run is its own part."""
    if count == 1:
        return wide
    grown = [d for d in range(len(single)) if wide.dim() == len(single) and wide.shape[d] == count * single[d]]
    return wide.chunk(count, dim=grown[0] if grown else 0)[m]


def validation_losses(module: nn.Module, jobs: list[Job], device: torch.device) -> list[float | None]:
    """Each run's validation criterion for the module as it is now: one eval pass over every run's validation
    images at once (for a wide network, each run's images in its own channel block, shorter splits padded by
    repeating images), without test-time views."""
    if any(job.val is None for job in jobs):
        return [None] * len(jobs)
    sizes = [len(job.val.images) for job in jobs]
    n = max(sizes)
    padded = [job.val.images[torch.arange(n) % len(job.val.images)] for job in jobs]
    x = padded[0] if len(jobs) == 1 else torch.stack(padded, 1).flatten(1, 2)
    logits = predict_logits(module, x, device).view(n, len(jobs), -1)
    return [job.val.score(logits[:size, m]) for m, (job, size) in enumerate(zip(jobs, sizes, strict=True))]


class KeepBest:
    """Early stopping, keep-best: each run's weights (and BatchNorm statistics) of its epoch with the lowest
    validation criterion, held in one copy of the trained module's state; in a wide network each run's part is its
    own (`run_part`). `restore` puts each run's best back at the end."""

    def __init__(self, module: nn.Module, jobs: list[Job]) -> None:
        self.live = {k: t for k, t in module.state_dict().items() if t.is_floating_point()}
        self.kept = {k: t.clone() for k, t in self.live.items()}
        self.shapes = [job.model.state_dict() for job in jobs]
        self.best = [math.inf] * len(jobs)
        self.epoch: list[int | None] = [None] * len(jobs)

    @torch.no_grad()
    def offer(self, m: int, epoch: int, loss: float) -> None:
        if not loss < self.best[m]:  # NaN never wins
            return
        self.best[m], self.epoch[m] = loss, epoch
        self.copy(m, self.live, self.kept)

    @torch.no_grad()
    def restore(self) -> None:
        for m, epoch in enumerate(self.epoch):
            if epoch is not None:
                self.copy(m, self.kept, self.live)

    def copy(self, m: int, source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> None:
        count = len(self.shapes)
        for name, tensor in target.items():
            shape = self.shapes[m][name].shape
            run_part(tensor, shape, m, count).copy_(run_part(source[name], shape, m, count))


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
    keep = KeepBest(module, jobs) if cfg.stops_early() and all(job.val is not None for job in jobs) else None
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
        if lookahead and epoch == epochs - 1:
            lookahead.finish()  # the last epoch is scored (and kept) on the weights training ends with
        means = (loss_sums / n_images).tolist()  # the one host sync per epoch, with the validation pass
        val_losses = validation_losses(module, jobs, device)
        for m, (job, mean_loss, val_loss) in enumerate(zip(jobs, means, val_losses, strict=True)):
            if isinstance(histories[m], str):
                continue
            if not math.isfinite(mean_loss):
                histories[m] = failure(mean_loss, epoch + 1)
                continue
            row = {"epoch": epoch + 1, "train_loss": mean_loss, "train_images": n_images}
            histories[m].append(row if val_loss is None else {**row, "val_loss": val_loss})
            if keep:
                keep.offer(m, epoch + 1, val_loss)
            if job.on_epoch:
                job.on_epoch(epoch + 1, mean_loss)
        if all(isinstance(h, str) for h in histories):
            break
    if keep:
        keep.restore()
        for history, kept in zip(histories, keep.epoch, strict=True):
            for row in history if isinstance(history, list) else ():
                row["kept"] = row["epoch"] == kept
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
def view_logits(model: nn.Module, x: torch.Tensor, tta: int = 0,
                layout: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """float32 logits of one batch, averaged over its test-time views (`tta_level`): at 1 the image and its mirror
    are averaged; at 2, as airbench does, the image and its mirror weigh 1/4 each and both of them shifted one pixel
    up-left and one down-right 1/8 each. `layout` puts each view in its device's memory layout. Plain tensor
    operations only, so the exported ONNX graph (export.py) computes the very same views."""

    def mirror_mean(v: torch.Tensor) -> torch.Tensor:
        v = layout(v)
        return (model(v).float() + model(v.flip(3)).float()) / 2

    if tta == 2:
        one = x.new_ones(x.shape[0], 1, dtype=torch.long)
        return mirror_mean(x) / 2 + mirror_mean(shifted(x, -one, -one)) / 4 + mirror_mean(shifted(x, one, one)) / 4
    if tta == 1:
        return mirror_mean(x)
    return model(x).float()


def predict_logits(model: nn.Module, images: torch.Tensor, device: torch.device, tta: int = 0,
                   batch_size: int = 2048) -> torch.Tensor:
    """Logits (float32, on the CPU) for uint8 images, in eval mode, in large batches (`view_logits`)."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = device_layout(images[start:start + batch_size].to(device, non_blocking=True), device)
        with autocast(device):
            logits = view_logits(model, x, tta, lambda t: device_layout(t, device))
        out.append(logits.cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)
