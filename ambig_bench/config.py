"""Typed configuration: one flat dataclass per run, so every field is a CLI option and a sweep axis.

$ ambig-bench run --config exp.toml --epochs 5     # file values, then command-line overrides
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ambig_bench.errors import UserError

# Per model: the optimisation recipe used unless the user sets it (batch size in images, lr per step).
MODEL_DEFAULTS: dict[str, dict[str, object]] = {
    "small-cnn": {"optimizer": "adamw", "batch_size": 128, "lr": 3e-3, "weight_decay": 5e-4, "momentum": 0.9,
                  "lookahead": "off", "schedule": "linear"},
    # airbench94's recipe (lr 11.5 and weight decay 0.0153 per 1024 images, momentum 0.85) for a mean loss.
    "fast-cifar": {"optimizer": "sgd", "batch_size": 1024, "lr": 1.5, "weight_decay": 1.33e-3, "momentum": 0.85,
                   "lookahead": "on", "schedule": "triangle"},
}


SCHEDULES = ("linear", "triangle")  # learning-rate shapes over training, see train.lr_factor

UNSET: dict[str, object] = {"optimizer": "", "batch_size": 0, "lr": 0.0, "weight_decay": -1.0, "momentum": -1.0,
                            "lookahead": "", "schedule": ""}


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
    between_source: str = "blend"  # in-between from: blend | human | natural | auto (human if votes exist)
    between_fraction: float = 0.05  # share of the training set that is in-between, in (0, 1)
    blend_low: float = 0.4  # blend weight λ of class A is drawn from U(blend_low, blend_high)
    blend_high: float = 0.6  # upper end of the blend weight range
    natural_threshold: float = 0.3  # `natural`: both pair probabilities at least this (out-of-fold)
    natural_folds: int = 3  # `natural`: cross-validation folds of the reference model (>= 2)
    natural_epochs: int = 4  # `natural`: training epochs of each fold's reference model
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
    optimizer: str = ""  # adamw | sgd (Nesterov) ("" = the model's default)
    batch_size: int = 0  # images per step (0 = the model's default)
    lr: float = 0.0  # peak learning rate, reached and left as --schedule says (0 = the model's default)
    weight_decay: float = -1.0  # weight decay (decoupled for AdamW) (-1 = the model's default)
    momentum: float = -1.0  # SGD's Nesterov momentum, in [0, 1) (-1 = the model's default; AdamW ignores it)
    schedule: str = ""  # linear (0 -> peak in epoch 1 -> 0) | triangle (0.2 -> peak at 23% -> 0.07) ("" = model's)
    lookahead: str = ""  # on | off: average the weights late in training, airbench-style ("" = the model's default)
    augment: str = "auto"  # auto (on for RGB 32x32) | on | off: random translation + horizontal flip
    translate: int = 2  # augmentation: largest random shift, in pixels (edges mirrored; 0 = flips only)
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile the model (GPU, long runs)
    batch_runs: str = "auto"  # auto (CUDA, if timed faster) | on | off: train runs of one shape as one wide model

    def __post_init__(self) -> None:
        # Unset optimisation fields take the model's defaults, so a saved config always holds real values.
        for name, value in MODEL_DEFAULTS.get(self.model, MODEL_DEFAULTS["small-cnn"]).items():
            if getattr(self, name) == UNSET[name] and type(getattr(self, name)) is type(UNSET[name]):
                setattr(self, name, value)

    def key(self) -> str:
        """Hash of everything that changes results except strategy and seed: one experiment."""
        d = dataclasses.asdict(self)
        # data_dir stays in: for `folder` and `npz` the directory is the dataset.
        for k in ("strategy", "seed", "device", "download", "compile", "batch_runs"):
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
        if self.val_fraction + self.test_fraction >= 1:
            raise UserError(f"--val-fraction + --test-fraction must be < 1 so training images remain, got "
                            f"{self.val_fraction} + {self.test_fraction}")
        for name in ("epochs", "batch_size", "test_between_per_pair", "val_between_per_pair"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.natural_folds < 2:
            raise UserError(f"--natural-folds must be at least 2, got {self.natural_folds}")
        if self.natural_epochs < 1:
            raise UserError(f"--natural-epochs must be at least 1, got {self.natural_epochs}")
        if self.translate < 0:
            raise UserError(f"--translate must be >= 0, got {self.translate}")
        if self.width < 0:
            raise UserError(f"--width must be >= 0, got {self.width}")
        if self.train_size < 0:
            raise UserError(f"--train-size must be >= 0, got {self.train_size}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise UserError(f"--lr must be > 0 and finite, got {self.lr}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise UserError(f"--weight-decay must be >= 0 and finite, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.optimizer not in ("adamw", "sgd"):
            raise UserError(f"--optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"--schedule must be {' or '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.lookahead not in ("on", "off"):
            raise UserError(f"--lookahead must be on or off, got {self.lookahead!r}")
        if self.augment not in ("auto", "on", "off"):
            raise UserError(f"--augment must be auto, on or off, got {self.augment!r}")
        if self.batch_runs not in ("auto", "on", "off"):
            raise UserError(f"--batch-runs must be auto, on or off, got {self.batch_runs!r}")
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
        if kind is bool:
            if isinstance(value, bool):
                return value
            if not isinstance(value, str) or value.lower() not in ("true", "false", "1", "0", "yes", "no"):
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
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a TOML config file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read config file ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed TOML: {e}") from None
    run_table = raw.pop("run", {})
    if not isinstance(run_table, dict):
        raise UserError(f"{path}: [run] must be a table of run options, got {run_table!r}")
    flat = {**run_table, **raw}
    return {k.replace("-", "_"): v for k, v in flat.items()}


def build_run_config(values: dict[str, object]) -> RunConfig:
    cfg = RunConfig(**{k: coerce(k, v) for k, v in values.items()})
    cfg.validate()
    return cfg
