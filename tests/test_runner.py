"""run_experiment called directly: reproducibility, reuse, and the recorded threshold."""

from __future__ import annotations

import dataclasses

from ambig_bench.runner import run_experiment
from tests.conftest import tiny_config


def test_same_seed_same_metrics_on_cpu(tmp_path):
    cfg = tiny_config(strategy="reassign", epochs=3)
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
    assert run_experiment(dataclasses.replace(cfg, epochs=3), tmp_path).status == "done"


def test_threshold_recorded_only_for_threshold_strategies(tmp_path):
    soft = run_experiment(tiny_config(strategy="soft"), tmp_path)
    extra = run_experiment(tiny_config(strategy="extra-class"), tmp_path)
    assert 0 < soft.metrics["threshold"] < 1
    assert extra.metrics["threshold"] is None


def test_data_dir_is_part_of_the_experiment_key():
    """For `folder` and `npz` the directory is the dataset: another directory must not reuse old runs."""
    assert tiny_config(data_dir="/a").key() != tiny_config(data_dir="/b").key()
