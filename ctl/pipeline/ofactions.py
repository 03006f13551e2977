"""OpenFlow actions in ovs-ofctl syntax: parse and format.

Supported (ovs-actions(7) spelling): ``output:N``, ``N``, ``drop``, ``flood``, ``all``, ``in_port``,
``controller[:MAX_LEN]``, ``normal``, ``mod_dl_src``/``mod_dl_dst``, ``mod_vlan_vid``, ``mod_vlan_pcp``, ``push_vlan``,
``strip_vlan``/``pop_vlan``, ``mod_nw_src``/``mod_nw_dst``, ``mod_nw_tos``, ``dec_ttl``,
``mod_tp_src``/``mod_tp_dst``, ``set_field:V[/M]->F``, ``load:V->F[a..b]``, ``move:F[a..b]->G[c..d]``,
``resubmit(,T)``/``resubmit(P,T)``/``resubmit:P``, ``group:N``, and the instructions ``meter:N`` (first),
``write_metadata:V[/M]`` and ``goto_table:T`` (in that order, last). What they do to a packet is
``ctl/pipeline/xlate.py``'s business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ctl.pipeline.ofmatch import (
    FIELD_BITS,
    OFPP_MAX,
    PIPELINE_FIELDS,
    SPECS,
    FlowSyntaxError,
    Match,
    check_prereqs,
    parse_int,
    parse_mac,
    parse_masked_int,
    parse_prefix,
)

N_TABLES = 255


@dataclass(frozen=True)
class Output:
    port: int
    # what the FLOW_MOD said (OpenFlow echoes it in FLOW stats, as OVS does); it means nothing for a port and
    # is no part of the action's identity
    max_len: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return f"output:{self.port}"


@dataclass(frozen=True)
class Flood:
    all: bool = False  # "all" and "flood" both mean every port but the ingress here (no no-flood ports)

    def __str__(self) -> str:
        return "ALL" if self.all else "FLOOD"


@dataclass(frozen=True)
class InPort:
    def __str__(self) -> str:
        return "IN_PORT"


@dataclass(frozen=True)
class Controller:
    """Send the packet to the controllers (a PACKET_IN), at most max_len bytes of it (65535: all)."""

    max_len: int = 0xFFFF

    def __str__(self) -> str:
        return f"CONTROLLER:{self.max_len}"


@dataclass(frozen=True)
class Normal:
    """The L2 learning switch (ctl/pipeline/mac_learning.py): learn the source, forward or flood by destination."""

    def __str__(self) -> str:
        return "NORMAL"


@dataclass(frozen=True)
class TablePort:
    """output:TABLE, for PACKET_OUT only: run the packet through the pipeline from table 0."""

    def __str__(self) -> str:
        return "TABLE"


@dataclass(frozen=True)
class SetField:
    """mod_*, set_field and load: set (value, mask) bits of a field. name: how it was written (for load,
    the destination subfield); load: it came as ``load:`` (NXAST_REG_LOAD on the wire, as OVS keeps it)."""

    field: str
    value: int
    mask: int
    name: str
    text: str
    load: bool = False

    def __str__(self) -> str:
        if self.load:
            return f"load:{self.text}->{self.name}"
        if self.name.startswith("mod_"):
            return f"{self.name}:{self.text}"
        return f"set_field:{self.text}->{self.name}"


@dataclass(frozen=True)
class Subfield:
    """Bits [ofs, ofs + n_bits) of an NXM/OXM field (OVS's mf_subfield), by its NXM name."""

    nxm: str
    ofs: int
    n_bits: int

    @property
    def field(self) -> str:
        return SUBFIELDS[self.nxm][0]

    @property
    def mask(self) -> int:
        return ((1 << self.n_bits) - 1) << self.ofs

    def __str__(self) -> str:
        width = SUBFIELDS[self.nxm][1]
        if self.ofs == 0 and self.n_bits == width:
            return f"{self.nxm}[]"
        if self.n_bits == 1:
            return f"{self.nxm}[{self.ofs}]"
        return f"{self.nxm}[{self.ofs}..{self.ofs + self.n_bits - 1}]"


@dataclass(frozen=True)
class Move:
    """move:SRC->DST (NXAST_REG_MOVE): copy bits of one field into another."""

    src: Subfield
    dst: Subfield

    def __str__(self) -> str:
        return f"move:{self.src}->{self.dst}"


@dataclass(frozen=True)
class WriteMetadata:
    """The write_metadata instruction: metadata = (metadata & ~mask) | (value & mask)."""

    value: int
    mask: int = (1 << 64) - 1

    def __str__(self) -> str:
        return f"write_metadata:{self.value:#x}" + ("" if self.mask == (1 << 64) - 1 else f"/{self.mask:#x}")


@dataclass(frozen=True)
class PushVlan:
    tpid: int = 0x8100

    def __str__(self) -> str:
        return f"push_vlan:{self.tpid:#06x}"


@dataclass(frozen=True)
class PushMpls:
    ethertype: int = 0x8847

    def __str__(self) -> str:
        return f"push_mpls:{self.ethertype:#06x}"


@dataclass(frozen=True)
class PopMpls:
    ethertype: int

    def __str__(self) -> str:
        return f"pop_mpls:{self.ethertype:#06x}"


@dataclass(frozen=True)
class SetMplsTtl:
    ttl: int

    def __str__(self) -> str:
        return f"set_mpls_ttl({self.ttl})"


@dataclass(frozen=True)
class DecMplsTtl:
    def __str__(self) -> str:
        return "dec_mpls_ttl"


@dataclass(frozen=True)
class StripVlan:
    def __str__(self) -> str:
        return "strip_vlan"


@dataclass(frozen=True)
class DecTtl:
    def __str__(self) -> str:
        return "dec_ttl"


@dataclass(frozen=True)
class Resubmit:
    port: int | None
    table: int | None

    def __str__(self) -> str:
        if self.table is None:
            return f"resubmit:{self.port}"
        return f"resubmit({'' if self.port is None else self.port},{self.table})"


@dataclass(frozen=True)
class GroupAction:
    """group:N: the packet goes through group N (``ctl/pipeline/groups.py``)."""

    group_id: int

    def __str__(self) -> str:
        return f"group:{self.group_id}"


OFPG_MAX = 0xFFFFFF00  # the last group number (OpenFlow 1.3's OFPG_MAX)


@dataclass(frozen=True)
class MeterAction:
    """meter:N, OpenFlow 1.3's meter instruction: the packet goes through meter N (``ctl/pipeline/meters.py``)
    before the actions. Written first, as ovs-ofctl does."""

    meter_id: int

    def __str__(self) -> str:
        return f"meter:{self.meter_id}"


@dataclass(frozen=True)
class GotoTable:
    table: int

    def __str__(self) -> str:
        return f"goto_table:{self.table}"


OfAction = (Output | Flood | InPort | Controller | Normal | TablePort | SetField | Move | PushVlan | StripVlan
            | DecTtl | PushMpls | PopMpls | SetMplsTtl | DecMplsTtl | Resubmit | GroupAction | MeterAction
            | WriteMetadata | GotoTable)

ACTION_NAMES = ("output", "drop", "flood", "all", "in_port", "controller", "normal", "mod_dl_src", "mod_dl_dst",
                "mod_vlan_vid", "mod_vlan_pcp", "push_vlan", "strip_vlan", "pop_vlan", "mod_nw_src", "mod_nw_dst",
                "mod_nw_tos", "mod_nw_ttl", "dec_ttl", "mod_tp_src", "mod_tp_dst", "set_field", "load", "move",
                "push_mpls", "pop_mpls", "set_mpls_ttl", "dec_mpls_ttl", "resubmit", "group", "meter", "write_metadata",
                "goto_table")
MPLS_TYPES = (0x8847, 0x8848)

# NXM/OXM field names for load and move -> (our field, width in bits, (NXM class, field, bytes)). Our arp_op is
# 8 bits wide (nw_proto), NXM's 16: bits above 7 can only be written as zero.
SUBFIELDS: dict[str, tuple[str, int, tuple[int, int, int]]] = {
    "NXM_OF_IN_PORT": ("in_port", 16, (0, 0, 2)),
    "NXM_OF_ETH_DST": ("dl_dst", 48, (0, 1, 6)), "NXM_OF_ETH_SRC": ("dl_src", 48, (0, 2, 6)),
    "NXM_OF_ETH_TYPE": ("dl_type", 16, (0, 3, 2)), "NXM_OF_VLAN_TCI": ("vlan_tci", 16, (0, 4, 2)),
    "NXM_OF_IP_TOS": ("nw_tos", 8, (0, 5, 1)), "NXM_OF_IP_PROTO": ("nw_proto", 8, (0, 6, 1)),
    "NXM_OF_IP_SRC": ("nw_src", 32, (0, 7, 4)), "NXM_OF_IP_DST": ("nw_dst", 32, (0, 8, 4)),
    "NXM_OF_TCP_SRC": ("tp_src", 16, (0, 9, 2)), "NXM_OF_TCP_DST": ("tp_dst", 16, (0, 10, 2)),
    "NXM_OF_UDP_SRC": ("tp_src", 16, (0, 11, 2)), "NXM_OF_UDP_DST": ("tp_dst", 16, (0, 12, 2)),
    "NXM_OF_ARP_OP": ("nw_proto", 16, (0, 15, 2)),
    "NXM_OF_ARP_SPA": ("nw_src", 32, (0, 16, 4)), "NXM_OF_ARP_TPA": ("nw_dst", 32, (0, 17, 4)),
    "NXM_NX_ARP_SHA": ("arp_sha", 48, (1, 17, 6)), "NXM_NX_ARP_THA": ("arp_tha", 48, (1, 18, 6)),
    "NXM_NX_IPV6_SRC": ("ipv6_src", 128, (1, 19, 16)), "NXM_NX_IPV6_DST": ("ipv6_dst", 128, (1, 20, 16)),
    "NXM_NX_IP_TTL": ("nw_ttl", 8, (1, 29, 1)), "NXM_NX_ND_TARGET": ("nd_target", 128, (1, 23, 16)),
    "NXM_NX_ND_SLL": ("arp_sha", 48, (1, 24, 6)), "NXM_NX_ND_TLL": ("arp_tha", 48, (1, 25, 6)),
    "OXM_OF_METADATA": ("metadata", 64, (0x8000, 2, 8)), "NXM_NX_TUN_ID": ("tun_id", 64, (1, 16, 8)),
    **{f"NXM_NX_REG{i}": (f"reg{i}", 32, (1, i, 4)) for i in range(16)},
}
# the names ovs-ofctl also accepts for them (lib/meta-flow.xml)
SUBFIELD_ALIASES = {
    "in_port": "NXM_OF_IN_PORT", "eth_dst": "NXM_OF_ETH_DST", "dl_dst": "NXM_OF_ETH_DST", "eth_src": "NXM_OF_ETH_SRC",
    "dl_src": "NXM_OF_ETH_SRC", "eth_type": "NXM_OF_ETH_TYPE", "dl_type": "NXM_OF_ETH_TYPE",
    "vlan_tci": "NXM_OF_VLAN_TCI", "ip_src": "NXM_OF_IP_SRC", "nw_src": "NXM_OF_IP_SRC", "ip_dst": "NXM_OF_IP_DST",
    "nw_dst": "NXM_OF_IP_DST", "nw_proto": "NXM_OF_IP_PROTO", "ip_proto": "NXM_OF_IP_PROTO",
    "tcp_src": "NXM_OF_TCP_SRC", "tcp_dst": "NXM_OF_TCP_DST", "udp_src": "NXM_OF_UDP_SRC", "udp_dst": "NXM_OF_UDP_DST",
    "arp_op": "NXM_OF_ARP_OP", "arp_spa": "NXM_OF_ARP_SPA", "arp_tpa": "NXM_OF_ARP_TPA", "arp_sha": "NXM_NX_ARP_SHA",
    "arp_tha": "NXM_NX_ARP_THA", "ipv6_src": "NXM_NX_IPV6_SRC", "ipv6_dst": "NXM_NX_IPV6_DST",
    "nw_ttl": "NXM_NX_IP_TTL", "metadata": "OXM_OF_METADATA", "tun_id": "NXM_NX_TUN_ID",
    "tunnel_id": "NXM_NX_TUN_ID", **{f"reg{i}": f"NXM_NX_REG{i}" for i in range(16)},
}
# what load, move and set_field may write: the pipeline fields and the packet fields the datapath can rewrite
WRITABLE = {"dl_src", "dl_dst", "vlan_tci", "nw_src", "nw_dst", "ipv6_src", "ipv6_dst", "tp_src", "tp_dst",
            "mpls_lse", "arp_sha", "arp_tha", "nw_ttl", "nd_target", *PIPELINE_FIELDS}

# set_field targets: name -> (flow-key field, kind)
SET_FIELDS = {
    "eth_src": ("dl_src", "mac"), "eth_dst": ("dl_dst", "mac"), "dl_src": ("dl_src", "mac"),
    "dl_dst": ("dl_dst", "mac"), "vlan_vid": ("vlan_tci", "vid"), "dl_vlan": ("vlan_tci", "vid"),
    "vlan_pcp": ("vlan_tci", "pcp"), "dl_vlan_pcp": ("vlan_tci", "pcp"),
    "ip_src": ("nw_src", "ip4"), "ip_dst": ("nw_dst", "ip4"), "nw_src": ("nw_src", "ip4"),
    "nw_dst": ("nw_dst", "ip4"), "ipv6_src": ("ipv6_src", "ip6"), "ipv6_dst": ("ipv6_dst", "ip6"),
    "ip_dscp": ("nw_tos", "dscp"), "nw_tos": ("nw_tos", "tos"),
    "tcp_src": ("tp_src", "port"), "tcp_dst": ("tp_dst", "port"), "udp_src": ("tp_src", "port"),
    "udp_dst": ("tp_dst", "port"), "tp_src": ("tp_src", "port"), "tp_dst": ("tp_dst", "port"),
    "metadata": ("metadata", "masked"), "tun_id": ("tun_id", "masked"), "tunnel_id": ("tun_id", "masked"),
    **{f"reg{i}": (f"reg{i}", "masked") for i in range(16)},
    "ip_ecn": ("nw_tos", "ecn"), "nw_ecn": ("nw_tos", "ecn"), "sctp_src": ("tp_src", "port"),
    "sctp_dst": ("tp_dst", "port"), "icmp_type": ("tp_src", "icmp"), "icmp_code": ("tp_dst", "icmp"),
    "icmpv4_type": ("tp_src", "icmp"), "icmpv4_code": ("tp_dst", "icmp"), "icmpv6_type": ("tp_src", "icmp"),
    "icmpv6_code": ("tp_dst", "icmp"), "arp_op": ("nw_proto", "arp_op"), "arp_spa": ("nw_src", "ip4"),
    "arp_tpa": ("nw_dst", "ip4"), "arp_sha": ("arp_sha", "mac"), "arp_tha": ("arp_tha", "mac"),
    "ipv6_label": ("ipv6_label", "label"), "ipv6_flabel": ("ipv6_label", "label"), "nw_ttl": ("nw_ttl", "ttl"),
    "nd_target": ("nd_target", "ip6"), "ipv6_nd_target": ("nd_target", "ip6"), "nd_sll": ("arp_sha", "mac"),
    "ipv6_nd_sll": ("arp_sha", "mac"), "nd_tll": ("arp_tha", "mac"), "ipv6_nd_tll": ("arp_tha", "mac"),
    "mpls_label": ("mpls_lse", "mpls_label"), "mpls_tc": ("mpls_lse", "mpls_tc"),
}
MPLS_SET = {"mpls_label": (12, 20), "mpls_tc": (9, 3)}
MOD_ACTIONS = {
    "mod_nw_ttl": "nw_ttl", "mod_dl_src": "eth_src", "mod_dl_dst": "eth_dst", "mod_vlan_vid": "vlan_vid",
    "mod_vlan_pcp": "vlan_pcp",
    "mod_nw_src": "ip_src", "mod_nw_dst": "ip_dst", "mod_nw_tos": "nw_tos", "mod_tp_src": "tp_src",
    "mod_tp_dst": "tp_dst",
}


def parse_set_field(target: str, text: str) -> SetField:
    """set_field:TEXT->TARGET as one action (ValueError if it is not one we can do)."""
    return _set_field(target, text, target)


def _set_field(target: str, text: str, written: str) -> SetField:
    if target not in SET_FIELDS:
        raise ValueError(f"set_field: cannot set {target!r} (one of {', '.join(sorted(SET_FIELDS))})")
    field, kind = SET_FIELDS[target]
    bits = FIELD_BITS[field]
    if kind == "mac":
        value, _ = parse_mac(text, written)
        return SetField(field, value, (1 << 48) - 1, written, text)
    if kind in ("ip4", "ip6"):
        value, mask = parse_prefix(text, bits, written)
        if mask != (1 << bits) - 1:
            raise ValueError(f"{written}: give a whole address, not a prefix")
        return SetField(field, value, mask, written, text)
    if kind == "vid":
        v = parse_int(text, 16, written)
        if not written.startswith("mod_") and v & 0x1000 and v <= 0x1FFF:
            v &= ~0x1000  # OpenFlow 1.3's vlan_vid carries OFPVID_PRESENT
        if v > 4095:
            raise ValueError(f"{written}: VLAN id {v} is out of range 0..4095")
        return SetField(field, v, 0x0FFF, written, text)
    if kind == "pcp":
        return SetField(field, parse_int(text, 3, written) << 13, 0xE000, written, text)
    if kind == "ecn":
        return SetField(field, parse_int(text, 2, written), 0x03, written, text)
    if kind == "icmp":
        return SetField(field, parse_int(text, 8, written), 0xFFFF, written, text)
    if kind == "arp_op":
        return SetField(field, parse_int(text, 8, written), 0xFF, written, text)
    if kind == "label":
        return SetField(field, parse_int(text, 20, written), 0xFFFFF, written, text)
    if kind == "ttl":
        return SetField(field, parse_int(text, 8, written), 0xFF, written, text)
    if kind in MPLS_SET:
        shift, nbits = MPLS_SET[kind]
        return SetField(field, parse_int(text, nbits, written) << shift, ((1 << nbits) - 1) << shift, written, text)
    if kind == "masked":  # a pipeline field: set_field:VALUE[/MASK]->reg0
        value, mask = parse_masked_int(text, bits, written)
        return SetField(field, value, mask, written, text)
    if kind == "dscp":
        return SetField(field, parse_int(text, 6, written) << 2, 0xFC, written, text)
    if kind == "tos":
        v = parse_int(text, 8, written)
        if v & 3:
            raise ValueError(f"{written}: {v} has ECN bits set; give the DSCP bits only (a multiple of 4)")
        return SetField(field, v, 0xFC, written, text)
    return SetField(field, parse_int(text, 16, written), 0xFFFF, written, text)


def parse_subfield(text: str, what: str) -> Subfield:
    """``NAME[]``, ``NAME[START..END]``, ``NAME[BIT]`` or a bare NAME (the whole field), as mf_parse_subfield."""
    m = re.fullmatch(r"([A-Za-z_][A-Za-z_0-9]*)(?:\[(?:(\d+)(?:\.\.(\d+))?)?\])?", text.strip())
    if not m:
        raise ValueError(f"{what}: {text!r} is not a field or subfield (e.g. NXM_NX_REG0[0..15])")
    name = SUBFIELD_ALIASES.get(m.group(1), m.group(1))
    if name not in SUBFIELDS:
        raise ValueError(f"{what}: unknown field {m.group(1)!r}")
    width = SUBFIELDS[name][1]
    start = int(m.group(2)) if m.group(2) is not None else 0
    end = int(m.group(3)) if m.group(3) is not None else (start if m.group(2) is not None else width - 1)
    if start > end or end >= width:
        raise ValueError(f"{what}: bits {start}..{end} are outside {name} ({width} bits)")
    return Subfield(name, start, end - start + 1)


def _check_writable(sub: Subfield, what: str) -> None:
    if sub.field not in WRITABLE and sub.nxm != "NXM_OF_ARP_OP":  # ARP's op shares nw_proto, which IP's is not
        raise ValueError(f"{what}: {sub.nxm} cannot be written")


def parse_load(arg: str) -> SetField:
    """load:VALUE->DST: set the bits of DST to VALUE (a set_field on part of a field, as OVS holds it)."""
    value_text, sep, dst_text = arg.partition("->")
    if not sep:
        raise ValueError("load needs VALUE->DST (e.g. load:0x5->NXM_NX_REG0[])")
    dst = parse_subfield(dst_text, "load")
    _check_writable(dst, "load")
    v = parse_int(value_text.strip(), max(dst.n_bits, 1), "load")
    field, fbits = dst.field, FIELD_BITS[dst.field]
    if (v << dst.ofs) >> fbits:
        raise ValueError(f"load: {dst.nxm} keeps only {fbits} bits here")
    mask = dst.mask & ((1 << fbits) - 1)
    return SetField(field, v << dst.ofs, mask, str(dst), f"{v:#x}", load=True)


def parse_move(arg: str) -> Move:
    src_text, sep, dst_text = arg.partition("->")
    if not sep:
        raise ValueError("move needs SRC->DST (e.g. move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[])")
    src, dst = parse_subfield(src_text, "move"), parse_subfield(dst_text, "move")
    _check_writable(dst, "move")
    if src.n_bits != dst.n_bits:
        raise ValueError(f"move: source and destination widths differ ({src.n_bits} and {dst.n_bits} bits)")
    return Move(src, dst)


def parse_write_metadata(arg: str | None) -> WriteMetadata:
    if not arg:
        raise ValueError("write_metadata needs a value (write_metadata:VALUE[/MASK])")
    value, mask = parse_masked_int(arg, 64, "write_metadata")
    return WriteMetadata(value, mask)


def _port(text: str, what: str) -> int:
    v = parse_int(text, 16, what)
    if not 0 < v < OFPP_MAX:
        raise ValueError(f"{what}: port {v} is out of range 1..{OFPP_MAX - 1}")
    return v


def _table(text: str, what: str) -> int:
    v = parse_int(text, 8, what)
    if v >= N_TABLES:
        raise ValueError(f"{what}: table {v} is out of range 0..{N_TABLES - 1}")
    return v


def parse_one(item: str) -> OfAction | None:
    """One action; None for ``drop`` (no action at all)."""
    m = re.fullmatch(r"([A-Za-z_0-9]+)(?:\((.*)\)|[:=](.*))?", item, re.S)
    if not m:
        raise ValueError(f"cannot read action {item!r}")
    name, paren, arg = m.group(1), m.group(2), m.group(3)
    if name.isdigit() and paren is None and arg is None:
        return Output(_port(name, "output"))
    low = name.lower()
    if low in ("drop", "flood", "all", "in_port", "normal", "strip_vlan", "pop_vlan", "dec_ttl") and (paren or arg):
        raise ValueError(f"{low} takes no argument")
    if low == "drop":
        return None
    if low == "flood":
        return Flood()
    if low == "all":
        return Flood(all=True)
    if low == "in_port":
        return InPort()
    if low == "normal":
        return Normal()
    if low == "controller":
        return _controller(paren if paren is not None else arg)
    if low in ("strip_vlan", "pop_vlan"):
        return StripVlan()
    if low == "dec_ttl":
        return DecTtl()
    if low == "output":
        if arg is None:
            raise ValueError("output needs a port (output:N)")
        special: dict[str, OfAction] = {"in_port": InPort(), "flood": Flood(), "all": Flood(all=True),
                                        "controller": Controller(), "normal": Normal()}
        if arg.lower() in special:
            return special[arg.lower()]
        return Output(_port(arg, "output"))
    if low == "push_vlan":
        tpid = parse_int(arg or "0x8100", 16, "push_vlan")
        if tpid not in (0x8100, 0x88A8):
            raise ValueError(f"push_vlan: ethertype {tpid:#x} is not 0x8100 or 0x88a8")
        return PushVlan(tpid)
    if low in MOD_ACTIONS:
        if not arg:
            raise ValueError(f"{low} needs a value ({low}:VALUE)")
        return _set_field(MOD_ACTIONS[low], arg, low)
    if low == "set_field":
        if not arg or "->" not in arg:
            raise ValueError("set_field needs VALUE->FIELD (e.g. set_field:10.0.0.1->ip_dst)")
        value, _, target = arg.rpartition("->")
        sf = _set_field(target, value, target)
        return sf
    if low in ("push_mpls", "pop_mpls"):
        if not arg:
            raise ValueError(f"{low} needs an Ethernet type ({low}:0x8847)")
        et = parse_int(arg, 16, low)
        if low == "push_mpls":
            if et not in MPLS_TYPES:
                raise ValueError(f"push_mpls: {et:#x} is not an MPLS Ethernet type (0x8847 or 0x8848)")
            return PushMpls(et)
        if et in (0x8100, 0x88A8) or et < 0x600:
            raise ValueError(f"pop_mpls: {et:#x} cannot follow an MPLS header")
        return PopMpls(et)
    if low == "set_mpls_ttl":
        return SetMplsTtl(parse_int(paren if paren is not None else arg or "", 8, "set_mpls_ttl"))
    if low == "dec_mpls_ttl":
        if paren or arg:
            raise ValueError("dec_mpls_ttl takes no argument")
        return DecMplsTtl()
    if low == "load":
        return parse_load(arg or "")
    if low == "move":
        return parse_move(arg or "")
    if low == "write_metadata":
        return parse_write_metadata(arg)
    if low == "resubmit":
        if paren is not None:
            parts = paren.split(",")
            if len(parts) != 2:
                raise ValueError("resubmit takes (PORT,TABLE), e.g. resubmit(,1)")
            port = _port(parts[0], "resubmit port") if parts[0].strip() else None
            return Resubmit(port, _table(parts[1], "resubmit table") if parts[1].strip() else None)
        if not arg:
            raise ValueError("resubmit needs a port or (PORT,TABLE)")
        return Resubmit(_port(arg, "resubmit port"), None)
    if low == "group":
        if not arg:
            raise ValueError("group needs a group number (group:N)")
        g = parse_int(arg, 32, "group")
        if g > OFPG_MAX:
            raise ValueError(f"group: {g} is out of range 0..{OFPG_MAX}")
        return GroupAction(g)
    if low == "meter":
        if not arg:
            raise ValueError("meter needs a meter number (meter:N)")
        mid = parse_int(arg, 32, "meter")
        if not 0 < mid <= 0xFFFF0000:
            raise ValueError(f"meter: {mid} is out of range 1..{0xFFFF0000}")
        return MeterAction(mid)
    if low == "goto_table":
        if not arg:
            raise ValueError("goto_table needs a table (goto_table:N)")
        return GotoTable(_table(arg, "goto_table"))
    raise ValueError(f"unknown action {name!r} (one of {', '.join(ACTION_NAMES)})")


def _controller(arg: str | None) -> Controller:
    """controller, controller:MAX_LEN, controller(max_len=N) as ovs-actions(7) writes them."""
    if not arg:
        return Controller()
    if arg.isdigit():
        return Controller(parse_int(arg, 16, "controller max_len"))
    max_len = 0xFFFF
    for part in arg.split(","):
        k, _, v = part.strip().partition("=")
        if k == "max_len":
            max_len = parse_int(v, 16, "controller max_len")
        elif k not in ("reason", "id", "userdata", "pause"):
            raise ValueError(f"controller: unknown argument {k!r} (max_len=N)")
    return Controller(max_len)


# a written field -> the match field whose prerequisites writing it needs (ofmatch.SPECS)
_WRITE_SPECS = {"icmpv4_type": "icmp_type", "icmpv4_code": "icmp_code", "ipv6_flabel": "ipv6_label",
                "ipv6_nd_target": "nd_target", "ipv6_nd_sll": "nd_sll", "ipv6_nd_tll": "nd_tll",
                "NXM_OF_IP_TOS": "nw_tos", "NXM_OF_IP_PROTO": "ip_proto", "NXM_OF_IP_SRC": "ip_src",
                "NXM_OF_IP_DST": "ip_dst", "NXM_OF_TCP_SRC": "tcp_src", "NXM_OF_TCP_DST": "tcp_dst",
                "NXM_OF_UDP_SRC": "udp_src", "NXM_OF_UDP_DST": "udp_dst", "NXM_OF_ARP_OP": "arp_op",
                "NXM_OF_ARP_SPA": "arp_spa", "NXM_OF_ARP_TPA": "arp_tpa", "NXM_NX_ARP_SHA": "arp_sha",
                "NXM_NX_ARP_THA": "arp_tha", "NXM_NX_IPV6_SRC": "ipv6_src", "NXM_NX_IPV6_DST": "ipv6_dst",
                "NXM_NX_IP_TTL": "nw_ttl", "NXM_NX_ND_TARGET": "nd_target", "NXM_NX_ND_SLL": "nd_sll",
                "NXM_NX_ND_TLL": "nd_tll"}


def _written(a: OfAction) -> list[str]:
    """The fields an action reads or writes by name (set_field, mod_*, load, move), as match field names."""
    if isinstance(a, SetField):
        name = a.name.partition("[")[0] if a.load else MOD_ACTIONS.get(a.name, a.name)
        return [_WRITE_SPECS.get(name, name)]
    if isinstance(a, Move):
        return [_WRITE_SPECS.get(a.src.nxm, a.src.nxm), _WRITE_SPECS.get(a.dst.nxm, a.dst.nxm)]
    return []


def consistency_error(match: Match, actions: list[OfAction]) -> tuple[int, str] | None:
    """The first action that reads or writes a field whose prerequisites the match does not establish (as the
    actions before it change the packet: push_mpls and pop_mpls set the Ethernet type), and why: OVS's
    ofpacts_check, which refuses such a flow with OFPBAC_MATCH_INCONSISTENT. (OVS refuses pop_mpls, dec_ttl and
    the MPLS TTL actions without the matching Ethernet type too; here those skip a packet they do not fit,
    as os-ken's switch test tool expects.)"""
    m = Match(dict(match.fields))
    for i, a in enumerate(actions):
        if isinstance(a, PushMpls | PopMpls):
            for f in list(m.fields):
                if f not in ("in_port", "vlan_tci", "dl_src", "dl_dst", *PIPELINE_FIELDS):
                    del m.fields[f]  # the payload's fields are unknown past a push or a pop (OVS: nw_proto 0)
            m.fields["dl_type"] = (a.ethertype, 0xFFFF)
            continue
        for name in _written(a):
            spec = SPECS.get(name)
            why = check_prereqs(spec, m) if spec is not None else None
            if why:
                return i, f"{a}: {why}"
    return None


def split_actions(text: str) -> list[tuple[str, int]]:
    """Top-level comma-separated items with their offsets (commas inside parentheses stay)."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(text + ","):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            raw = text[start:i]
            stripped = raw.strip()
            if stripped:
                items.append((stripped, start + len(raw) - len(raw.lstrip())))
            start = i + 1
    return items


def parse_actions(text: str, full_text: str | None = None, offset: int = 0) -> list[OfAction]:
    """An action list; errors point at the bad action in full_text (default: text)."""
    full = text if full_text is None else full_text
    out: list[OfAction] = []
    items = split_actions(text)
    if not items:
        raise FlowSyntaxError("no actions: write actions=drop to drop", full, offset, 1)
    for item, pos in items:
        try:
            a = parse_one(item)
        except ValueError as e:
            raise FlowSyntaxError(str(e), full, offset + pos, len(item)) from None
        if a is not None:
            out.append(a)
        if isinstance(a, MeterAction) and len(out) > 1:
            raise FlowSyntaxError("meter is an instruction: it comes first", full, offset + pos, len(item))
        if any(isinstance(x, GotoTable) for x in out[:-1]):
            raise FlowSyntaxError("goto_table must be the last action", full, offset + pos, len(item))
        if any(isinstance(x, WriteMetadata) for x in out[:-1]) and not isinstance(out[-1], GotoTable):
            raise FlowSyntaxError("write_metadata is an instruction: only goto_table may follow it", full,
                                  offset + pos, len(item))
        if item.lower() == "drop" and len(items) > 1:
            raise FlowSyntaxError("drop cannot be combined with other actions", full, offset + pos, len(item))
    return out


def format_actions(actions: list[OfAction]) -> str:
    return ",".join(str(a) for a in actions) if actions else "drop"
