"""Decoding what a controller sends: ``decode()`` turns one framed message into one of the ``Msg``
classes below, already in the switch's own terms (a ``Match``, a list of OpenFlow actions); anything
malformed raises ``OfError`` with the type and code to answer with.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pyof.foundation.exceptions import UnpackException
from pyof.v0x04.controller2switch.multipart_request import AggregateStatsRequest, FlowStatsRequest, PortStatsRequest

from ctl.openflow.codec.actions import decode_actions, decode_instructions
from ctl.openflow.codec.framing import (
    BAC_MATCH_INCONSISTENT,
    BRC_BAD_LEN,
    BRC_BAD_MULTIPART,
    BRC_BAD_TYPE,
    BRC_BAD_VERSION,
    ET,
    FMFC_BAD_COMMAND,
    FMFC_BAD_FLAGS,
    GMFC_BAD_BUCKET,
    GMFC_BAD_COMMAND,
    GMFC_BAD_TYPE,
    MMFC_BAD_BAND,
    MMFC_BAD_COMMAND,
    MP,
    OFP_NO_BUFFER,
    OFP_VERSION,
    OFPG_ANY,
    OFPP_ANY,
    OFPP_CONTROLLER,
    OFPTT_ALL,
    OfError,
    T,
    header,
)
from ctl.openflow.codec.oxm import _match_at
from ctl.pipeline import ofactions as of
from ctl.pipeline.groups import Bucket, GroupSpec
from ctl.pipeline.meters import Band, MeterSpec
from ctl.pipeline.ofmatch import Match

# --- messages (what decode() returns) --------------------------------------------------------------------


@dataclass
class Msg:
    xid: int
    type: int


@dataclass
class Hello(Msg):
    version: int = OFP_VERSION
    versions: set[int] | None = None   # from the version bitmap, if the peer sent one


@dataclass
class Echo(Msg):
    data: bytes = b""


@dataclass
class SetConfig(Msg):
    flags: int = 0
    miss_send_len: int = 128


@dataclass
class FlowMod(Msg):
    cookie: int = 0
    cookie_mask: int = 0
    table_id: int = 0
    command: int = 0
    idle_timeout: int = 0
    hard_timeout: int = 0
    priority: int = 0
    buffer_id: int = OFP_NO_BUFFER
    out_port: int = OFPP_ANY
    out_group: int = OFPG_ANY
    flags: int = 0
    match: Match = field(default_factory=Match)
    actions: list[of.OfAction] = field(default_factory=list)


@dataclass
class PacketOut(Msg):
    buffer_id: int = OFP_NO_BUFFER
    in_port: int = OFPP_CONTROLLER
    actions: list[of.OfAction] = field(default_factory=list)
    data: bytes = b""


@dataclass
class FlowStatsReq:
    table_id: int = OFPTT_ALL
    out_port: int = OFPP_ANY
    out_group: int = OFPG_ANY
    cookie: int = 0
    cookie_mask: int = 0
    match: Match = field(default_factory=Match)


@dataclass
class MultipartRequest(Msg):
    mtype: int = 0
    flags: int = 0
    flow: FlowStatsReq | None = None   # FLOW and AGGREGATE
    port_no: int = OFPP_ANY            # PORT_STATS
    table_features: bool = False       # TABLE_FEATURES with a body (a request to change them)
    group_id: int = 0xFFFFFFFF         # GROUP: one group, or OFPG_ALL; METER, METER_CONFIG: one meter, or OFPM_ALL


@dataclass
class GroupMod(Msg):
    command: int = 0                   # OFPGC_ADD, MODIFY, DELETE
    spec: GroupSpec | None = None


@dataclass
class MeterMod(Msg):
    command: int = 0                   # OFPMC_ADD, MODIFY, DELETE
    spec: MeterSpec | None = None


@dataclass
class RoleRequest(Msg):
    role: int = 0
    generation_id: int = 0


@dataclass
class SetAsync(Msg):
    packet_in: tuple[int, int] = (0, 0)      # (master/equal, slave) masks
    port_status: tuple[int, int] = (0, 0)
    flow_removed: tuple[int, int] = (0, 0)


SIMPLE = {T.FEATURES_REQUEST, T.GET_CONFIG_REQUEST, T.BARRIER_REQUEST, T.GET_ASYNC_REQUEST}
UNSUPPORTED = {T.PORT_MOD: "port-mod", T.TABLE_MOD: "table-mod",
               T.QUEUE_GET_CONFIG_REQUEST: "queues", T.EXPERIMENTER: "experimenter messages"}
# the messages a switch receives that only a switch sends
SWITCH_TO_CONTROLLER = {T.FEATURES_REPLY, T.GET_CONFIG_REPLY, T.PACKET_IN, T.FLOW_REMOVED, T.PORT_STATUS,
                        T.MULTIPART_REPLY, T.BARRIER_REPLY, T.QUEUE_GET_CONFIG_REPLY, T.ROLE_REPLY,
                        T.GET_ASYNC_REPLY}


def decode(raw: bytes) -> Msg:
    """One whole message from the controller, as ours. OfError says how to refuse it."""
    version, mtype, length, xid = header(raw)
    if length != len(raw):
        raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"header says {length} bytes, got {len(raw)}")
    if mtype == T.HELLO:
        return _hello(raw, version, xid)
    if version != OFP_VERSION:
        raise OfError(ET.BAD_REQUEST, BRC_BAD_VERSION, f"version {version} after negotiating 1.3 (4)")
    try:
        t = T(mtype)
    except ValueError:
        raise OfError(ET.BAD_REQUEST, BRC_BAD_TYPE, f"unknown message type {mtype}") from None
    if t in UNSUPPORTED:
        raise OfError(ET.BAD_REQUEST, BRC_BAD_TYPE, f"{UNSUPPORTED[t]} are not supported")
    if t in SWITCH_TO_CONTROLLER:
        raise OfError(ET.BAD_REQUEST, BRC_BAD_TYPE, f"{t.name} is a message switches send, not receive")
    if t in (T.ECHO_REQUEST, T.ECHO_REPLY, T.ERROR):
        return Echo(xid, t, raw[8:])
    if t in SIMPLE:
        if length != 8:
            raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"{t.name} has no body, got {length - 8} bytes")
        return Msg(xid, t)
    if t == T.SET_CONFIG:
        if length != 12:
            raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"SET_CONFIG is 12 bytes, got {length}")
        flags, miss = struct.unpack_from("!HH", raw, 8)
        return SetConfig(xid, t, flags, miss)
    if t == T.ROLE_REQUEST:
        if length != 24:
            raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"ROLE_REQUEST is 24 bytes, got {length}")
        role, gen = struct.unpack_from("!I4xQ", raw, 8)
        return RoleRequest(xid, t, role, gen)
    if t == T.SET_ASYNC:
        if length != 32:
            raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"SET_ASYNC is 32 bytes, got {length}")
        v = struct.unpack_from("!6I", raw, 8)
        return SetAsync(xid, t, (v[0], v[1]), (v[2], v[3]), (v[4], v[5]))
    if t == T.FLOW_MOD:
        return _flow_mod(raw, xid)
    if t == T.PACKET_OUT:
        return _packet_out(raw, xid)
    if t == T.MULTIPART_REQUEST:
        return _multipart(raw, xid)
    if t == T.GROUP_MOD:
        return _group_mod(raw, xid)
    if t == T.METER_MOD:
        return _meter_mod(raw, xid)
    raise OfError(ET.BAD_REQUEST, BRC_BAD_TYPE, f"{t.name} is not supported")


def _hello(raw: bytes, version: int, xid: int) -> Hello:
    versions: set[int] | None = None
    off = 8
    while off + 4 <= len(raw):  # hello elements: only the version bitmap (type 1) means anything
        etype, elen = struct.unpack_from("!HH", raw, off)
        if elen < 4 or off + elen > len(raw):
            break
        if etype == 1:
            versions = set()
            for i in range((elen - 4) // 4):
                word = int.from_bytes(raw[off + 4 + 4 * i: off + 8 + 4 * i], "big")
                versions |= {32 * i + b for b in range(32) if word >> b & 1}
        off += (elen + 7) // 8 * 8
    return Hello(xid, T.HELLO, version, versions)


FLOW_MOD_BODY = struct.Struct("!QQBBHHHIIIH2x")


def _flow_mod(raw: bytes, xid: int) -> FlowMod:
    if len(raw) < 56:
        raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"FLOW_MOD is at least 56 bytes, got {len(raw)}")
    (cookie, cookie_mask, table_id, command, idle, hard, priority, buffer_id, out_port, out_group,
     flags) = FLOW_MOD_BODY.unpack_from(raw, 8)
    if command > 4:
        raise OfError(ET.FLOW_MOD_FAILED, FMFC_BAD_COMMAND, f"flow-mod command {command}")
    if flags & ~0x1F:
        raise OfError(ET.FLOW_MOD_FAILED, FMFC_BAD_FLAGS, f"flow-mod flags {flags:#x}")
    match, end = _match_at(raw, 48)
    acts = decode_instructions(raw, end)
    bad = of.consistency_error(match, acts)
    if bad is not None:
        raise OfError(ET.BAD_ACTION, BAC_MATCH_INCONSISTENT, bad[1])
    return FlowMod(xid, T.FLOW_MOD, cookie, cookie_mask, table_id, command, idle, hard, priority, buffer_id,
                   out_port, out_group, flags, match, acts)


GROUP_TYPES_OF = (0, 1, 2, 3)  # OFPGT_ALL, SELECT, INDIRECT, FF


def _group_mod(raw: bytes, xid: int) -> GroupMod:
    """OFPT_GROUP_MOD: command, type, group and the buckets, each length checked before it is read (OVS's
    errors: BAD_COMMAND, BAD_TYPE, BAD_BUCKET for a bucket that does not add up)."""
    if len(raw) < 16:
        raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"GROUP_MOD is at least 16 bytes, got {len(raw)}")
    command, gtype, group_id = struct.unpack_from("!HBxI", raw, 8)
    if command > 2:
        raise OfError(ET.GROUP_MOD_FAILED, GMFC_BAD_COMMAND, f"group-mod command {command}")
    if command != 2 and gtype not in GROUP_TYPES_OF:
        raise OfError(ET.GROUP_MOD_FAILED, GMFC_BAD_TYPE, f"group type {gtype}")
    buckets: list[Bucket] = []
    p = 16
    while p < len(raw):
        if p + 16 > len(raw):
            raise OfError(ET.GROUP_MOD_FAILED, GMFC_BAD_BUCKET, "a bucket shorter than its 16-byte header")
        blen, weight, watch_port, watch_group = struct.unpack_from("!HHII", raw, p)
        if blen < 16 or blen % 8 or p + blen > len(raw):
            raise OfError(ET.GROUP_MOD_FAILED, GMFC_BAD_BUCKET, f"bucket length {blen}")
        acts = decode_actions(raw, p + 16, p + blen)
        buckets.append(Bucket(acts, weight, watch_port, watch_group))
        p += blen
    return GroupMod(xid, T.GROUP_MOD, command, GroupSpec(group_id, gtype, buckets))


def _meter_mod(raw: bytes, xid: int) -> MeterMod:
    """OFPT_METER_MOD: command, flags, meter and its bands (drop and dscp_remark; 16 bytes each)."""
    if len(raw) < 16:
        raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"METER_MOD is at least 16 bytes, got {len(raw)}")
    command, flags, meter_id = struct.unpack_from("!HHI", raw, 8)
    if command > 2:
        raise OfError(ET.METER_MOD_FAILED, MMFC_BAD_COMMAND, f"meter-mod command {command}")
    bands: list[Band] = []
    p = 16
    while p < len(raw):
        if p + 16 > len(raw):
            raise OfError(ET.METER_MOD_FAILED, MMFC_BAD_BAND, "a band shorter than 16 bytes")
        btype, blen, rate, burst = struct.unpack_from("!HHII", raw, p)
        if blen != 16 or p + blen > len(raw):
            raise OfError(ET.METER_MOD_FAILED, MMFC_BAD_BAND, f"band length {blen}")
        if btype not in (1, 2):
            raise OfError(ET.METER_MOD_FAILED, MMFC_BAD_BAND, f"band type {btype} (drop 1, dscp_remark 2)")
        bands.append(Band(btype, rate, burst, raw[p + 12] if btype == 2 else 0))
        p += blen
    return MeterMod(xid, T.METER_MOD, command, MeterSpec(meter_id, flags, bands))


def _packet_out(raw: bytes, xid: int) -> PacketOut:
    if len(raw) < 24:
        raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"PACKET_OUT is at least 24 bytes, got {len(raw)}")
    buffer_id, in_port, alen = struct.unpack_from("!IIH", raw, 8)
    if 24 + alen > len(raw) or alen % 8:
        raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"PACKET_OUT actions_len {alen} does not fit")
    acts = decode_actions(raw, 24, 24 + alen)
    return PacketOut(xid, T.PACKET_OUT, buffer_id, in_port, acts, raw[24 + alen:])


def _multipart(raw: bytes, xid: int) -> MultipartRequest:
    if len(raw) < 16:
        raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"MULTIPART_REQUEST is at least 16 bytes, got {len(raw)}")
    mtype, flags = struct.unpack_from("!HH", raw, 8)
    body = raw[16:]
    req = MultipartRequest(xid, T.MULTIPART_REQUEST, mtype, flags)
    if mtype in (MP.FLOW, MP.AGGREGATE):
        if len(body) < 40:
            raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"flow stats request body is at least 40 bytes, got {len(body)}")
        match, end = _match_at(raw, 16 + 32)
        if end != len(raw):
            raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, "flow stats request: bytes after the match")
        cls = FlowStatsRequest if mtype == MP.FLOW else AggregateStatsRequest
        r = cls()
        try:
            r.unpack(body)
        except (UnpackException, ValueError, struct.error) as e:
            raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"flow stats request: {e}") from None
        req.flow = FlowStatsReq(int(r.table_id), int(r.out_port), int(r.out_group), int(r.cookie),
                                int(r.cookie_mask), match)
    elif mtype == MP.PORT_STATS:
        if len(body) != 8:
            raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"port stats request body is 8 bytes, got {len(body)}")
        p = PortStatsRequest()
        p.unpack(body)
        req.port_no = int(p.port_no)
    elif mtype == MP.TABLE_FEATURES:
        req.table_features = bool(body)
    elif mtype in (MP.GROUP, MP.METER, MP.METER_CONFIG):
        if len(body) != 8:
            raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"{MP(mtype).name} request body is 8 bytes, got {len(body)}")
        req.group_id = int.from_bytes(body[:4], "big")
    elif mtype in (MP.DESC, MP.TABLE, MP.PORT_DESC, MP.GROUP_DESC, MP.GROUP_FEATURES, MP.METER_FEATURES):
        if body:
            raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"{MP(mtype).name} request has no body")
    else:
        name = MP(mtype).name if mtype in MP._value2member_map_ else str(mtype)
        raise OfError(ET.BAD_REQUEST, BRC_BAD_MULTIPART, f"multipart {name} is not supported")
    return req


