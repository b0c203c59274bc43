"""Bad input, systematically: each row is refused with one line naming the fault, exit 2, and nothing written.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ambig_bench.cli import app

cli = CliRunner()
TINY = ["--epochs", "1", "--width", "8", "--test-between-per-pair", "10", "--val-between-per-pair", "5",
        "--device", "cpu"]
Args = Callable[[Path], list[str]]



def toml(text: str | bytes) -> Args:
    def write(d: Path) -> list[str]:
        path = d / "exp.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["--config", str(path)]

    return write


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def photo_tree(d: Path, classes: tuple[str, ...] = ("a", "b", "c"), per_class: int = 8) -> Path:
    """A valid `<class>/<image>` tree of 8x8 grey PNGs, enough for a split and blends."""
    root = d / "photos"
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            (root / c / f"{i}.png").write_bytes(png(rng.integers(0, 256, (8, 8), dtype=np.uint8)))
    return root


def tree(change: Callable[[Path], None] = lambda root: None, pairs: bool = True) -> Args:
    def build(d: Path) -> list[str]:
        root = photo_tree(d)
        change(root)
        return ["--dataset", "folder", "--data-dir", str(root), *(["--pairs", "a:b"] if pairs else [])]

    return build


def labels_csv(bad_rows: list[str] | None = None, header: str = "file,label", whole: bytes | None = None,
               split: Callable[[str], str] | None = None) -> Args:
    """A labels CSV listing every image of a valid tree by class, then `bad_rows` (from line 26 on)."""
    def build(d: Path) -> list[str]:
        root = photo_tree(d)
        rows = [f"{p.relative_to(root).as_posix()},{p.parent.name}" for p in sorted(root.glob("*/*.png"))]
        if split:
            rows = [f"{row},{split(row)}" for row in rows]
        text = "\n".join([header, *rows, *(bad_rows or [])]) + "\n"
        (root / "labels.csv").write_bytes(whole if whole is not None else text.encode())
        return ["--dataset", "folder", "--labels", str(root / "labels.csv"), "--pairs", "a:b"]

    return build


def vote_csv(bad_votes: str) -> Args:
    """A vote-count CSV (file,a,b,c) for a valid tree, its last row's votes `bad_votes` (line 25)."""
    def build(d: Path) -> list[str]:
        root = photo_tree(d)
        files = [p.relative_to(root).as_posix() for p in sorted(root.glob("*/*.png"))]
        rows = [f"{f},{','.join('3' if c == f[0] else '0' for c in 'abc')}" for f in files[:-1]]
        text = "\n".join(["file,a,b,c", *rows, f"{files[-1]},{bad_votes}"]) + "\n"
        (root / "labels.csv").write_text(text)
        return ["--dataset", "folder", "--labels", str(root / "labels.csv"), "--pairs", "a:b"]

    return build


def outside_png(root: Path) -> Path:
    """A valid image beside, not inside, the data folder `root`."""
    path = root.parent / "outside.png"
    path.write_bytes((root / "a" / "0.png").read_bytes())
    return path


def empty_dir(d: Path) -> Path:
    (d / "empty").mkdir()
    return d / "empty"


BAD_LINE = "labels.csv line 26"  # header + 24 images, then the first bad row

ROWS = [
    # -- the config file
    pytest.param(toml("epochs = [unclosed\n"), "malformed TOML", id="toml-syntax"),
    pytest.param(toml(b"\xff\xfe epochs = 1\n"), ("exp.toml: line 1", "not UTF-8"), id="toml-not-utf8"),
    pytest.param(lambda d: ["--config", str(d / "nope.toml")], "nope.toml: no such file", id="toml-missing"),
    pytest.param(toml("epochz = 2\n"), "exp.toml: unknown option 'epochz'; did you mean 'epochs'?",
                 id="toml-unknown-key"),
    pytest.param(toml('train_size = "many"\n'), "'train-size': 'many' is not a valid int", id="toml-text-for-int"),
    pytest.param(toml("train_size = 2.5\n"), "'train-size': 2.5 is not a valid int", id="toml-fraction-for-int"),
    pytest.param(toml("train_size = [1, 2]\n"), "is not a valid int", id="toml-list-for-int"),
    pytest.param(toml('download = "perhaps"\n'), "'download': 'perhaps' is not a valid bool", id="toml-bad-bool"),
    pytest.param(toml("between_fraction = 1.5\n"), "--between-fraction must be in (0, 1)", id="toml-out-of-range"),
    pytest.param(toml('strategies = ["soft", "nope"]\n'), "unknown strategy 'nope'", id="toml-unknown-strategy"),
    pytest.param(lambda d: ["--config", str(d)], "config", id="toml-config-is-a-folder"),
    pytest.param(toml('seeds = "x"\n'), "seeds", id="toml-seeds-not-a-number"),
    pytest.param(toml("strategies = 5\n"), "strategies", id="toml-strategies-not-a-list"),
    pytest.param(toml("strategies = [1, 2]\n"), "strategies", id="toml-strategies-numbers"),
    pytest.param(toml("run = 3\n"), "run", id="toml-run-not-a-table"),
    pytest.param(toml("human_extra_train = 3\nseeds = 1\n"), "human-extra-train", id="toml-number-for-bool"),
    # -- names
    pytest.param(["--strategy", "nope"], "unknown strategy 'nope'", id="unknown-strategy"),
    pytest.param(["--strategy", ","], "no strategy given", id="no-strategy"),
    pytest.param(["--dataset", "nope"], "unknown dataset 'nope'", id="unknown-dataset"),
    pytest.param(["--model", "resnet9000"], "unknown model 'resnet9000'", id="unknown-model"),
    pytest.param(["--between-source", "nope"], "unknown between source 'nope'", id="unknown-between-source"),
    pytest.param(["--augment", "sometimes"], "--augment must be auto, on or off", id="bad-augment"),
    pytest.param(["--device", "tpu"], "--device must be auto, cpu or cuda", id="bad-device"),
    # -- pairs
    pytest.param(["--pairs", "4-9"], "malformed pair '4-9'", id="pair-without-colon"),
    pytest.param(["--pairs", "4:9:3"], "malformed pair '4:9:3'", id="pair-of-three"),
    pytest.param(["--pairs", ","], "malformed pair ''", id="pair-empty"),
    pytest.param(["--pairs", "4:4"], "pairs a class with itself", id="pair-with-itself"),
    pytest.param(["--pairs", "4:99"], "unknown class '99'", id="pair-unknown-index"),
    pytest.param(["--pairs", "cat:dog"], "unknown class 'cat'", id="pair-unknown-name"),
    pytest.param(["--pairs", "4:9,9:4"], "given twice", id="pair-twice"),
    pytest.param(["--pairs", "²:1"], "unknown class '²'", id="pair-superscript-digit"),
    pytest.param(["--pairs", "[/x]:[bold]"], "unknown class '[/x]'", id="pair-rich-markup"),  # shown, not parsed
    pytest.param(lambda d: ["--labels", str(d / "[/x]" / "[bold]l.csv"), "--dataset", "folder"],
                 ("--labels ", "/[/x]/[bold]l.csv: no such file"), id="labels-path-rich-markup"),
    # -- fractions, thresholds and counts out of range
    *[pytest.param([f"--{name}", value], f"--{name} must be in (0, 1), got {value}", id=f"{name}={value}")
      for name, value in [("between-fraction", "0"), ("between-fraction", "1"), ("between-fraction", "-0.1"),
                          ("between-fraction", "nan"), ("val-fraction", "0"), ("val-fraction", "1"),
                          ("test-fraction", "1.5"), ("natural-threshold", "0"), ("natural-threshold", "1"),
                          ("human-pair-mass", "1.2"), ("human-second", "-0.1")]],
    pytest.param(["--blend-low", "0.7", "--blend-high", "0.6"], "0 <= low <= high <= 1", id="blend-low>high"),
    pytest.param(["--momentum", "1"], "--momentum must be in [0, 1), got 1.0", id="momentum=1"),
    pytest.param(["--momentum", "-0.5"], "--momentum must be in [0, 1), got -0.5", id="momentum-negative"),
    pytest.param(["--momentum", "nan"], "--momentum must be in [0, 1), got nan", id="momentum=nan"),
    pytest.param(["--translate", "-1"], "--translate must be at least 0, got -1", id="translate-negative"),
    pytest.param(["--augment", "on", "--translate", "8"], "--translate 8 must be smaller than the 8x8 images",
                 id="translate-as-large-as-the-image"),
    pytest.param(["--lookahead", "maybe"], "--lookahead must be on or off, got 'maybe'", id="bad-lookahead"),
    pytest.param(["--schedule", "sawtooth"], "--schedule must be linear, triangle or cosine, got 'sawtooth'",
                 id="bad-schedule"),
    pytest.param(["--blend-high", "1.5"], "0 <= low <= high <= 1", id="blend-high>1"),
    pytest.param(["--blend-low", "-0.1"], "0 <= low <= high <= 1", id="blend-low<0"),
    *[pytest.param([f"--{name}", value], f"--{name} must be at least 1, got {value}", id=f"{name}={value}")
      for name, value in [("epochs", "0"), ("batch-size", "-5"), ("test-between-per-pair", "0"),
                          ("val-between-per-pair", "0")]],
    pytest.param(["--seeds", "0"], "--seeds must be at least 1, got 0", id="seeds=0"),
    # -- sizes that would allocate beyond the machine: refused before any network or image is made
    pytest.param(["--width", "10000000"], "--width must be at most 1024", id="width-huge"),
    pytest.param(["--batch-size", "100000000"], "--batch-size must be at most 65536", id="batch-size-huge"),
    pytest.param(["--test-between-per-pair", "1000000000"], "--test-between-per-pair must be at most 100000",
                 id="test-between-per-pair-huge"),
    pytest.param(["--seed", str(2**70)], "--seed must be at most", id="seed-beyond-64-bits"),
    pytest.param(["--seed", "-1"], "--seed must be at least 0", id="seed-negative"),
    pytest.param(["--seeds", "1000000000"], "--seeds must be at most 10000", id="seeds-huge"),
    pytest.param(toml("train_size = true\n"), "'train-size': True is not a valid int", id="toml-bool-for-int"),
    pytest.param(["--width", "-3"], "--width must be at least 1, got -3", id="width=-3"),
    pytest.param(["--width", "0"], "--width must be at least 1, got 0", id="width=0"),
    pytest.param(["--train-size", "-1"], "--train-size must be at least 1, got -1", id="train-size=-1"),
    pytest.param(["--lr", "-2"], "--lr must be > 0", id="lr=-2"),
    pytest.param(["--weight-decay", "-0.5"], "--weight-decay must be >= 0", id="weight-decay=-0.5"),
    pytest.param(["--lr", "nan", "--seeds", "1"], "--lr must be > 0", id="lr=nan"),
    # -- data that leave a class without a training image
    pytest.param(["--train-size", "5"], "training image for class", id="train-size-leaves-a-class-empty"),
    pytest.param(["--val-fraction", "0.6", "--test-fraction", "0.5"], "--val-fraction + --test-fraction must be < 1",
                 id="val+test-leave-no-training-image"),
    # -- where the runs train (cli.py change of this issue)
    pytest.param(["--device", "cuda"], "CUDA is not available", id="cuda-without-gpu", marks=[
        pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")]),
    pytest.param(["--executor", "spark"], "--executor must be local or ray", id="unknown-executor"),
    pytest.param(["--jobs", "0"], "--jobs must be at least 1", id="jobs=0"),
    pytest.param(["--ray-address", "auto"], "--ray-address needs --executor ray", id="ray-address-without-ray"),
    pytest.param(["--executor", "ray", "--jobs", "2"], "--jobs is for --executor local", id="ray-with-jobs"),
    # -- the folder dataset: image trees
    pytest.param(tree(lambda r: (r / "a" / "broken.png").write_bytes(b"this is not a PNG")), "broken.png",
                 id="folder-corrupt-image"),
    pytest.param(tree(lambda r: (r / "a" / "cut.png").write_bytes((r / "a" / "0.png").read_bytes()[:70])),
                 "cut.png", id="folder-truncated-image"),  # cut inside the pixel data
    pytest.param(lambda d: ["--dataset", "folder", "--data-dir", str(empty_dir(d)), "--pairs", "a:b"], "empty",
                 id="folder-empty"),
    pytest.param(lambda d: ["--dataset", "folder", "--data-dir", str(d / "nowhere")], "nowhere",
                 id="folder-missing"),
    pytest.param(lambda d: ["--dataset", "folder", "--data-dir", str(photo_tree(d, classes=("a",)))], "2 classes",
                 id="folder-one-class"),
    pytest.param(tree(pairs=False), "--pairs", id="folder-no-pairs"),
    pytest.param(tree(lambda r: os.mkfifo(r / "a" / "pipe.png")), ("pipe.png", "not a regular file"),
                 id="folder-fifo"),  # reading it would block forever
    pytest.param(tree(lambda r: (r / "a" / "z.png").symlink_to("/dev/zero")), ("z.png", "not a regular file"),
                 id="folder-link-to-a-device"),  # reading it would never end
    pytest.param(tree(lambda r: (r / "a" / "x.png").symlink_to(outside_png(r))), ("x.png", "outside the data folder"),
                 id="folder-link-out-of-the-root"),
    pytest.param(tree(lambda r: (r / "a" / "huge.png").write_bytes(png(np.zeros((7000, 6000), np.uint8)))),
                 ("huge.png", "6000×7000 pixels", "40,000,000"), id="folder-huge-header"),  # refused undecoded
    # -- the folder dataset: labels CSV
    pytest.param(labels_csv(["a/new.png,a|zebra"]), (BAD_LINE, "zebra"), id="csv-unknown-class"),
    pytest.param(labels_csv(["a/new.png,a|b|c"]), (BAD_LINE, "a|b|c"), id="csv-three-classes"),
    pytest.param(labels_csv(["a/new.png,a|A"]), (BAD_LINE, "a|A"), id="csv-class-with-itself"),
    pytest.param(labels_csv(["a/ghost.png,a"]), (BAD_LINE, "ghost.png"), id="csv-missing-file"),
    pytest.param(labels_csv(["../outside.png,a"]), (BAD_LINE, "../outside.png"), id="csv-path-escapes-root"),
    pytest.param(labels_csv(["/etc/hostname,a"]), (BAD_LINE, "/etc/hostname"), id="csv-absolute-path"),
    pytest.param(labels_csv(["a/new.png,a,extra"]), (BAD_LINE, "field"), id="csv-extra-field"),
    pytest.param(labels_csv(["a/0.png,b"]), (BAD_LINE, "a/0.png"), id="csv-file-listed-twice"),
    pytest.param(labels_csv(["a/new.png,"]), (BAD_LINE, "label"), id="csv-empty-label"),
    pytest.param(labels_csv(whole=b""), "labels.csv", id="csv-empty-file"),
    pytest.param(vote_csv("1e308,1e308,0"), ("labels.csv line 25", "sum to a finite number"), id="csv-votes-overflow"),
    pytest.param(labels_csv(whole=b"file,label\n\xff\xfe,a\n"), "labels.csv", id="csv-not-utf8"),
    pytest.param(labels_csv(header="name,label"), "'file' column", id="csv-no-file-column"),
    pytest.param(labels_csv(header="file,label,split", split=lambda row: "train" if row < "c" else "later"),
                 "split 'later'", id="csv-bad-split"),
    pytest.param(labels_csv(header="file,label,split", split=lambda row: "test" if row.startswith("c/") else "train"),
                 "training image for class c", id="csv-class-only-in-test"),
]


@pytest.mark.parametrize("args, says", ROWS)
def test_bad_input_gives_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, args, says: str | tuple[str, ...]):
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))  # decoded images: never the user's cache
    assert_refused(tmp_path, [*TINY, *(args(tmp_path) if callable(args) else args)], says)


def assert_refused(tmp_path, run_args: list[str], says: str | tuple[str, ...]) -> None:
    """`ambig-bench run RUN_ARGS` exits 2 with one line on stderr naming each of `says`, and writes no results."""
    out = tmp_path / "out"
    result = cli.invoke(app, ["run", *run_args, "--out", str(out)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    named = (says,) if isinstance(says, str) else says
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(s in lines[0] for s in named), result.stderr
    assert not out.exists(), "bad input writes nothing to results"


@pytest.mark.parametrize("args, option", [
    pytest.param(["--epochs", "x"], "--epochs", id="text-for-int"),
    pytest.param(["--epochz", "2"], "--epochz", id="unknown-option"),
    pytest.param(["--download", "maybe"], "maybe", id="value-for-a-flag"),
])
def test_options_typer_rejects_exit_2_name_the_option_and_write_nothing(tmp_path, args, option):
    """Typer's own parse errors: exit 2 and the option named, but in typer's multi-line usage panel."""
    out = tmp_path / "out"
    result = cli.invoke(app, ["run", *TINY, *args, "--out", str(out)])
    assert result.exit_code == 2 and option in result.stderr, result.stderr
    assert not out.exists()


def damaged_run(d: Path) -> Path:
    run_dir = d / "results" / "runs" / "soft-seed0-00000000"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"strategy": "soft", "seed": 0}))
    (run_dir / "metrics.json").write_text('{"clear_acc": 0.9')  # edited by hand, or a disk fault
    (run_dir / "DONE").write_text("")
    return d / "results"


@pytest.mark.parametrize("results, says", [
    pytest.param(lambda d: d / "nothing", "results directory not found", id="compare-missing-directory"),
    pytest.param(lambda d: empty_dir(d), "no finished runs found", id="compare-no-runs"),
    pytest.param(damaged_run, "metrics.json: not valid JSON", id="compare-damaged-metrics"),
])
def test_compare_refuses_bad_results_in_one_line_and_writes_nothing(tmp_path, results, says):
    where = results(tmp_path)
    result = cli.invoke(app, ["compare", str(where)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and says in lines[0], result.stderr
    assert not (where / "comparison.csv").exists()


@pytest.mark.parametrize("data", [
    pytest.param(tree(), id="tree"),
    pytest.param(labels_csv(), id="labels-csv"),
    pytest.param(labels_csv(header="file,label,split", split=lambda row: "test" if row[2] in "01" else "train"),
                 id="labels-csv-with-split"),
])
def test_the_folder_fixtures_themselves_are_valid(tmp_path, monkeypatch, data):
    """The control for the folder rows: they fail because of their one fault, not of the fixture."""
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))
    result = cli.invoke(app, ["run", *TINY, *data(tmp_path), "--strategy", "soft", "--seeds", "1",
                              "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output


def test_out_that_is_a_file_is_bad_input(tmp_path):
    out = tmp_path / "not-a-dir"
    out.write_text("x")
    result = cli.invoke(app, ["run", "--out", str(out), *TINY])
    assert result.exit_code == 2 and "cannot create the results directory" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
