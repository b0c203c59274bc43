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

import errno
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ambig_bench.errors import UserError
from ambig_bench.shown import csv_frame

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
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # a full disk fails the write, whose error names no file: say which one
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


STALE_AFTER_S = 60.0  # a temporary file untouched this long is a killed writer's: write_atomic finishes in moments


def remove_stale_temps(*targets: Path, older_than: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary files (`.NAME.XXXXXXXX.tmp`) that `write_atomic` left for `targets` when its process
    was killed; a target's name may be a pattern (`figures/*.png`). A writer alive now writes and renames its
    file within moments, so only files unchanged for `older_than` seconds are taken. Returns what was removed."""
    removed = []
    cutoff = time.time() - older_than
    for target in targets:
        for tmp in target.parent.glob(f".{target.name}.*.tmp"):
            try:
                if tmp.lstat().st_mtime < cutoff and stat.S_ISREG(tmp.lstat().st_mode):
                    tmp.unlink()
                    removed.append(tmp)
            except FileNotFoundError:  # removed by another command cleaning up at the same moment
                continue
    return removed


def write_json(path: Path, obj: object) -> None:
    # allow_nan=False: NaN and Infinity are not JSON (JSON.parse and most readers refuse them).
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")


def write_csv(path: Path, df: pd.DataFrame) -> None:
    """A CSV whose text cells cannot run as spreadsheet formulas (`shown.csv_frame`)."""
    write_atomic(path, csv_frame(df).to_csv(index=False))


MAX_TEXT_BYTES = 64 << 20  # a config, labels CSV or run file beyond this is not one this tool wrote or reads


def with_article(what: str) -> str:
    """`what` with its indefinite article: "an image file", "a TOML config file"."""
    return f"{'an' if what[:1] in 'aeiou' else 'a'} {what}"


def refusal(path: Path, error: OSError, what: str = "file") -> Exception:
    """What to raise for an OSError of opening or listing `path`: one line naming it (UserError) where the path is
    at fault (missing, a link to nothing, a link loop, a folder, a name too long), the error itself otherwise."""
    if isinstance(error, FileNotFoundError):
        return UserError(f"{path}: {'a link to nothing' if os.path.islink(path) else 'no such file'}")
    if isinstance(error, IsADirectoryError):  # where the system refuses to open a folder at all
        return UserError(f"{path}: a folder, where {with_article(what)} belongs")
    if error.errno in (errno.ELOOP, errno.ENAMETOOLONG, errno.ENOTDIR):
        return UserError(f"{path}: cannot be opened ({error.strerror}); give the path of {with_article(what)}")
    return error


def open_regular(path: Path, limit: int | None, what: str = "file") -> BinaryIO:
    """`path` open for reading if it is a regular file (not a FIFO that would block, not a device that never ends,
    not a folder or a link loop) of at most `limit` bytes (None: any size, for files that are streamed); otherwise
    one line naming the file (UserError)."""
    try:
        # O_NONBLOCK: a FIFO put in place after any check still cannot block the open; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise refusal(path, e, what) from None
    st, such = os.fstat(fd), with_article(what)
    too_big = limit is not None and st.st_size > limit
    problem = (f"a folder, where {such} belongs" if stat.S_ISDIR(st.st_mode) else
               f"not a regular file (a FIFO, device or socket); {such} must be a file" if not stat.S_ISREG(st.st_mode)
               else f"{st.st_size:,} bytes, more than {such} may have ({limit:,})" if too_big else "")
    if problem:
        os.close(fd)
        raise UserError(f"{path}: {problem}")
    return os.fdopen(fd, "rb")


def read_bytes(path: Path, limit: int, what: str = "file") -> bytes:
    """The bytes of `path`, read through `open_regular` (a regular file of at most `limit` bytes)."""
    with open_regular(path, limit, what) as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # grew while being read
        raise UserError(f"{path}: more than {with_article(what)} may have ({limit:,} bytes)")
    return data


def read_text(path: Path, limit: int = MAX_TEXT_BYTES, what: str = "text file") -> str:
    """`read_bytes` as UTF-8 text (a BOM is dropped); invalid encodings and NUL bytes are one line naming the
    file and line."""
    data = read_bytes(path, limit, what)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line}: not UTF-8 text (byte {data[e.start]:#04x}); save it as UTF-8") from None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise UserError(f"{path}: line {line}: holds a NUL byte; {with_article(what)} is text")
    return text


def read_json(path: Path, limit: int = MAX_TEXT_BYTES) -> Any:
    """Files written here are never partial, so an unreadable one was edited or damaged by hand."""
    try:
        return json.loads(read_text(path, limit, "JSON file"))
    except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: nesting deeper than Python's stack
        why = e if isinstance(e, json.JSONDecodeError) else "nested too deeply"
        raise UserError(f"{path}: not valid JSON ({why}); delete its run directory to train the run again") from None
