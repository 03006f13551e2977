"""OXM: OpenFlow 1.3 matches (basic class, the Nicira fields ovs-ofctl writes, ONF's tcp_flags)
to and from ``ctl.pipeline.ofmatch.Match``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from ctl.datapath.flowkey import FLOW_NW_FRAG_ANY, FLOW_NW_FRAG_LATER, VLAN_CFI
from ctl.openflow.codec.framing import (
    BMC_BAD_FIELD,
    BMC_BAD_LEN,
    BMC_BAD_MASK,
    BMC_BAD_PREREQ,
    BMC_BAD_TYPE,
    BMC_BAD_VALUE,
    BMC_DUP_FIELD,
    ET,
    OFPVID_PRESENT,
    OfError,
)
from ctl.pipeline.ofmatch import ETH_P_ARP, FULL, MPLS_PARTS, SPECS, Match, check_prereqs

# --- matches --------------------------------------------------------------------------------------------

# OXM basic field number -> (our text name (ctl.pipeline.ofmatch.SPECS), bytes)
OXM_FIELDS: dict[int, tuple[str, int]] = {
    0: ("in_port", 4), 3: ("eth_dst", 6), 4: ("eth_src", 6), 5: ("eth_type", 2), 6: ("vlan_vid", 2),
    7: ("vlan_pcp", 1), 8: ("ip_dscp", 1), 9: ("ip_ecn", 1), 10: ("ip_proto", 1), 11: ("ip_src", 4),
    12: ("ip_dst", 4), 13: ("tcp_src", 2), 14: ("tcp_dst", 2), 15: ("udp_src", 2), 16: ("udp_dst", 2),
    17: ("sctp_src", 2), 18: ("sctp_dst", 2), 19: ("icmp_type", 1), 20: ("icmp_code", 1), 21: ("arp_op", 2),
    22: ("arp_spa", 4), 23: ("arp_tpa", 4), 24: ("arp_sha", 6), 25: ("arp_tha", 6), 26: ("ipv6_src", 16),
    27: ("ipv6_dst", 16), 28: ("ipv6_label", 4), 29: ("icmpv6_type", 1), 30: ("icmpv6_code", 1),
    34: ("mpls_label", 4), 35: ("mpls_tc", 1), 36: ("mpls_bos", 1), 31: ("nd_target", 16), 32: ("nd_sll", 6),
    33: ("nd_tll", 6), 39: ("ipv6_exthdr", 2),
}
MASKABLE = {3, 4, 6, 11, 12, 22, 23, 24, 25, 26, 27, 28, 31, 39}
# Nicira extension fields (class 1) that ovs-ofctl uses in OpenFlow 1.3 for what OXM basic lacks
NXM_FIELDS: dict[int, tuple[str, int]] = {29: ("nw_ttl", 1), 26: ("nw_frag", 1), 34: ("tcp_flags", 2),
                                          30: ("mpls_ttl", 1)}
# the pipeline fields: OXM metadata and the Nicira registers NXM_NX_REG0..15 (class 1, fields 0..15), all maskable
PIPELINE_OXMS: dict[tuple[int, int], tuple[str, int]] = {
    (0x8000, 2): ("metadata", 8), (0x8000, 38): ("tun_id", 8), **{(0x0001, i): (f"reg{i}", 4) for i in range(16)}}
# ovs-ofctl writes tcp_flags in OpenFlow 1.3 as ONF's experimenter OXM (EXT-109): class 0xffff, experimenter
# 0x4f4e4600, field 42. Decoded under the pseudo-class ONF_CLASS.
OXM_EXPERIMENTER, ONF_EXPERIMENTER, ONF_CLASS, ONF_TCP_FLAGS = 0xFFFF, 0x4F4E4600, 0x4F4E, 42
_MPLS_OXMS = {"mpls_label": (0x8000, 34, 4), "mpls_tc": (0x8000, 35, 1), "mpls_bos": (0x8000, 36, 1),
              "mpls_ttl": (0x0001, 30, 1)}
VALID_BITS = {"ipv6_exthdr": 0x1FF, "nw_frag": FLOW_NW_FRAG_ANY | FLOW_NW_FRAG_LATER}


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
        elif (cls, fld) in PIPELINE_OXMS:
            name, size = PIPELINE_OXMS[(cls, fld)]
        else:
            raise OfError(ET.BAD_MATCH, BMC_BAD_FIELD, f"OXM field {cls:#x}:{fld} is not supported")
        if len(payload) != size * (2 if hasmask else 1):
            raise OfError(ET.BAD_MATCH, BMC_BAD_LEN, f"{name}: {len(payload)} bytes")
        if hasmask and cls == 0x8000 and fld not in MASKABLE and name not in ("metadata", "tun_id"):
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
            elif name in MPLS_PARTS:
                shift, bits = MPLS_PARTS[name]
                m &= (1 << bits) - 1
                if v >> bits:
                    raise OfError(ET.BAD_MATCH, BMC_BAD_VALUE, f"{name} {v} does not fit {bits} bits")
                match.set("mpls_lse", v << shift, m << shift)
            elif name == "ipv6_label":
                m &= 0xFFFFF
                if v >> 20:
                    raise OfError(ET.BAD_MATCH, BMC_BAD_VALUE, f"ipv6_flabel {v:#x} does not fit 20 bits")
                match.set("ipv6_label", v, m)
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
    for (cls, fld), (name, size) in PIPELINE_OXMS.items():
        if name in f:
            v, m = f.pop(name)
            out.append(_tlv(fld, size, v, m, FULL[name], cls=cls))
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
    nd = dl_type == 0x86DD
    for name, fld in (("arp_sha", 32 if nd else 24), ("arp_tha", 33 if nd else 25)):
        if name in f:
            v, m = f.pop(name)
            out.append(_tlv(fld, 6, v, m, FULL[name]))
    if "nd_target" in f:
        v, m = f.pop("nd_target")
        out.append(_tlv(31, 16, v, m, FULL["nd_target"]))
    if "ipv6_exthdr" in f:
        v, m = f.pop("ipv6_exthdr")
        out.append(_tlv(39, 2, v, m, 0x1FF))
    for name, fld in (("ipv6_src", 26), ("ipv6_dst", 27)):
        if name in f:
            v, m = f.pop(name)
            out.append(_tlv(fld, 16, v, m, FULL[name]))
    if "ipv6_label" in f:
        v, m = f.pop("ipv6_label")
        out.append(_tlv(28, 4, v, m, 0xFFFFF))
    if "mpls_lse" in f:
        v, m = f.pop("mpls_lse")
        for name, (shift, bits) in MPLS_PARTS.items():
            full = (1 << bits) - 1
            if (m >> shift) & full:
                cls, fld, size = _MPLS_OXMS[name]
                out.append(_tlv(fld, size, (v >> shift) & full, (1 << 8 * size) - 1, (1 << 8 * size) - 1, cls=cls))
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


