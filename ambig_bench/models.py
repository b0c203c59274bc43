"""Networks, registered by name with their training recipe. Every strategy trains the same network; only the
output width differs. A new model is one `@register_model` entry: its factory and the recipe beside it.

$ ambig-bench run --model small-cnn --width 32      # any size from 8x8 grey to 32x32 RGB
$ ambig-bench run --dataset cifar10 --model fast-cifar --device cuda
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ambig_bench.registry import Registry

ModelFactory = Callable[[int, int, int, int], nn.Module]  # (in_channels, image_size, num_outputs, width)
MODELS: Registry[ModelFactory] = Registry("model")


def register_model(name: str, **recipe: object) -> Callable[[ModelFactory], ModelFactory]:
    """Register a network factory with its default recipe (the `config.ModelOptions` fields it sets)."""

    def add(factory: ModelFactory) -> ModelFactory:
        factory.recipe = recipe
        return MODELS.register(name)(factory)

    return add


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


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


@register_model("small-cnn", width=32, optimizer="adamw", batch_size=128, lr=3e-3, weight_decay=5e-4,
                momentum=0.9, lookahead="off", schedule="linear")
def small_cnn(in_channels: int, image_size: int, num_outputs: int, width: int = 32) -> nn.Module:
    """Small CNN for CPU: conv-BN-ReLU-pool stages (widths w, 2w, 4w), as many as the image size allows."""
    layers: list[nn.Module] = []
    c, size = in_channels, image_size
    # Pool while the map stays at least 2x2: 8x8 digits get two stages, 28x28 and 32x32 images three.
    for stage in range(3):
        if size // 2 < 2:
            break
        layers += conv_bn(c, width * 2**stage) + [nn.MaxPool2d(2)]
        c, size = width * 2**stage, size // 2
    layers += conv_bn(c, c) + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_outputs)]
    return nn.Sequential(*layers)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """airbench's BatchNorm: the scale stays 1 (only the shift learns, 64× faster under SGD), fast statistics."""
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)
    bn.weight.requires_grad_(False)
    bn.lr_scale = 64.0  # read by train.make_optimizer
    return bn


def identity_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """3x3 conv whose first c_in filters start as the identity: an implicit residual path at initialisation."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:c_in])
    return conv


def gelu_block(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(
        identity_conv(c_in, c_out), nn.MaxPool2d(2), batch_norm(c_out), nn.GELU(),
        identity_conv(c_out, c_out), batch_norm(c_out), nn.GELU(),
    )


class Whiten(nn.Conv2d):
    """Fixed 2x2 patch-whitening stem (airbench): filters are the training patches' principal directions,
    scaled to unit variance, each with its negative so the GELU after it loses nothing. Only the bias learns.
    `fit` sets the filters from (normalised) training images; they are saved with the model like any weight."""

    def __init__(self, in_channels: int, kernel: int = 2) -> None:
        super().__init__(in_channels, 2 * in_channels * kernel**2, kernel, bias=True)
        self.weight.requires_grad_(False)
        nn.init.zeros_(self.bias)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        c, k = self.in_channels, self.kernel_size[0]
        patches = images.double().unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors.T / (eigenvalues + eps).sqrt()[:, None]).flip(0).reshape(-1, c, k, k)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.dtype))


class Scale(nn.Module):
    """Multiply by a constant: keeps the initial logits of the max-pooled head small (as airbench does)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


# airbench94's recipe (lr 11.5 and weight decay 0.0153 per 1024 images, momentum 0.85) for a mean loss.
@register_model("fast-cifar", width=64, optimizer="sgd", batch_size=1024, lr=1.5, weight_decay=1.33e-3,
                momentum=0.85, lookahead="on", schedule="triangle")
def fast_cifar(in_channels: int, image_size: int, num_outputs: int, width: int = 64) -> nn.Module:
    """airbench94's net for 32x32: whitening stem, GELU blocks 64/256/256, max-pool head, SGD + lookahead."""
    w = (width, 4 * width, 4 * width)
    stem = Whiten(in_channels)
    return nn.Sequential(
        stem, nn.GELU(),
        gelu_block(stem.out_channels, w[0]), gelu_block(w[0], w[1]), gelu_block(w[1], w[2]),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(w[2], num_outputs, bias=False), Scale(1 / 9),
    )


def build_model(name: str, in_channels: int, image_size: int, num_outputs: int, width: int) -> nn.Module:
    return MODELS.get(name)(in_channels, image_size, num_outputs, width)


FIT_IMAGES = 5000  # training images that data-fitted layers (whitening) look at, evenly spaced


def build_network(name: str, train_images: torch.Tensor, num_outputs: int, width: int) -> nn.Sequential:
    """Preprocess fitted on the uint8 training images, then the network, its data-fitted layers fitted too."""
    _, channels, size, _ = train_images.shape
    preprocess = Preprocess.fit(train_images)
    net = build_model(name, channels, size, num_outputs, width)
    # Evenly spaced, not the first ones: datasets often come sorted by class.
    n, k = len(train_images), min(len(train_images), FIT_IMAGES)
    sample = preprocess(train_images[torch.arange(k) * (n - 1) // max(k - 1, 1)])
    for layer in net.modules():
        if isinstance(layer, Whiten):
            layer.fit(sample)
    return nn.Sequential(preprocess, net)
