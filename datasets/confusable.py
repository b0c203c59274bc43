"""Which class pairs are confusable: ranked from human votes when the data have them, else from out-of-fold
predictions of a reference network (the `natural` source's, shared here). Feeds `ambig-bench pairs` and
`--pairs auto`.

The evidence is an N×K distribution per image: its vote shares, or the reference network's class
probabilities for it from a fold that did not train on it. Pair {A, B} scores by its joint confusion,
J[A, B] + J[B, A] with J[a, b] = (1/N) Σ_{i labelled a} p_ib: the share of all the evidence's probability
that sits on B for images labelled A or on A for images labelled B (the off-diagonal of cleanlab's joint, without
its thresholds). `images` counts the images whose two most likely classes are A and B with the second at
least --human-second (0.2).

$ ambig-bench pairs --dataset fashion-mnist --train-size 6000
$ ambig-bench run --dataset folder --data-dir photos --pairs auto
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from ambig_bench.config import RunConfig
from ambig_bench.data import SPLITS, RawImages
from ambig_bench.datasets.base import (
    DATASETS,
    MIN_DEFAULT_PAIR,
    Reference,
    SourceContext,
    assign_splits,
    check_raw,
    clear_cut,
    limit_train,
)
from ambig_bench.datasets.natural import NaturalOptions, reference_probs
from ambig_bench.errors import UserError

AUTO = "auto"  # --pairs auto
EXAMPLES = 3  # example images per pair in the table
AUTO_SHARE = 0.4  # --pairs auto keeps pairs scoring at least this share of the top score (CIFAR-10H: the known 4)


@dataclasses.dataclass
class Evidence:
    kind: str  # "votes" or "reference"
    probs: torch.Tensor  # float64 N×K: vote shares or out-of-fold probabilities
    labels: torch.Tensor  # int64 N: each image's label
    names: list[str]  # each image's file (or "#row" where the dataset has no file names)


def has_spread_votes(raw: RawImages) -> bool:
    """Votes that say more than the label: some image has votes on two classes (`A|B`, crowd or vote columns)."""
    return raw.votes is not None and bool(((raw.votes > 0).sum(1) > 1).any())


def evidence(raw: RawImages, cfg: RunConfig, reference: Reference | None) -> Evidence:
    """Votes when they spread over classes; otherwise the reference network's out-of-fold probabilities on the
    training images (and the fold models' mean on validation and test), as the `natural` source computes them."""
    names = raw.files or [f"#{i}" for i in range(len(raw.labels))]
    if has_spread_votes(raw):
        votes = raw.votes.double()
        return Evidence("votes", votes / votes.sum(1, keepdim=True), raw.labels.long(), names)
    if reference is None:
        raise UserError(f"dataset {cfg.data.dataset}: no votes to find confusable pairs from, and no reference "
                        "network trainer (use prepare.prepare_data or `ambig-bench pairs`)")
    # A generator of its own: the pairs found do not change the random draws of the run that uses them.
    gen = torch.Generator().manual_seed(cfg.seed)
    raw = dataclasses.replace(raw, files=names)
    raw = assign_splits(raw, cfg, gen)
    if cfg.data.train_size is not None:
        raw = limit_train(raw, cfg, gen)
    data = clear_cut(raw, [], cfg)
    options = NaturalOptions(**cfg.source.get("natural", {}))
    probs = reference_probs(data, SourceContext(cfg, options, gen, reference))
    known = (data.split != SPLITS["unsure"]).nonzero().squeeze(1)
    return Evidence("reference", probs[known].double(), data.label_a[known], [raw.files[i] for i in known.tolist()])


def rank_pairs(ev: Evidence, class_names: list[str], second: float) -> pd.DataFrame:
    """Every class pair, most confusable first: pair, class_a, class_b, score, images, examples."""
    n, k = ev.probs.shape
    joint = torch.zeros(k, k, dtype=torch.float64).index_add_(0, ev.labels, ev.probs) / max(n, 1)
    top = ev.probs.topk(2, dim=1)
    lo, hi = top.indices.min(1).values, top.indices.max(1).values
    between = top.values[:, 1] >= second
    rows = []
    for a in range(k):
        for b in range(a + 1, k):
            mine = (between & (lo == a) & (hi == b)).nonzero().squeeze(1)
            # Examples: the pair's most even images first.
            evenness = torch.minimum(ev.probs[mine, a], ev.probs[mine, b])
            examples = [ev.names[int(mine[i])] for i in evenness.argsort(descending=True, stable=True)[:EXAMPLES]]
            rows.append({"pair": f"{class_names[a]}:{class_names[b]}", "class_a": class_names[a],
                         "class_b": class_names[b], "score": float(joint[a, b] + joint[b, a]),
                         "images": len(mine), "examples": " ".join(examples)})
    table = pd.DataFrame(rows).sort_values(["score", "images"], ascending=False, kind="stable", ignore_index=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def load(cfg: RunConfig) -> RawImages:
    raw = DATASETS.get(cfg.data.dataset)(cfg)
    check_raw(raw, cfg.data.dataset)
    return raw


def find_pairs(cfg: RunConfig, reference: Reference | None) -> tuple[pd.DataFrame, str]:
    """The dataset's class pairs ranked by joint confusion, and where the evidence came from ("votes" or
    "reference")."""
    raw = load(cfg)
    ev = evidence(raw, cfg, reference)
    return rank_pairs(ev, raw.class_names, cfg.data.human_second), ev.kind


def auto_pairs(table: pd.DataFrame) -> str:
    """`--pairs auto`: the top pair, and every other pair scoring at least AUTO_SHARE of its score with at least
    MIN_DEFAULT_PAIR images whose top two classes they are; e.g. "T-shirt/top:Shirt,Pullover:Coat"."""
    top = table.score.iloc[0]
    chosen = table[(table["rank"] == 1) | ((table.score >= AUTO_SHARE * top) & (table.images >= MIN_DEFAULT_PAIR))]
    return ",".join(chosen.pair)


def wants_auto_pairs(cfg: RunConfig) -> bool:
    return (cfg.data.pairs or "").strip().lower() == AUTO


def resolve_auto(cfg: RunConfig, reference: Reference | None) -> RunConfig:
    """`cfg` with --pairs auto replaced by the pairs it finds (other configs unchanged)."""
    if not wants_auto_pairs(cfg):
        return cfg
    table, _ = find_pairs(cfg, reference)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pairs=auto_pairs(table)))
