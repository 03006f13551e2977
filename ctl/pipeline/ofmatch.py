"""OpenFlow matches in ovs-ofctl syntax: parse, check prerequisites, format, test a packet.

A match is a map from flow-key field (the names of ``struct flow_key``, see ``ctl/datapath/flowkey.py``) to
``(value, mask)`` integers, values already masked. MACs are 48-bit and IPv6 addresses 128-bit integers.
A packet ("flow") is the same map without masks: ``flow_of(FlowKey)``.

The text follows ovs-ofctl(8): ``priority=100,tcp,in_port=1,nw_dst=10.0.0.0/24,tp_dst=80``. Bad text
raises ``FlowSyntaxError``, which carries the position of the bad token so the message can point at it.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from ctl.datapath.flowkey import FLOW_NW_FRAG_ANY, FLOW_NW_FRAG_LATER, VLAN_CFI, FlowKey, mac_str

ETH_P_IP, ETH_P_ARP, ETH_P_IPV6 = 0x0800, 0x0806, 0x86DD
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_ICMPV6 = 1, 6, 17, 132, 58

FIELD_BITS: dict[str, int] = {
    "in_port": 32, "vlan_tci": 16, "dl_type": 16, "dl_dst": 48, "dl_src": 48, "nw_src": 32, "nw_dst": 32,
    "nw_proto": 8, "nw_tos": 8, "nw_ttl": 8, "nw_frag": 8, "tp_src": 16, "tp_dst": 16, "tcp_flags": 16,
    "arp_sha": 48, "arp_tha": 48, "ipv6_src": 128, "ipv6_dst": 128, "mpls_lse": 32, "ipv6_label": 20,
    "ipv6_exthdr": 9, "nd_target": 128, "vlan_tci1": 16,
}
# mpls_lse, and ipv6_label with ipv6_exthdr above it, share the key's label word: the Ethernet type (always in a
# megaflow) tells which
ETH_P_MPLS = (0x8847, 0x8848)
# Pipeline fields: OpenFlow's metadata and OVS's registers. They are no part of a packet: every packet enters
# table 0 with them all zero and only actions write them, so a megaflow never carries them (as in OVS).
PIPELINE_FIELDS = ("metadata", "tun_id", *(f"reg{i}" for i in range(16)))
FIELD_BITS.update({"metadata": 64, "tun_id": 64, **{f"reg{i}": 32 for i in range(16)}})
FIELDS = tuple(FIELD_BITS)
PACKET_FIELDS = tuple(f for f in FIELDS if f not in PIPELINE_FIELDS)
FULL = {f: (1 << b) - 1 for f, b in FIELD_BITS.items()}
PREFIX_FIELDS = ("nw_src", "nw_dst", "ipv6_src", "ipv6_dst")  # the fields a prefix trie can track
# a table's tries, in the order they are consulted: OVS's Flow_Table prefixes default, "ip_dst,ip_src"
DEFAULT_PREFIXES = ("nw_dst", "nw_src")
PREFIX_NAMES = {"ip_dst": "nw_dst", "nw_dst": "nw_dst", "ip_src": "nw_src", "nw_src": "nw_src",
                "ipv6_dst": "ipv6_dst", "ipv6_src": "ipv6_src"}
MAX_PREFIXES = 3  # as OVS (CLS_MAX_TRIES)


def parse_prefixes(text: str) -> tuple[str, ...]:
    """``ip_dst,ip_src`` (OVS's Flow_Table prefixes syntax) as flow-key fields, in order; ``none``: no tries."""
    if text.strip() == "none":
        return ()
    out: list[str] = []
    for name in (x.strip() for x in text.split(",")):
        f = PREFIX_NAMES.get(name)
        if f is None:
            raise ValueError(f"prefixes: {name!r} is not one of {', '.join(PREFIX_NAMES)} (or none)")
        if f in out:
            raise ValueError(f"prefixes: {name} twice")
        out.append(f)
    if len(out) > MAX_PREFIXES:
        raise ValueError(f"prefixes: at most {MAX_PREFIXES} fields, as Open vSwitch")
    return tuple(out)


def format_prefixes(fields: tuple[str, ...]) -> str:
    names = {"nw_dst": "ip_dst", "nw_src": "ip_src", "ipv6_dst": "ipv6_dst", "ipv6_src": "ipv6_src"}
    return ",".join(names[f] for f in fields) or "none"
OFPP_MAX = 0xFF00  # ports above are reserved numbers

# OVS's lookup stages (flow segments, include/openvswitch/flow.h): metadata, L2 (with MPLS), L3, and L4 from
# nd_target on, which holds the ARP hardware addresses and tcp_flags too.
STAGES: tuple[tuple[str, ...], ...] = (
    ("in_port", *PIPELINE_FIELDS),
    ("vlan_tci", "vlan_tci1", "dl_type", "dl_dst", "dl_src", "mpls_lse"),
    ("nw_src", "nw_dst", "ipv6_src", "ipv6_dst", "ipv6_label", "ipv6_exthdr", "nw_proto", "nw_tos", "nw_ttl",
     "nw_frag"),
    ("nd_target", "arp_sha", "arp_tha", "tcp_flags", "tp_src", "tp_dst"),
)
assert sorted(f for s in STAGES for f in s) == sorted(FIELD_BITS), "every field belongs to one stage"

Flow = dict[str, int]


class FlowSyntaxError(ValueError):
    """Bad flow text. ``pos``/``length`` locate the bad token in ``text``; str() points at it."""

    def __init__(self, msg: str, text: str = "", pos: int = 0, length: int = 1) -> None:
        super().__init__(msg)
        self.msg, self.text, self.pos, self.length = msg, text, pos, max(1, length)

    def __str__(self) -> str:
        if not self.text:
            return self.msg
        return f"{self.msg}\n  {self.text}\n  {' ' * self.pos}{'^' * self.length}"

    def reply_fields(self) -> dict[str, object]:
        """What a control-socket error reply carries, so the client can point at the token again."""
        return {"error": self.msg, "text": self.text, "pos": self.pos, "length": self.length}

    def at(self, text: str, offset: int) -> FlowSyntaxError:
        """The same error placed in a larger text, the token starting offset characters further."""
        return FlowSyntaxError(self.msg, text, self.pos + offset, self.length)


_T = TypeVar("_T")


def parse_lines(text: str, parse: Callable[[str], _T]) -> list[_T]:
    """A file of one item per line (add-flows, add-groups): blank lines and # comments skipped; an error names
    its line."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            out.append(parse(s))
        except FlowSyntaxError as e:
            raise FlowSyntaxError(f"line {n}: {e.msg}", e.text, e.pos, e.length) from None
    return out


# --- flows (packets) ---------------------------------------------------------------------------------


# struct flow_key after in_port (host order), every field big-endian; wide fields come out as bytes
_KEY_BODY = struct.Struct("!HH6s6sIIBBBBHHH6s6sHI16s16s16s")
_BODY_FIELDS = ("vlan_tci", "dl_type", "dl_dst", "dl_src", "nw_src", "nw_dst", "nw_proto", "nw_tos", "nw_ttl",
                "nw_frag", "tp_src", "tp_dst", "tcp_flags", "arp_sha", "arp_tha", "vlan_tci1", "label", "ipv6_src",
                "ipv6_dst", "nd_target")
# the fields that struct holds as bytes: (position, bytes)
_WIDE = [(i, FIELD_BITS[f] // 8) for i, f in enumerate(_BODY_FIELDS) if f != "label" and FIELD_BITS[f] > 32]


_PIPELINE_ZERO = dict.fromkeys(PIPELINE_FIELDS, 0)


def flow_of(key: FlowKey) -> Flow:
    """The packet fields of a flow key, every one an integer, and the pipeline fields (zero)."""
    raw = bytes(key)
    vals = list(_KEY_BODY.unpack_from(raw, 4))
    for i, _n in _WIDE:
        vals[i] = int.from_bytes(vals[i], "big")
    flow = dict(zip(_BODY_FIELDS, vals, strict=True))
    flow["in_port"] = int.from_bytes(raw[:4], "little")
    flow.update(_PIPELINE_ZERO)
    label = flow.pop("label")
    flow["mpls_lse"] = label if flow["dl_type"] in ETH_P_MPLS else 0
    v6 = flow["dl_type"] == ETH_P_IPV6
    flow["ipv6_label"] = label & 0xFFFFF if v6 else 0
    flow["ipv6_exthdr"] = label >> 20 if v6 else 0
    return flow


_LABEL_AT = _BODY_FIELDS.index("label")


def key_of(flow: Flow) -> FlowKey:
    """A FlowKey (or a mask) from integer fields; absent fields are zero, pipeline fields are left out."""
    vals: list[int | bytes] = [flow.get(f, 0) for f in _BODY_FIELDS]
    # one word: a mask may carry both (the Ethernet type, always in a megaflow, tells a key which it holds)
    vals[_LABEL_AT] = flow.get("mpls_lse", 0) | flow.get("ipv6_label", 0) | flow.get("ipv6_exthdr", 0) << 20
    for i, n in _WIDE:
        vals[i] = vals[i].to_bytes(n, "big")  # type: ignore[union-attr]
    raw = flow.get("in_port", 0).to_bytes(4, "little") + _KEY_BODY.pack(*vals)
    return FlowKey.from_buffer_copy(raw)


# --- tokens --------------------------------------------------------------------------------------------


@dataclass
class Token:
    key: str
    value: str | None
    pos: int            # where the token starts in the text
    vpos: int = 0       # where its value starts


def tokens(text: str, start: int = 0, end: int | None = None) -> Iterator[Token]:
    """``key[=value]`` tokens separated by commas or blanks; ``key:value`` also works, as in ovs-ofctl."""
    end = len(text) if end is None else end
    for m in re.finditer(r"[^,\s]+", text[start:end]):
        word, pos = m.group(0), start + m.start()
        sep = re.search(r"[=:]", word)
        if sep is None:
            yield Token(word, None, pos)
        else:
            yield Token(word[: sep.start()], word[sep.start() + 1 :], pos, pos + sep.start() + 1)


# --- values -------------------------------------------------------------------------------------------


def parse_int(text: str, bits: int, what: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number") from None
    if not 0 <= v < 1 << bits:
        raise ValueError(f"{what}: {v} is out of range 0..{(1 << bits) - 1}")
    return v


def _split_mask(text: str) -> tuple[str, str | None]:
    v, _, m = text.partition("/")
    return v, (m if _ else None)


def parse_masked_int(text: str, bits: int, what: str) -> tuple[int, int]:
    v, m = _split_mask(text)
    value = parse_int(v, bits, what)
    mask = (1 << bits) - 1 if m is None else parse_int(m, bits, f"{what} mask")
    return value & mask, mask


def parse_mac(text: str, what: str) -> tuple[int, int]:
    v, m = _split_mask(text)

    def one(s: str) -> int:
        parts = s.split(":")
        if len(parts) != 6 or not all(re.fullmatch(r"[0-9a-fA-F]{1,2}", p) for p in parts):
            raise ValueError(f"{what}: {s!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
        return int("".join(p.zfill(2) for p in parts), 16)

    value = one(v)
    mask = FULL["dl_src"] if m is None else one(m)
    return value & mask, mask


def parse_prefix(text: str, bits: int, what: str) -> tuple[int, int]:
    """An address with an optional /length or /netmask."""
    v, m = _split_mask(text)
    cls = ipaddress.IPv4Address if bits == 32 else ipaddress.IPv6Address
    try:
        value = int(cls(v))
    except ValueError:
        raise ValueError(f"{what}: {v!r} is not an IPv{4 if bits == 32 else 6} address") from None
    if m is None:
        mask = (1 << bits) - 1
    elif m.isdigit():
        plen = int(m)
        if plen > bits:
            raise ValueError(f"{what}: prefix length {plen} is out of range 0..{bits}")
        mask = prefix_mask(plen, bits)
    else:
        try:
            mask = int(cls(m))
        except ValueError:
            raise ValueError(f"{what}: bad mask {m!r}") from None
    return value & mask, mask


def prefix_mask(plen: int, bits: int) -> int:
    return ((1 << plen) - 1) << (bits - plen) if plen else 0


def prefix_len(mask: int, bits: int) -> int | None:
    """The prefix length of a CIDR mask, or None when the mask is not a prefix."""
    plen = bits - ((mask & -mask).bit_length() - 1) if mask else 0
    return plen if mask == prefix_mask(plen, bits) else None


TCP_FLAG_NAMES = ("fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr", "ns")


def parse_tcp_flags(text: str) -> tuple[int, int]:
    """``0x012/0x0ff`` or OVS's flag syntax ``+syn-ack``."""
    if text and text[0] in "+-":
        value = mask = 0
        for sign, name in re.findall(r"([+-])([a-z]+)", text):
            if name not in TCP_FLAG_NAMES:
                raise ValueError(f"tcp_flags: unknown flag {name!r} (one of {', '.join(TCP_FLAG_NAMES)})")
            bit = 1 << TCP_FLAG_NAMES.index(name)
            mask |= bit
            value = value | bit if sign == "+" else value & ~bit
        if "".join(s + n for s, n in re.findall(r"([+-])([a-z]+)", text)) != text:
            raise ValueError(f"tcp_flags: bad flag list {text!r} (e.g. +syn-ack)")
        return value, mask
    v, m = parse_masked_int(text, 12, "tcp_flags")
    return v, m if "/" in text else 0x0FFF


def format_tcp_flags(value: int, mask: int) -> str:
    return "".join(("+" if value & (1 << i) else "-") + n for i, n in enumerate(TCP_FLAG_NAMES) if mask & (1 << i))


NW_FRAG = {"no": (0, FLOW_NW_FRAG_ANY), "yes": (FLOW_NW_FRAG_ANY, FLOW_NW_FRAG_ANY),
           "first": (FLOW_NW_FRAG_ANY, FLOW_NW_FRAG_ANY | FLOW_NW_FRAG_LATER),
           "later": (FLOW_NW_FRAG_ANY | FLOW_NW_FRAG_LATER, FLOW_NW_FRAG_ANY | FLOW_NW_FRAG_LATER),
           "not_later": (0, FLOW_NW_FRAG_LATER)}


def _frag_name(v: int, m: int) -> str | None:
    """OVS's names for nw_frag value/mask pairs (lib/meta-flow.c format_frag)."""
    both = FLOW_NW_FRAG_ANY | FLOW_NW_FRAG_LATER
    if m == both:
        return {0: "no", FLOW_NW_FRAG_ANY: "first", both: "later"}.get(v)
    if m == FLOW_NW_FRAG_ANY:
        return {0: "no", FLOW_NW_FRAG_ANY: "yes"}.get(v)
    if m == FLOW_NW_FRAG_LATER:
        return {0: "not_later", FLOW_NW_FRAG_LATER: "later"}.get(v)
    return None


# --- matches ------------------------------------------------------------------------------------------

# shorthand -> (dl_type, nw_proto or None)
SHORTHANDS: dict[str, tuple[int, int | None]] = {
    "ip": (ETH_P_IP, None), "ipv6": (ETH_P_IPV6, None), "arp": (ETH_P_ARP, None),
    "icmp": (ETH_P_IP, IPPROTO_ICMP), "tcp": (ETH_P_IP, IPPROTO_TCP), "udp": (ETH_P_IP, IPPROTO_UDP),
    "sctp": (ETH_P_IP, IPPROTO_SCTP), "icmp6": (ETH_P_IPV6, IPPROTO_ICMPV6), "tcp6": (ETH_P_IPV6, IPPROTO_TCP),
    "udp6": (ETH_P_IPV6, IPPROTO_UDP), "sctp6": (ETH_P_IPV6, IPPROTO_SCTP),
}
# Fields a datapath flow line (ofproto/trace's "Megaflow:") may carry that a rule never does.
DP_ONLY = {"recirc_id", "eth", "packet_type", "dp_hash", "skb_priority", "pkt_mark", "ct_state", "ct_zone",
           "ct_mark", "ct_label", "ct_nw_src", "ct_nw_dst", "ct_nw_proto", "ct_tp_src", "ct_tp_dst"}

IP_ANY = (ETH_P_IP, ETH_P_IPV6)
L4_PROTOS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP)


@dataclass(frozen=True)
class FieldSpec:
    name: str            # as written in flow text
    field: str           # the flow-key field it sets
    kind: str            # int, mac, ip4, ip6, tcp_flags, vlan, pcp, dscp, ecn, frag
    dl_types: tuple[int, ...] = ()       # prerequisite: one of these dl_types
    protos: tuple[int, ...] = ()         # prerequisite: one of these nw_protos
    icmp_types: tuple[int, ...] = ()     # prerequisite: one of these ICMPv6 types, code 0 (neighbor discovery)


def _specs() -> dict[str, FieldSpec]:
    s: list[FieldSpec] = [
        FieldSpec("in_port", "in_port", "port"),
        FieldSpec("dl_src", "dl_src", "mac"), FieldSpec("eth_src", "dl_src", "mac"),
        FieldSpec("dl_dst", "dl_dst", "mac"), FieldSpec("eth_dst", "dl_dst", "mac"),
        FieldSpec("dl_type", "dl_type", "int"), FieldSpec("eth_type", "dl_type", "int"),
        FieldSpec("dl_vlan", "vlan_tci", "vlan"), FieldSpec("vlan_vid", "vlan_tci", "vlan"),
        FieldSpec("dl_vlan_pcp", "vlan_tci", "pcp"), FieldSpec("vlan_pcp", "vlan_tci", "pcp"),
        FieldSpec("vlan_tci", "vlan_tci", "int"),
        FieldSpec("vlan_tci1", "vlan_tci1", "int"),  # the inner tag (vlan-limit 2), as OVS prints it
        FieldSpec("nw_src", "nw_src", "ip4", (ETH_P_IP, ETH_P_ARP)),
        FieldSpec("nw_dst", "nw_dst", "ip4", (ETH_P_IP, ETH_P_ARP)),
        FieldSpec("ip_src", "nw_src", "ip4", (ETH_P_IP,)), FieldSpec("ip_dst", "nw_dst", "ip4", (ETH_P_IP,)),
        FieldSpec("arp_spa", "nw_src", "ip4", (ETH_P_ARP,)), FieldSpec("arp_tpa", "nw_dst", "ip4", (ETH_P_ARP,)),
        FieldSpec("nw_proto", "nw_proto", "int", (ETH_P_IP, ETH_P_IPV6, ETH_P_ARP)),
        FieldSpec("ip_proto", "nw_proto", "int", IP_ANY),
        FieldSpec("arp_op", "nw_proto", "int", (ETH_P_ARP,)),
        FieldSpec("nw_tos", "nw_tos", "tos", IP_ANY), FieldSpec("ip_dscp", "nw_tos", "dscp", IP_ANY),
        FieldSpec("nw_ecn", "nw_tos", "ecn", IP_ANY), FieldSpec("ip_ecn", "nw_tos", "ecn", IP_ANY),
        FieldSpec("nw_ttl", "nw_ttl", "int", IP_ANY),
        FieldSpec("nw_frag", "nw_frag", "frag", IP_ANY),
        FieldSpec("tp_src", "tp_src", "int", IP_ANY, L4_PROTOS),
        FieldSpec("tp_dst", "tp_dst", "int", IP_ANY, L4_PROTOS),
        FieldSpec("tcp_src", "tp_src", "int", IP_ANY, (IPPROTO_TCP,)),
        FieldSpec("tcp_dst", "tp_dst", "int", IP_ANY, (IPPROTO_TCP,)),
        FieldSpec("udp_src", "tp_src", "int", IP_ANY, (IPPROTO_UDP,)),
        FieldSpec("udp_dst", "tp_dst", "int", IP_ANY, (IPPROTO_UDP,)),
        FieldSpec("sctp_src", "tp_src", "int", IP_ANY, (IPPROTO_SCTP,)),
        FieldSpec("sctp_dst", "tp_dst", "int", IP_ANY, (IPPROTO_SCTP,)),
        FieldSpec("tcp_flags", "tcp_flags", "tcp_flags", IP_ANY, (IPPROTO_TCP,)),
        # OVS prints ICMPv6 type and code as icmp_type/icmp_code on megaflows, so both spellings take both
        FieldSpec("icmp_type", "tp_src", "icmp", IP_ANY, (IPPROTO_ICMP, IPPROTO_ICMPV6)),
        FieldSpec("icmp_code", "tp_dst", "icmp", IP_ANY, (IPPROTO_ICMP, IPPROTO_ICMPV6)),
        FieldSpec("icmpv6_type", "tp_src", "icmp", (ETH_P_IPV6,), (IPPROTO_ICMPV6,)),
        FieldSpec("icmpv6_code", "tp_dst", "icmp", (ETH_P_IPV6,), (IPPROTO_ICMPV6,)),
        FieldSpec("arp_sha", "arp_sha", "mac", (ETH_P_ARP,)), FieldSpec("arp_tha", "arp_tha", "mac", (ETH_P_ARP,)),
        FieldSpec("ipv6_src", "ipv6_src", "ip6", (ETH_P_IPV6,)),
        FieldSpec("ipv6_dst", "ipv6_dst", "ip6", (ETH_P_IPV6,)),
        FieldSpec("ipv6_label", "ipv6_label", "label", (ETH_P_IPV6,)),
        FieldSpec("ipv6_exthdr", "ipv6_exthdr", "exthdr", (ETH_P_IPV6,)),
        FieldSpec("nd_target", "nd_target", "ip6", (ETH_P_IPV6,), (IPPROTO_ICMPV6,), (135, 136)),
        FieldSpec("nd_sll", "arp_sha", "mac", (ETH_P_IPV6,), (IPPROTO_ICMPV6,), (135,)),
        FieldSpec("nd_tll", "arp_tha", "mac", (ETH_P_IPV6,), (IPPROTO_ICMPV6,), (136,)),
        FieldSpec("mpls_label", "mpls_lse", "mpls_label", ETH_P_MPLS),
        FieldSpec("mpls_tc", "mpls_lse", "mpls_tc", ETH_P_MPLS),
        FieldSpec("mpls_bos", "mpls_lse", "mpls_bos", ETH_P_MPLS),
        FieldSpec("mpls_ttl", "mpls_lse", "mpls_ttl", ETH_P_MPLS),
        FieldSpec("metadata", "metadata", "int"),
        FieldSpec("tun_id", "tun_id", "int"), FieldSpec("tunnel_id", "tun_id", "int"),
        *(FieldSpec(f"reg{i}", f"reg{i}", "int") for i in range(16)),
    ]
    return {x.name: x for x in s}


SPECS = _specs()
MATCH_FIELD_NAMES = sorted(SPECS) + sorted(SHORTHANDS)


# the parts of an MPLS label stack entry: kind -> (shift, bits)
MPLS_PARTS = {"mpls_label": (12, 20), "mpls_tc": (9, 3), "mpls_bos": (8, 1), "mpls_ttl": (0, 8)}


def parse_field_value(spec: FieldSpec, text: str) -> tuple[int, int]:
    """(value, mask) on spec.field for the text of one match field."""
    k, f = spec.kind, spec.field
    if k == "port":
        v = parse_int(text, 16, spec.name)
        if not 0 < v < OFPP_MAX:
            raise ValueError(f"{spec.name}: port {v} is out of range 1..{OFPP_MAX - 1}")
        return v, FULL[f]
    if k == "int":
        return parse_masked_int(text, FIELD_BITS[f] if f != "in_port" else 16, spec.name)
    if k == "mac":
        return parse_mac(text, spec.name)
    if k == "icmp":  # ICMP type and code are 8 bits, kept in the low byte of tp_src/tp_dst
        return parse_masked_int(text, 8, spec.name)
    if k in ("ip4", "ip6"):
        return parse_prefix(text, FIELD_BITS[f], spec.name)
    if k == "tcp_flags":
        return parse_tcp_flags(text)
    if k == "vlan":  # dl_vlan=N: tagged with VID N; 0xffff: no tag (OpenFlow 1.0's OFP_VLAN_NONE)
        v = parse_int(text, 16, spec.name)
        if v == 0xFFFF:
            return 0, 0xFFFF
        if v > 4095:
            raise ValueError(f"{spec.name}: VLAN id {v} is out of range 0..4095 (0xffff: untagged)")
        return VLAN_CFI | v, VLAN_CFI | 0x0FFF
    if k == "pcp":
        v = parse_int(text, 3, spec.name)
        return VLAN_CFI | v << 13, VLAN_CFI | 0xE000
    if k == "tos":
        v = parse_int(text, 8, spec.name)
        if v & 3:
            raise ValueError(f"{spec.name}: {v} has ECN bits set; nw_tos holds the DSCP bits (use ip_dscp)")
        return v, 0xFC
    if k == "dscp":
        return parse_int(text, 6, spec.name) << 2, 0xFC
    if k == "ecn":
        return parse_int(text, 2, spec.name), 0x03
    if k == "label":
        return parse_masked_int(text, 20, spec.name)
    if k == "exthdr":
        return parse_masked_int(text, 9, spec.name)
    if k in MPLS_PARTS:
        shift, bits = MPLS_PARTS[k]  # not maskable, as in OVS
        return parse_int(text, bits, spec.name) << shift, ((1 << bits) - 1) << shift
    if k == "frag":
        if text not in NW_FRAG:
            raise ValueError(f"nw_frag: {text!r} is not one of {', '.join(NW_FRAG)}")
        return NW_FRAG[text]
    raise AssertionError(k)


@dataclass
class Match:
    """Field -> (value, mask), values masked. Equal matches hash equal."""

    fields: dict[str, tuple[int, int]] = field(default_factory=dict)

    def set(self, f: str, value: int, mask: int) -> None:
        """Add bits to a field (AND of two matches on the same field: the bits must agree)."""
        ov, om = self.fields.get(f, (0, 0))
        if (ov ^ value) & om & mask:
            raise ValueError(f"{f} is matched twice with values that disagree")
        nm = om | mask
        if nm:
            self.fields[f] = ((ov | value) & nm, nm)

    def value(self, f: str) -> int | None:
        """The field's value when it is matched exactly, else None."""
        v = self.fields.get(f)
        return v[0] if v and v[1] == FULL[f] else None

    def mask(self, f: str) -> int:
        return self.fields.get(f, (0, 0))[1]

    def matches(self, flow: Flow) -> bool:
        return all(flow[f] & m == v for f, (v, m) in self.fields.items())

    def key(self) -> tuple[tuple[str, int, int], ...]:
        return tuple(sorted((f, v, m) for f, (v, m) in self.fields.items()))

    def __hash__(self) -> int:
        return hash(self.key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Match) and self.key() == other.key()

    def covers(self, other: Match) -> bool:
        """Every packet other matches, self matches too (ovs-ofctl's loose matching for del/dump)."""
        for f, (v, m) in self.fields.items():
            ov, om = other.fields.get(f, (0, 0))
            if m & ~om or (ov ^ v) & m:
                return False
        return True

    @classmethod
    def from_masked(cls, flow: Flow, wc: Flow) -> Match:
        """The match of a megaflow: the packet's values under the wildcard mask."""
        return cls({f: (flow[f] & m, m) for f, m in wc.items() if m})

    def format(self, priority: int | None = None) -> str:
        return format_match(self, priority)


def check_prereqs(spec: FieldSpec, match: Match) -> str | None:
    """Why spec's prerequisites are not met by match, or None."""
    if spec.dl_types and match.value("dl_type") not in spec.dl_types:
        need = "/".join({ETH_P_IP: "ip", ETH_P_IPV6: "ipv6", ETH_P_ARP: "arp"}.get(t, "mpls") for t in spec.dl_types)
        return f"{spec.name} needs {need} (dl_type={'/'.join(f'{t:#06x}' for t in spec.dl_types)}) in the match"
    if spec.protos and match.value("nw_proto") not in spec.protos:
        names = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_SCTP: "sctp", IPPROTO_ICMP: "icmp",
                 IPPROTO_ICMPV6: "icmp6"}
        return f"{spec.name} needs {'/'.join(names[p] for p in spec.protos)} in the match"
    if spec.icmp_types:
        (tv, tm), (cv, _cm) = match.fields.get("tp_src", (0, 0)), match.fields.get("tp_dst", (0, 0))
        if tm & 0xFF != 0xFF or tv not in spec.icmp_types or cv:  # as OVS: the code is 0, or not matched
            return f"{spec.name} needs icmp_type={'/'.join(map(str, spec.icmp_types))} (and code 0) in the match"
    return None


def parse_match_tokens(toks: list[Token], text: str, allow_dp_fields: bool = False) -> Match:
    """The match of some tokens; every error points at the token at fault."""
    match = Match()
    seen: list[tuple[FieldSpec, Token]] = []
    for t in toks:
        try:
            if t.key in SHORTHANDS and t.value is None:
                dl_type, proto = SHORTHANDS[t.key]
                match.set("dl_type", dl_type, 0xFFFF)
                if proto is not None:
                    match.set("nw_proto", proto, 0xFF)
                continue
            if allow_dp_fields and t.key in DP_ONLY:
                continue
            spec = SPECS.get(t.key)
            if spec is None:
                raise FlowSyntaxError(f"unknown match field {t.key!r}", text, t.pos, len(t.key))
            if t.value is None or t.value == "":
                raise FlowSyntaxError(f"{t.key} needs a value ({t.key}=...)", text, t.pos, len(t.key))
            v, m = parse_field_value(spec, t.value)
            match.set(spec.field, v, m)
            seen.append((spec, t))
        except FlowSyntaxError:
            raise
        except ValueError as e:
            at, ln = (t.vpos, len(t.value)) if t.value else (t.pos, len(t.key))
            raise FlowSyntaxError(str(e), text, at, ln) from None
    v, m = match.fields.get("vlan_tci", (0, 0))
    if m & VLAN_CFI and not v:
        # "no 802.1Q header": an untagged packet's vlan_tci is all zero, so the CFI bit alone decides
        match.fields["vlan_tci"] = (0, VLAN_CFI)
    for spec, t in seen:
        why = check_prereqs(spec, match)
        if why and not (allow_dp_fields and spec.icmp_types):  # OVS's megaflows print nd_tll on solicitations
            raise FlowSyntaxError(why, text, t.pos, len(t.key) + 1 + len(t.value or ""))
    return match


def parse_match(text: str, allow_dp_fields: bool = False) -> Match:
    """A match alone, e.g. ``tcp,nw_dst=10.0.0.0/24``. allow_dp_fields skips datapath-only fields such as
    ``recirc_id`` and ``eth`` that ofproto/trace prints on its Megaflow line."""
    return parse_match_tokens(list(tokens(text)), text, allow_dp_fields)


# --- formatting ----------------------------------------------------------------------------------------


def _fmt_ip(v: int, m: int, bits: int) -> str:
    cls = ipaddress.IPv4Address if bits == 32 else ipaddress.IPv6Address
    if m == (1 << bits) - 1:
        return str(cls(v))
    plen = prefix_len(m, bits)
    return f"{cls(v)}/{plen}" if plen is not None else f"{cls(v)}/{cls(m)}"


def _fmt_mac(v: int, m: int) -> str:
    s = mac_str(v.to_bytes(6, "big"))
    return s if m == FULL["dl_src"] else f"{s}/{mac_str(m.to_bytes(6, 'big'))}"


def _fmt_int(v: int, m: int, full: int) -> str:
    return str(v) if m == full else f"{v:#x}/{m:#x}"


def format_match(match: Match, priority: int | None = None) -> str:
    """A match as ovs-ofctl prints it: priority (unless the default), shorthand, in_port, then the rest."""
    f = dict(match.fields)
    out: list[str] = []
    if priority is not None and priority != 32768:
        out.append(f"priority={priority}")
    dl_type = match.value("dl_type")
    proto = match.value("nw_proto")
    short: str | None = next((n for n, (t, p) in SHORTHANDS.items() if t == dl_type and p is not None and p == proto),
                             None)
    if short:
        f.pop("nw_proto")
    else:
        short = next((n for n, (t, p) in SHORTHANDS.items() if t == dl_type and p is None), None)
    if short:
        out.append(short)
        f.pop("dl_type")
    for i in range(16):  # OVS's order (lib/match.c): registers, metadata, then in_port
        if f"reg{i}" in f:
            v, m = f.pop(f"reg{i}")
            out.append(f"reg{i}={v:#x}" + ("" if m == 0xFFFFFFFF else f"/{m:#x}"))
    for name in ("tun_id", "metadata"):
        if name in f:
            v, m = f.pop(name)
            out.append(f"{name}={v:#x}" + ("" if m == FULL[name] else f"/{m:#x}"))
    if "in_port" in f:
        out.append(f"in_port={f.pop('in_port')[0]}")
    if "vlan_tci" in f:
        v, m = f.pop("vlan_tci")
        if m == VLAN_CFI | 0x0FFF and v & VLAN_CFI:
            out.append(f"dl_vlan={v & 0x0FFF}")
        elif m == VLAN_CFI | 0xE000 and v & VLAN_CFI:
            out.append(f"dl_vlan_pcp={v >> 13}")
        else:
            out.append(f"vlan_tci={v:#06x}" + ("" if m == 0xFFFF else f"/{m:#06x}"))
    if "vlan_tci1" in f:
        v, m = f.pop("vlan_tci1")
        out.append(f"vlan_tci1={v:#06x}" + ("" if m == 0xFFFF else f"/{m:#06x}"))
    for name in ("dl_src", "dl_dst"):
        if name in f:
            out.append(f"{name}={_fmt_mac(*f.pop(name))}")
    if "dl_type" in f:
        v, m = f.pop("dl_type")
        out.append(f"dl_type={v:#06x}" + ("" if m == 0xFFFF else f"/{m:#06x}"))
    if "mpls_lse" in f:
        v, m = f.pop("mpls_lse")
        for name, (shift, bits) in MPLS_PARTS.items():
            pm = (m >> shift) & ((1 << bits) - 1)
            if pm:
                out.append(f"{name}={_fmt_int((v >> shift) & pm, pm, (1 << bits) - 1)}")
    arp = dl_type == ETH_P_ARP
    for name, label in (("nw_src", "arp_spa" if arp else "nw_src"), ("nw_dst", "arp_tpa" if arp else "nw_dst"),
                        ("ipv6_src", "ipv6_src"), ("ipv6_dst", "ipv6_dst")):
        if name in f:
            out.append(f"{label}={_fmt_ip(*f.pop(name), FIELD_BITS[name])}")
    if "ipv6_label" in f:
        v, m = f.pop("ipv6_label")
        out.append(f"ipv6_label={v:#07x}" + ("" if m == 0xFFFFF else f"/{m:#07x}"))
    if "ipv6_exthdr" in f:
        v, m = f.pop("ipv6_exthdr")
        out.append(f"ipv6_exthdr={v:#x}" + ("" if m == 0x1FF else f"/{m:#x}"))
    if "nw_proto" in f:
        v, m = f.pop("nw_proto")
        out.append(f"{'arp_op' if arp else 'nw_proto'}={_fmt_int(v, m, 0xFF)}")
    if "nd_target" in f:
        out.append(f"nd_target={_fmt_ip(*f.pop('nd_target'), 128)}")
    for name, nd in (("arp_sha", "nd_sll"), ("arp_tha", "nd_tll")):
        if name in f:
            out.append(f"{nd if dl_type == ETH_P_IPV6 else name}={_fmt_mac(*f.pop(name))}")
    if "nw_tos" in f:
        v, m = f.pop("nw_tos")
        if m & 0xFC:
            out.append(f"nw_tos={v & 0xFC}" if m & 0xFC == 0xFC else f"nw_tos={v & 0xFC:#x}/{m & 0xFC:#x}")
        if m & 3:
            out.append(f"nw_ecn={v & 3}" if m & 3 == 3 else f"nw_ecn={v & 3:#x}/{m & 3:#x}")
    if "nw_ttl" in f:
        out.append(f"nw_ttl={_fmt_int(*f.pop('nw_ttl'), 0xFF)}")
    if "nw_frag" in f:
        v, m = f.pop("nw_frag")
        frag = _frag_name(v, m)
        out.append(f"nw_frag={frag}" if frag else f"nw_frag={v:#x}/{m:#x}")
    icmp = proto in (IPPROTO_ICMP, IPPROTO_ICMPV6)
    v6 = "v6" if proto == IPPROTO_ICMPV6 else ""
    for name, label in (("tp_src", f"icmp{v6}_type" if icmp else "tp_src"),
                        ("tp_dst", f"icmp{v6}_code" if icmp else "tp_dst")):
        if name in f:
            v, m = f.pop(name)
            out.append(f"{label}={_fmt_int(v, m, 0xFF if icmp else 0xFFFF)}")
    if "tcp_flags" in f:
        v, m = f.pop("tcp_flags")
        out.append(f"tcp_flags={format_tcp_flags(v, m)}")
    assert not f, f
    return ",".join(out)


def format_flow(flow: Flow) -> str:
    """A whole packet in match syntax (every field the packet has), as ofproto/trace prints its Flow line."""
    m = Match()
    for f in ("in_port", "vlan_tci", "dl_src", "dl_dst", "dl_type"):
        m.fields[f] = (flow[f], FULL[f])
    dl_type = flow["dl_type"]
    if dl_type in ETH_P_MPLS:
        m.fields["mpls_lse"] = (flow["mpls_lse"], FULL["mpls_lse"])
    if dl_type == ETH_P_IPV6:
        m.fields["ipv6_label"] = (flow["ipv6_label"], 0xFFFFF)
    if dl_type == ETH_P_ARP:
        for f in ("nw_src", "nw_dst", "nw_proto", "arp_sha", "arp_tha"):
            m.fields[f] = (flow[f], FULL[f])
    elif dl_type in IP_ANY:
        addrs = ("nw_src", "nw_dst") if dl_type == ETH_P_IP else ("ipv6_src", "ipv6_dst")
        for f in (*addrs, "nw_proto", "nw_tos", "nw_ttl"):
            m.fields[f] = (flow[f], FULL[f])
        m.fields["nw_frag"] = (flow["nw_frag"], FLOW_NW_FRAG_ANY | FLOW_NW_FRAG_LATER)
        if flow["nw_proto"] in L4_PROTOS:
            m.fields["tp_src"] = (flow["tp_src"], 0xFFFF)
            m.fields["tp_dst"] = (flow["tp_dst"], 0xFFFF)
        elif flow["nw_proto"] in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            m.fields["tp_src"] = (flow["tp_src"] & 0xFF, 0xFF)
            m.fields["tp_dst"] = (flow["tp_dst"] & 0xFF, 0xFF)
        if flow["nw_proto"] == IPPROTO_TCP:
            m.fields["tcp_flags"] = (flow["tcp_flags"], 0x0FFF)
        if dl_type == ETH_P_IPV6:
            m.fields["ipv6_exthdr"] = (flow["ipv6_exthdr"], 0x1FF)
            if flow["nw_proto"] == IPPROTO_ICMPV6 and flow["tp_src"] in (135, 136) and not flow["tp_dst"]:
                for f in ("nd_target", "arp_sha", "arp_tha"):
                    m.fields[f] = (flow[f], FULL[f])
    if not flow["vlan_tci"]:
        m.fields["vlan_tci"] = (0, 0xFFFF)
    if flow["vlan_tci1"]:
        m.fields["vlan_tci1"] = (flow["vlan_tci1"], 0xFFFF)
    return format_match(m)


def flow_from_text(text: str) -> Flow:
    """A packet written as a match (ofproto/trace's flow syntax): unnamed fields are zero."""
    match = parse_match(text, allow_dp_fields=True)
    flow = {f: 0 for f in FIELDS}
    for f, (v, _m) in match.fields.items():
        flow[f] = v
    return flow
