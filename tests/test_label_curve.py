"""The label-budget curve: --between-train (nested in-between training images), the trend fitted over a sweep of
it, the answer in words, and the report's section."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from typer.testing import CliRunner

from ambig_bench.analysis import analyse
from ambig_bench.cli import app
from ambig_bench.data import SPLITS
from ambig_bench.datasets import prepare
from ambig_bench.datasets.human import nested_order
from ambig_bench.document import to_markdown
from ambig_bench.errors import UserError
from ambig_bench.keys import experiment_key, key_content, run_name
from ambig_bench.labelcurve import FIELD, answer, label_curve, trend
from ambig_bench.options import build
from ambig_bench.plots import label_curve_figure, text_boxes
from ambig_bench.report import label_curve_section
from tests.conftest import tiny_config
from tests.test_bad_input import TINY, assert_refused
from tests.test_folds import voted_npz
from tests.test_report import fake_run, jitter, overlaps

cli = CliRunner()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))


def digests(images) -> list[str]:
    return [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images]


def in_between_train(data) -> set[str]:
    return set(digests(data.images[data.is_between & (data.split == SPLITS["train"])]))


def test_smaller_sets_lie_inside_larger_ones_and_val_and_test_stay_the_same(tmp_path):
    options = voted_npz(tmp_path)  # random pixels: every image is told apart by its bytes
    full = prepare(tiny_config(**options))
    available = len(in_between_train(full))
    kept = {n: prepare(tiny_config(**options, between_train=n)) for n in (2, 5, 10)}
    assert [len(in_between_train(kept[n])) for n in (2, 5, 10)] == [2, 5, 10]
    assert in_between_train(kept[2]) < in_between_train(kept[5]) < in_between_train(kept[10]) < \
        in_between_train(full)
    for data in kept.values():
        for split in ("val", "test"):
            assert digests(data.subset(split).images) == digests(full.subset(split).images)
        assert data.subset("train").images.shape[0] - data.info["between_train"]["kept"] == \
            int((full.split == SPLITS["train"]).sum()) - available  # every clear-cut training image stays
        assert data.info["between_train"] == {"kept": data.info["between_train"]["kept"], "available": available}
    other_seed = prepare(tiny_config(**options, between_train=5, seed=1))
    assert digests(other_seed.subset("test").images) != digests(kept[5].subset("test").images)


def test_the_nested_order_spreads_the_first_n_over_the_pairs_by_their_share():
    pair_of = np.array([0] * 30 + [1] * 10)
    order = nested_order(pair_of, seed=3)
    assert sorted(order) == list(range(40))
    for n in range(1, 41):
        assert abs((pair_of[order[:n]] == 1).sum() - n / 4) <= 1
    assert (nested_order(pair_of, 3) == order).all() and not (nested_order(pair_of, 4) == order).all()


def test_more_than_available_and_a_source_without_labels_are_one_line_errors(tmp_path):
    options = voted_npz(tmp_path)
    available = len(in_between_train(prepare(tiny_config(**options))))
    args = ["--dataset", "npz", "--data-dir", options["data_dir"], "--pairs", options["pairs"], *TINY]
    assert_refused(tmp_path, [*args, "--between-train", "999"], ("--between-train 999", f"have {available} "))
    assert_refused(tmp_path, [*args, "--between-source", "blend", "--between-train", "5"],
                   ("--between-train 5", "blend"))
    with pytest.raises(UserError, match="at least 1"):
        build({"between_train": 0})


def test_the_default_keeps_every_experiment_key_and_a_number_makes_a_new_one():
    default = build({"strategy": "soft", "epochs": 1, "width": 4})
    assert run_name(default) == "soft-seed0-ad8e9cb4"  # the key of keys.py's own example, from before the option
    assert FIELD not in json.dumps(key_content(default))
    assert experiment_key(build({"epochs": 1, "width": 4, FIELD: 10})) != experiment_key(default)


def curve_runs(slopes: dict[int, float], noise: float = 0.01) -> pd.DataFrame:
    """Runs of one strategy at N = 10, 20, 40, 80: between_set_acc = 0.5 + seed offset + slope·log2 N + noise."""
    rng = np.random.default_rng(0)
    rows = [{"seed": seed, FIELD: n, "between_set_acc": 0.5 + 0.01 * seed + slope * np.log2(n)
             + rng.normal(0, noise)} for seed, slope in slopes.items() for n in (10, 20, 40, 80)]
    return pd.DataFrame(rows)


def test_the_trend_is_statsmodels_within_seed_slope_and_the_t_interval_of_the_seeds_slopes():
    runs = curve_runs({seed: 0.03 + 0.004 * seed for seed in range(6)})
    fit = trend(runs, "between_set_acc")
    pooled = smf.ols(f"between_set_acc ~ np.log2({FIELD}) + C(seed)", runs).fit()
    assert fit["slope"] == pytest.approx(pooled.params[f"np.log2({FIELD})"], abs=1e-12)
    per_seed = pd.DataFrame({"slope": [smf.ols(f"between_set_acc ~ np.log2({FIELD})", part).fit().params.iloc[1]
                                       for _, part in runs.groupby("seed")]})
    low, high = smf.ols("slope ~ 1", per_seed).fit().conf_int(0.05).iloc[0]
    assert (fit["slope_ci_low"], fit["slope_ci_high"]) == pytest.approx((low, high), abs=1e-12)
    assert fit["n_seeds"] == 6 and fit["intercept"] == pytest.approx(0.525 + 0, abs=0.05)


def test_the_answer_in_words_for_a_rising_a_flat_and_an_unclear_curve():
    rising = {"n_seeds": 10, "slope": 0.05, "slope_ci_low": 0.03, "slope_ci_high": 0.07, "slope_sd": 0.03}
    assert answer(rising, "between_set_acc", 0.02, 40) == (
        "gain", "labelling 40 more in-between images (to 80) is expected to gain about 0.050 on between_set_acc "
                "(95% CI [0.030, 0.070])")
    flat = rising | {"slope": 0.002, "slope_ci_low": -0.004, "slope_ci_high": 0.008}
    verdict, words = answer(flat, "between_set_acc", 0.02, 40)
    assert verdict == "flattened" and words.startswith("the curve has flattened: labelling 40 more") and \
        "by +0.002 (95% CI [-0.004, 0.008]), less than its margin 0.02" in words
    unclear = rising | {"slope": 0.01, "slope_ci_low": -0.01, "slope_ci_high": 0.03}
    verdict, words = answer(unclear, "between_set_acc", 0.02, 40)
    # ((1.96 + 0.84) · 0.03 / 0.02)² = 17.7 seeds in all
    assert verdict == "undecided" and words.endswith("about 8 more seeds would tell")
    falling_ece = rising | {"slope": -0.03, "slope_ci_low": -0.04, "slope_ci_high": -0.02}
    assert answer(falling_ece, "ece", 0.01, 40)[0] == "gain"  # lower is better
    one_seed = rising | {"slope_ci_low": np.nan, "slope_ci_high": np.nan}
    assert answer(one_seed, "between_set_acc", 0.02, 40)[0] == "undecided"


def plant_curve(out, seeds: int = 6) -> None:
    """soft gains 0.06 per doubling of in-between labels, hard nothing; clear-cut accuracy flat for both."""
    for seed in range(seeds):
        j = jitter(seed)
        for k, n in enumerate((10, 20, 40)):
            for strategy, gain in (("soft", 0.06), ("hard", 0.0)):
                fake_run(out, strategy, seed, {"clear_acc": 0.9 + j, "between_set_acc": 0.4 + gain * k + j * (k - 1)},
                         predictions=False, between_source="human", between_train=n)


def test_the_report_section_answers_per_strategy_with_its_figure(tmp_path):
    plant_curve(tmp_path)
    comparison = analyse(tmp_path)
    table = label_curve(comparison).set_index(["strategy", "metric"])
    assert table.loc[("soft", "between_set_acc"), "verdict"] == "gain"
    assert table.loc[("soft", "between_set_acc"), "slope"] == pytest.approx(0.06 + np.mean([jitter(s) for s in
                                                                                           range(6)]))
    assert table.loc[("hard", "between_set_acc"), "verdict"] == "flattened"
    assert table.loc[("soft", "clear_acc"), "verdict"] == "flattened"
    blocks, figures = label_curve_section(comparison)
    markdown = to_markdown(blocks)
    assert markdown.startswith("## Is another in-between label worth it?")
    assert table.loc[("soft", "between_set_acc"), "answer"] in markdown.replace("\\_", "_")
    assert list(figures) == ["label-curve.png"] and "](figures/label-curve.png)" in markdown
    fig = label_curve_figure(comparison.summary, label_curve(comparison), FIELD, comparison.group_by,
                             ["between_set_acc", "clear_acc"])
    boxes = text_boxes(fig)
    assert {"soft", "hard", "(80)"} <= {text for text, _ in boxes} and overlaps(boxes) == []


def test_a_tiny_sweep_of_between_train_trains_each_point_on_its_count_and_fits_the_curve(tmp_path):
    options = voted_npz(tmp_path)
    out = tmp_path / "out"
    args = ["--dataset", "npz", "--data-dir", options["data_dir"], "--pairs", options["pairs"], "--epochs", "1",
            "--width", "4", "--device", "cpu", "--strategy", "soft", "--seeds", "2", "--out", str(out)]
    swept = cli.invoke(app, ["sweep", *args, "--vary", "between-train=3,6"])
    assert swept.exit_code == 0, swept.output
    assert (out / "sweep-between-train.png").is_file()
    comparison = analyse(out)
    assert comparison.group_by == [FIELD] and len(comparison.done) == 4
    table = label_curve(comparison)
    assert list(table.metric) == ["between_set_acc", "clear_acc"] and set(table.n_seeds) == {2}
    for run in comparison.done.itertuples():  # each run trained on as many in-between images as it was told
        data = comparison.run_dirs[run.run].data()
        assert data["counts"]["train"]["between"] == int(run.between_train)
