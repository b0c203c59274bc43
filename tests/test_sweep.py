"""sweep: parsing --vary, the grid it expands to, and one tiny real sweep (trained, reused, drawn)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ambig_bench.compare import compare
from ambig_bench.config import ExperimentConfig
from ambig_bench.errors import UserError
from ambig_bench.report import report
from ambig_bench.sweep import draw_sweep, parse_vary, run_sweep, sweep_configs
from tests.conftest import tiny_config
from tests.test_report import plant_sweep


def test_parse_vary_types_values_like_the_option():
    vary = parse_vary(["between-fraction=0.01, 0.1", "train_size=200,400", "augment=on,off"])
    assert vary == {"between_fraction": [0.01, 0.1], "train_size": [200, 400], "augment": ["on", "off"]}
    assert all(isinstance(v, int) for v in vary["train_size"])


@pytest.mark.parametrize("spec, message", [
    ("between-fraction", "expected OPTION=V1,V2"),
    ("between-fraction=", "expected OPTION=V1,V2"),
    ("nope=1,2", "unknown option 'nope'"),
    ("train-size=10.5", "not a valid int"),
    ("seed=1,2", "cannot be swept"),
    ("device=cpu,cuda", "cannot be swept"),
    ("mixup-alpha=0.2,0.4", "mixup's own option; run each value with `ambig-bench run --strategy mixup --mixup-alpha"),
    ("epochs=2,2", "repeated value"),
])
def test_parse_vary_rejects_bad_specs(spec, message):
    with pytest.raises(UserError, match=message):
        parse_vary([spec])


def test_same_option_twice_is_an_error():
    with pytest.raises(UserError, match="varied twice"):
        parse_vary(["epochs=2,3", "epochs=4"])


def test_grid_is_the_product_times_seeds_and_strategies():
    exp = ExperimentConfig(tiny_config(), ["soft", "hard"], seeds=2, out="unused")
    configs = sweep_configs(exp, parse_vary(["between-fraction=0.02,0.1", "epochs=1,2,3"]))
    assert len(configs) == 2 * 3 * 2 * 2
    assert {(c.source["blend"]["between_fraction"], c.train.epochs, c.strategy, c.seed) for c in configs} == {
        (f, e, s, seed) for f in (0.02, 0.1) for e in (1, 2, 3) for s in ("soft", "hard") for seed in (0, 1)}
    # Everything not varied keeps the template's value.
    assert {c.model.width for c in configs} == {tiny_config().model.width}


def test_bad_value_fails_before_training(tmp_path):
    exp = ExperimentConfig(tiny_config(), ["soft"], seeds=1, out=str(tmp_path))
    with pytest.raises(UserError, match="--between-fraction must be in"):
        run_sweep(exp, parse_vary(["between-fraction=0.05,1.5"]))
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_tiny_sweep_trains_reuses_and_draws(tmp_path):
    exp = ExperimentConfig(tiny_config(epochs=1, train_size=300), ["soft"], seeds=1, out=str(tmp_path))
    first = run_sweep(exp, parse_vary(["between-fraction=0.05,0.2"]))
    assert [r.status for r in first.runs] == ["done", "done"]
    assert first.figures == [tmp_path / "sweep-between-fraction.png"]
    assert first.figures[0].read_bytes()[:4] == b"\x89PNG"
    comparison = compare(tmp_path)
    assert comparison.group_by == ["between_fraction"]
    assert sorted(comparison.summary.between_fraction.unique()) == [0.05, 0.2]
    assert set(comparison.summary.n_seeds) == {1}
    # A finished grid point is reused, and a new value only trains what is new.
    again = run_sweep(exp, parse_vary(["between-fraction=0.2,0.1"]))
    assert [r.status for r in again.runs] == ["reused", "done"]


def test_varied_model_takes_its_own_recipe_and_names_are_checked():
    from ambig_bench import options
    from ambig_bench.errors import UserError
    from ambig_bench.models import MODELS
    from ambig_bench.options import build
    from ambig_bench.sweep import sweep_points

    points = sweep_points(build({}), {"model": ["small-cnn", "fast-cifar"]})
    for point in points:
        recipe = MODELS.get(point.model.name).recipe.option_defaults()
        assert {k: options.get(point, k) for k in recipe} == recipe
    with pytest.raises(UserError, match="unknown model 'nope'"):
        sweep_points(build({}), {"model": ["small-cnn", "nope"]})
    with pytest.raises(UserError, match="only the blend source"):
        sweep_points(build(dict(between_source="human")), {"between_fraction": [0.01, 0.1]})


def test_every_sweep_point_is_checked_against_the_image_size_before_training(tmp_path):
    from typer.testing import CliRunner

    from ambig_bench.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", "--vary", "translate=1,8", "--augment", "on", "--epochs", "1",
                                      "--width", "8", "--seeds", "1", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == ["error: --translate 8 must be smaller than the 8x8 images"]
    assert not out.exists()


def test_the_sweep_figure_is_the_reports_and_nothing_else_is_written(tmp_path):
    plant_sweep(tmp_path, seeds=3)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert draw_sweep(tmp_path) == [tmp_path / "sweep-between-fraction.png"]
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert sorted(set(after) - set(before)) == [Path("sweep-between-fraction.png")]  # compare's files are compare's
    report(tmp_path)
    assert (tmp_path / "sweep-between-fraction.png").read_bytes() == \
        (tmp_path / "figures" / "sweep-between-fraction.png").read_bytes()


@pytest.mark.parametrize("vary, says", [
    pytest.param("image-size=8,100000", "--image-size 100000 needs 163 TiB", id="int"),
    pytest.param("between-fraction=0.05,0.9999999", "--between-fraction 0.9999999 needs", id="float"),
    pytest.param("model=small-cnn,nope", "unknown model 'nope'", id="str"),
    pytest.param("freeze=false,true", "--freeze trains only the head", id="bool"),
])
def test_a_bad_value_of_every_option_kind_fails_before_the_first_point(monkeypatch, vary, says):
    monkeypatch.setenv("AMBIG_BENCH_MEMORY", "2GiB")
    with pytest.raises(UserError, match=re.escape(says)):
        sweep_configs(ExperimentConfig(tiny_config(), ["soft"], seeds=1, out="unused"), parse_vary([vary]))


def test_a_pair_the_data_cannot_serve_is_refused_before_the_first_point_trains(tmp_path, monkeypatch):
    """On a folder whose labels have in-between images of a:b only, the point of pair b:c fails; the point of a:b,
    though first, trains nothing (as `run --pairs 1:2` writes nothing)."""
    from ambig_bench.cli import app
    from tests.test_bad_input import cli, photo_tree

    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))
    root = photo_tree(tmp_path)
    rows = [f"{p.relative_to(root).as_posix()},{'a|b' if p.parent.name == 'a' and p.stem < '4' else p.parent.name}"
            for p in sorted(root.glob("*/*.png"))]
    (root / "labels.csv").write_text("\n".join(["file,label", *rows]) + "\n")
    out = tmp_path / "out"
    result = cli.invoke(app, ["sweep", "--dataset", "folder", "--labels", str(root / "labels.csv"), "--vary",
                              "pairs=0:1,1:2", "--epochs", "1", "--width", "8", "--seeds", "1", "--device", "cpu",
                              "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == ["error: --between-source human: no train image is in-between for "
                                                  "pairs b:c; lower --human-second or --human-pair-mass, or choose "
                                                  "other --pairs"]
    assert not out.exists()
