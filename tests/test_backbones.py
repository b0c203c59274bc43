"""Backbones, starting weights, linear probes and images of any size: small random-initialised torchvision models
and tiny images, never the network."""

from __future__ import annotations

import json
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from ambig_bench import features
from ambig_bench.cli import app
from ambig_bench.datasets import prepare
from ambig_bench.imageio import fit_image
from ambig_bench.models import MODELS, build_network, head_name
from ambig_bench.options import build
from ambig_bench.predict import predict_paths
from ambig_bench.strategies import STRATEGIES
from ambig_bench.weights import Start

cli = CliRunner()
BACKBONES = [name for name in MODELS.names() if not MODELS.get(name).widenable]
TINY = ["--epochs", "1", "--batch-size", "16", "--device", "cpu", "--seeds", "1"]


def photos(root: Path, sizes: list[tuple[int, int]] | None = None, between: int = 4, grey: bool = False) -> Path:
    """Three classes of 16x16 (or `sizes`) photos, a labels CSV with `a|b` rows and a fixed split."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(36 + between):
        cls = ["a", "b", "c"][i % 3]
        w, h = sizes[i % len(sizes)] if sizes else (16, 16)
        shape = (h, w) if grey else (h, w, 3)
        base = {"a": 60, "b": 130, "c": 200}[cls]
        pixels = np.clip(rng.normal(base, 30, shape), 0, 255).astype(np.uint8)
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        label = "a|b" if i >= 36 else cls
        split = "test" if i % 4 == 0 else "val" if i % 4 == 1 else "train"
        rows.append(f"img/{i}.png,{label},{split}")
    (root / "labels.csv").write_text("file,label,split\n" + "\n".join(rows) + "\n")
    return root / "labels.csv"


def run(args: list[str], tmp_path: Path, monkeypatch) -> tuple[object, list[str]]:
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))
    result = cli.invoke(app, ["run", *TINY, *args])
    return result, [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_the_head_has_the_strategys_outputs(strategy):
    s = STRATEGIES.get(strategy)(3, [(0, 1)])
    net = build_network("mobilenet_v3_small", torch.zeros(4, 3, 16, 16, dtype=torch.uint8), s.num_outputs, 0)
    assert net[1].get_submodule(head_name(net[1])).out_features == s.num_outputs
    assert net(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, s.num_outputs)


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_replaces_its_head(name):
    net = MODELS.get(name).factory(3, 224, 5, 0)
    assert net.get_submodule(head_name(net)).out_features == 5


def saved_resnet(path: Path, kind: str, outputs: int = 1000) -> dict[str, torch.Tensor]:
    """A random resnet18 state dict (ImageNet head) saved as safetensors or with torch.save."""
    from torchvision.models import resnet18

    state = resnet18(num_classes=outputs).state_dict()
    if kind == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return state


@pytest.mark.parametrize("kind", ["safetensors", "torch"])
def test_weights_load_exactly_the_files_tensors_and_the_head_is_new(tmp_path, kind):
    state = saved_resnet(tmp_path / "w.bin", kind)
    cfg = build({"model": "resnet18", "weights": str(tmp_path / "w.bin")})
    from ambig_bench.models import starting_weights

    start = starting_weights(cfg.model)
    net = build_network("resnet18", torch.zeros(2, 3, 16, 16, dtype=torch.uint8), 4, 0, start, 0.1)[1]
    loaded = net.state_dict()
    for key, tensor in state.items():
        if key.startswith("fc."):
            assert loaded[key].shape[0] == 4  # re-initialised with the strategy's outputs
        else:
            assert torch.equal(loaded[key], tensor), key
    assert start.origin["sha256"] and start.origin["weights"] == "file"
    # Pretrained layers learn at --backbone-lr times the head's rate.
    assert net.conv1.lr_share == 0.1 and not hasattr(net.fc, "lr_share")


def test_grey_images_enter_an_rgb_backbone_as_rgb():
    net = build_network("resnet18", torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8), 3, 0)
    assert net[0].mean.numel() == 3 and net(torch.zeros(2, 1, 32, 32, dtype=torch.uint8)).shape == (2, 3)


def test_resize_policy_scales_the_shorter_side_and_crops_the_centre():
    pixels = np.arange(10 * 20, dtype=np.uint8).reshape(10, 20)  # 20 wide, 10 tall
    assert np.array_equal(np.asarray(fit_image(Image.fromarray(pixels), 10)), pixels[:, 5:15])
    assert fit_image(Image.fromarray(pixels), 5).size == (5, 5)
    assert fit_image(Image.fromarray(pixels), 40).size == (40, 40)


def test_mixed_sizes_and_grey_are_accepted_and_the_policy_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))
    labels = photos(tmp_path, sizes=[(16, 16), (24, 16), (16, 30)], grey=True)
    data = prepare(build({"dataset": "folder", "labels": str(labels)}))
    assert tuple(data.images.shape[1:]) == (1, 16, 16)  # mixed: the smallest shorter side
    data = prepare(build({"dataset": "folder", "labels": str(labels), "image_size": 12}))
    assert tuple(data.images.shape[1:]) == (1, 12, 12) and data.info["image_policy"]["size"] == [12, 12]


def test_hugging_face_imagefolder_layout(tmp_path, monkeypatch):
    """metadata.csv with file_name, split folders train/validation/test."""
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    rows = []
    for i in range(30):
        split = ["train", "train", "validation", "test", "train"][i % 5]
        (tmp_path / "hf" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "hf" / split / f"{i}.png")
        rows.append(f"{split}/{i}.png,{'xy'[i % 2] if i % 7 else 'x|y'}")
    (tmp_path / "hf" / "metadata.csv").write_text("file_name,label\n" + "\n".join(rows) + "\n")
    data = prepare(build({"dataset": "folder", "data_dir": str(tmp_path / "hf")}))
    assert data.info["between_source"] == "human"
    assert set(data.counts()) >= {"train", "val", "test"} and data.counts()["val"]["clear"] > 0


def test_auto_picks_human_for_a_or_b_rows_and_blend_otherwise(tmp_path, monkeypatch):
    labels = photos(tmp_path)
    result, lines = run(["--dataset", "folder", "--labels", str(labels), "--model", "small-cnn", "--width", "4",
                         "--out", str(tmp_path / "o1")], tmp_path, monkeypatch)
    assert result.exit_code == 0 and "in-between source: human (--between-source auto: 4 in-between" in lines[0]
    (tmp_path / "tree" / "a").mkdir(parents=True)
    result, lines = run(["--dataset", "folder", "--labels", str(labels), "--between-source", "blend",
                         "--model", "small-cnn", "--width", "4", "--out", str(tmp_path / "o2")], tmp_path, monkeypatch)
    assert result.exit_code == 0 and lines[0].startswith("warning: --between-source blend ignores the 4 in-between")
    digits = prepare(build({"dataset": "digits"}))
    assert digits.info["between_source"] == "blend" and "auto" in digits.info["notes"][0]


def bad_pickle(d: Path) -> None:
    """A pickle that names an arbitrary class (it would be built on loading); safetensors suffix or not."""
    (d / "w.safetensors").write_bytes(pickle.dumps({"conv1.weight": Path("/etc/passwd")}))


@pytest.mark.parametrize("make, args, says", [
    pytest.param(lambda d: saved_resnet(d / "w.safetensors", "safetensors"), ["--model", "mobilenet_v3_small",
                 "--weights", "{d}/w.safetensors"], "does not fit mobilenet_v3_small: key", id="other-architecture"),
    pytest.param(bad_pickle, ["--model", "resnet18", "--weights", "{d}/w.safetensors"], "refused", id="pickle"),
    pytest.param(lambda d: None, ["--model", "resnet18", "--weights", "{d}/none.pt"], "no such file", id="missing"),
    pytest.param(lambda d: None, ["--model", "resnet18", "--image-size", "0"], "--image-size must be at least 1",
                 id="image-size-0"),
    pytest.param(lambda d: None, ["--model", "resnet18", "--freeze"], "--freeze trains only the head",
                 id="freeze-without-weights"),
    pytest.param(lambda d: None, ["--model", "small-cnn", "--pretrained"], "no standard pretrained weights",
                 id="pretrained-small-cnn"),
])
def test_bad_weights_and_options_are_one_line_exit_2_nothing_written(tmp_path, monkeypatch, make, args, says):
    make(tmp_path)
    labels = photos(tmp_path)
    out = tmp_path / "out"
    result, lines = run(["--dataset", "folder", "--labels", str(labels), "--out", str(out),
                         *[a.format(d=tmp_path) for a in args]], tmp_path, monkeypatch)
    assert result.exit_code == 2 and len(lines) == 1 and says in lines[0], result.stderr
    assert not out.exists()


def test_pretrained_offline_without_a_cached_copy_names_the_file(tmp_path, monkeypatch):
    from torchvision.models import _api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(_api, "load_state_dict_from_url", offline)
    monkeypatch.setattr("ambig_bench.weights.reachable", lambda url, timeout=2.0: True)  # the host answers, the
    # download then fails
    out = tmp_path / "out"
    result, lines = run(["--dataset", "folder", "--labels", str(photos(tmp_path)), "--model", "mobilenet_v3_small",
                         "--pretrained", "--out", str(out)], tmp_path, monkeypatch)
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert "mobilenet_v3_small-" in lines[0] and str(tmp_path / "torch") in lines[0] and "put https://" in lines[0]
    assert not out.exists()


def test_features_are_cached_and_recomputed_when_images_or_backbone_change(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path))
    net = build_network("mobilenet_v3_small", torch.zeros(2, 3, 16, 16, dtype=torch.uint8), 3, 0)
    extractor, _ = features.extractor_of(net)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    first, seconds = features.cached_features(images, extractor, torch.device("cpu"))
    assert seconds > 0 and len(list(tmp_path.glob("features-*"))) == 1
    features._memo.clear()  # a new process: read from disk
    again, seconds = features.cached_features(images, extractor, torch.device("cpu"))
    assert seconds == 0 and torch.equal(first, again)
    flipped, seconds = features.cached_features(images.flip(0), extractor, torch.device("cpu"))
    assert seconds == 0 and torch.equal(flipped, first.flip(0))  # the same images in another order
    _, seconds = features.cached_features(255 - images, extractor, torch.device("cpu"))
    assert seconds > 0
    with torch.no_grad():
        extractor[1].features[0][0].weight.add_(1)
    _, seconds = features.cached_features(images, extractor, torch.device("cpu"))
    assert seconds > 0 and len(list(tmp_path.glob("features-*"))) == 2  # one file per backbone


def test_weights_from_a_run_dir(tmp_path, monkeypatch):
    """Pretrain with the tool, then fine-tune from its run directory: the network's tensors carry over."""
    labels = photos(tmp_path)
    result, _ = run(["--dataset", "folder", "--labels", str(labels), "--model", "small-cnn", "--width", "4",
                     "--strategy", "hard", "--out", str(tmp_path / "pre")], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.stderr
    [run_dir] = (tmp_path / "pre" / "runs").iterdir()
    cfg = build({"model": "small-cnn", "width": 4, "weights": str(run_dir)})
    from ambig_bench.models import starting_weights

    start = starting_weights(cfg.model)
    assert isinstance(start, Start) and start.origin["weights"] == "run" and start.mean is not None
    net = build_network("small-cnn", torch.zeros(2, 3, 16, 16, dtype=torch.uint8), 4, 4, start)
    assert torch.equal(net[1][0].weight, start.state["0.weight"])
    assert torch.equal(net[0].mean.flatten(), start.mean.flatten())


@pytest.mark.slow
@pytest.mark.parametrize("freeze", [False, True])
def test_predict_on_a_fine_tuned_run_gives_its_own_test_probabilities(tmp_path, monkeypatch, freeze):
    labels = photos(tmp_path)
    saved_resnet(tmp_path / "w.safetensors", "safetensors")
    out = tmp_path / "out"
    result, _ = run(["--dataset", "folder", "--labels", str(labels), "--model", "resnet18", "--weights",
                     str(tmp_path / "w.safetensors"), "--image-size", "16", "--strategy", "soft", "--out", str(out),
                     *(["--freeze"] if freeze else [])], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.stderr
    [run_dir] = (out / "runs").iterdir()
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["start"]["sha256"] and meta["mode"].startswith("linear probe" if freeze else "full")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["feature_seconds"] > 0) == freeze
    saved = pd.read_csv(run_dir / "predictions.csv")
    test = saved[saved.split == "test"]
    table = pd.read_csv(labels)
    files = [tmp_path / f for f in table[table.split == "test"].file]
    report = predict_paths(run_dir, files)
    got = np.array([r.probs for r in report.images])
    assert np.allclose(got, test[[c for c in test.columns if c.startswith("p_")]].to_numpy(), atol=1e-4)


def test_pretrained_reads_torchvisions_cache_with_the_weights_own_normalisation(tmp_path, monkeypatch):
    """A copy already in torchvision's cache is used as is (no network): its tensors, ImageNet's mean and std."""
    from torchvision.models import get_model_weights, mobilenet_v3_small

    from ambig_bench.weights import pretrained_start

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = get_model_weights("mobilenet_v3_small").DEFAULT
    cached = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    state = mobilenet_v3_small().state_dict()
    torch.save(state, cached)
    pretrained_start.cache_clear()
    start = pretrained_start("mobilenet_v3_small")
    assert all(torch.equal(start.state[k], v) for k, v in state.items())
    assert torch.allclose(start.mean, torch.tensor([0.485, 0.456, 0.406]) * 255)
    assert start.origin["weights"] == f"torchvision:{weights}" and start.origin["path"] == str(cached)
    pretrained_start.cache_clear()  # the next test's TORCH_HOME is another folder


@pytest.mark.slow
def test_timm_models_are_registered_on_first_use(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    entry = MODELS.get("timm:resnet10t")
    net = entry.factory(3, 224, 5, 0)
    assert net.get_submodule(head_name(net)).out_features == 5 and not entry.widenable
    assert entry.recipe.optimizer == "adamw" and entry.input_size == 176  # timm's own
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("ambig_bench.weights.reachable", lambda url, timeout=2.0: False)  # the Hub is not asked
    out = tmp_path / "out"
    result, lines = run(["--dataset", "folder", "--labels", str(photos(tmp_path)), "--model", "timm:resnet10t",
                         "--pretrained", "--out", str(out)], tmp_path, monkeypatch)
    assert result.exit_code == 2 and len(lines) == 1 and "Hugging Face cache" in lines[0], result.stderr
    assert not out.exists()


def test_timm_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "timm", None)  # as if the extra were not installed
    result, lines = run(["--model", "timm:never_installed", "--out", str(tmp_path / "out")], tmp_path, monkeypatch)
    assert result.exit_code == 2 and len(lines) == 1 and "pip install 'ambig-bench[timm]'" in lines[0]


def test_pretrained_without_network_says_so_at_once_without_a_downloading_line(tmp_path, monkeypatch, capfd):
    from torchvision.models import _api

    from ambig_bench import weights

    def must_not_download(*args, **kwargs):
        raise AssertionError("a download was tried on a machine that cannot reach the host")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights, "reachable", lambda url, timeout=2.0: False)
    monkeypatch.setattr(_api, "load_state_dict_from_url", must_not_download)
    weights.pretrained_start.cache_clear()
    out = tmp_path / "out"
    result, lines = run(["--dataset", "folder", "--labels", str(photos(tmp_path)), "--model", "mobilenet_v3_small",
                         "--pretrained", "--out", str(out)], tmp_path, monkeypatch)
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert "cannot reach download.pytorch.org" in lines[0] and str(tmp_path / "torch") in lines[0]
    assert "Downloading" not in result.stderr + capfd.readouterr().err
    assert not out.exists()


def test_reachable_is_false_for_a_port_nobody_listens_on():
    import socket

    from ambig_bench.weights import reachable

    with socket.socket() as s:  # a port that was free a moment ago: nothing accepts on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert not reachable(f"http://127.0.0.1:{port}/x", timeout=1.0)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert reachable(f"http://127.0.0.1:{listening.getsockname()[1]}/x", timeout=1.0)


@pytest.mark.parametrize("dataset", ["cifar10", "fashion-mnist"])
def test_download_without_network_is_one_line_at_once(dataset, tmp_path, monkeypatch, capfd):
    from ambig_bench.datasets import base

    monkeypatch.setattr(base, "reachable", lambda url, timeout=2.0: False)
    monkeypatch.setenv("AMBIG_BENCH_DATA", str(tmp_path / "nothing"))
    out = tmp_path / "out"
    result, lines = run(["--dataset", dataset, "--download", "--data-dir", str(tmp_path / "data"), "--out", str(out)],
                        tmp_path, monkeypatch)
    assert result.exit_code == 2 and len(lines) == 1 and "cannot reach" in lines[0], result.stderr
    assert "Downloading" not in result.stdout + result.stderr + capfd.readouterr().out
    assert not out.exists()
