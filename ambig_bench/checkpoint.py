"""Trained models on disk: safetensors weights plus a JSON recipe to rebuild network, inputs and decoding.

Nothing on disk is ever unpickled, so a checkpoint cannot run code when loaded.

>>> from ambig_bench.checkpoint import load_checkpoint
>>> model, meta, strategy = load_checkpoint("results/demo/runs/soft-seed0-1a2b3c4d")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from ambig_bench.config import RunConfig
from ambig_bench.data import LabelledImages
from ambig_bench.errors import UserError
from ambig_bench.io import write_atomic, write_json
from ambig_bench.models import build_model
from ambig_bench.strategies import STRATEGIES, Strategy
from ambig_bench.train import Preprocess

FORMAT = "ambig-bench-model/1"


def save_checkpoint(run_dir: Path, model: nn.Module, cfg: RunConfig, data: LabelledImages, strategy: Strategy,
                    threshold: float | None) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(run_dir / "model.safetensors", save(state, metadata={"format": FORMAT}))
    _, channels, size, _ = data.images.shape
    write_json(run_dir / "model.json", {
        "format": FORMAT, "model": cfg.model, "width": cfg.width, "in_channels": channels, "image_size": size,
        "strategy": strategy.name, "num_outputs": strategy.num_outputs, "class_names": data.class_names,
        "pairs": [list(p) for p in data.pairs], "threshold": threshold, "config": dataclasses.asdict(cfg),
    })


def load_checkpoint(run_dir: str | Path) -> tuple[nn.Module, dict, Strategy]:
    """Rebuild the trained model (Preprocess + network, eval mode, CPU), its recipe and its strategy."""
    run_dir = Path(run_dir)
    meta_path, weights_path = run_dir / "model.json", run_dir / "model.safetensors"
    if not meta_path.exists() or not weights_path.exists():
        raise UserError(f"{run_dir}: not a finished ambig-bench run (model.json / model.safetensors missing)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path}: unreadable model recipe: {e}") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{meta_path}: not an ambig-bench model (format {meta.get('format')!r})")
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{weights_path}: not a valid safetensors file ({e})") from None
    strategy = STRATEGIES.get(meta["strategy"])(len(meta["class_names"]), [tuple(p) for p in meta["pairs"]])
    channels = meta["in_channels"]
    net = build_model(meta["model"], channels, meta["image_size"], meta["num_outputs"], meta["width"])
    model = nn.Sequential(Preprocess(torch.zeros(channels), torch.ones(channels)), net)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{weights_path}: weights do not match the {meta['model']} architecture ({first})") \
            from None
    return model.eval(), meta, strategy
