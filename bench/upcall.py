"""Upcall-path benchmark: flow setups per second and first-packet latency, beside the fast path's.

    sudo .venv/bin/python -m bench.upcall [--json] [--quick]

Topology (root namespace, nothing else touched): veth gen0<->port1 and port2<->sink0. The switch runs in
this process (one handler thread) with a rule set of N exact UDP destination-port rules, so every new
destination port is a new megaflow.

Flow setups per second: a generator process floods gen0 with frames, each for a destination port not yet
seen, faster than the handler can take them; the rate is megaflows installed per second while it runs.
First-packet latency: one frame at a time from gen0 (AF_PACKET), timed until it arrives on sink0: for a new
flow (a miss: upcall, translate, install, execute and AF_XDP transmit) and for the same flow again (a
megaflow or EMC hit in XDP). p50 and p99 of each, and their ratio.
Where a setup's time goes: the handler's own counters split its handling time by phase (``upcall show``'s
"handling"), set beside the run's time per setup (the handler's core is busy all along) and the datapath
write timed alone afterwards. It shows what bounds the rate: at 40k setups/s, one core has 25 us for all.

Targets (not tests): >= 40k setups/s on a 2-core machine (issue 11); first-packet p99 < 1 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import help_text
from ctl.daemon.switch import PortSpec, Switch
from ctl.datapath.dpif import DpOutput
from ctl.datapath.dpif_xdp import DatapathConfig
from ctl.datapath.flowkey import build
from ctl.udpif.upcall import PHASES

ROOT = Path(__file__).resolve().parent.parent
GEN, P1, P2, SINK = "xbgen0", "xbport1", "xbport2", "xbsink0"
SRC, DST = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def sh(cmd: str, check: bool = True) -> None:
    subprocess.run(cmd, shell=True, check=check, capture_output=True)


def frame(dport: int, sport: int = 1000) -> bytes:
    """A 64-byte UDP/IPv4 frame (checksums zero: nobody checks them on this path)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + 18, 0) + b"x" * 18
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes([10, 0, 0, 1]),
                     bytes([10, 0, 0, 2]))
    return DST + SRC + b"\x08\x00" + ip + udp


def setup(queues: int = 1) -> None:
    teardown()
    for a, b in ((GEN, P1), (P2, SINK)):
        q = f"numtxqueues {queues} numrxqueues {queues}" if a == GEN else ""
        sh(f"ip link add {a} {q} type veth peer name {b} {q}")
    for d in (GEN, P1, P2, SINK):
        sh(f"ip link set {d} up")
        sh(f"sysctl -qw net.ipv6.conf.{d}.disable_ipv6=1")
        sh(f"ethtool -K {d} tx off tso off gso off")
    sh(f"ethtool -K {SINK} gro on")  # so XDP redirects into port2 reach sink0's stack (AF_PACKET sees them)


def teardown() -> None:
    for d in (GEN, P2):
        sh(f"ip link del {d}", check=False)


GENERATOR = """
import socket, sys, time
from bench.upcall import frame
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
first, n, seconds = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rate = n / seconds  # paced: the offered load lasts the whole window
frames = [frame(first + i) for i in range(n)]
start = time.time()
sent = 0
while sent < n:
    due = min(n, int((time.time() - start) * rate) + 64)
    for f in frames[sent:due]:
        try:
            s.send(f)
        except OSError:
            pass
    sent = max(sent, due)
    time.sleep(0.0005)
print(sent)
"""


def setups_per_second(sw: Switch, first: int, n: int, seconds: float) -> dict[str, float]:
    udpif = sw.udpif
    assert udpif is not None
    gen = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", GENERATOR, GEN, str(first), str(n),
                            str(seconds)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    samples = []
    before = udpif.stats
    t_end = time.time() + seconds + 1.0
    while time.time() < t_end:
        st = udpif.stats  # every handler's counters, summed now
        samples.append((time.perf_counter(), st.installed, st.received))
        time.sleep(0.05)
    offered = int(gen.communicate(timeout=30)[0] or 0)
    # the busy window: from the first install to the last
    t0 = next(s for s in samples if s[1] > samples[0][1])
    t1 = next(s for s in samples if s[1] == samples[-1][1])
    dt = max(t1[0] - t0[0], 1e-6)
    installed = t1[1] - t0[1]
    upcalls = samples[-1][2] - samples[0][2]
    after = udpif.stats
    phases = {k: (after.phase_seconds[k] - before.phase_seconds[k]) / max(upcalls, 1) * 1e6 for k in PHASES}
    return {"offered": offered, "installed": samples[-1][1] - samples[0][1], "upcalls": upcalls,
            "setups_per_s": installed / dt, **{f"{k}_us": v for k, v in phases.items()},
            "handling_us": (after.handling_sum - before.handling_sum) / max(upcalls, 1) * 1e6}


def latencies(n: int, first: int) -> dict[str, list[float]]:
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    tx.bind((GEN, 0))
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    rx.bind((SINK, 0))
    rx.settimeout(0.5)
    out: dict[str, list[float]] = {"first packet (upcall)": [], "next packet (fast path)": []}
    for i in range(n):
        f = frame(first + i)
        for label in out:
            t0 = time.perf_counter_ns()
            tx.send(f)
            while True:
                try:
                    got = rx.recv(2048)
                except TimeoutError:
                    out[label].append(float("inf"))
                    break
                if got[36:38] == f[36:38]:
                    out[label].append((time.perf_counter_ns() - t0) / 1000)
                    break
    return out


def write_alone(sw: Switch, n: int = 2000) -> float:
    """us per megaflow of the datapath write alone: scratch megaflows under a mask of their own (nothing else uses
    it) put in the handler's batches of 16 and deleted again, best of 3 rounds, on the running switch."""
    udpif, dp = sw.udpif, sw.dp
    assert udpif is not None and dp is not None
    mask = build(in_port=0xFFFFFFFF, dl_type=0xFFFF, nw_src=0xFFFFFFFF)
    writes: list[float] = []
    for rnd in range(3):
        keys = [build(in_port=1, dl_type=0x0800, nw_src=(198 << 24) | (rnd << 20) | i) for i in range(n)]
        with udpif.lock:   # the Udpif's lock guards the datapath's flow writes
            t0 = time.perf_counter()
            for i in range(0, n, 16):
                dp.put_flows([(k, mask, [DpOutput(2)]) for k in keys[i:i + 16]])
            writes.append((time.perf_counter() - t0) / n * 1e6)
            dp.del_flows([(k, mask) for k in keys])
    return min(writes)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=help_text(__doc__))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer flows and probes (a smoke run)")
    ap.add_argument("--handlers", type=int, default=1,
                    help="handler threads (port 1 gets as many receive queues, one upcall socket each)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench.upcall needs root", file=sys.stderr)
        return 2
    n_rules = 20000 if args.quick else 65000
    probes = 200 if args.quick else 1000
    setup(args.handlers)
    with tempfile.TemporaryDirectory() as d:
        state = Path(d) / "flows.json"
        flows = Path(d) / "bench.flows"
        flows.write_text("".join(f"priority=10,udp,tp_dst={p},actions=output:2\n" for p in range(1, n_rules + 1)))
        sw = Switch("xsbench", [PortSpec(P1, 1), PortSpec(P2, 2)], state, flows, n_handlers=args.handlers,
                    config=DatapathConfig(max_flows=65536, emc_insert_inv_prob=100), say=lambda m: None)
        os.sched_setaffinity(0, {1})  # the handler thread inherits it; the generator runs on CPU 0
        try:
            sw.start()
            time.sleep(0.5)
            lat = latencies(probes, 1)
            # offered: 40k new flows per second (the target; more than the handlers take), for as long as the
            # rules last
            rate = setups_per_second(sw, probes + 1, n_rules - probes, (n_rules - probes) / 40000)
            up = sw.udpif.stats.to_json() if sw.udpif else {}
            write_us = write_alone(sw)
        finally:
            sw.shutdown(remove=True)
            teardown()
    latency = {k: {"p50": pct(v, 50), "p99": pct(v, 99), "lost": float(sum(x == float("inf") for x in v))}
               for k, v in lat.items()}
    first, fast = latency["first packet (upcall)"], latency["next packet (fast path)"]
    report: dict[str, object] = {
        "flow_setups": rate, "latency_us": latency,
        "upcall_stats": {k: up[k] for k in ("received", "ok", "failed", "installed", "existing")} if up else {},
        "first_vs_fast_p50": first["p50"] / fast["p50"] if fast["p50"] else 0.0,
        "write_alone_us": write_us,
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"flow setups, {args.handlers} handler(s): {rate['setups_per_s']:.0f}/s (target >= 40000) "
          f"[offered {rate['offered']}, upcalls {rate['upcalls']}, installed {rate['installed']}]")
    for k, v in latency.items():
        print(f"{k:26s} p50 {v['p50']:8.1f} us  p99 {v['p99']:8.1f} us  lost {v['lost']:.0f}")
    print(f"first packet p50 / fast path p50: {report['first_vs_fast_p50']:.1f}x (target: first-packet p99 < 1000 us)")
    per_setup = 1e6 / max(rate["setups_per_s"], 1.0) * args.handlers   # handler time a setup took
    print("where a setup's time went in the run (the handlers' own counters, us per upcall):")
    for k in PHASES:
        print(f"  {k:40s} {rate[k + '_us']:7.1f}")
    print(f"  {'outside handling (receive, poll, threads)':40s} {max(0.0, per_setup - rate['handling_us']):7.1f}")
    print(f"  {'one setup (handlers / setups per second)':40s} {per_setup:7.1f}   (40000/s: 25.0 on one core)")
    if args.handlers > 1:
        print(f"  (with {args.handlers} handler threads the phases are summed over them and include the time each "
              "waited for the others to let go of the interpreter)")
    print(f"the datapath write alone (batches of 16, nothing else running): {write_us:.1f} us, at most "
          f"{1e6 / write_us:,.0f} setups/s on one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
