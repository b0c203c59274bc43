"""The pipeline's evaluate step: a trained run -> threshold on validation, metrics on test, everything it writes.

>>> from ambig_bench.evaluation import evaluate_run
>>> record = evaluate_run(prepared_run, torch.device("cpu"), history, train_seconds=1.5)  # doctest: +SKIP
>>> record.metrics["clear_acc"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform

import pandas as pd
import torch

from ambig_bench import __version__
from ambig_bench.checkpoint import FORMAT, model_files
from ambig_bench.convergence import judge
from ambig_bench.data import LabelledImages
from ambig_bench.metrics import evaluate, set_objective
from ambig_bench.models import Preprocess, normalization_source, starting_weights
from ambig_bench.prepare import PreparedRun
from ambig_bench.rundir import RunRecord
from ambig_bench.strategies import Strategy
from ambig_bench.train import predict_logits, tta_level

THRESHOLDS = [round(0.02 * i, 2) for i in range(1, 50)]  # candidate set-decoding thresholds, 0.02..0.98


def environment(device: torch.device) -> dict:
    env = {
        "ambig_bench": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(), "device": str(device), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import torchvision  # optional for the tool, recorded when present

        env["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def choose_threshold(strategy: Strategy, logits: torch.Tensor, val: LabelledImages) -> float | None:
    """The decoding threshold that maximises the set objective on the validation split."""
    if not strategy.uses_threshold:
        return None
    scores = [set_objective(strategy.predict_sets(logits, t), val.label_a, val.label_b) for t in THRESHOLDS]
    return THRESHOLDS[max(range(len(scores)), key=scores.__getitem__)]


def predictions_frame(strategy: Strategy, logits: torch.Tensor, data: LabelledImages, threshold: float | None,
                      split: str) -> pd.DataFrame:
    probs = strategy.class_probs(logits)
    sets = strategy.predict_sets(logits, threshold or 0.5)
    frame = pd.DataFrame({
        "split": split,
        "kind": ["between" if b else "clear" for b in data.is_between.tolist()],
        "label_a": data.label_a.numpy(), "label_b": data.label_b.numpy(), "share_a": data.share_a.numpy(),
        "ambiguity": strategy.ambiguity(logits).numpy(),
        "pred_set": ["|".join(str(k) for k in row.nonzero().squeeze(1).tolist()) for row in sets],
    })
    columns = [pd.DataFrame(probs.numpy(), columns=[f"p_{k}" for k in range(probs.shape[1])])]
    if data.votes is not None:  # images with votes: their shares, which conformal sets can be calibrated on
        columns.append(pd.DataFrame(data.votes.numpy(), columns=[f"v_{k}" for k in range(data.votes.shape[1])]))
    return pd.concat([frame, *columns], axis=1)


def normalization_record(preprocess: Preprocess, source: str) -> dict:
    """How the run's inputs were normalised, for model.json and data.json: where it came from and the per-channel
    mean and std, in 0..1 units (the network applies them from its own weights: `Preprocess`)."""
    return {"source": source, "mean": [round(v / 255, 6) for v in preprocess.mean.flatten().tolist()],
            "std": [round(v / 255, 6) for v in preprocess.std.flatten().tolist()]}


def evaluate_run(run: PreparedRun, device: torch.device, history: list[dict], train_seconds: float,
                 batched_runs: int = 1) -> RunRecord:
    """Threshold on validation, metrics on test; everything a finished run writes."""
    cfg, data, strategy = run.config, run.data, run.strategy
    val, test = data.subset("val"), data.subset("test")
    # Models trained with augmentation are evaluated on mirrored and shifted views too (cheap, fair to every strategy).
    tta = tta_level(run.recipe, data.images)
    val_logits = predict_logits(run.trainable, run.inputs.subset("val").images, device, tta)
    test_logits = predict_logits(run.trainable, run.inputs.subset("test").images, device, tta)
    threshold = choose_threshold(strategy, val_logits, val)
    sets = strategy.predict_sets(test_logits, threshold or 0.5)
    metrics = evaluate(strategy.class_probs(test_logits), sets, strategy.ambiguity(test_logits),
                       test.label_a, test.label_b, test.share_a, test.votes)
    converged, why = judge(history)
    metrics.update(threshold=threshold, train_seconds=round(train_seconds, 3), epochs=cfg.train.epochs,
                   batched_runs=batched_runs, feature_seconds=round(run.feature_seconds, 3), converged=converged,
                   convergence=why, best_epoch=next((row["epoch"] for row in history if row.get("kept")), None))
    if cfg.model.freeze:  # a probe fitted to its optimum (probe.fit_head): no epochs; the L2 it chose, its iterations
        del metrics["epochs"]
        metrics.update(probe_l2=history[-1]["probe_l2"], probe_iterations=history[-1]["probe_iterations"])
    start = starting_weights(cfg.model)
    normalization = normalization_record(run.model[0], normalization_source(cfg.model, start))
    weights, meta = model_files(run.model, cfg, data, strategy, threshold, tta,
                                start.origin if start else {"weights": "random initialisation"}, normalization)
    return RunRecord(
        metrics=metrics,
        data={"class_names": data.class_names, "pairs": data.pairs, **data.info,
              "image_shape": list(data.images.shape[1:]), "normalization": normalization},
        env=environment(device), history=history,
        predictions=pd.concat([predictions_frame(strategy, val_logits, val, threshold, "val"),
                               predictions_frame(strategy, test_logits, test, threshold, "test")],
                              ignore_index=True),
        weights=weights, model_meta=meta, weights_format=FORMAT,
    )
