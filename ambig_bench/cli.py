"""The command line. It only parses: all work happens in plain functions (runner, compare, ...).

$ ambig-bench run --dataset digits --strategy all --seeds 3 --epochs 20 --out results/demo
$ ambig-bench compare results/demo
$ ambig-bench strategies
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ambig_bench.config import RUN_FIELDS, ExperimentConfig, RunConfig, build_run_config, load_toml
from ambig_bench.datasets import BETWEEN_SOURCES, DATASETS
from ambig_bench.errors import RunFailed, UserError
from ambig_bench.strategies import STRATEGIES

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Benchmark training strategies for images that sit between two classes.")
err = Console(stderr=True)
out = Console()


def guarded(fn: Callable) -> Callable:
    """Bad input -> one line on stderr and exit 2; a failed run -> exit 1; Ctrl-C keeps finished runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except RunFailed as e:
            err.print(f"[red]run failed:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted: finished runs are kept; run the same command again to continue")
            raise typer.Exit(130) from None

    return wrapper


def field_help() -> dict[str, str]:
    """The comment after each RunConfig field is its help text (one source of truth)."""
    source = inspect.getsource(RunConfig)
    return {m[1]: m[2].strip() for m in re.finditer(r"^\s+(\w+): [^=]+=[^#\n]+#(.*?)$", source, re.M)}


def with_run_options(fn: Callable) -> Callable:
    """Add one --option per RunConfig field (strategy and seed excepted) to a command's signature.

    Defaults are None so we can tell what the user typed: typed values override the --config file.
    """
    helps = field_help()
    params = [p for p in inspect.signature(fn).parameters.values() if p.kind != p.VAR_KEYWORD]
    annotations = dict(fn.__annotations__)
    for name in RUN_FIELDS:
        if name in ("strategy", "seed"):
            continue
        kind = type(getattr(RunConfig(), name))
        flag = f"--{name.replace('_', '-')}"
        decls = [f"{flag}/--no-{name.replace('_', '-')}"] if kind is bool else [flag]
        option = typer.Option(None, *decls, help=helps.get(name, ""), show_default=False,
                              rich_help_panel="Run options")
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=kind | None))
        annotations[name] = kind | None
    fn.__signature__ = inspect.Signature(params)
    fn.__annotations__ = annotations
    return fn


def experiment_from(options: dict[str, Any], config: Path | None, strategy: str | None, seeds: int | None,
                    seed: int | None, out_dir: str | None, force: bool) -> ExperimentConfig:
    """Merge defaults < --config file < command line into an ExperimentConfig."""
    values = load_toml(config) if config else {}
    strategies = strategy or values.pop("strategies", None) or values.pop("strategy", "soft")
    if isinstance(strategies, list):
        strategies = ",".join(strategies)
    n_seeds = seeds if seeds is not None else int(values.pop("seeds", 3))
    result_dir = out_dir or str(values.pop("out", "results/demo"))
    values.pop("strategy", None)
    values.update({k: v for k, v in options.items() if v is not None})
    if seed is not None:
        values["seed"] = seed
    run = build_run_config(values)
    DATASETS.get(run.dataset)
    BETWEEN_SOURCES.get(run.between_source)
    from ambig_bench.models import MODELS

    MODELS.get(run.model)
    if n_seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {n_seeds}")
    return ExperimentConfig(run, STRATEGIES.parse_list(strategies), n_seeds, result_dir, force)


class RichReporter:
    """Progress bars on stderr: one for the grid, one for the epochs of the current run."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress = progress
        self.grid = progress.add_task("runs", total=total)
        self.current: Any = None

    def start_run(self, name: str, epochs: int) -> None:
        self.current = self.progress.add_task(f"  {name}", total=epochs)

    def epoch(self, epoch: int, loss: float) -> None:
        self.progress.update(self.current, completed=epoch, description=f"  loss {loss:.3f}")

    def end_run(self, result: Any) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current)
            self.current = None
        self.progress.advance(self.grid)
        if result.status == "failed":
            self.progress.console.print(f"[red]failed[/red] {result.run_dir.name}: {result.error}")


def progress_bars() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=False)


@app.command()
@guarded
@with_run_options
def run(
    strategy: str = typer.Option(None, "--strategy", "-s",
                                 help=f"Strategies: all, or a comma list of {', '.join(STRATEGIES.names())}"),
    seeds: int = typer.Option(None, help="Runs per strategy, seeds --seed .. --seed + seeds - 1 [default: 3]"),
    seed: int = typer.Option(None, help="First seed [default: 0]"),
    out_dir: str = typer.Option(None, "--out", "-o", help="Results directory [default: results/demo]"),
    config: Path = typer.Option(None, "--config", help="TOML experiment file; command-line options override it"),
    force: bool = typer.Option(False, "--force", help="Retrain runs that already finished"),
    **options: Any,
) -> None:
    """Train every (strategy, seed) of the grid and write one result directory per run."""
    from ambig_bench.runner import cached_prepare, grid, run_grid

    exp = experiment_from(options, config, strategy, seeds, seed, out_dir, force)
    cached_prepare(grid(exp)[0])  # bad data or pairs fail here, before any progress bar or file
    with progress_bars() as progress:
        results = run_grid(exp, RichReporter(progress, len(grid(exp))))
    failed = [r for r in results if r.status == "failed"]
    reused = sum(r.status == "reused" for r in results)
    err.print(f"{len(results) - len(failed)} runs finished ({reused} reused), {len(failed)} failed; "
              f"results in {exp.out}. Next: ambig-bench compare {exp.out}", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command()
@guarded
def compare(
    results_dir: Path = typer.Argument(..., help="A directory written by `ambig-bench run --out`"),
    baseline: str = typer.Option("soft", help="Reference strategy for the paired differences"),
) -> None:
    """Summarise a results directory: comparison.csv, comparison.md, paired.csv; prints the table."""
    from ambig_bench.compare import compare as do_compare
    from ambig_bench.compare import markdown_table, summary_display

    comparison = do_compare(results_dir, baseline)
    shown = summary_display(comparison.summary, comparison.group_by)
    err.print(f"wrote {results_dir / 'comparison.md'}, comparison.csv and paired.csv", highlight=False)
    if not out.is_terminal:  # piped: plain markdown, the same table as comparison.md
        print(markdown_table(shown))
        return
    table = Table(title=f"{results_dir}: mean ± 95% CI over seeds")
    for col in shown.columns:
        table.add_column(col, no_wrap=True)
    for row in shown.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    out.print(table)


def listing(title: str, items: dict[str, str]) -> None:
    table = Table(title=title, show_header=False, box=None)
    for name, text in items.items():
        table.add_row(f"[bold]{name}[/bold]", text)
    out.print(table)


@app.command()
def strategies() -> None:
    """List the registered strategies."""
    listing("strategies (--strategy)", STRATEGIES.describe())


@app.command()
def datasets() -> None:
    """List the registered datasets and in-between sources."""
    listing("datasets (--dataset)", DATASETS.describe())
    listing("in-between sources (--between-source)", BETWEEN_SOURCES.describe())


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
