"""Run options by their flat names: the CLI flags, TOML keys and sweep axes, and the config they build.

Each leaf of `RunConfig` (and of every in-between source's options) has one flat name (`lr`, `blend_low`,
`model`); this module maps those names to the nested config, fills what the user left unset from the
model's recipe and the sources' defaults, and says which options make up an experiment: those the chosen
model and source actually read.

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

from ambig_bench.config import GROUPS, RunConfig, coerce
from ambig_bench.datasets import BETWEEN_SOURCES, DATASETS, SOURCE_OPTIONS
from ambig_bench.errors import UserError
from ambig_bench.models import MODELS
from ambig_bench.strategies import STRATEGIES

IDENTITY = ("strategy", "seed")  # a run's identity within an experiment, not an option of the experiment
# Config paths that never change what a run computes (identity, where it runs, permission to download).
OUTSIDE_EXPERIMENT = (("strategy",), ("seed",), ("runtime",), ("data", "download"))
AUTO_PICKS = ("human", "blend")  # what --between-source auto may choose (datasets.base.prepare)


@dataclass(frozen=True)
class Option:
    flag: str  # flat name: --flag-with-dashes, TOML key, sweep axis
    path: tuple[str, ...]  # where it lives in RunConfig: ("model", "lr"), ("source", "blend", "blend_low")
    kind: type  # bool | int | float | str
    help: str  # the field's help metadata
    panel: str  # which group reads it (CLI help panel)


def base_type(hint: Any) -> type:
    """`int | None` -> int."""
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        return next(t for t in typing.get_args(hint) if t is not NoneType)
    return hint


def fields_of(cls: type, prefix: tuple[str, ...], panel: str) -> list[Option]:
    hints = typing.get_type_hints(cls)
    return [Option(f.metadata.get("flag") or f.name, (*prefix, f.name), base_type(hints[f.name]),
                   f.metadata.get("help", ""), panel) for f in dataclasses.fields(cls)]


@cache
def table() -> dict[str, Option]:
    """Every run option by flat name, in help order."""
    opts = fields_of(RunConfig, (), "run")[:len(IDENTITY)]
    for group, cls in GROUPS.items():
        opts += fields_of(cls, (group,), group)
    for source, cls in SOURCE_OPTIONS.items():
        opts += fields_of(cls, ("source", source), f"source {source}")
    by_flag = {o.flag: o for o in opts}
    assert len(by_flag) == len(opts), "two run options share a flat name"
    return by_flag


def lookup(flag: str) -> Option:
    opt = table().get(flag.replace("-", "_"))
    if opt is None:
        raise UserError(f"unknown option {flag.replace('_', '-')!r}")
    return opt


def get(cfg: RunConfig, flag: str) -> Any:
    node: Any = cfg
    for part in lookup(flag).path:
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def flat_values(cfg: RunConfig) -> dict[str, Any]:
    """Every option of `cfg` by flat name (unset ones as None)."""
    return {flag: get(cfg, flag) for flag in table()}


def build(values: dict[str, Any]) -> RunConfig:
    """A checked, resolved RunConfig from flat option values (None or absent = default)."""
    cfg = RunConfig()
    for flag, value in values.items():
        if value is None:
            continue
        opt = lookup(flag)
        typed = coerce(opt.flag, opt.kind, value)
        if opt.path[0] == "source":
            cfg.source.setdefault(opt.path[1], {})[opt.path[2]] = typed
        elif len(opt.path) == 1:
            setattr(cfg, opt.path[0], typed)
        else:
            setattr(getattr(cfg, opt.path[0]), opt.path[1], typed)
    return resolve(cfg)


def replace(cfg: RunConfig, **values: Any) -> RunConfig:
    """`cfg` with some options changed by flat name; a changed model takes its own recipe for unset options."""
    given = {k: v for k, v in flat_values(cfg).items() if v is not None}
    if "model" in values:  # the recipe of the old model was filled in; the new model brings its own
        for flag in MODELS.get(str(given["model"])).recipe:
            given.pop(flag, None)
    return build({**given, **{k.replace("-", "_"): v for k, v in values.items()}})


def resolve(cfg: RunConfig) -> RunConfig:
    """Fill unset recipe fields from the model's registry entry and each source's options from its defaults,
    then check every value and name, so a saved config always holds what the run used."""
    check_names(cfg)
    model = MODELS.get(cfg.model.name)
    for name, value in model.recipe.items():
        if getattr(cfg.model, name) is None:
            setattr(cfg.model, name, value)
    if cfg.data.image_size is None and cfg.model.pretrained:  # the size the standard weights were trained at
        cfg.data.image_size = model.input_size
    for source, cls in SOURCE_OPTIONS.items():
        try:
            opts = cls(**cfg.source.get(source, {}))
        except TypeError as e:
            raise UserError(f"source {source}: {e}") from None
        opts.validate()
        cfg.source[source] = dataclasses.asdict(opts)
    cfg.validate()
    return cfg


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


def experiment(cfg: RunConfig) -> dict[str, Any]:
    """What makes runs comparable: every option but those OUTSIDE_EXPERIMENT, and of the sources' options only
    those of the source the run uses (under `auto`, of the sources it may pick)."""
    d = cfg.to_dict()
    for path in OUTSIDE_EXPERIMENT:
        parent = d
        for part in path[:-1]:
            parent = parent[part]
        parent.pop(path[-1])
    used = AUTO_PICKS if cfg.data.between_source == "auto" else (cfg.data.between_source,)
    d["source"] = {k: v for k, v in d["source"].items() if k in used}
    return d
