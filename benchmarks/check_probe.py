"""An independent check of a results directory's linear probes (`--freeze`): scikit-learn on the same features.

For every finished `soft` run of RESULTS_DIR trained with --freeze, the run's own data and cached features are
prepared again from its config.json (`prepare.prepare_run`: the same splits, the same backbone), and scikit-learn's
LogisticRegression is fitted on the same standardised training features (`probe.sklearn_clear_acc`: soft targets
as weighted rows) with its default C = 1, and at the run's own chosen L2 (C = 1 / (N l2)). It prints the run's
clear-cut test accuracy (metrics.json) beside both, and the mean differences.

$ python benchmarks/check_probe.py results/probe
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe import sklearn_clear_acc  # noqa: E402  (benchmarks/probe.py, beside this file)

from ambig_bench.options import build, table  # noqa: E402
from ambig_bench.prepare import prepare_run  # noqa: E402
from ambig_bench.rundir import list_runs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for run in list_runs(args.results_dir):
        options = run.options()
        if not run.done or options.get("strategy") != "soft" or not options.get("freeze"):
            continue
        metrics = run.metrics()
        cfg = build({k: v for k, v in options.items() if k in table()})  # data_version: a record, not an option
        prepared = prepare_run(cfg, torch.device("cpu"))
        n_train = len(prepared.inputs.subset("train"))
        rows.append((cfg.seed, metrics["clear_acc"], sklearn_clear_acc(prepared, None),
                     sklearn_clear_acc(prepared, 1 / (n_train * metrics["probe_l2"]))))
    if not rows:
        print(f"{args.results_dir}: no finished soft runs with --freeze", file=sys.stderr)
        return 2
    print("seed  run clear_acc  sklearn C=1  sklearn at the run's L2")
    for seed, ours, default, same in sorted(rows):
        print(f"{seed:>4}  {ours:13.4f}  {default:11.4f}  {same:23.4f}")
    _, ours, default, same = (np.array(c) for c in zip(*rows, strict=True))
    print(f"mean over {len(rows)} runs: run {ours.mean():.4f}; run - sklearn(C=1) {100 * (ours - default).mean():+.2f} "
          f"points; run - sklearn(same L2) {100 * (ours - same).mean():+.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
