"""``xdpswitch top`` in a real terminal: tmux runs it, the test reads the pane twice under traffic and the
numbers have moved (packets/s per cache layer, per-port totals, the busiest megaflow)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctl.daemon.switch import request
from tests.conftest import need_tool, unique
from tests.netns.conftest import Host
from tests.netns.test_switch import L2, make_switch

pytestmark = pytest.mark.root

XDPSWITCH = Path(sys.executable).parent / "xdpswitch"


def number(pane: str, label: str) -> float:
    m = re.search(rf"{re.escape(label)}\s*[│|]\s*([\d,]+)", pane)
    assert m, f"no {label!r} in the pane:\n{pane}"
    return float(m.group(1).replace(",", ""))


def port_rx_total(pane: str, port: str) -> int:
    m = re.search(rf"[│|]\s*1\s*[│|]\s*{re.escape(port)}\s*[│|](?:[^│|]*[│|]){{3}}\s*([\d,]+)", pane)
    assert m, f"no row for port 1 ({port}) in the pane:\n{pane}"
    return int(m.group(1).replace(",", ""))


def test_top_in_tmux_moves_under_traffic(hosts: list[Host], tmp_path: Path) -> None:
    binary = need_tool("tmux", "tmux")
    h1, h2, _ = hosts
    sw = make_switch(unique("xstop"), hosts, tmp_path / "flows.json")
    server = unique("xstmux")
    run = [binary, "-L", server]
    ping = None
    try:
        request(sw.name, "add-flows", flows=list(L2))
        subprocess.run([*run, "new-session", "-d", "-s", "top", "-x", "220", "-y", "60",
                        f"{XDPSWITCH} top --name {sw.name}"], check=True, timeout=10,
                       env={"PATH": "/usr/bin:/bin", "TERM": "xterm-256color"})
        ping = subprocess.Popen(["ip", "netns", "exec", h1.ns, "ping", "-q", "-c", "600", "-i", "0.01", h2.ip],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3.0)
        first = subprocess.run([*run, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True,
                               check=True).stdout
        time.sleep(2.0)
        second = subprocess.run([*run, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True,
                                check=True).stdout
        assert f"xdpswitch top: {sw.name}" in second, second
        hits = number(second, "EMC hit") + number(second, "megaflow hit")
        assert 30 <= hits <= 400, f"up to 200 packets/s of ping and replies, all hits:\n{second}"
        assert port_rx_total(second, h1.port) > port_rx_total(first, h1.port), "the port totals moved"
        assert "in_port(1),eth(dst=02:00:00:00:00:02)" in second, f"the busiest megaflows are listed:\n{second}"
        assert "upcalls/s:" in second and "handlers 1" in second and "revalidator pass" in second
    finally:
        if ping is not None:
            ping.kill()
            ping.wait()
        subprocess.run([*run, "kill-server"], capture_output=True, timeout=10)
        sw.shutdown(remove=True)
