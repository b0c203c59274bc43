"""The `hf` dataset on small datasets written by the `datasets` library itself (save_to_disk), no network.

Skipped when the optional extra is absent (pip install 'ambig-bench[hf]'; `make install` installs it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ambig_bench.cli import app
from ambig_bench.data import SPLITS
from ambig_bench.datasets import prepare
from ambig_bench.datasets.hf import hf, hf_library
from ambig_bench.errors import UserError
from ambig_bench.io import read_json
from ambig_bench.keys import experiment_key, key_content
from tests.conftest import tiny_config

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def lib():
    try:
        return hf_library()
    except UserError:
        pytest.skip("the Hugging Face datasets library is not installed (pip install 'ambig-bench[hf]')")


def picture(label: int, i: int) -> Image.Image:
    """An 8×8 grey image whose class is readable from its pixels (and with a little noise)."""
    noise = np.random.default_rng(i).integers(0, 20, (8, 8))
    return Image.fromarray((40 + 80 * label + noise).astype(np.uint8))


def labelled_rows(n_clear: int = 30, n_between: int = 8) -> dict[str, list]:
    """Clear-cut rows of every class and `cat|dog` rows."""
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        for i in range(n_clear):
            images.append(picture(label, 100 * label + i))
            labels.append(name)
    for i in range(n_between):
        images.append(Image.blend(picture(0, 1000 + i), picture(1, 2000 + i), 0.5))
        labels.append("cat|dog")
    return {"image": images, "label": labels}


def save(lib, path, rows: dict[str, list], features: dict | None = None):
    features = lib.Features(features or {"image": lib.Image(), "label": lib.Value("string")})
    lib.Dataset.from_dict(rows, features=features).save_to_disk(str(path))
    return path


def config(path, **overrides):
    return tiny_config(dataset="hf", data_dir=str(path), pairs=None, between_source="auto", **overrides)


def test_text_labels_with_between_pairs_become_votes(lib, tmp_path):
    raw = hf(config(save(lib, tmp_path / "ds", labelled_rows())))
    assert raw.class_names == CLASSES and raw.images.shape == (98, 1, 8, 8)
    assert raw.default_pairs == "cat:dog" and raw.default_source == "human" and raw.split is None
    between = (raw.votes[:, 0] == 1) & (raw.votes[:, 1] == 1)
    assert int(between.sum()) == 8 and raw.votes[between][:, 2].eq(0).all()
    # Pixels survive the round trip through the library: the class is readable from them.
    assert ((raw.images[~between].float().mean((1, 2, 3)) - 40) / 80).round().long().tolist() == \
        raw.labels[~between].tolist()


def test_class_label_and_vote_columns(lib, tmp_path):
    rows = labelled_rows(n_between=0)
    ids = [CLASSES.index(name) for name in rows["label"]]
    class_label = save(lib, tmp_path / "cl", {"image": rows["image"], "label": ids},
                       {"image": lib.Image(), "label": lib.ClassLabel(names=CLASSES)})
    raw = hf(config(class_label))
    assert raw.class_names == CLASSES and raw.votes is None and raw.labels.tolist() == ids
    votes = np.eye(3)[ids] * 5
    votes[:4] = [3, 2, 0]  # four images voted between cat and dog
    voted = save(lib, tmp_path / "votes", {"image": rows["image"], **{c: votes[:, k].tolist()
                                                                      for k, c in enumerate(CLASSES)}},
                 {"image": lib.Image(), **{c: lib.Value("float32") for c in CLASSES}})
    raw = hf(config(voted, hf_label_column="cat,dog,owl"))
    assert raw.class_names == CLASSES and torch.equal(raw.votes, torch.from_numpy(votes))
    assert raw.default_pairs == "cat:dog"


def test_the_dataset_splits_are_kept(lib, tmp_path):
    rows = labelled_rows()
    take = lambda idx: {k: [v[i] for i in idx] for k, v in rows.items()}  # noqa: E731
    order = np.random.default_rng(0).permutation(len(rows["label"]))
    parts = {"train": order[:60], "validation": order[60:78], "test": order[78:]}
    features = lib.Features({"image": lib.Image(), "label": lib.Value("string")})
    lib.DatasetDict({name: lib.Dataset.from_dict(take(idx), features=features) for name, idx in parts.items()}
                    ).save_to_disk(str(tmp_path / "dd"))
    raw = hf(config(tmp_path / "dd"))
    assert raw.split.tolist() == [SPLITS["train"]] * 60 + [SPLITS["val"]] * 18 + [SPLITS["test"]] * 20
    data = prepare(config(tmp_path / "dd"))
    assert data.info["between_source"] == "human"


def test_a_saved_dataset_with_between_labels_runs_end_to_end(lib, tmp_path):
    path = save(lib, tmp_path / "ds", labelled_rows())
    done = CliRunner().invoke(app, ["run", "--dataset", "hf", "--data-dir", str(path), "--between-source", "auto",
                                    "--hf-label-column", "label", "--strategy", "soft,extra-class", "--seeds", "1",
                                    "--epochs", "2", "--width", "8", "--device", "cpu", "--out",
                                    str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    [run_dir, *_] = sorted((tmp_path / "out" / "runs").iterdir())
    assert read_json(run_dir / "config.json")["loader"] == {"hf": {"hf_image_column": None,
                                                                   "hf_label_column": "label"}}
    assert read_json(run_dir / "data.json")["between_source"] == "human"
    assert 0 <= read_json(run_dir / "metrics.json")["clear_acc"] <= 1


def test_dataset_options_count_only_for_their_dataset():
    """Runs of other datasets keep their keys; an hf option given to another dataset is refused."""
    digits = tiny_config()
    assert digits.loader == {} and "loader" not in key_content(digits)
    a = config("x", hf_label_column="a")
    assert experiment_key(a) != experiment_key(config("x", hf_label_column="b"))
    with pytest.raises(UserError, match="--hf-label-column is an option of --dataset hf"):
        tiny_config(hf_label_column="label")


@pytest.mark.parametrize(("make", "overrides", "message"), [
    (lambda lib, p: p, {}, "no such folder; to fetch the Hub dataset"),
    (lambda lib, p: save(lib, p, labelled_rows()), {"hf_image_column": "picture"}, "no column 'picture'"),
    (lambda lib, p: save(lib, p, {"image": labelled_rows()["image"][:3], "label": ["cat", "dog", "cow|cat"]}),
     {}, "unknown class 'cow'"),
    (lambda lib, p: save(lib, p, {"image": labelled_rows()["image"][:2], "label": [1.0, 2.0]},
                         {"image": lib.Image(), "label": lib.Value("float32")}), {}, "use a ClassLabel, text labels"),
    (lambda lib, p: save(lib, p, {"image": labelled_rows()["image"][:2], "y": ["cat", "dog"]},
                         {"image": lib.Image(), "y": lib.Value("string")}), {}, "choose one with --hf-label-column"),
])
def test_bad_datasets_are_one_line_errors(lib, tmp_path, make, overrides, message):
    path = make(lib, tmp_path / "ds")
    with pytest.raises(UserError, match=message) as e:
        hf(config(path, **overrides))
    assert "\n" not in str(e.value)


def test_an_image_folder_is_read_by_the_library_with_its_splits(lib, tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))  # the library's Arrow copy goes there
    for split, n in (("train", 6), ("test", 3)):
        for label, name in enumerate(CLASSES):
            for i in range(n):
                (tmp_path / "photos" / split / name).mkdir(parents=True, exist_ok=True)
                picture(label, i).save(tmp_path / "photos" / split / name / f"{i}.png")
    raw = hf(config(tmp_path / "photos"))
    assert raw.class_names == CLASSES and raw.images.shape == (27, 1, 8, 8) and raw.votes is None
    assert raw.split.tolist() == [SPLITS["train"]] * 18 + [SPLITS["test"]] * 9
    assert (tmp_path / "cache" / "huggingface").is_dir()
