"""Crowd labels as they come: a labels CSV in long form, one row per vote (`file,worker,label[,split]`).

The rows are aggregated into one row per image with one vote column per class, which the `folder` dataset
then reads like any vote table: the share of each image's votes per class (default), or the class
probabilities of Dawid and Skene's model, which learns how reliable each worker is and weighs their votes
by it (`--crowd-method dawid-skene`, through crowd-kit: `pip install 'ambig-bench[crowd]'`).

$ ambig-bench run --dataset folder --data-dir photos --labels photos/votes.csv --strategy soft,votes

>>> from pathlib import Path
>>> rows = [(2, ["a.png", "ann", "cat"]), (3, ["a.png", "bob", "dog"]), (4, ["b.png", "ann", "dog"])]
>>> kept, classes, votes = aggregate_votes(Path("votes.csv"), ["file", "worker", "label"], rows, "shares")
>>> [row[0] for _, row in kept], classes, votes.tolist()
(['a.png', 'b.png'], ['cat', 'dog'], [[0.5, 0.5], [0.0, 1.0]])
"""

from __future__ import annotations

import posixpath
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ambig_bench.datasets.base import check_class_names
from ambig_bench.errors import UserError
from ambig_bench.shown import brief

CROWD_METHODS = ("shares", "dawid-skene")  # --crowd-method: how an image's votes are aggregated
LONG_FORM = ("file", "worker", "label")  # the columns that make a labels CSV long-form; `split` may be added


def is_long_form(header: list[str]) -> bool:
    return "worker" in [h.lower() for h in header]


def aggregate_votes(path: Path, header: list[str], body: list[tuple[int, list[str]]], method: str
                    ) -> tuple[list[tuple[int, list[str]]], list[str], np.ndarray]:
    """One row per vote -> (the first row of each image, in file order; class names, sorted; N×K votes).

    Errors name the line: a worker voting twice on one image, an empty worker or label, a label that is not one
    class name (`cat|dog` is two votes, two rows), an image given two splits, a column not in file, worker,
    label, split.
    """
    lower = [h.lower() for h in header]
    missing = [c for c in LONG_FORM if c not in lower]
    if missing:
        raise UserError(f"{path}: a long-form labels CSV (one row per vote) needs the columns file, worker and label; "
                        f"missing {', '.join(missing)}")
    extra = [h for h in header if h.lower() not in (*LONG_FORM, "split")]
    if extra:
        raise UserError(f"{path}: unexpected column {brief(extra[0])} in a long-form labels CSV (allowed: file, "
                        "worker, label, split)")
    col = {name: lower.index(name) for name in (*LONG_FORM, "split") if name in lower}
    first: dict[str, tuple[int, list[str]]] = {}  # image -> its first row
    voted: dict[tuple[str, str], int] = {}  # (image, worker) -> line of the vote
    tasks, workers, labels = [], [], []
    for line, row in body:
        image = posixpath.normpath(row[col["file"]].strip().replace("\\", "/"))
        worker, label = row[col["worker"]].strip(), row[col["label"]].strip()
        if not worker or not label:
            raise UserError(f"{path} line {line}: empty {'worker' if not worker else 'label'}")
        if any(c in label for c in "|:,"):
            raise UserError(f"{path} line {line}: label {brief(label)} must be one class; in long form each vote is a "
                            "row of its own")
        if (image, worker) in voted:
            raise UserError(f"{path} line {line}: worker {brief(worker)} already voted on {image} on line "
                            f"{voted[image, worker]}")
        voted[image, worker] = line
        if "split" in col and image in first:
            before_line, before = first[image]
            if before[col["split"]].strip().lower() != row[col["split"]].strip().lower():
                raise UserError(f"{path} line {line}: {image} has split {brief(row[col['split']])} here but "
                                f"{brief(before[col['split']])} on line {before_line}")
        first.setdefault(image, (line, row))
        tasks.append(image)
        workers.append(worker)
        labels.append(label)
    class_names = sorted(set(labels))
    check_class_names(class_names, str(path))  # also: two spellings of one class ("Cat", "cat")
    votes = pd.DataFrame({"task": tasks, "worker": workers, "label": labels})
    shares = (dawid_skene(votes, class_names) if method == "dawid-skene" else
              pd.crosstab(votes.task, votes.label, normalize="index").reindex(columns=class_names, fill_value=0.0))
    return list(first.values()), class_names, shares.reindex(list(first)).to_numpy(dtype=float, copy=True)


def dawid_skene(votes: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """Per image (rows) and class (columns), Dawid-Skene's posterior class probabilities (crowd-kit)."""
    try:
        from crowdkit.aggregation import DawidSkene  # optional extra: only this method needs it
    except ImportError:
        raise UserError("--crowd-method dawid-skene needs crowd-kit: pip install 'ambig-bench[crowd]'") from None
    with warnings.catch_warnings():  # crowd-kit's own deprecation warnings (pandas 3) are not the user's concern
        warnings.simplefilter("ignore")
        probs = DawidSkene(n_iter=100).fit_predict_proba(votes)
    return probs.reindex(columns=class_names, fill_value=0.0)
