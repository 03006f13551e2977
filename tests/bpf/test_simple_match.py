"""The simple match (xdp/simple_match.h): a port-to-port megaflow found from the ingress port and the Ethernet type,
with no parse. Every frame gets the megaflow it would get with the simple match off; only the frames it can judge
without a parse take it; a way that names anything else than a live simple-match megaflow of the port and type is a
fallback, never a wrong hit."""

from __future__ import annotations

import ctypes
import struct

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether

from ctl.datapath import dpif
from ctl.datapath.dpif import DpDrop, DpOutput, DpSetEthDst, DpSetIpv4Dst
from ctl.datapath.dpif_xdp import Datapath
from ctl.datapath.flowkey import VLAN_CFI, build, mask_for, parse
from ctl.datapath.progrun import XDP_DROP, XDP_REDIRECT
from tests.bpf.conftest import CONFIG, Bench
from tests.frames import corpus

MAC = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
ETH_LLDP = 0x88CC


def udp(dport: int = 53) -> bytes:
    return bytes(Ether(**MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=dport) / (b"x" * 18))


def ways(tb: Bench, port: int) -> list[int]:
    """mf_simple[port] as the kernel has it: the ways' flow slots (index + 1; 0 for none)."""
    return list(struct.unpack(f"<{dpif.MF_SIMPLE_WAYS}I", bytes(tb.dp.bpf["mf_simple"][ctypes.c_uint32(port)])))


def flags(tb: Bench, idx: int) -> int:
    return int(tb.dp.bpf["mf_entries"][ctypes.c_uint32(idx)].flags)


def test_a_port_to_port_megaflow_is_found_with_no_parse(tb: Bench) -> None:
    idx = tb.dp.put_flow(parse(udp(), 1), mask_for("in_port", "dl_type", "nw_frag"), [DpOutput(2)])
    assert flags(tb, idx) == dpif.MF_F_SIMPLE and ways(tb, 1) == [idx + 1, 0, 0, 0]
    before, ports = tb.stats(), tb.port_stats()
    for dport in (53, 54, 55):  # any untagged IPv4 frame from port 1 that is not a fragment
        assert tb.run(udp(dport)).verdict == XDP_REDIRECT
    d = tb.stats().delta(before)
    assert (d.megaflow_hits, d.simple_hits, d.emc_hits, d.emc_inserts, d.mask_lookups, d.misses) == (3, 3, 0, 0, 0, 0)
    assert d.emc_skips == 0  # the EMC was not reached at all
    after = tb.port_stats()
    assert (after[1].rx_packets - ports[1].rx_packets, after[2].tx_packets - ports[2].tx_packets) == (3, 3)
    [flow] = tb.dp.dump_flows()
    assert (flow.packets, flow.bytes) == (3, 3 * len(udp())) and flow.used_ns > 0
    assert tb.dp.stats().packets == before.packets + 3  # the partition holds: they are megaflow hits


def test_only_simple_megaflows_are_marked_and_found(tb: Bench) -> None:
    key = parse(udp(), 1)
    not_simple = [
        (mask_for("in_port", "dl_type", "nw_proto"), [DpOutput(2)]),          # one more field consulted
        (mask_for("in_port"), [DpOutput(2)]),                                 # dl_type not consulted
        (mask_for("in_port", "dl_type"), [DpSetIpv4Dst("10.0.0.9"), DpOutput(2)]),  # an action that needs the parse
    ]
    for mask, actions in not_simple:
        tb.reset()
        idx = tb.dp.put_flow(key, mask, actions)
        assert flags(tb, idx) == 0 and ways(tb, 1) == [0, 0, 0, 0]
        before = tb.stats()
        assert tb.run(udp()).verdict == XDP_REDIRECT
        d = tb.stats().delta(before)
        assert (d.megaflow_hits, d.simple_hits) == (1, 0)


def test_replaced_and_deleted_simple_megaflows_take_effect_at_once(tb: Bench) -> None:
    key, mask = parse(udp(), 1), mask_for("in_port", "dl_type")
    tb.dp.put_flow(key, mask, [DpOutput(2)])
    assert tb.run(udp()).verdict == XDP_REDIRECT
    tx = tb.port_stats()[3].tx_packets
    idx = tb.dp.put_flow(key, mask, [DpOutput(3)])  # replaced: a new slot, the old one's generation even
    assert ways(tb, 1) == [idx + 1, 0, 0, 0]
    before = tb.stats()
    assert tb.run(udp()).verdict == XDP_REDIRECT and tb.port_stats()[3].tx_packets == tx + 1
    assert tb.stats().delta(before).simple_hits == 1
    assert tb.dp.del_flow(key, mask)
    assert ways(tb, 1) == [0, 0, 0, 0]
    before = tb.stats()
    assert tb.run(udp()).verdict == XDP_DROP  # a miss, with no upcall socket here
    d = tb.stats().delta(before)
    assert (d.simple_hits, d.megaflow_hits, d.lost) == (0, 0, 1)


def test_a_way_is_checked_against_the_megaflow_it_names(tb: Bench) -> None:
    """mf_simple is a hint: a way naming a dead megaflow, one that is not simple, or another port's or type's is a
    fallback to the parse."""
    simple = tb.dp.put_flow(parse(udp(), 1), mask_for("in_port", "dl_type"), [DpOutput(2)])
    other_port = tb.dp.put_flow(parse(udp(), 2), mask_for("in_port", "dl_type"), [DpOutput(3)])
    arp = tb.dp.put_flow(parse(bytes(Ether(**MAC) / ARP()), 1), mask_for("in_port", "dl_type"), [DpOutput(3)])
    not_simple = tb.dp.put_flow(parse(udp(), 1), mask_for("in_port", "dl_type", "tp_dst"), [DpDrop()])
    dead = tb.dp.put_flow(parse(udp(), 3), mask_for("in_port", "dl_type"), [DpDrop()])
    assert tb.dp.del_flow(parse(udp(), 3), mask_for("in_port", "dl_type"))
    assert all(flags(tb, i) == dpif.MF_F_SIMPLE for i in (simple, other_port, arp, dead))
    table = tb.dp.bpf["mf_simple"]
    for wrong in (other_port, arp, not_simple, dead):
        table[ctypes.c_uint32(1)] = table.Leaf.from_buffer_copy(struct.pack("<4I", wrong + 1, 0, 0, 0))
        before = tb.stats()
        # the port's megaflows hold tp_dst=53 -> drop and IPv4 -> 2: the parse and the caches pick per packet
        assert tb.run(udp()).verdict in (XDP_DROP, XDP_REDIRECT)
        d = tb.stats().delta(before)
        assert (d.simple_hits, d.megaflow_hits + d.emc_hits) == (0, 1), f"way {wrong}"
    # ways that do not match are passed over: the one that does, wherever it is, is taken
    table[ctypes.c_uint32(1)] = table.Leaf.from_buffer_copy(struct.pack("<4I", arp + 1, dead + 1, simple + 1, 0))
    before = tb.stats()
    assert tb.run(udp(99)).verdict == XDP_REDIRECT
    assert tb.stats().delta(before).simple_hits == 1


def test_a_port_holds_four_types_and_a_reopened_datapath_rebuilds_them(tb: Bench) -> None:
    types = [0x0800, 0x0806, ETH_LLDP, 0x8035, 0x9000]
    idxs = [tb.dp.put_flow(build(in_port=1, dl_type=t), mask_for("in_port", "dl_type"), [DpOutput(2)]) for t in types]
    assert ways(tb, 1) == [i + 1 for i in idxs[:4]]  # a fifth type: found by the parse and the caches
    frame = bytes(Ether(**MAC, type=0x9000) / (b"y" * 46))
    before = tb.stats()
    assert tb.run(frame).verdict == XDP_REDIRECT and tb.run(udp()).verdict == XDP_REDIRECT
    d = tb.stats().delta(before)
    assert (d.megaflow_hits + d.emc_hits, d.simple_hits) == (2, 1)
    table = tb.dp.bpf["mf_simple"]
    table[ctypes.c_uint32(1)] = table.Leaf()  # as if a process died before writing them
    again = Datapath(tb.dp.name, CONFIG)
    try:
        rebuilt = [w for w in ways(tb, 1) if w]  # four of the five, in the order the buckets give them back
        assert len(set(rebuilt)) == 4 and set(rebuilt) <= {i + 1 for i in idxs}
    finally:
        again.close()  # no unpin: the first datapath keeps its maps


def test_the_simple_match_changes_no_frames_outcome(tb: Bench) -> None:
    """Every frame of the parser corpus, and tagged and fragmented ones, from a port with simple-match megaflows
    beside others that overlap them: the same megaflow runs (the same verdict, frame and flow counter) with the simple
    match on and off, and exactly the untagged, unfragmented frames of a simple megaflow's type take it."""
    vid5 = build(in_port=1, dl_type=0x0800, vlan_tci=VLAN_CFI | 5)
    flows = [
        (build(in_port=1, dl_type=0x0800), mask_for("in_port", "dl_type", "nw_frag"), [DpOutput(2)]),
        (build(in_port=1, dl_type=0x0806), mask_for("in_port", "dl_type", vlan_tci=VLAN_CFI), [DpOutput(3)]),
        (build(in_port=1, dl_type=ETH_LLDP), mask_for("in_port", "dl_type"), [DpDrop()]),
        (vid5, mask_for("in_port", "dl_type", "vlan_tci"), [DpSetEthDst("02:00:00:00:00:55"), DpOutput(2)]),
        (build(in_port=1, dl_type=0x0800, nw_frag=1), mask_for("in_port", "dl_type", nw_frag=1), [DpOutput(3)]),
        (build(in_port=1, dl_type=0x0800, nw_frag=3), mask_for("in_port", "dl_type", "nw_frag"), [DpDrop()]),
        (build(in_port=1, dl_type=0x86DD), mask_for("in_port", "dl_type", "nw_frag"), [DpOutput(2)]),
    ]
    frames = [f for _name, f in corpus()]
    frames += [bytes(Ether(**MAC) / Dot1Q(vlan=v) / IP() / UDP()) for v in (5, 6)]
    frames += [bytes(Ether(**MAC) / IP(flags="MF") / UDP()), bytes(Ether(**MAC) / IP(frag=5) / UDP()),
               bytes(Ether(**MAC, type=ETH_LLDP) / (b"z" * 40)), bytes(Ether(**MAC) / ARP())]
    outcomes: dict[bool, list[tuple[int, bytes, list[int]]]] = {}
    taken: list[bool] = []
    for simple in (True, False):
        tb.reset()
        tb.dp.set_simple_match(simple)
        which = {tb.dp.put_flow(key, mask, actions): n for n, (key, mask, actions) in enumerate(flows)}
        assert sum(1 for w in ways(tb, 1) if w) == 3  # IPv4, ARP and LLDP; written whether the fast path looks or not
        got = outcomes[simple] = []
        for f in frames:
            seen = tb.dp.flow_stats_all()
            before = tb.stats()
            r = tb.run(f)
            ran = [which[i] for i, st in tb.dp.flow_stats_all().items() if st[0] != seen.get(i, (0, 0, 0))[0]]
            got.append((r.verdict, r.frame, ran))
            if simple:
                taken.append(tb.stats().delta(before).simple_hits == 1)
    for f, on, off in zip(frames, outcomes[True], outcomes[False], strict=True):
        assert on == off, f"{f.hex()}: {on} with the simple match, {off} without"
    expect = [takes_simple_path(f) for f in frames]
    assert taken == expect and sum(expect) > 50


def takes_simple_path(frame: bytes) -> bool:
    """What xdp/simple_match.h judges from the frame alone, for this test's port 1 (IPv4, ARP and LLDP simple)."""
    t = int.from_bytes(frame[12:14], "big")
    if t == 0x0800:
        return len(frame) >= 22 and not int.from_bytes(frame[20:22], "big") & 0x3FFF
    return t in (0x0806, ETH_LLDP)
