#!/usr/bin/env bash
# Set-up: a virtual environment with every dependency, cached outside the clone and keyed by
# launch/constraints.txt, so a second run takes well under a second. Source it
# (`. launch/setup.sh`) to get the environment activated; run it (`bash launch/setup.sh`) to
# only prepare it.
#   TUBEMAE_VENV  use this folder instead of the cache (on a cluster: a shared folder, built once
#                 before a multi-node job; nodes that set up at the same time wait for each
#                 other on a lock instead of installing over each other)
#   PYTHON        the interpreter to build the environment from (default python3; 3.11-3.13)
# One environment serves every clone: activation puts this clone first on PYTHONPATH, so its
# code (and the console scripts, which import by module name) run whichever clone built it.
_tubemae_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_tubemae_venv=$(
  set -euo pipefail
  # Only the environment's path may reach the captured stdout: everything this subshell runs
  # (pip, the import check, anything a package prints when imported, such as DeepSpeed's
  # accelerator warning) writes to stderr; the path alone goes to fd 3, the real stdout.
  exec 3>&1 1>&2
  root=$_tubemae_root
  python=${PYTHON:-python3}
  # The interpreter must be one pyproject.toml's requires-python admits (">=3.11,<3.14"): the
  # pins have no wheels for older ones. Said here, before anything is built.
  "$python" - "$root/pyproject.toml" <<'PY' || exit 1
import re, sys
spec = re.search(r'^requires-python\s*=\s*"([^"]+)"', open(sys.argv[1]).read(), re.M).group(1)
lo = tuple(map(int, re.search(r">=\s*([\d.]+)", spec).group(1).split(".")))
hi = tuple(map(int, re.search(r"<\s*([\d.]+)", spec).group(1).split(".")))
if not lo <= sys.version_info[:2] < hi:
    sys.exit(f"setup: {sys.executable} is Python {sys.version.split()[0]}; tubemae needs "
             f"{spec} (pyproject.toml). Choose another interpreter: PYTHON=python3.11 ...")
PY
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
  mkdir -p "$(dirname "$venv")" || exit 1
  exec 9>"$venv.lock" || exit 1
  if ! flock -n 9; then
    echo "setup: waiting for another set-up of $venv to finish" >&2
    flock -w 3600 9 || { echo "setup: $venv.lock still held after an hour" >&2; exit 1; }
  fi
  if [ ! -f "$venv/.tubemae-complete" ]; then
    echo "setup: creating $venv (torch and friends, a few minutes the first time)" >&2
    rm -rf "$venv" || exit 1
    "$python" -m venv "$venv" || exit 1
    quiet "$venv/bin/python" -m pip install --upgrade "pip>=24" "setuptools>=77" wheel || exit 1
    # The matched torch/torchvision pair from the registry: a CPU-only torch found through
    # PIP_FIND_LINKS would not load the registry's torchvision.
    quiet env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null \
      "$venv/bin/python" -m pip install "$(pin torch)" "$(pin torchvision)" || exit 1
    quiet "$venv/bin/python" -m pip install -c "$root/launch/constraints.txt" -e "$root[dev]" \
      || exit 1
    "$venv/bin/python" -c "import torch, torchvision, timm, deepspeed, webdataset, decord, av, boto3" \
      || { echo "setup: $venv does not import its packages" >&2; exit 1; }
    touch "$venv/.tubemae-complete" || exit 1
  fi
  # pyproject.toml (entry points) may have changed since: reinstall the project's metadata
  # (seconds, no downloads). Which clone's code runs is PYTHONPATH's business (below).
  stamp=$(sha256sum "$root/pyproject.toml" | cut -c1-16)
  if [ "$(cat "$venv/.tubemae-project" 2>/dev/null)" != "$stamp" ]; then
    quiet "$venv/bin/python" -m pip install --no-deps --no-build-isolation -e "$root" || exit 1
    echo "$stamp" > "$venv/.tubemae-project" || exit 1
  fi
  # A second transformers (4.x) beside the pinned 5.x, in its own folder, for the test that
  # loads our HuggingFace exports with both (tests/pretrain/test_hf_versions.py).
  extra="$venv/extra/transformers-4.57"
  if [ ! -f "$extra/.complete" ]; then
    rm -rf "$extra" || exit 1
    quiet "$venv/bin/python" -m pip install --no-deps --target "$extra" transformers==4.57.6 \
      huggingface_hub==0.36.2 tokenizers==0.22.2 requests==2.34.2 urllib3==2.8.0 \
      idna==3.20 certifi==2026.10.18 charset_normalizer==3.5.2 || exit 1
    touch "$extra/.complete" || exit 1
  fi
  echo "$venv" >&3
) || { echo "setup: failed (see above)" >&2; unset _tubemae_root _tubemae_venv; return 1 2>/dev/null || exit 1; }
if [ ! -x "$_tubemae_venv/bin/python" ]; then
  echo "setup: expected one environment folder, got: '$_tubemae_venv'" >&2
  unset _tubemae_root _tubemae_venv; return 1 2>/dev/null || exit 1
fi
export VIRTUAL_ENV=$_tubemae_venv
export PATH="$_tubemae_venv/bin:$PATH"
case ":${PYTHONPATH:-}:" in
  *":$_tubemae_root:"*) ;;
  *) export PYTHONPATH="$_tubemae_root${PYTHONPATH:+:$PYTHONPATH}" ;;
esac
# CPU runs: one thread per process, extensions built somewhere writable, DeepSpeed on the CPU
# unless a GPU is there.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tubemae/torch_extensions}
# A build killed half-way leaves its lock file, and every later build of that op waits on it
# forever. A build takes well under a minute: a lock older than 10 minutes is stale.
find "$TORCH_EXTENSIONS_DIR" -name lock -mmin +10 -delete 2>/dev/null || true
if ! command -v nvidia-smi >/dev/null 2>&1; then export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}; fi
unset _tubemae_root _tubemae_venv
