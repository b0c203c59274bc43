"""Linear probes (`--freeze`): the frozen backbone's features of every image, computed once and cached on disk,
so that every strategy x seed trains only a head over them.

The head is the network's own last linear layer (the same module object), so training it over the features
trains the full network's head: the run saves, evaluates and predicts the full network like any other. Features
are taken of the images as the run sees them, in-between blends included (blended in pixel space first), in eval
mode and without test-time views (frozen runs are trained and evaluated on the plain image). The cache key is the
images' bytes and the extractor's weights (normalisation included), so other images or another backbone are
computed afresh, and the seeds of a dataset whose images do not change (human labels) share one file.

$ ambig-bench run --model resnet18 --pretrained --freeze --dataset folder --labels photos/labels.csv --strategy all \\
      --seeds 10        # features once, then 80 heads
"""

from __future__ import annotations

import copy
import hashlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ambig_bench.data import LabelledImages
from ambig_bench.imageio import cache_dir
from ambig_bench.models import head_name
from ambig_bench.train import predict_logits

CACHE_VERSION = "1"


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


def feature_key(images: torch.Tensor, extractor: nn.Module) -> str:
    digest = hashlib.sha1(f"{CACHE_VERSION}\0{tuple(images.shape)}\0".encode())
    digest.update(images.contiguous().numpy().tobytes())
    for name, tensor in extractor.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


_memo: dict[str, torch.Tensor] = {}  # the last features, so the runs of a grid in one process skip the disk


def cached_features(images: torch.Tensor, extractor: nn.Module, device: torch.device) -> tuple[torch.Tensor, float]:
    """N×D float32 features of uint8 images and the seconds spent computing them (0 if cached)."""
    key = feature_key(images, extractor)
    if key in _memo:
        return _memo[key], 0.0
    path = cache_dir() / f"features-{key[:24]}.safetensors"
    try:
        feats, seconds = load_file(path)["features"], 0.0
    except (OSError, SafetensorError, KeyError):
        started = time.perf_counter()
        feats = predict_logits(extractor.to(device), images, device, batch_size=256).flatten(1)
        seconds = time.perf_counter() - started
        store(path, feats)
    _memo.clear()
    _memo[key] = feats
    return feats, seconds


def store(path: Path, feats: torch.Tensor) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".features-", suffix=".safetensors")
        os.close(fd)
        save_file({"features": feats.contiguous()}, tmp)
        os.replace(tmp, path)  # whole or absent: a concurrent reader never sees half a file
    except OSError as e:  # a read-only cache must not stop a run; it only costs the speed-up
        print(f"warning: could not write the feature cache {path}: {e}", file=sys.stderr)
        if tmp:
            Path(tmp).unlink(missing_ok=True)


def probe(model: nn.Sequential, data: LabelledImages, device: torch.device) -> Probe:
    """The head to train and the run's data as cached features."""
    extractor, head = extractor_of(model)
    feats, seconds = cached_features(data.images, extractor, device)
    as_images = LabelledImages(feats[:, :, None, None], data.label_a, data.label_b, data.share_a, data.split,
                               data.class_names, data.pairs, data.info)
    return Probe(nn.Sequential(nn.Flatten(), head), as_images, seconds)
