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

from dataclasses import dataclass

import torch

from ambig_bench.config import MAX_FOLDS, check_at_least, check_between, check_fraction, option
from ambig_bench.data import SPLITS, LabelledImages, RawImages
from ambig_bench.datasets.base import (
    BETWEEN_SOURCES,
    SourceContext,
    between_per_pair,
    clear_cut,
    pair_names,
    split_without_between,
    stratified_split,
)
from ambig_bench.errors import UserError


@dataclass
class NaturalOptions:
    natural_threshold: float = option(0.3, "natural: both pair probabilities at least this (out-of-fold)")
    natural_folds: int = option(3, "natural: cross-validation folds of the reference model (>= 2)")
    natural_epochs: int = option(4, "natural: training epochs of each fold's reference model")

    def validate(self) -> None:
        check_fraction("natural_threshold", self.natural_threshold)
        check_between("natural_folds", self.natural_folds, 2, MAX_FOLDS)
        check_at_least("natural_epochs", self.natural_epochs, 1)


@BETWEEN_SOURCES.register("natural", options=NaturalOptions)
def natural(raw: RawImages, pairs: list[tuple[int, int]], ctx: SourceContext) -> LabelledImages:
    """Real images of A or B whose cross-validated p(A) and p(B) both reach --natural-threshold (0.3)."""
    opts: NaturalOptions = ctx.options
    data = clear_cut(raw, pairs, ctx.cfg)
    probs = reference_probs(data, ctx)
    t = opts.natural_threshold
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
        "threshold": t, "folds": opts.natural_folds, "epochs": opts.natural_epochs, "model": ctx.cfg.model.name,
        "between_per_pair": between_per_pair(data),
    }
    return data


natural.needs_reference = True  # trains networks: a sweep's check of every point leaves it out


def reference_probs(data: LabelledImages, ctx: SourceContext) -> torch.Tensor:
    """N×K probabilities: out-of-fold for training images, the fold models' mean for val and test."""
    if ctx.reference is None:
        raise UserError("--between-source natural needs a reference network trainer (use prepare.prepare_data)")
    opts: NaturalOptions = ctx.options
    folds = opts.natural_folds
    train_idx = (data.split == SPLITS["train"]).nonzero().squeeze(1)
    counts = torch.bincount(data.label_a[train_idx], minlength=data.num_classes)
    if int(counts.min()) < folds:  # a fold would hold out no image of that class, or train on none
        c = int(counts.argmin())
        fix = f"at most --natural-folds {int(counts[c])}" if counts[c] >= 2 else "add images of it"
        raise UserError(f"--natural-folds {folds}: only {int(counts[c])} clear-cut training images of class "
                        f"{data.class_names[c]}; {fix}")
    held_out = ((data.split == SPLITS["val"]) | (data.split == SPLITS["test"])).nonzero().squeeze(1)
    fold = stratified_split(data.label_a[train_idx], [1 / folds] * (folds - 1), ctx.gen)
    probs = torch.zeros(len(data), data.num_classes)
    for f in range(folds):
        own, held = ctx.reference(data.take(train_idx[fold != f]), ctx.cfg.seed + f, opts.natural_epochs,
                                  [data.images[train_idx[fold == f]], data.images[held_out]])
        probs[train_idx[fold == f]] = own
        probs[held_out] += held / folds
    return probs

