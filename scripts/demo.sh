#!/usr/bin/env bash
# Prepares the host (see setup.sh), then runs the virtual-hospital demo; arguments go to `medseg-xdp demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec "${MEDSEG_VENV:-/opt/medseg-xdp/venv}/bin/medseg-xdp" demo "$@"
