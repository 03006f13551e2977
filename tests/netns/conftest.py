"""netns tier fixtures: three hosts in their own namespaces, each on a veth whose other end is a switch
port, with permanent neighbour entries (no ARP or ND needed) and IPv6 made quiet (no RS, no DAD)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import NetNS

from ctl.datapath.dpif_xdp import Datapath, DatapathConfig
from tests.conftest import Net, need_root, sh, unique

NUD_PERMANENT, IFA_F_NODAD = 0x80, 0x02


@dataclass
class Host:
    n: int
    ns: str
    ifname: str     # inside ns
    port: str       # the switch side
    port_no: int

    @property
    def mac(self) -> str:
        return f"02:00:00:00:00:{self.n:02x}"

    @property
    def ip(self) -> str:
        return f"10.10.0.{self.n}"

    @property
    def ip6(self) -> str:
        return f"fd00::{self.n}"

    def sh(self, cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(cmd, ns=self.ns, check=check)

    def py(self, code: str, timeout: float = 10) -> subprocess.Popen[str]:
        """Run Python code in this host's namespace (in the background)."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-c", code],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def tx_packets(self) -> int:
        return int(self.sh(f"cat /sys/class/net/{self.ifname}/statistics/tx_packets").stdout)

    def rx_packets(self) -> int:
        return int(self.sh(f"cat /sys/class/net/{self.ifname}/statistics/rx_packets").stdout)


@dataclass
class Topo:
    dp: Datapath
    hosts: list[Host]

    def host_tx(self) -> int:
        return sum(h.tx_packets() for h in self.hosts)


@pytest.fixture(scope="module")
def hosts(module_net: Net) -> list[Host]:
    """Three hosts with addresses and permanent neighbours; their switch ends are free for a datapath."""
    need_root()
    hosts = []
    for n in (1, 2, 3):
        ns = module_net.netns()
        port, ifname = module_net.veth(ns)
        for knob in ("accept_ra=0", "router_solicitations=0", "dad_transmits=0", "accept_dad=0"):
            sh(f"sysctl -qw net.ipv6.conf.{ifname}.{knob}", ns=ns)
        hosts.append(Host(n, ns, ifname, port, n))
    for h in hosts:   # addresses and neighbours through pyroute2, in each host's namespace
        with NetNS(h.ns) as nsr:
            idx = nsr.link_lookup(ifname=h.ifname)[0]
            nsr.link("set", index=idx, address=h.mac)
            nsr.addr("add", index=idx, address=h.ip, prefixlen=24)
            nsr.addr("add", index=idx, address=h.ip6, prefixlen=64, flags=IFA_F_NODAD)
            for o in hosts:
                if o is not h:
                    nsr.neigh("replace", dst=o.ip, lladdr=o.mac, ifindex=idx, state=NUD_PERMANENT)
                    nsr.neigh("replace", dst=o.ip6, lladdr=o.mac, ifindex=idx, state=NUD_PERMANENT,
                              family=socket.AF_INET6)
    return hosts


@pytest.fixture(scope="module")
def topo(hosts: list[Host]) -> Iterator[Topo]:
    dp = Datapath(unique("xsnet"), DatapathConfig(max_flows=4096, emc_insert_inv_prob=1))
    try:
        for h in hosts:
            dp.add_port(h.port, h.port_no)
        time.sleep(1.5)  # let the last MLD reports of address setup pass
        yield Topo(dp, hosts)
    finally:
        dp.close(unpin=True)


@pytest.fixture
def t(topo: Topo) -> Topo:
    topo.dp.flush_flows()
    topo.dp.flush_emc()
    return topo
