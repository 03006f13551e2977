"""A real SDN controller drives the switch: os-ken's simple_switch_13 app, started by the test.

os-ken 3.1.1 (its manager) runs from its own venv with the ``simple_switch_13.py`` of the os-ken 1.4.1
wheel, unmodified; ``scripts/test.sh`` sets both up under ``.cache/``. The three hosts ping each other, the
controller learns their MACs from PACKET_INs and installs flows, and once it has the traffic runs as
megaflow and EMC hits in XDP. Then the controller is killed: the fail mode decides what happens."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctl.daemon.switch import PortSpec, Switch, request
from ctl.datapath.dpif_xdp import DatapathConfig
from ctl.openflow.connmgr import ChannelConfig
from tests.conftest import IN_CI, unique
from tests.netns.conftest import Host
from tests.netns.test_forwarding import ping
from tests.netns.test_ofctl import need_ofctl, ofctl

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
OSKEN = Path(os.environ.get("XDPSWITCH_OSKEN", ROOT / ".cache" / "osken" / "bin" / "osken-manager"))
APP = Path(os.environ.get("XDPSWITCH_OSKEN_APP", ROOT / ".cache" / "simple_switch_13.py"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Controller:
    """osken-manager running simple_switch_13; with tls (key, certificate, CA file) it listens for TLS only."""

    def __init__(self, log: Path, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.tls = tls
        if not OSKEN.exists() or not APP.exists():
            msg = f"os-ken is not set up ({OSKEN}, {APP}); scripts/test.sh sets it up"
            if IN_CI:
                pytest.fail(msg)
            pytest.skip(msg)
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as f:
            listen = ["--ofp-tcp-listen-port", str(self.port)]
            if self.tls is not None:
                key, cert, ca = self.tls
                listen = ["--ofp-ssl-listen-port", str(self.port), "--ctl-privkey", str(key), "--ctl-cert",
                          str(cert), "--ca-certs", str(ca)]
            self.proc = subprocess.Popen([str(OSKEN), "--ofp-listen-host", "127.0.0.1", *listen, str(APP)],
                                         stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def wait_for(cond, timeout: float = 15.0, step: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return False


def controllers_up(sw: Switch) -> int:
    return sum(c["type"] == "controller" for c in request(sw.name, "channel-show")["connections"])


@pytest.fixture
def sdn(hosts: list[Host], tmp_path: Path) -> Iterator[tuple[Switch, Controller]]:
    need_ofctl()
    ctl = Controller(tmp_path / "osken.log")
    ctl.start()
    sw = Switch(unique("xsctl"), [PortSpec(h.port, h.port_no) for h in hosts], tmp_path / "flows.json",
                config=DatapathConfig(max_flows=4096, emc_insert_inv_prob=1), say=lambda m: None,
                channel=ChannelConfig(controllers=[f"tcp:127.0.0.1:{ctl.port}"],
                                      fail_mode="secure", probe_interval=2))
    try:
        sw.start()
        assert wait_for(lambda: controllers_up(sw) == 1), ctl.log.read_text()
        # simple_switch_13 installs its table-miss flow once it has the features reply
        assert wait_for(lambda: any("priority=0" in ln for ln in ofctl(sw, "dump-flows").stdout.splitlines())), \
            ctl.log.read_text()
        yield sw, ctl
    finally:
        sw.shutdown(remove=True)
        ctl.stop()


def all_pairs(hosts: list[Host], count: int = 3) -> bool:
    return all(ping(a, b.ip, count) for a in hosts for b in hosts if a is not b)


def test_simple_switch_13_learns_and_the_traffic_moves_into_xdp(sdn: tuple[Switch, Controller],
                                                                hosts: list[Host]) -> None:
    sw, ctl = sdn
    assert all_pairs(hosts), ctl.log.read_text()
    ch = request(sw.name, "channel-show")
    conn = next(c for c in ch["connections"] if c["type"] == "controller")
    assert conn["packet_ins"] >= 6 and conn["errors_sent"] == 0, ch
    # the learned flows, as ovs-ofctl shows them: in_port, dl_src and dl_dst for each direction of each pair
    lines = ofctl(sw, "dump-flows").stdout.splitlines()
    learned = [ln for ln in lines if "priority=1," in ln]
    for a in hosts:
        for b in hosts:
            if a is not b:
                assert any(f"in_port={a.port_no},dl_src={a.mac},dl_dst={b.mac}" in ln and
                           f"actions=output:{b.port_no}" in ln for ln in learned), lines
    assert any(re.search(r"priority=0 actions=CONTROLLER:65535", ln) for ln in lines), lines
    # after learning: pings never leave XDP (no upcall, no packet-in)
    assert sw.dp is not None
    time.sleep(0.5)
    # counted from now: a packet-in of the learning phase may still have been on its way when conn was read
    conn = next(c for c in request(sw.name, "channel-show")["connections"] if c["type"] == "controller")
    st0, pins0 = sw.dp.stats(), conn["packet_ins"]
    assert all_pairs(hosts, 5)
    d = sw.dp.stats().delta(st0)
    conn = next(c for c in request(sw.name, "channel-show")["connections"] if c["type"] == "controller")
    assert d.misses == 0, d
    assert d.megaflow_hits + d.emc_hits >= 6 * 5 * 2 and d.emc_hits > 0, d
    assert conn["packet_ins"] == pins0


def test_secure_mode_keeps_forwarding_when_the_controller_vanishes(sdn: tuple[Switch, Controller],
                                                                   hosts: list[Host]) -> None:
    sw, ctl = sdn
    h1, h2, h3 = hosts
    assert ping(h1, h2.ip, 3)
    ctl.stop()
    assert wait_for(lambda: controllers_up(sw) == 0, timeout=10)
    assert ping(h1, h2.ip, 3), "installed flows keep forwarding"
    assert not ping(h1, h3.ip, 1), "a new flow has no controller to ask, and secure mode does not guess"
    ch = request(sw.name, "channel-show")
    assert not ch["fail_open"]


def test_standalone_falls_back_to_normal_when_the_controller_vanishes(hosts: list[Host], tmp_path: Path) -> None:
    ctl = Controller(tmp_path / "osken.log")
    ctl.start()
    sw = Switch(unique("xsfo"), [PortSpec(h.port, h.port_no) for h in hosts], tmp_path / "flows.json",
                config=DatapathConfig(max_flows=4096, emc_insert_inv_prob=1), say=lambda m: None,
                channel=ChannelConfig(controllers=[f"tcp:127.0.0.1:{ctl.port}"], fail_mode="standalone",
                                      probe_interval=1))
    try:
        sw.start()
        assert wait_for(lambda: controllers_up(sw) == 1), ctl.log.read_text()
        # simple_switch_13's table-miss flow comes after its features reply: a ping before it is dropped
        assert wait_for(lambda: any(r["priority"] == 0 for r in request(sw.name, "dump-flows")))
        h1, h2, h3 = hosts
        assert ping(h1, h2.ip, 2)
        ctl.stop()
        # three probe intervals without a controller: fail-open, and NORMAL forwards the new flow h1 -> h3
        assert wait_for(lambda: request(sw.name, "channel-show")["fail_open"], timeout=10)
        assert ping(h1, h3.ip, 3)
        fdb = {(e["port"], e["mac"]) for e in request(sw.name, "fdb-show")}
        assert {(h1.port_no, h1.mac), (h3.port_no, h3.mac)} <= fdb
        # the controller comes back: the switch reconnects (backoff) and leaves fail-open
        ctl.start()
        assert wait_for(lambda: controllers_up(sw) == 1, timeout=20), ctl.log.read_text()
        assert not request(sw.name, "channel-show")["fail_open"]
    finally:
        sw.shutdown(remove=True)
        ctl.stop()
