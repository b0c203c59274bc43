"""Crash-safe file writing: every file is written to a temporary name and renamed into place.

A reader therefore sees the old file or the new one, never half of one, whenever the writer is killed.
The data and then the directory entry are fsynced, so a finished file also survives a power cut. Files get
the permissions the user's umask gives a new file (0644 under the usual 022), as `open()` would.

>>> from pathlib import Path
>>> write_json(Path("results/doctest/example.json"), {"a": 1})  # doctest: +SKIP
>>> read_json(Path("results/doctest/example.json"))  # doctest: +SKIP
{'a': 1}
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ambig_bench.errors import UserError

if TYPE_CHECKING:  # pandas is not imported for the CLI's start (the catalogue's cache is written here)
    import pandas as pd


def fsync_dir(path: Path) -> None:
    """Make the names created or renamed inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: str | bytes | Callable[[BinaryIO], None]) -> None:
    """Write `data` (or let `data(f)` write into the open file) to `path`, whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600 files; results and caches are meant to be shared like any file the user writes.
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
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
