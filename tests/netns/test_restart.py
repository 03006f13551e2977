"""The datapath outlives the daemon: a sequence-numbered UDP stream of RATE packets/s each way between two
hosts, counted at the receivers, while `xdpswitch start` is stopped with SIGTERM, killed with SIGKILL, or
replaced by a changed build (a fast-path source change), and started again. Not one packet of the
established flows may be lost; new flows wait until the new daemon runs (the time is printed).
(Own module: its own hosts.)"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctl.daemon.switch import PortSpec, Switch, control_path, request
from ctl.datapath.dpif import DatapathConfig
from ctl.datapath.dpif_xdp import XDP_DIR, DatapathError, remove_datapath
from ctl.datapath.netdev import xdp_mode
from ctl.datapath.view import RUN_DIR, DatapathView
from tests.conftest import Net, sh, unique
from tests.netns.conftest import Host
from tests.netns.test_forwarding import ping
from tests.netns.test_switch import L2

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "ctl.cli"]
RATE = 10_000           # packets/s each way
SECONDS = 10            # the stream's length; the restart happens 2 s in

SENDER = """
import socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", {sport}))
n, rate, pad = {n}, {rate}, b"x" * 18
t0 = time.monotonic()
seq = 0
while seq < n:
    wait = t0 + seq / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    for _ in range(10):
        s.sendto(struct.pack("!I", seq) + pad, ("{dst}", {port}))
        seq += 1
print(seq)
"""

RECEIVER = """
import socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: the receiver must not be what drops
s.bind(("", {port}))
s.settimeout(1.0)
seen = set()
deadline = time.monotonic() + {timeout}
quiet = 0
while time.monotonic() < deadline and quiet < 3:
    try:
        data = s.recv(64)
    except OSError:
        quiet += 1 if seen else 0
        continue
    quiet = 0
    seen.add(struct.unpack_from("!I", data)[0])
missing = sorted(set(range({n})) - seen)
print(len(seen), missing[:5], missing[-5:])
"""


def start(name: str, hosts: list[Host], state_dir: Path, flows: Path, env: dict[str, str] | None = None,
          log: Path | None = None) -> subprocess.Popen[str]:
    out = (log or state_dir / f"{name}.log").open("a")
    proc = subprocess.Popen([*CLI, "start", "--name", name, "--state-dir", str(state_dir), "--flows", str(flows),
                             "--metrics-address", "none",
                             *[a for h in hosts for a in ("--port", f"{h.port}={h.port_no}")]],
                            stdout=out, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    return proc


def wait_ready(proc: subprocess.Popen[str], name: str, log: Path) -> None:
    deadline = time.time() + 60
    while not control_path(name).exists():
        assert proc.poll() is None and time.time() < deadline, log.read_text()
        time.sleep(0.05)


@pytest.fixture
def daemon(hosts: list[Host], tmp_path: Path) -> Iterator[dict[str, object]]:
    name = unique("xsrt")
    flows = tmp_path / "start.flows"
    flows.write_text("\n".join(L2) + "\n")
    ctx: dict[str, object] = {"name": name, "flows": flows, "dir": tmp_path, "procs": []}
    try:
        yield ctx
    finally:
        for p in ctx["procs"]:  # type: ignore[attr-defined]
            if p.poll() is None:
                p.kill()
                p.wait(10)
        with contextlib.suppress(DatapathError):
            remove_datapath(name)
        forget_run_files(name)
        assert all(xdp_mode(h.port) == "none" for h in hosts)


def forget_run_files(name: str) -> None:
    """A daemon that died (killed by a test, or a failed one) leaves its control sockets and pid file: gone too."""
    for suffix in (".ctl", ".mgmt", ".pid"):
        (RUN_DIR / f"{name}{suffix}").unlink(missing_ok=True)


def changed_build(tmp: Path) -> Path:
    """A copy of xdp/ whose fast-path code differs (not its map layout): an upgrade."""
    d = tmp / "xdp-next"
    shutil.copytree(XDP_DIR, d)
    emc = d / "emc.c"
    emc.write_text(emc.read_text() + "\n/* the next build: same maps, other code */\n"
                   "static __always_inline int dp_next_build(void) { return 1; }\n")
    return d


@pytest.mark.parametrize("how", ["sigterm", "sigkill", "upgrade"])
def test_restart_loses_no_packet_of_established_flows(hosts: list[Host], daemon: dict[str, object], how: str) -> None:
    h1, h2, h3 = hosts
    name, flows, tmp = str(daemon["name"]), Path(str(daemon["flows"])), Path(str(daemon["dir"]))
    procs: list[subprocess.Popen[str]] = daemon["procs"]  # type: ignore[assignment]
    log = tmp / "daemon.log"
    first = start(name, hosts, tmp, flows, log=log)
    procs.append(first)
    wait_ready(first, name, log)
    build0 = json.loads((RUN_DIR / f"{name}.json").read_text())["build"]
    n = RATE * SECONDS
    recv = [h2.py(RECEIVER.format(port=7100, n=n, timeout=SECONDS + 30)),
            h1.py(RECEIVER.format(port=7101, n=n, timeout=SECONDS + 30))]
    time.sleep(0.5)
    send = [h1.py(SENDER.format(sport=7200, dst=h2.ip, port=7100, n=n, rate=RATE)),
            h2.py(SENDER.format(sport=7201, dst=h1.ip, port=7101, n=n, rate=RATE))]
    time.sleep(2.0)  # both flows established: their megaflows are in XDP

    with DatapathView.open(name) as view:
        lost0 = view.stats().lost
    if how == "sigkill":
        first.kill()
    else:
        first.send_signal(signal.SIGTERM)
    first.wait(30)
    t_down = time.monotonic()
    assert first.returncode in (0, -9)
    assert all(xdp_mode(h.port) != "none" for h in hosts)
    # while no daemon runs: a new flow (h1 -> h3) cannot be set up, and its misses are counted
    assert not ping(h1, h3.ip, 1)
    with DatapathView.open(name) as view:
        assert view.stats().lost > lost0
    env = {"XDPSWITCH_XDP_DIR": str(changed_build(tmp))} if how == "upgrade" else None
    second = start(name, hosts, tmp, flows, env=env, log=log)
    procs.append(second)
    while not ping(h1, h3.ip, 1):  # how long new flows wait
        assert second.poll() is None and time.monotonic() - t_down < 60, log.read_text()
    new_flow_wait = time.monotonic() - t_down

    sent = [int(p.communicate(timeout=SECONDS + 30)[0]) for p in send]
    got = [p.communicate(timeout=SECONDS + 60)[0].split(" ", 1) for p in recv]
    print(f"\n{how}: sent {sent} received {[g[0] for g in got]} at {RATE}/s each way; "
          f"new flows waited {new_flow_wait:.1f} s (the new daemon loading)")
    assert sent == [n, n]
    assert [int(g[0]) for g in got] == [n, n], got
    build1 = json.loads((RUN_DIR / f"{name}.json").read_text())["build"]
    assert (build1 != build0) == (how == "upgrade")
    text = log.read_text()
    assert "adopting the running datapath" in text and "Traceback" not in text, text
    second.send_signal(signal.SIGTERM)
    second.wait(30)


def test_what_a_start_finds_left_behind(hosts: list[Host], net: Net, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A second daemon of the same name, a port that vanished while no daemon ran, half-removed pins and a
    datapath left by a build with another map layout: each a clear error or a repair that says what it
    did, and never traffic blackholed silently."""
    h1, h2, _ = hosts
    name = unique("xslb")
    extra, _peer = net.veth()
    said: list[str] = []

    def switch(*ports: str, replace: bool = False) -> Switch:
        specs = [PortSpec(h.port, h.port_no) for h in (h1, h2)] + [PortSpec(p, 9) for p in ports]
        sw = Switch(name, specs, tmp_path / "flows.json", config=DatapathConfig(max_flows=4096), say=said.append,
                    metrics_address=None, replace=replace)
        sw.start()
        return sw

    try:
        sw = switch(extra)
        try:
            request(name, "add-flows", flows=list(L2))
            with pytest.raises(ValueError, match=f"a switch named '{name}' is already running"):
                switch()
            assert ping(h1, h2.ip, 2)
        finally:
            sw.shutdown()
        sh(f"ip link del {extra}")  # the port vanishes while no daemon runs
        said.clear()
        sw = switch()
        sw.shutdown()
        assert any("vanished while no daemon ran: forgotten" in m for m in said), said
        assert ping(h1, h2.ip, 2)  # still forwarding, with no daemon

        # half-removed pins (an interrupted del-dp): cleared and started afresh, saying so
        with DatapathView.open(name) as view:
            pin_dir = view.pin_dir
        n_maps = sum(1 for _ in pin_dir.iterdir())
        (pin_dir / "mf_hints").unlink()
        said.clear()
        sw = switch()
        try:
            assert any(f"held {n_maps - 1} of the {n_maps} maps" in m for m in said), said
            time.sleep(0.3)
            assert ping(h1, h2.ip, 2)
        finally:
            sw.shutdown()

        # a build whose maps differ cannot adopt: a clear error naming the way out, and the running datapath
        # is untouched; --replace removes it and starts afresh
        other = tmp_path / "xdp-other-layout"
        shutil.copytree(XDP_DIR, other)
        consts = other / "dp_consts.h"
        consts.write_text(consts.read_text() + "\n#define DP_SOMETHING_NEW 1\n")
        monkeypatch.setenv("XDPSWITCH_XDP_DIR", str(other))
        with pytest.raises(DatapathError, match="another map layout.*del-dp.*--replace"):
            switch()
        assert ping(h1, h2.ip, 2)  # the old datapath still forwards
        said.clear()
        sw = switch(replace=True)
        try:
            assert any("replaced datapath" in m for m in said), said
            with DatapathView.open(name) as view:
                assert view.pin_dir != pin_dir and not pin_dir.exists()
            time.sleep(0.3)
            assert ping(h1, h2.ip, 2)
        finally:
            sw.shutdown(remove=True)
    finally:
        with contextlib.suppress(DatapathError):
            remove_datapath(name)


def test_a_step_of_the_shutdown_that_fails_does_not_stop_the_others(hosts: list[Host], tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The state file cannot be written when the daemon stops: that is logged, and the control sockets, the
    name's lock and the datapath's hold still go (the next start adopts it and finds no stale socket)."""
    h1, h2, _ = hosts
    name = unique("xssd")
    specs = [PortSpec(h.port, h.port_no) for h in (h1, h2)]

    def switch() -> Switch:
        sw = Switch(name, specs, tmp_path / "flows.json", config=DatapathConfig(max_flows=4096), say=lambda m: None,
                    metrics_address=None)
        sw.start()
        return sw

    try:
        sw = switch()
        request(name, "add-flows", flows=list(L2))
        assert ping(h1, h2.ip, 2)

        def unwritable() -> None:
            raise OSError(30, "Read-only file system")

        sw.save = unwritable  # type: ignore[method-assign]
        sw._dirty = True
        sw.shutdown()
        assert "saving the state file failed; the rest of the shutdown goes on" in caplog.text
        assert not control_path(name).exists() and not (RUN_DIR / f"{name}.pid").exists()
        assert all(xdp_mode(h.port) != "none" for h in (h1, h2)) and ping(h1, h2.ip, 2)  # still forwarding
        sw = switch()   # adopts it
        sw.shutdown(remove=True)
        assert all(xdp_mode(h.port) == "none" for h in (h1, h2))
    finally:
        with contextlib.suppress(DatapathError):
            remove_datapath(name)
        forget_run_files(name)
