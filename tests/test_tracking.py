"""--track: runs land in a real local MLflow store and in TensorBoard event files, read back with their own readers.

Skipped when the optional extras are absent (`make install` installs them).
"""

from __future__ import annotations

import importlib.util
import logging
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from ambig_bench import api
from ambig_bench.cli import app
from ambig_bench.config import ExperimentConfig
from ambig_bench.errors import UserError
from ambig_bench.io import read_json
from tests.conftest import tiny_config

needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                  reason="MLflow is not installed (pip install 'ambig-bench[mlflow]')")
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="TensorBoard is not installed (pip install 'ambig-bench[tensorboard]')")


def experiment(out) -> ExperimentConfig:
    return ExperimentConfig(tiny_config(), ["soft", "extra-class"], 1, str(out))


@pytest.mark.slow
@needs_mlflow
def test_mlflow_gets_params_metrics_tags_and_files_and_reuse_adds_nothing(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "digits-test")
    client = MlflowClient(uri)
    # An existing experiment is used as it is (else MLflow would put its artifacts in ./mlruns, as it does).
    exp_id = client.create_experiment("digits-test", (tmp_path / "artifacts").as_uri())
    results = api.run(experiment(tmp_path / "out"), track="mlflow")
    runs = {r.info.run_name: r for r in client.search_runs([exp_id])}
    assert set(runs) == {r.run_dir.name for r in results}
    for result in results:
        logged = runs[result.run_dir.name]
        assert logged.info.status == "FINISHED"
        assert logged.data.params["strategy"] == result.config.strategy and logged.data.params["epochs"] == "2"
        assert logged.data.params["blend_low"] == "0.4" and logged.data.params["data_dir"] == "None"
        assert {k: logged.data.tags[k] for k in ("strategy", "seed", "dataset", "between_source")} == {
            "strategy": result.config.strategy, "seed": "0", "dataset": "digits", "between_source": "blend"}
        assert logged.data.metrics["clear_acc"] == pytest.approx(result.metrics["clear_acc"])
        history = client.get_metric_history(logged.info.run_id, "train_loss")
        saved = read_json(result.run_dir / "metrics.json")
        assert [m.step for m in history] == [1, 2] and saved["epochs"] == 2
        artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
        assert {"config.json", "metrics.json", "history.csv", "predictions.csv", "model.safetensors"} <= artifacts
    again = api.run(experiment(tmp_path / "out"), track="mlflow")
    assert {r.status for r in again} == {"reused"}
    assert len(client.search_runs([exp_id])) == 2  # reusing runs adds nothing


@pytest.mark.slow
@needs_mlflow
def test_mlflow_defaults_to_a_store_in_the_results_directory(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out = tmp_path / "grid"
    done = CliRunner().invoke(app, ["run", "--dataset", "digits", "--strategy", "soft", "--seeds", "1", "--epochs",
                                    "1", "--width", "8", "--device", "cpu", "--out", str(out), "--track", "mlflow"])
    assert done.exit_code == 0, done.output
    # MLflow's own log lines (creating the database tables) stay quiet without -v; the summary says where it went.
    assert "mlflow.store" not in done.stderr and "INFO" not in done.stderr
    assert logging.getLogger("mlflow.store.db.utils").getEffectiveLevel() == logging.WARNING
    assert f"tracked in MLflow {(out / 'mlflow.db').resolve()}. Next:" in " ".join(done.stderr.split())
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    [logged] = client.search_runs([client.get_experiment_by_name("ambig-bench/grid").experiment_id])
    assert (out / "mlartifacts").is_dir() and logged.data.tags["strategy"] == "soft"


@pytest.mark.slow
@needs_tensorboard
def test_tensorboard_writes_one_event_file_per_run(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = api.run(experiment(tmp_path), track="tensorboard")
    for result in results:
        [events] = (tmp_path / "tensorboard" / result.run_dir.name).glob("events.out.tfevents.*")
        reader = EventAccumulator(str(events))
        reader.Reload()
        history = pd.read_csv(result.run_dir / "history.csv")
        assert [e.step for e in reader.Scalars("train/loss")] == history.epoch.tolist() == [1, 2]
        assert [e.value for e in reader.Scalars("train/loss")] == pytest.approx(history.train_loss.tolist())
        assert reader.Scalars("final/clear_acc")[0].value == pytest.approx(result.metrics["clear_acc"])
    api.run(experiment(tmp_path), track="tensorboard")  # reused: nothing more written
    assert len(list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))) == len(results)


@pytest.mark.parametrize(("kind", "module", "extra"), [("mlflow", "mlflow", "mlflow"),
                                                         ("tensorboard", "torch.utils.tensorboard", "tensorboard")])
def test_a_missing_extra_is_one_line_before_anything_is_written(tmp_path, monkeypatch, kind, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # what `import` finds when the package is not installed
    done = CliRunner().invoke(app, ["run", "--strategy", "soft", "--seeds", "1", "--epochs", "1", "--out",
                                    str(tmp_path / "out"), "--track", kind])
    assert done.exit_code == 2
    assert f"pip install 'ambig-bench[{extra}]'" in done.output and done.output.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_an_unknown_tracker_is_refused(tmp_path):
    with pytest.raises(UserError, match="unknown tracker 'wandb'; choose from: mlflow, tensorboard"):
        api.run(experiment(tmp_path), track="wandb")


@pytest.mark.slow
@needs_tensorboard
def test_runs_trained_in_worker_processes_are_tracked_by_the_driver_and_show_their_epochs(tmp_path, capsys):
    results = api.run(experiment(tmp_path), jobs=2, track="tensorboard")
    assert {r.status for r in results} == {"done"}
    shown = capsys.readouterr().err.splitlines()  # not a terminal: one line per epoch and run, sent by the workers
    for r in results:
        assert [line for line in shown if line.startswith(f"{r.run_dir.name}: epoch ")] == [
            f"{r.run_dir.name}: epoch {e}/2, training loss {loss:.4f}"
            for e, loss in pd.read_csv(r.run_dir / "history.csv")[["epoch", "train_loss"]].itertuples(index=False)]
    assert sorted(p.parent.name for p in (tmp_path / "tensorboard").rglob("events.out.tfevents.*")) == \
        sorted(r.run_dir.name for r in results)


@pytest.mark.parametrize(("verbose", "level"), [(False, logging.WARNING), (True, logging.INFO)])
def test_the_tracking_libraries_log_lines_show_only_with_verbose(verbose, level):
    from ambig_bench.tracking import TRACKER_LOGGERS, quiet

    before = {name: logging.getLogger(name).level for name in TRACKER_LOGGERS}
    try:
        quiet(verbose)
        assert {logging.getLogger(name).getEffectiveLevel() for name in TRACKER_LOGGERS} == {level}
    finally:
        for name, old in before.items():
            logging.getLogger(name).setLevel(old)
