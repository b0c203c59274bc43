#!/usr/bin/env bash
# Issue 4's GPU measurements in one go (about 6 minutes on one H100): the speed benchmark, then the CIFAR-10 and
# Fashion-MNIST grids (8 strategies x 5 seeds x 10 epochs), each timed, each compared, then the airbench94
# reference (benchmarks/airbench_reference.py) on the same CIFAR-10 images as an accuracy ceiling.
#
# $ benchmarks/gpu.sh OUT [CIFAR10_TGZ] [FASHION_MNIST_DIR]
#
# On a lent machine that has neither ../shared nor Debian's dataset-fashion-mnist, copy cifar10.tgz and the four
# Fashion-MNIST .gz files into a git-ignored folder of the checkout first, carry it, and pass both paths.
#
# Runs from a checkout without installing it: where `ambig_bench.strategies` is not importable yet (the package
# maps strategies/ and datasets/ into ambig_bench/ only when installed), it links them in place.
set -euo pipefail
out=${1:?usage: benchmarks/gpu.sh OUT [CIFAR10_TGZ] [FASHION_MNIST_DIR]}
cifar=${2:-../shared/data/cifar10.tgz}
fashion=${3:-/usr/share/datasets/fashion-mnist}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import ambig_bench.strategies" 2>/dev/null; then
    ln -sfn ../strategies ambig_bench/strategies
    ln -sfn ../datasets ambig_bench/datasets
fi
ab() { python3 -m ambig_bench.cli "$@"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.csv" || true
python3 -c "import torch; print('torch', torch.__version__)" > "$out/torch.txt"

python3 benchmarks/bench.py --device cuda --json "$out/bench.json" | tee "$out/bench.md" || echo "bench failed" >> "$out/walls.txt"

grid() {  # name, then run options: trains the grid timed, then compares it
    local name=$1; shift
    local start=$SECONDS
    local status=0
    ab run --strategy all --seeds 5 --epochs 10 --device cuda --out "$out/$name" "$@" 2> "$out/$name.log" || status=$?
    echo "$name grid: $((SECONDS - start)) s wall, exit $status" | tee -a "$out/walls.txt"
    # A failed run (exit 1) still leaves the others to compare; the next grid runs regardless.
    ab compare "$out/$name" 2>> "$out/$name.log" && cp "$out/$name/comparison.md" "$out/$name-comparison.md" || true
}
grid cifar10 --dataset cifar10 --data-dir "$cifar" --model fast-cifar
grid fashion --dataset fashion-mnist --data-dir "$fashion"
python3 benchmarks/airbench_reference.py --data "$cifar" --device cuda > "$out/reference.txt" 2> "$out/reference.log" \
    || echo "reference failed" >> "$out/walls.txt"
