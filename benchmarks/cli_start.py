"""How fast the CLI answers: `ambig-bench --help` against `python -c pass` and `python -c 'import torch'`.

All three are timed in this run, in turns, on this machine; each figure is the median of --repeats runs.
The catalogue of registries (ambig_bench/catalogue.py) is built once before timing, as after any first use.

$ python benchmarks/cli_start.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "ambig-bench --help": [sys.executable, "-m", "ambig_bench.cli", "--help"],
    "ambig-bench strategies": [sys.executable, "-m", "ambig_bench.cli", "strategies"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    seconds(COMMANDS["ambig-bench --help"])  # builds the catalogue if this checkout has none yet
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, value in median.items():
        print(f"{name:28s} {value:6.3f} s")
    help_s, torch_s = median["ambig-bench --help"], median["python -c 'import torch'"]
    print(f"--help / python -c pass:     {help_s / median['python -c pass']:.1f}x")
    print(f"--help / import torch:       {help_s / torch_s:.2f}x  (target: --help < 0.5 s)")


if __name__ == "__main__":
    main()
