"""A real Prometheus server (Debian's package, its own config and storage) scrapes the daemon while traffic
flows through the switch; PromQL over its HTTP API must show the hit rate and the upcall rate the traffic
implies."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctl.daemon.switch import Switch, request
from tests.conftest import unique
from tests.netns.conftest import Host
from tests.netns.test_switch import L2, make_switch
from tests.unit.test_monitoring import RULES, dashboard_exprs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prom(hosts: list[Host], tmp_path: Path) -> Iterator[tuple[Switch, str]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (scripts/test.sh installs it)")
    sw = make_switch(unique("xsprom"), hosts, tmp_path / "flows.json")
    proc = None
    try:
        target = sw._metrics.server_address[1]
        (tmp_path / "prom.yml").write_text(
            "global:\n  scrape_interval: 500ms\n  evaluation_interval: 500ms\n"
            f"rule_files: ['{RULES}']\n"
            f"scrape_configs:\n  - job_name: xdpswitch\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n")
        port = free_port()
        proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prom.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                if urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline and proc.poll() is None, "prometheus did not become ready"
            time.sleep(0.3)
        yield sw, url
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)
        sw.shutdown(remove=True)


def query_all(url: str, promql: str) -> list[dict[str, object]]:
    q = urllib.parse.urlencode({"query": promql})
    res = json.loads(urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5).read())
    assert res["status"] == "success", res
    return list(res["data"]["result"])


def query(url: str, promql: str) -> float:
    result = query_all(url, promql)
    return float(result[0]["value"][1]) if result else 0.0  # type: ignore[index]


def wait_scraped(url: str) -> None:
    deadline = time.time() + 30  # Prometheus applies its scrape config a few seconds after it starts
    while query(url, 'up{job="xdpswitch"}') != 1:
        assert time.time() < deadline, "prometheus never scraped the switch"
        time.sleep(0.5)


def test_prometheus_sees_the_traffic(prom: tuple[Switch, str], hosts: list[Host]) -> None:
    sw, url = prom
    h1, h2, _ = hosts
    request(sw.name, "add-flows", flows=list(L2))
    wait_scraped(url)
    time.sleep(1.0)  # a few scrapes before the traffic
    # the hosts' own packets (IPv6 neighbour discovery as links come up ...) may have made megaflows already
    installed0 = query(url, "xdpswitch_megaflows_installed_total")
    ping = subprocess.Popen(["ip", "netns", "exec", h1.ns, "ping", "-c", "200", "-i", "0.02", "-W", "1", h2.ip],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # 50 requests/s for 4 s
    time.sleep(3.0)
    # in the middle of the traffic: about 100 packets/s (requests and replies), all hits; no upcalls
    hits = query(url, 'sum(rate(xdpswitch_lookups_total{result=~"emc_hit|megaflow_hit"}[2s]))')
    upcalls = query(url, 'sum(rate(xdpswitch_upcalls_total{result="ok"}[2s]))')
    assert 70 <= hits <= 130, hits
    assert upcalls < 1, upcalls
    assert ping.wait(timeout=20) == 0
    time.sleep(2.0)  # the traffic is over; let the last scrapes land
    assert sw.dp is not None
    st = sw.dp.stats()
    assert query(url, "sum(xdpswitch_lookups_total)") == st.packets
    assert query(url, "xdpswitch_megaflows_installed_total") - installed0 == 2  # one new megaflow each way
    # every miss was handled (a packet that came up while its megaflow went in is a miss too)
    assert query(url, 'xdpswitch_upcalls_total{result="ok"}') == st.misses >= 2
    ratio = query(url, 'sum(xdpswitch_lookups_total{result=~"emc_hit|megaflow_hit"}) / sum(xdpswitch_lookups_total)')
    assert ratio == pytest.approx((st.emc_hits + st.megaflow_hits) / st.packets)


def test_the_shipped_dashboard_and_rules_answer_against_a_real_prometheus(prom: tuple[Switch, str],
                                                                         hosts: list[Host]) -> None:
    """Prometheus loads monitoring/prometheus/xdpswitch.rules.yml and scrapes the switch under traffic: every
    query of monitoring/grafana/xdpswitch.json (Grafana's variables filled in) and every recording rule
    returns series, and no alert fires on a healthy switch."""
    sw, url = prom
    h1, h2, _ = hosts
    request(sw.name, "add-flows", flows=list(L2))
    wait_scraped(url)
    ping = subprocess.Popen(["ip", "netns", "exec", h1.ns, "ping", "-c", "150", "-i", "0.02", "-W", "1", h2.ip],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3.0)
    for expr in dashboard_exprs():
        promql = expr.replace("$instance", ".*").replace("$__rate_interval", "5s")
        assert query_all(url, promql), f"no series for the dashboard's {promql}"
    for record in ("xdpswitch:lookups:rate1m", "xdpswitch:cache_hit_ratio:rate1m", "xdpswitch:emc_hit_ratio:rate1m",
                   "xdpswitch:upcalls:rate1m", "xdpswitch:flow_limit_usage:ratio", "xdpswitch:mask_usage:ratio",
                   "xdpswitch:port_drops:rate1m"):
        assert query_all(url, record), f"the recording rule {record} has no series"
    assert query(url, "xdpswitch:cache_hit_ratio:rate1m") > 0.5
    assert ping.wait(timeout=20) == 0
    rules = json.loads(urllib.request.urlopen(f"{url}/api/v1/rules", timeout=5).read())["data"]["groups"]
    assert {g["name"] for g in rules} == {"xdpswitch.recording", "xdpswitch.alerts"}
    assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules
    firing = [r["name"] for g in rules for r in g["rules"] if r.get("state") == "firing"]
    assert firing == [], firing
