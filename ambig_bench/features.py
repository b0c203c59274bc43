"""Linear probes (`--freeze`): the frozen backbone's features of every image, computed once and cached on disk,
so that every strategy x seed trains only a head over them.

The head is the network's own last linear layer (the same module object), so training it over the features
trains the full network's head: the run saves, evaluates and predicts the full network like any other. Features
are taken of the images as the run sees them, in-between blends included (blended in pixel space first), in eval
mode and without test-time views (frozen runs are trained and evaluated on the plain image). The cache (`cache`)
keeps one file per extractor (its weights, normalisation included, and the image shape) holding a row per image,
found by a hash of the image's pixels: a run computes only the images no earlier run had, whatever their order,
so the seeds and strategies of a grid share one pass over the dataset's images and each seed adds its own
blends. On the CPU an image's features do not depend on the other images of its batch, so they are the same
whichever run computed them; on the GPU they may differ in the last bits, as cuDNN's choice of algorithm does.

$ ambig-bench run --model resnet18 --pretrained --freeze --dataset folder --labels photos/labels.csv --strategy all \\
      --seeds 10        # features once, then 80 heads
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from ambig_bench import budget, cache
from ambig_bench.data import LabelledImages
from ambig_bench.models import head_name
from ambig_bench.train import predict_logits


@dataclass
class Probe:
    """A frozen run's trainable part: the head (over flattened features) and the data as features (N×D×1×1)."""

    head: nn.Module
    data: LabelledImages
    seconds: float  # spent computing features for this run (0 when they came from the cache)


def extractor_of(model: nn.Sequential) -> tuple[nn.Module, nn.Module]:
    """(a copy of the network with its head replaced by Identity, the network's own head)."""
    name = head_name(model[1])
    extractor = copy.deepcopy(model)
    extractor[1].set_submodule(name, nn.Identity())
    return extractor.eval(), model[1].get_submodule(name)


@dataclass
class Bank:
    """Features of images, one row per image, sorted by the hash of its pixels."""

    digests: np.ndarray  # M of dtype V20 (sha1), sorted
    features: torch.Tensor  # float32 M×D, row i of the image with digests[i]

    def rows(self, digests: np.ndarray) -> np.ndarray:
        """The row of each digest, -1 where the bank has none."""
        at = np.minimum(np.searchsorted(self.digests, digests), len(self.digests) - 1)
        return np.where(self.digests[at] == digests, at, -1)

    def add(self, digests: np.ndarray, features: torch.Tensor) -> Bank:
        merged = np.concatenate([self.digests, digests])
        order = np.argsort(merged, kind="stable")
        return Bank(merged[order], torch.cat([self.features, features])[torch.from_numpy(order)])


def digests_of(images: torch.Tensor) -> np.ndarray:
    flat = images.contiguous().numpy().reshape(len(images), -1)
    return np.frombuffer(b"".join(hashlib.sha1(row).digest() for row in flat), dtype="V20")


def extractor_parts(extractor: nn.Module, image_shape: tuple[int, ...]) -> Iterator[str | bytes]:
    """What names a bank: the extractor's weights and the shape of the images it sees."""
    yield str(image_shape)
    for name, tensor in extractor.state_dict().items():
        yield name
        yield tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def read_bank(path: Path) -> Bank:
    saved = load_file(path)
    return Bank(saved["digests"].numpy().view("V20").reshape(-1), saved["features"])


def write_bank(f: BinaryIO, bank: Bank) -> None:
    digests = torch.from_numpy(bank.digests.view(np.uint8).reshape(-1, 20).copy())
    f.write(save({"digests": digests, "features": bank.features.contiguous()}))


BANK = cache.Format(read_bank, write_bank, (SafetensorError, KeyError, ValueError))
_memo: dict[Path, Bank] = {}  # the last bank, so the runs of a grid in one process skip the disk


def cached_features(images: torch.Tensor, extractor: nn.Module, device: torch.device) -> tuple[torch.Tensor, float]:
    """N×D float32 features of uint8 images and the seconds spent computing them (0 if all were cached)."""
    path = cache.file("features", extractor_parts(extractor, tuple(images.shape[1:])))
    digests = digests_of(images)
    bank = _memo.get(path) or cache.load(path, BANK)
    missing = bank.rows(digests) < 0 if bank else np.ones(len(digests), dtype=bool)
    seconds = 0.0
    if missing.any():
        new, first = np.unique(digests[missing], return_index=True)  # each new image once, in digest order
        started = time.perf_counter()
        computed = predict_logits(extractor.to(device), images[torch.from_numpy(np.flatnonzero(missing)[first])],
                                  device, batch_size=256).flatten(1)
        seconds = time.perf_counter() - started
        bank = bank.add(new, computed) if bank else Bank(new, computed)
        cache.keep(path, BANK, bank)
    _memo.clear()
    _memo[path] = bank
    return bank.features[torch.from_numpy(bank.rows(digests))], seconds


def probe(model: nn.Sequential, data: LabelledImages, device: torch.device) -> Probe:
    """The head to train and the run's data as cached features."""
    extractor, head = extractor_of(model)
    # The bank, the run's rows of it and the newly computed rows: three float32 copies of N×D at most.
    width = getattr(head, "in_features", 0)
    budget.check(3 * 4 * len(data.images) * width, f"--freeze with {len(data.images):,} images",
                 "use fewer images (--train-size) or a backbone with fewer features", f"for {width:,} features each")
    feats, seconds = cached_features(data.images, extractor, device)
    # Every field kept but the images (votes included: a new field of LabelledImages is kept too).
    return Probe(nn.Sequential(nn.Flatten(), head), dataclasses.replace(data, images=feats[:, :, None, None]),
                 seconds)
