"""benchmarks/own_photos.py builds a folder of real photos with `A|B` labels that the `folder` dataset reads."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ambig_bench.datasets import DATASETS, load_raw
from ambig_bench.datasets.base import BETWEEN_KIND, judge_votes
from ambig_bench.datasets.cifar10 import CLASSES
from tests.conftest import shared_path, tiny_config

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("own_photos", ROOT / "benchmarks" / "own_photos.py")
own_photos = importlib.util.module_from_spec(spec)
spec.loader.exec_module(own_photos)


@pytest.mark.slow  # reads the whole CIFAR-10 archive
def test_builds_labelled_photos_the_folder_dataset_reads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))
    data = shared_path("cifar10.tgz").parent
    counts = np.load(shared_path("cifar10h", "cifar10h-counts.npy"))
    out = tmp_path / "photos"
    assert own_photos.main([str(out), "--images", "80", "--between-share", "0.1", "--data", str(data)]) == 0
    with (out / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 80 and sum("|" in r["label"] for r in rows) == 8
    for row in rows:  # the vote rule, checked on the counts directly
        votes = counts[int(Path(row["file"]).stem)]
        shares = np.sort(votes / votes.sum())[::-1]
        top = [CLASSES[i] for i in np.argsort(-votes, kind="stable")[:2]]
        if "|" in row["label"]:
            assert shares[0] + shares[1] >= 0.9 and shares[1] >= 0.2 and set(row["label"].split("|")) == set(top)
        else:
            assert shares[0] >= 0.9 and row["label"] == top[0]
    printed = capsys.readouterr().out
    assert f"--labels {out / 'labels.csv'}" in printed
    cfg = tiny_config(dataset="folder", labels=str(out / "labels.csv"))
    raw = load_raw(cfg)
    assert raw.default_source == "human" and len(raw.labels) == 80
    assert int((judge_votes(raw.labels, raw.votes, cfg).kind == BETWEEN_KIND).sum()) == 8
    assert DATASETS.get("folder").listed_files(out / "labels.csv") == [r["file"] for r in rows]


def test_refuses_a_directory_git_would_commit(capsys):
    data = shared_path("cifar10.tgz").parent
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip(f"{ROOT} is not a git checkout")
    inside = ROOT / "benchmarks" / "photos-here"
    assert own_photos.main([str(inside), "--data", str(data)]) == 2
    assert not inside.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "git does not ignore it" in lines[0]
