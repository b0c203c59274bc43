"""Shared fixtures: tiny configurations that train in a second on the CPU."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from ambig_bench.config import RunConfig
from ambig_bench.options import build

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

torch.set_num_threads(1)  # tiny models: one thread is faster, and runs are comparable


def tiny_config(**overrides) -> RunConfig:
    """Digits, a narrow network and two epochs: enough to exercise every code path quickly."""
    values = dict(dataset="digits", epochs=2, width=8, batch_size=64, test_between_per_pair=20,
                  val_between_per_pair=10, device="cpu")
    values.update(overrides)
    return build(values)


@pytest.fixture
def tiny() -> RunConfig:
    return tiny_config()


def short_tmpdir() -> dict[str, str]:
    """The environment with TMPDIR=/tmp, for a subprocess that makes a Unix socket under TMPDIR (a DataLoader's
    workers, chromium's singleton socket): a socket path longer than 107 bytes fails or hangs, so the suite would
    depend on the length of the temporary directory's path."""
    return {**os.environ, "TMPDIR": "/tmp" if os.access("/tmp", os.W_OK) else tempfile.gettempdir()}


def shared_path(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data folder beside the project is missing)")
    return path


@pytest.fixture(scope="session")
def trained_results(tmp_path_factory) -> Path:
    """A results directory of two real tiny runs (soft and hard, seed 0), trained once per session: read it, copy
    it before changing it."""
    from ambig_bench.runner import run_experiment

    out = tmp_path_factory.mktemp("trained-results")
    for strategy in ("soft", "hard"):
        run_experiment(tiny_config(strategy=strategy, epochs=1), out)
    return out
