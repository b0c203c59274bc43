"""`ambig-bench pairs`: which class pairs of a dataset are confusable, ranked, with example images.

From the data's votes when they spread over classes (vote columns, `A|B` labels, long-form crowd labels,
CIFAR-10H); otherwise from a reference network's out-of-fold predictions on the training images (the `natural`
source's reference: --model, --width, --natural-folds, --natural-epochs). `datasets/confusable.py` explains
the score. The table goes to stdout, pairs.csv into --out.

With --results DIR, the pairs a results directory's runs trained with instead, each with its design advice (keep A
and B apart, merge them, or add an extra class: ambig_bench.design), read from the runs: nothing is trained.

$ ambig-bench pairs --dataset fashion-mnist --train-size 6000 --out results/pairs-fashion
$ ambig-bench pairs --results results/digits

>>> from ambig_bench.options import build
>>> found = find(build({"dataset": "digits", "train_size": 600, "device": "cpu"}), "results/pairs")  # doctest: +SKIP
>>> found.table.pair.head(3).tolist(), found.path  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ambig_bench.analysis import analyse
from ambig_bench.config import RunConfig
from ambig_bench.datasets.confusable import auto_pairs, find_pairs
from ambig_bench.design import advice
from ambig_bench.errors import UserError
from ambig_bench.io import write_csv
from ambig_bench.train import fit_reference, pick_device

SHOWN = ["rank", "pair", "score", "images", "examples"]


@dataclass
class Found:
    table: pd.DataFrame  # every class pair, most confusable first (rank, pair, class_a, class_b, score, ...)
    evidence: str  # "votes" or "reference"
    auto: str  # what --pairs auto picks from this table
    path: Path  # the pairs.csv written


def find(cfg: RunConfig, out: str | Path) -> Found:
    """Rank the pairs of cfg's dataset (training a reference network when it has no votes); write out/pairs.csv."""
    cfg.validate()
    reference = functools.partial(fit_reference, cfg, pick_device(cfg.runtime.device))
    table, evidence = find_pairs(cfg, reference)
    path = Path(out) / "pairs.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, table.assign(score=table.score.round(6)))
    return Found(table, evidence, auto_pairs(table), path)


def check_top(top: int) -> None:
    """--top: how many pairs to print, at least one."""
    if top < 1:
        raise UserError(f"--top must be at least 1 (pairs printed; pairs.csv holds them all), got {top}")


def top_rows(found: Found, top: int) -> pd.DataFrame:
    """The printed table: the `top` first rows, scores to 4 decimals."""
    return found.table[SHOWN].head(top).assign(score=lambda t: t.score.map("{:.4f}".format))


def check_alone(typed: list[str]) -> None:
    """--results reads data and pairs from the runs: an option (its flag in `typed`) beside it would be ignored."""
    if typed:
        raise UserError(f"--results reads the data and pairs from the runs; drop {typed[0]} (or "
                        "drop --results to find the confusable pairs of the data options)")


def advise(results_dir: str | Path) -> tuple[pd.DataFrame, str]:
    """The design advice for every pair the runs of `results_dir` trained with, and the strategy whose runs the
    pairwise accuracy is of (the comparison's baseline)."""
    comparison = analyse(results_dir)
    table = advice(comparison)
    if table.empty:
        raise UserError(f"{results_dir}: no finished run of {comparison.baseline} has predictions.csv to advise from")
    return table, comparison.baseline
