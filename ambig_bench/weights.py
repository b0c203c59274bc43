"""Starting weights for a network: torchvision's ImageNet weights (`--pretrained`), a local file or another run
(`--weights FILE|RUN_DIR`), read without ever unpickling arbitrary objects, and where they came from.

A file is safetensors, or a plain state dict that `torch.load(weights_only=True)` reads (its restricted unpickler
builds tensors and containers only; anything else is refused). A run directory gives its `model.safetensors`,
including the normalisation it was trained with, so a network pretrained by ambig-bench on CIFAR-10 keeps its
input statistics when fine-tuned on your photos.

$ ambig-bench run --model resnet18 --pretrained --dataset folder --labels photos/labels.csv --freeze
$ ambig-bench run --model small-cnn --weights results/cifar/runs/hard-seed0-1a2b3c4d --dataset folder ...

>>> start = read_start("resnet18-f37072fd.pth")  # doctest: +SKIP
>>> start.origin["sha256"][:12]  # doctest: +SKIP
'f37072fd4e2b'
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import urllib.error
import urllib.parse
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ambig_bench.errors import UserError
from ambig_bench.io import open_regular, read_json

MAX_WEIGHTS_BYTES = 16 << 30  # a weights file (the largest torchvision and timm weights are about 2 GB)
PREPROCESS = "0."  # key prefixes of a run's model.safetensors: Preprocess (mean, std), then the network
NETWORK = "1."


@dataclass
class Start:
    """Weights to start from: the network's tensors by name, the input normalisation that goes with them (pixel
    units, or None to fit it on the training images), and their origin."""

    state: dict[str, torch.Tensor]
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    origin: dict = field(default_factory=dict)  # what and where they came from, SHA-256: model.json's "start"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path, None, "weights file") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a state dict (optionally under a "state_dict" or "model" key) that torch.load reads
    with weights_only=True; anything else is a one-line UserError naming the file."""
    if path.is_dir():
        raise UserError(f"{path}: a directory, but not an ambig-bench run (no model.safetensors)")
    try:
        with open_regular(path, MAX_WEIGHTS_BYTES, "weights file") as f:
            head = f.read(8)
    except OSError as e:
        raise UserError(f"{path}: cannot read the weights file ({e.strerror or e})") from None
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{path}: neither a safetensors file nor a torch state dict ({e})") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, SafetensorError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: refused: not a plain state dict of tensors (torch.load with weights_only=True "
                        f"says: {first})") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers around the state dict
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(f"{path}: holds a {type(loaded).__name__}, not a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in loaded.items()}  # DataParallel's prefix


def from_run(run_dir: Path) -> Start:
    """Another run's network (keys without the Preprocess prefix) and its normalisation."""
    meta_path = run_dir / "model.json"
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str):
        raise UserError(f"{meta_path}: not an ambig-bench model recipe")
    weights = run_dir / "model.safetensors"
    state = read_tensors(weights)
    net = {k.removeprefix(NETWORK): v for k, v in state.items() if k.startswith(NETWORK)}
    mean, std = state.get(PREPROCESS + "mean"), state.get(PREPROCESS + "std")
    check_normalization(weights, mean, std)
    origin = {"weights": "run", "path": str(run_dir.resolve()), "run_model": meta["model"],
              "sha256": sha256(weights)}
    return Start(net, mean, std, origin)


def check_normalization(weights: Path, mean: torch.Tensor | None, std: torch.Tensor | None) -> None:
    """A run's input normalisation: both or neither, 1 (grey) or 3 (RGB) channels each, finite, stds > 0 (checked
    here, before a run of this command starts, so a damaged file writes nothing)."""
    if mean is None and std is None:
        return
    shapes = [tuple(t.shape) if t is not None else None for t in (mean, std)]
    if mean is None or std is None or mean.numel() not in (1, 3) or std.numel() != mean.numel():
        raise UserError(f"{weights}: its input normalisation ({PREPROCESS}mean, {PREPROCESS}std) must have 1 or 3 "
                        f"channels each, got shapes {shapes[0]} and {shapes[1]}")
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise UserError(f"{weights}: its input normalisation holds values that are not finite, or a std <= 0")


def is_run(path: str) -> bool:
    """Whether `--weights PATH` names another run's directory (rather than a weights file)."""
    return (Path(path).expanduser() / "model.safetensors").is_file()


@cache
def _read_start(path: str, mtime_ns: int) -> Start:
    p = Path(path)
    if is_run(path):
        return from_run(p)
    return Start(read_tensors(p), origin={"weights": "file", "path": str(p.resolve()), "sha256": sha256(p)})


def read_start(path: str) -> Start:
    """`--weights FILE|RUN_DIR`, read once per process (and again only when the file changes)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"--weights {path}: no such file or run directory")
    target = p / "model.safetensors" if is_run(path) else p
    return _read_start(str(p), target.stat().st_mtime_ns)


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and tensor bytes (for weights that live in another program's cache)."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def reachable(url: str, timeout: float = 2.0) -> bool:
    """Whether `url`'s host accepts a connection: asked before a download, so that a machine without network gets
    one line at once, not a library's "Downloading ..." line followed by a failure."""
    parts = urllib.parse.urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def timm_start(architecture: str) -> Start:
    """timm's default pretrained weights, from the Hugging Face hub cache when they are there (no network asked),
    else through timm's own download, tried only where the Hub answers, so nothing starts a download that cannot
    happen."""
    import timm  # optional extra; the model name already required it
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE

    def create(cache_only: bool) -> torch.nn.Module:
        constants.HF_HUB_OFFLINE = offline or cache_only
        try:
            return timm.create_model(architecture, pretrained=True)
        finally:
            constants.HF_HUB_OFFLINE = offline

    try:
        try:
            net = create(cache_only=True)
        except Exception:  # noqa: BLE001 - not cached: hub and timm say so with many kinds of error
            if offline or not reachable("https://huggingface.co"):
                raise
            net = create(cache_only=False)
    except Exception as e:  # noqa: BLE001 - hub and timm raise many kinds offline; each becomes this one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"--pretrained: timm:{architecture}'s weights are not cached and cannot be downloaded "
                        f"({first}); run once with network access, or put the model's files in the Hugging Face "
                        f"cache ($HF_HOME/hub, default ~/.cache/huggingface/hub)") from None
    cfg, state = net.pretrained_cfg, net.state_dict()
    return Start(state, torch.tensor(cfg["mean"]) * 255, torch.tensor(cfg["std"]) * 255,
                 {"weights": f"timm:{architecture} ({cfg.get('hf_hub_id') or cfg.get('url') or 'default'})",
                  "sha256_of_tensors": tensors_sha256(state)})


@cache
def pretrained_start(architecture: str) -> Start:
    """torchvision's default ImageNet weights for `architecture`, through torchvision's own download and cache
    ($TORCH_HOME/hub/checkpoints), or timm's for `timm:<architecture>`. Offline without a cached copy: a
    UserError naming the file and where it goes."""
    if architecture.startswith("timm:"):
        return timm_start(architecture.removeprefix("timm:"))
    from torchvision.models import get_model_weights  # torchvision loads slowly; only runs with --pretrained pay

    weights = get_model_weights(architecture).DEFAULT
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = folder / os.path.basename(weights.url)
    if not file.exists() and not reachable(weights.url):
        raise UserError(f"--pretrained: {architecture}'s ImageNet weights are not cached and this machine cannot "
                        f"reach {urllib.parse.urlsplit(weights.url).hostname}; put {weights.url} at {file} "
                        f"(docs/own-photos.md, 'Without network')")
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        if file.exists():
            raise UserError(f"--pretrained: {file}: unreadable ({e}); delete it to download it again") from None
        raise UserError(f"--pretrained: {architecture}'s ImageNet weights are not cached and cannot be downloaded "
                        f"({getattr(e, 'reason', e)}); put {weights.url} at {file}") from None
    transform = weights.transforms()
    return Start(state, torch.tensor(transform.mean) * 255, torch.tensor(transform.std) * 255,
                 {"weights": f"torchvision:{weights}", "path": str(file), "sha256": sha256(file)})
