"""Which runs train together, what a wide network keeps of each run, and what the experiment key covers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ambig_bench import options, prepare, runner
from ambig_bench.batched import widen
from ambig_bench.config import option
from ambig_bench.errors import UserError
from ambig_bench.executors import Sequential
from ambig_bench.imageio import fingerprint
from ambig_bench.keys import V1, experiment_key, key_content, listed_images_key, run_name
from ambig_bench.locks import RunLock
from ambig_bench.models import build_network
from tests.conftest import tiny_config
from tests.test_hostile_input import hostile_data, png


def fresh_keys() -> None:
    fingerprint.cache_clear()
    listed_images_key.cache_clear()


@pytest.mark.slow
def test_batching_is_decided_run_by_run_and_results_keep_their_order(tmp_path, monkeypatch):
    """A sweep may vary what decides batching (model, --freeze, --batch-runs): each run follows its own setting."""
    monkeypatch.setattr(runner, "batching_on", lambda cfg: cfg.strategy == "soft")
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

    monkeypatch.setattr(prepare, "prepare_data", broken)
    cfg = tiny_config()
    with pytest.raises(UserError, match="went away"):
        Sequential().run([cfg], str(tmp_path), False, None, True)
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


# -- a stable experiment key -----------------------------------------------------------------------------------
# Keys that release 0.1.0 gave these options (tests/fixtures/results-0.1.0 holds runs of the second): an upgrade of
# the tool must find the runs it finished.
RELEASE_0_1_0_KEYS = {
    (): "97258e27",
    (("epochs", 1), ("width", 4)): "ad8e9cb4",
    (("model", "fast-cifar"),): "609e577f",
    (("model", "resnet18"),): "d5ed8002",
    # Fine-tuning from pretrained weights now stops early by default (a new computation, a new key); asked for
    # without early stopping, it is the run release 0.1.0 computed.
    (("model", "resnet18"), ("pretrained", True), ("early_stopping", "off")): "4aa3aeda",
    (("between_source", "human"),): "4db1e7c5",
    (("between_source", "natural"), ("natural_folds", 4)): "f861251c",
    (("augment", "on"), ("translate", 3)): "96b42870",
    (("crop_scale", 0.5), ("schedule", "cosine"), ("lookahead", "on")): "0f1e2760",
    (("image_size", 16), ("train_size", 100), ("val_fraction", 0.2)): "94012be9",
}


@pytest.mark.parametrize("given", RELEASE_0_1_0_KEYS)
def test_keys_are_those_of_release_0_1_0(given):
    assert experiment_key(options.build(dict(given))) == RELEASE_0_1_0_KEYS[given]


def test_the_key_holds_each_option_at_its_frozen_place():
    content = key_content(options.build({"between_source": "human"}))
    assert set(content) == {"data", "source", "model", "train"} and content["source"] == {}
    assert content["model"]["name"] == "small-cnn" and content["train"] == {"epochs": 20, "augment": "auto",
                                                                           "translate": 2}
    assert set(V1) - set(options.table()) == set(), "every option of the frozen layout is still a run option"


@pytest.fixture
def blend_with_a_new_option():
    """The blend source as a later release might have it: one more option, whose default reproduces today's runs."""
    from ambig_bench.datasets import BETWEEN_SOURCES
    from ambig_bench.datasets.blend import BlendOptions

    curve = option("linear", "blend: how the two images are mixed", choices=("linear", "cubic"))
    extended = dataclasses.make_dataclass("BlendOptions", [("blend_curve", str, curve)], bases=(BlendOptions,))
    BETWEEN_SOURCES._options["blend"] = extended
    options.table.cache_clear()
    yield
    BETWEEN_SOURCES._options["blend"] = BlendOptions
    options.table.cache_clear()


def test_a_new_option_at_its_neutral_value_keeps_every_key(blend_with_a_new_option):
    for given, key in RELEASE_0_1_0_KEYS.items():
        assert experiment_key(options.build(dict(given))) == key
    assert options.build({}).source["blend"]["blend_curve"] == "linear", "config.json records the new option"


def test_a_new_option_that_changes_runs_changes_the_key(blend_with_a_new_option):
    assert experiment_key(options.build({"blend_curve": "cubic"})) != RELEASE_0_1_0_KEYS[()]
    human = (("between_source", "human"),)
    assert experiment_key(options.build({**dict(human), "blend_curve": "cubic"})) == RELEASE_0_1_0_KEYS[human], \
        "an option of a source the run does not use"
    assert experiment_key(options.build({"lr": 0.01})) != RELEASE_0_1_0_KEYS[()], "an option of release 0.1.0"


def test_early_stopping_re_keys_only_the_runs_whose_computation_it_changes():
    fine_tune = {"model": "resnet18", "pretrained": True}
    assert experiment_key(options.build(fine_tune)) != experiment_key(options.build({**fine_tune,
                                                                                     "early_stopping": "off"}))
    for given in ({}, {"model": "resnet18", "pretrained": True, "freeze": True}):  # off under auto: as before
        assert experiment_key(options.build({**given, "early_stopping": "off"})) == experiment_key(
            options.build(given))
    assert experiment_key(options.build({"early_stopping": "on"})) != RELEASE_0_1_0_KEYS[()]
