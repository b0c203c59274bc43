"""Registries and the shared pipeline: raw images -> split -> in-between source -> LabelledImages.

>>> from ambig_bench.config import RunConfig
>>> from ambig_bench.datasets import prepare
>>> data = prepare(RunConfig(dataset="digits", seed=0))
>>> data.pairs
[(4, 9), (3, 8)]
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ambig_bench.config import RunConfig
from ambig_bench.data import CLEAR, SPLITS, LabelledImages, RawImages, parse_pairs
from ambig_bench.errors import UserError
from ambig_bench.registry import Registry

Loader = Callable[[RunConfig], RawImages]
Source = Callable[[RawImages, list[tuple[int, int]], RunConfig, torch.Generator], LabelledImages]

DATASETS: Registry[Loader] = Registry("dataset")
BETWEEN_SOURCES: Registry[Source] = Registry("between source")
register_dataset = DATASETS.register
register_source = BETWEEN_SOURCES.register


def prepare(cfg: RunConfig) -> LabelledImages:
    loader = DATASETS.get(cfg.dataset)
    source = BETWEEN_SOURCES.get(cfg.between_source)
    raw = loader(cfg)
    pairs = parse_pairs(cfg.pairs or raw.default_pairs, raw.class_names)
    gen = torch.Generator().manual_seed(cfg.seed)
    raw = assign_splits(raw, cfg, gen)
    if cfg.train_size:
        raw = limit_train(raw, cfg.train_size, gen)
    trained = raw.split == SPLITS["train"]
    missing = sorted(set(range(len(raw.class_names))) - set(raw.labels[trained].tolist()))
    if missing:
        names = ", ".join(raw.class_names[i] for i in missing)
        raise UserError(f"dataset {cfg.dataset}: no training image for class {names}")
    data = source(raw, pairs, cfg, gen)
    data.info.update(dataset=cfg.dataset, between_source=cfg.between_source, origin=raw.source,
                     counts=data.counts())
    return data


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
    """Fill in the splits the dataset does not provide: test, then validation carved from train."""
    split = raw.split.clone() if raw.split is not None else None
    if split is None:
        part = stratified_split(raw.labels, [cfg.test_fraction, cfg.val_fraction], gen)
        split = torch.tensor([SPLITS["test"], SPLITS["val"], SPLITS["train"]], dtype=torch.int8)[part.long()]
    elif not (split == SPLITS["val"]).any():
        train = (split == SPLITS["train"]).nonzero().squeeze(1)
        part = stratified_split(raw.labels[train], [cfg.val_fraction], gen)
        split[train[part == 0]] = SPLITS["val"]
    return RawImages(raw.images, raw.labels, raw.class_names, split, raw.votes, raw.default_pairs, raw.source)


def limit_train(raw: RawImages, train_size: int, gen: torch.Generator) -> RawImages:
    """Keep `train_size` training images at random (stratified); val and test are untouched."""
    train = (raw.split == SPLITS["train"]).nonzero().squeeze(1)
    if train_size >= len(train):
        return raw
    part = stratified_split(raw.labels[train], [train_size / len(train)], gen)
    keep = torch.ones(len(raw.labels), dtype=torch.bool)
    keep[train[part != 0]] = False
    votes = raw.votes[keep] if raw.votes is not None else None
    return RawImages(raw.images[keep], raw.labels[keep], raw.class_names, raw.split[keep], votes,
                     raw.default_pairs, raw.source)


def clear_cut(raw: RawImages, pairs: list[tuple[int, int]], info: dict | None = None) -> LabelledImages:
    """Every raw image as a clear-cut example of its label."""
    n = len(raw.labels)
    return LabelledImages(raw.images, raw.labels.long(), torch.full((n,), CLEAR, dtype=torch.long),
                          torch.ones(n), raw.split, raw.class_names, pairs, dict(info or {}))


def concat(parts: list[LabelledImages]) -> LabelledImages:
    first = parts[0]
    return LabelledImages(
        torch.cat([p.images for p in parts]), torch.cat([p.label_a for p in parts]),
        torch.cat([p.label_b for p in parts]), torch.cat([p.share_a for p in parts]),
        torch.cat([p.split for p in parts]), first.class_names, first.pairs, first.info,
    )


def between_count(n_clear_train: int, fraction: float, n_pairs: int) -> int:
    """In-between training images per pair so they make up `fraction` of the training set."""
    total = round(fraction / (1 - fraction) * n_clear_train)
    return max(1, round(total / n_pairs))
