"""fast-cifar's airbench parts (the whitening stem, frozen BatchNorm scales, per-layer learning rates), and model
entries: each recipe frozen, overridden by run options, and read by the training loop."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from torch import nn

from ambig_bench import options
from ambig_bench.batched import copy_back, widen
from ambig_bench.models import MODELS, Whiten, build_network
from ambig_bench.options import build
from ambig_bench.strategies import STRATEGIES
from ambig_bench.train import Job, make_optimizer, predict_logits, train
from benchmarks.bench import random_data


def correlated_images(n: int = 200, size: int = 12) -> torch.Tensor:
    """Normalised-looking float images whose channels and neighbouring pixels are strongly correlated."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(n, 1, size, size, generator=gen)
    base = base + torch.roll(base, 1, dims=3)  # horizontal neighbours correlate
    return torch.cat([base, 0.5 * base + 0.1 * torch.randn(n, 1, size, size, generator=gen),
                      torch.randn(n, 1, size, size, generator=gen)], 1)


def test_whitening_stem_decorrelates_training_patches():
    images = correlated_images()
    stem = Whiten(3)
    stem.fit(images)
    out = nn.functional.conv2d(images.double(), stem.weight.double())  # without the bias
    first_half = out[:, :12].transpose(0, 1).flatten(1)  # the other half is its negative
    cov = first_half @ first_half.T / first_half.shape[1]
    # Oracle: every 2x2 patch cut out by hand; whitened outputs are uncorrelated, with variance λ / (λ + eps).
    size = images.shape[-1]
    patches = torch.cat([images[:, :, i:i + 2, j:j + 2].reshape(len(images), 12)
                         for i in range(size - 1) for j in range(size - 1)]).double()
    eigenvalues = torch.linalg.eigvalsh(patches.T @ patches / len(patches)).flip(0)
    assert torch.allclose(cov, torch.diag(eigenvalues / (eigenvalues + 5e-4)), atol=1e-6)
    assert torch.equal(stem.weight[12:], -stem.weight[:12])


def test_build_network_fits_the_stem_and_freezes_it():
    images = random_data(64, 3, 32, torch.Generator().manual_seed(1)).images
    model = build_network("fast-cifar", images, 10, 8)
    stem = model[1][0]
    assert isinstance(stem, Whiten) and stem.weight.abs().sum() > 0 and not stem.weight.requires_grad


def test_sgd_groups_frozen_weights_out_and_speeds_up_batchnorm_shifts():
    images = random_data(64, 3, 32, torch.Generator().manual_seed(1)).images
    model = build_network("fast-cifar", images, 10, 8)
    cfg = build(dict(model="fast-cifar"))
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    by_scale = {g["lr_scale"]: g for g in optimizer.param_groups}
    bn_shifts = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in by_scale[64.0]["params"]} == bn_shifts
    assert by_scale[64.0]["lr"] == pytest.approx(64 * cfg.model.lr)
    assert by_scale[64.0]["weight_decay"] == pytest.approx(cfg.model.weight_decay / 64)  # same decay per step
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert frozen and not frozen & optimised and optimised | frozen == {id(p) for p in model.parameters()}
    adamw = make_optimizer(model, build(dict(model="fast-cifar", optimizer="adamw")), torch.device("cpu"))
    assert [g["lr_scale"] for g in adamw.param_groups] == [1.0]
    plain = make_optimizer(model, build(dict(model="fast-cifar", momentum=0.0)), torch.device("cpu"))
    assert not plain.defaults["nesterov"]  # Nesterov needs momentum; --momentum 0 is plain SGD


@pytest.mark.slow
def test_frozen_weights_stay_put_alone_and_batched():
    """Sequential and batched training of fast-cifar leave BN scales at 1 and the stem as fitted, and agree."""
    datas = [random_data(96, 3, 32, torch.Generator().manual_seed(s)) for s in (0, 1)]
    cfgs = [build(dict(model="fast-cifar", width=4, epochs=2, batch_size=32, seed=s, device="cpu", augment="on"))
            for s in (0, 1)]
    soft = STRATEGIES.get("soft")(10, datas[0].pairs)
    models = []
    for c, d in zip(cfgs, datas, strict=True):
        torch.manual_seed(c.seed)
        models.append(build_network("fast-cifar", d.images, 10, 4))
    stems = [m[1][0].weight.clone() for m in models]
    together = copy.deepcopy(models)
    for m, c, d in zip(models, cfgs, datas, strict=True):
        train([Job(m, soft, d, c.seed)], c, torch.device("cpu"))
    wide = widen(together)
    train([Job(m, soft, d, c.seed) for m, d, c in zip(together, datas, cfgs, strict=True)], cfgs[0],
          torch.device("cpu"), wide)
    copy_back(wide, together)
    for alone, batched, stem, d in zip(models, together, stems, datas, strict=True):
        for m in (alone, batched):
            assert torch.equal(m[1][0].weight, stem)
            assert all(torch.equal(b.weight, torch.ones_like(b.weight)) for b in m.modules()
                       if isinstance(b, nn.BatchNorm2d))
        la = predict_logits(alone, d.images, torch.device("cpu"))
        lb = predict_logits(batched, d.images, torch.device("cpu"))
        assert (la.softmax(1) - lb.softmax(1)).abs().max() < 0.01


def test_fast_cifar_checkpoint_keeps_the_fitted_stem(tmp_path):
    from safetensors.torch import save_file

    from ambig_bench.checkpoint import FORMAT, load_checkpoint, model_files

    data = random_data(64, 3, 32, torch.Generator().manual_seed(2))
    cfg = build(dict(model="fast-cifar", width=4, augment="on"))
    model = build_network("fast-cifar", data.images, 10, 4).eval()
    weights, meta = model_files(model, cfg, data, STRATEGIES.get("soft")(10, data.pairs), None, tta=2)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": FORMAT})
    (tmp_path / "model.json").write_text(json.dumps(meta))
    loaded, meta, _ = load_checkpoint(tmp_path)
    assert meta["tta"] == 2 and torch.equal(loaded[1][0].weight, model[1][0].weight)
    assert torch.equal(predict_logits(loaded, data.images, torch.device("cpu"), tta=2),
                       predict_logits(model, data.images, torch.device("cpu"), tta=2))


def test_whitening_sees_every_class_of_a_class_sorted_training_set():
    """Datasets often come sorted by class: the stem must be fitted on a spread of them, not the first 5,000."""
    from ambig_bench.models import FIT_IMAGES

    n = 7000  # between FIT_IMAGES and twice as many: a stride of N // FIT_IMAGES would still read only the start
    bright = torch.full((n // 2, 3, 8, 8), 200, dtype=torch.uint8)  # "class 0", first in the file
    noisy = torch.randint(0, 256, (n - n // 2, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = torch.cat([bright, noisy])
    model = build_network("fast-cifar", images, 10, 4)
    spread = [i * (n - 1) // (FIT_IMAGES - 1) for i in range(FIT_IMAGES)]
    assert sum(i >= n // 2 for i in spread) == pytest.approx(FIT_IMAGES / 2, abs=1)  # half of them from each class
    reference = Whiten(3)
    reference.fit(model[0](images[spread]))
    assert torch.allclose(model[1][0].weight, reference.weight)


# -- model entries and their recipes ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS.names())
def test_a_recipe_is_frozen_and_its_option_defaults_are_run_options(name):
    recipe = MODELS.get(name).recipe
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.lr = 1.0
    defaults = recipe.option_defaults()
    assert set(defaults) <= set(options.table()) and {"lr", "batch_size", "translate"} <= set(defaults)
    cfg = build({"model": name})
    assert {flag: options.get(cfg, flag) for flag in defaults} == defaults, "unset options take the recipe's values"
    assert build({"model": name, "lr": 0.5}).model.lr == 0.5, "an option overrides the recipe"
    assert MODELS.describe()[name] == MODELS.get(name).factory.__doc__.strip().splitlines()[0]


def test_the_training_loop_reads_the_recipes_constants():
    from ambig_bench.train import Lookahead, lr_factor

    recipe = MODELS.get("fast-cifar").recipe
    assert lr_factor("triangle", 0, 0, 10, 10, recipe) == pytest.approx(0.2)
    assert lr_factor("triangle", 0, 0, 10, 10, dataclasses.replace(recipe, triangle_start=0.5)) == pytest.approx(0.5)
    assert lr_factor("linear", 0, 4, 10, 10, recipe) == pytest.approx(0.5 * 0.96)  # one epoch of warm-up
    assert lr_factor("linear", 0, 4, 10, 10, dataclasses.replace(recipe, warmup_epochs=2)) == pytest.approx(0.25 * 0.96)
    layer = nn.Linear(2, 2)
    every_step = Lookahead(layer, dataclasses.replace(recipe, lookahead_every=1, lookahead_start=0.0))
    every_step.step(1, 10)
    assert every_step.average is not None, "averaging starts at the recipe's start, on the recipe's period"
    default = Lookahead(layer, recipe)
    for done in (1, 2, 3):  # before 30% of training, or off the 5-step period: no average yet
        default.step(done, 10)
    assert default.average is None


def test_fast_cifars_batchnorm_shifts_learn_at_the_recipes_rate():
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    net = build_network("fast-cifar", images, 10, 8)
    scales = {getattr(m, "lr_scale", None) for m in net.modules() if isinstance(m, nn.BatchNorm2d)}
    assert scales == {MODELS.get("fast-cifar").recipe.bn_lr_scale}


def test_test_time_views_follow_the_recipe(monkeypatch):
    from ambig_bench import train

    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    cfg = build({"augment": "on"})
    assert train.tta_level(cfg, images) == 2
    entry = MODELS.get("small-cnn")
    monkeypatch.setattr(entry, "recipe", dataclasses.replace(entry.recipe, test_views=False))
    assert train.tta_level(cfg, images) == 0
