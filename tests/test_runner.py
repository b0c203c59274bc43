"""The run pipeline called directly: reproducibility, reuse, the recorded threshold, what it reads and what it
releases, and what prepare hands to training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ambig_bench.keys import experiment_key, run_name
from ambig_bench.locks import RunLock
from ambig_bench.models import head_name
from ambig_bench.options import replace
from ambig_bench.prepare import group_of, groups_of, prepare_run
from ambig_bench.runner import run_experiment, run_pipeline
from tests.conftest import tiny_config


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["reassign", "mixup"])  # targets redrawn / batches mixed from the seed
def test_same_seed_same_metrics_on_cpu(tmp_path, strategy):
    cfg = tiny_config(strategy=strategy, epochs=3)
    first = run_experiment(cfg, tmp_path / "a")
    second = run_experiment(cfg, tmp_path / "b")
    assert first.status == second.status == "done"
    assert first.metrics == {**second.metrics, "train_seconds": first.metrics["train_seconds"]}


@pytest.mark.slow
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


def test_the_labels_csv_is_read_once_for_the_data_of_every_run(tmp_path, monkeypatch):
    """Preflight's data serve the runs: one read for the data of both seeds, one for the experiment key's
    fingerprint of the images the CSV lists (4 reads when preflight and every seed loaded the data again)."""
    import csv

    from typer.testing import CliRunner

    from ambig_bench.cli import app
    from ambig_bench.datasets import folder
    from tests.test_hostile_input import png

    rng = np.random.default_rng(0)
    rows = []
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(30):
            (tmp_path / name / f"{i}.png").write_bytes(png(rng.integers(0, 256, (8, 8), dtype=np.uint8)))
            rows.append([f"{name}/{i}.png", name])
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["file", "label"], *rows])
    reads = []
    real = folder.read_labels_csv

    def counted(*args, **kwargs):
        reads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(folder, "read_labels_csv", counted)
    result = CliRunner().invoke(app, ["run", "--dataset", "folder", "--labels", str(tmp_path / "labels.csv"),
                                      "--pairs", "cat:dog", "--strategy", "soft,hard", "--seeds", "2", "--epochs", "1",
                                      "--width", "4", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out" / "runs").glob("*-seed*"))) == 4
    assert len(reads) == 2


class Failing:
    """A placement that trains nothing: every run fails with its name, or `next_done` raises."""

    slots = 1

    def __init__(self, raises: bool = False) -> None:
        self.raises, self.started, self.stopped = raises, [], False

    def together(self, cfg) -> bool:
        return False

    def start(self, claims) -> None:
        self.started.append(claims)

    def busy(self) -> int:
        return len(self.started)

    def next_done(self):
        claims = self.started.pop(0)
        if self.raises:
            raise KeyboardInterrupt
        return [(claim, f"failed {claim.run_dir.name}") for claim in claims]

    def stop(self) -> None:
        self.stopped = True


def test_the_pipeline_saves_what_the_placement_gives_back(tmp_path):
    runs = [tiny_config(strategy=s) for s in ("soft", "hard")]
    where = Failing()
    results = run_pipeline(runs, tmp_path, False, None, True, where)
    assert [r.status for r in results] == ["failed", "failed"]
    assert [r.error for r in results] == [f"failed {run_name(c)}" for c in runs], "each outcome to its own run"
    assert [r.status for r in run_pipeline(runs, tmp_path, False, None, True, Failing())] == ["failed"] * 2, \
        "a failed run is claimed again"


def test_an_interrupted_pipeline_releases_its_claims(tmp_path):
    cfg = tiny_config()
    where = Failing(raises=True)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline([cfg], tmp_path, False, None, True, where)
    assert where.stopped
    lock = RunLock(tmp_path / ".locks" / f"{run_name(cfg)}.lock")
    assert lock.acquire(wait=False), "the claim was released"
    lock.release()
    assert not (tmp_path / "runs" / run_name(cfg)).exists()


def test_what_trains_is_a_variant_of_the_prepared_run():
    import dataclasses

    cpu = torch.device("cpu")
    plain = prepare_run(tiny_config(), cpu)
    assert plain.trainable is plain.model and plain.inputs is plain.data and plain.recipe == plain.config
    compiled = prepare_run(tiny_config(compile=True), cpu)
    assert compiled.trainable._orig_mod is compiled.model
    cfg = tiny_config(augment="on")
    frozen_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, freeze=True))
    frozen = prepare_run(frozen_cfg, cpu)
    head = frozen.model[1].get_submodule(head_name(frozen.model[1]))
    assert frozen.trainable[1] is head, "the head trains over the features, and it is the network's own"
    n, width = len(frozen.data), head.in_features
    assert tuple(frozen.inputs.images.shape) == (n, width, 1, 1) and torch.equal(frozen.inputs.label_a,
                                                                                   frozen.data.label_a)
    assert frozen.recipe.train.augment == "off" and frozen.config.train.augment == "on"


def test_a_group_of_one_trains_the_run_itself_and_a_larger_one_a_wide_network():
    cpu = torch.device("cpu")
    runs = [prepare_run(tiny_config(strategy=s, batch_runs="on"), cpu) for s in ("soft", "hard", "extra-class")]
    assert group_of(runs[:1], cpu).module is runs[0].trainable
    groups = groups_of(runs, cpu)
    assert [[run.config.strategy for run in g.runs] for g in groups] == [["soft", "hard"], ["extra-class"]], \
        "extra-class has one more output: a shape of its own"
    convs = [m for m in groups[0].module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(conv.groups == 2 for conv in convs)
    assert groups[1].module is runs[2].trainable
