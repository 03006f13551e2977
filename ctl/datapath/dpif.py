"""The datapath interface: datapath actions, their encoding into ``struct mf_entry``, flows and counters.

Pure logic, no bcc: ``ctl/datapath/dpif_xdp.py`` (the only bcc importer) uses it to write the maps, and the unit
tier tests it alone. Names follow OVS's dpif: a megaflow is a datapath flow with a mask; its actions are
datapath actions, printed the way ``ovs-dpctl dump-flows`` prints them.

``struct dp_action`` (xdp/dp_structs.h) is 24 bytes: ``__u16 type; __be16 arg16; __u32 arg32;
__u8 data[16]``, and ``struct mf_entry`` is ``__u32 gen; __u16 n_actions; __u16 pad;`` followed by
``MF_MAX_ACTIONS`` actions.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

from ctl.datapath.flowkey import FLOW_KEY_SIZE, FlowKey, format_key, mac_bytes, mac_str, mf_hash, mf_seed

ACTION_SIZE = 24
ENTRY_HEADER = struct.Struct("<IHBB")  # gen, n_actions, mask_id, flags (MF_F_*)
MF_F_SIMPLE = 1                     # struct mf_entry flags: a simple-match megaflow (is_simple_match)
MF_SIMPLE_WAYS = 4                  # dp_consts.h: simple-match megaflows per ingress port (mf_simple)


class ActType(enum.IntEnum):
    """enum dp_action_type: stable numbers."""

    NONE = 0
    OUTPUT = 1
    GROUP = 2
    FLOOD = 3
    DROP = 4
    UPCALL = 5
    SET_ETH_SRC = 6
    SET_ETH_DST = 7
    PUSH_VLAN = 8
    POP_VLAN = 9
    SET_VLAN = 10
    SET_IPV4_SRC = 11
    SET_IPV4_DST = 12
    SET_IP_DSCP = 13
    DEC_TTL = 14
    SET_IPV6_SRC = 15
    SET_IPV6_DST = 16
    SET_TP_SRC = 17
    SET_TP_DST = 18
    SELECT = 19
    METER = 20


class Stat(enum.IntEnum):
    """enum dp_stat: the first four partition every packet."""

    EMC_HIT = 0
    MF_HIT = 1
    MISS = 2
    LOST = 3
    MASK_LOOKUPS = 4
    HINT_HIT = 5
    EMC_INSERT = 6
    EMC_SKIP = 7
    SIMPLE_HIT = 8


class DropReason(enum.IntEnum):
    """enum dp_drop_reason: stable numbers, never renumbered."""

    NONE = 0
    ACTION = 1
    TTL_EXPIRED = 2
    NO_PORT = 3
    BAD_ACTION = 4
    UNSUPPORTED = 5
    UNKNOWN_INGRESS = 6
    NO_UPCALL_SOCKET = 7
    ADJUST_FAILED = 8
    NO_PROGRAM = 9
    CONTROLLER = 10
    METER = 11
    UPCALL_LIMIT = 12


class ActionError(ValueError):
    """An action list the fast path cannot run."""


class MapFull(RuntimeError):
    """A fast-path map (or the mask, flow or group space) is full; nothing was installed."""


class GroupsFull(MapFull):
    """Every output group is in use: a multi-port output cannot run in the fast path now."""


# --- actions ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DpOutput:
    port: int

    def __str__(self) -> str:
        return str(self.port)


@dataclass(frozen=True)
class DpFlood:
    def __str__(self) -> str:
        return "flood"


@dataclass(frozen=True)
class DpDrop:
    reason: int = 0  # a DropReason to count it under; 0: DropReason.ACTION

    def __str__(self) -> str:
        return f"drop({DropReason(self.reason).name.lower()})" if self.reason else "drop"


PACKET_IN_REASONS = {0: "no_match", 1: "action", 2: "invalid_ttl"}


@dataclass(frozen=True)
class DpController:
    """Send the packet, as it is at this point, to the controllers as a PACKET_IN (OVS: the userspace
    action's controller cookie). The fast path never runs it: a megaflow with it goes to the slow path.
    max_len -1: the connection's miss_send_len (a table-miss without a flow)."""

    reason: int = 1                      # OFPR_ACTION; 0 OFPR_NO_MATCH
    max_len: int = 0xFFFF
    table_id: int = 0
    cookie: int = 0xFFFFFFFFFFFFFFFF
    pipeline: tuple[tuple[str, int], ...] = ()   # metadata and registers that are not zero (the PACKET_IN's match)

    def __str__(self) -> str:
        why = PACKET_IN_REASONS.get(self.reason, str(self.reason))
        ml = "miss_send_len" if self.max_len < 0 else str(self.max_len)
        extra = "".join(f",{f}={v:#x}" for f, v in self.pipeline)
        return f"controller(reason={why},max_len={ml},table={self.table_id},cookie={self.cookie:#x}{extra})"


@dataclass(frozen=True)
class DpUpcall:
    def __str__(self) -> str:
        return "userspace"


@dataclass(frozen=True)
class DpSetEthSrc:
    mac: str

    def __str__(self) -> str:
        return f"set(eth(src={self.mac}))"


@dataclass(frozen=True)
class DpSetEthDst:
    mac: str

    def __str__(self) -> str:
        return f"set(eth(dst={self.mac}))"


@dataclass(frozen=True)
class DpPushVlan:
    vid: int
    pcp: int = 0
    tpid: int = 0x8100

    def __str__(self) -> str:
        tpid = "" if self.tpid == 0x8100 else f"tpid={self.tpid:#x},"
        return f"push_vlan({tpid}vid={self.vid},pcp={self.pcp})"


@dataclass(frozen=True)
class DpPopVlan:
    def __str__(self) -> str:
        return "pop_vlan"


@dataclass(frozen=True)
class DpSetVlan:
    vid: int
    pcp: int = 0

    def __str__(self) -> str:
        return f"set(vlan(vid={self.vid},pcp={self.pcp}))"


@dataclass(frozen=True)
class DpSetIpv4Src:
    addr: str

    def __str__(self) -> str:
        return f"set(ipv4(src={self.addr}))"


@dataclass(frozen=True)
class DpSetIpv4Dst:
    addr: str

    def __str__(self) -> str:
        return f"set(ipv4(dst={self.addr}))"


@dataclass(frozen=True)
class DpSetDscp:
    dscp: int

    def __str__(self) -> str:
        return f"set(ip(dscp={self.dscp}))"


@dataclass(frozen=True)
class DpDecTtl:
    def __str__(self) -> str:
        return "dec_ttl"


@dataclass(frozen=True)
class DpSetIpv6Src:
    addr: str

    def __str__(self) -> str:
        return f"set(ipv6(src={self.addr}))"


@dataclass(frozen=True)
class DpSetIpv6Dst:
    addr: str

    def __str__(self) -> str:
        return f"set(ipv6(dst={self.addr}))"


@dataclass(frozen=True)
class DpSetTpSrc:
    port: int

    def __str__(self) -> str:
        return f"set(l4(src={self.port}))"


@dataclass(frozen=True)
class DpSetTpDst:
    port: int

    def __str__(self) -> str:
        return f"set(l4(dst={self.port}))"


def _lse_str(lse: int) -> str:
    return f"label={lse >> 12},tc={lse >> 9 & 7},ttl={lse & 0xFF},bos={lse >> 8 & 1}"


@dataclass(frozen=True)
class DpPushMpls:
    """Insert an MPLS label stack entry after the Ethernet header (and its VLAN tag): the slow path only."""

    ethertype: int
    lse: int

    def __str__(self) -> str:
        return f"push_mpls({_lse_str(self.lse)},eth_type={self.ethertype:#x})"


@dataclass(frozen=True)
class DpPopMpls:
    """Remove the top MPLS label stack entry; the frame's Ethernet type becomes ethertype: the slow path only."""

    ethertype: int

    def __str__(self) -> str:
        return f"pop_mpls(eth_type={self.ethertype:#x})"


@dataclass(frozen=True)
class DpSetMpls:
    """Rewrite the top MPLS label stack entry: the slow path only."""

    lse: int

    def __str__(self) -> str:
        return f"set(mpls({_lse_str(self.lse)}))"


@dataclass(frozen=True)
class DpSetField:
    """A rewrite the fast path has no action for (ECN, SCTP ports with their CRC32c, ICMP type and code, ARP
    fields, IPv6 flow label, the IP TTL): the slow path only. name is one of USER_SET_FIELDS."""

    name: str
    value: int

    def __str__(self) -> str:
        return f"set({self.name}={self.value:#x})"


USER_SET_FIELDS = ("ecn", "sctp_src", "sctp_dst", "icmp_type", "icmp_code", "arp_op", "arp_spa", "arp_tpa",
                   "arp_sha", "arp_tha", "ipv6_label", "nw_ttl", "nd_target", "nd_sll", "nd_tll")


@dataclass(frozen=True)
class DpMeter:
    """Put the packet through a meter (OpenFlow 1.3's meter instruction): the token buckets of dp_meters[slot]
    let it pass, drop it (DropReason.METER) or raise its DSCP's drop precedence. meter_id: for people (-1 when
    read back from the datapath)."""

    slot: int
    meter_id: int = -1

    def __str__(self) -> str:
        return f"meter({self.meter_id if self.meter_id >= 0 else 'slot ' + str(self.slot)})"


def remark_dscp(dscp: int, prec: int) -> int:
    """A meter's dscp_remark band (xdp/actions.h act_dscp_remark): an AF DSCP with its drop precedence raised by
    prec, at most to 3 (AF21, 18, becomes AF22, 20); any other DSCP as it is."""
    cls, drop = dscp >> 3, (dscp >> 1) & 3
    if not 1 <= cls <= 4 or not drop or dscp & 1:
        return dscp
    return cls << 3 | min(drop + prec, 3) << 1


SELECT_MAX_BUCKETS = 5  # DP_SELECT_MAX_BUCKETS: a select group with more buckets takes the slow path
BUCKET_SLOTS = 4096     # DP_BUCKET_SLOTS: the fast path's per-bucket counters
MAX_METERS = 1024       # DP_MAX_METERS
METER_MAX_BANDS = 4     # DP_METER_MAX_BANDS


@dataclass(frozen=True)
class DpSelect:
    """A select group: each packet goes through one bucket, the one select_bucket() picks from select_hash() of
    the packet as it came in, so every packet of a connection takes the same bucket and a megaflow need not
    match the hashed fields. buckets: (bucket number in the group, weight, the bucket's actions) for every bucket
    in order (one without a weight is never picked). Each bucket runs on its own copy of the packet;
    stats_base + bucket number is the bucket's counter slot (-1: none)."""

    group_id: int
    stats_base: int
    buckets: tuple[tuple[int, int, tuple[Action, ...]], ...]

    def thresholds(self) -> list[int]:
        """The fast path's bucket bounds: bucket i takes the hashes h % 0xFFFF below thresholds()[i]."""
        total = sum(w for _, w, _ in self.buckets)
        out, cum = [], 0
        for _, w, _ in self.buckets:
            cum += w
            out.append(cum * 0xFFFF // total)
        return out

    def pick(self, h: int) -> tuple[int, int, tuple[Action, ...]]:
        """The bucket a packet with select hash h goes through (as xdp/actions.h's act_select)."""
        v = h % 0xFFFF
        for b, t in zip(self.buckets, self.thresholds(), strict=True):
            if v < t:
                return b
        raise ValueError("no bucket has a weight")

    def __str__(self) -> str:
        inner = ",".join(f"bucket{i}(weight={w}):{format_actions(acts)}" for i, w, acts in self.buckets if w)
        return f"select(group={self.group_id},{inner})"


Action = (
    DpOutput | DpFlood | DpDrop | DpController | DpUpcall | DpSetEthSrc | DpSetEthDst | DpPushVlan | DpPopVlan
    | DpSetVlan | DpSetIpv4Src | DpSetIpv4Dst | DpSetDscp | DpDecTtl | DpSetIpv6Src | DpSetIpv6Dst | DpSetTpSrc
    | DpSetTpDst | DpPushMpls | DpPopMpls | DpSetMpls | DpSetField | DpSelect | DpMeter
)
TERMINAL = (DpOutput, DpFlood, DpDrop, DpUpcall, DpSelect)
# user space runs them (ctl/datapath/execute.py), XDP does not
SLOW_PATH_ONLY = (DpPushMpls, DpPopMpls, DpSetMpls, DpSetField)


def format_actions(actions: Sequence[Action]) -> str:
    return ",".join(str(a) for a in actions) if actions else "drop"


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ActionError(msg)


def fast_path_error(actions: Sequence[Action]) -> str:
    """Why the fast path cannot run actions, or "" when it can. It emits a packet once, so modifications
    come first and one output step ends the list: outputs only (one port, or a group of ports), or one
    flood, userspace or drop. Packets for the controller always take the slow path."""
    acts = list(actions)
    user = None
    for a in acts:
        if isinstance(a, DpSelect):
            for _, _, bacts in a.buckets:
                why = fast_path_error(bacts)
                if why:
                    return f"a bucket of select group {a.group_id}: {why}"
                if sum(isinstance(x, DpOutput) for x in bacts) > 1:
                    return f"a bucket of select group {a.group_id} outputs to several ports"
            if len(a.buckets) > SELECT_MAX_BUCKETS:
                return (f"select group {a.group_id} has {len(a.buckets)} buckets with a weight; the fast path picks "
                        f"from at most {SELECT_MAX_BUCKETS}")
            if a.stats_base < 0:
                return f"select group {a.group_id} has no bucket counters in the fast path"
        if isinstance(a, DpController):
            return "it sends packets to the controller"
        if user is None and isinstance(a, SLOW_PATH_ONLY):
            user = a
    if isinstance(user, DpSetField):
        return f"the fast path has no action for {user}: user space rewrites it"
    if user is not None:
        return "MPLS push, pop and rewrite run in user space"
    for i, a in enumerate(acts):
        if isinstance(a, TERMINAL):
            rest = acts[i + 1 :]
            if isinstance(a, DpOutput):
                if not all(isinstance(r, DpOutput) for r in rest):
                    return (f"'{format_actions(rest)}' after an output: the fast path emits a packet once, so "
                            "modifications must come before the outputs")
            elif isinstance(a, DpSelect) and rest:
                return f"'{format_actions(rest)}' after a select group: the fast path emits a packet once"
            elif rest:
                return f"'{format_actions(rest)}' after '{a}': nothing may follow it"
            break
    return ""


def encode_actions(
    actions: Sequence[Action], *, max_actions: int, max_port: int, group_for: Callable[[frozenset[int]], int]
) -> list[bytes]:
    """Encode an action list into ``struct dp_action`` records.

    The fast path emits a packet once, so modifications come first and one terminal action ends the
    list: an output, several outputs (a group: the same bytes to each port, the ingress port excluded),
    flood, userspace or drop. Anything else raises ActionError naming the problem (fast_path_error)."""
    acts = list(actions)
    err = fast_path_error(acts)
    _check(not err, err)
    recs: list[bytes] = []
    for i, a in enumerate(acts):
        if isinstance(a, TERMINAL):
            rest = acts[i + 1 :]
            if isinstance(a, DpOutput):
                ports = [a.port] + [r.port for r in rest if isinstance(r, DpOutput)]
                for p in ports:
                    _check(0 < p < max_port, f"output port {p} is out of range 1..{max_port - 1}")
                if len(set(ports)) == 1:
                    recs.append(_rec(ActType.OUTPUT, arg16=struct.pack("!H", ports[0])))
                else:
                    g = group_for(frozenset(ports))
                    recs.append(_rec(ActType.GROUP, arg32=struct.pack("<I", g)))
            elif isinstance(a, DpDrop):
                recs.append(_rec(ActType.DROP, arg16=struct.pack("!H", a.reason)))
            elif isinstance(a, DpSelect):
                recs.extend(_encode_select(a, max_port, group_for, len(recs)))
            else:
                recs.append(_rec({DpFlood: ActType.FLOOD, DpUpcall: ActType.UPCALL}[type(a)]))
            break
        recs.append(_encode_mod(a))
    _check(len(recs) <= max_actions, f"{len(recs)} datapath actions; the fast path runs at most {max_actions}")
    return recs


def _encode_select(a: DpSelect, max_port: int, group_for: Callable[[frozenset[int]], int], at: int) -> list[bytes]:
    """DP_ACT_SELECT (record number at), then each bucket's records: modifications and one terminal action.
    arg32: the first bucket counter slot (bucket i counts at slot + i); data[0]: the number of buckets; bucket i:
    data[1 + 3i] a u16 threshold (little-endian), data[3 + 3i] the index of its first record. A bucket without a
    weight is never picked and has no records."""
    _check(0 <= a.stats_base and a.stats_base + len(a.buckets) <= BUCKET_SLOTS,
           f"bucket counter slot {a.stats_base} is out of range")
    _check(len(a.buckets) <= SELECT_MAX_BUCKETS, f"{len(a.buckets)} buckets; the fast path picks from at most "
           f"{SELECT_MAX_BUCKETS}")
    segs: list[bytes] = []
    data = bytearray(16)
    start = at + 1
    data[0] = len(a.buckets)
    for n, ((i, w, acts), t) in enumerate(zip(a.buckets, a.thresholds(), strict=True)):
        _check(i == n, "select buckets are listed by their number, every one of them")
        seg: list[bytes] = []
        if w:
            seg = encode_actions(list(acts) or [DpDrop(0)], max_actions=64, max_port=max_port, group_for=group_for)
            if not any(isinstance(x, TERMINAL) for x in acts):
                seg.append(_rec(ActType.DROP))
        struct.pack_into("<HB", data, 1 + 3 * n, t, start if w else 0)
        segs += seg
        start += len(seg)
    return [_rec(ActType.SELECT, arg32=struct.pack("<I", a.stats_base), data=bytes(data))] + segs


def _rec(t: ActType, arg16: bytes = b"\0\0", arg32: bytes = b"\0\0\0\0", data: bytes = b"") -> bytes:
    return struct.pack("<H2s4s16s", t, arg16, arg32, data)


def _vid_pcp(vid: int, pcp: int) -> bytes:
    _check(0 <= vid <= 4095, f"VLAN id {vid} is out of range 0..4095")
    _check(0 <= pcp <= 7, f"VLAN PCP {pcp} is out of range 0..7")
    return struct.pack("!H", (pcp << 13) | vid)


def _ip4(addr: str) -> bytes:
    try:
        return ipaddress.IPv4Address(addr).packed
    except ValueError as e:
        raise ActionError(str(e)) from None


def _ip6(addr: str) -> bytes:
    try:
        return ipaddress.IPv6Address(addr).packed
    except ValueError as e:
        raise ActionError(str(e)) from None


def _mac(text: str) -> bytes:
    try:
        return mac_bytes(text)
    except ValueError as e:
        raise ActionError(str(e)) from None


def _port16(port: int) -> bytes:
    _check(0 <= port <= 65535, f"L4 port {port} is out of range 0..65535")
    return struct.pack("!H", port)


def _encode_mod(a: Action) -> bytes:
    if isinstance(a, DpSetEthSrc):
        return _rec(ActType.SET_ETH_SRC, data=_mac(a.mac))
    if isinstance(a, DpSetEthDst):
        return _rec(ActType.SET_ETH_DST, data=_mac(a.mac))
    if isinstance(a, DpPushVlan):
        _check(a.tpid in (0x8100, 0x88A8), f"VLAN TPID {a.tpid:#x} is not 0x8100 or 0x88a8")
        return _rec(ActType.PUSH_VLAN, arg16=_vid_pcp(a.vid, a.pcp), arg32=struct.pack("<I", a.tpid))
    if isinstance(a, DpPopVlan):
        return _rec(ActType.POP_VLAN)
    if isinstance(a, DpSetVlan):
        return _rec(ActType.SET_VLAN, arg16=_vid_pcp(a.vid, a.pcp))
    if isinstance(a, DpSetIpv4Src):
        return _rec(ActType.SET_IPV4_SRC, arg32=_ip4(a.addr))
    if isinstance(a, DpSetIpv4Dst):
        return _rec(ActType.SET_IPV4_DST, arg32=_ip4(a.addr))
    if isinstance(a, DpSetDscp):
        _check(0 <= a.dscp <= 63, f"DSCP {a.dscp} is out of range 0..63")
        return _rec(ActType.SET_IP_DSCP, arg16=struct.pack("!H", a.dscp))
    if isinstance(a, DpDecTtl):
        return _rec(ActType.DEC_TTL)
    if isinstance(a, DpSetIpv6Src):
        return _rec(ActType.SET_IPV6_SRC, data=_ip6(a.addr))
    if isinstance(a, DpSetIpv6Dst):
        return _rec(ActType.SET_IPV6_DST, data=_ip6(a.addr))
    if isinstance(a, DpSetTpSrc):
        return _rec(ActType.SET_TP_SRC, arg16=_port16(a.port))
    if isinstance(a, DpSetTpDst):
        return _rec(ActType.SET_TP_DST, arg16=_port16(a.port))
    if isinstance(a, DpMeter):
        _check(0 <= a.slot < MAX_METERS, f"meter slot {a.slot} is out of range 0..{MAX_METERS - 1}")
        return _rec(ActType.METER, arg32=struct.pack("<I", a.slot))
    raise ActionError(f"unknown action {a!r}")


_TERMINAL_TYPES = (ActType.OUTPUT, ActType.GROUP, ActType.FLOOD, ActType.DROP, ActType.UPCALL)


def _decode_select(recs: Sequence[bytes], arg32: bytes, data: bytes,
                   ports_of_group: Callable[[int], frozenset[int]]) -> DpSelect:
    """A DP_ACT_SELECT record and its buckets' records back (weights as the thresholds' steps; the group's number
    is not in the datapath: -1)."""
    buckets, prev = [], 0
    for k in range(min(data[0], SELECT_MAX_BUCKETS)):
        thr, st = struct.unpack_from("<HB", data, 1 + 3 * k)
        w, prev = max(thr - prev, 0), max(thr, prev)
        acts: tuple[Action, ...] = ()
        if w:
            end = st
            while end < len(recs) and struct.unpack_from("<H", recs[end])[0] not in _TERMINAL_TYPES:
                end += 1
            acts = tuple(decode_actions(recs[st : end + 1], ports_of_group))
        buckets.append((k, w, acts))
    return DpSelect(-1, struct.unpack("<I", arg32)[0], tuple(buckets))


def decode_actions(recs: Sequence[bytes], ports_of_group: Callable[[int], frozenset[int]]) -> list[Action]:
    out: list[Action] = []
    for r in recs:
        t, arg16, arg32, data = struct.unpack("<H2s4s16s", r)
        a16 = struct.unpack("!H", arg16)[0]
        if t == ActType.SELECT:
            out.append(_decode_select(recs, arg32, data, ports_of_group))
            break
        if t == ActType.OUTPUT:
            out.append(DpOutput(a16))
        elif t == ActType.GROUP:
            out.extend(DpOutput(p) for p in sorted(ports_of_group(struct.unpack("<I", arg32)[0])))
        elif t == ActType.FLOOD:
            out.append(DpFlood())
        elif t == ActType.DROP:
            out.append(DpDrop(a16))
        elif t == ActType.UPCALL:
            out.append(DpUpcall())
        elif t == ActType.SET_ETH_SRC:
            out.append(DpSetEthSrc(mac_str(data[:6])))
        elif t == ActType.SET_ETH_DST:
            out.append(DpSetEthDst(mac_str(data[:6])))
        elif t == ActType.PUSH_VLAN:
            out.append(DpPushVlan(a16 & 0xFFF, a16 >> 13, struct.unpack("<I", arg32)[0]))
        elif t == ActType.POP_VLAN:
            out.append(DpPopVlan())
        elif t == ActType.SET_VLAN:
            out.append(DpSetVlan(a16 & 0xFFF, a16 >> 13))
        elif t == ActType.SET_IPV4_SRC:
            out.append(DpSetIpv4Src(str(ipaddress.IPv4Address(arg32))))
        elif t == ActType.SET_IPV4_DST:
            out.append(DpSetIpv4Dst(str(ipaddress.IPv4Address(arg32))))
        elif t == ActType.SET_IP_DSCP:
            out.append(DpSetDscp(a16))
        elif t == ActType.DEC_TTL:
            out.append(DpDecTtl())
        elif t == ActType.SET_IPV6_SRC:
            out.append(DpSetIpv6Src(str(ipaddress.IPv6Address(data))))
        elif t == ActType.SET_IPV6_DST:
            out.append(DpSetIpv6Dst(str(ipaddress.IPv6Address(data))))
        elif t == ActType.SET_TP_SRC:
            out.append(DpSetTpSrc(a16))
        elif t == ActType.SET_TP_DST:
            out.append(DpSetTpDst(a16))
        elif t == ActType.METER:
            out.append(DpMeter(struct.unpack("<I", arg32)[0]))
    return out


def encode_entry(gen: int, recs: Sequence[bytes], max_actions: int, masked: bytes = bytes(FLOW_KEY_SIZE),
                 mask_id: int = 0, flags: int = 0) -> bytes:
    """struct mf_entry: generation, the action records (padded to max_actions), its subtable, its flags, its masked
    key."""
    body = b"".join(recs) + b"\0" * (ACTION_SIZE * (max_actions - len(recs)))
    return ENTRY_HEADER.pack(gen, len(recs), mask_id, flags) + body + masked


# A simple-match megaflow's mask (xdp/simple_match.h), as integers over the key's bytes: the whole in_port and
# dl_type (_SIMPLE_WANT), at most vlan_tci and nw_frag besides (left out by _SIMPLE_CARE), nothing else
def _byte_mask(offsets: set[int]) -> int:
    return int.from_bytes(bytes(0xFF if i in offsets else 0 for i in range(FLOW_KEY_SIZE)), "big")


_VLAN, _DL_TYPE, _NW_FRAG = FlowKey.vlan_tci.offset, FlowKey.dl_type.offset, FlowKey.nw_frag.offset
_SIMPLE_WANT = _byte_mask({*range(4), _DL_TYPE, _DL_TYPE + 1})      # in_port (bytes 0-3) and dl_type
_SIMPLE_CARE = ~_byte_mask({_VLAN, _VLAN + 1, _NW_FRAG}) & ((1 << 8 * FLOW_KEY_SIZE) - 1)
_SIMPLE_ACTS = frozenset((ActType.OUTPUT, ActType.GROUP, ActType.FLOOD, ActType.DROP))  # they read no parsed field
_SIMPLE_NOT_TYPES = frozenset((0x8100, 0x88A8, 0x86DD))  # tags (the parser reads on), IPv6 (nw_frag needs a walk)


def is_simple_match(masked: bytes, mask: bytes, recs: Sequence[bytes]) -> bool:
    """Whether a megaflow is a simple-match one (struct mf_entry's MF_F_SIMPLE; OVS's
    dp_netdev_flow_is_simple_match): its mask is the whole in_port and dl_type and at most vlan_tci and nw_frag,
    whose masked values are 0; its dl_type is not a VLAN TPID, IPv6 or under 0x600; and its actions read nothing
    the parse sets. Then every untagged packet from in_port with that dl_type that is not an IPv4 fragment matches
    it, which is all the fast path checks (xdp/simple_match.h). Called for every megaflow put: a few integer
    operations, no loop over the key."""
    if len(mask) != FLOW_KEY_SIZE or len(masked) != FLOW_KEY_SIZE:
        return False
    if int.from_bytes(mask, "big") & _SIMPLE_CARE != _SIMPLE_WANT:
        return False
    dl_type = int.from_bytes(masked[_DL_TYPE:_DL_TYPE + 2], "big")
    if masked[_VLAN] or masked[_VLAN + 1] or masked[_NW_FRAG] or dl_type < 0x600 or dl_type in _SIMPLE_NOT_TYPES:
        return False
    return all(struct.unpack_from("<H", r)[0] in _SIMPLE_ACTS for r in recs)


def entry_key_offset(max_actions: int) -> int:
    """Where a struct mf_entry's masked key starts: after its header and max_actions action records."""
    return ENTRY_HEADER.size + ACTION_SIZE * max_actions


def entry_key(raw: bytes, max_actions: int) -> bytes:
    """The masked key at the end of a struct mf_entry."""
    base = entry_key_offset(max_actions)
    return raw[base:base + FLOW_KEY_SIZE]


def decode_entry(raw: bytes) -> tuple[int, list[bytes]]:
    gen, n, _mid, _flags = ENTRY_HEADER.unpack_from(raw)
    base = ENTRY_HEADER.size
    return gen, [raw[base + i * ACTION_SIZE : base + (i + 1) * ACTION_SIZE] for i in range(n)]


def mf_key_bytes(mask_id: int, masked: FlowKey | bytes) -> bytes:
    """A megaflow's identity in user space: its subtable (mask id), zero padding, its masked key."""
    return struct.pack("<II", mask_id, 0) + bytes(masked)


MF_BUCKET_WAYS = 8                      # xdp/dp_consts.h: megaflows per mf_buckets bucket
MF_BUCKET = struct.Struct(f"<{MF_BUCKET_WAYS}I{MF_BUCKET_WAYS}I")  # struct mf_bucket: the tags, then the indexes


def mf_place(fkey: bytes, seed: int, n_buckets: int, words: int) -> tuple[int, int]:
    """Where the megaflow fkey (as mf_key_bytes gives it) sits in mf_buckets: (bucket, tag), as mf_lookup_mask()
    of xdp/megaflow.c computes it from mf_hash_masked() of the masked key, seeded per subtable, over words (the
    words its subtable's mask covers: flowkey.mask_words)."""
    h = mf_hash(fkey[8:], mf_seed(seed, struct.unpack_from("<I", fkey)[0]), words)
    return h & (n_buckets - 1), (h >> 32) | 1


CLOCK_MONOTONIC_COARSE = 6  # the clock of bpf_ktime_get_coarse_ns()


def timens_offset_ns(path: str = "/proc/self/timens_offsets") -> int:
    """How far this process's CLOCK_MONOTONIC is from the kernel's (0 outside a time namespace). BPF's
    bpf_ktime_get_coarse_ns() is never namespaced, so user space adds this back to compare with it."""
    try:
        with open(path) as f:
            for line in f:
                name, secs, nsecs = line.split()
                if name == "monotonic":
                    return int(secs) * 1_000_000_000 + int(nsecs)
    except (OSError, ValueError):
        pass
    return 0


def now_ns() -> int:
    """Now, on the clock the fast path stamps megaflows with (Megaflow.used_ns), even from inside a time
    namespace (a container, or a test that makes the machine look freshly booted)."""
    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE) - _TIMENS_OFFSET_NS


_TIMENS_OFFSET_NS = timens_offset_ns()  # fixed for the life of the process (set when the namespace is made)


@dataclass(frozen=True)
class Clock:
    """The clocks the control plane reads, passed in (never read from a module) so that tests can run them
    from any starting point: nothing may depend on how long the machine has been up."""

    monotonic: Callable[[], float] = time.monotonic  # seconds: rule timeouts, durations, idle times
    now_ns: Callable[[], int] = now_ns                # the fast path's clock: megaflow creation and last use


@dataclass(frozen=True)
class DatapathConfig:
    """Fast-path sizes (compile-time, -D cflags), the EMC insert probability and the simple match (run time)."""

    emc_entries: int = 8192
    emc_insert_inv_prob: int = 100
    simple_match: bool = True   # port-to-port megaflows found with no parse (xdp/simple_match.h)
    max_masks: int = 64
    max_flows: int = 262144
    hint_entries: int = 4096
    max_actions: int = 8
    max_ports: int = 256
    max_queues: int = 16
    vlan_limit: int = 1     # OVS's vlan-limit: VLAN tags parsed, 1 or 2 (0: all the key holds, 2)

    def __post_init__(self) -> None:
        for name in ("emc_entries", "hint_entries", "max_queues"):
            v = getattr(self, name)
            if v <= 0 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        if not 1 <= self.max_masks <= 255:
            raise ValueError(f"max_masks must be in 1..255, got {self.max_masks}")
        if self.max_flows < 1 or self.max_actions < 1 or not 2 <= self.max_ports <= 65536:
            raise ValueError("max_flows, max_actions and max_ports must be positive (max_ports 2..65536)")
        if self.emc_insert_inv_prob < 0:
            raise ValueError("emc_insert_inv_prob must be >= 0 (0 disables EMC inserts)")
        if self.vlan_limit not in (0, 1, 2):
            raise ValueError(f"vlan_limit must be 0, 1 or 2 (the flow key holds two tags), got {self.vlan_limit}")

    @property
    def n_buckets(self) -> int:
        """mf_buckets' size: twice the power of two at or above max_flows. Eight ways each, at most half a
        megaflow per bucket on average: a bucket overflows (its ninth megaflow is refused) about once in 3e8."""
        return 2 << max(0, self.max_flows - 1).bit_length()

    def cflags(self) -> list[str]:
        return [f"-DMF_BUCKETS={self.n_buckets}",
            f"-DEMC_ENTRIES={self.emc_entries}", f"-DMF_MAX_MASKS={self.max_masks}",
            f"-DMF_MAX_FLOWS={self.max_flows}", f"-DMF_HINT_ENTRIES={self.hint_entries}",
            f"-DMF_MAX_ACTIONS={self.max_actions}", f"-DDP_MAX_PORTS={self.max_ports}",
            f"-DDP_MAX_QUEUES={self.max_queues}", f"-DDP_VLAN_LIMIT={self.vlan_limit or 2}",
        ]


# --- what the datapath reports ------------------------------------------------------------------------


@dataclass
class Megaflow:
    key: FlowKey
    mask: FlowKey
    actions: list[Action]
    packets: int = 0
    bytes: int = 0
    used_ns: int = 0  # CLOCK_MONOTONIC_COARSE of the last hit; 0: never
    mask_id: int = -1
    flow_idx: int = -1

    def match(self) -> str:
        return format_key(self.key, self.mask)

    def format(self, now_ns: int) -> str:
        return flow_line(self.match(), self.packets, self.bytes, self.used_ns, format_actions(self.actions), now_ns)


def flow_line(match: str, packets: int, nbytes: int, used_ns: int, actions: str, now_ns: int) -> str:
    """A megaflow as ovs-dpctl dump-flows prints it."""
    used = "never" if not used_ns else f"{max(0, now_ns - used_ns) / 1e9:.3f}s"
    return f"{match}, packets:{packets}, bytes:{nbytes}, used:{used}, actions:{actions}"


@dataclass
class DpStats:
    """The fast path's counters, summed over CPUs (OVS: dpif-netdev/pmd-stats-show)."""

    emc_hits: int = 0
    megaflow_hits: int = 0
    misses: int = 0
    lost: int = 0
    mask_lookups: int = 0
    hint_hits: int = 0
    emc_inserts: int = 0
    emc_skips: int = 0           # packets that did not probe the EMC (off, or sampled out: it thrashed)
    simple_hits: int = 0         # megaflow hits found by the simple match, with no parse (xdp/simple_match.h)
    drops: dict[str, int] = field(default_factory=dict)

    @property
    def packets(self) -> int:
        """Every packet the fast path saw: the four lookup results partition them."""
        return self.emc_hits + self.megaflow_hits + self.misses + self.lost

    @property
    def avg_subtable_lookups(self) -> float:
        """Subtables looked up per megaflow hit (pmd-stats-show's 'avg. subtable lookups per megaflow
        hit'); the lookups that misses spent are included in the numerator."""
        return self.mask_lookups / self.megaflow_hits if self.megaflow_hits else 0.0

    @classmethod
    def from_counters(cls, stats: Sequence[int], drops: Sequence[int]) -> DpStats:
        return cls(
            emc_hits=stats[Stat.EMC_HIT], megaflow_hits=stats[Stat.MF_HIT], misses=stats[Stat.MISS],
            lost=stats[Stat.LOST], mask_lookups=stats[Stat.MASK_LOOKUPS], hint_hits=stats[Stat.HINT_HIT],
            emc_inserts=stats[Stat.EMC_INSERT], emc_skips=stats[Stat.EMC_SKIP],
            simple_hits=stats[Stat.SIMPLE_HIT],
            drops={r.name.lower(): drops[r] for r in DropReason if r != DropReason.NONE and r < len(drops)},
        )

    def delta(self, before: DpStats) -> DpStats:
        counts = {f.name: getattr(self, f.name) - getattr(before, f.name) for f in fields(self) if f.name != "drops"}
        return DpStats(**counts, drops={k: v - before.drops.get(k, 0) for k, v in self.drops.items()})


@dataclass
class PortStats:
    """struct dp_port_stats, summed over CPUs."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    drops: int = 0
    tx_skb_packets: int = 0     # of tx_packets, sent by the skb path (the port does not take XDP redirects)


def rank_masks(in_use: Sequence[int], hits: dict[int, int]) -> list[int]:
    """The subtable visiting order: most recent hits first, ties kept in their current order (as dpcls
    re-sorts its subtables by hit count)."""
    pos = {m: i for i, m in enumerate(in_use)}
    return sorted(in_use, key=lambda m: (-hits.get(m, 0), pos[m]))
