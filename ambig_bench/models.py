"""Networks, registered by name. Every strategy trains the same network; only the output width differs.

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


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


@MODELS.register("small-cnn")
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


def gelu_block(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU(),
    )


class Scale(nn.Module):
    """Multiply by a constant: keeps the initial logits of the max-pooled head small (as airbench does)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@MODELS.register("fast-cifar")
def fast_cifar(in_channels: int, image_size: int, num_outputs: int, width: int = 64) -> nn.Module:
    """airbench94-shaped net for 32x32 (2x2 conv stem, GELU blocks 64/256/256, max-pool head); GPU speed."""
    w = (width, 4 * width, 4 * width)
    return nn.Sequential(
        nn.Conv2d(in_channels, 24, 2, bias=False), nn.GELU(),
        gelu_block(24, w[0]), gelu_block(w[0], w[1]), gelu_block(w[1], w[2]),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(w[2], num_outputs, bias=False), Scale(1 / 9),
    )


def build_model(name: str, in_channels: int, image_size: int, num_outputs: int, width: int) -> nn.Module:
    """`width` 0 means the model's own default width."""
    factory = MODELS.get(name)
    return factory(in_channels, image_size, num_outputs, width) if width else factory(in_channels, image_size,
                                                                                        num_outputs)
