"""`soft`: softmax cross-entropy on soft targets, e.g. [0.5, 0.5] on the pair (option 2 of the question).

$ ambig-bench run --strategy soft --epochs 3
"""

import torch

from ambig_bench.strategies.base import STRATEGIES, Labels, Strategy


@STRATEGIES.register("soft")
class Soft(Strategy):
    """Softmax CE on soft targets: an in-between image is (share_a, 1-share_a) on its pair, 0.5/0.5 by default."""

    def epoch_targets(self, labels: Labels, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.arange(len(labels), device=labels.a.device), self.shared_targets(labels)
