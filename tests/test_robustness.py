"""Nothing is lost: kill -9 and resume, Ctrl-C, two invocations at once, leftovers, NaN and out-of-memory runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ambig_bench import runner as runner_module
from ambig_bench.cli import app
from ambig_bench.compare import compare, comparison_markdown
from ambig_bench.config import ExperimentConfig
from ambig_bench.executors import grid, run_grid
from ambig_bench.io import read_json, write_json
from ambig_bench.keys import run_name
from ambig_bench.locks import RunLock
from ambig_bench.runner import run_experiment
from tests.conftest import tiny_config

cli = CliRunner()
TINY = ["--epochs", "2", "--width", "8", "--batch-size", "64", "--test-between-per-pair", "20",
        "--val-between-per-pair", "10", "--device", "cpu"]
GRID = ["--strategy", "soft,hard", "--seeds", "2", *TINY]  # four runs
RUN_FILES = ("config.json", "data.json", "env.json", "history.csv", "metrics.json", "predictions.csv",
             "model.safetensors", "model.json", "DONE")
LEFTOVER = re.compile(r"^\.(tmp|old)-")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cli_process(out: Path) -> subprocess.Popen:
    """The real command line in a child process, on one core (a shared machine is less likely to stall it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ambig_bench.cli", "run", *GRID, "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finished(out: Path) -> list[Path]:
    """Finished runs: pathlib's glob also matches a .tmp- directory that holds DONE just before its rename."""
    return sorted(p.parent for p in (out / "runs").glob("*/DONE") if not LEFTOVER.match(p.parent.name))


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def trained_and_reused(stderr: str) -> tuple[int, int]:
    """(trained now, reused) from the run command's closing line."""
    m = re.search(r"(\d+) runs finished \((\d+) reused\)", " ".join(stderr.split()))
    assert m, stderr
    return int(m[1]) - int(m[2]), int(m[2])


@pytest.mark.slow
def test_kill_9_part_way_then_resume_gives_the_table_of_an_uninterrupted_grid(tmp_path):
    killed, whole = tmp_path / "killed" / "demo", tmp_path / "whole" / "demo"
    proc = cli_process(killed)
    wait_for(lambda: finished(killed) or proc.poll() is not None, "the first finished run")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the grid finished before it could be killed"
    survivors = finished(killed)
    assert 1 <= len(survivors) < 4
    for run_dir in (killed / "runs").iterdir():
        if not LEFTOVER.match(run_dir.name):  # whatever is visible under a run's own name is complete
            assert all((run_dir / name).exists() for name in RUN_FILES), run_dir
    assert len(compare(killed).runs) == len(survivors), "compare reads finished runs and ignores leftovers"

    resumed = cli_process(killed)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert trained_and_reused(stderr) == (4 - len(survivors), len(survivors))
    assert not [p for p in (killed / "runs").iterdir() if LEFTOVER.match(p.name)], "leftovers are cleaned"

    with torch_threads(1):  # the child processes' thread count: the same floating-point sums
        result = cli.invoke(app, ["run", *GRID, "--out", str(whole)])
    assert result.exit_code == 0, result.output
    resumed_table, whole_table = compare(killed), compare(whole)
    pd.testing.assert_frame_equal(resumed_table.summary, whole_table.summary)
    assert comparison_markdown(resumed_table) == comparison_markdown(whole_table)


@pytest.mark.slow
def test_two_invocations_on_one_results_directory_train_each_run_once(tmp_path):
    out = tmp_path / "shared"
    procs = [cli_process(out) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum(trained_and_reused(s)[0] for s in outputs) == 4, outputs
    assert len(finished(out)) == 4
    assert not [p for p in (out / "runs").iterdir() if LEFTOVER.match(p.name)]


@pytest.mark.slow
def test_a_run_another_process_holds_is_skipped_then_waited_for(tmp_path):
    exp = ExperimentConfig(tiny_config(), ["soft", "hard"], 1, str(tmp_path))
    first, second = (tmp_path / "runs" / run_name(cfg) for cfg in grid(exp))
    # flock conflicts between two open file descriptions even in one process: this is "another process".
    held = RunLock(tmp_path / ".locks" / f"{first.name}.lock")
    assert held.acquire(wait=False)
    assert run_experiment(grid(exp)[0], tmp_path, wait=False).status == "busy"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), "busy writes nothing"

    results = {}
    worker = threading.Thread(target=lambda: results.update(grid=run_grid(exp)))
    worker.start()
    wait_for(lambda: (second / "DONE").exists(), "the free run")
    assert worker.is_alive() and not first.exists(), "the held run is left to its holder"
    held.release()
    worker.join(timeout=120)
    assert [r.status for r in results["grid"]] == ["done", "done"]


class InterruptIn:
    """A reporter that presses Ctrl-C in the first epoch of run number `n`."""

    def __init__(self, n: int) -> None:
        self.n, self.started = n, 0

    def start_run(self, name: str, epochs: int) -> None:
        self.started += 1

    def epoch(self, name: str, epoch: int, loss: float) -> None:
        if self.started == self.n:
            raise KeyboardInterrupt

    def end_run(self, result) -> None:
        pass


@pytest.mark.slow
def test_ctrl_c_keeps_finished_runs_and_leaves_nothing_half_written(tmp_path):
    exp = ExperimentConfig(tiny_config(), ["soft", "hard"], 1, str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run_grid(exp, InterruptIn(2))
    entries = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert entries == [run_name(grid(exp)[0])], "one finished run, no temporary directory"
    lock = RunLock(tmp_path / ".locks" / f"{run_name(grid(exp)[1])}.lock")
    assert lock.acquire(wait=False), "the interrupted run's lock is released"
    lock.release()
    assert [r.status for r in run_grid(exp)] == ["reused", "done"]


@pytest.mark.slow
def test_leftovers_of_a_killed_process_are_ignored_then_removed(tmp_path):
    run_experiment(tiny_config(strategy="soft"), tmp_path)
    cfg = tiny_config(strategy="hard")
    runs = tmp_path / "runs"
    half = runs / f".tmp-{run_name(cfg)}-deadbeef"  # killed while assembling
    half.mkdir()
    (half / "config.json").write_text("{}")
    (half / "metrics.json").write_text('{"clear_acc": 0.')
    aside = runs / f".old-{run_name(cfg)}-deadbeef"  # killed while replacing a run
    aside.mkdir()
    (aside / "DONE").write_text("")
    assert list(compare(tmp_path).runs.strategy) == ["soft"]
    assert run_experiment(cfg, tmp_path).status == "done"
    assert not half.exists() and not aside.exists()


@pytest.mark.slow
def test_nan_loss_is_a_failed_run_the_grid_goes_on_and_compare_shows_it(tmp_path):
    out = str(tmp_path / "out")
    diverged = cli.invoke(app, ["run", *TINY, "--strategy", "soft,hard", "--seeds", "1", "--lr", "1e9",
                                "--out", out])
    assert diverged.exit_code == 1, diverged.output
    failed = sorted((tmp_path / "out" / "runs").glob("*/FAILED"))
    assert len(failed) == 2, "the grid went on after the first failure"
    assert all("training loss became nan" in read_json(f)["error"] for f in failed)

    healthy = cli.invoke(app, ["run", *TINY, "--strategy", "soft,hard", "--seeds", "1", "--out", out])
    assert healthy.exit_code == 0, healthy.output
    shown = cli.invoke(app, ["compare", out])
    assert shown.exit_code == 0, shown.output
    table = pd.read_csv(tmp_path / "out" / "comparison.csv")
    default_lr = tiny_config().model.lr
    assert sorted(zip(table.lr, table.n_failed, table.n_seeds, strict=True)) == [
        (default_lr, 0, 1), (default_lr, 0, 1), (1e9, 1, 0), (1e9, 1, 0)]
    assert "| failed |" in (tmp_path / "out" / "comparison.md").read_text()


def test_cuda_out_of_memory_is_a_failed_run_naming_the_batch_size_to_try(tmp_path, monkeypatch):
    real_train = runner_module.train

    def train_out_of_memory(jobs, *args, **kwargs):
        if jobs[0].strategy.name == "soft":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(jobs, *args, **kwargs)

    monkeypatch.setattr(runner_module, "train", train_out_of_memory)
    exp = ExperimentConfig(tiny_config(batch_size=64), ["soft", "hard"], 1, str(tmp_path))
    soft, hard = run_grid(exp)
    assert (soft.status, hard.status) == ("failed", "done")
    assert soft.error == "CUDA out of memory at batch size 64; try --batch-size 32"
    assert read_json(soft.run_dir / "FAILED")["error"] == soft.error

    monkeypatch.setattr(runner_module, "train", real_train)
    assert run_grid(exp)[0].status == "done", "a failed run is retried by the next invocation"
    assert sorted(p.name for p in soft.run_dir.iterdir()) == sorted(RUN_FILES)
    assert not [p for p in (tmp_path / "runs").iterdir() if LEFTOVER.match(p.name)]


def test_an_interrupted_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json(path, {"v": 1})

    def power_cut(fd: int) -> None:
        raise OSError("simulated crash before the data reached the disk")

    monkeypatch.setattr(os, "fsync", power_cut)
    with pytest.raises(OSError):
        write_json(path, {"v": 2})
    monkeypatch.undo()
    assert read_json(path) == {"v": 1}
    assert list(tmp_path.iterdir()) == [path]
