"""Names from someone else's dataset are shown, never obeyed: control characters escaped in every output a person
reads (terminal, error lines, markdown, HTML), and CSV cells that a spreadsheet would run prefixed with '."""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ambig_bench.cli import app
from ambig_bench.io import write_csv
from ambig_bench.shown import csv_cell, csv_frame, shown
from tests.test_bad_input import png

cli = CliRunner()
ESC_CLASS = "cat\x1b]0;TITLE\x1b\\\x1b[2J\x1b[5A"  # retitle the terminal, clear it, move the cursor up
BIDI_CLASS = "dog\u202egnp.exe"
FORMULA_CLASS = '@SUM(1+1)*cmd'
RAW = ("\x1b", "\u202e", "\x9b")


@pytest.mark.parametrize("raw, escaped", [
    ("a\x1b[2Jb", "a\\x1b[2Jb"), ("x\x07", "x\\x07"), ("tab\there", "tab\\there"), ("l1\nl2\r", "l1\\nl2\\r"),
    ("\x7f\x9b", "\\x7f\\x9b"), ("rtl\u202eoverride\u2066iso", "rtl\\u202eoverride\\u2066iso"),
    ("café 猫 🐈 a|b [bold]", "café 猫 🐈 a|b [bold]"),
])
def test_shown_escapes_control_and_bidi_characters_only(raw, escaped):
    assert shown(raw) == escaped


def test_every_c0_c1_character_is_escaped_and_nothing_printable_is():
    for code in range(0x250):
        char = chr(code)
        control = code < 0x20 or 0x7F <= code <= 0x9F
        assert (shown(char) != char) == control, hex(code)
        assert not any(unicodedata.category(c) == "Cc" for c in shown(char)), hex(code)


@pytest.mark.parametrize("cell, safe", [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1+1", "'-1+1"), ("@SUM(1)", "'@SUM(1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("cat", "cat"), ("a=b", "a=b"), ("", ""), (-0.5, -0.5), (3, 3), (None, None),
])
def test_csv_cells_that_would_be_formulas_are_prefixed(cell, safe):
    assert csv_cell(cell) == safe


def test_written_csvs_read_back_as_the_text_with_the_prefix(tmp_path):
    frame = pd.DataFrame({"name": ["=cmd|' /C calc'!A0", "ok", "-2"], "score": [-1.5, 2.0, -3.0],
                          "@col": ["x", "y", "z"]})
    write_csv(tmp_path / "t.csv", frame)
    back = pd.read_csv(tmp_path / "t.csv")
    assert list(back.columns) == ["name", "score", "'@col"]
    assert list(back.name) == ["'=cmd|' /C calc'!A0", "ok", "'-2"]
    assert list(back.score) == [-1.5, 2.0, -3.0]  # numbers stay numbers
    assert csv_frame(frame).score.tolist() == [-1.5, 2.0, -3.0]


def hostile_folder(root: Path) -> Path:
    """8x8 PNGs of three classes whose names would retitle/clear a terminal, reverse text, or run in a spreadsheet;
    one file name holds an escape sequence too."""
    rng = np.random.default_rng(0)
    rows = []
    for c, name in enumerate([ESC_CLASS, BIDI_CLASS, FORMULA_CLASS]):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(12):
            file = f"c{c}/{i}\x1b[2J.png" if i == 0 else f"c{c}/{i}.png"
            (root / file).write_bytes(png(rng.integers(0, 256, (8, 8), dtype=np.uint8)))
            rows.append([file, name])
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["file", "label"], *rows])
    return root


def assert_inert(text: str, where: str) -> None:
    for char in RAW:
        assert char not in text, (where, repr(char))


@pytest.mark.slow
def test_hostile_names_reach_no_output_raw_and_no_csv_as_a_formula(tmp_path):
    data = hostile_folder(tmp_path / "photos")
    out = tmp_path / "out"
    ran = cli.invoke(app, ["run", "--dataset", "folder", "--labels", str(data / "labels.csv"), "--pairs",
                           f"{ESC_CLASS}:{BIDI_CLASS}", "--strategy", "soft,hard", "--seeds", "2", "--epochs", "2",
                           "--width", "8", "--device", "cpu", "--out", str(out)], terminal_width=400)
    assert ran.exit_code == 0, ran.output
    assert_inert(ran.stdout + ran.stderr, "run")
    for args in (["compare", str(out)], ["report", str(out)]):
        done = cli.invoke(app, args, terminal_width=400)
        assert done.exit_code == 0, done.output
        assert_inert(done.stdout + done.stderr, args[0])
    for name in ("comparison.md", "report.md", "report.html", "comparison.csv"):
        assert_inert((out / name).read_text(), name)
    assert "cat\\x1b]0;TITLE" in (out / "report.md").read_text()  # shown as its escape, not dropped

    run_dir = next(p for p in (out / "runs").iterdir() if p.name.startswith("soft-"))
    for fmt in ("table", "csv", "json"):
        shown_ = cli.invoke(app, ["predict", str(run_dir), str(data / "c0"), "--format", fmt], terminal_width=400)
        assert shown_.exit_code == 0, shown_.output
        assert_inert(shown_.stdout + shown_.stderr, f"predict {fmt}")
    as_csv = cli.invoke(app, ["predict", str(run_dir), str(data / "c2"), "--format", "csv"]).stdout
    decisions = [row["decision"] for row in csv.DictReader(io.StringIO(as_csv))]
    assert decisions and not any(d.startswith(("=", "+", "-", "@")) for d in decisions)
    # JSON keeps the exact names (a program reads it; json escapes control characters itself)
    as_json = json.loads(cli.invoke(app, ["predict", str(run_dir), str(data / "c0"), "--format", "json"]).stdout)
    assert ESC_CLASS in as_json["images"][0]["probabilities"]

    error = cli.invoke(app, ["run", "--dataset", "folder", "--labels", str(data / "labels.csv"), "--pairs",
                             f"{ESC_CLASS}:nope\x1b[5A", "--out", str(tmp_path / "o2")], terminal_width=400)
    assert error.exit_code == 2 and len(error.stderr.strip().splitlines()) == 1, error.output
    assert_inert(error.stderr, "error line")
