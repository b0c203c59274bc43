"""An experiment from its parts: defaults < a TOML file (or a dict of the same keys) < options given directly.

The CLI (`--config exp.toml --epochs 5`) and the Python API (`ambig_bench.experiment(...)`) both build their
grids here. Strategy names are checked against the catalogue first, so a typo is reported before torch loads.

>>> exp = experiment({"strategies": ["soft", "hard"], "epochs": 4}, seeds=2, epochs=6)  # doctest: +SKIP
>>> exp.strategies, exp.seeds, exp.run.train.epochs, exp.out  # doctest: +SKIP
(['soft', 'hard'], 2, 6, 'results/digits')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ambig_bench.catalogue import catalogue
from ambig_bench.config import MAX_SEEDS, ExperimentConfig, check_between, load_toml
from ambig_bench.errors import UserError
from ambig_bench.registry import parse_names
from ambig_bench.shown import brief


def experiment(config: str | Path | dict | None = None, *, strategies: str | Sequence[str] | None = None,
               seeds: int | None = None, seed: int | None = None, out: str | Path | None = None,
               force: bool = False, **options: Any) -> ExperimentConfig:
    """A checked experiment: defaults < `config` (a TOML file, as `--config`, or a dict of its keys) < keyword
    options (flat run-option names: epochs=5, between_fraction=0.1, model="fast-cifar"; None = not given)."""
    if isinstance(config, dict):
        values, where = {k.replace("-", "_"): v for k, v in config.items()}, "config: "
    else:
        values = load_toml(config, catalogue()["options"]) if config else {}
        where = f"{config}: " if config else ""
    file_strategies = values.pop("strategies", None) or values.pop("strategy", "soft")
    values.pop("strategy", None)
    if isinstance(file_strategies, list) and all(isinstance(s, str) for s in file_strategies):
        file_strategies = ",".join(file_strategies)
    if not isinstance(file_strategies, str):
        raise UserError(f"{where}'strategies' must be a list of strategy names, got {brief(file_strategies)}")
    file_seeds, file_out = values.pop("seeds", 3), values.pop("out", None)
    if isinstance(file_seeds, bool) or not isinstance(file_seeds, int):
        raise UserError(f"{where}'seeds' must be an integer, got {brief(file_seeds)}")
    if file_out is not None and (not isinstance(file_out, str) or not file_out.strip()):
        raise UserError(f"{where}'out' must be a directory path, got {brief(file_out)}")
    if out is not None and not str(out).strip():  # '' would silently mean the default directory
        raise UserError("--out is empty; give the results directory")
    n_seeds = seeds if seeds is not None else file_seeds
    check_between("seeds", n_seeds, 1, MAX_SEEDS)
    given = strategies if strategies is None or isinstance(strategies, str) else ",".join(strategies)
    names = parse_names(given or file_strategies, list(catalogue()["strategies"]), "strategy")
    values.update({k: v for k, v in options.items() if v is not None})
    if seed is not None:
        values["seed"] = seed
    from ambig_bench.options import build  # imports the registries, and with them torch: after the checks above

    run = build(values)
    # Each dataset gets its own results directory by default, so a quick run never mixes with the demo's.
    result_dir = str(out or file_out or f"results/{run.data.dataset}")
    return ExperimentConfig(run, names, n_seeds, result_dir, force, values)
