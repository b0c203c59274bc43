"""Long-form crowd labels (file,worker,label): aggregation against a naive count, one-line errors, Dawid-Skene,
and a run end to end from a folder of images and a long-form CSV."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ambig_bench.cli import app
from ambig_bench.datasets.crowd import aggregate_votes
from ambig_bench.datasets.folder import read_labels_csv
from ambig_bench.errors import UserError
from tests.test_datasets import private_cache, shade, write_image, write_labels  # noqa: F401 (fixture)

HEADER = ["file", "worker", "label"]


def numbered(rows: list[str]) -> list[tuple[int, list[str]]]:
    return [(i + 2, row.split(",")) for i, row in enumerate(rows)]


def test_shares_are_each_images_vote_counts_over_its_votes():
    rng = np.random.default_rng(0)
    classes = ["bird", "cat", "dog"]
    rows = [f"img{i}.png,w{w},{classes[rng.integers(3)]}" for i in range(30) for w in range(rng.integers(1, 6))]
    kept, names, votes = aggregate_votes(Path("v.csv"), HEADER, numbered(rows), "shares")
    assert names == classes
    images = list(dict.fromkeys(r.split(",")[0] for r in rows))
    assert [row[0] for _, row in kept] == images, "one row per image, in the order images first appear"
    for image, shares in zip(images, votes, strict=True):
        counts = Counter(r.split(",")[2] for r in rows if r.split(",")[0] == image)
        total = sum(counts.values())
        assert shares.tolist() == pytest.approx([counts[c] / total for c in classes])


@pytest.mark.parametrize("rows, header, message", [
    (["a.png,ann,cat", "a.png,ann,dog"], HEADER, "line 3: worker 'ann' already voted on a.png on line 2"),
    (["a.png,ann,cat", "./a.png,ann,dog"], HEADER, "line 3: worker 'ann' already voted on a.png on line 2"),
    (["a.png,,cat"], HEADER, "line 2: empty worker"),
    (["a.png,ann,"], HEADER, "line 2: empty label"),
    (["a.png,ann,cat|dog"], HEADER, "line 2: label 'cat|dog' must be one class"),
    (["a.png,ann,cat", "b.png,bob,Cat"], HEADER, "differ only in case"),
    (["a.png,ann,cat,train", "a.png,bob,cat,test"], [*HEADER, "split"], "line 3: a.png has split 'test' here"),
    (["a.png,ann,cat,x"], [*HEADER, "note"], "unexpected column 'note'"),
    (["a.png,ann"], ["file", "worker"], "missing label"),
])
def test_bad_long_form_rows_are_one_line_errors_naming_the_line(rows, header, message):
    with pytest.raises(UserError, match=message.replace("|", r"\|").replace(".", r"\.")) as error:
        aggregate_votes(Path("v.csv"), header, numbered(rows), "shares")
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_dawid_skene_discounts_a_worker_who_votes_at_random(tmp_path):
    pytest.importorskip("crowdkit")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(60):
        truth = ["cat", "dog"][i % 2]
        rows += [f"img{i}.png,good{w},{truth}" for w in range(2)]
        rows.append(f"img{i}.png,spammer,{['cat', 'dog'][rng.integers(2)]}")
    csv = write_labels(tmp_path, "file,worker,label", rows)
    shares, ds = read_labels_csv(csv, "shares"), read_labels_csv(csv, "dawid-skene")
    assert ds.class_names == shares.class_names == ["cat", "dog"]
    assert np.allclose(ds.votes.sum(1), 1)
    truth = np.array([i % 2 for i in range(60)])
    # Where the spammer disagrees, shares say 2/3; Dawid-Skene, having learnt he is noise, is surer.
    p_true_shares, p_true_ds = shares.votes[np.arange(60), truth], ds.votes[np.arange(60), truth]
    disagree = p_true_shares < 1
    assert disagree.any() and (p_true_ds[disagree] > p_true_shares[disagree]).all()


def test_long_form_crowd_csv_runs_end_to_end(tmp_path):
    """Images of three classes, each voted on by three workers; some split 2:1 between cat and dog."""
    rows = []
    for i in range(24):
        for label, name in enumerate(["cat", "dog", "fox"]):
            write_image(tmp_path / "img" / f"{name}{i}.png", shade(label))
            rows += [f"img/{name}{i}.png,w{w},{name}" for w in range(3)]
    for i in range(24):
        write_image(tmp_path / "img" / f"mix{i}.png", 22)
        rows += [f"img/mix{i}.png,w0,cat", f"img/mix{i}.png,w1,dog", f"img/mix{i}.png,w2,{['cat', 'dog'][i % 2]}"]
    csv = write_labels(tmp_path, "file,worker,label", rows)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--dataset", "folder", "--labels", str(csv), "--between-source", "human",
                                      "--strategy", "soft,votes", "--seeds", "1", "--epochs", "2", "--width", "8",
                                      "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    runs = sorted((out / "runs").iterdir())
    assert [r.name.split("-seed")[0] for r in runs] == ["soft", "votes"]
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        data = json.loads((run / "data.json").read_text())
        assert data["between_source"] == "human" and data["pairs"] == [[0, 1]]
        assert metrics["n_between"] > 0 and np.isfinite(metrics["human_ce"])
