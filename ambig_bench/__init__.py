"""ambig-bench: which training strategy to use when some images sit between two classes.

$ ambig-bench run --strategy soft --epochs 3

In Python (docs/api.md), the names of `ambig_bench.api`, loaded on first use so that importing the package
(and `ambig-bench --help`) does not import torch:

>>> import ambig_bench as ab
>>> results = ab.run(strategies="soft,hard", seeds=2, epochs=3, out="results/nb")  # doctest: +SKIP
"""

import importlib
from typing import Any

__version__ = "0.1.0"

API = ("Calibration", "Comparison", "ExperimentConfig", "PredictionReport", "Predictor", "RunConfig", "RunFailed",
       "RunResult", "SweepResult", "UserError", "calibrate_run", "compare_results", "comparison_json",
       "conformal_summary", "experiment", "export_run", "load_results", "load_run", "predict_images", "run",
       "run_sweep", "suggest_images")
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        return getattr(importlib.import_module("ambig_bench.api"), name)
    raise AttributeError(f"module 'ambig_bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
