"""What the per-epoch validation pass (`val_loss`, the criterion convergence and early stopping read) adds to an
epoch of training, on `make demo`'s recipe (digits, small-cnn width 16, lr 0.01, soft), one thread, as a ratio
measured in one process: the fastest of repeated timings of each, the least disturbed on a shared machine.

$ python benchmarks/validation_cost.py
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from ambig_bench.options import build
from ambig_bench.prepare import PreparedRun, prepare_data, untrained
from ambig_bench.runner import validation
from ambig_bench.train import Job, train, validation_losses


def fastest(fn: Callable[[], object], repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def main() -> None:
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    cfg = build({"dataset": "digits", "strategy": "soft", "epochs": 1, "width": 16, "lr": 0.01, "device": "cpu"})
    data = prepare_data(cfg)
    strategy, model = untrained(cfg, data, cpu)
    val = validation(PreparedRun(cfg, data, strategy, model, model, data, cfg))
    job = Job(model, strategy, data.subset("train"), 0, val=val)
    epoch = fastest(lambda: train([dataclasses.replace(job, val=None)], cfg, cpu), 8)
    check = fastest(lambda: validation_losses(model, [job], cpu), 20)
    print(f"{len(job.data.images)} training and {len(val.images)} validation images: training epoch {epoch:.3f} s, "
          f"validation pass {check:.3f} s, +{check / epoch:.1%} per epoch")


if __name__ == "__main__":
    main()
