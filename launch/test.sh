#!/usr/bin/env bash
# Set-up, then the whole CPU test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. launch/setup.sh
python -m pytest -q tests "$@"
