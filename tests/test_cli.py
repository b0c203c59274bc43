"""The command line through Typer's CliRunner: listings, bad options, and one tiny end-to-end grid."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from ambig_bench.cli import app
from ambig_bench.metrics import METRICS
from ambig_bench.strategies import STRATEGIES

runner = CliRunner()
TINY = ["--epochs", "2", "--width", "8", "--test-between-per-pair", "20", "--val-between-per-pair", "10",
        "--device", "cpu"]


def test_strategies_lists_every_registered_name():
    result = runner.invoke(app, ["strategies"])
    assert result.exit_code == 0
    for name in STRATEGIES.names():
        assert name in result.stdout


def test_datasets_lists_digits_and_blend():
    result = runner.invoke(app, ["datasets"])
    assert result.exit_code == 0 and "digits" in result.stdout and "blend" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--strategy", "nope"], "unknown strategy 'nope'"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--pairs", "4-9"], "malformed pair"),
    (["--pairs", "4:4"], "with itself"),
    (["--between-fraction", "1.5"], "--between-fraction must be in (0, 1)"),
    (["--between-fraction", "0"], "--between-fraction must be in (0, 1)"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--model", "resnet9000"], "unknown model"),
])
def test_bad_options_give_one_line_and_exit_2(tmp_path, args, message):
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--out", str(out), *TINY, *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists(), "bad input writes nothing"


def test_malformed_config_file(tmp_path):
    bad = tmp_path / "exp.toml"
    bad.write_text("epochs = [unclosed\n")
    result = runner.invoke(app, ["run", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "malformed TOML" in result.stderr and str(bad) in result.stderr


@pytest.mark.slow
def test_run_then_compare_end_to_end(tmp_path):
    out = tmp_path / "demo"
    config = tmp_path / "exp.toml"
    config.write_text('strategies = ["soft", "extra-class"]\nseeds = 2\nepochs = 5\n')
    result = runner.invoke(app, ["run", "--config", str(config), "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    # stderr is not a terminal here: progress comes as plain lines a log file can hold.
    assert "epoch 2/2, training loss" in result.stderr and "\n[4/4] done " in result.stderr
    assert f"Next: ambig-bench compare {out}" in result.stderr, "a path is never broken across lines"
    runs = sorted(p for p in (out / "runs").iterdir())
    assert len(runs) == 4
    for run_dir in runs:
        for name in ("config.json", "data.json", "env.json", "history.csv", "metrics.json", "predictions.csv",
                     "model.safetensors", "model.json", "DONE"):
            assert (run_dir / name).exists(), (run_dir, name)
        cfg = json.loads((run_dir / "config.json").read_text())
        assert cfg["train"]["epochs"] == 2, "the command line overrides the config file"
        preds = pd.read_csv(run_dir / "predictions.csv")
        assert set(preds.split) == {"val", "test"} and {"p_0", "p_9", "pred_set", "ambiguity"} <= set(preds)
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    assert set(METRICS) <= set(metrics)

    result = runner.invoke(app, ["compare", str(out), "--baseline", "soft"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "comparison.csv")
    assert list(table.strategy) == ["extra-class", "soft"] and list(table.n_seeds) == [2, 2]
    for m in METRICS:
        assert {f"{m}_mean", f"{m}_ci_low", f"{m}_ci_high"} <= set(table.columns)
    assert (out / "comparison.md").read_text().startswith("# Comparison of strategies")
    assert "extra-class" in result.stdout

    # The same command again reuses every finished run instead of training.
    again = runner.invoke(app, ["run", "--config", str(config), "--out", str(out), *TINY])
    assert again.exit_code == 0 and "(4 reused)" in again.stderr


def test_compare_on_missing_directory(tmp_path):
    result = runner.invoke(app, ["compare", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "not found" in result.stderr


def test_predict_command_exit_codes(tmp_path):
    from PIL import Image

    out = tmp_path / "demo"
    assert runner.invoke(app, ["run", "--strategy", "soft", "--seeds", "1", "--out", str(out), *TINY]).exit_code == 0
    run_dir = next((out / "runs").iterdir())
    Image.new("L", (8, 8), 128).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_text("no")
    ok = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "a.png"), "--format", "csv"])
    assert ok.exit_code == 0 and ok.stdout.startswith("path,decision")
    some = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "a.png"), str(tmp_path / "bad.png")])
    assert some.exit_code == 1 and "bad.png" in some.stderr
    assert runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "bad.png")]).exit_code == 2
