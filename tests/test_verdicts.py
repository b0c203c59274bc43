"""Verdicts, tests paired by image and the honest flags, on hand-made run directories with planted predictions.

The image-level oracles are computed here from the planted arrays (statsmodels' exact McNemar); the verdict rules
from stats.sample_size and a hand-written frame of paired tests.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ambig_bench.analysis import MARGINS, analyse, parse_margins
from ambig_bench.cli import app
from ambig_bench.compare import compare, comparison_markdown
from ambig_bench.errors import UserError
from ambig_bench.images import ONCE, REPEATED
from ambig_bench.metrics import HIGHER_IS_BETTER, METRICS
from ambig_bench.report import report, setup_table
from ambig_bench.stats import sample_size
from ambig_bench.verdicts import fix, judge, lead_row, more_data
from tests.fake_runs import NOT_CONVERGED, fake_run_dir, run_record

CLASSES = 4
PAIR = (0, 1)


def predictions(correct: np.ndarray, exact: np.ndarray) -> pd.DataFrame:
    """Test rows (and the same as val rows): one clear-cut image per `correct` flag (label i % 4; top-1 right or
    not, confidence 0.7), then one in-between image of the pair (0, 1) per `exact` flag (set {0, 1} or {0})."""
    rows = []
    for i, right in enumerate(correct):
        label = i % CLASSES
        p = np.full(CLASSES, 0.1)
        p[label if right else (label + 1) % CLASSES] = 0.7
        rows.append((label, -1, str(int(p.argmax())), p))
    for hit in exact:
        p = np.array([0.45, 0.45, 0.05, 0.05])
        rows.append((PAIR[0], PAIR[1], "0|1" if hit else "0", p))
    test = pd.DataFrame({"kind": ["clear" if r[1] < 0 else "between" for r in rows], "label_a": [r[0] for r in rows],
                         "label_b": [r[1] for r in rows], "share_a": [1.0 if r[1] < 0 else 0.5 for r in rows],
                         "ambiguity": [1 - r[3].max() for r in rows], "pred_set": [r[2] for r in rows]})
    test = pd.concat([test, pd.DataFrame(np.stack([r[3] for r in rows]), columns=[f"p_{k}" for k in range(4)])],
                     axis=1)
    return pd.concat([test.assign(split="val"), test.assign(split="test")], ignore_index=True)


def fake_run(out, strategy: str, seed: int, metrics: dict, preds: pd.DataFrame | None = None, folds: int | None = None,
             record: dict | None = None, **options) -> None:
    run_dir, flat = fake_run_dir(out, strategy, seed, **options)
    if folds is not None:  # the folds branch's option, as its runs record it in config.json
        config = json.loads((run_dir / "config.json").read_text())
        config["data"]["folds"] = folds
        (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "data.json").write_text(json.dumps({
        "class_names": ["cat", "dog", "car", "truck"], "pairs": [list(PAIR)], "dataset": flat["dataset"],
        "origin": "planted", "between_source": json.loads((run_dir / "data.json").read_text())["between_source"],
        "counts": {"test": {"clear": 20, "between": 8}}}))
    (run_dir / "env.json").write_text(json.dumps({"device": "cpu", "python": "3.11"}))
    base = {m: 0.5 for m in METRICS} | {"human_ce": math.nan}
    (run_dir / "metrics.json").write_text(json.dumps(base | (run_record(strategy) if record is None else record)
                                                     | metrics))
    if preds is not None:
        preds.to_csv(run_dir / "predictions.csv", index=False)
    (run_dir / "DONE").write_text("")


# -- per-image tests -----------------------------------------------------------------------------------------
def plant_images(out, seeds: list[int], folds: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """soft and hard on the same 20 clear-cut and 8 in-between test images per seed; hard is right on more
    clear-cut images. Returns the pooled 0/1 outcomes (clear-cut correct) per strategy, in seed order."""
    rng = np.random.default_rng(5)
    pooled: dict[str, list] = {"soft": [], "hard": []}
    for seed in seeds:
        soft = rng.random(20) < 0.6
        hard = soft | (rng.random(20) < 0.5)
        hard[0] = False  # one image only soft gets right
        exact = rng.random(8) < 0.5
        for strategy, correct in (("soft", soft), ("hard", hard)):
            fake_run(out, strategy, seed, {"clear_acc": correct.mean()}, predictions(correct, exact), folds=folds)
            pooled[strategy].append(correct)
    return {s: np.concatenate(v) for s, v in pooled.items()}


def test_out_of_fold_pool_gets_the_exact_mcnemar_test(tmp_path):
    from statsmodels.stats.contingency_tables import mcnemar

    pooled = plant_images(tmp_path, seeds=[0, 1, 2], folds=3)
    c = analyse(tmp_path)
    row = c.images.set_index(["strategy", "metric"]).loc[("hard", "clear_acc")]
    assert (row.pool, row.test, row.n_images) == (ONCE, "exact McNemar", 60)
    hard, soft = pooled["hard"], pooled["soft"]
    table = [[int((hard & soft).sum()), int((hard & ~soft).sum())],
             [int((~hard & soft).sum()), int((~hard & ~soft).sum())]]
    assert row.p_value == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-12)
    assert row.diff_mean == pytest.approx(hard.mean() - soft.mean())
    assert row.diff_ci_low < row.diff_mean < row.diff_ci_high
    # The verdict uses the image test where each image was tested once.
    assert lead_row(c, {}, "clear-cut accuracy", "clear_acc")["test"].startswith(f"image by image ({ONCE}")


@pytest.mark.slow
@pytest.mark.parametrize("seeds, folds", [(list(range(12)), None), (list(range(10)), 0), (list(range(12)), 3)])
def test_pools_that_repeat_images_over_enough_seeds_get_the_cluster_bootstrap(tmp_path, seeds, folds):
    plant_images(tmp_path, seeds=seeds, folds=folds)
    images = analyse(tmp_path).images.set_index(["strategy", "metric"])
    row = images.loc[("hard", "clear_acc")]
    assert (row.pool, row.test) == (REPEATED, "cluster bootstrap over seeds")
    ece = images.loc[("hard", "ece")]
    assert ece.test == "cluster bootstrap over seeds" and not math.isnan(ece.diff_mean)


@pytest.mark.parametrize("seeds, folds", [([0, 1, 2], None), ([0], None), ([0, 1, 2, 3, 4, 5], 3), ([0, 1], 3)])
def test_pools_that_repeat_or_miss_images_over_few_seeds_get_no_test_by_image(tmp_path, seeds, folds):
    """Resampling 1-9 whole seeds: every resample has the sign of every seed (a p-value at its floor), and one seed
    no spread at all; no test by image is made, and the verdict uses the test across seeds."""
    plant_images(tmp_path, seeds=seeds, folds=folds)
    c = analyse(tmp_path)
    row = c.images.set_index(["strategy", "metric"]).loc[("hard", "clear_acc")]
    assert row.pool == REPEATED and row.test.startswith("none") and math.isnan(row.p_value)
    assert row.outcome == "undecided" and not row.significant and not row.equivalent
    assert lead_row(c, {}, "clear-cut accuracy", "clear_acc")["test"] == "across seeds"


def test_ece_out_of_fold_is_a_paired_bootstrap_over_images(tmp_path):
    plant_images(tmp_path, seeds=[0, 1, 2], folds=3)
    row = analyse(tmp_path).images.set_index(["strategy", "metric"]).loc[("hard", "ece")]
    assert (row.pool, row.test) == (ONCE, "paired bootstrap over images")
    # Confidence is 0.7 everywhere: ECE = |accuracy - 0.7|, so the difference is known from the planted accuracies.
    run_means = analyse(tmp_path).done.groupby("strategy").clear_acc.mean()
    assert row.diff_mean == pytest.approx(abs(run_means["hard"] - 0.7) - abs(run_means["soft"] - 0.7))


# -- the verdict rules ---------------------------------------------------------------------------------------
def paired_rows(rows: dict[str, tuple[float, float, float, str]]) -> pd.DataFrame:
    """Paired tests (other − leader): diff, CI low, CI high, outcome; margin 0.02, n 10."""
    return pd.DataFrame([{"strategy": s, "diff_mean": d, "diff_ci_low": lo, "diff_ci_high": hi, "outcome": o,
                          "significant": o in ("different", "negligible"), "p_holm": 0.01, "margin": 0.02}
                         for s, (d, lo, hi, o) in rows.items()]).set_index("strategy")


@pytest.mark.parametrize("rows, answer", [
    ({"b": (-0.05, -0.07, -0.03, "different"), "c": (-0.2, -0.25, -0.15, "different")},
     "**a** is better by 0.050 [0.030, 0.070]"),
    ({"b": (-0.001, -0.01, 0.008, "equivalent"), "c": (-0.2, -0.25, -0.15, "different")},
     "equivalent within ±0.02: a (best mean) and b; worse beyond ±0.02: c"),
    ({"b": (-0.008, -0.012, -0.004, "negligible")}, "negligible: b − a significant but smaller than 0.02"),
    ({"b": (-0.03, -0.08, 0.02, "undecided"), "c": (-0.2, -0.25, -0.15, "different")},
     "undecided: the 95% CI of b − a is ±0.050; about 5 more seeds would resolve a difference of 0.02"),
])
def test_judge_answers(rows, answer):
    got, _ = judge("a", paired_rows(rows), "clear_acc", 0.02, {"b": "about 5 more seeds", "c": "–"})
    assert got == answer


def test_lower_is_better_flips_the_lead():
    assert not HIGHER_IS_BETTER["ece"]
    got, _ = judge("a", paired_rows({"b": (0.03, 0.02, 0.04, "different")}), "ece", 0.01, {})
    assert got == "**a** is better by 0.030 [0.020, 0.040]"


def test_undecided_says_how_many_seeds_and_images_from_the_observed_spread(tmp_path):
    """soft − hard wobbles by ±0.03 per seed around 0.01: not significant, not inside ±0.02."""
    wobble = [0.04, -0.02, 0.05, -0.03, 0.04, -0.02]
    for seed, w in enumerate(wobble):
        exact = np.arange(8) % 2 == 0
        fake_run(tmp_path, "soft", seed, {"clear_acc": 0.8}, predictions(np.arange(20) % 3 == 0, exact))
        fake_run(tmp_path, "hard", seed, {"clear_acc": 0.8 - w}, predictions(np.arange(20) % 2 == 0, exact))
    row = lead_row(analyse(tmp_path), {}, "clear-cut accuracy", "clear_acc")
    sd = float(np.std(wobble, ddof=1))
    more = math.ceil(sample_size(sd, 0.02)) - len(wobble)
    assert row["answer"].startswith("undecided: the 95% CI of hard − soft is ±")
    assert f"about {more} more seeds" in row["answer"] and row["answer"].endswith("would resolve a difference of 0.02")
    # The images' own spread is small here: enough images already, so no "about 1 more image" is offered.
    assert "test image" not in row["answer"]


def test_more_data_offers_only_what_is_missing():
    seeds = pd.Series({"n_pairs": 10, "diff_sd": 0.001})  # the seeds at hand already resolve ±0.02
    images = pd.Series({"n_images": 500, "diff_sd": 0.5, "pool": ONCE})
    need = math.ceil(sample_size(0.5, 0.02))
    text = more_data(seeds, images, 0.02, 1, "between_set_acc")
    assert text == f"about {need - 500} more in-between test images"
    assert more_data(seeds, None, 0.02, 1, "clear_acc").startswith("a repeat with new seeds")


# -- convergence -----------------------------------------------------------------------------------------------
def plant_convergence(out, unconverged: int = 0, old: bool = False) -> None:
    for seed in range(8):
        for strategy, acc in (("soft", 0.80), ("hard", 0.70)):
            record = {} if old else run_record(strategy, converged=not (strategy == "hard" and seed < unconverged))
            fake_run(out, strategy, seed, {"clear_acc": acc + 0.001 * seed}, record=record)


def test_unconverged_runs_are_counted_and_block_a_winner(tmp_path):
    plant_convergence(tmp_path, unconverged=3)
    c = compare(tmp_path)
    assert c.summary.set_index("strategy").n_unconverged.to_dict() == {"hard": 3, "soft": 0}
    text = comparison_markdown(c)
    assert "3 of 16 runs had not converged: raise --epochs (hard 3)" in text and "not converged" in text
    row = lead_row(c, {}, "clear-cut accuracy", "clear_acc")
    assert row["answer"] == "no winner named: 3 of 16 runs had not converged (raise --epochs)"
    assert "the runs alone would say: soft is better by 0.100" in row["evidence"]
    assert NOT_CONVERGED.endswith("raise --epochs")


def test_converged_runs_name_the_winner_and_old_runs_are_unknown_without_blocking(tmp_path):
    plant_convergence(tmp_path / "new")
    assert lead_row(analyse(tmp_path / "new"), {}, "clear-cut accuracy", "clear_acc")["answer"].startswith(
        "**soft** is better by 0.100")
    plant_convergence(tmp_path / "old", old=True)
    c = compare(tmp_path / "old")
    assert lead_row(c, {}, "clear-cut accuracy", "clear_acc")["answer"].startswith("**soft** is better by 0.100")
    lines = [line for line in comparison_markdown(c).splitlines() if "converged" in line]
    assert lines == ["- 16 of 16 runs do not record whether they converged (written before runs recorded it): unknown."]


@pytest.mark.parametrize("reason, expected", [
    (NOT_CONVERGED, "raise --epochs"), ("validation loss still improving at epoch 30: raise --epochs or --lr", "raise "
     "--epochs or --lr"), ("L-BFGS reached its iteration limit", "L-BFGS reached its iteration limit"),
    (None, "raise --epochs"), (math.nan, "raise --epochs")])
def test_the_fix_is_the_recorded_reasons_own(reason, expected):
    assert fix(reason) == expected


# -- honest flags ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_strategy_that_never_answers_a_or_b_is_named(tmp_path):
    for seed in range(3):
        right = np.arange(20) % 3 > 0
        fake_run(tmp_path, "soft", seed, {}, predictions(right, np.arange(8) % 2 == 0))
        fake_run(tmp_path, "extra-class", seed, {}, predictions(right, np.zeros(8, dtype=bool)))
    c = compare(tmp_path)
    text = comparison_markdown(c)
    assert "extra-class never answers “A or B”: none of its in-between test images, in 3 runs, got the set {A, B}" \
        in text
    assert "soft never answers" not in text
    built = report(tmp_path)
    assert "extra-class never answers “A or B”" in built.markdown
    # Thresholds tuned on validation are said beside the scores they produce.
    assert "soft comes through a decoding threshold tuned on validation" in built.markdown
    assert "extra-class decodes without one" in built.markdown


def test_setup_shows_only_what_the_runs_used(tmp_path):
    human = {"between_source": "human"}
    fake_run(tmp_path, "soft", 0, {}, **human)
    fake_run(tmp_path, "soft", 1, {"probe_l2": 0.01, "probe_iterations": 41}, freeze=True, pretrained=True, **human)
    fake_run(tmp_path, "soft", 2, {"probe_l2": 0.1, "probe_iterations": 12}, freeze=True, pretrained=True, **human)
    c = analyse(tmp_path)
    meta = pd.DataFrame([{"run": r, "data": c.run_dirs[r].data(), "env": c.run_dirs[r].env()} for r in c.done.run])
    rows = dict(setup_table(c.runs, c.group_by, meta).values)
    assert "between-fraction" not in rows  # the human source's in-between images are fixed
    assert rows["linear probe"] == "L2 strength chosen on validation: 0.01, 0.1; solver iterations 12–41"
    assert "augment" in rows["training"]  # the one fully trained run
    frozen_only = tmp_path / "frozen"
    fake_run(frozen_only, "soft", 0, {}, freeze=True, pretrained=True, between_source="human")
    c = analyse(frozen_only)
    meta = pd.DataFrame([{"run": r, "data": c.run_dirs[r].data(), "env": c.run_dirs[r].env()} for r in c.done.run])
    rows = dict(setup_table(c.runs, c.group_by, meta).values)
    assert "between-fraction" not in rows and "training" not in rows
    assert "augment" not in rows["training (frozen backbone)"] and "epochs" in rows["training (frozen backbone)"]


# -- margins ---------------------------------------------------------------------------------------------------
def test_margin_option_parses_and_validates():
    assert parse_margins(None) == MARGINS and set(MARGINS) == set(METRICS)
    one = parse_margins("0.01")
    assert one["clear_acc"] == one["between_set_acc"] == 0.01 and one["ece"] == MARGINS["ece"]
    some = parse_margins("clear-acc=0.03, ece=0.005")
    assert (some["clear_acc"], some["ece"], some["between_set_acc"]) == (0.03, 0.005, 0.02)
    for bad in ("0", "-0.1", "ece=", "speed=1", "x", "inf"):
        with pytest.raises(UserError, match=r"^--margin "):
            parse_margins(bad)


def test_cli_margin_reaches_the_tests_and_bad_input_exits_2(tmp_path):
    plant_convergence(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["compare", str(tmp_path), "--margin", "clear_acc=0.15"])
    assert result.exit_code == 0, result.output
    paired = pd.read_csv(tmp_path / "paired.csv").set_index("metric")
    assert paired.loc["clear_acc", "margin"] == 0.15
    assert paired.loc["clear_acc", "verdict"] == "negligible: significant but within ±0.15"
    for command in ("compare", "report"):
        result = runner.invoke(app, [command, str(tmp_path), "--margin", "speed=1"])
        assert result.exit_code == 2 and "--margin speed=1: unknown metric 'speed'" in result.output


def test_many_seeds_of_identical_strategies_give_a_verdict(tmp_path):
    """64 seeds where reassign's probe is soft's exactly (zero spread): no crash looking for more seeds."""
    for seed in range(64):
        for strategy in ("soft", "reassign"):
            fake_run(tmp_path, strategy, seed, {"clear_acc": 0.8 + 0.001 * (seed % 5)})
    row = lead_row(analyse(tmp_path), {}, "clear-cut accuracy", "clear_acc")
    assert row["answer"].startswith("equivalent within ±0.02"), row
