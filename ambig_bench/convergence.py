"""Whether a run's training converged, judged from its history, and why, in one line that carries the fix.

A history is a list of per-epoch rows with `train_loss` and, where the run has a validation split, `val_loss`
(`metrics.selection_loss` on it, the criterion every strategy is judged by). A solver that knows its own
convergence (a linear probe's) puts `converged` and `convergence` in its last row, and they are taken as they are.

A gradient-trained run (from scratch or fine-tuned) has converged when, over its last WINDOW epochs, neither its
training loss nor its validation criterion was still falling by more than FALLING of the way it has come (its
highest value less its lowest); a run whose early stopping kept an earlier epoch than the last has converged on
validation whatever its training loss does. The fall over the window is read off a least-squares line through
its WINDOW + 1 epoch values, and a fall counts only where that line's slope is below 0 beyond its own noise
(one-sided p < NOISE_P), so a noisy epoch or two (labels redrawn per epoch, mixed images, a validation loss that
wanders on a few in-between images) neither hides nor fakes a trend. Measured against the way come rather than
the loss's level, the rule means the same for a loss that tends to 0 (hard labels, memorised) and for one with
a floor above 0 (soft targets' entropy), and for every strategy's loss whatever its scale (a multilabel loss
sums K sigmoids).

>>> judge([{"epoch": e, "train_loss": 1 / e} for e in range(1, 3)])
(False, 'only 2 epochs, too few to judge convergence over 5: raise --epochs')
"""

from __future__ import annotations

import math

from scipy.stats import linregress

WINDOW = 5  # epochs over which the losses' trend is judged
# Share of the way come that the last WINDOW epochs may still fall. Measured on `make demo`'s recipe (digits, width
# 16, lr 0.01; docs/convergence.md): at 12 epochs every run's training or validation loss still fell 1.0% of its way
# or more in the last 5 epochs, and 24 epochs lowered the validation criterion by 28-72% (all strategies but
# discard); at 40 epochs every loss fell 0.33% or less. The threshold lies between the two.
FALLING = 0.005
NOISE_P = 0.05  # a fall counts only if the slope of the last epochs is negative at this one-sided level


def fit(values: list[float]):
    """The least-squares line through the last WINDOW + 1 values (scipy's linregress)."""
    points = values[-(WINDOW + 1):]
    return linregress(range(len(points)), points)


def trend(values: list[float]) -> float:
    """The change over the last WINDOW epochs, as a share of the way the values have come (highest less lowest):
    the rise of the least-squares line through the last WINDOW + 1 values over WINDOW epochs (negative: falling)."""
    finite = [v for v in values if math.isfinite(v)]
    way = max(finite) - min(finite)
    return fit(values).slope * WINDOW / way if way > 0 else 0.0


def falling(values: list[float]) -> bool:
    """Still falling: by more than FALLING of the way come, and beyond the noise of the last epochs."""
    line = fit(values)
    beyond_noise = line.stderr == 0 or line.pvalue / 2 < NOISE_P  # two-sided p of the slope, halved
    return trend(values) < -FALLING and line.slope < 0 and beyond_noise


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
        if falling(losses[name]):
            return False, (f"{name} loss still falling: {-change:.1%} of its fall came in its last {WINDOW} epochs "
                           f"(over {FALLING:.1%}): raise --epochs")
    said = " and ".join(f"{name} loss {change:+.2%}" for name, change in changes.items())
    return True, f"{said} of their way over the last {WINDOW} epochs (not falling by more than {FALLING:.1%})"
