"""Run directories checked on read (ambig_bench.schema): a damaged run is skipped with one warning naming the file
and field, every run damaged or a damaged run given to predict is one error line (exit 2); model.json and weights
that would answer nonsense are refused; stale temp files go; symlinked run directories are refused."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ambig_bench.analysis import SkippedRun, analyse
from ambig_bench.checkpoint import FORMAT
from ambig_bench.cli import app
from ambig_bench.errors import UserError
from ambig_bench.io import remove_stale_temps
from ambig_bench.rundir import RunDir, list_runs
from ambig_bench.schema import check_config, check_data, check_metrics, check_model
from ambig_bench.store import RunStore
from tests.conftest import tiny_config

cli = CliRunner()


def copy_of(results: Path, tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A copy of the trained results directory and its runs by strategy."""
    out = tmp_path / "results"
    shutil.copytree(results, out, symlinks=True)
    return out, {run.name.split("-seed")[0]: run.path for run in list_runs(out)}


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def one_image(tmp_path: Path) -> Path:
    path = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 16, (8, 8), dtype=np.uint8)).save(path)
    return path


# -- damaged files: one run skipped with one warning line, the comparison goes on ---------------------------
def nan_metric(doc):
    doc["clear_acc"] = math.nan


DAMAGE = {  # file, change, what the warning names
    "metrics-nan": ("metrics.json", nan_metric, "'clear_acc'"),
    "metrics-empty": ("metrics.json", lambda d: d.clear(), "'clear_acc'"),
    "metrics-reserved-status": ("metrics.json", lambda d: d.update(status="done"), "'status'"),
    "metrics-reserved-seed": ("metrics.json", lambda d: d.update(seed=7), "'seed'"),
    "metrics-out-of-range": ("metrics.json", lambda d: d.update(clear_acc=1e300), "'clear_acc'"),
    "metrics-nested": ("metrics.json", lambda d: d.update(nll={"a": [1]}), "'nll'"),
    "config-seed-text": ("config.json", lambda d: d.update(seed="zero"), "'seed'"),
    "config-strategy-list": ("config.json", lambda d: d.update(strategy=["soft"]), "'strategy'"),
    "config-no-strategy": ("config.json", lambda d: d.pop("strategy"), "'strategy'"),
    "data-duplicate-classes": ("data.json", lambda d: d.update(class_names=["a"] * len(d["class_names"])),
                               "'class_names'"),
}


@pytest.mark.parametrize("file, change, field", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_run_is_skipped_with_one_warning_naming_file_and_field(trained_results, tmp_path, file, change,
                                                                         field):
    out, runs = copy_of(trained_results, tmp_path)
    edit_json(runs["hard"] / file, change)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comparison = analyse(out)
    said = [str(w.message) for w in caught if w.category is SkippedRun]
    assert len(said) == 2 and said == comparison.skipped  # the run, then how many were skipped
    assert str(runs["hard"] / file) in said[0] and field in said[0]
    assert said[1].startswith("1 of 2 runs skipped")
    assert list(comparison.runs.run) == [runs["soft"].name] and list(comparison.summary.n_seeds) == [1]


def test_compare_warns_in_one_line_per_skipped_run_and_goes_on(trained_results, tmp_path):
    out, runs = copy_of(trained_results, tmp_path)
    edit_json(runs["hard"] / "metrics.json", nan_metric)
    result = cli.invoke(app, ["compare", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    warned = [line for line in lines(result.stderr) if line.startswith("warning:")]
    assert len(warned) == 2 and "metrics.json" in warned[0] and "1 of 2 runs skipped" in warned[1], result.stderr
    assert [r["run"] for r in json.loads(result.stdout)["runs"]] == [runs["soft"].name]
    assert "1 of 2 runs skipped" in (out / "comparison.md").read_text()


@pytest.mark.parametrize("damage", ["folder", "missing", "fifo"])
def test_a_folder_fifo_or_nothing_where_metrics_json_belongs_is_bad_input(trained_results, tmp_path, damage):
    out, runs = copy_of(trained_results, tmp_path)
    for run in runs.values():
        (run / "metrics.json").unlink()
        if damage == "folder":
            (run / "metrics.json").mkdir()
        elif damage == "fifo":
            os.mkfifo(run / "metrics.json")  # a blocking open would hang here
    result = cli.invoke(app, ["compare", str(out)])
    said = lines(result.stderr)
    assert result.exit_code == 2 and len(said) == 1 and said[0].startswith("error:"), result.stderr
    assert "no run can be read (2 damaged)" in said[0] and "metrics.json" in said[0]


def test_truncated_or_mis_shaped_predictions_are_refused(trained_results, tmp_path):
    out, runs = copy_of(trained_results, tmp_path)
    path = runs["hard"] / "predictions.csv"
    frame = pd.read_csv(path, dtype={"pred_set": str})
    k = sum(c.startswith("p_") for c in frame.columns)
    cases = {
        "truncated": (frame.iloc[: len(frame) // 2], "data.json counts"),
        "extra probability column": (frame.assign(**{f"p_{k}": 0.0}), f"{k + 1} probability columns"),
        "label out of range": (frame.assign(label_a=frame.label_a.where(frame.index != 3, k)), "'label_a'"),
        "text probability": (frame.assign(p_0=frame.p_0.astype(object).where(frame.index != 5, "nan0242708")),
                             "'p_0'"),
        "infinite probability": (frame.assign(p_1=frame.p_1.where(frame.index != 2, math.inf)), "'p_1'"),
        "set out of range": (frame.assign(pred_set=frame.pred_set.where(frame.index != 4, f"0|{k}")), "'pred_set'"),
    }
    for name, (damaged, said) in cases.items():
        damaged.to_csv(path, index=False)
        with pytest.raises(UserError, match=said) as caught:
            RunDir(runs["hard"]).predictions()
        assert str(path) in str(caught.value), name
    # The comparison skips the run whose predictions are damaged; predict refuses it in one line.
    with pytest.warns(SkippedRun) as caught:
        assert list(analyse(out).runs.strategy) == ["soft"]
    assert "'pred_set'" in str(caught[0].message)
    result = cli.invoke(app, ["predict", str(runs["hard"]), str(one_image(tmp_path))])
    assert result.exit_code == 2 and len(lines(result.stderr)) == 1 and "pred_set" in result.stderr, result.stderr


def test_report_skips_a_damaged_run_and_says_so(trained_results, tmp_path, monkeypatch):
    out, runs = copy_of(trained_results, tmp_path)
    monkeypatch.setattr("ambig_bench.report.png_bytes", lambda figure: plt.close(figure) or b"")  # test_report draws
    edit_json(runs["hard"] / "data.json", lambda d: d.update(counts={"test": {"clear": "many"}}))
    result = cli.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    warned = [line for line in lines(result.stderr) if line.startswith("warning:")]
    assert len(warned) == 2 and "data.json" in warned[0] and "'counts'" in warned[0], result.stderr
    assert (out / "report.html").exists()


# -- the schema's rules, one by one ----------------------------------------------------------------------------
@pytest.mark.parametrize("doc, said", [
    ([1, 2], "must hold a JSON object, got a list"),
    ({"clear_acc": math.inf}, "'clear_acc'"),
    ({"clear_acc": 0.5, "cp_coverage": 0.9}, "'cp_coverage' is the run's own"),
    ({"clear_acc": True}, "'clear_acc'"),
])
def test_metrics_rules(doc, said):
    with pytest.raises(UserError, match=said):
        check_metrics(doc, "metrics.json", {"clear_acc": (0.0, 1.0)}, ("clear_acc",), ("cp_coverage",))


def test_a_metric_not_measured_is_null_and_never_averaged_in():
    assert check_metrics({"clear_acc": 0.5, "human_ce": None, "ece": math.nan}, "m", {
        "clear_acc": (0, 1), "human_ce": (0, math.inf), "ece": (0, 1)}, ("clear_acc",))["human_ce"] is None


def test_config_rules():
    deep: dict = {"strategy": "soft", "seed": 0}
    inner = deep
    for _ in range(10):
        inner["g"] = {}
        inner = inner["g"]
    for doc, said in [(deep, "nested deeper"), ({"strategy": "soft", "seed": -1}, "'seed'"),
                      ({"strategy": "soft", "seed": True}, "'seed'"), ({"strategy": "", "seed": 0}, "'strategy'"),
                      ({"strategy": "soft", "seed": 0, "lr": math.nan}, "'lr'"), ("soft", "got text")]:
        with pytest.raises(UserError, match=said):
            check_config(doc, "config.json")
    assert check_config({"strategy": "soft", "seed": 0, "model": {"name": "small-cnn"}}, "c")["model"] == "small-cnn"


def test_data_pairs_must_name_its_classes():
    with pytest.raises(UserError, match="'pairs' must be class indices below 2"):
        check_data({"class_names": ["a", "b"], "pairs": [[0, 5]]}, "data.json")


def good_model() -> dict:
    return {"format": FORMAT, "model": "small-cnn", "width": 8, "in_channels": 1, "image_size": 8, "image_width": 8,
            "strategy": "soft", "num_outputs": 3, "class_names": ["a", "b", "c"], "pairs": [[0, 1]], "tta": 0,
            "threshold": None}


@pytest.mark.parametrize("field, value", [
    ("image_width", 8.5), ("image_width", -8), ("image_width", "8"), ("image_width", 10**12),
    ("class_names", ["a", "a", "a"]), ("threshold", math.nan), ("pairs", [[0, 0]]), ("num_outputs", True),
])
def test_model_json_rules(field, value):
    with pytest.raises(UserError, match=f"field '{field}' must be"):
        check_model(good_model() | {field: value}, "model.json", 4096, 1024)


# -- model.json and weights read by predict -----------------------------------------------------------------
@pytest.mark.parametrize("damage, said", [
    ("deep", "nested too deeply"),
    ("duplicate-classes", "'class_names'"),
    ("nan-weight", "holds NaN or infinite values"),
    ("zero-std", "std (tensor '0.std') must be > 0"),
    ("fifo-weights", "not a regular file"),
])
def test_predict_refuses_a_model_that_would_answer_nonsense_in_one_line(trained_results, tmp_path, damage, said):
    out, runs = copy_of(trained_results, tmp_path)
    run = runs["soft"]
    if damage == "deep":
        (run / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "duplicate-classes":
        edit_json(run / "model.json", lambda d: d.update(class_names=["a"] * len(d["class_names"])))
    elif damage == "fifo-weights":
        (run / "model.safetensors").unlink()
        os.mkfifo(run / "model.safetensors")
    else:
        state = load_file(run / "model.safetensors")
        if damage == "nan-weight":
            name = next(k for k, t in state.items() if t.is_floating_point() and t.dim() > 1)
            state[name].view(-1)[0] = math.nan
        else:
            state["0.std"] = torch.zeros_like(state["0.std"])
        save_file(state, run / "model.safetensors", metadata={"format": FORMAT})
    result = cli.invoke(app, ["predict", str(run), str(one_image(tmp_path)), "--format", "json"])
    said_lines = lines(result.stderr)
    assert result.exit_code == 2 and len(said_lines) == 1 and said in said_lines[0], result.stderr


def test_predict_json_is_strict_json(trained_results, tmp_path):
    _, runs = copy_of(trained_results, tmp_path)
    result = cli.invoke(app, ["predict", str(runs["soft"]), str(one_image(tmp_path)), "--format", "json"])
    assert result.exit_code == 0, result.output
    # Python's parser accepts NaN unless told not to: refuse it, as JavaScript's JSON.parse does.
    doc = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert all(math.isfinite(p) for p in doc["images"][0]["probabilities"].values())
    assert "NaN" not in (runs["soft"] / "metrics.json").read_text()  # human_ce, not measured, is null


# -- hints that point the right way -------------------------------------------------------------------------
def test_compare_and_predict_say_which_directory_to_pass(trained_results, tmp_path):
    _, runs = copy_of(trained_results, tmp_path)
    results = runs["soft"].parent.parent
    on_run = cli.invoke(app, ["compare", str(runs["soft"])])
    assert on_run.exit_code == 2 and "pass its results directory" in on_run.stderr
    assert f"runs/: {results}" in on_run.stderr.replace("\n", "") and "run --out" not in on_run.stderr
    photos = tmp_path / "photos"
    photos.mkdir()
    on_photos = cli.invoke(app, ["compare", str(photos)])
    assert on_photos.exit_code == 2 and "not a results directory" in on_photos.stderr
    assert "--out photos" not in on_photos.stderr and f"--out {photos}" not in on_photos.stderr
    on_results = cli.invoke(app, ["predict", str(results), str(one_image(tmp_path))])
    assert on_results.exit_code == 2 and "a results directory; predict takes one of its runs" in on_results.stderr
    assert str(results / "runs") in on_results.stderr.replace("\n", "")


# -- symlinks ----------------------------------------------------------------------------------------------
def test_a_run_directory_that_is_a_symlink_loop_is_skipped_and_refused_before_training(trained_results, tmp_path):
    out, runs = copy_of(trained_results, tmp_path)
    cfg = tiny_config(strategy="partial", epochs=1)
    loop = RunStore(out).run_dir(cfg)
    loop.symlink_to(loop.name)  # runs/x -> runs/x
    with pytest.warns(SkippedRun) as caught:
        assert sorted(analyse(out).runs.strategy) == ["hard", "soft"]
    assert "leads nowhere" in str(caught[0].message) and "1 of 3 runs skipped" in str(caught[1].message)
    with pytest.raises(UserError, match="leads nowhere"):
        RunStore(out).claim(cfg, force=False, wait=False)
    assert not (out / "runs" / f".tmp-{loop.name}").exists()


def test_force_on_a_symlinked_run_refuses_before_training_and_a_retrain_replaces_only_the_link(trained_results,
                                                                                                 tmp_path):
    out, runs = copy_of(trained_results, tmp_path)
    cfg = tiny_config(strategy="soft", epochs=1)
    target = tmp_path / "elsewhere"
    shutil.move(runs["soft"], target)
    runs["soft"].symlink_to(target, target_is_directory=True)
    with pytest.raises(UserError, match="a symbolic link; --force"):
        RunStore(out).claim(cfg, force=True, wait=False)
    # Without --force a failed run behind a link is retrained: the link is replaced, its target left alone.
    (target / "DONE").unlink()
    (target / "FAILED").write_text(json.dumps({"error": "out of memory"}))
    claim = RunStore(out).claim(cfg, force=False, wait=False)
    RunStore(out).save(claim, "out of memory again")
    assert not runs["soft"].is_symlink() and RunDir(runs["soft"]).failed and target.is_dir()
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(p.name for p in runs.values())


# -- stale temp files ------------------------------------------------------------------------------------------
def test_stale_temp_files_of_a_killed_compare_or_report_go_with_the_next_write(trained_results, tmp_path):
    out, _ = copy_of(trained_results, tmp_path)
    (out / "figures").mkdir()
    stale = [out / ".comparison.csv.k1ll3d00.tmp", out / ".paired.csv.k1ll3d01.tmp",
             out / "figures" / ".bars.png.k1ll3d02.tmp"]
    fresh = out / ".report.md.wr1t1ng0.tmp"  # a writer at work right now
    an_hour_ago = time.time() - 3600
    for path in [*stale, fresh]:
        path.write_text("half")
    for path in stale:
        os.utime(path, (an_hour_ago, an_hour_ago))
    assert cli.invoke(app, ["compare", str(out)]).exit_code == 0
    assert not stale[0].exists() and not stale[1].exists() and stale[2].exists() and fresh.exists()
    assert remove_stale_temps(out / "figures" / "*") == [stale[2]]
    assert fresh.exists()


def test_config_groups_are_the_configs():
    from ambig_bench.config import GROUPS
    from ambig_bench.schema import GROUPS as CHECKED

    assert set(CHECKED) == set(GROUPS)
    with pytest.raises(UserError, match="field 'model' must be an object"):
        check_config({"strategy": "soft", "seed": 0, "data": {}, "model": None}, "config.json")
    with pytest.raises(UserError, match="field 'model' lacks its 'name'"):
        check_config({"strategy": "soft", "seed": 0, "model": {"a": 1}}, "config.json")
