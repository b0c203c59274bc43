"""`digits`: scikit-learn's bundled 8×8 handwritten digits (1,797 images), the built-in default.

Needs no download, so it runs anywhere in seconds.
$ ambig-bench run --dataset digits --strategy all --epochs 20
"""

import torch
from sklearn.datasets import load_digits

from ambig_bench.config import RunConfig
from ambig_bench.data import RawImages
from ambig_bench.datasets.base import register_dataset


@register_dataset("digits", shape=lambda cfg: (1797, 1, 8))
def digits(cfg: RunConfig) -> RawImages:
    """scikit-learn's 1,797 8x8 grey digits (bundled, no download); default pairs 4:9 and 3:8."""
    bunch = load_digits()
    # Pixels are 0..16; stretch to 0..255 so every dataset is uint8 of the same range.
    images = torch.from_numpy(bunch.images * (255 / 16)).round().to(torch.uint8)[:, None]
    return RawImages(images, torch.from_numpy(bunch.target).long(), [str(c) for c in range(10)],
                     default_pairs="4:9,3:8", source="sklearn.datasets.load_digits")
