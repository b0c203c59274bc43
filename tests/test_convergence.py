"""Convergence for every run, the validation criterion per epoch (also in wide networks), early stopping that keeps
the best epoch's weights, and the input normalisation of starting weights."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ambig_bench import convergence
from ambig_bench.batched import copy_back, widen
from ambig_bench.checkpoint import load_checkpoint
from ambig_bench.cli import app
from ambig_bench.convergence import WINDOW, judge
from ambig_bench.metrics import selection_loss
from ambig_bench.models import Preprocess
from ambig_bench.prepare import prepare_data, untrained
from ambig_bench.train import Job, Validation, predict_logits, train
from tests.conftest import tiny_config

CPU = torch.device("cpu")


# -- judge ------------------------------------------------------------------------------------------------------
def history(train_losses, val_losses=None, kept=None) -> list[dict]:
    rows = [{"epoch": e + 1, "train_loss": loss} for e, loss in enumerate(train_losses)]
    for row, val in zip(rows, val_losses or [], strict=False):
        row["val_loss"] = val
    for row in rows if kept else ():
        row["kept"] = row["epoch"] == kept
    return rows


def naive_change(values: list[float]) -> float:
    """The fitted line's rise over the last WINDOW epochs over the way the values came, by numpy's polyfit."""
    points = np.array(values[-(WINDOW + 1):])
    return np.polyfit(np.arange(len(points)), points, 1)[0] * WINDOW / (max(values) - min(values))


@pytest.mark.parametrize("values", [[2.0, 1.0, 0.7, 0.6, 0.55, 0.52, 0.5], [1.0, 1.2, 0.9, 1.1, 0.95, 1.05],
                                    [5, 4, 3, 2, 1.5, 1.4, 1.39, 1.389], [0.01, 0.001, 0.0005, 0.0004, 0.0001, 0.0]])
def test_the_trend_is_the_least_squares_line_of_the_last_epochs_over_the_way_come(values):
    assert convergence.trend(values) == pytest.approx(naive_change(values))
    assert convergence.trend([0.3] * 8) == 0


@pytest.mark.parametrize("floor", [0.0, 0.4], ids=["towards-0", "entropy-floor"])
def test_a_history_that_flattens_has_converged(floor):
    losses = [floor + 2 * 0.5**e for e in range(16)]  # the last 5 epochs fall 0.1% of the way
    converged, why = judge(history(losses, [x + 0.1 for x in losses]))
    assert converged and "training loss" in why and "validation loss" in why and "raise" not in why


def test_a_training_loss_still_falling_has_not_converged_and_the_reason_carries_the_fix():
    losses = [2.0, 1.6, 1.3, 1.1, 0.95, 0.85, 0.77]
    converged, why = judge(history(losses))
    assert not converged and why.startswith("training loss still falling") and why.endswith("raise --epochs")
    assert f"{-naive_change(losses):.1%}" in why


def test_a_validation_loss_still_falling_has_not_converged():
    converged, why = judge(history([0.5] * 8, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4]))
    assert not converged and why.startswith("validation loss still falling") and "raise --epochs" in why


def test_too_few_epochs_cannot_be_judged():
    converged, why = judge(history([1.0, 0.9]))
    assert not converged and "only 2 epochs" in why and "raise --epochs" in why


def test_early_stopping_on_an_earlier_epoch_has_converged_whatever_the_training_loss():
    falling = [2.0, 1.6, 1.3, 1.1, 0.95, 0.85, 0.77]
    converged, why = judge(history(falling, [1.0, 0.8, 0.7, 0.75, 0.8, 0.9, 1.0], kept=3))
    assert converged and "epoch 3 of 7" in why
    assert not judge(history(falling, falling, kept=7))[0], "the last epoch kept: still improving"


def test_a_solvers_own_verdict_in_the_last_row_is_used_as_it_is():
    rows = [{"epoch": 1, "train_loss": 0.3, "converged": True,
             "convergence": "L-BFGS stopped on its tolerance after 41 iterations"}]
    assert judge(rows) == (True, "L-BFGS stopped on its tolerance after 41 iterations")
    rows[-1].update(converged=False, convergence="L-BFGS hit its iteration limit")
    assert judge(rows) == (False, "L-BFGS hit its iteration limit")


# -- the validation criterion per epoch and early stopping in the loop -----------------------------------------
def jobs_for(strategy_names: list[str], epochs: int, scores=None) -> tuple[list[Job], list, object]:
    """Jobs of tiny digits runs (seeds 0, 1, ...) with their validation split; `scores`: a replacement criterion per
    run (a list of values, one per epoch), to force which epoch is best."""
    jobs, datas = [], []
    for seed, name in enumerate(strategy_names):
        cfg = tiny_config(strategy=name, seed=seed, epochs=epochs)
        data = prepare_data(cfg)
        strategy, model = untrained(cfg, data, CPU)
        val = data.subset("val")
        forced = iter(scores[seed]) if scores else None

        def score(logits, s=strategy, v=val, forced=forced) -> float:
            return next(forced) if forced else selection_loss(s.class_probs(logits), v.label_a, v.label_b)

        jobs.append(Job(model, strategy, data.subset("train"), seed, val=Validation(val.images, score)))
        datas.append(data)
    return jobs, datas, cfg


def criterion(model, strategy, data) -> float:
    val = data.subset("val")
    return selection_loss(strategy.class_probs(predict_logits(model, val.images, CPU)), val.label_a, val.label_b)


def test_each_epoch_records_the_validation_criterion_of_the_model_as_it_then_was():
    [job], [data], cfg = jobs_for(["soft"], 3)
    snapshots = []
    job.on_epoch = lambda epoch, loss: snapshots.append(copy.deepcopy(job.model))
    [rows] = train([job], cfg, CPU)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all("kept" not in r for r in rows), "from scratch: no keeping"
    for row, model in zip(rows, snapshots, strict=True):
        assert row["val_loss"] == pytest.approx(criterion(model, job.strategy, data), rel=1e-6)


@pytest.mark.parametrize("runs", [1, 2], ids=["alone", "wide"])
def test_early_stopping_ends_on_each_runs_best_epoch(runs):
    """Forced criteria make epoch 2 best for the first run and epoch 1 for the second: the trained network (a wide
    one's parts, written back) is the one each run had at the end of that epoch, checked by evaluating it."""
    scores = [[0.5, 0.2, 0.9, 0.7], [0.1, 0.3, 0.2, 0.4]][:runs]
    jobs, datas, cfg = jobs_for(["soft", "hard"][:runs], 4, scores)
    cfg.train.early_stopping = "on"
    module = jobs[0].model if runs == 1 else widen([job.model for job in jobs])
    snapshots: list[list] = [[] for _ in jobs]

    def snapshot(epoch: int, loss: float) -> None:
        if runs > 1:
            copy_back(module, [job.model for job in jobs])
        for m, job in enumerate(jobs):
            snapshots[m].append(copy.deepcopy(job.model))

    jobs[0].on_epoch = snapshot
    histories = train(jobs, cfg, CPU, module)
    if runs > 1:
        copy_back(module, [job.model for job in jobs])
    for m, (job, rows, data) in enumerate(zip(jobs, histories, datas, strict=True)):
        best = int(np.argmin(scores[m]))
        assert [r["kept"] for r in rows] == [e == best for e in range(4)]
        test_images = data.subset("test").images
        assert torch.allclose(predict_logits(job.model, test_images, CPU),
                              predict_logits(snapshots[m][best], test_images, CPU), atol=1e-5)
        assert not torch.allclose(predict_logits(job.model, test_images, CPU),
                                  predict_logits(snapshots[m][-1], test_images, CPU), atol=1e-3)


def test_a_wide_network_records_each_runs_own_validation_criterion():
    jobs, datas, cfg = jobs_for(["soft", "reassign"], 2)
    alone = copy.deepcopy(jobs)
    histories_alone = [train([job], cfg, CPU)[0] for job in alone]
    wide = widen([job.model for job in jobs])
    histories_wide = train(jobs, cfg, CPU, wide)
    copy_back(wide, [job.model for job in jobs])
    for rows_alone, rows_wide, job, data in zip(histories_alone, histories_wide, jobs, datas, strict=True):
        assert [r["val_loss"] for r in rows_wide] == pytest.approx([r["val_loss"] for r in rows_alone], rel=1e-3)
        assert rows_wide[-1]["val_loss"] == pytest.approx(criterion(job.model, job.strategy, data), rel=1e-5)
    assert histories_wide[0][-1]["val_loss"] != histories_wide[1][-1]["val_loss"]


# -- a run's record ---------------------------------------------------------------------------------------------
cli = CliRunner()


@pytest.mark.slow
def test_every_run_records_convergence_and_a_fine_tuned_one_its_best_epoch(tmp_path):
    args = ["run", "--dataset", "digits", "--width", "4", "--batch-size", "64", "--test-between-per-pair", "20",
            "--val-between-per-pair", "10", "--device", "cpu", "--seeds", "1", "--strategy", "soft"]
    result = cli.invoke(app, [*args, "--epochs", "2", "--out", str(tmp_path / "pre")])
    assert result.exit_code == 0, result.output
    [pre] = (tmp_path / "pre" / "runs").iterdir()
    metrics = json.loads((pre / "metrics.json").read_text())
    assert metrics["converged"] is False and "raise --epochs" in metrics["convergence"]
    assert metrics["best_epoch"] is None
    assert "val_loss" in pd.read_csv(pre / "history.csv").columns
    result = cli.invoke(app, [*args, "--epochs", "3", "--weights", str(pre), "--out", str(tmp_path / "fine")])
    assert result.exit_code == 0, result.output
    [fine] = (tmp_path / "fine" / "runs").iterdir()
    rows = pd.read_csv(fine / "history.csv")
    metrics = json.loads((fine / "metrics.json").read_text())
    assert metrics["best_epoch"] == rows.epoch[rows.val_loss.idxmin()] and rows.kept.sum() == 1


# -- normalisation ----------------------------------------------------------------------------------------------
def resnet_file(path) -> str:
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    save_file(resnet18().state_dict(), path)
    return str(path)


def network_of(tmp_path, **given) -> torch.nn.Module:
    cfg = tiny_config(**given)
    return untrained(cfg, prepare_data(cfg), CPU)[1]


def test_a_weights_file_of_a_torchvision_architecture_gets_its_imagenet_normalisation(tmp_path):
    weights = resnet_file(tmp_path / "r.safetensors")
    preprocess = network_of(tmp_path, model="resnet18", weights=weights, image_size=16)[0]
    assert torch.allclose(preprocess.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]) * 255)
    assert torch.allclose(preprocess.std.flatten(), torch.tensor([0.229, 0.224, 0.225]) * 255)
    fitted = network_of(tmp_path, model="resnet18", weights=weights, image_size=16, normalize="data")[0]
    cfg = tiny_config(image_size=16)
    data = Preprocess.fit(prepare_data(cfg).subset("train").images)
    assert torch.equal(fitted.mean.flatten(), data.mean.flatten().repeat(3)), "grey digits, fitted, as RGB"


@pytest.mark.parametrize("value, mean, std", [("imagenet", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                                              ("0.5,0.25", [0.5], [0.25]),
                                              ("0.1,0.2,0.3,0.4,0.5,0.6", [0.1, 0.2, 0.3], [0.4, 0.5, 0.6])])
def test_mean_and_std_are_parsed_per_channel(value, mean, std):
    from ambig_bench.config import parse_normalize

    assert parse_normalize(value) == (tuple(mean), tuple(std))


@pytest.mark.parametrize("value, says", [("0.5", "1 or 3 means"), ("a,b", "1 or 3 means"), ("1,2,3,4", "1 or 3"),
                                         ("128,64", "scaled to 0..1"), ("0.5,0", "stds in (0, 1]"),
                                         ("0.1,0.2,0.3,0.4,0.5,0.6", "3 channels, but the network takes 1")])
def test_bad_normalisation_is_one_line_exit_2(tmp_path, value, says):
    result = cli.invoke(app, ["run", "--dataset", "digits", "--epochs", "1", "--width", "4", "--seeds", "1",
                              "--device", "cpu", "--normalize", value, "--out", str(tmp_path / "out")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and says in lines[0], result.stderr
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs").glob("*/DONE"))


@pytest.mark.slow
def test_a_given_normalisation_is_recorded_and_the_saved_model_reproduces_the_runs_predictions(tmp_path):
    out = tmp_path / "out"
    result = cli.invoke(app, ["run", "--dataset", "digits", "--epochs", "1", "--width", "4", "--seeds", "1",
                              "--test-between-per-pair", "20", "--val-between-per-pair", "10", "--device", "cpu",
                              "--normalize", "0.25,0.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    [run_dir] = (out / "runs").iterdir()
    record = {"source": "0.25,0.5", "mean": [0.25], "std": [0.5]}
    assert json.loads((run_dir / "model.json").read_text())["normalization"] == record
    assert json.loads((run_dir / "data.json").read_text())["normalization"] == record
    model, _, strategy = load_checkpoint(run_dir)
    cfg = tiny_config(epochs=1, width=4, normalize="0.25,0.5")
    test = prepare_data(cfg).subset("test")
    saved = pd.read_csv(run_dir / "predictions.csv").query("split == 'test'")
    probs = strategy.class_probs(predict_logits(model, test.images, CPU)).numpy()
    assert np.allclose(probs, saved[[c for c in saved.columns if c.startswith("p_")]].to_numpy(), atol=1e-5)


def test_a_new_normalisation_default_re_keys_only_weights_files_of_pretrained_architectures(tmp_path):
    from ambig_bench.keys import experiment_key
    from ambig_bench.options import build

    weights = resnet_file(tmp_path / "r.safetensors")
    given = {"model": "resnet18", "weights": weights, "early_stopping": "off"}
    assert experiment_key(build(given)) == experiment_key(build({**given, "normalize": "imagenet"}))
    assert experiment_key(build(given)) != experiment_key(build({**given, "normalize": "data"}))
    assert experiment_key(build({**given, "weights": None})) == experiment_key(build({"model": "resnet18"}))


def test_a_validation_loss_that_wanders_within_its_noise_is_not_still_falling():
    """A discard run of the demo: training loss flat, validation loss (its in-between images, never trained on)
    wandering by ±3%; its last 6 epochs happen to slope down, but not beyond their noise."""
    val = [1.779, 1.2, 0.9, 0.7, 0.6785, 0.6611, 0.6564, 0.6661, 0.6661, 0.6637, 0.6778, 0.6927, 0.6944, 0.6757,
           0.6564, 0.6615]
    history = [{"epoch": e + 1, "train_loss": 0.0013, "val_loss": v} for e, v in enumerate(val)]
    assert convergence.trend(val) < -convergence.FALLING  # the slope alone would call it falling
    converged, why = convergence.judge(history)
    assert converged, why
    steady = [{"epoch": e + 1, "train_loss": 0.0013, "val_loss": v}
              for e, v in enumerate(val[:-6] + [0.70, 0.69, 0.68, 0.67, 0.66, 0.65])]
    assert not convergence.judge(steady)[0]  # the same fall without the noise: still falling
