"""compare on hand-made run directories: the table's numbers, the golden markdown, failures shown."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ambig_bench.cli import app
from ambig_bench.compare import compare, comparison_markdown
from ambig_bench.errors import UserError
from ambig_bench.metrics import METRICS
from ambig_bench.options import build, flat_values
from ambig_bench.rundir import flatten_config
from tests.fake_runs import fake_run_dir, run_record

GOLDEN = Path(__file__).parent / "golden" / "comparison.md"


def fake_run(out: Path, strategy: str, seed: int, metrics: dict | None, nest: bool = True, **config) -> None:
    run_dir, _ = fake_run_dir(out, strategy, seed, nest, **config)
    if metrics is None:
        (run_dir / "FAILED").write_text(json.dumps({"error": "training loss became nan in epoch 3"}))
        return
    # As a run on images without votes; `metrics` may override the record (converged: False, ...).
    full = {m: 0.5 for m in METRICS} | {"human_ce": math.nan} | run_record(strategy) | metrics
    (run_dir / "metrics.json").write_text(json.dumps(full))
    (run_dir / "DONE").write_text("")


def planted(out: Path) -> None:
    """soft: clear_acc 0.90/0.91/0.92; hard: the same minus a 0.05 shift; partial identical to soft."""
    for seed, acc in enumerate([0.90, 0.91, 0.92]):
        fake_run(out, "soft", seed, {"clear_acc": acc, "between_set_acc": 0.80})
        fake_run(out, "hard", seed, {"clear_acc": acc - 0.05, "between_set_acc": 0.10 + seed / 100})
        fake_run(out, "partial", seed, {"clear_acc": acc, "between_set_acc": 0.80})
    fake_run(out, "partial", 3, None)


def test_summary_numbers(tmp_path):
    planted(tmp_path)
    c = compare(tmp_path)
    soft = c.summary.set_index("strategy").loc["soft"]
    assert soft.clear_acc_mean == pytest.approx(0.91)
    # t(0.975, 2) = 4.302653; sd = 0.01 -> half-width 4.302653 * 0.01 / sqrt(3)
    assert soft.clear_acc_ci_high - soft.clear_acc_mean == pytest.approx(4.302653 * 0.01 / 3**0.5, rel=1e-5)
    partial = c.summary.set_index("strategy").loc["partial"]
    assert (partial.n_seeds, partial.n_failed) == (3, 1)
    assert "failed" in comparison_markdown(c)


def test_paired_verdicts(tmp_path):
    planted(tmp_path)
    paired = compare(tmp_path, baseline="soft").paired.set_index(["metric", "strategy"])
    # Identical strategies: every difference is 0, inside the margin with no spread. A 0.05 shift on three seeds
    # cannot reach significance with an exact sign test, nor be shown inside ±0.02: undecided.
    assert paired.loc[("clear_acc", "partial")].verdict == "equivalent within ±0.02"
    assert paired.loc[("clear_acc", "hard")].verdict == "undecided"
    assert paired.loc[("clear_acc", "partial")].p_value == 1
    hard = paired.loc[("clear_acc", "hard")]
    assert hard.diff_mean == pytest.approx(-0.05) and hard.test == "sign" and hard.p_value == pytest.approx(0.25)


def test_comparison_files_are_written(tmp_path):
    planted(tmp_path)
    compare(tmp_path)
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert list(table.strategy) == ["hard", "partial", "soft"]
    assert (tmp_path / "paired.csv").exists() and (tmp_path / "comparison.md").exists()


@pytest.mark.parametrize("field", ["schedule", "momentum", "width"])
def test_runs_of_an_older_version_lacking_a_field_are_an_experiment_of_their_own(tmp_path, field):
    """Upgrading and re-running into the same directory: the older runs lack the new field, they are not merged."""
    for seed in range(2):
        fake_run(tmp_path, "soft", seed, {"clear_acc": 0.8}, nest=False)
        fake_run(tmp_path, "hard", seed, {"clear_acc": 0.7}, nest=False)
    for config in (tmp_path / "runs").glob("*/config.json"):  # written by the older version
        config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != field}))
    for seed in range(2):
        fake_run(tmp_path, "soft", seed, {"clear_acc": 0.9}, lr=0.001)
        fake_run(tmp_path, "hard", seed, {"clear_acc": 0.85}, lr=0.001)
    c = compare(tmp_path)
    assert field in c.group_by
    means = c.summary.set_index([field, "strategy"]).clear_acc_mean
    new = str(flat_values(build({}))[field])  # the older runs' rows turn the column into text
    assert means[("(absent)", "soft")] == pytest.approx(0.8) and means[(new, "soft")] == pytest.approx(0.9)
    assert len(c.paired[c.paired.metric == "clear_acc"]) == 2, "one soft-vs-hard test per experiment"


def test_a_copied_run_directory_is_a_clear_error(tmp_path):
    planted(tmp_path)
    original = next((tmp_path / "runs").glob("soft-seed0-*"))
    shutil.copytree(original, original.with_name(original.name + "-copy"))
    with pytest.raises(UserError, match="are the same strategy, seed and configuration; remove one"):
        compare(tmp_path)


def test_groups_when_configs_differ(tmp_path):
    for fraction in (0.02, 0.1):
        for seed in range(2):
            fake_run(tmp_path, "soft", seed, {"clear_acc": 0.9 + fraction}, between_fraction=fraction)
    c = compare(tmp_path)
    assert c.group_by == ["between_fraction"]
    assert sorted(c.summary.between_fraction) == [0.02, 0.1]


def test_markdown_matches_golden_file(tmp_path):
    out = tmp_path / "golden-demo"
    planted(out)
    text = comparison_markdown(compare(out))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "report format changed: rerun with UPDATE_GOLDEN=1 and review the diff"


def test_flat_and_nested_config_files_give_the_same_fields():
    cfg = build({"strategy": "hard", "seed": 2, "model": "fast-cifar", "lr": 0.1, "blend_low": 0.3})
    flat = flatten_config(cfg.to_dict())
    assert flat == flat_values(cfg)  # every option by its flat name, e.g. "model": {"name": ...} as "model"
    assert (flat["model"], flat["lr"], flat["blend_low"], flat["dataset"]) == ("fast-cifar", 0.1, 0.3, "digits")
    assert flatten_config(flat) == flat  # a flat file (older runs) is read as it is


def test_nested_config_files_compare_like_flat_ones(tmp_path):
    """A directory of nested config.json files (this version) gives the columns, groups and markdown of flat ones."""
    tables = {}
    for nest in (False, True):
        out = tmp_path / ("nested" if nest else "flat") / "same-name"
        for fraction in (0.02, 0.1):
            for seed in range(2):
                fake_run(out, "soft", seed, {"clear_acc": 0.9 + fraction}, nest, between_fraction=fraction)
                fake_run(out, "hard", seed, {"clear_acc": 0.8 + fraction}, nest, between_fraction=fraction)
        c = compare(out)
        assert c.group_by == ["between_fraction"]
        assert {"dataset", "model", "lr", "between_fraction", "blend_low"} <= set(c.runs.columns)
        tables[nest] = c
    assert comparison_markdown(tables[True]) == comparison_markdown(tables[False])
    pd.testing.assert_frame_equal(tables[True].summary, tables[False].summary)
    assert "| between-fraction | strategy |" in comparison_markdown(tables[True]), "swept options headed as typed"


def test_compare_json_holds_the_csv_numbers_and_the_paired_tests(tmp_path):
    """`compare --format json`: summary = comparison.csv, paired = paired.csv, NaN as null; nothing else on stdout."""
    planted(tmp_path)
    done = CliRunner().invoke(app, ["compare", str(tmp_path), "--format", "json"])
    assert done.exit_code == 0, done.output
    shown = json.loads(done.stdout)
    assert shown["baseline"] == "soft" and shown["group_by"] == []
    csv = pd.read_csv(tmp_path / "comparison.csv")
    from_json = pd.DataFrame(shown["summary"])[list(csv.columns)].astype(csv.dtypes.to_dict())
    pd.testing.assert_frame_equal(from_json, csv)
    hard = next(r for r in shown["paired"] if r["strategy"] == "hard" and r["metric"] == "clear_acc")
    assert hard["diff_mean"] == pytest.approx(-0.05) and hard["p_value"] == pytest.approx(0.25)
    assert shown["metrics"]["clear_acc"]["direction"] == "higher is better"
    assert CliRunner().invoke(app, ["compare", str(tmp_path), "--format", "xml"]).exit_code == 2
