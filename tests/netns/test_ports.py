"""Every kind of port receives what the switch forwards: a veth as container runtimes make it (its peer has
neither XDP nor GRO, so the kernel drops what XDP_REDIRECT sends into it), the same veth once its peer turns
GRO on, a tap device, and a veth with two queues and an AF_XDP socket on each. (Own module: its own hosts,
with the kernel's defaults on both ends.)"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from ctl.daemon.switch import PortSpec, Switch, request
from ctl.datapath.dpif import DatapathConfig
from tests.conftest import Net, sh, unique
from tests.netns.conftest import Host
from tests.netns.test_forwarding import arrived, ping, udp_recv, udp_send
from tests.netns.test_switch import L2

TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
TAP_MAC = "02:00:00:00:00:0a"


def start(name: str, ports: list[PortSpec], state: Path) -> Switch:
    sw = Switch(name, ports, state, config=DatapathConfig(max_flows=4096), say=lambda m: None, metrics_address=None)
    sw.start()
    return sw


@pytest.fixture
def sw(hosts: list[Host], tmp_path: Path) -> Iterator[Switch]:
    s = start(unique("xspt"), [PortSpec(h.port, h.port_no) for h in hosts], tmp_path / "flows.json")
    try:
        request(s.name, "add-flows", flows=list(L2))
        yield s
    finally:
        s.shutdown(remove=True)


def tx(sw: Switch, port: int) -> tuple[int, int]:
    assert sw.dp is not None
    st = sw.dp.port_stats(port)
    return st.tx_packets, st.tx_skb_packets


def test_a_plain_veth_is_sent_to_by_the_skb_path_and_follows_its_peer(sw: Switch, hosts: list[Host]) -> None:
    h1, h2, _ = hosts
    assert sw.dp is not None
    assert all(p.tx_path == "skb" for p in sw.dp.ports.values())  # the peers have neither XDP nor GRO
    assert ping(h1, h2.ip, 2)  # first packets through the upcall path, to make the megaflows
    before = tx(sw, 2)
    assert ping(h1, h2.ip, 5)
    after = tx(sw, 2)
    assert after[0] - before[0] == 5 and after[1] - before[1] == 5  # all five by the skb path, counted
    shown = {p.port_no: p.tx_path for p in sw.dp.reader.ports()}
    assert shown == {1: "skb", 2: "skb", 3: "skb"}

    # what the skb path is for: forced onto XDP redirect, the kernel drops every frame (silently)
    sw.dp.set_tx_path(2, "xdp")
    assert not ping(h1, h2.ip, 2)
    assert sw.dp.refresh_tx_paths() == [f"port 2 ({h2.port}): now sent to by the skb path"]
    assert ping(h1, h2.ip, 2)

    # the container turns GRO on: the next tick moves the port to XDP redirect, and back when it turns it off
    h2.sh(f"ethtool -K {h2.ifname} gro on")
    sw.tick()
    assert sw.dp.ports[2].tx_path == "xdp"
    before = tx(sw, 2)
    assert ping(h1, h2.ip, 5)
    after = tx(sw, 2)
    assert after[0] - before[0] == 5 and after[1] == before[1]
    h2.sh(f"ethtool -K {h2.ifname} gro off")
    sw.tick()
    assert sw.dp.ports[2].tx_path == "skb" and ping(h1, h2.ip, 2)


def test_floods_reach_plain_veths_by_the_skb_path(sw: Switch, hosts: list[Host]) -> None:
    h1, h2, h3 = hosts
    request(sw.name, "add-flows", flows=["priority=20,udp,tp_dst=7005,actions=flood",
                                         "priority=20,udp,tp_dst=7006,actions=output:2,output:3"])
    # a destination MAC nobody has: the hosts' stacks drop the frames, so count them on the wire
    h1.sh(f"ip neigh replace 10.10.0.77 lladdr 02:00:00:00:00:77 dev {h1.ifname} nud permanent")
    for port in (7005, 7006):
        udp_send(h1, "10.10.0.77", port, ["first"])  # through the upcall path: the megaflow goes in
        time.sleep(0.3)
        rx = (h2.rx_packets(), h3.rx_packets())
        skb = [tx(sw, p)[1] for p in (1, 2, 3)]
        udp_send(h1, "10.10.0.77", port, ["x", "x", "x"])  # in XDP, then the skb path to each member
        time.sleep(0.3)
        assert (h2.rx_packets() - rx[0], h3.rx_packets() - rx[1]) == (3, 3), port
        assert [tx(sw, p)[1] - s for p, s in zip((1, 2, 3), skb, strict=True)] == [0, 3, 3], port  # not the ingress


@pytest.fixture
def tap(tmp_path: Path) -> Iterator[tuple[str, int]]:
    name = unique("xstap")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
        sh(f"ip link set {name} address {TAP_MAC}")
        sh(f"sysctl -qw net.ipv6.conf.{name}.disable_ipv6=1")
        sh(f"ip link set {name} up")
        yield name, fd
    finally:
        os.close(fd)
        sh(f"ip link del {name}", check=False)


def read_frames(fd: int, seconds: float) -> list[bytes]:
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        if select.select([fd], [], [], 0.1)[0]:
            out.append(os.read(fd, 2048))
    return out


def test_a_tap_device_receives_and_sends(hosts: list[Host], tap: tuple[str, int], tmp_path: Path) -> None:
    h1, h2, _ = hosts
    name, fd = tap
    ports = [PortSpec(h.port, h.port_no) for h in hosts] + [PortSpec(name, 4)]
    sw = start(unique("xstp"), ports, tmp_path / "flows.json")
    try:
        request(sw.name, "add-flows", flows=[*L2, f"priority=10,dl_dst={TAP_MAC},actions=output:4"])
        assert sw.dp is not None and sw.dp.ports[4].tx_path == "xdp"  # a tap takes XDP redirects
        h1.sh(f"ip neigh replace 10.10.0.10 lladdr {TAP_MAC} dev {h1.ifname} nud permanent")
        for i in range(3):
            udp_send(h1, "10.10.0.10", 7010, [f"to-tap-{i}"])
        got = [f for f in read_frames(fd, 1.5) if b"to-tap-" in f]
        assert len(got) == 3 and Ether(got[0]).dst == TAP_MAC
        # and what the tap's user writes goes through the switch to h1
        r = udp_recv(h1, 7011, 3)
        time.sleep(0.3)
        for i in range(3):
            frame = Ether(src=TAP_MAC, dst=h1.mac) / IP(src="10.10.0.10", dst=h1.ip) / UDP(sport=7011, dport=7011) \
                / f"from-tap-{i}".encode()
            os.write(fd, bytes(frame))
        assert arrived(r, 15) == ["from-tap-0", "from-tap-1", "from-tap-2"]
    finally:
        sw.shutdown(remove=True)


def test_a_veth_with_two_queues_gets_an_upcall_socket_per_queue(net: Net, tmp_path: Path) -> None:
    ns = net.netns()
    port, peer = net.veth(ns, quiet=True, queues=2)
    sh(f"ip addr add 10.20.0.1/24 dev {peer}", ns=ns)
    sh(f"ip neigh replace 10.20.0.2 lladdr 02:00:00:00:00:22 dev {peer} nud permanent", ns=ns)
    sw = start(unique("xsmq"), [PortSpec(port, 1)], tmp_path / "flows.json")
    try:
        socks = {q: s for (p, q), s in sw.sockets.items() if p == 1}
        assert sorted(socks) == [0, 1]
        # a rule per source port: every flow's first packet is an upcall of its own
        request(sw.name, "add-flows", flows=[f"priority=10,udp,tp_src={9000 + i},actions=drop" for i in range(64)])
        code = ("import socket\n"
                "for i in range(64):\n"
                "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "    s.bind(('', 9000 + i)); s.sendto(b'x', ('10.20.0.2', 7000)); s.close()\n")
        subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", code], check=True, timeout=30)
        deadline = time.monotonic() + 5
        while sum(s.received for s in socks.values()) < 64 and time.monotonic() < deadline:
            time.sleep(0.1)
        received = {q: s.received for q, s in socks.items()}
        assert sum(received.values()) == 64 and all(received.values()), received  # both queues carried upcalls
        assert sw.udpif is not None and sw.udpif.stats.installed == 64
    finally:
        sw.shutdown(remove=True)


def test_the_switch_says_how_it_sends_to_each_port(sw: Switch) -> None:
    import json
    import sys

    root = Path(__file__).resolve().parents[2]
    show = json.loads(subprocess.run([sys.executable, "-m", "ctl.cli", "dpctl", "show", "-n", sw.name, "-f", "json"],
                                     capture_output=True, text=True, check=True, cwd=root).stdout)
    assert {p["port_no"]: p["tx_path"] for p in show["ports"]} == {1: "skb", 2: "skb", 3: "skb"}
