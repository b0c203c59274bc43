"""Run directories: listing a results directory, reading a run back, writing one whole. No training."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from ambig_bench.analysis import analyse
from ambig_bench.errors import UserError
from ambig_bench.metrics import METRICS
from ambig_bench.rundir import RunDir, RunRecord, list_runs
from tests.fake_runs import fake_run_dir

FIXTURE = Path(__file__).parent / "fixtures" / "results-0.1.0"


def finished(out: Path, strategy: str, seed: int) -> Path:
    run_dir, _ = fake_run_dir(out, strategy, seed, between_source="blend")
    (run_dir / "metrics.json").write_text(json.dumps({m: 0.5 for m in METRICS} | {"human_ce": math.nan}))
    (run_dir / "DONE").write_text("")
    return run_dir


def failed(out: Path, strategy: str, seed: int) -> Path:
    """config.json and FAILED, as the store writes a run whose training broke (blend: no `auto` to resolve)."""
    run_dir, _ = fake_run_dir(out, strategy, seed, between_source="blend")
    (run_dir / "data.json").unlink()
    (run_dir / "FAILED").write_text(json.dumps({"error": "training loss became nan in epoch 3"}))
    return run_dir


def snapshot(root: Path) -> dict[str, int]:
    """Every file under root by relative path, with its modification time in nanoseconds."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_listing_is_by_name_and_leaves_out_what_is_not_a_run_written_whole(tmp_path):
    names = [finished(tmp_path, s, seed).name for s, seed in (("soft", 1), ("hard", 0), ("soft", 0))]
    broken = failed(tmp_path, "extra-class", 0).name
    runs = tmp_path / "runs"
    shutil.copytree(runs / names[0], runs / f".tmp-{names[0]}-1a2b3c4d")  # being assembled
    shutil.copytree(runs / names[1], runs / f".old-{names[1]}-5e6f7a8b")  # moved aside by --force
    (runs / "no-config").mkdir()
    (runs / "no-config" / "DONE").write_text("")
    unfinished, _ = fake_run_dir(tmp_path, "duplicate", 0)  # config.json, neither DONE nor FAILED
    (runs / "notes.txt").write_text("a file, not a run")
    found = list_runs(tmp_path)
    assert [run.name for run in found] == sorted([*names, broken])
    assert unfinished.name not in [run.name for run in found]
    assert [run.done for run in found] == [run.name != broken for run in found]


def test_a_failed_run_says_why_and_counts_as_failed(tmp_path):
    for seed in range(2):
        finished(tmp_path, "soft", seed)
        finished(tmp_path, "hard", seed)
    run = RunDir(failed(tmp_path, "hard", 2))
    assert run.failed and not run.done
    assert run.error() == "training loss became nan in epoch 3"
    assert run.history().empty
    comparison = analyse(tmp_path)
    row = comparison.runs.set_index("run").loc[run.name]
    assert (row.status, row.error) == ("failed", "training loss became nan in epoch 3")
    assert comparison.summary.set_index("strategy").n_failed.to_dict() == {"hard": 1, "soft": 0}
    with pytest.raises(UserError, match=r"data\.json: missing from a finished run"):
        run.data()


def test_a_run_written_reads_back_whole(tmp_path):
    run = RunDir(tmp_path / "runs" / "soft-seed0-00000000")
    predictions = pd.DataFrame({"split": ["val", "test"], "label_a": [0, 1], "label_b": [-1, 0],
                                "pred_set": ["0", ""], "p_0": [0.9, 0.4], "p_1": [0.1, 0.6]})
    record = RunRecord(metrics={"clear_acc": 0.75}, data={"between_source": "blend"}, env={"device": "cpu"},
                       history=[{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.25}],
                       predictions=predictions, weights={"w": torch.ones(2)}, model_meta={"format": "x"},
                       weights_format="x")
    run.write({"strategy": "soft", "seed": 0}, record)
    assert run.done and not run.failed
    assert set(run.files()) == {"config.json", "data.json", "env.json", "history.csv", "metrics.json",
                                "predictions.csv", "model.safetensors", "model.json", "DONE"}
    assert (run.config(), run.metrics(), run.data(), run.env()) == (
        {"strategy": "soft", "seed": 0}, {"clear_acc": 0.75}, {"between_source": "blend"}, {"device": "cpu"})
    assert run.recorded_source() == "blend"
    assert run.history().train_loss.tolist() == [0.5, 0.25]
    frame, k = run.predictions()
    assert k == 2 and frame.pred_set.tolist() == ["0", ""]  # a set stays text; the empty one is ""
    # Retrained and failed this time: the failed run replaces the finished one whole, nothing is left aside.
    run.write_failed({"strategy": "soft", "seed": 0}, "out of memory")
    assert run.failed and not run.done and set(run.files()) == {"config.json", "FAILED"}
    assert [p.name for p in run.path.parent.iterdir()] == [run.name]


def test_analysis_writes_nothing(tmp_path):
    for seed in range(3):
        finished(tmp_path, "soft", seed)
        finished(tmp_path, "hard", seed)
    before = snapshot(tmp_path)
    comparison = analyse(tmp_path)
    assert list(comparison.summary.strategy) == ["hard", "soft"] and comparison.baseline == "soft"
    assert snapshot(tmp_path) == before


def test_the_runs_of_a_release_read_back(tmp_path):
    found = list_runs(FIXTURE)
    assert [run.name for run in found] == ["extra-class-seed0-ad8e9cb4", "soft-seed0-ad8e9cb4"]
    for run in found:
        frame, k = run.predictions()
        assert k == len(run.data()["class_names"]) == 10
        assert set(frame.split) == {"val", "test"}
        assert run.options()["strategy"] == run.name.split("-seed")[0]
        assert len(run.history()) == run.options()["epochs"] == 1
