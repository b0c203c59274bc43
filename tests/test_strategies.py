"""Every registered strategy: shapes, finite loss, gradients, valid targets, decoding; losses vs naive loops."""

from __future__ import annotations

import math

import pytest
import torch

from ambig_bench.registry import Registry
from ambig_bench.strategies import STRATEGIES, Labels

K, PAIRS = 5, [(0, 1), (2, 3)]


def labels() -> Labels:
    """Six clear-cut images and three in-between ones (two of pair 0, one of pair 1 with share 0.7)."""
    a = torch.tensor([0, 1, 2, 3, 4, 0, 0, 0, 2])
    b = torch.tensor([-1, -1, -1, -1, -1, -1, 1, 1, 3])
    share = torch.tensor([1, 1, 1, 1, 1, 1, 0.5, 0.5, 0.7])
    pair = torch.tensor([-1, -1, -1, -1, -1, -1, 0, 0, 1])
    return Labels(a, b, share, pair)


@pytest.fixture(params=STRATEGIES.names())
def strategy(request):
    return STRATEGIES.get(request.param)(K, PAIRS)


def test_targets_are_valid(strategy):
    lab = labels()
    index, targets = strategy.epoch_targets(lab, torch.Generator().manual_seed(0))
    assert targets.shape == (len(index), strategy.num_outputs)
    assert index.min() >= 0 and index.max() < len(lab)
    assert (targets >= 0).all() and (targets <= 1).all()
    clear = ~lab.between[index]
    # Clear-cut images are always one-hot on their own class, whatever the strategy.
    assert torch.equal(targets[clear].argmax(1), lab.a[index][clear])
    assert torch.allclose(targets[clear].sum(1), torch.ones(int(clear.sum())))


def test_declarations_match_what_the_strategy_does(strategy):
    """Batching groups runs by what strategies declare, so the declarations must be what they do."""
    lab = labels()
    draws = [strategy.epoch_targets(lab, torch.Generator().manual_seed(seed)) for seed in range(8)]
    assert all(len(index) == strategy.images_per_epoch(lab.between) for index, _ in draws)
    changes = any(not torch.equal(t, draws[0][1]) for _, t in draws[1:])
    assert changes == strategy.redraws_targets
    index, targets = draws[0]
    assert bool((targets > 0).all()) == strategy.spreads_targets
    images = torch.randint(0, 256, (len(index), 1, 4, 4), dtype=torch.uint8)
    mixed, mixed_targets = strategy.mix_batch(images, targets, torch.Generator().manual_seed(0))
    unchanged = torch.equal(mixed, images) and torch.equal(mixed_targets, targets)
    assert unchanged != strategy.mixes_images


def test_loss_is_finite_and_gradients_flow(strategy):
    lab = labels()
    index, targets = strategy.epoch_targets(lab, torch.Generator().manual_seed(0))
    logits = torch.randn(len(index), strategy.num_outputs, requires_grad=True)
    loss = strategy.loss(logits, targets)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_decoding_shapes_and_ranges(strategy):
    logits = torch.randn(7, strategy.num_outputs)
    probs = strategy.class_probs(logits)
    assert probs.shape == (7, K)
    assert torch.allclose(probs.sum(1), torch.ones(7), atol=1e-5)
    sets = strategy.predict_sets(logits, 0.3)
    assert sets.shape == (7, K) and sets.dtype == torch.bool
    assert sets.any(1).all(), "every predicted set holds at least one class"
    assert strategy.ambiguity(logits).shape == (7,)


def test_confident_outputs_decode_to_the_right_sets(strategy):
    """Logits that put (almost) all mass on class 4 decode to {4}; on the pair (0, 1) to {0, 1}."""
    clear = torch.full((1, strategy.num_outputs), -20.0)
    clear[0, 4] = 20
    between = torch.full((1, strategy.num_outputs), -20.0)
    if strategy.name == "extra-class":
        between[0, K + 0] = 20  # the class of pair (0, 1)
    else:
        between[0, [0, 1]] = 20
    threshold = 0.3
    assert strategy.predict_sets(clear, threshold)[0].nonzero().flatten().tolist() == [4]
    assert strategy.predict_sets(between, threshold)[0].nonzero().flatten().tolist() == [0, 1]
    assert strategy.ambiguity(between) > strategy.ambiguity(clear)


def test_expected_target_per_strategy():
    """What each strategy trains an in-between image (pair 0 = classes 0, 1) towards."""
    lab = labels()
    gen = torch.Generator().manual_seed(0)
    row = 6  # first in-between image
    for name, expected in {
        "soft": [0.5, 0.5, 0, 0, 0], "hard": [1, 0, 0, 0, 0], "multilabel": [1, 1, 0, 0, 0],
        "partial": [1, 1, 0, 0, 0], "extra-class": [0, 0, 0, 0, 0, 1, 0],
    }.items():
        index, targets = STRATEGIES.get(name)(K, PAIRS).epoch_targets(lab, gen)
        assert targets[(index == row).nonzero()[0, 0]].tolist() == expected, name
    soft_index, soft = STRATEGIES.get("soft")(K, PAIRS).epoch_targets(lab, gen)
    assert soft[8, 2].item() == pytest.approx(0.7) and soft[8, 3].item() == pytest.approx(0.3)


def test_discard_and_duplicate_change_which_images_are_seen():
    lab = labels()
    gen = torch.Generator().manual_seed(0)
    index, _ = STRATEGIES.get("discard")(K, PAIRS).epoch_targets(lab, gen)
    assert index.tolist() == [0, 1, 2, 3, 4, 5]
    index, targets = STRATEGIES.get("duplicate")(K, PAIRS).epoch_targets(lab, gen)
    assert sorted(index.tolist()) == [0, 1, 2, 3, 4, 5, 6, 6, 7, 7, 8, 8]
    # The two copies of image 6 carry one-hot A and one-hot B.
    copies = targets[index == 6].argmax(1).sort().values.tolist()
    assert copies == [0, 1]


def test_reassign_redraws_within_the_pair_every_epoch():
    lab = labels()
    strategy = STRATEGIES.get("reassign")(K, PAIRS)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([strategy.epoch_targets(lab, gen)[1].argmax(1) for _ in range(400)])
    assert set(draws[:, 6].tolist()) == {0, 1} and set(draws[:, 8].tolist()) == {2, 3}
    assert draws[:, 6].eq(0).float().mean().item() == pytest.approx(0.5, abs=0.08)
    assert draws[:, 8].eq(2).float().mean().item() == pytest.approx(0.7, abs=0.08)
    assert draws[:, :6].eq(lab.a[:6]).all(), "clear-cut images never change label"


# -- each loss against a naive per-example loop ------------------------------------------------------
def naive_soft_ce(logits, targets):
    total = 0.0
    for z, t in zip(logits.tolist(), targets.tolist(), strict=True):
        norm = math.log(sum(math.exp(v) for v in z))
        total += -sum(ti * (zi - norm) for zi, ti in zip(z, t, strict=True))
    return total / len(logits)


def naive_bce(logits, targets):
    total = 0.0
    for z, t in zip(logits.tolist(), targets.tolist(), strict=True):
        for zi, ti in zip(z, t, strict=True):
            p = 1 / (1 + math.exp(-zi))
            total += -(ti * math.log(p) + (1 - ti) * math.log(1 - p))
    return total / len(logits)


def naive_partial(logits, targets):
    total = 0.0
    for z, t in zip(logits.tolist(), targets.tolist(), strict=True):
        exp = [math.exp(v) for v in z]
        total += -math.log(sum(e for e, ti in zip(exp, t, strict=True) if ti) / sum(exp))
    return total / len(logits)


NAIVE = {"soft": naive_soft_ce, "hard": naive_soft_ce, "reassign": naive_soft_ce, "duplicate": naive_soft_ce,
         "discard": naive_soft_ce, "extra-class": naive_soft_ce, "multilabel": naive_bce,
         "partial": naive_partial, "label-smoothing": naive_soft_ce, "mixup": naive_soft_ce, "votes": naive_soft_ce}


def test_every_strategy_has_a_reference_loss():
    assert set(NAIVE) == set(STRATEGIES.names())


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_loss_matches_naive_reference(name):
    strategy = STRATEGIES.get(name)(K, PAIRS)
    index, targets = strategy.epoch_targets(labels(), torch.Generator().manual_seed(1))
    logits = torch.randn(len(index), strategy.num_outputs, generator=torch.Generator().manual_seed(2)) * 3
    assert strategy.loss(logits, targets).item() == pytest.approx(NAIVE[name](logits, targets), rel=1e-5)


def test_extra_class_probabilities_split_pair_mass_evenly():
    strategy = STRATEGIES.get("extra-class")(K, PAIRS)
    logits = torch.log(torch.tensor([[0.1, 0.1, 0.1, 0.1, 0.1, 0.4, 0.1]]))
    assert strategy.class_probs(logits)[0].tolist() == pytest.approx([0.3, 0.3, 0.15, 0.15, 0.1])
    assert strategy.ambiguity(logits).item() == pytest.approx(0.5)  # 0.4 + 0.1 on the pair classes


def test_registry_refuses_duplicate_names():
    reg = Registry("thing")
    reg.register("a")(type("A", (), {}))
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(type("B", (), {}))
    with pytest.raises(ValueError, match="unknown thing"):
        reg.get("nope")


def test_an_entry_registers_with_the_options_it_reads():
    reg, options = Registry("thing"), type("Options", (), {})
    reg.register("plain")(type("A", (), {}))
    reg.register("tuned", options=options)(type("B", (), {}))
    assert (reg.options("plain"), reg.options("tuned")) == (None, options)
    assert reg.declared_options() == {"tuned": options}
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("plain", options=type("Other", (), {}))(type("C", (), {}))
    assert reg.options("plain") is None, "a refused entry declares nothing"
    assert STRATEGIES.options("label-smoothing").__name__ == "LabelSmoothingOptions"


# -- the alternatives to soft: label smoothing, mixup, whole vote distributions -------------------------------
def naive_label_smoothing(logits, soft_targets, eps):
    """(1 - ε)·CE(soft target) + ε·(mean over classes of -log p_k), per image, averaged: the textbook form."""
    total = 0.0
    for z, t in zip(logits.tolist(), soft_targets.tolist(), strict=True):
        logp = [v - math.log(sum(math.exp(u) for u in z)) for v in z]
        total += (1 - eps) * -sum(ti * li for ti, li in zip(t, logp, strict=True)) - eps * sum(logp) / len(z)
    return total / len(logits)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_loss_is_the_textbook_formula(eps):
    from ambig_bench.strategies.label_smoothing import LabelSmoothingOptions

    gen = torch.Generator().manual_seed(0)
    _, soft = STRATEGIES.get("soft")(K, PAIRS).epoch_targets(labels(), gen)
    smoothing = STRATEGIES.get("label-smoothing")(K, PAIRS, LabelSmoothingOptions(smoothing_eps=eps))
    index, targets = smoothing.epoch_targets(labels(), gen)
    logits = torch.randn(len(index), K, generator=torch.Generator().manual_seed(3)) * 3
    assert smoothing.loss(logits, targets).item() == pytest.approx(naive_label_smoothing(logits, soft, eps),
                                                                   rel=1e-5)


def test_mixup_mixes_each_image_and_target_with_one_partner_by_one_weight():
    """A naive loop over the batch, with λ and the partner drawn from the same generator state."""
    from ambig_bench.strategies.mixup import MixupOptions, beta

    mixup = STRATEGIES.get("mixup")(K, PAIRS, MixupOptions(mixup_alpha=0.4))
    index, targets = mixup.epoch_targets(labels(), torch.Generator().manual_seed(0))
    images = torch.randint(0, 256, (len(index), 3, 5, 5), dtype=torch.uint8)
    mixed, mixed_t = mixup.mix_batch(images, targets, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    lam = float(beta(0.4, gen))
    partner = torch.randperm(len(images), generator=gen).tolist()
    assert 0 <= lam <= 1 and mixed.dtype == torch.float32
    for i, j in enumerate(partner):
        assert torch.allclose(mixed[i], lam * images[i].float() + (1 - lam) * images[j].float(), atol=1e-4)
        assert torch.allclose(mixed_t[i], lam * targets[i] + (1 - lam) * targets[j], atol=1e-6)
    assert torch.allclose(mixed_t.sum(1), torch.ones(len(index)), atol=1e-6)


def test_mixup_weights_follow_beta_alpha():
    from ambig_bench.strategies.mixup import beta

    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([beta(0.2, gen) for _ in range(4000)])
    # Beta(0.2, 0.2): mean 0.5, variance 1 / (4 (2α + 1)) = 0.1786; most draws near 0 or 1.
    assert draws.mean().item() == pytest.approx(0.5, abs=0.03)
    assert draws.var().item() == pytest.approx(1 / (4 * 1.4), abs=0.015)


def test_votes_trains_on_every_class_voted_for_and_is_soft_without_votes():
    lab = labels()
    gen = torch.Generator().manual_seed(0)
    votes_strategy, soft = STRATEGIES.get("votes")(K, PAIRS), STRATEGIES.get("soft")(K, PAIRS)
    assert torch.equal(votes_strategy.epoch_targets(lab, gen)[1], soft.epoch_targets(lab, gen)[1])
    shares = torch.rand(len(lab), K, generator=torch.Generator().manual_seed(1))
    shares /= shares.sum(1, keepdim=True)
    index, targets = votes_strategy.epoch_targets(Labels(lab.a, lab.b, lab.share_a, lab.pair, shares), gen)
    assert torch.equal(index, torch.arange(len(lab))) and torch.equal(targets, shares)
    # `A|B` labels are one vote for each: the votes' target is soft's 0.5 / 0.5.
    ab = torch.zeros(len(lab), K)
    ab[torch.arange(len(lab)), lab.a] = 1
    ab[lab.between.nonzero().squeeze(1), lab.b[lab.between]] = 1
    ab_shares = ab / ab.sum(1, keepdim=True)
    even = Labels(lab.a, lab.b, torch.where(lab.between, 0.5, 1.0), lab.pair, ab_shares)
    assert torch.allclose(votes_strategy.epoch_targets(even, gen)[1], soft.epoch_targets(even, gen)[1])
