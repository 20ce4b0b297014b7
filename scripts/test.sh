#!/usr/bin/env bash
# Prepares the host (see setup.sh), then runs the test suite; arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec "${MEDSEG_VENV:-/opt/medseg-xdp/venv}/bin/python" -m pytest -q -ra "$@"
