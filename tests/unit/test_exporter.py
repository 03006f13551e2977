"""The Prometheus exposition, whole, against a golden file (as node_exporter's end-to-end test does), and
the exporter's behaviour when the switch cannot answer. UPDATE_GOLDEN=1 rewrites the golden file."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from ctl.datapath.dpif import DpStats, PortStats
from exporters.collector import PortSample, Snapshot, parse_address, registry_for, serve

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "metrics.golden"


def snapshot() -> Snapshot:
    return Snapshot(
        datapath="sw0",
        dp=DpStats(emc_hits=900, megaflow_hits=80, misses=15, lost=5, mask_lookups=120, hint_hits=60, emc_inserts=3,
                   drops={"action": 2, "ttl_expired": 1, "controller": 0}),
        ports=[PortSample(1, "veth1", PortStats(600, 60000, 400, 40000, 1)),
               PortSample(2, "veth2", PortStats(400, 40000, 580, 58000, 2, 580), "skb")],
        maps={"mf_flows": (12, 262144), "mf_masks": (3, 64)}, megaflows=12, masks=3, rules=7, ukeys=12,
        upcalls={"ok": 14, "failed": 1, "lost": 5}, upcall_reasons={"miss": 15, "slow_path": 0},
        megaflows_installed=14, megaflows_deleted={"idle": 2, "stale": 1},
        handling_buckets=[(50e-6, 3), (100e-6, 10), (1e-3, 15), (float("inf"), 15)], handling_sum=0.0012,
        revalidator_dump_seconds=0.004, flow_limit=200000)


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
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("bad", ["9640", "host:", "host:99999", ":80"])
def test_bad_address_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="bad metrics address"):
        parse_address(bad)
