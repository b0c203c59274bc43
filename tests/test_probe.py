"""The linear probe of `--freeze` (probe.py): the optimum scikit-learn finds, convergence flags that tell the truth,
the L2 strength that selection_loss prefers, a folded head that computes the fit's logits, and every strategy's
own targets over features (votes included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression

from ambig_bench import probe
from ambig_bench.batched import batching_on
from ambig_bench.data import LabelledImages
from ambig_bench.keys import PROBE, key_content
from ambig_bench.metrics import selection_loss
from ambig_bench.models import build_network
from ambig_bench.options import build
from ambig_bench.prepare import prepare_run
from ambig_bench.runner import run_experiment
from ambig_bench.strategies import STRATEGIES
from ambig_bench.train import labels_of, predict_logits

CPU = torch.device("cpu")
K = 4
PAIRS = [(0, 1), (2, 3)]


def features(n: int = 300, d: int = 12, seed: int = 0, signal: float = 1.0) -> LabelledImages:
    """Gaussian class clusters as N×D×1×1 "features", every 6th image between its class and the pair's other one,
    split 60/20/20."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = signal * torch.randn(K, d, generator=g)[y] + torch.randn(n, d, generator=g) + 3.0
    b = torch.full((n,), -1)
    between = torch.arange(n) % 6 == 5
    b[between] = y[between] ^ 1  # the other class of its pair
    split = torch.tensor([0, 0, 0, 1, 2] * (n // 5), dtype=torch.int8)
    return LabelledImages(x[:, :, None, None], y, b, torch.where(between, 0.5, 1.0), split,
                          [f"c{k}" for k in range(K)], PAIRS)


def standardised(data: LabelledImages) -> tuple[torch.Tensor, probe.Standardise]:
    x = data.images.flatten(1)
    scale = probe.Standardise.fit(x)
    return scale(x), scale


def soft_fit(data: LabelledImages, l2: float, max_iterations: int = probe.MAX_ITERATIONS) -> probe.Fit:
    strategy = STRATEGIES.get("soft")(K, PAIRS)
    z, _ = standardised(data)
    rows = probe.training_rows(strategy, z, labels_of(data, CPU), torch.Generator().manual_seed(0))
    return probe.lbfgs(strategy, rows, l2, torch.zeros(K, z.shape[1]), torch.zeros(K), max_iterations)


@pytest.mark.slow  # scikit-learn to a tight tolerance
@pytest.mark.parametrize("l2", [0.3, 0.01])
def test_the_soft_probe_is_sklearns_multinomial_logistic_regression(l2):
    """sklearn minimises Σ_i w_i CE_i + |W|²/(2C); the probe mean CE + l2/2·|W|², so C = 1/(N·l2). A soft target
    (0.5, 0.5) is the image twice, labelled A and B, with sample weight 0.5 each."""
    train = features().subset("train")
    z, _ = standardised(train)
    fit = soft_fit(train, l2)
    assert fit.converged and fit.gradient <= probe.GRAD_TOLERANCE

    between = train.is_between
    rows = torch.cat([torch.arange(len(train)), between.nonzero().squeeze(1)])
    y = torch.cat([train.label_a, train.label_b[between]])
    weight = torch.cat([train.share_a, 1 - train.share_a[between]])
    reference = LogisticRegression(C=1 / (len(train) * l2), tol=1e-10, max_iter=10_000)
    reference.fit(z[rows].double().numpy(), y.numpy(), sample_weight=weight.double().numpy())

    ours = (z @ fit.weight.T + fit.bias).softmax(1).double().numpy()
    assert np.abs(ours - reference.predict_proba(z.double().numpy())).max() < 1e-3
    assert np.abs(fit.weight.double().numpy() - reference.coef_).max() < 1e-2 * np.abs(reference.coef_).max()


def test_converged_on_a_well_posed_problem_and_not_when_the_cap_is_hit():
    train = features().subset("train")
    done = soft_fit(train, 0.01)
    assert done.converged and done.iterations < probe.MAX_ITERATIONS
    assert done.convergence.startswith("L-BFGS stopped on its gradient tolerance after")
    capped = soft_fit(train, 0.01, max_iterations=3)
    assert not capped.converged and capped.iterations == 3
    assert capped.convergence.startswith("L-BFGS hit its cap of 3 iterations") and capped.gradient > done.gradient


def fit_head(strategy_name: str, data: LabelledImages, grid: list[float]) -> tuple[torch.nn.Linear, list[dict]]:
    strategy = STRATEGIES.get(strategy_name)(K, PAIRS)
    head = torch.nn.Linear(data.images.shape[1], strategy.num_outputs)
    return head, probe.fit_head(head, strategy, data, 0, CPU, grid)


@pytest.mark.parametrize("labels, chosen", [("informative", 1e-4), ("random", 100.0)])
def test_the_l2_strength_is_the_one_selection_loss_prefers_on_validation(labels, chosen):
    """Validation labels that follow the features want the weakest penalty; labels drawn at random want the
    strongest (a near-uniform answer). Either way the choice is the grid's argmin of selection_loss."""
    data = features(signal=2.0)
    if labels == "random":
        val = data.split == 1
        data.label_a[val] = torch.randint(0, K, (int(val.sum()),), generator=torch.Generator().manual_seed(1))
        data.label_b[val] = -1
    grid = [100.0, 1e-4]
    _, history = fit_head("soft", data, grid)
    assert history[-1]["probe_l2"] == chosen
    losses = []
    for l2 in grid:  # each L2 alone, from zero: the naive loop
        train, val = data.subset("train"), data.subset("val")
        fit = soft_fit(train, l2)
        _, scale = standardised(train)
        probs = (scale(val.images.flatten(1)) @ fit.weight.T + fit.bias).softmax(1)
        losses.append(selection_loss(probs, val.label_a, val.label_b))
    assert grid[int(np.argmin(losses))] == chosen
    assert [row["val_loss"] for row in history] == pytest.approx(losses, rel=1e-2)


@pytest.mark.parametrize("signal", [pytest.param(0.3, marks=pytest.mark.slow), 1.0, 3.0])
def test_the_walk_along_the_grid_finds_the_grids_best(signal):
    """The walk from L2_START stops early; it ends where fitting every value of the grid from zero would."""
    data = features(signal=signal)
    train, val = data.subset("train"), data.subset("val")
    _, scale = standardised(train)
    losses = []
    for l2 in probe.L2_GRID:
        fit = soft_fit(train, l2)
        probs = (scale(val.images.flatten(1)) @ fit.weight.T + fit.bias).softmax(1)
        losses.append(selection_loss(probs, val.label_a, val.label_b))
    _, history = fit_head("soft", data, probe.L2_GRID)
    assert history[-1]["probe_l2"] == probe.L2_GRID[int(np.argmin(losses))]
    assert len(history) < len(probe.L2_GRID)


def test_the_folded_head_over_raw_features_gives_the_fits_logits():
    data = features()
    head, history = fit_head("soft", data, [0.01])
    fit = soft_fit(data.subset("train"), 0.01)
    _, scale = standardised(data.subset("train"))
    x = data.images.flatten(1)
    assert torch.allclose(head(x), scale(x) @ fit.weight.T + fit.bias, atol=1e-5)
    assert history[-1]["probe_iterations"] == fit.iterations and history[-1]["converged"] is True


def test_a_probe_over_non_finite_features_fails_with_the_reason():
    data = features()
    data.images[0, 0] = float("nan")
    _, outcome = fit_head("soft", data, [0.01])
    assert outcome == "the backbone's features of some images are not finite (inf or nan): check its weights"


@pytest.mark.parametrize("name", ["soft", "mixup"])
def test_with_more_features_than_images_the_fit_in_their_span_is_the_full_fit(name):
    data = features(n=100, d=150)
    head, _ = fit_head(name, data, [0.1])
    strategy = STRATEGIES.get(name)(K, PAIRS)
    train = data.subset("train")
    z, scale = standardised(train)
    rows = probe.training_rows(strategy, z, labels_of(train, CPU), torch.Generator().manual_seed(0))
    full = probe.lbfgs(strategy, rows, 0.1, torch.zeros(K, z.shape[1]), torch.zeros(K))
    x = data.images.flatten(1)
    assert full.converged and z.shape[1] > len(z)
    assert torch.allclose(head(x).softmax(1), probe.logits_of(full, scale(x)).softmax(1), atol=2e-3)


@pytest.mark.parametrize("name", [n for n in STRATEGIES.names() if STRATEGIES.get(n).redraws_targets])
def test_a_redrawing_strategys_mean_targets_are_the_mean_of_its_draws(name):
    """What the probe trains a redrawing strategy on, against the average of many draws (the naive oracle); the
    loss is linear in the targets, so the loss of the mean targets is the mean loss over draws."""
    strategy = STRATEGIES.get(name)(K, PAIRS)
    labels = labels_of(features(), CPU)
    gen = torch.Generator().manual_seed(0)
    draws = [strategy.epoch_targets(labels, gen) for _ in range(2000)]
    index, mean = strategy.mean_targets(labels)
    assert all(torch.equal(i, index) for i, _ in draws)
    assert torch.allclose(torch.stack([t for _, t in draws]).mean(0), mean, atol=0.05)
    logits = torch.randn(len(index), strategy.num_outputs, generator=gen)
    mean_loss = torch.stack([strategy.loss(logits, t) for _, t in draws]).mean()
    assert strategy.loss(logits, mean).item() == pytest.approx(mean_loss.item(), rel=2e-3)


def test_reassigns_probe_is_softs():
    data = features()
    soft, _ = fit_head("soft", data, [0.01])
    reassign, _ = fit_head("reassign", data, [0.01])
    assert torch.equal(soft.weight, reassign.weight) and torch.equal(soft.bias, reassign.bias)


def test_mixups_sample_average_barely_depends_on_its_draws():
    """Two independent sets of `DRAWS` mixes: the probe's test probabilities end close (the sampling error left)."""
    data = features()
    strategy = STRATEGIES.get("mixup")(K, PAIRS)
    z, scale = standardised(data.subset("train"))
    test_z = scale(data.subset("test").images.flatten(1))
    probs = []
    for seed in (0, 1):
        rows = probe.training_rows(strategy, z, labels_of(data.subset("train"), CPU),
                                   torch.Generator().manual_seed(seed))
        fit = probe.lbfgs(strategy, rows, 0.01, torch.zeros(K, z.shape[1]), torch.zeros(K))
        assert fit.converged
        probs.append(probe.logits_of(fit, test_z).softmax(1))
    assert (probs[0] - probs[1]).abs().mean() < 0.02


# -- through the pipeline: images with human votes, a small-cnn backbone from a weights file ---------------------


@pytest.fixture
def voted(tmp_path, monkeypatch) -> dict:
    """An .npz of 8x8 images of 3 classes with vote distributions (every 7th split between a and b) and small-cnn
    starting weights: the options of a run that may --freeze."""
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    n, k = 120, 3
    y = np.arange(n) % k
    x = np.clip(rng.normal(60 + 70 * y[:, None, None], 30, (n, 8, 8)), 0, 255).astype(np.uint8)
    votes = np.eye(k)[y] * 0.94 + 0.06 / k
    votes[::7] = [0.48, 0.48, 0.04]
    np.savez(tmp_path / "voted.npz", x=x, y=y, probs=votes, class_names=np.array(["a", "b", "c"]))
    net = build_network("small-cnn", torch.from_numpy(x[:4, None]), k, 8)
    save_file({name: t.contiguous() for name, t in net[1].state_dict().items()}, tmp_path / "start.safetensors")
    return dict(dataset="npz", data_dir=str(tmp_path / "voted.npz"), between_source="human", width=8, device="cpu",
                weights=str(tmp_path / "start.safetensors"))


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_gets_the_same_targets_with_freeze_as_without(voted, name):
    runs = [prepare_run(build({**voted, "strategy": name, "freeze": freeze}), CPU) for freeze in (False, True)]
    assert runs[1].inputs.votes is not None
    targets = [run.strategy.epoch_targets(labels_of(run.inputs.subset("train"), CPU),
                                          torch.Generator().manual_seed(0)) for run in runs]
    assert torch.equal(targets[0][0], targets[1][0]) and torch.equal(targets[0][1], targets[1][1])


def test_the_saved_network_on_images_gives_the_probes_logits(voted):
    run = prepare_run(build({**voted, "strategy": "votes", "freeze": True}), CPU)
    history = probe.fit_head(run.trainable[-1], run.strategy, run.inputs, 0, CPU)
    test = run.data.subset("test").images
    over_features = predict_logits(run.trainable, run.inputs.subset("test").images, CPU)
    assert torch.allclose(predict_logits(run.model, test, CPU), over_features, atol=1e-5)
    assert history[-1]["probe_l2"] in probe.L2_GRID


@pytest.mark.slow
def test_a_frozen_run_records_the_probe_and_claims_no_epochs(voted, tmp_path):
    result = run_experiment(build({**voted, "strategy": "votes", "freeze": True}), out=tmp_path / "out")
    metrics = json.loads((Path(result.run_dir) / "metrics.json").read_text())
    assert metrics["probe_l2"] in probe.L2_GRID and metrics["probe_iterations"] > 0 and "epochs" not in metrics
    assert np.isfinite(metrics["human_ce"])


def test_frozen_runs_train_alone_even_where_batching_is_forced(voted):
    """A probe is one full-batch solve per run: nothing to share with a wide network."""
    assert batching_on(build({**voted, "batch_runs": "on"}))
    assert not batching_on(build({**voted, "batch_runs": "on", "freeze": True}))


def test_frozen_runs_are_a_new_experiment_and_other_runs_keep_their_key(voted):
    assert key_content(build({**voted, "freeze": True}))["probe"] == PROBE
    assert "probe" not in key_content(build(voted))



@pytest.mark.parametrize("iterations, gradient, converged, says", [
    (40, 5e-5, True, "gradient tolerance"),  # on the gradient tolerance
    (40, 5e-4, True, "loss-change tolerance"),  # float32 stopped it within 10x the tolerance
    (40, 5e-2, False, "stalled"),  # stopped changing far from the optimum
    (500, 5e-2, False, "hit its cap"),
])
def test_a_fit_has_converged_only_near_its_gradient_tolerance(iterations, gradient, converged, says):
    fit = probe.Fit(0.1, torch.zeros(2, 3), torch.zeros(2), iterations, 500, 0.5, gradient)
    assert fit.converged is converged and says in fit.convergence
