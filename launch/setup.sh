#!/usr/bin/env bash
# Set-up: a virtual environment with every dependency, cached outside the clone and keyed by
# launch/constraints.txt, so a second run takes seconds. Source it (`. launch/setup.sh`) to get
# the environment activated; run it (`bash launch/setup.sh`) to only prepare it.
#   TUBEMAE_VENV  use this folder instead of the cache
#   PYTHON        the interpreter to build the environment from (default python3)
set -euo pipefail
_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_python=${PYTHON:-python3}
_key=$( (cat "$_root/launch/constraints.txt"; "$_python" -c 'import sys; print(sys.version)') \
        | sha256sum | cut -c1-12)
_venv=${TUBEMAE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tubemae/venv-$_key}
_pin() { grep -E "^$1==" "$_root/launch/constraints.txt" | head -n1; }

if [ ! -f "$_venv/.tubemae-complete" ]; then
  echo "setup: creating $_venv (torch and friends, a few minutes the first time)" >&2
  rm -rf "$_venv"
  mkdir -p "$(dirname "$_venv")"
  "$_python" -m venv "$_venv"
  "$_venv/bin/python" -m pip install -q --upgrade "pip>=24" "setuptools>=77" wheel
  # The matched torch/torchvision pair from the registry: a CPU-only torch found through
  # PIP_FIND_LINKS would not load the registry's torchvision.
  env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null \
    "$_venv/bin/python" -m pip install -q "$(_pin torch)" "$(_pin torchvision)"
  "$_venv/bin/python" -m pip install -q -c "$_root/launch/constraints.txt" -e "$_root[dev]"
  touch "$_venv/.tubemae-complete"
fi
# The environment may have been made from another clone: point the editable install here.
if [ "$("$_venv/bin/python" -c 'import os, data; print(os.path.dirname(os.path.dirname(os.path.abspath(data.__file__))))' 2>/dev/null)" != "$_root" ]; then
  "$_venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$_root" >&2
fi
export VIRTUAL_ENV=$_venv
export PATH="$_venv/bin:$PATH"
# CPU runs: one thread per process, extensions built somewhere writable, DeepSpeed on the CPU.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tubemae/torch_extensions}
unset _root _python _key _venv
