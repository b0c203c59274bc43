"""Runs finished by an earlier release of the tool are reused, not retrained.

`tests/fixtures/results-0.1.0` is a results directory written by release 0.1.0:

    ambig-bench run --dataset digits --strategy soft,extra-class --seeds 1 --epochs 1 --width 4

A change that re-keys finished runs (a new option, a moved config field, a different hash) makes every user's
grid retrain after an upgrade; this test fails instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from ambig_bench.cli import app

FIXTURE = Path(__file__).parent / "fixtures" / "results-0.1.0"
COMMAND = ["run", "--dataset", "digits", "--strategy", "soft,extra-class", "--seeds", "1", "--epochs", "1",
           "--width", "4"]


def snapshot(runs: Path) -> dict[str, int]:
    """Every file under runs/ by relative path, with its modification time in nanoseconds."""
    return {str(p.relative_to(runs)): p.stat().st_mtime_ns for p in sorted(runs.rglob("*")) if p.is_file()}


def test_runs_of_release_0_1_0_are_reused(tmp_path):
    out = tmp_path / "results"
    shutil.copytree(FIXTURE, out)
    before = snapshot(out / "runs")
    ran = CliRunner().invoke(app, [*COMMAND, "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    assert snapshot(out / "runs") == before  # nothing retrained, rewritten or added


def test_runs_of_release_0_1_0_compare(tmp_path):
    out = tmp_path / "results"
    shutil.copytree(FIXTURE, out)
    compared = CliRunner().invoke(app, ["compare", str(out), "--format", "json"])
    assert compared.exit_code == 0, compared.output
    assert '"extra-class"' in compared.stdout and '"soft"' in compared.stdout
