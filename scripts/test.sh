#!/usr/bin/env bash
# Set everything up (idempotent), then lint, type-check and run every test tier.
#   scripts/test.sh [pytest args...]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/setup.sh
# test-only tools: vagrant validates the Vagrantfile (not part of setup.sh, which also provisions the VM)
if ! command -v vagrant >/dev/null; then
  echo "test: installing vagrant (to validate the Vagrantfile)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq vagrant >/dev/null
fi
# a real Prometheus server scrapes the daemon in tests/netns/test_prometheus.py (its service is not started)
if ! command -v prometheus >/dev/null; then
  echo "test: installing prometheus (a real server scrapes the switch in the netns tier)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
py=${XDPSWITCH_VENV:-$here/.venv}/bin/python
echo "== ruff";  "$py" -m ruff check ctl exporters tests bench
echo "== mypy";  "$py" -m mypy ctl exporters bench
echo "== unit";  "$py" -m pytest tests/unit -q "$@"
echo "== bpf";   "$py" -m pytest tests/bpf -q "$@"
echo "== netns"; "$py" -m pytest tests/netns -q "$@"
