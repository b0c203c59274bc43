"""The report's figures: every function takes tables and returns a matplotlib Figure.

Figures are built with the object API (matplotlib.figure.Figure, rendered by Agg), never pyplot: no window,
no global figure list to leak, safe on servers and in CI.

One colour and marker per strategy (strategy_styles), the same in every figure of a report: 20 strategies get 20
colours, and no two of far more share both. Labels are laid out so that no two overlap (text_boxes gives their
boxes, for tests); axes carry units (each metric's label and direction come from metrics.METRICS); the figures are
drawn from compare's summary (mean and 95% CI over seeds) or from the runs' test predictions.

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
import textwrap
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from ambig_bench.metrics import METRICS, expected_calibration_error
from ambig_bench.shown import shown, warn

# A slot per known strategy, fixed by name, so a strategy keeps its look whatever else ran; other names (a strategy
# with options, label-smoothing@smoothing-eps=0.2) take the slots after these, in sorted order.
KNOWN = ("soft", "reassign", "duplicate", "extra-class", "multilabel", "partial", "votes", "hard", "discard", "mixup",
         "label-smoothing")
# tab20's strong shades, then its light ones: 20 colours. Markers cycle with a period (9) that does not divide 20,
# so no two of the first 180 slots share both colour and marker.
COLORS = [to_hex(c) for c in colormaps["tab20"].colors[0::2] + colormaps["tab20"].colors[1::2]]
MARKERS = "osD^vPX*h"

FIELD_LABELS = {  # x-axis label with unit, per swept run option
    "between_fraction": "between-fraction (share of the training set)",
    "train_size": "train-size (clear-cut training images)",
    "epochs": "epochs (passes over the training set)",
    "between_train": "between-train (in-between training images)",
}
BINS = 15  # reliability bins: the same equal-width bins as the ECE metric


@dataclass(frozen=True)
class Style:
    color: str
    marker: str


Styles = dict[str, Style]  # strategy name -> its look


def strategy_styles(names: Iterable[str]) -> Styles:
    """A colour and marker per strategy name: the known strategies in fixed slots, the others after them, sorted.
    Draw every figure of a report with the styles of all its strategies, and each keeps one look throughout."""
    names = list(dict.fromkeys(names))
    others = sorted(n for n in names if n not in KNOWN)
    slots = {n: KNOWN.index(n) for n in names if n in KNOWN} | {n: len(KNOWN) + i for i, n in enumerate(others)}
    return {n: Style(COLORS[k % len(COLORS)], MARKERS[k % len(MARKERS)]) for n, k in slots.items()}


def text_boxes(fig: Figure) -> list[tuple[str, Bbox]]:
    """Every text the figure draws, with its box in pixels after a layout: titles, tick and axis labels, legend
    entries, annotations. Tick labels whose tick lies outside the axis's view are left out (matplotlib keeps them
    but does not draw them)."""
    renderer = FigureCanvasAgg(fig).get_renderer()  # one renderer for the layout and every extent
    fig.draw_without_rendering()
    undrawn = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            slack = 1e-9 * (high - low)
            for locs, ticks in ((axis.get_majorticklocs(), axis.get_major_ticks()),
                                (axis.get_minorticklocs(), axis.get_minor_ticks())):
                undrawn |= {label for loc, tick in zip(locs, ticks, strict=False)
                            if not low - slack <= loc <= high + slack for label in (tick.label1, tick.label2)}
    return [(t.get_text(), t.get_window_extent(renderer)) for t in fig.findobj(Text)
            if t.get_visible() and t.get_text().strip() and t not in undrawn
            and (t.axes is None or t.axes.get_visible())]


def untangle_x_labels(fig: Figure) -> None:
    """Turn an axes' x tick labels upright where, laid out flat, two of them overlap (values close on the axis, or
    long ones): checked on the laid-out figure, not guessed."""
    renderer = FigureCanvasAgg(fig).get_renderer()  # one renderer for the layout and every extent
    fig.draw_without_rendering()
    for ax in fig.axes:
        boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()),
                       key=lambda box: box.x0)
        if any(left.x1 > right.x0 for left, right in zip(boxes, boxes[1:], strict=False)):
            ax.tick_params(axis="x", rotation=90)


def fits(text: str, inches: float, size: float) -> str:
    """`text` wrapped to lines that fit `inches` at font `size` (points; about 0.6 em per character), so a long title
    or strategy name stays inside its panel instead of running into the next."""
    width = max(8, int(inches * 72 / (0.6 * size)))
    return "\n".join(line for part in text.split("\n") for line in textwrap.wrap(shown(part), width) or [""])


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
        warn(f"figure: {message}")
    return buf.getvalue()


MIN_FIGURE_WIDTH = 6.0  # inches: a title of a few words, wrapped, above a single panel


def panels(n: int, ncols: int, width: float, height: float) -> tuple[Figure, list]:
    """A figure of n axes, ncols per row, each panel width × height inches, and at least MIN_FIGURE_WIDTH wide (one
    small panel leaves its wrapped title no room); spare grid cells hidden."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(max(width * ncols, MIN_FIGURE_WIDTH), height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def label_outer(axes: list, ncols: int, share_y: bool) -> None:
    """Small multiples on one 0–1 x scale: x labels only under the lowest panel of each column; y labels (and, with
    `share_y`, y tick labels) only on the first panel of each row. Fewer repeated words to read, and to draw."""
    for i, ax in enumerate(axes):
        if i + ncols < len(axes):  # another panel below this one
            ax.set_xlabel("")
            ax.tick_params(labelbottom=False)
        if i % ncols:
            ax.set_ylabel("")
            ax.tick_params(labelleft=not share_y)


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


def suptitle(fig: Figure, text: str, size: float = 12) -> None:
    fig.suptitle(fits(text, fig.get_figwidth() - 0.2, size), fontsize=size)


def metric_bars(summary: pd.DataFrame, metrics: list[str], title: str, styles: Styles | None = None) -> Figure:
    """One panel per metric: a horizontal bar per strategy at its mean over seeds, whiskers = 95% CI. Horizontal, so
    the strategies' names sit one per row and never collide; only the first panel of a row names them."""
    names = summary.strategy.tolist()
    styles = styles or strategy_styles(names)
    ncols = min(4, len(metrics))
    fig, axes = panels(len(metrics), ncols, 3.4, 1.2 + 0.2 * len(names))
    rows = np.arange(len(names))
    for i, (ax, m) in enumerate(zip(axes, metrics, strict=True)):
        ax.barh(rows, summary[f"{m}_mean"], xerr=ci_errors(summary, m), color=[styles[s].color for s in names],
                capsize=2)
        ax.set_yticks(rows, names if i % ncols == 0 else [], fontsize=8)
        ax.set_ylim(len(names) - 0.5, -0.5)  # the first strategy on top, as in the tables
        ax.set_title(metric_title(m), fontsize=10)
        ax.set_xlabel(fits(axis_label(m), 3.0, 8), fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    low, high = summary.n_seeds.min(), summary.n_seeds.max()
    suptitle(fig, f"{title}: mean over seeds, whiskers = 95% CI (n = {low if low == high else f'{low}–{high}'} "
                  "seeds)")
    return fig


def tradeoff_scatter(summary: pd.DataFrame, title: str, styles: Styles | None = None) -> Figure:
    """Clear-cut vs in-between accuracy per strategy: up and to the right is better on both. Each strategy is a
    colour and marker named in the legend beside the axes: no label sits among the points to collide."""
    styles = styles or strategy_styles(summary.strategy)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for i, row in summary.reset_index(drop=True).iterrows():
        one, style = summary.iloc[[i]], styles[row.strategy]
        ax.errorbar(row.clear_acc_mean, row.between_set_acc_mean, fmt=style.marker, ms=7, capsize=3,
                    xerr=ci_errors(one, "clear_acc"), yerr=ci_errors(one, "between_set_acc"), color=style.color,
                    label=row.strategy)
    ax.set_xlabel(METRICS["clear_acc"].label)
    ax.set_ylabel(METRICS["between_set_acc"].label)
    ax.set_title(fits(f"{title}: clear-cut vs in-between accuracy (mean, whiskers = 95% CI over seeds)", 5.5, 10),
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, title="strategy", title_fontsize=8,
               ncols=math.ceil(len(summary) / 24))
    return fig


def clear_rows(preds: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 confidence and correctness of the clear-cut test images."""
    clear = preds[preds.kind == "clear"]
    probs = clear.filter(regex=r"^p_\d+$").to_numpy(float)
    return probs.max(1), probs.argmax(1) == clear.label_a.to_numpy()


def reliability_diagrams(preds: dict[str, pd.DataFrame], title: str, styles: Styles | None = None) -> Figure:
    """Per strategy: accuracy against top-1 confidence on clear-cut test images, all seeds pooled."""
    styles = styles or strategy_styles(preds)
    fig, axes = panels(len(preds), 4, 3.1, 3.0)
    edges = np.linspace(0, 1, BINS + 1)
    for ax, (name, frame) in zip(axes, preds.items(), strict=True):
        confidence, correct = clear_rows(frame)
        # Bin b holds confidences in (b/BINS, (b+1)/BINS], as in metrics.expected_calibration_error.
        which = np.clip(np.ceil(confidence * BINS).astype(int), 1, BINS) - 1
        counts = np.bincount(which, minlength=BINS)
        hits = np.bincount(which, weights=correct, minlength=BINS)
        accuracy = np.divide(hits, counts, out=np.full(BINS, np.nan), where=counts > 0)
        ax.bar(edges[:-1], accuracy, width=1 / BINS, align="edge", color=styles[name].color,
               edgecolor="white", label="accuracy in bin")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ece = expected_calibration_error(torch.from_numpy(confidence), torch.from_numpy(correct), BINS)
        ax.set_title(fits(f"{name}\npooled ECE {ece:.3f}, {len(confidence)} images", 2.8, 9), fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("top-1 confidence (probability)", fontsize=8)
        ax.set_ylabel("accuracy (fraction)", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    label_outer(axes, min(4, len(axes)), share_y=True)
    suptitle(fig, f"{title}: reliability on clear-cut test images ({BINS} equal-width bins, seeds pooled)")
    return fig


def balance_histograms(preds: dict[str, pd.DataFrame], title: str, styles: Styles | None = None) -> Figure:
    """Per strategy: how the model splits probability inside the pair on in-between test images."""
    styles = styles or strategy_styles(preds)
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
                color=styles[name].color)
        ax.axvline(between.share_a.mean(), color="k", ls="--", lw=1, label="true share of A")
        ax.set_title(fits(f"{name}\n{len(balance)} images", 2.8, 9), fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_xlabel("p_A / (p_A + p_B)", fontsize=8)
        ax.set_ylabel("share of images", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    label_outer(axes, min(4, len(axes)), share_y=False)
    suptitle(fig, f"{title}: in-between test images, probability split inside the pair (seeds pooled)")
    return fig


LABEL_CHARS = 24  # a class name longer than this is cut in a figure's ticks (the tables hold it whole)


def short(name: str) -> str:
    """A class name for a tick label: escaped, and cut to LABEL_CHARS with an ellipsis, so a long name (drawn
    upright under a matrix) never takes the figure's whole height."""
    text = shown(name)
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"


def pair_confusion(preds: dict[str, pd.DataFrame], pairs: list[tuple[int, int]], class_names: list[str],
                   title: str) -> Figure:
    """Per strategy and pair: true label (A, B, in-between A and B) against predicted set, rows sum to 1. The
    predicted sets read upright: a class name of any length never runs into the next."""
    per_row = max(1, 4 // len(pairs))  # strategies per row of panels, every pair of a strategy side by side
    # The predicted sets read upright under each matrix: the longest, "{A,B}", sets how tall a panel must be.
    longest = max(len(short(class_names[a])) + len(short(class_names[b])) + 3 for a, b in pairs)
    fig, axes = panels(len(preds) * len(pairs), per_row * len(pairs), 3.0, 2.0 + longest * 0.6 * 7 / 72)
    panel = iter(axes)
    for name, frame in preds.items():
        sets = frame.pred_set.fillna("").astype(str).map(lambda s: frozenset(int(k) for k in s.split("|") if k))
        for a, b in pairs:
            na, nb = short(class_names[a]), short(class_names[b])
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
            ax.set_xticks(range(4), [f"{{{na}}}", f"{{{nb}}}", f"{{{na},{nb}}}", "other"], fontsize=7, rotation=90)
            ax.set_yticks(range(3), [na, nb, "in-between"], fontsize=7)
            ax.set_title(fits(f"{name}\n{na} vs {nb}", 2.7, 9), fontsize=9, fontweight="bold")
            ax.set_xlabel("predicted set", fontsize=7)
            ax.set_ylabel("true label", fontsize=7)
    suptitle(fig, f"{title}: paired classes, share of each true label's test images per predicted set (seeds "
                  "pooled)", 10)
    return fig


def sweep_curves(summary: pd.DataFrame, field: str, group_by: list[str], metrics: list[str] | None = None,
                 styles: Styles | None = None, log_base: int | None = None) -> Figure:
    """Each metric against the swept option, one line per strategy, its colour and marker (line style per other
    swept option). The x axis is logarithmic with `log_base`, or by default (base 10) where the values span a
    factor of 10 or more."""
    styles = styles or strategy_styles(summary.strategy)
    metrics = metrics or [m for m in METRICS if f"{m}_mean" in summary and summary[f"{m}_mean"].notna().any()]
    others = [g for g in group_by if g != field]
    numeric = pd.api.types.is_numeric_dtype(summary[field])
    values = sorted(summary[field].unique())
    log = bool(log_base) or (numeric and min(values) > 0 and max(values) / min(values) >= 10)
    dashes = ["-", "--", ":", "-."]
    slices = list(summary.groupby(others, sort=True)) if others else [((), summary)]
    fig, axes = panels(len(metrics), 4, 3.5, 2.9)
    for ax, m in zip(axes, metrics, strict=True):
        for k, (_, part) in enumerate(slices):
            for name, line in part.groupby("strategy", sort=False):
                line = line.sort_values(field)
                x = line[field].to_numpy(float) if numeric else [values.index(v) for v in line[field]]
                style = styles[name]
                ax.plot(x, line[f"{m}_mean"], marker=style.marker, ms=4, color=style.color, ls=dashes[k % len(dashes)])
                ax.fill_between(x, line[f"{m}_ci_low"], line[f"{m}_ci_high"], color=style.color, alpha=0.15, lw=0)
        if log:
            ax.set_xscale("log", base=log_base or 10)
            ax.minorticks_off()
        # A tick at every swept value (the values are few), labelled as typed.
        ax.set_xticks(values if numeric else range(len(values)), [f"{v:g}" if numeric else shown(v) for v in values])
        ax.set_title(metric_title(m), fontsize=10)
        ax.set_ylabel(fits(axis_label(m), 2.4, 8), fontsize=8)
        ax.set_xlabel(fits(FIELD_LABELS.get(field, field.replace("_", "-")) + (", log scale" if log else ""), 3.0, 8),
                      fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=styles[s].color, marker=styles[s].marker, label=s)
               for s in pd.unique(summary.strategy)]
    handles += [Line2D([], [], color="k", ls=dashes[k % len(dashes)],
                       label=", ".join(f"{g.replace('_', '-')}={shown(v)}" for g, v in
                                       zip(others, key if isinstance(key, tuple) else (key,), strict=True)))
                for k, (key, _) in enumerate(slices) if others]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="strategy", title_fontsize=8,
               ncols=math.ceil(len(handles) / 24))
    suptitle(fig, f"Metrics against {field.replace('_', '-')}: mean over seeds, band = 95% CI")
    untangle_x_labels(fig)
    return fig


def sweep_figure(summary: pd.DataFrame, field: str, group_by: list[str],
                 styles: Styles | None = None) -> tuple[str, Figure]:
    """sweep-<option>.png and its figure (`sweep_curves`): the one place that names and draws a sweep figure, which
    `ambig-bench sweep` writes beside the runs and the report into figures/."""
    return f"sweep-{field.replace('_', '-')}.png", sweep_curves(summary, field, group_by, styles=styles)


def label_curve_figure(summary: pd.DataFrame, lines: pd.DataFrame, field: str, group_by: list[str],
                       metrics: list[str], styles: Styles | None = None) -> Figure:
    """The label-budget curve: each metric against the in-between training images on a log2 axis, per strategy
    (`sweep_curves`), and the fitted line of each (`lines`: strategy, metric, slope per doubling, intercept at 1)
    dotted, drawn one doubling past the largest value, as far as the answer extrapolates."""
    styles = styles or strategy_styles(summary.strategy)
    fig = sweep_curves(summary, field, group_by, metrics, styles, log_base=2)
    values = sorted(summary[field].unique())
    x = np.geomspace(values[0], 2 * values[-1], 32)
    for ax, metric in zip(fig.axes, metrics, strict=False):
        for line in lines[lines.metric == metric].itertuples():
            ax.plot(x, line.intercept + line.slope * np.log2(x), ls=":", lw=1.2, color=styles[line.strategy].color)
        ax.set_xticks([*values, 2 * values[-1]], [f"{v:g}" for v in values] + [f"({2 * values[-1]:g})"])
    # Two short lines: the title is centred over the figure, the legend included, and must stay clear of it.
    suptitle(fig, "The label-budget curve: mean over seeds\n(band = 95% CI; dotted = fitted trend)", 11)
    untangle_x_labels(fig)
    return fig
