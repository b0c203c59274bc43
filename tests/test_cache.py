"""The cache's one rule, kind by kind: named by version and inputs, a damaged file is a miss that is rewritten, an
unwritable cache only warns; and the feature bank serves every seed's images once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ambig_bench import cache, catalogue, features, imageio
from ambig_bench.datasets import prepare
from ambig_bench.models import build_network
from tests.conftest import tiny_config


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))
    features._memo.clear()
    yield
    features._memo.clear()


def test_cache_directory_follows_the_environment(tmp_path, monkeypatch):
    assert cache.directory() == tmp_path / "cache"
    monkeypatch.delenv("AMBIG_BENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.directory() == tmp_path / "xdg" / "ambig-bench"
    assert cache.library_folder("torchvision") == tmp_path / "xdg" / "ambig-bench" / "torchvision"
    with pytest.raises(KeyError):
        cache.library_folder("elsewhere")


def test_a_file_is_named_by_its_kind_version_and_inputs(monkeypatch):
    name = cache.file("images", ["a", b"b"])
    assert name.name.startswith("images-") and name.suffix == ".npz" and name == cache.file("images", ["a", b"b"])
    assert name != cache.file("images", ["ab"]) != cache.file("images", ["a", b"c"])
    monkeypatch.setitem(cache.KINDS, "images", cache.Kind("4", ".npz"))
    assert cache.file("images", ["a", b"b"]) != name  # a bumped version never reads the old files


@pytest.mark.parametrize("damage", [b"", b"garbage", b"\x00" * 64], ids=["empty", "garbage", "zeros"])
def test_a_damaged_file_is_a_miss_and_is_rewritten(damage):
    path = cache.file("catalogue", ["x"])
    assert cache.cached(path, cache.JSON, lambda: {"a": 1}) == {"a": 1}
    assert cache.cached(path, cache.JSON, lambda: pytest.fail("recomputed a valid file")) == {"a": 1}
    path.write_bytes(damage)
    assert cache.cached(path, cache.JSON, lambda: {"a": 2}) == {"a": 2}
    assert cache.load(path, cache.JSON) == {"a": 2}


def test_an_unwritable_cache_warns_and_gives_the_value(tmp_path, monkeypatch, capsys):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    assert cache.cached(cache.file("catalogue", ["x"]), cache.JSON, lambda: [1]) == [1]
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: could not write the cache file ") and "computes it again" in line


def test_every_kind_reads_a_damaged_file_as_a_miss(tmp_path):
    root = tmp_path / "tree" / "a"
    root.mkdir(parents=True)
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(root / "0.png")
    decoded = imageio.decode_tree(tmp_path / "tree")
    net = build_network("small-cnn", torch.zeros(2, 1, 8, 8, dtype=torch.uint8), 2, 4)
    extractor, _ = features.extractor_of(net)
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    feats, _ = features.cached_features(images, extractor, torch.device("cpu"))
    catalogue.catalogue.cache_clear()  # remembered per process: this one reads or writes the file
    listing = catalogue.catalogue()
    files = sorted(cache.directory().glob("*-*"))
    assert [f.name.split("-")[0] for f in files] == ["catalogue", "features", "images"]
    for f in files:
        f.write_bytes(b"garbage")
    features._memo.clear()
    catalogue.catalogue.cache_clear()
    assert catalogue.catalogue() == listing and cache.load(files[0], cache.JSON) == listing
    assert np.array_equal(imageio.decode_tree(tmp_path / "tree").images, decoded.images)
    again, seconds = features.cached_features(images, extractor, torch.device("cpu"))
    assert seconds > 0 and torch.equal(again, feats)
    assert all(f.read_bytes() != b"garbage" for f in files)


def test_two_seeds_compute_each_image_once_and_share_its_features(monkeypatch):
    """A --freeze grid: seed 1 has seed 0's clear-cut images in its own split order and its own blends."""
    seeds = [prepare(tiny_config(seed=seed)) for seed in (0, 1)]
    assert not torch.equal(seeds[0].images, seeds[1].images)
    net = build_network("small-cnn", seeds[0].images[:2], len(seeds[0].class_names), 4)
    computed: list[int] = []
    predict = features.predict_logits

    def counted(model, images, device, **kwargs):
        computed.append(len(images))
        return predict(model, images, device, **kwargs)

    monkeypatch.setattr(features, "predict_logits", counted)
    probes = [features.probe(net, data, torch.device("cpu")) for data in seeds]
    digests = [features.digests_of(data.images) for data in seeds]
    shared = np.isin(digests[1], digests[0])
    assert computed == [len(np.unique(digests[0])), len(np.unique(digests[1][~shared]))]
    assert shared.mean() > 0.8 and probes[1].seconds > 0  # seed 1 computes only its own blends
    row = {d.tobytes(): i for i, d in enumerate(digests[0])}
    same = [row[d.tobytes()] for d in digests[1][shared]]
    assert torch.equal(probes[1].data.images[torch.from_numpy(shared)], probes[0].data.images[same])
    features._memo.clear()  # another process: both seeds from the file, nothing computed
    again = [features.probe(net, data, torch.device("cpu")) for data in seeds]
    assert len(computed) == 2 and [p.seconds for p in again] == [0.0, 0.0]
    assert all(torch.equal(a.data.images, p.data.images) for a, p in zip(again, probes, strict=True))


def test_the_cache_command_lists_and_clears_only_what_ambig_bench_wrote(tmp_path):
    from typer.testing import CliRunner

    from ambig_bench.cli import app

    top = cache.directory()
    cache.keep(cache.file("catalogue", ["x"]), cache.JSON, {"a": 1})
    (top / "features-0123456789abcdef01234567.safetensors").write_bytes(b"f" * 2048)
    (top / "torchvision").mkdir()
    (top / "torchvision" / "cifar-10-python.tar.gz").write_bytes(b"t" * 4096)
    (top / ".images-abc.npz.1234.tmp").write_bytes(b"partial")
    (top / "notes.txt").write_text("the user's own file, in a folder they pointed the cache at")
    assert {kind: len(paths) for kind, paths in cache.contents().items()} == {
        "catalogue": 1, "features": 1, "torchvision": 1, "unfinished writes": 1}
    assert cache.size(top / "torchvision") == 4096

    listed = CliRunner().invoke(app, ["cache"], terminal_width=200)
    assert listed.exit_code == 0 and "features" in listed.stdout and "torchvision" in listed.stdout
    cleared = CliRunner().invoke(app, ["cache", "--clear"], terminal_width=200)
    assert cleared.exit_code == 0, cleared.stderr
    assert sorted(p.name for p in top.iterdir()) == ["notes.txt"]
    assert cache.contents() == {}
