"""The pipeline's prepare step: a run's data, strategy and untrained network, and what of it trains on what.

What trains is a variant of the prepared run, not a branch of the training loop: the network itself, its
torch.compile'd form (--compile), or under --freeze its head over cached features (`features.probe`). Runs of
one shape that may share a wide network (`batched.py`) are prepared one by one and then grouped (`groups_of`):
a `Group` knows the one module that trains its runs. Preflight prepares the first run's data and network
without training, and the runs find those data here (`prepare_data`): the labels CSV and the images are read
once per command and seed.

>>> from ambig_bench.options import build
>>> from ambig_bench.prepare import prepare_run
>>> run = prepare_run(build({"strategy": "soft"}), torch.device("cpu"))  # doctest: +SKIP
>>> run.trainable is run.model  # doctest: +SKIP
True
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
from torch import nn

from ambig_bench.batched import copy_back, group_size, widen
from ambig_bench.config import RunConfig
from ambig_bench.data import LabelledImages, RawImages
from ambig_bench.datasets import DATASETS, load_raw
from ambig_bench.datasets.base import check_before_loading, split_and_label
from ambig_bench.datasets.confusable import resolve_auto
from ambig_bench.features import probe
from ambig_bench.keys import data_fingerprint, experiment_key
from ambig_bench.models import build_network, normalization_source, starting_weights
from ambig_bench.options import strategy_options
from ambig_bench.strategies import STRATEGIES, Strategy
from ambig_bench.train import device_layout, fit_reference, pick_device

# This process's last loaded and last prepared data: the runs of a grid (seeds outer, strategies inner) share them.
_raw: dict[tuple, RawImages] = {}
_prepared: dict[tuple, LabelledImages] = {}


def forget_data() -> None:
    """Drop the data held in memory, so the files as they are now are read (preflight, at a command's start)."""
    _raw.clear()
    _prepared.clear()


def raw_of(cfg: RunConfig) -> RawImages:
    """The dataset's raw images, loaded once for every run that reads the same files the same way: the data
    options but the pairs, the loader's options and the files' fingerprint; and the seed for a loader that draws
    from it (`draws_from_seed`, e.g. cifar10h's halves)."""
    check_before_loading(cfg)  # before the key: the key reads the labels CSV and fingerprints the files
    seeded = DATASETS.get(cfg.data.dataset).draws_from_seed
    key = (repr({**dataclasses.asdict(cfg.data), "pairs": None}), repr(cfg.loader), repr(data_fingerprint(cfg)),
           cfg.seed if seeded else None)
    if key not in _raw:
        _raw.clear()  # one dataset in memory at a time
        _raw[key] = load_raw(cfg)
    return _raw[key]


def prepare_data(cfg: RunConfig) -> LabelledImages:
    """The run's data; they depend on everything but the strategy, so one seed's data serve all strategies.

    The `natural` source judges images with a reference network trained here (`train.fit_reference`).
    """
    check_before_loading(cfg)  # before the key, as in raw_of
    shared = {k: v for k, v in cfg.to_dict().items() if k not in ("strategy", "strategy_options", "runtime")}
    key = (cfg.seed, repr(shared), repr(data_fingerprint(cfg)))
    if key not in _prepared:
        _prepared.clear()
        reference = functools.partial(fit_reference, cfg, pick_device(cfg.runtime.device))
        resolved = resolve_auto(cfg, reference)  # --pairs auto: found here
        _prepared[key] = split_and_label(raw_of(resolved), resolved, reference)
    return _prepared[key]


def untrained(cfg: RunConfig, data: LabelledImages, device: torch.device) -> tuple[Strategy, nn.Module]:
    """The run's strategy and its untrained network (Preprocess + network, from scratch or from its starting
    weights); starting weights that are missing or do not fit fail here."""
    strategy = STRATEGIES.get(cfg.strategy)(data.num_classes, data.pairs, strategy_options(cfg))
    torch.manual_seed(cfg.seed)  # same initial weights for every strategy of a seed (up to the head)
    start = starting_weights(cfg.model)
    # A frozen backbone whose weights bring no normalisation has it fitted on the dataset's images as loaded (pixels
    # only, no labels), the same for every seed: one extractor, so one pass of features serves the whole grid
    # (`features.py`). Fitted on each seed's training split, each seed's extractor would differ.
    fitted_on = raw_of(cfg).images if cfg.model.freeze else data.subset("train").images
    model = build_network(cfg.model.name, fitted_on, strategy.num_outputs, cfg.model.width, start,
                          cfg.model.backbone_lr, normalization_source(cfg.model, start))
    return strategy, device_layout(model.to(device), device)


@dataclass
class PreparedRun:
    """A run ready to train: its data, strategy and network, and the part of it that trains on which inputs."""

    config: RunConfig
    data: LabelledImages
    strategy: Strategy
    model: nn.Module  # the full network: what the run saves
    trainable: nn.Module  # what trains and predicts: the network, its compiled form, or its head (--freeze)
    inputs: LabelledImages  # the data as `trainable` sees them: the images, or their features (--freeze)
    recipe: RunConfig  # what it trains under: a head over features trains without image augmentation
    feature_seconds: float = 0.0  # spent computing features (--freeze; 0 when they came from the cache)


def prepare_run(cfg: RunConfig, device: torch.device) -> PreparedRun:
    data = prepare_data(cfg)
    strategy, model = untrained(cfg, data, device)
    if cfg.model.freeze:
        head = probe(model, data, device)
        no_augment = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, augment="off"))
        return PreparedRun(cfg, data, strategy, model, head.head, head.data, no_augment, head.seconds)
    trainable = torch.compile(model) if cfg.runtime.compile else model
    return PreparedRun(cfg, data, strategy, model, trainable, data, cfg)


@dataclass
class Group:
    """Runs that train in one loop: one run alone, or several as one wide network (`batched.widen`)."""

    runs: list[PreparedRun]
    module: nn.Module  # what the loop steps: the one run's trainable part, or the runs' wide network

    def write_back(self) -> None:
        """After training: each run's slice of the wide network into the run's own network."""
        if len(self.runs) > 1:
            copy_back(self.module, [run.trainable for run in self.runs])


def group_of(runs: list[PreparedRun], device: torch.device) -> Group:
    if len(runs) == 1:
        return Group(runs, runs[0].trainable)
    return Group(runs, device_layout(widen([run.trainable for run in runs]).to(device), device))


def groups_of(runs: list[PreparedRun], device: torch.device) -> list[Group]:
    """Runs of one shape (experiment, outputs, images per epoch, training images) in groups as large as
    `batched.group_size` finds faster; a run of its own shape is a group of one."""
    shapes: dict[tuple, list[PreparedRun]] = {}
    for run in runs:
        train_split = run.data.subset("train")
        shape = (experiment_key(run.config), run.strategy.num_outputs,
                 run.strategy.images_per_epoch(train_split.is_between), tuple(train_split.images.shape))
        shapes.setdefault(shape, []).append(run)
    groups = []
    for (_, num_outputs, _, images_shape), members in shapes.items():
        first = members[0]
        size = group_size(first.config, first.model, images_shape, num_outputs, len(members), device)
        groups += [group_of(members[start:start + size], device) for start in range(0, len(members), size)]
    return groups
