"""predict: new image files -> decision, probabilities, ambiguity and conformal set; bad files; formats."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

from ambig_bench.calibration import calibrate_run, conformal_summary, truth_of
from ambig_bench.conformal import calibrate, prediction_sets, set_metrics
from ambig_bench.errors import UserError
from ambig_bench.imageio import find_images, read_image
from ambig_bench.predict import PredictionReport, predict_paths, render
from ambig_bench.prepare import prepare_data
from ambig_bench.runner import run_experiment
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = tiny_config(strategy="extra-class", epochs=3)
    return cfg, run_experiment(cfg, tmp_path_factory.mktemp("predict")).run_dir


@pytest.fixture(scope="module")
def saved_test(trained):
    return pd.read_csv(trained[1] / "predictions.csv", dtype={"pred_set": str}).query("split == 'test'")


@pytest.fixture(scope="module")
def image_dir(trained, tmp_path_factory):
    """Test images as files: clear-cut and in-between ones as lossless 8×8 PNG (some in a subfolder), one
    enlarged RGB JPEG, a corrupt PNG, a text file named .png, and a text and a hidden file that a folder search
    skips."""
    test = prepare_data(trained[0]).subset("test")
    folder = tmp_path_factory.mktemp("images")
    (folder / "nested" / "deeper").mkdir(parents=True)
    rows = list(range(3)) + test.is_between.nonzero().squeeze(1)[:3].tolist()
    for n, row in enumerate(rows):
        where = folder / "nested" / "deeper" if n % 2 else folder
        Image.fromarray(test.images[row, 0].numpy()).save(where / f"row{row:04d}.png")
    Image.fromarray(test.images[0, 0].numpy()).convert("RGB").resize((40, 30)).save(folder / "big.jpg")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    (folder / "text.png").write_text("not an image")
    (folder / "readme.txt").write_text("skipped")
    (folder / "._big.jpg").write_bytes(b"macOS resource fork, skipped like every hidden file")
    return folder, rows


def by_name(report: PredictionReport) -> dict:
    return {r.path.rsplit("/", 1)[-1]: r for r in report.images}


def test_png_predictions_match_the_runs_own_test_predictions(trained, saved_test, image_dir):
    folder, rows = image_dir
    report = predict_paths(trained[1], [folder])
    results = by_name(report)
    names = report.class_names
    for row in rows:
        result, saved = results[f"row{row:04d}.png"], saved_test.iloc[row]
        assert not result.error and not result.changes
        assert np.allclose(result.probs, [saved[f"p_{k}"] for k in range(len(names))], atol=1e-5)
        # The decision is the strategy's own set decoding, as recorded in predictions.csv at training time.
        assert sorted(result.decision) == sorted(names[int(k)] for k in saved.pred_set.split("|"))
        assert result.ambiguity == pytest.approx(saved.ambiguity, abs=1e-5)
        shown = [result.probs[names.index(n)] for n in result.decision]
        assert shown == sorted(shown, reverse=True), "most probable class first"


def test_conformal_set_is_the_calibrated_threshold_on_probabilities(trained, image_dir):
    report = predict_paths(trained[1], [image_dir[0]], alpha=0.2)
    for r in report.images:
        if r.error:
            continue
        expected = {n for n, p in zip(report.class_names, r.probs, strict=True) if 1 - p <= report.calibration.qhat}
        assert set(r.conformal) == expected


def test_folders_are_searched_recursively_and_bad_files_become_error_rows(trained, image_dir):
    folder, rows = image_dir
    report = predict_paths(trained[1], [folder, folder / "missing.png"])
    results = by_name(report)
    assert set(results) == {f"row{r:04d}.png" for r in rows} | {"big.jpg", "corrupt.png", "text.png",
                                                                  "missing.png"}
    assert {name for name, r in results.items() if r.error} == {"corrupt.png", "text.png", "missing.png"}
    assert results["missing.png"].error == "no such file"
    assert "unreadable or truncated image" in results["text.png"].error
    assert report.exit_code == 1
    assert all(r.decision for r in report.images if not r.error), "the readable files are still predicted"


def test_only_bad_files_gives_exit_code_2_and_no_files_is_an_error(trained, image_dir, tmp_path):
    folder, _ = image_dir
    assert predict_paths(trained[1], [folder / "corrupt.png"]).exit_code == 2
    assert predict_paths(trained[1], [folder / "row0000.png"]).exit_code == 0
    with pytest.raises(UserError, match="no PNG/JPEG images found"):
        find_images([tmp_path])


def test_images_are_converted_to_the_training_format_with_a_warning(trained, image_dir):
    folder, _ = image_dir
    pixels, changes = read_image(folder / "big.jpg", channels=1, size=8)
    assert pixels.shape == (1, 8, 8) and pixels.dtype == np.uint8
    assert changes == [("converted to grey", "RGB"), ("resized to 8×8", "40×30")]
    report = predict_paths(trained[1], [folder / "big.jpg", folder / "row0000.png"])
    warnings = report.warnings()
    assert len(warnings) == 2 and all("1 image(s)" in w and "big.jpg" in w for w in warnings)


def test_sixteen_bit_png_keeps_its_contrast(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    pixels, _ = read_image(tmp_path / "deep.png", channels=1, size=8)
    assert pixels.flatten().tolist() == np.round(ramp.flatten() / 257).astype(int).tolist()


def test_csv_json_and_table_formats(trained, image_dir):
    folder, rows = image_dir
    report = predict_paths(trained[1], [folder])
    table = pd.read_csv(io.StringIO(render(report, "csv")), keep_default_na=False)
    assert len(table) == len(report.images)
    assert {"path", "decision", "conformal_set", "ambiguity", "p_0", "p_9", "error"} <= set(table.columns)
    assert (table.error != "").sum() == 2 and (table.decision[table.error == ""] != "").all()

    data = json.loads(render(report, "json"))
    assert data["strategy"] == "extra-class" and data["conformal"]["coverage_target"] == pytest.approx(0.9)
    first = data["images"][0]
    assert first["decision"] == " or ".join(first["decision_set"])
    assert sum(first["probabilities"].values()) == pytest.approx(1, abs=1e-4)

    console = Console(record=True, width=10_000, file=io.StringIO())
    console.print(render(report, "table"))
    text = console.export_text()
    assert all(r.path in text for r in report.images)
    assert "error: unreadable or truncated image" in text

    with pytest.raises(UserError, match="--format must be one of"):
        render(report, "xml")


def test_calibration_covers_its_own_validation_rows(trained):
    frame = pd.read_csv(trained[1] / "predictions.csv").query("split == 'val'")
    probs = frame[[f"p_{k}" for k in range(10)]].to_numpy()
    truth = truth_of(frame, 10)
    between = (frame.label_b >= 0).to_numpy()
    assert truth.sum(1).tolist() == (1 + between).tolist()
    for alpha in (0.1, 0.3):
        marginal = calibrate_run(trained[1], alpha, "aps", per_kind=False)
        assert marginal.n == len(frame) and marginal.qhat == calibrate(probs, truth, alpha, "aps")
        per_kind = calibrate_run(trained[1], alpha, "aps", per_kind=True)
        assert per_kind.qhat == max(calibrate(probs[rows], truth[rows], alpha, "aps") for rows in (between, ~between))
        sets = prediction_sets(probs, per_kind.qhat, "aps")
        for rows in (between, ~between):  # per kind, each kind of validation image is covered on its own
            assert set_metrics(sets[rows], truth[rows])["coverage"] >= 1 - alpha
    # Stricter alpha -> larger threshold -> the conformal set can only grow.
    assert calibrate_run(trained[1], 0.05).qhat >= calibrate_run(trained[1], 0.3).qhat


@pytest.mark.parametrize("alpha, method, message", [(0.0, "lac", "--alpha"), (1.2, "lac", "--alpha"),
                                                    (0.1, "naps", "--conformal")])
def test_bad_conformal_options(trained, alpha, method, message):
    with pytest.raises(UserError, match=message):
        calibrate_run(trained[1], alpha, method)


def test_conformal_summary_on_the_test_rows(trained, saved_test):
    summary = conformal_summary(trained[1], alpha=0.1, method="lac")
    assert set(summary) == {"cp_coverage", "cp_size"} | {f"{d}_{part}_{m}" for d in ("cp", "thr") for part, m in
                            [("clear", "coverage"), ("clear", "size"), ("between", "coverage"),
                             ("between", "size"), ("between", "exact")]}
    between_share = (saved_test.label_b >= 0).mean()
    assert summary["cp_coverage"] == pytest.approx(
        between_share * summary["cp_between_coverage"] + (1 - between_share) * summary["cp_clear_coverage"])
    # The threshold decoding's exact-pair rate is the run's own between_set_acc metric.
    metrics = json.loads((trained[1] / "metrics.json").read_text())
    assert summary["thr_between_exact"] == pytest.approx(metrics["between_set_acc"])
    assert all(0 <= v <= 1 for k, v in summary.items() if not k.endswith("size"))
    assert summary["thr_clear_size"] >= 1 and not math.isnan(summary["cp_between_size"])
    marginal = conformal_summary(trained[1], alpha=0.1, method="lac", per_kind=False)
    assert summary["cp_between_coverage"] >= marginal["cp_between_coverage"]
    assert summary["cp_clear_coverage"] >= marginal["cp_clear_coverage"]


def test_models_trained_with_augmentation_are_predicted_as_they_were_evaluated(tmp_path):
    """With augmentation the run averages mirrored and shifted views; predict must do the same."""
    cfg = tiny_config(strategy="soft", epochs=2, augment="on")
    run_dir = run_experiment(cfg, tmp_path / "out").run_dir
    saved = pd.read_csv(run_dir / "predictions.csv").query("split == 'test'")
    test = prepare_data(cfg).subset("test")
    for row in range(4):
        Image.fromarray(test.images[row, 0].numpy()).save(tmp_path / f"row{row}.png")
    results = by_name(predict_paths(run_dir, [tmp_path / f"row{row}.png" for row in range(4)]))
    for row in range(4):
        probs = results[f"row{row}.png"].probs
        assert np.allclose(probs, [saved.iloc[row][f"p_{k}"] for k in range(len(probs))], atol=1e-5)


def test_the_table_never_breaks_a_file_name_however_narrow_the_terminal(trained, image_dir, tmp_path):
    from typer.testing import CliRunner

    from ambig_bench.cli import app

    long = tmp_path / ("a-rather-long-folder-name-" * 3) / "photo-of-a-four-or-a-nine-scanned-at-work.png"
    long.parent.mkdir()
    long.write_bytes((image_dir[0] / "row0000.png").read_bytes())
    result = CliRunner().invoke(app, ["predict", str(trained[1]), str(long)], env={"COLUMNS": "40"})
    assert result.exit_code == 0, result.output
    assert str(long) in result.stdout, "the name is printed whole, on one line"
