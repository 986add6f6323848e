#!/usr/bin/env bash
# The main job, from a fresh clone: set-up (idempotent), a release build, then a SimCLR
# pre-training run on the built-in synthetic dataset (a few minutes on 2 CPU cores) that ends
# with TensorBoard logs and a TorchScript encoder in runs/<date>-<time>/.
# Extra arguments go to `simclr train` (e.g. --out DIR, --epochs N, --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet
exec target/release/simclr train "$@"
