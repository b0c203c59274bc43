"""The report's figures: every function takes tables and returns a matplotlib Figure.

Figures are built with the object API (matplotlib.figure.Figure, rendered by Agg), never pyplot: no window,
no global figure list to leak, safe on servers and in CI.

One colour per strategy name (STRATEGY_COLORS), the same in every figure; axes carry units (each metric's
label and direction come from metrics.METRICS); the figures are drawn from compare's summary (mean and 95% CI
over seeds) or from the runs' test predictions.

$ ambig-bench report results/demo        # draws all of them into results/demo/figures/

>>> import pandas as pd
>>> from ambig_bench.plots import metric_bars, png_bytes
>>> summary = pd.DataFrame({"strategy": ["soft", "hard"], "n_seeds": [3, 3], "clear_acc_mean": [0.9, 0.8],
...                         "clear_acc_ci_low": [0.88, 0.78], "clear_acc_ci_high": [0.92, 0.82]})
>>> png_bytes(metric_bars(summary, ["clear_acc"], "demo"))[:4]
b'\\x89PNG'
"""

from __future__ import annotations

import io
import math
import sys
import warnings
import zlib

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text

from ambig_bench.metrics import METRICS, expected_calibration_error

# Fixed per name, not per position, so a new strategy never recolours the others.
STRATEGY_COLORS = {
    "soft": "#1f77b4", "reassign": "#ff7f0e", "duplicate": "#2ca02c", "extra-class": "#d62728",
    "multilabel": "#9467bd", "partial": "#8c564b", "hard": "#7f7f7f", "discard": "#bcbd22",
}
_SPARE = ["#17becf", "#e377c2", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"]

FIELD_LABELS = {  # x-axis label with unit, per swept run option
    "between_fraction": "between-fraction (share of the training set)",
    "train_size": "train-size (clear-cut training images)",
    "epochs": "epochs (passes over the training set)",
}
BINS = 15  # reliability bins: the same equal-width bins as the ECE metric


def strategy_color(name: str) -> str:
    """The colour of a strategy in every figure; unknown names get a stable spare colour."""
    return STRATEGY_COLORS.get(name) or _SPARE[zlib.crc32(name.encode()) % len(_SPARE)]


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG. Its text is drawn as typed: a "$" in a folder or class name is not TeX math (which
    could fail to parse); matplotlib's warnings (a glyph missing from the font) become one line each."""
    for text in fig.findobj(Text):
        text.set_parse_math(False)
    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # No "Software" tag: a committed figure (docs/) does not change just because matplotlib was upgraded.
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    for message in dict.fromkeys(" ".join(str(w.message).split()) for w in caught):
        print(f"warning: figure: {message}", file=sys.stderr)
    return buf.getvalue()


def panels(n: int, ncols: int, width: float, height: float) -> tuple[Figure, list]:
    """A figure of n axes, ncols per row, each panel width × height inches; spare grid cells hidden."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def metric_title(metric: str) -> str:
    """The metric's name and, where one end is better, which: 'ece (↓ better)'."""
    better = METRICS[metric].higher_is_better if metric in METRICS else None
    return metric + {True: " (↑ better)", False: " (↓ better)", None: ""}[better]


def axis_label(metric: str) -> str:
    return METRICS[metric].label if metric in METRICS else metric


def ci_errors(frame: pd.DataFrame, metric: str) -> np.ndarray:
    """2×N distances from the mean to the CI ends (0 where one seed gives no CI)."""
    mean = frame[f"{metric}_mean"].to_numpy(float)
    low = np.nan_to_num(mean - frame[f"{metric}_ci_low"].to_numpy(float))
    high = np.nan_to_num(frame[f"{metric}_ci_high"].to_numpy(float) - mean)
    return np.vstack([low, high])


def metric_bars(summary: pd.DataFrame, metrics: list[str], title: str) -> Figure:
    """One panel per metric: a bar per strategy at its mean over seeds, whiskers = 95% CI."""
    fig, axes = panels(len(metrics), 4, 3.4, 2.9)
    names = summary.strategy.tolist()
    colors = [strategy_color(s) for s in names]
    for ax, m in zip(axes, metrics, strict=True):
        ax.bar(names, summary[f"{m}_mean"], yerr=ci_errors(summary, m), color=colors, capsize=3)
        ax.set_title(metric_title(m), fontsize=10)
        ax.set_ylabel(axis_label(m), fontsize=8)
        ax.tick_params(axis="x", rotation=60, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    low, high = summary.n_seeds.min(), summary.n_seeds.max()
    fig.suptitle(f"{title}: mean over seeds, whiskers = 95% CI (n = {low if low == high else f'{low}–{high}'} seeds)")
    return fig


def tradeoff_scatter(summary: pd.DataFrame, title: str) -> Figure:
    """Clear-cut vs in-between accuracy per strategy: up and to the right is better on both."""
    fig = Figure(figsize=(6.4, 5), layout="constrained")
    ax = fig.subplots()
    for i, row in summary.reset_index(drop=True).iterrows():
        one = summary.iloc[[i]]
        ax.errorbar(row.clear_acc_mean, row.between_set_acc_mean, fmt="o", ms=7, capsize=3,
                    xerr=ci_errors(one, "clear_acc"), yerr=ci_errors(one, "between_set_acc"),
                    color=strategy_color(row.strategy), label=row.strategy)
        ax.annotate(row.strategy, (row.clear_acc_mean, row.between_set_acc_mean), fontsize=8,
                    xytext=(5, 4), textcoords="offset points")
    ax.set_xlabel(METRICS["clear_acc"].label)
    ax.set_ylabel(METRICS["between_set_acc"].label)
    ax.set_title(f"{title}: clear-cut vs in-between accuracy\n(mean, whiskers = 95% CI over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", title="strategy", title_fontsize=8)
    return fig


def clear_rows(preds: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 confidence and correctness of the clear-cut test images."""
    clear = preds[preds.kind == "clear"]
    probs = clear.filter(regex=r"^p_\d+$").to_numpy(float)
    return probs.max(1), probs.argmax(1) == clear.label_a.to_numpy()


def reliability_diagrams(preds: dict[str, pd.DataFrame], title: str) -> Figure:
    """Per strategy: accuracy against top-1 confidence on clear-cut test images, all seeds pooled."""
    fig, axes = panels(len(preds), 4, 3.1, 3.0)
    edges = np.linspace(0, 1, BINS + 1)
    for ax, (name, frame) in zip(axes, preds.items(), strict=True):
        confidence, correct = clear_rows(frame)
        # Bin b holds confidences in (b/BINS, (b+1)/BINS], as in metrics.expected_calibration_error.
        which = np.clip(np.ceil(confidence * BINS).astype(int), 1, BINS) - 1
        counts = np.bincount(which, minlength=BINS)
        hits = np.bincount(which, weights=correct, minlength=BINS)
        accuracy = np.divide(hits, counts, out=np.full(BINS, np.nan), where=counts > 0)
        ax.bar(edges[:-1], accuracy, width=1 / BINS, align="edge", color=strategy_color(name),
               edgecolor="white", label="accuracy in bin")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ece = expected_calibration_error(torch.from_numpy(confidence), torch.from_numpy(correct), BINS)
        ax.set_title(f"{name}: pooled ECE {ece:.3f}\n{len(confidence)} images", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("top-1 confidence (probability)", fontsize=8)
        ax.set_ylabel("accuracy (fraction)", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{title}: reliability on clear-cut test images ({BINS} equal-width bins, seeds pooled)")
    return fig


def balance_histograms(preds: dict[str, pd.DataFrame], title: str) -> Figure:
    """Per strategy: how the model splits probability inside the pair on in-between test images."""
    fig, axes = panels(len(preds), 4, 3.1, 2.6)
    bins = np.linspace(0, 1, 21)
    for ax, (name, frame) in zip(axes, preds.items(), strict=True):
        between = frame[frame.kind == "between"]
        probs = between.filter(regex=r"^p_\d+$").to_numpy(float)
        rows = np.arange(len(between))
        p_a = probs[rows, between.label_a.to_numpy()]
        p_b = probs[rows, between.label_b.to_numpy()]
        balance = p_a / np.maximum(p_a + p_b, 1e-12)
        ax.hist(balance, bins=bins, weights=np.full(len(balance), 1 / max(len(balance), 1)),
                color=strategy_color(name))
        ax.axvline(between.share_a.mean(), color="k", ls="--", lw=1, label="true share of A")
        ax.set_title(f"{name} ({len(balance)} images)", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_xlabel("p_A / (p_A + p_B)", fontsize=8)
        ax.set_ylabel("share of images", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{title}: in-between test images, probability split inside the pair (seeds pooled)")
    return fig


def pair_confusion(preds: dict[str, pd.DataFrame], pairs: list[tuple[int, int]], class_names: list[str],
                   title: str) -> Figure:
    """Per strategy and pair: true label (A, B, in-between A and B) against predicted set, rows sum to 1."""
    per_row = max(1, 4 // len(pairs))  # strategies per row of panels, every pair of a strategy side by side
    fig, axes = panels(len(preds) * len(pairs), per_row * len(pairs), 3.0, 2.5)
    panel = iter(axes)
    for name, frame in preds.items():
        sets = frame.pred_set.fillna("").astype(str).map(lambda s: frozenset(int(k) for k in s.split("|") if k))
        for a, b in pairs:
            na, nb = class_names[a], class_names[b]
            truth = [(frame.label_a == a) & (frame.label_b < 0), (frame.label_a == b) & (frame.label_b < 0),
                     ((frame.label_a == a) & (frame.label_b == b)) | ((frame.label_a == b) & (frame.label_b == a))]
            predicted = [frozenset({a}), frozenset({b}), frozenset({a, b})]
            table = np.zeros((3, 4))
            for i, mask in enumerate(truth):
                chosen = sets[mask]
                for j, target in enumerate(predicted):
                    table[i, j] = (chosen == target).sum()
                table[i, 3] = len(chosen) - table[i, :3].sum()
                table[i] /= max(len(chosen), 1)
            ax = next(panel)
            ax.imshow(table, cmap="Blues", vmin=0, vmax=1)
            for (i, j), v in np.ndenumerate(table):
                ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=7, color="white" if v > 0.6 else "black")
            ax.set_xticks(range(4), [f"{{{na}}}", f"{{{nb}}}", f"{{{na},{nb}}}", "other"], fontsize=7, rotation=25,
                          ha="right")
            ax.set_yticks(range(3), [na, nb, "in-between"], fontsize=7)
            ax.set_title(f"{name}: {na} vs {nb}", fontsize=9, color=strategy_color(name), fontweight="bold")
            ax.set_xlabel("predicted set", fontsize=7)
            ax.set_ylabel("true label", fontsize=7)
    fig.suptitle(f"{title}: paired classes, share of each true label's test images per predicted set (seeds pooled)",
                 fontsize=10)
    return fig


def sweep_curves(summary: pd.DataFrame, field: str, group_by: list[str], metrics: list[str] | None = None) -> Figure:
    """Each metric against the swept option, one line per strategy (line style per other swept option)."""
    metrics = metrics or [m for m in METRICS if f"{m}_mean" in summary and summary[f"{m}_mean"].notna().any()]
    others = [g for g in group_by if g != field]
    numeric = pd.api.types.is_numeric_dtype(summary[field])
    values = sorted(summary[field].unique())
    log = numeric and min(values) > 0 and max(values) / min(values) >= 10
    styles = ["-", "--", ":", "-."]
    slices = list(summary.groupby(others, sort=True)) if others else [((), summary)]
    fig, axes = panels(len(metrics), 4, 3.5, 2.9)
    for ax, m in zip(axes, metrics, strict=True):
        for k, (_, part) in enumerate(slices):
            for name, line in part.groupby("strategy", sort=False):
                line = line.sort_values(field)
                x = line[field].to_numpy(float) if numeric else [values.index(v) for v in line[field]]
                color = strategy_color(name)
                ax.plot(x, line[f"{m}_mean"], marker="o", ms=3, color=color, ls=styles[k % len(styles)])
                ax.fill_between(x, line[f"{m}_ci_low"], line[f"{m}_ci_high"], color=color, alpha=0.15, lw=0)
        if log:
            ax.set_xscale("log")
            ax.minorticks_off()
        # A tick at every swept value (the values are few), labelled as typed.
        ax.set_xticks(values if numeric else range(len(values)), [f"{v:g}" if numeric else str(v) for v in values])
        ax.set_title(metric_title(m), fontsize=10)
        ax.set_ylabel(axis_label(m), fontsize=8)
        ax.set_xlabel(FIELD_LABELS.get(field, field.replace("_", "-")) + (", log scale" if log else ""), fontsize=8)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=strategy_color(s), marker="o", label=s) for s in pd.unique(summary.strategy)]
    handles += [Line2D([], [], color="k", ls=styles[k % len(styles)],
                       label=", ".join(f"{g.replace('_', '-')}={v}" for g, v in
                                       zip(others, key if isinstance(key, tuple) else (key,), strict=True)))
                for k, (key, _) in enumerate(slices) if others]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="strategy", title_fontsize=8)
    fig.suptitle(f"Metrics against {field.replace('_', '-')}: mean over seeds, band = 95% CI")
    return fig



def sweep_figure(summary: pd.DataFrame, field: str, group_by: list[str]) -> tuple[str, Figure]:
    """sweep-<option>.png and its figure (`sweep_curves`): the one place that names and draws a sweep figure, which
    `ambig-bench sweep` writes beside the runs and the report into figures/."""
    return f"sweep-{field.replace('_', '-')}.png", sweep_curves(summary, field, group_by)
