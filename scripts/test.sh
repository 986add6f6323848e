#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up (idempotent), formatting, lints, then the
# unit tests and the end-to-end tests of the binary (tiny models and images; a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --check
# Release throughout (clippy too): libtorch's C++ glue is compiled once for one profile, the
# tests train real (tiny) models, and the main job reuses the same build.
cargo clippy --release --all-targets --quiet -- -D warnings
cargo test --release
