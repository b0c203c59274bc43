"""load_checkpoint: a saved run rebuilds the same model; anything that is not ours is refused, never unpickled."""

from __future__ import annotations

import json
import pickle
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from ambig_bench.checkpoint import FORMAT, load_checkpoint
from ambig_bench.errors import UserError
from ambig_bench.models import build_model
from ambig_bench.prepare import prepare_data
from ambig_bench.runner import run_experiment
from ambig_bench.train import predict_logits
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = tiny_config(strategy="soft")
    return cfg, run_experiment(cfg, tmp_path_factory.mktemp("checkpoint")).run_dir


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the trained run that a test may damage."""
    return shutil.copytree(trained[1], tmp_path / "run")


def test_loaded_model_reproduces_the_saved_test_predictions(trained):
    cfg, run_dir = trained
    model, meta, strategy = load_checkpoint(run_dir)
    test = prepare_data(cfg).subset("test")
    probs = strategy.class_probs(predict_logits(model, test.images, torch.device("cpu")))
    saved = pd.read_csv(run_dir / "predictions.csv").query("split == 'test'")
    k = len(meta["class_names"])
    assert torch.allclose(probs, torch.tensor(saved[[f"p_{i}" for i in range(k)]].to_numpy(), dtype=torch.float32),
                          atol=1e-5)
    assert meta["threshold"] == json.loads((run_dir / "metrics.json").read_text())["threshold"]
    assert strategy.name == "soft" and strategy.pairs == [(4, 9), (3, 8)] and not model.training


class RunsCode:
    """Unpickling this creates `marker`: proof that a pickle was (or was not) executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_disguised_as_safetensors_is_refused_unexecuted(run_copy, tmp_path, writer):
    marker = tmp_path / "executed"
    if writer == "pickle":
        (run_copy / "model.safetensors").write_bytes(pickle.dumps(RunsCode(marker)))
    else:
        torch.save({"payload": RunsCode(marker)}, run_copy / "model.safetensors")
    with pytest.raises(UserError, match="is a pickle.*refused") as caught:
        load_checkpoint(run_copy)
    assert "model.safetensors" in str(caught.value)
    assert not marker.exists()


def test_pickled_pt_checkpoint_is_refused(run_copy, tmp_path):
    marker = tmp_path / "executed"
    (run_copy / "model.safetensors").unlink()
    (run_copy / "model.pt").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(UserError, match=r"model\.pt: pickled checkpoints are refused"):
        load_checkpoint(run_copy)
    assert not marker.exists()


def test_weights_of_another_architecture_are_refused(run_copy):
    other = build_model("small-cnn", 3, 32, 10, 8).state_dict()  # an RGB 32×32 network, not the 8×8 grey one
    save_file(other, run_copy / "model.safetensors", metadata={"format": FORMAT})
    with pytest.raises(UserError, match="weights do not fit the small-cnn network"):
        load_checkpoint(run_copy)


def test_safetensors_from_another_program_are_refused(run_copy):
    model, _, _ = load_checkpoint(run_copy)
    save_file(model.state_dict(), run_copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="another program"):
        load_checkpoint(run_copy)


@pytest.mark.parametrize("edit, message", [
    (lambda meta: {**meta, "format": "someone-else/2"}, "not an ambig-bench model"),
    # Format 1 said "flip" and meant mirror views only: predicting it as this version would not match its run.
    (lambda meta: {**meta, "format": "ambig-bench-model/1"}, "another version of ambig-bench.*--force"),
    (lambda meta: {**meta, "tta": True}, "field 'tta' must be 0, 1 or 2"),
    (lambda meta: [meta], "not an ambig-bench model"),
    (lambda meta: {k: v for k, v in meta.items() if k != "image_size"}, "field 'image_size'"),
    (lambda meta: {**meta, "width": "wide"}, "field 'width'"),
    (lambda meta: {**meta, "pairs": [[4, 99]]}, "class indices below 10"),
    (lambda meta: {**meta, "strategy": "nope"}, "unknown strategy 'nope'"),
    (lambda meta: {**meta, "num_outputs": 12}, "has 10 outputs"),
])
def test_model_json_that_is_not_ours_is_refused(run_copy, edit, message):
    path = run_copy / "model.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(UserError, match=message) as caught:
        load_checkpoint(run_copy)
    assert "model.json" in str(caught.value)


def test_unfinished_run_directory(tmp_path):
    with pytest.raises(UserError, match="not a finished ambig-bench run"):
        load_checkpoint(tmp_path)
