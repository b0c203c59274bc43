"""Run options: flat names <-> the grouped config, model recipes, and sources that declare their own options."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ambig_bench import options
from ambig_bench.config import option
from ambig_bench.datasets import BETWEEN_SOURCES
from ambig_bench.errors import UserError
from ambig_bench.keys import experiment_key
from ambig_bench.models import MODELS


def test_every_option_has_one_flat_name_help_and_a_home():
    table = options.table()
    assert {"lr", "model", "epochs", "between_fraction", "natural_folds", "device"} <= set(table)
    assert all(opt.help for opt in table.values()), "every option documents itself (its CLI help)"
    assert table["model"].path == ("model", "name") and table["blend_low"].path == ("source", "blend", "blend_low")
    cfg = options.build({"lr": 0.01, "blend_low": 0.3, "epochs": 4})
    assert (options.get(cfg, "lr"), options.get(cfg, "blend_low"), options.get(cfg, "epochs")) == (0.01, 0.3, 4)


@pytest.mark.parametrize("model", MODELS.names())
def test_unset_recipe_fields_come_from_the_models_registry_entry(model):
    cfg = options.build({"model": model})
    recipe = MODELS.get(model).recipe.option_defaults()
    assert {k: options.get(cfg, k) for k in recipe} == recipe


def test_changing_the_model_brings_its_own_recipe_but_keeps_what_was_typed():
    small = options.build({"lr": 0.01})
    fast = options.replace(small, model="fast-cifar")
    assert fast.model.batch_size == MODELS.get("fast-cifar").recipe.batch_size
    assert fast.model.lr == MODELS.get("fast-cifar").recipe.lr, "the old model's filled-in lr is not carried over"


def test_bad_values_are_one_line_errors_naming_the_option():
    with pytest.raises(UserError, match="'epochs': True is not a valid int"):
        options.build({"epochs": True})
    with pytest.raises(UserError, match="unknown option 'nope'"):
        options.build({"nope": 1})
    with pytest.raises(UserError, match=r"unknown option 'blend-lo'; did you mean 'blend-low'\?"):
        options.build({"blend_lo": 0.2})  # the nearest flat name, as the CLI suggests the nearest flag
    with pytest.raises(UserError, match="--epochs must be at most 9223372036854775807"):
        options.build({"epochs": 2**64})  # bounded to 64 bits before any check uses it
    with pytest.raises(UserError, match="--blend-low/--blend-high"):
        options.build({"blend_low": 0.9, "blend_high": 0.1})


def test_a_new_source_is_one_declaration_with_its_own_options():
    @dataclass
    class EchoOptions:
        echo_level: int = option(3, "echo: how loud")

        def validate(self) -> None:
            if self.echo_level < 0:
                raise UserError("--echo-level must be >= 0")

    BETWEEN_SOURCES.register("echo", options=EchoOptions)(lambda raw, pairs, ctx: None)
    options.table.cache_clear()
    try:
        assert options.table()["echo_level"].path == ("source", "echo", "echo_level")
        cfg = options.build({"between_source": "echo", "echo_level": 5})
        assert cfg.source["echo"] == {"echo_level": 5}
        # Its option is part of its own runs' experiment, and of no other source's runs.
        assert experiment_key(cfg) != experiment_key(options.build({"between_source": "echo"}))
        blend = {"between_source": "blend"}
        assert experiment_key(options.build({**blend, "echo_level": 5})) == experiment_key(options.build(blend))
        with pytest.raises(UserError, match="--echo-level must be >= 0"):
            options.build({"echo_level": -1})
    finally:
        BETWEEN_SOURCES._items.pop("echo")
        BETWEEN_SOURCES._options.pop("echo")
        options.table.cache_clear()


def test_a_strategys_own_options_name_its_runs_but_leave_the_experiment_alone():
    """Runs of every strategy must compare within one experiment, so a strategy's options stay out of the key;
    they are recorded in config.json and tell runs of that strategy apart (run name, compare's strategy column)."""
    from ambig_bench.keys import run_name

    default = options.build({"strategy": "label-smoothing"})
    strong = options.build({"strategy": "label-smoothing", "smoothing_eps": 0.3})
    soft_with = options.build({"strategy": "soft", "smoothing_eps": 0.3})
    assert options.table()["smoothing_eps"].path == ("strategy_options", "label-smoothing", "smoothing_eps")
    assert strong.to_dict()["strategy_options"]["label-smoothing"] == {"smoothing_eps": 0.3}
    assert options.strategy_options(strong).smoothing_eps == 0.3 and options.strategy_options(soft_with) is None
    assert len({experiment_key(c) for c in (default, strong, soft_with, options.build({}))}) == 1
    assert run_name(default) == f"label-smoothing-seed0-{experiment_key(default)}"
    assert run_name(strong) == f"label-smoothing@smoothing-eps=0.3-seed0-{experiment_key(default)}"
    assert run_name(soft_with) == run_name(options.build({})), "another strategy's option changes nothing of soft's"
    assert "smoothing_eps" in options.outside_experiment()
    with pytest.raises(UserError, match="--smoothing-eps must be in"):
        options.build({"smoothing_eps": 1.5})
    with pytest.raises(UserError, match="--mixup-alpha must be > 0"):
        options.build({"mixup_alpha": 0})
