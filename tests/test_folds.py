"""--folds K: stratified K-fold splits, the same for every seed, where the run of seed s tests fold s mod K."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.model_selection import StratifiedKFold
from typer.testing import CliRunner

from ambig_bench.cli import app
from ambig_bench.data import SPLITS
from ambig_bench.datasets import load_raw, prepare
from ambig_bench.datasets.base import BETWEEN_KIND, UNSURE_KIND, folds_of, judge_votes
from ambig_bench.keys import experiment_key
from tests.conftest import tiny_config
from tests.test_bad_input import TINY, assert_refused, labels_csv, tree
from tests.test_datasets import ab_folder, write_fashion

cli = CliRunner()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))


def voted_npz(root: Path) -> dict:
    """An npz dataset with vote shares: 3 classes, in-between images of two pairs (17 of a:b, 11 of b:c) and 6
    images without a majority (unsure)."""
    n = 150
    y = np.arange(n) % 3
    probs = np.eye(3)[y]
    probs[:17], y[:17] = [0.6, 0.4, 0.0], 0
    probs[17:28], y[17:28] = [0.0, 0.3, 0.7], 2
    probs[28:34], y[28:34] = [0.4, 0.3, 0.3], 0
    x = np.random.default_rng(0).integers(0, 256, (n, 4, 4), dtype=np.uint8)
    np.savez(root / "votes.npz", x=x, y=y, probs=probs)
    return {"dataset": "npz", "data_dir": str(root / "votes.npz"), "pairs": "0:1,1:2"}


DATASETS_WITH_BETWEEN = [pytest.param(ab_folder, id="folder-A|B"), pytest.param(voted_npz, id="npz-votes")]


@pytest.mark.parametrize("dataset", DATASETS_WITH_BETWEEN)
@pytest.mark.parametrize("k", [2, 5])
def test_seeds_0_to_k_minus_1_test_every_image_exactly_once(tmp_path, dataset, k):
    options = {**dataset(tmp_path), "between_source": "human", "folds": k}
    raw = load_raw(tiny_config(**options))
    tested = torch.zeros(len(raw.labels), dtype=torch.long)
    for seed in range(k):
        data = prepare(tiny_config(**options, seed=seed))
        assert len(data) == len(raw.labels)  # the human source keeps the images in the dataset's order
        test, val, train = (data.split == SPLITS[s] for s in ("test", "val", "train"))
        assert not (test & val).any() and not (test & train).any() and not (val & train).any()
        assert val.any() and train.any() and (data.is_between & test).any() and (data.is_between & train).any()
        tested += test.long()
    unsure = data.split == SPLITS["unsure"]  # the same images for every seed: the votes say, not the split
    assert tested[~unsure].eq(1).all() and tested[unsure].eq(0).all()


def test_blend_source_tests_every_real_image_once_and_blends_within_each_split():
    """The folds cut the real images; blends are drawn per seed within each split, from that split's images."""
    k = 4
    raw = load_raw(tiny_config(folds=k))
    tested = torch.zeros(len(raw.labels), dtype=torch.long)
    for seed in range(k):
        data = prepare(tiny_config(folds=k, seed=seed))
        real = data.take(torch.arange(len(raw.labels)))  # the clear-cut images come first, in the dataset's order
        assert not real.is_between.any() and data.is_between[len(raw.labels):].all()
        assert all(data.counts()[s]["between"] > 0 for s in ("train", "val", "test"))
        tested += (real.split == SPLITS["test"]).long()
    assert tested.eq(1).all()


def test_the_same_folds_whatever_the_seed(tmp_path):
    """Seed s and seed s + K test the same images; only the validation share of the other folds is redrawn."""
    options = {**ab_folder(tmp_path), "between_source": "human", "folds": 3}
    first, later = (prepare(tiny_config(**options, seed=seed)).split for seed in (1, 4))
    assert torch.equal(first == SPLITS["test"], later == SPLITS["test"])
    assert not torch.equal(first, later)


@pytest.mark.parametrize("k", [2, 3, 7, 10])
@pytest.mark.parametrize("seed", range(3))
def test_every_stratum_and_every_block_of_strata_is_balanced_across_folds(k, seed):
    """Per stratum, and for the clear-cut and the in-between strata together, fold counts differ by at most one;
    each stratum's fold sizes are those of scikit-learn's StratifiedKFold (the reference deal)."""
    rng = np.random.default_rng(seed)
    groups = torch.from_numpy(rng.choice(12, size=400, p=np.r_[np.full(8, 0.11), np.full(4, 0.03)]))
    fold = folds_of(groups, k)
    per_fold = torch.stack([torch.bincount(groups[fold == f], minlength=12) for f in range(k)])
    assert (per_fold.max(0).values - per_fold.min(0).values).le(1).all()
    for block in (slice(0, 8), slice(8, 12), slice(0, 12)):  # clear-cut classes, in-between pairs, all
        totals = per_fold[:, block].sum(1)
        assert int(totals.max() - totals.min()) <= 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a stratum smaller than k: expected here
        reference = [np.bincount(groups.numpy()[test], minlength=12)
                     for _, test in StratifiedKFold(k).split(np.zeros(len(groups)), groups.numpy())]
    assert sorted(map(sorted, per_fold.T.tolist())) == sorted(map(sorted, np.array(reference).T.tolist()))


@pytest.mark.parametrize("dataset", DATASETS_WITH_BETWEEN)
def test_class_and_in_between_counts_of_the_test_folds_differ_by_at_most_one(tmp_path, dataset):
    k = 5
    options = {**dataset(tmp_path), "between_source": "human", "folds": k}
    cfg = tiny_config(**options)
    raw = load_raw(cfg)
    verdict = judge_votes(raw.labels, raw.votes, cfg)
    kept = verdict.kind != UNSURE_KIND
    counts = []
    for seed in range(k):
        test = prepare(tiny_config(**options, seed=seed)).split == SPLITS["test"]
        counts.append([int((test & kept & (verdict.first == c) & (verdict.kind != BETWEEN_KIND)).sum())
                       for c in range(len(raw.class_names))] + [int((test & (verdict.kind == BETWEEN_KIND)).sum())])
    counts = torch.tensor(counts)
    assert (counts.max(0).values - counts.min(0).values).le(1).all(), counts


# The splits of today's code (commit 8f07c77, before --folds existed), as SHA-1 of the split codes: --folds 0 must
# reproduce them bit for bit. Computed with `prepare` on digits and on `ab_folder`, seeds 0 and 1.
TODAY = {("digits", 0): "cde09cfaf749", ("digits", 1): "e0373571320f",
         ("folder", 0): "8862b577a79a", ("folder", 1): "e32182098d1c"}


@pytest.mark.parametrize("dataset, seed", list(TODAY))
def test_folds_0_reproduces_todays_splits_bit_for_bit(tmp_path, dataset, seed):
    options = ab_folder(tmp_path) if dataset == "folder" else {}
    split = prepare(tiny_config(**options, seed=seed, folds=0)).split
    assert hashlib.sha1(split.numpy().tobytes()).hexdigest()[:12] == TODAY[dataset, seed]


def few_between(d: Path) -> list[str]:
    """8 images per class and 3 `a|b` rows: 4 folds fit the classes but not the in-between images."""
    args = labels_csv([f"odd/{i}.png,a|b" for i in range(3)])(d)
    (d / "photos" / "odd").mkdir()
    for i in range(3):
        (d / "photos" / "odd" / f"{i}.png").write_bytes((d / "photos" / "a" / f"{i}.png").read_bytes())
    return [*args, "--between-source", "human"]


def fashion(d: Path) -> list[str]:
    return ["--dataset", "fashion-mnist", "--data-dir", str(write_fashion(d / "fashion"))]


@pytest.mark.parametrize("args, says", [
    pytest.param(["--folds", "1"], "--folds must be 0 (off) or at least 2, got 1", id="one-fold"),
    pytest.param(["--folds", "-2"], "--folds must be 0 (off) or at least 2, got -2", id="negative"),
    pytest.param(["--folds", "1001"], "--folds must be at most 1000, got 1001", id="beyond-max"),
    pytest.param(["--folds", "5", "--test-fraction", "0.3"], "--test-fraction does not apply with --folds",
                 id="with-test-fraction"),
    pytest.param(lambda d: [*tree()(d), "--folds", "9"], ("--folds 9", "only 8 clear-cut images of class a",
                                                           "lower --folds to 8"), id="more-folds-than-a-class"),
    pytest.param(lambda d: [*few_between(d), "--folds", "4"], ("--folds 4", "only 3 in-between images"),
                 id="more-folds-than-in-between"),
    pytest.param(lambda d: [*labels_csv(header="file,label,split", split=lambda row: "test" if row[2] in "01"
                                        else "train")(d), "--folds", "3"], ("--folds 3", "its own test split"),
                 id="labels-with-split-column"),
    pytest.param(lambda d: [*fashion(d), "--folds", "3"], ("--folds 3", "fashion-mnist", "its own test split"),
                 id="fashion-mnist-t10k"),
])
def test_folds_refusals_are_one_line_exit_2(tmp_path, args, says):
    assert_refused(tmp_path, [*TINY, *(args(tmp_path) if callable(args) else args)], says)


@pytest.mark.slow
def test_fewer_seeds_than_folds_are_named_on_stderr_and_k_seeds_are_not(tmp_path):
    run = ["run", *TINY, "--strategy", "soft", "--folds", "3", "--out", str(tmp_path / "out")]
    short = cli.invoke(app, [*run, "--seeds", "2"])
    assert short.exit_code == 0, short.stderr
    assert "--folds 3: these seeds test 2 of the 3 folds" in short.stderr
    full = cli.invoke(app, [*run, "--seeds", "3"])
    assert full.exit_code == 0 and "these seeds test" not in full.stderr, full.stderr


def test_folds_0_keeps_the_experiment_key_and_k_folds_make_a_new_one():
    assert experiment_key(tiny_config(folds=0)) == experiment_key(tiny_config())
    assert experiment_key(tiny_config(folds=5)) != experiment_key(tiny_config())
