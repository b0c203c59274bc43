"""Conformal sets for a finished run, calibrated on its saved predictions (predictions.csv): no model needed.

A run's validation rows give qhat (so predicting never reruns validation); its test rows score the sets.
The predictions are read, and checked, by `RunDir.predictions` (ambig_bench.rundir).

>>> cal = calibrate_run("results/demo/runs/soft-seed0-1a2b3c4d", alpha=0.1)  # doctest: +SKIP
>>> cal.qhat, cal.n  # doctest: +SKIP
(0.62, 220)
>>> conformal_summary("results/demo/runs/soft-seed0-1a2b3c4d")["cp_coverage"]  # doctest: +SKIP
0.91
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ambig_bench.conformal import METHODS, calibrate, prediction_sets, set_metrics
from ambig_bench.errors import UserError
from ambig_bench.metrics import label_set_mask
from ambig_bench.rundir import RunDir


@dataclass
class Calibration:
    method: str  # "lac", "aps" or "raps" (ambig_bench.conformal.METHODS)
    alpha: float  # miscoverage level: sets miss a true label for at most alpha of the images
    per_kind: bool  # qhat is the larger of the clear-cut and the in-between quantile (see calibrate_run)
    qhat: float  # score threshold; +inf when there are too few validation images for alpha (every class)
    n: int  # validation images it was calibrated on
    num_classes: int


def check_conformal_options(alpha: float, method: str) -> None:
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be in (0, 1), got {alpha}")
    if method not in METHODS:
        raise UserError(f"--conformal must be one of {', '.join(METHODS)}, got {method!r}")


def probs_of(frame: pd.DataFrame, k: int) -> np.ndarray:
    return frame[[f"p_{i}" for i in range(k)]].to_numpy(dtype=float)


def truth_of(frame: pd.DataFrame, k: int) -> np.ndarray:
    """N×K bool: {label_a}, or {label_a, label_b} for an in-between row (label_b >= 0)."""
    return label_set_mask(torch.tensor(frame.label_a.to_numpy(np.int64)),
                          torch.tensor(frame.label_b.to_numpy(np.int64)), k).numpy()


def run_of(run_dir: str | Path | RunDir) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)


def calibrate_run(run_dir: str | Path | RunDir, alpha: float = 0.1, method: str = "lac", per_kind: bool = True
                  ) -> Calibration:
    """qhat from the run's validation rows (predictions.csv), so predicting never reruns validation.

    per_kind: calibrate the clear-cut and the in-between validation images separately and keep the larger
    qhat. Sets only grow with qhat, so each kind is then covered with probability >= 1 - alpha on its own,
    and so is any mix of the two. Plain (marginal) calibration covers 1 - alpha only on a mix like the
    validation split's: in-between images, a minority there, are under-covered, and a deployment with more
    of them than validation had gets less than 1 - alpha overall.
    """
    return calibrate_frame(*run_of(run_dir).predictions(), alpha, method, per_kind)


def calibrate_frame(frame: pd.DataFrame, k: int, alpha: float, method: str, per_kind: bool) -> Calibration:
    check_conformal_options(alpha, method)
    val = frame[frame.split == "val"]
    groups = [g for _, g in val.groupby(val.label_b >= 0)] if per_kind else [val]
    qhat = max(calibrate(probs_of(g, k), truth_of(g, k), alpha, method) for g in groups)
    return Calibration(method, alpha, per_kind, qhat, len(val), k)


def sets_from_column(pred_set: pd.Series, k: int) -> np.ndarray:
    """The `pred_set` column ("4|9") as an N×K bool mask."""
    sets = np.zeros((len(pred_set), k), dtype=bool)
    for row, text in enumerate(pred_set):
        sets[row, [int(c) for c in text.split("|") if c]] = True
    return sets


def conformal_summary(run_dir: str | Path | RunDir, alpha: float = 0.1, method: str = "lac", per_kind: bool = True
                      ) -> dict[str, float]:
    """Test-split set quality of the conformal sets (cp_*) and of the strategy's threshold sets (thr_*).

    coverage = every true label is in the set; size = mean number of classes in the set; exact = the set is
    exactly the true pair. cp_coverage over all test images is what the 1 - alpha guarantee is about.
    """
    frame, k = run_of(run_dir).predictions()
    cal = calibrate_frame(frame, k, alpha, method, per_kind)
    test = frame[frame.split == "test"]
    truth = truth_of(test, k)
    between = test.label_b.to_numpy() >= 0
    decoded = {"cp": prediction_sets(probs_of(test, k), cal.qhat, method),
               "thr": sets_from_column(test.pred_set, k)}
    overall = set_metrics(decoded["cp"], truth)
    summary = {"cp_coverage": overall["coverage"], "cp_size": overall["mean_size"]}
    for name, sets in decoded.items():
        for part, rows in (("clear", ~between), ("between", between)):
            m = set_metrics(sets[rows], truth[rows])
            summary[f"{name}_{part}_coverage"], summary[f"{name}_{part}_size"] = m["coverage"], m["mean_size"]
        summary[f"{name}_between_exact"] = set_metrics(sets[between], truth[between])["exact"]
    return summary
