"""Metrics on hand-made probability tables whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ambig_bench.metrics import evaluate, expected_calibration_error, selection_loss, set_objective

# Four clear-cut images (classes 0, 1, 2, 0) and two in-between images of the pair (0, 1).
PROBS = torch.tensor([
    [0.8, 0.1, 0.1],  # clear 0: right, confident
    [0.6, 0.3, 0.1],  # clear 1: wrong (predicts 0)
    [0.1, 0.2, 0.7],  # clear 2: right
    [0.5, 0.4, 0.1],  # clear 0: right
    [0.5, 0.4, 0.1],  # between (0, 1): mass 0.9, balance 5/9
    [0.2, 0.2, 0.6],  # between (0, 1): mass 0.4, balance 0.5, top-2 is {2, 0} -> wrong
])
A = torch.tensor([0, 1, 2, 0, 0, 0])
B = torch.tensor([-1, -1, -1, -1, 1, 1])
SETS = torch.tensor([
    [1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 1, 0], [1, 1, 0], [0, 0, 1],
], dtype=torch.bool)
AMBIGUITY = torch.tensor([0.1, 0.3, 0.2, 0.4, 0.4, 0.2])


def test_metrics_known_answers():
    m = evaluate(PROBS, SETS, AMBIGUITY, A, B)
    assert m["clear_acc"] == pytest.approx(3 / 4)
    assert m["clear_set_acc"] == pytest.approx(2 / 4)  # {0} and {2} exact; {0,1} twice is not
    assert m["nll"] == pytest.approx(-(math.log(0.8) + math.log(0.3) + math.log(0.7) + math.log(0.5)) / 4)
    assert m["between_set_acc"] == pytest.approx(1 / 2)
    assert m["between_top2"] == pytest.approx(1 / 2)
    assert m["between_mass"] == pytest.approx((0.9 + 0.4) / 2)
    assert m["between_balance"] == pytest.approx((5 / 9 + 0.5) / 2)
    assert m["between_balance_err"] == pytest.approx((5 / 9 - 0.5) / 2)
    # Ambiguity scores of in-between images 0.4, 0.2 vs clear 0.1, 0.3, 0.2, 0.4:
    # pairs (between > clear) = 0.4 beats 0.1,0.3,0.2 and ties 0.4 (0.5); 0.2 beats 0.1, ties 0.2.
    assert m["ambiguity_auroc"] == pytest.approx((3.5 + 1.5) / 8)
    assert (m["n_clear"], m["n_between"]) == (4, 2)


def test_ece_by_hand():
    # Bin (0.6, 0.667]: confidences 0.65, 0.65, one right -> |0.5 - 0.65| = 0.15, weight 2/3.
    # Bin (0.933, 1]: confidence 1.0, right -> 0, weight 1/3.
    conf = torch.tensor([0.65, 0.65, 1.0])
    correct = torch.tensor([True, False, True])
    assert expected_calibration_error(conf, correct) == pytest.approx(2 / 3 * 0.15)
    assert expected_calibration_error(torch.tensor([1.0, 1.0]), torch.tensor([True, True])) == 0
    assert math.isnan(expected_calibration_error(torch.zeros(0), torch.zeros(0, dtype=torch.bool)))


def test_no_between_images_gives_nan_between_metrics():
    m = evaluate(PROBS[:4], SETS[:4], AMBIGUITY[:4], A[:4], B[:4])
    assert math.isnan(m["between_set_acc"]) and math.isnan(m["ambiguity_auroc"])
    assert m["clear_acc"] == pytest.approx(3 / 4)


def test_set_objective_is_mean_of_the_two_set_accuracies():
    assert set_objective(SETS, A, B) == pytest.approx((2 / 4 + 1 / 2) / 2)


def test_cross_entropy_to_human_votes_against_a_naive_loop():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    votes = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]])
    sets = torch.ones(2, 3, dtype=torch.bool)
    args = (probs, sets, torch.zeros(2), torch.tensor([0, 0]), torch.tensor([-1, 1]))
    naive = sum(-sum(v * math.log(p) for v, p in zip(vr, pr, strict=True) if v)
                for vr, pr in zip(votes.tolist(), probs.tolist(), strict=True)) / 2
    assert evaluate(*args, votes=votes)["human_ce"] == pytest.approx(naive)
    assert math.isnan(evaluate(*args)["human_ce"]), "no votes, no cross-entropy to them"


def test_selection_loss_against_a_naive_loop():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]])
    label_a, label_b = torch.tensor([0, 0, 2]), torch.tensor([-1, 1, -1])
    naive = []
    for p, a, b in zip(probs.tolist(), label_a.tolist(), label_b.tolist(), strict=True):
        naive.append(-math.log(p[a] + (p[b] if b >= 0 else 0.0)))
    assert selection_loss(probs, label_a, label_b) == pytest.approx(sum(naive) / len(naive))
    # Indifferent to how an in-between image's mass is split within its pair.
    swapped = probs.clone()
    swapped[1, :2] = torch.tensor([0.5, 0.1])
    assert selection_loss(swapped, label_a, label_b) == pytest.approx(selection_loss(probs, label_a, label_b))


def test_ece_with_weights_is_the_ece_of_the_repeated_images():
    rng = np.random.default_rng(0)
    conf, correct = torch.from_numpy(rng.uniform(0.3, 1, 40)), torch.from_numpy(rng.random(40) < 0.7)
    counts = rng.multinomial(40, np.full(40, 1 / 40), size=3)
    batched = expected_calibration_error(conf, correct, weights=counts)
    for row, value in zip(counts, batched, strict=True):
        rows = torch.repeat_interleave(torch.arange(40), torch.from_numpy(row))
        assert value == pytest.approx(expected_calibration_error(conf[rows], correct[rows]))
