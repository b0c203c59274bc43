"""`votes`: softmax cross-entropy on each image's whole human vote distribution, over all K classes.

Where the data have votes (CIFAR-10H, a labels CSV with one vote column per class or in long form) the target
of every training image, clear-cut or in-between, is its share of the votes for each class, as CIFAR-10H work
trains (Peterson et al. 2019). `soft` keeps only the top pair of an in-between image and makes clear-cut images
one-hot; `votes` keeps a third class's votes and a clear-cut image's minority votes too. Without votes (and for
`A|B` labels, which are one vote each for A and B) it is exactly `soft`.
$ ambig-bench run --dataset cifar10h --strategy soft,votes --epochs 3
"""

import torch

from ambig_bench.strategies.base import STRATEGIES, Labels
from ambig_bench.strategies.soft import Soft


@STRATEGIES.register("votes")
class Votes(Soft):
    """Soft CE on each image's full vote distribution (all classes); `soft` where the data have no votes."""

    def epoch_targets(self, labels: Labels, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if labels.votes is None:
            return super().epoch_targets(labels, gen)
        return torch.arange(len(labels), device=labels.a.device), labels.votes
