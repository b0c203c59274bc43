"""Does `suggest` find the in-between images? Precision at k on held-back test images, against a random order.

The test split of RESULTS_DIR's first finished run is prepared again from its config.json (no run trained on it):
its in-between images and as many clear-cut ones are written as PNG files to a scratch folder, `suggest` ranks
them with every finished run of RESULTS_DIR, and the share of in-between images among the top k is printed beside
the share a random order gives (the base rate).

$ python benchmarks/suggest_precision.py results/demo
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from ambig_bench.options import build, table
from ambig_bench.prepare import prepare_data
from ambig_bench.rundir import list_runs
from ambig_bench.suggest import suggest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--clear", type=int, default=0, help="clear-cut images written (default: as many as "
                                                              "in-between ones)")
    args = parser.parse_args(argv)
    run = next(r for r in list_runs(args.results_dir) if r.done)
    cfg = build({k: v for k, v in run.options().items() if k in table()})
    test = prepare_data(cfg).subset("test")
    between = test.is_between.nonzero().squeeze(1).tolist()
    clear = (~test.is_between).nonzero().squeeze(1).tolist()[:args.clear or len(between)]
    with tempfile.TemporaryDirectory() as folder:
        for kind, rows in (("between", between), ("clear", clear)):
            for row in rows:
                pixels = test.images[row].permute(1, 2, 0).squeeze(2).numpy()
                Image.fromarray(pixels).save(Path(folder) / f"{kind}{row:05d}.png")
        found = suggest(args.results_dir, [folder])
        hits = found.ranking.path.map(lambda p: Path(p).name.startswith("between")).to_numpy()
    rate = hits.mean()
    print(f"{len(found.runs)} runs ranked {len(hits)} test images ({hits.sum()} in-between, {rate:.0%})")
    for k in sorted({10, 20, 50, 100, len(between)}):
        if k <= len(hits):
            print(f"precision at {k:>4}: {hits[:k].mean():.3f}  (random order: {rate:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
