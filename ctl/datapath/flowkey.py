"""The flow key, mirrored from ``xdp/dp_structs.h``, and the Python packet parser.

The C header is the source of truth::

    struct flow_key {
        __u32 in_port;      /* host order: datapath port number */
        __be16 vlan_tci;    /* network order: the 802.1Q TCI | VLAN_CFI when tagged, else 0 */
        __be16 dl_type;     /* network order: Ethernet type after the tag; FLOW_DL_TYPE_NONE for 802.3 */
        __u8 dl_dst[6];
        __u8 dl_src[6];
        __be32 nw_src;      /* network order: IPv4 source or ARP SPA */
        __be32 nw_dst;      /* network order: IPv4 destination or ARP TPA */
        __u8 nw_proto;      /* IPv4 protocol, IPv6 next header, or ARP opcode (low byte) */
        __u8 nw_tos;        /* IPv4 TOS or IPv6 traffic class: DSCP << 2 | ECN */
        __u8 nw_ttl;        /* IPv4 TTL or IPv6 hop limit */
        __u8 nw_frag;       /* FLOW_NW_FRAG_ANY | FLOW_NW_FRAG_LATER */
        __be16 tp_src;      /* network order: TCP/UDP/SCTP source port, or ICMP/ICMPv6 type */
        __be16 tp_dst;      /* network order: TCP/UDP/SCTP destination port, or ICMP/ICMPv6 code */
        __be16 tcp_flags;   /* network order: the low 12 bits of TCP's offset/flags word */
        __u8 arp_sha[6];
        __u8 arp_tha[6];
        __be16 vlan_tci1;   /* network order: the inner VLAN tag's TCI | VLAN_CFI (vlan-limit 2), else 0 */
        __be32 label;       /* network order: MPLS's top label stack entry; for IPv6 the flow label (low 20
                             * bits) and OpenFlow's extension header flags (OFPIEH_*, 9 bits) above it */
        __u8 ipv6_src[16];
        __u8 ipv6_dst[16];
        __u8 nd_target[16]; /* IPv6 neighbor discovery's target */
    };

Multi-byte fields other than ``in_port`` hold network-order bytes; the ctypes mirror declares them as
big-endian so Python code reads and writes plain integers. ``parse()`` follows the rules written at the
top of ``xdp/parser.h``; ``tests/bpf/test_parser_diff.py`` proves the two parsers agree.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import socket
import struct
from collections.abc import Callable

FLOW_DL_TYPE_NONE = 0x05FF
VLAN_CFI = 0x1000
FLOW_NW_FRAG_ANY = 1
FLOW_NW_FRAG_LATER = 2
IPV6_MAX_EXT = 4  # DP_IPV6_MAX_EXT
ND_MAX_OPTS = 4  # DP_ND_MAX_OPTS
# How many VLAN tags the parsers read: OVS's vlan-limit, 1 (the default: an inner tag is payload) or 2 (0 means
# 2, all the key holds). Owned by the Datapath that compiles the XDP programs (-DDP_VLAN_LIMIT): it sets this
# with set_vlan_limit() so that this parser reads frames as they do.
VLAN_LIMIT = 1


def set_vlan_limit(limit: int) -> int:
    """Set the parsers' VLAN limit (0: as many as the key holds); returns it as the key sees it (1 or 2)."""
    global VLAN_LIMIT
    if limit not in (0, 1, 2):
        raise ValueError(f"vlan-limit {limit}: 1 or 2 (0: as many as the flow key holds, 2)")
    VLAN_LIMIT = limit or 2
    return VLAN_LIMIT
# OpenFlow's ipv6_exthdr flag and RFC 8200's rank of each extension header walked (DEST: 2, or 7 after ROUTING)
_EXTHDR = {0: (64, 1), 60: (8, 2), 43: (32, 3), 44: (16, 4), 51: (4, 5)}
IPV6_EXT_HEADERS = (0, 43, 60, 51, 44)

ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_RARP = 0x8035
ETH_P_IPV6 = 0x86DD
ETH_P_MPLS = (0x8847, 0x8848)


class FlowKey(ctypes.BigEndianStructure):
    """ctypes mirror of ``struct flow_key`` (104 bytes).

    ``in_port`` is host order in C; it is declared little-endian here via ``in_port_le`` and exposed as
    the ``in_port`` property, so every other field reads as a plain integer."""

    _pack_ = 1
    _fields_ = [
        ("in_port_raw", ctypes.c_uint8 * 4),
        ("vlan_tci", ctypes.c_uint16),
        ("dl_type", ctypes.c_uint16),
        ("dl_dst", ctypes.c_uint8 * 6),
        ("dl_src", ctypes.c_uint8 * 6),
        ("nw_src", ctypes.c_uint32),
        ("nw_dst", ctypes.c_uint32),
        ("nw_proto", ctypes.c_uint8),
        ("nw_tos", ctypes.c_uint8),
        ("nw_ttl", ctypes.c_uint8),
        ("nw_frag", ctypes.c_uint8),
        ("tp_src", ctypes.c_uint16),
        ("tp_dst", ctypes.c_uint16),
        ("tcp_flags", ctypes.c_uint16),
        ("arp_sha", ctypes.c_uint8 * 6),
        ("arp_tha", ctypes.c_uint8 * 6),
        ("vlan_tci1", ctypes.c_uint16),
        ("label", ctypes.c_uint32),
        ("ipv6_src", ctypes.c_uint8 * 16),
        ("ipv6_dst", ctypes.c_uint8 * 16),
        ("nd_target", ctypes.c_uint8 * 16),
    ]

    @property
    def in_port(self) -> int:
        return int.from_bytes(bytes(self.in_port_raw), "little")

    @in_port.setter
    def in_port(self, value: int) -> None:
        self.in_port_raw[:] = list(value.to_bytes(4, "little"))

    def __bytes__(self) -> bytes:
        return memoryview(self).tobytes()  # 0.25 us against 0.6 for bytes() of a "B" cast (ukeys, masks: per setup)

    @classmethod
    def from_bytes(cls, raw: bytes) -> FlowKey:
        if len(raw) != ctypes.sizeof(cls):
            raise ValueError(f"a flow key is {ctypes.sizeof(cls)} bytes, got {len(raw)}")
        return cls.from_buffer_copy(raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FlowKey) and bytes(self) == bytes(other)

    def __hash__(self) -> int:
        return hash(bytes(self))

    def __repr__(self) -> str:
        return f"FlowKey({format_key(self)})"

    def as_int(self) -> int:
        """The key's bytes as one integer (little-endian): how the ukeys index keys and masks are ANDed."""
        return int.from_bytes(memoryview(self).tobytes(), "little")

    def masked(self, mask: FlowKey) -> FlowKey:
        m = self.as_int() & mask.as_int()
        return FlowKey.from_buffer_copy(m.to_bytes(FLOW_KEY_BYTES, "little"))

    def fields(self) -> dict[str, int | bytes]:
        """Every field by its C name, integers for scalars and bytes for arrays (one struct unpack: the
        dumps format 100k keys)."""
        return _fields_of(bytes(self))


_KEY = struct.Struct("<I")
_BODY = struct.Struct("!HH6s6sIIBBBBHHH6s6sHI16s16s16s")
_NAMES = tuple(f[0] for f in FlowKey._fields_[1:])


def _fields_of(raw: bytes) -> dict[str, int | bytes]:
    out: dict[str, int | bytes] = dict(zip(_NAMES, _BODY.unpack_from(raw, 4), strict=True))
    out["in_port"] = _KEY.unpack_from(raw)[0]
    return out


FLOW_KEY_SIZE = FLOW_KEY_BYTES = ctypes.sizeof(FlowKey)
assert FLOW_KEY_SIZE == 104
FIELD_NAMES = ["in_port"] + [f[0] for f in FlowKey._fields_[1:] if f[0] != "pad"]


def field_layout() -> dict[str, tuple[int, int]]:
    """(offset, size) of every field, as the C compiler should lay it out."""
    out = {}
    for f in FlowKey._fields_:
        name, ctype = f[0], f[1]
        desc = getattr(FlowKey, name)
        out["in_port" if name == "in_port_raw" else name] = (desc.offset, ctypes.sizeof(ctype))
    return out


FLOW_KEY_WORDS = FLOW_KEY_SIZE // 8
_WORDS = struct.Struct(f"<{FLOW_KEY_WORDS}Q")  # a flow key's words

_KEY_HASH_MUL = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x165667B19E3779F9,
                 0xBF58476D1CE4E5B9, 0x27D4EB2F165667C5, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)


# xdp/parser.h FLOW_KEY_SHORT_WORDS: an IPv4 key without an inner tag has nothing after its first 5 words, and the
# fast path hashes and compares only those (dp_scratch.short_key); the bpf tier checks it on every frame it parses.
SHORT_KEY_WORDS = 5


def is_short_key(key: FlowKey) -> bool:
    """Whether the fast path treats key as short (dp_parse: IPv4 and no inner tag)."""
    return key.dl_type == ETH_P_IP and key.vlan_tci1 == 0


def key_hash(key: FlowKey | bytes) -> int:
    """flow_key_hash() of xdp/parser.h, the packet's flow hash: the EMC's slot and the mask hint's, what an upcall
    carries. Words 0-4 each multiplied on its own, the others XORed in pairs first, the products XORed, folded."""
    w = _WORDS.unpack(bytes(key))
    m64, k = 0xFFFFFFFFFFFFFFFF, _KEY_HASH_MUL
    x = 0
    for i, v in enumerate((w[0], w[1], w[2], w[3], w[4], w[5] ^ w[6], w[7] ^ w[8], w[9] ^ w[10], w[11] ^ w[12])):
        x ^= (v * k[i]) & m64
    x ^= x >> 32
    return ((x * 0x9E3779B97F4A7C15) & m64) >> 32


def mf_seed(seed: int, mask_id: int) -> int:
    """mf_seed() of xdp/dp_hash.h: subtable mask_id's seed for mf_hash()."""
    return (seed ^ (mask_id * 0x9E3779B9)) & 0xFFFFFFFF


ALL_WORDS = (1 << FLOW_KEY_WORDS) - 1  # mf_hash over every word


def mf_hash(masked: bytes, seed: int, words: int = ALL_WORDS) -> int:
    """mf_hash_masked() of xdp/dp_hash.h: the key's words whose bit is set in words (mask_words: those its
    subtable's mask covers) hashed, seeded, 64 bits (a megaflow's place in mf_buckets); by default every word.
    Word i goes into lane a (even i) or b (odd i)."""
    m64, c1, c2 = 0xFFFFFFFFFFFFFFFF, 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53
    a, b = 0x9E3779B97F4A7C15 ^ seed, 0xC2B2AE3D27D4EB4F ^ (seed << 32)
    w = _WORDS.unpack(masked)
    for i in _word_bits(words):
        if i & 1:
            b = ((b ^ w[i]) * c2) & m64
        else:
            a = ((a ^ w[i]) * c1) & m64
    h = a ^ (b >> 29) ^ ((b << 35) & m64)
    h = ((h ^ (h >> 33)) * c1) & m64  # murmur3's fmix64: every bit reaches the low ones (the bucket)
    h = ((h ^ (h >> 33)) * c2) & m64
    return h ^ (h >> 33)


@functools.lru_cache(maxsize=1024)
def _word_bits(words: int) -> tuple[int, ...]:
    """The indexes of words' set bits (a handful of masks are in use: made once each)."""
    return tuple(i for i in range(FLOW_KEY_WORDS) if words >> i & 1)


@functools.lru_cache(maxsize=1024)
def mask_words(mask: bytes) -> int:
    """The words a mask covers (bit i: word i is not zero): which words mf_hash takes for its subtable."""
    return sum(1 << i for i, x in enumerate(_WORDS.unpack(mask)) if x)


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF


def select_hash(key: FlowKey) -> int:
    """dp_select_hash() of xdp/parser.h: a select group's bucket hash. Symmetric (the same both ways) over the
    MAC addresses, the Ethernet type, the IPv4/ARP and IPv6 addresses, the IP protocol and the L4 ports, as
    OVS's flow_hash_symmetric_l4; never the TCP flags, so every packet of a connection takes one bucket."""
    raw = bytes(key)
    u32 = struct.Struct("<I")
    mac = bytes(a ^ b for a, b in zip(raw[8:14], raw[14:20], strict=True))
    words = (
        u32.unpack_from(mac)[0],
        int.from_bytes(mac[4:6], "little") | int.from_bytes(raw[6:8], "little") << 16,
        u32.unpack_from(raw, 20)[0] ^ u32.unpack_from(raw, 24)[0],
        _xor_words(raw, 56, 88),
        int.from_bytes(raw[32:34], "little") ^ int.from_bytes(raw[34:36], "little") | raw[28] << 16,
    )
    h = 0x9747B28C
    for w in words:
        k = _rotl32((w * 0xCC9E2D51) & 0xFFFFFFFF, 15) * 0x1B873593 & 0xFFFFFFFF
        h = (_rotl32(h ^ k, 13) * 5 + 0xE6546B64) & 0xFFFFFFFF
    h ^= h >> 16
    h = h * 0x85EBCA6B & 0xFFFFFFFF
    h ^= h >> 13
    h = h * 0xC2B2AE35 & 0xFFFFFFFF
    return h ^ (h >> 16)


def _xor_words(raw: bytes, start: int, end: int) -> int:
    x = 0
    for (w,) in struct.iter_unpack("<I", raw[start:end]):
        x ^= w
    return x


# --- the parser ------------------------------------------------------------------------------------


def _parse_l4(p: bytes, off: int, pend: int, proto: int, key: FlowKey) -> int:
    """Fill the L4 fields within pend, the end of the IP payload (left zero when the header is missing or cut
    short); by the protocol number alone, whatever the IP version (as OVS). The L4 offset, or 0."""
    rest = min(len(p), pend) - off
    if proto == 6:
        if rest < 20:
            return 0
        doff = (p[off + 12] >> 4) * 4
        if doff < 20 or doff > rest:
            return 0
        key.tp_src, key.tp_dst = struct.unpack_from("!HH", p, off)
        key.tcp_flags = struct.unpack_from("!H", p, off + 12)[0] & 0x0FFF
    elif proto == 17:
        if rest < 8:
            return 0
        key.tp_src, key.tp_dst = struct.unpack_from("!HH", p, off)
    elif proto == 132:
        if rest < 12:
            return 0
        key.tp_src, key.tp_dst = struct.unpack_from("!HH", p, off)
    elif proto in (1, 58):
        if rest < 8:
            return 0
        key.tp_src, key.tp_dst = p[off], p[off + 1]
        if proto == 58 and p[off] in (135, 136) and p[off + 1] == 0:
            _parse_nd(p, off, pend, key)
    else:
        return 0
    return off


def _parse_ipv4(p: bytes, off: int, key: FlowKey) -> tuple[int, int]:
    """Fill the IPv4 and L4 fields; (L3 offset, L4 offset), 0 for a header missing or refused."""
    if len(p) - off < 20:
        return 0, 0
    vihl = p[off]
    ihl = (vihl & 0x0F) * 4
    tot = struct.unpack_from("!H", p, off + 2)[0]
    if vihl >> 4 != 4 or ihl < 20 or tot < ihl or off + tot > len(p):
        return 0, 0
    key.nw_tos = p[off + 1]
    frag_off = struct.unpack_from("!H", p, off + 6)[0]
    key.nw_ttl, key.nw_proto = p[off + 8], p[off + 9]
    key.nw_src, key.nw_dst = struct.unpack_from("!II", p, off + 12)
    if frag_off & 0x3FFF:
        key.nw_frag = FLOW_NW_FRAG_ANY
        if frag_off & 0x1FFF:
            key.nw_frag |= FLOW_NW_FRAG_LATER
            return off, 0
    return off, _parse_l4(p, off + ihl, off + tot, key.nw_proto, key)


def _parse_ipv6(p: bytes, l3: int, key: FlowKey) -> tuple[int, int]:
    """Fill the IPv6 and L4 fields; (L3 offset, L4 offset), 0 for a header missing or refused. As OVS, an
    extension header cut short by the payload leaves every L3 field but the addresses zero."""
    off = l3
    if len(p) - off < 40:
        return 0, 0
    if p[off] >> 4 != 6 or off + 40 + struct.unpack_from("!H", p, off + 4)[0] > len(p):
        return 0, 0
    key.ipv6_src[:] = list(p[off + 8 : off + 24])
    key.ipv6_dst[:] = list(p[off + 24 : off + 40])
    nh = p[off + 6]
    pend = off + 40 + struct.unpack_from("!H", p, off + 4)[0]
    off += 40
    done = 0
    frag = eh = dests = last = 0
    for i in range(IPV6_MAX_EXT):
        if nh not in IPV6_EXT_HEADERS:
            done = 1
            break
        flag, rank = _EXTHDR[nh]
        if nh == 60 and eh & 32:
            rank = 7
        if nh == 60:
            dests += 1
        if (dests > 2) if nh == 60 else bool(eh & flag):
            eh |= 128
        if rank < last or (nh == 0 and i):
            eh |= 256
        eh |= flag
        last = rank
        if off + 8 > min(len(p), pend):
            return l3, 0
        length = (p[off + 1] + 2) * 4 if nh == 51 else 8 if nh == 44 else (p[off + 1] + 1) * 8
        if off + length > pend:
            return l3, 0
        if nh == 44:
            offlg = struct.unpack_from("!H", p, off + 2)[0]
            if offlg:
                frag = FLOW_NW_FRAG_ANY
            if offlg & 0xFFF8:
                nh, frag, done = 44, frag | FLOW_NW_FRAG_LATER, 2  # a later fragment: nw_proto 44, as OVS
                break
        nh = p[off]
        off += length
    if not done:
        done = 1 if nh not in IPV6_EXT_HEADERS else 0
    if done == 1 and nh == 50:
        eh |= 256 | 2 if last > 6 else 2
    elif done == 1 and nh == 59:
        eh |= 1
    key.label = (struct.unpack_from("!I", p, l3)[0] & 0x000FFFFF) | eh << 20
    key.nw_tos = ((p[l3] & 0x0F) << 4) | (p[l3 + 1] >> 4)
    key.nw_ttl = p[l3 + 7]
    key.nw_frag = frag
    key.nw_proto = nh
    return l3, (_parse_l4(p, off, pend, nh, key) if done == 1 else 0)


def _parse_nd(p: bytes, off: int, pend: int, key: FlowKey) -> None:
    """Neighbor discovery's target and link-layer address options, as xdp/parser.h parse_nd() (OVS's
    parse_icmpv6): a zero-length or overlong option ends the walk; a second address of a kind voids all."""
    if off + 24 > len(p) or off + 24 > pend:
        return
    key.nd_target[:] = list(p[off + 8: off + 24])
    off += 24
    for _ in range(ND_MAX_OPTS):
        if off + 8 > len(p) or off + 8 > pend:
            return
        length = p[off + 1] * 8
        if not length or off + length > pend:
            return
        if length == 8 and p[off] in (1, 2):
            lla = key.arp_sha if p[off] == 1 else key.arp_tha
            if any(lla):
                key.nd_target[:] = [0] * 16
                key.arp_sha[:] = [0] * 6
                key.arp_tha[:] = [0] * 6
                return
            lla[:] = list(p[off + 2: off + 8])
        off += length


def parse(frame: bytes, in_port: int = 0) -> FlowKey:
    """The flow key of a frame received on datapath port in_port, exactly as the XDP parser builds it."""
    return parse_layout(frame, in_port)[0]


def parse_layout(frame: bytes, in_port: int = 0) -> tuple[FlowKey, int, int]:
    """The flow key and the L3 and L4 offsets as xdp/parser.h finds them (0: the header is absent, cut
    short, refused, or, for L4, a later fragment's)."""
    p = bytes(frame)
    key = FlowKey()
    key.in_port = in_port
    if len(p) < 14:
        return key, 0, 0
    key.dl_dst[:] = list(p[0:6])
    key.dl_src[:] = list(p[6:12])
    dl_type = struct.unpack_from("!H", p, 12)[0]
    off = 14
    if dl_type in (ETH_P_8021Q, ETH_P_8021AD):
        if len(p) < 18:
            key.dl_type = dl_type
            return key, 0, 0
        tci, dl_type = struct.unpack_from("!HH", p, 14)
        key.vlan_tci = tci | VLAN_CFI
        off = 18
        if VLAN_LIMIT != 1 and dl_type in (ETH_P_8021Q, ETH_P_8021AD):
            if len(p) < 22:
                key.dl_type = dl_type
                return key, 0, 0
            tci, dl_type = struct.unpack_from("!HH", p, 18)
            key.vlan_tci1 = tci | VLAN_CFI
            off = 22
    if dl_type < 0x600:
        # 802.3: LLC/SNAP with OUI 0 carries an Ethernet type (OVS's parse_ethertype)
        llc = p[off: off + 8]
        if len(llc) < 8 or llc[:6] != b"\xaa\xaa\x03\0\0\0" or int.from_bytes(llc[6:8], "big") < 0x600:
            key.dl_type = FLOW_DL_TYPE_NONE
            return key, 0, 0
        dl_type = int.from_bytes(llc[6:8], "big")
        off += 8
    key.dl_type = dl_type
    if dl_type == ETH_P_IP:
        return (key, *_parse_ipv4(p, off, key))
    if dl_type == ETH_P_IPV6:
        return (key, *_parse_ipv6(p, off, key))
    if dl_type in ETH_P_MPLS:
        if len(p) - off >= 4:
            key.label = struct.unpack_from("!I", p, off)[0]
        return key, 0, 0
    if dl_type in (ETH_P_ARP, ETH_P_RARP):
        if len(p) - off >= 28:
            htype, ptype, hlen, plen = struct.unpack_from("!HHBB", p, off)
            if htype == 1 and ptype == ETH_P_IP and hlen == 6 and plen == 4:
                if p[off + 6] == 0:
                    key.nw_proto = p[off + 7]
                key.arp_sha[:] = list(p[off + 8 : off + 14])
                key.nw_src = struct.unpack_from("!I", p, off + 14)[0]
                key.arp_tha[:] = list(p[off + 18 : off + 24])
                key.nw_dst = struct.unpack_from("!I", p, off + 24)[0]
    return key, 0, 0


# --- text, as ovs-dpctl prints datapath flows -----------------------------------------------------------


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def mac_bytes(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(x) in (1, 2) for x in parts):
        raise ValueError(f"bad MAC address {text!r}")
    try:
        return bytes(int(x, 16) for x in parts)
    except ValueError:
        raise ValueError(f"bad MAC address {text!r}") from None


def _fmt(value: int | bytes, mask: int | bytes | None, kind: str) -> str:
    def one(v: int | bytes) -> str:
        if kind == "mac":
            assert isinstance(v, bytes)
            return mac_str(v)
        if kind == "ip4":
            assert isinstance(v, int)
            return socket.inet_ntoa(v.to_bytes(4, "big"))
        if kind == "ip6":
            assert isinstance(v, bytes)
            return str(ipaddress.IPv6Address(v))
        if kind == "hex":
            return f"{v:#x}" if isinstance(v, int) else v.hex()
        return str(v)

    return one(value) if mask is None else f"{one(value)}/{one(mask)}"


@functools.lru_cache(maxsize=256)
def _mask_fields(raw: bytes) -> dict[str, int | bytes]:
    """A mask's fields (a dump has a few masks and many keys: each mask is unpacked once)."""
    return _fields_of(raw)


def format_key(key: FlowKey, mask: FlowKey | None = None) -> str:
    """A key (and mask) in the shape of ovs-dpctl dump-flows: fully wildcarded fields are left out. With a
    mask, what to print is planned once per (mask, Ethernet type, IP protocol): a dump of 100k megaflows has
    a few masks (format_key_reference is the same, unplanned)."""
    if mask is None:
        return format_key_reference(key)
    return format_masked(bytes(key), bytes(mask))


def format_masked(kraw: bytes, mraw: bytes, premasked: bool = False) -> str:
    """format_key of a key and mask given as the bytes of struct flow_key (as the maps hold them; megaflows'
    keys in mf_entries are premasked). Each (mask, Ethernet type, IP protocol) is compiled once into a format string
    and the conversions of the fields it shows, so a key costs one unpack and one format."""
    if not premasked:
        kraw = (int.from_bytes(kraw, "little") & int.from_bytes(mraw, "little")).to_bytes(len(kraw), "little")
    vals = (_KEY.unpack_from(kraw)[0], *_BODY.unpack_from(kraw, 4))
    template, convs = _compiled(mraw, vals[_POS["dl_type"]], vals[_POS["nw_proto"]])
    return template.format(*[c(vals[i]) if c else vals[i] for i, c in convs])


_POS = {"in_port": 0, **{n: i + 1 for i, n in enumerate(_NAMES)}}
_FRAG = {0: "no", 1: "first", 3: "later"}


def _one(kind: str) -> Callable[[int | bytes], str] | None:
    """How a field of this kind prints (None: as the integer it is)."""
    if kind == "mac":
        return lambda v: mac_str(v)  # type: ignore[arg-type]
    if kind == "ip4":
        return lambda v: socket.inet_ntoa(v.to_bytes(4, "big"))  # type: ignore[union-attr]
    if kind == "ip6":
        return lambda v: str(ipaddress.IPv6Address(v))
    if kind == "hex":
        return lambda v: f"{v:#x}" if isinstance(v, int) else v.hex()
    if kind == "flabel":  # IPv6's label word: the flow label below, the extension header flags above
        return lambda v: f"{int(v) & 0xFFFFF:#x}"
    if kind == "exthdr":
        return lambda v: f"{int(v) >> 20:#x}"
    return None


Conv = Callable[[int | bytes], str] | None


def _esc(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@functools.lru_cache(maxsize=1024)
def _compiled(mraw: bytes, dl_type: int, proto: int) -> tuple[str, list[tuple[int, Conv]]]:
    """_plan as one format string and, per placeholder, the field's position and converter."""
    parts: list[str] = []
    convs: list[tuple[int, Conv]] = []
    for head, fields, tail in _plan(mraw, dl_type, proto):
        items = []
        for label, name, kind, mv in fields:
            one = _one(kind)
            if name == "nw_frag":
                def frag(v: int | bytes, mv: int | bytes | None = mv) -> str:
                    return _FRAG.get(int(v), _fmt(v, mv, ""))  # type: ignore[arg-type]
                items.append(_esc(label) + "{}")
                convs.append((_POS[name], frag))
                continue
            suffix = "" if mv is None else "/" + _fmt(mv, None, "hex" if kind in ("flabel", "exthdr") else kind)
            items.append(_esc(label) + "{}" + _esc(suffix))
            convs.append((_POS[name], one))
        parts.append(_esc(head) + ",".join(items) + _esc(tail))
    return ",".join(parts), convs


Plan = list[tuple[str, "list[tuple[str, str, str, int | bytes | None]]", str]]


def _plan(mraw: bytes, dl_type: int, proto: int) -> Plan:
    """What format_key prints for keys under this mask: segments of (head, fields, tail), each field as
    (label=, name, kind, mask to print or None); a segment without fields is printed as it is."""
    m = _mask_fields(mraw)

    def shown(name: str) -> bool:
        mv = m[name]
        return bool(mv) if isinstance(mv, int) else any(mv)

    def field(label: str, name: str, kind: str, full: int) -> tuple[str, str, str, int | bytes | None]:
        mv: int | bytes | None = m[name]
        if isinstance(mv, int) and mv == full:
            mv = None
        if isinstance(mv, bytes) and all(b == 0xFF for b in mv):
            mv = None
        return (label, name, kind, mv)

    plan: Plan = []
    if m["in_port"]:
        plan.append(("in_port(", [("", "in_port", "", None)], ")"))
    if shown("vlan_tci"):
        plan.append(("vlan_tci(", [field("", "vlan_tci", "hex", 0xFFFF)], ")"))
    if shown("vlan_tci1"):
        plan.append(("vlan_tci1(", [field("", "vlan_tci1", "hex", 0xFFFF)], ")"))
    eth = [field(f"{n}=", f"dl_{n}", "mac", 0) for n in ("src", "dst") if shown(f"dl_{n}")]
    if eth:
        plan.append(("eth(", eth, ")"))
    if m["dl_type"]:
        plan.append((f"eth_type({dl_type:#06x})", [], ""))
    if dl_type == ETH_P_ARP:
        arp = [field(f"{label}=", name, kind, 0xFF)
               for label, name, kind in (("sip", "nw_src", "ip4"), ("tip", "nw_dst", "ip4"), ("op", "nw_proto", ""),
                                         ("sha", "arp_sha", "mac"), ("tha", "arp_tha", "mac")) if shown(name)]
        if arp:
            plan.append(("arp(", arp, ")"))
        return plan
    if dl_type in ETH_P_MPLS:
        if shown("label"):
            plan.append(("mpls(", [field("lse=", "label", "hex", 0xFFFFFFFF)], ")"))
        return plan
    l3 = []
    if dl_type == ETH_P_IP:
        l3 += [field(f"{label}=", name, "ip4", 0xFFFFFFFF) for label, name in (("src", "nw_src"), ("dst", "nw_dst"))
               if shown(name)]
    elif dl_type == ETH_P_IPV6:
        l3 += [field(f"{label}=", name, "ip6", 0) for label, name in (("src", "ipv6_src"), ("dst", "ipv6_dst"))
               if shown(name)]
    if dl_type == ETH_P_IPV6:
        lm = int(m["label"])
        if lm & 0xFFFFF:
            l3.append(("label=", "label", "flabel", None if lm & 0xFFFFF == 0xFFFFF else lm & 0xFFFFF))
        if lm >> 20:
            l3.append(("exthdr=", "label", "exthdr", None if lm >> 20 == 0x1FF else lm >> 20))
    l3 += [field(f"{label}=", name, "hex" if label == "tos" else "", 0xFF)
           for label, name in (("proto", "nw_proto"), ("tos", "nw_tos"), ("ttl", "nw_ttl"), ("frag", "nw_frag"))
           if shown(name)]
    if l3:
        plan.append((f"{'ipv4' if dl_type == ETH_P_IP else 'ipv6' if dl_type == ETH_P_IPV6 else 'l3'}(", l3, ")"))
    l4name = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmpv6"}.get(proto, "l4")
    labels = ("type", "code") if l4name in ("icmp", "icmpv6") else ("src", "dst")
    l4 = [field(f"{lab}=", name, "", 0xFFFF) for lab, name in zip(labels, ("tp_src", "tp_dst"), strict=True)
          if shown(name)]
    if l4:
        plan.append((f"{l4name}(", l4, ")"))
    if shown("tcp_flags"):
        plan.append(("tcp_flags(", [field("", "tcp_flags", "hex", 0x0FFF)], ")"))
    if dl_type == ETH_P_IPV6:
        nd = [field(f"{label}=", name, kind, 0) for label, name, kind in
              (("target", "nd_target", "ip6"), ("sll", "arp_sha", "mac"), ("tll", "arp_tha", "mac")) if shown(name)]
        if nd:
            plan.append(("nd(", nd, ")"))
    return plan


def format_key_reference(key: FlowKey, mask: FlowKey | None = None) -> str:
    """format_key, field by field as written: the oracle the planned version is tested against."""
    if mask is not None:
        mraw = bytes(mask)
        kraw = bytes(key)
        k = _fields_of((int.from_bytes(kraw, "little") & int.from_bytes(mraw, "little")).to_bytes(len(kraw), "little"))
        m: dict[str, int | bytes] | None = _mask_fields(mraw)
    else:
        k, m = key.fields(), None

    def shown(name: str) -> bool:
        if m is None:
            v = k[name]
            return bool(v) if isinstance(v, int) else any(v)
        mv = m[name]
        return bool(mv) if isinstance(mv, int) else any(mv)

    def part(name: str, kind: str, full: int) -> str:
        mv = None if m is None else m[name]
        if isinstance(mv, int) and mv == full:
            mv = None
        if isinstance(mv, bytes) and all(b == 0xFF for b in mv):
            mv = None
        return _fmt(k[name], mv, kind)

    out = []
    if m is None or m["in_port"]:
        out.append(f"in_port({int(k['in_port'])})")
    if shown("vlan_tci"):
        out.append(f"vlan_tci({part('vlan_tci', 'hex', 0xFFFF)})")
    if shown("vlan_tci1"):
        out.append(f"vlan_tci1({part('vlan_tci1', 'hex', 0xFFFF)})")
    eth = [f"{n}={part(f'dl_{n}', 'mac', 0)}" for n in ("src", "dst") if shown(f"dl_{n}")]
    if eth:
        out.append(f"eth({','.join(eth)})")
    dl_type = int(k["dl_type"])
    if m is None or m["dl_type"]:
        out.append(f"eth_type({dl_type:#06x})")
    if dl_type == ETH_P_ARP:
        arp = []
        for label, name, kind in (("sip", "nw_src", "ip4"), ("tip", "nw_dst", "ip4"), ("op", "nw_proto", ""),
                                  ("sha", "arp_sha", "mac"), ("tha", "arp_tha", "mac")):
            if shown(name):
                arp.append(f"{label}={part(name, kind, 0xFF)}")
        if arp:
            out.append(f"arp({','.join(arp)})")
        return ",".join(out)
    if dl_type in ETH_P_MPLS:
        if shown("label"):
            out.append(f"mpls(lse={part('label', 'hex', 0xFFFFFFFF)})")
        return ",".join(out)
    l3 = []
    if dl_type == ETH_P_IP:
        for label, name, kind in (("src", "nw_src", "ip4"), ("dst", "nw_dst", "ip4")):
            if shown(name):
                l3.append(f"{label}={part(name, kind, 0xFFFFFFFF)}")
    elif dl_type == ETH_P_IPV6:
        for label, name in (("src", "ipv6_src"), ("dst", "ipv6_dst")):
            if shown(name):
                l3.append(f"{label}={part(name, 'ip6', 0)}")
        lv, lm = int(k["label"]), (0xFFFFFFFF if m is None else int(m["label"]))
        if (lv if m is None else lm) & 0xFFFFF:
            sfx = "" if m is None or lm & 0xFFFFF == 0xFFFFF else f"/{lm & 0xFFFFF:#x}"
            l3.append(f"label={lv & 0xFFFFF:#x}{sfx}")
        if (lv if m is None else lm) >> 20:
            sfx = "" if m is None or lm >> 20 == 0x1FF else f"/{lm >> 20:#x}"
            l3.append(f"exthdr={lv >> 20:#x}{sfx}")
    for label, name in (("proto", "nw_proto"), ("tos", "nw_tos"), ("ttl", "nw_ttl"), ("frag", "nw_frag")):
        if shown(name):
            value = part(name, "hex" if label in ("tos",) else "", 0xFF)
            if label == "frag" and name == "nw_frag":
                value = {0: "no", 1: "first", 3: "later"}.get(int(k[name]), value)
            l3.append(f"{label}={value}")
    if l3:
        out.append(f"{'ipv4' if dl_type == ETH_P_IP else 'ipv6' if dl_type == ETH_P_IPV6 else 'l3'}({','.join(l3)})")
    proto = int(k["nw_proto"])
    l4name = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmpv6"}.get(proto, "l4")
    labels = ("type", "code") if l4name in ("icmp", "icmpv6") else ("src", "dst")
    l4 = [f"{lab}={part(name, '', 0xFFFF)}" for lab, name in zip(labels, ("tp_src", "tp_dst"), strict=True)
          if shown(name)]
    if l4:
        out.append(f"{l4name}({','.join(l4)})")
    if shown("tcp_flags"):
        out.append(f"tcp_flags({part('tcp_flags', 'hex', 0x0FFF)})")
    if dl_type == ETH_P_IPV6:
        nd = [f"{label}={part(name, kind, 0)}" for label, name, kind in
              (("target", "nd_target", "ip6"), ("sll", "arp_sha", "mac"), ("tll", "arp_tha", "mac")) if shown(name)]
        if nd:
            out.append(f"nd({','.join(nd)})")
    return ",".join(out)


# --- building keys and masks ------------------------------------------------------------------------

_MAC_FIELDS = {"dl_src", "dl_dst", "arp_sha", "arp_tha"}
_IP4_FIELDS = {"nw_src", "nw_dst"}
_IP6_FIELDS = {"ipv6_src", "ipv6_dst", "nd_target"}


def build(**fields: int | str | bytes) -> FlowKey:
    """A FlowKey (or a mask) from field values: ints, MAC strings for Ethernet and ARP hardware
    addresses, dotted quads for nw_src/nw_dst, IPv6 text for ipv6_src/ipv6_dst.

    >>> build(in_port=1, dl_type=0x0800, nw_dst="10.0.0.2").nw_dst == 0x0A000002
    True"""
    key = FlowKey()
    for name, value in fields.items():
        if name == "in_port":
            key.in_port = int(value)  # type: ignore[arg-type]
        elif name in _MAC_FIELDS:
            raw = mac_bytes(value) if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
            getattr(key, name)[:] = list(raw)
        elif name in _IP4_FIELDS and isinstance(value, str):
            setattr(key, name, int(ipaddress.IPv4Address(value)))
        elif name in _IP6_FIELDS:
            raw = ipaddress.IPv6Address(value).packed if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
            getattr(key, name)[:] = list(raw)
        elif name in FIELD_NAMES:
            setattr(key, name, int(value))  # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown flow key field {name!r}")
    return key


def mask_for(*names: str, **partial: int | str | bytes) -> FlowKey:
    """A mask with every bit of the named fields set, plus partial masks given as values
    (e.g. ``mask_for("dl_type", nw_dst="255.255.255.0")``)."""
    full: dict[str, int | str | bytes] = {}
    for name in names:
        if name not in FIELD_NAMES:
            raise ValueError(f"unknown flow key field {name!r}")
        size = field_layout()[name][1]
        full[name] = b"\xff" * size if name in _MAC_FIELDS | _IP6_FIELDS else (1 << (8 * size)) - 1
    full.update(partial)
    return build(**full)
