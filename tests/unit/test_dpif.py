"""Datapath actions: encoding, validation, decoding; counters; subtable ranking."""

import pytest

from ctl import dpif
from ctl.dpif import (
    ActionError,
    DecTtl,
    DpStats,
    Drop,
    Flood,
    Output,
    PopVlan,
    PushVlan,
    SetDscp,
    SetEthDst,
    SetEthSrc,
    SetIpv4Dst,
    SetIpv4Src,
    SetIpv6Dst,
    SetIpv6Src,
    SetTpDst,
    SetTpSrc,
    SetVlan,
    Upcall,
)


def encode(actions, groups=None):  # type: ignore[no-untyped-def]
    groups = {} if groups is None else groups
    return dpif.encode_actions(actions, max_actions=8, max_port=256,
                               group_for=lambda ports: groups.setdefault(ports, len(groups)))


ROUND_TRIP = [
    [Output(2)],
    [Drop()],
    [Flood()],
    [Upcall()],
    [SetEthSrc("02:00:00:00:00:aa"), SetEthDst("02:00:00:00:00:bb"), Output(1)],
    [PushVlan(100, 5), Output(3)],
    [PushVlan(7, 0, 0x88A8), Output(3)],
    [PopVlan(), SetVlan(20, 1), Output(3)],
    [SetIpv4Src("192.0.2.1"), SetIpv4Dst("192.0.2.2"), SetDscp(46), DecTtl(), Output(4)],
    [SetIpv6Src("2001:db8::1"), SetIpv6Dst("2001:db8::2"), SetTpSrc(1), SetTpDst(65535), Output(5)],
    [SetEthDst("02:00:00:00:00:01"), Output(1), Output(2), Output(3)],
]


@pytest.mark.parametrize("actions", ROUND_TRIP, ids=dpif.format_actions)
def test_actions_round_trip(actions: list[dpif.Action]) -> None:
    groups: dict[frozenset[int], int] = {}
    recs = encode(actions, groups)
    assert all(len(r) == dpif.ACTION_SIZE for r in recs)
    back = dpif.decode_actions(recs, lambda g: next(p for p, x in groups.items() if x == g))
    assert back == actions
    raw = dpif.encode_entry(7, recs, 8)
    assert len(raw) == 8 + 8 * dpif.ACTION_SIZE
    assert dpif.decode_entry(raw) == (7, recs)


def test_several_outputs_become_one_group() -> None:
    groups: dict[frozenset[int], int] = {}
    recs = encode([Output(1), Output(2), Output(1)], groups)
    assert len(recs) == 1 and groups == {frozenset({1, 2}): 0}


@pytest.mark.parametrize("actions, message", [
    ([Output(1), SetEthSrc("02:00:00:00:00:01"), Output(2)], "after an output"),
    ([Drop(), Output(1)], "nothing may follow"),
    ([Output(0)], "out of range"),
    ([Output(256)], "out of range"),
    ([PushVlan(4096), Output(1)], "VLAN id 4096"),
    ([PushVlan(1, 8), Output(1)], "PCP 8"),
    ([PushVlan(1, 0, 0x1234), Output(1)], "TPID"),
    ([SetDscp(64), Output(1)], "DSCP 64"),
    ([SetTpSrc(70000), Output(1)], "L4 port"),
    ([SetIpv4Src("10.0.0.300"), Output(1)], "10.0.0.300"),
    ([SetEthSrc("zz:00:00:00:00:00"), Output(1)], "bad MAC"),
    ([DecTtl()] * 9, "at most 8"),
])
def test_bad_actions_are_refused_with_a_reason(actions: list[dpif.Action], message: str) -> None:
    with pytest.raises(ActionError, match=message):
        encode(actions)


def test_format_actions_like_dpctl() -> None:
    assert dpif.format_actions([SetIpv4Dst("10.0.0.9"), DecTtl(), Output(2)]) == \
        "set(ipv4(dst=10.0.0.9)),dec_ttl,2"
    assert dpif.format_actions([]) == "drop"


def test_stats_partition_and_delta() -> None:
    s = DpStats.from_counters([5, 7, 2, 1, 20, 6, 3], [0, 4, 0, 0, 0, 0, 0, 1, 0, 0])
    assert s.packets == 15
    assert s.drops["action"] == 4 and s.drops["no_upcall_socket"] == 1
    assert s.avg_subtable_lookups == pytest.approx(20 / 7)
    d = s.delta(DpStats.from_counters([1, 1, 1, 1, 1, 1, 1], [0] * 10))
    assert (d.emc_hits, d.packets, d.drops["action"]) == (4, 11, 4)


def test_rank_masks_by_recent_hits_ties_keep_order() -> None:
    assert dpif.rank_masks([3, 1, 2, 0], {1: 10, 2: 10, 0: 50}) == [0, 1, 2, 3]
    assert dpif.rank_masks([], {}) == []
