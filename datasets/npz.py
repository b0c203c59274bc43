"""`npz`: arrays in one NumPy .npz file (`--data-dir data.npz`), for data that is already decoded.

Arrays: `x` uint8 N×H×W (grey) or N×H×W×C, `y` int class per image; optional `probs` N×K human vote
counts or probabilities (enables `--between-source human`), `class_names` K strings, `split` N of
train/val/test (or 0/1/2).
$ python -c "import numpy as np; np.savez('d.npz', x=x, y=y, probs=p)"; ambig-bench run --dataset npz --data-dir d.npz
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ambig_bench.config import RunConfig
from ambig_bench.data import SPLITS, RawImages
from ambig_bench.datasets.base import (
    CLEAR_KIND,
    check_class_names,
    check_votes,
    judge_votes,
    pairs_in_votes,
    register_dataset,
)
from ambig_bench.errors import UserError
from ambig_bench.imageio import MAX_PIXELS
from ambig_bench.io import open_regular
from ambig_bench.shown import brief

KNOWN = {"x", "y", "probs", "class_names", "split"}
MAX_NPZ_BYTES = 16 << 30  # compressed: what the arrays decompress to is bounded by their shapes (check_shapes)


@register_dataset("npz")
def npz(cfg: RunConfig) -> RawImages:
    """Arrays in a .npz (--data-dir FILE): x uint8 N×H×W[×C], y, optional probs N×K, class_names, split."""
    if not cfg.data.data_dir:
        raise UserError("dataset npz: give --data-dir FILE.npz")
    path = Path(cfg.data.data_dir).expanduser()
    try:
        with open_regular(path, MAX_NPZ_BYTES, ".npz file") as file, np.load(file, allow_pickle=False) as f:
            unknown = sorted(set(f.files) - KNOWN)
            if unknown or not {"x", "y"} <= set(f.files):
                raise UserError(f"{path}: needs arrays x and y (optional: probs, class_names, split); "
                                f"found {', '.join(map(brief, sorted(f.files))) or 'none'}")
            check_shapes(path, {k: header_shape(f, k) for k in f.files})
            arrays = {k: f[k] for k in f.files}
    except UserError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path}: not a readable .npz file without pickled objects ({brief(str(e))})") from None
    x, y = arrays["x"], arrays["y"]
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise UserError(f"{path}: x must be uint8 N×H×W or N×H×W×C, got {x.dtype} with shape {x.shape}")
    n = len(x)
    if x.ndim == 4 and x.shape[3] not in (1, 3):
        raise UserError(f"{path}: x has {x.shape[3]} channels per pixel; images are grey (1) or RGB (3)")
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: y must hold one integer class per image ({n}), got {y.dtype} {y.shape}")
    images = torch.from_numpy(np.ascontiguousarray(x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(y.astype(np.int64))
    if n and labels.min() < 0:
        raise UserError(f"{path}: y row {int((labels < 0).nonzero()[0])} is negative; classes are 0..K-1")
    if "class_names" in arrays:
        class_names = [str(c) for c in arrays["class_names"]]
    else:
        k = arrays["probs"].shape[-1] if "probs" in arrays else int(labels.max()) + 1 if n else 0
        check_classes(path, k, n)  # before making k names: y may hold one stray huge label
        class_names = [str(c) for c in range(k)]
    k = len(class_names)
    if n and labels.max() >= k:
        raise UserError(f"{path}: y row {int((labels >= k).nonzero()[0])} is {int(labels.max())}, "
                        f"but there are {k} classes")
    check_class_names(class_names, str(path))
    split = read_split(path, arrays["split"], n) if "split" in arrays else None
    if "probs" not in arrays:
        return RawImages(images, labels, class_names, split, source=str(path))
    probs = arrays["probs"]
    if probs.shape != (n, k) or not np.issubdtype(probs.dtype, np.number):
        raise UserError(f"{path}: probs must be numbers, shape ({n}, {k}), got {probs.dtype} {probs.shape}")
    votes = torch.from_numpy(probs.astype(np.float64))
    check_votes(votes, k, str(path), lambda i: f"{path}: probs row {i}")
    verdict = judge_votes(labels, votes, cfg)
    wrong = (verdict.kind == CLEAR_KIND) & (verdict.first != labels)
    if wrong.any():
        i = int(wrong.nonzero()[0])
        raise UserError(f"{path}: row {i}: y is {class_names[labels[i]]} but probs clearly say "
                        f"{class_names[verdict.first[i]]}; are x, y and probs in the same order?")
    default_pairs = pairs_in_votes(labels, votes, class_names, cfg)
    return RawImages(images, labels, class_names, split, votes, default_pairs, str(path),
                     "human" if default_pairs else "blend")


def header_shape(npz: np.lib.npyio.NpzFile, name: str) -> tuple[int, ...]:
    """The shape an array of the .npz declares, read from its header without decompressing the data."""
    with npz.zip.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read(member)[0]


def check_shapes(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse, before any array is decompressed, images larger than an image file may be (imageio.MAX_PIXELS)
    and more classes (class_names, probs' columns) than images."""
    x, n = shapes["x"], shapes["x"][0] if shapes["x"] else 0
    if len(x) >= 3 and x[1] * x[2] > MAX_PIXELS:
        raise UserError(f"{path}: x holds {x[2]}×{x[1]} images, more than the {MAX_PIXELS:,} pixels an image may "
                        "have")
    check_classes(path, max(shapes.get("class_names", (0,))[:1] + shapes.get("probs", (0, 0))[1:2], default=0), n)


def check_classes(path: Path, k: int, n: int) -> None:
    if k > n:
        raise UserError(f"{path}: {k:,} classes but {n:,} images; every class needs images of its own")


def read_split(path: Path, split: np.ndarray, n: int) -> torch.Tensor:
    if split.shape != (n,):
        raise UserError(f"{path}: split must have one entry per image ({n}), got shape {split.shape}")
    names = list(SPLITS)[:3]
    codes = [str(s).strip().lower() for s in split]
    bad = next((i for i, s in enumerate(codes) if s not in names and s not in ("0", "1", "2")), None)
    if bad is not None:
        raise UserError(f"{path}: split row {bad} is {brief(split[bad])}; use train/val/test or 0/1/2")
    out = torch.tensor([SPLITS[s] if s in SPLITS else int(s) for s in codes], dtype=torch.int8)
    for needed in ("train", "test"):
        if not (out == SPLITS[needed]).any():
            raise UserError(f"{path}: split has no {needed} row")
    return out
