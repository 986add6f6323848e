#!/usr/bin/env bash
# Loader throughput, simclr against torchvision, on the same files, worker count and cores:
#   (a) CIFAR-size 32 px images from memory (CIFAR-10 binary), batch 256, no blur;
#   (b) photo-like 500x375 JPEGs -> 224 px views, batch 64, Gaussian blur on (p=0.5);
# then the peak memory of `simclr bench loader` on a folder of 1,000 and of 10,000 JPEGs.
# Each figure is the median of --reps runs, Rust and torchvision interleaved so that background
# load affects both alike. The data is made locally by make_data.py (no download).
#
# Usage: scripts/bench/loader.sh [--workers N] [--reps R]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
workers=2
reps=3
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    *) echo "usage: $0 [--workers N] [--reps R]" >&2; exit 2 ;;
  esac
done

scripts/setup.sh >&2
cargo build --release --quiet
data=${SIMCLR_BENCH_DATA:-$root/target/bench-data}
echo "making benchmark data in $data (once)" >&2
.venv/bin/python3 scripts/bench/make_data.py "$data"

simclr=target/release/simclr
torchvision=(.venv/bin/python3 scripts/bench/loader_torchvision.py)
# The value of FIELD in the JSON object on the last line of stdin.
field() { python3 -c 'import json, sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])[sys.argv[1]])' "$1"; }
ratio() { python3 -c 'import sys; print(float(sys.argv[1]) / float(sys.argv[2]))' "$1" "$2"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# case LABEL SPEC SIZE BATCH BATCHES BLUR_PROB
case_() {
  local label=$1 spec=$2 size=$3 batch=$4 batches=$5 blur=$6 rust=() tv=()
  local common=(--data "$spec" --workers "$workers" --batch-size "$batch" --image-size "$size" --batches "$batches" --json)
  local rust_extra=(--blur-prob "$blur") tv_extra=(--blur-prob "$blur")
  for _ in $(seq "$reps"); do
    rust+=("$("$simclr" bench loader "${common[@]}" "${rust_extra[@]}" 2>/dev/null | field images_per_sec)")
    tv+=("$("${torchvision[@]}" "${common[@]}" "${tv_extra[@]}" 2>/dev/null | field images_per_sec)")
  done
  local r t
  r=$(printf '%s\n' "${rust[@]}" | median)
  t=$(printf '%s\n' "${tv[@]}" | median)
  printf '%-44s simclr %8.0f img/s   torchvision %8.0f img/s   ratio %5.2fx\n' "$label" "$r" "$t" "$(ratio "$r" "$t")"
}

echo "loader throughput, $workers workers, $(nproc) cores, median of $reps (two-view images/s):"
case_ "(a) CIFAR-10 32 px from memory, batch 256" "cifar10:$data/cifar10" 32 256 20 0
case_ "(b) 500x375 JPEG -> 224 px + blur, batch 64" "folder:$data/photos-1k" 224 64 10 0.5

rss() { "$simclr" bench loader --data "folder:$data/$1" --workers "$workers" --batch-size 64 --image-size 224 --batches 20 --json 2>/dev/null | field peak_rss_mib; }
small=$(rss photos-1k)
large=$(rss photos-10k)
printf 'peak RSS of simclr bench loader: %.0f MiB on 1,000 JPEGs, %.0f MiB on 10,000 (%.2fx)\n' \
  "$small" "$large" "$(ratio "$large" "$small")"
