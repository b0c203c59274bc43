"""Dataset loaders and in-between generators; importing the package registers them all.

`prepare(cfg)` is the one entry point: load the raw images, split them, and let the configured
in-between source (`blend`, `human`, `natural`) decide which images are in-between.

$ ambig-bench datasets
"""

import importlib
import pkgutil

from ambig_bench.datasets.base import (
    BETWEEN_SOURCES,
    DATASETS,
    load_raw,
    pairs_of,
    prepare,
    register_dataset,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["BETWEEN_SOURCES", "DATASETS", "load_raw", "pairs_of", "prepare", "register_dataset"]
