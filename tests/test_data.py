"""Pairs parsing, splits, and the blend generator on the digits data."""

from __future__ import annotations

import pytest
import torch

from ambig_bench.data import SPLITS, parse_pairs
from ambig_bench.datasets import prepare
from ambig_bench.datasets.blend import blend_pair
from ambig_bench.errors import UserError
from tests.conftest import tiny_config

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt"]


def test_parse_pairs_by_index_and_name():
    assert parse_pairs("0:6,2:4", NAMES) == [(0, 6), (2, 4)]
    assert parse_pairs("T-shirt/top:Shirt, pullover:Coat", NAMES) == [(0, 6), (2, 4)]


@pytest.mark.parametrize("text, message", [
    ("0-6", "malformed pair"), ("0:", "malformed pair"), ("0:6:2", "malformed pair"),
    ("0:0", "with itself"), ("0:Jacket", "unknown class 'Jacket'"), ("0:99", "unknown class '99'"),
    ("0:6,6:0", "given twice"),
])
def test_parse_pairs_rejects(text, message):
    with pytest.raises(UserError, match=message):
        parse_pairs(text, NAMES)


def test_blend_is_a_convex_mix():
    a = torch.full((3, 1, 2, 2), 200, dtype=torch.uint8)
    b = torch.zeros((3, 1, 2, 2), dtype=torch.uint8)
    mixed = blend_pair(a, b, 50, 0.4, 0.6, torch.Generator().manual_seed(0))
    assert mixed.dtype == torch.uint8 and mixed.shape == (50, 1, 2, 2)
    assert mixed.min() >= 80 and mixed.max() <= 120


def test_digits_prepare_counts_and_fraction():
    data = prepare(tiny_config(between_fraction=0.05, test_between_per_pair=100, val_between_per_pair=50))
    assert data.images.dtype == torch.uint8 and data.images.shape[1:] == (1, 8, 8)
    assert data.pairs == [(4, 9), (3, 8)]
    counts = data.counts()
    train = counts["train"]
    assert train["between"] / (train["between"] + train["clear"]) == pytest.approx(0.05, abs=0.005)
    assert counts["test"]["between"] == 200 and counts["val"]["between"] == 100
    # Every in-between image belongs to a configured pair with a 0.5/0.5 split.
    between = data.is_between
    assert set(zip(data.label_a[between].tolist(), data.label_b[between].tolist(), strict=True)) == {(4, 9), (3, 8)}
    assert data.share_a[between].eq(0.5).all()


def test_splits_are_disjoint_and_seeded():
    one, again, other = (prepare(tiny_config(seed=s)) for s in (0, 0, 1))
    assert torch.equal(one.images, again.images) and torch.equal(one.split, again.split)
    assert not torch.equal(one.split, other.split)
    assert set(one.split.unique().tolist()) == {SPLITS["train"], SPLITS["val"], SPLITS["test"]}


def test_train_size_limits_clear_training_images():
    data = prepare(tiny_config(train_size=200))
    assert data.counts()["train"]["clear"] == pytest.approx(200, abs=10)
