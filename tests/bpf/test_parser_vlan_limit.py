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
from ctl.datapath.dpif_xdp import Datapath, DatapathConfig
from ctl.datapath.flowkey import FlowKey, format_key, key_hash, parse
from tests.bpf.conftest import Bench
from tests.conftest import Net, need_root, unique
from tests.frames import corpus


@pytest.fixture(scope="module")
def tb2(module_net: Net) -> Iterator[Bench]:
    need_root()
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    dp = Datapath(unique("xsvl2"), DatapathConfig(max_flows=1024, emc_insert_inv_prob=1, vlan_limit=2))
    try:
        assert flowkey.VLAN_LIMIT == 2
        a, _b = module_net.veth(quiet=True, gro=True)
        yield Bench(dp, {1: dp.add_port(a, 1).ifindex})
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
        n += 1
    assert n > 1500
