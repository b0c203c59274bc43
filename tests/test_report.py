"""report on hand-made run directories with planted numbers: verdicts with known answers, golden markdown.

No training: every run directory is written here (config, data, env, metrics, predictions, DONE), so the
report's statements depend only on the planted numbers.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from ambig_bench.claims import judge_claims, seeds_needed
from ambig_bench.compare import compare
from ambig_bench.errors import UserError
from ambig_bench.metrics import METRICS
from ambig_bench.options import strategy_label
from ambig_bench.plots import (
    balance_histograms,
    metric_bars,
    pair_confusion,
    reliability_diagrams,
    strategy_styles,
    sweep_figure,
    text_boxes,
    tradeoff_scatter,
    untangle_x_labels,
)
from ambig_bench.report import report
from ambig_bench.stats import min_holm_p
from ambig_bench.strategies import STRATEGIES
from ambig_bench.verdicts import lead_row
from tests.fake_runs import fake_run_dir, run_record

GOLDEN = Path(__file__).parent / "golden"
CLASSES = ["cat", "dog", "car", "truck"]
PAIRS = [[0, 1], [2, 3]]
ENV = {"ambig_bench": "0.1.0", "python": "3.11.0", "torch": "2.4.0", "platform": "Linux-test", "device": "cpu"}


def jitter(seed: int) -> float:
    """A fixed, sign-balanced wobble per seed (mean 0 over seeds 0..9), so CIs have width."""
    return [0.004, -0.003, 0.001, -0.004, 0.002, -0.001, 0.003, -0.002, 0.0, 0.0][seed % 10]


def wobble(seed: int) -> float:
    """An alternating-sign difference of distinct sizes (untied ranks keep the exact Wilcoxon test fast)."""
    return (0.0015 + 0.0001 * seed) * (1 if seed % 2 else -1)


def planted_predictions(strategy: str, seed: int) -> pd.DataFrame:
    """Small deterministic test/val predictions: 6 clear-cut images per class, 4 in-between per pair."""
    rng = np.random.default_rng(zlib.crc32(f"{strategy}-{seed}".encode()))
    rows = []
    for split in ("val", "test"):
        for c in range(len(CLASSES)):
            for _ in range(6):
                p = rng.dirichlet(np.ones(len(CLASSES)))
                p[c] += 3
                rows.append((split, "clear", c, -1, 1.0, p / p.sum()))
        for a, b in PAIRS:
            for _ in range(4):
                p = rng.dirichlet(np.ones(len(CLASSES)))
                p[a] += 1.5 + rng.random()
                p[b] += 1.5 + rng.random()
                rows.append((split, "between", a, b, 0.5, p / p.sum()))
    frame = pd.DataFrame({"split": [r[0] for r in rows], "kind": [r[1] for r in rows],
                          "label_a": [r[2] for r in rows], "label_b": [r[3] for r in rows],
                          "share_a": [r[4] for r in rows], "ambiguity": [1 - r[5].max() for r in rows]})
    probs = np.stack([r[5] for r in rows])
    frame["pred_set"] = ["|".join(str(k) for k in np.flatnonzero(p >= 0.25)) for p in probs]
    return pd.concat([frame, pd.DataFrame(probs, columns=[f"p_{k}" for k in range(len(CLASSES))])], axis=1)


def fake_run(out: Path, strategy: str, seed: int, metrics: dict, predictions: bool = True, **config) -> None:
    run_dir, cfg = fake_run_dir(out, strategy, seed, **config)
    counts = {"train": {"clear": 400, "between": round(400 * cfg["between_fraction"])},
              "val": {"clear": 24, "between": 8}, "test": {"clear": 24, "between": 8}}
    (run_dir / "data.json").write_text(json.dumps({"class_names": CLASSES, "pairs": PAIRS, "dataset": cfg["dataset"],
                                                   "origin": "planted test data", "counts": counts,
                                                   "between_source": json.loads((run_dir / "data.json").read_text())[
                                                       "between_source"]}))
    (run_dir / "env.json").write_text(json.dumps(ENV))
    # human_ce is NaN, as in a run on images without votes.
    (run_dir / "metrics.json").write_text(json.dumps({m: 0.5 for m in METRICS} | {"human_ce": math.nan}
                                                     | run_record(strategy) | metrics))
    if predictions:
        planted_predictions(strategy, seed).to_csv(run_dir / "predictions.csv", index=False)
    (run_dir / "DONE").write_text("")


def plant_comparison(out: Path, seeds: int = 10, predictions: bool = True) -> None:
    """extra-class clearly best in-between but worst calibrated; soft best calibrated, hard negligibly worse (0.006,
    inside ECE's margin of 0.01); soft and extra-class tied on clear-cut accuracy; hard clearly worse on clear-cut
    and in-between accuracy."""
    for seed in range(seeds):
        j = jitter(seed)
        planted = {
            "soft": {"clear_acc": 0.90 + j, "between_set_acc": 0.80 + j, "ece": 0.020 + j / 10},
            "extra-class": {"clear_acc": 0.90 + j + wobble(seed), "between_set_acc": 0.95 + j,
                            "ece": 0.050 + j / 10},
            "hard": {"clear_acc": 0.85 + j, "between_set_acc": 0.10 + j, "ece": 0.026 + j / 10},
        }
        for strategy, metrics in planted.items():
            fake_run(out, strategy, seed, metrics, predictions)


def plant_sweep(out: Path, seeds: int = 10, predictions: bool = True, large: dict | None = None) -> None:
    """Two between-fractions. At 0.01 soft leads reassign/duplicate and extra-class/multilabel lag far behind;
    at 0.2 all five agree to within ±0.002 (unless `large` overrides a strategy's metrics there)."""
    for seed in range(seeds):
        j = jitter(seed)
        small = {"soft": 0.70, "reassign": 0.60, "duplicate": 0.62, "extra-class": 0.30, "multilabel": 0.35}
        for strategy, acc in small.items():
            fake_run(out, strategy, seed, {"clear_acc": 0.90 + j, "between_set_acc": acc + j}, predictions,
                     between_fraction=0.01)
        for strategy in small:
            shift = 0 if strategy == "soft" else wobble(seed)
            metrics = {"clear_acc": 0.95 + j + shift, "between_set_acc": 0.90 + j + shift}
            fake_run(out, strategy, seed, metrics | (large or {}).get(strategy, {}), predictions,
                     between_fraction=0.2)


# Every registered strategy and two with options of their own: more rows than tab10 has colours.
MANY = [(s, {}) for s in STRATEGIES.describe()] + [("label-smoothing", {"smoothing_eps": 0.2}),
                                                   ("mixup", {"mixup_alpha": 0.4})]
MANY_LABELS = [strategy_label(s, options) for s, options in MANY]


def plant_many(out: Path, seeds: int = 3) -> None:
    """Every strategy of MANY with distinct planted means, 3 seeds: the report at its widest."""
    for seed in range(seeds):
        for i, (strategy, options) in enumerate(MANY):
            j = jitter(seed)
            fake_run(out, strategy, seed, {"clear_acc": 0.80 + 0.01 * i + j, "between_set_acc": 0.50 + 0.03 * i + j,
                                           "ece": 0.02 + 0.003 * i + j / 10}, **options)


def verdicts_of(out: Path) -> dict[str, str]:
    comparison = compare(out)
    return {v.key: v.verdict for v in judge_claims(comparison, comparison.paired)}


# -- statistics-backed statements ----------------------------------------------------------------------------
def test_power_bound_matches_the_tests():
    # 3 seeds: an exact sign test's smallest two-sided p is 2 / 2**3 = 0.25; Holm over 7 comparisons -> 1.
    assert min_holm_p(3, 1) == pytest.approx(0.25)
    assert min_holm_p(3, 7) == 1.0
    # Wilcoxon from 6 seeds: the smallest exact p is 2 / 2**n; 7 comparisons need 7 * 2**(1-n) < 0.05 -> n = 9.
    assert min_holm_p(9, 7) == pytest.approx(7 * 2 / 2**9)
    assert seeds_needed(7) == 9 and seeds_needed(1) == 6


@pytest.mark.slow
def test_better_only_beyond_the_margin_against_every_other(tmp_path):
    plant_comparison(tmp_path, predictions=False)
    c = compare(tmp_path)
    between = lead_row(c, {}, "in-between accuracy", "between_set_acc")
    assert between["answer"].startswith("**extra-class** is better by 0.150 [")
    assert "closest soft − extra-class: -0.150" in between["evidence"] and between["test"] == "across seeds"
    clear = lead_row(c, {}, "clear-cut accuracy", "clear_acc")
    # soft and extra-class differ by about ±0.002 with alternating sign: equivalent within ±0.02 by TOST; hard is
    # 0.05 below both.
    assert clear["answer"] in ("equivalent within ±0.02: soft (best mean) and extra-class; worse beyond ±0.02: hard",
                               "equivalent within ±0.02: extra-class (best mean) and soft; worse beyond ±0.02: hard")
    ece = lead_row(c, {}, "calibration", "ece")
    # Lower is better: hard is significantly but only 0.006 behind soft, extra-class 0.030.
    assert ece["answer"] == ("negligible: hard − soft significant but smaller than 0.01; worse beyond ±0.01: "
                             "extra-class")


def test_few_seeds_are_undecided_with_the_seeds_that_would_decide(tmp_path):
    plant_comparison(tmp_path, seeds=3, predictions=False)
    c = compare(tmp_path)
    row = lead_row(c, {}, "in-between accuracy", "between_set_acc")
    # The gap is huge but 3 seeds cannot reach p < 0.05: nothing is called better; the spread of soft − extra-class
    # is 0 (the jitter is shared), so the seeds needed are those at which 2 Holm-corrected tests can reach 5%.
    assert row["answer"] == ("undecided: the 95% CI of soft − extra-class is ±0.000; about "
                             f"{seeds_needed(2) - 3} more seeds would resolve a difference of 0.02")


@pytest.mark.slow
def test_sweep_claims_supported(tmp_path):
    plant_sweep(tmp_path, predictions=False)
    assert verdicts_of(tmp_path) == {"equivalent": "supported", "efficient": "supported", "rare": "supported"}


@pytest.mark.slow
def test_sweep_claims_contradicted(tmp_path):
    # At the largest fraction reassign falls 0.05 behind soft, and extra-class lags there too.
    plant_sweep(tmp_path, predictions=False, large={
        "reassign": {"between_set_acc": 0.85},
        "extra-class": {"between_set_acc": 0.80}})
    verdicts = verdicts_of(tmp_path)
    assert verdicts["equivalent"] == "contradicted"
    assert verdicts["rare"] == "contradicted"  # the deficit is not specific to rare examples
    assert verdicts["efficient"] == "supported"  # the smallest fraction is unchanged


def test_sweep_claims_not_decided_with_few_seeds(tmp_path):
    plant_sweep(tmp_path, seeds=4, predictions=False)
    assert set(verdicts_of(tmp_path).values()) == {"not decided"}


def test_plain_comparison_needs_a_sweep_and_gives_the_command(tmp_path):
    plant_comparison(tmp_path, seeds=3, predictions=False)
    assert set(verdicts_of(tmp_path).values()) == {"needs a sweep"}


@pytest.mark.slow
def test_claims_about_between_fraction_do_not_apply_to_human_in_between_images(tmp_path):
    for seed in range(3):
        for strategy in ("soft", "extra-class"):
            fake_run(tmp_path, strategy, seed, {"clear_acc": 0.9}, True, between_source="human")
    assert set(verdicts_of(tmp_path).values()) == {"not applicable"}
    assert "These claims need a sweep" not in report(tmp_path).markdown


# -- files and structure -------------------------------------------------------------------------------------
def check_golden(text: str, name: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"report format changed: rerun with UPDATE_GOLDEN=1 and review {path}"


@pytest.mark.slow
def test_report_files_and_golden(tmp_path):
    out = tmp_path / "golden-demo"
    plant_comparison(out)
    built = report(out)
    check_golden(built.markdown, "report.md")
    assert (out / "report.md").read_text() == built.markdown
    for link in re.findall(r"\]\((figures/[^)]+\.png)\)", built.markdown):
        assert (out / link).read_bytes()[:4] == b"\x89PNG", link
    assert "ambig-bench sweep --between-source blend --strategy soft,reassign,duplicate,extra-class,multilabel" in \
        built.markdown


def test_report_leaves_compares_files_as_they_are(tmp_path):
    plant_comparison(tmp_path, seeds=3)
    report(tmp_path)
    assert not [p for p in ("comparison.md", "comparison.csv", "paired.csv") if (tmp_path / p).exists()]
    compare(tmp_path, baseline="hard")
    written = {name: ((tmp_path / name).read_bytes(), (tmp_path / name).stat().st_mtime_ns)
               for name in ("comparison.md", "comparison.csv", "paired.csv")}
    report(tmp_path)  # against soft, the default: compare's files still hold the comparison against hard
    assert {name: ((tmp_path / name).read_bytes(), (tmp_path / name).stat().st_mtime_ns) for name in written} == written


class Page(HTMLParser):
    """What report.html holds: tags counted, image sources and link targets listed, in-page ids collected."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.sources: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.ids |= {attrs["id"]} if "id" in attrs else set()
        if tag == "img":
            self.sources.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])


@pytest.mark.slow
def test_report_html_holds_the_tables_headings_and_figures(tmp_path):
    out = tmp_path / "html-demo"
    plant_comparison(out)
    built = report(out)
    page = Page((out / "report.html").read_text())
    markdown = built.markdown.splitlines()
    assert page.tags["table"] == sum(line.startswith("|---") for line in markdown) == 10
    for level in (1, 2, 3):
        assert page.tags.get(f"h{level}", 0) == sum(line.startswith("#" * level + " ") for line in markdown)
    # Self-contained: every figure inline as a PNG, nothing fetched from elsewhere.
    assert len(page.sources) == len(built.figures) == 5
    for src in page.sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.removeprefix("data:image/png;base64,"))[:4] == b"\x89PNG"
    assert "link" not in page.tags and "script" not in page.tags
    # Links to figure files jump to the embedded figure instead.
    assert page.links and all(link.startswith("#") and link[1:] in page.ids for link in page.links)
    assert '<strong><span class="n">extra-class</span></strong> is better by' in built.html
    assert "<code>clear_acc</code>" in built.html
    # Built for a phone too: laid out at the screen's width, every table in a box that scrolls it, each interval
    # in one unbreakable piece (tests/test_browser.py checks the layout itself in chromium).
    assert "<meta name='viewport' content='width=device-width, initial-scale=1'>" in built.html
    assert built.html.count('<div class="scroll"><table>') == page.tags["table"]
    assert '<td><span class="n">0.900 [0.898, 0.902]</span></td>' in built.html


@pytest.mark.slow
def test_sweep_report_golden(tmp_path):
    out = tmp_path / "golden-sweep"
    plant_sweep(out)
    built = report(out)
    check_golden(built.markdown, "report_sweep.md")
    assert "sweep-between-fraction.png" in built.figures
    # Detail figures for both ends of the sweep.
    assert {"bars-between-fraction-0.01.png", "bars-between-fraction-0.2.png"} <= set(built.figures)


def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="results directory not found"):
        report(tmp_path / "missing")
    plant_comparison(tmp_path, seeds=2, predictions=False)
    for margin, message in [(0, "the margin of clear_acc must be > 0"), ("ece=-1", "the margin of ece must be > 0"),
                            ("clear-acc=x", "'x' is not a number"), ("speed=0.1", "unknown metric 'speed'")]:
        with pytest.raises(UserError, match=f"^--margin {re.escape(str(margin))}: .*{re.escape(message)}"):
            report(tmp_path, margin=margin)


@pytest.mark.slow
def test_the_alternatives_to_soft_are_judged_against_soft(tmp_path):
    """votes: better agreement with the votes, worse in-between sets; mixup: better calibrated; label smoothing
    (with its own ε, a row of its own): no different from soft."""
    for seed in range(10):
        j = jitter(seed)
        base = {"clear_acc": 0.90 + j, "between_set_acc": 0.80 + j, "ece": 0.05 + j / 10, "human_ce": 0.60 + j}
        planted = {
            ("soft", ()): base,
            ("votes", ()): base | {"between_set_acc": 0.70 + j, "human_ce": 0.50 + j},
            ("mixup", ()): base | {"ece": 0.02 + j / 10},
            ("label-smoothing", (("smoothing_eps", 0.2),)): base | {"clear_acc": 0.90 + j + wobble(seed)},
        }
        for (strategy, options), metrics in planted.items():
            fake_run(tmp_path, strategy, seed, metrics, **dict(options))
    text = report(tmp_path).markdown
    section = text.split("### The alternatives to soft")[1].split("###")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in section.splitlines() if line.startswith("| ")}
    assert " | a trade-off | " in rows["votes"] and "human_ce -0.100" in rows["votes"]
    assert "between_set_acc -0.100" in rows["votes"]
    assert " | better | " in rows["mixup"] and "ece -0.030" in rows["mixup"]
    assert " | no difference beyond the margin | " in rows["label-smoothing@smoothing-eps=0.2"]
    assert "agreement with human votes" in text, "a criterion where the images have votes"



# -- figures -------------------------------------------------------------------------------------------------
def many_summary(fractions: tuple[float, ...] = (0.05,)) -> pd.DataFrame:
    """compare's summary for MANY, as the figures read it: every metric's mean and 95% CI per strategy."""
    rows = []
    for fraction in fractions:
        for i, name in enumerate(MANY_LABELS):
            row = {"strategy": name, "between_fraction": fraction, "n_seeds": 3}
            for k, m in enumerate(METRICS):
                mean = 0.3 + 0.04 * i + 0.01 * k + 0.1 * fraction
                row |= {f"{m}_mean": mean, f"{m}_ci_low": mean - 0.01, f"{m}_ci_high": mean + 0.02}
            rows.append(row)
    return pd.DataFrame(rows)


def many_predictions() -> dict[str, pd.DataFrame]:
    return {name: planted_predictions(name, 0) for name in MANY_LABELS}


# Every figure the report draws, for 13 strategies; the sweep with two values close on its log axis.
FIGURES = {
    "sweep": lambda: sweep_figure(many_summary((0.005, 0.01, 0.012, 0.2)), "between_fraction",
                                  ["between_fraction"])[1],
    "bars": lambda: metric_bars(many_summary(), list(METRICS), "many"),
    "tradeoff": lambda: tradeoff_scatter(many_summary(), "many"),
    "reliability": lambda: reliability_diagrams(many_predictions(), "many"),
    "balance": lambda: balance_histograms(many_predictions(), "many"),
    "confusion": lambda: pair_confusion(many_predictions(), [tuple(p) for p in PAIRS], CLASSES, "many"),
}


def overlaps(boxes: list[tuple[str, Bbox]]) -> list[tuple[str, str]]:
    """The pairs of texts (plots.text_boxes) whose boxes overlap by more than a pixel both ways."""
    extents = np.array([box.extents for _, box in boxes])  # x0, y0, x1, y1 in pixels
    width = np.minimum(extents[:, None, 2], extents[None, :, 2]) - np.maximum(extents[:, None, 0], extents[None, :, 0])
    height = np.minimum(extents[:, None, 3], extents[None, :, 3]) - np.maximum(extents[:, None, 1], extents[None, :, 1])
    first, second = np.nonzero(np.triu((width > 1) & (height > 1), 1))
    return [(boxes[i][0], boxes[j][0]) for i, j in zip(first, second, strict=True)]


@pytest.mark.parametrize("name", FIGURES)
def test_no_two_texts_of_a_figure_overlap(name):
    boxes = text_boxes(FIGURES[name]())
    texts = [text.replace("\n", "") for text, _ in boxes]
    assert all(any(label in text for text in texts) for label in MANY_LABELS), "every strategy is named"
    assert overlaps(boxes) == []


def test_the_overlap_check_sees_labels_that_collide_and_untangle_turns_them_upright():
    fig = Figure(figsize=(3, 2), layout="constrained")
    fig.subplots().set_xticks([0, 0.1, 1], ["label-smoothing", "mixup", "soft"])
    assert overlaps(text_boxes(fig)) == [("label-smoothing", "mixup")]
    untangle_x_labels(fig)
    assert overlaps(text_boxes(fig)) == []


def test_every_strategy_keeps_one_look_of_its_own():
    styles = strategy_styles(MANY_LABELS + [f"new-{k}" for k in range(10)])
    looks = [(style.color, style.marker) for style in styles.values()]
    assert len(set(looks)) == len(looks) == len(MANY) + 10
    assert len({styles[name].color for name in MANY_LABELS}) == len(MANY), "13 strategies, 13 colours"
    # Fixed per name: a strategy looks the same whatever else ran.
    assert strategy_styles(["mixup", "soft"]) == {"mixup": styles["mixup"], "soft": styles["soft"]}
    assert strategy_styles(["mixup@mixup-alpha=0.4", "new-0"])["new-0"] != styles["soft"]
