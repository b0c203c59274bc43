"""The report: turn a results directory into an answer to "what are the pros and cons of each option?".

Writes report.md, a self-contained report.html (figures embedded as base64) and figures/*.png: the setup
(from each run's config.json, data.json, env.json), compare's tables, the figures, and a section "What this
means for your options" in which every sentence is backed by a paired test (nothing is called best, better
or equivalent unless the statistics say so: better only by at least the metric's margin, equivalent by two one-sided
tests, undecided with the data that would decide it; no winner from runs that had not converged). The three
common claims about in-between examples are judged
on a sweep of between-fraction (see `ambig-bench sweep`) by the rules written into the report itself.
The report is one ambig_bench.document: the markdown is rendered from its blocks, the HTML from that markdown.

$ ambig-bench report results/demo
$ ambig-bench report results/sweep --baseline soft --margin clear_acc=0.01,ece=0.005

>>> built = report("results/demo")  # doctest: +SKIP
>>> built.summary_lines()[0]  # doctest: +SKIP
'in-between accuracy: extra-class is better by 0.150 [0.146, 0.154]'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ambig_bench.analysis import DEFAULT, Comparison, analyse, better, parse_margins, select, split_groups, worse
from ambig_bench.claims import (
    ALPHA,
    Judgement,
    claim_rules,
    distinct,
    judge_alternatives,
    judge_claims,
    seeds_needed,
    slug,
    sweep_command,
    where_label,
)
from ambig_bench.compare import CELLS, ONE_STRATEGY, flag, flag_blocks, glossary, margins_text, sections, tabulate
from ambig_bench.design import design_blocks
from ambig_bench.document import (
    Block,
    Bullets,
    Heading,
    Image,
    Paragraph,
    Table,
    code,
    escape,
    to_html,
    to_markdown,
)
from ambig_bench.errors import UserError
from ambig_bench.io import remove_stale_temps, write_atomic
from ambig_bench.labelcurve import FIELD, label_curve
from ambig_bench.metrics import HIGHER_IS_BETTER, METRICS
from ambig_bench.plots import (
    balance_histograms,
    label_curve_figure,
    metric_bars,
    pair_confusion,
    png_bytes,
    reliability_diagrams,
    strategy_styles,
    sweep_figure,
    tradeoff_scatter,
)
from ambig_bench.stats import POWER, min_holm_p
from ambig_bench.verdicts import CRITERIA, leads

# shown in the setup table
TRAINING = ["epochs", "optimizer", "batch_size", "lr", "schedule", "weight_decay", "momentum", "lookahead", "augment",
            "translate"]
AUGMENTATION = ("augment", "translate")  # not shown for frozen runs: a head over features trains without it


@dataclass
class Report:
    markdown: str
    html: str
    figures: dict[str, bytes]  # file name under figures/ -> PNG
    judgements: list[Judgement]  # the common claims
    leads: pd.DataFrame  # one row per (group, criterion): answer and evidence
    group_by: list[str]  # the swept options (compare's group_by)
    paths: list[Path] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        """The answers in one line each, for the terminal: best per criterion (decided ones first), then the
        claims."""
        lines = []
        for _, row in self.leads.iterrows():
            where = where_label({g: row[g] for g in self.group_by})
            lines.append(f"{row.criterion}{f' ({where})' if where else ''}: {row.answer.replace('**', '')}")
        lines.sort(key=lambda line: " is better by " not in line)  # stable: a decided answer leads
        return lines + [f"claim: {v.claim}{f' ({v.where})' if v.where else ''}: {v.verdict}" for v in self.judgements]


# -- setup ---------------------------------------------------------------------------------------------------
def compact_ints(values: list[int]) -> str:
    """[0, 1, 2, 5] -> '0–2, 5'."""
    values, parts, start = sorted(set(values)), [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(v) if v == start else f"{start}–{v}")
            start = None
    return ", ".join(parts)


def counts_text(all_counts: list[dict]) -> str:
    """'train 1078 clear-cut + 12, 56 in-between; test ...': the distinct counts over runs, per split."""
    parts = []
    for split in ("train", "val", "test"):
        clear, between = ({c.get(split, {}).get(kind, 0) for c in all_counts} for kind in ("clear", "between"))
        parts.append(f"{split} {distinct(sorted(clear))} clear-cut + {distinct(sorted(between))} in-between")
    return "; ".join(parts)


def run_meta(comparison: Comparison) -> pd.DataFrame:
    """data.json and env.json of every finished run, one row each."""
    rows = [{"run": name, "data": comparison.run_dirs[name].data(), "env": comparison.run_dirs[name].env()}
            for name in comparison.done.run]
    return pd.DataFrame(rows, columns=["run", "data", "env"])


def train_sizes(values: pd.Series) -> str:
    """'all' where every clear-cut training image was kept (unset; 0 in older runs), the other sizes in order."""
    numbers = sorted(v for v in values if isinstance(v, int | float) and v)
    return distinct(["all" for v in values if v in (None, 0, DEFAULT)] + numbers
                    + [v for v in values if isinstance(v, str) and v != DEFAULT])


def setup_table(runs: pd.DataFrame, group_by: list[str], meta: pd.DataFrame) -> pd.DataFrame:
    names = meta.data.iloc[0]["class_names"]
    pairs = distinct(", ".join(f"{d['class_names'][a]} vs {d['class_names'][b]}" for a, b in d["pairs"])
                     for d in meta.data)
    done = runs[runs.status == "done"]
    seeds_per = done.groupby(["strategy", *group_by]).seed.nunique()
    envs = list(meta.env)
    device = distinct(f"{e['device']}" + (f" ({e['gpu']})" if e.get("gpu") else "") for e in envs)
    versions = distinct(", ".join(f"{flag(k)} {e[k]}" for k in ("ambig_bench", "torch", "torchvision", "python")
                                  if k in e)
                        for e in envs)
    source = distinct(runs.between_source)
    blends = runs[runs.between_source == "blend"]
    if len(blends) == len(runs):
        source += f" (weight of A drawn from U({distinct(runs.blend_low)}, {distinct(runs.blend_high)}))"
    rows = [
        ("dataset", f"{distinct(runs.dataset)} ({distinct(d.get('origin', '?') for d in meta.data)})"),
        ("classes", f"{len(names)}: {', '.join(names[:12])}{' …' if len(names) > 12 else ''}"),
        ("pairs (A vs B)", pairs),
        ("in-between source", source),
        # The human source's in-between images are fixed by the data: between-fraction is a blend setting.
        *([("between-fraction", distinct(sorted(blends.between_fraction)))] if len(blends) else []),
        ("images per split", counts_text([d.get("counts", {}) for d in meta.data])),
        ("strategies", ", ".join(pd.unique(runs.strategy))),
        ("seeds", f"{compact_ints(runs.seed.tolist())} ({distinct(sorted(seeds_per))} per strategy)"),
        ("runs", f"{len(done)} finished, {int((runs.status == 'failed').sum())} failed"),
        ("model", ", ".join(f"{m} (width {w or 'default'})" for m, w in
                            dict.fromkeys(zip(runs.model, runs.width, strict=True)))),
        ("weights and mode", start_text(runs)),
        *training_rows(done if len(done) else runs),
        ("train-size", train_sizes(runs.train_size)),
        ("device", device),
        ("versions", versions),
        ("platform", distinct(e.get("platform", "?") for e in envs)),
    ]
    return pd.DataFrame(rows, columns=["setting", "value"])


def settings(runs: pd.DataFrame, fields: list[str]) -> str:
    """'epochs 30, optimizer adamw, ...': the distinct values of `fields` over `runs`."""
    return ", ".join(f"{flag(f)} {distinct(sorted(runs[f].dropna().unique()))}" for f in fields
                     if f in runs and not (f == "momentum" and (runs.optimizer == "adamw").all()))


def training_rows(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """How the networks trained, only as the runs did: the recipe of fully trained runs; for frozen runs the
    probe's own settings where they record them (chosen L2 strength, solver iterations), else the recipe without
    augmentation (a head over features trains without it)."""
    frozen = runs["freeze"].isin([True, "True"]) if "freeze" in runs else pd.Series(False, index=runs.index)
    probed = frozen & (runs["probe_l2"].notna() if "probe_l2" in runs else False)
    rows = []
    if (~frozen).any():
        rows.append(("training", settings(runs[~frozen], TRAINING)))
    if (frozen & ~probed).any():
        rows.append(("training (frozen backbone)",
                     settings(runs[frozen & ~probed], [f for f in TRAINING if f not in AUGMENTATION])))
    if probed.any():
        probes = runs[probed]
        iterations = pd.to_numeric(probes.get("probe_iterations"), errors="coerce").dropna().astype(int)
        rows.append(("linear probe", f"L2 strength chosen on validation: {distinct(sorted(probes.probe_l2))}"
                     + (f"; solver iterations {iterations.min()}–{iterations.max()}" if len(iterations) else "")))
    return rows


def start_text(runs: pd.DataFrame) -> str:
    """Where the networks started (random, ImageNet, a file or run) and what trained (all, or the head only)."""
    def one(row: pd.Series) -> str:
        weights = row.get("weights")
        start = ("ImageNet (--pretrained)" if row.get("pretrained") is True
                 else f"--weights {weights}" if isinstance(weights, str) and weights else "random initialisation")
        return f"{start}, {'linear probe (frozen backbone)' if row.get('freeze') is True else 'all layers trained'}"
    return distinct(runs.apply(one, axis=1))


# -- "what this means" ---------------------------------------------------------------------------------------
def tradeoffs(paired: pd.DataFrame, group_by: list[str], baseline: str) -> tuple[pd.DataFrame, list[str]]:
    """Per strategy: the metrics on which it is significantly better / worse than the baseline."""
    ranked = paired[paired.metric.isin(list(HIGHER_IS_BETTER))]
    ranked = ranked.sort_values(group_by, kind="stable") if group_by else ranked  # sweep points in order
    rows, mixed = [], []
    kinds: dict[str, list[str]] = {"winning": [], "losing": [], "same": []}
    for key, part in ranked.groupby(group_by + ["strategy"], sort=False):
        where = dict(zip(group_by, key[:-1], strict=True))
        name = key[-1] + (f" ({escape(where_label(where))})" if where else "")
        wins = [f"{r.metric} {r.diff_mean:+.3f}" for _, r in part.iterrows() if better(r)]
        losses = [f"{r.metric} {r.diff_mean:+.3f}" for _, r in part.iterrows() if worse(r)]
        rows.append(where | {"strategy": key[-1], f"better than {baseline} on": ", ".join(wins) or "–",
                             f"worse than {baseline} on": ", ".join(losses) or "–"})
        if wins and losses:
            mixed.append(f"**{name}** is a trade-off against {baseline}: better on {', '.join(wins)}; "
                         f"worse on {', '.join(losses)}.")
        else:
            kinds["winning" if wins else "losing" if losses else "same"].append(name)
    lines = mixed + [f"{text}: {', '.join(kinds[k])}." for k, text in (
        ("winning", f"Significantly better than {baseline} on at least one metric and worse on none"),
        ("losing", f"Significantly worse than {baseline} on at least one metric and better on none"),
        ("same", f"No significant difference of at least its margin from {baseline} on any ranked metric"))
        if kinds[k]]
    return pd.DataFrame(rows), lines


# -- figures -------------------------------------------------------------------------------------------------
def predictions(comparison: Comparison, runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Test-split predictions per strategy, all seeds of `runs` pooled."""
    pooled = {}
    for strategy, part in runs.groupby("strategy", sort=False):
        frames = [comparison.run_dirs[name].predictions()[0] for name in part.run]
        pooled[strategy] = pd.concat([f[f.split == "test"] for f in frames], ignore_index=True)
    return pooled


def detail_groups(comparison: Comparison) -> list[dict]:
    """The groups drawn in detail: all of a plain comparison, the two ends of a sweep."""
    keys = [w for w, _ in split_groups(comparison.summary, comparison.group_by)]
    return keys if len(keys) <= 2 else [keys[0], keys[-1]]


def draw(comparison: Comparison, meta: pd.DataFrame) -> tuple[list[Image], dict[str, bytes]]:
    """Every figure of the report: its block (file name and caption) and its PNG, by file name."""
    drawn = []
    styles = strategy_styles(comparison.summary.strategy)  # one look per strategy in every figure
    for f in comparison.group_by:
        name, fig = sweep_figure(comparison.summary, f, comparison.group_by, styles)
        drawn.append((name, f"Every metric against {flag(f)}, per strategy: mean over seeds, band = 95% CI.", fig))
    for where in detail_groups(comparison):
        summary = select(comparison.summary, where)
        summary = summary[summary.n_seeds > 0]
        runs = select(comparison.done, where)
        preds = predictions(comparison, runs)
        data = meta.set_index("run").data.loc[runs.run.iloc[0]]
        title, tail = where_label(where) or comparison.results_dir.name, slug(where)
        at = f" ({where_label(where)})" if where else ""
        metrics = [m for m in METRICS if summary[f"{m}_mean"].notna().any()]
        drawn += [
            (f"bars{tail}.png", f"Every metric per strategy{at}: mean over seeds, whiskers = 95% CI.",
             metric_bars(summary, metrics, title, styles)),
            (f"tradeoff{tail}.png", f"The trade-off{at}: clear-cut against in-between accuracy; up and right is "
                                    f"better on both.", tradeoff_scatter(summary, title, styles)),
            (f"reliability{tail}.png", f"Reliability of the top-1 confidence on clear-cut test images{at}, seeds "
                                       f"pooled.", reliability_diagrams(preds, title, styles)),
            (f"balance{tail}.png", f"How in-between test images split their probability inside the pair{at}; "
                                   f"dashed = true share.", balance_histograms(preds, title, styles)),
            (f"confusion{tail}.png", f"Paired classes{at}: true label against predicted set, share of each true "
                                     f"label.",
             pair_confusion(preds, [tuple(p) for p in data["pairs"]], data["class_names"], title)),
        ]
    return [Image(name, caption) for name, caption, _ in drawn], {name: png_bytes(fig) for name, _, fig in drawn}


# -- sections ------------------------------------------------------------------------------------------------
def power_text(comparison: Comparison) -> str:
    if comparison.runs.strategy.nunique() == 1:
        return ONE_STRATEGY
    done = comparison.done
    n = int(done.groupby(comparison.group_by + ["strategy"]).seed.nunique().min())
    k = max(part.strategy.nunique() for _, part in split_groups(done, comparison.group_by))
    p = min_holm_p(n, k - 1)
    verdict = ("so differences can reach significance" if p < ALPHA else
               f"so **no difference can reach significance here**: at least {seeds_needed(k - 1)} seeds are needed")
    return (f"Sample size: {n} paired seeds per strategy (fewest), {k} strategies. With {k - 1} comparisons per "
            f"metric the smallest attainable Holm-adjusted p-value is {p:.3g} (level {ALPHA}), {verdict}.")


def meaning_section(comparison: Comparison, lead_table: pd.DataFrame, judgements: list[Judgement],
                    images: list[Image], paired_soft: pd.DataFrame) -> list[Block]:
    """'What this means for your options': only statements a paired test supports."""
    bars = next(i.name for i in images if i.name.startswith("bars"))
    tradeoff = next(i.name for i in images if i.name.startswith("tradeoff"))
    criteria = dict(zip(lead_table.criterion, lead_table.metric, strict=True)) if len(lead_table) else CRITERIA
    metrics = ", ".join(f"{c} = `{m}` ({METRICS[m].direction})" for c, m in criteria.items())
    blocks: list[Block] = [Heading("What this means for your options"), *flag_blocks(comparison, 3),
                           Paragraph(power_text(comparison)),
                           Heading("Verdict per criterion", 3),
                           Paragraph(f"Figure: [{bars}](figures/{bars}). Metrics: {metrics}. Margins: "
                                     f"{margins_text(comparison.margins)} (`--margin`)."),
                           tabulate(lead_table, comparison.group_by, markdown=("answer",))]
    baseline = comparison.baseline
    if not comparison.paired.empty:
        table, lines = tradeoffs(comparison.paired, comparison.group_by, baseline)
        blocks += [Heading("Trade-offs", 3),
                   Paragraph(f"Against {code(baseline)}; only significant differences (paired test, Holm) of at least "
                             "the metric's margin are listed, "
                             f"as strategy − {escape(baseline)}. Figure: [{tradeoff}](figures/{tradeoff})."),
                   Bullets(lines)]
        if (table.iloc[:, -2:] != "–").any().any():
            blocks.append(tabulate(table, comparison.group_by))
    alternatives = judge_alternatives(comparison.done, paired_soft, comparison.group_by)
    if not alternatives.empty:
        blocks += [Heading("The alternatives to soft", 3),
                   Paragraph("The standard alternatives to soft targets, each against `soft` on in-between and "
                             "clear-cut accuracy, calibration and (where the images have votes) cross-entropy to "
                             "the human votes: paired tests per seed, Holm-corrected, significant at "
                             f"{ALPHA}."), tabulate(alternatives, comparison.group_by)]
    sliced = any(v.where for v in judgements)
    claims = pd.DataFrame([{"claim": v.claim, **({"where": v.where} if sliced else {}),
                            "verdict": f"**{v.verdict}**", "evidence": v.evidence,
                            "figure": f"[{v.figure}](figures/{v.figure})" if v.figure else "–"}
                           for v in judgements])
    blocks += [Heading("The common claims", 3), Table(claims, markdown=("verdict", "figure"))]
    # The sweep command only helps where between-fraction means something: the blend source.
    if "between_fraction" not in comparison.group_by and set(comparison.runs.between_source) == {"blend"}:
        name = comparison.results_dir.name
        blocks.append(Paragraph(f"These claims need a sweep of between-fraction. This command runs one with this "
                                f"directory's other options: {code(sweep_command(comparison))}; then "
                                f"{code(f'ambig-bench report results/{name}-sweep')}."))
    return blocks


def label_curve_section(comparison: Comparison) -> tuple[list[Block], dict[str, bytes]]:
    """'Is another in-between label worth it?', for a sweep of --between-train (`labelcurve`): its blocks and its
    figure by file name; nothing for any other directory."""
    table = label_curve(comparison)
    if table.empty:
        return [], {}
    summary = comparison.summary.assign(**{FIELD: pd.to_numeric(comparison.summary[FIELD], errors="coerce")})
    summary = summary[summary[FIELD] > 0]
    metrics = list(dict.fromkeys(table.metric))
    name = "label-curve.png"
    fig = label_curve_figure(summary, table, FIELD, comparison.group_by, metrics,
                             strategy_styles(comparison.summary.strategy))
    others = [g for g in comparison.group_by if g != FIELD]
    display = table[[*others, "strategy", "metric", "points", "n_seeds", "verdict", "answer"]].rename(
        columns={"points": f"{flag(FIELD)} values", "n_seeds": "seeds"})
    blocks: list[Block] = [
        Heading("Is another in-between label worth it?"),
        Paragraph(f"Each strategy's metric against the number of in-between training images ({code('--between-train')}"
                  ": nested per seed, the smaller sets inside the larger, the same test images at every value), "
                  "fitted per seed as a line in log2 N; the change per doubling is the seeds' mean slope with its "
                  "95% t-interval. *gain*: the interval excludes no change and the estimate reaches the metric's "
                  "margin; *flattened*: the whole interval lies below the margin; *undecided* otherwise. The answer "
                  f"extrapolates one doubling past the largest value, no further. Figure: [{name}](figures/{name})."),
        tabulate(display, others),
        Image(name, "The label-budget curve: metric against in-between training images (log scale), per strategy; "
                    "dotted = fitted trend, one doubling past the largest value."),
    ]
    return blocks, {name: png_bytes(fig)}


def verdict_rules() -> list[str]:
    return [
        "Verdict per criterion: the strategy with the best mean is compared with every other strategy (Holm "
        f"across those comparisons, level {ALPHA}), image by image where each test image was tested once "
        "(out-of-fold pools of `--folds`), else across seeds. Each comparison is *different* (significant, the "
        "mean at least the margin δ), *negligible* (significant, and inside ±δ by two one-sided tests: never a "
        "trade-off), *equivalent* (not significant, inside ±δ by two one-sided tests) or *undecided* (anything "
        "else, a significant difference not shown inside ±δ among them).",
        "**X is better by d [95% CI]** only if X is different from, and better than, every other strategy; d is "
        "its lead over the runner-up. **Undecided** if any comparison is: the 95% CI's half-width, and how many more "
        f"seeds or test images a test at level {ALPHA}/k (k comparisons: Bonferroni's bound on Holm) needs to "
        f"detect a difference of δ with probability {POWER:g} (n = ((z₁₋α/₂ₖ + z₀.₈) · sd / δ)², sd the observed "
        "spread of one seed's or one image's paired difference; where seeds cannot reach significance at all, the "
        "seeds that can; a repeat with new seeds where the data at hand should already suffice). Otherwise the "
        "strategies "
        "**equivalent within ±δ** (or negligibly different) from the best, and those worse beyond δ.",
        "No winner is named for a criterion whose strategies include runs that had not converged (metrics.json "
        "`converged`); runs that do not record it are counted as unknown and do not block.",
    ]


def build(comparison: Comparison) -> Report:
    meta = run_meta(comparison)
    # The claims are about soft targets: tested against soft whatever the baseline, and not at all without it.
    paired_soft = comparison.paired_against("soft")
    lead_table = leads(comparison)
    judgements = judge_claims(comparison, paired_soft)
    images, figures = draw(comparison, meta)
    curve_blocks, curve_figures = label_curve_section(comparison)
    figures |= curve_figures
    name = comparison.results_dir.name
    blocks: list[Block] = [
        Heading(f"Report: {escape(name)}", 1),
        Paragraph("Which way of training on in-between images to choose: what differs between the strategies, by "
                  "how much, with what certainty, and where each wins or loses. Every statement in *What this means "
                  "for your options* is backed by a paired test, across seeds or across images, and judged against "
                  "a margin below which a difference does not matter; the rules are at the end."),
        Heading("Setup"), Table(setup_table(comparison.runs, comparison.group_by, meta)),
        *meaning_section(comparison, lead_table, judgements, images, paired_soft), *curve_blocks,
        *design_blocks(comparison),
        Heading("Comparison"), Paragraph(CELLS), *sections(comparison, 3),
        Heading("Figures"), *images,
        Heading("Decision rules"), Bullets(verdict_rules() + claim_rules(comparison.margins)),
        *glossary(),
    ]
    markdown = to_markdown(blocks)
    return Report(markdown, to_html(markdown, name, figures), figures, judgements, lead_table, comparison.group_by)


def report(results_dir: str | Path, baseline: str | None = None, margin: str | float | None = None) -> Report:
    """Analyse `results_dir` and write report.md, report.html and figures/*.png into it (compare's files are
    compare's: left as they are). `margin`: the margins, as `--margin` takes them (analysis.parse_margins)."""
    results_dir = Path(results_dir)
    margins = parse_margins(margin)
    comparison = analyse(results_dir, baseline, margins)
    if not (comparison.runs.status == "done").any():
        raise UserError(f"{results_dir}: every run failed; nothing to report (see the FAILED files under runs/)")
    built = build(comparison)
    for name, data in built.figures.items():
        write_atomic(results_dir / "figures" / name, data)
        built.paths.append(results_dir / "figures" / name)
    write_atomic(results_dir / "report.md", built.markdown)
    write_atomic(results_dir / "report.html", built.html)
    remove_stale_temps(results_dir / "*", results_dir / "figures" / "*")  # a killed compare's or report's
    built.paths = [results_dir / "report.md", results_dir / "report.html", *built.paths]
    return built
