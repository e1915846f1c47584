#!/usr/bin/env bash
# Set-up: a virtual environment with every dependency, cached outside the clone and keyed by
# launch/constraints.txt, so a second run takes well under a second. Source it
# (`. launch/setup.sh`) to get the environment activated; run it (`bash launch/setup.sh`) to
# only prepare it.
#   TUBEMAE_VENV  use this folder instead of the cache
#   PYTHON        the interpreter to build the environment from (default python3)
_tubemae_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_tubemae_venv=$(
  set -euo pipefail
  root=$_tubemae_root
  python=${PYTHON:-python3}
  key=$( (cat "$root/launch/constraints.txt"; "$python" -c 'import sys; print(sys.version)') \
         | sha256sum | cut -c1-12)
  venv=${TUBEMAE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tubemae/venv-$key}
  pin() { grep -E "^$1==" "$root/launch/constraints.txt" | head -n1; }
  quiet() {  # run quietly; show the output only when it fails
    local out
    if ! out=$("$@" 2>&1); then echo "$out" >&2; return 1; fi
  }
  # Every step ends in `|| exit 1`: this subshell runs inside `$(...) || {...}`, where bash
  # ignores `set -e`, so a failed install would otherwise go on and be marked complete.
  if [ ! -f "$venv/.tubemae-complete" ]; then
    echo "setup: creating $venv (torch and friends, a few minutes the first time)" >&2
    rm -rf "$venv" || exit 1
    mkdir -p "$(dirname "$venv")" || exit 1
    "$python" -m venv "$venv" || exit 1
    quiet "$venv/bin/python" -m pip install --upgrade "pip>=24" "setuptools>=77" wheel || exit 1
    # The matched torch/torchvision pair from the registry: a CPU-only torch found through
    # PIP_FIND_LINKS would not load the registry's torchvision.
    quiet env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null \
      "$venv/bin/python" -m pip install "$(pin torch)" "$(pin torchvision)" || exit 1
    quiet "$venv/bin/python" -m pip install -c "$root/launch/constraints.txt" -e "$root[dev]" \
      || exit 1
    "$venv/bin/python" -c "import torch, torchvision, timm, deepspeed, webdataset, decord, av" \
      || { echo "setup: $venv does not import its packages" >&2; exit 1; }
    touch "$venv/.tubemae-complete" || exit 1
  fi
  # The environment may have been made from another clone, or pyproject.toml (entry points)
  # may have changed: point the editable install at this clone (seconds, no downloads).
  stamp="$root $(sha256sum "$root/pyproject.toml" | cut -c1-16)"
  if [ "$(cat "$venv/.tubemae-project" 2>/dev/null)" != "$stamp" ]; then
    quiet "$venv/bin/python" -m pip install --no-deps --no-build-isolation -e "$root" || exit 1
    echo "$stamp" > "$venv/.tubemae-project" || exit 1
  fi
  echo "$venv"
) || { echo "setup: failed (see above)" >&2; unset _tubemae_root _tubemae_venv; return 1 2>/dev/null || exit 1; }
export VIRTUAL_ENV=$_tubemae_venv
export PATH="$_tubemae_venv/bin:$PATH"
# CPU runs: one thread per process, extensions built somewhere writable, DeepSpeed on the CPU
# unless a GPU is there.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tubemae/torch_extensions}
# A build killed half-way leaves its lock file, and every later build of that op waits on it
# forever. A build takes well under a minute: a lock older than 10 minutes is stale.
find "$TORCH_EXTENSIONS_DIR" -name lock -mmin +10 -delete 2>/dev/null || true
if ! command -v nvidia-smi >/dev/null 2>&1; then export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}; fi
unset _tubemae_root _tubemae_venv
