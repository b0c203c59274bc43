"""suggest: images ranked by how in-between the trained runs find them. Held-back in-between images must come out
near the top (precision at k far above the rate of in-between images among those given)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ambig_bench.cli import app
from ambig_bench.prepare import prepare_data
from ambig_bench.runner import run_experiment
from ambig_bench.suggest import rank_fractions, suggest
from tests.conftest import tiny_config

cli = CliRunner()


def test_rank_fractions_put_the_lowest_at_0_the_highest_at_1_and_share_ties():
    assert rank_fractions(np.array([0.3, 0.1, 0.9, 0.3])).tolist() == [0.5, 0.0, 1.0, 0.5]
    assert rank_fractions(np.array([7.0])).tolist() == [0.0]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Two strategies whose ambiguity scores have different scales, trained on digits; 20 held-out in-between
    test images and 80 clear-cut ones as files."""
    out = tmp_path_factory.mktemp("suggest")
    for strategy in ("soft", "extra-class"):
        cfg = tiny_config(strategy=strategy, epochs=8, width=16, lr=0.01)
        run_experiment(cfg, out)
    test = prepare_data(cfg).subset("test")
    folder = out / "unlabelled"
    folder.mkdir()
    between = test.is_between.nonzero().squeeze(1)[:20].tolist()
    clear = (~test.is_between).nonzero().squeeze(1)[:80].tolist()
    for kind, rows in (("between", between), ("clear", clear)):
        for row in rows:
            Image.fromarray(test.images[row, 0].numpy()).save(folder / f"{kind}{row:04d}.png")
    (folder / "broken.png").write_text("not an image")
    return out, folder


@pytest.mark.slow
def test_held_back_in_between_images_are_ranked_near_the_top(results):
    out, folder = results
    found = suggest(out, [folder])
    assert len(found.runs) == 2 and list(found.unreadable) == [str(folder / "broken.png")]
    is_between = found.ranking.path.str.contains("/between").to_numpy()
    assert len(is_between) == 100 and is_between.mean() == 0.2
    precision = is_between[:20].mean()
    assert precision >= 0.6, precision  # 3x the 0.2 a random order gives
    top = found.ranking.iloc[0]
    assert top.pair in {"4|9", "3|8"} and 0 <= top.p_b <= top.p_a + 1 and 0 <= top.between_runs <= 1


@pytest.mark.slow
def test_suggest_formats_and_a_single_run(results):
    out, folder = results
    as_csv = cli.invoke(app, ["suggest", str(out), str(folder), "--top", "5", "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(rows) == 5 and set(rows[0]) == {"path", "score", "pair", "p_a", "p_b", "between_runs",
                                               "pair_agreement"}
    assert "broken.png" in as_csv.stderr and as_csv.stderr.startswith("warning:")
    as_json = json.loads(cli.invoke(app, ["suggest", str(out), str(folder), "--format", "json", "--top", "0"]).stdout)
    assert len(as_json["images"]) == 100 and len(as_json["runs"]) == 2
    one_run = next((out / "runs").glob("soft-*"))
    single = cli.invoke(app, ["suggest", str(one_run), str(folder), "--format", "json"])
    assert single.exit_code == 0 and json.loads(single.stdout)["runs"] == [one_run.name], single.output
    only_soft = cli.invoke(app, ["suggest", str(out), str(folder), "--strategy", "soft", "--format", "json"])
    assert json.loads(only_soft.stdout)["runs"] == [one_run.name]


def test_suggest_refuses_bad_input_in_one_line(tmp_path):
    (tmp_path / "a.png").write_text("x")
    for args in (["suggest", str(tmp_path), str(tmp_path)], ["suggest", str(tmp_path / "nope"), str(tmp_path)]):
        done = cli.invoke(app, args)
        assert done.exit_code == 2 and len(done.stderr.strip().splitlines()) == 1, done.output
