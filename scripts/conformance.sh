#!/usr/bin/env bash
# os-ken's OpenFlow Switch Test Tool (Ryu's tester: os_ken/tests/switch/tester.py and its JSON cases) against
# xdpswitch, or against Open vSwitch 3.1 for comparison. Not part of CI: a full run takes tens of minutes.
#
#   sudo scripts/conformance.sh [--target xdpswitch|ovs] [CASES...]
#
# CASES are path prefixes under os_ken/tests/switch/of13 (default: the 75-case quick subset: match/00,03,05,
# 06,11,14, action/00,17,18,25_SET_FIELD/03 and group/00); "match", "action", "group" or "meter" run a whole
# category.
#
# The tester drives two switches from one os-ken controller: the target (datapath id 1) and an Open vSwitch
# bridge as the tester (datapath id 2, userspace datapath, in a network namespace of its own with private
# run, db and log directories), wired port N to port N (N = 1..3) with veth pairs. It prints OK or ERROR
# per case and a summary per category. Everything it makes is removed on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
target=xdpswitch
if [ "${1:-}" = "--target" ]; then target=$2; shift 2; fi
[ "$target" = xdpswitch ] || [ "$target" = ovs ] || { echo "conformance: --target xdpswitch or ovs" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "conformance: needs root" >&2; exit 2; }

bash "$here/scripts/setup.sh" >/dev/null
osken=$here/.cache/osken
if [ ! -x "$osken/bin/osken-manager" ]; then
  echo "conformance: installing os-ken 3.1.1 under .cache/osken"
  /usr/bin/python3 -m venv "$osken"
  "$osken/bin/pip" install -q --disable-pip-version-check os-ken==3.1.1
fi
if ! command -v ovs-vswitchd >/dev/null; then
  echo "conformance: installing openvswitch-switch (its service is not started: a policy-rc.d says no)"
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openvswitch-switch >/dev/null || true
  rm -f /usr/sbin/policy-rc.d
fi
cases_root=$("$osken/bin/python" -c 'import os_ken, os; print(os.path.dirname(os_ken.__file__))')/tests/switch/of13
tester_py=$(dirname "$cases_root")/tester.py

sel=("$@")
if [ ${#sel[@]} -eq 0 ]; then   # every case file whose path starts with one of these
  sel=(match/00_ match/03_ match/05_ match/06_ match/11_ match/14_ action/00_ action/17_ action/18_
       action/25_SET_FIELD/03_ group/00_)
fi
work=$(mktemp -d /tmp/xsconf.XXXXXX)
mkdir -p "$work/cases"
for c in "${sel[@]}"; do
  found=0
  for f in "$cases_root/$c"*; do
    [ -e "$f" ] || continue
    rel=${f#"$cases_root"/}
    mkdir -p "$work/cases/$(dirname "$rel")"
    cp -r "$f" "$work/cases/$rel"
    found=1
  done
  [ $found = 1 ] || { echo "conformance: no case matches $c under $cases_root" >&2; exit 2; }
done

ns=xsconf-ovs
ovsrun=$work/ovs
name=xsconf
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  if [ -f "$ovsrun/ovs-vswitchd.pid" ]; then kill "$(cat "$ovsrun/ovs-vswitchd.pid")" 2>/dev/null; fi
  if [ -f "$ovsrun/ovsdb-server.pid" ]; then kill "$(cat "$ovsrun/ovsdb-server.pid")" 2>/dev/null; fi
  if [ -f "$ovsrun/target/ovs-vswitchd.pid" ]; then kill "$(cat "$ovsrun/target/ovs-vswitchd.pid")" 2>/dev/null; fi
  if [ -f "$ovsrun/target/ovsdb-server.pid" ]; then kill "$(cat "$ovsrun/target/ovsdb-server.pid")" 2>/dev/null; fi
  sleep 1
  "$here/.venv/bin/xdpswitch" dpctl del-dp --name "$name" >/dev/null 2>&1
  for i in 1 2 3; do ip link del "xsct$i" 2>/dev/null; done
  ip link del xscctl 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  ip netns del "$ns-target" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# one Open vSwitch instance (ovsdb-server + ovs-vswitchd) in namespace $1 with its files under $2
start_ovs() {
  local netns=$1 dir=$2
  mkdir -p "$dir"
  # no IPv6 in the namespace: the bridge's own port would send router solicitations the tester sees
  ip netns exec "$netns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ovsdb-tool create "$dir/conf.db" /usr/share/openvswitch/vswitch.ovsschema
  ip netns exec "$netns" env OVS_RUNDIR="$dir" OVS_DBDIR="$dir" OVS_LOGDIR="$dir" OVS_SYSCONFDIR="$dir" \
    ovsdb-server "$dir/conf.db" --remote="punix:$dir/db.sock" --pidfile="$dir/ovsdb-server.pid" \
    --unixctl="$dir/ovsdb-server.ctl" --log-file="$dir/ovsdb-server.log" --detach
  ip netns exec "$netns" env OVS_RUNDIR="$dir" OVS_DBDIR="$dir" OVS_LOGDIR="$dir" OVS_SYSCONFDIR="$dir" \
    ovs-vsctl --db="unix:$dir/db.sock" --no-wait init
  ip netns exec "$netns" env OVS_RUNDIR="$dir" OVS_DBDIR="$dir" OVS_LOGDIR="$dir" OVS_SYSCONFDIR="$dir" \
    ovs-vswitchd "unix:$dir/db.sock" --pidfile="$dir/ovs-vswitchd.pid" --unixctl="$dir/ovs-vswitchd.ctl" \
    --log-file="$dir/ovs-vswitchd.log" --detach
}
vsctl() { local dir=$1; shift; ovs-vsctl --db="unix:$dir/db.sock" --timeout=20 "$@"; }

# the controller's link into the tester's namespace: 10.251.0.1 (here) <-> 10.251.0.2 (the tester's)
ip netns add "$ns"
ip link add xscctl type veth peer name xscctlp
ip link set xscctlp netns "$ns"
ip addr add 10.251.0.1/24 dev xscctl && ip link set xscctl up
ip netns exec "$ns" sh -c 'ip addr add 10.251.0.2/24 dev xscctlp && ip link set xscctlp up && ip link set lo up'
start_ovs "$ns" "$ovsrun"
vsctl "$ovsrun" add-br br0 -- set bridge br0 datapath_type=netdev protocols=OpenFlow13 fail-mode=secure \
  other-config:datapath-id=0000000000000002 -- set-controller br0 tcp:10.251.0.1:6653
for i in 1 2 3; do   # target port i (here) <-> tester port i (in the tester's namespace)
  ip link add "xsct$i" type veth peer name "xsctp$i"
  ip link set "xsctp$i" netns "$ns"
  # no IPv6 on the wires: the hosts' own ND and MLD packets would reach the tester as unexpected packets
  sysctl -qw "net.ipv6.conf.xsct$i.disable_ipv6=1"
  ip link set "xsct$i" up
  ethtool -K "xsct$i" tx off >/dev/null 2>&1 || true
  ip netns exec "$ns" sh -c "sysctl -qw net.ipv6.conf.xsctp$i.disable_ipv6=1; ip link set xsctp$i up; ethtool -K xsctp$i tx off >/dev/null 2>&1 || true"
  vsctl "$ovsrun" add-port br0 "xsctp$i" -- set interface "xsctp$i" ofport_request=$i
done

if [ "$target" = xdpswitch ]; then
  "$here/.venv/bin/xdpswitch" start --name "$name" --state-dir "$work/state" --metrics-address none \
    --datapath-id 1 --fail-mode secure --controller tcp:10.251.0.1:6653 \
    --port xsct1=1 --port xsct2=2 --port xsct3=3 > "$work/xdpswitch.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 120); do [ -S "/run/xdpswitch/$name.ctl" ] && break; sleep 0.5; done
  [ -S "/run/xdpswitch/$name.ctl" ] || { cat "$work/xdpswitch.log"; echo "conformance: xdpswitch did not start" >&2; exit 1; }
else
  # Open vSwitch 3.1 as the target: a second instance in a namespace of its own, the target ends moved there
  ip netns add "$ns-target"
  ip link add xscctl2 type veth peer name xscctl2p
  ip link set xscctl2p netns "$ns-target"
  ip addr add 10.252.0.1/24 dev xscctl2 && ip link set xscctl2 up
  ip netns exec "$ns-target" sh -c 'ip addr add 10.252.0.2/24 dev xscctl2p && ip link set xscctl2p up && ip link set lo up'
  for i in 1 2 3; do ip link set "xsct$i" netns "$ns-target"; ip netns exec "$ns-target" ip link set "xsct$i" up; done
  start_ovs "$ns-target" "$ovsrun/target"
  vsctl "$ovsrun/target" add-br br0 -- set bridge br0 datapath_type=netdev protocols=OpenFlow13 fail-mode=secure \
    other-config:datapath-id=0000000000000001 -- set-controller br0 tcp:10.252.0.1:6653
  for i in 1 2 3; do vsctl "$ovsrun/target" add-port br0 "xsct$i" -- set interface "xsct$i" ofport_request=$i; done
fi

echo "conformance: target $target, $(find "$work/cases" -name '*.json' | wc -l) case files; running the tester"
(cd "$work" && "$osken/bin/osken-manager" --ofp-listen-host 0.0.0.0 --ofp-tcp-listen-port 6653 \
  --test-switch-dir "$work/cases" --test-switch-target 0000000000000001 --test-switch-tester 0000000000000002 \
  "$tester_py" > "$work/tester.log" 2>&1) || true
# the tester's log: one "<case name>   OK" or "ERROR" line per case
"$here/.venv/bin/python" - "$work/tester.log" <<'PY'
import collections, re, sys
res, rows, cat = collections.Counter(), [], "?"
for line in open(sys.argv[1], errors="replace").read().splitlines():
    m = re.search(r"^\s{4}(\S.*?)\s+(OK|ERROR)\s*$", line)
    if m:
        res[(cat, m.group(2))] += 1
        rows.append(f"{cat:7s} {m.group(2):5s} {m.group(1)}")
        continue
    m = re.search(r"^\s{8}(\S.*)$", line)
    if m and rows and rows[-1].split()[1] == "ERROR":
        rows[-1] += f"  <- {m.group(1)[:160]}"
        continue
    m = re.search(r"\b(match|action|group|meter)\s*:", line)
    if m:
        cat = m.group(1)
print("\n".join(rows))
for c in sorted({c for c, _ in res}):
    print(f"{c}: {res[(c, 'OK')]} OK, {res[(c, 'ERROR')]} ERROR")
print(f"total: {sum(v for (_, r), v in res.items() if r == 'OK')} OK of {sum(res.values())}")
PY
