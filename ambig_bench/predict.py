"""Use a trained run on new images: "this is A", or "this is A or B" when the image sits in between.

Per image: the decision (the strategy's own set decoding at the run's validation-chosen threshold), the
class probabilities, the strategy's ambiguity score, and a split-conformal prediction set calibrated on the
run's validation predictions (predictions.csv): for new images like the validation ones, the set holds
*every* true label (both A and B for an in-between image) with probability at least 1 - alpha, for
clear-cut and for in-between images each (calibrate_run explains why per kind).

$ ambig-bench predict results/demo/runs/soft-seed0-1a2b3c4d photo.png scans/ --format json --alpha 0.1

>>> from ambig_bench.predict import predict_paths
>>> result = predict_paths("results/demo/runs/soft-seed0-1a2b3c4d", ["scans/"])  # doctest: +SKIP
>>> result.images[0].decision  # doctest: +SKIP
['4', '9']
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from rich.table import Table
from torch import nn

from ambig_bench.checkpoint import load_checkpoint
from ambig_bench.conformal import METHODS, calibrate, prediction_sets, set_metrics
from ambig_bench.errors import UserError
from ambig_bench.imageio import to_8bit, walk_images
from ambig_bench.metrics import label_set_mask
from ambig_bench.strategies import Strategy
from ambig_bench.train import predict_logits

FORMATS = ("table", "csv", "json")
TABLE_TOP = 3  # probabilities shown per image in the table (csv and json carry all of them)


# -- conformal calibration from a run's saved predictions ----------------------------------------------

@dataclass
class Calibration:
    method: str  # "lac" or "aps" (ambig_bench.conformal.METHODS)
    alpha: float  # miscoverage level: sets miss a true label for at most alpha of the images
    per_kind: bool  # qhat is the larger of the clear-cut and the in-between quantile (see calibrate_run)
    qhat: float  # score threshold; +inf when there are too few validation images for alpha (every class)
    n: int  # validation images it was calibrated on
    num_classes: int


def check_conformal_options(alpha: float, method: str) -> None:
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be in (0, 1), got {alpha}")
    if method not in METHODS:
        raise UserError(f"--conformal must be one of {', '.join(METHODS)}, got {method!r}")


def read_predictions(run_dir: str | Path) -> tuple[pd.DataFrame, int]:
    """A run's predictions.csv, checked (split, label_a, label_b, pred_set, p_0..p_{K-1}, val rows), and K."""
    path = Path(run_dir) / "predictions.csv"
    try:
        frame = pd.read_csv(path, dtype={"pred_set": str})
    except FileNotFoundError:
        raise UserError(f"{path}: missing; conformal sets are calibrated on a finished run's predictions") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    k = sum(c.startswith("p_") for c in frame.columns)
    needed = ["split", "label_a", "label_b", "pred_set"] + [f"p_{i}" for i in range(max(k, 2))]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: not an ambig-bench predictions file (missing columns {', '.join(missing)})")
    if not (frame.split == "val").any():
        raise UserError(f"{path}: no validation rows to calibrate conformal sets on")
    return frame, k


def probs_of(frame: pd.DataFrame, k: int) -> np.ndarray:
    return frame[[f"p_{i}" for i in range(k)]].to_numpy(dtype=float)


def truth_of(frame: pd.DataFrame, k: int) -> np.ndarray:
    """N×K bool: {label_a}, or {label_a, label_b} for an in-between row (label_b >= 0)."""
    return label_set_mask(torch.tensor(frame.label_a.to_numpy(np.int64)),
                          torch.tensor(frame.label_b.to_numpy(np.int64)), k).numpy()


def calibrate_run(run_dir: str | Path, alpha: float = 0.1, method: str = "lac", per_kind: bool = True
                  ) -> Calibration:
    """qhat from the run's validation rows (predictions.csv), so predicting never reruns validation.

    per_kind: calibrate the clear-cut and the in-between validation images separately and keep the larger
    qhat. Sets only grow with qhat, so each kind is then covered with probability >= 1 - alpha on its own,
    and so is any mix of the two. Plain (marginal) calibration covers 1 - alpha only on a mix like the
    validation split's: in-between images, a minority there, are under-covered, and a deployment with more
    of them than validation had gets less than 1 - alpha overall.
    """
    return calibrate_frame(*read_predictions(run_dir), alpha, method, per_kind)


def calibrate_frame(frame: pd.DataFrame, k: int, alpha: float, method: str, per_kind: bool) -> Calibration:
    check_conformal_options(alpha, method)
    val = frame[frame.split == "val"]
    groups = [g for _, g in val.groupby(val.label_b >= 0)] if per_kind else [val]
    qhat = max(calibrate(probs_of(g, k), truth_of(g, k), alpha, method) for g in groups)
    return Calibration(method, alpha, per_kind, qhat, len(val), k)


def sets_from_column(pred_set: pd.Series, k: int) -> np.ndarray:
    """The `pred_set` column ("4|9") as an N×K bool mask."""
    sets = np.zeros((len(pred_set), k), dtype=bool)
    for row, text in enumerate(pred_set.fillna("")):
        sets[row, [int(c) for c in text.split("|") if c]] = True
    return sets


def conformal_summary(run_dir: str | Path, alpha: float = 0.1, method: str = "lac", per_kind: bool = True
                      ) -> dict[str, float]:
    """Test-split set quality of the conformal sets (cp_*) and of the strategy's threshold sets (thr_*).

    coverage = every true label is in the set; size = mean number of classes in the set; exact = the set is
    exactly the true pair. cp_coverage over all test images is what the 1 - alpha guarantee is about.
    """
    frame, k = read_predictions(run_dir)
    cal = calibrate_frame(frame, k, alpha, method, per_kind)
    test = frame[frame.split == "test"]
    truth = truth_of(test, k)
    between = test.label_b.to_numpy() >= 0
    decoded = {"cp": prediction_sets(probs_of(test, k), cal.qhat, method),
               "thr": sets_from_column(test.pred_set, k)}
    overall = set_metrics(decoded["cp"], truth)
    summary = {"cp_coverage": overall["coverage"], "cp_size": overall["mean_size"]}
    for name, sets in decoded.items():
        for part, rows in (("clear", ~between), ("between", between)):
            m = set_metrics(sets[rows], truth[rows])
            summary[f"{name}_{part}_coverage"], summary[f"{name}_{part}_size"] = m["coverage"], m["mean_size"]
        summary[f"{name}_between_exact"] = set_metrics(sets[between], truth[between])["exact"]
    return summary


# -- reading images -----------------------------------------------------------------------------------

def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given (whatever their suffix); folders searched recursively, in sorted order, for the image
    files the `folder` dataset reads too (PNG, JPEG, ...; hidden files skipped).

    A path that does not exist is kept, so it is reported as a failed file next to the others.
    """
    if not inputs:
        raise UserError("no images given: pass image files and/or folders")
    paths: list[Path] = []
    for item in map(Path, inputs):
        paths += [item / name for name in sorted(walk_images(item))] if item.is_dir() else [item]
    if not paths:
        raise UserError(f"no PNG/JPEG images found in {', '.join(map(str, inputs))}")
    return list(dict.fromkeys(paths))  # a file named twice (or inside a named folder) is predicted once


Change = tuple[str, str]  # (what was done, what the image was before), e.g. ("resized to 8×8", "28×28")


def read_image(path: Path, channels: int, size: int, width: int | None = None) -> tuple[torch.Tensor, list[Change]]:
    """uint8 C×size×width (width defaults to size) in the training input format, and what had to change."""
    width = width or size
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)  # phone photos are stored rotated; show them upright
            image.load()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: not a readable image ({e})") from None
    changes: list[Change] = []
    mode = "L" if channels == 1 else "RGB"
    if image.mode != mode:
        changes.append((f"converted to {'grey' if mode == 'L' else 'RGB'}", image.mode))
        image = to_8bit(image).convert(mode)
    if image.size != (width, size):
        changes.append((f"resized to {width}×{size}", f"{image.width}×{image.height}"))
        # BOX averages the pixels it shrinks (how scikit-learn's 8×8 digits were made); BICUBIC when enlarging.
        shrink = image.width > width or image.height > size
        image = image.resize((width, size), Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    return (pixels[None] if channels == 1 else pixels.permute(2, 0, 1)).contiguous(), changes


# -- predicting ----------------------------------------------------------------------------------------

@dataclass
class Predictor:
    """A loaded run: network, recipe (model.json), strategy and conformal calibration."""

    run_dir: Path
    model: nn.Module
    meta: dict
    strategy: Strategy
    calibration: Calibration

    @classmethod
    def load(cls, run_dir: str | Path, alpha: float = 0.1, method: str = "lac", per_kind: bool = True
             ) -> Predictor:
        check_conformal_options(alpha, method)
        model, meta, strategy = load_checkpoint(run_dir)
        calibration = calibrate_run(run_dir, alpha, method, per_kind)
        if calibration.num_classes != len(meta["class_names"]):
            raise UserError(f"{Path(run_dir) / 'predictions.csv'}: {calibration.num_classes} probability columns, "
                            f"but model.json has {len(meta['class_names'])} classes")
        return cls(Path(run_dir), model, meta, strategy, calibration)

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    @property
    def threshold(self) -> float:
        return self.meta["threshold"] or 0.5  # strategies without a threshold ignore it

    def predict(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """uint8 N×C×H×W (training format) -> probs N×K, decision N×K, conformal N×K, ambiguity N."""
        # Evaluated like the run's own predictions.csv (the same test-time views when trained with augmentation), so the
        # conformal threshold calibrated on those predictions applies.
        logits = predict_logits(self.model, images, torch.device("cpu"), self.meta["tta"])
        probs = self.strategy.class_probs(logits)
        return {
            "probs": probs.numpy(),
            "decision": self.strategy.predict_sets(logits, self.threshold).numpy(),
            "conformal": prediction_sets(probs.numpy(), self.calibration.qhat, self.calibration.method),
            "ambiguity": self.strategy.ambiguity(logits).numpy(),
        }


@dataclass
class ImageResult:
    path: str
    probs: list[float] = field(default_factory=list)  # K class probabilities, class order
    decision: list[str] = field(default_factory=list)  # class names of the decided set, most probable first
    conformal: list[str] = field(default_factory=list)  # class names of the conformal set, most probable first
    ambiguity: float = math.nan
    changes: list[Change] = field(default_factory=list)  # conversions applied to reach the training format
    error: str = ""  # why this file could not be predicted ("" when it was)


@dataclass
class PredictionReport:
    run_dir: Path
    strategy: str
    threshold: float | None
    class_names: list[str]
    calibration: Calibration
    images: list[ImageResult]

    @property
    def failed(self) -> list[ImageResult]:
        return [r for r in self.images if r.error]

    @property
    def exit_code(self) -> int:
        """0: every file predicted; 1: some files failed; 2: none could be read."""
        if len(self.failed) == len(self.images):
            return 2
        return 1 if self.failed else 0

    def warnings(self) -> list[str]:
        """One line per kind of conversion (with a count and an example) and for an uninformative calibration."""
        lines = []
        examples = {what: f"{r.path} (was {was})" for r in reversed(self.images) for what, was in r.changes}
        for what, count in Counter(what for r in self.images for what, _ in r.changes).items():
            lines.append(f"{count} image(s) {what} to match the model's input, e.g. {examples[what]}")
        if math.isinf(self.calibration.qhat):
            lines.append(f"only {self.calibration.n} validation images: at alpha {self.calibration.alpha} "
                         "every conformal set is every class (use a larger alpha or a larger validation split)")
        return lines


def names_by_probability(mask: np.ndarray, probs: np.ndarray, class_names: list[str]) -> list[str]:
    order = np.argsort(-probs, kind="stable")
    return [class_names[k] for k in order if mask[k]]


def predict_paths(run_dir: str | Path, inputs: Sequence[str | Path], alpha: float = 0.1, method: str = "lac",
                  per_kind: bool = True, batch_size: int = 256) -> PredictionReport:
    """Predict every image file / folder of `inputs`; unreadable files become error rows, not exceptions."""
    predictor = Predictor.load(run_dir, alpha, method, per_kind)
    size, channels = predictor.meta["image_size"], predictor.meta["in_channels"]
    paths = find_images(inputs)
    results = []
    for start in range(0, len(paths), batch_size):
        batch, readable = [], []
        for path in paths[start:start + batch_size]:
            result = ImageResult(str(path))
            try:
                pixels, result.changes = read_image(path, channels, size, predictor.meta.get("image_width"))
            except UserError as e:
                result.error = str(e).removeprefix(f"{path}: ")
            else:
                batch.append(pixels)
                readable.append(result)
            results.append(result)
        if not batch:
            continue
        out = predictor.predict(torch.stack(batch))
        for i, result in enumerate(readable):
            result.probs = out["probs"][i].tolist()
            result.decision = names_by_probability(out["decision"][i], out["probs"][i], predictor.class_names)
            result.conformal = names_by_probability(out["conformal"][i], out["probs"][i], predictor.class_names)
            result.ambiguity = float(out["ambiguity"][i])
    return PredictionReport(Path(run_dir), predictor.meta["strategy"], predictor.meta["threshold"],
                            predictor.class_names, predictor.calibration, results)


# -- output formats (the CLI prints these) ------------------------------------------------------------

def decision_text(names: list[str]) -> str:
    return " or ".join(names)


def change_text(change: Change) -> str:
    return f"{change[0]} (was {change[1]})"


def ranked(report: PredictionReport, result: ImageResult) -> list[tuple[str, float]]:
    """(class name, probability), most probable first; empty for a file that failed."""
    return sorted(zip(report.class_names, result.probs, strict=True), key=lambda kv: -kv[1]) if result.probs else []


def records(report: PredictionReport) -> list[dict]:
    """One JSON-ready dict per image; probabilities of all classes, most probable first."""
    return [{
        "path": r.path, "decision": decision_text(r.decision), "decision_set": r.decision,
        "conformal_set": r.conformal, "ambiguity": None if math.isnan(r.ambiguity) else round(r.ambiguity, 6),
        "probabilities": {n: round(p, 6) for n, p in ranked(report, r)},
        "converted": [change_text(c) for c in r.changes], "error": r.error,
    } for r in report.images]


def to_json(report: PredictionReport) -> str:
    cal = report.calibration
    return json.dumps({
        "run": str(report.run_dir), "strategy": report.strategy, "threshold": report.threshold,
        "conformal": {"method": cal.method, "alpha": cal.alpha, "coverage_target": 1 - cal.alpha,
                      "per_kind": cal.per_kind, "qhat": None if math.isinf(cal.qhat) else cal.qhat,
                      "calibration_images": cal.n},
        "images": records(report),
    }, indent=2) + "\n"


def to_csv(report: PredictionReport) -> str:
    """One row per image; sets as "A|B", one p_<class> column per class in class order."""
    rows = []
    for r in report.images:
        row = {"path": r.path, "decision": decision_text(r.decision), "decision_set": "|".join(r.decision),
               "conformal_set": "|".join(r.conformal), "ambiguity": r.ambiguity}
        probs = r.probs or [math.nan] * len(report.class_names)
        row.update({f"p_{name}": p for name, p in zip(report.class_names, probs, strict=True)})
        rows.append({**row, "converted": "; ".join(map(change_text, r.changes)), "error": r.error})
    buffer = io.StringIO()
    pd.DataFrame(rows).to_csv(buffer, index=False, float_format="%.6g")
    return buffer.getvalue()


def to_table(report: PredictionReport) -> Table:
    cal = report.calibration
    threshold = "" if report.threshold is None else f", threshold {report.threshold:g}"
    per = "of clear-cut and of in-between images" if cal.per_kind else "on average"
    table = Table(title=f"{report.run_dir.name} ({report.strategy}{threshold}); conformal {cal.method.upper()} sets "
                        f"cover {1 - cal.alpha:.0%} {per} (calibrated on {cal.n} validation images)")
    for column in ("image", "decision", f"top {TABLE_TOP} probabilities", "ambiguity", "conformal set"):
        table.add_column(column, overflow="fold")
    for r in report.images:
        if r.error:
            table.add_row(r.path, f"[red]error: {r.error}[/red]", "", "", "")
            continue
        top = ranked(report, r)[:TABLE_TOP]
        table.add_row(r.path, decision_text(r.decision), "  ".join(f"{n} {p:.2f}" for n, p in top),
                      f"{r.ambiguity:.2f}", "{" + ", ".join(r.conformal) + "}")
    return table


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def render(report: PredictionReport, fmt: str) -> str | Table:
    """What the CLI prints to stdout for --format table|csv|json."""
    check_format(fmt)
    return {"table": to_table, "csv": to_csv, "json": to_json}[fmt](report)
