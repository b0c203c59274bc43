"""The experiment key: which runs compare, and which finished run a new one is.

A run directory is named `<strategy label>-seed<seed>-<key>`; runs with one key are one experiment (every
strategy and seed of one setting). The key is the hash of a frozen, versioned layout of option values, so that
a newer release of the tool finds the runs an older one finished:

- `V1`: the options of release 0.1.0, each at the place its config.json held it then. Frozen: a field that
  moves in `RunConfig` keeps its place here, and nothing is added to it.
- An option added since is hashed (by flat name, under "options") only when its value differs from its neutral
  value, the one that reproduces what runs computed before it existed: its default, or for a recipe field the
  model's recipe. So a new option with a neutral default re-keys nothing, and a run that sets it is a new
  experiment.
- The user's data files (`data_fingerprint`) and starting weights (`weights_fingerprint`), by content.

A change that alters what runs compute with every option as it was would add a layout V2 (and hash its number).
One such change touched only frozen runs: since their head is fitted to its optimum (`probe.py`) rather than
trained for --epochs, a frozen run's content holds `PROBE` (the solver's name and version), so it is a new
experiment while every other run keeps its key.

>>> from ambig_bench.options import build
>>> run_name(build({"strategy": "soft", "epochs": 1, "width": 4}))
'soft-seed0-ad8e9cb4'
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ambig_bench.config import RunConfig
from ambig_bench.datasets import DATASETS
from ambig_bench.errors import UserError
from ambig_bench.imageio import fingerprint, folder_key
from ambig_bench.models import MODELS, settled_normalize
from ambig_bench.options import get, in_experiment, run_label, table

AUTO_PICKS = ("human", "blend")  # what --between-source auto may choose (datasets.base.pick_source)
DATA_V1 = ("dataset", "data_dir", "labels", "pairs", "between_source", "val_fraction", "test_fraction", "train_size",
           "human_pair_mass", "human_second", "human_extra_train", "image_size")
MODEL_V1 = ("width", "optimizer", "batch_size", "lr", "weight_decay", "momentum", "schedule", "lookahead",
            "crop_scale", "backbone_lr", "pretrained", "weights", "freeze")
# Flat option name -> its place in the key's content. Frozen (see the module's docstring).
V1: dict[str, tuple[str, ...]] = {
    **{flag: ("data", flag) for flag in DATA_V1},
    "model": ("model", "name"),
    **{flag: ("model", flag) for flag in MODEL_V1},
    **{flag: ("train", flag) for flag in ("epochs", "augment", "translate")},
    **{flag: ("source", "blend", flag) for flag in ("between_fraction", "blend_low", "blend_high",
                                                    "test_between_per_pair", "val_between_per_pair")},
    **{flag: ("source", "natural", flag) for flag in ("natural_threshold", "natural_folds", "natural_epochs")},
    "crowd_method": ("loader", "folder", "crowd_method"),
    "hf_image_column": ("loader", "hf", "hf_image_column"),
    "hf_label_column": ("loader", "hf", "hf_label_column"),
}
# Options added since V1 whose value the rest of the config settles (an `auto`): hashed as what they settle to,
# against the value that reproduces the runs from before they existed. Early stopping settles on for fine-tuning:
# such runs compute something new and get a new key; every other run keeps its key whether it says auto or off.
SETTLED: dict[str, tuple[Callable[[RunConfig], Any], Any]] = {
    "early_stopping": (lambda cfg: "on" if cfg.stops_early() else "off", "off"),
    # A weights file of a torchvision or timm architecture now brings its pretrained normalisation (before: the
    # data's): such runs get a new key; every other run keeps its own.
    "normalize": (lambda cfg: settled_normalize(cfg.model), None),
}
PROBE = "lbfgs-l2grid-1"  # frozen runs' head solver; a change to what it computes gives it a new version
# Present in every key's content even when empty (`source` under --between-source human); `loader` is there only
# for a dataset with options.
ALWAYS = ("data", "source", "model", "train")


def applies(path: tuple[str, ...], cfg: RunConfig) -> bool:
    """Whether the run reads the option at `path` (of V1 or of RunConfig): a source's options only for runs of
    that source (under `auto`, of the sources it may pick), a dataset's only for runs of that dataset."""
    if path[0] == "source":
        return path[1] in (AUTO_PICKS if cfg.data.between_source == "auto" else (cfg.data.between_source,))
    if path[0] == "loader":
        return path[1] == cfg.data.dataset
    return True


def neutral(flag: str, cfg: RunConfig) -> Any:
    """The value of an option added since V1 that reproduces what runs computed before it existed."""
    if flag in SETTLED:
        return SETTLED[flag][1]
    return MODELS.get(cfg.model.name).recipe.option_defaults().get(flag, table()[flag].default)


def settled(flag: str, cfg: RunConfig) -> Any:
    """The value an option added since V1 takes in the run: as given, or as the config settles it (`SETTLED`)."""
    return SETTLED[flag][0](cfg) if flag in SETTLED else get(cfg, flag)


def key_content(cfg: RunConfig) -> dict[str, Any]:
    """What is hashed into the key of a resolved run config, the data files and starting weights aside."""
    content: dict[str, Any] = {part: {} for part in ALWAYS}
    added = {}
    for flag, opt in table().items():
        if flag in V1:
            if applies(V1[flag], cfg):
                *parents, leaf = V1[flag]
                node = content
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = get(cfg, flag)
        elif in_experiment(opt) and applies(opt.path, cfg) and (value := settled(flag, cfg)) != neutral(flag, cfg):
            added[flag] = value
    if added:
        content["options"] = added
    if cfg.model.freeze:
        content["probe"] = PROBE
    return content


def experiment_key(cfg: RunConfig) -> str:
    """Hash of the run's options (`key_content`), data files and starting weights: one experiment."""
    content = key_content(cfg)
    if files := data_fingerprint(cfg):
        content["files"] = files
    if cfg.model.weights:
        content["weights_file"] = weights_fingerprint(cfg)
    return hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]


def run_name(cfg: RunConfig) -> str:
    return f"{run_label(cfg)}-seed{cfg.seed}-{experiment_key(cfg)}"


def data_fingerprint(cfg: RunConfig) -> dict[str, str]:
    """What the user's data files hold: the labels CSV's bytes, and the images under --data-dir (by default the
    CSV's folder) by path, size and modification time; of a dataset that declares `listed_files`, only the images
    its CSV lists (others under the folder, results and figures, are not the data). Relabelled or edited data
    make a new experiment, whose runs sit next to the old ones instead of being mistaken for them."""
    labels = cfg.data.labels
    root = cfg.data.data_dir or (str(Path(labels).expanduser().parent) if labels else None)
    if labels and DATASETS.get(cfg.data.dataset).listed_files:
        return {"labels": fingerprint(labels),
                "data_dir": listed_images_key(cfg.data.dataset, root, labels, fingerprint(labels))}
    given = {"data_dir": root, "labels": labels}
    return {name: fingerprint(path) for name, path in given.items() if path}


@functools.lru_cache(maxsize=8)
def listed_images_key(dataset: str, root: str, labels: str, labels_key: str) -> str:
    """The images a labels CSV lists, by path, size and modification time ("" when the CSV or an image cannot be
    read: the loader then says which, in one line). Keyed on the CSV's own fingerprint, so an edit re-reads it."""
    try:
        files = DATASETS.get(dataset).listed_files(Path(labels).expanduser())
        return folder_key(Path(root).expanduser(), sorted(files))
    except (UserError, OSError):
        return ""


def weights_fingerprint(cfg: RunConfig) -> str:
    """The starting weights' bytes (a file, or a run directory's model.safetensors): retrained or replaced weights
    make a new experiment."""
    path = Path(cfg.model.weights).expanduser()
    return fingerprint(str(path / "model.safetensors" if path.is_dir() else path))


def data_version(cfg: RunConfig) -> dict[str, str]:
    """config.json's record of the data files' fingerprint ({} for built-in datasets): compare tells runs on
    relabelled or edited data apart by it."""
    files = data_fingerprint(cfg)
    return {"data_version": hashlib.sha1(json.dumps(files, sort_keys=True).encode()).hexdigest()[:8]} if files else {}
