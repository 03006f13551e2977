"""NORMAL: the switch with no controller in fail-mode standalone is a learning switch, and what it learns
becomes megaflows like any other action."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctl.daemon.switch import PortSpec, Switch, request
from ctl.datapath.dpif_xdp import DatapathConfig
from tests.conftest import unique
from tests.netns.conftest import Host
from tests.netns.test_forwarding import ping, udp_recv, udp_send

pytestmark = pytest.mark.root


@pytest.fixture
def lsw(hosts: list[Host], tmp_path: Path) -> Iterator[Switch]:
    sw = Switch(unique("xsl2"), [PortSpec(h.port, h.port_no) for h in hosts], tmp_path / "flows.json",
                config=DatapathConfig(max_flows=4096, emc_insert_inv_prob=1), say=lambda m: None)
    sw.start()
    try:
        time.sleep(0.5)
        yield sw
    finally:
        sw.shutdown(remove=True)


def test_a_new_switch_learns_floods_then_forwards_in_xdp(lsw: Switch, hosts: list[Host]) -> None:
    h1, h2, h3 = hosts
    rules = request(lsw.name, "dump-flows")
    assert [(r["priority"], r["match"], r["actions"]) for r in rules] == [(0, "", "NORMAL")]
    # a destination nobody has shown (the hosts' own packets may already have taught the switch h2 and h3):
    # h1's packet to it floods, so h2 and h3 both see it
    h1.sh(f"ip neigh replace 10.10.0.99 lladdr 02:00:00:00:00:99 dev {h1.ifname} nud permanent")
    rx2, rx3 = h2.rx_packets(), h3.rx_packets()
    udp_send(h1, "10.10.0.99", 7009, ["unknown"])
    deadline = time.monotonic() + 2
    while (h2.rx_packets() == rx2 or h3.rx_packets() == rx3) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h2.rx_packets() - rx2 >= 1 and h3.rx_packets() - rx3 >= 1
    assert ping(h1, h2.ip, 1)
    fdb = {(e["port"], e["mac"]) for e in request(lsw.name, "fdb-show")}
    assert {(h1.port_no, h1.mac), (h2.port_no, h2.mac)} <= fdb
    time.sleep(0.8)  # the revalidator turns the flooding megaflow into an output once h2 is learned
    assert lsw.dp is not None
    st0, rx3 = lsw.dp.stats(), h3.rx_packets()
    assert ping(h1, h2.ip, 10)
    d = lsw.dp.stats().delta(st0)
    assert d.misses == 0 and d.megaflow_hits + d.emc_hits == 20, d
    assert h3.rx_packets() == rx3, "learned destinations are not flooded"
    flows = {f.match(): [str(a) for a in f.actions] for f in lsw.dp.dump_flows()}
    assert any(k.startswith(f"in_port({h1.port_no})") and f"src={h1.mac},dst={h2.mac}" in k
               and v == [str(h2.port_no)] for k, v in flows.items()), flows


def test_broadcast_floods_to_every_port_but_the_ingress(lsw: Switch, hosts: list[Host]) -> None:
    h1, h2, h3 = hosts
    r2, r3 = udp_recv(h2, 7001, 1), udp_recv(h3, 7001, 1)
    time.sleep(0.3)
    h1.sh(f"ip neigh replace 10.10.0.255 lladdr ff:ff:ff:ff:ff:ff dev {h1.ifname} nud permanent")
    rx1 = h1.rx_packets()
    udp_send(h1, "10.10.0.255", 7001, ["bcast"], broadcast=True)
    assert r2.communicate(timeout=10)[0].strip() == "bcast"
    assert r3.communicate(timeout=10)[0].strip() == "bcast"
    assert h1.rx_packets() == rx1, "never back out of the ingress port"
