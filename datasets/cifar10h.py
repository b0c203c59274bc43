"""`cifar10h`: real human ambiguity. The 10,000 CIFAR-10 test images with CIFAR-10H's ~50 votes each.

Protocol (halves drawn per seed, stratified on what the votes say): one half of the CIFAR-10H images,
plus the 50,000 CIFAR-10 training images as clear-cut examples (`--no-human-extra-train` leaves them
out), is for training; the other half is for testing. An image's label is its most-voted class. With
`--between-source human` the in-between images (cat/dog, automobile/truck, deer/horse, airplane/ship by
default) train on their vote split; images with no clear majority are "unsure" and counted apart.
Votes: `cifar10h-counts.npy` (or `cifar10h-probs.npy`) in `cifar10h/` beside the CIFAR-10 data.
$ ambig-bench run --dataset cifar10h --between-source human --strategy all --no-human-extra-train --epochs 10
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ambig_bench.config import RunConfig
from ambig_bench.data import SPLITS, RawImages
from ambig_bench.datasets.base import (
    check_votes,
    default_roots,
    judge_votes,
    not_found,
    register_dataset,
    search_roots,
    strata,
    stratified_split,
)
from ambig_bench.datasets.cifar10 import read_cifar10
from ambig_bench.errors import UserError

VOTE_FILES = ("cifar10h-counts.npy", "cifar10h-probs.npy")
HALVES_STREAM = 7919  # added to the seed: the halves get a random stream of their own


# The halves are drawn per seed; 10,000 voted test images, and the 50,000 training images with --human-extra-train.
@register_dataset("cifar10h", draws_from_seed=True,
                  shape=lambda cfg: (60_000 if cfg.data.human_extra_train else 10_000, 3, 32))
def cifar10h(cfg: RunConfig) -> RawImages:
    """CIFAR-10 test images with CIFAR-10H human votes; real in-between images (use --between-source human)."""
    votes_file = locate_votes(cfg)  # before the slow image load, so a missing file fails fast
    raw, test_index = read_cifar10(cfg)
    test = np.flatnonzero(test_index != -1)
    if sorted(test_index[test].tolist()) != list(range(len(test))):
        raise UserError(f"{raw.source}: the test images must be named by their CIFAR-10 test index "
                        f"(test/<class>/00000.jpg ... 09999.jpg) to be matched with {votes_file.name}")
    votes = read_votes(votes_file, len(test))
    test = test[np.argsort(test_index[test])]  # CIFAR-10 test order = the rows of the vote file
    test_t = torch.from_numpy(test)
    labels = judge_votes(raw.labels[test_t], votes, cfg).first  # the people's majority, ties to CIFAR-10's
    gen = torch.Generator().manual_seed(cfg.seed + HALVES_STREAM)
    half = stratified_split(strata(labels, votes, cfg), [0.5], gen)
    split = torch.where(half == 0, SPLITS["train"], SPLITS["test"]).to(torch.int8)
    images, all_labels, all_votes, all_split = raw.images[test_t], labels, votes, split
    if cfg.data.human_extra_train:
        train = torch.from_numpy(np.flatnonzero(test_index == -1))
        extra = raw.labels[train]
        images = torch.cat([raw.images[train], images])
        all_labels = torch.cat([extra, labels])
        all_votes = torch.cat([torch.nn.functional.one_hot(extra, len(raw.class_names)).double(), votes])
        all_split = torch.cat([torch.full((len(train),), SPLITS["train"], dtype=torch.int8), split])
    protocol = "CIFAR-10 train + CIFAR-10H half" if cfg.data.human_extra_train else "CIFAR-10H halves only"
    return RawImages(images, all_labels, raw.class_names, all_split, all_votes, raw.default_pairs,
                     f"{raw.source} + {votes_file} ({protocol})", default_source="human")



def locate_votes(cfg: RunConfig) -> Path:
    # Beside --data-dir first, then the default places: the votes can live apart from the images.
    roots = search_roots(cfg) + (default_roots() if cfg.data.data_dir else [])
    for root in roots:
        base = root if root.is_dir() else root.parent
        for name in VOTE_FILES:
            for path in (base / "cifar10h" / name, base / name):
                if path.is_file():
                    return path
    raise not_found("cifar10h", "cifar10h/cifar10h-counts.npy", roots,
                    "get it from the CIFAR-10H repository (jcpeterson/cifar-10h, data/) and put it in a "
                    "cifar10h/ folder beside the CIFAR-10 data")


def read_votes(path: Path, n_test: int) -> torch.Tensor:
    """Row i = votes for CIFAR-10 test image i (10,000 rows for the real CIFAR-10H)."""
    try:
        votes = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path}: unreadable or truncated ({e})") from None
    if votes.shape != (n_test, 10) or not np.issubdtype(votes.dtype, np.number):
        raise UserError(f"{path}: expected one row of 10 vote counts per test image ({n_test}x10), "
                        f"got {votes.dtype} {votes.shape}")
    votes = torch.from_numpy(votes.astype(np.float64))
    check_votes(votes, 10, str(path), lambda i: f"{path} row {i}")
    return votes
