"""The cache: files ambig-bench can rebuild from the data and the code, kept so that the next command is fast.

Everything sits in one directory, `$AMBIG_BENCH_CACHE`, else `$XDG_CACHE_HOME/ambig-bench`, else
`~/.cache/ambig-bench`. Each kind of file is listed in KINDS; the folders other libraries fill in LIBRARIES.

One rule for every kind:
- a file is named by its kind and a hash of the kind's version and of what its content is computed from, so
  other inputs or a bumped version make another name and a stale file is never read;
- a file that is absent, unreadable or damaged is a miss: the value is computed again and the file rewritten;
- a file is written whole or not at all (`io.write_atomic`), with the permissions the umask gives;
- a cache that cannot be written (read-only home, full disk) costs the speed-up and a warning, never the command.

$ AMBIG_BENCH_CACHE=/tmp/ab ambig-bench run --dataset cifar10     # cache somewhere else
$ ambig-bench cache            # where it is and what it holds
$ ambig-bench cache --clear    # remove what ambig-bench wrote there, nothing else

>>> cached(file("catalogue", ["example"]), JSON, lambda: {"a": 1})  # doctest: +SKIP
{'a': 1}
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

from ambig_bench.io import read_text, write_atomic
from ambig_bench.shown import warn

T = TypeVar("T")


@dataclass(frozen=True)
class Kind:
    version: str  # bump it when what such a file holds changes for the same inputs (decoding, layout)
    suffix: str


KINDS = {
    "images": Kind("3", ".npz"),  # decoded image folders and archives (imageio)
    "features": Kind("2", ".safetensors"),  # a frozen backbone's features of each distinct image (features)
    "catalogue": Kind("1", ".json"),  # the CLI's names and options (catalogue)
    "mlflow-store": Kind("1", ".db"),  # an empty MLflow tracking store, copied for each new one (tracking)
}
# Folders whose files another library names and reads: torchvision's --download (when no --data-dir is given),
# the datasets library's Arrow copy of an image folder (dataset hf).
LIBRARIES = ("torchvision", "huggingface")


def directory() -> Path:
    """$AMBIG_BENCH_CACHE, else $XDG_CACHE_HOME/ambig-bench, else ~/.cache/ambig-bench."""
    if os.environ.get("AMBIG_BENCH_CACHE"):
        return Path(os.environ["AMBIG_BENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ambig-bench"


def library_folder(library: str) -> Path:
    if library not in LIBRARIES:
        raise KeyError(f"{library!r} is not a cache folder; add it to cache.LIBRARIES")
    return directory() / library


def contents() -> dict[str, list[Path]]:
    """What ambig-bench wrote in the cache directory, by kind and library folder: only files it names (and the
    temporary files of a killed write), so a cache set to a folder that holds other files never loses them."""
    top = directory()
    found = {kind: sorted(top.glob(f"{kind}-*{k.suffix}")) for kind, k in KINDS.items()}
    found |= {library: [top / library] for library in LIBRARIES if (top / library).is_dir()}
    found["unfinished writes"] = sorted(p for kind in KINDS for p in top.glob(f".{kind}-*.tmp"))
    return {kind: paths for kind, paths in found.items() if paths}


def size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (links not followed)."""
    if path.is_dir() and not path.is_symlink():
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.lstat().st_size


def clear() -> int:
    """Remove everything `contents` lists; the bytes freed."""
    freed = 0
    for paths in contents().values():
        for path in paths:
            freed += size(path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    return freed


def file(kind: str, parts: Iterable[str | bytes]) -> Path:
    """The cache file of `kind` whose content is computed from `parts` (everything it depends on)."""
    digest = hashlib.sha1(f"{kind}\0{KINDS[kind].version}\0".encode())
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return directory() / f"{kind}-{digest.hexdigest()[:24]}{KINDS[kind].suffix}"


@dataclass(frozen=True)
class Format(Generic[T]):
    """How a value is kept in a cache file."""

    read: Callable[[Path], T]
    write: Callable[[BinaryIO, T], None]
    damaged: tuple[type[Exception], ...]  # what `read` raises for a damaged file, besides OSError


def read_json(path: Path) -> Any:
    return json.loads(read_text(path))  # a regular file within read_text's limit, else a miss (UserError)


def write_json(f: BinaryIO, value: Any) -> None:
    f.write(json.dumps(value).encode())


JSON: Format[Any] = Format(read_json, write_json, (ValueError,))


def load(path: Path, form: Format[T]) -> T | None:
    """The value kept in `path`, or None: absent, unreadable and damaged files are all a miss."""
    try:
        return form.read(path)
    except (OSError, *form.damaged):
        return None


def keep(path: Path, form: Format[T], value: T) -> None:
    """Write `value` to `path` whole; a cache that cannot be written costs the speed-up and a warning."""
    try:
        write_atomic(path, lambda f: form.write(f, value))
    except OSError as e:
        warn(f"could not write the cache file {path} ({e}); the next command computes it again")


def cached(path: Path, form: Format[T], make: Callable[[], T]) -> T:
    """The value kept in `path`, or `make()`'s, then kept there."""
    value = load(path, form)
    if value is None:
        value = make()
        keep(path, form, value)
    return value
