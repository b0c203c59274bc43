"""`cifar10`: the 60,000 32×32 RGB CIFAR-10 images (50,000 train, 10,000 test).

Reads an image-folder tree (`train/<class>/*`, `test/<class>/*`), a .tgz of one (read directly, no need
to extract), or torchvision's `cifar-10-batches-py`; `--download` fetches the latter. Searched in
`--data-dir`, else $AMBIG_BENCH_DATA, ./data and ../shared/data (as `cifar10/`, `cifar10.tgz` or
`cifar-10-batches-py/`). Decoded JPEGs are cached, so only the first load is slow. The batches are
pickles, so a batch file is unpickled only when its MD5 matches the official file's.
$ ambig-bench run --dataset cifar10 --data-dir ../shared/data/cifar10.tgz --model fast-cifar --device cuda
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch

from ambig_bench.config import RunConfig
from ambig_bench.data import SPLITS, RawImages
from ambig_bench.datasets.base import download, download_root, not_found, register_dataset, search_roots
from ambig_bench.datasets.folder import read_image_folder
from ambig_bench.errors import UserError
from ambig_bench.imageio import is_archive

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DEFAULT_PAIRS = "cat:dog,automobile:truck,deer:horse,airplane:ship"  # the confusions people make most
BATCHES = "cifar-10-batches-py"
# The MD5 of each official batch file (as torchvision lists them). A batch is a pickle, and unpickling runs
# whatever code the file names, so a file is unpickled only once its checksum matches.
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}


@register_dataset("cifar10", shape=lambda cfg: (60_000, 3, 32))
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
    if cfg.data.download:
        import torchvision

        root = download_root(cfg)
        download(torchvision.datasets.CIFAR10, root)
        roots = [root]
    for root in roots:
        for candidate in (root, root / "cifar10", root / "cifar10.tgz", root / BATCHES):
            if is_tree(candidate) or is_archive(candidate) or is_batches(candidate):
                return candidate
    raise not_found("cifar10", "a CIFAR-10 tree, cifar10.tgz or cifar-10-batches-py", roots,
                    "give --data-dir or add --download")


def read_verified(path: Path, chunk: int = 1 << 20) -> bytearray:
    """The bytes of an official CIFAR-10 batch file, read and hashed in chunks; UserError for any other file.

    What is unpickled is exactly what was hashed, so swapping the file after the check changes nothing."""
    digest, data = hashlib.md5(usedforsecurity=False), bytearray()
    try:
        with path.open("rb") as f:
            while block := f.read(chunk):
                digest.update(block)
                data += block
    except OSError as e:
        raise UserError(f"{path}: cannot read the CIFAR-10 batch ({e.strerror or e})") from None
    if digest.hexdigest() != BATCH_MD5[path.name]:
        raise UserError(f"{path}: its MD5 checksum does not match the official CIFAR-10 file; not "
                        f"unpickled, because loading a pickle can run arbitrary code")
    return data


def read_batches(folder: Path) -> tuple[RawImages, np.ndarray]:
    """torchvision's python pickles: data_batch_1..5 (train) and test_batch, each {data: N×3072, labels}.

    Each file is unpickled only once its MD5 matches the official file's."""
    images, labels, split = [], [], []
    for name in BATCH_MD5:
        data = read_verified(folder / name)
        try:
            batch = pickle.loads(data, encoding="bytes")
            x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(batch[b"labels"], dtype=np.int64)
        except (EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError) as e:
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
