"""Hostile and messy input, as an adversarial user would try it: names that are markup in some output, data
changed under finished runs, sweeps with one bad point, images that are not what their names say, signals,
a full disk and the umask. Each test goes through the CLI where the case concerns the CLI."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from markdown_it import MarkdownIt
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from ambig_bench import cli as cli_module
from ambig_bench import io as io_module
from ambig_bench.cli import app
from ambig_bench.imageio import decode_tree, read_image

cli = CliRunner()
TINY = ["--epochs", "1", "--width", "8", "--batch-size", "64", "--test-between-per-pair", "10",
        "--val-between-per-pair", "5", "--device", "cpu"]

# Class names from a labels CSV: an HTML attribute breakout, a script, Rich markup, markdown, a newline.
HOSTILE_CLASSES = [
    '[a](figures/b" onmouseover="document.body.innerHTML=document.title" x=".png)',
    "<script>alert(1)</script>",
    "[bold]x[/bold] [/x] *e* _u_ `c`",
]
HOSTILE_FILES = ["photo[edited].png", "a|b.png", 'q"uote.png', "[bold]x.png", "<b>b<b>.png"]  # [/x] is in folders
TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "h4", "p", "ul", "li", "table", "thead",
        "tbody", "tr", "th", "td", "img", "a", "em", "strong", "code", "br", "div", "span"}
ATTRIBUTES = {"lang", "charset", "name", "content", "src", "alt", "id", "href", "style", "class"}


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def hostile_data(d: Path) -> Path:
    """A folder of 8x8 grey PNGs under a path with | and [/x], labelled by a CSV with HOSTILE_CLASSES."""
    root = d / "da|ta [/x] <i>"
    rng = np.random.default_rng(0)
    rows = []
    for c, name in enumerate(HOSTILE_CLASSES):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(10):
            file = f"c{c}/{i}[edited].png"
            (root / file).write_bytes(png(rng.integers(0, 256, (8, 8), dtype=np.uint8)))
            rows.append([file, name])
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["file", "label"], *rows])
    return root


class Tags(HTMLParser):
    """Every start tag and attribute of a page, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data) -> None:
        self.text.append(data)


def assert_no_live_html(page: str) -> str:
    """Only the tags and attributes markdown makes, links only to figures; returns the page's text."""
    parser = Tags()
    parser.feed(page)
    for tag, attrs in parser.tags:
        assert tag in TAGS, tag
        for name, value in attrs:
            assert name in ATTRIBUTES, (tag, name, value)
            if name == "href":
                assert value.startswith(("#fig-", "figures/")), value
            if name == "src":
                assert value.startswith(("data:image/png;base64,", "figures/")), value[:40]
    return "".join(parser.text)


def assert_tables_whole(markdown: str) -> None:
    """Every row of every pipe table has as many cells as its header (an unescaped | would add one)."""
    cells = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            cells = None
            continue
        n = len(re.findall(r"(?<!\\)\|", line))
        assert cells is None or n == cells, line
        cells = n


@pytest.mark.slow
def test_hostile_names_through_run_compare_report_and_predict(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))
    root = hostile_data(tmp_path)
    out = tmp_path / "out [/x] <i>|"
    ran = cli.invoke(app, ["run", *TINY, "--dataset", "folder", "--labels", str(root / "labels.csv"),
                           "--pairs", "0:1", "--strategy", "soft,hard", "--seeds", "2", "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    assert str(out) in ran.stderr  # the next-step line names the directory exactly

    # compare: piped markdown, the file, the CSV, and the Rich table a terminal gets
    compared = cli.invoke(app, ["compare", str(out)])
    assert compared.exit_code == 0, compared.output
    assert_tables_whole(compared.stdout)
    comparison = (out / "comparison.md").read_text()
    assert_tables_whole(comparison)
    assert "<i>" not in comparison and "\\<i\\>" in comparison  # the results folder name, escaped
    terminal = Console(file=io.StringIO(), force_terminal=True, width=400)
    monkeypatch.setattr(cli_module, "out", terminal)
    assert cli.invoke(app, ["compare", str(out)]).exit_code == 0
    # The title shown exactly; Rich wraps it to the table's width (mid-word for a long temporary path), which
    # only adds line breaks and padding, so compare without whitespace.
    shown = re.sub(r"\s+", "", terminal.file.getvalue())
    assert re.sub(r"\s+", "", f"{out}") in shown

    # report: markdown (rendered as GitHub would, raw HTML on) and the self-contained HTML page
    reported = cli.invoke(app, ["report", str(out)])
    assert reported.exit_code == 0, reported.output
    markdown = (out / "report.md").read_text()
    assert_tables_whole(markdown)
    assert "<script>" not in markdown
    assert_no_live_html(MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown))
    text = assert_no_live_html((out / "report.html").read_text())
    for name in HOSTILE_CLASSES:
        assert name in text, name  # shown exactly, as text

    # predict: files whose names are markup, in every format; an unreadable one named exactly
    photos = tmp_path / "new [/x]"
    photos.mkdir(parents=True)
    for name in HOSTILE_FILES:
        (photos / name).write_bytes((root / "c0" / "0[edited].png").read_bytes())
    (photos / "broken[bold].png").write_bytes(b"not an image")
    run_dir = next((out / "runs").glob("soft-*"))
    table = Console(file=io.StringIO(), force_terminal=True, width=1000)
    monkeypatch.setattr(cli_module, "out", table)
    shown = cli.invoke(app, ["predict", str(run_dir), str(photos)])
    assert shown.exit_code == 1, shown.output  # one file failed
    plain = re.sub(r"\x1b\[[0-9;]*m", "", table.file.getvalue())
    for name in HOSTILE_FILES:
        assert str(photos / name) in plain, name
    assert f"{photos / 'broken[bold].png'}: " in shown.stderr
    assert HOSTILE_CLASSES[1] in plain
    as_csv = cli.invoke(app, ["predict", str(run_dir), str(photos), "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {Path(r["path"]).name for r in rows} == {*HOSTILE_FILES, "broken[bold].png"}
    assert {f"p_{name}" for name in HOSTILE_CLASSES} <= set(rows[0])
    as_json = json.loads(cli.invoke(app, ["predict", str(run_dir), str(photos), "--format", "json"]).stdout)
    assert {Path(r["path"]).name for r in as_json["images"]} == {*HOSTILE_FILES, "broken[bold].png"}


def run_names(out: Path) -> set[str]:
    return {p.name for p in (out / "runs").iterdir() if not p.name.startswith(".")}


@pytest.mark.slow
def test_relabelled_or_edited_data_give_new_runs_and_keep_the_old(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))
    root = hostile_data(tmp_path)
    out = tmp_path / "out"
    args = ["run", *TINY, "--dataset", "folder", "--labels", str(root / "labels.csv"), "--pairs", "0:1",
            "--strategy", "soft", "--seeds", "1", "--out", str(out)]
    assert cli.invoke(app, args).exit_code == 0
    first = run_names(out)
    again = cli.invoke(app, args)
    assert "(1 reused)" in again.stderr and run_names(out) == first  # unchanged data: reused

    labels = (root / "labels.csv").read_text().splitlines()
    labels[1] = labels[1].replace(HOSTILE_CLASSES[0], HOSTILE_CLASSES[1])  # one image relabelled
    (root / "labels.csv").write_text("\n".join(labels) + "\n")
    relabelled = cli.invoke(app, args)
    assert "(0 reused)" in relabelled.stderr, relabelled.stderr
    second = run_names(out)
    assert first < second and len(second) == 2  # a new run; the old one stays

    image = root / "c1" / "3[edited].png"
    image.write_bytes(png(np.full((8, 8), 7, np.uint8)))  # an image changed in place
    os.utime(image, ns=(time.time_ns() + 10**9,) * 2)
    edited = cli.invoke(app, args)
    assert "(0 reused)" in edited.stderr and len(run_names(out)) == 3, edited.stderr

    compared = cli.invoke(app, ["compare", str(out)])  # the three versions of the data, told apart
    assert compared.exit_code == 0, compared.output
    assert (pd.read_csv(out / "comparison.csv").data_version.nunique()) == 3
    reported = cli.invoke(app, ["report", str(out)])
    assert reported.exit_code == 0 and "data-version" in (out / "report.md").read_text(), reported.output
    assert "warning: figure" not in reported.stderr  # one small panel still has room for its wrapped title


def test_every_sweep_point_is_checked_before_the_first_run(tmp_path):
    out = tmp_path / "out"
    swept = cli.invoke(app, ["sweep", *TINY, "--strategy", "soft", "--seeds", "1", "--vary", "pairs=4:9,1:77",
                             "--out", str(out)])
    assert swept.exit_code == 2, swept.output
    lines = [line for line in swept.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown class '77'" in lines[0], swept.stderr
    assert not out.exists(), "nothing trained or written"


def test_toml_pairs_as_a_list(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text('pairs = ["4:9", "3:8"]\nstrategies = ["soft"]\nseeds = 1\n')
    out = tmp_path / "out"
    ran = cli.invoke(app, ["run", *TINY, "--config", str(config), "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    [run] = (out / "runs").glob("soft-*")
    assert json.loads((run / "config.json").read_text())["data"]["pairs"] == "4:9,3:8"


def test_toml_true_is_not_one_epoch(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text("epochs = true\n")
    result = cli.invoke(app, ["run", "--config", str(config), "--device", "cpu", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "'epochs': True is not a valid int" in result.stderr, result.output
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    ran = cli.invoke(app, ["run", *TINY, "--strategy", "soft", "--seeds", "1", "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    return next((out / "runs").glob("soft-*"))


@pytest.mark.parametrize("width, says", [(10_000_000, "field 'width' must be an integer in 0..1024"),
                                         (1000, "weights do not fit")])  # checked on shapes, nothing allocated
def test_predict_refuses_a_wrong_width_in_model_json_before_building(trained_run, tmp_path, width, says):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for f in ("model.safetensors", "model.json"):
        (run_dir / f).write_bytes((trained_run / f).read_bytes())
    meta = json.loads((run_dir / "model.json").read_text())
    (run_dir / "model.json").write_text(json.dumps({**meta, "width": width}))
    image = tmp_path / "x.png"
    image.write_bytes(png(np.zeros((8, 8), np.uint8)))
    result = cli.invoke(app, ["predict", str(run_dir), str(image)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and says in lines[0], result.stderr


def test_library_warnings_become_one_line_each(trained_run, tmp_path, monkeypatch):
    # Pillow warns of a possible decompression bomb above MAX_IMAGE_PIXELS: a 64-pixel image warns here.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)
    image = tmp_path / "x.png"
    image.write_bytes(png(np.zeros((8, 8), np.uint8)))
    result = cli.invoke(app, ["predict", str(trained_run), str(image), "--format", "csv"])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.strip()]
    assert warned and all(line.startswith("warning: ") and str(image) in line for line in warned), result.stderr


def test_exif_orientation_is_applied_in_training_as_in_predict(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:4, :, 0] = 255  # a red band at the top, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    (tmp_path / "a").mkdir()
    Image.fromarray(pixels).save(tmp_path / "a" / "phone.jpg", exif=exif, quality=95)
    trained = decode_tree(tmp_path).images[0]
    predicted, _ = read_image(tmp_path / "a" / "phone.jpg", channels=3, size=16)
    assert np.array_equal(trained, predicted)
    assert trained[0, :, -4:].mean() > 200 and trained[0, :, :4].mean() < 50  # upright: the band is on the right


def test_results_and_caches_follow_the_umask(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))
    before = os.umask(0o027)
    try:
        root = hostile_data(tmp_path)
        out = tmp_path / "out"
        assert cli.invoke(app, ["run", *TINY, "--dataset", "folder", "--labels", str(root / "labels.csv"),
                                "--pairs", "0:1", "--strategy", "soft", "--seeds", "1", "--out", str(out)]
                          ).exit_code == 0
        assert cli.invoke(app, ["compare", str(out)]).exit_code == 0
    finally:
        os.umask(before)
    files = [*(out / "runs").glob("*/*"), out / "comparison.md", out / "comparison.csv",
             *(tmp_path / "cache").glob("*.npz")]
    assert len(files) > 10
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(0o640)}


@pytest.mark.parametrize("command", ["run", "compare", "report"])
def test_disk_full_is_one_line_and_says_nothing_finished_is_lost(trained_run, tmp_path, monkeypatch, command):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(kwargs.get("dir", "?")))

    monkeypatch.setattr(io_module.tempfile, "mkstemp", full)
    out = trained_run.parent.parent if command != "run" else tmp_path / "out"
    args = ["run", *TINY, "--strategy", "soft", "--seeds", "1", "--out", str(out)] if command == "run" else \
        [command, str(out)]
    result = cli.invoke(app, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert lines[-1].startswith("error: ") and "No space left on device" in lines[-1]
    assert "run the same command again" in lines[-1]
    assert [line for line in lines if line.startswith("error")] == [lines[-1]]


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def descendants(pid: int) -> set[int]:
    found = set()
    try:
        for child in children(pid):
            found |= {child, *descendants(child)}
    except FileNotFoundError:  # exited meanwhile
        pass
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def grid_process(tmp_path: Path, *where: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "AMBIG_BENCH_CACHE": str(tmp_path / "cache")}
    return subprocess.Popen(
        [sys.executable, "-m", "ambig_bench.cli", "run", "--epochs", "200", "--width", "8", "--device", "cpu",
         "--strategy", "soft,hard", "--seeds", "2", *where, "--out", str(tmp_path / "out")],
        env=env, stderr=subprocess.PIPE, text=True)


def terminate_and_check(grid: subprocess.Popen, workers: set[int]) -> None:
    """SIGTERM: exit 143 with the interruption line, and none of `workers` still running shortly after."""
    grid.send_signal(signal.SIGTERM)
    _, stderr = grid.communicate(timeout=120)
    assert grid.returncode == 143, stderr
    assert "interrupted: finished runs are kept" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(w) for w in workers):
        time.sleep(0.5)
    assert workers and not [cmdline(w) for w in workers if alive(w)], "no worker keeps training after SIGTERM"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc (Linux)")
def test_sigterm_stops_the_jobs_workers_and_keeps_finished_runs(tmp_path):
    grid = grid_process(tmp_path, "--jobs", "2")
    workers: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(workers) < 2:  # the two pool workers (spawn adds a tracker too)
        time.sleep(0.5)
        workers = children(grid.pid)
    time.sleep(3)  # the workers are training now
    terminate_and_check(grid, workers)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc (Linux)")
def test_sigterm_stops_the_ray_tasks(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'ambig-bench[ray]'); CI installs it")
    grid = grid_process(tmp_path, "--executor", "ray")
    tasks: set[int] = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not tasks:  # a Ray worker process running one of the runs
        time.sleep(1)
        tasks = {p for p in descendants(grid.pid) if "train_remote" in cmdline(p)}
    assert tasks, "no Ray task started"
    terminate_and_check(grid, descendants(grid.pid))


def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch):
    """The write of a full disk fails with an error that names no file; the one line still names it."""
    real_fdopen = os.fdopen

    class Full(io.BufferedWriter):
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(fd, mode="r", *args, **kwargs):
        return Full(io.FileIO(fd, "wb")) if "w" in mode else real_fdopen(fd, mode, *args, **kwargs)

    monkeypatch.setattr(io_module.os, "fdopen", fdopen)
    target = tmp_path / "comparison.csv"
    with pytest.raises(OSError) as raised:
        io_module.write_atomic(target, "x")
    assert raised.value.filename == str(target) and raised.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []  # no temporary file left
