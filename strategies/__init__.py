"""Every module in this package defines one strategy; importing the package registers them all.

$ ambig-bench strategies
"""

import importlib
import pkgutil

from ambig_bench.strategies.base import STRATEGIES, Labels, Strategy

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["STRATEGIES", "Labels", "Strategy"]
