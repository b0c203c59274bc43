"""The training loop's device-side augmentation against a naive per-image reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ambig_bench.train import augment


@pytest.mark.parametrize("shift", [0, 1, 2, 5])
def test_augment_equals_mirror_pad_crop_and_flip_image_by_image(shift):
    n, h, w = 64, 6, 9
    x = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8)
    got = augment(x, torch.Generator().manual_seed(3), shift)
    # The same draws, in the same order, applied the textbook way: mirror-pad, crop, maybe flip.
    gen = torch.Generator().manual_seed(3)
    dy = torch.randint(-shift, shift + 1, (n, 1), generator=gen).squeeze(1) + shift
    dx = torch.randint(-shift, shift + 1, (n, 1), generator=gen).squeeze(1) + shift
    flip = torch.rand(n, generator=gen) < 0.5
    for i in range(n):
        padded = F.pad(x[i:i + 1].float(), (shift,) * 4, mode="reflect") if shift else x[i:i + 1].float()
        crop = padded[0, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        assert torch.equal(got[i].float(), crop.flip(2) if flip[i] else crop)
    if shift:
        assert not torch.equal(got, x) and got.dtype == torch.uint8


def test_test_time_views_match_airbench_weights():
    """tta=2: 1/2 mirror-mean of the image + 1/4 each of its one-pixel shifts (mirror-padded); tta=1: mirror-mean."""
    from torch import nn

    from ambig_bench.train import predict_logits

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 4))
    model_f = lambda t: model(t.float())  # noqa: E731
    x = torch.randint(0, 256, (7, 3, 5, 5), dtype=torch.uint8)
    padded = F.pad(x.float(), (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[:, :, 0:5, 0:5], padded[:, :, 2:7, 2:7]
    mirror = lambda t: (model_f(t) + model_f(t.flip(3))) / 2  # noqa: E731
    expected = mirror(x) / 2 + mirror(up_left) / 4 + mirror(down_right) / 4
    got = predict_logits(nn.Sequential(Float(), model), x, torch.device("cpu"), tta=2)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(predict_logits(nn.Sequential(Float(), model), x, torch.device("cpu"), tta=1), mirror(x),
                          atol=1e-5)
    assert torch.allclose(predict_logits(nn.Sequential(Float(), model), x, torch.device("cpu")), model_f(x))


class Float(torch.nn.Module):
    def forward(self, x):
        return x.float()


@pytest.mark.parametrize("schedule, expected", [
    # (epoch, step) over 10 epochs of 10 steps -> fraction of the peak learning rate
    ("linear", {(0, 0): 0.1, (0, 4): 0.5 * 0.96, (1, 0): 0.9, (5, 0): 0.5, (9, 9): 0.01}),
    ("triangle", {(0, 0): 0.2, (1, 0): 0.2 + 0.8 * 0.1 / 0.23, (2, 3): 1.0, (6, 0): 1 - 0.93 * 0.37 / 0.77,
                  (9, 9): 1 - 0.93 * 0.76 / 0.77}),
    ("cosine", {(0, 0): 0.1 * 1.0, (0, 4): 0.5 * (0.5 + 0.5 * math.cos(math.pi * 0.04)), (5, 0): 0.5,
                (1, 0): 0.5 + 0.5 * math.cos(math.pi * 0.1), (9, 9): 0.5 + 0.5 * math.cos(math.pi * 0.99)}),
])
def test_learning_rate_schedules(schedule, expected):
    """linear: one-epoch warm-up then down to 0; cosine: the same warm-up then a half cosine down to 0;
    triangle (airbench): 0.2 -> 1 at 23% of training -> 0.07."""
    from ambig_bench.models import MODELS
    from ambig_bench.train import lr_factor

    recipe = MODELS.get("small-cnn").recipe
    for (epoch, step), value in expected.items():
        assert lr_factor(schedule, epoch, step, 10, 10, recipe) == pytest.approx(value), (epoch, step)
    assert lr_factor("triangle", 10, 0, 10, 10, recipe) == pytest.approx(0.07), "ends at 0.07 of the peak"


def test_lookahead_against_a_naive_replay():
    """Every 5th step from 30% of training: average <- keep·average + (1 - keep)·weights, weights <- average."""
    from torch import nn

    from ambig_bench.models import MODELS
    from ambig_bench.train import Lookahead

    total, gen = 40, torch.Generator().manual_seed(0)
    layer = nn.Linear(2, 2)
    lookahead = Lookahead(layer, MODELS.get("fast-cifar").recipe)
    average, expected = None, None
    for done in range(1, total + 1):
        with torch.no_grad():  # stands in for an optimiser step
            layer.weight.add_(torch.randn(2, 2, generator=gen))
        current = layer.weight.detach().clone()
        lookahead.step(done, total)
        if done >= 0.3 * total and done % 5 == 0:
            if average is None:
                average = current
            else:
                keep = 0.95**5 * (done / total) ** 3
                average = keep * average + (1 - keep) * current
            current = average.clone()
        expected = current
        assert torch.allclose(layer.weight, expected, atol=1e-6), done
    layer.weight.data.add_(1.0)
    lookahead.finish()
    assert torch.allclose(layer.weight, average, atol=1e-6)


@pytest.mark.parametrize("augment, translate, level", [("off", 2, 0), ("on", 0, 1), ("on", 2, 2)])
def test_test_time_views_follow_training_augmentation(augment, translate, level):
    """Shifted views only for models trained with shifts; none without augmentation."""
    from ambig_bench.options import build
    from ambig_bench.train import tta_level

    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    assert tta_level(build(dict(augment=augment, translate=translate)), images) == level


def test_resized_crops_keep_shape_order_and_the_chosen_share_of_the_image():
    from ambig_bench.train import resized_crop

    ramp = (torch.arange(32) * 8).to(torch.uint8).expand(6, 3, 32, 32).contiguous()  # brightness = column
    crops = resized_crop(ramp, torch.Generator().manual_seed(0), 0.5)
    again = resized_crop(ramp, torch.Generator().manual_seed(0), 0.5)
    assert crops.shape == ramp.shape and crops.dtype == torch.uint8 and torch.equal(crops, again)
    rows = crops[:, 0].float()
    assert (rows.diff(dim=2) >= 0).all(), "a crop of a left-to-right ramp still runs left to right"
    assert (rows == rows[:, :1]).all(), "every row of the crop is the same part of the ramp"
    span = (rows[:, 0, -1] - rows[:, 0, 0]) / (8 * 31)  # share of the image's width the crop covers
    # area >= 0.5 with aspect ratio <= 4/3 keeps at least sqrt(0.5 * 3/4) of the width, minus a pixel of resampling
    assert (span >= (0.5 * 3 / 4) ** 0.5 - 2 / 31).all() and (span < 1).any()


def test_crop_recipes_use_mirror_views_only_and_big_data_streams_from_host_memory():
    from ambig_bench.options import build
    from ambig_bench.train import fits, tta_level

    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    assert tta_level(build({"augment": "on", "crop_scale": 0.35}), images) == 1
    assert tta_level(build({"augment": "on"}), images) == 2
    assert build({"model": "resnet18"}).model.crop_scale == 0.35 and build({}).model.crop_scale == 1.0
    assert fits(10, 20) and not fits(11, 20), "the images may take half of the device's free memory"


def test_a_crop_recipe_trains_end_to_end(tmp_path):
    """Crops change what the network sees (another loss than shifts alone, the same again for the same seed), the
    run is evaluated on mirror views only, and it learns."""
    import json

    from ambig_bench.runner import run_experiment
    from tests.conftest import tiny_config

    crop_cfg = tiny_config(augment="on", crop_scale=0.5, translate=1, epochs=3)
    crop = run_experiment(crop_cfg, tmp_path / "a")
    again = run_experiment(crop_cfg, tmp_path / "b")
    shift = run_experiment(tiny_config(augment="on", translate=1, epochs=3), tmp_path / "a")
    assert crop.status == again.status == shift.status == "done"

    def losses(run):
        return [row.split(",")[1] for row in (run.run_dir / "history.csv").read_text().splitlines()[1:]]

    assert losses(crop) == losses(again) and losses(crop) != losses(shift)
    tta = {name: json.loads((run.run_dir / "model.json").read_text())["tta"]
           for name, run in (("crop", crop), ("shift", shift))}
    assert tta == {"crop": 1, "shift": 2}
    assert crop.metrics["clear_acc"] > 0.3, "ten classes: chance is 0.1"
