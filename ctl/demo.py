"""`xdpswitch demo`: three hosts in network namespaces on one XDP switch running OpenFlow rules; pings
between every pair (first packets go up to user space, the rest stay in XDP), a TCP-ish UDP burst, then
the OpenFlow tables, the megaflows and the counters.

Everything it makes (namespaces xsdemo-h1..3, veth pairs xsdemo1..3) is removed on the way out, also on
Ctrl-C or an error."""

from __future__ import annotations

import functools
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from ctl.daemon.switch import PortSpec, Switch
from ctl.datapath.dpif import DatapathConfig
from ctl.datapath.view import DatapathReader
from ctl.pipeline.ofmatch import flow_from_text
from ctl.pipeline.xlate import translate

DEMO_FLOWS = """\
# table 0: ARP is flooded; IPv4 goes to table 1; anything else is dropped (the table-miss)
table=0,priority=100,arp,actions=flood
table=0,priority=90,ip,actions=goto_table:1
# table 1: deliver by destination MAC; h3 may not reach h1 by UDP port 9
table=1,priority=200,udp,in_port=3,dl_dst=02:00:00:00:de:01,tp_dst=9,actions=drop
table=1,priority=100,dl_dst=02:00:00:00:de:01,actions=output:1
table=1,priority=100,dl_dst=02:00:00:00:de:02,actions=output:2
table=1,priority=100,dl_dst=02:00:00:00:de:03,actions=output:3
"""


def _in_ns(ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run cmd in namespace ns (nsenter: the process joins the namespace pyroute2 made)."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *cmd], capture_output=True, text=True)


def _quiet(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:   # leftovers of an earlier demo that may not exist
        pass


def _build_host(n: int, cleanups: list[Callable[[], object]]) -> tuple[int, str, str, str, str, str]:
    """Namespace xsdemo-hN with a veth (xsdemoNp inside, xsdemoN outside): made through pyroute2."""
    from pyroute2 import IPRoute, NetNS, netns

    ns, port, peer = f"xsdemo-h{n}", f"xsdemo{n}", f"xsdemo{n}p"
    mac, ip = f"02:00:00:00:de:0{n}", f"10.77.0.{n}"
    _quiet(lambda: netns.remove(ns))
    with IPRoute() as ipr:
        _quiet(lambda: ipr.link("del", ifname=port))
        try:
            netns.create(ns)
        except OSError as e:
            raise RuntimeError(f"could not create namespace {ns} ({e.strerror}; are you root?)") from None
        cleanups.append(functools.partial(netns.remove, ns))
        ipr.link("add", ifname=port, kind="veth", peer={"ifname": peer, "net_ns_fd": ns})
        cleanups.append(functools.partial(_quiet, lambda: _del_link(port)))
        ipr.link("set", index=ipr.link_lookup(ifname=port)[0], state="up")
    with NetNS(ns) as nsr:
        nsr.link("set", index=nsr.link_lookup(ifname="lo")[0], state="up")
        idx = nsr.link_lookup(ifname=peer)[0]
        nsr.link("set", index=idx, address=mac)
        nsr.addr("add", index=idx, address=ip, prefixlen=24)
        nsr.link("set", index=idx, state="up")
    subprocess.run(["ethtool", "-K", port, "tx", "off"], capture_output=True)
    _in_ns(ns, "ethtool", "-K", peer, "gro", "on", "tx", "off")
    return (n, ns, peer, port, mac, ip)


def _del_link(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("del", ifname=name)


def _neighbours(hosts: list[tuple[int, str, str, str, str, str]]) -> None:
    """Every host knows every other's MAC (no ARP needed for the demo's pings)."""
    from pyroute2 import NetNS

    for _, ns, peer, _, _, _ in hosts:
        with NetNS(ns) as nsr:
            idx = nsr.link_lookup(ifname=peer)[0]
            for _, _, _, _, mac, ip in hosts:
                nsr.neigh("replace", dst=ip, lladdr=mac, ifindex=idx, state=0x80)   # NUD_PERMANENT


def run_demo(console: Console, show: Callable[[DatapathReader], None], name: str = "xsdemo") -> int:
    cleanups: list[Callable[[], object]] = []
    hosts = []
    try:
        console.print("[bold]building three hosts[/] (namespaces xsdemo-h1..3, veth xsdemo1..3 on the switch)")
        for n in (1, 2, 3):
            hosts.append(_build_host(n, cleanups))
        _neighbours(hosts)

        console.print("[bold]starting the switch[/] (bcc compiles xdp/emc.c and xdp/megaflow.c)")
        state = Path(tempfile.mkdtemp(prefix="xsdemo.")) / "flows.json"
        flows = state.parent / "demo.flows"
        flows.write_text(DEMO_FLOWS)
        # every megaflow hit fills the EMC here so the demo shows it (OVS inserts 1 in 100 by default)
        sw = Switch(name, [PortSpec(port, n) for n, _, _, port, _, _ in hosts], state, flows,
                    config=DatapathConfig(max_flows=65536, emc_insert_inv_prob=1),
                    say=lambda m: console.print(f"  {m}", highlight=False))
        cleanups.append(lambda: sw.shutdown(remove=True))  # the demo leaves nothing behind
        sw.start()
        dp = sw.dp
        assert dp is not None
        console.print("[bold]OpenFlow tables[/] (xdpswitch ofctl dump-flows)")
        for rule in sw.tables.rules():
            console.print(rule.format(sw.tables.clock()), highlight=False, soft_wrap=True)
        console.print("[bold]tracing[/] h1 -> h2 before any traffic (xdpswitch trace)")
        tr = translate(sw.tables, flow_from_text("in_port=1,icmp,dl_dst=02:00:00:00:de:02,nw_src=10.77.0.1,"
                                                 "nw_dst=10.77.0.2"), set(dp.ports))
        console.print(tr.format_trace(name), highlight=False, soft_wrap=True)
        console.print("[bold]pinging[/]: the first packet of each flow is an upcall, the rest stay in XDP")
        ok = True
        for (_, src_ns, _, _, _, _), (_, _, _, _, _, dst_ip) in ((hosts[0], hosts[1]), (hosts[1], hosts[2]),
                                                                  (hosts[2], hosts[0])):
            r = _in_ns(src_ns, "ping", "-c", "5", "-i", "0.1", "-W", "1", dst_ip)
            line = next((x for x in r.stdout.splitlines() if "packets transmitted" in x), r.stderr.strip())
            console.print(f"  {src_ns} -> {dst_ip}: {line}", soft_wrap=True)
            ok &= r.returncode == 0
        time.sleep(0.2)
        assert sw.udpif is not None
        sw.udpif.push_stats()  # credit the megaflows' packets to the rules now (the revalidator would soon)
        console.rule("xdpswitch ofctl dump-flows")
        for rule in sw.tables.rules():
            console.print(rule.format(sw.tables.clock()), highlight=False, soft_wrap=True)
        assert sw.udpif is not None
        st = sw.udpif.stats
        console.rule("xdpswitch upcall show")
        console.print(f"  upcalls: received {st.received}, ok {st.ok}, failed {st.failed}; megaflows installed "
                      f"{st.installed}, existing {st.existing}", highlight=False)
        show(dp.reader)
        return 0 if ok else 1
    finally:
        for c in reversed(cleanups):
            try:
                c()
            except Exception as e:  # cleanup must go on
                console.print(f"[red]cleanup: {e}[/]")
