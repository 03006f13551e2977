"""The daemon's life: a restart comes back with its rules; `xdpswitch start` from the command line, driven
by `xdpswitch ofctl` and `trace`, stops on SIGTERM and detaches. (Own module: its own hosts, as these tests
attach and detach switches on them.)"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from ctl.daemon.switch import control_path, request
from ctl.datapath.dpif_xdp import DatapathError, remove_datapath
from ctl.datapath.netdev import xdp_mode
from ctl.datapath.view import DatapathView
from tests.conftest import unique
from tests.netns.conftest import Host
from tests.netns.test_forwarding import ping
from tests.netns.test_switch import L2, add, make_switch

ROOT = Path(__file__).resolve().parents[2]


def rule_list(name: str) -> list[tuple[object, ...]]:
    return [(r["table"], r["priority"], r["cookie"], r["match"], r["actions"]) for r in request(name, "dump-flows")]


def test_restart_comes_back_with_its_rules_and_adopts_the_running_datapath(hosts: list[Host], tmp_path: Path) -> None:
    h1, h2, h3 = hosts
    name, state = unique("xsrs"), tmp_path / "flows.json"
    sw = make_switch(name, hosts, state)
    try:
        request(sw.name, "add-groups", groups=["group_id=3,type=select,bucket=output:2,bucket=weight:3,output:3"])
        add(sw, *L2, "table=0,priority=5,cookie=0x42,arp,actions=flood", "table=2,actions=group:3")
        request(sw.name, "mod-table", table=1, miss="continue")
        before = rule_list(name)
        assert ping(h1, h2.ip, 2)  # h1<->h2 megaflows are in
    finally:
        sw.shutdown()
    try:
        # no daemon: the datapath still runs; established flows forward, a new one's misses are counted lost
        assert xdp_mode(h1.port) != "none"
        with DatapathView.open(name) as view:
            lost0 = view.stats().lost
            assert ping(h1, h2.ip, 2)
            assert not ping(h1, h3.ip, 1)
            assert view.stats().lost > lost0
        sw = make_switch(name, hosts, state)
        try:
            after = rule_list(name)
            assert after == before and len(after) == 6  # ours and the NORMAL default of a new standalone switch
            assert [g["line"] for g in request(name, "dump-groups")] == [
                "group_id=3,type=select,bucket=actions=output:2,bucket=weight:3,actions=output:3"]
            assert sw.tables.tables[1].miss == "continue"
            shown = request(name, "upcall-show")
            assert shown["ukeys"] >= 2  # the h1<->h2 megaflows, adopted
            time.sleep(0.5)
            assert ping(h1, h2.ip, 2) and ping(h1, h3.ip, 2)
        finally:
            sw.shutdown(remove=True)
        assert all(xdp_mode(h.port) == "none" for h in hosts)
    finally:
        with contextlib.suppress(DatapathError):
            remove_datapath(name)


def test_cli_start_ofctl_and_sigterm(hosts: list[Host], tmp_path: Path) -> None:
    name = unique("xscli")
    flows = tmp_path / "start.flows"
    flows.write_text("\n".join(L2) + "\n")
    cli = [sys.executable, "-m", "ctl.cli"]
    proc = subprocess.Popen([*cli, "start", "--name", name, "--state-dir", str(tmp_path), "--flows", str(flows),
                             *[a for h in hosts for a in ("--port", f"{h.port}={h.port_no}")]],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        deadline = time.time() + 60
        while not control_path(name).exists():
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        time.sleep(0.5)
        assert ping(hosts[0], hosts[1].ip, 2)
        r = subprocess.run([*cli, "ofctl", "add-flow", "--name", name, "ip,nw_dst=10.0.0.1/33,actions=drop"],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 1 and "prefix length 33" in r.stderr and "^^^^" in r.stderr
        assert "Traceback" not in r.stderr
        r = subprocess.run([*cli, "ofctl", "dump-flows", "--name", name, "--format", "json"],
                           capture_output=True, text=True, cwd=ROOT, check=True)
        dumped = json.loads(r.stdout)
        assert [d["match"] for d in dumped] == [f"dl_dst={h.mac}" for h in hosts]
        assert dumped[0]["n_packets"] == 2 and dumped[1]["n_packets"] == 2
        r = subprocess.run([*cli, "trace", "--name", name, f"in_port=1,icmp,dl_dst={hosts[1].mac}"],
                           capture_output=True, text=True, cwd=ROOT, check=True)
        assert f"Megaflow: ip,in_port=1,dl_dst={hosts[1].mac}" in r.stdout
        assert "Datapath actions: 2" in r.stdout
        r = subprocess.run([*cli, "ofctl", "add-group", "--name", name, "group_id=1,type=select,bucket=output:9x"],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 1 and "9x" in r.stderr and "^^" in r.stderr and "Traceback" not in r.stderr
        for args in (["add-group", "group_id=1,type=select,bucket=output:2,bucket=weight:2,output:3"],
                     ["add-flow", "table=0,priority=9,udp,tp_dst=9,actions=group:1"]):
            subprocess.run([*cli, "ofctl", args[0], "--name", name, args[1]], cwd=ROOT, check=True)
        r = subprocess.run([*cli, "ofctl", "dump-groups", "--name", name], capture_output=True, text=True, cwd=ROOT,
                           check=True)
        assert r.stdout.strip() == "group_id=1,type=select,bucket=actions=output:2,bucket=weight:2,actions=output:3"
        r = subprocess.run([*cli, "ofctl", "del-groups", "--name", name, "group_id=1"], capture_output=True,
                           text=True, cwd=ROOT, check=True)
        assert "the 1 flow(s) that went to them" in r.stdout
        r = subprocess.run([*cli, "ofctl", "dump-group-stats", "--name", name, "--format", "json"],
                           capture_output=True, text=True, cwd=ROOT, check=True)
        assert json.loads(r.stdout) == []
        saved = json.loads((tmp_path / name / "flows.json").read_text())
        assert len(saved["flows"]) == 3
        # established again just before the stop: the commands above can take longer than max-idle (10 s) on a
        # busy machine, and the revalidator rightly deletes idle megaflows
        assert ping(hosts[0], hosts[1].ip, 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    try:
        assert proc.returncode == 0, out
        assert "SIGTERM: stopping" in out and "its datapath keeps forwarding established flows" in out
        assert not control_path(name).exists()
        assert all(xdp_mode(h.port) != "none" for h in hosts)  # the datapath outlives the daemon
        assert ping(hosts[0], hosts[1].ip, 2)
    finally:
        r = subprocess.run([*cli, "dpctl", "del-dp", "--name", name], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "removed datapath" in r.stdout, r.stderr
    assert all(xdp_mode(h.port) == "none" for h in hosts)
    r = subprocess.run([*cli, "dpctl", "del-dp", "--name", name], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "no datapath named" in r.stderr and "Traceback" not in r.stderr


def test_a_failed_start_names_what_failed_and_leaves_nothing_behind(hosts: list[Host], tmp_path: Path) -> None:
    import socket

    name = unique("xsfs")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    addr = f"127.0.0.1:{taken.getsockname()[1]}"
    try:
        r = subprocess.run([sys.executable, "-m", "ctl.cli", "start", "--name", name, "--state-dir", str(tmp_path),
                            "--metrics-address", addr,
                            *[a for h in hosts for a in ("--port", f"{h.port}={h.port_no}")]],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    finally:
        taken.close()
    assert r.returncode == 1 and addr in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not Path(f"/sys/fs/bpf/xdpswitch/{name}").exists()  # the datapath it made is gone again
    assert not control_path(name).exists() and not Path(f"/run/xdpswitch/{name}.pid").exists()
    assert not Path(f"/run/xdpswitch/{name}.json").exists()
    assert all(xdp_mode(h.port) == "none" for h in hosts)
