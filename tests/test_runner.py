"""run_experiment called directly: reproducibility, reuse, and the recorded threshold."""

from __future__ import annotations

import pytest

from ambig_bench.keys import experiment_key
from ambig_bench.options import replace
from ambig_bench.runner import run_experiment
from tests.conftest import tiny_config


@pytest.mark.parametrize("strategy", ["reassign", "mixup"])  # targets redrawn / batches mixed from the seed
def test_same_seed_same_metrics_on_cpu(tmp_path, strategy):
    cfg = tiny_config(strategy=strategy, epochs=3)
    first = run_experiment(cfg, tmp_path / "a")
    second = run_experiment(cfg, tmp_path / "b")
    assert first.status == second.status == "done"
    assert first.metrics == {**second.metrics, "train_seconds": first.metrics["train_seconds"]}


def test_reuse_and_force(tmp_path):
    cfg = tiny_config(strategy="soft")
    assert run_experiment(cfg, tmp_path).status == "done"
    assert run_experiment(cfg, tmp_path).status == "reused"
    assert run_experiment(cfg, tmp_path, force=True).status == "done"
    # A different configuration is a different run, not a reuse.
    assert run_experiment(replace(cfg, epochs=3), tmp_path).status == "done"


def test_threshold_recorded_only_for_threshold_strategies(tmp_path):
    soft = run_experiment(tiny_config(strategy="soft"), tmp_path)
    extra = run_experiment(tiny_config(strategy="extra-class"), tmp_path)
    assert 0 < soft.metrics["threshold"] < 1
    assert extra.metrics["threshold"] is None


def test_data_dir_is_part_of_the_experiment_key():
    """For `folder` and `npz` the directory is the dataset: another directory must not reuse old runs."""
    assert experiment_key(tiny_config(data_dir="/a")) != experiment_key(tiny_config(data_dir="/b"))


def test_an_option_the_source_does_not_read_keeps_the_key():
    """Blend options do not change a human run's experiment (its finished runs are reused), but do a blend run's."""
    base = experiment_key(tiny_config(between_source="human"))
    assert experiment_key(tiny_config(between_source="human", blend_low=0.3)) == base
    assert experiment_key(tiny_config(blend_low=0.3)) != experiment_key(tiny_config())
    assert experiment_key(tiny_config(natural_folds=4)) == experiment_key(tiny_config())
    assert experiment_key(tiny_config(between_source="natural", natural_folds=4)) != experiment_key(
        tiny_config(between_source="natural"))


def test_unset_recipe_options_take_the_models_defaults_and_key_on_the_values():
    """None means "the model's default"; a saved config holds the value, and typing the default changes nothing."""
    cfg = tiny_config(batch_size=None)
    assert cfg.model.batch_size == 128 and cfg.model.width == 8
    assert experiment_key(tiny_config(batch_size=None)) == experiment_key(tiny_config(batch_size=128))


def test_the_image_policy_is_recorded_with_the_model(tmp_path):
    import json

    run = run_experiment(tiny_config(), tmp_path)
    policy = json.loads((run.run_dir / "model.json").read_text())["image_policy"]
    assert policy["size"] == [8, 8] and "centre square" in policy["resize"] and "EXIF" in policy["exif_orientation"]
