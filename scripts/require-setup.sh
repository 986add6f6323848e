#!/bin/sh
# Cargo's rustc wrapper (see .cargo/config.toml): refuses to build, in one line, before
# scripts/setup.sh has made the .libtorch link; otherwise runs rustc unchanged.
root=$(dirname "$0")/..
if [ ! -f "$root/.libtorch/lib/libtorch_cpu.so" ]; then
  echo "error: libtorch not found: run scripts/setup.sh first" >&2
  exit 1
fi
exec "$@"
