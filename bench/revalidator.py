"""Revalidator benchmark: what one dump-and-sweep pass costs at 10k, 100k and 200k megaflows, and memory.

    sudo .venv/bin/python -m bench.revalidator [--json] [--quick]

For each size: megaflows are installed into a real fast path (one exact UDP-port rule each, their
ukeys as the handlers make them), then timed:
  - a steady pass (dump every megaflow's per-CPU counters, credit the rules, check idleness), wall time
    and process CPU time;
  - a pass after a change every megaflow may depend on (every megaflow translated again), at 10k only
    (the same work per flow at any size).
At 100k (10k with --quick), with the revalidator thread running, flow-mods through ``change_tables(wait=True)``
(the control socket's add-flow and del-flows), timed until every megaflow they can affect is up to date:
  - adding, then deleting, a rule no megaflow's packets can meet;
  - adding, then deleting, a rule that takes 1% of the megaflows (their actions change in place);
and, with a NORMAL table of as many megaflows (one source MAC each, 100 destinations), the MAC table
learning one destination: only that MAC's megaflows are translated again.
At the largest size: BPF map memory (memlock of every map this process holds) and this process's RSS.

Targets (not tests): a 200k-megaflow dump well under OVS's 1.3 s slow-dump threshold; at 100k megaflows a
flow-mod that affects none done in under 100 ms, one that affects 1% in under 1 s (issue 13).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench import help_text
from bench.upcall import frame
from ctl.common.loops import tune_collector
from ctl.datapath import dpif
from ctl.datapath.dpif_xdp import Datapath, DatapathConfig
from ctl.datapath.flowkey import parse
from ctl.datapath.xsk import Upcall
from ctl.pipeline.mac_learning import MacLearning
from ctl.pipeline.ofmatch import flow_of, key_of
from ctl.pipeline.openflow_tables import OpenFlowTables, parse_flow
from ctl.pipeline.xlate import translate
from ctl.udpif.revalidator import Revalidator
from ctl.udpif.upcall import Udpif, Ukey


def map_memory() -> int:
    """Bytes of locked memory of every BPF map this process holds (the datapath loads them all), from
    /proc/self/fdinfo, each map counted once."""
    seen: dict[int, int] = {}
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if os.readlink(fd) != "anon_inode:bpf-map":
                continue
            info = dict(line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fd.name}").read_text().splitlines()
                        if ":" in line)
        except OSError:
            continue
        seen[int(info["map_id"])] = int(info["memlock"])
    return sum(seen.values())


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


RULES = [f"priority=10,udp,tp_dst={p},actions=output:2" for p in range(1, 60001)] + [
    "priority=30,in_port=99,actions=drop"]  # every subtable walk checks in_port first: it is in every megaflow


def fill(dp: Datapath, u: Udpif, n: int, start: int) -> None:
    """n more megaflows, each distinct (a destination port's rule, from one of ports 1..4), as the handlers
    would install them."""
    tables = u.tables
    for i in range(start, start + n):
        port, in_port = i % 60000 + 1, 1 + i // 60000
        f = frame(port)
        key = parse(f, in_port)
        flow = flow_of(key)
        tr = translate(tables, flow, {1, 2}, trace=False)
        mask = key_of(tr.wc)
        idx = dp.put_flow(key, mask, tr.actions)
        u.ukeys.add(Ukey(key.masked(mask), mask, tr.actions, tr.credits, flow=flow, lookups=tr.lookups, idx=idx,
                         created_ns=u.clock.now_ns(), normal=tr.normal))


def first_packets(u: Udpif, rv: Revalidator, change: bool, n: int = 400, base: int = 0) -> dict[str, float]:
    """Handle n new flows' first packets, one every 2 ms, timing each handle() (translate, install, execute:
    the upcall's whole time in user space, waits for the lock included). With change, a flow-table change
    first wakes a revalidator pass that re-translates every megaflow, and the packets arrive during it."""
    if change:
        u.change_tables(lambda t: t.add(parse_flow(f"priority=5,ip,nw_tos={4 * (base % 60)},actions=drop")))
        time.sleep(0.05)  # the pass has begun
    passes0 = rv.passes
    lat = []
    for i in range(n):
        up = Upcall(1, 5, 0, frame((base + i) % 60000 + 1))  # in_port 5: flows no megaflow covers yet
        t0 = time.perf_counter()
        u.handle([up])
        lat.append(time.perf_counter() - t0)
        time.sleep(0.002)
    lat.sort()
    return {"p50_us": round(lat[len(lat) // 2] * 1e6), "p99_us": round(lat[int(len(lat) * 0.99)] * 1e6),
            "max_us": round(lat[-1] * 1e6), "passes_during": rv.passes - passes0}


def flow_mod(u: Udpif, rv: Revalidator, change: Any) -> dict[str, float]:
    """One flow-mod as the control socket makes it (change_tables with wait): ms until every megaflow it can
    affect is translated again, and how many were."""
    swept = rv.swept
    t0 = time.perf_counter()
    u.change_tables(change, wait=True)
    return {"ms": round((time.perf_counter() - t0) * 1000, 1), "translated": rv.swept - swept}


def incremental(u: Udpif, rv: Revalidator, n: int) -> dict[str, Any]:
    """Flow-mods against n installed megaflows (the revalidator thread must be running)."""
    none = "priority=20,udp,tp_dst=65000,actions=output:3"   # no megaflow has destination port 65000
    some = "priority=20,in_port=1,udp,tp_dst=0/0xfc00,actions=output:3"  # ports 1-1023 from port 1: ~1%
    out: dict[str, Any] = {"megaflows": n}
    for name, text in (("none", none), ("1pct", some)):
        match = parse_flow(text.rsplit(",", 1)[0], actions=False)
        out[f"add_{name}"] = flow_mod(u, rv, lambda t, text=text: t.add(parse_flow(text)))
        out[f"del_{name}"] = flow_mod(u, rv, lambda t, match=match: t.delete(match, strict=True))
    return out


def mac_learning(n: int) -> dict[str, Any]:
    """n NORMAL megaflows (source MAC i, one of 100 destinations, none learned: they flood), then the MAC table
    learns one destination: ms until its megaflows forward to it, and how many were translated."""
    tables = OpenFlowTables()
    tables.add(parse_flow("actions=NORMAL"))
    dp = Datapath("xsbenchmac", DatapathConfig(max_flows=max(262144, n + 1024)))
    try:
        mac = MacLearning(max_entries=n + 1000)
        u = Udpif(dp, tables, lambda port, frames: len(frames), lambda: [1, 2], flow_limit=10_000_000, mac=mac)
        rv = Revalidator(u, 10_000_000, max_idle_ms=3_600_000, ports=lambda: {1, 2})
        for i in range(n):
            flow = flow_of(parse(frame(53), 1))
            flow["dl_src"], flow["dl_dst"] = 0x020000000000 + i + 1000, 0x020000000000 + i % 100 + 1
            key = key_of(flow)
            tr = translate(tables, flow, {1, 2}, trace=False, mac=mac)
            mask = key_of(tr.wc)
            idx = dp.put_flow(key, mask, tr.actions)
            u.ukeys.add(Ukey(key.masked(mask), mask, tr.actions, tr.credits, flow=flow, lookups=tr.lookups, idx=idx,
                             created_ns=u.clock.now_ns(), normal=tr.normal))
        mac.take_changes()
        rv.start()
        try:
            swept = rv.swept
            t0 = time.perf_counter()
            with u.lock:
                mac.learn(0, 0x020000000001, 2)   # destination 1 appears on port 2
                u.note_changes()
            rv.settle()
            ms = (time.perf_counter() - t0) * 1000
        finally:
            rv.stop()
        moved = sum(1 for k in u.ukeys if k.flow["dl_dst"] == 0x020000000001 and k.actions == [dpif.DpOutput(2)])
        return {"megaflows": n, "ms": round(ms, 1), "translated": rv.swept - swept, "now_forwarded": moved}
    finally:
        dp.close(unpin=True)


def timed(rv: Revalidator) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    rv.revalidate()
    return (time.perf_counter() - w) * 1000, (time.process_time() - c) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=help_text(__doc__))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="10k megaflows only")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench.revalidator needs root", file=sys.stderr)
        return 2
    tune_collector()   # as the daemon does
    sizes = [10_000] if args.quick else [10_000, 100_000, 200_000]
    tables = OpenFlowTables()
    # one rule per destination port, and (for flows beyond 60000) the source port in the match too
    tables.add_many(parse_flow(r) for r in RULES)
    dp = Datapath("xsbenchrv", DatapathConfig(max_flows=262144))
    rows = []
    try:
        u = Udpif(dp, tables, lambda port, frames: len(frames), lambda: [1, 2], flow_limit=10_000_000)
        rv = Revalidator(u, 10_000_000, max_idle_ms=3_600_000)
        have = 0
        for n in sizes:
            t0 = time.perf_counter()
            fill(dp, u, n - have, have)
            have = n
            install_s = time.perf_counter() - t0
            runs = [timed(rv) for _ in range(3)]
            wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
            row: dict[str, Any] = {"megaflows": n, "dump_ms": round(wall, 1), "dump_cpu_ms": round(cpu, 1),
                   "us_per_flow": round(wall * 1000 / n, 2), "install_s": round(install_s, 1)}
            if n == sizes[0]:
                with u.lock:
                    u.xlate_changed("bench: every megaflow")   # as a port coming or going: all translated again
                row["retranslate_ms"] = round(timed(rv)[0], 1)
            if n == 100_000 or args.quick:
                # first packets while the revalidator thread sweeps every megaflow after a change, against
                # the same with no pass running, in the same run
                rv.start()
                try:
                    row["incremental"] = incremental(u, rv, n)
                    row["first_packet_idle"] = first_packets(u, rv, change=False, base=0)
                    t0 = time.perf_counter()
                    row["first_packet_during_pass"] = first_packets(u, rv, change=True, base=1000)
                    rv.request()
                    row["pass_after_change_s"] = round(time.perf_counter() - t0, 1)
                finally:
                    rv.stop()
            rows.append(row)
        mem = {"megaflows": have, "bpf_map_bytes": map_memory(), "rss_bytes": rss_bytes(),
               "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    finally:
        dp.close(unpin=True)
    mac_row = mac_learning(10_000 if args.quick else 100_000)
    report = {"passes": rows, "memory": mem, "ovs_slow_dump_ms": 1300, "mac_learning": mac_row}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    for r in rows:
        extra = f", after a table change {r['retranslate_ms']} ms" if "retranslate_ms" in r else ""
        print(f"{r['megaflows']:>7} megaflows: dump {r['dump_ms']} ms wall, {r['dump_cpu_ms']} ms CPU "
              f"({r['us_per_flow']} us/flow, {r['dump_ms'] / 1300:.2f}x OVS's 1.3 s slow-dump threshold){extra}")
        if "incremental" in r:
            inc = r["incremental"]
            print("         flow-mods (until every megaflow they can affect is up to date): "
                  + "; ".join(f"{what} {inc[k]['ms']} ms ({inc[k]['translated']} translated)"
                              for k, what in (("add_none", "add a rule that meets none"), ("del_none", "delete it"),
                                              ("add_1pct", "add one that takes 1%"), ("del_1pct", "delete it"))))
        if "first_packet_idle" in r:
            idle, busy = r["first_packet_idle"], r["first_packet_during_pass"]
            print(f"         first packets (handle()): idle p50 {idle['p50_us']} us p99 {idle['p99_us']} us; during "
                  f"a pass over every megaflow after a change p50 {busy['p50_us']} us p99 {busy['p99_us']} us "
                  f"max {busy['max_us']} us ({busy['p99_us'] / max(idle['p99_us'], 1):.1f}x idle p99); "
                  f"the change reached every megaflow in {r['pass_after_change_s']} s")
    print(f"NORMAL, {mac_row['megaflows']} megaflows: a destination learned reached its megaflows in "
          f"{mac_row['ms']} ms "
          f"({mac_row['translated']} translated, {mac_row['now_forwarded']} now forward to it)")
    print(f"memory at {mem['megaflows']} megaflows: BPF maps {mem['bpf_map_bytes'] / 2**20:.0f} MiB, "
          f"process RSS {mem['rss_bytes'] / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
