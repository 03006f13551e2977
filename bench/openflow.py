"""OpenFlow benchmark: the packet-in round trip, from a new flow's first packet to its traffic in XDP.

    sudo .venv/bin/python -m bench.openflow [--json] [--flows N]

Topology (root namespace, nothing else touched): veth gen0<->port1 and port2<->sink0, the switch in this
process, and os-ken's simple_switch_13 as the controller on loopback (scripts/test.sh installs it under
.cache/). The sink's MAC is learned first. Then, for each of N new source MACs, one frame goes in on port 1:

 - "packet-in round trip": until that frame arrives on sink0. It went up to the handler, to the controller
   as a PACKET_IN, and came back as a PACKET_OUT (after the controller's FLOW_MOD);
 - "flow in the fast path": until the flow's megaflow is in XDP. The same frame is re-sent every 200 us
   until a packet of it is handled by a megaflow the pipeline made from the controller's rule.

Baseline, measured in the same run on the same ports: a flow whose rule is already in the tables (first
packet: upcall, translate, install, AF_XDP transmit), and the next packet of it (the fast path). The report
gives the round trip as a multiple of each.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import help_text
from bench.upcall import GEN, P1, P2, SINK, pct, setup, teardown
from ctl.daemon.switch import PortSpec, Switch
from ctl.datapath.dpif_xdp import DatapathConfig
from ctl.datapath.flowkey import parse
from ctl.openflow.connmgr import ChannelConfig
from ctl.pipeline.openflow_tables import parse_flow

ROOT = Path(__file__).resolve().parent.parent
OSKEN = ROOT / ".cache" / "osken" / "bin" / "osken-manager"
APP = ROOT / ".cache" / "simple_switch_13.py"
DST = bytes.fromhex("020000000002")


def frame(src: bytes, dst: bytes = DST, tag: int = 0) -> bytes:
    """A 64-byte UDP/IPv4 frame; tag goes in the UDP source port."""
    udp = tag.to_bytes(2, "big") + b"\x00\x35\x00\x1a\x00\x00" + b"x" * 18
    ip = bytes.fromhex("4500002e00000000401100000a0000010a000002")
    return dst + src + b"\x08\x00" + ip + udp


def mac(i: int, base: int) -> bytes:
    return (base << 24 | i).to_bytes(6, "big")


class Wire:
    def __init__(self) -> None:
        self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.tx.bind((GEN, 0))
        self.back = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.back.bind((SINK, 0))
        self.rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        self.rx.bind((SINK, 0))
        self.rx.settimeout(1.0)

    def time_to_sink(self, f: bytes) -> float:
        """Send f on gen0; microseconds until it arrives on sink0 (inf if it does not)."""
        t0 = time.perf_counter_ns()
        self.tx.send(f)
        while True:
            try:
                got = self.rx.recv(2048)
            except TimeoutError:
                return float("inf")
            if got[6:12] == f[6:12] and got[34:36] == f[34:36]:
                return (time.perf_counter_ns() - t0) / 1000


def fast_path_ready(sw: Switch, f: bytes) -> bool:
    assert sw.udpif is not None
    with sw.udpif.lock:
        u = sw.udpif.ukeys.find(parse(f, 1))
        return u is not None and not u.slow_path and u.idx >= 0


def main() -> int:
    ap = argparse.ArgumentParser(description=help_text(__doc__))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--flows", type=int, default=200, help="new flows to time (default 200)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench.openflow needs root", file=sys.stderr)
        return 2
    if not OSKEN.exists() or not APP.exists():
        print(f"bench.openflow needs os-ken under .cache/ ({OSKEN}); scripts/test.sh installs it", file=sys.stderr)
        return 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    setup()
    ctl = subprocess.Popen([str(OSKEN), "--ofp-listen-host", "127.0.0.1", "--ofp-tcp-listen-port", str(port),
                            str(APP)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    rt: list[float] = []
    fast: list[float] = []
    base_first: list[float] = []
    base_next: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        sw = Switch("xsofbench", [PortSpec(P1, 1), PortSpec(P2, 2)], Path(d) / "flows.json",
                    config=DatapathConfig(max_flows=65536, emc_insert_inv_prob=1), say=lambda m: None,
                    metrics_address=None,
                    channel=ChannelConfig(controllers=[f"tcp:127.0.0.1:{port}"], fail_mode="secure"))
        try:
            sw.start()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not len(sw.tables.tables[0]):
                time.sleep(0.1)   # simple_switch_13's table-miss flow: it is connected and ready
            w = Wire()
            w.back.send(frame(DST, bytes.fromhex("020000000001")))  # the controller learns the sink's MAC
            time.sleep(1.0)
            for i in range(args.flows):
                f = frame(mac(i, 0x0200AA))
                t0 = time.perf_counter_ns()
                rt.append(w.time_to_sink(f))
                while not fast_path_ready(sw, f) and time.perf_counter_ns() - t0 < 2e9:
                    w.tx.send(f)
                    time.sleep(0.0002)
                fast.append((time.perf_counter_ns() - t0) / 1000 if fast_path_ready(sw, f) else float("inf"))
            # baseline: the rule is already there (no controller involved), same ports, same frames
            specs = [parse_flow(f"priority=2,in_port=1,dl_src=02:00:bb:00:00:{i % 256:02x},dl_dst=02:00:00:00:00:02,"
                                "actions=output:2") for i in range(min(args.flows, 256))]
            sw.change_tables(lambda t: t.add_many(specs))
            time.sleep(0.5)
            for i in range(len(specs)):
                f = frame(mac(i, 0x0200BB))
                base_first.append(w.time_to_sink(f))
                base_next.append(w.time_to_sink(f))
            ch = sw.unixctl.run({"cmd": "channel-show"})["result"]
        finally:
            sw.shutdown(remove=True)
            os.killpg(ctl.pid, 9)
            ctl.wait(10)
            teardown()

    def summary(xs: list[float]) -> dict[str, float]:
        return {"p50": pct(xs, 50), "p99": pct(xs, 99), "lost": float(sum(x == float("inf") for x in xs))}

    r, b1, b2 = summary(rt), summary(base_first), summary(base_next)
    report: dict[str, object] = {
        "packet_in_round_trip_us": r, "flow_in_fast_path_us": summary(fast), "baseline_first_packet_us": b1,
        "baseline_fast_path_us": b2, "flow_mods": ch["flow_mods"], "packet_outs": ch["packet_outs"],
        "round_trip_vs_first_packet_p50": r["p50"] / b1["p50"] if b1["p50"] else 0.0,
        "round_trip_vs_fast_path_p50": r["p50"] / b2["p50"] if b2["p50"] else 0.0}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    for k in ("packet_in_round_trip_us", "flow_in_fast_path_us", "baseline_first_packet_us", "baseline_fast_path_us"):
        v = report[k]
        assert isinstance(v, dict)
        print(f"{k:28s} p50 {v['p50']:9.1f} us  p99 {v['p99']:9.1f} us  lost {v['lost']:.0f}")
    print(f"round trip p50 = {report['round_trip_vs_first_packet_p50']:.1f}x a first packet with the rule in place, "
          f"{report['round_trip_vs_fast_path_p50']:.0f}x a fast-path packet "
          f"({report['flow_mods']} flow-mods, {report['packet_outs']} packet-outs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
