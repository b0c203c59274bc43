"""A folder of real photos with human `A|B` labels: the check "as a user with their own photos", built from
../shared/data (CIFAR-10 test JPEGs and their CIFAR-10H vote counts).

The photos are of the classes of the --pairs pairs that people split most often (CIFAR-10H: cat:dog,
automobile:truck, deer:horse, airplane:ship). About --between-share of them are in-between, labelled `A|B`: by the
tool's own vote rule (`datasets.base.judge_votes` at the default --human-pair-mass 0.9 and --human-second 0.2) two
classes hold nearly all the votes; the rest are clear-cut (one class holds 90% of the votes or more), the same number
from each class. They are written as the original JPEG bytes, `<class>/<index>.jpg` and `in-between/<index>.jpg`
(index: the CIFAR-10 test index), with `labels.csv` (file,label), into OUT, which must be a directory that git
ignores when it lies inside a git checkout (results/ is). The command to run on it goes to stdout.

$ python benchmarks/own_photos.py results/own-photos --images 1000 --between-share 0.1
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch

from ambig_bench.config import RunConfig
from ambig_bench.datasets.base import BETWEEN_KIND, CLEAR_KIND, judge_votes, pairs_in_votes
from ambig_bench.datasets.cifar10 import CLASSES

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BETWEEN_FOLDER = "in-between"


class Refused(Exception):
    """Bad input: one line on stderr, exit code 2."""


def git_tracks(path: Path) -> bool:
    """Whether `path` lies in a git checkout that does not ignore it (False outside any checkout)."""
    folder = next(p for p in [path, *path.parents] if p.exists())
    done = subprocess.run(["git", "-C", str(folder), "check-ignore", "-q", str(path)], capture_output=True)
    return done.returncode == 1  # 0: ignored, 128: not in a checkout


def choose(votes: np.ndarray, images: int, between_share: float, n_pairs: int,
           seed: int) -> tuple[list[tuple[int, str]], list[str]]:
    """(CIFAR-10 test index, label) of the chosen photos, clear-cut first, and the pairs ("cat:dog")."""
    cfg = RunConfig()
    votes_t = torch.from_numpy(votes.astype(np.float64))
    labels = votes_t.argmax(1)
    verdict = judge_votes(labels, votes_t, cfg)
    pairs = pairs_in_votes(labels, votes_t, list(CLASSES), cfg).split(",")[:n_pairs]
    rng = np.random.default_rng(seed)
    kind, first, second = verdict.kind.numpy(), verdict.first.numpy(), verdict.second.numpy()
    between = []
    for pair in pairs:
        a, b = (CLASSES.index(c) for c in pair.split(":"))
        mine = (kind == BETWEEN_KIND) & (np.minimum(first, second) == a) & (np.maximum(first, second) == b)
        between += [(int(i), f"{CLASSES[a]}|{CLASSES[b]}") for i in np.flatnonzero(mine)]
    n_between = round(images * between_share)
    if n_between > len(between):
        raise Refused(f"--between-share {between_share}: {n_between} in-between photos asked for, but the "
                      f"{len(pairs)} pairs have {len(between)}; lower --images or --between-share, or raise --pairs")
    between = [between[i] for i in sorted(rng.choice(len(between), n_between, replace=False))]
    classes = sorted({CLASSES.index(c) for pair in pairs for c in pair.split(":")})
    clear = []
    for j, c in enumerate(classes):  # the same number of each class, give or take one
        n = (images - n_between) // len(classes) + (j < (images - n_between) % len(classes))
        mine = np.flatnonzero((kind == CLEAR_KIND) & (first == c))
        clear += [(int(i), CLASSES[c]) for i in sorted(rng.choice(mine, n, replace=False))]
    return clear + between, pairs


def write_photos(archive: Path, chosen: list[tuple[int, str]], out: Path) -> Path:
    """The chosen test JPEGs as they are in `archive`, and labels.csv listing them; returns the CSV's path."""
    files = {index: f"{BETWEEN_FOLDER if '|' in label else label}/{index:05d}.jpg" for index, label in chosen}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and "test" in parts and (index := int(Path(member.name).stem)) in files:
                target = out / files[index]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    missing = [files[i] for i, _ in chosen if not (out / files[i]).is_file()]
    if missing:
        raise Refused(f"{archive}: test image {missing[0]} not found in the archive")
    labels = out / "labels.csv"
    with labels.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        writer.writerows([files[index], label] for index, label in chosen)
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write (git-ignored, e.g. results/own-photos)")
    parser.add_argument("--images", type=int, default=1000, help="photos in all (default 1000)")
    parser.add_argument("--between-share", type=float, default=0.1, help="share of them in-between (default 0.1)")
    parser.add_argument("--pairs", type=int, default=4, help="the pairs people split most, this many (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="which photos are drawn (default 0)")
    parser.add_argument("--data", type=Path, default=SHARED, help=f"the shared data folder (default {SHARED})")
    args = parser.parse_args(argv)
    try:
        if not 0 < args.between_share < 1:
            raise Refused(f"--between-share must be in (0, 1), got {args.between_share}")
        if args.images < 10 or args.pairs < 1:
            raise Refused(f"--images must be at least 10 and --pairs at least 1, got {args.images}, {args.pairs}")
        archive, counts = args.data / "cifar10.tgz", args.data / "cifar10h" / "cifar10h-counts.npy"
        absent = next((p for p in (archive, counts) if not p.is_file()), None)
        if absent is not None:
            raise Refused(f"--data {args.data}: {absent.name} not found (see ../shared/data/README.md)")
        out = args.out.resolve()
        if git_tracks(out):
            raise Refused(f"{args.out}: git does not ignore it, and the photos must not be committed; "
                          f"write under results/ or another ignored directory")
        chosen, pairs = choose(np.load(counts), args.images, args.between_share, args.pairs, args.seed)
        labels = write_photos(archive, chosen, out)
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_between = sum("|" in label for _, label in chosen)
    print(f"{len(chosen)} photos ({n_between} in-between, pairs {','.join(pairs)}) and {labels}", file=sys.stderr)
    print("per-image tests over every photo: add --folds 10; a pretrained backbone from a file: add --model "
          "ARCHITECTURE --weights FILE --freeze", file=sys.stderr)
    print(f"ambig-bench run --dataset folder --labels {labels} --strategy all --seeds 10 --out {out / 'results'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
