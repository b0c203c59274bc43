"""Typed configuration: one flat dataclass per run, so every field is a CLI option and a sweep axis.

$ ambig-bench run --config exp.toml --epochs 5     # file values, then command-line overrides
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from ambig_bench.errors import UserError


@dataclass
class RunConfig:
    # what is learned
    strategy: str = "soft"  # registered strategy name
    seed: int = 0  # seeds the data split, the in-between draw, initialisation and batch order
    # data
    dataset: str = "digits"  # registered dataset name
    data_dir: str = ""  # where the dataset's files are ("" = the dataset's default locations)
    labels: str = ""  # labels CSV for the `folder` dataset ("" = class = folder name)
    pairs: str = ""  # "4:9,3:8" or "T-shirt/top:Shirt" ("" = the dataset's default pairs)
    between_source: str = "blend"  # where in-between images come from: blend | human | natural
    between_fraction: float = 0.05  # share of the training set that is in-between, in (0, 1)
    blend_low: float = 0.4  # blend weight λ of class A is drawn from U(blend_low, blend_high)
    blend_high: float = 0.6  # upper end of the blend weight range
    natural_threshold: float = 0.3  # `natural`: both pair probabilities at least this (out-of-fold)
    human_pair_mass: float = 0.9  # `human`: top-two vote share needed to call an image in-between
    human_second: float = 0.2  # `human`: vote share of the second class needed for in-between
    human_extra_train: bool = True  # cifar10h: add the 50,000 clear-cut CIFAR-10 training images
    test_between_per_pair: int = 100  # in-between test images per pair (generated sources)
    val_between_per_pair: int = 50  # in-between validation images per pair (threshold, conformal)
    val_fraction: float = 0.15  # share of images held out for validation when the dataset has no val split
    test_fraction: float = 0.25  # share of images held out for testing when the dataset has no test split
    train_size: int = 0  # clear-cut training images kept, drawn at random (0 = all)
    download: bool = False  # allow torchvision to download a dataset (needs internet)
    # model and optimisation
    model: str = "small-cnn"  # registered model name
    width: int = 0  # channels of the first conv stage (0 = the model's default: 32 small-cnn, 64 fast-cifar)
    epochs: int = 20  # passes over the training set
    batch_size: int = 128  # images per step
    lr: float = 3e-3  # peak learning rate (AdamW), decayed linearly to 0
    weight_decay: float = 5e-4  # AdamW decoupled weight decay
    augment: str = "auto"  # auto (on for RGB 32x32) | on | off: random crop with 4 px padding + flip
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile the model (GPU, long runs)

    def key(self) -> str:
        """Hash of everything that changes results except strategy and seed: one experiment."""
        d = dataclasses.asdict(self)
        for k in ("strategy", "seed", "device", "data_dir", "download", "compile"):
            d.pop(k)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]

    def validate(self) -> None:
        if not 0 < self.between_fraction < 1:
            raise UserError(f"--between-fraction must be in (0, 1), got {self.between_fraction}")
        if not 0 <= self.blend_low <= self.blend_high <= 1:
            raise UserError(f"--blend-low/--blend-high must satisfy 0 <= low <= high <= 1, "
                            f"got {self.blend_low}, {self.blend_high}")
        for name in ("natural_threshold", "human_pair_mass", "human_second", "val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise UserError(f"--{name.replace('_', '-')} must be in (0, 1), got {v}")
        for name in ("epochs", "batch_size", "test_between_per_pair", "val_between_per_pair"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.width < 0:
            raise UserError(f"--width must be >= 0, got {self.width}")
        if self.train_size < 0:
            raise UserError(f"--train-size must be >= 0, got {self.train_size}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise UserError("--lr must be > 0 and --weight-decay >= 0")
        if self.augment not in ("auto", "on", "off"):
            raise UserError(f"--augment must be auto, on or off, got {self.augment!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"--device must be auto, cpu or cuda, got {self.device!r}")


@dataclass
class ExperimentConfig:
    run: RunConfig = field(default_factory=RunConfig)  # template; strategy and seed are filled per run
    strategies: list[str] = field(default_factory=lambda: ["soft"])  # names, in order
    seeds: int = 3  # runs per strategy, seeds first_seed .. first_seed + seeds - 1
    out: str = "results/demo"  # results directory
    force: bool = False  # retrain even when a finished run exists


RUN_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def coerce(name: str, value: object) -> object:
    """Convert a TOML / command-line value to the type of RunConfig field `name`."""
    if name not in RUN_FIELDS:
        raise UserError(f"unknown option {name.replace('_', '-')!r}")
    kind = type(getattr(RunConfig(), name))
    try:
        if kind is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise UserError(f"option {name.replace('_', '-')!r}: {value!r} is not a valid {kind.__name__}") from None


def load_toml(path: str | Path) -> dict[str, object]:
    """Read an experiment file: run options at top level (or under [run]), plus strategies/seeds/out."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed TOML: {e}") from None
    flat = {**raw.pop("run", {}), **raw}
    return {k.replace("-", "_"): v for k, v in flat.items()}


def build_run_config(values: dict[str, object]) -> RunConfig:
    cfg = RunConfig(**{k: coerce(k, v) for k, v in values.items()})
    cfg.validate()
    return cfg
