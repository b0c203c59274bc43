"""`mixup`: each training batch is blended with a shuffled copy of itself, images and targets alike (Zhang et al. 2018).

λ ~ Beta(α, α) once per batch; image i becomes λ·x_i + (1 - λ)·x_j and its target λ·t_i + (1 - λ)·t_j, where j
is a random permutation of the batch. Targets are `soft`'s, so an in-between image enters as (share_a,
1 - share_a). Unlike `soft`, which only softens the images labelled in-between, mixup manufactures in-between
examples from every pair of classes, confusable or not, and teaches the model to be unsure between them.
$ ambig-bench run --strategy soft,mixup --mixup-alpha 0.2 --epochs 3
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ambig_bench.config import option
from ambig_bench.errors import UserError
from ambig_bench.strategies.base import STRATEGIES
from ambig_bench.strategies.soft import Soft


@dataclass
class MixupOptions:
    mixup_alpha: float = option(0.2, "mixup: α of the Beta(α, α) mixing weight (small α: mostly light mixes)")

    def validate(self) -> None:
        if not self.mixup_alpha > 0:
            raise UserError(f"--mixup-alpha must be > 0, got {self.mixup_alpha}")


def beta(alpha: float, gen: torch.Generator) -> torch.Tensor:
    """One Beta(α, α) draw, as a 0-d tensor on the generator's device, from two Gamma(α) draws of `gen`: it stays on
    the device (no host sync) and is reproducible from the run's seed (torch.distributions draws from the global
    generator instead)."""
    g = torch._standard_gamma(torch.full((2,), alpha, device=gen.device), generator=gen)
    # Both Gammas can underflow to 0 for tiny α; then either end is as likely, and 0.5 is their mean.
    return torch.where(g.sum() > 0, g[0] / g.sum().clamp_min(1e-30), torch.tensor(0.5, device=gen.device))


@STRATEGIES.register("mixup", options=MixupOptions)
class Mixup(Soft):
    """Soft targets, and every batch mixed with a shuffled copy of itself, λ ~ Beta(α, α) (α = --mixup-alpha)."""

    mixes_images = True

    def mix_batch(self, images: torch.Tensor, targets: torch.Tensor, gen: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        lam = beta(self.options.mixup_alpha, gen)
        other = torch.randperm(len(images), generator=gen, device=gen.device)
        mixed = images.float() * lam + images[other].float() * (1 - lam)
        return mixed, targets * lam + targets[other] * (1 - lam)
