"""The real data in ../shared/data (and Debian's Fashion-MNIST): loading and protocol counts, no training.

The first run decodes the 60,000 CIFAR-10 JPEGs into the user's image cache (some seconds); later runs
read the cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ambig_bench.data import SPLITS
from ambig_bench.datasets import DATASETS, prepare
from ambig_bench.datasets.cifar10 import CLASSES
from ambig_bench.datasets.fashion_mnist import DEBIAN
from tests.conftest import shared_path, tiny_config

CONFUSED = [("cat", "dog"), ("automobile", "truck"), ("deer", "horse"), ("airplane", "ship")]


@pytest.fixture(scope="module")
def cifar10h_config():
    archive = shared_path("cifar10.tgz")
    shared_path("cifar10h", "cifar10h-counts.npy")
    return dict(dataset="cifar10h", data_dir=str(archive), between_source="human")


def test_cifar10_archive_counts():
    raw = DATASETS.get("cifar10")(tiny_config(dataset="cifar10", data_dir=str(shared_path("cifar10.tgz"))))
    assert raw.images.shape == (60_000, 3, 32, 32) and raw.images.dtype == torch.uint8
    assert raw.class_names == CLASSES
    train = raw.split == SPLITS["train"]
    assert int(train.sum()) == 50_000
    assert torch.bincount(raw.labels[train]).tolist() == [5000] * 10


@pytest.mark.slow
def test_cifar10h_protocol_counts_and_soft_targets(cifar10h_config):
    counts = np.load(shared_path("cifar10h", "cifar10h-counts.npy"))
    data = prepare(tiny_config(**cifar10h_config))
    info = data.info
    assert info["between_source"] == "human" and "cifar10h-counts.npy" in info["origin"]
    votes = info["votes"]
    assert votes["clear"] + votes["between_pairs"] + votes["between_other_pairs"] + votes["no_majority"] == 60_000
    # The in-between images are those the README names; they make up 2-3% of CIFAR-10H with all pairs.
    assert 0.02 <= (votes["between_pairs"] + votes["between_other_pairs"]) / len(counts) <= 0.03
    names = [f"{a}:{b}" for a, b in CONFUSED]
    assert list(info["between_per_pair"]) == names
    for name in names:  # every default pair has in-between images on both sides of the protocol
        assert info["between_per_pair"][name]["train"] > 0 and info["between_per_pair"][name]["test"] > 0
    # Halves: the test half has about half of the CIFAR-10H images that are not unsure.
    c = data.counts()
    kept = len(counts) - c["unsure"]["clear"]
    assert c["test"]["clear"] + c["test"]["between"] == pytest.approx(kept / 2, abs=20)
    # In-between images keep their human vote split: share_a = votes of the pair's first class.
    between = data.is_between
    a, b = data.label_a[between], data.label_b[between]
    pairs = {(CLASSES.index(x), CLASSES.index(y)) for x, y in CONFUSED}
    assert set(zip(a.tolist(), b.tolist(), strict=True)) <= pairs
    assert data.share_a[between].min() > 0.15 and data.share_a[between].max() < 0.85
    assert (data.split[between] != SPLITS["unsure"]).all()


def test_cifar10h_without_the_extra_training_images(cifar10h_config):
    data = prepare(tiny_config(**cifar10h_config, human_extra_train=False))
    assert len(data) == 10_000
    train = data.counts()["train"]
    assert 0.01 <= train["between"] / (train["between"] + train["clear"]) <= 0.04  # "about 2%"
    assert data.counts()["val"]["between"] > 0  # validation is stratified on in-between-ness too


@pytest.mark.slow
def test_cifar10h_halves_are_drawn_per_seed(cifar10h_config):
    one, again, other = (prepare(tiny_config(**cifar10h_config, human_extra_train=False, seed=s)) for s in (0, 0, 1))
    assert torch.equal(one.split, again.split) and not torch.equal(one.split, other.split)


def test_fashion_mnist_from_debian():
    if not Path(DEBIAN).is_dir():
        pytest.skip(f"{DEBIAN} is absent (make data installs Debian's dataset-fashion-mnist)")
    raw = DATASETS.get("fashion-mnist")(tiny_config(dataset="fashion-mnist"))
    assert raw.images.shape == (70_000, 1, 28, 28)
    assert torch.bincount(raw.labels[raw.split == SPLITS["test"]]).tolist() == [1000] * 10
