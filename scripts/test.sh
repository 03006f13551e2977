#!/usr/bin/env bash
# Set everything up (idempotent), then lint, type-check and run every test tier.
#   scripts/test.sh [pytest args...]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/setup.sh
# test-only tools, each installed if its command is missing: need COMMAND PACKAGE WHY [APT-OPTION...]
need() {
  command -v "$1" >/dev/null && return
  echo "test: installing $2 ($3)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${@:4}" "$2" >/dev/null
}
need vagrant vagrant "to validate the Vagrantfile; not in setup.sh, which also provisions the VM"
need prometheus prometheus "a real server scrapes the switch in the netns tier; its service is not started" --no-install-recommends
need ovs-ofctl openvswitch-common "ovs-ofctl drives the switch's management socket" --no-install-recommends
need tmux tmux "xdpswitch top is tested in a real terminal" --no-install-recommends
need ovs-pki openvswitch-pki "ovs-pki makes the TLS tests' certificates, in the layout OVS documents" --no-install-recommends
# os-ken's manager in a venv of its own with the unmodified simple_switch_13.py of the os-ken 1.4.1 wheel
# (3.1.1 has the manager but no sample apps)
osken=$here/.cache/osken
if [ ! -x "$osken/bin/osken-manager" ] || [ ! -f "$here/.cache/simple_switch_13.py" ]; then
  echo "test: installing os-ken 3.1.1 and simple_switch_13.py (os-ken 1.4.1) under .cache/"
  /usr/bin/python3 -m venv "$osken"
  "$osken/bin/pip" install -q --disable-pip-version-check os-ken==3.1.1
  "$osken/bin/pip" download -q --disable-pip-version-check --no-deps os-ken==1.4.1 -d "$here/.cache/osken-wheel"
  "$osken/bin/python" - "$here/.cache" <<'PY'
import pathlib, sys, zipfile
cache = pathlib.Path(sys.argv[1])
whl = next((cache / "osken-wheel").glob("os_ken-1.4.1-*.whl"))
(cache / "simple_switch_13.py").write_bytes(zipfile.ZipFile(whl).read("os_ken/app/simple_switch_13.py"))
PY
fi
py=${XDPSWITCH_VENV:-$here/.venv}/bin/python
# Every tier runs as on a machine booted seconds ago, whatever this one's uptime: a time namespace puts
# CLOCK_MONOTONIC and CLOCK_BOOTTIME about 5 s after boot (nothing may depend on uptime; the BPF clock is
# not namespaced, and ctl.datapath.dpif.now_ns() corrects for that).
up=$(cut -d. -f1 /proc/uptime)
fresh=()
if [ "$up" -gt 10 ]; then
  fresh=(unshare --time --fork --monotonic=-$((up - 5)) --boottime=-$((up - 5)))
fi
echo "== ruff";  "$py" -m ruff check ctl exporters tests bench
echo "== mypy";  "$py" -m mypy ctl exporters bench
echo "== unit";  "${fresh[@]}" "$py" -m pytest tests/unit -q "$@"
echo "== bpf";   "${fresh[@]}" "$py" -m pytest tests/bpf -q "$@"
echo "== netns"; "${fresh[@]}" "$py" -m pytest tests/netns -q "$@"
