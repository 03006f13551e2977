#!/usr/bin/env bash
# Set everything up (idempotent), then run the demo: three hosts in namespaces on one XDP switch.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
venv=${XDPSWITCH_VENV:-$here/.venv}
exec "$venv/bin/xdpswitch" demo
