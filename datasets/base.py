"""Registries and the shared pipeline: raw images -> split -> in-between source -> LabelledImages.

Human votes, where a dataset has them, are judged here once for every source: an image is in-between
when its two most-voted classes hold at least `human_pair_mass` of the votes and the second at least
`human_second`; clear-cut when its top class holds at least `human_pair_mass`; otherwise unsure. Only
the `human` source trains on the in-between ones; the others keep them (and the unsure) out.

>>> from ambig_bench.config import RunConfig
>>> from ambig_bench.datasets import prepare
>>> data = prepare(RunConfig(seed=0))
>>> data.pairs
[(4, 9), (3, 8)]
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import urllib.error
import urllib.parse
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ambig_bench import budget, cache
from ambig_bench.config import RunConfig
from ambig_bench.data import CLEAR, SPLITS, LabelledImages, RawImages, parse_pairs
from ambig_bench.errors import UserError
from ambig_bench.imageio import fit_images
from ambig_bench.registry import Registry
from ambig_bench.weights import reachable

# (training images, seed, epochs, image batches) -> class probabilities of each batch from a plain
# cross-entropy network trained on those images; the training layer provides it (`train.fit_reference`).
Reference = Callable[[LabelledImages, int, int, list[torch.Tensor]], list[torch.Tensor]]


@dataclass
class SourceContext:
    """What an in-between source gets besides the raw images and pairs."""

    cfg: RunConfig
    options: Any  # the source's own options (its `options` dataclass, filled from cfg.source), or None
    gen: torch.Generator  # seeded with the run's seed: draws are the same for every strategy
    reference: Reference | None  # for sources that judge images with a trained network


Loader = Callable[[RunConfig], RawImages]
Source = Callable[[RawImages, list[tuple[int, int]], SourceContext], LabelledImages]

# `@BETWEEN_SOURCES.register(name, options=...)`: a source's options count in the experiment key only for runs that
# use the source. Datasets register through `register_dataset`, which adds what of the user's files keys a run.
DATASETS: Registry[Loader] = Registry("dataset")
BETWEEN_SOURCES: Registry[Source] = Registry("between source")


# (images, channels, side) a dataset holds before --image-size resizes them, known without loading it.
ImagesShape = tuple[int, int, int]


def register_dataset(name: str, options: type | None = None,
                     listed_files: Callable[[Path], list[str]] | None = None,
                     draws_from_seed: bool = False,
                     shape: Callable[[RunConfig], ImagesShape] | None = None) -> Callable[[Loader], Loader]:
    """Register a dataset loader and the options it reads (a dataclass with `validate()`); each option becomes
    a CLI flag and counts in the experiment key only for runs of this dataset (`loader_options` reads them).

    listed_files: for a dataset that reads only the images its labels CSV lists, the CSV's path -> those images'
    paths (relative to the data folder): the experiment key then covers those images, not all under the folder
    (`keys.data_fingerprint`). Without it, the key covers the whole --data-dir and the --labels file.

    draws_from_seed: the loader's images or splits depend on the seed (cifar10h's halves), so the runs of other
    seeds do not reuse its images (`prepare.raw_of`).

    shape: the run's options -> the images' count, channels and side, for a dataset of a known size: --image-size
    is then checked against the machine's memory before anything is loaded (`check_before_loading`).
    """

    def add(loader: Loader) -> Loader:
        loader.listed_files = listed_files
        loader.draws_from_seed = draws_from_seed
        loader.shape = shape
        return DATASETS.register(name, options)(loader)

    return add


def loader_options(cfg: RunConfig) -> Any:
    """The options of the run's dataset (its `options` dataclass, filled from cfg.loader)."""
    return DATASETS.options(cfg.data.dataset)(**cfg.loader.get(cfg.data.dataset, {}))

# What the votes say about an image (Verdict.kind).
CLEAR_KIND, BETWEEN_KIND, UNSURE_KIND = 0, 1, 2
# A pair becomes a default pair with this many in-between images: one alone could not be both trained
# on and tested. Rarer pairs are left to --pairs (their images are "unsure" meanwhile).
MIN_DEFAULT_PAIR = 2


def load_raw(cfg: RunConfig) -> RawImages:
    """The dataset's images and labels, checked (before they are split and labelled).

    A loader reads the data options and its own (and the seed, where it registered `draws_from_seed`)."""
    if cfg.data.between_source != "auto":
        BETWEEN_SOURCES.get(cfg.data.between_source)  # a typo fails before a slow load
    check_before_loading(cfg)
    raw = DATASETS.get(cfg.data.dataset)(cfg)
    check_raw(raw, cfg.data.dataset)
    if cfg.data.image_size and tuple(raw.images.shape[2:]) != (cfg.data.image_size,) * 2:
        raw = dataclasses.replace(raw, images=torch.from_numpy(fit_images(raw.images.numpy(), cfg.data.image_size)))
    return raw


def check_before_loading(cfg: RunConfig) -> None:
    """What the options ask of memory and what the files' headers say, before a dataset is loaded: the images of a
    dataset of known size at --image-size, an .npz file's arrays, a labels CSV's columns (budget.py's limits)."""
    loader = DATASETS.get(cfg.data.dataset)
    if loader.shape is not None:
        n, channels, side = loader.shape(cfg)
        size = cfg.data.image_size
        budget.check_images(n, channels, size or side, f"--image-size {size}" if size else
                            f"dataset {cfg.data.dataset}", "--image-size" if size else "")
    data_file = Path(cfg.data.data_dir).expanduser() if cfg.data.data_dir else None
    if data_file is not None and data_file.suffix.lower() == ".npz":
        budget.check_npz(data_file)
        check_npz_labels(data_file)
    if cfg.data.labels:  # file, split and one column per class at most: checked before the rows are read
        most = budget.MAX_CLASSES + 2
        if budget.csv_columns(Path(cfg.data.labels).expanduser(), most) > most:
            raise UserError(f"--labels {cfg.data.labels}: more than {most:,} columns (file, split and one per "
                            f"class), more than the {budget.MAX_CLASSES:,} classes a dataset may have")


def check_npz_labels(path: Path) -> None:
    """An .npz file's `y` (read alone, once its header says it is one integer per image) names at most
    budget.MAX_CLASSES classes, checked in one pass: the loader names classes 0..max(y)."""
    shapes = budget.npz_shapes(path)
    if "class_names" in shapes or "probs" in shapes or len(shapes.get("y", ())) != 1:
        return  # the classes are named or voted on (checked from their headers), or y is the loader's to refuse
    budget.check(shapes["y"][0] * 8, f"{path}: y of shape {shapes['y']}")
    try:
        with np.load(path, allow_pickle=False) as f:
            y = f["y"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return  # the loader names the fault
    if y.size and np.issubdtype(y.dtype, np.integer) and int(y.max()) >= budget.MAX_CLASSES:
        budget.check_classes(int(y.max()) + 1, f"{path}: y holds {int(y.max()):,}, so it names")


def pairs_of(raw: RawImages, cfg: RunConfig) -> list[tuple[int, int]]:
    """The run's pairs as class indices: --pairs, else the dataset's own; a name not among its classes fails."""
    pair_text = cfg.data.pairs or raw.default_pairs
    if not pair_text:
        raise UserError(f"dataset {cfg.data.dataset}: no pair has {MIN_DEFAULT_PAIR}+ in-between images in the data; "
                        f"give --pairs A:B[,C:D]")
    return parse_pairs(pair_text, raw.class_names)


def prepare(cfg: RunConfig, reference: Reference | None = None) -> LabelledImages:
    """Load, split and label the run's data; `reference` trains judge networks for the `natural` source."""
    return split_and_label(load_raw(cfg), cfg, reference)


def split_and_label(raw: RawImages, cfg: RunConfig, reference: Reference | None = None,
                    check_only: bool = False) -> LabelledImages | None:
    """The run's data from its dataset's raw images (`load_raw`): split, and labelled by the in-between source.

    check_only: every check without training, so a sweep's points fail before the first trains: a source that
    judges images with a trained network (`needs_reference`) is not run, and None is returned."""
    source_name, notes = pick_source(raw, cfg)
    if cfg.data.between_train is not None and source_name != "human":
        raise UserError(f"--between-train {cfg.data.between_train}: only the human source has in-between training "
                        f"images to count (labels with A|B rows or split votes), not {source_name}; with blend, vary "
                        f"--between-fraction")
    pairs = pairs_of(raw, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    raw = assign_splits(raw, cfg, gen)
    if cfg.data.folds:
        check_folds(raw, pairs, source_name == "human", cfg)
    if cfg.data.train_size is not None:
        raw = limit_train(raw, cfg, gen)
    verdict = judge_votes(raw.labels, raw.votes, cfg)
    for split in ("val", "test"):  # tiny strata round down to no image at all; thresholds need val
        if not ((raw.split == SPLITS[split]) & (verdict.kind != UNSURE_KIND)).any():
            raise UserError(f"dataset {cfg.data.dataset}: no {split} image ({len(raw.labels)} images in all); add "
                            f"images, give {split} rows or folders, or raise --{split}-fraction")
    trained = (raw.split == SPLITS["train"]) & (verdict.kind == CLEAR_KIND)
    missing = sorted(set(range(len(raw.class_names))) - set(raw.labels[trained].tolist()))
    if missing:
        names = ", ".join(raw.class_names[i] for i in missing)
        raise UserError(f"dataset {cfg.data.dataset}: no (clear-cut) training image for class {names}")
    options_type = BETWEEN_SOURCES.options(source_name)
    options = options_type(**cfg.source.get(source_name, {})) if options_type else None
    source = BETWEEN_SOURCES.get(source_name)
    if check_only and getattr(source, "needs_reference", False):
        return None
    data = source(raw, pairs, SourceContext(cfg, options, gen, reference))
    if check_only:
        return None
    data.info.update(dataset=cfg.data.dataset, between_source=source_name, origin=raw.source, counts=data.counts(),
                     image_policy={"size": list(data.images.shape[2:]), "requested": cfg.data.image_size,
                                   "resize": RESIZE_POLICY, "exif_orientation": EXIF_POLICY}, notes=notes)
    return data


RESIZE_POLICY = "shorter side to the size, then the centre square (imageio.fit_image)"
EXIF_POLICY = "applied: photos are turned upright as their EXIF tag says, in training and in predict alike"
def pick_source(raw: RawImages, cfg: RunConfig) -> tuple[str, list[str]]:
    """The in-between source and notes for the user (data.info["notes"], printed by `run` before training):
    `auto` takes the dataset's (human when it has in-between votes or A|B rows) and says which; an explicit
    source that leaves in-between rows unused says how many."""
    n_between = int((judge_votes(raw.labels, raw.votes, cfg).kind == BETWEEN_KIND).sum()) if raw.votes is not None \
        else 0
    if cfg.data.between_source == "auto":
        why = f"{n_between} in-between images in the labels" if n_between else "no in-between labels in the data"
        return raw.default_source, [f"in-between source: {raw.default_source} (--between-source auto: {why})"]
    if n_between and cfg.data.between_source != "human":
        return cfg.data.between_source, [
            f"warning: --between-source {cfg.data.between_source} ignores the {n_between} in-between (A|B or "
            f"split-vote) images of the labels; --between-source human (or auto) trains on them"]
    return cfg.data.between_source, []


def check_raw(raw: RawImages, dataset: str) -> None:
    """What every loader must deliver; loaders name the file and row at fault before this last guard."""
    n = len(raw.labels)
    if raw.images.dtype != torch.uint8 or raw.images.dim() != 4 or len(raw.images) != n:
        raise UserError(f"dataset {dataset}: images must be uint8 N×C×H×W with one label each")
    if len(raw.class_names) < 2:
        raise UserError(f"dataset {dataset}: needs at least 2 classes, found {len(raw.class_names)}")
    budget.check_classes(len(raw.class_names), f"dataset {dataset}")
    if n and not 0 <= int(raw.labels.min()) <= int(raw.labels.max()) < len(raw.class_names):
        raise UserError(f"dataset {dataset}: labels must be class indices 0..{len(raw.class_names) - 1}")
    if raw.votes is not None:
        where = f"dataset {dataset}"
        check_votes(raw.votes, len(raw.class_names), where, lambda i: f"{where}: votes row {i}")


def check_votes(votes: torch.Tensor, num_classes: int, where: str, row_name: Callable[[int], str]) -> None:
    """Vote counts or probabilities: N×K, finite, non-negative, and every row with some votes."""
    if votes.dim() != 2 or votes.shape[1] != num_classes:
        raise UserError(f"{where}: votes must have one column per class ({num_classes}), "
                        f"got shape {tuple(votes.shape)}")
    # A finite row can still sum to inf (1e308 + 1e308): its shares would be NaN and the image silently unsure.
    bad = ~torch.isfinite(votes.sum(1)) | (votes < 0).any(1)
    if bad.any():
        raise UserError(f"{row_name(int(bad.nonzero()[0]))}: votes must be numbers >= 0 that sum to a finite number")
    empty = votes.sum(1) <= 0
    if empty.any():
        raise UserError(f"{row_name(int(empty.nonzero()[0]))}: the votes sum to 0")


@dataclass
class Verdict:
    """The vote rule applied to every image (no votes: every image clear-cut of its label)."""

    kind: torch.Tensor  # int8 N: CLEAR_KIND, BETWEEN_KIND or UNSURE_KIND
    first: torch.Tensor  # int64 N: most-voted class (the label when there are no votes)
    second: torch.Tensor  # int64 N: second most-voted class (CLEAR without votes)
    shares: torch.Tensor | None  # float64 N×K votes normalised per image


def judge_votes(labels: torch.Tensor, votes: torch.Tensor | None, cfg: RunConfig) -> Verdict:
    n = len(labels)
    if votes is None:
        return Verdict(torch.full((n,), CLEAR_KIND, dtype=torch.int8), labels.long(),
                       torch.full((n,), CLEAR, dtype=torch.long), None)
    shares = votes.double() / votes.double().sum(1, keepdim=True)
    top = shares.topk(2, dim=1)
    s1, s2 = top.values[:, 0], top.values[:, 1]
    # "In-between" is tested first: with a low human_second both rules can hold, and then the second
    # class is, by the user's own threshold, too large to ignore.
    between = (s1 + s2 >= cfg.data.human_pair_mass) & (s2 >= cfg.data.human_second)
    clear = ~between & (s1 >= cfg.data.human_pair_mass)
    kind = torch.full((n,), UNSURE_KIND, dtype=torch.int8)
    kind[clear] = CLEAR_KIND
    kind[between] = BETWEEN_KIND
    # Ties at the top (e.g. 50/50) are broken towards the label, so `first` agrees with `labels`.
    first = torch.where(shares.gather(1, labels.long()[:, None]).squeeze(1) >= s1, labels.long(), top.indices[:, 0])
    second = torch.where(first == top.indices[:, 0], top.indices[:, 1], top.indices[:, 0])
    return Verdict(kind, first, second, shares)


def strata(labels: torch.Tensor, votes: torch.Tensor | None, cfg: RunConfig) -> torch.Tensor:
    """One group per (label, what the votes say, and which pair), so splits cut each group alike.

    Without it, the ~2% of real in-between images would land in validation or test only by luck.
    """
    if votes is None:
        return labels.long()
    v = judge_votes(labels, votes, cfg)
    k = votes.shape[1]
    lo, hi = torch.minimum(v.first, v.second), torch.maximum(v.first, v.second)
    group = v.first.clone()
    between = v.kind == BETWEEN_KIND
    group[between] = k + lo[between] * k + hi[between]
    unsure = v.kind == UNSURE_KIND
    group[unsure] = k + k * k + v.first[unsure]
    return group


def stratified_split(labels: torch.Tensor, fractions: list[float], gen: torch.Generator) -> torch.Tensor:
    """Assign each image a part 0..len(fractions) so each class is cut in the same proportions.

    Part len(fractions) takes the remainder, e.g. fractions [test, val] -> 0 test, 1 val, 2 train.
    """
    part = torch.full((len(labels),), len(fractions), dtype=torch.int8)
    for c in labels.unique():
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        start = 0
        for p, f in enumerate(fractions):
            n = round(f * len(idx))
            part[idx[start:start + n]] = p
            start += n
    return part


def assign_splits(raw: RawImages, cfg: RunConfig, gen: torch.Generator) -> RawImages:
    """Fill in the splits the dataset does not provide: test, then validation carved from train. With --folds K,
    test is fold (seed mod K) of `folds_of` and validation a stratified --val-fraction of the other folds."""
    split = raw.split.clone() if raw.split is not None else None
    groups = strata(raw.labels, raw.votes, cfg)
    if cfg.data.folds:
        if split is not None:
            raise UserError(f"--folds {cfg.data.folds}: dataset {cfg.data.dataset} comes with its own test split "
                            f"({raw.source}); leave --folds 0, or give data without one (no split column or "
                            f"split folders)")
        test = folds_of(groups, cfg.data.folds) == cfg.seed % cfg.data.folds
        split = torch.full((len(groups),), SPLITS["train"], dtype=torch.int8)
        split[test] = SPLITS["test"]
    if split is None:
        part = stratified_split(groups, [cfg.data.test_fraction, cfg.data.val_fraction], gen)
        split = torch.tensor([SPLITS["test"], SPLITS["val"], SPLITS["train"]], dtype=torch.int8)[part.long()]
    elif not (split == SPLITS["val"]).any():
        train = (split == SPLITS["train"]).nonzero().squeeze(1)
        part = stratified_split(groups[train], [cfg.data.val_fraction], gen)
        split[train[part == 0]] = SPLITS["val"]
    return dataclasses.replace(raw, split=split)


FOLDS_SEED = 0  # the one generator the folds are drawn from: every run seed sees the same folds


def folds_of(groups: torch.Tensor, k: int) -> torch.Tensor:
    """Each image's fold 0..k-1, the same for every run: the images of each stratum, shuffled, are dealt to the
    folds in turn, the deal going on from one stratum to the next, so every stratum's count per fold, and every
    run of neighbouring strata's (all in-between images, all clear-cut ones), differ by at most one."""
    gen = torch.Generator().manual_seed(FOLDS_SEED)
    shuffled = torch.randperm(len(groups), generator=gen)
    dealt = shuffled[groups[shuffled].sort(stable=True).indices]  # by stratum, shuffled within
    fold = torch.empty(len(groups), dtype=torch.long)
    fold[dealt] = torch.arange(len(groups)) % k
    return fold


def untested_folds(runs: list[RunConfig]) -> list[str]:
    """A warning for each --folds K whose runs' seeds leave some fold untested: the pooled out-of-fold results
    need every fold, seeds s .. s + K - 1."""
    notes = []
    for k in sorted({cfg.data.folds for cfg in runs if cfg.data.folds}):
        tested = {cfg.seed % k for cfg in runs if cfg.data.folds == k}
        if len(tested) < k:
            notes.append(f"warning: --folds {k}: these seeds test {len(tested)} of the {k} folds; --seeds {k} (or "
                         f"more) tests every image once, as pooling the out-of-fold predictions needs")
    return notes


def check_folds(raw: RawImages, pairs: list[tuple[int, int]], trains_votes: bool, cfg: RunConfig) -> None:
    """--folds K needs at least K clear-cut images of every class, and, for a source that trains on the votes'
    in-between images, at least K of those of the run's pairs: else some fold tests none of them."""
    k = cfg.data.folds
    v = judge_votes(raw.labels, raw.votes, cfg)
    counts = {f"clear-cut images of class {name}": int(((v.kind == CLEAR_KIND) & (v.first == c)).sum())
              for c, name in enumerate(raw.class_names)}
    if trains_votes:
        of_pairs = torch.zeros(len(raw.labels), dtype=torch.bool)
        for a, b in pairs:
            of_pairs |= ((v.first == a) & (v.second == b)) | ((v.first == b) & (v.second == a))
        counts["in-between images of the run's pairs"] = int(((v.kind == BETWEEN_KIND) & of_pairs).sum())
    what, n = min(counts.items(), key=lambda item: item[1])
    if n < k:
        fix = f"lower --folds to {n} or less" if n >= 2 else "leave --folds 0"
        raise UserError(f"--folds {k}: dataset {cfg.data.dataset} has only {n} {what}, fewer than the {k} folds "
                        f"that should each test some; {fix}")


def limit_train(raw: RawImages, cfg: RunConfig, gen: torch.Generator) -> RawImages:
    """Keep `train_size` clear-cut training images at random (stratified); in-between, val and test stay."""
    clear = judge_votes(raw.labels, raw.votes, cfg).kind == CLEAR_KIND
    train = ((raw.split == SPLITS["train"]) & clear).nonzero().squeeze(1)
    if cfg.data.train_size >= len(train):
        return raw
    part = stratified_split(raw.labels[train], [cfg.data.train_size / len(train)], gen)
    keep = torch.ones(len(raw.labels), dtype=torch.bool)
    keep[train[part != 0]] = False
    return dataclasses.replace(raw, images=raw.images[keep], labels=raw.labels[keep], split=raw.split[keep],
                               votes=raw.votes[keep] if raw.votes is not None else None,
                               files=[f for f, k in zip(raw.files, keep.tolist(), strict=True) if k] if raw.files
                               else None)


def labelled_by_votes(raw: RawImages, pairs: list[tuple[int, int]], cfg: RunConfig,
                      keep_between: bool) -> LabelledImages:
    """Clear-cut images as themselves; vote in-between images of a configured pair as that pair when
    `keep_between` (else unsure); everything else unsure (split 3, never trained on or tested).

    label_a is the pair's first class and share_a its share of the pair's votes, as `hard` expects.
    """
    n = len(raw.labels)
    v = judge_votes(raw.labels, raw.votes, cfg)
    label_a, label_b = v.first.clone(), torch.full((n,), CLEAR, dtype=torch.long)
    share_a, split = torch.ones(n), raw.split.clone()
    of_pair = torch.zeros(n, dtype=torch.bool)
    between = v.kind == BETWEEN_KIND
    for a, b in pairs:
        mine = between & (((v.first == a) & (v.second == b)) | ((v.first == b) & (v.second == a)))
        of_pair |= mine
        if keep_between:
            label_a[mine], label_b[mine] = a, b
            va, vb = v.shares[mine, a], v.shares[mine, b]
            share_a[mine] = (va / (va + vb)).float()
    split[(v.kind == UNSURE_KIND) | (between & ~(of_pair & keep_between))] = SPLITS["unsure"]
    info = {}
    if raw.votes is not None:
        info["votes"] = {"clear": int((v.kind == CLEAR_KIND).sum()), "between_pairs": int(of_pair.sum()),
                         "between_other_pairs": int((between & ~of_pair).sum()),
                         "no_majority": int((v.kind == UNSURE_KIND).sum()),
                         "human_pair_mass": cfg.data.human_pair_mass, "human_second": cfg.data.human_second}
    # Only images kept as themselves carry their votes: a generated source relabels or adds images.
    votes = v.shares.float() if keep_between and v.shares is not None else None
    return LabelledImages(raw.images, label_a, label_b, share_a, split, raw.class_names, pairs, info, votes)


def clear_cut(raw: RawImages, pairs: list[tuple[int, int]], cfg: RunConfig) -> LabelledImages:
    """The clear-cut images, for generated sources; images the votes call in-between or unsure are unsure."""
    return labelled_by_votes(raw, pairs, cfg, keep_between=False)


def concat(parts: list[LabelledImages]) -> LabelledImages:
    first = parts[0]
    return LabelledImages(
        torch.cat([p.images for p in parts]), torch.cat([p.label_a for p in parts]),
        torch.cat([p.label_b for p in parts]), torch.cat([p.share_a for p in parts]),
        torch.cat([p.split for p in parts]), first.class_names, first.pairs, first.info,
    )


def pair_names(data: LabelledImages) -> list[str]:
    return [f"{data.class_names[a]}:{data.class_names[b]}" for a, b in data.pairs]


def split_without_between(data: LabelledImages) -> str | None:
    """The first of train / test that holds no in-between image (a source must then refuse), else None."""
    for split in ("train", "test"):
        if not (data.is_between & (data.split == SPLITS[split])).any():
            return split
    return None


def between_per_pair(data: LabelledImages) -> dict[str, dict[str, int]]:
    """In-between images per pair ("A:B") and split, recorded in data.json."""
    return {
        name: {split: int(((data.label_a == a) & (data.label_b == b) & (data.split == code)).sum())
               for split, code in SPLITS.items() if split != "unsure"}
        for name, (a, b) in zip(pair_names(data), data.pairs, strict=True)
    }


def between_count(n_clear_train: int, fraction: float, n_pairs: int) -> int:
    """In-between training images per pair so they make up `fraction` of the training set."""
    total = round(fraction / (1 - fraction) * n_clear_train)
    return max(1, round(total / n_pairs))


def check_generated(per_pair: dict[str, int], n_pairs: int, images: torch.Tensor, n_clear_train: int,
                    fraction: float) -> None:
    """In-between images a source will generate (`per_pair`: per split, of each pair), of the size of `images`,
    against the machine's memory beside `images`, before any is made; the largest --between-fraction that fits
    is named."""
    pixels = math.prod(images.shape[1:])
    count = sum(per_pair.values()) * n_pairs
    have = budget.available() - len(images) * pixels * budget.IMAGE_BYTES
    if count * pixels * budget.BLEND_BYTES <= have:
        return
    fixed = (count - per_pair["train"] * n_pairs) * pixels * budget.BLEND_BYTES
    train_room = budget.largest(pixels * budget.BLEND_BYTES, max(have - fixed, 0))
    most = train_room / (train_room + n_clear_train) if n_clear_train else 0
    advice = (f"at most --between-fraction {math.floor(most * 1e4) / 1e4:g}" if most >= 1e-4 else
              "give fewer --test-between-per-pair / --val-between-per-pair or smaller images")
    budget.check(count * pixels * budget.BLEND_BYTES + len(images) * pixels * budget.IMAGE_BYTES,
                 f"--between-fraction {fraction}", advice, f"for {count:,} in-between images of "
                 f"{'×'.join(map(str, images.shape[1:]))} beside {n_clear_train:,} clear-cut training images")


# -- where dataset files are ---------------------------------------------------------------------------
def search_roots(cfg: RunConfig, *system: str) -> list[Path]:
    """--data-dir alone when given; else $AMBIG_BENCH_DATA, ./data, ../shared/data (this project's
    development data) and the dataset's `system` locations, those that exist."""
    if cfg.data.data_dir:
        path = Path(cfg.data.data_dir).expanduser()
        if not path.exists() and not cfg.data.download:
            raise UserError(f"--data-dir {cfg.data.data_dir}: no such file or directory")
        return [path]
    return default_roots(*system)


def default_roots(*system: str) -> list[Path]:
    candidates = [os.environ.get("AMBIG_BENCH_DATA", ""), "data", "../shared/data", *system]
    return [Path(c) for c in candidates if c and Path(c).exists()]


def download_root(cfg: RunConfig) -> Path:
    """Where --download lets torchvision put files: --data-dir, else the cache directory."""
    return Path(cfg.data.data_dir).expanduser() if cfg.data.data_dir else cache.library_folder("torchvision")


def download(dataset: type, root: Path, **kwargs: object) -> None:
    """`--download` through a torchvision dataset class: its files fetched into `root` unless already there. A
    machine that cannot reach the dataset's host gets one line at once (no "Downloading ..." first), and
    torchvision's progress goes to stderr, where progress belongs."""
    urls = [getattr(dataset, "url", None), *getattr(dataset, "mirrors", [])]
    hosts = [u for u in urls if u]
    name = dataset.__name__
    try:
        dataset(root, download=False, **kwargs)
        return  # already downloaded and checked by torchvision
    except RuntimeError:
        pass
    if hosts and not any(reachable(u) for u in hosts):
        raise UserError(f"--download: this machine cannot reach {urllib.parse.urlsplit(hosts[0]).hostname} for "
                        f"{name}; download it elsewhere and give its folder with --data-dir (docs/datasets.md)")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            dataset(root, download=True, **kwargs)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise UserError(f"--download: {name} could not be downloaded into {root} ({getattr(e, 'reason', e)})") from None


def not_found(dataset: str, what: str, roots: list[Path], hint: str) -> UserError:
    looked = ", ".join(str(r) for r in roots) or "no --data-dir and no default location exists"
    return UserError(f"dataset {dataset}: {what} not found (looked in: {looked}); {hint}")


def pairs_in_votes(labels: torch.Tensor, votes: torch.Tensor, class_names: list[str], cfg: RunConfig) -> str:
    """Default pairs of a dataset with votes: every pair with at least MIN_DEFAULT_PAIR in-between images,
    most frequent first, each written in class order (e.g. "cat:dog")."""
    v = judge_votes(labels, votes, cfg)
    between = v.kind == BETWEEN_KIND
    lo, hi = torch.minimum(v.first, v.second)[between], torch.maximum(v.first, v.second)[between]
    found, counts = torch.unique(torch.stack([lo, hi], 1), dim=0, return_counts=True)
    order = sorted((i for i in range(len(found)) if counts[i] >= MIN_DEFAULT_PAIR),
                   key=lambda i: (-int(counts[i]), found[i].tolist()))
    return ",".join(f"{class_names[int(found[i, 0])]}:{class_names[int(found[i, 1])]}" for i in order)


def voted_images(images: torch.Tensor, votes: torch.Tensor, class_names: list[str], split: torch.Tensor | None,
                 cfg: RunConfig, source: str, files: list[str] | None = None) -> RawImages:
    """Images labelled by (checked) votes: the most-voted class is the label, ties (as in `A|B`) going to the
    first class in class order; the pairs the votes put images between are the default pairs, and the
    `human` source is the default when there are any."""
    labels = votes.argmax(1)
    has_between = bool((judge_votes(labels, votes, cfg).kind == BETWEEN_KIND).any())
    return RawImages(images, labels, class_names, split, votes, pairs_in_votes(labels, votes, class_names, cfg),
                     source, "human" if has_between else "blend", files)


def check_class_names(names: list[str], where: str) -> None:
    """Names must be usable in --pairs ("A:B,C:D", case-insensitive) and in `A|B` labels."""
    bad = next((n for n in names if not n.strip() or any(c in n for c in ":,|")), None)
    if bad is not None:
        raise UserError(f"{where}: class name {bad!r} is empty or contains ':', ',' or '|'")
    seen: dict[str, str] = {}
    for n in names:
        if n.lower() in seen:
            raise UserError(f"{where}: class names {seen[n.lower()]!r} and {n!r} differ only in case")
        seen[n.lower()] = n
