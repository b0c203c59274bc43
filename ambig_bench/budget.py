"""Memory limits: what a command will allocate, estimated from sizes before anything is allocated, and the one
check of an estimate against the machine's available memory (a one-line UserError naming what is too big).

The machine's memory is psutil's available memory where psutil is installed, else /proc/meminfo's MemAvailable,
else the free pages os.sysconf reports; $AMBIG_BENCH_MEMORY (e.g. `2GiB`, `512MiB`, `8e9`) overrides it.

>>> size_text(16_174_000_000)
'15.1 GiB'
>>> parse_size("2GiB")
2147483648
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from pathlib import Path

from ambig_bench.errors import UserError
from ambig_bench.io import open_regular

MEMORY_ENV = "AMBIG_BENCH_MEMORY"
MAX_CLASSES = 1000  # classes of a dataset: its labels, votes and predictions grow with it (10,000 ran for minutes)
MIN_SIDE = 8  # pixels: the smallest side mixed-size images are fitted to (the CNNs pool an 8×8 input to 1×1)
# Bytes per decoded pixel channel of an image a run keeps: the loaded uint8 images (kept for the grid), the run's
# uint8 copy (its clear-cut images with the in-between ones), and the two float32 copies the normalisation fit
# makes of them (`models.Preprocess.fit`). Training adds the network's activations, which this leaves out.
IMAGE_BYTES = 1 + 1 + 4 + 4
# Per generated in-between image: its uint8 copy, the two float32 images it is mixed from and the float32 mix
# while it is made (`datasets.blend.blend_pair`), and the float32 copies of the normalisation fit.
BLEND_BYTES = 1 + 4 + 4 + 4 + 8
UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 10**3, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6, "mib": 1 << 20,
         "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tb": 10**12, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """`2GiB`, `512 MiB`, `8e9`, `1.5G` -> bytes; anything else is a UserError naming $AMBIG_BENCH_MEMORY."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if not match or match[2] not in UNITS or not math.isfinite(value := float(match[1]) * UNITS[match[2]]):
        raise UserError(f"${MEMORY_ENV}: {text!r} is not a memory size (e.g. 2GiB, 512MiB, 8e9)")
    return int(value)


def available() -> int:
    """Bytes of memory this command may still use: $AMBIG_BENCH_MEMORY, else what the system says is available."""
    if given := os.environ.get(MEMORY_ENV, "").strip():
        return parse_size(given)
    try:
        import psutil  # optional: where installed, it knows every platform's notion of available memory
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def size_text(n: float) -> str:
    """Bytes for a person: `15.1 GiB`, `612 MiB`, `16.3 TiB`."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 100 * scale else f"{n / scale:,.0f} {unit}"
    return f"{int(n)} bytes"


def check(need: int, what: str, advice: str = "", purpose: str = "") -> None:
    """UserError `WHAT needs N GiB PURPOSE; this machine has M GiB available; ADVICE` when `need` is more than
    available, e.g. `--image-size 3000 needs 151 GiB for 1,797 images of 1×3000×3000; ...`."""
    have = available()
    if need > have:
        raise UserError(f"{what} needs {size_text(need)}{' ' + purpose if purpose else ''}; this machine has "
                        f"{size_text(have)} available" + (f"; {advice}" if advice else ""))


def largest(per_unit: float, have: int | None = None) -> int:
    """How many units of `per_unit` bytes fit in the available memory (0 when not one does)."""
    return int((available() if have is None else have) // max(per_unit, 1))


def check_images(n: int, channels: int, side: int, what: str, fix: str = "") -> None:
    """The images a run keeps: `n` images of channels×side×side. `fix`: an option whose largest side that fits the
    machine is named (`--image-size`), else the advice is to use a smaller size."""
    need = n * channels * side * side * IMAGE_BYTES
    if need <= available():
        return
    most = math.isqrt(largest(n * channels * IMAGE_BYTES))
    advice = f"at most {fix} {most}" if fix and most >= 1 else "give a smaller --image-size"
    check(need, what, advice, f"for {n:,} images of {channels}×{side}×{side}")


# -- sizes read from file headers, before the arrays are loaded ------------------------------------------------

def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each array's shape in a .npz file, from the .npy headers inside the zip (no array is loaded); {} when the
    file is not a readable zip of .npy files (the loader reports that)."""
    import numpy as np  # numpy's own reader of the .npy header: format versions and field orders are its own

    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    shapes: dict[str, tuple[int, ...]] = {}
    try:  # open_regular: a FIFO or device is never opened (UserError, a ValueError: the loader reports it)
        with open_regular(path, None, "npz file") as f, zipfile.ZipFile(f) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    with archive.open(info) as f:
                        version = np.lib.format.read_magic(f)
                        if version in readers:
                            shapes[info.filename.removesuffix(".npy")] = tuple(readers[version](f)[0])
    except (OSError, ValueError, SyntaxError, zipfile.BadZipFile, EOFError):
        return {}
    return shapes


def check_npz(path: Path) -> None:
    """An .npz dataset's images (`x`) against the machine and its classes (`probs`, `class_names`) against
    MAX_CLASSES, from the arrays' headers."""
    shapes = npz_shapes(path)
    if len(shape := shapes.get("x", ())) in (3, 4):
        check(math.prod(shape) * IMAGE_BYTES, f"{path}: x of shape {shape}", "shrink the images or keep fewer")
    for name in ("probs", "class_names"):
        if shapes.get(name):
            check_classes(shapes[name][-1], f"{path}: {name} of shape {shapes[name]}")


def check_classes(count: int, where: str) -> None:
    """At most MAX_CLASSES classes."""
    if count > MAX_CLASSES:
        raise UserError(f"{where}: {count:,} classes, more than the {MAX_CLASSES:,} a dataset may have")


def csv_columns(path: Path, most: int) -> int:
    """Columns of a CSV's header line, counted in one pass and no further than `most` + 1 (a longer header need
    not be read to be refused); 0 when the file is not a readable regular file (the loader reports that)."""
    commas = 0
    try:
        with open_regular(path, None, "labels CSV") as f:
            while commas < most and (block := f.read(1 << 16)):
                line = block.split(b"\n", 1)[0]
                commas += line.count(b",")
                if len(line) < len(block):
                    break
    except (OSError, UserError):
        return 0
    return min(commas + 1, most + 1)
