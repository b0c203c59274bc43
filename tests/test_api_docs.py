"""docs/api.md runs: its python blocks, top to bottom in one namespace, in a fresh directory; and the API's names
are the package's (loaded lazily, without importing torch)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ambig_bench
from ambig_bench import api

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


@pytest.mark.slow
def test_the_api_page_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(ROOT / "docs" / "api.md")
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr()
    assert "unknown strategy 'sofft'" in printed.out
    assert {r.status for r in namespace["results"]} == {"done"} and len(namespace["runs"]) == 4
    assert min(r.metrics["clear_acc"] for r in namespace["results"]) >= 0.9, "the example trains networks that work"
    assert "[4/4] done" in printed.err, "progress is shown by default (plain lines: stderr is not a terminal)"
    assert len(re.findall(r"^\S+-seed\d-\S+ done ", printed.out, re.M)) == 4, "statuses print as words"
    assert (tmp_path / "results" / "notebook" / "comparison.csv").exists()
    with pytest.raises(ambig_bench.UserError, match=r"images must be uint8 N×1×8×8 .*got torch.uint8 \(2, 5, 5\)"):
        namespace["predictor"].predict_arrays(np.zeros((2, 5, 5), np.uint8))
    # A dict is a --config file's content; keyword options override it.
    exp = ambig_bench.experiment({"strategies": ["hard"], "epochs": 4, "blend-low": 0.3}, epochs=6)
    assert (exp.strategies, exp.run.train.epochs, exp.run.source["blend"]["blend_low"]) == (["hard"], 6, 0.3)


def test_the_package_exports_the_api_lazily():
    assert sorted(ambig_bench.API) == sorted(api.__all__)
    assert all(getattr(ambig_bench, name) is getattr(api, name) for name in api.__all__)
    code = "import sys, ambig_bench; assert 'torch' not in sys.modules and 'ambig_bench.api' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT).returncode == 0


@pytest.mark.slow
def test_a_sweep_from_python(tmp_path):
    exp = ambig_bench.experiment(strategies="soft", seeds=1, out=tmp_path, epochs=1, width=8, device="cpu",
                                 test_between_per_pair=20, val_between_per_pair=10)
    swept = ambig_bench.run_sweep({"between_fraction": [0.02, 0.2]}, exp)
    assert [r.config.source["blend"]["between_fraction"] for r in swept.runs] == [0.02, 0.2]
    assert [p.name for p in swept.figures] == ["sweep-between-fraction.png"]
