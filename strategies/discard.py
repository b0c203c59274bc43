"""`discard`: drop in-between images from training; the model only ever sees clear-cut images.

$ ambig-bench run --strategy discard --epochs 3
"""

import torch

from ambig_bench.strategies.base import STRATEGIES, Labels, Strategy


@STRATEGIES.register("discard")
class Discard(Strategy):
    """Train on clear-cut images only; in-between images are dropped."""

    def images_per_epoch(self, between: torch.Tensor) -> int:
        return int((~between).sum())

    def epoch_targets(self, labels: Labels, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        keep = (~labels.between).nonzero().squeeze(1)
        return keep, self.one_hot(labels.a[keep])
