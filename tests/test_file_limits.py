"""Files that are not what they claim: every file the tool reads from the user is a regular file within a size
limit, parsed within bounds, and anything else is one line naming the file (and line or key), exit 2, no results.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from typer.testing import CliRunner

from ambig_bench.cli import app
from ambig_bench.config import MAX_CONFIG_BYTES, MAX_INT, MAX_NESTING, check_nesting, load_toml
from ambig_bench.datasets.folder import MAX_COLUMNS, MAX_LINE_CHARS, read_labels_csv
from ambig_bench.errors import UserError
from ambig_bench.shown import BRIEF, brief
from tests.test_bad_input import TINY, Args, assert_refused, labels_csv, photo_tree, png, toml, tree

OPTIONS = [{"flag": "epochs", "kind": "int"}, {"flag": "dataset", "kind": "str"}, {"flag": "lr", "kind": "float"}]


def config_at(make: str) -> Args:
    """`--config` pointing at a FIFO, /dev/zero, a link to /dev/zero or a folder, made in the test's directory."""
    def build(d: Path) -> list[str]:
        return ["--config", str(special(d / "exp.toml", make))]

    return build


def special(path: Path, make: str) -> Path:
    if make == "fifo":
        os.mkfifo(path)
    elif make == "zero-link":
        path.symlink_to("/dev/zero")
    elif make == "folder":
        path.mkdir()
    elif make == "link-loop":
        path.symlink_to(path)
    elif make == "dangling":
        path.symlink_to(path.parent / "nowhere")
    return Path("/dev/zero") if make == "zero" else path


def labels_at(make: str) -> Args:
    def build(d: Path) -> list[str]:
        photo_tree(d)
        return ["--dataset", "folder", "--labels", str(special(d / "labels.csv", make)), "--pairs", "a:b"]

    return build


def weights_at(make: str) -> Args:
    return lambda d: ["--weights", str(special(d / "w.safetensors", make))]


def run_with_5_channel_mean(d: Path) -> list[str]:
    """A run directory whose model.safetensors holds a normalisation of 5 channels (edited, or another program's)."""
    run = d / "other" / "runs" / "soft-seed0-00000000"
    run.mkdir(parents=True)
    (run / "model.json").write_text('{"model": "small-cnn"}')
    save_file({"0.mean": torch.zeros(5), "0.std": torch.ones(5), "1.head.weight": torch.zeros(3, 8)},
              str(run / "model.safetensors"))
    return ["--weights", str(run)]


def archive(duplicate: bool = False, gzip: bool = True) -> Args:
    """The photo tree as a .tgz (or a .tgz that is no gzip), with a second copy of a/0.png appended."""
    def build(d: Path) -> list[str]:
        root, path = photo_tree(d), d / "photos.tgz"
        if not gzip:
            path.write_bytes(b"plain text, not gzip\n" * 20)
        else:
            with tarfile.open(path, "w:gz") as tar:
                tar.add(root, arcname=".")
                if duplicate:
                    tar.add(root / "a" / "0.png", arcname="a/0.png")
        return ["--dataset", "folder", "--data-dir", str(path), "--pairs", "a:b"]

    return build


def npz_with_channels(channels: int) -> Args:
    def build(d: Path) -> list[str]:
        rng = np.random.default_rng(0)
        np.savez(d / "d.npz", x=rng.integers(0, 256, (30, 8, 8, channels), dtype=np.uint8), y=np.arange(30) % 3)
        return ["--dataset", "npz", "--data-dir", str(d / "d.npz"), "--pairs", "0:1"]

    return build


def nested(depth: int) -> str:
    return "pairs = " + "[" * depth + "]" * depth + "\n"


WIDE_HEADER = "file," + ",".join(f"c{i}" for i in range(MAX_COLUMNS + 10))

ROWS = [
    # -- the config file
    pytest.param(config_at("zero"), "/dev/zero: not a regular file", id="config-dev-zero"),
    pytest.param(config_at("zero-link"), ("exp.toml", "not a regular file"), id="config-link-to-dev-zero"),
    pytest.param(config_at("fifo"), ("exp.toml", "not a regular file"), id="config-fifo"),
    pytest.param(config_at("folder"), ("exp.toml", "a folder"), id="config-folder"),
    pytest.param(config_at("link-loop"), ("exp.toml", "cannot be opened"), id="config-link-loop"),
    pytest.param(toml(b"a = 1\n" + b"#" * MAX_CONFIG_BYTES), ("exp.toml", "more than a TOML config file may have"),
                 id="config-too-large"),
    pytest.param(toml("seeds = 1\nlr = 0.1\0\n"), ("exp.toml: line 2", "NUL"), id="config-nul-byte"),
    pytest.param(toml("x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n"), ("exp.toml: line 1", "nested more than"),
                 id="config-deep-inline-tables"),
    pytest.param(toml(nested(100_000)), ("exp.toml: line 1", "nested more than"), id="config-deep-arrays"),
    pytest.param(toml("epochs = 99999999999999999999999999999\n"), ("exp.toml", "--epochs must be at most"),
                 id="config-int-beyond-64-bits"),
    pytest.param(toml("epochs = " + "9" * 5000 + "\n"), ("exp.toml", "more than 4,300 digits"),
                 id="config-int-of-5000-digits"),
    pytest.param(toml("epoch = 3\n"), "exp.toml: unknown option 'epoch'; did you mean 'epochs'?", id="config-typo"),
    pytest.param(toml("[run]\nhuman_extra = true\n"), "unknown option 'human-extra'; did you mean 'human-extra-train'?",
                 id="config-typo-in-run-table"),
    pytest.param(["--epochs", "100000"], "--epochs must be at most 10000", id="epochs-beyond-the-limit"),
    # -- the labels CSV
    pytest.param(labels_at("zero"), "/dev/zero: not a regular file", id="labels-dev-zero"),
    pytest.param(labels_at("fifo"), ("labels.csv", "not a regular file"), id="labels-fifo"),
    pytest.param(labels_at("folder"), ("labels.csv", "a folder, where a labels CSV belongs"), id="labels-folder"),
    pytest.param(labels_csv(["a/new.png\0,a"]), ("labels.csv: line 26", "NUL"), id="labels-nul-byte"),
    pytest.param(labels_csv(["a/new.png," + "," * MAX_LINE_CHARS]),
                 ("labels.csv line 26", "more than a labels CSV line"), id="labels-extremely-wide-row"),
    pytest.param(labels_csv(["a/new.png," + ",a" * 5000]), ("labels.csv line 26", "5,002 fields"),
                 id="labels-row-wider-than-the-header"),
    pytest.param(labels_csv(header=WIDE_HEADER), ("labels.csv", "1,000 classes a dataset may have"),
                 id="labels-too-many-columns"),
    pytest.param(labels_csv(["a/new.png," + "a" * 200_000]), ("labels.csv line 26", "field larger than"),
                 id="labels-huge-field"),
    # -- image trees and archives
    pytest.param(tree(lambda r: special(r / "a" / "gone.png", "dangling")), ("gone.png", "a link to nothing"),
                 id="image-dangling-link"),
    pytest.param(tree(lambda r: special(r / "a" / "loop.png", "link-loop")), ("loop.png", "cannot be opened"),
                 id="image-link-loop"),
    pytest.param(tree(lambda r: (r / "a" / "ps.png").write_bytes(b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 8 8\n")),
                 ("ps.png", "not a PNG, JPEG"), id="image-postscript-named-png"),  # never handed to Ghostscript
    pytest.param(archive(duplicate=True), ("photos.tgz", "holds a/0.png twice"), id="archive-file-twice"),
    pytest.param(archive(gzip=False), ("photos.tgz: not a gzip-compressed tar archive",), id="archive-not-gzip"),
    # -- npz and weights
    pytest.param(npz_with_channels(5), ("d.npz", "5 channels"), id="npz-5-channels"),
    pytest.param(weights_at("fifo"), ("w.safetensors", "not a regular file"), id="weights-fifo"),
    pytest.param(weights_at("zero-link"), ("w.safetensors", "not a regular file"), id="weights-link-to-dev-zero"),
    pytest.param(run_with_5_channel_mean, ("model.safetensors", "must have 1 or 3 channels"),
                 id="weights-run-with-5-channel-mean"),  # refused before .locks/ and runs/ exist
]


@pytest.mark.parametrize("args, says", ROWS)
def test_a_file_that_is_not_what_it_claims_is_one_line_exit_2(tmp_path, monkeypatch, args, says):
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))
    assert_refused(tmp_path, [*TINY, *(args(tmp_path) if callable(args) else args)], says)


def test_the_npz_and_archive_fixtures_themselves_are_valid(tmp_path, monkeypatch):
    """The control for the npz and archive rows: they fail because of their one fault."""
    monkeypatch.setenv("AMBIG_BENCH_CACHE", str(tmp_path / "cache"))
    for i, make in enumerate((npz_with_channels(3), archive())):
        (tmp_path / str(i)).mkdir()
        result = CliRunner().invoke(app, ["run", *TINY, *make(tmp_path / str(i)), "--strategy", "soft", "--seeds",
                                          "1", "--out", str(tmp_path / f"out{i}")])
        assert result.exit_code == 0, result.output


def test_an_empty_out_is_refused_not_read_as_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", *TINY, "--out", ""])
    assert result.exit_code == 2 and "--out is empty" in result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("text, where", [
    pytest.param('dataset = "' + "x" * 900_000 + '"\n', "unknown dataset", id="toml-value"),
    pytest.param('"' + "x" * 900_000 + '" = 1\n', "exp.toml: unknown option", id="toml-key"),
    pytest.param('epochs = "' + "7" * 900_000 + '"\n', "exp.toml: option 'epochs'", id="toml-number-as-text"),
])
def test_an_error_line_quotes_at_most_a_brief_value(tmp_path, text, where):
    """A 900 KB value is quoted by its start and end and its length, never whole."""
    (tmp_path / "exp.toml").write_text(text)
    result = CliRunner().invoke(app, ["run", *TINY, "--config", str(tmp_path / "exp.toml"),
                                      "--out", str(tmp_path / "out")])
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and where in line and "(900,000 characters)" in line
    assert len(line) < len(str(tmp_path)) + 2 * BRIEF + 200, len(line)


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.text(max_size=3 * BRIEF), st.binary(max_size=3 * BRIEF),
                 st.lists(st.text(max_size=BRIEF), max_size=20), st.integers(), st.integers(10**150, 10**400),
                 st.floats()))
def test_brief_is_short_and_whole_when_short(value):
    text = brief(value)
    assert len(text) <= BRIEF + 40
    if len(repr(value)) <= BRIEF:  # the oracle: Python's own repr, for what needs no shortening
        assert text == repr(value)


@settings(max_examples=40, deadline=None)
@given(depth=st.integers(1, 2 * MAX_NESTING), noise=st.text(alphabet='[]{}"\\#ab', max_size=12))
def test_toml_nesting_is_bounded_before_parsing_and_brackets_in_strings_do_not_count(tmp_path_factory, depth, noise):
    """The oracle is the document's own depth: arrays of `depth` levels, each holding a string and a comment of
    brackets and quotes that must not count. Within the bound tomllib parses it to that depth."""
    quoted = '"' + noise.replace("\\", "\\\\").replace('"', '\\"') + '"'
    text = "x = " + f"[{quoted}, " * depth + "]" * depth + f"  # {noise}\n"
    path = tmp_path_factory.mktemp("toml") / "exp.toml"
    path.write_text(text)
    if depth > MAX_NESTING:
        with pytest.raises(UserError, match=f"exp.toml: line 1: arrays or tables nested more than {MAX_NESTING}"):
            check_nesting(path, text)
        return
    check_nesting(path, text)
    with pytest.raises(UserError, match="exp.toml: unknown option 'x'"):  # parsed, then refused by its key
        load_toml(path, OPTIONS)


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.integers(), st.integers(MAX_INT - 2, MAX_INT + 2), st.integers(-MAX_INT - 2, -MAX_INT + 2),
                 st.integers(2**63, 10**4000)))
def test_toml_integers_beyond_64_bits_are_refused_naming_file_and_key(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("toml") / "exp.toml"
    path.write_text(f"epochs = {value}\n")
    if abs(value) <= MAX_INT:
        assert load_toml(path, OPTIONS) == {"epochs": value}
        return
    with pytest.raises(UserError) as info:
        load_toml(path, OPTIONS)
    message = str(info.value)
    assert message.startswith(f"{path}: --epochs must be at ") and len(message) < len(str(path)) + 200


def test_a_vote_table_of_many_columns_is_refused_at_its_header(tmp_path):
    """200,000 class columns (20 MB): refused at line 1 by the line limit; a header under it by the column cap."""
    root = photo_tree(tmp_path)
    huge = root / "votes.csv"
    huge.write_text("file," + ",".join(f"class{i}" for i in range(200_000)) + "\n" + "a/0.png" + ",1" * 200_000 + "\n")
    with pytest.raises(UserError, match="votes.csv line 1: .* characters, more than a labels CSV line may have"):
        read_labels_csv(huge)


def test_a_repeated_column_is_found_in_a_header_at_the_column_cap(tmp_path):
    names = [f"c{i}" for i in range(MAX_COLUMNS - 2)]
    path = tmp_path / "votes.csv"
    path.write_text(",".join(["file", *names, "C5"]) + "\n" + "a.png" + ",1" * (len(names) + 1) + "\n")
    with pytest.raises(UserError, match="column 'c5' appears twice"):
        read_labels_csv(path)


def test_an_image_file_is_decoded_only_in_the_accepted_raster_formats():
    """Pillow opens PPM and EPS by their content; a file named .png holding either is refused unread."""
    from PIL import Image

    from ambig_bench.imageio import load_image

    for fmt in ("PPM", "TGA"):
        buffer = io.BytesIO()
        Image.new("L", (8, 8)).save(buffer, format=fmt)
        with pytest.raises(UserError, match=r"x.png: unreadable .* \(not a PNG, JPEG, BMP, GIF, TIFF or WebP image\)"):
            load_image(buffer.getvalue(), "x.png")
    assert load_image(png(np.zeros((8, 8), np.uint8)), "ok.png").size == (8, 8)
