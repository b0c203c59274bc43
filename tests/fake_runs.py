"""Run directories written by hand for compare and report tests: config.json (and data.json's source), no training.

The config is what a run of this version saves (options.build, nested), or the same fields flat, as runs of
older versions saved them: compare must read both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ambig_bench.options import build
from ambig_bench.rundir import flatten_config
from ambig_bench.strategies import STRATEGIES

CONVERGED = "training loss changed 0.04% over its last 5 epochs"
NOT_CONVERGED = "training loss still falling 2.1% over its last 5 epochs: raise --epochs"


def fake_run_dir(out: Path, strategy: str, seed: int, nest: bool = True, **options) -> tuple[Path, dict]:
    """A run directory holding config.json only (nested, or flat with nest=False), and the flat config."""
    config = build({"strategy": strategy, "seed": seed, **options}).to_dict()
    flat = flatten_config(config)
    experiment = {k: v for k, v in flat.items() if k not in ("strategy", "seed")}
    key = hashlib.sha1(json.dumps(experiment, sort_keys=True).encode()).hexdigest()[:8]
    run_dir = out / "runs" / f"{strategy}-seed{seed}-{key}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config if nest else flat))
    # What a run records of its data: `auto` picks blend for these vote-free datasets.
    source = flat["between_source"]
    (run_dir / "data.json").write_text(json.dumps({"between_source": "blend" if source == "auto" else source}))
    return run_dir, flat


def run_record(strategy: str, converged: bool = True, threshold: float = 0.5) -> dict:
    """What metrics.json of this version holds beside the metrics: whether the run converged and why (as
    convergence.judge words it), and the set-decoding threshold tuned on validation (None for a strategy that
    decodes without one)."""
    uses = STRATEGIES.get(strategy.split("@")[0]).uses_threshold
    return {"converged": converged, "convergence": CONVERGED if converged else NOT_CONVERGED,
            "threshold": threshold if uses else None}
