"""The benchmark runs end to end on the CPU with tiny sizes and prints every figure and ratio.

Only that it runs and reports is checked: speed targets are met in the benchmark itself, never in tests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import short_tmpdir

pytestmark = pytest.mark.slow  # each test runs a benchmark script in a subprocess

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--device", "cpu", "--images", "256",
                           "--epochs", "1", "--seeds", "2", "--small-images", "128", "--model", "small-cnn",
                           "--repeats", "2", "--json", str(out)], capture_output=True, text=True, timeout=600,
                          env=short_tmpdir())
    assert done.returncode == 0, done.stderr
    for text in ("(a) ambig-bench", "(b) bare", "(c) textbook", "batched", "a / b =", "a / c =",
                 "batched / sequential ="):
        assert text in done.stdout
    figures = json.loads(out.read_text())
    assert all(figures[k] > 0 for k in ("a_ambig_bench", "b_bare_loop", "c_textbook", "d_sequential", "d_batched"))


def test_airbench_reference_runs_on_a_few_real_images():
    """benchmarks/airbench_reference.py (the accuracy ceiling in the README) trains and prints both accuracies."""
    from tests.conftest import shared_path

    data = shared_path("cifar10.tgz")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "airbench_reference.py"), "--data", str(data),
                           "--limit", "1024", "--epochs", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert re.search(r"1024 training images, 1\.0 epochs: test accuracy 0\.\d{4}, with test-time views 0\.\d{4}",
                     done.stdout), done.stdout
    assert "epoch 1: loss" in done.stderr


def test_probe_bench_runs_on_a_few_real_images(tmp_path):
    """benchmarks/probe.py on 600 CIFAR-10 test images and a narrow stand-in backbone: it prints its three figures,
    the grid's features take one pass, and every probe converged."""
    from tests.conftest import shared_path

    data = shared_path("cifar10.tgz")
    out = tmp_path / "probe.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "probe.py"), "--data", str(data), "--images",
                           "600", "--seeds", "2", "--strategies", "soft,reassign", "--old-seeds", "1", "--width", "8",
                           "--json", str(out)], capture_output=True, text=True, timeout=600,
                          env={**short_tmpdir(), "AMBIG_BENCH_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    for text in ("(a) clear-cut accuracy: soft probe", "(b) probe fits:", "old epoch loop:", "(c) feature passes:"):
        assert text in done.stdout
    figures = json.loads(out.read_text())
    assert figures["feature_passes"] == 1 and figures["feature_images"] == 600
    assert figures["converged_runs"] == figures["runs"] == 4
