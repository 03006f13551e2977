"""OpenFlow 1.3 semantics on real tables: flow-mod commands, filters and flags, roles, and refusals that
leave the tables untouched."""

from __future__ import annotations

import re
import struct

import pytest

from ctl.openflow import codec as oc
from ctl.openflow.codec import ET, MP, OfError, T
from ctl.openflow.ofproto import ROLE_EQUAL, ROLE_MASTER, ROLE_SLAVE, ConnState, OfProto
from ctl.pipeline import ofactions as of
from ctl.pipeline.ofmatch import parse_match
from ctl.pipeline.openflow_tables import CHECK_OVERLAP, RESET_COUNTS, SEND_FLOW_REM
from tests.unit.ofhelpers import FakeSwitch, flow_mod, flow_stats_request, msg, multipart, packet_out


class Rig:
    def __init__(self) -> None:
        self.sw = FakeSwitch()
        self.sent: list[tuple[str, int, bytes]] = []
        self.p = OfProto(self.sw, lambda k, r, m: self.sent.append((k, r, m)))
        self.conn = ConnState()
        self.p.conns.append(self.conn)

    def do(self, raw: bytes, conn: ConnState | None = None) -> list[bytes]:
        return self.p.handle(conn or self.conn, oc.decode(raw))

    def rules(self) -> list[str]:
        return [r.to_text() for r in self.sw.tables.rules()]


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_add_replace_keeps_counters_unless_reset_counts(rig: Rig) -> None:
    m = parse_match("ip")
    rig.do(flow_mod(m, [of.Output(1)]))
    r = rig.sw.tables.rules()[0]
    r.credit(5, 500, 0.0)
    rig.do(flow_mod(m, [of.Output(2)]))
    r2 = rig.sw.tables.rules()[0]
    assert r2 is not r and r2.n_packets == 5 and r2.actions == [of.Output(2)]
    rig.do(flow_mod(m, [of.Output(3)], flags=RESET_COUNTS))
    assert rig.sw.tables.rules()[0].n_packets == 0


def test_check_overlap_refuses_and_changes_nothing(rig: Rig) -> None:
    rig.do(flow_mod(parse_match("ip,nw_dst=10.0.0.0/8"), [of.Output(1)], priority=5))
    version = rig.sw.tables.version
    with pytest.raises(OfError) as ei:
        rig.do(flow_mod(parse_match("tcp"), [of.Output(2)], priority=5, flags=CHECK_OVERLAP))
    assert (ei.value.type, ei.value.code) == (ET.FLOW_MOD_FAILED, oc.FMFC_OVERLAP)
    assert rig.sw.tables.version == version and len(rig.sw.tables) == 1
    # a different priority, or a disjoint match, does not overlap
    rig.do(flow_mod(parse_match("tcp"), [of.Output(2)], priority=6, flags=CHECK_OVERLAP))
    rig.do(flow_mod(parse_match("ip,nw_dst=11.0.0.0/8"), [of.Output(2)], priority=5, flags=CHECK_OVERLAP))
    assert len(rig.sw.tables) == 3


def test_modify_loose_and_strict(rig: Rig) -> None:
    rig.do(flow_mod(parse_match("tcp,tp_dst=80"), [of.Output(1)], priority=10, cookie=1))
    rig.do(flow_mod(parse_match("tcp,tp_dst=22"), [of.Output(1)], priority=20, cookie=2))
    rig.do(flow_mod(parse_match("tcp"), [of.Output(3)], command=1, cookie=2, cookie_mask=0xFF))
    assert {r.cookie: r.actions for r in rig.sw.tables.rules()} == {1: [of.Output(1)], 2: [of.Output(3)]}
    rig.do(flow_mod(parse_match("tcp"), [of.Output(2)], command=2, priority=10))        # strict: no such rule
    assert {r.cookie: r.actions for r in rig.sw.tables.rules()} == {1: [of.Output(1)], 2: [of.Output(3)]}
    rig.do(flow_mod(parse_match("tcp,tp_dst=80"), [of.Output(2)], command=2, priority=10))
    assert {r.cookie: r.actions for r in rig.sw.tables.rules()} == {1: [of.Output(2)], 2: [of.Output(3)]}


def test_delete_filters_and_flow_removed(rig: Rig) -> None:
    rig.do(flow_mod(parse_match("in_port=1"), [of.Output(2)], priority=1, flags=SEND_FLOW_REM, cookie=7))
    rig.do(flow_mod(parse_match("in_port=2"), [of.Output(3)], priority=1, table=1))
    rig.do(flow_mod(parse_match("in_port=3"), [of.Controller()], priority=1))
    rig.do(flow_mod(None, [], command=3, table=oc.OFPTT_ALL, out_port=oc.OFPP_CONTROLLER))
    assert len(rig.sw.tables) == 2
    rig.do(flow_mod(parse_match("in_port=1"), [], command=4, priority=2, table=oc.OFPTT_ALL))  # strict: priority 2
    assert len(rig.sw.tables) == 2
    rig.do(flow_mod(None, [], command=3, table=oc.OFPTT_ALL, out_port=2))
    assert [r.table for r in rig.sw.tables.rules()] == [1]
    [(kind, reason, raw)] = rig.sent
    assert (kind, reason) == ("flow_removed", 2)
    assert raw[1] == T.FLOW_REMOVED and struct.unpack_from("!Q", raw, 8)[0] == 7


@pytest.mark.parametrize("raw, etype, code", [
    (flow_mod(None, [of.Output(1)], table=oc.OFPTT_ALL), ET.FLOW_MOD_FAILED, oc.FMFC_BAD_TABLE_ID),
    (flow_mod(None, [of.Output(1)], command=9), ET.FLOW_MOD_FAILED, oc.FMFC_BAD_COMMAND),
    (flow_mod(None, [of.Output(1)], flags=0x100), ET.FLOW_MOD_FAILED, oc.FMFC_BAD_FLAGS),
    (flow_mod(None, [of.Output(1)], buffer_id=5), ET.BAD_REQUEST, oc.BRC_BUFFER_UNKNOWN),
    (flow_mod(None, [of.GotoTable(2)], table=3), ET.BAD_INSTRUCTION, oc.BIC_BAD_TABLE_ID),
    (packet_out(b"\2" * 60, [of.Output(1)], in_port=77), ET.BAD_REQUEST, oc.BRC_BAD_PORT),
    (packet_out(b"\2" * 60, [of.Output(1)], buffer_id=3), ET.BAD_REQUEST, oc.BRC_BUFFER_UNKNOWN),
    (packet_out(b"\2" * 6, [of.Output(1)]), ET.BAD_REQUEST, oc.BRC_BAD_PACKET),
    (multipart(MP.PORT_STATS, struct.pack("!I4x", 99)), ET.BAD_REQUEST, oc.BRC_BAD_PORT),
])
def test_refusals(rig: Rig, raw: bytes, etype: int, code: int) -> None:
    version = rig.sw.tables.version
    with pytest.raises(OfError) as ei:
        rig.do(raw)
    assert (ei.value.type, ei.value.code) == (etype, code)
    assert rig.sw.tables.version == version and not rig.sw.packet_outs


def test_packet_out_reaches_the_switch(rig: Rig) -> None:
    rig.do(packet_out(b"\2" * 60, [of.Flood()], in_port=2))
    assert rig.sw.packet_outs == [(2, [of.Flood()], b"\2" * 60)]


def test_flow_and_aggregate_stats(rig: Rig) -> None:
    rig.do(flow_mod(parse_match("tcp"), [of.Output(1)], priority=3, cookie=0x10))
    rig.do(flow_mod(parse_match("udp"), [of.Output(2)], priority=3, cookie=0x20))
    for r in rig.sw.tables.rules():
        r.credit(2, 200, 0.0)
    [reply] = rig.do(flow_stats_request(cookie=0x10, cookie_mask=0xF0))
    assert reply[1] == T.MULTIPART_REPLY and struct.unpack_from("!H", reply, 8)[0] == MP.FLOW
    entry_len = struct.unpack_from("!H", reply, 16)[0]
    assert len(reply) == 16 + entry_len                        # one rule: the cookie filter picked it alone
    assert struct.unpack_from("!Q", reply, 16 + 24)[0] == 0x10
    [agg] = rig.do(flow_stats_request(mtype=MP.AGGREGATE, out_port=2))
    assert struct.unpack_from("!QQI", agg, 16) == (2, 200, 1)


def test_roles_master_slave_and_stale_generation(rig: Rig) -> None:
    other = ConnState()
    rig.p.conns.append(other)
    rig.do(msg(T.ROLE_REQUEST, struct.pack("!I4xQ", ROLE_MASTER, 5)), other)
    assert other.role == ROLE_MASTER
    rig.do(msg(T.ROLE_REQUEST, struct.pack("!I4xQ", ROLE_MASTER, 6)))
    assert rig.conn.role == ROLE_MASTER and other.role == ROLE_SLAVE
    with pytest.raises(OfError) as ei:
        rig.do(flow_mod(None, [of.Output(1)]), other)
    assert (ei.value.type, ei.value.code) == (ET.BAD_REQUEST, oc.BRC_IS_SLAVE)
    with pytest.raises(OfError) as ei:
        rig.do(msg(T.ROLE_REQUEST, struct.pack("!I4xQ", ROLE_MASTER, 4)), other)
    assert (ei.value.type, ei.value.code) == (ET.ROLE_REQUEST_FAILED, oc.RRFC_STALE)
    # a slave gets no packet-ins or flow-removeds by default, but port-status
    assert not other.wants("packet_in", 0) and other.wants("port_status", 2)
    assert ConnState(role=ROLE_EQUAL).wants("packet_in", 1)


def test_async_config_and_switch_config(rig: Rig) -> None:
    rig.do(msg(T.SET_ASYNC, struct.pack("!6I", 0b1, 0, 0b100, 0, 0, 0)))
    assert rig.conn.wants("packet_in", 0) and not rig.conn.wants("packet_in", 1)
    [r] = rig.do(msg(T.GET_ASYNC_REQUEST))
    assert struct.unpack_from("!6I", r, 8) == (1, 0, 4, 0, 0, 0)
    rig.do(msg(T.SET_CONFIG, struct.pack("!HH", 0, 256)))
    [c] = rig.do(msg(T.GET_CONFIG_REQUEST))
    assert struct.unpack_from("!HH", c, 8) == (0, 256)


def test_flow_stats_echo_the_output_max_len_the_flow_mod_gave(rig: Rig) -> None:
    """As OVS: the max_len of an output to an ordinary port means nothing, but FLOW stats give back what the
    FLOW_MOD said (os-ken's switch test tool compares it before it sends a packet)."""
    rig.do(flow_mod(parse_match("tcp"), [of.Output(1, max_len=0xFFE5)], priority=3))
    rig.do(flow_mod(parse_match("udp"), [of.Output(2)], priority=3))
    [reply] = rig.do(flow_stats_request())
    outputs = re.findall(rb"\x00\x00\x00\x10(\x00\x00\x00[\x01\x02])(..)\x00{6}", reply, re.S)
    assert sorted((struct.unpack("!I", p)[0], struct.unpack("!H", m)[0]) for p, m in outputs) == [(1, 0xFFE5), (2, 0)]
    assert rig.rules() == ["table=0,priority=3,tcp,actions=output:1", "table=0,priority=3,udp,actions=output:2"]
