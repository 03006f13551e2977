"""Ports as the kernel changes them: link events pushed by the kernel (RTNLGRP_LINK, read with pyroute2)
become OpenFlow PORT_STATUS at once, and a port whose link disappears (its container deleted) is reported
down while the rest of the switch goes on."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctl.daemon.switch import PortSpec, Switch, mgmt_path, request
from ctl.datapath.dpif_xdp import DatapathConfig
from ctl.openflow import connmgr
from ctl.openflow.codec import T
from tests.conftest import Net, sh, unique
from tests.netns.conftest import Host
from tests.netns.test_forwarding import ping
from tests.unit.ofhelpers import msg
from tests.unit.test_connmgr import Peer

pytestmark = pytest.mark.root

OFPPC_PORT_DOWN, OFPPS_LINK_DOWN = 1, 1


def port_status(p: Peer, timeout: float) -> tuple[int, int, int, int]:
    """The next PORT_STATUS: (reason, port_no, config, state)."""
    end = time.monotonic() + timeout
    while True:
        m = p.recv(timeout=max(0.05, end - time.monotonic()))
        if m[1] == T.PORT_STATUS:
            reason = m[8]
            port_no = struct.unpack_from("!I", m, 16)[0]
            config, state = struct.unpack_from("!II", m, 16 + 32)
            return reason, port_no, config, state


def test_link_events_are_port_status_at_once_and_a_vanished_port_is_down(
        hosts: list[Host], net: Net, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connmgr, "PORT_POLL_S", 3600.0)   # only the kernel's events can tell the switch now
    ns = net.netns()
    port, peer = net.veth(ns)   # a container's veth
    sw = Switch(unique("xslnk"), [*(PortSpec(h.port, h.port_no) for h in hosts), PortSpec(port, 9)],
                tmp_path / "flows.json", config=DatapathConfig(max_flows=4096), say=lambda m: None)
    sw.start()
    try:
        p = mgmt_peer(sw)
        t0 = time.monotonic()
        sh(f"ip link set {peer} down", ns=ns)   # the container's end goes down: no carrier on the port
        assert port_status(p, 5) == (2, 9, 0, OFPPS_LINK_DOWN)
        print(f"\nPORT_STATUS {1000 * (time.monotonic() - t0):.1f} ms after `ip link set down` (poll off)")
        sh(f"ip link set {peer} up", ns=ns)
        assert port_status(p, 5) == (2, 9, 0, 4)   # OFPPS_LIVE
        sh(f"ip netns del {ns}")   # the container is deleted, and its veth pair with it
        assert port_status(p, 5) == (2, 9, OFPPC_PORT_DOWN, OFPPS_LINK_DOWN)
        h1, h2, h3 = hosts
        assert ping(h1, h2.ip, 2) and ping(h3, h1.ip, 2), "the other ports go on"
        shown = json.loads(subprocess.run([str(Path(sys.executable).parent / "xdpswitch"), "dpctl", "show", "-f",
                                           "json", "--name", sw.name], capture_output=True, text=True,
                                          timeout=30).stdout)
        assert next(q for q in shown["ports"] if q["port_no"] == 9)["name"].endswith("(gone)"), shown
        assert request(sw.name, "upcall-show")["handlers"] == 1
        assert sw.revalidator is not None and sw.revalidator.is_alive()
        assert all(h.is_alive() for h in sw.handlers)
        assert sw.errors.counts() == {}, "nothing failed on the way"
    finally:
        sw.shutdown(remove=True)


# --- ports added and removed at run time (xdpswitch add-port / del-port) -------------------------------------

XDPSWITCH = Path(sys.executable).parent / "xdpswitch"
RATE = 5_000   # packets/s each way between the ports that stay


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(XDPSWITCH), *args], capture_output=True, text=True, timeout=60)


def mgmt_peer(sw: Switch) -> Peer:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(mgmt_path(sw.name)))
    p = Peer(s)
    p.handshake()
    p.send(msg(T.BARRIER_REQUEST))
    p.expect(T.BARRIER_REPLY)
    return p


def test_add_and_del_port_while_other_ports_lose_nothing(hosts: list[Host], tmp_path: Path) -> None:
    from ctl.datapath.netdev import xdp_mode
    from tests.netns.test_restart import RECEIVER, SENDER

    h1, h2, h3 = hosts
    sw = Switch(unique("xsadd"), [PortSpec(h1.port, 1), PortSpec(h2.port, 2)], tmp_path / "flows.json",
                config=DatapathConfig(max_flows=4096), say=lambda m: None)
    sw.start()
    try:
        p = mgmt_peer(sw)
        assert ping(h1, h2.ip, 1) and not ping(h1, h3.ip, 1)
        seconds = 6
        n = RATE * seconds
        recv = [h2.py(RECEIVER.format(port=7300, n=n, timeout=seconds + 30)),
                h1.py(RECEIVER.format(port=7301, n=n, timeout=seconds + 30))]
        time.sleep(0.5)
        send = [h1.py(SENDER.format(sport=7400, dst=h2.ip, port=7300, n=n, rate=RATE)),
                h2.py(SENDER.format(sport=7401, dst=h1.ip, port=7301, n=n, rate=RATE))]
        time.sleep(1.0)

        r = cli("add-port", h3.port, "--ofport", "3", "--name", sw.name)
        assert r.returncode == 0 and f"added {h3.port} as port 3" in r.stdout, r.stderr
        assert port_status(p, 5) == (0, 3, 0, 4)   # OFPPR_ADD, live
        assert ping(h1, h3.ip, 2) and ping(h3, h2.ip, 2), "NORMAL reaches the new port, and it reaches the rest"
        assert xdp_mode(h3.port) != "none"

        r = cli("del-port", h3.port, "--name", sw.name)
        assert r.returncode == 0 and "removed port 3" in r.stdout, r.stderr
        assert port_status(p, 5)[:2] == (1, 3)     # OFPPR_DELETE
        assert xdp_mode(h3.port) == "none"
        assert not ping(h1, h3.ip, 1)
        assert sw.dp is not None
        outputs = [a for f in sw.dp.dump_flows() for a in f.actions]
        assert not any(getattr(a, "port", None) == 3 for a in outputs), "no megaflow sends to the deleted port"

        sent = [int(x.communicate(timeout=seconds + 30)[0]) for x in send]
        got = [int(x.communicate(timeout=seconds + 60)[0].split(" ", 1)[0]) for x in recv]
        print(f"\nadd-port and del-port during {RATE}/s each way: sent {sent}, received {got}")
        assert sent == [n, n] and got == [n, n]
    finally:
        sw.shutdown(remove=True)


def test_port_changes_persist_across_a_restart(hosts: list[Host], tmp_path: Path) -> None:
    h1, h2, h3 = hosts
    name = unique("xsper")
    cmdline = [PortSpec(h1.port, 1), PortSpec(h2.port, 2)]

    def start() -> Switch:
        sw = Switch(name, list(cmdline), tmp_path / "flows.json", config=DatapathConfig(max_flows=4096),
                    say=lambda m: None)
        sw.start()
        return sw

    sw = start()
    try:
        sw.add_port(h3.port, 7)
        sw.del_port(h1.port)   # a port of the command line
    finally:
        sw.shutdown()
    sw = start()
    try:
        assert sorted((p.name, p.port_no) for p in sw.ports) == sorted([(h2.port, 2), (h3.port, 7)])
        assert ping(h2, h3.ip, 2) and not ping(h1, h2.ip, 1)
        sw.add_port(h1.port)   # back, with the lowest free number
        assert (h1.port, 1) in [(p.name, p.port_no) for p in sw.ports]
        assert ping(h1, h3.ip, 2)
    finally:
        sw.shutdown(remove=True)


def test_add_port_and_del_port_refusals_change_nothing(hosts: list[Host], net: Net, tmp_path: Path) -> None:
    h1, h2, h3 = hosts
    sw = Switch(unique("xsref"), [PortSpec(h1.port, 1), PortSpec(h2.port, 2)], tmp_path / "a.json",
                config=DatapathConfig(max_flows=4096), say=lambda m: None)
    other = Switch(unique("xsoth"), [PortSpec(h3.port, 1)], tmp_path / "b.json", config=DatapathConfig(max_flows=4096),
                   say=lambda m: None)
    routed, _ = net.veth()
    # a default route through an interface of our own, at the highest metric: the machine keeps its own
    sh(f"ip route add default dev {routed} metric 4294967295")
    sw.start()
    other.start()
    try:
        before = sorted((p.name, p.port_no) for p in sw.ports)
        cases = [(["add-port", "xsnosuch0"], "no interface named 'xsnosuch0'"),
                 (["add-port", h1.port], f"{h1.port} is already port 1"),
                 (["add-port", h3.port], "already has an XDP program"),
                 (["add-port", routed], "carries the default route"),
                 (["add-port", routed, "--ofport", "2"], f"port number 2 is taken by {h2.port}"),
                 (["del-port", "xsnosuch0"], "is not a port of")]
        for args, expect in cases:
            r = cli(*args, "--name", sw.name)
            assert r.returncode == 1 and expect in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r)
        assert sorted((p.name, p.port_no) for p in sw.ports) == before
        assert ping(h1, h2.ip, 2)
        assert other.dp is not None and list(other.dp.ports) == [1]
    finally:
        other.shutdown(remove=True)
        sw.shutdown(remove=True)


def test_link_info_is_the_kernels_view(net: Net) -> None:
    from ctl.datapath.netdev import link_info, links, xdp_mode

    a, _b = net.veth(queues=2)
    sh(f"ip link set {a} mtu 1400 address 02:11:22:33:44:55")
    li = link_info(a)
    assert li is not None
    assert (li.name, li.mtu, li.mac, li.rx_queues, li.driver, li.admin_up, li.xdp_mode) == \
        (a, 1400, "02:11:22:33:44:55", 2, "veth", True, "none")
    assert links()[a].ifindex == li.ifindex == socket.if_nametoindex(a)
    sh(f"ip link set {a} down")
    down = link_info(ifindex=li.ifindex)
    assert down is not None and not down.admin_up and not down.carrier
    assert link_info("xsnosuch0") is None and xdp_mode("xsnosuch0") == "unknown"
