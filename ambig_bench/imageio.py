"""Read image files to uint8 arrays: whole folder trees (or a .tgz / .tar of one) for the dataset loaders, through
a disk cache, and single files for prediction, converted to a model's input format.

Decoding 60,000 small JPEGs takes seconds; the second load of the same files reads one cache file (`cache`).
Its key is the archive's bytes, or for a folder every decoded file's path, size and modification time, so an
edited file is decoded again, plus the resize target. Images stay uint8 (N×C×H×W): grey when every image is
grey, RGB otherwise.

Resize policy (`fit_image`, for training and for predict alike): an image whose size is not the target is scaled
so that its shorter side is the target (pixels averaged when shrinking, bicubic when enlarging), then its centre
square is cropped. The target is --image-size when given; otherwise images of mixed sizes go to the smallest
shorter side among them (decoded at full size first: give --image-size for large photos).

$ ambig-bench run --dataset cifar10 --data-dir ../shared/data/cifar10.tgz   # second time: cached

>>> pixels, changes = read_image(find_images(["scans/"])[0], channels=1, size=8)  # doctest: +SKIP
>>> pixels.shape, changes  # doctest: +SKIP
((1, 8, 8), [('resized to 8×8', '28×28')])
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ambig_bench import budget, cache
from ambig_bench.errors import UserError
from ambig_bench.io import open_regular, read_bytes, refusal
from ambig_bench.shown import warn

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")
# In every file's fingerprint, hence in the experiment key of every run on the user's files: changing it would
# make every such finished run train again.
FINGERPRINT_VERSION = "3"
MAX_PIXELS = 40_000_000  # per image (a 7300×5500 photo): a larger header is refused before decoding
MAX_FILE_BYTES = 256 << 20  # per image file: what is read of it at most
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
# The raster formats of IMAGE_SUFFIXES, as Pillow's plugins name them (its JPEG plugin also opens a camera's MPO).
# Pillow decodes by content, so without this list a PostScript file named .png would be handed to Ghostscript.
RASTER_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
MAX_ARCHIVE_BYTES = 64 << 30  # a .tgz / .tar of images, streamed


@dataclass
class DecodedImages:
    paths: list[str]  # posix paths relative to the tree root (or inside the archive)
    images: np.ndarray  # uint8 N×C×H×W, row i decoded from paths[i]


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def is_image_name(name: str) -> bool:
    """Image suffix and not hidden (editors and file managers leave .DS_Store, ._x.jpg and the like)."""
    return name.lower().endswith(IMAGE_SUFFIXES) and not any(p.startswith(".") for p in name.split("/"))


def clean_member(name: str) -> str:
    """`./train/cat/1.jpg` -> `train/cat/1.jpg` (tar members often carry a leading ./)."""
    return PurePosixPath(name.removeprefix("./")).as_posix()


def decode_tree(source: Path, size: int | None = None) -> DecodedImages:
    """Every image file (IMAGE_SUFFIXES, not hidden) under a folder or in an archive, sorted by path; resized to
    `size` by the policy (None: kept, unless the sizes are mixed)."""
    source = Path(source)
    if is_archive(source):
        return cached(archive_key(source, size), lambda: decode_archive(source, size))
    if not source.is_dir():
        raise UserError(f"{source}: no such directory or archive")
    names = sorted(walk_images(source))
    return cached(folder_key(source, names, size), lambda: decode_files(source, names, size))


def decode_listed(root: Path, names: list[str], size: int | None = None) -> DecodedImages:
    """Just `names` (posix paths relative to the folder `root`, which the caller checked exist), in that order."""
    return cached(folder_key(root, names, size), lambda: decode_files(root, names, size))


def walk_images(root: Path) -> Iterator[str]:
    # Plain strings, not Path objects: listing 60,000 files must stay well under the cached load time.
    top = str(root)
    for folder, dirs, names in os.walk(top):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(folder, top).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        for name in names:
            if is_image_name(name):
                yield prefix + name


def archive_key(path: Path, size: int | None) -> str:
    return file_key(path, f"archive\0{size}")


def folder_key(root: Path, names: list[str], size: int | None = None) -> str:
    digest = hashlib.sha1(f"{FINGERPRINT_VERSION}\0folder\0{root.resolve()}\0{size}\0".encode())
    top = str(root)
    for name in names:
        path = os.path.join(top, name)
        try:
            st = os.stat(path)
        except OSError as e:  # a link to nothing, a link loop
            raise refusal(Path(path), e, "image file") from None
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@functools.cache
def fingerprint(path: str) -> str:
    """What a file or folder holds, for the experiment key: a folder's images by path, size and modification time
    (as the image cache keys them), a file by its bytes ("" when absent: the loader reports that). Cached for the
    process: `fingerprint.cache_clear()` before checking a new command's data."""
    source = Path(path).expanduser()
    if source.is_dir():
        return folder_key(source, sorted(walk_images(source)))
    if source.is_file():
        return file_key(source)
    return ""


def file_key(path: Path, kind: str = "file") -> str:
    digest = hashlib.sha1(f"{FINGERPRINT_VERSION}\0{kind}\0".encode())
    with open_regular(path, None) as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_decoded(path: Path) -> DecodedImages:
    with open_regular(path, None, "cache file") as f, np.load(f, allow_pickle=False) as saved:
        return DecodedImages(saved["paths"].tolist(), saved["images"])


def write_decoded(f: BinaryIO, decoded: DecodedImages) -> None:
    np.savez(f, paths=np.array(decoded.paths, dtype=str), images=decoded.images)


DECODED = cache.Format(read_decoded, write_decoded, (KeyError, ValueError, EOFError, zipfile.BadZipFile))


def cached(key: str, decode: Callable[[], DecodedImages]) -> DecodedImages:
    return cache.cached(cache.file("images", [key]), DECODED, decode)


def decode_archive(path: Path, size: int | None) -> DecodedImages:
    # Two passes over the members: their headers first, so the total is checked before any image is decoded.
    check_total([header_of(io.BytesIO(data), where) for _, where, data in archive_images(path)], size, str(path))
    paths, arrays = [], []
    for name, where, data in archive_images(path):
        paths.append(name)
        arrays.append(decode_one(data, where, size))
    order = sorted(range(len(paths)), key=paths.__getitem__)
    return stack([paths[i] for i in order], [arrays[i] for i in order], str(path))


def archive_images(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """(name, where, bytes) of each image file in a tar archive, in archive order."""
    seen = set()
    gzip = path.name.lower().endswith((".tgz", ".tar.gz"))
    try:
        with (open_regular(path, MAX_ARCHIVE_BYTES, "tar archive") as f,
              tarfile.open(fileobj=f, mode="r:gz" if gzip else "r:*") as tar):
            for member in tar:
                name = clean_member(member.name)
                if member.isfile() and is_image_name(name):
                    where = f"{path}:{name}"
                    if member.size > MAX_FILE_BYTES:
                        raise UserError(f"{where}: {member.size} bytes, more than an image file may have "
                                        f"({MAX_FILE_BYTES >> 20} MiB)")
                    if name in seen:  # tar appends: a second copy of a file is one image, not two
                        raise UserError(f"{path}: holds {name} twice; keep one copy")
                    seen.add(name)
                    yield name, where, tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:  # OSError: gzip's and bz2's damaged streams
        what = "a gzip-compressed tar archive" if gzip else "a tar archive"
        # tarfile's message for "r:*" lists every compression it tried, one per line: its first line says it.
        raise UserError(f"{path}: not {what}, or damaged ({str(e).splitlines()[0].rstrip(':')})") from None


def decode_files(root: Path, names: list[str], size: int | None) -> DecodedImages:
    inside = root.resolve()
    check_total([file_header(root / n) for n in names], size, str(root))
    return stack(names, [decode_one(read_file(root / n, inside), str(root / n), size) for n in names], str(root))


def read_file(path: Path, inside: Path | None = None) -> bytes:
    """An image file's bytes (`io.read_bytes`: a regular file of at most MAX_FILE_BYTES) and, given `inside`, not
    a link to something outside that folder."""
    data = read_bytes(path, MAX_FILE_BYTES, "image file")
    if inside is not None and not path.resolve().is_relative_to(inside):
        raise UserError(f"{path}: a link to {path.resolve()}, outside the data folder {inside}; copy the file in")
    return data


def load_image(data: bytes, where: str) -> Image.Image:
    """The decoded image, turned upright as its EXIF orientation says (phone photos are stored rotated), for
    training and prediction alike. Its header is checked before any pixel is decoded (at most MAX_PIXELS); a
    broken file is a UserError naming it, and the imaging library's warnings become one line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with Image.open(io.BytesIO(data), formats=RASTER_FORMATS) as opened:
                if opened.width * opened.height > MAX_PIXELS:
                    raise UserError(f"{where}: {opened.width}×{opened.height} pixels, more than the {MAX_PIXELS:,} "
                                    f"an image may have; shrink it first")
                image = ImageOps.exif_transpose(opened)
                image.load()  # decodes now, so truncation is detected here rather than half-silently later
        except UserError:
            raise
        except UnidentifiedImageError:
            raise UserError(f"{where}: unreadable or truncated image (not a PNG, JPEG, BMP, GIF, TIFF or WebP "
                            "image)") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise UserError(f"{where}: unreadable or truncated image ({e})") from None
    for message in dict.fromkeys(" ".join(str(w.message).split()) for w in caught):
        warn(f"{where}: {message}")
    return image


def to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit grey scaled to 8 bits (Pillow's own conversion to "L" clips everything above 255 to white)."""
    if image.mode.startswith("I"):
        return Image.fromarray((np.asarray(image, dtype=np.float64) / 257).round().clip(0, 255).astype(np.uint8))
    return image


def fit_image(image: Image.Image, size: int) -> Image.Image:
    """The resize policy: shorter side scaled to `size`, then the centre size×size square (unchanged if it is one)."""
    if image.size == (size, size):
        return image
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    # BOX averages the pixels it shrinks (how scikit-learn's 8×8 digits were made); BICUBIC when enlarging.
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
    left, top = (w - size) // 2, (h - size) // 2
    return image.resize((w, h), resample).crop((left, top, left + size, top + size))


def fit_array(pixels: np.ndarray, size: int) -> np.ndarray:
    """fit_image for an H×W or H×W×3 uint8 array."""
    return np.asarray(fit_image(Image.fromarray(pixels), size))


def fit_images(images: np.ndarray, size: int) -> np.ndarray:
    """fit_image for every image of a uint8 N×C×H×W array (datasets loaded at their own size: --image-size)."""
    budget.check_images(len(images), images.shape[1], size, f"--image-size {size}", "--image-size")
    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        fitted = fit_array(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), size)
        out[i] = fitted if fitted.ndim == 2 else fitted.transpose(2, 0, 1)
    return out


def decode_one(data: bytes, where: str, size: int | None = None) -> np.ndarray:
    """H×W (grey) or H×W×3 uint8, fitted to `size` when given."""
    image = load_image(data, where)
    image = to_8bit(image).convert("L") if image.mode in GREY_MODES else image.convert("RGB")
    return np.asarray(fit_image(image, size) if size else image)


def stack(paths: list[str], arrays: list[np.ndarray], where: str) -> DecodedImages:
    if not arrays:
        raise UserError(f"{where}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    size = arrays[0].shape[:2]
    if any(a.shape[:2] != size for a in arrays):  # mixed sizes, no --image-size: the smallest shorter side
        side = mixed_side(paths, [a.shape[1::-1] for a in arrays], where)
        arrays = [fit_array(a, side) for a in arrays]
        size = (side, side)
    rgb = any(a.ndim == 3 for a in arrays)
    out = np.empty((len(arrays), 3 if rgb else 1, *size), dtype=np.uint8)
    for i, a in enumerate(arrays):
        out[i] = a.transpose(2, 0, 1) if a.ndim == 3 else a  # a grey image among RGB ones fills all 3 channels
    return DecodedImages(paths, out)


def mixed_side(paths: list[str], sizes: list[tuple[int, int]], where: str) -> int:
    """The side images of mixed (width, height) sizes are fitted to: the smallest shorter side, said once on
    stderr. An image far smaller than the others (a stray thumbnail) would shrink every image to its size, so
    one below budget.MIN_SIDE or a quarter of the median shorter side is refused, named."""
    sides = [min(s) for s in sizes]
    i = int(np.argmin(sides))
    median = float(np.median(sides))
    if sides[i] < budget.MIN_SIDE or sides[i] < median / 4:
        w, h = sizes[i]
        raise UserError(f"{where}: {paths[i]} is {w}×{h}, far smaller than the other images (median shorter side "
                        f"{median:g} px); mixed sizes are fitted to the smallest shorter side, at least "
                        f"{budget.MIN_SIDE} px and a quarter of the median: remove it or give --image-size")
    warn(f"{where}: images of mixed sizes, all fitted to {sides[i]}×{sides[i]} (the smallest shorter side, of "
         f"{paths[i]}); give --image-size to choose")
    return sides[i]


def header_of(source: Path | BinaryIO, where: str) -> tuple[int, int, int] | None:
    """(width, height, channels) from an image file's header, nothing decoded; None when the header is unreadable
    (decoding then names the file and the fault)."""
    try:
        with Image.open(source) as image:
            return image.width, image.height, 1 if image.mode in GREY_MODES else 3
    except Exception:  # noqa: BLE001 - any fault of the file is reported by decode_one, with its name
        return None


def file_header(path: Path) -> tuple[int, int, int] | None:
    """`header_of` an image file opened as every file is (`io.open_regular`: never a FIFO or device); None when it
    cannot be opened or read (decoding then names the file and the fault)."""
    try:
        with open_regular(path, MAX_FILE_BYTES, "image file") as f:
            return header_of(f, str(path))
    except (UserError, OSError):
        return None


def check_total(headers: list[tuple[int, int, int] | None], size: int | None, where: str) -> None:
    """All the images' decoded size against the machine's memory, from their headers before any is decoded: each
    decoded image (at `size`, else at its own size, all held until they are stacked) and the stacked images a run
    keeps (budget.IMAGE_BYTES per pixel channel)."""
    known = [h for h in headers if h is not None]
    if not known:
        return
    channels = max(c for _, _, c in known)
    side = size or min(min(w, h) for w, h, _ in known)
    held = sum((size * size if size else w * h) * c for w, h, c in known)
    need = held + len(known) * channels * side * side * budget.IMAGE_BYTES
    if need > budget.available():
        fits = math.isqrt(budget.largest(len(known) * channels * (1 + budget.IMAGE_BYTES)))
        at = f"--image-size {size}" if size else "their own sizes"
        budget.check(need, f"{where}: {len(known):,} images decoded at {at}",
                     f"give --image-size {fits} or less" if fits >= 1 else "use fewer images", "in all")


# -- single files, for prediction ---------------------------------------------------------------------------------

def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given (whatever their suffix); folders searched recursively, in sorted order, for the image
    files the `folder` dataset reads too (PNG, JPEG, ...; hidden files skipped).

    A path that does not exist is kept, so it is reported as a failed file next to the others.
    """
    if not inputs:
        raise UserError("no images given: pass image files and/or folders")
    paths: list[Path] = []
    for item in map(Path, inputs):
        paths += [item / name for name in sorted(walk_images(item))] if item.is_dir() else [item]
    if not paths:
        raise UserError(f"no PNG/JPEG images found in {', '.join(map(str, inputs))}")
    return list(dict.fromkeys(paths))  # a file named twice (or inside a named folder) is predicted once


Change = tuple[str, str]  # (what was done, what the image was before), e.g. ("resized to 8×8", "28×28")


def read_image(path: Path, channels: int, size: int, width: int | None = None) -> tuple[np.ndarray, list[Change]]:
    """uint8 C×size×width (width defaults to size) in the training input format, and what had to change: square
    inputs by the training resize policy (fit_image), others (a dataset of non-square images) scaled to fit."""
    width = width or size
    image = load_image(read_file(path), str(path))  # decoded exactly as the training images were
    changes: list[Change] = []
    mode = "L" if channels == 1 else "RGB"
    if image.mode != mode:
        changes.append((f"converted to {'grey' if mode == 'L' else 'RGB'}", image.mode))
        image = to_8bit(image).convert(mode)
    if image.size != (width, size):
        changes.append((f"resized to {width}×{size}", f"{image.width}×{image.height}"))
        if width == size:
            image = fit_image(image, size)
        else:
            shrink = image.width > width or image.height > size
            image = image.resize((width, size), Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC)
    pixels = np.array(image, dtype=np.uint8)
    return np.ascontiguousarray(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)), changes
