"""Property-based tests (hypothesis): pair parsing and every strategy's per-epoch targets, on random inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ambig_bench.data import parse_pairs
from ambig_bench.errors import UserError
from ambig_bench.strategies import STRATEGIES, Labels, Strategy

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DIGITS = [str(i) for i in range(10)]

# -- parse_pairs ---------------------------------------------------------------------------------------

class_names = st.lists(st.text(st.characters(categories=["Lu", "Ll"]), min_size=1, max_size=6),
                       min_size=2, max_size=8, unique_by=str.lower)


@st.composite
def names_and_pairs(draw):
    names = draw(class_names)
    k = len(names)
    unordered = draw(st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1))
                              .filter(lambda p: p[0] != p[1]), min_size=1, max_size=4,
                              unique_by=lambda p: frozenset(p)))
    return names, unordered


def check_pairs(pairs: list[tuple[int, int]], k: int) -> None:
    """What every successful parse must satisfy."""
    assert pairs, "a parse returns at least one pair"
    for a, b in pairs:
        assert 0 <= a < k and 0 <= b < k and a != b
    assert len({frozenset(p) for p in pairs}) == len(pairs), "no pair twice, in either order"


@pytest.mark.slow
@SETTINGS
@given(names_and_pairs(), st.data())
def test_pairs_written_by_name_or_index_parse_back(case, data):
    names, pairs = case
    tokens = []
    for a, b in pairs:
        # Each class as its name or its index, with stray spaces around: the parse must not care.
        sides = [data.draw(st.sampled_from([names[c], str(c)])) for c in (a, b)]
        pad = data.draw(st.sampled_from(["", " ", "  "]))
        tokens.append(f"{pad}{sides[0]}{pad}:{sides[1]}{pad}")
    assert parse_pairs(",".join(tokens), names) == pairs


@SETTINGS
@given(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20))
@example("4:9,3:8")
@example("4:9,9:4")
@example("")
def test_any_ascii_text_parses_to_valid_pairs_or_a_user_error(text):
    try:
        pairs = parse_pairs(text, DIGITS)
    except UserError as e:
        assert str(e).startswith("--pairs:") and "\n" not in str(e)
        return
    check_pairs(pairs, len(DIGITS))


@pytest.mark.slow
@SETTINGS
@given(st.text(max_size=12))
@example("²:1")
def test_any_unicode_text_parses_to_valid_pairs_or_a_user_error(text):
    try:
        pairs = parse_pairs(text, DIGITS)
    except UserError:
        return
    check_pairs(pairs, len(DIGITS))


# -- epoch_targets ---------------------------------------------------------------------------------------

@st.composite
def label_sets(draw) -> tuple[int, list[tuple[int, int]], Labels]:
    """K classes, P pairs (either orientation) and N images, each clear-cut or between a pair with a share."""
    k = draw(st.integers(2, 8))
    all_pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    pairs = draw(st.lists(st.sampled_from(all_pairs), min_size=1, max_size=min(4, len(all_pairs)), unique=True))
    pairs = [p[::-1] if draw(st.booleans()) else p for p in pairs]
    a, b, share, pair = [], [], [], []
    for _ in range(draw(st.integers(1, 24))):
        if draw(st.booleans()):
            a.append(draw(st.integers(0, k - 1)))
            b.append(-1)
            share.append(1.0)
            pair.append(-1)
        else:
            p = draw(st.integers(0, len(pairs) - 1))
            first, second = pairs[p][::-1] if draw(st.booleans()) else pairs[p]
            a.append(first)
            b.append(second)
            share.append(draw(st.floats(0.05, 0.95)))
            pair.append(p)
    return k, pairs, Labels(torch.tensor(a), torch.tensor(b), torch.tensor(share, dtype=torch.float32),
                            torch.tensor(pair))


def allowed_outputs(strategy: Strategy, labels: Labels, i: int) -> set[int]:
    """Outputs image i may get target mass on: its label set, or for K+P-output strategies its pair's class."""
    allowed = {int(labels.a[i])}
    if labels.b[i] >= 0:
        allowed.add(int(labels.b[i]))
        if strategy.num_outputs > strategy.num_classes:
            allowed.add(strategy.num_classes + int(labels.pair[i]))
    return allowed


@pytest.mark.slow
@pytest.mark.parametrize("name", STRATEGIES.names())
@SETTINGS
@given(case=label_sets(), seed=st.integers(0, 2**31 - 1))
def test_epoch_targets_stay_inside_each_label_set(name, case, seed):
    k, pairs, labels = case
    strategy = STRATEGIES.get(name)(k, pairs)
    index, targets = strategy.epoch_targets(labels, torch.Generator().manual_seed(seed))

    assert index.dtype == torch.int64 and targets.shape == (len(index), strategy.num_outputs)
    assert len(index) == 0 or (index.min() >= 0 and index.max() < len(labels))
    assert torch.isfinite(targets).all() and (targets >= 0).all() and (targets <= 1).all()
    clear = set((labels.b < 0).nonzero().squeeze(1).tolist())
    assert clear <= set(index.tolist()), "every clear-cut image is trained on every epoch"
    for row, i in enumerate(index.tolist()):
        # Smoothing strategies give every output a floor of mass; what lies above it must stay in the label set.
        above = targets[row] - targets[row].min() if strategy.spreads_targets else targets[row]
        support = set((above > 1e-6).nonzero().squeeze(1).tolist())
        # Reassigned, duplicated or hard labels never leave the pair; extra classes are the image's own pair.
        assert (support or strategy.spreads_targets) and support <= allowed_outputs(strategy, labels, i), (i, support)

    if type(strategy).loss is Strategy.loss:  # softmax cross-entropy needs distributions
        assert torch.allclose(targets.sum(1), torch.ones(len(index)), atol=1e-6)
    else:  # candidate-set and multilabel losses take the label set itself, as a 0/1 mask
        truth = torch.zeros(len(labels), k)
        truth[torch.arange(len(labels)), labels.a] = 1
        between = labels.b >= 0
        truth[between.nonzero().squeeze(1), labels.b[between]] = 1
        assert torch.equal(targets, truth[index])


@SETTINGS
@given(case=label_sets(), seed=st.integers(0, 2**31 - 1))
def test_soft_targets_carry_each_share(case, seed):
    k, pairs, labels = case
    index, targets = STRATEGIES.get("soft")(k, pairs).epoch_targets(labels, torch.Generator().manual_seed(seed))
    rows = torch.arange(len(index))
    assert torch.allclose(targets[rows, labels.a[index]], labels.share_a[index])
    between = labels.b[index] >= 0
    assert torch.allclose(targets[rows[between], labels.b[index][between]], 1 - labels.share_a[index][between])


# -- a real run directory, mutated: compare, report and predict succeed or say what is wrong in one line ---------
JSON_FILES = ("metrics.json", "config.json", "data.json", "model.json", "env.json")
HOSTILE = st.one_of(st.none(), st.booleans(), st.text(max_size=8), st.integers(-10**30, 10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers(), max_size=3),
                    st.just({"a": {"b": [1]}}))
CELLS = st.sampled_from(["", "nan", "inf", "1e309", "-5", "abc", "nan0242708", "4|99", "0|0|0", "=1+1", "2.5"])


@st.composite
def mutations(draw) -> tuple[str, str, object]:
    """(file, how, what): a file of a run and a change to it."""
    file = draw(st.sampled_from([*JSON_FILES, "predictions.csv"]))
    kinds = ["truncate", "fifo", "folder", "delete"]
    kinds += ["field", "type", "deep"] if file.endswith(".json") else ["cell", "extra-column", "drop-column"]
    how = draw(st.sampled_from(kinds))
    what = {"truncate": st.floats(0, 1), "field": st.tuples(st.integers(0, 50), HOSTILE), "cell": st.tuples(
        st.integers(0, 10**6), st.integers(0, 50), CELLS), "type": HOSTILE, "drop-column": st.integers(0, 50)}
    return file, how, draw(what.get(how, st.none()))


def mutate(path: Path, how: str, what: object) -> None:
    import json
    import os

    import pandas as pd

    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * what)])
    elif how in ("fifo", "folder", "delete"):
        path.unlink()
        {"fifo": os.mkfifo, "folder": os.mkdir, "delete": lambda p: None}[how](path)
    elif how == "deep":
        path.write_text("[" * 50_000 + "]" * 50_000)
    elif how == "type":
        path.write_text(json.dumps(what))
    elif how == "field":
        doc = json.loads(path.read_text())
        index, value = what
        doc[list(doc)[index % len(doc)]] = value
        path.write_text(json.dumps(doc))  # NaN and Infinity as Python writes them
    else:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if how == "cell":
            row, column, text = what
            frame.iloc[row % len(frame), column % len(frame.columns)] = text
        elif how == "extra-column":
            frame[f"p_{sum(c.startswith('p_') for c in frame.columns)}"] = "0.0"
        else:
            frame = frame.drop(columns=frame.columns[what % len(frame.columns)])
        frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def an_image(tmp_path_factory) -> Path:
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 16, (8, 8), dtype=np.uint8)).save(path)
    return path


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations(), st.sampled_from(["soft", "hard"]), st.sampled_from(["compare", "predict", "compare", "report"]))
@example(("metrics.json", "fifo", None), "soft", "compare")
@example(("model.json", "deep", None), "soft", "predict")
@example(("predictions.csv", "cell", (3, 5, "nan0242708")), "hard", "report")
@example(("config.json", "field", (24, None)), "soft", "compare")  # the model group gone
@example(("config.json", "field", (24, {"a": {"b": [1]}})), "soft", "report")
def test_a_mutated_run_directory_gives_a_result_or_one_line_never_a_traceback(trained_results, an_image, mutation,
                                                                              strategy, command):
    import shutil
    import tempfile
    from unittest import mock

    import matplotlib.pyplot as plt
    from typer.testing import CliRunner

    from ambig_bench.cli import app

    file, how, what = mutation
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results"
        shutil.copytree(trained_results, out)
        [run] = (out / "runs").glob(f"{strategy}-seed0-*")
        mutate(run / file, how, what)
        args = {"compare": ["compare", str(out)], "report": ["report", str(out)],
                "predict": ["predict", str(run), str(an_image), "--format", "json"]}[command]
        # The report's figures are test_report's: drawn, not encoded, here.
        with mock.patch("ambig_bench.report.png_bytes", lambda figure: plt.close(figure) or b""):
            result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    said = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert len(said) == 1 and said[0].startswith("error:"), result.stderr
        assert file in said[0] or run.name in said[0] or str(out) in said[0], said[0]
    else:
        assert result.exit_code == 0, result.output
        warned = [line for line in said if line.startswith("warning:")]
        assert not warned or file in warned[0], warned
