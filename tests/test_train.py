"""The training loop's device-side augmentation against a naive per-image reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ambig_bench.train import augment


@pytest.mark.parametrize("shift", [0, 1, 2, 5])
def test_augment_equals_mirror_pad_crop_and_flip_image_by_image(shift):
    n, h, w = 64, 6, 9
    x = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8)
    got = augment(x, torch.Generator().manual_seed(3), shift)
    # The same draws, in the same order, applied the textbook way: mirror-pad, crop, maybe flip.
    gen = torch.Generator().manual_seed(3)
    dy = torch.randint(-shift, shift + 1, (n, 1), generator=gen).squeeze(1) + shift
    dx = torch.randint(-shift, shift + 1, (n, 1), generator=gen).squeeze(1) + shift
    flip = torch.rand(n, generator=gen) < 0.5
    for i in range(n):
        padded = F.pad(x[i:i + 1].float(), (shift,) * 4, mode="reflect") if shift else x[i:i + 1].float()
        crop = padded[0, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        assert torch.equal(got[i].float(), crop.flip(2) if flip[i] else crop)
    if shift:
        assert not torch.equal(got, x) and got.dtype == torch.uint8
