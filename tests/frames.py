"""A corpus of malformed and unusual frames, built once and shared: the XDP parser is checked against the Python
one on it (tests/bpf/test_parser_diff.py) and the Python one against Open vSwitch's flow extraction
(tests/unit/test_parser_ovs.py, through ``ovs-ofctl parse-pcap``).

Every base frame comes whole, cut at every header boundary (and one byte either side), padded as Ethernet
pads short frames (zeros, and garbage), and with its IP length fields lying in both directions."""

from __future__ import annotations

import struct

from scapy.contrib.mpls import MPLS
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
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
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, LLC, SNAP, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP

E = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
PAY = b"0123456789abcdef"


def _bases() -> list[tuple[str, bytes, int]]:
    """(name, frame, offset of its L3 header or 0)."""
    ip = IP(src="10.0.0.1", dst="10.0.0.2", tos=0xB9, ttl=7)
    ip6 = IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0x5C, fl=0x12345, hlim=9)
    b: list[tuple[str, object, int]] = [
        ("tcp", Ether(**E) / ip / TCP(sport=1000, dport=80, flags="SA") / PAY, 14),
        ("tcp-options", Ether(**E) / ip / TCP(sport=1, dport=2, options=[("MSS", 1460), ("NOP", None)]) / PAY, 14),
        ("udp", Ether(**E) / ip / UDP(sport=53, dport=5353) / PAY, 14),
        ("sctp", Ether(**E) / ip / SCTP(sport=9, dport=10) / PAY, 14),
        ("icmp", Ether(**E) / ip / ICMP(type=3, code=4) / PAY, 14),
        ("ip-options", Ether(**E) / IP(options=b"\x01\x01\x01\x00") / UDP(sport=7, dport=8) / PAY, 14),
        ("ip-first-fragment", Ether(**E) / IP(flags="MF", id=5) / TCP(sport=3, dport=4) / PAY, 14),
        ("ip-later-fragment", Ether(**E) / IP(frag=100, proto=6) / PAY, 14),
        ("ip-gre", Ether(**E) / IP(proto=47) / PAY, 14),
        ("tcp6", Ether(**E) / ip6 / TCP(sport=5, dport=6, flags="F") / PAY, 14),
        ("udp6", Ether(**E) / ip6 / UDP(sport=1, dport=2) / PAY, 14),
        ("icmp6", Ether(**E) / ip6 / ICMPv6EchoRequest() / PAY, 14),
        ("nd-ns", Ether(**E) / IPv6() / ICMPv6ND_NS(tgt="2001:db8::7")
         / ICMPv6NDOptSrcLLAddr(lladdr="0a:00:00:00:00:09"), 14),
        ("nd-na", Ether(**E) / IPv6() / ICMPv6ND_NA(tgt="2001:db8::8") / ICMPv6NDOptMTU()
         / ICMPv6NDOptDstLLAddr(lladdr="0a:0b:0c:0d:0e:0f"), 14),
        ("nd-two-sll", Ether(**E) / IPv6() / ICMPv6ND_NS(tgt="::1") / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:09")
         / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:0a"), 14),
        ("nd-zero-option", Ether(**E) / IPv6() / ICMPv6ND_NS(tgt="::2") / (b"\x01\x00" + b"\0" * 6), 14),
        ("ipv6-ext-chain", Ether(**E) / ip6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting()
         / UDP(sport=3, dport=4) / PAY, 14),
        ("ipv6-ah", Ether(**E) / IPv6() / IPv6ExtHdrHopByHop() / AH(nh=6) / TCP(sport=8, dport=9), 14),
        ("ipv6-first-fragment", Ether(**E) / IPv6() / IPv6ExtHdrFragment(m=1) / TCP(sport=1, dport=2) / PAY, 14),
        ("ipv6-later-fragment", Ether(**E) / IPv6() / IPv6ExtHdrFragment(offset=9, nh=17) / PAY, 14),
        ("ipv6-esp", Ether(**E) / IPv6(nh=50) / PAY, 14),
        ("ipv6-nonext", Ether(**E) / IPv6(nh=59), 14),
        ("arp", Ether(**E) / ARP(op=2, hwsrc="0a:00:00:00:00:01", psrc="10.0.0.1", pdst="10.0.0.2"), 14),
        ("arp-big-op", Ether(**E) / ARP(op=0x0102), 14),
        ("arp-not-ethernet", Ether(**E) / ARP(hwtype=6), 14),
        ("rarp", Ether(**E, type=0x8035) / ARP(op=3, hwsrc="0a:00:00:00:00:02", psrc="10.0.0.3"), 14),
        ("vlan", Ether(**E) / Dot1Q(vlan=4095, prio=7) / IP() / UDP(sport=1, dport=2), 18),
        ("qinq", Ether(**E) / Dot1Q(vlan=1) / Dot1Q(vlan=2) / IP() / UDP(), 18),
        ("qinq-802.1ad", Ether(**E) / Dot1AD(vlan=7, prio=5) / Dot1Q(vlan=2) / IP() / UDP(), 18),
        ("802.1ad-ip", Ether(**E) / Dot1AD(vlan=8) / IP() / TCP(), 18),
        ("llc-snap-ip", Ether(**E) / LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0, code=0x0800) / IP()
         / UDP(sport=1, dport=2), 22),
        ("llc-snap-oui", Ether(**E) / LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0x00000C, code=0x2000) / PAY, 0),
        ("llc-snap-short-type", Ether(**E) / LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0, code=0x0100) / PAY, 0),
        ("llc", Ether(**E) / LLC(dsap=0x42, ssap=0x42, ctrl=3) / PAY, 0),
        ("mpls", Ether(**E) / MPLS(label=100, cos=3, s=1, ttl=64) / IP() / TCP(), 0),
        ("mpls-3", Ether(**E) / MPLS(label=1, s=0) / MPLS(label=2, s=0) / MPLS(label=3, s=1) / IP(), 0),
        ("mpls-mc", Ether(**E, type=0x8848) / MPLS(label=16) / PAY, 0),
        ("lldp", Ether(**E, type=0x88CC) / PAY, 0),
        ("ip-version-5", Ether(**E, type=0x0800) / (b"\x55" + bytes(IP() / UDP())[1:]), 14),
    ]
    return [(n, bytes(p), l3) for n, p, l3 in b]  # type: ignore[call-overload]


def _lie(frame: bytes, l3: int, delta: int) -> bytes | None:
    """The frame with its IPv4 total length or IPv6 payload length off by delta (None: not IP, or < 0)."""
    if not l3 or len(frame) < l3 + 40:
        return None
    v = frame[l3] >> 4
    at = l3 + 2 if v == 4 else l3 + 4 if v == 6 else None
    if at is None:
        return None
    n = struct.unpack_from("!H", frame, at)[0] + delta
    if not 0 <= n <= 0xFFFF:
        return None
    return frame[:at] + struct.pack("!H", n) + frame[at + 2:]


def corpus() -> list[tuple[str, bytes]]:
    """(name, frame) for every base, cut, padding and lie; no frame is shorter than 14 bytes."""
    out: list[tuple[str, bytes]] = []
    for name, frame, l3 in _bases():
        out.append((name, frame))
        for cut in range(14, len(frame)):
            out.append((f"{name}[:{cut}]", frame[:cut]))
        out.append((f"{name}+pad", frame + bytes(24)))
        out.append((f"{name}+garbage", frame + b"\xff\x13\x37" * 8))
        for delta in (-40, -9, -1, 1, 8, 300):
            lied = _lie(frame, l3, delta)
            if lied is not None:
                out.append((f"{name} len{delta:+d}", lied))
                out.append((f"{name} len{delta:+d}+pad", lied + bytes(24)))
    return out
