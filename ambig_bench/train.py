"""The training loop, identical for every strategy: read it top to bottom.

The whole training set lives on the device as uint8; batches are formed by indexing, normalised and
augmented on the device, and the loss is only read back once per epoch (no per-step host sync).

>>> from ambig_bench.config import RunConfig
>>> from ambig_bench.runner import run_experiment      # the usual way in: data, training, evaluation
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

from ambig_bench.config import RunConfig
from ambig_bench.data import LabelledImages
from ambig_bench.errors import RunFailed, UserError
from ambig_bench.strategies import Labels, Strategy

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
                  data.pair_index().to(device))


class Preprocess(nn.Module):
    """uint8 N×C×H×W -> normalised float, with the training set's per-channel mean and std."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    @classmethod
    def fit(cls, images: torch.Tensor) -> Preprocess:
        x = images.float().transpose(0, 1).flatten(1)  # C × (N·H·W)
        return cls(x.mean(1), x.std(1).clamp_min(1.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std


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


def use_augmentation(cfg: RunConfig, images: torch.Tensor) -> bool:
    on = cfg.augment == "on" or (cfg.augment == "auto" and images.shape[1] == 3 and images.shape[2] >= 24)
    if on and cfg.translate >= min(images.shape[2:]):  # auto: natural RGB photos, not digits or glyphs
        raise UserError(f"--translate {cfg.translate} must be smaller than the {images.shape[2]}x{images.shape[3]} "
                        "images")
    return on


def tta_level(cfg: RunConfig, images: torch.Tensor) -> int:
    """Test-time views that match training: 0 none, 1 image + mirror, 2 also one-pixel shifts (airbench's levels)."""
    if not use_augmentation(cfg, images):
        return 0
    return 2 if cfg.translate > 0 else 1


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
    """One parameter group per learning-rate multiplier a layer declares (`lr_scale`); frozen weights are left out.

    Under SGD a group's weight decay is divided by its multiplier, so every parameter decays at the same rate
    per step whatever its learning rate (airbench's decoupled form). AdamW's steps do not scale with the
    gradient, so it ignores the multipliers.
    """
    by_scale: dict[float, list[nn.Parameter]] = {}
    for layer in model.modules():
        scale = getattr(layer, "lr_scale", 1.0) if cfg.optimizer == "sgd" else 1.0
        by_scale.setdefault(scale, []).extend(p for p in layer.parameters(recurse=False) if p.requires_grad)
    groups = [{"params": params, "lr_scale": scale, "lr": cfg.lr * scale, "weight_decay": cfg.weight_decay / scale}
              for scale, params in by_scale.items() if params]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    # The fused kernel updates every parameter in one launch on CUDA.
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type == "cuda")


def lr_factor(schedule: str, epoch: int, step: int, n_steps: int, epochs: int) -> float:
    """The learning rate at `step` of `epoch`, as a fraction of the peak.

    linear: warm-up from 0 over the first epoch, then straight down to 0 (small-cnn's default).
    triangle: airbench's: from 0.2 up to the peak at 23% of training, then down to 0.07 at the end.
    Both are defined in epochs, so strategies with more images per epoch (duplicate) get the same curve over
    training as the others.
    """
    progress = (epoch + step / n_steps) / epochs
    if schedule == "triangle":
        rise = 0.23
        return 0.2 + 0.8 * progress / rise if progress < rise else 1 - 0.93 * (progress - rise) / (1 - rise)
    warm = min(1.0, (epoch * n_steps + step + 1) / n_steps) if epochs > 1 else 1.0
    return warm * (1 - progress)


def set_learning_rate(optimizer: torch.optim.Optimizer, cfg: RunConfig, epoch: int, step: int, n_steps: int) -> None:
    factor = lr_factor(cfg.schedule, epoch, step, n_steps, cfg.epochs)
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * group["lr_scale"] * factor


class Lookahead:
    """airbench's lookahead: from 30% of training on, every 5 steps the weights (and BatchNorm statistics) move to a
    slow average of themselves, from which training continues. The average's memory grows as progress³, so the
    end of training averages most. Elementwise, so in a batched wide model each run is averaged on its own."""

    EVERY, START, DECAY = 5, 0.3, 0.95

    def __init__(self, model: nn.Module) -> None:
        self.tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.average: list[torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, done: int, total: int) -> None:
        """After optimiser step number `done` (1-based) of `total`."""
        if done < self.START * total or done % self.EVERY:
            return
        if self.average is None:
            self.average = [t.clone() for t in self.tensors]
            return
        keep = self.DECAY ** self.EVERY * (done / total) ** 3
        for avg, t in zip(self.average, self.tensors, strict=True):
            avg.lerp_(t, 1 - keep)
            t.copy_(avg)

    @torch.no_grad()
    def finish(self) -> None:
        """Training ends on the average, not on the (up to 4) steps taken since its last update. Only here, as in
        airbench: resetting at every epoch's end would throw those steps away a dozen times."""
        for avg, t in zip(self.average, self.tensors, strict=True) if self.average else ():
            t.copy_(avg)


def train(model: nn.Module, strategy: Strategy, data: LabelledImages, cfg: RunConfig, device: torch.device,
          on_epoch: EpochCallback | None = None) -> list[dict]:
    """Train `model` (already on `device`, starting with its Preprocess) on the train split of `data`."""
    images = data.images.to(device)
    labels = labels_of(data, device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    do_augment = use_augmentation(cfg, data.images)
    optimizer = make_optimizer(model, cfg, device)
    lookahead = Lookahead(model) if cfg.lookahead == "on" else None
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        # Targets are drawn per epoch (reassign redraws its labels, duplicate adds copies).
        index, targets = strategy.epoch_targets(labels, gen)
        order = torch.randperm(len(index), generator=gen, device=device)
        loss_sum = torch.zeros((), device=device)
        n_steps = math.ceil(len(order) / cfg.batch_size)
        for step in range(n_steps):
            set_learning_rate(optimizer, cfg, epoch, step, n_steps)
            batch = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x = images[index[batch]]
            if do_augment:
                x = augment(x, gen, cfg.translate)
            with autocast(device):
                logits = model(device_layout(x, device))
            loss = strategy.loss(logits, targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if lookahead:
                lookahead.step(epoch * n_steps + step + 1, cfg.epochs * n_steps)
            loss_sum += loss.detach() * len(batch)
        mean_loss = (loss_sum / len(order)).item()  # the one host sync per epoch
        if not math.isfinite(mean_loss):
            raise RunFailed(f"training loss became {mean_loss} in epoch {epoch + 1}; try a lower --lr")
        history.append({"epoch": epoch + 1, "train_loss": mean_loss, "train_images": len(order)})
        if on_epoch:
            on_epoch(epoch + 1, mean_loss)
    if lookahead:
        lookahead.finish()
    return history


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
