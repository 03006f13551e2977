"""The whole switch: OpenFlow rules in, first packets up through AF_XDP, megaflows down, later packets in
XDP. Real hosts in namespaces, the daemon's control socket, its state file and its restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctl.daemon.switch import PortSpec, Switch, control_path, request
from ctl.datapath.dpif_xdp import DatapathConfig
from ctl.pipeline.ofmatch import FlowSyntaxError
from ctl.udpif.upcall import PHASES
from tests.conftest import unique
from tests.netns.conftest import Host
from tests.netns.test_forwarding import arrived, ping, udp_recv, udp_send

ROOT = Path(__file__).resolve().parents[2]

L2 = [f"priority=10,dl_dst=02:00:00:00:00:0{n},actions=output:{n}" for n in (1, 2, 3)]


def make_switch(name: str, hosts: list[Host], state: Path) -> Switch:
    sw = Switch(name, [PortSpec(h.port, h.port_no) for h in hosts], state,
                config=DatapathConfig(max_flows=4096, emc_insert_inv_prob=1), say=lambda m: None,
                metrics_address="127.0.0.1:0")
    sw.start()
    return sw


@pytest.fixture(scope="module")
def switch(hosts: list[Host], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Switch]:
    sw = make_switch(unique("xssw"), hosts, tmp_path_factory.mktemp("state") / "flows.json")
    try:
        time.sleep(1.0)
        yield sw
    finally:
        sw.shutdown(remove=True)


@pytest.fixture
def sw(switch: Switch) -> Switch:
    """The module's switch with no rules, no megaflows and fresh counters."""
    request(switch.name, "del-flows")
    assert switch.udpif is not None
    switch.udpif.flush()
    return switch


def add(sw: Switch, *flows: str) -> None:
    request(sw.name, "add-flows", flows=list(flows))


def upcalls(sw: Switch) -> dict[str, int]:
    st = request(sw.name, "upcall-show")
    return {k: v for k, v in st.items() if isinstance(v, int)}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def test_first_packet_is_an_upcall_later_ones_stay_in_xdp(sw: Switch, hosts: list[Host]) -> None:
    h1, h2, _ = hosts
    add(sw, *L2)
    assert sw.dp is not None
    st0, up0 = sw.dp.stats(), upcalls(sw)
    assert ping(h1, h2.ip, 10)
    time.sleep(0.2)
    d, u = sw.dp.stats().delta(st0), delta(upcalls(sw), up0)
    # one megaflow each way: its first packet missed and came up, the other 18 never left XDP (the hosts'
    # own packets, an IPv6 multicast report now and then, may add a megaflow of their own: not counted here)
    flows = {f.match(): (f.packets, [str(a) for a in f.actions]) for f in sw.dp.dump_flows()}
    stray = sum(1 for m in flows if "eth_type(0x0800)" not in m)
    assert (d.misses - stray, u["installed"] - stray, u["ok"] - stray, u["failed"]) == (2, 2, 2, 0), flows
    assert d.megaflow_hits + d.emc_hits == 18 + sum(p for m, (p, _a) in flows.items() if "0x0800" not in m)
    assert d.lost == 0 and d.emc_hits > 0
    flows = {m: v for m, v in flows.items() if "eth_type(0x0800)" in m}
    assert flows == {
        f"in_port(1),eth(dst={h2.mac}),eth_type(0x0800),ipv4(frag=no)": (9, ["2"]),
        f"in_port(2),eth(dst={h1.mac}),eth_type(0x0800),ipv4(frag=no)": (9, ["1"]),
    }
    sw.tick()  # credit the megaflows' packets to the rules
    rules = {r["match"]: r["n_packets"] for r in request(sw.name, "dump-flows")}
    assert rules == {f"dl_dst={h.mac}": n for h, n in zip(hosts, (10, 10, 0), strict=True)}


def test_port_to_port_rules_take_the_simple_match(sw: Switch, hosts: list[Host]) -> None:
    """in_port rules, as a patch panel or a chain of network functions has them: their megaflows match only in_port
    and the Ethernet type, and later packets are found from those with no parse or EMC (OVS's simple match); a
    changed rule's megaflow replaces the old one's at once."""
    h1, h2, h3 = hosts
    add(sw, "priority=10,in_port=1,actions=output:2", "priority=10,in_port=2,actions=output:1")
    assert sw.dp is not None
    st0 = sw.dp.stats()
    assert ping(h1, h2.ip, 10)
    time.sleep(0.2)
    d = sw.dp.stats().delta(st0)
    flows = {f.match(): f.packets for f in sw.dp.dump_flows()}
    assert flows["in_port(1),eth_type(0x0800),ipv4(frag=no)"] == 9, flows  # the first of each came up
    assert flows["in_port(2),eth_type(0x0800),ipv4(frag=no)"] == 9, flows
    assert d.simple_hits == 18 and d.emc_hits == 0 and d.emc_inserts == 0, d  # IPv6 strays are not simple
    stats = json.loads(subprocess.run([sys.executable, "-m", "ctl.cli", "stats", "-n", sw.name, "-f", "json"],
                                      capture_output=True, text=True, cwd=ROOT, check=True).stdout)
    assert stats["simple match hits"] == sw.dp.stats().simple_hits >= 18
    # port 1 now goes to port 3: the revalidator replaces the megaflow, and h1's UDP to h2 comes out on h3's port
    request(sw.name, "add-flows", flows=["priority=10,in_port=1,actions=output:3"])
    time.sleep(0.6)  # a revalidator pass
    tx = {p: sw.dp.port_stats(p).tx_packets for p in (2, 3)}
    before = sw.dp.stats()
    udp_send(h1, h2.ip, 7400, ["q1", "q2", "q3"])
    time.sleep(0.2)
    assert sw.dp.port_stats(3).tx_packets - tx[3] >= 2 and sw.dp.port_stats(2).tx_packets == tx[2]
    assert sw.dp.stats().delta(before).simple_hits >= 2


def test_icmp_arp_udp_tcp_and_ipv6(sw: Switch, hosts: list[Host]) -> None:
    h1, h2, h3 = hosts
    add(sw, "priority=20,arp,actions=flood", *L2)
    assert ping(h3, h1.ip6, 3)
    # a real ARP exchange: forget h2's address on h1 for a moment
    h1.sh(f"ip neigh del {h2.ip} dev {h1.ifname}")
    try:
        assert ping(h1, h2.ip, 2)
        assert "lladdr " + h2.mac in h1.sh(f"ip neigh show {h2.ip}").stdout
    finally:
        h1.sh(f"ip neigh replace {h2.ip} lladdr {h2.mac} dev {h1.ifname} nud permanent")
    rx = udp_recv(h3, 7100, 3)
    time.sleep(0.3)
    udp_send(h2, h3.ip, 7100, ["u1", "u2", "u3"])
    assert arrived(rx) == ["u1", "u2", "u3"]
    # a TCP connection, both ways, 64 KiB echoed
    server = h2.py("import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                   "s.bind(('0.0.0.0', 7200)); s.listen(1); s.settimeout(10); c,_=s.accept(); c.settimeout(10)\n"
                   "n=0\nwhile n < 65536:\n    b=c.recv(65536)\n    if not b: break\n    c.sendall(b); n+=len(b)\n"
                   "print(n)")
    time.sleep(0.3)
    client = h1.py(f"import socket\nc=socket.create_connection(('{h2.ip}', 7200), timeout=10)\n"
                   "c.sendall(bytes(range(256))*256); got=b''\n"
                   "while len(got) < 65536:\n    b=c.recv(65536)\n    if not b: break\n    got+=b\n"
                   "print(got == bytes(range(256))*256)")
    assert client.communicate(timeout=20)[0].strip() == "True"
    assert server.communicate(timeout=20)[0].strip() == "65536"
    assert sw.dp is not None
    st = sw.dp.stats()
    assert st.megaflow_hits + st.emc_hits > 40  # the TCP exchange ran in XDP after its first packets


def test_nat_slow_path_and_controller(sw: Switch, hosts: list[Host]) -> None:
    h1, h2, h3 = hosts
    # a virtual IP on port 1 NATed to h3's address and port; dec_ttl on the way
    add(sw, *L2, f"priority=30,udp,in_port=1,nw_dst=10.10.0.100,tp_dst=7000,actions=mod_dl_dst:{h3.mac},"
        f"mod_nw_dst:{h3.ip},mod_tp_dst:7300,dec_ttl,output:3")
    h1.sh(f"ip neigh replace 10.10.0.100 lladdr 02:00:00:00:00:64 dev {h1.ifname} nud permanent")
    rx = udp_recv(h3, 7300, 3)
    time.sleep(0.3)
    udp_send(h1, "10.10.0.100", 7000, ["n1", "n2", "n3"])
    assert arrived(rx) == ["n1", "n2", "n3"]
    assert sw.dp is not None
    # a change between two outputs cannot run in XDP: every packet goes through the slow path
    add(sw, f"priority=50,udp,in_port=1,tp_dst=7400,actions=output:2,mod_dl_dst:{h3.mac},output:3")
    rx2, rx3 = udp_recv(h2, 7400, 3), udp_recv(h3, 7400, 3)
    time.sleep(0.3)
    up0 = upcalls(sw)
    udp_send(h1, "10.10.0.255", 7400, ["s1", "s2", "s3"], broadcast=True)
    assert rx2.communicate(timeout=10)[0].split() == ["s1", "s2", "s3"]
    assert rx3.communicate(timeout=10)[0].split() == ["s1", "s2", "s3"]
    u = delta(upcalls(sw), up0)
    assert u["received"] == 3 and u["slow_path"] == 1 and u["installed"] == 1
    # controller: the megaflow takes the slow path, so every packet comes up for its PACKET_IN (no
    # controller is connected here: counted, and nothing is forwarded)
    add(sw, "priority=60,udp,tp_dst=7500,actions=controller")
    rx = udp_recv(h2, 7500, 1)
    time.sleep(0.3)
    up0 = upcalls(sw)
    udp_send(h1, h2.ip, 7500, ["c1", "c2", "c3"])
    time.sleep(0.3)
    u = delta(upcalls(sw), up0)
    assert (u["controller"], u["received"], u["slow_path"], u["installed"]) == (3, 3, 1, 1)
    assert rx.communicate(timeout=10)[0].split() == []


def test_ttl_expired_is_counted(sw: Switch, hosts: list[Host]) -> None:
    """dec_ttl of a TTL 1 packet: as OVS, a PACKET_IN (invalid_ttl) for the controllers that ask, and the packet
    goes no further, counted as a ttl_expired drop. Its megaflow is not the TTL 64 one (the TTL's upper bits
    are in both), so the fast path keeps forwarding TTL 64 packets meanwhile."""
    h1, h2, _ = hosts
    add(sw, *L2, f"priority=40,icmp,nw_dst={h2.ip},actions=dec_ttl,output:2")
    assert ping(h1, h2.ip, 1)  # warm: the megaflow is in
    assert sw.dp is not None
    up0 = request(sw.name, "upcall-show")
    r = h1.sh(f"ping -c 2 -i 0.1 -W 1 -t 1 {h2.ip}", check=False)
    assert "0 received" in r.stdout
    up1 = request(sw.name, "upcall-show")
    assert up1["drops"].get("ttl_expired", 0) - up0["drops"].get("ttl_expired", 0) == 2
    assert up1["controller"] - up0["controller"] == 2
    assert ping(h1, h2.ip, 2)


def test_flow_changes_while_traffic_runs(sw: Switch, hosts: list[Host]) -> None:
    """Traffic keeps flowing while rules change; after each change, nothing forwards by the old rule."""
    h1, h2, h3 = hosts
    add(sw, *L2, "priority=100,udp,tp_dst=7600,actions=output:2")
    sender = h1.py("import socket, time\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                   "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\nend=time.time()+6\n"
                   "while time.time() < end:\n    s.sendto(b'x', ('10.10.0.255', 7600)); time.sleep(0.002)\n")
    try:
        time.sleep(0.8)

        def rx_rate(h: Host) -> int:
            a = h.rx_packets()
            time.sleep(0.4)
            return h.rx_packets() - a

        assert rx_rate(h2) > 50 and rx_rate(h3) == 0
        add(sw, "priority=100,udp,tp_dst=7600,actions=output:3")  # changed
        time.sleep(0.1)
        assert rx_rate(h2) == 0 and rx_rate(h3) > 50
        request(sw.name, "del-flows", filter="udp,tp_dst=7600")  # deleted: L2 has no rule for broadcast
        time.sleep(0.1)
        assert rx_rate(h2) == 0 and rx_rate(h3) == 0
        add(sw, "priority=100,udp,tp_dst=7600,actions=flood")  # added
        time.sleep(0.1)
        assert rx_rate(h2) > 50 and rx_rate(h3) > 50
    finally:
        sender.kill()
        sender.wait()


def test_flow_limit_forwards_without_installing(sw: Switch, hosts: list[Host]) -> None:
    h1, h2, _ = hosts
    add(sw, *L2)
    assert sw.udpif is not None and sw.dp is not None and sw.revalidator is not None
    request(sw.name, "set", flow_limit=0)
    try:
        up0 = upcalls(sw)
        assert ping(h1, h2.ip, 3)
        u = delta(upcalls(sw), up0)
        assert u["over_flow_limit"] == 6 and u["ok"] == 6 and u["installed"] == 0
        assert sw.dp.n_flows == 0
    finally:
        request(sw.name, "set", flow_limit=200000)


def test_a_handler_survives_a_failing_batch_and_cached_flows_keep_forwarding(sw: Switch, hosts: list[Host]) -> None:
    h1, h2, h3 = hosts
    add(sw, *L2)
    assert ping(h1, h2.ip, 2)  # h1<->h2 megaflows are in
    assert sw.udpif is not None
    real = sw.udpif.handle
    errors0 = request(sw.name, "upcall-show")["loop_errors"].get("handler", 0)

    def boom(ups: object, stats: object = None) -> None:
        raise RuntimeError("handler bug")

    sw.udpif.handle = boom  # type: ignore[method-assign]
    try:
        assert not ping(h1, h3.ip, 1)  # a new flow: its upcall's batch fails
        time.sleep(0.3)
        assert sw.handlers[0].is_alive()  # the loop goes on
        assert ping(h1, h2.ip, 3)  # cached megaflows forward meanwhile
    finally:
        sw.udpif.handle = real  # type: ignore[method-assign]
    shown = request(sw.name, "upcall-show")
    assert shown["loop_errors"]["handler"] > errors0 and shown["handler_restarts"] == 0
    assert ping(h1, h3.ip, 2)  # the same handler serves the next batches


def test_control_socket_errors_and_permissions(sw: Switch) -> None:
    path = control_path(sw.name)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(FlowSyntaxError) as e:
        request(sw.name, "add-flows", flows=["ip,nw_dst=10.0.0.300,actions=drop"])
    assert e.value.text[e.value.pos : e.value.pos + e.value.length] == "10.0.0.300"
    add(sw, "priority=1,ip,actions=output:1")
    with pytest.raises(FlowSyntaxError, match="flow 2"):
        request(sw.name, "add-flows", flows=["priority=2,ip,actions=output:2", "ip,actions=fly"])
    assert [r["priority"] for r in request(sw.name, "dump-flows")] == [1]  # all or nothing


def test_metrics_endpoint_reads_the_live_counters(sw: Switch, hosts: list[Host]) -> None:
    import urllib.request

    h1, h2, _ = hosts
    add(sw, *L2)
    assert ping(h1, h2.ip, 5)
    port = sw._metrics.server_address[1]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
              if line and not line.startswith("#")}
    assert sw.dp is not None
    st = sw.dp.stats()
    lookups = {r: values[f'xdpswitch_lookups_total{{result="{r}"}}']
               for r in ("emc_hit", "megaflow_hit", "miss", "lost")}
    assert sum(lookups.values()) == st.packets and lookups["emc_hit"] == st.emc_hits
    assert values['xdpswitch_flows{cache="megaflow"}'] == sw.dp.n_flows >= 2
    assert values[f'xdpswitch_port_receive_packets_total{{name="{h1.port}",port="1"}}'] >= 5
    assert values["xdpswitch_upcall_handling_seconds_count"] >= 2
    phases = {p: values[f'xdpswitch_upcall_phase_seconds_total{{phase="{p}"}}'] for p in PHASES}
    assert 0 < sum(phases.values()) <= values["xdpswitch_upcall_handling_seconds_sum"]
    assert phases["translate"] > 0 and phases["install"] > 0
    show = subprocess.run([sys.executable, "-m", "ctl.cli", "upcall", "show", "-n", sw.name], capture_output=True,
                          text=True, cwd=ROOT, check=True).stdout
    handling = next(line for line in show.splitlines() if line.strip().startswith("handling"))
    assert [w for w in handling.split(":", 1)[1].replace(",", " ").split() if w.isalpha()][:6] == list(PHASES)


def test_revalidator_credits_rules_exactly(sw: Switch, hosts: list[Host]) -> None:
    h1, h2, _ = hosts
    add(sw, *L2)
    assert ping(h1, h2.ip, 25)
    assert sw.revalidator is not None
    sw.revalidator.request()
    by_match = {r.match.format(): r.n_packets for r in sw.tables.rules()}
    assert by_match[f"dl_dst={h2.mac}"] == 25 and by_match[f"dl_dst={h1.mac}"] == 25


def test_idle_megaflows_expire(sw: Switch, hosts: list[Host]) -> None:
    h1, h2, _ = hosts
    add(sw, *L2)
    request(sw.name, "set", max_idle=300, max_revalidator=100)
    try:
        before = upcalls(sw)
        assert ping(h1, h2.ip, 2)
        assert sw.dp is not None and sw.dp.n_flows == 2
        time.sleep(1.5)
        assert sw.dp.n_flows == 0
        assert sw.udpif is not None and sw.udpif.stats.deleted.get("idle", 0) >= 2
        assert delta(upcalls(sw), before)["installed"] == 2
    finally:
        request(sw.name, "set", max_idle=10000, max_revalidator=500)


def test_rule_change_keeps_established_megaflows(sw: Switch, hosts: list[Host]) -> None:
    """Changing the rule for h3 revalidates h3's megaflows; h1<->h2's stay in the fast path (no flush)."""
    h1, h2, h3 = hosts
    add(sw, *L2)
    assert ping(h1, h2.ip, 2) and ping(h1, h3.ip, 2)
    assert sw.dp is not None
    flows = sw.dp.dump_flows()
    keep = {f.match() for f in flows if h3.mac not in f.match()}
    to_h3 = sum(1 for f in flows if f"dst={h3.mac}" in f.match())
    up0 = upcalls(sw)
    shown0 = request(sw.name, "upcall-show")
    add(sw, f"priority=10,dl_dst={h3.mac},actions=drop")  # same match: the rule's actions change
    shown = request(sw.name, "upcall-show")
    # only what the change can affect was translated again, and all of it before the command returned
    assert to_h3 <= shown["revalidated"] - shown0["revalidated"] < len(flows)
    assert shown["stale"] == 0
    now = {f.match(): [str(a) for a in f.actions] for f in sw.dp.dump_flows()}
    assert keep <= set(now)  # h1<->h2 kept
    assert now[f"in_port(1),eth(dst={h3.mac}),eth_type(0x0800),ipv4(frag=no)"] == ["drop"]  # updated in place
    assert not ping(h1, h3.ip, 1)
    assert ping(h1, h2.ip, 2)
    assert delta(upcalls(sw), up0)["received"] == 0  # nothing had to come up again


def test_flow_limit_holds_under_many_new_flows(sw: Switch, hosts: list[Host]) -> None:
    h1, h2, _ = hosts
    add(sw, *L2, *[f"priority=20,udp,tp_dst={p},actions=output:2" for p in range(8000, 8050)])
    request(sw.name, "set", flow_limit=5)
    try:
        before = h2.rx_packets()  # nothing listens on those ports: count at h2's interface
        code = ("import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"[s.sendto(b'x', ('{h2.ip}', p)) for p in range(8000, 8050)]")
        p = h1.py(code)
        assert p.wait(10) == 0
        time.sleep(0.5)
        assert sw.dp is not None and sw.dp.n_flows <= 5
        assert h2.rx_packets() - before >= 50  # every packet still forwarded (ICMP port-unreachable replies aside)
        assert upcalls(sw)["over_flow_limit"] >= 45
    finally:
        request(sw.name, "set", flow_limit=200000)


def test_read_only_tools_read_the_running_switch_and_change_no_map(sw: Switch, hosts: list[Host]) -> None:
    """dpctl show, dpctl dump-flows and stats, run as a user would, against a switch with megaflows: they
    report what the datapath holds, and every pinned map's bytes are the same after them."""
    from ctl.datapath.view import DatapathView
    from tests.bpf.test_view import snapshot

    h1, h2, h3 = hosts
    add(sw, *L2)
    assert ping(h1, h2.ip, 2) and ping(h1, h3.ip, 2)
    time.sleep(0.6)  # a revalidator pass after the last packet: nothing left to credit
    assert sw.dp is not None
    cli = [sys.executable, "-m", "ctl.cli"]
    with DatapathView.open(sw.name) as view:
        before = snapshot(view)
        show = json.loads(subprocess.run([*cli, "dpctl", "show", "-n", sw.name, "-f", "json"], capture_output=True,
                                         text=True, cwd=ROOT, check=True).stdout)
        flows = json.loads(subprocess.run([*cli, "dpctl", "dump-flows", "-n", sw.name, "-f", "json"],
                                          capture_output=True, text=True, cwd=ROOT, check=True).stdout)
        stats = json.loads(subprocess.run([*cli, "stats", "-n", sw.name, "-f", "json"], capture_output=True,
                                          text=True, cwd=ROOT, check=True).stdout)
        text = subprocess.run([*cli, "dpctl", "show", "-n", sw.name], capture_output=True, text=True, cwd=ROOT,
                              check=True, env={**os.environ, "COLUMNS": "40"}).stdout   # a narrow terminal
        after = snapshot(view)
    assert after == before
    assert show["flows"] == len(flows) == sw.dp.n_flows >= 3  # one per destination MAC
    assert sorted(p["port_no"] for p in show["ports"]) == [1, 2, 3]
    assert {f["match"] for f in flows} == {f.match() for f in sw.dp.dump_flows()}
    assert stats["packets received"] == sw.dp.stats().packets
    port_lines = [line for line in text.splitlines() if line.startswith("  port ")]
    assert len(port_lines) == 3 and all(" rx:" in line and " drops:" in line for line in port_lines), text
