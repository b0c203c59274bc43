"""`duplicate`: each in-between image appears twice per epoch, once labelled A and once B (option 5).

$ ambig-bench run --strategy duplicate --epochs 3
"""

import torch

from ambig_bench.strategies.base import STRATEGIES, Labels, Strategy


@STRATEGIES.register("duplicate")
class Duplicate(Strategy):
    """Each in-between image twice per epoch: once with one-hot A, once with one-hot B."""

    def images_per_epoch(self, between: torch.Tensor) -> int:
        return len(between) + int(between.sum())

    def epoch_targets(self, labels: Labels, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        everyone = torch.arange(len(labels), device=labels.a.device)
        copies = labels.between.nonzero().squeeze(1)
        index = torch.cat([everyone, copies])
        return index, self.one_hot(torch.cat([labels.a, labels.b[copies]]))
