"""Which images to label next: unlabelled (or clear-cut-labelled) images ranked by how likely they sit between
two classes, by every trained run of a results directory at once.

Each run scores every image with its strategy's own ambiguity score. Those scores have different scales (a
soft run's second probability, an extra class's mass, a sigmoid's second output), so each run's scores are turned
into ranks among the given images (0 for its least in-between image, 1 for its most) and the ranks are averaged
over the runs: the Borda count of the runs' opinions, so no strategy's scale dominates. Beside the score,
each image gets the pair it would fall between (its two most probable classes, probabilities averaged over the
runs), how many runs decide "A or B" for it, and how many runs put the same pair on top.

$ ambig-bench suggest results/photos unlabelled/ --top 50 --format csv > to_label.csv
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.table import Table
from rich.text import Text
from scipy.stats import rankdata

from ambig_bench.errors import UserError
from ambig_bench.imageio import find_images, read_image
from ambig_bench.predict import Predictor
from ambig_bench.rundir import RunDir, list_runs
from ambig_bench.shown import csv_frame, shown

FORMATS = ("table", "csv", "json")


@dataclass
class Suggestions:
    """One row per readable image, most in-between first; the runs that voted; files that could not be read."""

    ranking: pd.DataFrame  # path, score, pair, p_a, p_b, between_runs, pair_agreement
    runs: list[str]
    unreadable: dict[str, str]  # path -> why


def runs_of(source: str | Path | Sequence[RunDir], strategies: Sequence[str] = ()) -> list[RunDir]:
    """A run directory, the finished runs of a results directory (of `strategies`, when given), or runs as given."""
    if not isinstance(source, str | Path):
        return list(source)
    path = Path(source)
    if (path / "model.json").is_file():
        return [RunDir(path)]
    runs = [run for run in list_runs(path) if run.done]
    if strategies:
        runs = [run for run in runs if run.name.rsplit("-seed", 1)[0] in strategies]
    if not runs:
        which = f" of strategy {', '.join(strategies)}" if strategies else ""
        raise UserError(f"{path}: no finished runs{which}; give a results directory (the folder holding runs/) or "
                        f"one of its runs/<name>")
    return runs


def rank_fractions(scores: np.ndarray) -> np.ndarray:
    """Each score's rank among `scores` as a fraction: 0 for the lowest, 1 for the highest, ties sharing."""
    return (rankdata(scores) - 1) / max(len(scores) - 1, 1)


def read_all(paths: list[Path], predictors: list[Predictor]) -> tuple[list[Path], dict[tuple, np.ndarray], dict]:
    """The readable paths; their pixels in each input format the runs need (decoded once per format); and the
    unreadable files by path, with why."""
    formats = sorted({input_format(p) for p in predictors}, key=str)
    kept, pixels, unreadable = [], {f: [] for f in formats}, {}
    for path in paths:
        try:
            decoded = {f: read_image(path, *f)[0] for f in formats}
        except UserError as e:
            unreadable[str(path)] = str(e).removeprefix(f"{path}: ")
            continue
        kept.append(path)
        for f in formats:
            pixels[f].append(decoded[f])
    return kept, {f: np.stack(arrays) for f, arrays in pixels.items() if arrays}, unreadable


def input_format(p: Predictor) -> tuple[int, int, int | None]:
    """(channels, size, width): what read_image needs to give this run its training format."""
    return p.meta["in_channels"], p.meta["image_size"], p.meta.get("image_width")


def suggest(source: str | Path | Sequence[RunDir], images: Sequence[str | Path], strategies: Sequence[str] = ()
            ) -> Suggestions:
    """Rank the image files and folders of `images` by how in-between the runs of `source` find them."""
    predictors = [Predictor.load(run.path) for run in runs_of(source, strategies)]
    names = predictors[0].class_names
    for p in predictors[1:]:
        if p.class_names != names:
            raise UserError(f"{p.run_dir}: classes {p.class_names} differ from {predictors[0].run_dir.name}'s; "
                            f"suggest from runs of one dataset")
    paths = find_images(images)
    kept, arrays, unreadable = read_all(paths, predictors)
    if not kept:
        raise UserError(f"no readable image among the {len(paths)} files given")
    ranks, probs, between, tops = [], [], [], []
    for p in predictors:
        out = p.predict(torch.from_numpy(arrays[input_format(p)]))
        ranks.append(rank_fractions(out["ambiguity"]))
        probs.append(out["probs"])
        between.append(out["decision"].sum(1) >= 2)
        tops.append(np.sort(np.argsort(-out["probs"], axis=1, kind="stable")[:, :2], axis=1))
    mean = np.mean(probs, axis=0)
    pair = np.sort(np.argsort(-mean, axis=1, kind="stable")[:, :2], axis=1)
    agree = np.mean([(top == pair).all(1) for top in tops], axis=0)
    rows = pd.DataFrame({
        "path": [str(path) for path in kept], "score": np.mean(ranks, axis=0).round(4),
        "pair": [f"{names[a]}|{names[b]}" for a, b in pair],
        "p_a": mean[np.arange(len(kept)), pair[:, 0]].round(4), "p_b": mean[np.arange(len(kept)), pair[:, 1]].round(4),
        "between_runs": np.mean(between, axis=0).round(4), "pair_agreement": agree.round(4)})
    ranking = rows.sort_values(["score", "path"], ascending=[False, True], kind="stable").reset_index(drop=True)
    return Suggestions(ranking, [p.run_dir.name for p in predictors], unreadable)


def render(found: Suggestions, fmt: str, top: int) -> str | Table:
    """The `top` most in-between images as a Rich table, CSV or JSON (every readable image when top is 0)."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    shown_rows = found.ranking.head(top) if top > 0 else found.ranking
    if fmt == "csv":
        buffer = io.StringIO()
        csv_frame(shown_rows).to_csv(buffer, index=False)
        return buffer.getvalue()
    if fmt == "json":
        return json.dumps({"runs": found.runs, "images": shown_rows.to_dict("records"),
                           "unreadable": found.unreadable}, indent=2, allow_nan=False) + "\n"
    table = Table(title=f"most in-between first, by {len(found.runs)} runs", title_justify="left")
    for column in ("#", "image", "score", "between", "runs say A or B", "same pair"):
        table.add_column(column, overflow="fold", no_wrap=column != "image")
    for i, row in enumerate(shown_rows.itertuples(), 1):
        table.add_row(str(i), Text(shown(row.path)), f"{row.score:.3f}",
                      Text(f"{shown(row.pair.replace('|', ' or '))} ({row.p_a:.2f}, {row.p_b:.2f})"),
                      f"{row.between_runs:.0%}", f"{row.pair_agreement:.0%}")
    return table
