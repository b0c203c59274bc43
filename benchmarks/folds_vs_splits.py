"""Random splits or K folds for a folder of photos: which gives the narrower 95% CI of a metric's seed-mean?

Trains the same strategies over --seeds seeds twice, on the same labels CSV: with today's random splits per seed
(--folds 0) and with --folds K (seed s tests fold s mod K), and prints per strategy and metric the seed-mean and
the width of its 95% CI (`stats.mean_ci`, a t-interval over seeds) for both, their ratio, how many distinct
in-between images the seeds tested in all, and for the folds the share pooled over the images (each tested once)
with its 95% Wilson interval. Finished runs are reused. Build the photos with benchmarks/own_photos.py.

$ python benchmarks/folds_vs_splits.py results/own-photos/labels.csv --out results/folds-vs-splits --epochs 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from scipy.stats import binomtest

import ambig_bench as ab
from ambig_bench.data import SPLITS
from ambig_bench.datasets import prepare
from ambig_bench.options import build
from ambig_bench.stats import mean_ci

# metric -> the count of the images it is a share of
METRICS = {"between_set_acc": "n_between", "between_top2": "n_between", "clear_acc": "n_clear"}


def distinct_between_tested(options: dict, seeds: int) -> int:
    """In-between images tested by any of the seeds (the human source keeps the dataset's order)."""
    tested = None
    for seed in range(seeds):
        data = prepare(build({**options, "seed": seed}))
        mine = (data.split == SPLITS["test"]) & data.is_between
        tested = mine if tested is None else tested | mine
    return int(tested.sum())


def pooled_ci(results: list, metric: str, count: str) -> tuple[float, float]:
    """A share over images pooled across seeds (each image tested once: the folds) and its 95% Wilson interval's
    width: correct = the metric times its image count, per seed."""
    correct = sum(round(r.metrics[metric] * r.metrics[count]) for r in results)
    n = sum(r.metrics[count] for r in results)
    ci = binomtest(correct, n).proportion_ci(0.95, method="wilson")
    return correct / n, ci.high - ci.low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels", help="labels CSV of a folder dataset with A|B rows")
    parser.add_argument("--out", default="results/folds-vs-splits")
    parser.add_argument("--strategy", default="soft,hard")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--model", default="small-cnn")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    common = {"dataset": "folder", "labels": args.labels, "model": args.model, "width": args.width,
              "epochs": args.epochs, "device": "cpu"}
    arms, seen = {}, {}
    for folds in (0, args.folds):
        options = {**common, "folds": folds}
        arms[folds] = ab.run(strategies=args.strategy, seeds=args.seeds, out=str(Path(args.out) / f"folds{folds}"),
                             **options)
        seen[folds] = distinct_between_tested(options, args.seeds)
    print(f"{args.model} width {args.width}, {args.epochs} epochs, {args.seeds} seeds, {args.labels}")
    print(f"distinct in-between images tested: random splits {seen[0]}, {args.folds} folds {seen[args.folds]}")
    print(f"{'strategy':10s} {'metric':16s} {'splits: mean':>12s} {'CI width':>9s} {'folds: mean':>12s} "
          f"{'CI width':>9s} {'ratio':>6s} {'pooled':>7s} {'Wilson width':>12s}")
    for strategy in args.strategy.split(","):
        splits, folds = ([r for r in arms[k] if r.config.strategy == strategy] for k in (0, args.folds))
        for metric, count in METRICS.items():
            (mean_s, lo_s, hi_s), (mean_f, lo_f, hi_f) = (mean_ci([r.metrics[metric] for r in runs])
                                                          for runs in (splits, folds))
            pooled, width = pooled_ci(folds, metric, count)
            print(f"{strategy:10s} {metric:16s} {mean_s:12.3f} {hi_s - lo_s:9.3f} {mean_f:12.3f} {hi_f - lo_f:9.3f} "
                  f"{(hi_f - lo_f) / (hi_s - lo_s):6.2f} {pooled:7.3f} {width:12.3f}")
    print("CI width: 95% t-interval of the seed-mean; ratio: folds / splits; pooled: the folds' images together, "
          "each tested once, with its 95% Wilson interval")


if __name__ == "__main__":
    main()
