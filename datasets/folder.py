"""`folder`: your own images, as a class-per-folder tree and/or a labels CSV with in-between labels.

Tree (`--data-dir DIR`, a folder or a .tgz/.tar of one): `DIR/<class>/<image>`, or with fixed splits
`DIR/{train,val,test}/<class>/<image>` (val optional; `validation` also names it). Class = folder name,
classes sorted by name.

Hugging Face imagefolder layout as it is: `DIR/metadata.csv` with a `file_name` column is read as the labels
CSV when --labels is not given; files under `train/`, `validation/` (or `val/`) and `test/` take that split.
Images of any size are resized by `imageio.fit_image` (shorter side to --image-size, centre crop).

Labels CSV (`--labels FILE`): lists every image used; `file` paths are relative to `--data-dir` (default:
the CSV's folder). Either a `label` column (`cat`, or `cat|dog` for an image between cat and dog), or one
column per class holding vote counts or probabilities, or crowd votes in long form, one row per vote
(`file,worker,label`; see `crowd.py`). An optional `split` column (train/val/test) fixes
the splits; otherwise they are drawn per seed.

$ ambig-bench run --dataset folder --data-dir photos --labels photos/labels.csv --between-source human
"""

from __future__ import annotations

import csv
import posixpath
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ambig_bench import budget
from ambig_bench.config import RunConfig, check_choice, option
from ambig_bench.data import SPLITS, RawImages
from ambig_bench.datasets.base import check_class_names, check_votes, loader_options, register_dataset, voted_images
from ambig_bench.datasets.crowd import CROWD_METHODS, aggregate_votes, is_long_form
from ambig_bench.errors import UserError
from ambig_bench.imageio import decode_listed, decode_tree, is_archive
from ambig_bench.io import read_text
from ambig_bench.shown import brief

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}  # Hugging Face: validation
FILE_COLUMNS = ("file", "path", "file_name")  # file_name: Hugging Face imagefolder's metadata.csv
HF_METADATA = "metadata.csv"


@dataclass
class FolderOptions:
    crowd_method: str = option("shares", "folder, long-form crowd labels (file,worker,label): shares (each class's "
                                         "share of an image's votes) | dawid-skene (needs crowd-kit)",
                               choices=CROWD_METHODS)

    def validate(self) -> None:
        check_choice("crowd_method", self.crowd_method, CROWD_METHODS)


@register_dataset("folder", options=FolderOptions, listed_files=lambda csv: read_labels_csv(csv).files)
def folder(cfg: RunConfig) -> RawImages:
    """Your own images: <class>/<image> folders (or a .tgz) and/or a labels CSV (--labels) with A|B or votes."""
    if cfg.data.labels:
        return from_csv(cfg, existing(cfg.data.labels, "--labels"))
    if not cfg.data.data_dir:
        raise UserError("dataset folder: give --data-dir (a <class>/<image> tree or a .tgz of one) "
                        "and/or --labels FILE.csv")
    root = existing(cfg.data.data_dir, "--data-dir")
    if (root / HF_METADATA).is_file():
        return from_csv(cfg, root / HF_METADATA)
    raw, _ = read_image_folder(root, cfg.data.image_size)
    return raw


def existing(path: str, option: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{option} {path}: no such file or directory")
    return p


def read_image_folder(source: Path, size: int | None = None) -> tuple[RawImages, list[str]]:
    """A `<class>/<image>` or `<split>/<class>/<image>` tree (folder or archive) -> raw images (fitted to `size`)
    and their paths."""
    decoded = decode_tree(source, size)
    parts = [tuple(p.split("/")) for p in decoded.paths]  # decode_tree gives clean posix paths
    with_splits = any(len(p) == 3 and p[0] in SPLIT_NAMES for p in parts)
    fits = (lambda p: len(p) == 3 and p[0] in SPLIT_NAMES) if with_splits else (lambda p: len(p) == 2)
    odd = next((path for path, p in zip(decoded.paths, parts, strict=True) if not fits(p)), None)
    if odd is not None:
        layout = "<split>/<class>/<image> with split train, val or test" if with_splits else "<class>/<image>"
        raise UserError(f"{source}: {odd} does not fit the tree layout {layout}")
    class_col = 1 if with_splits else 0
    class_names = sorted({p[class_col] for p in parts})
    check_class_names(class_names, str(source))
    index = {name: i for i, name in enumerate(class_names)}
    labels = torch.tensor([index[p[class_col]] for p in parts], dtype=torch.long)
    split = None
    if with_splits:
        present = {SPLIT_NAMES[p[0]] for p in parts}
        if not {"train", "test"} <= present:
            raise UserError(f"{source}: split folders need train/ and test/ (val/ is optional); found "
                            f"{', '.join(sorted(present))}/")
        split = torch.tensor([SPLITS[SPLIT_NAMES[p[0]]] for p in parts], dtype=torch.int8)
    raw = RawImages(torch.from_numpy(decoded.images), labels, class_names, split, source=str(source),
                    files=decoded.paths)
    return raw, decoded.paths


@dataclass
class LabelTable:
    """The parsed labels CSV: one entry per image, in file order."""

    files: list[str]  # normalised posix paths relative to the data root
    lines: list[int]  # the CSV line of each file, for error messages
    class_names: list[str]
    votes: np.ndarray  # float64 N×K: vote columns, or 1 on the label (1 and 1 for `A|B`)
    split: np.ndarray | None  # int8 N of SPLITS, when the CSV has a split column


def from_csv(cfg: RunConfig, csv_path: Path) -> RawImages:
    root = existing(cfg.data.data_dir, "--data-dir") if cfg.data.data_dir else csv_path.parent
    table = read_labels_csv(csv_path, loader_options(cfg).crowd_method)
    if is_archive(root):
        decoded = decode_tree(root, cfg.data.image_size)
        row = {p: i for i, p in enumerate(decoded.paths)}
        gone = next((i for i, f in enumerate(table.files) if f not in row), None)
        if gone is not None:
            raise UserError(f"{csv_path} line {table.lines[gone]}: {table.files[gone]} is not an image in {root}")
        images = decoded.images[[row[f] for f in table.files]]
    else:
        gone = next((i for i, f in enumerate(table.files) if not (root / f).is_file()), None)
        if gone is not None:
            raise UserError(f"{csv_path} line {table.lines[gone]}: file {root / table.files[gone]} not found")
        images = decode_listed(root, table.files, cfg.data.image_size).images
    if table.split is None and all(f.split("/", 1)[0] in SPLIT_NAMES for f in table.files):
        # Hugging Face imagefolder: the split is the top folder (train/, validation/, test/)
        table.split = read_split(csv_path, [(line, [f.split("/", 1)[0]]) for line, f in
                                            zip(table.lines, table.files, strict=True)], 0)
    split = torch.from_numpy(table.split) if table.split is not None else None
    return voted_images(torch.from_numpy(images), torch.from_numpy(table.votes), table.class_names, split, cfg,
                        f"{csv_path} ({root})", files=table.files)


MAX_COLUMNS = budget.MAX_CLASSES + 2  # a labels CSV's columns: file, split and one per class
MAX_LINE_CHARS = 1 << 20  # characters in one line of a labels CSV


def bounded_lines(path: Path, text: str) -> Iterator[str]:
    """The lines of `text`, each at most MAX_LINE_CHARS long, so one huge row is refused before csv splits it."""
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if len(line) > MAX_LINE_CHARS:
            raise UserError(f"{path} line {number}: {len(line):,} characters, more than a labels CSV line may have "
                            f"({MAX_LINE_CHARS:,})")
        yield line


def read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """The CSV's non-empty rows with their line numbers, read within limits (`io.read_text`, MAX_COLUMNS,
    MAX_LINE_CHARS, and csv's own limit on one field). A row whose field count differs from the header's, and a file
    listed twice (where one row is one image, not one vote), stop the reading there, so a huge file of repeats is
    refused without being held in memory as rows."""
    numbered: list[tuple[int, list[str]]] = []
    first_line: dict[str, int] = {}
    file_col = None
    reader = csv.reader(bounded_lines(path, read_text(path, what="labels CSV")))
    try:
        for line, row in enumerate(reader, 1):
            if not any(cell.strip() for cell in row):
                continue
            if not numbered:  # the header: where the file names are, and whether a row is one image
                if len(row) > MAX_COLUMNS:
                    raise UserError(f"{path} line {line}: {len(row):,} columns, more than a labels CSV may have "
                                    f"({MAX_COLUMNS:,})")
                lower = [h.strip().lower() for h in row]
                file_col = next((lower.index(c) for c in FILE_COLUMNS if c in lower), None)
                file_col = None if is_long_form(row) else file_col
            elif len(row) != len(numbered[0][1]):
                raise UserError(f"{path} line {line}: {len(row):,} fields, but the header has {len(numbered[0][1])}")
            elif file_col is not None:
                name = posixpath.normpath(row[file_col].strip().replace("\\", "/"))
                if name in first_line:
                    raise listed_twice(path, line, name, first_line[name])
                first_line[name] = line
            numbered.append((line, row))
    except csv.Error as e:  # e.g. a field longer than csv.field_size_limit()
        raise UserError(f"{path} line {reader.line_num}: not a readable CSV row ({e})") from None
    return numbered


def listed_twice(path: Path, line: int, name: str, first: int) -> UserError:
    return UserError(f"{path} line {line}: {name} is listed twice (also on line {first})")


def read_labels_csv(path: Path, crowd_method: str = "shares") -> LabelTable:
    numbered = read_rows(path)
    if not numbered:
        raise UserError(f"{path}: empty; expected a header such as file,label")
    header = [h.strip() for h in numbered[0][1]]
    body = numbered[1:]
    if not body:
        raise UserError(f"{path}: has a header but no rows")
    lower = [h.lower() for h in header]
    dup = next((h for h, count in Counter(lower).items() if count > 1), None)
    if dup is not None:
        raise UserError(f"{path}: column {brief(dup)} appears twice in the header")
    file_col = next((lower.index(c) for c in FILE_COLUMNS if c in lower), None)
    if file_col is None:
        raise UserError(f"{path}: the header needs a 'file' column (file,label or file,<class>,<class>,...; "
                        f"Hugging Face's file_name also works)")
    split_col = lower.index("split") if "split" in lower else None
    if is_long_form(header):  # one row per vote (file,worker,label): crowd.py makes one row of votes per image
        body, class_names, votes = aggregate_votes(path, header, body, crowd_method)
    elif "label" in lower:
        extra = [h for i, h in enumerate(header) if i not in (file_col, split_col, lower.index("label"))]
        if extra:
            raise UserError(f"{path}: unexpected column {brief(extra[0])} next to 'label' (allowed: file, label, "
                            "split)")
        class_names, votes = label_votes(path, body, lower.index("label"))
    else:
        class_cols = [i for i in range(len(header)) if i not in (file_col, split_col)]
        if len(class_cols) < 2:
            raise UserError(f"{path}: needs a 'label' column or one vote column per class (at least 2)")
        class_names = [header[i] for i in class_cols]
        check_class_names(class_names, str(path))
        votes = vote_columns(path, body, class_cols, header)
    files = normalised_files(path, body, file_col)
    lines = [line for line, _ in body]
    check_votes(torch.from_numpy(votes), len(class_names), str(path), lambda i: f"{path} line {lines[i]}")
    split = read_split(path, body, split_col) if split_col is not None else None
    return LabelTable(files, lines, class_names, votes, split)


def normalised_files(path: Path, body: list[tuple[int, list[str]]], col: int) -> list[str]:
    """Relative posix paths; absolute ones, `..` escapes and repeats are errors naming the line."""
    files: list[str] = []
    first_line: dict[str, int] = {}
    for line, row in body:
        raw = row[col].strip().replace("\\", "/")
        if not raw:
            raise UserError(f"{path} line {line}: empty file name")
        norm = posixpath.normpath(raw)
        if raw.startswith("/") or re.match(r"[A-Za-z]:/", raw) or norm == ".." or norm.startswith("../"):
            raise UserError(f"{path} line {line}: {brief(raw)} escapes the data root (use a path relative to it)")
        if norm in first_line:
            raise listed_twice(path, line, norm, first_line[norm])
        first_line[norm] = line
        files.append(norm)
    return files


def label_votes(path: Path, body: list[tuple[int, list[str]]], col: int) -> tuple[list[str], np.ndarray]:
    """`cat` -> one vote for cat; `cat|dog` -> one vote each. Classes: the names used alone, sorted."""
    parsed: list[tuple[int, list[str]]] = []
    for line, row in body:
        names = [n.strip() for n in row[col].split("|")]
        if len(names) > 2 or not all(names):
            raise UserError(f"{path} line {line}: label {brief(row[col])} must be a class or two classes as A|B")
        if len(names) == 2 and names[0].lower() == names[1].lower():
            raise UserError(f"{path} line {line}: {brief(row[col])} pairs a class with itself")
        parsed.append((line, names))
    class_names = sorted({names[0] for _, names in parsed if len(names) == 1})
    check_class_names(class_names, str(path))
    index = {n.lower(): i for i, n in enumerate(class_names)}
    votes = np.zeros((len(parsed), len(class_names)))
    for r, (line, names) in enumerate(parsed):
        for name in names:
            if name.lower() not in index:
                raise UserError(f"{path} line {line}: unknown class {brief(name)}; every class needs at least one "
                                f"image labelled with it alone (classes: {', '.join(class_names)})")
            votes[r, index[name.lower()]] = 1
    return class_names, votes


def vote_columns(path: Path, body: list[tuple[int, list[str]]], cols: list[int], header: list[str]) -> np.ndarray:
    votes = np.zeros((len(body), len(cols)))
    for r, (line, row) in enumerate(body):
        for c, col in enumerate(cols):
            cell = row[col].strip()
            try:
                votes[r, c] = float(cell) if cell else 0.0  # a blank cell in a count table means no votes
            except ValueError:
                raise UserError(f"{path} line {line}: column {brief(header[col])}: {brief(cell)} is not a "
                                "number") from None
    return votes


def read_split(path: Path, body: list[tuple[int, list[str]]], col: int) -> np.ndarray:
    split = np.zeros(len(body), dtype=np.int8)
    for r, (line, row) in enumerate(body):
        value = row[col].strip().lower()
        if value not in SPLIT_NAMES:
            raise UserError(f"{path} line {line}: split {brief(row[col])} must be train, val (validation) or test")
        split[r] = SPLITS[SPLIT_NAMES[value]]
    for needed in ("train", "test"):
        if not (split == SPLITS[needed]).any():
            raise UserError(f"{path}: the split column has no {needed!r} row")
    return split
