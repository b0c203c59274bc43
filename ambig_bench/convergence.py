"""Whether a run's training converged, judged from its history, and why, in one line that carries the fix.

A history is a list of per-epoch rows with `train_loss` and, where the run has a validation split, `val_loss`
(`metrics.selection_loss` on it, the criterion every strategy is judged by). A solver that knows its own
convergence (a linear probe's) puts `converged` and `convergence` in its last row, and they are taken as they are.

A gradient-trained run (from scratch or fine-tuned) has converged when, over its last WINDOW epochs, neither its
training loss nor its validation criterion was still falling by more than FALLING of its level; a run whose early
stopping kept an earlier epoch than the last has converged on validation whatever its training loss does. The
change over the window is read off a least-squares line through its WINDOW + 1 epoch values (the level: their
mean), so one noisy epoch (labels redrawn per epoch, mixed images) neither hides nor fakes a trend.

>>> judge([{"epoch": e, "train_loss": 1 / e} for e in range(1, 3)])
(False, 'only 2 epochs, too few to judge convergence over 5: raise --epochs')
"""

from __future__ import annotations

import math

from scipy.stats import linregress

WINDOW = 5  # epochs over which the losses' trend is judged
# Relative fall over the window above which a loss is "still falling". Measured on `make demo`'s digits grid
# (docs/convergence.md): 12 epochs end with training-loss falls of 0.x-y% ..., 2 epochs cannot be judged.
FALLING = 0.01


def trend(values: list[float]) -> float:
    """Relative change over the last WINDOW epochs: the fitted line's rise over them, over the values' mean."""
    points = values[-(WINDOW + 1):]
    level = sum(points) / len(points)
    return linregress(range(len(points)), points).slope * WINDOW / abs(level) if level else 0.0


def judge(history: list[dict]) -> tuple[bool, str]:
    """(converged, why): see the module's docstring."""
    if history and "converged" in history[-1]:
        return bool(history[-1]["converged"]), str(history[-1]["convergence"])
    if len(history) < WINDOW + 1:
        return False, (f"only {len(history)} epoch{'s' * (len(history) != 1)}, too few to judge convergence over "
                       f"{WINDOW}: raise --epochs")
    kept = next((row["epoch"] for row in history if row.get("kept")), None)
    if kept is not None and kept < history[-1]["epoch"]:
        return True, (f"validation loss lowest at epoch {kept} of {history[-1]['epoch']}, whose weights were kept "
                      "(early stopping)")
    losses = {"training": [row["train_loss"] for row in history]}
    if all(math.isfinite(row.get("val_loss", math.nan)) for row in history[-(WINDOW + 1):]):
        losses["validation"] = [row["val_loss"] for row in history]
    changes = {name: trend(values) for name, values in losses.items()}
    for name, change in changes.items():
        if change < -FALLING:
            return False, f"{name} loss still falling {-change:.1%} over its last {WINDOW} epochs: raise --epochs"
    said = " and ".join(f"{name} loss {change:+.2%}" for name, change in changes.items())
    return True, f"{said} over the last {WINDOW} epochs (within ±{FALLING:.0%})"
