"""How the convergence rule (`ambig_bench.convergence`) judges runs trained for different numbers of epochs, beside
what more epochs bought: for each results directory, each run's epochs, the share of their way the training and
validation losses still fell in the last epochs, the final validation criterion, clear-cut accuracy and verdict.

$ ambig-bench run --dataset digits --strategy soft,hard,multilabel --seeds 2 --epochs 12 --width 16 --lr 0.01 \\
      --out results/epochs-12      # and the same with 24 and 40 epochs
$ python benchmarks/convergence_epochs.py results/epochs-12 results/epochs-24 results/epochs-40
"""

from __future__ import annotations

import sys

from ambig_bench.convergence import WINDOW, judge, trend
from ambig_bench.rundir import list_runs


def main(folders: list[str]) -> None:
    print(f"{'run':36} {'epochs':>6} {'train fall':>10} {'val fall':>9} {'val loss':>9} {'clear acc':>9}  converged")
    for folder in folders:
        for run in list_runs(folder):
            if not run.done:
                continue
            history, metrics = run.history(), run.metrics()
            falls = [f"{-trend(list(history[c])):.2%}" if len(history) > WINDOW else "-" for c in ("train_loss",
                                                                                                  "val_loss")]
            print(f"{run.name:36} {len(history):6d} {falls[0]:>10} {falls[1]:>9} {history.val_loss.iloc[-1]:9.4f} "
                  f"{metrics['clear_acc']:9.3f}  {judge(history.to_dict('records'))[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
