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
# OpenFlow peers for the netns tier: ovs-ofctl (Debian), and os-ken's manager in a venv of its own with the
# unmodified simple_switch_13.py of the os-ken 1.4.1 wheel (3.1.1 has the manager but no sample apps)
if ! command -v ovs-ofctl >/dev/null; then
  echo "test: installing openvswitch-common (ovs-ofctl drives the switch's OpenFlow listener)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openvswitch-common >/dev/null
fi
# tmux runs `xdpswitch top` in a real terminal (tests/netns/test_top.py)
if ! command -v tmux >/dev/null; then
  echo "test: installing tmux (xdpswitch top is tested in a real terminal)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tmux >/dev/null
fi
# ovs-pki makes the certificates of the TLS tests, in the layout OVS documents
if ! command -v ovs-pki >/dev/null; then
  echo "test: installing openvswitch-pki (ovs-pki makes the TLS tests' certificates)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openvswitch-pki >/dev/null
fi
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
