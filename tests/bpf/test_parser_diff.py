"""The XDP parser and ctl/datapath/flowkey.py parse() agree on every packet: scapy-built packets of every kind,
their truncations, and random bytes (hypothesis), run through BPF_PROG_TEST_RUN.

BPF_PROG_TEST_RUN refuses XDP frames shorter than an Ethernet header (14 bytes), as no NIC delivers
them; tests/unit covers the Python parser below that."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP

from ctl.datapath.flowkey import FlowKey, format_key, key_hash, parse
from tests.bpf.conftest import Bench
from tests.frames import corpus

MIN_FRAME = 14
E = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
SAMPLES = [
    Ether(**E) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2, flags="S"),
    Ether(**E) / IP(tos=0xFF, ttl=1) / UDP(sport=53, dport=5353) / b"payload",
    Ether(**E) / IP(options=b"\x01" * 8) / TCP(options=[("MSS", 1460)]),
    Ether(**E) / IP() / ICMP(type=3, code=4),
    Ether(**E) / IP() / SCTP(sport=9, dport=10),
    Ether(**E) / IP(flags="MF") / UDP(),
    Ether(**E) / IP(frag=5, proto=6) / (b"x" * 40),
    Ether(**E) / IP(proto=47) / (b"gre" * 5),
    Ether(**E) / IP() / TCP(dataofs=4),  # a data offset under 5 words: no L4 fields
    Ether(**E) / IP() / TCP(dataofs=15) / b"x",  # one beyond the IP payload: no L4 fields
    Ether(**E) / IP(len=24) / UDP(sport=7, dport=9),  # a UDP header cut by the IP total length (the rest is padding)
    Ether(**E) / IP(len=36) / TCP(sport=7, dport=9),
    Ether(**E) / Dot1Q(vlan=4095, prio=7) / IP() / UDP(),
    Ether(**E) / Dot1Q(vlan=1) / Dot1Q(vlan=2) / IP() / UDP(),
    Ether(**E) / Dot1AD(vlan=7, prio=5) / Dot1Q(vlan=2) / IP() / UDP(),  # QinQ: the inner tag is payload
    Ether(**E) / Dot1AD(vlan=8) / IP() / TCP(),
    Ether(**E) / Dot1Q(vlan=3, type=0x0100) / (b"x" * 30),
    Ether(**E) / ARP(op=1, psrc="10.0.0.1", pdst="10.0.0.2"),
    Ether(**E) / ARP(op=0x0102),
    Ether(**E) / ARP(hwtype=6),
    Ether(**E) / IPv6(src="2001:db8::1", dst="ff02::1", tc=0xAB, fl=0xFFFFF) / TCP(sport=7, dport=8),
    Ether(**E) / IPv6() / UDP(sport=1, dport=2),
    Ether(**E) / IPv6() / ICMPv6EchoRequest(),
    Ether(**E) / IPv6() / ICMPv6EchoReply(),
    Ether(**E) / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting() / UDP(),
    Ether(**E) / IPv6() / IPv6ExtHdrFragment(m=1) / TCP(),
    Ether(**E) / IPv6() / IPv6ExtHdrFragment(offset=9) / UDP(),
    Ether(**E) / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrHopByHop() / IPv6ExtHdrHopByHop()
    / IPv6ExtHdrHopByHop() / IPv6ExtHdrHopByHop() / UDP(),
    Ether(**E) / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrHopByHop() / IPv6ExtHdrHopByHop()
    / IPv6ExtHdrHopByHop() / UDP(),
    Ether(**E) / IPv6(nh=0) / b"\x11\x10",  # hop-by-hop header claiming 136 bytes
    Ether(**E) / IPv6() / ICMPv6ND_NS(tgt="2001:db8::7") / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:09"),
    Ether(**E) / IPv6() / ICMPv6ND_NA(tgt="2001:db8::8") / ICMPv6NDOptMTU()
    / ICMPv6NDOptDstLLAddr(lladdr="0a:0b:0c:0d:0e:0f"),
    Ether(**E) / IPv6() / ICMPv6ND_NS(tgt="::1") / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:09")
    / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:0a"),  # a second source address voids the ND fields
    Ether(**E) / IPv6() / ICMPv6ND_NS(tgt="::2") / (b"\x01\x00" + b"\0" * 6),  # a zero-length option
    Ether(**E) / IPv6(plen=32) / ICMPv6ND_NA(tgt="::3") / ICMPv6NDOptDstLLAddr() / (b"\0" * 16),  # padding
    Ether(**E) / IPv6() / IPv6ExtHdrRouting() / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP(),
    Ether(**E) / IPv6() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / UDP(),
    Ether(**E) / IPv6(nh=50) / (b"esp" * 8),
    Ether(**E) / IPv6(nh=59),
    Ether(**E) / MPLS(label=100, cos=3, s=1, ttl=64) / IP() / TCP(),
    Ether(**E) / MPLS(label=0xFFFFF, s=0, ttl=1) / MPLS(label=7, s=1) / IPv6() / UDP(),
    Ether(**E, type=0x8848) / MPLS(label=16) / (b"x" * 20),
    Ether(**E) / Dot1Q(vlan=5) / MPLS(label=200) / IP() / UDP(),
    Ether(**E, type=0x88CC) / (b"lldp" * 10),
    Ether(**E, type=0x05DC) / (b"llc" * 10),
]


def xdp_key(tb: Bench, frame: bytes, in_port: int) -> FlowKey:
    tb.run(frame, in_port)
    return FlowKey.from_bytes(tb.scratch_key())


def check(tb: Bench, frame: bytes, in_port: int = 1) -> None:
    got = xdp_key(tb, frame, in_port)
    want = parse(frame, in_port)
    assert bytes(got) == bytes(want), f"XDP {format_key(got)}\n   Python {format_key(want)}\n   {frame.hex()}"
    assert tb.scratch_hash() == key_hash(want)
    tb.check_short_key(got)


def test_every_sample_and_every_truncation(tb: Bench) -> None:
    n = 0
    for pkt in SAMPLES:
        frame = bytes(pkt)
        for cut in range(len(frame), MIN_FRAME - 1, -1):
            check(tb, frame[:cut], in_port=2)
            n += 1
    assert n > 800


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=MIN_FRAME, max_size=200))
def test_random_bytes(tb: Bench, data: bytes) -> None:
    check(tb, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8, 0x8847, 0x8848]), st.binary(min_size=0, max_size=120))
def test_random_bytes_behind_a_real_ethernet_type(tb: Bench, dl_type: int, body: bytes) -> None:
    check(tb, bytes(Ether(**E, type=dl_type)) + body, in_port=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 15), st.integers(0, 15), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
       st.integers(0, 255), st.binary(max_size=80))
def test_random_ipv4_headers(tb: Bench, version: int, ihl: int, tot: int, frag: int, proto: int,
                             tail: bytes) -> None:
    hdr = bytes(IP(version=version, ihl=ihl, len=tot, proto=proto))[:20]
    hdr = hdr[:6] + frag.to_bytes(2, "big") + hdr[8:]
    check(tb, bytes(Ether(**E)) + hdr + tail)


def test_the_corpus_checked_against_open_vswitch(tb: Bench) -> None:
    """tests/frames.py's corpus (the one tests/unit/test_parser_ovs.py checks the Python parser on against
    ovs-ofctl parse-pcap): the XDP parser agrees with the Python one on every frame of it."""
    n = 0
    for _name, frame in corpus():
        check(tb, frame, in_port=3)
        n += 1
    assert n > 1500
