"""Datapath actions: encoding, validation, decoding; counters; subtable ranking."""

import pytest

from ctl.datapath import dpif
from ctl.datapath.dpif import (
    ActionError,
    DpDecTtl,
    DpDrop,
    DpFlood,
    DpOutput,
    DpPopVlan,
    DpPushVlan,
    DpSetDscp,
    DpSetEthDst,
    DpSetEthSrc,
    DpSetIpv4Dst,
    DpSetIpv4Src,
    DpSetIpv6Dst,
    DpSetIpv6Src,
    DpSetTpDst,
    DpSetTpSrc,
    DpSetVlan,
    DpStats,
    DpUpcall,
)
from ctl.datapath.flowkey import build, mask_for


def encode(actions, groups=None):  # type: ignore[no-untyped-def]
    groups = {} if groups is None else groups
    return dpif.encode_actions(actions, max_actions=8, max_port=256,
                               group_for=lambda ports: groups.setdefault(ports, len(groups)))


ROUND_TRIP = [
    [DpOutput(2)],
    [DpDrop()],
    [DpFlood()],
    [DpUpcall()],
    [DpSetEthSrc("02:00:00:00:00:aa"), DpSetEthDst("02:00:00:00:00:bb"), DpOutput(1)],
    [DpPushVlan(100, 5), DpOutput(3)],
    [DpPushVlan(7, 0, 0x88A8), DpOutput(3)],
    [DpPopVlan(), DpSetVlan(20, 1), DpOutput(3)],
    [DpSetIpv4Src("192.0.2.1"), DpSetIpv4Dst("192.0.2.2"), DpSetDscp(46), DpDecTtl(), DpOutput(4)],
    [DpSetIpv6Src("2001:db8::1"), DpSetIpv6Dst("2001:db8::2"), DpSetTpSrc(1), DpSetTpDst(65535), DpOutput(5)],
    [DpSetEthDst("02:00:00:00:00:01"), DpOutput(1), DpOutput(2), DpOutput(3)],
]


@pytest.mark.parametrize("actions", ROUND_TRIP, ids=dpif.format_actions)
def test_actions_round_trip(actions: list[dpif.Action]) -> None:
    groups: dict[frozenset[int], int] = {}
    recs = encode(actions, groups)
    assert all(len(r) == dpif.ACTION_SIZE for r in recs)
    back = dpif.decode_actions(recs, lambda g: next(p for p, x in groups.items() if x == g))
    assert back == actions
    masked = bytes(range(104))
    raw = dpif.encode_entry(7, recs, 8, masked)
    assert len(raw) == 8 + 8 * dpif.ACTION_SIZE + 104
    assert dpif.decode_entry(raw) == (7, recs)
    assert dpif.entry_key(raw, 8) == masked


def test_several_outputs_become_one_group() -> None:
    groups: dict[frozenset[int], int] = {}
    recs = encode([DpOutput(1), DpOutput(2), DpOutput(1)], groups)
    assert len(recs) == 1 and groups == {frozenset({1, 2}): 0}


@pytest.mark.parametrize("actions, message", [
    ([DpOutput(1), DpSetEthSrc("02:00:00:00:00:01"), DpOutput(2)], "after an output"),
    ([DpDrop(), DpOutput(1)], "nothing may follow"),
    ([DpOutput(0)], "out of range"),
    ([DpOutput(256)], "out of range"),
    ([DpPushVlan(4096), DpOutput(1)], "VLAN id 4096"),
    ([DpPushVlan(1, 8), DpOutput(1)], "PCP 8"),
    ([DpPushVlan(1, 0, 0x1234), DpOutput(1)], "TPID"),
    ([DpSetDscp(64), DpOutput(1)], "DSCP 64"),
    ([DpSetTpSrc(70000), DpOutput(1)], "L4 port"),
    ([DpSetIpv4Src("10.0.0.300"), DpOutput(1)], "10.0.0.300"),
    ([DpSetEthSrc("zz:00:00:00:00:00"), DpOutput(1)], "bad MAC"),
    ([DpDecTtl()] * 9, "at most 8"),
])
def test_bad_actions_are_refused_with_a_reason(actions: list[dpif.Action], message: str) -> None:
    with pytest.raises(ActionError, match=message):
        encode(actions)


def test_format_actions_like_dpctl() -> None:
    assert dpif.format_actions([DpSetIpv4Dst("10.0.0.9"), DpDecTtl(), DpOutput(2)]) == \
        "set(ipv4(dst=10.0.0.9)),dec_ttl,2"
    assert dpif.format_actions([]) == "drop"


def test_stats_partition_and_delta() -> None:
    s = DpStats.from_counters([5, 7, 2, 1, 20, 6, 3, 9, 4], [0, 4, 0, 0, 0, 0, 0, 1, 0, 0])
    assert s.packets == 15
    assert s.drops["action"] == 4 and s.drops["no_upcall_socket"] == 1
    assert s.avg_subtable_lookups == pytest.approx(20 / 7)
    d = s.delta(DpStats.from_counters([1, 1, 1, 1, 1, 1, 1, 1, 1], [0] * 10))
    assert (d.emc_hits, d.packets, d.emc_skips, d.simple_hits, d.drops["action"]) == (4, 11, 8, 3, 4)


def test_rank_masks_by_recent_hits_ties_keep_order() -> None:
    assert dpif.rank_masks([3, 1, 2, 0], {1: 10, 2: 10, 0: 50}) == [0, 1, 2, 3]
    assert dpif.rank_masks([], {}) == []


def simple(key: dict[str, int], mask: tuple[str, ...], actions: list[object], **partial: int) -> bool:
    m = mask_for(*mask, **partial)
    return dpif.is_simple_match(bytes(build(**key).masked(m)), bytes(m), encode(actions))


@pytest.mark.parametrize(("key", "mask", "actions", "partial", "expect"), [
    ({"in_port": 1, "dl_type": 0x0800}, ("in_port", "dl_type"), [DpOutput(2)], {}, True),
    ({"in_port": 1, "dl_type": 0x0800}, ("in_port", "dl_type", "nw_frag"), [DpFlood()], {}, True),
    ({"in_port": 1, "dl_type": 0x0806}, ("in_port", "dl_type", "vlan_tci"), [DpDrop()], {}, True),
    ({"in_port": 1, "dl_type": 0x0800}, ("in_port", "dl_type"), [DpOutput(2), DpOutput(3)], {}, True),  # a group
    ({"in_port": 1, "dl_type": 0x0800}, ("in_port", "dl_type"), [], {}, True),  # no action: a drop
    ({"in_port": 1, "dl_type": 0x0800}, ("in_port",), [DpOutput(2)], {}, False),  # dl_type not whole
    ({"in_port": 1, "dl_type": 0x0800}, ("dl_type",), [DpOutput(2)], {}, False),  # in_port not whole
    ({"in_port": 1, "dl_type": 0x0800}, ("dl_type",), [DpOutput(2)], {"in_port": 0xFF}, False),  # nor here
    ({"in_port": 1, "dl_type": 0x0800}, ("in_port",), [DpOutput(2)], {"dl_type": 0xFF00}, False),
    ({"in_port": 1, "dl_type": 0x0800}, ("in_port", "dl_type", "nw_proto"), [DpOutput(2)], {}, False),
    ({"in_port": 1, "dl_type": 0x0800}, ("in_port", "dl_type"), [DpOutput(2)], {"dl_src": "ff:00:00:00:00:00"}, False),
    ({"in_port": 1, "dl_type": 0x0800, "vlan_tci": 0x1005}, ("in_port", "dl_type", "vlan_tci"), [DpOutput(2)], {},
     False),  # tagged frames only: the fast path does not read tags
    ({"in_port": 1, "dl_type": 0x0800, "nw_frag": 1}, ("in_port", "dl_type", "nw_frag"), [DpOutput(2)], {}, False),
    ({"in_port": 1, "dl_type": 0x86DD}, ("in_port", "dl_type", "nw_frag"), [DpOutput(2)], {}, False),  # IPv6
    ({"in_port": 1, "dl_type": 0x8100}, ("in_port", "dl_type"), [DpOutput(2)], {}, False),  # a TPID
    ({"in_port": 1, "dl_type": 0x05FF}, ("in_port", "dl_type"), [DpOutput(2)], {}, False),  # 802.3
    ({"in_port": 1, "dl_type": 0x0800}, ("in_port", "dl_type"), [DpSetEthDst("02:00:00:00:00:09"), DpOutput(2)], {},
     False),  # an action that reads what the parse sets
    ({"in_port": 1, "dl_type": 0x0800}, ("in_port", "dl_type"), [DpDecTtl(), DpOutput(2)], {}, False),
    ({"in_port": 1, "dl_type": 0x0800}, ("in_port", "dl_type"), [DpUpcall()], {}, False),  # hashes the whole key
])
def test_which_megaflows_are_simple_match(key: dict[str, int], mask: tuple[str, ...], actions: list[object],
                                          partial: dict[str, int], expect: bool) -> None:
    assert simple(key, mask, actions, **partial) is expect
