"""What a new user meets first: output that fits the terminal, checked names, honest intervals, sane defaults."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from ambig_bench import cli
from ambig_bench.compare import compare, fmt
from ambig_bench.metrics import METRICS
from tests.test_compare import fake_run
from tests.test_report import fake_run as full_fake_run


def planted(out: Path) -> None:
    """hard's clear_acc is 0.05 below soft's in each of 7 seeds: enough seeds for a paired test to say so."""
    for seed in range(7):
        fake_run(out, "soft", seed, {"clear_acc": 0.9 + seed / 100, "between_set_acc": 0.80})
        fake_run(out, "hard", seed, {"clear_acc": 0.85 + seed / 100, "between_set_acc": 0.10 + seed / 100})


def test_compare_table_fits_80_columns_and_wide_shows_every_metric(tmp_path, monkeypatch):
    planted(tmp_path)
    console = Console(force_terminal=True, width=80, record=True)
    monkeypatch.setattr(cli, "out", console)
    result = CliRunner().invoke(cli.app, ["compare", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    # hard's clear_acc is 0.05 below soft's in every seed: the table marks it, a sentence says it.
    assert "0.880 ▼" in text and "hard vs soft: worse on clear_acc (-0.050)" in text
    assert all(strategy in text for strategy in ("soft", "hard"))
    wide = CliRunner().invoke(cli.app, ["compare", str(tmp_path), "--wide"])
    header = wide.stdout.splitlines()[0]
    # human_ce only where the images have votes; these planted runs have none.
    assert all(f"| {name} |" in header for name in METRICS if name != "human_ce"), header


def test_piped_compare_prints_markdown_with_the_verdicts(tmp_path):
    planted(tmp_path)
    result = CliRunner().invoke(cli.app, ["compare", str(tmp_path)])
    assert result.exit_code == 0
    assert result.stdout.startswith("| strategy | n | clear_acc |")
    assert "hard vs soft: worse on clear_acc" in result.stdout


@pytest.mark.parametrize("command", ["compare", "report"])
def test_an_unknown_baseline_is_one_line_naming_the_strategies_present(tmp_path, command):
    planted(tmp_path)
    result = CliRunner().invoke(cli.app, [command, str(tmp_path), "--baseline", "sotf"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--baseline sotf" in lines[0] and "hard, soft" in lines[0], result.stderr
    assert not (tmp_path / "paired.csv").exists(), "nothing is written for a typo"


def test_intervals_stay_inside_the_metric_range_and_need_three_seeds(tmp_path):
    for seed, value in enumerate([0.97, 1.0, 1.0]):
        fake_run(tmp_path, "soft", seed, {"clear_acc": value})
    for seed, value in enumerate([0.75, 0.78]):
        fake_run(tmp_path, "hard", seed, {"clear_acc": value})
    summary = compare(tmp_path).summary.set_index("strategy")
    assert summary.loc["soft", "clear_acc_ci_high"] == 1.0 and summary.loc["soft", "clear_acc_ci_low"] < 0.99
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert (table.filter(like="clear_acc_ci").dropna() <= 1).all().all()
    markdown = (tmp_path / "comparison.md").read_text()
    assert "0.990 [" in markdown and ", 1.000]" in markdown, "a clipped interval is shown as its bounds"
    assert "0.765 (n too small)" in markdown, "two seeds give no interval worth showing"
    assert fmt(0.5, 0.4, 0.6) == "0.500 [0.400, 0.600]" and fmt(0.5, float("nan"), float("nan"), 1) == "0.500"


@pytest.mark.slow
def test_a_one_strategy_report_says_there_is_nothing_to_compare(tmp_path):
    for seed in range(3):
        full_fake_run(tmp_path, "hard", seed, {})
    result = CliRunner().invoke(cli.app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report.md").read_text()
    assert "Only one strategy has runs here, so there is nothing to compare" in report
    assert "0 comparisons" not in report and "can reach significance" not in report


def test_run_without_out_writes_to_a_directory_of_its_dataset_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["run", "--strategy", "soft", "--seeds", "1", "--epochs", "1", "--width", "8", "--device", "cpu",
            "--test-between-per-pair", "20", "--val-between-per-pair", "10"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert len(list(Path("results/digits/runs").iterdir())) == 1 and not Path("results/demo").exists()
    assert "results go to results/digits" in result.stderr


def test_shell_completion_is_offered():
    # Rich fits the option table to the terminal and cuts long option names in a narrow one: render it wide.
    result = CliRunner().invoke(cli.app, ["--help"], env={"COLUMNS": "1000"})
    assert "--install-completion" in result.output


def test_usage_errors_are_one_line_too():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "ambig_bench.cli", "run", "--epochs", "many"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--epochs" in lines[0], done.stderr
