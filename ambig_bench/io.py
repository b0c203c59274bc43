"""Crash-safe file writing: every file is written to a temporary name and renamed into place.

A reader therefore sees the old file or the new one, never half of one, whenever the writer is killed.
The data and then the directory entry are fsynced, so a finished file also survives a power cut.

>>> from pathlib import Path
>>> write_json(Path("results/doctest/example.json"), {"a": 1})  # doctest: +SKIP
>>> read_json(Path("results/doctest/example.json"))  # doctest: +SKIP
{'a': 1}
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from ambig_bench.errors import UserError


def fsync_dir(path: Path) -> None:
    """Make the names created or renamed inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, obj: object) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path: Path, df: pd.DataFrame) -> None:
    write_atomic(path, df.to_csv(index=False))


def read_json(path: Path) -> dict:
    """Files written here are never partial, so an unreadable one was edited or damaged by hand."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); delete its run directory to train the run again") from None
