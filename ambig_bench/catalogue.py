"""What the CLI shows before any work: registered names with their one-line descriptions, and every run option.

Listing them means importing the registries, and those import torch (seconds). The catalogue is therefore
built once and kept in the cache (`cache`), keyed on the size and modification time of every source file
of the package, so `ambig-bench --help`, `strategies`, `datasets`, `models` and argument errors answer at
once, and a new or edited strategy, dataset, source or model file is picked up by the next command.

$ ambig-bench strategies        # from the catalogue; the first call after an edit rebuilds it

>>> sorted(catalogue()["strategies"])[:2]  # doctest: +SKIP
['discard', 'duplicate']
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import sys
from pathlib import Path

from ambig_bench import __version__, cache

PACKAGES = ("ambig_bench", "ambig_bench.strategies", "ambig_bench.datasets")


def source_files() -> list[Path]:
    """The .py files of the package and its registry subpackages (installed or checked out)."""
    files: list[Path] = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)  # finds a subpackage without importing it
        for folder in spec.submodule_search_locations or []:
            files += sorted(Path(folder).glob("*.py"))
    return files


def fingerprint() -> str:
    h = hashlib.sha1(f"{__version__} {sys.version}".encode())
    for path in source_files():
        st = path.stat()
        h.update(f"{path} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def build() -> dict:
    """Import the registries (slow: they import torch) and describe them."""
    # Imported here, not at the top: this is the slow path the cached catalogue exists to avoid.
    from ambig_bench import options
    from ambig_bench.datasets import BETWEEN_SOURCES, DATASETS
    from ambig_bench.models import MODELS
    from ambig_bench.strategies import STRATEGIES

    return {
        "strategies": STRATEGIES.describe(),
        "datasets": DATASETS.describe(),
        "sources": BETWEEN_SOURCES.describe(),
        "models": {name: {"description": text, "recipe": MODELS.get(name).recipe.option_defaults(),
                          "input_size": MODELS.get(name).input_size} for name, text in MODELS.describe().items()},
        "options": [{"flag": o.flag, "kind": o.kind.__name__, "help": o.help, "panel": o.panel}
                    for o in options.table().values()],
    }


@functools.cache
def catalogue() -> dict:
    return cache.cached(cache.file("catalogue", [fingerprint()]), cache.JSON, build)
