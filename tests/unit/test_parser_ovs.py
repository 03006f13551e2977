"""The packet parser agrees with Open vSwitch's flow extraction (``ovs-ofctl parse-pcap``, OVS 3.1's own
flow_extract) on the corpus of tests/frames.py: malformed and unusual frames, every truncation, padding and
lying lengths. The deliberate differences are listed in DIFFERENCES, each with its reason and a test that
it holds (docs/pipeline.md says the same)."""

from __future__ import annotations

import ipaddress
import struct
import subprocess
from pathlib import Path

import pytest

from ctl.datapath.flowkey import parse
from ctl.pipeline.ofmatch import MPLS_PARTS, PACKET_FIELDS, TCP_FLAG_NAMES, flow_of
from tests.conftest import need_tool
from tests.frames import corpus

SHORTHANDS = {"ip": (0x0800, None), "tcp": (0x0800, 6), "udp": (0x0800, 17), "sctp": (0x0800, 132),
              "icmp": (0x0800, 1), "ipv6": (0x86DD, None), "tcp6": (0x86DD, 6), "udp6": (0x86DD, 17),
              "sctp6": (0x86DD, 132), "icmp6": (0x86DD, 58), "arp": (0x0806, None), "rarp": (0x8035, None),
              "mpls": (0x8847, None), "mplsm": (0x8848, None)}
MAC = {"dl_src": "dl_src", "dl_dst": "dl_dst", "arp_sha": "arp_sha", "arp_tha": "arp_tha", "nd_sll": "arp_sha",
       "nd_tll": "arp_tha"}
IP4 = {"nw_src": "nw_src", "nw_dst": "nw_dst", "arp_spa": "nw_src", "arp_tpa": "nw_dst"}
IP6 = {"ipv6_src": "ipv6_src", "ipv6_dst": "ipv6_dst", "nd_target": "nd_target"}
INTS = {"nw_proto": "nw_proto", "arp_op": "nw_proto", "nw_ttl": "nw_ttl", "tp_src": "tp_src", "tp_dst": "tp_dst",
        "icmp_type": "tp_src", "icmp_code": "tp_dst", "ipv6_label": "ipv6_label", "dl_type": "dl_type",
        "vlan_tci": "vlan_tci"}
IGNORED = {"in_port", "nd_reserved", "nd_options_type", "igmp_group_ip4",
           "mpls_lse1", "mpls_lse2"}  # the entries below the top one: only the top is in our key
# fields OVS has no counterpart for (vlan_tci1: compared only where both read the inner tag, vlan-limit 2)
OURS_ONLY = {"in_port", "ipv6_exthdr", "vlan_tci1"}


def ovs_flow(line: str) -> dict[str, int]:
    """One parse-pcap line as our flow fields (those it does not print are zero)."""
    flow = dict.fromkeys(PACKET_FIELDS, 0)
    lse = 0
    for item in line.strip().split(","):
        k, _, v = item.partition("=")
        if not _:
            dl_type, proto = SHORTHANDS[k]
            flow["dl_type"] = dl_type
            if proto is not None:
                flow["nw_proto"] = proto
        elif k in IGNORED:
            continue
        elif k in MAC:
            flow[MAC[k]] = int(v.replace(":", ""), 16)
        elif k in IP4:
            flow[IP4[k]] = int(ipaddress.IPv4Address(v))
        elif k in IP6:
            flow[IP6[k]] = int(ipaddress.IPv6Address(v))
        elif k in INTS:
            flow[INTS[k]] = int(v, 0)
        elif k == "dl_vlan":
            flow["vlan_tci"] |= 0x1000 | int(v)
        elif k == "dl_vlan_pcp":
            flow["vlan_tci"] |= 0x1000 | int(v) << 13
        elif k == "vlan_tci1":
            flow["vlan_tci1"] = int(v, 0)
        elif k == "dl_vlan1":
            flow["vlan_tci1"] |= 0x1000 | int(v)
        elif k == "dl_vlan_pcp1":
            flow["vlan_tci1"] |= 0x1000 | int(v) << 13
        elif k == "nw_tos":
            flow["nw_tos"] |= int(v)
        elif k == "nw_ecn":
            flow["nw_tos"] |= int(v)
        elif k == "nw_frag":
            flow["nw_frag"] = {"no": 0, "first": 1, "later": 3}[v]
        elif k == "tcp_flags":
            flow["tcp_flags"] = 0 if v == "0" else sum(1 << TCP_FLAG_NAMES.index(n) for n in v.split("|"))
        elif k in MPLS_PARTS:
            shift, _bits = MPLS_PARTS[k]
            lse |= int(v) << shift
        else:
            raise AssertionError(f"parse-pcap printed a field this test does not know: {k}={v} in {line}")
    flow["mpls_lse"] = lse
    return flow


def pcap(frames: list[bytes], path: Path) -> None:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for f in frames:
        out.append(struct.pack("<IIII", 0, 0, len(f), len(f)) + f)
    path.write_bytes(b"".join(out))


@pytest.fixture(scope="module")
def ovs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, int]]:
    """Every corpus frame's flow as Open vSwitch extracts it."""
    need_tool("ovs-ofctl", "openvswitch-common")
    frames = corpus()
    path = tmp_path_factory.mktemp("pcap") / "corpus.pcap"
    pcap([f for _n, f in frames], path)
    r = subprocess.run(["ovs-ofctl", "parse-pcap", str(path)], capture_output=True, text=True, timeout=120,
                       check=True)
    lines = r.stdout.splitlines()
    assert len(lines) == len(frames), (len(lines), len(frames))
    return {name: ovs_flow(line) for (name, _f), line in zip(frames, lines, strict=True)}


def differences(name: str, frame: bytes, theirs: dict[str, int]) -> dict[str, tuple[int, int]]:
    ours = flow_of(parse(frame, 0))
    return {f: (ours[f], theirs[f]) for f in PACKET_FIELDS if f not in OURS_ONLY and ours[f] != theirs[f]}


# name prefix -> why the parser differs on purpose
DIFFERENCES = {
    "ip-version-5": "an IPv4 header whose version nibble is not 4 is refused (OVS reads it as IPv4)",
    "qinq": "a second VLAN tag (under an 802.1Q or 802.1ad one) is payload, as in ovs-vswitchd with its default "
            "vlan-limit of 1 (parse-pcap never limits, as vlan-limit 0)",
}


def test_the_parser_agrees_with_open_vswitch_on_the_corpus(ovs: dict[str, dict[str, int]]) -> None:
    bad = []
    checked = 0
    for name, frame in corpus():
        if any(name.startswith(p) for p in DIFFERENCES):
            continue
        checked += 1
        d = differences(name, frame, ovs[name])
        if d:
            bad.append(f"{name}: " + ", ".join(f"{f} ours {a:#x} OVS {b:#x}" for f, (a, b) in d.items()))
    assert checked > 1500
    assert not bad, f"{len(bad)} of {checked} frames differ:\n" + "\n".join(bad[:60])


def test_the_deliberate_differences_hold(ovs: dict[str, dict[str, int]]) -> None:
    frame = dict(corpus())["ip-version-5"]
    ours = flow_of(parse(frame, 0))
    assert ours["dl_type"] == 0x0800 and ours["nw_src"] == ours["nw_proto"] == ours["tp_src"] == 0
    assert ovs["ip-version-5"]["nw_proto"] == 17  # OVS takes it for IPv4 all the same
    for name in ("qinq", "qinq-802.1ad"):
        ours = flow_of(parse(dict(corpus())[name], 0))
        assert ours["dl_type"] == 0x8100 and ours["nw_proto"] == 0 and ours["vlan_tci"] & 0x1000
        assert ovs[name]["dl_type"] == 0x0800 and ovs[name]["vlan_tci"] == ours["vlan_tci"]


def test_with_vlan_limit_2_qinq_agrees_too(ovs: dict[str, dict[str, int]]) -> None:
    """--vlan-limit 2 (or 0): the inner tag is parsed into vlan_tci1 and the layers behind it, as parse-pcap does."""
    from ctl.datapath.flowkey import set_vlan_limit

    set_vlan_limit(0)
    try:
        bad, n = [], 0
        for name, frame in corpus():
            if name.startswith("ip-version-5"):
                continue
            ours = flow_of(parse(frame, 0))
            n += 1
            diff = {f: (ours[f], ovs[name][f]) for f in PACKET_FIELDS
                    if f not in ("in_port", "ipv6_exthdr") and ours[f] != ovs[name][f]}
            if diff:
                bad.append(f"{name}: {diff}")
        assert n > 1500 and not bad, "\n".join(bad[:40])
        assert flow_of(parse(dict(corpus())["qinq-802.1ad"], 0))["vlan_tci1"] == 0x1002
    finally:
        set_vlan_limit(1)
