"""A kill -9 of the driver with --jobs 2: its workers and multiprocessing's resource tracker end within seconds,
print nothing, and no run is written after the driver is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def group_members(group: int) -> list[int]:
    """Live processes of a process group, from /proc (field 5 of /proc/PID/stat; the name in field 2 may hold
    spaces, so fields are counted after its closing parenthesis). Zombies have exited and do not count."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            members.append(int(stat.parent.name))
    return members


def entries(runs: Path) -> set[str]:
    return {p.name for p in runs.iterdir()} if runs.is_dir() else set()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
def test_kill_9_of_the_driver_leaves_no_worker_no_run_and_no_output(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ambig_bench.cli", "run", "--dataset", "digits", "--strategy", "soft,hard",
               "--seeds", "1", "--epochs", "200", "--width", "8", "--device", "cpu", "--jobs", "2", "--out", str(out)]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        # Progress lines come from the workers (stderr is a pipe: one line per epoch and run).
        for line in driver.stderr:
            if ": epoch 1/200" in line:
                break
        else:
            pytest.fail(f"no worker started training (exit {driver.wait()})")
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 5
        while group_members(driver.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group_members(driver.pid) == [], "a worker or the resource tracker outlived the driver"
        left = entries(out / "runs")
        after = driver.stderr.read()  # every writer is gone: the rest of stderr, to its end
        assert after.strip() == "" or all(": epoch " in line for line in after.splitlines()), after
        assert entries(out / "runs") == left and not any((out / "runs" / name / "DONE").exists() for name in left)
    finally:
        for pid in group_members(driver.pid):
            os.kill(pid, signal.SIGKILL)
