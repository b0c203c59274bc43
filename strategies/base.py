"""The strategy base class: what every way of learning from in-between images must say.

A strategy says only what differs: how many outputs the network has, which images it trains on each
epoch with which target rows, its loss, and how outputs decode into class probabilities over the K real
classes and a predicted label set. The runner does everything else identically for every strategy.

>>> from ambig_bench.strategies import STRATEGIES
>>> soft = STRATEGIES.get("soft")(num_classes=10, pairs=[(4, 9), (3, 8)])
>>> soft.num_outputs
10
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ambig_bench.registry import Registry

# `@STRATEGIES.register(name, options=...)`: a strategy's own options tell apart runs of that strategy
# (`options.strategy_label`) and stay out of the experiment key, so that every strategy's runs compare.
STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


@dataclass
class Labels:
    """Per-image label sets of one split, kept on the training device."""

    a: torch.Tensor  # int64 N: the class, or the first class of the pair
    b: torch.Tensor  # int64 N: the second class of the pair, -1 when clear-cut
    share_a: torch.Tensor  # float32 N: soft share of class a (1 when clear-cut)
    pair: torch.Tensor  # int64 N: index of the pair in Strategy.pairs, -1 when clear-cut
    votes: torch.Tensor | None = None  # float32 N×K human vote shares, where the data have votes

    @property
    def between(self) -> torch.Tensor:
        return self.b >= 0

    def __len__(self) -> int:
        return len(self.a)


class Strategy:
    """Base: softmax over the K classes, soft cross-entropy, sets decoded by a probability threshold."""

    name: str  # filled in by @STRATEGIES.register
    # What a strategy is, declared so that batching and the tests read it instead of running it to find out:
    uses_threshold = True  # the predicted set is {k : score_k >= threshold}, threshold chosen on val
    redraws_targets = False  # epoch_targets draws new targets every epoch (needs the generator)
    mixes_images = False  # mix_batch changes a batch's images and targets (needs the generator)
    spreads_targets = False  # targets put some mass on every output, not only on the image's label set

    def __init__(self, num_classes: int, pairs: list[tuple[int, int]], options: Any = None) -> None:
        self.num_classes = num_classes
        self.pairs = pairs
        # The strategy's own options (the dataclass it registered with), its defaults when not given.
        own = STRATEGIES.options(getattr(self, "name", ""))
        self.options = options if options is not None or own is None else own()

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    # -- training -------------------------------------------------------------------------------
    def images_per_epoch(self, between: torch.Tensor) -> int:
        """How many (image, target) rows epoch_targets gives for a training split with these in-between flags:
        runs that see as many can share a batched network's steps."""
        return len(between)

    def epoch_targets(self, labels: Labels, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the images trained on this epoch and one target row (num_outputs wide) per index."""
        return torch.arange(len(labels), device=labels.a.device), self.one_hot(labels.a)

    def mean_targets(self, labels: Labels) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean of `epoch_targets` over its draws, for a strategy that redraws its targets: the images and one
        target row each. Every loss here is linear in the targets (cross-entropy, binary cross-entropy), so the
        loss of the mean targets is the expected loss over draws: what a full-batch fit minimises (`probe.py`)."""
        raise NotImplementedError(f"{self.name} redraws its targets: it must say their mean (mean_targets)")

    def mix_batch(self, images: torch.Tensor, targets: torch.Tensor, gen: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch (images after augmentation, their target rows) as the network sees it: unchanged here.
        A strategy that mixes images returns float images on the same 0..255 scale (`models.Preprocess` takes
        both) and declares `mixes_images`."""
        return images, targets

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against target distributions (one-hot or soft), averaged over the batch."""
        # One fused kernel for -sum(t * log_softmax(z)): probability targets are supported natively.
        return F.cross_entropy(logits.float(), targets)

    def one_hot(self, index: torch.Tensor) -> torch.Tensor:
        return F.one_hot(index, self.num_outputs).float()

    def shared_targets(self, labels: Labels) -> torch.Tensor:
        """N×outputs: each image's label set weighted by its shares, share_a on A and 1 - share_a on B (one-hot on
        the class of a clear-cut image, whose share_a is 1)."""
        targets = self.one_hot(labels.a) * labels.share_a[:, None]
        b = labels.between
        targets[b] += self.one_hot(labels.b[b]) * (1 - labels.share_a[b, None])
        return targets

    def label_sets(self, labels: Labels) -> torch.Tensor:
        """N×outputs 0/1 mask of each image's label set: {y} when clear-cut, {A, B} in between."""
        mask = self.one_hot(labels.a)
        b = labels.between
        mask[b] += self.one_hot(labels.b[b])
        return mask

    # -- decoding -------------------------------------------------------------------------------
    def class_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """N×K probabilities over the real classes (rows sum to 1)."""
        return logits.float().softmax(1)

    def set_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """N×K per-class scores that the threshold is applied to."""
        return self.class_probs(logits)

    def predict_sets(self, logits: torch.Tensor, threshold: float) -> torch.Tensor:
        """N×K bool: classes scoring at least `threshold`; the top class is always in (no empty sets)."""
        scores = self.set_scores(logits)
        # A one-hot "or" rather than an indexed write: the same sets, and a graph that torch.onnx can export
        # for any batch size (indexing by arange(len) fixes the batch size in an exported graph).
        return (scores >= threshold) | F.one_hot(scores.argmax(1), scores.shape[1]).bool()

    def ambiguity(self, logits: torch.Tensor) -> torch.Tensor:
        """How in-between the model thinks an image is: the second-largest class score."""
        return self.set_scores(logits).topk(2, dim=1).values[:, 1]
