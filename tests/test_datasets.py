"""Every loader and in-between source on tiny files the tests write: PNG trees, idx.gz, npz, CSVs, pickles."""

from __future__ import annotations

import functools
import gzip
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ambig_bench import cache, imageio
from ambig_bench.data import CLEAR, SPLITS, RawImages
from ambig_bench.datasets import DATASETS, prepare
from ambig_bench.datasets.base import BETWEEN_KIND, CLEAR_KIND, UNSURE_KIND, SourceContext, judge_votes
from ambig_bench.datasets.cifar10 import CLASSES as CIFAR_CLASSES
from ambig_bench.datasets.fashion_mnist import CLASSES as FASHION_CLASSES
from ambig_bench.datasets.natural import NaturalOptions, natural
from ambig_bench.imageio import decode_tree
from ambig_bench.train import fit_reference
from tests.conftest import tiny_config


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test decodes into its own cache, so no test sees another's (or the user's) cached images."""
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))


# -- fixture writers (also used by test_datasets_bad_input.py) -------------------------------------------
def shade(label: int) -> int:
    """Each class gets its own grey level, so a test can read an image's class back from its pixels."""
    return 10 + 24 * label


def write_image(path: Path, value: int, size: int = 6, rgb: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if rgb else (size, size)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)


def write_tree(root: Path, classes: list[str], per_class: int, splits: tuple[str, ...] = ()) -> Path:
    """root/<class>/<i>.png, or root/<split>/<class>/<i>.png for each split; pixel value = shade(class)."""
    for prefix in splits or ("",):
        for label, name in enumerate(classes):
            for i in range(per_class):
                write_image(root / prefix / name / f"{i}.png", shade(label))
    return root


def write_labels(root: Path, header: str, rows: list[str], name: str = "labels.csv") -> Path:
    """A labels CSV: header line and rows."""
    path = root / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_fashion(folder: Path, n_train: int = 40, n_test: int = 20) -> Path:
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.stack([np.full((28, 28), shade(y))
                                                                      for y in labels]))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def read_back(images: torch.Tensor) -> torch.Tensor:
    """Class of each shade()-coloured image."""
    return ((images.flatten(1)[:, 0].float() - 10) / 24).round().long()


# -- image decoding and its cache --------------------------------------------------------------------------
def test_decode_tree_grey_rgb_and_sizes(tmp_path):
    write_image(tmp_path / "a" / "0.png", 10)
    write_image(tmp_path / "a" / "1.jpg", 200, rgb=True)
    (tmp_path / "a" / "notes.txt").write_text("not an image, ignored")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"junk, ignored")
    decoded = decode_tree(tmp_path)
    assert decoded.paths == ["a/0.png", "a/1.jpg"]
    # One RGB image makes the whole set RGB; the grey one fills all three channels.
    assert decoded.images.dtype == np.uint8 and decoded.images.shape == (2, 3, 6, 6)
    assert (decoded.images[0] == 10).all() and abs(int(decoded.images[1].mean()) - 200) <= 2


def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "tree", ["x", "y"], 2)
    first = decode_tree(root)
    assert len(list(cache.directory().glob("images-*.npz"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(imageio, "decode_files", no_decoding)
    again = decode_tree(root)
    assert again.paths == first.paths and np.array_equal(again.images, first.images)
    monkeypatch.undo()
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))
    write_image(root / "x" / "0.png", 255)  # new content, size and mtime: a new key
    assert decode_tree(root).images[0].min() == 255
    for damaged in cache.directory().glob("images-*.npz"):  # a damaged cache file is decoded anew
        damaged.write_bytes(b"garbage")
    assert np.array_equal(decode_tree(root).images[1:], first.images[1:])


def test_archive_reads_like_the_folder(tmp_path):
    root = write_tree(tmp_path / "tree", ["cat", "dog"], 3, splits=("train", "test"))
    archive = tmp_path / "tree.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=".")
    folder, packed = decode_tree(root), decode_tree(archive)
    assert packed.paths == folder.paths and np.array_equal(packed.images, folder.images)


# -- folder -----------------------------------------------------------------------------------------------
def test_folder_tree_flat_layout(tmp_path):
    given = ["dog", "cat", "bird"]
    root = write_tree(tmp_path / "photos", given, 12)
    data = prepare(tiny_config(dataset="folder", data_dir=str(root), pairs="cat:dog"))
    assert data.class_names == ["bird", "cat", "dog"]  # sorted by name, like torchvision's ImageFolder
    clear = ~data.is_between
    expected = torch.tensor([data.class_names.index(given[i]) for i in read_back(data.images[clear])])
    assert torch.equal(data.label_a[clear], expected)
    assert set(data.counts()) == {"train", "val", "test"}
    assert data.info["origin"] == str(root) and data.info["between_source"] == "blend"


def test_folder_tree_with_split_folders(tmp_path):
    root = write_tree(tmp_path / "photos", ["a", "b"], 10, splits=("train", "test"))
    raw = DATASETS.get("folder")(tiny_config(dataset="folder", data_dir=str(root)))
    assert raw.split is not None
    assert int((raw.split == SPLITS["train"]).sum()) == int((raw.split == SPLITS["test"]).sum()) == 20
    data = prepare(tiny_config(dataset="folder", data_dir=str(root), pairs="a:b"))
    counts = data.counts()
    assert counts["test"]["clear"] == 20 and counts["val"]["clear"] + counts["train"]["clear"] == 20


def ab_folder(root: Path) -> dict:
    """A folder dataset whose labels CSV has `A|B` rows: 3 classes × 30 images, 24 between cat and dog."""
    rows = []
    for i in range(30):
        for label, name in enumerate(["cat", "dog", "fox"]):
            write_image(root / f"{name}{i}.png", shade(label))
            rows.append(f"{name}{i}.png,{name}")
    for i in range(24):
        write_image(root / f"mix{i}.png", 90)
        rows.append(f"mix{i}.png,dog|cat")  # written in either order: the pair is cat:dog
    return {"dataset": "folder", "labels": str(write_labels(root, "file,label", rows))}


def test_folder_csv_labels_with_in_between_rows(tmp_path):
    csv = ab_folder(tmp_path)["labels"]
    raw = DATASETS.get("folder")(tiny_config(dataset="folder", labels=str(csv)))
    assert raw.class_names == ["cat", "dog", "fox"] and raw.default_pairs == "cat:dog"
    assert raw.default_source == "human"
    data = prepare(tiny_config(dataset="folder", labels=str(csv), between_source="human"))
    between = data.is_between
    assert int(between.sum()) == 24 and data.share_a[between].eq(0.5).all()
    assert data.label_a[between].eq(0).all() and data.label_b[between].eq(1).all()
    assert all(data.counts()[s]["between"] > 0 for s in ("train", "val", "test"))  # stratified splits


def test_folder_csv_votes_keep_their_split_and_pair_order(tmp_path):
    rows = []
    for i in range(20):
        for label, (name, split) in enumerate([("cat", "train"), ("dog", "train"), ("cat", "test"), ("dog", "test")]):
            write_image(tmp_path / "img" / f"{name}{split}{i}.png", shade(label % 2))
            votes = "9,1" if name == "cat" else "0,10"
            rows.append(f"img/{name}{split}{i}.png,{votes},{split}")
    for i, split in enumerate(["train"] * 6 + ["test"] * 6):
        write_image(tmp_path / "img" / f"mix{i}.png", 40)
        rows.append(f"img/mix{i}.png,3,7,{split}")  # 30% cat / 70% dog: in-between
    for i, split in enumerate(["train", "test"]):
        write_image(tmp_path / "img" / f"odd{i}.png", 40)
        rows.append(f"img/odd{i}.png,,0.1,{split}")  # blank = 0: clear-cut dog
    csv = write_labels(tmp_path, "file,cat,dog,split", rows)
    data = prepare(tiny_config(dataset="folder", labels=str(csv), between_source="human", pairs="dog:cat"))
    between = data.is_between
    assert int(between.sum()) == 12
    # label_a is the configured pair's first class (dog) and share_a its share of the pair's votes.
    assert data.label_a[between].eq(1).all() and data.label_b[between].eq(0).all()
    assert torch.allclose(data.share_a[between], torch.tensor(0.7))
    counts = data.counts()
    assert counts["test"] == {"clear": 41, "between": 6} and counts["train"]["between"] + counts["val"]["between"] == 6


# -- fashion-mnist ----------------------------------------------------------------------------------------
def test_fashion_mnist_from_idx_files(tmp_path):
    folder = write_fashion(tmp_path / "fm")
    raw = DATASETS.get("fashion-mnist")(tiny_config(dataset="fashion-mnist", data_dir=str(folder)))
    assert raw.images.shape == (60, 1, 28, 28) and raw.images.dtype == torch.uint8
    assert raw.class_names == FASHION_CLASSES and raw.default_pairs == "T-shirt/top:Shirt,Pullover:Coat"
    assert int((raw.split == SPLITS["test"]).sum()) == 20
    assert torch.equal(read_back(raw.images), raw.labels)


def test_fashion_mnist_in_a_torchvision_root_uncompressed(tmp_path):
    raw_dir = write_fashion(tmp_path / "root" / "FashionMNIST" / "raw")
    for gz in raw_dir.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    raw = DATASETS.get("fashion-mnist")(tiny_config(dataset="fashion-mnist", data_dir=str(tmp_path / "root")))
    assert len(raw.labels) == 60


# -- cifar10 / cifar10h on tiny stand-ins ---------------------------------------------------------------------
def write_cifar_tree(root: Path, per_class: int = 2) -> Path:
    index = 0
    for label, name in enumerate(CIFAR_CLASSES):
        for i in range(per_class):
            write_image(root / "train" / name / f"{i:04d}.png", shade(label), size=8, rgb=True)
            write_image(root / "test" / name / f"{index:05d}.png", shade(label), size=8, rgb=True)
            index += 1
    return root


def test_cifar10_tree(tmp_path):
    raw = DATASETS.get("cifar10")(tiny_config(dataset="cifar10", data_dir=str(write_cifar_tree(tmp_path / "t"))))
    assert raw.class_names == CIFAR_CLASSES and raw.images.shape == (40, 3, 8, 8)
    assert torch.equal(read_back(raw.images), raw.labels)
    assert int((raw.split == SPLITS["test"]).sum()) == 20


def test_cifar10h_protocol_on_a_stand_in(tmp_path):
    tree = write_cifar_tree(tmp_path / "c10", per_class=8)
    n_test = 80
    labels = torch.arange(n_test) // 8
    votes = np.zeros((n_test, 10))
    votes[np.arange(n_test), labels.numpy()] = 50
    cat, dog = CIFAR_CLASSES.index("cat"), CIFAR_CLASSES.index("dog")
    mixed = np.flatnonzero(labels.numpy() == cat)[:2]
    votes[mixed] = 0
    votes[mixed, cat], votes[mixed, dog] = 30, 20  # two of the eight test cats are 60/40 cat/dog images
    (tmp_path / "c10" / "cifar10h").mkdir()
    np.save(tmp_path / "c10" / "cifar10h" / "cifar10h-counts.npy", votes)
    cfg = tiny_config(dataset="cifar10h", data_dir=str(tree), between_source="human")
    data = prepare(cfg)
    between = data.is_between
    assert int(between.sum()) == 2 and data.label_a[between].eq(cat).all()
    assert torch.allclose(data.share_a[between], torch.tensor(0.6))
    assert data.counts()["test"]["between"] == 1  # halves, stratified on what the votes say
    no_extra = prepare(tiny_config(dataset="cifar10h", data_dir=str(tree), between_source="human",
                                   human_extra_train=False))
    assert len(no_extra) == n_test and len(data) == n_test + 80


# -- npz -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [None, 3])
def test_npz_grey_and_colour(tmp_path, channels):
    y = np.arange(60) % 3
    x = np.stack([np.full((5, 5) if channels is None else (5, 5, channels), shade(c)) for c in y]).astype(np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, class_names=np.array(["a", "b", "c"]))
    raw = DATASETS.get("npz")(tiny_config(dataset="npz", data_dir=str(path)))
    assert raw.images.shape == (60, channels or 1, 5, 5) and raw.class_names == ["a", "b", "c"]
    assert torch.equal(read_back(raw.images), raw.labels) and raw.votes is None


def test_npz_probs_make_human_in_between(tmp_path):
    y = np.arange(90) % 3
    probs = np.eye(3)[y]
    probs[:15] = [0.5, 0.5, 0.0]  # rows 0..14: between a and b
    y[:15] = 0
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((90, 4, 4), np.uint8), y=y, probs=probs)
    raw = DATASETS.get("npz")(tiny_config(dataset="npz", data_dir=str(path)))
    assert raw.default_pairs == "0:1" and raw.default_source == "human"
    data = prepare(tiny_config(dataset="npz", data_dir=str(path), between_source="human"))
    assert int(data.is_between.sum()) == 15


# -- the vote rule and the splits ------------------------------------------------------------------------------
def test_vote_rule_thresholds():
    votes = torch.tensor([[95.0, 5, 0], [70, 25, 5], [60, 25, 15], [50, 50, 0], [85, 0, 15], [40, 35, 25]])
    labels = torch.tensor([0, 0, 0, 1, 0, 0])
    v = judge_votes(labels, votes, tiny_config())
    assert v.kind.tolist() == [CLEAR_KIND, BETWEEN_KIND, UNSURE_KIND, BETWEEN_KIND, UNSURE_KIND, UNSURE_KIND]
    assert v.first[3] == 1 and v.second[3] == 0  # a 50/50 tie goes to the given label
    loose = judge_votes(labels, votes, tiny_config(human_pair_mass=0.8, human_second=0.1))
    assert loose.kind.tolist() == [CLEAR_KIND, BETWEEN_KIND, BETWEEN_KIND, BETWEEN_KIND, BETWEEN_KIND, UNSURE_KIND]


def test_in_between_of_other_pairs_are_unsure_and_train_size_keeps_them(tmp_path):
    n = 300
    labels = torch.arange(n) % 3
    votes = torch.nn.functional.one_hot(labels, 3).double()
    votes[:30] = torch.tensor([0.5, 0.5, 0.0])  # pair 0:1, configured
    votes[30:45] = torch.tensor([0.0, 0.5, 0.5])  # pair 1:2, not configured
    labels[:30], labels[30:45] = 0, 1
    raw = RawImages(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), labels, ["a", "b", "c"], votes=votes)
    from ambig_bench.datasets import base

    cfg = tiny_config(between_source="human", pairs="a:b", train_size=60)
    raw = base.assign_splits(raw, cfg, torch.Generator().manual_seed(0))
    raw = base.limit_train(raw, cfg, torch.Generator().manual_seed(0))
    data = base.labelled_by_votes(raw, [(0, 1)], cfg, keep_between=True)
    assert int((data.split == SPLITS["unsure"]).sum()) == 15
    assert int(data.is_between.sum()) == 30  # all kept, though train_size cut the clear-cut ones
    assert data.counts()["train"]["clear"] == pytest.approx(60, abs=3)
    assert data.info["votes"]["between_other_pairs"] == 15


# -- natural -----------------------------------------------------------------------------------------------
def test_natural_finds_the_known_confusable_images():
    """Classes 0 and 1 are bright on the left or right; 'confusable' images are dim on both sides and
    labelled 0 or 1 at random, so no model can tell them apart: they, and only they, should be chosen."""
    gen = torch.Generator().manual_seed(0)
    per_class, n_conf = 100, 40
    labels = torch.cat([torch.arange(3).repeat_interleave(per_class), torch.arange(n_conf) % 2])
    images = torch.zeros(len(labels), 1, 8, 8)
    images[labels == 0, :, :, :4] = 200
    images[labels == 1, :, :, 4:] = 200
    images[labels == 2, :, :4, :] = 200
    confusable = torch.zeros(len(labels), dtype=torch.bool)
    confusable[3 * per_class:] = True
    images[confusable] = 100
    images = (images + 20 * torch.rand(images.shape, generator=gen)).clamp(0, 255).to(torch.uint8)
    split = torch.full((len(labels),), SPLITS["train"], dtype=torch.int8)
    split[torch.randperm(len(labels), generator=gen)[:100]] = SPLITS["test"]
    raw = RawImages(images, labels, ["0", "1", "2"], split)
    cfg = tiny_config(between_source="natural", batch_size=32, lr=1e-2)
    reference = functools.partial(fit_reference, cfg, torch.device("cpu"))
    data = natural(raw, [(0, 1)], SourceContext(cfg, NaturalOptions(), torch.Generator().manual_seed(1), reference))
    chosen = data.is_between
    precision = (chosen & confusable).sum() / chosen.sum()
    recall = (chosen & confusable).sum() / confusable.sum()
    assert precision >= 0.9 and recall >= 0.8, (precision, recall)
    assert data.label_a[chosen].eq(0).all() and data.label_b[chosen].eq(1).all() and data.share_a[chosen].eq(0.5).all()
    assert data.label_b[~chosen].eq(CLEAR).all()
    assert data.info["natural"]["between_per_pair"]["0:1"]["test"] == int((chosen & (split == SPLITS["test"])).sum())
