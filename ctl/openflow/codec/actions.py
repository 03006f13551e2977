"""Instructions and actions: checked length by length, decoded (with pyof) into
``ctl.pipeline.ofactions`` actions, and encoded back for flow stats.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from pyof.v0x04.common.flow_match import OxmTLV

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
    _int,
)
from ctl.openflow.codec.oxm import OXM_FIELDS, _tlv
from ctl.pipeline import ofactions as of

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
                                       OFPP_NORMAL: of.Normal(), OFPP_TABLE: of.TablePort(),
                                       OFPP_CONTROLLER: of.Controller(max_len)}
    if port in special:
        return special[port]
    if not 0 < port < 0xFF00:
        raise OfError(ET.BAD_ACTION, BAC_BAD_OUT_PORT, f"output to port {port:#x}")
    return of.Output(port, max_len)


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


