"""vlan-limit 2 (``xdpswitch start --vlan-limit 2``): the XDP programs compiled with DP_VLAN_LIMIT 2 and the Python
parser (set by the Datapath that compiled them) read the inner tag into vlan_tci1 and the layers behind it, and
agree on every frame of the corpus; a pop leaves the inner tag for the fast path's next VLAN action."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from ctl.datapath import flowkey
from ctl.datapath.dpif import DpOutput
from ctl.datapath.dpif_xdp import Datapath, DatapathConfig
from ctl.datapath.flowkey import FlowKey, format_key, key_hash, mask_for, parse
from ctl.datapath.progrun import XDP_REDIRECT
from tests.bpf.conftest import Bench
from tests.conftest import Net, need_root, unique
from tests.frames import corpus


@pytest.fixture(scope="module")
def tb2(module_net: Net) -> Iterator[Bench]:
    need_root()
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    # one EMC slot: every key probes the same entry (the short-key test below needs two keys in one slot)
    dp = Datapath(unique("xsvl2"), DatapathConfig(max_flows=1024, emc_insert_inv_prob=1, vlan_limit=2,
                                                  emc_entries=1))
    try:
        assert flowkey.VLAN_LIMIT == 2
        ifindex = {}
        for n in (1, 2, 3):
            a, _b = module_net.veth(quiet=True, gro=True)
            ifindex[n] = dp.add_port(a, n).ifindex
        yield Bench(dp, ifindex)
    finally:
        dp.close(unpin=True)
        flowkey.set_vlan_limit(1)
        os.sched_setaffinity(0, old)


def test_the_inner_tag_and_what_follows_are_parsed(tb2: Bench) -> None:
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1AD(vlan=7, prio=5)
                  / Dot1Q(vlan=100, prio=3) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2))
    tb2.run(frame, 1)
    got = FlowKey.from_bytes(tb2.scratch_key())
    assert (got.vlan_tci, got.vlan_tci1, got.dl_type, got.nw_proto, got.tp_dst) == (0xB007, 0x7064, 0x0800, 17, 2)


def test_xdp_and_python_agree_on_the_corpus(tb2: Bench) -> None:
    n = 0
    for _name, frame in corpus():
        tb2.run(frame, 1)
        got = FlowKey.from_bytes(tb2.scratch_key())
        want = parse(frame, 1)
        assert bytes(got) == bytes(want), f"XDP {format_key(got)}\n   Python {format_key(want)}\n   {frame.hex()}"
        assert tb2.scratch_hash() == key_hash(want)
        tb2.check_short_key(got)
        n += 1
    assert n > 1500


def test_an_inner_tag_keeps_an_ipv4_key_out_of_a_short_entry(tb2: Bench) -> None:
    # an IPv4 key without an inner tag is short: the EMC compares its first words only. One with the same outer tag,
    # addresses and ports and an inner tag agrees with it on all of those words; in the same EMC slot (tb2's EMC has
    # one) neither may take the other's entry
    l2 = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    l34 = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)
    single = bytes(l2 / Dot1Q(vlan=10) / l34)
    double = bytes(l2 / Dot1Q(vlan=10) / Dot1Q(vlan=20) / l34)
    one, two = parse(single, 1), parse(double, 1)
    assert bytes(one)[:40] == bytes(two)[:40] and one.vlan_tci1 == 0 and two.vlan_tci1 != 0
    m = mask_for("in_port", "vlan_tci", "vlan_tci1", "dl_type")
    tb2.dp.put_flow(one, m, [DpOutput(2)])
    tb2.dp.put_flow(two, m, [DpOutput(3)])
    for first, second, port in ((single, double, 3), (double, single, 2)):
        tb2.dp.flush_emc()
        tb2.run(first)   # a megaflow hit: its key goes into the one slot
        before, ports = tb2.stats(), tb2.port_stats()
        assert tb2.run(first).verdict == XDP_REDIRECT   # and hits there
        assert tb2.stats().delta(before).emc_hits == 1
        before = tb2.stats()
        assert tb2.run(second).verdict == XDP_REDIRECT
        d = tb2.stats().delta(before)
        assert (d.emc_hits, d.megaflow_hits) == (0, 1)
        assert tb2.port_stats()[port].tx_packets == ports[port].tx_packets + 1
