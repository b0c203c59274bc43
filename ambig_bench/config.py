"""Typed configuration, grouped by what reads each option; `None` means "the model's (or dataset's) default".

A run's options live in small dataclasses: the data (`DataOptions`, read by the loaders), the network and
its recipe (`ModelOptions`, defaults from the model's `models.Recipe`), the training loop (`TrainOptions`),
where it runs (`Runtime`, never part of the experiment), and one table per in-between source, declared by
the source's own file (`datasets/blend.py`, `datasets/natural.py`). Every leaf field has one flat name
that is its CLI option, TOML key and sweep axis (`ambig_bench.options` builds that table); its `help`
metadata is the CLI help.

$ ambig-bench run --config exp.toml --epochs 5     # file values, then command-line overrides

>>> RunConfig().train.epochs
20
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ambig_bench.errors import UserError
from ambig_bench.io import read_text
from ambig_bench.shown import brief


def option(default: Any, help: str, flag: str = "", choices: tuple[str, ...] = ()) -> Any:
    """A config field with its CLI help (and its flat option name, when that is not the field's own name)."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


# Bounds that keep a typo from allocating beyond any machine (each refused in one line naming its option).
MAX_WIDTH = 1024  # channels of a model's first stage (small-cnn: 1024/2048/4096 channels, ~1 GB of weights)
MAX_BATCH = 65536  # images per step
MAX_COUNT = 100_000  # generated images per pair and split (blend sources)
MAX_INT = 2**63 - 1  # any integer option: a value beyond 64 bits is a typo, and numpy and torch refuse it
MAX_SEED = MAX_INT  # torch's and numpy's generators take 64-bit seeds
MAX_EPOCHS = 10_000  # passes over the training set
MAX_SEEDS = 10_000  # runs per strategy and grid point
MAX_SIDE = 8192  # pixels along an image side (model.json's image_size)
MAX_FOLDS = 1000  # --folds: each fold is tested by its own run


def check_fraction(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise UserError(f"--{name.replace('_', '-')} must be in (0, 1), got {brief(value)}")


def check_at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"--{name.replace('_', '-')} must be at least {low}, got {brief(value)}")


def check_between(name: str, value: int, low: int, high: int) -> None:
    check_at_least(name, value, low)
    if value > high:
        raise UserError(f"--{name.replace('_', '-')} must be at most {high}, got {brief(value)}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        listed = f"{', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else choices[0]
        raise UserError(f"--{name.replace('_', '-')} must be {listed}, got {brief(value)}")


@dataclass
class DataOptions:
    """Read by `datasets.prepare` and the loaders."""

    dataset: str = option("digits", "registered dataset name")
    data_dir: str | None = option(None, "where the dataset's files are (default: the dataset's own locations)")
    labels: str | None = option(None, "labels CSV for the `folder` dataset (default: class = folder name)")
    pairs: str | None = option(None, '"4:9,3:8" or "T-shirt/top:Shirt", or auto: the most confusable pairs, '
                                     'as `ambig-bench pairs` ranks them (default: the dataset\'s pairs)')
    between_source: str = option("auto", "in-between images from: auto (human when the labels have A|B rows or "
                                         "in-between votes, blend otherwise) | blend | human | natural")
    val_fraction: float = option(0.15, "share of images held out for validation when the dataset has no val "
                                       "split")
    test_fraction: float = option(0.25, "share of images held out for testing when the dataset has no test split")
    folds: int = option(0, "K >= 2: stratified K-fold splits, the same for every seed; the run of seed s tests fold "
                           "s mod K, so seeds 0..K-1 test every image once (0: test images drawn per seed, "
                           "--test-fraction)")
    train_size: int | None = option(None, "clear-cut training images kept, drawn at random (default: all)")
    between_train: int | None = option(None, "human source: in-between training images kept, the first N of an "
                                             "order fixed per seed, so the 20 kept hold the 10 (spread over the "
                                             "pairs); validation and test stay the same whatever N (default: all)")
    human_pair_mass: float = option(0.9, "votes: top-two share needed to call an image in-between")
    human_second: float = option(0.2, "votes: share of the second class needed for in-between")
    human_extra_train: bool = option(True, "cifar10h: add the 50,000 clear-cut CIFAR-10 training images")
    download: bool = option(False, "allow downloading a dataset: torchvision's, or a Hugging Face Hub name for "
                                   "--dataset hf (needs internet)")
    image_size: int | None = option(None, "resize every image so its shorter side is this, then crop the centre "
                                          "square (default: the weights' input size with --pretrained, else the "
                                          "data's own size; mixed sizes: the smallest shorter side)")

    def validate(self) -> None:
        for name in ("human_pair_mass", "human_second", "val_fraction", "test_fraction"):
            check_fraction(name, getattr(self, name))
        if self.val_fraction + self.test_fraction >= 1:
            raise UserError(f"--val-fraction + --test-fraction must be < 1 so training images remain, got "
                            f"{self.val_fraction} + {self.test_fraction}")
        if self.folds < 0 or self.folds == 1:
            raise UserError(f"--folds must be 0 (off) or at least 2, got {self.folds}")
        if self.folds:
            check_between("folds", self.folds, 2, MAX_FOLDS)
            if self.test_fraction != DATA_FIELDS["test_fraction"].default:
                raise UserError(f"--test-fraction does not apply with --folds (each run tests one fold, "
                                f"1/{self.folds} of the images); give one of them")
        if self.train_size is not None:
            check_at_least("train_size", self.train_size, 1)
        if self.between_train is not None:
            check_at_least("between_train", self.between_train, 1)
        if self.image_size is not None:
            check_at_least("image_size", self.image_size, 1)


DATA_FIELDS = {f.name: f for f in dataclasses.fields(DataOptions)}
LOOKAHEAD = ("on", "off")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("linear", "triangle", "cosine")  # learning-rate shapes over training, see train.lr_factor


@dataclass
class ModelOptions:
    """The network and overrides of its recipe; None takes the model's recipe (`models.Recipe`)."""

    name: str = option("small-cnn", "registered model name", flag="model")
    width: int | None = option(None, "channels of the first conv stage (default: the model's: 32 small-cnn, "
                                     "64 fast-cifar)")
    optimizer: str | None = option(None, "adamw | sgd (Nesterov) (default: the model's)", choices=OPTIMIZERS)
    batch_size: int | None = option(None, "images per step (default: the model's)")
    lr: float | None = option(None, "peak learning rate, reached and left as --schedule says (default: the "
                                    "model's)")
    weight_decay: float | None = option(None, "weight decay, decoupled for AdamW (default: the model's)")
    momentum: float | None = option(None, "SGD's Nesterov momentum, in [0, 1); AdamW ignores it (default: the "
                                          "model's)")
    schedule: str | None = option(None, "linear (0 -> peak in epoch 1 -> 0) | triangle (0.2 -> peak at 23% -> "
                                        "0.07) | cosine (0 -> peak in epoch 1, cosine to 0) (default: the model's)",
                                  choices=SCHEDULES)
    lookahead: str | None = option(None, "on | off: average the weights late in training, airbench-style "
                                         "(default: the model's)", choices=LOOKAHEAD)
    crop_scale: float | None = option(None, "augmentation: random-resized crops keep at least this share of the image "
                                            "area, in (0, 1]; 1 = shifts of --translate instead (default: the "
                                            "model's)")
    backbone_lr: float | None = option(None, "learning rate of the layers that start from --pretrained or --weights, "
                                             "as a share of --lr (the new head gets --lr) (default: the model's)")
    pretrained: bool = option(False, "start from the architecture's standard ImageNet weights (torchvision's "
                                     "download and cache)")
    weights: str | None = option(None, "start from a local file (safetensors, or a state dict torch.load reads "
                                       "with weights_only) or another run's directory; the head is re-initialised")
    freeze: bool = option(False, "train only the head over the frozen backbone's features, computed once per "
                                 "dataset and cached on disk (a linear probe); needs --pretrained or --weights")
    normalize: str | None = option(None, "input normalisation: data (fitted on the training images) | imagenet | "
                                         "MEAN,STD (per channel, in 0..1: the C means, then the C stds, e.g. "
                                         "0.5,0.5,0.5,0.25,0.25,0.25) (default: the starting weights' own: "
                                         "--pretrained's, a run's, or for a --weights FILE of a torchvision or timm "
                                         "architecture its pretrained normalisation; data otherwise)")

    def validate(self) -> None:
        """Checks the values that are set (a resolved recipe has them all)."""
        if self.width is not None:
            check_between("width", self.width, 1, MAX_WIDTH)
        if self.batch_size is not None:
            check_between("batch_size", self.batch_size, 1, MAX_BATCH)
        if self.lr is not None and (not math.isfinite(self.lr) or self.lr <= 0):
            raise UserError(f"--lr must be > 0 and finite, got {self.lr}")
        if self.weight_decay is not None and (not math.isfinite(self.weight_decay) or self.weight_decay < 0):
            raise UserError(f"--weight-decay must be >= 0 and finite, got {self.weight_decay}")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum}")
        for name in ("optimizer", "schedule", "lookahead"):
            if (value := getattr(self, name)) is not None:
                check_choice(name, value, MODEL_FIELDS[name].metadata["choices"])
        if self.crop_scale is not None and not 0 < self.crop_scale <= 1:
            raise UserError(f"--crop-scale must be in (0, 1], got {self.crop_scale}")
        if self.backbone_lr is not None and (not math.isfinite(self.backbone_lr) or self.backbone_lr < 0):
            raise UserError(f"--backbone-lr must be >= 0 and finite, got {self.backbone_lr}")
        if self.pretrained and self.weights:
            raise UserError("--pretrained and --weights both set the starting weights; give one of them")
        if self.normalize is not None:
            parse_normalize(self.normalize)
        if self.freeze and not (self.pretrained or self.weights):
            raise UserError("--freeze trains only the head, so the backbone needs weights: add --pretrained or "
                            "--weights FILE|RUN_DIR")


MODEL_FIELDS = {f.name: f for f in dataclasses.fields(ModelOptions)}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's ImageNet weights' mean and std, 0..1


def parse_normalize(value: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """`--normalize` as per-channel (mean, std) in 0..1 units; None for `data` (fitted on the training images).
    Anything else is a one-line UserError."""
    if value == "data":
        return None
    if value == "imagenet":
        return IMAGENET
    try:
        numbers = [float(part) for part in value.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) not in (2, 6):
        raise UserError(f"--normalize must be data, imagenet or MEAN,STD (1 or 3 means, then as many stds, in 0..1), "
                        f"got {brief(value)}")
    half = len(numbers) // 2
    mean, std = tuple(numbers[:half]), tuple(numbers[half:])
    if not all(0 <= m <= 1 for m in mean) or not all(0 < s <= 1 for s in std):
        raise UserError(f"--normalize {value}: means must be in [0, 1] and stds in (0, 1] (pixel values scaled to "
                        "0..1, as torchvision and timm give them)")
    return mean, std


AUGMENT = ("auto", "on", "off")
EARLY_STOPPING = ("auto", "on", "off")


@dataclass
class TrainOptions:
    """Read by the training loop; None takes the model's recipe (`models.Recipe`)."""

    epochs: int = option(20, "passes over the training set")
    augment: str | None = option(None, "auto (on for RGB 24x24 and larger) | on | off: random shifts (or the recipe's "
                                       "random-resized crops, --crop-scale) + horizontal flips", choices=AUGMENT)
    translate: int | None = option(None, "augmentation: largest random shift, in pixels (edges mirrored; 0 = flips "
                                         "only)")
    early_stopping: str = option("auto", "auto (on when fine-tuning from --pretrained or --weights, off otherwise) "
                                         "| on | off: end on the weights of the epoch with the lowest validation "
                                         "selection loss (every epoch is trained; keep-best, no patience)",
                                 choices=EARLY_STOPPING)

    def validate(self) -> None:
        """Checks the values that are set (a resolved recipe has them all)."""
        check_between("epochs", self.epochs, 1, MAX_EPOCHS)
        if self.augment is not None:
            check_choice("augment", self.augment, AUGMENT)
        if self.translate is not None:
            check_at_least("translate", self.translate, 0)
        check_choice("early_stopping", self.early_stopping, EARLY_STOPPING)


BATCH_RUNS = ("auto", "on", "off")


@dataclass
class Runtime:
    """Where and how a run executes: results do not depend on it (beyond float rounding), so it is not part of
    the experiment."""

    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    compile: bool = option(False, "torch.compile the model (GPU, long runs)")
    batch_runs: str = option("auto", "auto (CUDA, if timed faster) | on | off: train runs of one shape as one "
                                     "wide model", choices=BATCH_RUNS)

    def validate(self) -> None:
        check_choice("batch_runs", self.batch_runs, BATCH_RUNS)
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"--device must be auto, cpu or cuda, got {brief(self.device)}")


@dataclass
class RunConfig:
    """One (strategy, seed) run. `source` holds each in-between source's options by source name; the source
    declares them where it registers (`BETWEEN_SOURCES.register(name, options=...)`), and a run reads only its own
    source's. `loader` holds the options of the run's dataset, for the datasets that declare some (`DATASETS`)."""

    strategy: str = option("soft", "registered strategy name")
    seed: int = option(0, "seeds the data split, the in-between draw, initialisation and batch order")
    data: DataOptions = field(default_factory=DataOptions)
    source: dict[str, dict[str, Any]] = field(default_factory=dict)
    loader: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Each strategy's options by strategy name, declared where the strategy registers (`STRATEGIES`); a run reads
    # only its own strategy's, and they name its variant (`options.strategy_label`).
    strategy_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: ModelOptions = field(default_factory=ModelOptions)
    train: TrainOptions = field(default_factory=TrainOptions)
    runtime: Runtime = field(default_factory=Runtime)

    def validate(self) -> None:
        check_between("seed", self.seed, 0, MAX_SEED)
        for group in (self.data, self.model, self.train, self.runtime):
            group.validate()

    def stops_early(self) -> bool:
        """Whether training ends on its best epoch on validation (`--early-stopping`; auto: when fine-tuning, i.e.
        training every layer from starting weights, where the field uses it)."""
        fine_tuning = (self.model.pretrained or bool(self.model.weights)) and not self.model.freeze
        return self.train.early_stopping == "on" or (self.train.early_stopping == "auto" and fine_tuning)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


GROUPS: dict[str, type] = {"data": DataOptions, "model": ModelOptions, "train": TrainOptions, "runtime": Runtime}


@dataclass
class ExperimentConfig:
    """An experiment: every strategy and seed of one run setting. Strategy and seed stay out of the experiment key
    (`keys`), so its runs share one key and compare; `experiments.experiment` builds it."""

    run: RunConfig = field(default_factory=RunConfig)  # template; strategy and seed are filled per run
    strategies: list[str] = field(default_factory=lambda: ["soft"])  # names, in order
    seeds: int = 3  # runs per strategy, seeds first_seed .. first_seed + seeds - 1
    out: str = "results/digits"  # results directory (the CLI and the API default to results/<dataset>)
    force: bool = False  # retrain even when a finished run exists
    given: dict[str, Any] = field(default_factory=dict)  # the run options as given (flat names), for sweeps


def coerce(flag: str, kind: type, value: object) -> object:
    """A TOML or command-line value converted to `kind` (bool, int, float or str), or a one-line UserError. An
    integer must fit in 64 bits (MAX_INT)."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if not isinstance(value, str) or value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)  # TOML `epochs = true` is not one epoch
        if kind is not str and isinstance(value, list | dict):
            raise ValueError(value)
        if kind is str and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return ",".join(value)  # TOML `pairs = ["4:9", "3:8"]` means --pairs 4:9,3:8
        if kind is str and not isinstance(value, str | int | float):
            raise ValueError(value)
        typed = kind(value)  # int("9" * 5000) is refused by Python's own limit on digits (ValueError)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(1e400)
        raise UserError(f"option {flag.replace('_', '-')!r}: {brief(value)} is not a valid {kind.__name__}") from None
    if kind is int:
        check_between(flag, typed, -MAX_INT, MAX_INT)
    return typed


def unknown_option(name: str, known: Iterable[str]) -> UserError:
    """The error for an unknown option, with the nearest flat name by difflib's similarity: "unknown option 'epoch';
    did you mean 'epochs'?"."""
    shown_name = name.replace("_", "-")
    # A long name is no typo of a short one (and difflib's time grows with its length).
    near = difflib.get_close_matches(name, list(known), n=1) if len(name) <= 100 else []
    hint = f"; did you mean {near[0].replace('_', '-')!r}?" if near else ""
    return UserError(f"unknown option {brief(shown_name)}{hint}")


MAX_CONFIG_BYTES = 1 << 20  # a config file holds options, not data
MAX_NESTING = 32  # arrays and inline tables inside each other in a config file (a config needs 2)
FILE_KEYS = ("strategies", "seeds", "out")  # what a config file may set besides run options: ExperimentConfig's
# Strings (basic, literal, multi-line), comments, and the brackets that open and close arrays and inline tables. An
# unclosed one-line string runs to its line's end, as the TOML parser reads it.
TOML_TOKENS = re.compile(r'"""(?:\\.|[^\\])*?"""|\'\'\'.*?\'\'\'|"(?:\\.|[^"\\\n])*"?|\'[^\'\n]*\'?|#[^\n]*|[\[\]{}]',
                         re.DOTALL)


def check_nesting(path: Path, text: str) -> None:
    """Refuse TOML nested deeper than MAX_NESTING before it is parsed: Python's tomllib recurses once per level and
    has no limit of its own, so a deep file would end in a RecursionError. Hand-written (no library bounds it): one
    linear scan that counts brackets outside strings and comments."""
    depth = 0
    for token in TOML_TOKENS.finditer(text):
        bracket = token.group()
        if bracket in ("[", "{"):
            depth += 1
            if depth > MAX_NESTING:
                line = text.count("\n", 0, token.start()) + 1
                raise UserError(f"{path}: line {line}: arrays or tables nested more than {MAX_NESTING} deep")
        elif bracket in ("]", "}"):
            depth = max(depth - 1, 0)


KINDS = {kind.__name__: kind for kind in (bool, int, float, str)}  # an option's type by name (the catalogue's)


def load_toml(path: str | Path, options: Iterable[dict[str, str]]) -> dict[str, object]:
    """Read an experiment file: run options at top level (or under [run]), plus strategies/seeds/out. `options`:
    every run option's flat name ("flag") and type name ("kind"), as the catalogue lists them. Each run option is
    typed here (`coerce`), so an error names the file and the key; an unknown key names the nearest known one."""
    path = Path(path)
    text = read_text(path, MAX_CONFIG_BYTES, "TOML config file")
    check_nesting(path, text)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: malformed TOML: {e}") from None
    except ValueError:  # tomllib reads integers with int(), which refuses more digits than this
        raise UserError(f"{path}: holds an integer of more than {sys.get_int_max_str_digits():,} digits; an option "
                        f"holds at most {MAX_INT:,}") from None
    run_table = raw.pop("run", {})
    if not isinstance(run_table, dict):
        raise UserError(f"{path}: [run] must be a table of run options, got {brief(run_table)}")
    kinds = {o["flag"]: KINDS[o["kind"]] for o in options}
    values = {}
    for key, value in {**run_table, **raw}.items():
        name = key.replace("-", "_")
        if name not in kinds and name not in FILE_KEYS:
            raise UserError(f"{path}: {unknown_option(name, [*kinds, *FILE_KEYS])}")
        try:
            values[name] = coerce(name, kinds[name], value) if name in kinds else value
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
    return values

