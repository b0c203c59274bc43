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
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ambig_bench.catalogue import catalogue
from ambig_bench.config import ExperimentConfig
from ambig_bench.errors import TERMINATED, RunFailed, UserError, stop_on_sigterm
from ambig_bench.experiments import experiment
from ambig_bench.shown import shown

# Only light modules are imported here: --help, the listings and argument errors answer without torch, pandas or
# matplotlib (the catalogue describes the registries); each command imports what its work needs.
app = typer.Typer(no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
                  help="Benchmark training strategies for images that sit between two classes.")
err = Console(stderr=True, soft_wrap=True)  # a long path stays on one line in logs
out = Console()


def say(label: str, style: str, message: object) -> None:
    """One line on stderr: a coloured label, then `message` as plain text (file names may hold `[/x]`), its
    control characters escaped (`shown`)."""
    err.print(Text.assemble((label, style), " ", shown(message)), highlight=False, soft_wrap=True)


def guarded(fn: Callable) -> Callable:
    """Bad input -> one line on stderr and exit 2; a failed run or an OS error (disk full) -> exit 1; Ctrl-C
    and SIGTERM keep finished runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        TERMINATED.clear()
        stop_on_sigterm()
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            say("error:", "red", e)
            raise typer.Exit(2) from None
        except RunFailed as e:
            say("run failed:", "red", e)
            raise typer.Exit(1) from None
        except OSError as e:  # disk full, permissions changed underneath us, a drive unplugged
            where = f"{e.filename}: " if e.filename else ""
            say("error:", "red", f"{where}{e.strerror or e}; every file is written whole or not at all, so finished "
                                 f"work is kept: free the space (or fix the cause) and run the same command again")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted: finished runs are kept; run the same command again to continue")
            raise typer.Exit(143 if TERMINATED.is_set() else 130) from None

    return wrapper


STRATEGY_HELP = f"Strategies: all, or a comma list of {', '.join(catalogue()['strategies'])}"
KINDS = {"bool": bool, "int": int, "float": float, "str": str}
WHERE = "Where runs train"
# The options every grid command (run, sweep) shares besides the run options: name -> (type, typer option).
GRID_OPTIONS: dict[str, tuple[Any, Any]] = {
    "strategy": (str | None, typer.Option(None, "--strategy", "-s", help=STRATEGY_HELP)),
    "seeds": (int | None, typer.Option(None, help="Runs per strategy (and grid point), seeds --seed .. "
                                                  "--seed + seeds - 1 (default 3)")),
    "seed": (int | None, typer.Option(None, help="First seed (default 0)")),
    "out_dir": (str | None, typer.Option(None, "--out", "-o", help="Results directory (default results/DATASET)")),
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
    "track": (str, typer.Option("", "--track", rich_help_panel=WHERE, show_default=False,
                                help="Log each run trained now to mlflow ($MLFLOW_TRACKING_URI, default "
                                     "sqlite:///OUT/mlflow.db) and/or tensorboard (OUT/tensorboard/), e.g. "
                                     "--track mlflow,tensorboard (pip install 'ambig-bench\\[mlflow]' or "
                                     "'ambig-bench\\[tensorboard]')")),
    "verbose": (bool, typer.Option(False, "--verbose", "-v", rich_help_panel=WHERE,
                                   help="Let the tracking libraries' own log lines through (MLflow, TensorBoard)")),
}


PANELS = {"data": "Data options", "model": "Model and recipe", "train": "Training options",
          "strategy_options": "Strategy options", "runtime": "Where runs train"}


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
    for opt in catalogue()["options"]:
        name, kind = opt["flag"], KINDS[opt["kind"]]
        # The "run" panel holds a run's identity, strategy and seed: they are grid options here (--strategy takes
        # a list, --seed is the first of --seeds).
        if opt["panel"] == "run":
            continue
        flag = f"--{name.replace('_', '-')}"
        decls = [f"{flag}/--no-{name.replace('_', '-')}"] if kind is bool else [flag]
        panel = PANELS.get(opt["panel"], "In-between sources")
        option = typer.Option(None, *decls, help=opt["help"], show_default=False, rich_help_panel=panel)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind | None))
        annotations[name] = kind | None
    fn.__signature__ = inspect.Signature(params)
    fn.__annotations__ = annotations
    return fn


def experiment_from(options: dict[str, Any]) -> ExperimentConfig:
    """Merge defaults < --config file < command line into an ExperimentConfig (grid options popped)."""
    grid_options = {k: options.pop(k) for k in ("config", "strategy", "seeds", "seed", "out_dir", "force")}
    return experiment(grid_options["config"], strategies=grid_options["strategy"], seeds=grid_options["seeds"],
                      seed=grid_options["seed"], out=grid_options["out_dir"], force=grid_options["force"], **options)


GRID_ONLY = ("executor", "jobs", "ray_address", "track", "verbose")  # where and how runs train, not what they are


def train_grid(options: dict[str, Any], plan: Callable) -> tuple[ExperimentConfig, Any, list[str]]:
    """Build the experiment, check everything, then train its runs on the chosen executor, showing progress.

    `plan(exp)` gives the runs (checked before anything is written) and `train(reporter, executor)`, which trains
    them and returns its result. Options are checked first, so a typo is reported before torch is imported.
    Returns the experiment, the result and where the runs were tracked.
    """
    where = {k: options.pop(k) for k in GRID_ONLY}
    exp = experiment_from(options)
    from ambig_bench.api import session
    from ambig_bench.progress import showing

    configs, train = plan(exp)
    # Bad options, device, data or trackers fail here, before any progress bar or file.
    with session(exp, configs, **where) as s:
        for note in s.notes:  # e.g. which in-between source `auto` chose
            err.print(shown(note), markup=False, highlight=False, soft_wrap=True)
        err.print(shown(f"results go to {exp.out}"), highlight=False, markup=False, soft_wrap=True)
        with showing(len(configs), err) as reporter:
            return exp, train(s.reporter(reporter), s.executor), s.tracked


def summarise_runs(results: list, next_step: str, tracked: list[str]) -> None:
    """The closing line on stderr; exit code 1 when any run failed."""
    from ambig_bench.progress import summary

    err.print(shown(summary(results, next_step, tracked)), markup=False, highlight=False, soft_wrap=True)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


@app.command()
@guarded
@with_run_options
def run(**options: Any) -> None:
    """Train every (strategy, seed) of the grid and write one result directory per run."""

    def plan(exp: ExperimentConfig) -> tuple[list, Callable]:
        from ambig_bench.executors import grid, run_grid

        return grid(exp), functools.partial(run_grid, exp)

    exp, results, tracked = train_grid(options, plan)
    summarise_runs(results, f"Next: ambig-bench compare {exp.out}", tracked)


def typed_flag(name: str) -> str:
    """A grid or run option's flag as typed: --out for out_dir, --name-with-dashes for the rest."""
    declared = GRID_OPTIONS[name][1].param_decls if name in GRID_OPTIONS else ()
    return next(iter(declared), f"--{name.replace('_', '-')}")


def option_default(name: str) -> Any:
    """A grid option's default; None for a run option (with_run_options: None = not typed)."""
    return GRID_OPTIONS[name][1].default if name in GRID_OPTIONS else None


@app.command()
@guarded
@with_run_options
def pairs(top: int = typer.Option(10, help="Pairs printed (pairs.csv holds them all)"),
          results: Path | None = typer.Option(None, "--results", help="A results directory: for each pair its runs "
                                              "trained with, whether to keep A and B apart, merge them or add an "
                                              "extra class, with the evidence (reads the runs, trains nothing)"),
          **options: Any) -> None:
    """Find the confusable class pairs: from votes when the data have them, else from a reference network's
    out-of-fold predictions. Prints the ranked table; writes pairs.csv into --out. With --results: the design
    advice for the pairs a results directory's runs trained with."""
    from ambig_bench.document import markdown_table
    from ambig_bench.pairs import advise, check_alone, check_top, find, top_rows

    check_top(top)
    if results is not None:
        check_alone([typed_flag(name) for name, value in options.items() if value != option_default(name)])
        with skipped_runs_said():
            table, baseline = advise(results)
        err.print(f"pair design from the runs of {shown(results)} (pairwise accuracy of {shown(baseline)}'s runs); "
                  "the rules and thresholds are in the report's section Pair design", highlight=False, markup=False)
        print(markdown_table(table.head(top)))
        return
    for grid_only in GRID_ONLY:  # nothing is trained into --out here
        options.pop(grid_only)
    exp = experiment_from(options)
    found = find(exp.run, exp.out)
    evidence = "human votes" if found.evidence == "votes" else "a reference network's out-of-fold predictions"
    err.print(shown(f"from {evidence}; wrote {found.path}. --pairs auto picks {found.auto}"), highlight=False,
              markup=False)
    print(markdown_table(top_rows(found, top)))


@contextmanager
def skipped_runs_said() -> Iterator[None]:
    """One `warning:` line per run that compare or report skipped as damaged (analysis.SkippedRun), once the
    comparison is made; other warnings pass on as they were."""
    from ambig_bench.analysis import SkippedRun

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedRun)
        yield
    for found in caught:
        if issubclass(found.category, SkippedRun):
            say("warning:", "yellow", found.message)
        else:
            warnings.showwarning(found.message, found.category, found.filename, found.lineno)


MARGIN_HELP = ("The difference too small to matter, per metric: one number for every accuracy (0.01), or "
               "METRIC=VALUE,... (clear_acc=0.01,ece=0.005); below it a significant difference is negligible, and "
               "inside it two one-sided tests can show equivalence")
MARGIN_DEFAULT = "accuracies 0.02, ece 0.01, nll and human_ce 0.05 nats, other fractions 0.02"


@app.command()
@guarded
def compare(
    results_dir: Path = typer.Argument(..., help="A directory written by `ambig-bench run --out`"),
    baseline: str = typer.Option(None, help="Reference strategy for the paired differences", show_default="soft"),
    wide: bool = typer.Option(False, "--wide", help="Print every metric with its 95% CI (the files always have them)"),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json: the summary, paired tests and ranks "
                            "as JSON on stdout"),
    margin: str = typer.Option(None, help=MARGIN_HELP, show_default=MARGIN_DEFAULT),
) -> None:
    """Summarise a results directory: comparison.csv, comparison.md, paired.csv; prints the main table."""
    from ambig_bench.compare import (
        BETTER,
        WORSE,
        check_compare_format,
        comparison_json,
        headline,
        markdown_table,
        summary_display,
    )
    from ambig_bench.compare import compare as do_compare

    check_compare_format(fmt)
    with skipped_runs_said():
        comparison = do_compare(results_dir, baseline, margin)
    err.print(shown(f"wrote {results_dir / 'comparison.md'}, comparison.csv, paired.csv and paired_images.csv"),
              highlight=False, markup=False)
    if fmt == "json":
        print(comparison_json(comparison), end="")
        return
    if wide:  # every metric with its CI is wider than any terminal: markdown, which wraps without losing cells
        print(markdown_table(summary_display(comparison.summary, comparison.group_by)))
        return
    table, lines = headline(comparison)
    legend = (f"{BETTER} / {WORSE}: significantly better / worse than {comparison.baseline} by at least the "
              "metric's margin (paired test across seeds, Holm, 5%); means over seeds, 95% CIs in comparison.md")
    if not out.is_terminal:  # piped: plain markdown
        print(markdown_table(table) + "\n\n" + "\n".join([legend, *lines]))
        return
    rendered = Table(title=Text(shown(results_dir)), box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for col in table.columns:
        # Two-line headers keep the table inside 80 columns: "between_set_acc" -> "between / set_acc".
        rendered.add_column(escape(col.replace("_", "\n", 1)), overflow="fold")
    for row in table.itertuples(index=False):
        rendered.add_row(*(escape(shown(v)) for v in row))
    out.print(rendered)
    for line in [legend, *lines]:
        out.print(shown(line), markup=False, highlight=False)


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
    exp, result, tracked = train_grid(options, lambda exp: (sweep_configs(exp, vary_values),
                                                            functools.partial(run_sweep, exp, vary_values)))
    figures = ", ".join(str(p) for p in result.figures) or "none"
    summarise_runs(result.runs, f"Figures: {figures}. Next: ambig-bench report {exp.out}", tracked)


@app.command()
@guarded
def report(
    results_dir: Path = typer.Argument(..., help="A directory written by `ambig-bench run` or `ambig-bench sweep`"),
    baseline: str = typer.Option(None, help="Reference strategy for the paired differences and trade-offs",
                                 show_default="soft"),
    margin: str = typer.Option(None, help=MARGIN_HELP, show_default=MARGIN_DEFAULT),
) -> None:
    """Write report.md, a self-contained report.html and figures/: what differs, by how much, how surely."""
    from ambig_bench.report import report as write_report

    with skipped_runs_said():
        built = write_report(results_dir, baseline, margin)
    err.print(shown(f"wrote {results_dir / 'report.md'}, {results_dir / 'report.html'} and {len(built.figures)} "
                    f"figures in {results_dir / 'figures'}"), markup=False, highlight=False)
    print("\n".join(map(shown, built.summary_lines())))


# The conformal options that predict and export share beside --alpha, --conformal and --per-kind/--marginal.
# The options `predict` and `export` share: a run, and how its conformal sets are calibrated.
RUN_DIR = typer.Argument(..., help="A run directory: <results>/runs/<strategy>-seed<seed>-<key>")
CONFORMAL_ALPHA = typer.Option(0.1, "--alpha", help="Conformal sets miss a true label for at most this share of images")
CONFORMAL_SCORE = typer.Option("lac", "--conformal",
                               help="Conformal score: lac (smallest sets) | aps | raps (APS, tail cut)")
CONFORMAL_PER_KIND = typer.Option(True, "--per-kind/--marginal",
                                  help="Cover 1 - alpha of clear-cut and of in-between images each (default), or only "
                                       "on average over the validation mix")
CONFORMAL_GROUPS = typer.Option("kind", "--conformal-groups",
                                help="kind: one threshold (with --per-kind, clear-cut and in-between images each "
                                     "covered) | class: one per class, each class's labels covered")
CONFORMAL_TRUTH = typer.Option("sets", "--conformal-truth",
                               help="sets: calibrate on the label sets (A and B both for in-between images) | "
                                    "votes: on labels drawn from the images' votes (runs on images with votes)")


@app.command()
@guarded
def predict(
    run_dir: Path = RUN_DIR,
    images: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)"),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
    alpha: float = CONFORMAL_ALPHA,
    conformal: str = CONFORMAL_SCORE,
    per_kind: bool = CONFORMAL_PER_KIND,
    groups: str = CONFORMAL_GROUPS,
    truth: str = CONFORMAL_TRUTH,
) -> None:
    """Classify new images: 'A', or 'A or B' when in between, with a conformal set.

    Exit 1: some files failed; 2: none could be read.
    """
    from ambig_bench.predict import check_format, predict_paths, render

    check_format(fmt)
    report = predict_paths(run_dir, images, alpha, conformal, per_kind, groups=groups, truth=truth)
    for line in report.warnings():
        say("warning:", "yellow", line)
    for failed in report.failed:
        say("error:", "red", f"{failed.path}: {failed.error}")
    rendered = render(report, fmt)
    if isinstance(rendered, str):
        print(rendered, end="")
    else:
        if rendered.min_width and rendered.min_width > out.width:  # wider than the terminal rather than a file
            rendered.width = rendered.min_width  # name cut (predict.to_table); the terminal wraps lines whole
        out.print(rendered, crop=False)
    raise typer.Exit(report.exit_code)


@app.command()
@guarded
def export(
    run_dir: Path = RUN_DIR,
    to: Path | None = typer.Option(None, "--out", "-o", help="The file to write (default: <run name>.onnx here)"),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx (the only format)"),
    alpha: float = CONFORMAL_ALPHA,
    conformal: str = CONFORMAL_SCORE,
    per_kind: bool = CONFORMAL_PER_KIND,
    groups: str = CONFORMAL_GROUPS,
    truth: str = CONFORMAL_TRUTH,
) -> None:
    """Write a run as one ONNX graph (network, decoding, conformal sets), checked against the run before it is kept."""
    if fmt != "onnx":
        raise UserError(f"--format {fmt!r}: export writes onnx only")
    from ambig_bench.export import export_onnx

    exported = export_onnx(run_dir, to or Path(f"{run_dir.name}.onnx"), alpha, conformal, per_kind, groups, truth)
    say("wrote", "green", f"{exported.path}: checked with onnxruntime on {exported.checked} images against the run "
                          f"(largest probability difference {exported.max_prob_difference:.1g}; every set the same)")


@app.command()
@guarded
def suggest(
    source: Path = typer.Argument(..., help="A results directory (every finished run votes) or one run directory"),
    images: list[Path] = typer.Argument(..., help="Image files and/or folders to rank (searched recursively)"),
    top: int = typer.Option(20, min=0, help="Images listed, most in-between first (0: all)"),
    strategy: str | None = typer.Option(None, "--strategy", "-s", help="Only these strategies' runs (comma list)"),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
) -> None:
    """Which images to label next: rank images by how in-between the trained runs find them, with the pair."""
    from ambig_bench.suggest import render
    from ambig_bench.suggest import suggest as rank_images

    found = rank_images(source, images, [s.strip() for s in strategy.split(",")] if strategy else ())
    for path, why in found.unreadable.items():
        say("warning:", "yellow", f"{path}: skipped ({why})")
    rendered = render(found, fmt, top)
    if isinstance(rendered, str):
        print(rendered, end="")
    else:
        out.print(rendered)


def listing(title: str, items: dict[str, str]) -> None:
    table = Table(title=title, show_header=False, box=None)
    for name, text in items.items():
        table.add_row(f"[bold]{name}[/bold]", text)
    out.print(table)


@app.command()
def strategies() -> None:
    """List the registered strategies."""
    listing("strategies (--strategy)", catalogue()["strategies"])


@app.command()
def models() -> None:
    """List the registered models: input size, what they are and their default recipe (each field an option)."""
    table = Table(title="models (--model); recipe fields are options (--lr, --batch-size, ...)",
                  caption="also timm:<architecture>, any timm classifier (pip install 'ambig-bench\\[timm]')")
    for column in ("model", "input size", "description", "default recipe"):
        table.add_column(column, overflow="fold")
    for name, model in catalogue()["models"].items():
        size = f"{model['input_size']}x{model['input_size']} RGB" if model["input_size"] else "any"
        recipe = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in model["recipe"].items())
        table.add_row(name, size, model["description"], recipe)
    out.print(table)


@app.command()
def datasets() -> None:
    """List the registered datasets and in-between sources."""
    listing("datasets (--dataset)", catalogue()["datasets"])
    listing("in-between sources (--between-source)", catalogue()["sources"])


@app.command("cache")
@guarded
def cache_command(clear: bool = typer.Option(False, "--clear", help="Remove what ambig-bench wrote there (decoded "
                                              "images, features, downloads); nothing else in the folder")) -> None:
    """Where the cache is ($AMBIG_BENCH_CACHE, else ~/.cache/ambig-bench) and what it holds; --clear empties it."""
    from ambig_bench import cache

    held = {kind: (len(paths), sum(map(cache.size, paths))) for kind, paths in cache.contents().items()}
    if clear:
        freed = cache.clear()
        say("cache:", "green", f"{cache.directory()}: removed {sum(n for n, _ in held.values())} entries, "
                               f"{freed / 2**20:.1f} MiB")
        return
    table = Table(title=f"cache: {shown(cache.directory())}", title_justify="left")
    for column in ("kind", "entries", "MiB"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for kind, (n, size) in held.items():
        table.add_row(kind, str(n), f"{size / 2**20:.1f}")
    table.add_row("total", str(sum(n for n, _ in held.values())), f"{sum(b for _, b in held.values()) / 2**20:.1f}")
    out.print(table)


def main() -> int:
    """The console entry point. Usage errors (an unknown option, a value of the wrong type) are one line, like every
    other error, instead of click's framed box; `--help` and the commands' own exit codes pass through."""
    try:
        return app(standalone_mode=False) or 0
    except Exception as e:
        # typer ships its own copy of click, so its usage errors are recognised by name.
        kinds = {kind.__name__ for kind in type(e).__mro__}
        if "UsageError" not in kinds:
            raise
        if "NoArgsIsHelpError" in kinds:  # plain `ambig-bench`: the help was the answer
            return e.exit_code
        command = f" {e.ctx.command_path}" if getattr(e, "ctx", None) else ""
        say("error:", "red", f"{e.format_message()} (see ambig-bench{command.removeprefix(' ambig-bench')} --help)")
        return 2


if __name__ == "__main__":
    sys.exit(main())
