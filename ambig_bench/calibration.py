"""Conformal sets for a finished run, calibrated on its saved predictions (predictions.csv): no model needed.

A run's validation rows give qhat (so predicting never reruns validation); its test rows score the sets.
The predictions are read, and checked, by `RunDir.predictions` (ambig_bench.rundir).

Two choices beside the score (conformal.py explains the guarantees):
  * groups: ``kind`` (one qhat; `per_kind` covers clear-cut and in-between images each) or ``class`` (Mondrian:
    one qhat per class, each class's labels covered at 1 - alpha; with `per_kind` for its clear-cut and its
    in-between images each, so both labels of an in-between image at >= 1 - 2 alpha);
  * truth: ``sets`` (the recorded labels, both A and B for an in-between image) or ``votes`` (one label drawn
    from each validation image's vote shares, for runs on images with votes).

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

from ambig_bench.conformal import (
    METHODS,
    calibrate_parts,
    label_coverage,
    prediction_sets,
    sample_labels,
    set_metrics,
    vote_coverage,
)
from ambig_bench.errors import UserError
from ambig_bench.metrics import label_set_mask
from ambig_bench.rundir import RunDir

GROUPS = ("kind", "class")  # --conformal-groups
TRUTHS = ("sets", "votes")  # --conformal-truth
VOTE_SEED = 0  # the labels drawn from the votes: fixed, so that predict, export and compare calibrate alike


@dataclass
class Calibration:
    method: str  # "lac", "aps" or "raps" (ambig_bench.conformal.METHODS)
    alpha: float  # miscoverage level: sets miss a true label for at most alpha of the images
    per_kind: bool  # calibrated on clear-cut and in-between images separately, the larger qhat kept (calibrate_run)
    # Score threshold: one number (groups "kind") or one per class (groups "class"); +inf where there are too few
    # validation images for alpha (the class is then always in the set).
    qhat: float | np.ndarray
    n: int  # validation images it was calibrated on
    num_classes: int
    groups: str = "kind"  # GROUPS
    truth: str = "sets"  # TRUTHS

    @property
    def thresholds(self) -> np.ndarray:
        """qhat per class, a K-vector whichever the grouping."""
        return np.broadcast_to(np.asarray(self.qhat, dtype=float), (self.num_classes,)).copy()


def check_conformal_options(alpha: float, method: str, groups: str = "kind", truth: str = "sets") -> None:
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be in (0, 1), got {alpha}")
    for option, value, valid in (("--conformal", method, METHODS), ("--conformal-groups", groups, GROUPS),
                                 ("--conformal-truth", truth, TRUTHS)):
        if value not in valid:
            raise UserError(f"{option} must be one of {', '.join(valid)}, got {value!r}")


def probs_of(frame: pd.DataFrame, k: int) -> np.ndarray:
    return frame[[f"p_{i}" for i in range(k)]].to_numpy(dtype=float)


def votes_of(frame: pd.DataFrame, k: int) -> np.ndarray | None:
    """N×K vote shares (columns v_0..v_{K-1}), or None for a run on images without votes."""
    return frame[[f"v_{i}" for i in range(k)]].to_numpy(dtype=float) if "v_0" in frame else None


def truth_of(frame: pd.DataFrame, k: int) -> np.ndarray:
    """N×K bool: {label_a}, or {label_a, label_b} for an in-between row (label_b >= 0)."""
    return label_set_mask(torch.tensor(frame.label_a.to_numpy(np.int64)),
                          torch.tensor(frame.label_b.to_numpy(np.int64)), k).numpy()


def run_of(run_dir: str | Path | RunDir) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)


def calibrate_run(run_dir: str | Path | RunDir, alpha: float = 0.1, method: str = "lac", per_kind: bool = True,
                  groups: str = "kind", truth: str = "sets") -> Calibration:
    """qhat from the run's validation rows (predictions.csv), so predicting never reruns validation.

    per_kind: calibrate the clear-cut and the in-between validation images separately and keep the larger
    qhat. Sets only grow with qhat, so each kind is then covered with probability >= 1 - alpha on its own,
    and so is any mix of the two. Plain (marginal) calibration covers 1 - alpha only on a mix like the
    validation split's: in-between images, a minority there, are under-covered, and a deployment with more
    of them than validation had gets less than 1 - alpha overall.
    """
    run = run_of(run_dir)
    return calibrate_frame(*run.predictions(), alpha, method, per_kind, groups, truth, run.predictions_file)


def calibration_labels(val: pd.DataFrame, k: int, truth: str, where: object) -> np.ndarray:
    """The validation images' truth as calibrated on: their label sets, or one label drawn from their votes."""
    if truth == "sets":
        return truth_of(val, k)
    votes = votes_of(val, k)
    if votes is None:
        raise UserError(f"{where}: --conformal-truth votes needs the images' vote shares (columns v_0..v_{k - 1}), "
                        "which runs on images with votes write (the human source, e.g. --dataset cifar10h); "
                        "use --conformal-truth sets")
    return sample_labels(votes, np.random.default_rng(VOTE_SEED))


def calibrate_frame(frame: pd.DataFrame, k: int, alpha: float, method: str, per_kind: bool, groups: str = "kind",
                    truth: str = "sets", where: object = "predictions.csv") -> Calibration:
    check_conformal_options(alpha, method, groups, truth)
    val = frame[frame.split == "val"]
    probs, labels = probs_of(val, k), calibration_labels(val, k, truth, where)
    between = val.label_b.to_numpy() >= 0
    qhat = calibrate_parts(probs, labels, alpha, method, parts=[~between, between] if per_kind else None,
                           per_class=groups == "class")
    return Calibration(method, alpha, per_kind, qhat, len(val), k, groups, truth)


def sets_from_column(pred_set: pd.Series, k: int) -> np.ndarray:
    """The `pred_set` column ("4|9") as an N×K bool mask."""
    sets = np.zeros((len(pred_set), k), dtype=bool)
    for row, text in enumerate(pred_set):
        sets[row, [int(c) for c in text.split("|") if c]] = True
    return sets


def conformal_summary(run_dir: str | Path | RunDir, alpha: float = 0.1, method: str = "lac", per_kind: bool = True,
                      groups: str = "kind", truth: str = "sets") -> dict[str, float]:
    """Test-split set quality of the conformal sets (cp_*) and of the strategy's threshold sets (thr_*).

    coverage = every true label is in the set; size = mean number of classes in the set; exact = the set is
    exactly the true pair. cp_coverage over all test images is what the 1 - alpha guarantee is about;
    cp_vote_coverage (runs on images with votes) is the share of votes inside the set, what calibrating on the
    votes guarantees.
    """
    run = run_of(run_dir)
    frame, k = run.predictions()
    cal = calibrate_frame(frame, k, alpha, method, per_kind, groups, truth, run.predictions_file)
    test = frame[frame.split == "test"]
    truth_mask = truth_of(test, k)
    between = test.label_b.to_numpy() >= 0
    decoded = {"cp": prediction_sets(probs_of(test, k), cal.qhat, method),
               "thr": sets_from_column(test.pred_set, k)}
    overall = set_metrics(decoded["cp"], truth_mask)
    summary = {"cp_coverage": overall["coverage"], "cp_size": overall["mean_size"]}
    votes = votes_of(test, k)
    if votes is not None:
        summary["cp_vote_coverage"] = vote_coverage(decoded["cp"], votes)
    for name, sets in decoded.items():
        for part, rows in (("clear", ~between), ("between", between)):
            m = set_metrics(sets[rows], truth_mask[rows])
            summary[f"{name}_{part}_coverage"], summary[f"{name}_{part}_size"] = m["coverage"], m["mean_size"]
        summary[f"{name}_between_exact"] = set_metrics(sets[between], truth_mask[between])["exact"]
    return summary


GROUP_COLUMNS = ("group", "name", "part", "images", "coverage", "size", "vote_coverage")


def group_coverage(run_dir: str | Path | RunDir, cal: Calibration) -> pd.DataFrame:
    """Coverage of `cal`'s sets on the run's test images: overall, per class and per pair (GROUP_COLUMNS).

    group "all": every test image (part "all"), the clear-cut and the in-between ones, covered when the set holds
    every true label; "class" k: the test images whose truth holds k, covered when the set holds k (what class-
    conditional calibration guarantees); "pair" A|B, part "between": its in-between images (covered: both A and B
    in the set), part "clear": the clear-cut images of A or of B. size: mean set size over those images;
    vote_coverage: their mean vote share inside the set (NaN without votes). Pairs are data.json's, else the
    in-between rows' own.
    """
    run = run_of(run_dir)
    frame, k = run.predictions()
    test = frame[frame.split == "test"]
    truth_mask, votes = truth_of(test, k), votes_of(test, k)
    sets = prediction_sets(probs_of(test, k), cal.qhat, cal.method)
    data = run.data() if (run.path / "data.json").exists() else {}
    names = data.get("class_names") or [str(c) for c in range(k)]
    label_a, label_b = test.label_a.to_numpy(), test.label_b.to_numpy()
    between = label_b >= 0
    observed = zip(label_a[between], label_b[between], strict=True)
    pairs = data.get("pairs") or sorted({tuple(sorted(p)) for p in observed})
    _, per_class = label_coverage(sets, truth_mask)
    groups = [("all", "", part, where, None) for part, where in (("all", np.ones_like(between)),
                                                                 ("clear", ~between), ("between", between))]
    groups += [("class", names[c], "all", truth_mask[:, c], per_class[c]) for c in range(k)]
    for a, b in pairs:
        in_pair = np.isin(label_a, (a, b))
        groups += [("pair", f"{names[a]}|{names[b]}", part, where, None) for part, where in (
            ("between", in_pair & np.isin(label_b, (a, b))), ("clear", in_pair & ~between))]
    rows = []
    for group, name, part, where, covered in groups:
        m = set_metrics(sets[where], truth_mask[where])
        rows.append((group, name, part, int(where.sum()), m["coverage"] if covered is None else float(covered),
                     m["mean_size"], vote_coverage(sets[where], votes[where]) if votes is not None else np.nan))
    return pd.DataFrame(rows, columns=list(GROUP_COLUMNS))
