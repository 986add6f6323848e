#!/usr/bin/env bash
# The SimCLR training step in Rust (`simclr bench step`) and in PyTorch eager
# (scripts/bench/step_pytorch.py, the identical step) side by side, on the same device with the
# same flags: ROUNDS rounds (default 5), each running both once, the order alternating between
# rounds so that background load and warm caches favour neither. Prints every run, then the
# median images/s of each and the median of the per-round ratios Rust / PyTorch (> 1: Rust
# faster); fails when the two networks' parameter counts differ (not the same model).
#
# Usage: scripts/bench/step.sh [--rounds N] [simclr bench step flags...]
#   e.g. scripts/bench/step.sh --arch resnet18 --batch-size 128 --image-size 32 --precision fp32 --device cpu --threads 2
# Environment: SIMCLR (the binary, default target/release/simclr), PYTHON (a python with
# torch, default .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${SIMCLR:-target/release/simclr}
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
rounds=5
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --json) shift ;;
    *) args+=("$1"); shift ;;
  esac
done
results=$(mktemp)
trap 'rm -f "$results"' EXIT

rust() { "$bin" bench step "${args[@]}" --json 2>/dev/null | tail -n 1 | tee -a "$results"; }
pytorch() { "$python" scripts/bench/step_pytorch.py "${args[@]}" | tail -n 1 | tee -a "$results"; }
for round in $(seq "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then rust; pytorch; else pytorch; rust; fi
done

"$python" - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
rust = [r for r in runs if r["implementation"] == "simclr-rs"]
torch = [r for r in runs if r["implementation"] == "pytorch"]
params = {r["parameters"] for r in runs}
if len(params) != 1:
    sys.exit(f"parameter counts differ: {sorted(params)}: not the same network")
ips = lambda rs: [r["images_per_sec"] for r in rs]
ratios = [a / b for a, b in zip(ips(rust), ips(torch))]
mib = lambda rs: statistics.median(r["peak_memory"]["bytes"] for r in rs) / 2**20
summary = {
    "arch": rust[0]["arch"], "width": rust[0]["width"], "batch_size": rust[0]["batch_size"],
    "image_size": rust[0]["image_size"], "precision": rust[0]["precision"],
    "device": rust[0]["device"], "threads": [rust[0]["threads"], torch[0]["threads"]],
    "parameters": params.pop(), "rounds": len(ratios),
    "rust_images_per_sec": statistics.median(ips(rust)),
    "pytorch_images_per_sec": statistics.median(ips(torch)),
    "ratio_rust_over_pytorch": statistics.median(ratios),
    # CPU time per image: what each needed, whatever other processes took from the cores.
    "cpu_ms_per_image_rust": 1000 * statistics.median(r["cpu_seconds"] / (r["timed_steps"] * r["batch_size"]) for r in rust),
    "cpu_ms_per_image_pytorch": 1000 * statistics.median(r["cpu_seconds"] / (r["timed_steps"] * r["batch_size"]) for r in torch),
    "ratios": [round(r, 3) for r in ratios],
    "rust_peak_mib": mib(rust), "pytorch_peak_mib": mib(torch),
    "peak_memory_kind": rust[0]["peak_memory"]["kind"],
}
print(f"Rust {summary['rust_images_per_sec']:.1f} images/s, PyTorch {summary['pytorch_images_per_sec']:.1f} images/s, "
      f"ratio {summary['ratio_rust_over_pytorch']:.3f} (median of {len(ratios)} rounds: {summary['ratios']})", file=sys.stderr)
print(json.dumps(summary))
PY
