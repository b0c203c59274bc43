"""A trained run as one ONNX graph: the network and its whole decoding, usable without ambig-bench.

The graph takes what the network trained on, uint8 images N×C×H×W at the run's size (resize each image as
`image_policy` in the metadata says: shorter side to the size, then the centre square, EXIF orientation applied),
and returns what `ambig-bench predict` returns for them:

    probs      float32 N×K  class probabilities (the strategy's own decoding, e.g. pair classes folded in)
    decision   bool    N×K  the strategy's set at the run's validation-chosen threshold ("A", or "A or B")
    conformal  bool    N×K  the split-conformal set at the exported alpha, calibrated on the run's validation rows
                            (class k is in it when its score is at most qhat_k: one qhat, or one per class)
    ambiguity  float32 N    the strategy's in-between score

Normalisation and test-time views are inside the graph. The metadata (`metadata_props`) carries the class
names, pairs, threshold, conformal method, alpha, grouping, truth and qhat, the image policy and the run it came
from, as JSON.
A calibrated model can export with silently wrong probabilities, so every export is checked before it is kept:
the graph is run with onnxruntime on 256 random images and compared with the PyTorch path (`Predictor.predict`);
a difference beyond 1e-5 in a probability, or any in a set, refuses the file.

$ ambig-bench export results/demo/runs/soft-seed0-1a2b3c4d --out soft.onnx
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ambig_bench.conformal import RAPS_K_REG, RAPS_LAMBDA
from ambig_bench.errors import RunFailed, UserError
from ambig_bench.io import write_atomic
from ambig_bench.predict import Predictor, calibration_record
from ambig_bench.train import view_logits

FORMAT = "ambig-bench-onnx/1"
OUTPUTS = ("probs", "decision", "conformal", "ambiguity")
PROB_TOLERANCE = 1e-5  # float32 kernels of two runtimes agree to about 1e-7; more means a wrong graph
CHECK_IMAGES = 256  # random images the export is checked on
OPSET = 18


def conformal_scores(probs: torch.Tensor, method: str) -> torch.Tensor:
    """conformal.py's per-label scores (lac, aps, raps without randomisation) as tensor operations, in float64
    as the calibration computed them, so a graph compares them with qhat exactly as `predict` does. The tests
    check them against conformal.py's NumPy versions."""
    p = probs.double()
    if method == "lac":
        return 1.0 - p
    # Ranks by pairwise comparison rather than a sort: j ranks at or above k when p_j > p_k, or p_j = p_k and
    # j <= k (conformal.py's stable sort), the same in PyTorch and in any ONNX runtime, whose sorts order ties
    # differently. K is at most a few hundred classes, so the K×K comparison is small.
    index = torch.arange(p.shape[1], device=p.device)
    pj, pk = p[:, None, :], p[:, :, None]
    above = (pj > pk) | ((pj == pk) & (index[None, :] <= index[:, None]))  # N × k × j
    scores = (above * pj).sum(2)
    if method == "aps":
        return scores
    rank = above.sum(2).to(p.dtype)
    return scores + RAPS_LAMBDA * (rank - RAPS_K_REG).clamp_min(0)


class Decoder(nn.Module):
    """uint8 images -> (probs, decision, conformal, ambiguity), as `Predictor.predict` computes them."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.model, self.strategy = predictor.model.eval(), predictor.strategy
        self.tta, self.threshold = predictor.meta["tta"], predictor.threshold
        self.method = predictor.calibration.method
        # qhat per class (a K-vector, equal entries for one qhat), float64 as the calibration computed it
        self.register_buffer("qhat", torch.from_numpy(predictor.calibration.thresholds))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = view_logits(self.model, images, self.tta)
        probs = self.strategy.class_probs(logits)
        conformal = conformal_scores(probs, self.method) <= self.qhat
        return probs, self.strategy.predict_sets(logits, self.threshold), conformal, self.strategy.ambiguity(logits)


@dataclass
class Exported:
    path: Path
    checked: int  # images the graph was compared on
    max_prob_difference: float


def metadata(predictor: Predictor) -> dict[str, str]:
    """What a program needs to use the graph, each value JSON."""
    meta, cal = predictor.meta, predictor.calibration
    return {key: json.dumps(value) for key, value in {
        "format": FORMAT, "inputs": {"images": f"uint8 N×{meta['in_channels']}×{meta['image_size']}×"
                                                f"{meta.get('image_width') or meta['image_size']}"},
        "outputs": list(OUTPUTS), "class_names": meta["class_names"], "pairs": meta["pairs"],
        "strategy": meta["strategy"], "threshold": predictor.threshold,
        "conformal": calibration_record(cal, meta["class_names"]),
        "image_policy": meta.get("image_policy"), "normalization": meta.get("normalization"),
        "run": predictor.run_dir.name, "model": meta["model"], "tta": meta["tta"],
    }.items()}


def onnx_libraries():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise UserError(f"export --format onnx needs {e.name}: pip install 'ambig-bench[onnx]'") from None
    return onnx, onnxruntime


def example_images(predictor: Predictor, n: int, seed: int = 0) -> torch.Tensor:
    meta = predictor.meta
    shape = (n, meta["in_channels"], meta["image_size"], meta.get("image_width") or meta["image_size"])
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def check(path: Path, predictor: Predictor, ort, out: Path) -> float:
    """Run the graph at `path` (the file to be kept as `out`) with onnxruntime on random images and compare it with
    the PyTorch path; the largest probability difference (RunFailed beyond PROB_TOLERANCE or where a set differs)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = example_images(predictor, CHECK_IMAGES, seed=1)
    got = dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"images": images.numpy()}), strict=True))
    want = predictor.predict(images)
    worst = float(np.abs(got["probs"] - want["probs"]).max())
    differs = [name for name in ("decision", "conformal") if not np.array_equal(got[name], want[name])]
    if worst > PROB_TOLERANCE or differs or np.abs(got["ambiguity"] - want["ambiguity"]).max() > PROB_TOLERANCE:
        raise RunFailed(f"{out}: the exported graph disagrees with the run (largest probability difference "
                        f"{worst:.2g}; sets that differ: {', '.join(differs) or 'none'}); the file was not kept")
    return worst


def export_onnx(run_dir: str | Path, out: str | Path, alpha: float = 0.1, method: str = "lac",
                per_kind: bool = True, groups: str = "kind", truth: str = "sets") -> Exported:
    """Write `run_dir` as one ONNX graph to `out`, checked against the run before it is kept."""
    onnx, ort = onnx_libraries()
    predictor = Predictor.load(run_dir, alpha, method, per_kind, groups, truth)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.export.tmp")
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter: deprecated in favour of torch.export's, which needs 25x longer here (24 s
            # against 0.9 s for a small CNN on 2 cores) for the same graph; `check` compares either with PyTorch.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(Decoder(predictor).eval(), (example_images(predictor, 2),), str(tmp), dynamo=False,
                              input_names=["images"], output_names=list(OUTPUTS), opset_version=OPSET,
                              dynamic_axes={name: {0: "batch"} for name in ("images", *OUTPUTS)})
        graph = onnx.load(str(tmp))
        onnx.helper.set_model_props(graph, metadata(predictor))
        onnx.save(graph, str(tmp))
        worst = check(tmp, predictor, ort, out)
        write_atomic(out, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return Exported(out, CHECK_IMAGES, worst)
