"""Where ambig-bench keeps what it can rebuild: decoded images, the CLI's catalogue.

$ AMBIG_BENCH_CACHE=/tmp/ab ambig-bench run --dataset cifar10     # cache somewhere else
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$AMBIG_BENCH_CACHE, else $XDG_CACHE_HOME/ambig-bench, else ~/.cache/ambig-bench."""
    if os.environ.get("AMBIG_BENCH_CACHE"):
        return Path(os.environ["AMBIG_BENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ambig-bench"
