#!/usr/bin/env bash
# One prepared check for a GPU machine (see README, "GPU check"). Build here first
# (`cargo build --release`), carry target/release/simclr, and run this there: it uses that
# machine's own torch libraries, prints `simclr info`, then trains the default model for a few
# epochs on CUDA in fp32 and in bf16, then one epoch through the data-parallel path at world
# size 1 (NCCL, sync BN, global negatives, bf16), and prints the throughput of each; then
# benchmarks the training step of ResNet-50 at 224 px, batch 256, bf16, channels-last against
# the identical PyTorch step on the same GPU (scripts/bench/step.sh; README, "Performance").
# Usage: scripts/gpu-check.sh [path/to/simclr]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/simclr}
torch_lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== simclr info"
"$bin" info --json
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

for precision in fp32 bf16; do
  echo "== train: default model, 3 epochs, cuda, $precision"
  "$bin" train --out "$out/$precision" --device cuda --precision "$precision" --epochs 3 \
    --knn-every 0 --json | tail -n 1
  grep '"train/images_per_sec"' "$out/$precision/metrics.jsonl" | tail -n 1
done

# The data-parallel CUDA path at world size 1: NCCL process group, synchronized batch norm,
# global negatives through the differentiable all-gather, gradient buckets, in bf16.
echo "== train: --nproc-per-node 1 (NCCL), --sync-bn, global negatives, bf16, 1 epoch"
"$bin" train --out "$out/nccl" --nproc-per-node 1 --sync-bn --device cuda --precision bf16 \
  --epochs 1 --knn-every 0 --json | tail -n 1
grep '"train/images_per_sec"' "$out/nccl/metrics.jsonl" | tail -n 1

echo "== step benchmark: ResNet-50, 224 px, batch 256, bf16, channels-last; Rust vs PyTorch"
SIMCLR="$bin" PYTHON=python3 scripts/bench/step.sh --rounds 3 --arch resnet50 --image-size 224 \
  --batch-size 256 --precision bf16 --device cuda --warmup 5 --steps 20
