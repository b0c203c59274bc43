"""Memory and size limits: every size is checked against the machine before it is allocated ($AMBIG_BENCH_MEMORY
sets the machine's memory here, so no test depends on the machine), the total of decoded images, class caps, and
image-size outliers."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ambig_bench import budget
from ambig_bench.errors import UserError
from ambig_bench.imageio import decode_tree
from tests.test_bad_input import TINY, assert_refused, cli, png


@pytest.fixture(autouse=True)
def machine(monkeypatch, tmp_path):
    monkeypatch.setenv(budget.MEMORY_ENV, "2GiB")
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("text, expected", [("2GiB", 2 << 30), ("512 MiB", 512 << 20), ("8e9", 8 * 10**9),
                                            ("1.5g", 3 << 29), ("100", 100)])
def test_memory_sizes_parse(text, expected):
    assert budget.parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1GiB", "2 GiBs", "inf", ""])
def test_a_bad_memory_setting_is_one_line(text):
    with pytest.raises(UserError, match=budget.MEMORY_ENV):
        budget.parse_size(text)


def test_the_machines_memory_is_known_without_the_setting(monkeypatch):
    monkeypatch.delenv(budget.MEMORY_ENV)
    assert budget.available() > 0
    assert budget.size_text(16_174_000_000) == "15.1 GiB" and budget.size_text(2**40 * 16.3) == "16.3 TiB"


@pytest.mark.parametrize("args, says", [
    pytest.param(["--image-size", "3000"], ("--image-size 3000 needs 151 GiB for 1,797 images of 1×3000×3000",
                                            "2.0 GiB available", "at most --image-size 345"), id="image-size-3000"),
    pytest.param(["--image-size", "100000"], ("--image-size 100000 needs 163 TiB", "at most --image-size 345"),
                 id="image-size-100000"),
    pytest.param(["--between-fraction", "0.9999999"], ("--between-fraction 0.9999999 needs",
                                                       "at most --between-fraction 0.9"), id="between-fraction"),
    pytest.param(["--natural-folds", "100000"], "--natural-folds must be at most 1000", id="natural-folds-cap"),
])
def test_sizes_beyond_the_machine_are_refused_before_allocating(tmp_path, args, says):
    assert_refused(tmp_path, [*TINY, *args], says)


def test_the_largest_image_size_named_fits(monkeypatch):
    """The advice is an oracle of itself: the size it names passes the same check, one more does not."""
    budget.check_images(1797, 1, 345, "--image-size 345", "--image-size")
    with pytest.raises(UserError, match="at most --image-size 345"):
        budget.check_images(1797, 1, 346, "--image-size 346", "--image-size")


def test_a_sweep_point_beyond_the_machine_is_refused_before_the_first_trains(tmp_path):
    out = tmp_path / "out"
    result = cli.invoke(app(), ["sweep", "--vary", "image-size=8,100000", *TINY, "--seeds", "1", "--out", str(out)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--image-size 100000 needs 163 TiB" in result.stderr and not out.exists()


def app():
    from ambig_bench.cli import app

    return app


def test_too_many_folds_for_the_data_is_one_line(tmp_path):
    assert_refused(tmp_path, [*TINY, "--between-source", "natural", "--natural-folds", "500"],
                   ("--natural-folds 500: only", "at most --natural-folds"))


# -- the total of decoded images, from the headers --------------------------------------------------------------

def test_many_large_images_are_refused_in_total_before_decoding(tmp_path):
    """60 PNGs of 6000×6000 (each within the per-image limit): one line from their headers, nothing decoded."""
    root = tmp_path / "photos"
    big = png(np.zeros((6000, 6000), np.uint8))
    for c in "ab":
        (root / c).mkdir(parents=True)
        for i in range(30):
            (root / c / f"{i}.png").write_bytes(big)
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"photos: 60 images decoded at their own sizes needs 22\.\d GiB in all; "
                                        r"this machine has 2\.0 GiB available; give --image-size \d+ or less"):
        decode_tree(root)
    assert time.perf_counter() - started < 5  # headers only: decoding them all takes far longer


def npz_with(path: Path, arrays: dict[str, np.ndarray], headers: dict[str, tuple] | None = None) -> Path:
    """An .npz of `arrays`, plus arrays given only by their header (shape), with no data behind it."""
    with zipfile.ZipFile(path, "w") as z:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            z.writestr(f"{name}.npy", buffer.getvalue())
        for name, shape in (headers or {}).items():
            buffer = io.BytesIO()
            np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
            z.writestr(f"{name}.npy", buffer.getvalue())
    return path


@pytest.mark.parametrize("arrays, headers, says", [
    pytest.param({"y": np.zeros(20, int)}, {"x": (20, 20000, 20000)}, "x of shape (20, 20000, 20000) needs 74.5 GiB",
                 id="x-huge"),
    pytest.param({"x": np.zeros((4, 8, 8), np.uint8), "y": np.array([0, 1, 2, 10**12])}, None,
                 "1,000,000,000,001 classes, more than the 1,000", id="y-huge-class"),
    pytest.param({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(4, int), "probs": np.ones((4, 1001))}, None,
                 "probs of shape (4, 1001): 1,001 classes", id="probs-too-many-classes"),
])
def test_npz_sizes_are_refused_from_the_headers(tmp_path, arrays, headers, says):
    path = npz_with(tmp_path / "d.npz", arrays, headers)
    assert_refused(tmp_path, [*TINY, "--dataset", "npz", "--data-dir", str(path)], says)


def test_a_vote_csv_with_200000_class_columns_is_refused_in_linear_time(tmp_path):
    csv = tmp_path / "votes.csv"
    csv.write_text("file," + ",".join(f"c{i}" for i in range(200_000)) + "\nx.png," + "0," * 199_999 + "1\n")
    started = time.perf_counter()
    assert_refused(tmp_path, [*TINY, "--dataset", "folder", "--labels", str(csv)],
                   ("votes.csv: more than 1,002 columns", "more than the 1,000 classes"))
    assert time.perf_counter() - started < 5


# -- image-size outliers ---------------------------------------------------------------------------------------

def grey_tree(root: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    rng = np.random.default_rng(0)
    for name, (h, w) in sizes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(png(rng.integers(0, 256, (h, w), dtype=np.uint8)))
    return root


def test_a_stray_thumbnail_is_refused_and_named(tmp_path):
    sizes = {f"{c}/{i}.png": (8, 8) for c in "ab" for i in range(6)} | {"a/thumb.png": (1, 1)}
    with pytest.raises(UserError, match=r"a/thumb\.png is 1×1, far smaller than the other images \(median shorter "
                                        r"side 8 px\)"):
        decode_tree(grey_tree(tmp_path / "photos", sizes))


def test_an_image_a_quarter_of_the_median_is_refused(tmp_path):
    sizes = {f"a/{i}.png": (64, 64) for i in range(5)} | {"b/small.png": (12, 15)}
    with pytest.raises(UserError, match=r"b/small\.png is 15×12"):
        decode_tree(grey_tree(tmp_path / "photos", sizes))


def test_mixed_sizes_in_range_say_the_size_chosen_once(tmp_path, capsys):
    sizes = {f"a/{i}.png": (12, 12) for i in range(3)} | {"b/0.png": (10, 14), "b/1.png": (12, 12)}
    decoded = decode_tree(grey_tree(tmp_path / "photos", sizes))
    assert decoded.images.shape == (5, 1, 10, 10)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(warnings) == 1 and "all fitted to 10×10" in warnings[0] and "b/0.png" in warnings[0]


def test_freeze_features_beyond_the_machine_are_refused_before_they_are_computed(monkeypatch):
    from ambig_bench import features
    from ambig_bench.data import LabelledImages
    from ambig_bench.models import build_network

    monkeypatch.setenv("AMBIG_BENCH_MEMORY", "100KiB")
    images = torch.zeros(2000, 1, 8, 8, dtype=torch.uint8)
    net = build_network("small-cnn", images[:4], 10, 16)
    n = len(images)
    data = LabelledImages(images, torch.zeros(n, dtype=torch.long), torch.full((n,), -1), torch.ones(n),
                          torch.zeros(n, dtype=torch.int8), [str(k) for k in range(10)], [(0, 1)])
    computed = []
    monkeypatch.setattr(features, "cached_features", lambda *a: computed.append(a))
    with pytest.raises(UserError, match=r"--freeze with 2,000 images needs .* for 32 features each"):
        features.probe(net, data, torch.device("cpu"))
    assert computed == []


def test_a_wide_group_is_never_larger_than_the_memory_holds(monkeypatch):
    from ambig_bench.batched import group_size, network_bytes
    from ambig_bench.models import build_network
    from tests.conftest import tiny_config

    cfg = tiny_config(batch_runs="on")
    net = build_network("small-cnn", torch.zeros(4, 1, 8, 8, dtype=torch.uint8), 10, 16)
    monkeypatch.setenv("AMBIG_BENCH_MEMORY", str(3 * network_bytes(net)))
    assert group_size(cfg, net, (100, 1, 8, 8), 10, 8, torch.device("cpu")) == 3
    monkeypatch.setenv("AMBIG_BENCH_MEMORY", "64GiB")
    assert group_size(cfg, net, (100, 1, 8, 8), 10, 8, torch.device("cpu")) == 8
