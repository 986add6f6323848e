#!/usr/bin/env bash
# One-time (idempotent) set-up of everything the build and the tests need:
#   - Debian's libgloo-dev (Gloo headers for libtorch's ProcessGroupGloo),
#   - .venv with torch==2.11.0 (libtorch itself, CUDA 13 runtime libraries included)
#     and cuda-toolkit[nvcc,cccl]==13.0.2 (CUDA and NCCL headers for the shim), plus
#     torchvision==0.26.0 and safetensors (the references and clients the tests use) and
#     tensorboard (to watch runs),
#   - .libtorch -> the venv's torch package, which .cargo/config.toml points LIBTORCH at,
#     so that a plain `cargo build --release` needs no environment variables.
# Quiet when everything is already in place; re-run it any time.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
# torchvision is the tests' reference (parameter names, augmentation ops), not a dependency.
PY_REQUIREMENTS=("torch==${TORCH_VERSION}" "torchvision==0.26.0" "tensorboard==2.20.0" "safetensors==0.8.0" "cuda-toolkit[nvcc,cccl]==13.0.2" "numpy")
VENV=.venv
STAMP="$VENV/.simclr-setup"

say() { echo "setup: $*" >&2; }

# Debian packages: only touch apt when something is missing.
need_apt=()
[ -f /usr/include/gloo/algorithm.h ] || need_apt+=(libgloo-dev)
command -v g++ >/dev/null || need_apt+=(g++)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Python venv with torch (libtorch) and the CUDA/NCCL headers.
want="${PY_REQUIREMENTS[*]}"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  say "creating $VENV with ${want} (a few GB, about a minute)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_REQUIREMENTS[@]}"
  echo "$want" > "$STAMP"
fi

# The link that .cargo/config.toml's LIBTORCH points at.
torch_dir=$("$VENV/bin/python" -c 'import torch, os; print(os.path.relpath(os.path.dirname(torch.__file__)))')
if [ "$(readlink .libtorch 2>/dev/null)" != "$torch_dir" ]; then
  ln -sfn "$torch_dir" .libtorch
  say ".libtorch -> $torch_dir"
fi
