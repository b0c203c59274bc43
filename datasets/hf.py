"""`hf`: a Hugging Face dataset, through the `datasets` library (pip install 'ambig-bench[hf]').

`--data-dir` is a folder written by `save_to_disk` (a Dataset or a DatasetDict), an image folder
(`<class>/<image>`, read by the library's `imagefolder` builder), or, with `--download`, a Hub name such as
`user/photos` (fetched once, then read from the library's cache). The dataset's own splits are kept
(train, validation, test; one split alone is split per seed like any dataset without splits).

The label column (`--hf-label-column`) is a ClassLabel, a string (`cat`, or `cat|dog` for an image between
cat and dog, as in the `folder` dataset's labels CSV), or a comma list of per-class vote columns
(`cat,dog,bird`: counts or probabilities, the column names are the classes).

$ python -c "import datasets; datasets.Dataset.from_dict({...}).save_to_disk('photos_hf')"
$ ambig-bench run --dataset hf --data-dir photos_hf --hf-label-column label --between-source auto
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ambig_bench import cache
from ambig_bench.config import RunConfig, option
from ambig_bench.data import SPLITS, RawImages
from ambig_bench.datasets.base import check_class_names, check_votes, loader_options, register_dataset, voted_images
from ambig_bench.datasets.folder import label_votes
from ambig_bench.errors import UserError
from ambig_bench.imageio import decode_one, stack

# A dataset's split names -> ours; a DatasetDict with other names is refused, naming them.
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}
INSTALL = "pip install 'ambig-bench[hf]'"


@dataclass
class HfOptions:
    hf_image_column: str | None = option(None, "hf: the image column (default: the dataset's one Image column)")
    hf_label_column: str | None = option(None, "hf: the label column: ClassLabel, text (`cat`, or `cat|dog` in "
                                               "between) or a comma list of per-class vote columns (default: the "
                                               "one ClassLabel column, else `label`)")

    def validate(self) -> None:
        for name in ("hf_image_column", "hf_label_column"):
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise UserError(f"--{name.replace('_', '-')} must name a column")


def hf_library() -> ModuleType:
    """The Hugging Face `datasets` library, or a one-line UserError saying what to install.

    This project's own `datasets/` folder (ambig_bench.datasets) would shadow the library when the repository
    root is on sys.path (tests, `python -m` in a checkout), so that root is left out while importing it.
    """
    root = Path(__file__).resolve().parents[1]
    loaded = sys.modules.get("datasets")
    if loaded is not None and Path(loaded.__file__ or "").resolve().parents[1] != root:
        return loaded
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    sys.modules.pop("datasets", None)  # this project's folder, imported under the library's name
    try:
        import datasets
    except ImportError:
        raise UserError(f"--dataset hf needs the Hugging Face datasets library: {INSTALL}") from None
    finally:
        sys.path[:] = saved
    return datasets


def load_splits(lib: ModuleType, cfg: RunConfig) -> dict[str, Any]:
    """The dataset at --data-dir by split name ("" for a Dataset without splits)."""
    where = cfg.data.data_dir
    if not where:
        raise UserError("dataset hf: give --data-dir: a save_to_disk folder, an image folder, or a Hub name "
                        "with --download")
    path = Path(where).expanduser()
    try:
        if path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "state.json")):
            loaded = lib.load_from_disk(str(path))
        elif path.is_dir():
            # The library converts the folder to Arrow files once; they go where ambig-bench caches decoded images.
            arrow = cache.library_folder("huggingface")
            loaded = lib.load_dataset("imagefolder", data_dir=str(path), cache_dir=str(arrow))
        elif path.exists():
            raise UserError(f"--data-dir {where}: a file; give the folder save_to_disk wrote, or an image folder")
        elif not cfg.data.download:
            raise UserError(f"--data-dir {where}: no such folder; to fetch the Hub dataset {where!r}, add --download")
        else:
            loaded = lib.load_dataset(where)
    except UserError:
        raise
    except Exception as e:  # the library raises many kinds (FileNotFoundError, DatasetNotFoundError, HTTP errors...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--data-dir {where}: cannot load it with the datasets library ({first})") from None
    return dict(loaded) if isinstance(loaded, lib.DatasetDict) else {"": loaded}


def split_codes(parts: dict[str, Any], where: str) -> torch.Tensor | None:
    """Our split of every row (splits in the dataset's order), or None to split per seed (one split only)."""
    if len(parts) == 1:
        return None
    unknown = [name for name in parts if name not in SPLIT_NAMES]
    if unknown:
        raise UserError(f"{where}: unknown split {unknown[0]!r}; expected train, validation and test")
    ours = [SPLIT_NAMES[name] for name in parts]
    if not {"train", "test"} <= set(ours):
        raise UserError(f"{where}: splits {', '.join(parts)}: several splits need train and test (validation "
                        "is optional)")
    return torch.cat([torch.full((len(ds),), SPLITS[s], dtype=torch.int8) for s, ds in zip(ours, parts.values(),
                                                                                         strict=True)])


def column_of(features: dict, wanted: str | None, kind: type, what: str, where: str) -> str:
    """`wanted`, checked to exist, or the one column of feature type `kind`."""
    if wanted:
        if wanted not in features:
            raise UserError(f"{where}: no column {wanted!r} (columns: {', '.join(features)})")
        return wanted
    found = [name for name, feature in features.items() if isinstance(feature, kind)]
    if len(found) != 1:
        raise UserError(f"{where}: {len(found)} {what} columns ({', '.join(found) or 'none'} of "
                        f"{', '.join(features)}); choose one with --hf-{what}-column")
    return found[0]


def read_images(lib: ModuleType, parts: dict[str, Any], column: str, where: str) -> torch.Tensor:
    """Every split's images, decoded by the same code as image files (grey or RGB, one size)."""
    names, arrays = [], []
    for split, ds in parts.items():
        if not isinstance(ds.features[column], lib.Image):
            raise UserError(f"{where}: column {column!r} holds {ds.features[column]}, not images")
        for i, item in enumerate(ds.cast_column(column, lib.Image(decode=False))[column]):
            name = f"{where} {split or 'row'} {i}".replace("  ", " ")
            if item is None:
                raise UserError(f"{name}: no image")
            data = item["bytes"] if item["bytes"] is not None else Path(item["path"]).read_bytes()
            names.append(name)
            arrays.append(decode_one(data, name))
    return torch.from_numpy(stack(names, arrays, where).images)


def read_labels(lib: ModuleType, parts: dict[str, Any], column: str, where: str
                ) -> tuple[list[str], torch.Tensor | None, torch.Tensor]:
    """(class names, votes or None, labels): from a comma list of vote columns, a ClassLabel or text labels."""
    first = next(iter(parts.values()))
    if "," in column:
        names = [c.strip() for c in column.split(",")]
        missing = next((c for c in names if c not in first.features), None)
        if missing is not None:
            raise UserError(f"{where}: no vote column {missing!r} (columns: {', '.join(first.features)})")
        check_class_names(names, where)
        votes = torch.from_numpy(np.concatenate([np.stack([np.asarray(ds[c], dtype=np.float64) for c in names], 1)
                                                 for ds in parts.values()]))
        check_votes(votes, len(names), where, lambda i: f"{where} row {i}")
        return names, votes, votes.argmax(1)
    feature = first.features[column]
    values = [v for ds in parts.values() for v in ds[column]]
    if isinstance(feature, lib.ClassLabel):
        labels = torch.tensor(values, dtype=torch.long)
        if (labels < 0).any():
            raise UserError(f"{where} row {int((labels < 0).nonzero()[0])}: no label in column {column!r}")
        check_class_names(feature.names, where)
        return list(feature.names), None, labels
    if all(isinstance(v, str) for v in values):
        names, votes = label_votes(Path(f"{where} column {column!r}"), [(i, [v]) for i, v in enumerate(values)], 0)
        check_votes(torch.from_numpy(votes), len(names), where, lambda i: f"{where} row {i}")
        return names, torch.from_numpy(votes), torch.from_numpy(votes).argmax(1)
    raise UserError(f"{where}: column {column!r} holds {feature}; use a ClassLabel, text labels (A or A|B) or "
                    "a comma list of vote columns")


@register_dataset("hf", options=HfOptions)
def hf(cfg: RunConfig) -> RawImages:
    """A Hugging Face dataset (save_to_disk folder, image folder, Hub name): ClassLabel, A|B text or vote columns."""
    opts: HfOptions = loader_options(cfg)
    lib = hf_library()
    where = str(cfg.data.data_dir)
    parts = load_splits(lib, cfg)
    features = next(iter(parts.values())).features
    image_column = column_of(features, opts.hf_image_column, lib.Image, "image", where)
    label_column = opts.hf_label_column or ("label" if "label" in features and not any(
        isinstance(f, lib.ClassLabel) for f in features.values()) else None)
    if label_column is None or "," not in label_column:
        label_column = column_of(features, label_column, lib.ClassLabel, "label", where)
    for name, ds in parts.items():
        gone = next((c for c in [image_column, *label_column.split(",")] if c.strip() not in ds.features), None)
        if gone is not None:
            raise UserError(f"{where}: split {name!r} has no column {gone.strip()!r}")
    images = read_images(lib, parts, image_column, where)
    class_names, votes, labels = read_labels(lib, parts, label_column, where)
    split = split_codes(parts, where)
    source = f"{where} (Hugging Face datasets)"
    if votes is None:
        return RawImages(images, labels, class_names, split, source=source)
    return voted_images(images, votes, class_names, split, cfg, source)
