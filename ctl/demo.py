"""`xdpswitch demo`: three hosts in network namespaces on one XDP switch, megaflows put through the
datapath API, pings between every pair, then the caches and counters.

Everything it makes (namespaces xsdemo-h1..3, veth pairs xsdemo1..3) is removed on the way out, also on
Ctrl-C or an error."""

from __future__ import annotations

import functools
import subprocess
import time
from collections.abc import Callable

from rich.console import Console

from ctl.datapath import Datapath, DatapathConfig
from ctl.dpif import Flood, Output
from ctl.flowkey import build, mask_for


def _sh(cmd: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    full = ["ip", "netns", "exec", ns, "sh", "-c", cmd] if ns else ["sh", "-c", cmd]
    return subprocess.run(full, capture_output=True, text=True)


def run_demo(console: Console, show: Callable[[Datapath], None], name: str = "xsdemo") -> int:
    cleanups: list[Callable[[], object]] = []
    hosts = []
    try:
        console.print("[bold]building three hosts[/] (namespaces xsdemo-h1..3, veth xsdemo1..3 on the switch)")
        for n in (1, 2, 3):
            ns, port, peer = f"xsdemo-h{n}", f"xsdemo{n}", f"xsdemo{n}p"
            _sh(f"ip netns del {ns} 2>/dev/null; ip link del {port} 2>/dev/null")
            if _sh(f"ip netns add {ns}").returncode:
                raise RuntimeError(f"could not create namespace {ns} (are you root?)")
            cleanups.append(functools.partial(_sh, f"ip netns del {ns}"))
            _sh(f"ip link add {port} type veth peer name {peer}")
            cleanups.append(functools.partial(_sh, f"ip link del {port}"))
            _sh(f"ip link set {peer} netns {ns} && ip link set {port} up && ethtool -K {port} tx off")
            mac, ip = f"02:00:00:00:de:0{n}", f"10.77.0.{n}"
            _sh(f"ip link set lo up && ip link set {peer} address {mac} && ip addr add {ip}/24 dev {peer} && "
                f"ip link set {peer} up && ethtool -K {peer} gro on tx off", ns)
            hosts.append((n, ns, peer, port, mac, ip))
        for _, ns, peer, _, _, _ in hosts:
            for _, _, _, _, mac, ip in hosts:
                _sh(f"ip neigh replace {ip} lladdr {mac} dev {peer} nud permanent", ns)

        console.print("[bold]loading the fast path[/] (bcc compiles xdp/emc.c and xdp/megaflow.c)")
        # every megaflow hit fills the EMC here so the demo shows it (OVS inserts 1 in 100 by default)
        dp = Datapath(name, DatapathConfig(max_flows=65536, emc_insert_inv_prob=1))
        cleanups.append(lambda: dp.close(unpin=True))
        for n, _, _, port, _, _ in hosts:
            p = dp.add_port(port, n)
            console.print(f"  port {p.port_no}: {p.name} ({p.mode} XDP)")

        console.print("[bold]putting megaflows[/]: one per destination MAC, and flood for broadcast")
        for n, _, _, _, mac, _ in hosts:
            dp.put_flow(build(dl_dst=mac), mask_for("dl_dst"), [Output(n)])
        dp.put_flow(build(dl_dst="ff:ff:ff:ff:ff:ff"), mask_for("dl_dst"), [Flood()])

        ok = True
        for (_, src_ns, _, _, _, _), (_, _, _, _, _, dst_ip) in ((hosts[0], hosts[1]), (hosts[1], hosts[2]),
                                                                  (hosts[2], hosts[0])):
            r = _sh(f"ping -c 5 -i 0.1 -W 1 {dst_ip}", src_ns)
            line = next((x for x in r.stdout.splitlines() if "packets transmitted" in x), r.stderr.strip())
            console.print(f"  {src_ns} -> {dst_ip}: {line}", soft_wrap=True)
            ok &= r.returncode == 0
        time.sleep(0.2)
        show(dp)
        return 0 if ok else 1
    finally:
        for c in reversed(cleanups):
            try:
                c()
            except Exception as e:  # cleanup must go on
                console.print(f"[red]cleanup: {e}[/]")
