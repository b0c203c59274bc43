"""Conformal options on finished runs: class-conditional and vote calibration through calibrate_run, predict and
compare; vote shares in predictions.csv (written, checked, optional)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ambig_bench.calibration import Calibration, calibrate_run, conformal_summary, group_coverage, probs_of, truth_of
from ambig_bench.cli import app
from ambig_bench.compare import compare, comparison_markdown
from ambig_bench.conformal import calibrate_parts, calibrate_per_class, prediction_sets, vote_coverage
from ambig_bench.data import LabelledImages
from ambig_bench.errors import UserError
from ambig_bench.evaluation import predictions_frame
from ambig_bench.predict import PredictionReport, predict_paths, render
from ambig_bench.rundir import RunDir, list_runs
from ambig_bench.strategies import STRATEGIES

K = 10


@pytest.fixture(scope="module")
def run(trained_results):
    return list_runs(trained_results)[0].path


def validation(run_dir):
    frame = pd.read_csv(run_dir / "predictions.csv", dtype={"pred_set": str})
    val = frame[frame.split == "val"]
    return frame, probs_of(val, K), truth_of(val, K), (val.label_b >= 0).to_numpy()


def test_class_groups_calibrate_each_class_on_its_own_images(run):
    _, probs, truth, between = validation(run)
    cal = calibrate_run(run, 0.2, "lac", per_kind=False, groups="class")
    np.testing.assert_array_equal(cal.thresholds, np.nan_to_num(calibrate_per_class(probs, truth, 0.2), nan=np.inf))
    per_kind = calibrate_run(run, 0.2, "lac", groups="class")
    for k in range(K):  # per class, the larger of its clear-cut and its in-between images' own quantiles
        own = [calibrate_per_class(probs[rows], truth[rows], 0.2)[k] for rows in (~between, between)]
        assert per_kind.qhat[k] == (np.inf if np.isnan(own).all() else np.nanmax(own))
    assert calibrate_run(run, 0.2, "lac").groups == "kind" and np.ndim(calibrate_run(run, 0.2, "lac").qhat) == 0


def test_predict_json_reports_thresholds_and_coverage_per_class_and_pair(run, tmp_path):
    for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    report = predict_paths(run, [tmp_path], alpha=0.2, groups="class")
    block = json.loads(render(report, "json"))["conformal"]
    names = json.loads((run / "data.json").read_text())["class_names"]
    assert block["groups"] == "class" and block["truth"] == "sets" and list(block["qhat"]) == names
    coverage = pd.DataFrame(block["test_coverage"])
    frame = pd.read_csv(run / "predictions.csv", dtype={"pred_set": str}).query("split == 'test'")
    sets = prediction_sets(probs_of(frame, K), report.calibration.qhat, "lac")
    truth = truth_of(frame, K)
    for k, name in enumerate(names):  # a class's coverage: its images whose set holds it (hand count)
        row = coverage[(coverage.group == "class") & (coverage.name == name)].iloc[0]
        assert row.images == truth[:, k].sum() and row.coverage == pytest.approx(sets[truth[:, k], k].mean())
    a, b = json.loads((run / "data.json").read_text())["pairs"][0]
    pair = (frame.label_b >= 0) & frame.label_a.isin([a, b]) & frame.label_b.isin([a, b])
    row = coverage[(coverage.name == f"{names[a]}|{names[b]}") & (coverage.part == "between")].iloc[0]
    assert row.images == pair.sum() and row.coverage == pytest.approx(sets[pair.to_numpy()][:, [a, b]].all(1).mean())
    assert coverage[coverage.group == "all"].vote_coverage.isna().all()  # no votes: null


def with_votes(run, tmp_path, votes=None):
    """A copy of `run` whose predictions.csv holds vote shares (default: all on label_a)."""
    copy = tmp_path / "results" / "runs" / run.name
    shutil.copytree(run, copy)
    frame = pd.read_csv(copy / "predictions.csv", dtype={"pred_set": str})
    votes = np.eye(K)[frame.label_a] if votes is None else votes(frame)
    frame = pd.concat([frame, pd.DataFrame(votes, columns=[f"v_{k}" for k in range(K)])], axis=1)
    frame.to_csv(copy / "predictions.csv", index=False)
    return copy


def test_vote_calibration_draws_its_labels_from_the_votes(run, tmp_path):
    copy = with_votes(run, tmp_path)
    frame, probs, _, between = validation(copy)
    # Every vote on label_a: the drawn label is certain, so the calibration is that of the label_a sets.
    onehot = np.eye(K, dtype=bool)[frame[frame.split == "val"].label_a]
    for groups in ("kind", "class"):
        cal = calibrate_run(copy, 0.2, "aps", groups=groups, truth="votes")
        want = calibrate_parts(probs, onehot, 0.2, "aps", parts=[~between, between], per_class=groups == "class")
        np.testing.assert_array_equal(cal.qhat, want)
    summary = conformal_summary(copy, 0.2, "lac", truth="votes")
    test = frame[frame.split == "test"]
    sets = prediction_sets(probs_of(test, K), calibrate_run(copy, 0.2, truth="votes").qhat)
    assert summary["cp_vote_coverage"] == pytest.approx(vote_coverage(sets, np.eye(K)[test.label_a]))
    with pytest.raises(UserError, match=r"predictions\.csv: --conformal-truth votes needs .* v_0"):
        calibrate_run(run, 0.2, truth="votes")  # the run itself has no votes


def test_compare_reports_coverage_per_class_and_pair(run, tmp_path):
    copy = with_votes(run, tmp_path)
    comparison = compare(copy.parents[1])
    groups = pd.read_csv(copy.parents[1] / "conformal_groups.csv", keep_default_na=False)
    assert set(groups.calibration) == {"kind", "class"} and set(groups.group) == {"all", "class", "pair"}
    assert (groups[groups.group == "class"].images > 0).all()
    kind = group_coverage(RunDir(copy), calibrate_run(copy, 0.1, "lac"))
    mine = groups[(groups.calibration == "kind") & (groups.group == "class")]
    np.testing.assert_allclose(mine.coverage, kind[kind.group == "class"].coverage)
    text = comparison_markdown(comparison)
    assert "Conformal coverage per class and per pair" in text and "| vote coverage |" in text


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop(columns="v_3"), "must be v_0..v_9"),
    (lambda f: f.assign(v_2=-0.5), "column 'v_2' must be a finite vote share"),
    (lambda f: f.assign(**{f"v_{k}": 0.0 for k in range(K)}), "column 'v_0' must be one of vote shares"),
])
def test_bad_vote_columns_are_refused_in_one_line(run, tmp_path, change, message):
    copy = with_votes(run, tmp_path)
    path = copy / "predictions.csv"
    change(pd.read_csv(path, dtype={"pred_set": str})).to_csv(path, index=False)
    with pytest.raises(UserError, match=message):
        RunDir(copy).predictions()


def test_predictions_hold_vote_shares_only_for_images_with_votes():
    strategy = STRATEGIES.get("soft")(3, [(0, 1)])
    votes = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.1, 0.9]])
    data = LabelledImages(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 2]), torch.tensor([1, -1]),
                          torch.tensor([0.5, 1.0]), torch.zeros(2, dtype=torch.int8), ["a", "b", "c"], [(0, 1)],
                          votes=votes)
    frame = predictions_frame(strategy, torch.zeros(2, strategy.num_outputs), data, 0.5, "val")
    np.testing.assert_allclose(frame[["v_0", "v_1", "v_2"]].to_numpy(), votes.numpy())
    data.votes = None
    assert not any(c.startswith("v_") for c in predictions_frame(strategy, torch.zeros(2, strategy.num_outputs),
                                                                 data, 0.5, "val").columns)


def test_bad_conformal_grouping_or_truth_is_one_line(run):
    for option in (["--conformal-groups", "pair"], ["--conformal-truth", "majority"]):
        done = CliRunner().invoke(app, ["predict", str(run), str(run), *option])
        assert done.exit_code == 2 and len(done.stderr.strip().splitlines()) == 1 and option[0] in done.stderr


def test_predict_warns_of_classes_too_rare_to_calibrate():
    def warned(qhat):
        cal = Calibration("lac", 0.1, True, qhat, 20, 3, "class")
        return PredictionReport(Path("run"), "soft", None, ["a", "b", "c"], cal, [], pd.DataFrame()).warnings()

    assert warned(np.array([0.5, np.inf, np.inf])) == [
        "2 class(es) have too few validation images at alpha 0.1 for a threshold of their own and are in every "
        "conformal set, e.g. b (use a larger alpha, --marginal or --conformal-groups kind)"]
    assert "every conformal set is every class" in warned(np.full(3, np.inf))[0]
    assert warned(np.array([0.5, 0.2, 0.9])) == []
