"""A ceiling for fast-cifar: airbench94's whole recipe, re-implemented apart from ambig-bench, on the same images.

It trains on all 50,000 CIFAR-10 training images (no validation holdout, no in-between blends) with everything
ambig-bench leaves out on purpose: label smoothing 0.2, alternating flips, and the whitening bias frozen after
3 epochs; then it prints the test accuracy without and with the six test-time views. It shares only the image
loader with ambig-bench, so a bug in the tool's training code does not show up here too.
Recipe: Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU" (airbench94, 2024).

$ python benchmarks/airbench_reference.py --data ../shared/data/cifar10.tgz            # ~37 min on 2 CPU cores
$ python benchmarks/airbench_reference.py --data cifar10.tgz --device cuda             # seconds on a GPU
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from ambig_bench.config import DataOptions, RunConfig
from ambig_bench.data import SPLITS
from ambig_bench.datasets.cifar10 import cifar10

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
BATCH, MOMENTUM, LR, WD, BIAS_LR = 1024, 0.85, 11.5, 0.0153, 64.0  # lr and wd per 1024 images, decoupled


class Norm(nn.BatchNorm2d):
    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad_(False)


def conv(c_in: int, c_out: int, kernel: int = 3, padding: str | int = "same", bias: bool = False) -> nn.Conv2d:
    layer = nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=bias)
    if bias:
        nn.init.zeros_(layer.bias)
    nn.init.dirac_(layer.weight.data[:c_in])
    return layer


def block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(conv(c_in, c_out), nn.MaxPool2d(2), Norm(c_out), nn.GELU(),
                         conv(c_out, c_out), Norm(c_out), nn.GELU())


def network(whiten_on: torch.Tensor) -> nn.Sequential:
    stem = conv(3, 24, 2, padding=0, bias=True)
    patches = whiten_on.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 12).double()
    values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    filters = (vectors.T.flip(0) / (values.flip(0) + 5e-4).sqrt()[:, None]).reshape(12, 3, 2, 2)
    stem.weight.data.copy_(torch.cat([filters, -filters]))
    stem.weight.requires_grad_(False)
    return nn.Sequential(stem, nn.GELU(), block(24, 64), block(64, 256), block(256, 256), nn.MaxPool2d(3),
                         nn.Flatten(), nn.Linear(256, 10, bias=False))


def random_crops(padded: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random 32x32 window of each 36x36 (2-px reflect-padded) image."""
    dy, dx = (torch.randint(0, 5, (len(padded),), generator=gen, device=padded.device) for _ in range(2))
    rows = (dy[:, None] + torch.arange(32, device=padded.device)).view(-1, 1, 32, 1).expand(-1, 3, 32, 36)
    cols = (dx[:, None] + torch.arange(32, device=padded.device)).view(-1, 1, 1, 32).expand(-1, 3, 32, 32)
    return padded.gather(2, rows).gather(3, cols)


@torch.no_grad()
def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, views: bool) -> float:
    net.eval()
    correct = 0
    for x, y in zip(images.split(2000), labels.split(2000), strict=True):
        mirrored = lambda z: (net(z) + net(z.flip(3))) / 2  # noqa: E731
        if views:
            padded = F.pad(x, (1,) * 4, "reflect")
            logits = mirrored(x) / 2 + mirrored(padded[..., :32, :32]) / 4 + mirrored(padded[..., 2:, 2:]) / 4
        else:
            logits = net(x)
        correct += int((logits.argmax(1) == y).sum())
    return correct / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10.tgz", help="CIFAR-10 tree, .tgz or batches")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=9.9)
    parser.add_argument("--label-smoothing", type=float, default=0.2)
    parser.add_argument("--whiten", choices=["first", "even"], default="even",
                        help="fit whitening on the first 5,000 images (airbench) or 5,000 evenly spaced ones; the "
                             "tree is sorted by class, so 'first' means airplanes only")
    parser.add_argument("--limit", type=int, default=0, help="use only N evenly spaced train and test images (smoke "
                                                                "tests; 0 = all)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)

    raw = cifar10(RunConfig(data=DataOptions(dataset="cifar10", data_dir=args.data)))
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (MEAN, STD))
    spread = lambda n: torch.arange(min(args.limit, n)) * (n - 1) // max(min(args.limit, n) - 1, 1)  # noqa: E731

    def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A split's images (normalised floats on the device) and labels; --limit applies before the conversion."""
        images, labels = raw.images[raw.split == SPLITS[name]], raw.labels[raw.split == SPLITS[name]]
        if args.limit:
            images, labels = images[spread(len(images))], labels[spread(len(images))]
        return (images.to(device).float() / 255 - mean) / std, labels.to(device)

    (train_x, train_y), (test_x, test_y) = split("train"), split("test")
    k = min(5000, len(train_x))
    fit = train_x[:k] if args.whiten == "first" else train_x[torch.arange(k) * (len(train_x) - 1) // max(k - 1, 1)]
    net = network(fit).to(device)

    # airbench's decoupled hyperparameters, converted for PyTorch's SGD on a summed loss.
    scale = 1024 * (1 + 1 / (1 - MOMENTUM))
    lr, wd = LR / scale, WD * BATCH / scale
    norm_biases = [p for m in net.modules() if isinstance(m, Norm) for p in m.parameters() if p.requires_grad]
    others = [p for p in net.parameters() if p.requires_grad and all(p is not q for q in norm_biases)]
    optimizer = torch.optim.SGD([dict(params=norm_biases, lr=lr * BIAS_LR, weight_decay=wd / (lr * BIAS_LR)),
                                 dict(params=others, lr=lr, weight_decay=wd / lr)], momentum=MOMENTUM, nesterov=True)
    steps_per_epoch = len(train_x) // BATCH
    if steps_per_epoch == 0:
        parser.error(f"--limit {args.limit}: fewer training images than one batch of {BATCH}")
    total = math.ceil(steps_per_epoch * args.epochs)
    rise = int(0.23 * total)
    triangle = lambda s: 0.2 + 0.8 * s / rise if s < rise else 1 - 0.93 * (s - rise) / (total - rise)  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, triangle)
    average = {k: v.clone() for k, v in net.state_dict().items()}

    def lookahead(keep: float) -> None:
        for avg, now in zip(average.values(), net.state_dict().values(), strict=True):
            if now.is_floating_point():
                avg.lerp_(now, 1 - keep)
                now.copy_(avg)

    padded = F.pad(train_x, (2,) * 4, "reflect")
    padded = torch.where(torch.rand(len(padded), 1, 1, 1, generator=gen, device=device) < 0.5, padded.flip(3), padded)
    started, step = time.perf_counter(), 0
    for epoch in range(math.ceil(args.epochs)):
        net[0].bias.requires_grad_(epoch < 3)
        net.train()
        images = random_crops(padded, gen)
        images = images.flip(3) if epoch % 2 else images  # alternating flips: every image both ways in 2 epochs
        order = torch.randperm(len(images), generator=gen, device=device)
        for i in range(steps_per_epoch):
            batch = order[i * BATCH:(i + 1) * BATCH]
            # airbench's output scale 1/9 (it leaves the argmax, so evaluation skips it).
            loss = F.cross_entropy(net(images[batch]) / 9, train_y[batch], label_smoothing=args.label_smoothing,
                                   reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 5 == 0:
                lookahead(0.95**5 * (step / total) ** 3)
            if step == total:
                lookahead(1.0)
                break
        print(f"epoch {epoch + 1}: loss {loss.item() / BATCH:.4f}, test accuracy "
              f"{accuracy(net, test_x, test_y, False):.4f}, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(f"airbench94 reference, whiten {args.whiten}, label smoothing {args.label_smoothing}, {len(train_x)} "
          f"training images, {args.epochs} epochs: test accuracy {accuracy(net, test_x, test_y, False):.4f}, with "
          f"test-time views {accuracy(net, test_x, test_y, True):.4f} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
