"""`label-smoothing`: soft's targets mixed with the uniform distribution, (1 - ε)·target + ε/K (Szegedy et al. 2016).

The first alternative most people try beside soft targets. In-between images start from soft's (share_a,
1 - share_a) target, so the only difference from `soft` is that every image, clear-cut or not, also gives ε of
its target mass to all K classes alike: it curbs over-confidence everywhere instead of saying which classes an
image is between.
$ ambig-bench run --strategy soft,label-smoothing --smoothing-eps 0.1 --epochs 3
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ambig_bench.config import option
from ambig_bench.errors import UserError
from ambig_bench.strategies.base import STRATEGIES, Labels
from ambig_bench.strategies.soft import Soft


@dataclass
class LabelSmoothingOptions:
    smoothing_eps: float = option(0.1, "label-smoothing: share ε of every target spread evenly over all classes")

    def validate(self) -> None:
        if not 0 <= self.smoothing_eps < 1:
            raise UserError(f"--smoothing-eps must be in [0, 1), got {self.smoothing_eps}")


@STRATEGIES.register("label-smoothing", options=LabelSmoothingOptions)
class LabelSmoothing(Soft):
    """Soft targets smoothed towards uniform: (1 - ε)·target + ε/K for every image (ε = --smoothing-eps)."""

    spreads_targets = True

    def epoch_targets(self, labels: Labels, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index, targets = super().epoch_targets(labels, gen)
        eps = self.options.smoothing_eps
        return index, targets * (1 - eps) + eps / self.num_outputs
