"""The Python flow key and parser, alone (the bpf tier compares them with the compiled C)."""

import random
import struct
from collections import Counter

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q, Ether

from ctl.datapath import flowkey
from ctl.datapath.flowkey import FlowKey, build, format_key, key_hash, mask_for, parse

MACS = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")

# The offsets the C compiler gives struct flow_key (xdp/dp_structs.h); tests/bpf checks them against it.
C_LAYOUT = {
    "in_port": (0, 4), "vlan_tci": (4, 2), "dl_type": (6, 2), "dl_dst": (8, 6), "dl_src": (14, 6),
    "nw_src": (20, 4), "nw_dst": (24, 4), "nw_proto": (28, 1), "nw_tos": (29, 1), "nw_ttl": (30, 1),
    "nw_frag": (31, 1), "tp_src": (32, 2), "tp_dst": (34, 2), "tcp_flags": (36, 2), "arp_sha": (38, 6),
    "arp_tha": (44, 6), "vlan_tci1": (50, 2), "label": (52, 4), "ipv6_src": (56, 16), "ipv6_dst": (72, 16),
    "nd_target": (88, 16),
}


def test_layout_matches_the_c_header() -> None:
    assert flowkey.FLOW_KEY_SIZE == 104
    assert flowkey.field_layout() == C_LAYOUT


def test_in_port_is_host_order_and_the_rest_network_order() -> None:
    k = build(in_port=0x01020304, dl_type=0x0800, nw_src="10.0.0.1", tp_src=80)
    raw = bytes(k)
    assert raw[0:4] == struct.pack("<I", 0x01020304)
    assert raw[6:8] == b"\x08\x00"
    assert raw[20:24] == bytes([10, 0, 0, 1])
    assert raw[32:34] == b"\x00\x50"
    assert FlowKey.from_bytes(raw) == k


def test_parse_tcp_over_vlan() -> None:
    pkt = bytes(Ether(**MACS) / Dot1Q(vlan=10, prio=3) / IP(src="10.0.0.1", dst="10.0.0.2", tos=0xB8, ttl=9)
                / TCP(sport=1234, dport=80, flags="SA"))
    k = parse(pkt, in_port=3)
    assert k.in_port == 3
    assert k.vlan_tci == (3 << 13) | 10 | flowkey.VLAN_CFI
    assert k.dl_type == 0x0800
    assert bytes(k.dl_src) == bytes.fromhex("020000000001")
    assert (k.nw_src, k.nw_dst) == (0x0A000001, 0x0A000002)
    assert (k.nw_proto, k.nw_tos, k.nw_ttl, k.nw_frag) == (6, 0xB8, 9, 0)
    assert (k.tp_src, k.tp_dst, k.tcp_flags) == (1234, 80, 0x12)


def test_parse_arp_icmp_and_ipv6() -> None:
    arp = parse(bytes(Ether(**MACS) / ARP(op=2, hwsrc=MACS["src"], psrc="10.0.0.1", pdst="10.0.0.2")))
    assert (arp.dl_type, arp.nw_proto, arp.nw_src, arp.nw_dst) == (0x0806, 2, 0x0A000001, 0x0A000002)
    assert bytes(arp.arp_sha) == bytes.fromhex("020000000001")
    icmp = parse(bytes(Ether(**MACS) / IP() / ICMP(type=8, code=0)))
    assert (icmp.nw_proto, icmp.tp_src, icmp.tp_dst) == (1, 8, 0)
    v6 = parse(bytes(Ether(**MACS) / IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0x20, hlim=7)
                     / IPv6ExtHdrHopByHop() / ICMPv6EchoRequest()))
    assert (v6.dl_type, v6.nw_proto, v6.nw_tos, v6.nw_ttl, v6.tp_src) == (0x86DD, 58, 0x20, 7, 128)
    assert bytes(v6.ipv6_dst) == bytes.fromhex("20010db8000000000000000000000002")


def test_fragments() -> None:
    first = parse(bytes(Ether() / IP(flags="MF", frag=0) / UDP(sport=5, dport=6)))
    later = parse(bytes(Ether() / IP(frag=100, proto=17) / b"12345678"))
    assert (first.nw_frag, first.tp_src) == (flowkey.FLOW_NW_FRAG_ANY, 5)
    assert (later.nw_frag, later.tp_src) == (flowkey.FLOW_NW_FRAG_ANY | flowkey.FLOW_NW_FRAG_LATER, 0)
    v6later = parse(bytes(Ether() / IPv6() / IPv6ExtHdrFragment(offset=3, nh=17) / b"12345678"))
    assert (v6later.nw_proto, v6later.nw_frag, v6later.tp_src) == (44, 3, 0)  # the fragment header's, as OVS


@pytest.mark.parametrize("cut", [0, 5, 13, 14, 20, 33, 34, 41])
def test_truncated_packets_stop_at_the_broken_layer(cut: int) -> None:
    full = bytes(Ether(**MACS) / IP(src="1.2.3.4", dst="5.6.7.8") / UDP(sport=1, dport=2))
    k = parse(full[:cut])
    if cut < 14:
        assert bytes(k)[4:] == bytes(100)
    elif cut < 14 + 28:  # IPv4 tot_len (28) no longer fits: L3 and L4 stay zero
        assert k.dl_type == 0x0800 and k.nw_src == 0 and k.tp_src == 0


def test_802_3_frames_get_dl_type_none() -> None:
    assert parse(bytes(Ether(type=0x0100) / (b"x" * 30))).dl_type == flowkey.FLOW_DL_TYPE_NONE


def test_masks_and_hash() -> None:
    k = parse(bytes(Ether(**MACS) / IP(src="10.1.2.3") / UDP()), in_port=2)
    m = mask_for("in_port", "dl_type", nw_src="255.255.0.0")
    mk = k.masked(m)
    assert mk.in_port == 2 and mk.nw_src == 0x0A010000 and mk.tp_src == 0 and bytes(mk.dl_src) == bytes(6)
    assert key_hash(k) == key_hash(FlowKey.from_bytes(bytes(k)))
    assert key_hash(k) != key_hash(mk)
    assert 0 <= key_hash(k) < 2**32
    with pytest.raises(ValueError, match="unknown flow key field"):
        mask_for("nw_bogus")


def test_mf_hash_is_the_c_mixing_seeded_over_the_masks_words() -> None:
    # this is the loop of xdp/dp_hash.h's mf_hash_masked() over every word (an all-ones mask), and over the words a
    # mask covers (the bpf tier checks the kernel's hashes and places against flowkey's)
    def loop(masked: bytes, seed: int, mask: bytes | None = None) -> int:
        m64 = 2**64 - 1
        w = struct.unpack("<13Q", masked)
        m = struct.unpack("<13Q", mask) if mask else (1,) * 13
        a, b = 0x9E3779B97F4A7C15 ^ seed, 0xC2B2AE3D27D4EB4F ^ (seed << 32)
        for i in range(13):
            if not m[i]:
                continue
            if i % 2:
                b = ((b ^ w[i]) * 0xC4CEB9FE1A85EC53) & m64
            else:
                a = ((a ^ w[i]) * 0xFF51AFD7ED558CCD) & m64
        h = a ^ (b >> 29) ^ ((b << 35) & m64)
        h = ((h ^ (h >> 33)) * 0xFF51AFD7ED558CCD) & m64
        h = ((h ^ (h >> 33)) * 0xC4CEB9FE1A85EC53) & m64
        return h ^ (h >> 33)

    rng = random.Random(5)
    for _ in range(300):
        raw, seed = rng.randbytes(104), rng.getrandbits(32)
        assert flowkey.mf_hash(raw, seed) == loop(raw, seed) < 2**64
        mask = bytes(rng.choice((0, 0, 0xFF)) for _ in range(104))
        masked = bytes(x & y for x, y in zip(raw, mask, strict=True))
        words = flowkey.mask_words(mask)
        assert flowkey.mf_hash(masked, seed, words) == loop(masked, seed, mask)
    m = bytes(mask_for("in_port", "tp_dst"))
    assert flowkey.mask_words(m) == 0b10001  # word 0 (in_port) and word 4 (the L4 ports)
    assert flowkey.mask_words(bytes(104)) == 0 and flowkey.mask_words(b"\xff" * 104) == flowkey.ALL_WORDS
    raw = bytes(parse(bytes(Ether(**MACS) / IP() / UDP()), in_port=1))
    assert flowkey.mf_hash(raw, 1) != flowkey.mf_hash(raw, 2)  # the seed changes every hash
    flipped = bytearray(raw)
    flipped[100] ^= 1  # the last word counts too
    assert flowkey.mf_hash(bytes(flipped), 1) != flowkey.mf_hash(raw, 1)


@pytest.mark.parametrize("field", ["nw_src", "tp_dst", "dl_dst", "ipv6_dst"])
def test_mf_hash_spreads_keys_that_differ_in_one_field(field: str) -> None:
    # a megaflow's bucket is the hash's low bits, and so is the EMC's slot: keys that differ only in the high
    # half of one word (nw_src) once all landed in one bucket, so every one of them must spread
    n_buckets, n = 8192, 5000
    seed = flowkey.mf_seed(0x1234567, 3)
    buckets: Counter[int] = Counter()
    emc: Counter[int] = Counter()
    sub: Counter[int] = Counter()  # a subtable of in_port and field: the hash of just its words
    words = flowkey.mask_words(bytes(mask_for("in_port", field)))
    for i in range(1, n + 1):
        value: object = {"nw_src": (10 << 24) | i, "tp_dst": i, "dl_dst": i.to_bytes(6, "big"),
                         "ipv6_dst": (0x20010DB8 << 96 | i).to_bytes(16, "big")}[field]
        key = build(in_port=1, **{field: value})
        buckets[flowkey.mf_hash(bytes(key), seed) & (n_buckets - 1)] += 1
        emc[flowkey.key_hash(key) & (n_buckets - 1)] += 1
        sub[flowkey.mf_hash(bytes(key), seed, words) & (n_buckets - 1)] += 1
    for c in (buckets, emc, sub):  # n in n_buckets: about 3780 buckets used, at most 6 or 7 in one
        assert len(c) > 3500 and max(c.values()) <= 8, (len(c), max(c.values()))


@pytest.mark.parametrize("field", ["in_port", "vlan_tci", "dl_src", "nw_dst", "tp_src", "tcp_flags", "label",
                                   "ipv6_src_prefix", "ipv6_dst", "nd_target", "arp_sha", "vlan_tci1"])
def test_flow_hash_spreads_flows_that_differ_in_any_field(field: str) -> None:
    # the flow hash (the EMC's slot and the mask hint's) multiplies the words of the common fields one by one and the
    # others in XORed pairs: flows that differ in any one field, in the high or the low half of a word, still spread
    n_slots, n = 8192, 3000
    slots: Counter[int] = Counter()
    for i in range(1, n + 1):
        if field == "ipv6_src_prefix":  # one host number in 3000 /64 prefixes: the address's high half
            key = build(in_port=1, ipv6_src=(0x20010DB8 << 96 | i << 64 | 1).to_bytes(16, "big"))
        else:
            value: object = {"dl_src": i.to_bytes(6, "big"), "arp_sha": i.to_bytes(6, "big"),
                             "ipv6_dst": (0x20010DB8 << 96 | i).to_bytes(16, "big"),
                             "nd_target": (0xFE80 << 112 | i).to_bytes(16, "big"),
                             "vlan_tci": 0x1000 | i, "vlan_tci1": 0x1000 | i}.get(field, i)
            key = build(**{"in_port": 1, field: value})
        slots[key_hash(key) & (n_slots - 1)] += 1
    # 3000 flows in 8192 slots: about 2510 slots used at random, at most 6 or 7 in one
    assert len(slots) > 2100 and max(slots.values()) <= 8, (len(slots), max(slots.values()))


def test_flow_hash_is_the_c_formula() -> None:
    # xdp/parser.h flow_key_hash() written out: words 0-4 alone, then 5^6, 7^8, 9^10, 11^12, each times its
    # constant, XORed, folded; the bpf tier checks the kernel's value for every parsed sample against key_hash
    muls = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x165667B19E3779F9,
            0xBF58476D1CE4E5B9, 0x27D4EB2F165667C5, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)
    rng = random.Random(9)
    for _ in range(200):
        raw = rng.randbytes(104)
        w = struct.unpack("<13Q", raw)
        parts = [w[0], w[1], w[2], w[3], w[4], w[5] ^ w[6], w[7] ^ w[8], w[9] ^ w[10], w[11] ^ w[12]]
        x = 0
        for v, m in zip(parts, muls, strict=True):
            x ^= (v * m) % 2**64
        x ^= x >> 32
        assert key_hash(FlowKey.from_bytes(raw)) == (x * 0x9E3779B97F4A7C15) % 2**64 >> 32


def test_format_key_like_dpctl() -> None:
    k = parse(bytes(Ether(**MACS) / IP(src="10.1.2.3", dst="10.0.0.9") / TCP(sport=1, dport=22)), in_port=1)
    m = mask_for("in_port", "dl_type", "nw_proto", "tp_dst", nw_src="255.255.255.0")
    assert format_key(k, m) == ("in_port(1),eth_type(0x0800),ipv4(src=10.1.2.0/255.255.255.0,proto=6),"
                                "tcp(dst=22)")


def test_planned_formatting_matches_the_reference_on_random_keys_and_masks() -> None:
    """format_key plans what to print once per mask (dumps of 100k megaflows); it prints exactly what the
    field-by-field reference prints."""
    import random

    from ctl.datapath.flowkey import format_key_reference

    rnd = random.Random(7)
    for _ in range(3000):
        key = FlowKey.from_bytes(bytes(rnd.getrandbits(8) for _ in range(104)))
        mask = FlowKey.from_bytes(bytes(rnd.choice((0, 0, 0xFF, rnd.getrandbits(8))) for _ in range(104)))
        key.dl_type = rnd.choice((0x0800, 0x86DD, 0x0806, 0x05FF, rnd.getrandbits(16)))
        key.nw_proto = rnd.choice((1, 6, 17, 58, 132, rnd.getrandbits(8)))
        key.nw_frag = rnd.choice((0, 1, 3, 2))
        mask.dl_type = rnd.choice((0xFFFF, 0xFFFF, 0))
        assert format_key(key, mask) == format_key_reference(key, mask)
        assert format_key(key) == format_key_reference(key)
