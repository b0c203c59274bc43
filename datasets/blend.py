"""`blend` in-between source: mix one image of A with one of B, weight λ ~ U(blend_low, blend_high).

Blends are drawn within each split (train blends from train images, test blends from test images), so
no test pixel is ever trained on. Their soft target is 0.5/0.5. Only clear-cut images are blended; images
that human votes call in-between or unsure are kept out (split "unsure").
$ ambig-bench run --between-source blend --between-fraction 0.05 --blend-low 0.4 --blend-high 0.6
"""

from dataclasses import dataclass

import torch

from ambig_bench.config import MAX_COUNT, check_between, check_fraction, option
from ambig_bench.data import SPLITS, LabelledImages, RawImages
from ambig_bench.datasets.base import (
    BETWEEN_SOURCES,
    SourceContext,
    between_count,
    check_generated,
    clear_cut,
    concat,
)
from ambig_bench.errors import UserError


@dataclass
class BlendOptions:
    between_fraction: float = option(0.05, "blend: share of the training set that is in-between, in (0, 1)")
    blend_low: float = option(0.4, "blend: weight λ of class A is drawn from U(blend_low, blend_high)")
    blend_high: float = option(0.6, "blend: upper end of the blend weight range")
    test_between_per_pair: int = option(100, "blend: in-between test images per pair")
    val_between_per_pair: int = option(50, "blend: in-between validation images per pair (threshold, conformal)")

    def validate(self) -> None:
        check_fraction("between_fraction", self.between_fraction)
        if not 0 <= self.blend_low <= self.blend_high <= 1:
            raise UserError(f"--blend-low/--blend-high must satisfy 0 <= low <= high <= 1, "
                            f"got {self.blend_low}, {self.blend_high}")
        check_between("test_between_per_pair", self.test_between_per_pair, 1, MAX_COUNT)
        check_between("val_between_per_pair", self.val_between_per_pair, 1, MAX_COUNT)


def blend_pair(images_a: torch.Tensor, images_b: torch.Tensor, n: int, low: float, high: float,
               gen: torch.Generator) -> torch.Tensor:
    """n uint8 blends λ·a + (1-λ)·b of random a from images_a and b from images_b."""
    ia = torch.randint(len(images_a), (n,), generator=gen)
    ib = torch.randint(len(images_b), (n,), generator=gen)
    lam = (low + (high - low) * torch.rand(n, generator=gen)).view(n, 1, 1, 1)
    mixed = lam * images_a[ia].float() + (1 - lam) * images_b[ib].float()
    return mixed.round().clamp(0, 255).to(torch.uint8)


@BETWEEN_SOURCES.register("blend", options=BlendOptions)
def blend(raw: RawImages, pairs: list[tuple[int, int]], ctx: SourceContext) -> LabelledImages:
    """Synthetic in-between images: pixel blends of an A and a B image (λ ~ U(0.4, 0.6) by default)."""
    opts: BlendOptions = ctx.options
    clear = clear_cut(raw, pairs, ctx.cfg)
    n_train_clear = int((clear.split == SPLITS["train"]).sum())
    per_split = {
        "train": between_count(n_train_clear, opts.between_fraction, len(pairs)),
        "val": opts.val_between_per_pair,
        "test": opts.test_between_per_pair,
    }
    check_generated(per_split, len(pairs), raw.images, n_train_clear, opts.between_fraction)
    parts = [clear]
    for split, n in per_split.items():
        inside = clear.split == SPLITS[split]
        for a, b in pairs:
            sides = [clear.images[inside & (clear.label_a == c)] for c in (a, b)]
            empty = next((c for c, images in zip((a, b), sides, strict=True) if not len(images)), None)
            if empty is not None:
                raise UserError(f"blend: no clear-cut {split} image of class {raw.class_names[empty]} to blend")
            images = blend_pair(*sides, n, opts.blend_low, opts.blend_high, ctx.gen)
            parts.append(LabelledImages(
                images, torch.full((n,), a), torch.full((n,), b), torch.full((n,), 0.5),
                torch.full((n,), SPLITS[split], dtype=torch.int8), raw.class_names, pairs,
            ))
    return concat(parts)
