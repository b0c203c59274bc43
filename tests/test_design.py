"""Pair design advice: each rule fires on planted predictions and paired tests, the evidence against oracles
(Wilson's formula, counted shares), and one end-to-end run on the digits' pairs."""

from __future__ import annotations

import json
import math
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ambig_bench.analysis import analyse
from ambig_bench.cli import app
from ambig_bench.design import THRESHOLDS, Thresholds, advice, design_blocks, pairwise
from ambig_bench.document import to_markdown
from ambig_bench.metrics import METRICS
from ambig_bench.rundir import RunDir
from tests.fake_runs import fake_run_dir, run_record

CLASSES = ["cat", "dog", "car", "truck"]


def planted(right: int, wrong: int, between: int) -> pd.DataFrame:
    """Test rows (repeated as val rows): `right` clear-cut cat and dog images whose class gets 0.7 against the
    other's 0.2, `wrong` ones the other way round, 10 clear-cut car images, and `between` cat|dog images."""
    rows = []
    for i in range(right + wrong):
        label = i % 2
        p = np.array([0.05, 0.05, 0.05, 0.05])
        p[label], p[1 - label] = (0.7, 0.2) if i < right else (0.2, 0.7)
        rows.append((label, -1, p))
    rows += [(2, -1, np.array([0.05, 0.05, 0.85, 0.05]))] * 10
    rows += [(0, 1, np.array([0.45, 0.45, 0.05, 0.05]))] * between
    frame = pd.DataFrame({"label_a": [r[0] for r in rows], "label_b": [r[1] for r in rows],
                          "pred_set": ["0|1" if r[1] >= 0 else str(int(r[2].argmax())) for r in rows]})
    frame = pd.concat([frame, pd.DataFrame(np.stack([r[2] for r in rows]), columns=[f"p_{k}" for k in range(4)])],
                      axis=1)
    return pd.concat([frame.assign(split="val"), frame.assign(split="test")], ignore_index=True)


def fake_run(out, strategy: str, seed: int, preds: pd.DataFrame, metrics: dict | None = None, **options) -> None:
    """A finished run holding `preds` as predictions.csv, the pair cat:dog, and `metrics` over 0.5 everywhere."""
    run_dir, flat = fake_run_dir(out, strategy, seed, **options)
    source = json.loads((run_dir / "data.json").read_text())["between_source"]
    (run_dir / "data.json").write_text(json.dumps({"class_names": CLASSES, "pairs": [[0, 1]], "between_source": source,
                                                   "dataset": flat["dataset"], "origin": "planted"}))
    (run_dir / "env.json").write_text(json.dumps({"device": "cpu"}))
    (run_dir / "metrics.json").write_text(json.dumps({m: 0.5 for m in METRICS} | {"human_ce": math.nan}
                                                     | run_record(strategy) | (metrics or {})))
    preds.to_csv(run_dir / "predictions.csv", index=False)
    (run_dir / "DONE").write_text("")


def one_pair(out) -> pd.Series:
    [row] = advice(analyse(out)).to_dict("records")
    return pd.Series(row)


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The oracle: Wilson's score interval by its formula."""
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


@pytest.mark.parametrize("right, wrong, between, source, advice_given", [
    (100, 0, 2, {}, "keep cat and dog apart"),
    (200, 200, 2, {}, "merge cat and dog"),
    (40, 0, 60, {"between_source": "human"}, "merge cat and dog"),
    (6, 4, 2, {}, "undecided"),
    (30, 0, 2, {"between_fraction": 0.05}, "keep cat and dog apart, train with soft"),
])
def test_separation_and_share_rules_on_one_run(tmp_path, right, wrong, between, source, advice_given):
    """One soft run: the pairwise accuracy's CI is Wilson's over its images; blends take the declared share."""
    fake_run(tmp_path, "soft", 0, planted(right, wrong, between), **source)
    row = one_pair(tmp_path)
    assert row.advice == advice_given, row.why
    low, high = wilson(right, right + wrong)
    assert row["pairwise accuracy (soft)"].startswith(f"{right / (right + wrong):.3f} [{low:.3f}, {high:.3f}] "
                                                      f"(Wilson over {right + wrong} images)")
    share = between / (between + right + wrong) if source.get("between_source") == "human" else 0.05
    assert row["in-between share"].startswith(f"{share:.3f} ")


def paired_dir(out, extra: dict[str, list[float]], seeds: int, hard: list[float] | None = None) -> None:
    """soft and extra-class (and hard) runs, blends declared frequent (0.3), clear-cut cat and dog separated;
    metrics planted per seed as differences from soft's (clear_acc 0.9, between_set_acc 0.6)."""
    base = {"clear_acc": 0.9, "between_set_acc": 0.6}
    preds = planted(60, 0, 4)
    for seed in range(seeds):
        fake_run(out, "soft", seed, preds, base, between_fraction=0.3)
        fake_run(out, "extra-class", seed, preds, {m: v + extra[m][seed] for m, v in base.items()},
                 between_fraction=0.3)
        if hard:
            fake_run(out, "hard", seed, preds, base | {"between_set_acc": 0.6 + hard[seed]}, between_fraction=0.3)


TINY = [0.001, -0.001, 0.002, 0.0, 0.001, -0.002, 0.001]  # inside ±0.02 by TOST over 7 seeds


def test_frequent_in_between_images_and_extra_class_not_worse_add_an_extra_class(tmp_path):
    paired_dir(tmp_path, {"clear_acc": TINY, "between_set_acc": TINY}, seeds=7)
    row = one_pair(tmp_path)
    assert row.advice == "add an extra class cat&dog", row.why
    assert "(not worse)" in row["extra-class − soft"] and "0.300 (--between-fraction" in row["in-between share"]


def test_tests_that_do_not_decide_say_undecided_with_the_data_needed(tmp_path):
    noisy = [0.05, -0.04, 0.03]
    paired_dir(tmp_path, {"clear_acc": noisy, "between_set_acc": noisy}, seeds=3)
    row = one_pair(tmp_path)
    assert row.advice == "undecided: an extra class cat&dog or soft" and "more seed" in row.why, row.why


def test_extra_class_worse_keeps_the_pair_apart_with_the_strategy_the_tests_support(tmp_path):
    paired_dir(tmp_path, {"clear_acc": [-0.05 - s / 1000 for s in range(7)], "between_set_acc": TINY}, seeds=7,
               hard=[0.10 + s / 1000 for s in range(7)])
    row = one_pair(tmp_path)
    assert row.advice == "keep cat and dog apart, train with hard", row.why
    assert "extra-class is worse than soft on clear-cut accuracy" in row.why


def test_every_threshold_has_its_reason_and_the_report_section_lists_them(tmp_path):
    assert all(f.metadata["reason"] for f in fields(Thresholds))
    fake_run(tmp_path, "soft", 0, planted(100, 0, 2))
    markdown = to_markdown(design_blocks(analyse(tmp_path)))
    assert markdown.startswith("## Pair design") and all(f"{f.name} = " in markdown for f in fields(Thresholds))
    assert THRESHOLDS.chance < THRESHOLDS.separated and 0.5 < THRESHOLDS.chance


def test_pairs_results_prints_the_advice_and_refuses_data_options(tmp_path):
    fake_run(tmp_path, "soft", 0, planted(100, 0, 2))
    shown = CliRunner().invoke(app, ["pairs", "--results", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines()[2].startswith("| cat:dog | keep cat and dog apart |")
    refused = CliRunner().invoke(app, ["pairs", "--results", str(tmp_path), "--dataset", "digits"])
    said = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.exit_code == 2 and len(said) == 1 and "drop --dataset" in said[0], refused.stderr


def test_pairs_results_escapes_class_names_and_refuses_a_directory_without_runs(tmp_path):
    fake_run(tmp_path / "r", "soft", 0, planted(100, 0, 2))
    [data] = (tmp_path / "r" / "runs").glob("*/data.json")
    data.write_text(data.read_text().replace('"cat"', '"c\\u001b[2Jat"'))
    shown = CliRunner().invoke(app, ["pairs", "--results", str(tmp_path / "r")])
    assert shown.exit_code == 0 and "\x1b" not in shown.stdout
    assert r"| c\\x1b[2Jat:dog | keep c\\x1b[2Jat and dog apart |" in shown.stdout  # escaped, as markdown_table does
    empty = CliRunner().invoke(app, ["pairs", "--results", str(tmp_path)])
    said = [line for line in empty.stderr.splitlines() if line.strip()]
    assert empty.exit_code == 2 and len(said) == 1 and "no finished runs found" in said[0], empty.stderr


def test_end_to_end_on_the_digits_pairs(trained_results):
    """Real tiny digits runs (soft and hard, pairs 4:9 and 3:8): the pairwise accuracy is counted again from
    predictions.csv."""
    comparison = analyse(trained_results)
    table = advice(comparison)
    assert table.pair.tolist() == ["4:9", "3:8"]
    [soft] = comparison.done[comparison.done.strategy == "soft"].run
    preds = RunDir(trained_results / "runs" / soft).predictions()[0]
    test = preds[preds.split == "test"]
    for (a, b), cell in zip([(4, 9), (3, 8)], table["pairwise accuracy (soft)"], strict=True):
        mine = test[(test.label_b < 0) & test.label_a.isin([a, b])]
        right = sum(r[f"p_{r.label_a}"] > r[f"p_{a if r.label_a == b else b}"] for _, r in mine.iterrows())
        assert cell.startswith(f"{right / len(mine):.3f} [") and len(pairwise(RunDir(trained_results / "runs" / soft),
                                                                           a, b)) == len(mine)
    assert set(table.advice) <= {"keep 4 and 9 apart", "keep 3 and 8 apart", "undecided", "merge 4 and 9",
                                 "merge 3 and 8", "keep 4 and 9 apart, train with soft",
                                 "keep 3 and 8 apart, train with soft"}
