"""`reassign`: each in-between image is labelled A or B at random, redrawn every epoch (option 4).

In expectation over epochs this is the soft target, which is why common advice calls it equivalent: a full-batch
fit to the optimum (`--freeze`) trains on that expectation (`mean_targets`), so there it is exactly `soft`.
$ ambig-bench run --strategy reassign --epochs 3
"""

import torch

from ambig_bench.strategies.base import STRATEGIES, Labels, Strategy


@STRATEGIES.register("reassign")
class Reassign(Strategy):
    """Each in-between image is relabelled A or B at random (A with probability share_a) every epoch."""

    redraws_targets = True

    def epoch_targets(self, labels: Labels, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(len(labels), generator=gen, device=gen.device)
        # Clear-cut images have share_a = 1, so they always keep class a.
        label = torch.where(u < labels.share_a, labels.a, labels.b)
        return torch.arange(len(labels), device=labels.a.device), self.one_hot(label)

    def mean_targets(self, labels: Labels) -> tuple[torch.Tensor, torch.Tensor]:
        """A with probability share_a, else B: one-hot targets whose mean is the shares."""
        return torch.arange(len(labels), device=labels.a.device), self.shared_targets(labels)
