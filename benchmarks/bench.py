"""Training-speed benchmark: ambig-bench's loop against a bare loop and a textbook DataLoader loop.

All measurements run in one process on the same random data and network, so the ratios are fair:
  (a) ambig-bench's `train` with one strategy (device-resident uint8 data, bf16 autocast on CUDA);
  (b) a bare device-resident loop of the same network, augmentation and optimiser (target: a >= b / 1.15);
  (c) a textbook loop: float32 tensors in a DataLoader (batch 128, 2 workers), copied per batch,
      fp32, `.item()` every step (target: a >= 6 × c);
  (d) K runs of a small CNN on 28×28 images trained one after another vs as one batched model.

A developer's benchmark of the tool's training loop (not part of the tool's CLI):
$ python benchmarks/bench.py --device cuda                     # full size (GPU)
$ python benchmarks/bench.py --device cpu --images 512 --epochs 1 --seeds 2 --small-images 512   # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ambig_bench.batched import widen
from ambig_bench.config import RunConfig, TrainOptions
from ambig_bench.data import CLEAR, LabelledImages
from ambig_bench.models import MODELS, build_network
from ambig_bench.options import build
from ambig_bench.strategies import STRATEGIES
from ambig_bench.train import (
    Job,
    Lookahead,
    augment,
    autocast,
    device_layout,
    make_optimizer,
    pick_device,
    timed,
    train,
)


@dataclass
class BenchConfig:
    device: str = "auto"  # auto | cpu | cuda
    model: str = "fast-cifar"  # network of measurements a-c
    images: int = 50_000  # random 3×32×32 training images for a-c
    epochs: int = 3  # timed epochs per measurement (after a one-epoch warm-up)
    seeds: int = 8  # runs trained together in measurement d
    small_images: int = 60_000  # random 1×28×28 images per run in measurement d
    compile: bool = False  # torch.compile the model in measurement a
    repeats: int = 3  # timed rounds; each figure is its best round


def random_data(n: int, channels: int, size: int, gen: torch.Generator) -> LabelledImages:
    """Random uint8 images, 10 classes, 5% of them in-between pair (3, 5): CIFAR-shaped work."""
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen)
    label_a = torch.randint(0, 10, (n,), generator=gen)
    between = torch.rand(n, generator=gen) < 0.05
    label_a[between] = 3
    label_b = torch.where(between, 5, CLEAR)
    share = torch.where(between, 0.5, 1.0)
    return LabelledImages(images, label_a, label_b, share, torch.zeros(n, dtype=torch.int8),
                          [str(i) for i in range(10)], [(3, 5)])


def new_model(cfg: RunConfig, data: LabelledImages, outputs: int, device: torch.device) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return device_layout(build_network(cfg.model.name, data.images, outputs, cfg.model.width).to(device), device)


def bare_loop(model: nn.Module, data: LabelledImages, cfg: RunConfig, device: torch.device) -> None:
    """(b) The same work written as plainly as possible: no strategy, no schedule bookkeeping."""
    images, labels = data.images.to(device), data.label_a.to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    optimizer = make_optimizer(model, cfg, device)
    recipe = MODELS.get(cfg.model.name).recipe
    lookahead = Lookahead(model, recipe) if cfg.model.lookahead == "on" else None  # part of the recipe, so of the work
    total = cfg.train.epochs * math.ceil(len(images) / cfg.model.batch_size)
    done = 0
    model.train()
    for _ in range(cfg.train.epochs):
        order = torch.randperm(len(images), generator=gen, device=device)
        step = cfg.model.batch_size
        for start in range(0, len(order), step):
            x = device_layout(augment(images[order[start:start + step]], gen, cfg.train.translate), device)
            with autocast(device):
                loss = F.cross_entropy(model(x).float(), labels[order[start:start + step]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if lookahead:
                lookahead.step(done, total)


def textbook_loop(model: nn.Module, data: LabelledImages, cfg: RunConfig, device: torch.device) -> None:
    """(c) The loop of most tutorials: float32 CPU tensors, a DataLoader, per-step copies and `.item()`."""
    x_all = ((data.images.float() - 128) / 64).contiguous()
    loader = DataLoader(TensorDataset(x_all, data.label_a), batch_size=128, shuffle=True, num_workers=2)
    optimizer = torch.optim.SGD(model[1].parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(cfg.train.epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model[1](x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # what tutorials do to log the loss: a host sync every step


def best_throughput(device: torch.device, images: int, runs: dict[str, Callable], repeats: int) -> dict[str, float]:
    """images/s of each `run(epochs)`: one warm-up epoch each (kernel selection, allocator, compile), then the best
    of `repeats` timed rounds, taken in turns so that drifts (clocks, heat, other processes) hit all alike."""
    for run in runs.values():
        run(1)
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = max(best[name], images / timed(device, lambda run=run: run(None)))
    return best


def bench(bc: BenchConfig) -> dict[str, float]:
    device = pick_device(bc.device)
    gen = torch.Generator().manual_seed(0)
    data = random_data(bc.images, 3, 32, gen)
    cfg = build({"model": bc.model, "epochs": bc.epochs, "device": str(device), "augment": "on",
                 "compile": bc.compile})
    soft = STRATEGIES.get("soft")(10, data.pairs)

    def with_epochs(c: RunConfig, e: int | None) -> RunConfig:
        return dataclasses.replace(c, train=TrainOptions(e or bc.epochs, c.train.augment, c.train.translate))

    model_a = new_model(cfg, data, soft.num_outputs, device)
    trained = torch.compile(model_a) if bc.compile else model_a
    model_b, model_c = new_model(cfg, data, 10, device), new_model(cfg, data, 10, device)
    results = best_throughput(device, bc.images * bc.epochs, {
        "a_ambig_bench": lambda e: train([Job(trained, soft, data, 0)], with_epochs(cfg, e), device),
        "b_bare_loop": lambda e: bare_loop(model_b, data, with_epochs(cfg, e), device),
        "c_textbook": lambda e: textbook_loop(model_c, data, with_epochs(cfg, e), device),
    }, bc.repeats)

    small = [random_data(bc.small_images, 1, 28, torch.Generator().manual_seed(s)) for s in range(bc.seeds)]
    small_cfgs = [build({"model": "small-cnn", "seed": s, "epochs": bc.epochs, "batch_size": 512,
                         "device": str(device)}) for s in range(bc.seeds)]

    def sequential(e):
        for c, d in zip(small_cfgs, small, strict=True):
            train([Job(new_model(c, d, 10, device), soft, d, c.seed)], with_epochs(c, e), device)

    def batched(e):
        models = [new_model(c, d, 10, device) for c, d in zip(small_cfgs, small, strict=True)]
        jobs = [Job(m, soft, d, c.seed) for m, d, c in zip(models, small, small_cfgs, strict=True)]
        train(jobs, with_epochs(small_cfgs[0], e), device, device_layout(widen(models).to(device), device))

    results |= best_throughput(device, bc.small_images * bc.epochs * bc.seeds,
                               {"d_sequential": sequential, "d_batched": batched}, bc.repeats)
    results["ratio_a_over_b"] = results["a_ambig_bench"] / results["b_bare_loop"]
    results["ratio_a_over_c"] = results["a_ambig_bench"] / results["c_textbook"]
    results["ratio_batched_over_sequential"] = results["d_batched"] / results["d_sequential"]
    return results


def render(results: dict[str, float], bc: BenchConfig, device_name: str) -> str:
    rows = [
        ("(a) ambig-bench train, strategy soft", results["a_ambig_bench"]),
        ("(b) bare device-resident loop", results["b_bare_loop"]),
        ("(c) textbook DataLoader loop", results["c_textbook"]),
        (f"(d) {bc.seeds} small CNNs one after another", results["d_sequential"]),
        (f"(d) {bc.seeds} small CNNs batched", results["d_batched"]),
    ]
    lines = [f"device: {device_name}; model {bc.model}; {bc.images} images × {bc.epochs} epochs; "
             f"best of {bc.repeats} rounds", "",
             "| measurement | images/s |", "|---|---|"]
    lines += [f"| {name} | {value:,.0f} |" for name, value in rows]
    lines += ["", f"a / b = {results['ratio_a_over_b']:.2f} (target >= {1 / 1.15:.2f})",
              f"a / c = {results['ratio_a_over_c']:.2f} (target >= 6)",
              f"batched / sequential = {results['ratio_batched_over_sequential']:.2f}"]
    return "\n".join(lines)


def device_name(device: str) -> str:
    d = pick_device(device)
    return torch.cuda.get_device_name(d) if d.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = BenchConfig()
    for f in dataclasses.fields(BenchConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name))
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = vars(parser.parse_args(argv))
    json_out = args.pop("json")
    bc = BenchConfig(**args)
    if min(bc.images, bc.epochs, bc.seeds, bc.small_images, bc.repeats) < 1:
        parser.error("--images, --epochs, --seeds, --small-images and --repeats must be at least 1")
    print(f"benchmarking on {device_name(bc.device)} ...", file=sys.stderr)
    results = bench(bc)
    print(render(results, bc, device_name(bc.device)))
    if json_out:
        json_out.write_text(json.dumps({"device": device_name(bc.device), "config": dataclasses.asdict(bc),
                                        **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
