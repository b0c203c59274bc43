"""`cifar10`: the 60,000 32×32 RGB CIFAR-10 images (50,000 train, 10,000 test).

Reads an image-folder tree (`train/<class>/*`, `test/<class>/*`), a .tgz of one (read directly, no need
to extract), or torchvision's `cifar-10-batches-py`; `--download` fetches the latter. Searched in
`--data-dir`, else $AMBIG_BENCH_DATA, ./data and ../shared/data (as `cifar10/`, `cifar10.tgz` or
`cifar-10-batches-py/`). Decoded JPEGs are cached, so only the first load is slow.
$ ambig-bench run --dataset cifar10 --data-dir ../shared/data/cifar10.tgz --model fast-cifar --device cuda
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ambig_bench.config import RunConfig
from ambig_bench.data import SPLITS, RawImages
from ambig_bench.datasets.base import download_root, not_found, register_dataset, search_roots
from ambig_bench.datasets.folder import read_image_folder
from ambig_bench.errors import UserError
from ambig_bench.imageio import is_archive

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DEFAULT_PAIRS = "cat:dog,automobile:truck,deer:horse,airplane:ship"  # the confusions people make most
BATCHES = "cifar-10-batches-py"


@register_dataset("cifar10")
def cifar10(cfg: RunConfig) -> RawImages:
    """CIFAR-10, 32x32 RGB: an image-folder tree, a .tgz of one, or torchvision's batches (--download)."""
    raw, _ = read_cifar10(cfg)
    return raw


def read_cifar10(cfg: RunConfig) -> tuple[RawImages, np.ndarray]:
    """Train and test images (split set), and each test image's index in CIFAR-10's test order (-1 for train)."""
    path = locate(cfg)
    if is_batches(path):
        return read_batches(path)
    raw, paths = read_image_folder(path)
    if raw.class_names != CLASSES or raw.split is None:
        raise UserError(f"{path}: expected train/ and test/ with the CIFAR-10 class folders "
                        f"{', '.join(CLASSES)}; found classes {', '.join(raw.class_names)}")
    stems = [p.rsplit("/", 1)[-1].split(".", 1)[0] for p in paths]
    # -2 marks a test image not named by its index; cifar10h rejects the tree then, cifar10 does not care.
    test_index = np.array([-1 if not is_test else int(s) if s.isdigit() else -2
                           for s, is_test in zip(stems, (raw.split == SPLITS["test"]).tolist(), strict=True)])
    raw.default_pairs = DEFAULT_PAIRS
    return raw, test_index


def is_tree(path: Path) -> bool:
    return path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir()


def is_batches(path: Path) -> bool:
    return path.is_dir() and (path / "data_batch_1").is_file() and (path / "test_batch").is_file()


def locate(cfg: RunConfig) -> Path:
    roots = search_roots(cfg)
    if cfg.download:
        import torchvision

        root = download_root(cfg)
        torchvision.datasets.CIFAR10(root, download=True)
        roots = [root]
    for root in roots:
        for candidate in (root, root / "cifar10", root / "cifar10.tgz", root / BATCHES):
            if is_tree(candidate) or is_archive(candidate) or is_batches(candidate):
                return candidate
    raise not_found("cifar10", "a CIFAR-10 tree, cifar10.tgz or cifar-10-batches-py", roots,
                    "give --data-dir or add --download")


def read_batches(folder: Path) -> tuple[RawImages, np.ndarray]:
    """torchvision's python pickles: data_batch_1..5 (train) and test_batch, each {data: N×3072, labels}."""
    images, labels, split = [], [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        try:
            with (folder / name).open("rb") as f:
                batch = pickle.load(f, encoding="bytes")
            x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(batch[b"labels"], dtype=np.int64)
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError) as e:
            raise UserError(f"{folder / name}: unreadable or truncated CIFAR-10 batch ({e})") from None
        if len(x) != len(y):
            raise UserError(f"{folder / name}: {len(x)} images but {len(y)} labels")
        images.append(x)
        labels.append(y)
        split.append(np.full(len(y), SPLITS["test" if name == "test_batch" else "train"], dtype=np.int8))
    n_test = len(labels[-1])
    test_index = np.concatenate([np.full(len(np.concatenate(labels[:-1])), -1), np.arange(n_test)])
    raw = RawImages(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)),
                    list(CLASSES), torch.from_numpy(np.concatenate(split)), default_pairs=DEFAULT_PAIRS,
                    source=str(folder))
    return raw, test_index
