"""Which runs train together, what a wide network keeps of each run, and what the experiment key covers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ambig_bench import executors, runner
from ambig_bench.batched import widen
from ambig_bench.errors import UserError
from ambig_bench.executors import Sequential
from ambig_bench.imageio import fingerprint
from ambig_bench.keys import experiment_key, listed_images_key, run_name
from ambig_bench.locks import RunLock
from ambig_bench.models import build_network
from tests.conftest import tiny_config
from tests.test_hostile_input import hostile_data, png


def fresh_keys() -> None:
    fingerprint.cache_clear()
    listed_images_key.cache_clear()


def test_batching_is_decided_run_by_run_and_results_keep_their_order(tmp_path, monkeypatch):
    """A sweep may vary what decides batching (model, --freeze, --batch-runs): each run follows its own setting."""
    monkeypatch.setattr(executors, "batching_on", lambda cfg: cfg.strategy == "soft")
    runs = [tiny_config(strategy=s, seed=seed) for seed in (0, 1) for s in ("extra-class", "soft")]
    results = Sequential().run(runs, str(tmp_path), False, None, True)
    assert [r.run_dir.name for r in results] == [run_name(c) for c in runs]
    assert all(r.status == "done" for r in results)


def test_a_wide_network_keeps_each_layers_learning_rate_share():
    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    model = build_network("small-cnn", images, 10, 8)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.lr_share = 0.1  # --backbone-lr for layers that start from given weights
    wide_conv = next(m for m in widen([model, model]).modules() if isinstance(m, torch.nn.Conv2d))
    assert wide_conv.lr_share == 0.1


def test_a_run_that_cannot_be_prepared_gives_its_lock_back(tmp_path, monkeypatch):
    def broken(cfg):
        raise UserError("the data went away")

    monkeypatch.setattr(runner, "prepare_data", broken)
    cfg = tiny_config()
    with pytest.raises(UserError, match="went away"):
        runner.run_together([cfg], str(tmp_path), False, None, True)
    lock = RunLock(tmp_path / ".locks" / f"{run_name(cfg)}.lock")
    assert lock.acquire(wait=False), "the claim was released"
    lock.release()


def test_the_key_covers_the_listed_images_only_and_the_starting_weights(tmp_path):
    root = hostile_data(tmp_path)
    cfg = tiny_config(dataset="folder", labels=str(root / "labels.csv"))
    fresh_keys()
    before = experiment_key(cfg)
    (root / "results" / "figures").mkdir(parents=True)
    (root / "results" / "figures" / "bars.png").write_bytes(png(np.zeros((8, 8), np.uint8)))
    fresh_keys()
    assert experiment_key(cfg) == before, "a figure written beside the data is not the data"

    weights = tmp_path / "start.safetensors"
    save_file({"w": torch.zeros(2)}, weights)
    started = tiny_config(weights=str(weights))
    fresh_keys()
    first = experiment_key(started)
    save_file({"w": torch.ones(2)}, weights)  # the same path, other weights: another experiment
    fresh_keys()
    assert experiment_key(started) != first
