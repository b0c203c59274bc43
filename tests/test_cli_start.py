"""The CLI answers --help, the listings and argument errors without importing torch, pandas or matplotlib.

Speed itself is measured by benchmarks/cli_start.py, not asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ambig_bench import catalogue

HEAVY = ("torch", "pandas", "matplotlib", "numpy", "PIL", "sklearn")

PROBE = """
import json, sys
from typer.testing import CliRunner
from ambig_bench.cli import app
codes = [CliRunner().invoke(app, args).exit_code for args in
         (["--help"], ["run", "--help"], ["strategies"], ["datasets"], ["models"], ["run", "--strategy", "nope"],
          ["run", "--epochs", "many"], ["compare", "--help"])]
print(json.dumps({"codes": codes, "heavy": [m for m in %r if m in sys.modules]}))
"""


@pytest.mark.slow
def test_help_listings_and_argument_errors_import_nothing_heavy(tmp_path):
    env = {**os.environ, "AMBIG_BENCH_CACHE": str(tmp_path)}
    # The first command builds the catalogue (importing the registries); every later one reads it.
    subprocess.run([sys.executable, "-m", "ambig_bench.cli", "strategies"], env=env, check=True, capture_output=True)
    assert list(tmp_path.glob("catalogue-*.json"))
    done = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,)], env=env, capture_output=True, text=True,
                          check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0, 0, 0, 0, 0, 2, 2, 0]
    assert report["heavy"] == []


def test_the_catalogue_describes_the_registries_and_follows_source_edits(tmp_path, monkeypatch):
    from ambig_bench.options import table
    from ambig_bench.strategies import STRATEGIES

    built = catalogue.build()
    assert built["strategies"] == STRATEGIES.describe()
    assert [o["flag"] for o in built["options"]] == list(table())
    source = tmp_path / "mine.py"
    source.write_text("x = 1\n")
    monkeypatch.setattr(catalogue, "source_files", lambda: [source])
    before = catalogue.fingerprint()
    source.write_text("x = 22\n")  # a strategy file edited or added: the catalogue is rebuilt
    assert catalogue.fingerprint() != before
    assert json.loads(json.dumps(built)) == built, "the catalogue is plain JSON"
