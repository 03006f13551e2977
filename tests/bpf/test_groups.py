"""Select groups in XDP: the fast path picks the bucket per packet, by the same hash and thresholds as user space
(``DpSelect.pick(select_hash(key))``), runs only that bucket's actions, and counts it in the bucket's slot."""

from __future__ import annotations

import random

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from ctl.datapath.dpif import DpOutput, DpSelect, DpSetEthDst
from ctl.datapath.flowkey import mask_for, parse, select_hash
from ctl.datapath.progrun import XDP_REDIRECT
from ctl.pipeline.groups import parse_group
from ctl.pipeline.ofmatch import flow_of
from ctl.pipeline.openflow_tables import OpenFlowTables, parse_flow
from ctl.pipeline.xlate import translate
from tests.bpf.conftest import Bench


def _frames(n: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            l3 = IP(src=f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.1", dst="10.9.9.9")
            l4 = TCP(sport=rnd.randrange(1, 65536), dport=80)
            out.append(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / l3 / l4))
        elif kind == 1:
            l6 = IPv6(src=f"2001:db8::{rnd.randrange(1, 65536):x}", dst="2001:db8::9")
            out.append(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / l6 / UDP(sport=5, dport=6)))
        else:
            mac = ":".join(f"{rnd.randrange(256):02x}" for _ in range(5))
            out.append(bytes(Ether(src="02:" + mac, dst="ff:ff:ff:ff:ff:ff")
                             / ARP(psrc=f"10.0.{rnd.randrange(256)}.1", pdst="10.0.0.9")))
    return out


def _select_actions(tables: OpenFlowTables, frame: bytes) -> tuple[list, DpSelect]:
    tr = translate(tables, flow_of(parse(frame, 1)), ports={1, 2, 3})
    assert not tr.slow_path, tr.slow_path
    sel = tr.actions[-1]
    assert isinstance(sel, DpSelect)
    return tr.actions, sel


def test_select_picks_per_packet_as_user_space_does_and_counts_each_bucket(tb: Bench) -> None:
    t = OpenFlowTables()
    g = t.add_group(parse_group("group_id=7,type=select,bucket=weight:1,actions=mod_dl_dst:02:00:00:00:00:aa,"
                                "output:2,bucket=weight:0,actions=output:2,bucket=weight:2,actions=output:3"))
    t.add(parse_flow("in_port=1,actions=group:7"))
    tb.dp.zero_buckets(g.stats_base, 5)
    frames = _frames(300, 1)
    actions, sel = _select_actions(t, frames[0])
    tb.dp.put_flow(parse(frames[0], 1), mask_for("in_port"), actions)   # one megaflow for every packet

    want = {0: 0, 1: 0, 2: 0}
    for fr in frames:
        before = tb.port_stats()
        r = tb.run(fr)
        assert r.verdict == XDP_REDIRECT
        n, _w, bacts = sel.pick(select_hash(parse(fr, 1)))
        want[n] += 1
        ports = tb.port_stats()
        sent = [p for p in ports if ports[p].tx_packets != before[p].tx_packets]
        out = next(a.port for a in bacts if isinstance(a, DpOutput))
        assert sent == [out]
        if any(isinstance(a, DpSetEthDst) for a in bacts):
            assert r.frame[:6] == bytes.fromhex("0200000000aa")
        else:
            assert r.frame == fr

    got = tb.dp.bucket_stats(g.stats_base, 3)
    assert [p for p, _ in got] == [want[0], want[1], want[2]]
    assert got[1] == (0, 0)                       # weight 0: never picked
    assert 70 <= want[0] <= 130 and 170 <= want[2] <= 230   # 1:2 of 300, with room for the hash's luck
    assert sum(n for _, n in got) == sum(len(f) for f in frames)


def test_every_packet_of_a_connection_takes_one_bucket_whatever_its_tcp_flags(tb: Bench) -> None:
    t = OpenFlowTables()
    g = t.add_group(parse_group("group_id=1,type=select,bucket=output:2,bucket=output:3"))
    t.add(parse_flow("in_port=1,actions=group:1"))
    tb.dp.zero_buckets(g.stats_base, 5)
    base = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst="10.0.0.2")
    syn = bytes(base / TCP(sport=1234, dport=80, flags="S"))
    actions, _sel = _select_actions(t, syn)
    tb.dp.put_flow(parse(syn, 1), mask_for("in_port"), actions)
    outs = set()
    for flags in ("S", "A", "PA", "FA", "R"):
        before = tb.port_stats()
        tb.run(bytes(base / TCP(sport=1234, dport=80, flags=flags)))
        ports = tb.port_stats()
        outs |= {p for p in ports if ports[p].tx_packets != before[p].tx_packets}
    assert len(outs) == 1


def _metered(tb: Bench, meter: str, frame: bytes) -> tuple[list, object]:
    from ctl.pipeline.meters import parse_meter

    t = OpenFlowTables()
    m = t.add_meter(parse_meter(meter))
    t.add(parse_flow("in_port=1,actions=meter:1,output:2"))
    tb.dp.set_meter(m.slot, m.pktps, m.buckets())
    tr = translate(t, flow_of(parse(frame, 1)), ports={1, 2, 3})
    assert not tr.slow_path and str(tr.actions[0]) == "meter(1)"
    tb.dp.put_flow(parse(frame, 1), mask_for("in_port"), tr.actions)
    return tr.actions, m


def test_a_meter_drops_what_exceeds_its_bucket_and_counts_it(tb: Bench) -> None:
    """A 1 packet/s meter with a 10-packet burst, 200 packets well within a second (however loaded the machine):
    the bucket's 10 (and at most one the elapsed time refills) pass, the rest are dropped as meter drops, and
    every counter agrees."""
    fr = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2))
    _acts, m = _metered(tb, "meter=1,pktps,burst,bands=type=drop,rate=1,burst_size=10", fr)
    before = tb.stats()
    passed = sum(tb.run(fr).verdict == XDP_REDIRECT for _ in range(200))
    delta = tb.stats().delta(before)
    assert 10 <= passed <= 11, passed
    assert delta.drops.get("meter") == 200 - passed
    st = tb.dp.meter_stats(m.slot)   # type: ignore[attr-defined]
    assert st[0] == (200, 200 * len(fr)) and st[1][0] == 200 - passed


def test_a_dscp_remark_band_raises_the_drop_precedence_of_what_exceeds(tb: Bench) -> None:
    fr = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", tos=18 << 2) / UDP(sport=1, dport=2))
    _metered(tb, "meter=1,pktps,burst,bands=type=dscp_remark,rate=1,burst_size=5,prec_level=1", fr)
    tos = [IP(tb.run(fr).frame[14:]).tos >> 2 for _ in range(20)]
    assert tos[:5] == [18] * 5 and set(tos[6:]) == {20}      # AF21 -> AF22, checksum fixed by scapy's parse below
    out = IP(tb.run(fr).frame[14:])
    assert out.chksum == IP(bytes(IP(src="10.0.0.1", dst="10.0.0.2", tos=20 << 2) / UDP(sport=1, dport=2))).chksum


def test_upcalls_over_a_ports_limit_are_dropped_in_xdp_and_counted(tb: Bench) -> None:
    """Port 1 may send 1 upcall/s (a bucket of 10): of 50 misses well within a second 10 (or 11) reach the upcall
    path, the rest are dropped as upcall_limit; port 2 has no limit; every one is counted lost."""
    tb.dp.set_upcall_limit(1, 1, 10)
    try:
        frames = [bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=1000 + i))
                  for i in range(50)]
        before = tb.stats()
        for fr in frames:
            tb.run(fr, in_port=1)
        d = tb.stats().delta(before)
        limited = d.drops.get("upcall_limit", 0)
        assert 39 <= limited <= 40 and limited + d.drops.get("no_upcall_socket", 0) == 50, d.drops
        assert d.lost == 50 and d.misses == 0
        before = tb.stats()
        for fr in frames:
            tb.run(fr, in_port=2)
        d = tb.stats().delta(before)
        assert d.drops.get("upcall_limit", 0) == 0 and d.lost == 50
    finally:
        tb.dp.set_upcall_limit(1, 0, 0)
