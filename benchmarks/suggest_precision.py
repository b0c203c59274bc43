"""Does `suggest` find the in-between images? Precision at k on held-back test images, against a random order.

For each seed of RESULTS_DIR, that seed's test split is prepared again from a run's config.json and ranked by the
runs of that seed only (runs of other seeds trained on other splits, which may hold these images): its in-between
images and as many clear-cut ones (or --clear) are written as PNG files to a scratch folder and ranked by
`suggest`. It prints, per k, the share of in-between images among the top k, averaged over the seeds, beside the
share a random order gives (the base rate).

$ python benchmarks/suggest_precision.py results/demo
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from ambig_bench.options import build, table
from ambig_bench.prepare import prepare_data
from ambig_bench.rundir import list_runs
from ambig_bench.suggest import suggest

KS = (10, 20, 50, 100)


def ranked_hits(runs: list, clear_count: int) -> tuple[np.ndarray, int]:
    """Whether each ranked image is in-between (best first) for one seed's runs, and how many are."""
    cfg = build({k: v for k, v in runs[0].options().items() if k in table()})
    test = prepare_data(cfg).subset("test")
    between = test.is_between.nonzero().squeeze(1).tolist()
    clear = (~test.is_between).nonzero().squeeze(1).tolist()[:clear_count or len(between)]
    with tempfile.TemporaryDirectory() as folder:
        for kind, rows in (("between", between), ("clear", clear)):
            for row in rows:
                Image.fromarray(test.images[row].permute(1, 2, 0).squeeze(2).numpy()).save(
                    Path(folder) / f"{kind}{row:05d}.png")
        found = suggest(runs, [folder])
        return found.ranking.path.map(lambda p: Path(p).name.startswith("between")).to_numpy(), len(between)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--clear", type=int, default=0, help="clear-cut images written per seed (default: as many as "
                                                              "in-between ones)")
    args = parser.parse_args(argv)
    by_seed = defaultdict(list)
    for run in (r for r in list_runs(args.results_dir) if r.done):
        by_seed[run.options()["seed"]].append(run)
    precision, rates, counts = defaultdict(list), [], []
    for _, runs in sorted(by_seed.items()):
        hits, n_between = ranked_hits(runs, args.clear)
        rates.append(hits.mean())
        counts.append((len(hits), n_between, len(runs)))
        for k in (*KS, n_between):
            if k <= len(hits):
                precision[k if k in KS else "k = in-between count"].append(hits[:k].mean())
    images, between, runs = (int(np.mean(c)) for c in zip(*counts, strict=True))
    print(f"{len(by_seed)} seeds; per seed {runs} runs ranked {images} test images ({between} in-between, "
          f"{np.mean(rates):.0%})")
    for k, values in precision.items():
        print(f"precision at {k!s:>4}: {np.mean(values):.3f} (seeds {min(values):.3f} to {max(values):.3f}); "
              f"random order: {np.mean(rates):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
