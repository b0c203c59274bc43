"""The command line. It only parses: all work happens in plain functions (runner, compare, ...).

$ ambig-bench run --dataset digits --strategy all --seeds 3 --epochs 20 --out results/demo
$ ambig-bench compare results/demo
$ ambig-bench strategies
$ ambig-bench predict results/demo/runs/soft-seed0-<key> photos/ --format csv
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ambig_bench import options as run_options
from ambig_bench.config import ExperimentConfig, load_toml
from ambig_bench.datasets import BETWEEN_SOURCES, DATASETS
from ambig_bench.errors import RunFailed, UserError
from ambig_bench.models import MODELS
from ambig_bench.strategies import STRATEGIES

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Benchmark training strategies for images that sit between two classes.")
err = Console(stderr=True, soft_wrap=True)  # a long path stays on one line in logs
out = Console()


def guarded(fn: Callable) -> Callable:
    """Bad input -> one line on stderr and exit 2; a failed run -> exit 1; Ctrl-C keeps finished runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            # escape: a message may hold brackets (pip install 'ambig-bench[timm]') that rich would take as markup
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except RunFailed as e:
            err.print(f"[red]run failed:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted: finished runs are kept; run the same command again to continue")
            raise typer.Exit(130) from None

    return wrapper


STRATEGY_HELP = f"Strategies: all, or a comma list of {', '.join(STRATEGIES.names())}"
WHERE = "Where runs train"
# The options every grid command (run, sweep) shares besides the run options: name -> (type, typer option).
GRID_OPTIONS: dict[str, tuple[Any, Any]] = {
    "strategy": (str | None, typer.Option(None, "--strategy", "-s", help=STRATEGY_HELP)),
    "seeds": (int | None, typer.Option(None, help="Runs per strategy (and grid point), seeds --seed .. "
                                                  "--seed + seeds - 1 (default 3)")),
    "seed": (int | None, typer.Option(None, help="First seed (default 0)")),
    "out_dir": (str | None, typer.Option(None, "--out", "-o", help="Results directory (default results/demo)")),
    "config": (Path | None, typer.Option(None, "--config", help="TOML experiment file; command-line options "
                                                                "override it")),
    "force": (bool, typer.Option(False, "--force", help="Retrain runs that already finished")),
    "executor": (str, typer.Option("local", "--executor", rich_help_panel=WHERE,
                                   help="local: this machine (--jobs N processes); ray: Ray tasks, one GPU (or "
                                        "CPU) each (pip install 'ambig-bench\\[ray]')")),
    "jobs": (int, typer.Option(1, "--jobs", "-j", rich_help_panel=WHERE,
                               help="Runs trained at once by --executor local, each in its own process")),
    "ray_address": (str, typer.Option("", "--ray-address", rich_help_panel=WHERE,
                                      show_default="start a local Ray instance",
                                      help="Ray cluster to join, e.g. auto or ray://head:10001")),
}


PANELS = {"data": "Data options", "model": "Model and recipe", "train": "Training options",
          "runtime": "Where runs train"}


def with_run_options(fn: Callable) -> Callable:
    """Add the grid options and one --option per run option (strategy and seed excepted) to a command; the help
    is each config field's `help` metadata, grouped in panels by what reads the option.

    Run-option defaults are None so we can tell what the user typed: typed values override the --config file.
    """
    params = [p for p in inspect.signature(fn).parameters.values() if p.kind != p.VAR_KEYWORD]
    annotations = dict(fn.__annotations__)
    for name, (kind, option) in GRID_OPTIONS.items():
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind))
        annotations[name] = kind
    for name, opt in run_options.table().items():
        if name in run_options.IDENTITY:
            continue
        flag = f"--{name.replace('_', '-')}"
        decls = [f"{flag}/--no-{name.replace('_', '-')}"] if opt.kind is bool else [flag]
        panel = PANELS.get(opt.panel, "In-between sources")
        option = typer.Option(None, *decls, help=opt.help, show_default=False, rich_help_panel=panel)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=opt.kind | None))
        annotations[name] = opt.kind | None
    fn.__signature__ = inspect.Signature(params)
    fn.__annotations__ = annotations
    return fn


def experiment_from(options: dict[str, Any]) -> ExperimentConfig:
    """Merge defaults < --config file < command line into an ExperimentConfig (grid options popped)."""
    config, strategy, seeds, seed = (options.pop(k) for k in ("config", "strategy", "seeds", "seed"))
    out_dir, force = options.pop("out_dir"), options.pop("force")
    values = load_toml(config) if config else {}
    where = f"{config}: " if config else ""
    file_strategies = values.pop("strategies", None) or values.pop("strategy", "soft")
    values.pop("strategy", None)
    if isinstance(file_strategies, list) and all(isinstance(s, str) for s in file_strategies):
        file_strategies = ",".join(file_strategies)
    if not isinstance(file_strategies, str):
        raise UserError(f"{where}'strategies' must be a list of strategy names, got {file_strategies!r}")
    file_seeds, file_out = values.pop("seeds", 3), values.pop("out", "results/demo")
    if isinstance(file_seeds, bool) or not isinstance(file_seeds, int):
        raise UserError(f"{where}'seeds' must be an integer, got {file_seeds!r}")
    if not isinstance(file_out, str):
        raise UserError(f"{where}'out' must be a directory path, got {file_out!r}")
    n_seeds = seeds if seeds is not None else file_seeds
    values.update({k: v for k, v in options.items() if v is not None})
    if seed is not None:
        values["seed"] = seed
    run = run_options.build(values)
    if n_seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {n_seeds}")
    strategies, result_dir = strategy or file_strategies, out_dir or file_out
    return ExperimentConfig(run, STRATEGIES.parse_list(strategies), n_seeds, result_dir, force, values)


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


class LogReporter:
    """Progress as plain lines when stderr is a log file rather than a terminal (nohup, CI): one per epoch and run."""

    def __init__(self, total: int) -> None:
        self.total, self.finished, self.name, self.epochs = total, 0, "", 0

    def start_run(self, name: str, epochs: int) -> None:
        self.name, self.epochs = name, epochs

    def epoch(self, epoch: int, loss: float) -> None:
        err.print(f"{self.name}: epoch {epoch}/{self.epochs}, training loss {loss:.4f}", markup=False,
                  highlight=False)

    def end_run(self, result: Any) -> None:
        self.finished += 1
        detail = f": {result.error}" if result.status == "failed" else ""
        err.print(f"[{self.finished}/{self.total}] {result.status} {result.run_dir.name}{detail}", markup=False,
                  highlight=False)


def progress_bars() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=False)


def train_grid(options: dict[str, Any], configs_of: Callable, train: Callable) -> tuple[ExperimentConfig, Any]:
    """Build the experiment, check everything, then train its runs on the chosen executor with progress bars.

    `configs_of(exp)` lists the runs (checked before anything is written); `train(exp, reporter, executor)`
    trains them and returns its result.
    """
    from ambig_bench.executors import open_executor, preflight

    where = {k: options.pop(k) for k in ("executor", "jobs", "ray_address")}
    exp = experiment_from(options)
    configs = configs_of(exp)
    with open_executor(where["executor"], where["jobs"], where["ray_address"]) as runs_on:
        notes = preflight(configs, runs_on)  # bad options, device, data or weights fail here, before any file
        try:
            (Path(exp.out) / "runs").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {exp.out}: cannot create the results directory ({e.strerror})") from None
        for note in notes:
            err.print(note, markup=False, highlight=False, soft_wrap=True)
        if not err.is_terminal:
            return exp, train(exp, LogReporter(len(configs)), runs_on)
        with progress_bars() as progress:
            return exp, train(exp, RichReporter(progress, len(configs)), runs_on)


def summarise_runs(results: list, next_step: str) -> None:
    """One line on stderr; exit code 1 when any run failed."""
    failed = sum(r.status == "failed" for r in results)
    reused = sum(r.status == "reused" for r in results)
    err.print(f"{len(results) - failed} runs finished ({reused} reused), {failed} failed; {next_step}",
              highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command()
@guarded
@with_run_options
def run(**options: Any) -> None:
    """Train every (strategy, seed) of the grid and write one result directory per run."""
    from ambig_bench.executors import grid, run_grid

    exp, results = train_grid(options, grid, run_grid)
    summarise_runs(results, f"results in {exp.out}. Next: ambig-bench compare {exp.out}")


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


@app.command()
@guarded
@with_run_options
def sweep(
    vary: list[str] = typer.Option(..., "--vary", help="OPTION=V1,V2,...: a run option and its values, e.g. "
                                   "between-fraction=0.01,0.05,0.2; repeat for a grid (overrides --OPTION)"),
    **options: Any,
) -> None:
    """Train the grid at every combination of the --vary values; draw each metric against them (sweep-*.png)."""
    from ambig_bench.sweep import parse_vary, run_sweep, sweep_configs

    vary_values = parse_vary(vary)
    # Every grid point is validated (sweep_configs) before anything is written.
    exp, result = train_grid(options, lambda exp: sweep_configs(exp, vary_values),
                             lambda exp, reporter, runs_on: run_sweep(exp, vary_values, reporter, runs_on))
    figures = ", ".join(str(p) for p in result.figures) or "none"
    summarise_runs(result.runs, f"figures: {figures}. Next: ambig-bench report {exp.out}")


@app.command()
@guarded
def report(
    results_dir: Path = typer.Argument(..., help="A directory written by `ambig-bench run` or `ambig-bench sweep`"),
    baseline: str = typer.Option("soft", help="Reference strategy for the paired differences and trade-offs"),
    margin: float = typer.Option(0.02, help="Equivalence margin (accuracy, absolute) for the "
                                 "'equivalent asymptotically' claim"),
) -> None:
    """Write report.md, a self-contained report.html and figures/: what differs, by how much, how surely."""
    from ambig_bench.report import report as write_report

    built = write_report(results_dir, baseline, margin)
    err.print(f"wrote {results_dir / 'report.md'}, {results_dir / 'report.html'} and {len(built.figures)} "
              f"figures in {results_dir / 'figures'}", highlight=False)
    print("\n".join(built.summary_lines()))


@app.command()
@guarded
def predict(
    run_dir: Path = typer.Argument(..., help="A run directory: <results>/runs/<strategy>-seed<seed>-<key>"),
    images: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)"),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
    alpha: float = typer.Option(0.1, help="Conformal sets miss a true label for at most this share of images"),
    conformal: str = typer.Option("lac", help="Conformal score: lac (smallest sets) | aps"),
    per_kind: bool = typer.Option(True, "--per-kind/--marginal",
                                  help="Cover 1 - alpha of clear-cut and of in-between images each (default), "
                                       "or only on average over the validation mix"),
) -> None:
    """Classify new images: 'A', or 'A or B' when in between, with a conformal set.

    Exit 1: some files failed; 2: none could be read.
    """
    from ambig_bench.predict import check_format, predict_paths, render

    check_format(fmt)
    report = predict_paths(run_dir, images, alpha, conformal, per_kind)
    for line in report.warnings():
        err.print(f"[yellow]warning:[/yellow] {line}", highlight=False, soft_wrap=True)
    for failed in report.failed:
        err.print(f"[red]error:[/red] {failed.path}: {failed.error}", highlight=False, soft_wrap=True)
    shown = render(report, fmt)
    if isinstance(shown, str):
        print(shown, end="")
    else:
        out.print(shown)
    raise typer.Exit(report.exit_code)


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
def models() -> None:
    """List the registered models: input size, what they are and their default recipe (each field an option)."""
    table = Table(title="models (--model); recipe fields are options (--lr, --batch-size, ...)",
                  caption="also timm:<architecture>, any timm classifier (pip install 'ambig-bench\\[timm]')")
    for column in ("model", "input size", "description", "default recipe"):
        table.add_column(column, overflow="fold")
    for name, text in MODELS.describe().items():
        factory = MODELS.get(name)
        size = f"{factory.input_size}x{factory.input_size} RGB" if factory.input_size else "any"
        recipe = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in factory.recipe.items())
        table.add_row(name, size, text, recipe)
    out.print(table)


@app.command()
def datasets() -> None:
    """List the registered datasets and in-between sources."""
    listing("datasets (--dataset)", DATASETS.describe())
    listing("in-between sources (--between-source)", BETWEEN_SOURCES.describe())


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
