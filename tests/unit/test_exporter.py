"""The Prometheus exposition, whole, against a golden file (as node_exporter's end-to-end test does), and
the exporter's behaviour when the switch cannot answer. UPDATE_GOLDEN=1 rewrites the golden file."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from ctl.datapath.dpif import DpStats, PortStats
from exporters.collector import PortSample, Snapshot, parse_address, registry_for, serve
from tests.unit.ofhelpers import exhaust_one_accept

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "metrics.golden"


def snapshot() -> Snapshot:
    return Snapshot(
        datapath="sw0",
        dp=DpStats(emc_hits=900, megaflow_hits=80, misses=15, lost=5, mask_lookups=120, hint_hits=60, emc_inserts=3,
                   emc_skips=4000, simple_hits=40,
                   drops={"action": 2, "ttl_expired": 1, "controller": 0}),
        ports=[PortSample(1, "veth1", PortStats(600, 60000, 400, 40000, 1)),
               PortSample(2, "veth2", PortStats(400, 40000, 580, 58000, 2, 580), "skb")],
        maps={"mf_entries": (12, 262144), "mf_masks": (3, 64)}, megaflows=12, masks=3, rules=7, ukeys=12,
        upcalls={"ok": 14, "failed": 1, "lost": 5}, upcall_reasons={"miss": 15, "slow_path": 0},
        megaflows_installed=14, megaflows_deleted={"idle": 2, "stale": 1},
        handling_buckets=[(50e-6, 3), (100e-6, 10), (1e-3, 15), (float("inf"), 15)], handling_sum=0.0012,
        handling_phases={"parse": 0.0002, "translate": 0.0005, "megaflow": 0.0001, "install": 0.0003,
                         "execute": 0.00005, "transmit": 0.00005},
        revalidator_dump_seconds=0.004, flow_limit=200000, megaflows_revalidated=1023, megaflows_stale=2)


def test_exposition_matches_golden_file() -> None:
    text = generate_latest(registry_for(snapshot)).decode()
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_lookup_results_partition_packets() -> None:
    text = generate_latest(registry_for(snapshot)).decode()
    results = {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("xdpswitch_lookups_total{")}
    assert sum(results.values()) == snapshot().dp.packets


def test_served_over_http_and_a_failing_snapshot_fails_only_the_scrape() -> None:
    state = {"fail": False}

    def snap() -> Snapshot:
        if state["fail"]:
            raise RuntimeError("datapath restarting")
        return snapshot()

    server = serve(snap, "127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        assert 'xdpswitch_lookups_total{result="emc_hit"} 900.0' in body
        state["fail"] = True
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url, timeout=5)
        state["fail"] = False
        assert urllib.request.urlopen(url, timeout=5).status == 200  # the server lives on
    finally:
        server.close()


def _scrape(port: int) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split()[1]), data


def test_idle_clients_cost_no_thread_and_are_closed_at_their_deadline() -> None:
    """300 idle connections held 300 threads of http.server; here they hold none, the oldest make room for
    newer ones, the rest are closed at their deadline, and a scrape gets through at once."""
    server = serve(snapshot, "127.0.0.1:0", max_clients=8, timeout=1.5)
    port = server.server_address[1]
    threads = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
    try:
        time.sleep(0.3)
        assert threading.active_count() == threads
        assert server.clients() <= 8
        assert server.stats.evicted >= 32
        # the cap is full of idle clients: a scrape gets through at once
        code, body = _scrape(port)
        assert code == 200 and b"xdpswitch_lookups_total" in body
        assert server.stats.timed_out == 0   # it got in by making room, not by waiting for a deadline
        for s in idle:   # every idle one was closed by the server (by the cap or at its deadline)
            s.settimeout(5)
            try:
                assert s.recv(10) == b""
            except ConnectionResetError:
                pass
        assert server.stats.timed_out >= 7
    finally:
        for s in idle:
            s.close()
        server.close()


def test_bad_requests_get_an_http_error_and_the_server_goes_on() -> None:
    server = serve(snapshot, "127.0.0.1:0", timeout=2)
    port = server.server_address[1]
    try:
        for raw, code in [(b"POST /metrics HTTP/1.1\r\n\r\n", b"405"), (b"GET /admin HTTP/1.1\r\n\r\n", b"404"),
                          (b"\x16\x03\x01 garbage\r\n\r\n", b"400"), (b"GET /" + b"a" * 9000, b"431")]:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(raw)
                assert s.recv(100).split()[1] == code
        assert server.stats.bad_requests == 4
        code, body = _scrape(port)
        assert code == 200 and b'xdpswitch_metrics_http_requests_total{result="bad_requests"} 4.0' in body
    finally:
        server.close()


@pytest.mark.parametrize("bad", ["9640", "host:", "host:99999", ":80"])
def test_bad_address_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="bad metrics address"):
        parse_address(bad)


def test_every_refusal_reason_of_the_channel_is_exported() -> None:
    from ctl.openflow.connmgr import ChannelStats
    from exporters.collector import HTTP_RESULTS, REFUSALS
    from exporters.server import ServerStats

    assert REFUSALS == tuple(ChannelStats().as_dict())
    assert HTTP_RESULTS == tuple(vars(ServerStats()))


def test_out_of_descriptors_fails_one_accept_not_the_server() -> None:
    server = serve(snapshot, "127.0.0.1:0")
    port = server.server_address[1]
    exhaust_one_accept(("127.0.0.1", port), lambda: server.stats.accept_failed)
    assert server.stats.accept_failed >= 1
    time.sleep(1.2)   # the listener rests a second
    assert _scrape(port)[0] == 200
    server.close()
