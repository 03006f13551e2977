"""Datapath actions run in user space on one frame (OVS: odp-execute), for upcalls and slow-path flows.

The same actions and the same checksum arithmetic as ``xdp/actions.h`` (incremental RFC 1624 updates),
so a packet leaves identically whichever side ran its actions; ``tests/unit/test_execute.py`` runs the
fast path's own action table through this module. Unlike the fast path, the executor emits the packet at
every output as it is at that point, so changes between outputs work here.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ctl.datapath import dpif
from ctl.datapath.dpif import DropReason
from ctl.datapath.flowkey import FlowKey, mac_bytes, parse_layout, select_hash

FLOOD = -1  # the port of a flooded emission


@dataclass
class Result:
    emits: list[tuple[int, bytes]] = field(default_factory=list)  # (port or FLOOD, frame)
    drop: int = 0               # a DropReason when the packet was dropped (no emission after it)
    controller: list[tuple[dpif.DpController, bytes]] = field(default_factory=list)  # packet-ins, the frame then
    buckets: list[tuple[int, int, int]] = field(default_factory=list)  # (group, bucket, bytes) of select buckets taken


class _Pkt:
    def __init__(self, frame: bytes, layout: tuple[FlowKey, int, int] | None = None) -> None:
        self.b = bytearray(frame)
        self.tagged = False
        self.dl_type = 0
        self.l3 = 0
        self.l4 = 0
        self.proto = 0
        self.layout(layout)

    def layout(self, known: tuple[FlowKey, int, int] | None = None) -> None:
        """Offsets as the parser (ctl/datapath/flowkey.py, the mirror of xdp/parser.h) finds them; known:
        what parse_layout() already said of this very frame (the upcall path parses once)."""
        key, self.l3, self.l4 = known if known is not None else parse_layout(bytes(self.b))
        self.tagged = bool(key.vlan_tci)
        self.dl_type = key.dl_type
        self.proto = key.nw_proto if self.l3 else 0

    def u16(self, off: int) -> int:
        return int(struct.unpack_from("!H", self.b, off)[0])

    def put16(self, off: int, v: int) -> None:
        struct.pack_into("!H", self.b, off, v & 0xFFFF)


def _diff16(old: int, new: int) -> int:
    return (~old & 0xFFFF) + new


def _diff_bytes(old: bytes, new: bytes) -> int:
    return sum(_diff16(int.from_bytes(old[i : i + 2], "big"), int.from_bytes(new[i : i + 2], "big"))
               for i in range(0, len(old), 2))


def _apply(csum: int, diff: int) -> int:
    s = (~csum & 0xFFFF) + diff
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _l4_fix(p: _Pkt, diff: int) -> None:
    if not p.l4:
        return
    if p.proto == 6:
        p.put16(p.l4 + 16, _apply(p.u16(p.l4 + 16), diff))
    elif p.proto == 17:
        c = p.u16(p.l4 + 6)
        if c or p.dl_type == 0x86DD:
            c = _apply(c, diff)
            p.put16(p.l4 + 6, c or 0xFFFF)
    elif p.proto == 58 and p.dl_type == 0x86DD:
        p.put16(p.l4 + 2, _apply(p.u16(p.l4 + 2), diff))


def _set_ipv4(p: _Pkt, off: int, addr: str) -> int:
    if p.dl_type != 0x0800 or not p.l3:
        return DropReason.BAD_ACTION
    new = ipaddress.IPv4Address(addr).packed
    old = bytes(p.b[p.l3 + off : p.l3 + off + 4])
    diff = _diff_bytes(old, new)
    p.b[p.l3 + off : p.l3 + off + 4] = new
    p.put16(p.l3 + 10, _apply(p.u16(p.l3 + 10), diff))
    _l4_fix(p, diff)
    return 0


def _set_ipv6(p: _Pkt, off: int, addr: str) -> int:
    if p.dl_type != 0x86DD or not p.l3:
        return DropReason.BAD_ACTION
    new = ipaddress.IPv6Address(addr).packed
    old = bytes(p.b[p.l3 + off : p.l3 + off + 16])
    p.b[p.l3 + off : p.l3 + off + 16] = new
    _l4_fix(p, _diff_bytes(old, new))
    return 0


def _set_tp(p: _Pkt, off: int, port: int) -> int:
    if not p.l4:
        return DropReason.BAD_ACTION
    if p.proto == 132:
        return DropReason.UNSUPPORTED
    if p.proto not in (6, 17):
        return DropReason.BAD_ACTION
    old = p.u16(p.l4 + off)
    p.put16(p.l4 + off, port)
    _l4_fix(p, _diff16(old, port))
    return 0


def _mpls(p: _Pkt, a: dpif.DpPushMpls | dpif.DpPopMpls | dpif.DpSetMpls) -> int:
    """MPLS push, pop and rewrite at the end of the Ethernet header (after its VLAN tag), as OVS does."""
    b = p.b
    l2 = 18 if p.tagged else 14
    if len(b) < l2:
        return DropReason.BAD_ACTION
    if isinstance(a, dpif.DpPushMpls):
        b[l2:l2] = struct.pack("!I", a.lse)
        p.put16(l2 - 2, a.ethertype)
    else:
        if p.dl_type not in (0x8847, 0x8848) or len(b) < l2 + 4:
            return DropReason.BAD_ACTION
        if isinstance(a, dpif.DpPopMpls):
            del b[l2: l2 + 4]
            p.put16(l2 - 2, a.ethertype)
        else:
            struct.pack_into("!I", b, l2, a.lse)
    p.layout()
    return 0


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _icmp_checksum(p: _Pkt) -> None:
    """ICMP's or ICMPv6's checksum computed again whole (as a sender computes it, so 0 comes out as 0xffff
    never as 0: the frame is byte for byte what the sender would have built)."""
    b = p.b
    if p.dl_type == 0x0800:
        end, pseudo = p.l3 + p.u16(p.l3 + 2), b""
    else:
        end = p.l3 + 40 + p.u16(p.l3 + 4)
        pseudo = bytes(b[p.l3 + 8: p.l3 + 40]) + struct.pack("!IxxxB", end - p.l4, 58)
    p.put16(p.l4 + 2, 0)
    p.put16(p.l4 + 2, ~_ones_sum(pseudo + bytes(b[p.l4: end])) & 0xFFFF)


def _set_nd(p: _Pkt, name: str, v: int) -> int:
    """Neighbor discovery's target, or the address in its first source/target link-layer option."""
    b = p.b
    if not p.l4 or p.proto != 58 or p.dl_type != 0x86DD or len(b) < p.l4 + 24:
        return DropReason.BAD_ACTION
    if name == "nd_target":
        b[p.l4 + 8: p.l4 + 24] = v.to_bytes(16, "big")
    else:
        want, off, end = (1 if name == "nd_sll" else 2), p.l4 + 24, p.l3 + 40 + p.u16(p.l3 + 4)
        while off + 8 <= min(end, len(b)) and b[off + 1]:
            if b[off] == want and b[off + 1] == 1:
                b[off + 2: off + 8] = v.to_bytes(6, "big")
                break
            off += b[off + 1] * 8
        else:
            return DropReason.BAD_ACTION
    _icmp_checksum(p)
    p.layout()
    return 0


def _set_field(p: _Pkt, a: dpif.DpSetField) -> int:
    """The rewrites only user space does, with their checksums (SCTP's CRC32c is computed again whole)."""
    b, n, v = p.b, a.name, a.value
    if n in ("ecn", "nw_ttl"):
        if p.dl_type == 0x0800 and p.l3:
            at = p.l3 if n == "ecn" else p.l3 + 8
            old = p.u16(at)
            if n == "ecn":
                b[p.l3 + 1] = (b[p.l3 + 1] & 0xFC) | (v & 3)
            else:
                b[p.l3 + 8] = v & 0xFF
            p.put16(p.l3 + 10, _apply(p.u16(p.l3 + 10), _diff16(old, p.u16(at))))
        elif p.dl_type == 0x86DD and p.l3:
            if n == "ecn":
                b[p.l3 + 1] = (b[p.l3 + 1] & 0xCF) | ((v & 3) << 4)
            else:
                b[p.l3 + 7] = v & 0xFF
        else:
            return DropReason.BAD_ACTION
    elif n == "ipv6_label":
        if p.dl_type != 0x86DD or not p.l3:
            return DropReason.BAD_ACTION
        b[p.l3 + 1] = (b[p.l3 + 1] & 0xF0) | ((v >> 16) & 0x0F)
        p.put16(p.l3 + 2, v & 0xFFFF)
    elif n in ("icmp_type", "icmp_code"):
        if not p.l4 or p.proto not in (1, 58):
            return DropReason.BAD_ACTION
        b[p.l4 + (0 if n == "icmp_type" else 1)] = v & 0xFF
        _icmp_checksum(p)
    elif n in ("sctp_src", "sctp_dst"):
        if not p.l4 or p.proto != 132:
            return DropReason.BAD_ACTION
        # the CRC covers the SCTP packet, which ends where the IP length says (not at the frame's padding). As
        # OVS's packet_set_sctp_port: new = old ^ crc(before) ^ crc(after), so a wrong checksum stays wrong
        end = p.l3 + p.u16(p.l3 + 2) if p.dl_type == 0x0800 else p.l3 + 40 + p.u16(p.l3 + 4)
        old = int.from_bytes(b[p.l4 + 8: p.l4 + 12], "little")
        b[p.l4 + 8: p.l4 + 12] = b"\0\0\0\0"
        before = crc32c(bytes(b[p.l4: end]))
        p.put16(p.l4 + (0 if n == "sctp_src" else 2), v)
        after = crc32c(bytes(b[p.l4: end]))
        b[p.l4 + 8: p.l4 + 12] = (old ^ before ^ after).to_bytes(4, "little")
    elif n.startswith("nd_"):
        return _set_nd(p, n, v)
    elif n.startswith("arp_"):
        if p.dl_type != 0x0806 or len(b) < (18 if p.tagged else 14) + 28:
            return DropReason.BAD_ACTION
        a0 = 18 if p.tagged else 14
        if n == "arp_op":
            p.put16(a0 + 6, v)
        else:
            off, size = {"arp_sha": (8, 6), "arp_spa": (14, 4), "arp_tha": (18, 6), "arp_tpa": (24, 4)}[n]
            b[a0 + off: a0 + off + size] = v.to_bytes(size, "big")
    else:
        return DropReason.BAD_ACTION
    p.layout()
    return 0


def _one(p: _Pkt, a: dpif.Action) -> int:
    """Apply one modification; a DropReason (non-zero) when it cannot."""
    b = p.b
    if isinstance(a, dpif.DpSetEthSrc | dpif.DpSetEthDst):
        if len(b) < 14:
            return DropReason.BAD_ACTION
        off = 6 if isinstance(a, dpif.DpSetEthSrc) else 0
        b[off : off + 6] = mac_bytes(a.mac)
    elif isinstance(a, dpif.DpPushVlan):
        if len(b) < 14:
            return DropReason.BAD_ACTION
        b[12:12] = struct.pack("!HH", a.tpid, (a.pcp << 13) | a.vid)
        p.layout()
        p.tagged = True
    elif isinstance(a, dpif.DpPopVlan):
        if len(b) < 18 or not p.tagged:
            return DropReason.BAD_ACTION
        del b[12:16]
        p.layout()
    elif isinstance(a, dpif.DpSetVlan):
        if len(b) < 18 or not p.tagged:
            return DropReason.BAD_ACTION
        p.put16(14, (a.pcp << 13) | a.vid)
    elif isinstance(a, dpif.DpSetIpv4Src | dpif.DpSetIpv4Dst):
        return _set_ipv4(p, 12 if isinstance(a, dpif.DpSetIpv4Src) else 16, a.addr)
    elif isinstance(a, dpif.DpSetIpv6Src | dpif.DpSetIpv6Dst):
        return _set_ipv6(p, 8 if isinstance(a, dpif.DpSetIpv6Src) else 24, a.addr)
    elif isinstance(a, dpif.DpSetTpSrc | dpif.DpSetTpDst):
        return _set_tp(p, 0 if isinstance(a, dpif.DpSetTpSrc) else 2, a.port)
    elif isinstance(a, dpif.DpSetDscp):
        if p.dl_type == 0x0800 and p.l3:
            old = p.u16(p.l3)
            b[p.l3 + 1] = (a.dscp << 2) | (b[p.l3 + 1] & 3)
            p.put16(p.l3 + 10, _apply(p.u16(p.l3 + 10), _diff16(old, p.u16(p.l3))))
        elif p.dl_type == 0x86DD and p.l3:
            tc = ((b[p.l3] & 0x0F) << 4) | (b[p.l3 + 1] >> 4)
            tc = (a.dscp << 2) | (tc & 3)
            b[p.l3] = (b[p.l3] & 0xF0) | (tc >> 4)
            b[p.l3 + 1] = (b[p.l3 + 1] & 0x0F) | ((tc << 4) & 0xF0)
        else:
            return DropReason.BAD_ACTION
    elif isinstance(a, dpif.DpPushMpls | dpif.DpPopMpls | dpif.DpSetMpls):
        return _mpls(p, a)
    elif isinstance(a, dpif.DpSetField):
        return _set_field(p, a)
    elif isinstance(a, dpif.DpDecTtl):
        if p.dl_type == 0x0800 and p.l3:
            if b[p.l3 + 8] <= 1:
                return DropReason.TTL_EXPIRED
            old = p.u16(p.l3 + 8)
            b[p.l3 + 8] -= 1
            p.put16(p.l3 + 10, _apply(p.u16(p.l3 + 10), _diff16(old, p.u16(p.l3 + 8))))
        elif p.dl_type == 0x86DD and p.l3:
            if b[p.l3 + 7] <= 1:
                return DropReason.TTL_EXPIRED
            b[p.l3 + 7] -= 1
        else:
            return DropReason.BAD_ACTION
    else:
        return DropReason.BAD_ACTION
    return 0


def transform(frame: bytes, actions: Sequence[dpif.Action]) -> bytes | None:
    """The frame after the modifications among actions (outputs skipped), or None if one cannot apply: what a
    recirculation parses again (OVS: recirc after pop_mpls)."""
    p = _Pkt(frame)
    for a in actions:
        if isinstance(a, dpif.DpOutput | dpif.DpFlood | dpif.DpController | dpif.DpDrop | dpif.DpUpcall):
            continue
        if _one(p, a):
            return None
    return bytes(p.b)


MeterFn = Callable[[int, int], tuple[int, int]]  # (meter slot, bytes) -> (band type, prec_level); (0, 0): passes


def execute(frame: bytes, actions: Sequence[dpif.Action], layout: tuple[FlowKey, int, int] | None = None,
            meter: MeterFn | None = None) -> Result:
    """Run actions on frame. Outputs emit the frame as it is at that point; a failing action or an
    explicit drop ends the run (emissions before it stand). No outputs at all is a drop (reason ACTION).
    layout: ``parse_layout(frame)`` when the caller has it already. meter: the meters' verdicts (None: every
    packet passes)."""
    lay = layout if layout is not None else parse_layout(frame)
    p = _Pkt(frame, lay)
    res = Result()
    _run(p, actions, res, lay[0], meter)
    if not res.emits and not res.controller and not res.drop:
        res.drop = DropReason.ACTION
    return res


def _run(p: _Pkt, actions: Sequence[dpif.Action], res: Result, key: FlowKey, meter: MeterFn | None = None) -> bool:
    """Run actions on p; True when the run ended (a drop: nothing after it runs). key: the packet as it came in
    (a select group hashes it, as the fast path does)."""
    for a in actions:
        if isinstance(a, dpif.DpMeter):
            band, prec = meter(a.slot, len(p.b)) if meter is not None else (0, 0)
            if band == 1:
                res.drop = DropReason.METER
                return True
            if band == 2 and p.l3 and p.dl_type in (0x0800, 0x86DD):
                tos = p.b[p.l3 + 1] if p.dl_type == 0x0800 else ((p.b[p.l3] & 0x0F) << 4) | (p.b[p.l3 + 1] >> 4)
                _one(p, dpif.DpSetDscp(dpif.remark_dscp(tos >> 2, prec)))
            continue
        if isinstance(a, dpif.DpOutput):
            res.emits.append((a.port, bytes(p.b)))
        elif isinstance(a, dpif.DpFlood):
            res.emits.append((FLOOD, bytes(p.b)))
        elif isinstance(a, dpif.DpController):
            res.controller.append((a, bytes(p.b)))
            if a.reason == 2:  # invalid_ttl: the controllers get it, the network does not (OVS's dec_ttl)
                res.drop = DropReason.TTL_EXPIRED
                return True
        elif isinstance(a, dpif.DpSelect):
            if not any(w for _, w, _ in a.buckets):
                continue
            n, _w, bacts = a.pick(select_hash(key))
            res.buckets.append((a.group_id, n, len(p.b)))
            copy = _Pkt(bytes(p.b))
            sub = Result()
            _run(copy, bacts, sub, key, meter)  # a bucket's drop ends the bucket, not the actions after the group
            res.emits += sub.emits
            res.controller += sub.controller
            res.buckets += sub.buckets
            if sub.drop and not sub.emits and not sub.controller and not res.drop:
                res.drop = sub.drop if sub.drop != DropReason.ACTION else 0
        elif isinstance(a, dpif.DpDrop):
            res.drop = a.reason or DropReason.ACTION
            return True
        elif isinstance(a, dpif.DpUpcall):
            res.drop = DropReason.BAD_ACTION
            return True
        else:
            r = _one(p, a)
            if r:
                res.drop = r
                return True
    return False
