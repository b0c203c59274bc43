"""Finding confusable pairs: the score against a naive loop, votes and reference evidence, `--pairs auto`, and the
known pairs of real data (Fashion-MNIST, CIFAR-10H; skipped where absent)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ambig_bench.cli import app
from ambig_bench.datasets.confusable import Evidence, auto_pairs, find_pairs, rank_pairs, resolve_auto
from ambig_bench.datasets.fashion_mnist import DEBIAN
from ambig_bench.errors import UserError
from ambig_bench.prepare import prepare_data
from ambig_bench.train import fit_reference
from tests.conftest import shared_path, tiny_config
from tests.test_datasets import private_cache, shade, write_image, write_labels  # noqa: F401 (fixture)


def naive_rank(probs: list[list[float]], labels: list[int], second: float) -> dict[str, tuple[float, int]]:
    k, n = len(probs[0]), len(probs)
    out = {}
    for a in range(k):
        for b in range(a + 1, k):
            score = sum(p[b] for p, y in zip(probs, labels, strict=True) if y == a) / n
            score += sum(p[a] for p, y in zip(probs, labels, strict=True) if y == b) / n
            images = 0
            for p in probs:
                order = sorted(range(k), key=lambda c: (-p[c], c))
                images += sorted(order[:2]) == [a, b] and p[order[1]] >= second
            out[f"{a}:{b}"] = (score, images)
    return out


def test_scores_and_counts_match_a_naive_loop():
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(40, 4, generator=gen, dtype=torch.float64) ** 3
    probs /= probs.sum(1, keepdim=True)
    labels = torch.randint(0, 4, (40,), generator=gen)
    table = rank_pairs(Evidence("votes", probs, labels, [f"f{i}" for i in range(40)]), list("0123"), 0.2)
    naive = naive_rank(probs.tolist(), labels.tolist(), 0.2)
    assert len(table) == 6 and table.score.is_monotonic_decreasing and table["rank"].tolist() == list(range(1, 7))
    for row in table.itertuples():
        assert (row.score, row.images) == (pytest.approx(naive[row.pair][0]), naive[row.pair][1])


def folder_with_votes(root: Path, per_class: int = 20) -> Path:
    """cat, dog, fox and owl images; some labelled `cat|dog`, fewer `fox|owl`."""
    rows = []
    for label, name in enumerate(["cat", "dog", "fox", "owl"]):
        for i in range(per_class):
            write_image(root / f"{name}{i}.png", shade(label))
            rows.append(f"{name}{i}.png,{name}")
    for i in range(12):
        write_image(root / f"mix{i}.png", 22)
        rows.append(f"mix{i}.png,cat|dog")
    for i in range(2):
        write_image(root / f"fo{i}.png", 70)
        rows.append(f"fo{i}.png,fox|owl")
    return write_labels(root, "file,label", rows)


def test_votes_rank_the_labelled_pairs_first_and_name_their_files(tmp_path):
    csv = folder_with_votes(tmp_path)
    table, evidence = find_pairs(tiny_config(dataset="folder", labels=str(csv)), reference=None)
    assert evidence == "votes"
    assert table.pair.head(2).tolist() == ["cat:dog", "fox:owl"] and table.images.head(2).tolist() == [12, 2]
    assert table.examples[0].split() == ["mix0.png", "mix1.png", "mix2.png"]
    assert auto_pairs(table) == "cat:dog", "fox:owl scores a sixth of cat:dog, under AUTO_SHARE"


def test_without_votes_a_reference_networks_out_of_fold_predictions_are_the_evidence():
    """A stand-in reference that always hesitates between classes 3 and 8: each fold is asked, and 3:8 wins."""
    calls = []

    def reference(data, seed, epochs, batches):
        calls.append((len(data), seed, epochs))
        out = []
        for images in batches:
            p = torch.full((len(images), 10), 0.01)
            p[:, [3, 8]] = 0.46
            out.append(p)
        return out

    cfg = tiny_config(natural_folds=3, natural_epochs=2, train_size=300)
    table, evidence = find_pairs(cfg, reference)
    assert evidence == "reference" and table.pair[0] == "3:8"
    assert [c[1:] for c in calls] == [(0, 2), (1, 2), (2, 2)], "one model per fold, the run's seed + fold"
    assert all(n < 300 for n, _, _ in calls), "each fold model trains on the other folds' images only"


def test_pairs_auto_runs_with_the_pairs_it_finds(tmp_path):
    csv = folder_with_votes(tmp_path / "data")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--dataset", "folder", "--labels", str(csv), "--pairs", "auto",
                                      "--between-source", "human", "--strategy", "soft", "--seeds", "1",
                                      "--epochs", "1", "--width", "8", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    [run] = (out / "runs").iterdir()
    assert json.loads((run / "data.json").read_text())["pairs"] == [[0, 1]]
    assert json.loads((run / "config.json").read_text())["data"]["pairs"] == "auto", "the option as given"


def test_pairs_command_prints_the_table_and_writes_pairs_csv(tmp_path):
    csv = folder_with_votes(tmp_path / "data")
    result = CliRunner().invoke(app, ["pairs", "--dataset", "folder", "--labels", str(csv), "--top", "3",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2].startswith("| 1 | cat:dog |") and len(result.stdout.splitlines()) == 5
    assert "--pairs auto picks cat:dog" in result.stderr
    written = pd.read_csv(tmp_path / "out" / "pairs.csv")
    assert len(written) == 6 and written.pair[0] == "cat:dog"


def test_pairs_auto_without_votes_or_trainer_is_a_user_error():
    with pytest.raises(UserError, match="no votes to find confusable pairs from"):
        resolve_auto(tiny_config(pairs="auto"), None)
    assert prepare_data(tiny_config(pairs="auto", train_size=200, natural_epochs=1)).pairs, "found through runner"


# -- real data -----------------------------------------------------------------------------------------------
def top_pairs(table: pd.DataFrame, n: int) -> set[frozenset]:
    return {frozenset((r.class_a, r.class_b)) for r in table.head(n).itertuples()}


@pytest.mark.slow
def test_cifar10h_votes_rank_the_known_confusable_pairs_first():
    archive, counts = shared_path("cifar10.tgz"), shared_path("cifar10h", "cifar10h-counts.npy")
    assert counts.exists()
    table, evidence = find_pairs(tiny_config(dataset="cifar10h", data_dir=str(archive), human_extra_train=False),
                                 reference=None)
    known = {frozenset(p) for p in [("cat", "dog"), ("automobile", "truck"), ("deer", "horse"), ("airplane", "ship")]}
    assert evidence == "votes" and known <= top_pairs(table, 6)
    assert table.pair[0] == "cat:dog"


@pytest.mark.slow
@pytest.mark.skipif(not Path(DEBIAN).is_dir(), reason=f"{DEBIAN} absent (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_reference_ranks_the_known_confusable_pairs_near_the_top():
    """A small reference (3 folds × 3 epochs on 3,000 training images, width 16): about 25 s of one CPU core."""
    cfg = tiny_config(dataset="fashion-mnist", train_size=3000, natural_epochs=3, width=16, batch_size=64)
    table, evidence = find_pairs(cfg, functools.partial(fit_reference, cfg, torch.device("cpu")))
    known = {frozenset(p) for p in [("T-shirt/top", "Shirt"), ("Pullover", "Coat"), ("Shirt", "Coat")]}
    assert evidence == "reference" and known <= top_pairs(table, 5)


@pytest.mark.parametrize("top", ["0", "-5"])
def test_top_below_one_is_refused_in_one_line_before_any_work(tmp_path, top):
    result = CliRunner().invoke(app, ["pairs", "--dataset", "digits", "--top", top, "--out", str(tmp_path / "out")])
    said = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(said) == 1 and "--top must be at least 1" in said[0], result.stderr
    assert not (tmp_path / "out").exists()
