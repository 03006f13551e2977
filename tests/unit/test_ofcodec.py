"""The OpenFlow 1.3 codec: what goes in comes out, and anything malformed is an OfError with the right type
and code, never another exception (hypothesis fuzzes every decoder entry)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyof.v0x04.common.utils import unpack_message

from ctl.openflow import codec as oc
from ctl.openflow.codec import ET, MP, OfError, T
from ctl.pipeline import ofactions as of
from ctl.pipeline.ofmatch import parse_match
from ctl.pipeline.openflow_tables import parse_flow
from tests.unit.ofhelpers import flow_mod, flow_stats_request, msg, multipart, packet_out

FLOWS = [
    "priority=100,in_port=1,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:02,actions=output:2",
    "priority=5,tcp,nw_dst=10.0.0.0/24,tp_dst=80,actions=mod_dl_dst:02:00:00:00:00:09,dec_ttl,output:3",
    "priority=6,udp6,ipv6_dst=fd00::/64,udp_src=53,actions=set_field:fd00::9->ipv6_dst,output:1",
    "priority=7,dl_vlan=10,actions=strip_vlan,push_vlan:0x8100,set_field:4106->vlan_vid,output:1",
    "priority=8,arp,arp_tpa=10.0.0.1,arp_op=1,actions=FLOOD",
    "priority=9,icmp,icmp_type=8,actions=CONTROLLER:128,NORMAL",
    "priority=10,ip,nw_tos=32,actions=ALL,IN_PORT",
    "priority=11,vlan_tci=0x0000/0x1000,actions=resubmit(,3),goto_table:4",
    "priority=12,tcp,nw_ttl=3,tcp_flags=+syn-ack,actions=output:1",
]


def _meaning(a: of.OfAction) -> object:
    """What an action does (mod_dl_dst and set_field->eth_dst are one action spelled two ways)."""
    return (a.field, a.value, a.mask) if isinstance(a, of.SetField) else a


@pytest.mark.parametrize("text", FLOWS)
def test_flow_mod_round_trip(text: str) -> None:
    spec = parse_flow(text)
    raw = flow_mod(spec.match, spec.actions, priority=spec.priority, cookie=0x55, idle=3, hard=9, flags=1)
    m = oc.decode(raw)
    assert isinstance(m, oc.FlowMod)
    assert m.match == spec.match
    assert [_meaning(a) for a in m.actions] == [_meaning(a) for a in spec.actions]
    assert (m.priority, m.cookie, m.idle_timeout, m.hard_timeout, m.flags) == (spec.priority, 0x55, 3, 9, 1)


def test_pyof_reads_our_replies() -> None:
    """The library decodes what we encode (a second opinion on every reply it understands)."""
    pin = oc.packet_in(oc.OFP_NO_BUFFER, 60, 0, 2, 7, 3, b"\x01" * 60)
    p = unpack_message(pin)
    assert int(p.reason) == 0 and int(p.table_id) == 2 and int(p.cookie) == 7 and bytes(p.data.value) == b"\x01" * 60
    assert [(int(f.oxm_field), bytes(f.oxm_value)) for f in p.match.oxm_match_fields][0] == (0, b"\0\0\0\3")
    fr = unpack_message(oc.flow_removed(9, 100, 2, 0, 1.5, 0, 0, 4, 400, parse_match("tcp,tp_dst=80")))
    assert (int(fr.cookie), int(fr.reason), int(fr.packet_count), int(fr.duration_sec)) == (9, 2, 4, 1)
    ps = unpack_message(oc.port_status(2, oc.PortDesc(4, b"\2\0\0\0\0\4", "veth4", 0, 1)))
    assert int(ps.reason) == 2 and int(ps.desc.port_no) == 4 and ps.desc.pack()[36:40] == b"\0\0\0\1"
    fs = unpack_message(oc.flow_stats_reply(5, [oc.FlowStat(0, 1.0, 10, 0, 0, 0, 0, 3, 300,
                                                            parse_match("ip"), [of.Output(2)])])[0])
    assert int(fs.multipart_type) == MP.FLOW


def test_big_multipart_replies_are_split_with_reply_more() -> None:
    stats = [oc.FlowStat(0, 0.0, i, 0, 0, 0, 0, 0, 0, parse_match(f"ip,nw_dst=10.0.{i // 256}.{i % 256}"),
                         [of.Output(1)]) for i in range(2000)]
    msgs = oc.flow_stats_reply(1, stats)
    assert len(msgs) > 1
    for i, m in enumerate(msgs):
        assert len(m) <= 0xFFFF
        more = struct.unpack_from("!H", m, 10)[0]
        assert more == (1 if i < len(msgs) - 1 else 0)
    tf = oc.table_features_reply(1, of.N_TABLES, 1000)
    assert len(tf) > 1 and all(len(m) <= 0xFFFF for m in tf)


@pytest.mark.parametrize("raw, etype, code", [
    (msg(T.FEATURES_REQUEST, version=1), ET.BAD_REQUEST, oc.BRC_BAD_VERSION),
    (msg(99), ET.BAD_REQUEST, oc.BRC_BAD_TYPE),
    (msg(T.TABLE_MOD, b"\0" * 8), ET.BAD_REQUEST, oc.BRC_BAD_TYPE),
    (msg(T.GROUP_MOD, b"\0" * 4), ET.BAD_REQUEST, oc.BRC_BAD_LEN),
    (msg(T.METER_MOD, b"\0" * 8 + struct.pack("!HHII", 1, 12, 5, 0)), ET.METER_MOD_FAILED, 8),
    (msg(T.PACKET_IN, b"\0" * 24), ET.BAD_REQUEST, oc.BRC_BAD_TYPE),
    (msg(T.FEATURES_REQUEST, b"x"), ET.BAD_REQUEST, oc.BRC_BAD_LEN),
    (msg(T.FLOW_MOD, b"\0" * 10), ET.BAD_REQUEST, oc.BRC_BAD_LEN),
    (multipart(MP.GROUP), ET.BAD_REQUEST, oc.BRC_BAD_LEN),
    (multipart(MP.QUEUE), ET.BAD_REQUEST, oc.BRC_BAD_MULTIPART),
    (multipart(MP.PORT_STATS, b"\0" * 3), ET.BAD_REQUEST, oc.BRC_BAD_LEN),
    (msg(T.SET_CONFIG, b"\0" * 2), ET.BAD_REQUEST, oc.BRC_BAD_LEN),
])
def test_malformed_messages_get_the_right_error(raw: bytes, etype: int, code: int) -> None:
    with pytest.raises(OfError) as ei:
        oc.decode(raw)
    assert (ei.value.type, ei.value.code) == (etype, code)


def _oxm(fld: int, value: bytes, cls: int = 0x8000, mask: bytes = b"") -> bytes:
    return struct.pack("!HBB", cls, fld << 1 | bool(mask), len(value) + len(mask)) + value + mask


def _fm_with_oxms(oxms: bytes, insts: bytes = b"") -> bytes:
    n = 4 + len(oxms)
    match = struct.pack("!HH", 1, n) + oxms + bytes((-n) % 8)
    body = struct.pack("!QQBBHHHIIIH2x", 0, 0, 0, 0, 0, 0, 1, oc.OFP_NO_BUFFER, oc.OFPP_ANY, oc.OFPG_ANY, 0)
    return msg(T.FLOW_MOD, body + match + insts)


@pytest.mark.parametrize("oxms, insts, etype, code", [
    (_oxm(13, b"\0\x50"), b"", ET.BAD_MATCH, oc.BMC_BAD_PREREQ),                         # tcp_dst without tcp
    (_oxm(5, b"\x08\0") + _oxm(5, b"\x08\0"), b"", ET.BAD_MATCH, oc.BMC_DUP_FIELD),
    (_oxm(37, b"\0" * 3), b"", ET.BAD_MATCH, oc.BMC_BAD_FIELD),                           # pbb_isid
    (_oxm(42, b"\x00\x00\x23\x20\x00\x02", cls=0xFFFF), b"", ET.BAD_MATCH, oc.BMC_BAD_FIELD),  # not ONF's
    (_oxm(5, b"\x08"), b"", ET.BAD_MATCH, oc.BMC_BAD_LEN),
    (_oxm(5, b"\x08\0", mask=b"\xff\0"), b"", ET.BAD_MATCH, oc.BMC_BAD_MASK),
    (_oxm(3, b"\xff" * 6, mask=b"\0" * 6), b"", ET.BAD_MATCH, oc.BMC_BAD_VALUE),
    (b"", struct.pack("!HH4x", 6, 8), ET.METER_MOD_FAILED, oc.MMFC_INVALID_METER),        # meter 0
    (b"", struct.pack("!HH4x", 77, 8), ET.BAD_INSTRUCTION, oc.BIC_UNKNOWN_INST),
    (b"", struct.pack("!HH4x", 4, 7), ET.BAD_INSTRUCTION, oc.BIC_BAD_LEN),
    (b"", struct.pack("!HH4x", 4, 16) + struct.pack("!HHI", 22, 8, 0xFFFFFFFC), ET.BAD_ACTION, oc.BAC_BAD_OUT_GROUP),
    (b"", struct.pack("!HH4x", 4, 16) + struct.pack("!HH4x", 99, 8), ET.BAD_ACTION, oc.BAC_BAD_TYPE),
    (b"", struct.pack("!HH4x", 4, 24) + struct.pack("!HHIH6x", 0, 16, 0xFF00, 0), ET.BAD_ACTION,
     oc.BAC_BAD_OUT_PORT),
    (b"", struct.pack("!HH4x", 4, 24) + struct.pack("!HHI8x", 0xFFFF, 16, 0x1234), ET.BAD_ACTION,
     oc.BAC_BAD_EXPERIMENTER),
])
def test_bad_matches_and_instructions(oxms: bytes, insts: bytes, etype: int, code: int) -> None:
    with pytest.raises(OfError) as ei:
        oc.decode(_fm_with_oxms(oxms, insts))
    assert (ei.value.type, ei.value.code) == (etype, code), ei.value.msg


def test_hello_version_bitmap() -> None:
    h = oc.decode(msg(T.HELLO, struct.pack("!HHI", 1, 8, 0b10010), version=5))
    assert isinstance(h, oc.Hello) and h.versions == {1, 4} and h.version == 5
    assert oc.decode(oc.hello()) == oc.Hello(0, T.HELLO, 4, {4})


def test_framer_cuts_a_stream_and_refuses_a_short_length() -> None:
    f = oc.Framer()
    a, b = msg(T.BARRIER_REQUEST, xid=1), msg(T.ECHO_REQUEST, b"hi", xid=2)
    stream = a + b
    assert f.feed(stream[:5]) == [] and f.feed(stream[5:12]) == [a] and f.feed(stream[12:]) == [b]
    with pytest.raises(OfError) as ei:
        f.feed(b"\x04\x00\x00\x03\0\0\0\0")
    assert ei.value.code == oc.BRC_BAD_LEN


VALID = [flow_mod(parse_flow(t).match, parse_flow(t).actions) for t in FLOWS] + [
    packet_out(b"\x02" * 60, [of.Output(2), of.Flood()]), flow_stats_request(parse_match("ip")),
    multipart(MP.PORT_STATS, struct.pack("!I4x", oc.OFPP_ANY)),
    msg(T.SET_ASYNC, b"\0" * 24), msg(T.ROLE_REQUEST, b"\0" * 16), msg(T.SET_CONFIG, b"\0\0\0\x80"),
]


def _decode_or_oferror(raw: bytes) -> None:
    try:
        oc.decode(raw)
    except OfError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       st.integers(0, 420))
def test_fuzz_mutated_messages_decode_or_refuse(which: int, flips: list[tuple[int, int]], cut: int) -> None:
    raw = bytearray(VALID[which])
    for pos, val in flips:
        if pos < len(raw):
            raw[pos] = val
    raw = raw[: max(8, min(cut, len(raw)))]
    raw[2:4] = len(raw).to_bytes(2, "big")  # a consistent header, so the body itself is what is tested
    _decode_or_oferror(bytes(raw))


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 40), st.binary(max_size=300))
def test_fuzz_random_bodies(mtype: int, body: bytes) -> None:
    _decode_or_oferror(msg(mtype, body))
