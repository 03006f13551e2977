"""Tuple space explosion (Csikor et al., CoNEXT 2019) against an ACL: what legitimate established traffic keeps.

    sudo .venv/bin/python -m bench.tse [--json]

The ACL allows TCP to port 80 from 10.0.0.0/8 and to port 443 from 192.168.0.0/16, and denies the rest. The
attack is the paper's: TCP packets from an allowed prefix whose destination port is wrong in one bit, and
packets whose source is wrong in one prefix bit, so each needs a megaflow with a mask of its own (56 masks
asked for, against the guard's 32 and the datapath's 64). Every attack packet goes through the upcall path
(``Udpif.handle``, as a handler would), then keeps hitting its megaflow, so the subtables are ranked by the
attack's hits: the legitimate flows' subtable is visited last.

Measured with BPF_PROG_TEST_RUN (the kernel's timing, best of runs, one CPU): the per-packet cost of 16
legitimate established flows before the attack and under it, with the guard (``--mask-limit``, 32 masks:
past it the exact mask) and without it (0: up to the datapath's 64), in the normal configuration (EMC and
mask hints on) and in the worst case (EMC and hints off, so every packet searches the subtables in order).
"Kept" is the rate legitimate traffic keeps: the cost before the attack over the cost under it.
Target (issue: groups, meters, TSE): >= 50 % kept under the attack; Open vSwitch's kernel datapath: 1 %.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from bench import help_text
from ctl.datapath.dpif_xdp import Datapath, DatapathConfig
from ctl.datapath.progrun import run_xdp
from ctl.datapath.xsk import Upcall
from ctl.pipeline.openflow_tables import OpenFlowTables, parse_flow
from ctl.udpif.upcall import Udpif

ACL = ["priority=100,tcp,nw_src=10.0.0.0/8,tp_dst=80,actions=output:2",
       "priority=90,tcp,nw_src=192.168.0.0/16,tp_dst=443,actions=output:2",
       "priority=1,actions=drop"]


def frame(src: str, dport: int, sport: int = 40000) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst="172.16.0.1")
                 / TCP(sport=sport, dport=dport, flags="A"))


def legit_frames() -> list[bytes]:
    return [frame(f"10.1.{i}.7", 80, 40000 + i) for i in range(16)]


def _ip(v: int) -> str:
    return ".".join(str(v >> s & 255) for s in (24, 16, 8, 0))


def attack_frames() -> list[bytes]:
    """Each allowed prefix with its port wrong in one bit (a mask per bit: the port's leading bits up to it),
    and each prefix wrong in one bit (a mask per prefix length)."""
    out = []
    for base, port in ((10 << 24 | 0x010203, 80), (192 << 24 | 168 << 16 | 0x0102, 443)):
        for k in range(16):
            out.append(frame(_ip(base), port ^ (1 << k), 1000 + k))
    for base, plen in ((10 << 24, 8), (192 << 24 | 168 << 16, 16)):
        for j in range(plen):
            out.append(frame(_ip(base ^ (1 << (31 - j)) | 0x0101), 80, 2000 + j))
    return out


def sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True, capture_output=True)


def cost(dp: Datapath, frames: list[bytes], ifindex: int) -> float:
    """Mean over frames of the best of 5 runs' ns/packet."""
    total = 0.0
    for fr in frames:
        total += min(run_xdp(dp.emc_prog_fd, fr, ifindex, repeat=5000).duration_ns for _ in range(5))
    return total / len(frames)


def scenario(dp: Datapath, ifindex: int, mask_limit: int, attack: bool) -> dict[str, object]:
    dp.flush_flows()
    dp.flush_emc()
    tables = OpenFlowTables()
    tables.add_many(parse_flow(r) for r in ACL)
    u = Udpif(dp, tables, lambda port, frames: len(frames), lambda: [1, 2], flow_limit=1_000_000)
    u.mask_limit = mask_limit
    legit = legit_frames()
    u.handle([Upcall(1, 1, 0, f) for f in legit])
    if attack:
        for f in attack_frames():
            u.handle([Upcall(1, 1, 0, f)])
        for f in attack_frames():            # the attack keeps hitting its megaflows: they rank first
            run_xdp(dp.emc_prog_fd, f, ifindex, repeat=2000)
        dp.rank_masks()
    st = u.stats
    row: dict[str, object] = {"masks": dp.n_masks, "megaflows": dp.n_flows, "mask_limited": st.mask_limited,
                              "install_failed": st.install_failed}
    dp.set_emc_insert_inv_prob(100)
    dp.set_mask_hints(True)
    row["normal_ns"] = round(cost(dp, legit, ifindex), 1)
    dp.flush_emc()
    dp.set_emc_insert_inv_prob(0)
    dp.set_mask_hints(False)
    row["worst_ns"] = round(cost(dp, legit, ifindex), 1)
    dp.set_mask_hints(True)
    dp.set_emc_insert_inv_prob(100)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=help_text(__doc__))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench.tse needs root", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {0})
    tag = f"xstse{os.getpid() % 10000}"
    report: dict[str, object] = {}
    with contextlib.ExitStack() as cleanup:   # each link and the datapath go whatever fails after they are made
        for a, b in ((f"{tag}a", f"{tag}b"), (f"{tag}c", f"{tag}d")):
            sh(f"ip link add {a} type veth peer name {b}")
            cleanup.callback(subprocess.run, ["ip", "link", "del", a], capture_output=True)
            sh(f"ip link set {a} up && ip link set {b} up")
        dp = Datapath(tag, DatapathConfig(max_flows=65536, max_masks=64))
        cleanup.callback(dp.close, unpin=True)
        ifindex = dp.add_port(f"{tag}a", 1).ifindex
        dp.add_port(f"{tag}c", 2)
        base = scenario(dp, ifindex, 32, attack=False)
        report["before the attack"] = base
        for label, limit in (("attack, guard on (mask limit 32)", 32), ("attack, no guard (up to 64)", 0)):
            row = scenario(dp, ifindex, limit, attack=True)
            row["normal_kept"] = round(float(base["normal_ns"]) / float(row["normal_ns"]), 3)  # type: ignore[arg-type]
            row["worst_kept"] = round(float(base["worst_ns"]) / float(row["worst_ns"]), 3)  # type: ignore[arg-type]
            report[label] = row
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    for label, r in report.items():
        assert isinstance(r, dict)
        kept = (f"; kept {r['normal_kept']:.0%} (normal), {r['worst_kept']:.0%} (worst case)"
                if "normal_kept" in r else "")
        print(f"{label}: {r['masks']} masks, {r['megaflows']} megaflows ({r['mask_limited']} given the exact mask, "
              f"{r['install_failed']} not installed); legitimate packet {r['normal_ns']} ns with EMC and hints, "
              f"{r['worst_ns']} ns without{kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
