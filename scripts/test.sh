#!/usr/bin/env bash
# Set everything up (idempotent), then lint, type-check and run every test tier.
#   scripts/test.sh [pytest args...]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/setup.sh
py=.venv/bin/python
echo "== ruff";  "$py" -m ruff check ctl exporters tests bench
echo "== mypy";  "$py" -m mypy ctl exporters bench
echo "== unit";  "$py" -m pytest tests/unit -q "$@"
echo "== bpf";   "$py" -m pytest tests/bpf -q "$@"
echo "== netns"; "$py" -m pytest tests/netns -q "$@"
