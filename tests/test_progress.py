"""Progress for a person: live lines per running run and the grid's time remaining, log lines, the summary, events
relayed from worker processes, statuses that print as words. No training: the reporters are fed events."""

from __future__ import annotations

import io
import multiprocessing
from pathlib import Path

from rich.console import Console

from ambig_bench.executors import Events, InProcesses
from ambig_bench.progress import LogReporter, RichReporter, progress_bars, showing, summary
from ambig_bench.store import RunResult, Status
from tests.conftest import tiny_config


def result(name: str, status: Status = Status.DONE, error: str = "") -> RunResult:
    return RunResult(tiny_config(), Path("out/runs") / name, status, error=error)


def wide_console() -> Console:
    return Console(file=io.StringIO(), width=300, force_terminal=True, color_system=None)


def rendered(console: Console, progress) -> list[str]:
    console.print(progress.get_renderable())
    return [" ".join(line.split()) for line in console.file.getvalue().splitlines()]


def test_one_live_line_per_running_run_and_the_grid_advances_by_epochs():
    console = wide_console()
    progress = progress_bars(console)
    reporter = RichReporter(progress, total=4)
    reporter.start_run("soft-seed0-k", 4)
    reporter.start_run("hard-seed0-k", 4)
    reporter.epoch("soft-seed0-k", 2, 0.5)
    reporter.epoch("hard-seed0-k", 1, 1.25)
    [grid] = [t for t in progress.tasks if t.description == "runs"]
    assert grid.completed == 0.75  # half of one run and a quarter of another
    lines = rendered(console, progress)
    assert any(line.startswith("soft-seed0-k") and "2/4 loss 0.500" in line for line in lines), lines
    assert any(line.startswith("hard-seed0-k") and "1/4 loss 1.250" in line for line in lines), lines
    reporter.end_run(result("soft-seed0-k"))
    reporter.epoch("soft-seed0-k", 4, 0.1)  # a late event of a saved run changes nothing
    assert [t.description.strip() for t in progress.tasks] == ["runs", "hard-seed0-k"]
    assert grid.completed == 1.25


def test_a_log_file_gets_one_line_per_epoch_and_run_then_n_of_n():
    console = Console(file=io.StringIO(), width=40, color_system=None)
    with showing(2, console) as reporter:  # not a terminal: plain lines
        assert isinstance(reporter, LogReporter)
        reporter.start_run("soft-seed0-k", 2)
        reporter.start_run("hard-seed0-k", 2)
        reporter.epoch("hard-seed0-k", 1, 0.5)
        reporter.epoch("soft-seed0-k", 1, 0.25)
        reporter.end_run(result("soft-seed0-k"))
        reporter.end_run(result("hard-seed0-k", Status.FAILED, "loss is nan"))
    assert console.file.getvalue().splitlines() == [
        "hard-seed0-k: epoch 1/2, training loss 0.5000", "soft-seed0-k: epoch 1/2, training loss 0.2500",
        "[1/2] done soft-seed0-k", "[2/2] failed hard-seed0-k: loss is nan"]


def test_the_summary_counts_in_words_and_names_where_tracking_went():
    assert summary([result("a", Status.REUSED)], "Next: x") == "1 run finished (1 reused), 0 failed. Next: x"
    two = [result("a"), result("b", Status.FAILED)]
    assert summary(two, "Next: x", ["MLflow out/mlflow.db", "TensorBoard out/tensorboard"]) == (
        "1 run finished (0 reused), 1 failed; tracked in MLflow out/mlflow.db, TensorBoard out/tensorboard. Next: x")
    assert summary([result("a"), result("b")], "Next: x").startswith("2 runs finished")


def test_statuses_print_as_words():
    assert str(Status.REUSED) == "reused" and repr(Status.REUSED) == "'reused'" and f"{Status.DONE}" == "done"
    assert "status='failed'" in repr(result("a", Status.FAILED))


class Heard:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def start_run(self, name: str, epochs: int) -> None:
        self.events.append(("start_run", name, epochs))

    def epoch(self, name: str, epoch: int, loss: float) -> None:
        self.events.append(("epoch", name, epoch, loss))

    def end_run(self, result: RunResult) -> None:
        self.events.append(("end_run", result.run_dir.name))


def test_a_workers_events_reach_the_drivers_reporter_in_order():
    queue = multiprocessing.get_context("spawn").SimpleQueue()
    worker = Events(queue)  # what a worker process reports through
    worker.start_run("soft-seed0-k", 3)
    worker.epoch("soft-seed0-k", 1, 0.75)
    worker.end_run(result("soft-seed0-k"))  # the driver reports saved runs itself
    heard = Heard()
    InProcesses(None, 1, queue, heard).relay()
    assert heard.events == [("start_run", "soft-seed0-k", 3), ("epoch", "soft-seed0-k", 1, 0.75)]
