"""`partial`: partial-label (candidate-set) loss, -log(p_A + p_B) for an in-between image.

The model is free to put the pair's mass anywhere within the pair; unlike `soft` it is not pushed to
0.5/0.5, so it can follow cues that favour one side.
$ ambig-bench run --strategy partial --epochs 3
"""

import torch

from ambig_bench.strategies.base import STRATEGIES, Labels, Strategy


@STRATEGIES.register("partial")
class Partial(Strategy):
    """Candidate-set loss -log(sum of p over the label set): {y} for clear-cut, {A, B} in between."""

    def epoch_targets(self, labels: Labels, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.arange(len(labels), device=labels.a.device), self.label_sets(labels)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        # log(sum_{k in S} p_k) = logsumexp over S minus logsumexp over all: stable, no log(0).
        inside = logits.masked_fill(targets == 0, float("-inf")).logsumexp(1)
        return (logits.logsumexp(1) - inside).mean()
