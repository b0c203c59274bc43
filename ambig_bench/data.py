"""The data model every dataset loader produces and every strategy consumes.

A dataset is uint8 images plus, per image, a *label set*: one class (clear-cut) or an in-between pair
(A, B) with a soft split (share of A, default 0.5), and a split (train / val / test / unsure).

>>> import torch
>>> from ambig_bench.data import parse_pairs
>>> parse_pairs("4:9,3:8", [str(i) for i in range(10)])
[(4, 9), (3, 8)]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ambig_bench.errors import UserError

CLEAR = -1  # label_b of a clear-cut image
SPLITS = {"train": 0, "val": 1, "test": 2, "unsure": 3}  # "unsure": neither clear nor a pair; never trained on


@dataclass
class RawImages:
    """What a dataset loader returns, before in-between examples are chosen or generated."""

    images: torch.Tensor  # uint8 N×C×H×W
    labels: torch.Tensor  # int64 N, the majority / given class
    class_names: list[str]
    split: torch.Tensor | None = None  # int8 N (SPLITS), or None to let the runner split at random
    # float N×K human vote counts or probabilities, when known. Rows of images nobody voted on are one-hot on
    # their label; the label of an image the votes call clear-cut is its most-voted class.
    votes: torch.Tensor | None = None
    default_pairs: str = ""  # e.g. "4:9,3:8"
    source: str = ""  # where the images came from, for reports
    default_source: str = "blend"  # in-between source used for `--between-source auto`: human when votes exist
    files: list[str] | None = None  # each image's file, where the dataset has file names (for `ambig-bench pairs`)


@dataclass
class LabelledImages:
    images: torch.Tensor  # uint8 N×C×H×W
    label_a: torch.Tensor  # int64 N: the class, or the first class of the pair
    label_b: torch.Tensor  # int64 N: the second class of the pair, CLEAR (-1) for clear-cut images
    share_a: torch.Tensor  # float32 N: soft share of label_a (1 for clear-cut, 0.5 by default for a pair)
    split: torch.Tensor  # int8 N, values of SPLITS
    class_names: list[str]
    pairs: list[tuple[int, int]]
    info: dict = field(default_factory=dict)  # provenance for reports: source, counts, ...
    # float32 N×K human vote shares (rows sum to 1) when the images come with votes (the `human` source); the
    # `votes` strategy trains on them and the test metrics score against them.
    votes: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.label_a)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_between(self) -> torch.Tensor:
        return self.label_b != CLEAR

    def subset(self, split: str) -> LabelledImages:
        return self.take(self.split == SPLITS[split])

    def take(self, index: torch.Tensor) -> LabelledImages:
        """The images selected by a boolean mask or an index tensor, with everything known about them."""
        return LabelledImages(
            self.images[index], self.label_a[index], self.label_b[index], self.share_a[index],
            self.split[index], self.class_names, self.pairs, self.info,
            self.votes[index] if self.votes is not None else None,
        )

    def pair_index(self) -> torch.Tensor:
        """Index into `pairs` for in-between images (-1 for clear-cut ones)."""
        idx = torch.full((len(self),), -1, dtype=torch.long)
        for p, (a, b) in enumerate(self.pairs):
            idx[(self.label_a == a) & (self.label_b == b)] = p
            idx[(self.label_a == b) & (self.label_b == a)] = p
        return idx

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for name, code in SPLITS.items():
            inside = self.split == code
            if inside.any():
                n_between = int((inside & self.is_between).sum())
                out[name] = {"clear": int(inside.sum()) - n_between, "between": n_between}
        return out


def parse_pairs(text: str, class_names: list[str]) -> list[tuple[int, int]]:
    """`"4:9,3:8"` or `"T-shirt/top:Shirt"` -> [(a, b), ...]; class indices or names."""
    lookup = {n.lower(): i for i, n in enumerate(class_names)}

    def one(token: str) -> int:
        token = token.strip()
        if token.lower() in lookup:
            return lookup[token.lower()]
        if token.isdecimal() and token.isascii() and int(token) < len(class_names):
            return int(token)
        raise UserError(f"--pairs: unknown class {token!r}; classes are {', '.join(class_names)}")

    pairs: list[tuple[int, int]] = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise UserError(f"--pairs: malformed pair {item.strip()!r}; expected A:B, e.g. 4:9,3:8")
        a, b = one(parts[0]), one(parts[1])
        if a == b:
            raise UserError(f"--pairs: {item.strip()!r} pairs a class with itself")
        if {a, b} in [set(p) for p in pairs]:
            raise UserError(f"--pairs: pair {item.strip()!r} is given twice")
        pairs.append((a, b))
    return pairs
