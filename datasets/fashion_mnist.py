"""`fashion-mnist`: Zalando's 70,000 28×28 grey clothing images, from the original idx files.

Found in `--data-dir`, a torchvision root (`FashionMNIST/raw`), or Debian's `dataset-fashion-mnist`
(`/usr/share/datasets/fashion-mnist/`); `--download` fetches them with torchvision. Default pairs are
the classes people confuse: T-shirt/top vs Shirt and Pullover vs Coat.
$ sudo apt-get install dataset-fashion-mnist && ambig-bench run --dataset fashion-mnist --train-size 5000
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from ambig_bench.config import RunConfig
from ambig_bench.data import SPLITS, RawImages
from ambig_bench.datasets.base import download, download_root, not_found, register_dataset, search_roots
from ambig_bench.errors import UserError

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DEBIAN = "/usr/share/datasets/fashion-mnist"


@register_dataset("fashion-mnist", shape=lambda cfg: (70_000, 1, 28))
def fashion_mnist(cfg: RunConfig) -> RawImages:
    """Fashion-MNIST idx files (--data-dir, Debian's dataset-fashion-mnist, or --download); 28x28 grey."""
    folder = locate(cfg)
    images, labels, split = [], [], []
    for name, (image_file, label_file) in FILES.items():
        x = read_idx(find_file(folder, image_file), ndim=3)
        y = read_idx(find_file(folder, label_file), ndim=1)
        if len(x) != len(y) or (len(y) and y.max() >= len(CLASSES)):
            raise UserError(f"{folder}: {label_file} does not match {image_file} (counts {len(y)} vs {len(x)}, "
                            f"or labels beyond {len(CLASSES) - 1})")
        images.append(x)
        labels.append(y)
        split.append(np.full(len(y), SPLITS[name], dtype=np.int8))
    return RawImages(torch.from_numpy(np.concatenate(images))[:, None], torch.from_numpy(np.concatenate(labels)).long(),
                     list(CLASSES), torch.from_numpy(np.concatenate(split)),
                     default_pairs="T-shirt/top:Shirt,Pullover:Coat", source=str(folder))


def find_file(folder: Path, stem: str) -> Path:
    """`stem.gz` as distributed, or `stem` as torchvision leaves it after extracting."""
    for path in (folder / f"{stem}.gz", folder / stem):
        if path.is_file():
            return path
    raise UserError(f"{folder}: {stem}.gz is missing (needs train- and t10k- images and labels)")


def locate(cfg: RunConfig) -> Path:
    roots = search_roots(cfg, DEBIAN)
    if cfg.data.download:
        import torchvision

        root = download_root(cfg)
        for train in (True, False):
            download(torchvision.datasets.FashionMNIST, root, train=train)
        roots = [root]
    for root in roots:
        for folder in (root, root / "FashionMNIST" / "raw", root / "fashion-mnist"):
            if folder.is_dir() and any(folder.glob("train-images-idx3-ubyte*")):
                return folder
    raise not_found("fashion-mnist", "train-images-idx3-ubyte.gz", roots,
                    "apt-get install dataset-fashion-mnist, give --data-dir, or add --download")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of uint8 (magic 0x0000 08 ndim, big-endian sizes, then the bytes), gzipped or not."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: unreadable or truncated ({e})") from None
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise UserError(f"{path}: not a uint8 idx file with {ndim} dimension(s)")
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if len(body) != int(np.prod(dims)):
        raise UserError(f"{path}: truncated: header says {' x '.join(map(str, dims))} "
                        f"= {int(np.prod(dims))} bytes, found {len(body)}")
    return body.reshape(*dims)
