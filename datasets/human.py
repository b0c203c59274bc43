"""`human` in-between source: real images that people split between two classes (vote counts or probabilities).

An image is in-between when its two most-voted classes hold at least `--human-pair-mass` (0.9) of the
votes and the second at least `--human-second` (0.2); its soft target is the pair's own vote split
(share_a = votes of A / votes of A and B). In-between images whose two classes are not one of the
configured pairs, and images with no clear majority, are "unsure": left out of training and testing and
counted in data.json. Votes come from cifar10h, a `folder` labels CSV (`A|B` labels or vote columns),
or an `npz` file's `probs`.
$ ambig-bench run --dataset cifar10h --between-source human --strategy all --no-human-extra-train
"""

from ambig_bench.data import LabelledImages, RawImages
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
    data.info["between_per_pair"] = between_per_pair(data)
    return data
