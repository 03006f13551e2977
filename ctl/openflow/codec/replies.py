"""Messages the switch sends: hello, errors, replies, PACKET_IN (packed by hand: it is per slow-path
packet), FLOW_REMOVED, PORT_STATUS, multipart replies split at 64 KiB, TABLE_FEATURES.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyof.v0x04.asynchronous.flow_removed import FlowRemoved as PyFlowRemoved
from pyof.v0x04.asynchronous.port_status import PortStatus as PyPortStatus
from pyof.v0x04.common.flow_match import Match as PyMatch
from pyof.v0x04.common.port import Port as PyPort
from pyof.v0x04.controller2switch.barrier_reply import BarrierReply
from pyof.v0x04.controller2switch.common import ControllerRole
from pyof.v0x04.controller2switch.features_reply import FeaturesReply
from pyof.v0x04.controller2switch.get_async_reply import GetAsyncReply
from pyof.v0x04.controller2switch.get_config_reply import GetConfigReply
from pyof.v0x04.controller2switch.multipart_reply import AggregateStatsReply, Desc, FlowStats, PortStats, TableStats
from pyof.v0x04.controller2switch.role_reply import RoleReply
from pyof.v0x04.symmetric.echo_reply import EchoReply
from pyof.v0x04.symmetric.echo_request import EchoRequest

from ctl.datapath.flowkey import mac_str
from ctl.openflow.codec.actions import SET_FIELD_OXM, encode_actions, encode_instructions
from ctl.openflow.codec.framing import HEADER, MAX_MSG, MP, OFP_VERSION, T
from ctl.openflow.codec.oxm import MASKABLE, OXM_FIELDS, _tlv, encode_match
from ctl.pipeline import ofactions as of
from ctl.pipeline.groups import Group
from ctl.pipeline.meters import Meter
from ctl.pipeline.ofmatch import Match

# --- messages the switch sends --------------------------------------------------------------------------


def _msg(mtype: int, xid: int, body: bytes = b"") -> bytes:
    return HEADER.pack(OFP_VERSION, mtype, 8 + len(body), xid) + body


def hello(xid: int = 0) -> bytes:
    """HELLO with a version bitmap naming 1.3 only."""
    return _msg(T.HELLO, xid, struct.pack("!HHI", 1, 8, 1 << OFP_VERSION))


def error(xid: int, etype: int, code: int, data: bytes) -> bytes:
    """OFPT_ERROR carrying (at most 64 bytes of) the offending message, as the spec asks."""
    return _msg(T.ERROR, xid, struct.pack("!HH", etype, code) + data[:64])


def echo_request(xid: int, data: bytes = b"") -> bytes:
    return EchoRequest(xid=xid, data=data).pack()  # type: ignore[no-any-return]


def echo_reply(xid: int, data: bytes) -> bytes:
    return EchoReply(xid=xid, data=data).pack()  # type: ignore[no-any-return]


def barrier_reply(xid: int) -> bytes:
    return BarrierReply(xid=xid).pack()  # type: ignore[no-any-return]


def features_reply(xid: int, datapath_id: int, n_tables: int, capabilities: int) -> bytes:
    dpid = ":".join(f"{b:02x}" for b in datapath_id.to_bytes(8, "big"))
    return FeaturesReply(xid=xid, datapath_id=dpid, n_buffers=0, n_tables=n_tables,
                         auxiliary_id=0, capabilities=capabilities, reserved=0).pack()  # type: ignore[no-any-return]


def get_config_reply(xid: int, flags: int, miss_send_len: int) -> bytes:
    return GetConfigReply(xid=xid, flags=flags, miss_send_len=miss_send_len).pack()  # type: ignore[no-any-return]


def role_reply(xid: int, role: int, generation_id: int) -> bytes:
    return RoleReply(xid=xid, role=ControllerRole(role), generation_id=generation_id).pack()  # type: ignore[no-any-return]


def get_async_reply(xid: int, packet_in: tuple[int, int], port_status: tuple[int, int],
                    flow_removed: tuple[int, int]) -> bytes:
    return GetAsyncReply(xid=xid, packet_in_mask1=packet_in[0], packet_in_mask2=packet_in[1],  # type: ignore[no-any-return]
                         port_status_mask1=port_status[0], port_status_mask2=port_status[1],
                         flow_removed_mask1=flow_removed[0], flow_removed_mask2=flow_removed[1]).pack()


FULL64 = (1 << 64) - 1
_PIN_METADATA = _tlv(2, 8, 0, FULL64, FULL64)


def packet_in(buffer_id: int, total_len: int, reason: int, table_id: int, cookie: int, in_port: int,
              data: bytes, pipeline: tuple[tuple[str, int], ...] = ()) -> bytes:
    """PACKET_IN whose match carries OXM in_port, metadata and the registers that are not zero (as OVS).
    Packed here, not by pyof: it is sent per slow-path packet, and pyof takes about 600 us to pack one."""
    values = dict(pipeline)
    oxm = _tlv(0, 4, in_port, 0xFFFFFFFF, 0xFFFFFFFF)
    oxm += _tlv(2, 8, values["metadata"], FULL64, FULL64) if values.get("metadata") else _PIN_METADATA
    for i in range(16):
        if values.get(f"reg{i}"):
            oxm += _tlv(i, 4, values[f"reg{i}"], 0xFFFFFFFF, 0xFFFFFFFF, cls=0x0001)
    match = struct.pack("!HH", 1, 4 + len(oxm)) + oxm + bytes((-(4 + len(oxm))) % 8)
    return _msg(T.PACKET_IN, 0, struct.pack("!IHBBQ", buffer_id, total_len, reason, table_id, cookie) + match
                + b"\0\0" + data)


def flow_removed(cookie: int, priority: int, reason: int, table_id: int, duration: float, idle_timeout: int,
                 hard_timeout: int, packets: int, nbytes: int, match: Match) -> bytes:
    sec = int(duration)
    m = PyMatch()
    m.unpack(encode_match(match))
    return PyFlowRemoved(xid=0, cookie=cookie, priority=priority, reason=reason, table_id=table_id,  # type: ignore[no-any-return]
                         duration_sec=sec, duration_nsec=int((duration - sec) * 1e9), idle_timeout=idle_timeout,
                         hard_timeout=hard_timeout, packet_count=packets, byte_count=nbytes, match=m).pack()


@dataclass
class PortDesc:
    port_no: int
    hw_addr: bytes
    name: str
    config: int = 0         # OFPPC_PORT_DOWN = 1
    state: int = 0          # OFPPS_LINK_DOWN = 1, OFPPS_LIVE = 4
    curr: int = 0
    curr_speed: int = 0     # kbps


def _pyport(p: PortDesc) -> PyPort:
    return PyPort(port_no=p.port_no, hw_addr=mac_str(p.hw_addr), name=p.name[:15], config=p.config,
                  state=p.state, curr=p.curr, advertised=0, supported=0, peer=0, curr_speed=p.curr_speed,
                  max_speed=p.curr_speed)


def _port(p: PortDesc) -> bytes:
    return _pyport(p).pack()  # type: ignore[no-any-return]


OFPPR_ADD, OFPPR_DELETE, OFPPR_MODIFY = 0, 1, 2   # PORT_STATUS reasons


def port_status(reason: int, port: PortDesc) -> bytes:
    """PORT_STATUS: reason 0 add, 1 delete, 2 modify."""
    return PyPortStatus(xid=0, reason=reason, desc=_pyport(port)).pack()  # type: ignore[no-any-return]


def _multipart_replies(xid: int, mtype: int, items: Sequence[bytes]) -> list[bytes]:
    """Replies carrying items, split so each message fits 64 KiB (OFPMPF_REPLY_MORE on all but the last)."""
    msgs: list[list[bytes]] = [[]]
    size = 0
    for it in items:
        if size + len(it) > MAX_MSG - 16 and msgs[-1]:
            msgs.append([])
            size = 0
        msgs[-1].append(it)
        size += len(it)
    out = []
    for i, chunk in enumerate(msgs):
        more = 1 if i < len(msgs) - 1 else 0
        out.append(_msg(T.MULTIPART_REPLY, xid, struct.pack("!HH4x", mtype, more) + b"".join(chunk)))
    return out


@dataclass
class GroupStat:
    group_id: int
    ref_count: int
    packets: int
    nbytes: int
    duration: float
    buckets: list[tuple[int, int]]   # (packets, bytes) per bucket


def group_desc_reply(xid: int, groups: Sequence[Group]) -> list[bytes]:
    """OFPMP_GROUP_DESC: each group's type, number and buckets."""
    items = []
    for g in groups:
        bks = b""
        for b in g.buckets:
            acts = encode_actions(b.actions)
            bks += struct.pack("!HHII4x", 16 + len(acts), b.weight, b.watch_port, b.watch_group) + acts
        items.append(struct.pack("!HBxI", 8 + len(bks), g.type, g.group_id) + bks)
    return _multipart_replies(xid, MP.GROUP_DESC, items)


def group_stats_reply(xid: int, stats: Sequence[GroupStat]) -> list[bytes]:
    """OFPMP_GROUP: counters of each group and of its buckets."""
    items = []
    for st in stats:
        sec = int(st.duration)
        bks = b"".join(struct.pack("!QQ", p, n) for p, n in st.buckets)
        items.append(struct.pack("!H2xII4xQQII", 40 + len(bks), st.group_id, st.ref_count, st.packets, st.nbytes,
                                 sec, int((st.duration - sec) * 1e9)) + bks)
    return _multipart_replies(xid, MP.GROUP, items)


OFPGFC_SELECT_WEIGHT, OFPGFC_SELECT_LIVENESS, OFPGFC_CHAINING = 1, 2, 4


def group_features_reply(xid: int, max_groups: int) -> list[bytes]:
    """OFPMP_GROUP_FEATURES: all four types, weights, chaining; every action in every type."""
    acts = 0
    for a in (0, 11, 12, 15, 16, 17, 18, 19, 20, 22, 23, 24, 25):
        acts |= 1 << a
    body = struct.pack("!II4I4I", 0xF, OFPGFC_SELECT_WEIGHT | OFPGFC_CHAINING, *([max_groups] * 4), *([acts] * 4))
    return _multipart_replies(xid, MP.GROUP_FEATURES, [body])


@dataclass
class MeterStat:
    meter_id: int
    flow_count: int
    counts: list[tuple[int, int]]    # (packets, bytes) in, then per band
    duration: float


def meter_stats_reply(xid: int, stats: Sequence[MeterStat]) -> list[bytes]:
    """OFPMP_METER: each meter's flows, input and per-band counters."""
    items = []
    for st in stats:
        sec = int(st.duration)
        (pin, bin_), bands = st.counts[0], st.counts[1:]
        items.append(struct.pack("!IH6xIQQII", st.meter_id, 40 + 16 * len(bands), st.flow_count, pin, bin_, sec,
                                 int((st.duration - sec) * 1e9))
                     + b"".join(struct.pack("!QQ", p, n) for p, n in bands))
    return _multipart_replies(xid, MP.METER, items)


def meter_config_reply(xid: int, meters: Sequence[Meter]) -> list[bytes]:
    """OFPMP_METER_CONFIG: each meter's flags and bands."""
    items = []
    for m in meters:
        bands = b"".join(struct.pack("!HHIIB3x", b.type, 16, b.rate, b.burst, b.prec_level) for b in m.bands)
        items.append(struct.pack("!HHI", 8 + len(bands), m.flags, m.meter_id) + bands)
    return _multipart_replies(xid, MP.METER_CONFIG, items)


def meter_features_reply(xid: int, max_meter: int, max_bands: int) -> list[bytes]:
    """OFPMP_METER_FEATURES: drop and dscp_remark bands; kbps, pktps, burst and stats."""
    return _multipart_replies(xid, MP.METER_FEATURES, [struct.pack("!IIIBB2x", max_meter, 1 << 1 | 1 << 2, 0xF,
                                                                   max_bands, 0)])


def desc_reply(xid: int, mfr: str, hw: str, sw: str, serial: str, dp_desc: str) -> list[bytes]:
    body = Desc(mfr_desc=mfr, hw_desc=hw, sw_desc=sw, serial_num=serial, dp_desc=dp_desc).pack()
    return _multipart_replies(xid, MP.DESC, [body])


@dataclass
class FlowStat:
    table_id: int
    duration: float
    priority: int
    idle_timeout: int
    hard_timeout: int
    flags: int
    cookie: int
    packets: int
    nbytes: int
    match: Match
    actions: list[of.OfAction]


def flow_stats_reply(xid: int, flows: Sequence[FlowStat]) -> list[bytes]:
    items = []
    for f in flows:
        match = encode_match(f.match)
        inst = encode_instructions(f.actions)
        sec = int(f.duration)
        head = FlowStats(length=48 + len(match) + len(inst), table_id=f.table_id, duration_sec=sec,
                         duration_nsec=int((f.duration - sec) * 1e9), priority=f.priority,
                         idle_timeout=f.idle_timeout, hard_timeout=f.hard_timeout, flags=f.flags,
                         cookie=f.cookie, packet_count=f.packets, byte_count=f.nbytes)
        items.append(head.pack()[:48] + match + inst)  # pyof packs an empty match itself: keep its header only
    return _multipart_replies(xid, MP.FLOW, items)


def aggregate_reply(xid: int, packets: int, nbytes: int, flows: int) -> list[bytes]:
    return _multipart_replies(xid, MP.AGGREGATE,
                              [AggregateStatsReply(packet_count=packets, byte_count=nbytes, flow_count=flows).pack()])


def table_stats_reply(xid: int, tables: Sequence[tuple[int, int, int, int]]) -> list[bytes]:
    """(table_id, active, lookups, matched) per table."""
    return _multipart_replies(xid, MP.TABLE, [
        TableStats(table_id=t, active_count=a, lookup_count=lk, matched_count=m).pack() for t, a, lk, m in tables])


@dataclass
class PortCounters:
    port_no: int
    rx_packets: int = 0
    tx_packets: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0
    duration: float = 0.0


def port_stats_reply(xid: int, ports: Sequence[PortCounters]) -> list[bytes]:
    items = []
    for p in ports:
        sec = int(p.duration)
        items.append(PortStats(port_no=p.port_no, rx_packets=p.rx_packets, tx_packets=p.tx_packets,
                               rx_bytes=p.rx_bytes, tx_bytes=p.tx_bytes, rx_dropped=p.rx_dropped,
                               tx_dropped=p.tx_dropped, rx_errors=0, tx_errors=0, rx_frame_err=0, rx_over_err=0,
                               rx_crc_err=0, collisions=0, duration_sec=sec,
                               duration_nsec=int((p.duration - sec) * 1e9)).pack())
    return _multipart_replies(xid, MP.PORT_STATS, items)


def port_desc_reply(xid: int, ports: Sequence[PortDesc]) -> list[bytes]:
    return _multipart_replies(xid, MP.PORT_DESC, [_port(p) for p in ports])


# instruction, action and match capabilities we announce in TABLE_FEATURES
_INSTRUCTIONS = (1, 4, 5)                 # goto_table, apply_actions, clear_actions
_ACTIONS = (0, 17, 18, 22, 24, 25)        # output, push_vlan, pop_vlan, group, dec_nw_ttl, set_field
_MATCH_OXMS = tuple(sorted(OXM_FIELDS))


def _prop(ptype: int, body: bytes) -> bytes:
    n = 4 + len(body)
    return struct.pack("!HH", ptype, n) + body + bytes((-n) % 8)


def _oxm_headers(fields: Iterable[int], masked: bool = False) -> bytes:
    return b"".join(struct.pack("!HBB", 0x8000, f << 1 | (masked and f in MASKABLE),
                                OXM_FIELDS[f][1] * (2 if masked and f in MASKABLE else 1)) for f in fields)


def table_features_reply(xid: int, n_tables: int, max_entries: int) -> list[bytes]:
    """TABLE_FEATURES, hand-encoded (pyof cannot pack it): every table takes every match and action."""
    insts = b"".join(struct.pack("!HH", i, 4) for i in _INSTRUCTIONS)
    acts = b"".join(struct.pack("!HH", a, 4) for a in _ACTIONS)
    sets = _oxm_headers(SET_FIELD_OXM)
    items = []
    for t in range(n_tables):
        nxt = bytes(range(t + 1, n_tables))
        props = (_prop(0, insts) + _prop(2, nxt) + _prop(4, acts) + _prop(6, acts)
                 + _prop(8, _oxm_headers(_MATCH_OXMS, True)) + _prop(10, _oxm_headers(_MATCH_OXMS))
                 + _prop(12, sets) + _prop(14, sets))
        name = f"table{t}".encode().ljust(32, b"\0")
        items.append(struct.pack("!HB5x", 64 + len(props), t) + name
                     + struct.pack("!QQII", 0, 0, 0, max_entries) + props)
    return _multipart_replies(xid, MP.TABLE_FEATURES, items)


