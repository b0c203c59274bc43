"""Trained models on disk: safetensors weights plus model.json, which says how to rebuild network, inputs and decoding.

Nothing on disk is ever unpickled, so a checkpoint cannot run code when loaded.

>>> from ambig_bench.checkpoint import load_checkpoint
>>> model, meta, strategy = load_checkpoint("results/demo/runs/soft-seed0-1a2b3c4d")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ambig_bench.config import MAX_SIDE, MAX_WIDTH, RunConfig
from ambig_bench.data import LabelledImages
from ambig_bench.errors import UserError
from ambig_bench.io import open_regular, read_json
from ambig_bench.models import MODELS, Preprocess, build_model
from ambig_bench.rundir import RunDir, list_runs, runs_folder
from ambig_bench.schema import check_model, what
from ambig_bench.strategies import STRATEGIES, Strategy
from ambig_bench.weights import MAX_WEIGHTS_BYTES

FORMAT = "ambig-bench-model/2"  # 2: "tta" holds the test-time view level


def model_files(model: nn.Module, cfg: RunConfig, data: LabelledImages, strategy: Strategy,
                threshold: float | None, tta: int, start: dict | None = None, normalization: dict | None = None
                ) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights (CPU tensors, for model.safetensors, metadata format FORMAT) and model.json of a trained run;
    the run store writes them. `start`: where the starting weights came from (name or file, SHA-256);
    `normalization`: the input normalisation, recorded (the weights' Preprocess tensors are what predict applies)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _, channels, size, image_width = data.images.shape
    return state, {
        "format": FORMAT, "model": cfg.model.name, "width": cfg.model.width or 0, "in_channels": channels,
        "image_size": size, "image_width": image_width, "tta": tta,
        "strategy": strategy.name, "num_outputs": strategy.num_outputs, "class_names": data.class_names,
        "pairs": [list(p) for p in data.pairs], "threshold": threshold, "config": cfg.to_dict(),
        "start": start or {}, "normalization": normalization or {},
        "mode": "linear probe (frozen backbone)" if cfg.model.freeze else "full training",
        "image_policy": data.info.get("image_policy", {}),
    }


PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")


def is_pickle(head: bytes) -> bool:
    """Pickle protocol 2+ (b'\\x80' + protocol) or torch.save's zip archive: formats that can run code."""
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head.startswith(b"PK\x03\x04")


def read_model_json(meta_path: Path) -> dict:
    """model.json, checked: its format, then every field of the recipe (`schema.check_model`)."""
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path}: not an ambig-bench model (a JSON {type(meta).__name__}, not an object)")
    if meta.get("format") != FORMAT:
        if str(meta.get("format")).startswith(FORMAT.split("/")[0] + "/"):
            raise UserError(f"{meta_path}: written by another version of ambig-bench (format {what(meta['format'])}, "
                            f"this version reads {FORMAT!r}); retrain the run with --force")
        raise UserError(f"{meta_path}: not an ambig-bench model (format {what(meta.get('format'))}, expected "
                        f"{FORMAT!r})")
    return check_model(meta, meta_path, MAX_SIDE, MAX_WIDTH)


def read_weights(weights_path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file written for a run (model_files); pickles are refused before parsing."""
    try:
        with open_regular(weights_path, MAX_WEIGHTS_BYTES, "safetensors file") as f:
            head = f.read(8)
    except OSError as e:
        raise UserError(f"{weights_path}: cannot read ({e.strerror or e})") from None
    if is_pickle(head):
        raise UserError(f"{weights_path}: is a pickle (torch.save), not safetensors; refused because loading a "
                        "pickle can run arbitrary code")
    try:
        with safe_open(weights_path, framework="pt") as f:
            fmt = (f.metadata() or {}).get("format")
            state = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{weights_path}: not a valid safetensors file ({e})") from None
    if fmt != FORMAT:
        raise UserError(f"{weights_path}: safetensors from another program (metadata format {what(fmt)}, "
                        f"expected {FORMAT!r})")
    broken = next((name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if broken:
        raise UserError(f"{weights_path}: tensor {what(broken)} holds NaN or infinite values; the weights are "
                        "damaged (retrain the run with --force)")
    if "0.std" in state and not (state["0.std"] > 0).all():
        raise UserError(f"{weights_path}: the input normalisation's std (tensor '0.std') must be > 0, got "
                        f"{state['0.std'].flatten().tolist()[:3]}")
    return state


def mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """What differs between the network's tensors and the file's, in one line ("" if they match)."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    wrong = [f"{k} ({tuple(found[k].shape)} {found[k].dtype}, expected {tuple(v.shape)} {v.dtype})"
             for k, v in expected.items() if k in found and (found[k].shape != v.shape or found[k].dtype != v.dtype)]
    parts = [f"{len(names)} {what}, e.g. {names[0]}" for names, what in
             ((missing, "missing"), (extra, "unexpected"), (wrong, "of another shape or type")) if names]
    return "; ".join(parts)


def load_checkpoint(run_dir: str | Path) -> tuple[nn.Module, dict, Strategy]:
    """Rebuild the trained model (Preprocess + network, eval mode, CPU), its model.json and its strategy.

    Anything that is not exactly what a run wrote (model_files) is refused with a UserError naming the file.
    """
    run = RunDir(run_dir)
    run_dir, meta_path, weights_path = run.path, run.model_file, run.weights_file
    run.check_link()
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if runs_folder(run_dir).is_dir():
        done = [r.path for r in list_runs(run_dir) if r.done]
        example = done[0] if done else runs_folder(run_dir) / "<name>"
        raise UserError(f"{run_dir}: a results directory; predict takes one of its runs, e.g. {example}")
    if not weights_path.exists():
        pickles = sorted(p.name for p in run_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise UserError(f"{run_dir / pickles[0]}: pickled checkpoints are refused (loading one can run "
                            "arbitrary code); ambig-bench reads only model.safetensors + model.json")
    if not meta_path.exists() or not weights_path.exists():
        raise UserError(f"{run_dir}: not a finished ambig-bench run (model.json / model.safetensors missing)")
    meta = read_model_json(meta_path)
    state = read_weights(weights_path)
    # An RGB network's normalisation has 3 channels even for grey images (broadcast: grey enters as RGB).
    channels = state["0.mean"].numel() if "0.mean" in state else meta["in_channels"]

    def network() -> nn.Sequential:
        return nn.Sequential(Preprocess(torch.zeros(channels), torch.ones(channels)),
                             build_model(meta["model"], meta["in_channels"], meta["image_size"], meta["num_outputs"],
                                         width))

    try:
        strategy = STRATEGIES.get(meta["strategy"])(len(meta["class_names"]), [tuple(p) for p in meta["pairs"]])
        # Width 0 in files of earlier versions meant the model's default width.
        width = meta["width"] or (MODELS.get(meta["model"]).recipe.width or 0)
        # Built without memory first: a "width" of millions is refused by the shapes, never allocated.
        with torch.device("meta"):
            problem = mismatch(network().state_dict(), state)
    except UserError as e:  # a strategy or model this version does not have
        raise UserError(f"{meta_path}: {e}") from None
    if strategy.num_outputs != meta["num_outputs"]:
        raise UserError(f"{meta_path}: {meta['strategy']} with {len(meta['class_names'])} classes and "
                        f"{len(meta['pairs'])} pairs has {strategy.num_outputs} outputs, model.json says "
                        f"{meta['num_outputs']}")
    if problem:
        raise UserError(f"{weights_path}: weights do not fit the {meta['model']} network of model.json ({problem})")
    # The shapes match the file's tensors, so building it for real takes no more memory than the file holds.
    model = network()
    model.load_state_dict(state, strict=True)
    return model.eval(), meta, strategy
