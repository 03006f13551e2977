"""Shared fixtures: privilege gates and networking that cleans up after itself.

Tiers: tests/unit (no root, no bcc), tests/bpf (root; BPF_PROG_TEST_RUN), tests/netns (root; real veth
pairs and namespaces). Without root or kernel features the privileged tiers skip locally with a reason;
under CI=true a skip there is turned into a failure.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_seq = itertools.count()


def need_root() -> None:
    if os.geteuid() != 0:
        msg = "needs root (BPF, XDP, namespaces)"
        if IN_CI:
            pytest.fail(f"{msg}: CI must run every tier")
        pytest.skip(msg)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if any(item.iter_markers(name="root")):
        need_root()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    if IN_CI and rep.skipped and any(item.iter_markers(name="root")):
        rep.outcome = "failed"
        rep.longrepr = f"privileged test skipped under CI=true: {rep.longrepr}"


def need_tool(name: str, package: str) -> str:
    """The path of a command the test needs; missing, the test fails under CI and skips elsewhere (scripts/test.sh
    installs package)."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (apt-get install {package}; scripts/test.sh does)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def sh(cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A shell command, in namespace ns if given (ip netns exec: it also shows the namespace's own /sys)."""
    full = f"ip netns exec {ns} sh -c {shlex.quote(cmd)}" if ns else cmd
    return subprocess.run(full, shell=True, check=check, capture_output=True, text=True)


def unique(prefix: str) -> str:
    """An interface or namespace name unique to this run (interface names are at most 15 bytes)."""
    return f"{prefix}{os.getpid() % 10000}{next(_seq)}"[:15]


class Net:
    """Namespaces and veth pairs, made with pyroute2 and each removed at teardown (registered the moment it
    is made)."""

    def __init__(self, finalizer: Callable[[Callable[[], object]], None]) -> None:
        self._fin = finalizer

    def netns(self) -> str:
        from pyroute2 import NetNS, netns

        name = unique("xsns")
        netns.create(name)
        self._fin(lambda: _quietly(netns.remove, name))
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        return name

    def veth(self, ns: str | None = None, quiet: bool = False, gro: bool = False,
             queues: int = 1) -> tuple[str, str]:
        """A veth pair; the first end stays here (a switch port), the second goes into ns.

        By default the pair is as a container runtime makes it: GRO off on the peer, so the kernel drops
        frames XDP_REDIRECTs into it and the switch must send by the skb path. gro turns it on (the XDP
        redirect path). Both ends compute checksums themselves (a CHECKSUM_PARTIAL skb loses its offload
        state in XDP). quiet turns IPv6 off on both ends, so the kernel sends nothing (ND, MLD) that a
        counter would see. queues: rx and tx queues on each end."""
        from pyroute2 import IPRoute, NetNS

        a, b = unique("xsa"), unique("xsb")
        with IPRoute() as ipr:
            peer: dict[str, object] = {"ifname": b, "num_rx_queues": queues, "num_tx_queues": queues}
            if ns:
                peer["net_ns_fd"] = ns
            ipr.link("add", ifname=a, kind="veth", num_rx_queues=queues, num_tx_queues=queues, peer=peer)
            self._fin(lambda: _quietly(_del_link, a))
            sh(f"ethtool -K {a} tx off tso off gso off", check=False)
            sh(f"sysctl -qw net.ipv6.conf.{a}.disable_ipv6=1")
            if quiet:
                sh(f"sysctl -qw net.ipv6.conf.{b}.disable_ipv6=1", ns=ns)
            ipr.link("set", index=ipr.link_lookup(ifname=a)[0], state="up")
        if ns:
            with NetNS(ns) as nsr:
                nsr.link("set", index=nsr.link_lookup(ifname=b)[0], state="up")
        else:
            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname=b)[0], state="up")
        sh(f"ethtool -K {b} {'gro on ' if gro else ''}tx off tso off gso off", ns=ns, check=False)
        return a, b


def _del_link(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("del", ifname=name)


def _quietly(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except Exception:   # already gone (a test removed it, or its namespace took it along)
        pass


@pytest.fixture
def net(request: pytest.FixtureRequest) -> Iterator[Net]:
    need_root()
    yield Net(request.addfinalizer)


@pytest.fixture(scope="module")
def module_net(request: pytest.FixtureRequest) -> Iterator[Net]:
    need_root()
    yield Net(request.addfinalizer)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.path)
        if "/tests/bpf/" in path:
            item.add_marker(pytest.mark.bpf)
            item.add_marker(pytest.mark.root)
        elif "/tests/netns/" in path:
            item.add_marker(pytest.mark.netns)
            item.add_marker(pytest.mark.root)


PIN_ROOT = "/sys/fs/bpf/xdpswitch"


def _datapaths() -> set[str]:
    """Datapaths this test process named (unique() puts its pid in every name), running or not."""
    mine = str(os.getpid() % 10000)
    try:
        names = os.listdir(PIN_ROOT)
    except OSError:
        return set()
    return {n for n in names if n.startswith("xs") and mine in n}


@pytest.fixture(scope="session", autouse=True)
def no_datapath_left_behind() -> Iterator[None]:
    """A datapath outlives its daemon by design, so every test must remove the ones it made (dpctl del-dp,
    Switch.shutdown(remove=True)). Any left at the end is removed here and fails the run."""
    before = _datapaths()
    yield
    left = sorted(_datapaths() - before)
    if left:
        from ctl.datapath.dpif_xdp import DatapathError, remove_datapath

        for name in left:
            try:
                remove_datapath(name)
            except (DatapathError, OSError):
                pass
        pytest.fail(f"tests left datapaths running (removed now): {', '.join(left)}")
