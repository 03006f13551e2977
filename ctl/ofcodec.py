"""The OpenFlow 1.3 wire codec: bytes in, our messages out; our replies in, bytes out.

The only module that imports the codec library, python-openflow (``pyof.v0x04``), so it can be swapped.
pyof decodes the instruction and action lists of FLOW_MOD and PACKET_OUT and flow-stats requests, and
encodes most replies. Written here with ``struct``: what pyof cannot do (TABLE_FEATURES replies, the hello
version bitmap, Nicira resubmit, ONF's tcp_flags OXM), what it does too slowly for the per-message paths
(PACKET_IN, packed per slow-path packet: 600 us with pyof, 1 us here; a FLOW_MOD's fixed fields and
match: 600 us whole with pyof, 140 us with pyof on the instructions only), and a walk of every length field
before pyof sees a message. What comes out of ``decode()`` is already in the switch's own terms: a
``ctl.ofmatch.Match`` and a list of ``ctl.ofactions`` actions, so nothing past this module sees an OXM TLV.

Anything malformed raises ``OfError`` with the OpenFlow error type and code to answer with.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyof.foundation.exceptions import PackException, UnpackException
from pyof.v0x04.asynchronous.flow_removed import FlowRemoved as PyFlowRemoved
from pyof.v0x04.asynchronous.port_status import PortStatus as PyPortStatus
from pyof.v0x04.common.action import ListOfActions
from pyof.v0x04.common.flow_instructions import ListOfInstruction
from pyof.v0x04.common.flow_match import Match as PyMatch
from pyof.v0x04.common.flow_match import OxmTLV
from pyof.v0x04.common.port import Port as PyPort
from pyof.v0x04.controller2switch.barrier_reply import BarrierReply
from pyof.v0x04.controller2switch.common import ControllerRole
from pyof.v0x04.controller2switch.features_reply import FeaturesReply
from pyof.v0x04.controller2switch.get_async_reply import GetAsyncReply
from pyof.v0x04.controller2switch.get_config_reply import GetConfigReply
from pyof.v0x04.controller2switch.multipart_reply import AggregateStatsReply, Desc, FlowStats, PortStats, TableStats
from pyof.v0x04.controller2switch.multipart_request import AggregateStatsRequest, FlowStatsRequest, PortStatsRequest
from pyof.v0x04.controller2switch.role_reply import RoleReply
from pyof.v0x04.symmetric.echo_reply import EchoReply
from pyof.v0x04.symmetric.echo_request import EchoRequest

from ctl import ofactions as of
from ctl.flowkey import FLOW_NW_FRAG_ANY, FLOW_NW_FRAG_LATER, VLAN_CFI, mac_str
from ctl.ofmatch import ETH_P_ARP, FULL, SPECS, Match, check_prereqs

OFP_VERSION = 4
HEADER = struct.Struct("!BBHI")
MAX_MSG = 0xFFFF

OFPP_MAX = 0xFFFFFF00
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_TABLE = 0xFFFFFFF9
OFPP_NORMAL = 0xFFFFFFFA
OFPP_FLOOD = 0xFFFFFFFB
OFPP_ALL = 0xFFFFFFFC
OFPP_CONTROLLER = 0xFFFFFFFD
OFPP_LOCAL = 0xFFFFFFFE
OFPP_ANY = 0xFFFFFFFF
OFPG_ANY = 0xFFFFFFFF
OFPTT_ALL = 0xFF
OFP_NO_BUFFER = 0xFFFFFFFF
OFPCML_NO_BUFFER = 0xFFFF
OFPVID_PRESENT = 0x1000
NX_VENDOR = 0x00002320
NXAST_RESUBMIT, NXAST_RESUBMIT_TABLE = 1, 14


class T(enum.IntEnum):
    """ofp_type."""

    HELLO = 0
    ERROR = 1
    ECHO_REQUEST = 2
    ECHO_REPLY = 3
    EXPERIMENTER = 4
    FEATURES_REQUEST = 5
    FEATURES_REPLY = 6
    GET_CONFIG_REQUEST = 7
    GET_CONFIG_REPLY = 8
    SET_CONFIG = 9
    PACKET_IN = 10
    FLOW_REMOVED = 11
    PORT_STATUS = 12
    PACKET_OUT = 13
    FLOW_MOD = 14
    GROUP_MOD = 15
    PORT_MOD = 16
    TABLE_MOD = 17
    MULTIPART_REQUEST = 18
    MULTIPART_REPLY = 19
    BARRIER_REQUEST = 20
    BARRIER_REPLY = 21
    QUEUE_GET_CONFIG_REQUEST = 22
    QUEUE_GET_CONFIG_REPLY = 23
    ROLE_REQUEST = 24
    ROLE_REPLY = 25
    GET_ASYNC_REQUEST = 26
    GET_ASYNC_REPLY = 27
    SET_ASYNC = 28
    METER_MOD = 29


class MP(enum.IntEnum):
    """ofp_multipart_type."""

    DESC = 0
    FLOW = 1
    AGGREGATE = 2
    TABLE = 3
    PORT_STATS = 4
    QUEUE = 5
    GROUP = 6
    GROUP_DESC = 7
    GROUP_FEATURES = 8
    METER = 9
    METER_CONFIG = 10
    METER_FEATURES = 11
    TABLE_FEATURES = 12
    PORT_DESC = 13
    EXPERIMENTER = 0xFFFF


class ET(enum.IntEnum):
    """ofp_error_type."""

    HELLO_FAILED = 0
    BAD_REQUEST = 1
    BAD_ACTION = 2
    BAD_INSTRUCTION = 3
    BAD_MATCH = 4
    FLOW_MOD_FAILED = 5
    GROUP_MOD_FAILED = 6
    PORT_MOD_FAILED = 7
    TABLE_MOD_FAILED = 8
    QUEUE_OP_FAILED = 9
    SWITCH_CONFIG_FAILED = 10
    ROLE_REQUEST_FAILED = 11
    METER_MOD_FAILED = 12
    TABLE_FEATURES_FAILED = 13


# the codes we answer with, by type
HFC_INCOMPATIBLE = 0
BRC_BAD_VERSION, BRC_BAD_TYPE, BRC_BAD_MULTIPART, BRC_BAD_EXPERIMENTER = 0, 1, 2, 3
BRC_EPERM, BRC_BAD_LEN, BRC_BUFFER_UNKNOWN, BRC_BAD_TABLE_ID, BRC_IS_SLAVE, BRC_BAD_PORT, BRC_BAD_PACKET = (
    5, 6, 8, 9, 10, 11, 12)
BAC_BAD_TYPE, BAC_BAD_LEN, BAC_BAD_EXPERIMENTER, BAC_BAD_OUT_PORT, BAC_BAD_ARGUMENT = 0, 1, 2, 4, 5
BAC_BAD_OUT_GROUP, BAC_BAD_SET_TYPE, BAC_BAD_SET_ARGUMENT = 9, 13, 15
BIC_UNKNOWN_INST, BIC_UNSUP_INST, BIC_BAD_TABLE_ID, BIC_BAD_LEN = 0, 1, 2, 7
BMC_BAD_TYPE, BMC_BAD_LEN, BMC_BAD_FIELD, BMC_BAD_VALUE, BMC_BAD_MASK, BMC_BAD_PREREQ, BMC_DUP_FIELD = (
    0, 1, 6, 7, 8, 9, 10)
FMFC_UNKNOWN, FMFC_TABLE_FULL, FMFC_BAD_TABLE_ID, FMFC_OVERLAP, FMFC_BAD_TIMEOUT, FMFC_BAD_COMMAND = 0, 1, 2, 3, 5, 6
FMFC_BAD_FLAGS = 7
SCFC_BAD_LEN = 2
RRFC_STALE, RRFC_UNSUP, RRFC_BAD_ROLE = 0, 1, 2


class OfError(Exception):
    """A message we must refuse with OFPT_ERROR (type, code); msg is for logs."""

    def __init__(self, etype: int, code: int, msg: str = "") -> None:
        super().__init__(msg or f"error type {etype} code {code}")
        self.type, self.code, self.msg = etype, code, msg


# --- framing ---------------------------------------------------------------------------------------------


class Framer:
    """Cuts a TCP byte stream into whole OpenFlow messages."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The messages completed by data. OfError(BAD_REQUEST, BAD_LEN) if a header's length is below 8:
        the stream cannot be resynchronised, so the caller closes the connection after answering."""
        self.buf += data
        out = []
        while len(self.buf) >= 8:
            length = int.from_bytes(self.buf[2:4], "big")
            if length < 8:
                raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"message length {length} is below the header's 8")
            if len(self.buf) < length:
                break
            out.append(bytes(self.buf[:length]))
            del self.buf[:length]
        return out


def header(raw: bytes) -> tuple[int, int, int, int]:
    """(version, type, length, xid)."""
    return HEADER.unpack_from(raw)


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
UNSUPPORTED = {T.GROUP_MOD: "groups", T.METER_MOD: "meters", T.PORT_MOD: "port-mod", T.TABLE_MOD: "table-mod",
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


def _pyof_list(cls: Any, data: bytes, what: str) -> Any:
    """An instruction or action list decoded by pyof. Only the lists: pyof decoding a whole FLOW_MOD
    costs about 600 us, its instruction list about 100 us (the fixed fields and the match are read here)."""
    lst = cls()
    try:
        lst.unpack(data)
    except (UnpackException, PackException, ValueError, KeyError, IndexError, struct.error, TypeError,
            AttributeError) as e:
        raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"cannot decode {what}: {e}") from None
    return lst


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
    _check_instructions(raw, end)
    acts = _instructions(_pyof_list(ListOfInstruction, raw[end:], "instructions"))
    return FlowMod(xid, T.FLOW_MOD, cookie, cookie_mask, table_id, command, idle, hard, priority, buffer_id,
                   out_port, out_group, flags, match, acts)


def _packet_out(raw: bytes, xid: int) -> PacketOut:
    if len(raw) < 24:
        raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"PACKET_OUT is at least 24 bytes, got {len(raw)}")
    buffer_id, in_port, alen = struct.unpack_from("!IIH", raw, 8)
    if 24 + alen > len(raw) or alen % 8:
        raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"PACKET_OUT actions_len {alen} does not fit")
    _check_actions(raw, 24, 24 + alen)
    acts = _actions(_pyof_list(ListOfActions, raw[24: 24 + alen], "actions"))
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
    elif mtype in (MP.DESC, MP.TABLE, MP.PORT_DESC):
        if body:
            raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"{MP(mtype).name} request has no body")
    else:
        name = MP(mtype).name if mtype in MP._value2member_map_ else str(mtype)
        raise OfError(ET.BAD_REQUEST, BRC_BAD_MULTIPART, f"multipart {name} is not supported")
    return req


def _int(v: object) -> int:
    """pyof bitmask fields come back as plain ints or as UBInt wrappers."""
    return int(getattr(v, "value", v))  # type: ignore[call-overload]


# --- matches --------------------------------------------------------------------------------------------

# OXM basic field number -> (our text name (ctl.ofmatch.SPECS), bytes)
OXM_FIELDS: dict[int, tuple[str, int]] = {
    0: ("in_port", 4), 3: ("eth_dst", 6), 4: ("eth_src", 6), 5: ("eth_type", 2), 6: ("vlan_vid", 2),
    7: ("vlan_pcp", 1), 8: ("ip_dscp", 1), 9: ("ip_ecn", 1), 10: ("ip_proto", 1), 11: ("ip_src", 4),
    12: ("ip_dst", 4), 13: ("tcp_src", 2), 14: ("tcp_dst", 2), 15: ("udp_src", 2), 16: ("udp_dst", 2),
    17: ("sctp_src", 2), 18: ("sctp_dst", 2), 19: ("icmp_type", 1), 20: ("icmp_code", 1), 21: ("arp_op", 2),
    22: ("arp_spa", 4), 23: ("arp_tpa", 4), 24: ("arp_sha", 6), 25: ("arp_tha", 6), 26: ("ipv6_src", 16),
    27: ("ipv6_dst", 16), 29: ("icmpv6_type", 1), 30: ("icmpv6_code", 1),
}
MASKABLE = {3, 4, 6, 11, 12, 22, 23, 24, 25, 26, 27}
# Nicira extension fields (class 1) that ovs-ofctl uses in OpenFlow 1.3 for what OXM basic lacks
NXM_FIELDS: dict[int, tuple[str, int]] = {29: ("nw_ttl", 1), 26: ("nw_frag", 1), 34: ("tcp_flags", 2)}
# ovs-ofctl writes tcp_flags in OpenFlow 1.3 as ONF's experimenter OXM (EXT-109): class 0xffff, experimenter
# 0x4f4e4600, field 42. Decoded under the pseudo-class ONF_CLASS.
OXM_EXPERIMENTER, ONF_EXPERIMENTER, ONF_CLASS, ONF_TCP_FLAGS = 0xFFFF, 0x4F4E4600, 0x4F4E, 42
VALID_BITS = {"nw_frag": FLOW_NW_FRAG_ANY | FLOW_NW_FRAG_LATER}


def _match_at(raw: bytes, off: int) -> tuple[Match, int]:
    """The ofp_match at off, as ours; and where the next thing starts (after the match's padding)."""
    if off + 4 > len(raw):
        raise OfError(ET.BAD_MATCH, BMC_BAD_LEN, "truncated match")
    mtype, mlen = struct.unpack_from("!HH", raw, off)
    if mtype != 1:
        raise OfError(ET.BAD_MATCH, BMC_BAD_TYPE, f"match type {mtype} (only OXM, 1)")
    end = off + mlen
    padded = off + (mlen + 7) // 8 * 8
    if mlen < 4 or padded > len(raw):
        raise OfError(ET.BAD_MATCH, BMC_BAD_LEN, f"match length {mlen} does not fit the message")
    tlvs: list[tuple[int, int, bool, bytes]] = []
    p = off + 4
    while p < end:
        if p + 4 > end:
            raise OfError(ET.BAD_MATCH, BMC_BAD_LEN, "truncated OXM header")
        cls, fh, ln = struct.unpack_from("!HBB", raw, p)
        if p + 4 + ln > end:
            raise OfError(ET.BAD_MATCH, BMC_BAD_LEN, "OXM value runs past the match")
        payload = raw[p + 4: p + 4 + ln]
        if cls == OXM_EXPERIMENTER:
            if ln < 4 or int.from_bytes(payload[:4], "big") != ONF_EXPERIMENTER:
                raise OfError(ET.BAD_MATCH, BMC_BAD_FIELD, f"experimenter OXM {payload[:4].hex()}")
            cls, payload = ONF_CLASS, payload[4:]
        tlvs.append((cls, fh >> 1, bool(fh & 1), payload))
        p += 4 + ln
    return match_of_oxms(tlvs), padded


def match_of_oxms(tlvs: Iterable[tuple[int, int, bool, bytes]]) -> Match:
    """Our Match from OXM TLVs (class, field, hasmask, payload); prerequisites checked as OpenFlow says."""
    match = Match()
    seen: set[tuple[int, int]] = set()
    names: list[str] = []
    vlan_present: bool | None = None
    for cls, fld, hasmask, payload in tlvs:
        if (cls, fld) in seen:
            raise OfError(ET.BAD_MATCH, BMC_DUP_FIELD, f"OXM field {cls:#x}:{fld} twice")
        seen.add((cls, fld))
        if cls == 0x8000 and fld in OXM_FIELDS:
            name, size = OXM_FIELDS[fld]
        elif cls == 0x0001 and fld in NXM_FIELDS:
            name, size = NXM_FIELDS[fld]
        elif cls == ONF_CLASS and fld == ONF_TCP_FLAGS:
            name, size = "tcp_flags", 2
        elif cls == 0x8000 and fld == 2:  # metadata: the pipeline never writes it, so only 0 can match
            if len(payload) != (16 if hasmask else 8):
                raise OfError(ET.BAD_MATCH, BMC_BAD_LEN, "metadata is 8 bytes")
            v = int.from_bytes(payload[:8], "big")
            m = int.from_bytes(payload[8:], "big") if hasmask else (1 << 64) - 1
            if v & m:
                raise OfError(ET.BAD_MATCH, BMC_BAD_VALUE, "metadata is always 0 (write_metadata is not supported)")
            continue
        else:
            raise OfError(ET.BAD_MATCH, BMC_BAD_FIELD, f"OXM field {cls:#x}:{fld} is not supported")
        if len(payload) != size * (2 if hasmask else 1):
            raise OfError(ET.BAD_MATCH, BMC_BAD_LEN, f"{name}: {len(payload)} bytes")
        if hasmask and cls == 0x8000 and fld not in MASKABLE:
            raise OfError(ET.BAD_MATCH, BMC_BAD_MASK, f"{name} takes no mask")
        v = int.from_bytes(payload[:size], "big")
        m = int.from_bytes(payload[size:], "big") if hasmask else (1 << (8 * size)) - 1
        if v & ~m:
            raise OfError(ET.BAD_MATCH, BMC_BAD_VALUE, f"{name}: value has bits outside its mask")
        spec = SPECS.get(name)
        f = spec.field if spec else name
        try:
            if name == "vlan_vid":
                if not hasmask and v == 0:          # OFPVID_NONE: no tag
                    vlan_present = False
                    match.set("vlan_tci", 0, VLAN_CFI)
                else:
                    vlan_present = bool(v & OFPVID_PRESENT) or None
                    match.set("vlan_tci", v & 0x1FFF, m & 0x1FFF)
            elif name == "vlan_pcp":
                match.set("vlan_tci", v << 13, 0xE000)
            elif name == "ip_dscp":
                if v > 63:
                    raise OfError(ET.BAD_MATCH, BMC_BAD_VALUE, f"ip_dscp {v}")
                match.set("nw_tos", v << 2, 0xFC)
            elif name == "ip_ecn":
                if v > 3:
                    raise OfError(ET.BAD_MATCH, BMC_BAD_VALUE, f"ip_ecn {v}")
                match.set("nw_tos", v, 3)
            elif name == "arp_op":
                if v > 255:
                    raise OfError(ET.BAD_MATCH, BMC_BAD_VALUE, f"arp_op {v} (the flow key keeps 8 bits)")
                match.set("nw_proto", v, 0xFF)
            elif name == "in_port":
                if not 0 < v < 0xFF00:
                    raise OfError(ET.BAD_MATCH, BMC_BAD_VALUE, f"in_port {v:#x} is not a port of this switch")
                match.set("in_port", v, FULL["in_port"])
            else:
                keep = VALID_BITS.get(f, FULL[f])   # bits the flow key never sets cannot matter
                match.set(f, v & keep, m & keep)
        except OfError:
            raise
        except ValueError as e:
            raise OfError(ET.BAD_MATCH, BMC_BAD_VALUE, str(e)) from None
        names.append(name)
    if "vlan_pcp" in names and vlan_present is not True:
        raise OfError(ET.BAD_MATCH, BMC_BAD_PREREQ, "vlan_pcp needs vlan_vid with OFPVID_PRESENT")
    for name in names:
        spec = SPECS.get(name)
        if spec is not None:
            why = check_prereqs(spec, match)
            if why:
                raise OfError(ET.BAD_MATCH, BMC_BAD_PREREQ, why)
    return match


def _tlv(fld: int, size: int, v: int, m: int, full: int, cls: int = 0x8000) -> bytes:
    hasmask = m != full
    body = v.to_bytes(size, "big") + (m.to_bytes(size, "big") if hasmask else b"")
    return struct.pack("!HBB", cls, fld << 1 | hasmask, len(body)) + body


def oxms_of_match(match: Match) -> bytes:
    """Our Match as OXM TLVs (basic fields, Nicira ones for nw_ttl, nw_frag and tcp_flags)."""
    f = dict(match.fields)
    out = []
    dl_type = match.value("dl_type")
    if "in_port" in f:
        out.append(_tlv(0, 4, f.pop("in_port")[0], 0xFFFFFFFF, 0xFFFFFFFF))
    for fld, name in ((3, "dl_dst"), (4, "dl_src")):
        if name in f:
            v, m = f.pop(name)
            out.append(_tlv(fld, 6, v, m, FULL[name]))
    if "dl_type" in f:
        v, m = f.pop("dl_type")
        out.append(_tlv(5, 2, v, 0xFFFF, 0xFFFF))
    if "vlan_tci" in f:
        v, m = f.pop("vlan_tci")
        if m == VLAN_CFI and not v:
            out.append(_tlv(6, 2, 0, 0xFFFF, 0xFFFF))
        elif m & 0x1FFF:
            out.append(_tlv(6, 2, v & 0x1FFF, m & 0x1FFF, 0x1FFF))
        if m & 0xE000:
            out.append(_tlv(7, 1, v >> 13, 7, 7))
    if "nw_tos" in f:
        v, m = f.pop("nw_tos")
        if m & 0xFC:
            out.append(_tlv(8, 1, v >> 2, 0x3F, 0x3F))
        if m & 3:
            out.append(_tlv(9, 1, v & 3, 3, 3))
    if "nw_proto" in f:
        v, m = f.pop("nw_proto")
        out.append(_tlv(21, 2, v, 0xFFFF, 0xFFFF) if dl_type == ETH_P_ARP else _tlv(10, 1, v, 0xFF, 0xFF))
    arp = dl_type == ETH_P_ARP
    for name, fld in (("nw_src", 22 if arp else 11), ("nw_dst", 23 if arp else 12)):
        if name in f:
            v, m = f.pop(name)
            out.append(_tlv(fld, 4, v, m, 0xFFFFFFFF))
    proto = match.value("nw_proto")
    ports = {6: (13, 14), 17: (15, 16), 132: (17, 18), 1: (19, 20), 58: (29, 30)}.get(proto or -1)
    for i, name in enumerate(("tp_src", "tp_dst")):
        if name in f and ports:
            v, m = f.pop(name)
            size = 1 if proto in (1, 58) else 2
            out.append(_tlv(ports[i], size, v, (1 << 8 * size) - 1, (1 << 8 * size) - 1))
    for name, fld in (("arp_sha", 24), ("arp_tha", 25)):
        if name in f:
            v, m = f.pop(name)
            out.append(_tlv(fld, 6, v, m, FULL[name]))
    for name, fld in (("ipv6_src", 26), ("ipv6_dst", 27)):
        if name in f:
            v, m = f.pop(name)
            out.append(_tlv(fld, 16, v, m, FULL[name]))
    if "tcp_flags" in f:
        v, m = f.pop("tcp_flags")
        masked = m != 0xFFFF
        body = ONF_EXPERIMENTER.to_bytes(4, "big") + v.to_bytes(2, "big") + (m.to_bytes(2, "big") if masked else b"")
        out.append(struct.pack("!HBB", OXM_EXPERIMENTER, ONF_TCP_FLAGS << 1 | masked, len(body)) + body)
    for nfld, (name, size) in NXM_FIELDS.items():
        if name in f:
            v, m = f.pop(name)
            out.append(_tlv(nfld, size, v, m, (1 << 8 * size) - 1, cls=0x0001))
    if f:
        raise ValueError(f"cannot express {', '.join(f)} as OXM")
    return b"".join(out)


def encode_match(match: Match, extra: bytes = b"") -> bytes:
    """An ofp_match (type OXM), padded to 8 bytes."""
    body = extra + oxms_of_match(match)
    n = 4 + len(body)
    return struct.pack("!HH", 1, n) + body + bytes((-n) % 8)


# --- instructions and actions -------------------------------------------------------------------------------


def _check_instructions(raw: bytes, off: int) -> None:
    """Walk the instruction list by its lengths before pyof does, so a bad one gets the right error."""
    p = off
    while p < len(raw):
        if p + 4 > len(raw):
            raise OfError(ET.BAD_INSTRUCTION, BIC_BAD_LEN, "truncated instruction")
        itype, ilen = struct.unpack_from("!HH", raw, p)
        if ilen < 8 or ilen % 8 or p + ilen > len(raw):
            raise OfError(ET.BAD_INSTRUCTION, BIC_BAD_LEN, f"instruction length {ilen}")
        if itype in (3, 4):
            _check_actions(raw, p + 8, p + ilen)
        elif itype == 1:
            if ilen != 8:
                raise OfError(ET.BAD_INSTRUCTION, BIC_BAD_LEN, "goto_table is 8 bytes")
        elif itype == 5:
            pass
        elif itype in (2, 6):
            raise OfError(ET.BAD_INSTRUCTION, BIC_UNSUP_INST,
                          {2: "write_metadata", 6: "meter"}[itype] + " is not supported")
        elif itype == 0xFFFF:
            raise OfError(ET.BAD_INSTRUCTION, BIC_UNSUP_INST, "experimenter instructions are not supported")
        else:
            raise OfError(ET.BAD_INSTRUCTION, BIC_UNKNOWN_INST, f"instruction type {itype}")
        p += ilen


ACTION_SIZES = {0: 16, 11: 8, 12: 8, 15: 8, 16: 8, 17: 8, 18: 8, 19: 8, 20: 8, 21: 8, 22: 8, 23: 8, 24: 8,
                26: 8, 27: 8}


def _check_actions(raw: bytes, off: int, end: int) -> None:
    p = off
    while p < end:
        if p + 4 > end:
            raise OfError(ET.BAD_ACTION, BAC_BAD_LEN, "truncated action")
        atype, alen = struct.unpack_from("!HH", raw, p)
        if alen < 8 or alen % 8 or p + alen > end:
            raise OfError(ET.BAD_ACTION, BAC_BAD_LEN, f"action length {alen}")
        want = ACTION_SIZES.get(atype)
        if want is not None and alen != want:
            raise OfError(ET.BAD_ACTION, BAC_BAD_LEN, f"action type {atype} is {want} bytes, got {alen}")
        if atype == 25:
            if alen < 16:
                raise OfError(ET.BAD_ACTION, BAC_BAD_LEN, "set_field too short")
        elif atype == 0xFFFF:
            vendor = int.from_bytes(raw[p + 4: p + 8], "big")
            sub = int.from_bytes(raw[p + 8: p + 10], "big") if alen >= 16 else -1
            if vendor != NX_VENDOR or sub not in (NXAST_RESUBMIT, NXAST_RESUBMIT_TABLE) or alen != 16:
                raise OfError(ET.BAD_ACTION, BAC_BAD_EXPERIMENTER, f"experimenter action {vendor:#x}/{sub}")
        elif atype not in ACTION_SIZES:
            raise OfError(ET.BAD_ACTION, BAC_BAD_TYPE, f"action type {atype}")
        p += alen


def _instructions(insts: Iterable[Any]) -> list[of.OfAction]:
    out: list[of.OfAction] = []
    goto: of.GotoTable | None = None
    seen: set[int] = set()
    for ins in insts:
        itype = _int(ins.instruction_type)
        if itype in seen:
            raise OfError(ET.BAD_INSTRUCTION, BIC_UNSUP_INST, f"instruction type {itype} twice")
        seen.add(itype)
        if itype == 4:
            out.extend(_actions(ins.actions))
        elif itype == 1:
            tid = int(ins.table_id)
            if tid >= of.N_TABLES:
                raise OfError(ET.BAD_INSTRUCTION, BIC_BAD_TABLE_ID, f"goto_table {tid}")
            goto = of.GotoTable(tid)
        elif itype == 3:
            if list(ins.actions):
                raise OfError(ET.BAD_INSTRUCTION, BIC_UNSUP_INST, "write_actions (action sets) are not supported")
        elif itype == 5:
            pass  # clear_actions: there is never an action set to clear
    return out + ([goto] if goto else [])


def port_action(port: int, max_len: int = OFPCML_NO_BUFFER) -> of.OfAction:
    """The action an output to an OpenFlow port number means (reserved ports included)."""
    special: dict[int, of.OfAction] = {OFPP_IN_PORT: of.InPort(), OFPP_FLOOD: of.Flood(), OFPP_ALL: of.Flood(all=True),
                                       OFPP_NORMAL: of.Normal(), OFPP_TABLE: of.Table(),
                                       OFPP_CONTROLLER: of.Controller(max_len)}
    if port in special:
        return special[port]
    if not 0 < port < 0xFF00:
        raise OfError(ET.BAD_ACTION, BAC_BAD_OUT_PORT, f"output to port {port:#x}")
    return of.Output(port)


def _actions(acts: Iterable[Any]) -> list[of.OfAction]:
    out: list[of.OfAction] = []
    for a in acts:
        t = _int(a.action_type)
        if t == 0:
            out.append(port_action(int(a.port), int(a.max_length)))
        elif t == 17:
            tpid = int(a.ethertype)
            if tpid not in (0x8100, 0x88A8):
                raise OfError(ET.BAD_ACTION, BAC_BAD_ARGUMENT, f"push_vlan ethertype {tpid:#x}")
            out.append(of.PushVlan(tpid))
        elif t == 18:
            out.append(of.StripVlan())
        elif t == 24:
            out.append(of.DecTtl())
        elif t == 25:
            out.append(_set_field(a.field))
        elif t == 22:
            raise OfError(ET.BAD_ACTION, BAC_BAD_OUT_GROUP, "groups are not supported")
        elif t == 0xFFFF:
            out.append(_nx_action(a))
        else:
            raise OfError(ET.BAD_ACTION, BAC_BAD_TYPE, f"action type {t} is not supported")
    return out


def _nx_action(a: Any) -> of.OfAction:
    raw = getattr(a, "body", b"")
    body = bytes(getattr(raw, "value", raw) or b"")
    # experimenter payload after the vendor id: subtype(2) in_port(2) table(1) pad(3)
    if len(body) < 8:
        raise OfError(ET.BAD_ACTION, BAC_BAD_LEN, "Nicira action too short")
    sub, port, table = struct.unpack_from("!HHB", body, 0)
    p = None if port == 0xFFF8 else port
    if sub == NXAST_RESUBMIT:
        return of.Resubmit(p, None)
    return of.Resubmit(p, None if table == 0xFF else table)


SET_FIELD_OXM = {3: "eth_dst", 4: "eth_src", 6: "vlan_vid", 7: "vlan_pcp", 8: "ip_dscp", 11: "ip_src", 12: "ip_dst",
                 13: "tcp_src", 14: "tcp_dst", 15: "udp_src", 16: "udp_dst", 26: "ipv6_src", 27: "ipv6_dst"}


def _set_field(tlv: OxmTLV) -> of.SetField:
    cls = _int(tlv.oxm_class)
    fld = _int(tlv.oxm_field)
    val = bytes(getattr(tlv.oxm_value, "value", tlv.oxm_value))
    if cls != 0x8000 or fld not in SET_FIELD_OXM:
        raise OfError(ET.BAD_ACTION, BAC_BAD_SET_TYPE, f"set_field on OXM {cls:#x}:{fld}")
    if tlv.oxm_hasmask:
        raise OfError(ET.BAD_ACTION, BAC_BAD_SET_ARGUMENT, "set_field with a mask")
    name = SET_FIELD_OXM[fld]
    size = OXM_FIELDS[fld][1]
    if len(val) != size:
        raise OfError(ET.BAD_ACTION, BAC_BAD_LEN, f"set_field {name}: {len(val)} bytes")
    v = int.from_bytes(val, "big")
    if size == 6:
        text = mac_str(val)
    elif name in ("ip_src", "ip_dst"):
        text = str(ipaddress.IPv4Address(v))
    elif name in ("ipv6_src", "ipv6_dst"):
        text = str(ipaddress.IPv6Address(v))
    elif name == "vlan_vid":
        text = str(v & 0x0FFF | OFPVID_PRESENT)
    else:
        text = str(v)
    try:
        return of.parse_set_field(name, text)
    except ValueError as e:
        raise OfError(ET.BAD_ACTION, BAC_BAD_SET_ARGUMENT, str(e)) from None


def encode_actions(actions: Sequence[of.OfAction]) -> bytes:
    """Our actions (goto_table excluded) as ofp_action structures."""
    out = []
    for a in actions:
        if isinstance(a, of.Output):
            out.append(struct.pack("!HHIH6x", 0, 16, a.port, 0))
        elif isinstance(a, of.Controller):
            out.append(struct.pack("!HHIH6x", 0, 16, OFPP_CONTROLLER, a.max_len))
        elif isinstance(a, of.InPort | of.Flood | of.Normal | of.Table):
            port = {of.InPort: OFPP_IN_PORT, of.Normal: OFPP_NORMAL, of.Table: OFPP_TABLE}.get(type(a))
            if isinstance(a, of.Flood):
                port = OFPP_ALL if a.all else OFPP_FLOOD
            out.append(struct.pack("!HHIH6x", 0, 16, port, 0))
        elif isinstance(a, of.PushVlan):
            out.append(struct.pack("!HHH2x", 17, 8, a.tpid))
        elif isinstance(a, of.StripVlan):
            out.append(struct.pack("!HH4x", 18, 8))
        elif isinstance(a, of.DecTtl):
            out.append(struct.pack("!HH4x", 24, 8))
        elif isinstance(a, of.SetField):
            out.append(_encode_set_field(a))
        elif isinstance(a, of.Resubmit):
            port = 0xFFF8 if a.port is None else a.port
            table = 0xFF if a.table is None else a.table
            out.append(struct.pack("!HHIHHB3x", 0xFFFF, 16, NX_VENDOR, NXAST_RESUBMIT_TABLE, port, table))
    return b"".join(out)


def _encode_set_field(a: of.SetField) -> bytes:
    if a.field == "vlan_tci" and a.mask == 0x0FFF:
        tlv = _tlv(6, 2, a.value | OFPVID_PRESENT, 0x1FFF, 0x1FFF)
    elif a.field == "vlan_tci":
        tlv = _tlv(7, 1, a.value >> 13, 7, 7)
    elif a.field == "nw_tos":
        tlv = _tlv(8, 1, a.value >> 2, 0x3F, 0x3F)
    else:
        fld = {"dl_dst": 3, "dl_src": 4, "nw_src": 11, "nw_dst": 12, "ipv6_src": 26, "ipv6_dst": 27,
               "tp_src": 13, "tp_dst": 14}[a.field]
        if a.field in ("tp_src", "tp_dst") and a.name.startswith("udp"):
            fld += 2
        size = OXM_FIELDS[fld][1]
        tlv = _tlv(fld, size, a.value, (1 << 8 * size) - 1, (1 << 8 * size) - 1)
    n = 4 + len(tlv)
    return struct.pack("!HH", 25, n + (-n) % 8) + tlv + bytes((-n) % 8)


def encode_instructions(actions: Sequence[of.OfAction]) -> bytes:
    body = [a for a in actions if not isinstance(a, of.GotoTable)]
    out = b""
    if body:
        acts = encode_actions(body)
        out += struct.pack("!HH4x", 4, 8 + len(acts)) + acts
    goto = next((a for a in actions if isinstance(a, of.GotoTable)), None)
    if goto is not None:
        out += struct.pack("!HHB3x", 1, 8, goto.table)
    return out


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


_PIN_METADATA = _tlv(2, 8, 0, (1 << 64) - 1, (1 << 64) - 1)


def packet_in(buffer_id: int, total_len: int, reason: int, table_id: int, cookie: int, in_port: int,
              data: bytes) -> bytes:
    """PACKET_IN whose match carries OXM in_port (and metadata, which this pipeline keeps at 0). Packed here,
    not by pyof: it is sent per slow-path packet, and pyof takes about 600 us to pack one."""
    oxm = _tlv(0, 4, in_port, 0xFFFFFFFF, 0xFFFFFFFF) + _PIN_METADATA
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
_ACTIONS = (0, 17, 18, 24, 25)            # output, push_vlan, pop_vlan, dec_nw_ttl, set_field
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


__all__ = ["ET", "MP", "OFP_VERSION", "Framer", "OfError", "T", "decode"]
