"""Several runs trained as one wide network give the same models as training them one at a time."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ambig_bench.batched import copy_back, widen
from ambig_bench.models import Preprocess, build_model, build_network
from ambig_bench.prepare import prepare_data
from ambig_bench.strategies import STRATEGIES
from ambig_bench.train import Job, predict_logits, train
from tests.conftest import tiny_config


def fresh_model(cfg, data, strategy) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return build_network(cfg.model.name, data.subset("train").images, strategy.num_outputs, cfg.model.width)


@pytest.mark.parametrize("model, channels, size", [("small-cnn", 1, 8), ("fast-cifar", 3, 32)])
def test_wide_forward_equals_each_model(model, channels, size):
    x = torch.randint(0, 256, (5, 3, channels, size, size), dtype=torch.uint8)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        preprocess = Preprocess(torch.rand(channels) * 100, torch.rand(channels) * 50 + 10)
        models.append(nn.Sequential(preprocess, build_model(model, channels, size, 7, 4)))
    wide = widen(models).eval()
    out = wide(x.flatten(1, 2)).view(5, 3, -1)
    for m, single in enumerate(models):
        assert torch.allclose(out[:, m], single.eval()(x[:, m]), atol=1e-5)


@pytest.mark.slow
def test_one_loop_trains_a_wide_network_like_the_runs_one_by_one():
    # Same output size and images per epoch; mixup mixes each run's own batch (float images beside uint8 ones).
    names = ["soft", "reassign", "partial", "mixup"]
    cfgs = [tiny_config(strategy=n, seed=s, epochs=3) for n, s in zip(names, (0, 1, 2, 3), strict=True)]
    datas = [prepare_data(c) for c in cfgs]
    strategies = [STRATEGIES.get(c.strategy)(10, d.pairs) for c, d in zip(cfgs, datas, strict=True)]
    alone = [fresh_model(c, d, s) for c, d, s in zip(cfgs, datas, strategies, strict=True)]
    together = copy.deepcopy(alone)
    device = torch.device("cpu")
    jobs = [[Job(m, s, d.subset("train"), c.seed)] for m, s, d, c in zip(alone, strategies, datas, cfgs, strict=True)]
    histories = [train(job, c, device)[0] for job, c in zip(jobs, cfgs, strict=True)]
    wide = widen(together)
    batched = train([Job(m, s, d.subset("train"), c.seed) for m, s, d, c in zip(together, strategies, datas, cfgs,
                                                                                 strict=True)], cfgs[0], device, wide)
    copy_back(wide, together)
    for h_alone, h_batched in zip(histories, batched, strict=True):
        # Same batches and targets; only the summation order inside the grouped kernels differs.
        assert [e["train_loss"] for e in h_alone] == pytest.approx([e["train_loss"] for e in h_batched], rel=1e-3)
    for a, b, d in zip(alone, together, datas, strict=True):
        test_images = d.subset("test").images
        la, lb = predict_logits(a, test_images, device), predict_logits(b, test_images, device)
        # Rounding differences grow a little over training, but the two models predict alike.
        assert (la.softmax(1) - lb.softmax(1)).abs().max() < 0.01
        assert (la.argmax(1) == lb.argmax(1)).float().mean() > 0.97


@pytest.mark.slow
def test_batched_grid_writes_the_same_runs_as_sequential(tmp_path):
    """--batch-runs on groups soft/hard (same shape) and leaves extra-class alone; files match run by run."""
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from ambig_bench.cli import app

    args = ["run", "--strategy", "soft,hard,extra-class", "--seeds", "2", "--epochs", "2", "--width", "8",
            "--test-between-per-pair", "20", "--val-between-per-pair", "10", "--device", "cpu"]
    for mode in ("on", "off"):
        result = CliRunner().invoke(app, [*args, "--batch-runs", mode, "--out", str(tmp_path / mode)])
        assert result.exit_code == 0, result.output
    on_runs = sorted(p.name for p in (tmp_path / "on" / "runs").iterdir())
    assert on_runs == sorted(p.name for p in (tmp_path / "off" / "runs").iterdir()) and len(on_runs) == 6
    for name in on_runs:
        on, off = tmp_path / "on" / "runs" / name, tmp_path / "off" / "runs" / name
        assert sorted(p.name for p in on.iterdir()) == sorted(p.name for p in off.iterdir())
        batched = json.loads((on / "metrics.json").read_text())["batched_runs"]
        assert batched == (2 if name.startswith("extra-class") else 4)
        p_on, p_off = pd.read_csv(on / "predictions.csv"), pd.read_csv(off / "predictions.csv")
        probs = [c for c in p_on if c.startswith("p_")]
        assert (p_on[probs] - p_off[probs]).abs().max().max() < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("wide_cost, expected", [(0.5, {"soft": 2, "extra-class": 2}),
                                                 (1.0, {"soft": 1, "extra-class": 1})])
def test_auto_batches_only_when_the_timed_probe_says_it_is_faster(tmp_path, monkeypatch, wide_cost, expected):
    """--batch-runs auto trains a group together iff its wide model's timed steps beat the runs one by one.

    wide_cost: seconds per step of the wide model as a share of M steps alone (the margin is 0.9)."""
    import json

    from typer.testing import CliRunner

    from ambig_bench import batched, runner
    from ambig_bench.cli import app

    monkeypatch.setattr(runner, "batching_on", lambda cfg: True)  # auto probes on CUDA only; here on the CPU
    monkeypatch.setattr(batched, "step_seconds", lambda wide, cfg, shape, k, m, dev: 1.0 if m == 1 else wide_cost * m)
    args = ["run", "--strategy", "soft,extra-class", "--seeds", "2", "--epochs", "1", "--width", "8",
            "--test-between-per-pair", "20", "--val-between-per-pair", "10", "--device", "cpu",
            "--batch-runs", "auto", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for run in (tmp_path / "runs").iterdir():
        strategy = "extra-class" if run.name.startswith("extra-class") else "soft"
        assert json.loads((run / "metrics.json").read_text())["batched_runs"] == expected[strategy], run.name


def test_probe_times_training_steps_without_touching_the_runs_model(monkeypatch):
    from ambig_bench import batched
    from ambig_bench.batched import PROBE_STEPS, PROBE_WARMUP, group_size, step_seconds, widen
    from ambig_bench.models import build_network
    from ambig_bench.options import build

    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    model = build_network("small-cnn", images, 10, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = build(dict(batch_runs="auto", batch_size=32))
    wide = widen([model] * 3)
    steps = []
    wide.register_forward_hook(lambda *args: steps.append(1))
    monkeypatch.setattr(batched, "timed", lambda device, fn: (fn(), 2.5)[1])  # the timed steps take 2.5 s
    assert step_seconds(wide, cfg, tuple(images.shape), 10, 3, torch.device("cpu")) == 2.5 / PROBE_STEPS
    assert len(steps) == PROBE_WARMUP + PROBE_STEPS, "warm-up steps, then the timed ones"
    assert any(not torch.equal(a, b) for a, b in zip(wide.state_dict().values(), widen([model] * 3).state_dict()
                                                     .values(), strict=True)), "they trained the wide copy"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the probe trained a copy"

    def stub(cost_of_three):  # seconds per step: 1 for one network alone, `cost_of_three` for the wide one of 3
        monkeypatch.setattr(batched, "step_seconds", lambda w, c, shape, k, m, dev: 1.0 if m == 1 else cost_of_three)

    for cost, size in ((2.7, 3), (2.71, 1), (0.5, 3)):  # batched only when it costs at most 0.9 of 3 alone
        stub(cost)
        assert group_size(cfg, model, tuple(images.shape), 10, 3, torch.device("cpu")) == size, cost
    assert group_size(cfg, model, tuple(images.shape), 10, 1, torch.device("cpu")) == 1, "one run: nothing to time"
    assert group_size(build(dict(batch_runs="on")), model, tuple(images.shape), 10, 40, torch.device("cpu")) == 16
