"""Linear-probe benchmark (`--freeze`): the tool's probe against scikit-learn and against the old epoch loop.

Real images: the first --images CIFAR-10 test images of ../shared/data/cifar10.tgz with their CIFAR-10H votes as a
labels CSV (vote columns; in-between where two classes hold 90% of the votes), at 16x16; a backbone with 1,280-d
features from a weights file: no pretrained weights are available offline, so an ImageNet-free stand-in, a random
small-cnn of width 320 with BatchNorm statistics measured on CIFAR-10 training images (`stand_in_weights`);
features cached once. It prints:
  (a) the tool's `soft` probe's clear-cut test accuracy minus scikit-learn LogisticRegression's (defaults, C = 1),
      on the same cached features (standardised alike) and the same splits, mean over seeds (target: within 1
      point); and beside it scikit-learn at the probe's own chosen L2 (C = 1 / (N l2)): the same optimum;
  (b) the wall time of the probe fits of a grid of strategies x seeds once the features are cached (target:
      <= 10 s on 2 cores), and of the same runs' heads trained by the old epoch loop (`train.train` over the
      raw features under the model's recipe), with the in-memory path around them (prepare, evaluate) apart;
      writing each run's files (the full network, some MB a run) is disk time, left out;
  (c) how many feature passes the grid made and over how many images (target: one pass per image set).

$ python benchmarks/probe.py --data ../shared/data/cifar10.tgz          # 1,000 images, 8 strategies x 10 seeds
$ python benchmarks/probe.py --images 200 --seeds 2 --strategies soft,hard --old-seeds 1   # smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression

from ambig_bench import features
from ambig_bench.evaluation import evaluate_run
from ambig_bench.models import build_network
from ambig_bench.options import build
from ambig_bench.prepare import prepare_run
from ambig_bench.probe import Standardise, fit_head
from ambig_bench.train import Job, predict_logits, train

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = "soft,hard,discard,extra-class,multilabel,partial,reassign,duplicate"
PAIRS = "cat:dog,automobile:truck,deer:horse,airplane:ship"  # CIFAR-10H's usual in-between pairs


def cifar_folder(archive: Path, votes: Path, images: int, into: Path) -> tuple[Path, torch.Tensor]:
    """The first `images` CIFAR-10 test images and a labels CSV of their CIFAR-10H vote counts; and as many CIFAR-10
    training images (uint8 N×3×32×32) for the stand-in backbone's BatchNorm statistics."""
    with votes.open() as f:
        rows = list(csv.reader(f))
    header, listed = rows[0], rows[1:images + 1]
    wanted = {row[0] for row in listed}
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        tar.extractall(into / "cifar", members=[m for m in members if m.name.removeprefix("./") in wanted],
                       filter="data")
        train = [m for m in members if m.isfile() and m.name.removeprefix("./").startswith("train/")][::50][:images]
        pixels = [np.asarray(Image.open(tar.extractfile(m)).convert("RGB")) for m in train]
    with (into / "labels.csv").open("w", newline="") as f:  # under cifar/: a leading test/ would name a split
        csv.writer(f).writerows([header, *[[f"cifar/{row[0]}", *row[1:]] for row in listed]])
    return into / "labels.csv", torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()


def stand_in_weights(images: torch.Tensor, width: int, image_size: int, path: Path) -> Path:
    """No pretrained weights offline, and a deep network's random initialisation gives features near chance (a
    random mobilenet_v3_large or efficientnet_b0 probe: 0.12-0.16 clear-cut accuracy here). The stand-in: a random
    small-cnn (seed 0) of `width` (4·width-d features), its BatchNorm statistics measured on CIFAR-10 training
    images (no labels, no ImageNet), saved as a weights file as a user's own would be."""
    x = torch.nn.functional.interpolate(images.float(), size=image_size, mode="bilinear", antialias=True)
    x = x.round().clamp(0, 255).to(torch.uint8)
    torch.manual_seed(0)
    net = build_network("small-cnn", x, 10, width)
    for layer in net.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average over the batches
    net.train()
    with torch.no_grad():
        for batch in x.split(100):
            net(batch)
    save_file({k: v.contiguous() for k, v in net[1].state_dict().items()}, path)
    return path


def sklearn_clear_acc(run, c: float | None) -> float:
    """scikit-learn's multinomial logistic regression on the run's standardised features (C = 1 by default, or `c`),
    soft targets as weighted rows (an in-between image twice, as A and as B, weighted by its shares); clear-cut
    test accuracy."""
    train, test = run.inputs.subset("train"), run.inputs.subset("test")
    scale = Standardise.fit(train.images.flatten(1))
    z = scale(train.images.flatten(1)).double().numpy()
    between = train.is_between.numpy()
    x = np.concatenate([z, z[between]])
    y = np.concatenate([train.label_a.numpy(), train.label_b.numpy()[between]])
    w = np.concatenate([train.share_a.numpy(), 1 - train.share_a.numpy()[between]])
    model = LogisticRegression(C=c if c is not None else 1.0, max_iter=5000).fit(x, y, sample_weight=w)
    clear = ~test.is_between.numpy()
    predicted = model.predict(scale(test.images.flatten(1)).double().numpy()[clear])
    return float((predicted == test.label_a.numpy()[clear]).mean())


def head_clear_acc(run, device: torch.device) -> float:
    """Clear-cut test accuracy of the run's head over its features, as evaluate_run scores it."""
    test = run.inputs.subset("test")
    probs = run.strategy.class_probs(predict_logits(run.trainable, test.images, device))
    clear = ~test.is_between
    return float((probs[clear].argmax(1) == test.label_a[clear]).float().mean())


def bench(args: argparse.Namespace, work: Path) -> dict:
    labels, train_images = cifar_folder(args.data, args.data.parent / "cifar10h" / "cifar10h-counts.csv",
                                        args.images, work)
    weights = stand_in_weights(train_images, args.width, args.image_size, work / "weights.safetensors")
    device = torch.device(args.device)
    base = {"dataset": "folder", "labels": str(labels), "between_source": "human", "pairs": PAIRS,
            "model": "small-cnn", "width": args.width, "weights": str(weights), "image_size": args.image_size,
            "freeze": True, "device": args.device}
    passes: list[int] = []
    computed = features.predict_logits

    def counted(model, images, dev, **kwargs):
        passes.append(len(images))
        return computed(model, images, dev, **kwargs)

    features.predict_logits = counted
    strategies = args.strategies.split(",")
    grid = [build({**base, "strategy": s, "seed": seed}) for seed in range(args.seeds) for s in strategies]
    started = time.perf_counter()
    prepare_run(grid[0], device)  # the features, computed once
    first_pass = time.perf_counter() - started
    fit_seconds = path_seconds = 0.0
    soft_acc, sk_default, sk_same, chosen, converged = [], [], [], [], 0
    for cfg in grid:
        begun = time.perf_counter()
        run = prepare_run(cfg, device)
        fitted = time.perf_counter()
        history = fit_head(run.trainable[-1], run.strategy, run.inputs, cfg.seed, device)
        fit_seconds += time.perf_counter() - fitted
        record = evaluate_run(run, device, history, 0.0)
        path_seconds += time.perf_counter() - begun
        converged += bool(history[-1]["converged"])
        if cfg.strategy == "soft":
            soft_acc.append(record.metrics["clear_acc"])
            chosen.append(history[-1]["probe_l2"])
            sk_default.append(sklearn_clear_acc(run, None))
            sk_same.append(sklearn_clear_acc(run, 1 / (len(run.inputs.subset("train")) * chosen[-1])))
    old_runs = [cfg for cfg in grid if cfg.seed < args.old_seeds]
    old_seconds, old_soft = 0.0, []
    for cfg in old_runs:
        run = prepare_run(cfg, device)
        begun = time.perf_counter()
        [history] = train([Job(run.trainable, run.strategy, run.inputs.subset("train"), cfg.seed)], run.recipe, device)
        old_seconds += time.perf_counter() - begun
        if cfg.strategy == "soft":
            old_soft.append(head_clear_acc(run, device))
    features.predict_logits = computed
    n_train = len(prepare_run(grid[0], device).inputs.subset("train"))
    return {
        "images": args.images, "train_images": n_train, "feature_dim": int(run.inputs.images.shape[1]),
        "runs": len(grid), "strategies": strategies, "seeds": args.seeds, "threads": torch.get_num_threads(),
        "soft_clear_acc": float(np.mean(soft_acc)) if soft_acc else None,
        "sklearn_default_clear_acc": float(np.mean(sk_default)) if sk_default else None,
        "sklearn_same_l2_clear_acc": float(np.mean(sk_same)) if sk_same else None,
        "soft_minus_sklearn_default": float(np.mean(soft_acc) - np.mean(sk_default)) if soft_acc else None,
        "soft_minus_sklearn_same_l2": float(np.mean(soft_acc) - np.mean(sk_same)) if soft_acc else None,
        "soft_chosen_l2": chosen, "converged_runs": converged,
        "probe_fit_seconds": fit_seconds, "grid_in_memory_seconds": path_seconds,
        "old_loop_runs": len(old_runs), "old_loop_seconds": old_seconds,
        "old_loop_soft_clear_acc": float(np.mean(old_soft)) if old_soft else None,
        "feature_passes": len(passes), "feature_images": sum(passes), "first_pass_seconds": first_pass,
    }


def report(f: dict) -> None:
    print(f"{f['images']} CIFAR-10 test images ({f['train_images']} for training), {f['feature_dim']}-d features, "
          f"{f['runs']} runs ({len(f['strategies'])} strategies x {f['seeds']} seeds), {f['threads']} torch threads")
    if f["soft_clear_acc"] is not None:
        print(f"(a) clear-cut accuracy: soft probe {f['soft_clear_acc']:.4f}, scikit-learn (C = 1) "
              f"{f['sklearn_default_clear_acc']:.4f}: soft - sklearn = {100 * f['soft_minus_sklearn_default']:+.2f} "
              f"points; at the probe's own L2 {f['sklearn_same_l2_clear_acc']:.4f}: "
              f"{100 * f['soft_minus_sklearn_same_l2']:+.2f} points (chosen L2 per seed: {f['soft_chosen_l2']})")
    per_run = f["probe_fit_seconds"] / f["runs"]
    print(f"(b) probe fits: {f['probe_fit_seconds']:.2f} s for {f['runs']} runs ({per_run:.3f} s a run), "
          f"{f['converged_runs']} of {f['runs']} converged; with prepare and evaluate "
          f"{f['grid_in_memory_seconds']:.2f} s")
    if f["old_loop_runs"]:
        old = f["old_loop_seconds"] / f["old_loop_runs"]
        acc = f" (soft clear-cut accuracy {f['old_loop_soft_clear_acc']:.4f})" if f["old_loop_soft_clear_acc"] else ""
        print(f"    old epoch loop: {f['old_loop_seconds']:.2f} s for {f['old_loop_runs']} runs ({old:.3f} s a run)"
              f"{acc}; old / probe per run = {old / per_run:.1f}")
    print(f"(c) feature passes: {f['feature_passes']} over {f['feature_images']} images "
          f"({f['first_pass_seconds']:.1f} s for the first run's)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10.tgz",
                        help="cifar10.tgz, with cifar10h/cifar10h-counts.csv beside it")
    parser.add_argument("--images", type=int, default=1000, help="the first N CIFAR-10 test images")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--strategies", default=STRATEGIES)
    parser.add_argument("--old-seeds", type=int, default=10, help="seeds of the grid also trained by the epoch loop")
    parser.add_argument("--width", type=int, default=320, help="the stand-in small-cnn's width (4·width-d features)")
    parser.add_argument("--image-size", type=int, default=16, help="images resized to this (16: CIFAR at half size)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"--data: {args.data} does not exist", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as work:
        os.environ.setdefault("AMBIG_BENCH_CACHE", str(Path(work) / "cache"))
        figures = bench(args, Path(work))
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
