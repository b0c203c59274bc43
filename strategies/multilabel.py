"""`multilabel`: one sigmoid per class and binary cross-entropy; an in-between image has both labels on.

$ ambig-bench run --strategy multilabel --epochs 3
"""

import torch
import torch.nn.functional as F

from ambig_bench.strategies.base import STRATEGIES, Labels, Strategy


@STRATEGIES.register("multilabel")
class Multilabel(Strategy):
    """Sigmoid + BCE per class; an in-between image has both of its labels on (option 3)."""

    def epoch_targets(self, labels: Labels, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.arange(len(labels), device=labels.a.device), self.label_sets(labels)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """BCE summed over classes, averaged over the batch (the scale of one softmax CE term)."""
        return F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="sum") / len(logits)

    def set_scores(self, logits: torch.Tensor) -> torch.Tensor:
        # The threshold applies to each independent sigmoid, which is what multilabel models decode by.
        return logits.float().sigmoid()

    def class_probs(self, logits: torch.Tensor) -> torch.Tensor:
        s = self.set_scores(logits)
        return s / s.sum(1, keepdim=True).clamp_min(1e-12)
