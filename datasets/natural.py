"""`natural` in-between source: real images that a reference model finds confusable; no blending artefact.

A reference network (the run's --model and --width, --natural-epochs epochs, plain cross-entropy) is
trained with --natural-folds-fold cross-validation on the clear-cut training images. A training image
labelled A or B becomes an in-between (A, B) example when its out-of-fold probabilities give both A and
B at least --natural-threshold. Validation and test images are judged by the mean of the fold models,
none of which saw them. The soft target is 0.5/0.5: the reference's own split would hand its biases to
the strategies that learn soft targets.
$ ambig-bench run --dataset fashion-mnist --between-source natural --natural-threshold 0.3 --train-size 5000
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ambig_bench.config import RunConfig
from ambig_bench.data import SPLITS, LabelledImages, RawImages
from ambig_bench.datasets.base import (
    between_per_pair,
    clear_cut,
    pair_names,
    register_source,
    split_without_between,
    stratified_split,
)
from ambig_bench.errors import UserError
from ambig_bench.models import build_network
from ambig_bench.strategies import STRATEGIES
from ambig_bench.train import pick_device, predict_logits, train


@register_source("natural")
def natural(raw: RawImages, pairs: list[tuple[int, int]], cfg: RunConfig, gen: torch.Generator) -> LabelledImages:
    """Real images of A or B whose cross-validated p(A) and p(B) both reach --natural-threshold (0.3)."""
    data = clear_cut(raw, pairs, cfg)
    probs = reference_probs(data, cfg, gen)
    t = cfg.natural_threshold
    free = data.split != SPLITS["unsure"]
    for a, b in pairs:
        # An image can qualify for two pairs sharing a class only when t <= 1/3; the first pair keeps it.
        mine = free & ((data.label_a == a) | (data.label_a == b)) & (probs[:, a] >= t) & (probs[:, b] >= t)
        data.label_a[mine], data.label_b[mine], data.share_a[mine] = a, b, 0.5
        free &= ~mine
    if split := split_without_between(data):
        raise UserError(f"--between-source natural: no {split} image has p >= {t} for both classes of "
                        f"{','.join(pair_names(data))}; lower --natural-threshold or choose other --pairs")
    data.info["natural"] = {
        "threshold": t, "folds": cfg.natural_folds, "epochs": cfg.natural_epochs, "model": cfg.model,
        "between_per_pair": between_per_pair(data),
    }
    return data


def reference_probs(data: LabelledImages, cfg: RunConfig, gen: torch.Generator) -> torch.Tensor:
    """N×K probabilities: out-of-fold for training images, the fold models' mean for val and test."""
    device = pick_device(cfg.device)
    train_idx = (data.split == SPLITS["train"]).nonzero().squeeze(1)
    held_out = ((data.split == SPLITS["val"]) | (data.split == SPLITS["test"])).nonzero().squeeze(1)
    fold = stratified_split(data.label_a[train_idx], [1 / cfg.natural_folds] * (cfg.natural_folds - 1), gen)
    probs = torch.zeros(len(data), data.num_classes)
    for f in range(cfg.natural_folds):
        model = fit_reference(take(data, train_idx[fold != f]), dataclasses.replace(
            cfg, seed=cfg.seed + f, epochs=cfg.natural_epochs), device)
        probs[train_idx[fold == f]] = predict_logits(model, data.images[train_idx[fold == f]], device).softmax(1)
        probs[held_out] += predict_logits(model, data.images[held_out], device).softmax(1) / cfg.natural_folds
    return probs


def fit_reference(data: LabelledImages, cfg: RunConfig, device: torch.device) -> nn.Module:
    torch.manual_seed(cfg.seed)
    model = build_network(cfg.model, data.images, data.num_classes, cfg.width).to(device)
    train(model, STRATEGIES.get("hard")(data.num_classes, data.pairs), data, cfg, device)
    return model


def take(data: LabelledImages, idx: torch.Tensor) -> LabelledImages:
    return LabelledImages(data.images[idx], data.label_a[idx], data.label_b[idx], data.share_a[idx],
                          data.split[idx], data.class_names, data.pairs, data.info)
