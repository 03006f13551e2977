"""The datapath action cases shared by the XDP test (tests/bpf/test_actions.py) and the user-space executor's
test (tests/unit/test_execute.py): input packet, actions, expected verdict, output bytes and drop reasons.
Expected packets are built by scapy with fresh checksums, so every incremental checksum update is checked."""

from __future__ import annotations

from dataclasses import dataclass, field

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Packet

from ctl.datapath import dpif
from ctl.datapath.dpif import (
    DpDecTtl,
    DpDrop,
    DpFlood,
    DpOutput,
    DpPopVlan,
    DpPushVlan,
    DpSetDscp,
    DpSetEthDst,
    DpSetEthSrc,
    DpSetIpv4Dst,
    DpSetIpv4Src,
    DpSetIpv6Dst,
    DpSetIpv6Src,
    DpSetTpDst,
    DpSetTpSrc,
    DpSetVlan,
    DpUpcall,
)

XDP_DROP, XDP_REDIRECT = 1, 4

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
PAY = b"0123456789abcdef"


OPTS = b"\x01" * 7 + b"\x00"  # eight bytes of IPv4 options (no-ops, end): the L4 header at 42, not 34


def eth(**kw: object) -> Packet:
    return Ether(src=A, dst=B, **kw)


def v4(**kw: object) -> Packet:
    return IP(src="10.0.0.1", dst="10.0.0.2", **kw)


def v6(**kw: object) -> Packet:
    return IPv6(src="2001:db8::1", dst="2001:db8::2", **kw)


def tcp() -> Packet:
    return TCP(sport=1000, dport=80, flags="PA", seq=7) / PAY


def udp(**kw: object) -> Packet:
    return UDP(sport=5000, dport=53, **kw) / PAY


@dataclass
class Case:
    desc: str
    pkt: Packet
    actions: list[dpif.Action]
    verdict: int
    out: Packet | None = None          # expected frame; None: the input, unchanged
    tx: dict[int, int] | None = None   # port -> tx packets delta; default: the one output port, if any
    drops: dict[str, int] = field(default_factory=dict)  # reason -> delta


CASES = [
    Case("output", eth() / v4() / udp(), [DpOutput(2)], XDP_REDIRECT, tx={2: 1}),
    Case("output to the ingress port", eth() / v4() / udp(), [DpOutput(1)], XDP_REDIRECT, tx={1: 1}),
    Case("drop", eth() / v4() / udp(), [DpDrop()], XDP_DROP, drops={"action": 1}),
    Case("no actions drops", eth() / v4() / udp(), [], XDP_DROP, drops={"action": 1}),
    Case("flood", eth() / v4() / udp(), [DpFlood()], XDP_REDIRECT),
    Case("several ports", eth() / v4() / udp(), [DpOutput(2), DpOutput(3)], XDP_REDIRECT),
    Case("output to a missing port", eth() / v4() / udp(), [DpOutput(9)], XDP_DROP, drops={"no_port": 1}),
    Case("set eth src and dst", eth() / v4() / udp(), [DpSetEthSrc("02:11:22:33:44:55"), DpSetEthDst(A), DpOutput(2)],
         XDP_REDIRECT, Ether(src="02:11:22:33:44:55", dst=A) / v4() / udp(), tx={2: 1}),
    Case("push vlan", eth() / v4() / tcp(), [DpPushVlan(100, 5), DpOutput(2)], XDP_REDIRECT,
         eth() / Dot1Q(vlan=100, prio=5) / v4() / tcp()),
    Case("push 802.1ad tag", eth() / v4() / tcp(), [DpPushVlan(7, 0, 0x88A8), DpOutput(2)], XDP_REDIRECT,
         eth(type=0x88A8) / Dot1Q(vlan=7) / v4() / tcp()),
    Case("pop vlan", eth() / Dot1Q(vlan=100) / v4() / tcp(), [DpPopVlan(), DpOutput(2)], XDP_REDIRECT,
         eth() / v4() / tcp()),
    Case("modify vlan", eth() / Dot1Q(vlan=100, prio=1) / v4() / tcp(), [DpSetVlan(200, 6), DpOutput(2)],
         XDP_REDIRECT, eth() / Dot1Q(vlan=200, prio=6) / v4() / tcp()),
    # 802.1ad: an outer tag pushed onto a tagged frame, popped again, and the inner one rewritten (the fast path
    # counts the tags a frame carries)
    Case("push, pop and modify with two tags", eth() / Dot1Q(vlan=100, prio=1) / v4() / tcp(),
         [DpPushVlan(7, 0, 0x88A8), DpPopVlan(), DpSetVlan(9, 3), DpOutput(2)], XDP_REDIRECT,
         eth() / Dot1Q(vlan=9, prio=3) / v4() / tcp()),
    Case("push an 802.1ad tag onto a tagged frame", eth() / Dot1Q(vlan=100) / v4() / udp(),
         [DpPushVlan(7, 2, 0x88A8), DpOutput(2)], XDP_REDIRECT,
         eth(type=0x88A8) / Dot1Q(vlan=7, prio=2) / Dot1Q(vlan=100) / v4() / udp()),
    Case("set ipv4 src, tcp", eth() / v4() / tcp(), [DpSetIpv4Src("192.0.2.77"), DpOutput(2)], XDP_REDIRECT,
         eth() / IP(src="192.0.2.77", dst="10.0.0.2") / tcp()),
    Case("set ipv4 dst, udp", eth() / v4() / udp(), [DpSetIpv4Dst("198.51.100.200"), DpOutput(2)], XDP_REDIRECT,
         eth() / IP(src="10.0.0.1", dst="198.51.100.200") / udp()),
    Case("set ipv4 src, udp without checksum", eth() / v4() / udp(chksum=0), [DpSetIpv4Src("1.2.3.4"), DpOutput(2)],
         XDP_REDIRECT, eth() / IP(src="1.2.3.4", dst="10.0.0.2") / udp(chksum=0)),
    Case("set ipv4 dst, icmp", eth() / v4() / ICMP() / PAY, [DpSetIpv4Dst("10.9.9.9"), DpOutput(2)], XDP_REDIRECT,
         eth() / IP(src="10.0.0.1", dst="10.9.9.9") / ICMP() / PAY),
    Case("set dscp ipv4, ecn kept", eth() / v4(tos=0x03) / tcp(), [DpSetDscp(46), DpOutput(2)], XDP_REDIRECT,
         eth() / v4(tos=(46 << 2) | 3) / tcp()),
    Case("set dscp ipv6, ecn kept", eth() / v6(tc=0x01, fl=0x12345) / tcp(), [DpSetDscp(10), DpOutput(2)],
         XDP_REDIRECT, eth() / v6(tc=(10 << 2) | 1, fl=0x12345) / tcp()),
    Case("dec ttl ipv4", eth() / v4(ttl=64) / udp(), [DpDecTtl(), DpOutput(2)], XDP_REDIRECT,
         eth() / v4(ttl=63) / udp()),
    Case("dec ttl ipv6", eth() / v6(hlim=2) / udp(), [DpDecTtl(), DpOutput(2)], XDP_REDIRECT,
         eth() / v6(hlim=1) / udp()),
    Case("dec ttl at 1 drops", eth() / v4(ttl=1) / udp(), [DpDecTtl(), DpOutput(2)], XDP_DROP,
         drops={"ttl_expired": 1}),
    Case("dec hop limit at 1 drops", eth() / v6(hlim=1) / udp(), [DpDecTtl(), DpOutput(2)], XDP_DROP,
         drops={"ttl_expired": 1}),
    Case("set ipv6 src, tcp", eth() / v6() / tcp(), [DpSetIpv6Src("fd00::99"), DpOutput(2)], XDP_REDIRECT,
         eth() / IPv6(src="fd00::99", dst="2001:db8::2") / tcp()),
    Case("set ipv6 dst, udp", eth() / v6() / udp(), [DpSetIpv6Dst("fe80::1:2:3:4"), DpOutput(2)], XDP_REDIRECT,
         eth() / IPv6(src="2001:db8::1", dst="fe80::1:2:3:4") / udp()),
    Case("set ipv6 dst, icmpv6", eth() / v6() / ICMPv6EchoRequest(data=PAY),
         [DpSetIpv6Dst("2001:db8::ff"), DpOutput(2)],
         XDP_REDIRECT, eth() / IPv6(src="2001:db8::1", dst="2001:db8::ff") / ICMPv6EchoRequest(data=PAY)),
    Case("set tcp ports", eth() / v4() / tcp(), [DpSetTpSrc(1), DpSetTpDst(65535), DpOutput(2)], XDP_REDIRECT,
         eth() / v4() / TCP(sport=1, dport=65535, flags="PA", seq=7) / PAY),
    Case("set tcp ports behind ip options", eth() / v4(options=OPTS) / tcp(), [DpSetTpDst(8443), DpOutput(2)],
         XDP_REDIRECT, eth() / v4(options=OPTS) / TCP(sport=1000, dport=8443, flags="PA", seq=7) / PAY),
    Case("set ipv4 dst, udp behind ip options", eth() / v4(options=OPTS) / udp(),
         [DpSetIpv4Dst("10.3.3.3"), DpOutput(2)], XDP_REDIRECT,
         eth() / IP(src="10.0.0.1", dst="10.3.3.3", options=OPTS) / udp()),
    Case("set udp ports over ipv6", eth() / v6() / udp(), [DpSetTpSrc(4242), DpSetTpDst(4343), DpOutput(2)],
         XDP_REDIRECT, eth() / v6() / UDP(sport=4242, dport=4343) / PAY),
    Case("set sctp port is unsupported", eth() / v4() / SCTP(sport=1, dport=2), [DpSetTpDst(3), DpOutput(2)],
         XDP_DROP, drops={"unsupported": 1}),
    Case("set ipv4 on ipv6 is refused", eth() / v6() / udp(), [DpSetIpv4Dst("1.1.1.1"), DpOutput(2)], XDP_DROP,
         drops={"bad_action": 1}),
    Case("pop without a tag is refused", eth() / v4() / udp(), [DpPopVlan(), DpOutput(2)], XDP_DROP,
         drops={"bad_action": 1}),
    Case("push vlan, then rewrite l3 and l4", eth() / v4() / tcp(),
         [DpPushVlan(5), DpSetIpv4Dst("10.1.1.1"), DpSetTpDst(8080), DpDecTtl(), DpOutput(3)], XDP_REDIRECT,
         eth() / Dot1Q(vlan=5) / IP(src="10.0.0.1", dst="10.1.1.1", ttl=63)
         / TCP(sport=1000, dport=8080, flags="PA", seq=7) / PAY, tx={3: 1}),
    Case("pop vlan, then rewrite ipv6", eth() / Dot1Q(vlan=9) / v6() / udp(),
         [DpPopVlan(), DpSetIpv6Src("2001:db8::5"), DpDecTtl(), DpOutput(3)], XDP_REDIRECT,
         eth() / IPv6(src="2001:db8::5", dst="2001:db8::2", hlim=63) / udp()),
    Case("userspace without a socket is dropped", eth() / v4() / udp(), [DpUpcall()], XDP_DROP,
         drops={"no_upcall_socket": 1}),
]
