"""Who may change flows, probed from outside as a non-root user and as a controller with the wrong
certificate (docs/security.md): the defaults open nothing a local user can change flows through; the
management socket is root's; TLS listeners and controllers verify the peer against the configured CA
(certificates made by ovs-pki, clients are ovs-ofctl and os-ken); and every CLI command a non-root user
runs ends in a one-line error, never a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctl.daemon.switch import PortSpec, Switch, control_path, mgmt_path, request
from ctl.datapath.dpif_xdp import DatapathConfig
from ctl.openflow.connmgr import ChannelConfig, TlsConfig
from tests.conftest import unique
from tests.netns.conftest import Host
from tests.netns.test_controller import Controller, controllers_up, free_port, wait_for
from tests.netns.test_forwarding import ping
from tests.netns.test_ofctl import need_ofctl
from tests.pki import Pki, make_pki

pytestmark = pytest.mark.root

NOBODY = 65534
XDPSWITCH = Path(sys.executable).parent / "xdpswitch"


def as_nobody(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, text=True,
                          timeout=60, cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
                          **kw)  # type: ignore[call-overload]


def listening_tcp_ports() -> set[int]:
    """TCP ports this process (the daemon runs in it) listens on, from /proc/net/tcp and its descriptors."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:   # LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Pki]:
    root = tmp_path_factory.mktemp("pki")
    return make_pki(root / "ours", ("ctl", "ofctl")), make_pki(root / "theirs", ("ctl", "ofctl"))


def test_the_defaults_give_a_local_user_no_way_to_change_flows(hosts: list[Host], tmp_path: Path) -> None:
    need_ofctl()
    sw = Switch(unique("xssec"), [PortSpec(h.port, h.port_no) for h in hosts], tmp_path / "flows.json",
                config=DatapathConfig(max_flows=4096), say=lambda m: None, metrics_address="127.0.0.1:0")
    sw.start()
    try:
        rules = len(sw.tables)
        assert rules == 1   # the learning switch a new bridge starts as
        mgmt = mgmt_path(sw.name)
        assert mgmt.stat().st_mode & 0o777 == 0o600 and mgmt.stat().st_uid == 0
        # root manages it with ovs-ofctl over the management socket
        r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", f"unix:{mgmt}"], capture_output=True,
                           text=True, timeout=20)
        assert r.returncode == 0 and "actions=NORMAL" in r.stdout, r.stderr
        # nobody: ovs-ofctl on the management socket is refused
        r = as_nobody(["ovs-ofctl", "-O", "OpenFlow13", "del-flows", f"unix:{mgmt}"])
        assert r.returncode != 0 and "Permission denied" in r.stderr, r
        # nobody: every socket the daemon opened, tried with a raw HELLO + FLOW_MOD (delete all)
        assert sw._metrics is not None
        tcp = listening_tcp_ports()
        assert tcp == {sw._metrics.server_address[1]}, f"the defaults listen on TCP only for metrics: {tcp}"
        probe = f"""
import socket, struct
hello = struct.pack("!BBHI", 4, 0, 8, 1)
delete_all = struct.pack("!BBHI", 4, 14, 56, 2) + struct.pack("!QQBBHHHIIIH2x", 0, 0, 255, 3, 0, 0, 0,
    0xffffffff, 0xffffffff, 0xffffffff, 0) + struct.pack("!HHI", 1, 4, 0)
out = []
for path in {[str(mgmt), str(control_path(sw.name))]!r}:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path); out.append("connected " + path)
    except PermissionError:
        out.append("denied")
for port in {sorted(tcp)!r}:
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    s.sendall(hello + delete_all)
    try:
        s.recv(100)
    except OSError:
        pass
    out.append("tcp tried")
print(out)
"""
        r = as_nobody(["/usr/bin/python3", "-c", probe])
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == str(["denied", "denied", "tcp tried"]), r.stdout
        time.sleep(0.5)
        assert len(sw.tables) == rules
        for h in hosts[1:]:
            assert ping(hosts[0], h.ip, 1), "the switch still forwards as it did"
    finally:
        sw.shutdown(remove=True)


def test_plain_tcp_on_a_non_loopback_address_needs_the_flag(hosts: list[Host], tmp_path: Path) -> None:
    spec = [PortSpec(h.port, h.port_no) for h in hosts]
    with pytest.raises(ValueError, match="allow-remote-plain"):
        Switch(unique("xssec"), spec, tmp_path / "flows.json", channel=ChannelConfig(listen=["ptcp:0:0.0.0.0"]))
    sw = Switch(unique("xssec"), spec, tmp_path / "flows.json", config=DatapathConfig(max_flows=4096),
                say=lambda m: None, channel=ChannelConfig(listen=["ptcp:0:0.0.0.0"], allow_remote_plain=True))
    sw.start()
    try:
        r = subprocess.run([str(XDPSWITCH), "ofctl", "show", "--name", sw.name], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        assert "WARNING: ptcp:" in r.stdout and "0.0.0.0: plain TCP: any host that reaches it can change flows" \
            in r.stdout, r.stdout
        assert f"punix:{mgmt_path(sw.name)} (root only)" in r.stdout
    finally:
        sw.shutdown(remove=True)


@pytest.fixture
def tls_switch(hosts: list[Host], tmp_path: Path, pkis: tuple[Pki, Pki]) -> Iterator[Switch]:
    ours = pkis[0]
    sw = Switch(unique("xstls"), [PortSpec(h.port, h.port_no) for h in hosts], tmp_path / "flows.json",
                config=DatapathConfig(max_flows=4096), say=lambda m: None,
                channel=ChannelConfig(listen=["pssl:0"], fail_mode="secure",
                                      tls=TlsConfig(str(ours.key("sc")), str(ours.cert("sc")), str(ours.controllerca))))
    sw.start()
    try:
        yield sw
    finally:
        sw.shutdown(remove=True)


def ofctl_ssl(sw: Switch, pki: Pki, *args: str) -> subprocess.CompletedProcess[str]:
    assert sw.connmgr is not None
    host, port = sw.connmgr.listen_addresses()[0]
    return subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "--timeout=10", f"--private-key={pki.key('ofctl')}",
                           f"--certificate={pki.cert('ofctl')}", f"--ca-cert={pki.switchca}", args[0],
                           f"ssl:{host}:{port}", *args[1:]], capture_output=True, text=True, timeout=30)


def test_pssl_serves_ovs_ofctl_with_a_certificate_from_the_ca(tls_switch: Switch, pkis: tuple[Pki, Pki],
                                                             hosts: list[Host]) -> None:
    need_ofctl()
    h1, h2, _ = hosts
    for flow in (f"priority=10,in_port={h1.port_no},actions=output:{h2.port_no}",
                 f"priority=10,in_port={h2.port_no},actions=output:{h1.port_no}"):
        r = ofctl_ssl(tls_switch, pkis[0], "add-flow", flow)
        assert r.returncode == 0, r.stderr
    r = ofctl_ssl(tls_switch, pkis[0], "dump-flows")
    assert r.returncode == 0 and r.stdout.count("priority=10") == 2, r
    assert ping(h1, h2.ip, 3)
    show = request(tls_switch.name, "channel-show")
    assert show["listening"][1]["access"].startswith("TLS")


def test_pssl_refuses_ovs_ofctl_with_a_certificate_from_another_ca(tls_switch: Switch,
                                                                  pkis: tuple[Pki, Pki]) -> None:
    need_ofctl()
    before = len(tls_switch.tables)
    r = ofctl_ssl(tls_switch, pkis[1], "del-flows")
    assert r.returncode != 0
    assert len(tls_switch.tables) == before
    assert request(tls_switch.name, "channel-show")["refused"]["tls_failed"] >= 1


@pytest.mark.parametrize("same_ca", [True, False], ids=["our CA", "another CA"])
def test_osken_over_tls(hosts: list[Host], tmp_path: Path, pkis: tuple[Pki, Pki], same_ca: bool) -> None:
    """os-ken's simple_switch_13 as a TLS controller: with a certificate our CA signed it drives the switch;
    with one from another CA the switch refuses it, counts it, and connects to nobody."""
    need_ofctl()
    ours, theirs = pkis
    ctl_pki = ours if same_ca else theirs
    ctl = Controller(tmp_path / "osken.log", (ctl_pki.key("ctl"), ctl_pki.cert("ctl"), ours.switchca))
    ctl.port = free_port()
    ctl.start()
    sw = Switch(unique("xstls"), [PortSpec(h.port, h.port_no) for h in hosts], tmp_path / "flows.json",
                config=DatapathConfig(max_flows=4096), say=lambda m: None,
                channel=ChannelConfig(controllers=[f"ssl:127.0.0.1:{ctl.port}"], fail_mode="secure",
                                      probe_interval=2,
                                      tls=TlsConfig(str(ours.key("sc")), str(ours.cert("sc")), str(ours.controllerca))))
    try:
        sw.start()
        if same_ca:
            assert wait_for(lambda: controllers_up(sw) == 1), ctl.log.read_text()
            conn = next(c for c in request(sw.name, "channel-show")["connections"] if c["type"] == "controller")
            assert conn["tls"]
            h1, h2, h3 = hosts
            assert wait_for(lambda: ping(h1, h2.ip, 1), timeout=20), ctl.log.read_text()
            assert ping(h2, h3.ip, 3) and ping(h3, h1.ip, 3)
        else:
            assert wait_for(lambda: request(sw.name, "channel-show")["refused"]["tls_failed"] >= 1)
            assert controllers_up(sw) == 0
            assert not ping(hosts[0], hosts[1].ip, 1), "secure mode with no controller: nothing new is allowed"
    finally:
        sw.shutdown(remove=True)
        ctl.stop()


def test_every_cli_command_of_a_non_root_user_is_a_one_line_error(hosts: list[Host], tmp_path: Path) -> None:
    """Run by nobody against a running switch: refused with one line on stderr and a non-zero exit."""
    sw = Switch(unique("xssec"), [PortSpec(h.port, h.port_no) for h in hosts], tmp_path / "flows.json",
                config=DatapathConfig(max_flows=4096), say=lambda m: None)
    sw.start()
    try:
        n = ["--name", sw.name]
        commands = [["dpctl", "show", *n], ["dpctl", "dump-flows", *n], ["stats", *n], ["ofctl", "dump-flows", *n],
                    ["ofctl", "add-flow", "priority=9,actions=drop", *n], ["ofctl", "del-flows", *n],
                    ["ofctl", "show", *n], ["upcall", "show", *n], ["fdb", "show", *n], ["trace", "in_port=1", *n],
                    ["revalidator", "purge", *n], ["dpctl", "del-dp", *n], ["start", "-p", hosts[0].port, *n],
                    ["demo"], ["upcall", "set", "--flow-limit", "5", *n], ["ofctl", "mod-table", "0", "drop", *n],
                    ["top", "--iterations", "1", *n], ["add-port", hosts[0].port, *n], ["del-port", hosts[0].port, *n]]
        for cmd in commands:
            r = as_nobody([str(XDPSWITCH), *cmd])
            lines = r.stderr.strip().splitlines()
            assert r.returncode != 0, (cmd, r.stdout)
            assert "Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith("xdpswitch: "), (cmd, r)
        assert len(sw.tables) == 1
        assert request(sw.name, "upcall-show")["handlers"] == 1, "the switch runs on, untouched"
        st = json.loads(subprocess.run([str(XDPSWITCH), "dpctl", "show", "-f", "json", *n], capture_output=True,
                                       text=True, timeout=30).stdout)
        assert len(st["ports"]) == len(hosts)
    finally:
        sw.shutdown(remove=True)


def test_a_failed_start_names_what_is_taken_and_leaves_nothing(hosts: list[Host], tmp_path: Path) -> None:
    from ctl.datapath.netdev import xdp_mode
    from ctl.datapath.view import PIN_ROOT, RUN_DIR

    spec = [PortSpec(h.port, h.port_no) for h in hosts]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for kw, msg in ((dict(metrics_address=f"127.0.0.1:{port}"),
                         f"serving metrics on 127.0.0.1:{port}: Address already in use"),
                        (dict(channel=ChannelConfig(listen=[f"ptcp:{port}"])),
                         f"cannot listen on ptcp:{port}:127.0.0.1: Address already in use")):
            name = unique("xsfail")
            sw = Switch(name, spec, tmp_path / f"{name}.json", config=DatapathConfig(max_flows=4096),
                        say=lambda m: None, **kw)  # type: ignore[arg-type]
            with pytest.raises(OSError, match=msg):
                sw.start()
            assert not (PIN_ROOT / name).exists()
            assert not [p.name for p in RUN_DIR.glob(f"{name}.*")]
            assert all(xdp_mode(h.port) == "none" for h in hosts)


def test_out_of_descriptors_fails_accepts_never_the_daemon(hosts: list[Host], tmp_path: Path) -> None:
    """The daemon under a 512 open-file limit (its hard limit, so it cannot raise it), 700 clients on its
    management socket: accepts fail and are counted, the daemon lives, and when they go it serves again."""
    import resource

    need_ofctl()
    name = unique("xsfd")
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen(["prlimit", "--nofile=512:512", str(XDPSWITCH), "start", "--name", name,
                             "--state-dir", str(tmp_path), "--metrics-address", "none", "--max-connections", "5000",
                             *[a for h in hosts for a in ("--port", f"{h.port}={h.port_no}")]],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    clients: list[socket.socket] = []
    try:
        assert wait_for(lambda: mgmt_path(name).exists() and control_path(name).exists(), timeout=60), \
            log.read_text()
        deadline = time.monotonic() + 10
        while len(clients) < 700 and time.monotonic() < deadline:
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            try:
                s.connect(str(mgmt_path(name)))
            except BlockingIOError:   # the backlog is full: the daemon is behind, or resting its listener
                s.close()
                time.sleep(0.01)
                continue
            clients.append(s)
        time.sleep(1)
        assert proc.poll() is None, log.read_text()
        for s in clients:
            s.close()
        clients.clear()
        time.sleep(1.5)   # the listener rests a second after a failed accept
        show = request(name, "channel-show")
        assert show["refused"]["accept_failed"] >= 1, show
        r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", f"unix:{mgmt_path(name)}"],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0 and "actions=NORMAL" in r.stdout, r.stderr
        assert ping(hosts[0], hosts[1].ip, 2)
        assert "Traceback" not in log.read_text()
    finally:
        for s in clients:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        proc.terminate()
        proc.wait(30)
        subprocess.run([str(XDPSWITCH), "dpctl", "del-dp", "--name", name], capture_output=True, timeout=60)
