"""Instructions and actions: decoded length by length into ``ctl.pipeline.ofactions`` actions (every length is
checked before the bytes it covers are read), and encoded back for flow stats. Nicira extensions: resubmit,
reg_load, reg_load2 and reg_move, as ovs-ofctl sends them in OpenFlow 1.3.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from typing import Any

from ctl.datapath.flowkey import mac_str
from ctl.openflow.codec.framing import (
    BAC_BAD_ARGUMENT,
    BAC_BAD_EXPERIMENTER,
    BAC_BAD_LEN,
    BAC_BAD_OUT_GROUP,
    BAC_BAD_OUT_PORT,
    BAC_BAD_SET_ARGUMENT,
    BAC_BAD_SET_TYPE,
    BAC_BAD_TYPE,
    BIC_BAD_LEN,
    BIC_BAD_TABLE_ID,
    BIC_UNKNOWN_INST,
    BIC_UNSUP_INST,
    BIC_UNSUP_METADATA,
    ET,
    NX_VENDOR,
    NXAST_RESUBMIT,
    NXAST_RESUBMIT_TABLE,
    OFPCML_NO_BUFFER,
    OFPP_ALL,
    OFPP_CONTROLLER,
    OFPP_FLOOD,
    OFPP_IN_PORT,
    OFPP_NORMAL,
    OFPP_TABLE,
    OFPVID_PRESENT,
    OfError,
)
from ctl.openflow.codec.oxm import OXM_FIELDS, _tlv
from ctl.pipeline import ofactions as of

# --- instructions and actions -------------------------------------------------------------------------------


NXAST_REG_MOVE, NXAST_REG_LOAD, NXAST_REG_LOAD2 = 6, 7, 33
# (NXM class, field) -> our subfield name (ctl.pipeline.ofactions.SUBFIELDS), for load and move
_NXM_NAMES = {(c, f): name for name, (_fld, _w, (c, f, _n)) in of.SUBFIELDS.items()}
ACTION_SIZES = {0: 16, 11: 8, 12: 8, 15: 8, 16: 8, 17: 8, 18: 8, 19: 8, 20: 8, 21: 8, 22: 8, 23: 8, 24: 8,
                26: 8, 27: 8}
INSTRUCTION_ORDER = {1: 5, 2: 4, 3: 3, 4: 1, 5: 2, 6: 0}  # OpenFlow 1.3's execution order (goto_table last)


def decode_instructions(raw: bytes, off: int) -> list[of.OfAction]:
    """The instruction list from off to the end of raw, checked length by length, as our actions: meter, then
    apply_actions' actions, then write_metadata, then goto_table."""
    out: list[of.OfAction] = []
    tail: dict[int, of.OfAction] = {}
    seen: set[int] = set()
    p = off
    while p < len(raw):
        if p + 4 > len(raw):
            raise OfError(ET.BAD_INSTRUCTION, BIC_BAD_LEN, "truncated instruction")
        itype, ilen = struct.unpack_from("!HH", raw, p)
        if ilen < 8 or ilen % 8 or p + ilen > len(raw):
            raise OfError(ET.BAD_INSTRUCTION, BIC_BAD_LEN, f"instruction length {ilen}")
        if itype in seen:
            raise OfError(ET.BAD_INSTRUCTION, BIC_UNSUP_INST, f"instruction type {itype} twice")
        seen.add(itype)
        if itype == 4:
            out.extend(decode_actions(raw, p + 8, p + ilen))
        elif itype == 3:
            if decode_actions(raw, p + 8, p + ilen):
                raise OfError(ET.BAD_INSTRUCTION, BIC_UNSUP_INST, "write_actions (action sets) are not supported")
        elif itype == 1:
            if ilen != 8:
                raise OfError(ET.BAD_INSTRUCTION, BIC_BAD_LEN, "goto_table is 8 bytes")
            tid = raw[p + 4]
            if tid >= of.N_TABLES:
                raise OfError(ET.BAD_INSTRUCTION, BIC_BAD_TABLE_ID, f"goto_table {tid}")
            tail[1] = of.GotoTable(tid)
        elif itype == 2:
            if ilen != 24:
                raise OfError(ET.BAD_INSTRUCTION, BIC_BAD_LEN, "write_metadata is 24 bytes")
            value, mask = struct.unpack_from("!QQ", raw, p + 8)
            if value & ~mask:
                raise OfError(ET.BAD_INSTRUCTION, BIC_UNSUP_METADATA, "write_metadata: value has bits outside its mask")
            tail[2] = of.WriteMetadata(value, mask)
        elif itype == 5:
            pass  # clear_actions: there is never an action set to clear
        elif itype == 6:
            if ilen != 8:
                raise OfError(ET.BAD_INSTRUCTION, BIC_BAD_LEN, "meter is 8 bytes")
            mid = int.from_bytes(raw[p + 4: p + 8], "big")
            if not 0 < mid <= 0xFFFF0000:
                raise OfError(ET.METER_MOD_FAILED, 2, f"meter {mid:#x} is not a meter number")  # INVALID_METER
            tail[6] = of.MeterAction(mid)
        elif itype == 0xFFFF:
            raise OfError(ET.BAD_INSTRUCTION, BIC_UNSUP_INST, "experimenter instructions are not supported")
        else:
            raise OfError(ET.BAD_INSTRUCTION, BIC_UNKNOWN_INST, f"instruction type {itype}")
        p += ilen
    return [tail[t] for t in (6,) if t in tail] + out + [tail[t] for t in (2, 1) if t in tail]


def decode_actions(raw: bytes, off: int, end: int) -> list[of.OfAction]:
    """The actions in raw[off:end], each checked by its length first, as ours."""
    out: list[of.OfAction] = []
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
        body = raw[p: p + alen]
        if atype == 0:
            port, max_len = struct.unpack_from("!IH", body, 4)
            out.append(port_action(port, max_len))
        elif atype == 17:
            tpid = int.from_bytes(body[4:6], "big")
            if tpid not in (0x8100, 0x88A8):
                raise OfError(ET.BAD_ACTION, BAC_BAD_ARGUMENT, f"push_vlan ethertype {tpid:#x}")
            out.append(of.PushVlan(tpid))
        elif atype == 18:
            out.append(of.StripVlan())
        elif atype == 24:
            out.append(of.DecTtl())
        elif atype in (19, 20):
            et = int.from_bytes(body[4:6], "big")
            name = "push_mpls" if atype == 19 else "pop_mpls"
            out.append(_checked_as(BAC_BAD_ARGUMENT, of.parse_one, f"{name}:{et:#x}"))
        elif atype == 15:
            out.append(of.SetMplsTtl(body[4]))
        elif atype == 23:
            out.append(of.SetField("nw_ttl", body[4], 0xFF, "mod_nw_ttl", str(body[4])))
        elif atype == 16:
            out.append(of.DecMplsTtl())
        elif atype == 25:
            out.append(_set_field(body))
        elif atype == 22:
            gid = int.from_bytes(body[4:8], "big")
            if gid > of.OFPG_MAX:
                raise OfError(ET.BAD_ACTION, BAC_BAD_OUT_GROUP, f"group {gid:#x} is a reserved number")
            out.append(of.GroupAction(gid))
        elif atype == 0xFFFF:
            out.extend(_nx_action(body))
        elif atype in ACTION_SIZES:
            raise OfError(ET.BAD_ACTION, BAC_BAD_TYPE, f"action type {atype} is not supported")
        else:
            raise OfError(ET.BAD_ACTION, BAC_BAD_TYPE, f"action type {atype}")
        p += alen
    return out


def port_action(port: int, max_len: int = OFPCML_NO_BUFFER) -> of.OfAction:
    """The action an output to an OpenFlow port number means (reserved ports included)."""
    special: dict[int, of.OfAction] = {OFPP_IN_PORT: of.InPort(), OFPP_FLOOD: of.Flood(), OFPP_ALL: of.Flood(all=True),
                                       OFPP_NORMAL: of.Normal(), OFPP_TABLE: of.TablePort(),
                                       OFPP_CONTROLLER: of.Controller(max_len)}
    if port in special:
        return special[port]
    if not 0 < port < 0xFF00:
        raise OfError(ET.BAD_ACTION, BAC_BAD_OUT_PORT, f"output to port {port:#x}")
    return of.Output(port, max_len)


def _nxm_subfield(header: int, ofs: int, n_bits: int) -> of.Subfield:
    """A subfield from an NXM header (class 16 bits, field 7, hasmask 1, length 8) and a bit range."""
    cls, fld, size = header >> 16, (header >> 9) & 0x7F, header & 0xFF
    name = _NXM_NAMES.get((cls, fld))
    if name is None or header & 0x100 or of.SUBFIELDS[name][2][2] != size:
        raise OfError(ET.BAD_ACTION, BAC_BAD_ARGUMENT, f"NXM field {cls:#x}:{fld} (length {size}) is not supported")
    if n_bits < 1 or ofs + n_bits > of.SUBFIELDS[name][1]:
        raise OfError(ET.BAD_ACTION, BAC_BAD_ARGUMENT, f"bits {ofs}..{ofs + n_bits - 1} are outside {name}")
    return of.Subfield(name, ofs, n_bits)


def _nx_action(body: bytes) -> list[of.OfAction]:
    """A Nicira extension action: resubmit, reg_load, reg_load2 or reg_move."""
    vendor = int.from_bytes(body[4:8], "big")
    sub = int.from_bytes(body[8:10], "big") if len(body) >= 16 else -1
    if vendor != NX_VENDOR:
        raise OfError(ET.BAD_ACTION, BAC_BAD_EXPERIMENTER, f"experimenter action {vendor:#x}")
    try:
        if sub in (NXAST_RESUBMIT, NXAST_RESUBMIT_TABLE) and len(body) == 16:
            port, table = struct.unpack_from("!HB", body, 10)
            p = None if port == 0xFFF8 else port
            return [of.Resubmit(p, None if sub == NXAST_RESUBMIT or table == 0xFF else table)]
        if sub == NXAST_REG_LOAD and len(body) == 24:
            ofs_nbits, header, value = struct.unpack_from("!HIQ", body, 10)
            dst = _nxm_subfield(header, ofs_nbits >> 6, (ofs_nbits & 0x3F) + 1)
            if value >> dst.n_bits:
                raise OfError(ET.BAD_ACTION, BAC_BAD_ARGUMENT, f"load: {value:#x} does not fit {dst}")
            return [_checked(of.parse_load, f"{value:#x}->{dst}")]
        if sub == NXAST_REG_MOVE and len(body) == 24:
            n_bits, src_ofs, dst_ofs, src_h, dst_h = struct.unpack_from("!HHHII", body, 10)
            src, dst = _nxm_subfield(src_h, src_ofs, n_bits), _nxm_subfield(dst_h, dst_ofs, n_bits)
            return [_checked(of.parse_move, f"{src}->{dst}")]
        if sub == NXAST_REG_LOAD2 and len(body) >= 24:
            cls, fh, ln = struct.unpack_from("!HBB", body, 10)
            payload = body[14: 14 + ln]
            if len(payload) != ln or any(body[14 + ln:]):
                raise OfError(ET.BAD_ACTION, BAC_BAD_LEN, "reg_load2: bad OXM length")
            return [_load_oxm(cls, fh >> 1, bool(fh & 1), payload)]
    except ValueError as e:
        raise OfError(ET.BAD_ACTION, BAC_BAD_ARGUMENT, str(e)) from None
    raise OfError(ET.BAD_ACTION, BAC_BAD_EXPERIMENTER, f"Nicira action subtype {sub} (length {len(body)})")


def _checked(parse: Any, text: str) -> Any:
    return _checked_as(BAC_BAD_ARGUMENT, parse, text)


def _checked_as(code: int, parse: Any, text: str) -> Any:
    try:
        return parse(text)
    except ValueError as e:
        raise OfError(ET.BAD_ACTION, code, str(e)) from None


def _load_oxm(cls: int, fld: int, hasmask: bool, payload: bytes) -> of.SetField:
    """A reg_load2 (an OXM with an optional mask) as a load into the field's bits."""
    name = _NXM_NAMES.get((0x0001 if cls == 1 else cls, fld))
    if name is None:
        raise OfError(ET.BAD_ACTION, BAC_BAD_SET_TYPE, f"reg_load2 into OXM {cls:#x}:{fld}")
    size = of.SUBFIELDS[name][2][2]
    if len(payload) != size * (2 if hasmask else 1):
        raise OfError(ET.BAD_ACTION, BAC_BAD_LEN, f"reg_load2 {name}: {len(payload)} bytes")
    v = int.from_bytes(payload[:size], "big")
    m = int.from_bytes(payload[size:], "big") if hasmask else (1 << 8 * size) - 1
    sf = _checked(of.parse_load, f"0->{name}[]")
    if v & ~m:
        raise OfError(ET.BAD_ACTION, BAC_BAD_SET_ARGUMENT, f"reg_load2 {name}: value has bits outside its mask")
    return of.SetField(sf.field, v, m & ((1 << of.FIELD_BITS[sf.field]) - 1), sf.name, f"{v:#x}", load=True) \
        if not hasmask else of.SetField(sf.field, v, m, f"{name}[]", f"{v:#x}/{m:#x}", load=False)


SET_FIELD_OXM = {3: "eth_dst", 4: "eth_src", 6: "vlan_vid", 7: "vlan_pcp", 8: "ip_dscp", 11: "ip_src", 12: "ip_dst",
                 13: "tcp_src", 14: "tcp_dst", 15: "udp_src", 16: "udp_dst", 26: "ipv6_src", 27: "ipv6_dst",
                 34: "mpls_label", 35: "mpls_tc", 9: "ip_ecn", 17: "sctp_src", 18: "sctp_dst", 19: "icmpv4_type",
                 20: "icmpv4_code", 21: "arp_op", 22: "arp_spa", 23: "arp_tpa", 24: "arp_sha", 25: "arp_tha",
                 28: "ipv6_flabel", 29: "icmpv6_type", 30: "icmpv6_code", 31: "ipv6_nd_target", 32: "ipv6_nd_sll",
                 33: "ipv6_nd_tll"}
# the other way: a set_field as its writer named it -> (OXM field, bytes)
_SET_FIELD_ENCODING = {name: (fld, OXM_FIELDS.get(fld, ("", 8))[1]) for fld, name in SET_FIELD_OXM.items()}
_SET_FIELD_ENCODING.update({"icmp_type": (19, 1), "icmp_code": (20, 1), "nw_ecn": (9, 1), "ipv6_label": (28, 4),
                            "tun_id": (38, 8), "tunnel_id": (38, 8), "metadata": (2, 8),
                            "nd_target": (31, 16), "nd_sll": (32, 6), "nd_tll": (33, 6)})
SET_FIELD_PIPELINE = {(0x8000, 2): ("metadata", 8), (0x8000, 38): ("tun_id", 8),
                      **{(0x0001, i): (f"reg{i}", 4) for i in range(16)}}


def _set_field(body: bytes) -> of.SetField:
    """OFPAT_SET_FIELD: one OXM, no mask (OpenFlow 1.3), padded to 8 bytes."""
    if len(body) < 8:
        raise OfError(ET.BAD_ACTION, BAC_BAD_LEN, "set_field too short")
    cls, fh, ln = struct.unpack_from("!HBB", body, 4)
    fld, hasmask = fh >> 1, bool(fh & 1)
    val = body[8: 8 + ln]
    if len(val) != ln or any(body[8 + ln:]):
        raise OfError(ET.BAD_ACTION, BAC_BAD_LEN, "set_field: the OXM does not fit the action")
    if hasmask:
        raise OfError(ET.BAD_ACTION, BAC_BAD_SET_ARGUMENT, "set_field with a mask")
    if (cls, fld) in SET_FIELD_PIPELINE:
        name, size = SET_FIELD_PIPELINE[(cls, fld)]
        if len(val) != size:
            raise OfError(ET.BAD_ACTION, BAC_BAD_LEN, f"set_field {name}: {len(val)} bytes")
        return of.parse_set_field(name, hex(int.from_bytes(val, "big")))
    if cls != 0x8000 or fld not in SET_FIELD_OXM:
        raise OfError(ET.BAD_ACTION, BAC_BAD_SET_TYPE, f"set_field on OXM {cls:#x}:{fld}")
    name = SET_FIELD_OXM[fld]
    size = OXM_FIELDS[fld][1]
    if len(val) != size:
        raise OfError(ET.BAD_ACTION, BAC_BAD_LEN, f"set_field {name}: {len(val)} bytes")
    v = int.from_bytes(val, "big")
    if size == 6:
        text = mac_str(val)
    elif name in ("ip_src", "ip_dst", "arp_spa", "arp_tpa"):
        text = str(ipaddress.IPv4Address(v))
    elif name in ("ipv6_src", "ipv6_dst", "ipv6_nd_target"):
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
            out.append(struct.pack("!HHIH6x", 0, 16, a.port, a.max_len))
        elif isinstance(a, of.Controller):
            out.append(struct.pack("!HHIH6x", 0, 16, OFPP_CONTROLLER, a.max_len))
        elif isinstance(a, of.InPort | of.Flood | of.Normal | of.TablePort):
            port = {of.InPort: OFPP_IN_PORT, of.Normal: OFPP_NORMAL, of.TablePort: OFPP_TABLE}.get(type(a))
            if isinstance(a, of.Flood):
                port = OFPP_ALL if a.all else OFPP_FLOOD
            out.append(struct.pack("!HHIH6x", 0, 16, port, 0))
        elif isinstance(a, of.PushVlan):
            out.append(struct.pack("!HHH2x", 17, 8, a.tpid))
        elif isinstance(a, of.StripVlan):
            out.append(struct.pack("!HH4x", 18, 8))
        elif isinstance(a, of.DecTtl):
            out.append(struct.pack("!HH4x", 24, 8))
        elif isinstance(a, of.PushMpls | of.PopMpls):
            out.append(struct.pack("!HHH2x", 19 if isinstance(a, of.PushMpls) else 20, 8, a.ethertype))
        elif isinstance(a, of.SetMplsTtl):
            out.append(struct.pack("!HHB3x", 15, 8, a.ttl))
        elif isinstance(a, of.DecMplsTtl):
            out.append(struct.pack("!HH4x", 16, 8))
        elif isinstance(a, of.SetField):
            out.append(_encode_set_field(a))
        elif isinstance(a, of.Move):
            src_h, dst_h = _nxm_header(a.src.nxm), _nxm_header(a.dst.nxm)
            out.append(struct.pack("!HHIHHHHII", 0xFFFF, 24, NX_VENDOR, NXAST_REG_MOVE, a.src.n_bits, a.src.ofs,
                                   a.dst.ofs, src_h, dst_h))
        elif isinstance(a, of.GroupAction):
            out.append(struct.pack("!HHI", 22, 8, a.group_id))
        elif isinstance(a, of.Resubmit):
            port = 0xFFF8 if a.port is None else a.port
            table = 0xFF if a.table is None else a.table
            out.append(struct.pack("!HHIHHB3x", 0xFFFF, 16, NX_VENDOR, NXAST_RESUBMIT_TABLE, port, table))
    return b"".join(out)


def _nxm_header(name: str) -> int:
    cls, fld, size = of.SUBFIELDS[name][2]
    return cls << 16 | fld << 9 | size


def _reg_loads(a: of.SetField) -> bytes:
    """A write of some bits of a field as NXAST_REG_LOADs, one per run of contiguous bits (at most 64 each),
    as OVS's set_field_to_nxast."""
    name = a.name.partition("[")[0] if a.load else of.SUBFIELD_ALIASES.get(a.name, a.name)
    if name not in of.SUBFIELDS:
        name = next(n for n, (f, _w, _h) in of.SUBFIELDS.items() if f == a.field)
    header, out, mask, ofs = _nxm_header(name), [], a.mask, 0
    while mask >> ofs:
        if not mask >> ofs & 1:
            ofs += 1
            continue
        n = 0
        while n < 64 and mask >> (ofs + n) & 1:
            n += 1
        value = (a.value >> ofs) & ((1 << n) - 1)
        out.append(struct.pack("!HHIHHIQ", 0xFFFF, 24, NX_VENDOR, NXAST_REG_LOAD, ofs << 6 | (n - 1), header, value))
        ofs += n
    return b"".join(out)


def _encode_set_field(a: of.SetField) -> bytes:
    full = (1 << of.FIELD_BITS[a.field]) - 1
    if a.load or (a.field in of.PIPELINE_FIELDS and a.mask != full):
        return _reg_loads(a)
    if a.name == "mod_nw_ttl":
        return struct.pack("!HHB3x", 23, 8, a.value)
    if a.name in _SET_FIELD_ENCODING and a.name not in of.MPLS_SET and a.mask == (1 << of.FIELD_BITS[a.field]) - 1 \
            or a.name in ("ip_ecn", "nw_ecn", "icmp_type", "icmp_code", "icmpv4_type", "icmpv4_code",
                          "icmpv6_type", "icmpv6_code", "arp_op", "ipv6_flabel", "ipv6_label"):
        fld, size = _SET_FIELD_ENCODING[a.name]
        v = a.value & ((1 << 8 * size) - 1)
        tlv = _tlv(fld, size, v, (1 << 8 * size) - 1, (1 << 8 * size) - 1)
        n = 4 + len(tlv)
        return struct.pack("!HH", 25, n + (-n) % 8) + tlv + bytes((-n) % 8)
    if a.field in of.PIPELINE_FIELDS:
        cls, fld, size = of.SUBFIELDS[of.SUBFIELD_ALIASES[a.field]][2]
        tlv = _tlv(fld, size, a.value, full, full, cls=cls)
        n = 4 + len(tlv)
        return struct.pack("!HH", 25, n + (-n) % 8) + tlv + bytes((-n) % 8)
    if a.field == "vlan_tci" and a.mask == 0x0FFF:
        tlv = _tlv(6, 2, a.value | OFPVID_PRESENT, 0x1FFF, 0x1FFF)
    elif a.field == "vlan_tci":
        tlv = _tlv(7, 1, a.value >> 13, 7, 7)
    elif a.field == "nw_tos":
        tlv = _tlv(8, 1, a.value >> 2, 0x3F, 0x3F)
    elif a.field == "mpls_lse":
        shift, nbits = of.MPLS_SET[a.name]
        fld, size = (34, 4) if a.name == "mpls_label" else (35, 1)
        tlv = _tlv(fld, size, a.value >> shift, (1 << 8 * size) - 1, (1 << 8 * size) - 1)
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
    body = [a for a in actions if not isinstance(a, of.GotoTable | of.WriteMetadata | of.MeterAction)]
    out = b"".join(struct.pack("!HHI", 6, 8, a.meter_id) for a in actions if isinstance(a, of.MeterAction))
    if body:
        acts = encode_actions(body)
        out += struct.pack("!HH4x", 4, 8 + len(acts)) + acts
    wm = next((a for a in actions if isinstance(a, of.WriteMetadata)), None)
    if wm is not None:
        out += struct.pack("!HH4xQQ", 2, 24, wm.value, wm.mask)
    goto = next((a for a in actions if isinstance(a, of.GotoTable)), None)
    if goto is not None:
        out += struct.pack("!HHB3x", 1, 8, goto.table)
    return out


