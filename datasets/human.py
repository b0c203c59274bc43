"""`human` in-between source: real images that people split between two classes (vote counts or probabilities).

An image is in-between when its two most-voted classes hold at least `--human-pair-mass` (0.9) of the
votes and the second at least `--human-second` (0.2); its soft target is the pair's own vote split
(share_a = votes of A / votes of A and B). In-between images whose two classes are not one of the
configured pairs, and images with no clear majority, are "unsure": left out of training and testing and
counted in data.json. Votes come from cifar10h, a `folder` labels CSV (`A|B` labels or vote columns),
or an `npz` file's `probs`.
`--between-train N` keeps N of the in-between training images (a label-budget curve: `ambig-bench sweep --vary
between-train=10,20,40`): the first N of an order fixed per seed, so a larger N keeps a superset of a smaller one,
while validation and test images stay the same.
$ ambig-bench run --dataset cifar10h --between-source human --strategy all --no-human-extra-train
"""

import numpy as np
import torch

from ambig_bench.data import SPLITS, LabelledImages, RawImages
from ambig_bench.datasets.base import (
    BETWEEN_SOURCES,
    SourceContext,
    between_per_pair,
    labelled_by_votes,
    pair_names,
    split_without_between,
)
from ambig_bench.errors import UserError


@BETWEEN_SOURCES.register("human")
def human(raw: RawImages, pairs: list[tuple[int, int]], ctx: SourceContext) -> LabelledImages:
    """Real in-between images from human votes (cifar10h, folder CSV, npz probs), with their vote split."""
    if raw.votes is None:
        raise UserError(f"--between-source human: dataset {ctx.cfg.data.dataset} has no human votes; use cifar10h, "
                        f"folder with a labels CSV (A|B labels or vote columns), or npz with probs")
    data = labelled_by_votes(raw, pairs, ctx.cfg, keep_between=True)
    if split := split_without_between(data):
        raise UserError(f"--between-source human: no {split} image is in-between for pairs "
                        f"{','.join(pair_names(data))}; lower --human-second or --human-pair-mass, or choose other "
                        f"--pairs")
    if ctx.cfg.data.between_train is not None:
        data = keep_between_train(data, ctx.cfg.data.between_train, ctx.cfg.seed)
    data.info["between_per_pair"] = between_per_pair(data)
    return data


ORDER_STREAM = 24  # the nested order's own random stream beside the seed: no other draw of the run shifts it


def nested_order(pair_of: np.ndarray, seed: int) -> np.ndarray:
    """Positions of in-between training images (`pair_of`: each one's pair) in the order `--between-train` keeps
    them, the first N for any N. Each pair's images take evenly spaced places, at a random offset, in a random
    order, so the first N hold each pair about in its share of all. Hand-written: systematic sampling per
    stratum, which no library offers as one nested order."""
    rng = np.random.default_rng([seed, ORDER_STREAM])
    place = np.empty(len(pair_of))
    for pair in np.unique(pair_of):
        mine = np.flatnonzero(pair_of == pair)
        place[mine] = (rng.permutation(len(mine)) + rng.random()) / len(mine)
    return np.argsort(place, kind="stable")


def keep_between_train(data: LabelledImages, n: int, seed: int) -> LabelledImages:
    """The data with only the first `n` in-between training images of `nested_order`; the rest are left out."""
    train = (data.is_between & (data.split == SPLITS["train"])).nonzero().squeeze(1)
    if n > len(train):
        raise UserError(f"--between-train {n}: the run's pairs have {len(train)} in-between training images; give "
                        f"at most {len(train)}")
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[train[torch.from_numpy(nested_order(data.pair_index()[train].numpy(), seed)[n:])]] = False
    kept = data.take(keep)
    kept.info["between_train"] = {"kept": n, "available": len(train)}
    return kept
