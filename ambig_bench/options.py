"""Run options by their flat names: the CLI flags, TOML keys and sweep axes, and the config they build.

Each leaf of `RunConfig` (and of every registered entry's options) has one flat name (`lr`, `blend_low`,
`model`); this module maps those names to the nested config, settles in one `resolve` what the user left
unset (from the model's recipe and the entries' defaults), and says which options are outside an experiment
(a run's identity within it, and where it runs); `keys` hashes the rest.

$ ambig-bench run --model fast-cifar --lr 1.0 --blend-low 0.3

>>> cfg = build({"model": "fast-cifar", "epochs": 2})
>>> cfg.model.batch_size, cfg.model.optimizer       # the model's recipe
(1024, 'sgd')
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from functools import cache
from types import NoneType, UnionType
from typing import Any

from ambig_bench.config import GROUPS, RunConfig, coerce, unknown_option
from ambig_bench.datasets import BETWEEN_SOURCES, DATASETS
from ambig_bench.errors import UserError
from ambig_bench.models import MODELS
from ambig_bench.strategies import STRATEGIES

IDENTITY = ("strategy", "seed")  # a run's identity within an experiment, not an option of the experiment
# Config paths outside the experiment: a run's identity within it (its strategy, with the strategy's own options,
# and seed: runs of every strategy compare within one experiment), and what never changes what a run computes
# (where it runs, permission to download).
OUTSIDE_EXPERIMENT = (("strategy",), ("strategy_options",), ("seed",), ("runtime",), ("data", "download"))
# RunConfig fields holding the options that registered entries declare, one table per entry name.
DECLARED = {"source": BETWEEN_SOURCES, "strategy_options": STRATEGIES}


@dataclass(frozen=True)
class Option:
    flag: str  # flat name: --flag-with-dashes, TOML key, sweep axis
    path: tuple[str, ...]  # where it lives in RunConfig: ("model", "lr"), ("source", "blend", "blend_low")
    #                        or ("loader", "hf", "hf_image_column")
    kind: type  # bool | int | float | str
    help: str  # the field's help metadata
    panel: str  # which group reads it (CLI help panel)
    default: Any  # the field's default (None: the model's recipe sets it)


def base_type(hint: Any) -> type:
    """`int | None` -> int."""
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        return next(t for t in typing.get_args(hint) if t is not NoneType)
    return hint


def fields_of(cls: type, prefix: tuple[str, ...], panel: str) -> list[Option]:
    hints = typing.get_type_hints(cls)
    return [Option(f.metadata.get("flag") or f.name, (*prefix, f.name), base_type(hints[f.name]),
                   f.metadata.get("help", ""), panel, f.default) for f in dataclasses.fields(cls)]


@cache
def table() -> dict[str, Option]:
    """Every run option by flat name, in help order."""
    opts = fields_of(RunConfig, (), "run")[:len(IDENTITY)]
    for group, cls in GROUPS.items():
        opts += fields_of(cls, (group,), group)
    for source, cls in BETWEEN_SOURCES.declared_options().items():
        opts += fields_of(cls, ("source", source), f"source {source}")
    for dataset, cls in DATASETS.declared_options().items():  # shown with the data options
        opts += fields_of(cls, ("loader", dataset), "data")
    for strategy, cls in STRATEGIES.declared_options().items():
        opts += fields_of(cls, ("strategy_options", strategy), "strategy_options")
    by_flag = {o.flag: o for o in opts}
    assert len(by_flag) == len(opts), "two run options share a flat name"
    return by_flag


def lookup(flag: str) -> Option:
    opt = table().get(flag.replace("-", "_"))
    if opt is None:
        raise unknown_option(flag.replace("-", "_"), table())
    return opt


def get(cfg: RunConfig, flag: str) -> Any:
    """The option's value; None for an option of a dataset the run does not use (cfg.loader holds only its own)."""
    node: Any = cfg
    for part in lookup(flag).path:
        node = node.get(part, {}) if isinstance(node, dict) else getattr(node, part)
    return None if node == {} else node


def flat_values(cfg: RunConfig) -> dict[str, Any]:
    """Every option of `cfg` by flat name (unset ones as None), as its config.json holds them: of the datasets'
    options, only its own dataset's."""
    return {flag: get(cfg, flag) for flag, opt in table().items()
            if opt.path[0] != "loader" or opt.path[1] == cfg.data.dataset}


def build(values: dict[str, Any]) -> RunConfig:
    """A checked, resolved RunConfig from flat option values (None or absent = default)."""
    cfg = RunConfig()
    for flag, value in values.items():
        if value is None:
            continue
        opt = lookup(flag)
        typed = coerce(opt.flag, opt.kind, value)
        if opt.path[0] in (*DECLARED, "loader"):
            getattr(cfg, opt.path[0]).setdefault(opt.path[1], {})[opt.path[2]] = typed
        elif len(opt.path) == 1:
            setattr(cfg, opt.path[0], typed)
        else:
            setattr(getattr(cfg, opt.path[0]), opt.path[1], typed)
    return resolve(cfg)


def replace(cfg: RunConfig, **values: Any) -> RunConfig:
    """`cfg` with some options changed by flat name. A changed model brings its own model options (its recipe's
    `--lr`, `--batch-size`, ... unless `values` sets them); the training options stay as they were."""
    given = {k: v for k, v in flat_values(cfg).items() if v is not None}
    if "model" in values:  # the recipe of the old model was filled in; the new model brings its own
        for flag in MODELS.get(str(given["model"])).recipe.option_defaults():
            if lookup(flag).path[0] == "model":
                given.pop(flag, None)
    return build({**given, **{k.replace("-", "_"): v for k, v in values.items()}})


def resolve(cfg: RunConfig) -> RunConfig:
    """Settle every option that the options alone settle, once, then check every value and name, so a saved
    config holds what the run used: unset recipe fields from the model's `Recipe`, the image size of standard
    weights, and each source's, strategy's and the dataset's options from their defaults.

    What depends on the data or the machine stays as given, here and in config.json (and so in the key), and is
    settled where that is known: `--pairs auto` and `--between-source auto` when the data are prepared
    (`datasets.confusable.resolve_auto`, `datasets.base.pick_source`; data.json records the outcome),
    `--augment auto` once the images are known (`train.use_augmentation`), `--image-size` unset without weights
    by the images' own size (the loader), `--device auto` by `train.pick_device` and `--batch-runs auto` by
    `batched` on the device."""
    check_names(cfg)
    resolve_loader(cfg)
    model = MODELS.get(cfg.model.name)
    for flag, value in model.recipe.option_defaults().items():
        group, name = lookup(flag).path
        if getattr(getattr(cfg, group), name) is None:
            setattr(getattr(cfg, group), name, value)
    if cfg.data.image_size is None and cfg.model.pretrained:  # the size the standard weights were trained at
        cfg.data.image_size = model.input_size
    for group, registry in DECLARED.items():
        tables = getattr(cfg, group)
        for name, cls in registry.declared_options().items():
            try:
                opts = cls(**tables.get(name, {}))
            except TypeError as e:
                raise UserError(f"{'source' if group == 'source' else 'strategy'} {name}: {e}") from None
            opts.validate()
            tables[name] = dataclasses.asdict(opts)
    cfg.validate()
    return cfg


def resolve_loader(cfg: RunConfig) -> None:
    """Only the run's dataset has options in cfg.loader (none for most datasets): another dataset's option is a
    mistake, and runs of datasets without options keep the configs (and keys) they always had."""
    dataset = cfg.data.dataset
    stray = next((k for k, v in cfg.loader.items() if k != dataset and v), None)
    if stray is not None:
        name = next(iter(cfg.loader[stray]))
        raise UserError(f"--{name.replace('_', '-')} is an option of --dataset {stray}, not of {dataset}")
    given, cfg.loader = cfg.loader.get(dataset, {}), {}
    if (cls := DATASETS.options(dataset)) is not None:
        try:
            opts = cls(**given)
        except TypeError as e:
            raise UserError(f"dataset {dataset}: {e}") from None
        opts.validate()
        cfg.loader = {dataset: dataclasses.asdict(opts)}


def check_names(cfg: RunConfig) -> None:
    """UserError for a strategy, dataset, in-between source or model name that no registry holds."""
    STRATEGIES.get(cfg.strategy)
    DATASETS.get(cfg.data.dataset)
    if cfg.data.between_source != "auto":  # resolved by the dataset when it loads
        BETWEEN_SOURCES.get(cfg.data.between_source)
    MODELS.get(cfg.model.name)


def in_experiment(opt: Option) -> bool:
    return not any(opt.path[:len(p)] == p for p in OUTSIDE_EXPERIMENT)


def outside_experiment() -> list[str]:
    """Flat names of the options that are not part of an experiment (compare does not group by them)."""
    return [flag for flag, opt in table().items() if not in_experiment(opt)]


def strategy_options(cfg: RunConfig) -> Any:
    """The run's strategy's own options (the dataclass it registered with), or None when it declares none."""
    cls = STRATEGIES.options(cfg.strategy)
    return cls(**cfg.strategy_options.get(cfg.strategy, {})) if cls else None


def strategy_label(strategy: str, values: dict[str, Any]) -> str:
    """The strategy and those of its own options that differ from their defaults: `mixup`,
    `label-smoothing@smoothing-eps=0.2`. It names a run (its directory) and its row in compare and report, so runs
    of one strategy with different options stay apart while the experiment key, which leaves strategies out so
    that they compare, stays the same. `values`: flat option values (config.json's, flattened)."""
    cls = STRATEGIES.options(strategy)
    if cls is None:
        return strategy
    changed = [f"@{f.name.replace('_', '-')}={values[f.name]}" for f in dataclasses.fields(cls)
               if f.name in values and values[f.name] is not None and values[f.name] != f.default]
    return strategy + "".join(changed)


def run_label(cfg: RunConfig) -> str:
    """`strategy_label` of a run's config."""
    return strategy_label(cfg.strategy, cfg.strategy_options.get(cfg.strategy, {}))
