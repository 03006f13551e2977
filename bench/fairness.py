"""Upcall fairness: one port floods upcalls as fast as a generator can send, while another port opens new
flows at 200/s and keeps one established flow at 1000 packets/s.

    sudo .venv/bin/python -m bench.fairness [--json] [--seconds S]

Topology (root namespace, nothing else touched): flood0 <-> port1, victim0 <-> port3, port2 <-> sink0 and
port4 <-> drain0. The switch runs in this process (one handler). The flood is one flow whose actions the
fast path cannot run (a change between two outputs: the slow path), so every one of its packets is an
upcall, as a storm of new flows would be; it goes out port 4. The victim has an exact UDP destination-port
rule per new flow, out port 2. A separate process on the victim's side sends and times: each new flow's
first packet until it arrives on sink0, and the established flow's packets counted there.

Targets (issue: never drop what could be forwarded): the victim's new flows >= 99% delivered, their first
packet p99 < 5 ms, the established flow 100%, during the flood. Also reported: what the flood got, and what the
per-port upcall limit (--upcall-rate, the switch's default unless given; 0: none) dropped in XDP.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import help_text
from ctl.daemon.switch import PortSpec, Switch
from ctl.datapath.dpif import DatapathConfig
from ctl.udpif.upcall import DEFAULT_UPCALL_RATE, UpcallLimits

ROOT = Path(__file__).resolve().parent.parent
FLOOD, P1, VICTIM, P3, P2, SINK, P4, DRAIN = ("xbfl0", "xbfport1", "xbvic0", "xbfport3", "xbfport2", "xbfsink0",
                                              "xbfport4", "xbfdrain0")
FLOOD_PORT = 7                         # the flood's one (slow-path) flow
VICTIM_PORTS = range(50001, 60001)     # the victim's new flows

FLOODER = """
import socket, sys, time
from bench.upcall import frame
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
f, end, n = frame(int(sys.argv[2])), time.time() + float(sys.argv[3]), 0
while time.time() < end:
    for _ in range(256):
        try:
            s.send(f)
            n += 1
        except OSError:
            pass
print(n)
"""
ESTABLISHED = 60500                    # the victim's established flow

VICTIM_SCRIPT = """
import json, socket, sys, threading, time
from bench.upcall import frame
seconds, new_rate = float(sys.argv[1]), int(sys.argv[2])
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
tx.bind(("%(victim)s", 0))
rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
rx.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
rx.bind(("%(sink)s", 0))
rx.settimeout(0.2)
arrived, est = {}, [0]
stop = threading.Event()
def receive():
    while not stop.is_set():
        try:
            f = rx.recv(2048)
        except OSError:
            continue
        dport = int.from_bytes(f[36:38], "big")
        if dport == %(est)d:
            est[0] += 1
        elif dport not in arrived:
            arrived[dport] = time.perf_counter()
t = threading.Thread(target=receive); t.start()
sent, est_sent = {}, 0
t0 = time.perf_counter(); i = 0
while time.perf_counter() - t0 < seconds:
    now = time.perf_counter()
    while est_sent < (now - t0) * 1000:
        tx.send(frame(%(est)d)); est_sent += 1
    if i < (now - t0) * new_rate:
        p = %(first)d + i
        sent[p] = time.perf_counter(); tx.send(frame(p)); i += 1
    time.sleep(0.0005)
time.sleep(1.0)
stop.set(); t.join()
lat = sorted((arrived[p] - s) * 1e6 for p, s in sent.items() if p in arrived)
pct = lambda q: lat[min(len(lat) - 1, int(q / 100 * (len(lat) - 1)))] if lat else float("inf")
print(json.dumps({"new_sent": len(sent), "new_delivered": len(lat), "p50_us": pct(50), "p99_us": pct(99),
                  "established_sent": est_sent, "established_delivered": est[0]}))
"""


def sh(cmd: str, check: bool = True) -> None:
    subprocess.run(cmd, shell=True, check=check, capture_output=True)


def setup() -> None:
    teardown()
    for a, b in ((FLOOD, P1), (VICTIM, P3), (P2, SINK), (P4, DRAIN)):
        sh(f"ip link add {a} type veth peer name {b}")
    for d in (FLOOD, P1, VICTIM, P3, P2, SINK, P4, DRAIN):
        sh(f"ip link set {d} up")
        sh(f"sysctl -qw net.ipv6.conf.{d}.disable_ipv6=1")
        sh(f"ethtool -K {d} tx off tso off gso off")


def teardown() -> None:
    for d in (FLOOD, VICTIM, P2, P4):
        sh(f"ip link del {d}", check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=help_text(__doc__))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--upcall-rate", type=int, default=DEFAULT_UPCALL_RATE,
                    help="the switch's per-port upcall limit (0: none), as xdpswitch start --upcall-rate")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench.fairness needs root", file=sys.stderr)
        return 2
    setup()
    rules = ([f"priority=10,udp,tp_dst={FLOOD_PORT},actions=output:4,mod_dl_dst:02:00:00:00:00:99,output:4"]
             + [f"priority=10,udp,tp_dst={p},actions=output:2" for p in (*VICTIM_PORTS, ESTABLISHED)])
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as d:
        flows = Path(d) / "bench.flows"
        flows.write_text("\n".join(rules) + "\n")
        sw = Switch("xsbenchfair", [PortSpec(P1, 1), PortSpec(P2, 2), PortSpec(P3, 3), PortSpec(P4, 4)],
                    Path(d) / "flows.json", flows, config=DatapathConfig(max_flows=131072), say=lambda m: None,
                    metrics_address=None, upcall_limits=UpcallLimits(args.upcall_rate))
        os.sched_setaffinity(0, {1})  # the handler on CPU 1; the flood generator on CPU 0
        try:
            sw.start()
            time.sleep(0.5)
            script = VICTIM_SCRIPT % {"victim": VICTIM, "sink": SINK, "est": ESTABLISHED, "first": VICTIM_PORTS[0]}
            for label, flood in (("alone", False), ("under the flood", True)):
                gen = None
                if flood:
                    gen = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", FLOODER, FLOOD,
                                            str(FLOOD_PORT), str(args.seconds + 2)], stdout=subprocess.PIPE,
                                           text=True, cwd=ROOT)
                    time.sleep(0.5)
                up0 = sw.udpif.stats if sw.udpif else None
                lim0 = sw.dp.stats().drops.get("upcall_limit", 0) if sw.dp else 0
                victim = subprocess.run([sys.executable, "-c", script, str(args.seconds), "200"], capture_output=True,
                                        text=True, cwd=ROOT, timeout=args.seconds + 60)
                res = json.loads(victim.stdout or "{}")
                if gen is not None:
                    res["flood_sent"] = int(gen.communicate(timeout=60)[0] or 0)
                if sw.udpif is not None and up0 is not None:
                    st = sw.udpif.stats
                    res["switch_installed"] = st.installed - up0.installed
                    res["switch_upcalls"] = st.received - up0.received
                    res["socket_drops"] = sw.socket_drops()
                    res["upcall_limited"] = (sw.dp.stats().drops.get("upcall_limit", 0) - lim0) if sw.dp else 0
                report[label] = res
                # the victim's flows again next round: a fresh range would need more rules; delete what it made
                if sw.udpif is not None:
                    sw.udpif.flush()
        finally:
            sw.shutdown(remove=True)
            teardown()
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    for label, r in report.items():
        assert isinstance(r, dict)
        print(f"{label}: victim's new flows {r.get('new_delivered')}/{r.get('new_sent')} delivered, first packet p50 "
              f"{r.get('p50_us', 0):.0f} us p99 {r.get('p99_us', 0):.0f} us; established "
              f"{r.get('established_delivered')}/{r.get('established_sent')}; the handler took "
              f"{r.get('switch_upcalls')} upcalls"
              + (f" of the flood's {r['flood_sent']} packets (lost at the sockets so far: {r.get('socket_drops')})"
                 if "flood_sent" in r else "")
              + f"; dropped in XDP over the upcall limit ({args.upcall_rate or 'none'}/s per port): "
                f"{r.get('upcall_limited')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
