"""Bad data: each case is one UserError line naming the file, row or option at fault, and no results written."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ambig_bench.cli import app
from ambig_bench.datasets import prepare
from ambig_bench.errors import UserError
from tests.conftest import tiny_config
from tests.test_datasets import private_cache, shade, write_fashion, write_image, write_labels, write_tree

__all__ = ["private_cache"]  # the autouse fixture applies here too


def labelled_folder(root: Path, rows: list[str], header: str = "file,label") -> Path:
    """cat/, dog/, fox/ with 10 images each, all listed (rows 2..31), then the given extra rows (32...)."""
    body = []
    for label, name in enumerate(["cat", "dog", "fox"]):
        for i in range(10):
            write_image(root / name / f"{i}.png", shade(label))
            body.append(f"{name}/{i}.png,{name}" if header == "file,label" else
                        f"{name}/{i}.png,{','.join('5' if k == label else '0' for k in range(3))}")
    return write_labels(root, header, body + rows)


def junk_tree(tmp: Path) -> Path:
    write_image(tmp / "junk" / "cat" / "0.png", 1)
    (tmp / "junk" / "dog").mkdir()
    (tmp / "junk" / "dog" / "0.png").write_bytes(b"this is not a PNG")
    return tmp / "junk"


def truncated_tree(tmp: Path) -> Path:
    root = write_tree(tmp / "trunc", ["cat", "dog"], 2)
    write_image(root / "dog" / "1.png", 90, size=64, rgb=True)
    data = (root / "dog" / "1.png").read_bytes()
    (root / "dog" / "1.png").write_bytes(data[: len(data) // 2])
    return root


def truncated_idx(tmp: Path) -> Path:
    folder = write_fashion(tmp / "fm")
    labels = folder / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-5]))
    return folder


def fox_only_in_test(tmp: Path) -> Path:
    root = write_tree(tmp / "split", ["cat", "dog", "fox"], 10)
    rows = [f"{n}/{i}.png,{n},{'train' if i < 6 else 'test'}" for n in ("cat", "dog") for i in range(10)]
    return write_labels(root, "file,label,split", rows + [f"fox/{i}.png,fox,test" for i in range(10)])


def float_npz(tmp: Path) -> Path:
    np.savez(tmp / "float.npz", x=np.zeros((4, 3, 3), np.float32), y=np.zeros(4, int))
    return tmp / "float.npz"


def csv_with(*rows: str, header: str = "file,label"):
    """The extra rows name images that need not exist: these errors come before any file is read."""
    return lambda tmp: str(labelled_folder(tmp / "data", list(rows), header))


VOTES = "file,cat,dog,fox"
# name -> (config overrides built in a fresh tmp dir, text the one-line message must contain)
CASES = {
    "missing directory": (lambda t: dict(dataset="folder", data_dir=str(t / "nope")), "--data-dir"),
    "missing fashion-mnist dir": (lambda t: dict(dataset="fashion-mnist", data_dir=str(t / "nope")), "nope"),
    "unreadable image": (lambda t: dict(dataset="folder", data_dir=str(junk_tree(t)), pairs="cat:dog"), "dog/0.png"),
    "truncated image": (lambda t: dict(dataset="folder", data_dir=str(truncated_tree(t)), pairs="cat:dog"),
                        "dog/1.png: unreadable or truncated"),
    "truncated idx": (lambda t: dict(dataset="fashion-mnist", data_dir=str(truncated_idx(t))),
                      "train-labels-idx1-ubyte.gz: truncated"),
    "unknown class": (lambda t: dict(dataset="folder", labels=csv_with("new.png,cat|cow")(t)),
                      "line 32: unknown class 'cow'"),
    "pair with itself": (lambda t: dict(dataset="folder", labels=csv_with("new.png,cat|cat")(t)),
                         "line 32: 'cat|cat' pairs a class with itself"),
    "pair with itself (--pairs)": (lambda t: dict(dataset="folder", labels=csv_with()(t), pairs="dog:dog"),
                                   "--pairs: 'dog:dog' pairs a class with itself"),
    "duplicate row": (lambda t: dict(dataset="folder", labels=csv_with("./cat/1.png,dog")(t)),
                      "line 32: cat/1.png is listed twice (also on line 3)"),
    "path escapes root": (lambda t: dict(dataset="folder", labels=csv_with("../outside.png,cat")(t)),
                          "line 32: '../outside.png' escapes the data root"),
    "absolute path": (lambda t: dict(dataset="folder", labels=csv_with("/etc/hostname,cat")(t)),
                      "line 32: '/etc/hostname' escapes the data root"),
    "missing listed file": (lambda t: dict(dataset="folder", labels=csv_with("cat/77.png,cat")(t)),
                            "line 32: file"),
    "class with no training image": (lambda t: dict(dataset="folder", labels=str(fox_only_in_test(t)), pairs="cat:dog"),
                                     "no (clear-cut) training image for class fox"),
    "votes sum to 0": (lambda t: dict(dataset="folder", labels=csv_with("new.png,0,0,0", header=VOTES)(t)),
                       "line 32: the votes sum to 0"),
    "vote not a number": (lambda t: dict(dataset="folder", labels=csv_with("new.png,1,x,0", header=VOTES)(t)),
                          "line 32: column 'dog': 'x' is not a number"),
    "wrong field count": (lambda t: dict(dataset="folder", labels=csv_with("new.png")(t)),
                          "line 32: 1 fields, but the header has 2"),
    "no validation image": (lambda t: dict(dataset="folder", labels=str(write_labels(
        write_tree(t / "few", ["a", "b"], 2), "file,label,split", ["a/0.png,a,train", "b/0.png,b,train",
                                                                   "a/1.png,a,test", "b/1.png,b,test"])),
        pairs="a:b"), "no val image (4 images in all)"),
    "npz float images": (lambda t: dict(dataset="npz", data_dir=str(float_npz(t))), "x must be uint8"),
    "human without votes": (lambda t: dict(dataset="folder", data_dir=str(write_tree(t / "tr", ["a", "b"], 8)),
                                           pairs="a:b", between_source="human"), "has no human votes"),
    "no pairs in the data": (lambda t: dict(dataset="folder", data_dir=str(write_tree(t / "tr", ["a", "b"], 8))),
                             "give --pairs"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, name):
    build, expected = CASES[name]
    overrides = build(tmp_path)
    with pytest.raises(UserError) as info:
        prepare(tiny_config(**overrides))
    assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)
    # The same through the command line: one line on stderr, exit code 2, no results directory.
    out = tmp_path / "results"
    args = [a for k, v in overrides.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    result = CliRunner().invoke(app, ["run", *args, "--out", str(out), "--epochs", "1", "--device", "cpu"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and expected in lines[0], result.stderr
    assert not out.exists()


def test_a_repeated_file_stops_the_labels_csv_where_it_repeats(tmp_path):
    """A CSV of one file repeated is refused at its first repeat, before the rest is parsed into rows: here the file
    ends in a field longer than csv allows, which parsing it all would report instead."""
    from ambig_bench.datasets.folder import read_labels_csv

    csv_path = tmp_path / "labels.csv"
    rest = b"".join(b"img/%d.png,cat\n" % i for i in range(10_000)) + b"img/x.png," + b"c" * 200_000 + b"\n"
    csv_path.write_bytes(b"file,label\nimg/a.png,cat\n./img/a.png,cat\n" + rest)
    with pytest.raises(UserError, match=r"labels.csv line 3: img/a.png is listed twice \(also on line 2\)"):
        read_labels_csv(csv_path)
