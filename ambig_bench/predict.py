"""Use a trained run on new images: "this is A", or "this is A or B" when the image sits in between.

Per image: the decision (the strategy's own set decoding at the run's validation-chosen threshold), the
class probabilities, the strategy's ambiguity score, and a split-conformal prediction set calibrated on the
run's validation predictions (predictions.csv): for new images like the validation ones, the set holds
*every* true label (both A and B for an in-between image) with probability at least 1 - alpha, for
clear-cut and for in-between images each (ambig_bench.calibration.calibrate_run explains why per kind); or,
with groups "class", each class's labels at 1 - alpha, and with truth "votes", a label drawn from the votes.
Images are read by ambig_bench.imageio; `render` gives what the CLI prints (a rich table, CSV or JSON).

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
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text
from torch import nn

from ambig_bench.calibration import Calibration, calibrate_run, check_conformal_options, group_coverage
from ambig_bench.checkpoint import load_checkpoint
from ambig_bench.conformal import prediction_sets
from ambig_bench.errors import UserError
from ambig_bench.imageio import Change, find_images, read_image
from ambig_bench.rundir import RunDir
from ambig_bench.shown import csv_frame, shown
from ambig_bench.strategies import Strategy
from ambig_bench.train import predict_logits

FORMATS = ("table", "csv", "json")
TABLE_TOP = 3  # probabilities shown per image in the table (csv and json carry all of them)


# -- predicting ----------------------------------------------------------------------------------------

@dataclass
class Predictor:
    """A loaded run: network, model.json, strategy and conformal calibration."""

    run_dir: Path
    model: nn.Module
    meta: dict
    strategy: Strategy
    calibration: Calibration

    @classmethod
    def load(cls, run_dir: str | Path, alpha: float = 0.1, method: str = "lac", per_kind: bool = True,
             groups: str = "kind", truth: str = "sets") -> Predictor:
        check_conformal_options(alpha, method, groups, truth)
        model, meta, strategy = load_checkpoint(run_dir)
        calibration = calibrate_run(run_dir, alpha, method, per_kind, groups, truth)
        if calibration.num_classes != len(meta["class_names"]):
            raise UserError(f"{RunDir(run_dir).predictions_file}: {calibration.num_classes} probability columns, "
                            f"but model.json has {len(meta['class_names'])} classes")
        return cls(Path(run_dir), model, meta, strategy, calibration)

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    @property
    def threshold(self) -> float:
        return self.meta["threshold"] or 0.5  # strategies without a threshold ignore it

    def predict_arrays(self, images: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """`predict` for uint8 arrays as notebooks hold them: N×H×W (grey), N×H×W×C or N×C×H×W, in the model's
        input size (model.json: image_size, in_channels); anything else is a UserError saying what is expected."""
        x = torch.as_tensor(np.asarray(images))
        given = f"{x.dtype} {tuple(x.shape)}"
        channels, size = self.meta["in_channels"], self.meta["image_size"]
        width = self.meta.get("image_width") or size
        if x.dim() == 3 and channels == 1:
            x = x[:, None]
        elif x.dim() == 4 and x.shape[1] != channels and x.shape[-1] == channels:
            x = x.permute(0, 3, 1, 2)
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (channels, size, width):
            raise UserError(f"images must be uint8 N×{channels}×{size}×{width} (or N×{size}×{width}×{channels}) for "
                            f"{self.run_dir.name}, got {given}")
        return self.predict(x.contiguous())

    def predict(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """uint8 N×C×H×W (training format) -> probs N×K, decision N×K, conformal N×K, ambiguity N."""
        # Evaluated like the run's own predictions.csv (the same test-time views when trained with augmentation), so the
        # conformal threshold calibrated on those predictions applies.
        logits = predict_logits(self.model, images, torch.device("cpu"), self.meta["tta"])
        probs = self.strategy.class_probs(logits)
        if not torch.isfinite(probs).all():  # finite weights (read_weights) can still overflow: never a NaN answer
            raise UserError(f"{RunDir(self.run_dir).weights_file}: the network's outputs are not finite (NaN or "
                            "infinite) for these images; the run's weights are unusable (retrain it with --force)")
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
    coverage: pd.DataFrame  # the calibration's coverage on the run's test images (calibration.group_coverage)

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
        cal = self.calibration
        always = np.isinf(cal.thresholds)
        if always.all():
            lines.append(f"only {cal.n} validation images: at alpha {cal.alpha} "
                         "every conformal set is every class (use a larger alpha or a larger validation split)")
        elif always.any():
            lines.append(f"{int(always.sum())} class(es) have too few validation images at alpha {cal.alpha} for a "
                         f"threshold of their own and are in every conformal set, e.g. "
                         f"{self.class_names[int(np.argmax(always))]} (use a larger alpha, --marginal or "
                         "--conformal-groups kind)")
        return lines


def names_by_probability(mask: np.ndarray, probs: np.ndarray, class_names: list[str]) -> list[str]:
    order = np.argsort(-probs, kind="stable")
    return [class_names[k] for k in order if mask[k]]


def predict_paths(run_dir: str | Path, inputs: Sequence[str | Path], alpha: float = 0.1, method: str = "lac",
                  per_kind: bool = True, batch_size: int = 256, groups: str = "kind", truth: str = "sets"
                  ) -> PredictionReport:
    """Predict every image file / folder of `inputs`; unreadable files become error rows, not exceptions."""
    predictor = Predictor.load(run_dir, alpha, method, per_kind, groups, truth)
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
        out = predictor.predict(torch.from_numpy(np.stack(batch)))
        for i, result in enumerate(readable):
            result.probs = out["probs"][i].tolist()
            result.decision = names_by_probability(out["decision"][i], out["probs"][i], predictor.class_names)
            result.conformal = names_by_probability(out["conformal"][i], out["probs"][i], predictor.class_names)
            result.ambiguity = float(out["ambiguity"][i])
    return PredictionReport(Path(run_dir), predictor.meta["strategy"], predictor.meta["threshold"],
                            predictor.class_names, predictor.calibration, results,
                            group_coverage(run_dir, predictor.calibration))


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


def finite(value: float) -> float | None:
    """A number for JSON, which has no NaN or infinity: null for those."""
    return float(value) if math.isfinite(value) else None


def calibration_record(cal: Calibration, class_names: list[str]) -> dict:
    """The calibration as JSON: qhat one number (groups "kind") or one per class name (groups "class"); null
    where infinite (too few validation images: the class is in every set)."""
    qhat = finite(cal.qhat) if cal.groups == "kind" else {
        name: finite(q) for name, q in zip(class_names, cal.thresholds, strict=True)}
    return {"method": cal.method, "alpha": cal.alpha, "coverage_target": 1 - cal.alpha, "per_kind": cal.per_kind,
            "groups": cal.groups, "truth": cal.truth, "qhat": qhat, "calibration_images": cal.n}


def to_json(report: PredictionReport) -> str:
    coverage = report.coverage.astype(object).where(report.coverage.notna(), None)
    return json.dumps({
        "run": str(report.run_dir), "strategy": report.strategy, "threshold": report.threshold,
        # test_coverage: the sets' coverage on the run's own test images, overall, per class and per pair
        "conformal": {**calibration_record(report.calibration, report.class_names),
                      "test_coverage": coverage.to_dict(orient="records")},
        "images": records(report),
    }, indent=2, allow_nan=False) + "\n"  # NaN is not JSON: every number here is finite or null


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
    csv_frame(pd.DataFrame(rows)).to_csv(buffer, index=False, float_format="%.6g")
    return buffer.getvalue()


def to_table(report: PredictionReport) -> Table:
    """A Rich table; every cell is a `Text`, so file and class names are shown exactly, never read as markup."""
    cal = report.calibration
    threshold = "" if report.threshold is None else f", threshold {report.threshold:g}"
    per = "of clear-cut and of in-between images" if cal.per_kind else "on average"
    if cal.groups == "class":
        per = f"of each class's labels{' (clear-cut and in-between each)' if cal.per_kind else ''}"
    if cal.truth == "votes":
        per += ", for labels drawn from the votes"
    table = Table(title=Text(f"{shown(report.run_dir.name)} ({report.strategy}{threshold}); conformal "
                             f"{cal.method.upper()} sets cover {1 - cal.alpha:.0%} {per} (calibrated on {cal.n} "
                             f"validation images)"))
    # A file name is never broken: its column is as wide as the longest name, the others wrap down to a few
    # characters, and the table is at least that wide, wider than a narrow terminal if need be (the CLI prints it
    # uncropped, so a terminal wraps its lines whole rather than Rich folding a name).
    columns = {"image": max((cell_len(shown(r.path)) for r in report.images), default=5), "decision": 8,
               f"top {TABLE_TOP} probabilities": 10, "ambiguity": 9, "conformal set": 9}
    table.min_width = sum(columns.values()) + 3 * len(columns) + 1  # each column: 2 of padding, 1 of border
    for column, width in columns.items():
        table.add_column(column, min_width=width, **({"no_wrap": True} if column == "image" else {"overflow": "fold"}))
    for r in report.images:
        if r.error:
            table.add_row(Text(shown(r.path)), Text(shown(f"error: {r.error}"), style="red"), "", "", "")
            continue
        top = ranked(report, r)[:TABLE_TOP]
        table.add_row(Text(shown(r.path)), Text(shown(decision_text(r.decision))),
                      Text(shown("  ".join(f"{n} {p:.2f}" for n, p in top))), f"{r.ambiguity:.2f}",
                      Text(shown("{" + ", ".join(r.conformal) + "}")))
    return table


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def render(report: PredictionReport, fmt: str) -> str | Table:
    """What the CLI prints to stdout for --format table|csv|json."""
    check_format(fmt)
    return {"table": to_table, "csv": to_csv, "json": to_json}[fmt](report)
