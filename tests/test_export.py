"""export --format onnx: one graph (network, normalisation, test-time views, the strategy's decoding, conformal sets)
that onnxruntime runs to the same answers as `predict`: probabilities within 1e-5, decisions and sets exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ambig_bench.calibration import Calibration
from ambig_bench.cli import app
from ambig_bench.conformal import METHODS, aps_scores, lac_scores, raps_scores
from ambig_bench.export import Decoder, conformal_scores, export_onnx
from ambig_bench.models import Preprocess, build_model
from ambig_bench.predict import Predictor
from ambig_bench.prepare import prepare_data
from ambig_bench.runner import run_experiment
from ambig_bench.strategies import STRATEGIES
from tests.conftest import tiny_config

ort = pytest.importorskip("onnxruntime", reason="export needs the onnx extra: pip install 'ambig-bench[onnx]'")
pytest.importorskip("onnx", reason="export needs the onnx extra: pip install 'ambig-bench[onnx]'")
NUMPY_SCORES = {"lac": lac_scores, "aps": aps_scores, "raps": raps_scores}
K, PAIRS = 6, [(0, 1), (2, 3)]


@pytest.mark.parametrize("method", METHODS)
def test_conformal_scores_in_the_graph_match_conformal_py(method):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), size=200).astype(np.float32)
    probs[:5, :2] = probs[:5, :2].mean(1, keepdims=True)  # ties: the lower class index ranks first in both
    got = conformal_scores(torch.from_numpy(probs), method).numpy()
    np.testing.assert_allclose(got, NUMPY_SCORES[method](probs), rtol=0, atol=1e-12)


def predictor(strategy: str, tta: int, method: str, qhat: float | np.ndarray = 0.6) -> Predictor:
    """An untrained network with a strategy's decoding: the decoding, not the accuracy, is what is compared."""
    torch.manual_seed(0)
    s = STRATEGIES.get(strategy)(K, PAIRS)
    model = torch.nn.Sequential(Preprocess(torch.full((1,), 100.0), torch.full((1,), 60.0)),
                                build_model("small-cnn", 1, 8, s.num_outputs, 8)).eval()
    meta = {"tta": tta, "threshold": 0.2, "in_channels": 1, "image_size": 8, "image_width": 8,
            "class_names": [f"c{i}" for i in range(K)], "pairs": PAIRS, "strategy": strategy, "model": "small-cnn"}
    groups = "kind" if np.ndim(qhat) == 0 else "class"
    return Predictor(None, model, meta, s, Calibration(method, 0.1, True, qhat, 100, K, groups))


# One qhat, or one per class (class-conditional calibration; +inf: a class always in the set).
PER_CLASS = np.array([0.3, 0.9, np.inf, 0.5, 0.7, 0.95])


@pytest.mark.parametrize("strategy", STRATEGIES.names())
@pytest.mark.parametrize("tta, method, qhat", [(0, "lac", 0.6), (1, "aps", PER_CLASS), (2, "raps", 0.6)])
def test_the_decoder_computes_what_predict_computes_for_every_strategy(strategy, tta, method, qhat):
    p = predictor(strategy, tta, method, qhat)
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        probs, decision, conformal, ambiguity = Decoder(p).eval()(images)
    want = p.predict(images)
    np.testing.assert_allclose(probs.numpy(), want["probs"], atol=1e-6)
    assert np.array_equal(decision.numpy(), want["decision"]) and np.array_equal(conformal.numpy(), want["conformal"])
    np.testing.assert_allclose(ambiguity.numpy(), want["ambiguity"], atol=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = tiny_config(strategy="extra-class", epochs=3)
    return cfg, run_experiment(cfg, tmp_path_factory.mktemp("export")).run_dir


def test_onnxruntime_answers_as_predict_json_on_image_files(trained, tmp_path):
    cfg, run_dir = trained
    test = prepare_data(cfg).subset("test")
    rows = list(range(6)) + test.is_between.nonzero().squeeze(1)[:6].tolist()
    for row in rows:
        Image.fromarray(test.images[row, 0].numpy()).save(tmp_path / f"row{row:04d}.png")
    onnx_file = tmp_path / "model.onnx"
    conformal = ["--conformal", "aps", "--conformal-groups", "class", "--alpha", "0.3"]  # one qhat per class
    done = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(onnx_file), *conformal])
    assert done.exit_code == 0, done.output
    predicted = CliRunner().invoke(app, ["predict", str(run_dir), str(tmp_path), "--format", "json", *conformal])
    assert predicted.exit_code == 0, predicted.output
    by_file = {image["path"].rsplit("/", 1)[-1]: image for image in json.loads(predicted.stdout)["images"]}

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    names = meta["class_names"]
    assert meta["strategy"] == "extra-class" and meta["conformal"]["method"] == "aps"
    assert meta["conformal"]["qhat"] == json.loads(predicted.stdout)["conformal"]["qhat"]  # per class name
    assert meta["image_policy"]["size"] == [8, 8] and len(names) == 10
    images = np.stack([test.images[row].numpy() for row in rows])
    probs, decision, conformal, ambiguity = session.run(None, {"images": images})
    for i, row in enumerate(rows):
        want = by_file[f"row{row:04d}.png"]
        np.testing.assert_allclose(probs[i], [want["probabilities"][n] for n in names], atol=1e-5)
        assert {names[k] for k in np.flatnonzero(decision[i])} == set(want["decision_set"])
        assert {names[k] for k in np.flatnonzero(conformal[i])} == set(want["conformal_set"])
        assert ambiguity[i] == pytest.approx(want["ambiguity"], abs=1e-5)


def test_a_graph_that_disagrees_with_the_run_is_not_kept(trained, tmp_path, monkeypatch):
    from ambig_bench import export

    monkeypatch.setattr(export, "PROB_TOLERANCE", -1.0)  # every graph "disagrees"
    out = tmp_path / "model.onnx"
    done = CliRunner().invoke(app, ["export", str(trained[1]), "--out", str(out)])
    assert done.exit_code == 1 and "disagrees" in done.stderr and not out.exists(), done.output
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_bad_input_in_one_line(tmp_path):
    for args in (["export", str(tmp_path)], ["export", str(tmp_path), "--format", "tflite"]):
        done = CliRunner().invoke(app, args)
        assert done.exit_code == 2 and len(done.stderr.strip().splitlines()) == 1, done.output


def test_the_api_exports_too(trained, tmp_path):
    exported = export_onnx(trained[1], tmp_path / "m.onnx", alpha=0.2, method="lac")
    assert exported.path.is_file() and exported.checked == 256 and exported.max_prob_difference <= 1e-5
