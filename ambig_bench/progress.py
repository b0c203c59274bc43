"""Progress of a grid for a person: live bars in a terminal or a notebook, plain lines in a log file, and the
closing summary. The CLI and the Python API (`ab.run(..., progress=True)`, the default) show the same.

Live (Rich, a terminal or Jupyter): the grid's bar with time remaining, and one line per running run with its
epoch and training loss, whatever the executor (--jobs N workers send their epochs to the driver). A log file
(stderr is not a terminal): one line per epoch and run, then `[n/N] done <run>`.

>>> with showing(total=4) as reporter:  # doctest: +SKIP
...     results = run_grid(exp, reporter)
>>> print(summary(results, "Next: ambig-bench compare results/demo"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ambig_bench.runner import Reporter
from ambig_bench.shown import shown
from ambig_bench.store import RunResult, Status


class RichReporter:
    """The grid's bar, advanced by each epoch of each running run (so its time remaining moves while runs train),
    and one bar per running run: `name  epoch/epochs  loss`."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress, self.finished = progress, 0
        self.grid = progress.add_task("runs", total=total, loss="")
        self.running: dict[str, tuple[TaskID, int, float]] = {}  # name -> (its bar, epochs, share of them done)

    def start_run(self, name: str, epochs: int) -> None:
        self.running[name] = self.progress.add_task(f"  {shown(name)}", total=epochs, loss=""), epochs, 0.0

    def epoch(self, name: str, epoch: int, loss: float) -> None:
        if name not in self.running:  # a worker's last epoch arriving after its run was saved
            return
        task, epochs, _ = self.running[name]
        self.progress.update(task, completed=epoch, loss=f"loss {loss:.3f}")
        self.running[name] = task, epochs, epoch / max(epochs, 1)
        self.update_grid()

    def end_run(self, result: RunResult) -> None:
        if (running := self.running.pop(result.run_dir.name, None)) is not None:
            self.progress.remove_task(running[0])
        self.finished += 1
        self.update_grid()
        if result.status == Status.FAILED:
            self.progress.console.print(Text.assemble(("failed", "red"), f" {shown(result.run_dir.name)}: "
                                                                         f"{shown(result.error)}"))

    def update_grid(self) -> None:
        self.progress.update(self.grid, completed=self.finished + sum(done for *_, done in self.running.values()))


class LogReporter:
    """Plain lines for a log file (nohup, CI, a script's redirected stderr): one per epoch and run, one per run
    finished."""

    def __init__(self, console: Console, total: int) -> None:
        self.console, self.total, self.finished, self.epochs = console, total, 0, {}

    def start_run(self, name: str, epochs: int) -> None:
        self.epochs[name] = epochs

    def epoch(self, name: str, epoch: int, loss: float) -> None:
        self.line(f"{shown(name)}: epoch {epoch}/{self.epochs.get(name, '?')}, training loss {loss:.4f}")

    def end_run(self, result: RunResult) -> None:
        self.finished += 1
        self.epochs.pop(result.run_dir.name, None)
        detail = f": {shown(result.error)}" if result.status == Status.FAILED else ""
        self.line(f"[{self.finished}/{self.total}] {result.status} {shown(result.run_dir.name)}{detail}")

    def line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


def progress_bars(console: Console) -> Progress:
    # markup=False: a run's name is shown as the text it is (it may hold `[/x]`).
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[loss]}", markup=False), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console)


@contextmanager
def showing(total: int, console: Console | None = None) -> Iterator[Reporter]:
    """A reporter for `total` runs on `console` (default stderr): live bars in a terminal or a notebook, else
    plain lines."""
    console = console or Console(stderr=True, soft_wrap=True)
    if not (console.is_terminal or console.is_jupyter):
        yield LogReporter(console, total)
        return
    with progress_bars(console) as progress:
        yield RichReporter(progress, total)


def summary(results: Sequence[Any], next_step: str, tracked: Sequence[str] = ()) -> str:
    """The closing line: runs finished, reused and failed, where tracking went, what to do next."""
    failed = sum(r.status == Status.FAILED for r in results)
    reused = sum(r.status == Status.REUSED for r in results)
    finished = len(results) - failed
    line = f"{finished} run{'' if finished == 1 else 's'} finished ({reused} reused), {failed} failed"
    if tracked:
        line += f"; tracked in {', '.join(tracked)}"
    return f"{line}. {next_step}"
