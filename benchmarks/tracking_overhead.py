"""What --track mlflow,tensorboard costs: the four-run digits grid with and without tracking, in turns, in this
one process (fresh results directories each time, so every run trains and every tracked run is logged).

Each figure is the median of --repeats grids. One untimed grid of each kind comes first: it loads the data into
the cache and imports MLflow and TensorBoard (as any first use does; the import time is printed too), and builds
the empty MLflow store the tool keeps in its cache.

$ python benchmarks/tracking_overhead.py --repeats 3
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import ambig_bench as ab  # noqa: E402

TRACK = "mlflow,tensorboard"


def grid_seconds(out: Path, track: str, epochs: int) -> float:
    exp = ab.experiment(strategies="soft,hard", seeds=2, out=out, dataset="digits", epochs=epochs, device="cpu")
    start = time.perf_counter()
    results = ab.run(exp, track=track, progress=False)
    assert [r.status for r in results] == ["done"] * 4, results
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20, help="the digits recipe's default")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):  # the default store: OUT/mlflow.db
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        grid_seconds(root / "warm-plain", "", args.epochs)
        start = time.perf_counter()
        for library in ("mlflow", "torch.utils.tensorboard"):
            importlib.import_module(library)

        imports = time.perf_counter() - start
        grid_seconds(root / "warm-tracked", TRACK, args.epochs)
        times: dict[str, list[float]] = {"plain": [], "tracked": []}
        for i in range(args.repeats):
            times["plain"].append(grid_seconds(root / f"plain-{i}", "", args.epochs))
            times["tracked"].append(grid_seconds(root / f"tracked-{i}", TRACK, args.epochs))
    plain, tracked = (statistics.median(times[k]) for k in ("plain", "tracked"))
    print(f"four digits runs, {args.epochs} epochs, {torch.get_num_threads()} torch threads, median of "
          f"{args.repeats}:")
    print(f"  without tracking            {plain:7.2f} s")
    print(f"  --track {TRACK}  {tracked:7.2f} s")
    print(f"  importing MLflow and TensorBoard (once per command): {imports:.2f} s")
    print(f"overhead: {(tracked - plain) / plain:+.1%} of the runs' time (target: at most +20%)")


if __name__ == "__main__":
    main()
