"""The Prometheus exporter: a custom Collector that reads the switch's counters at scrape time.

Nothing is mirrored into global counters: every scrape calls ``snapshot()`` (the daemon's
``Switch.metrics_snapshot``, which reads the BPF maps and the upcall counters) and turns it into metric
families, prometheus-client's documented pattern for proxied counters. If the snapshot fails (the
datapath is restarting), the scrape fails and nothing else does.

Names: one prefix (``xdpswitch_``), base units (seconds, bytes), ``_total`` on counters, labels whose
values sum to something meaningful (``lookups_total`` by result partitions every packet), never a flow key
or an address as a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from ctl import __version__
from ctl.datapath.dpif import DpStats, PortStats
from exporters.server import MetricsServer

DEFAULT_ADDRESS = "127.0.0.1:9640"


@dataclass
class PortSample:
    port_no: int
    name: str
    stats: PortStats
    tx_path: str = "xdp"    # how the fast path sends to it: xdp (redirect) or skb


@dataclass
class Snapshot:
    """Everything one scrape reports, read at scrape time."""

    datapath: str
    dp: DpStats
    ports: list[PortSample]
    maps: dict[str, tuple[int, int]]          # map -> (entries, max entries)
    megaflows: int
    masks: int
    rules: int
    ukeys: int
    upcalls: dict[str, int]                   # result -> count: ok, failed, lost
    upcall_reasons: dict[str, int]            # miss, slow_path
    megaflows_installed: int
    megaflows_deleted: dict[str, int]         # reason -> count
    handling_buckets: list[tuple[float, int]] = field(default_factory=list)  # (upper bound s, cumulative)
    handling_sum: float = 0.0
    handling_phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds (ctl.udpif.upcall.PHASES)
    revalidator_dump_seconds: float = 0.0     # how long the last dump-and-sweep pass took
    flow_limit: int = 0                       # the flow-limit in force (adapted by the revalidator)
    loop_errors: dict[str, int] = field(default_factory=dict)  # loop -> exceptions caught (the loop went on)
    openflow_connections: int = 0
    openflow_refused: dict[str, int] = field(default_factory=dict)  # reason -> connections refused or closed
    packet_ins_rate_limited: int = 0          # packet-ins over the controller rate limit, every connection's
    masks_limited: int = 0                    # megaflows given the exact mask past the mask limit (TSE guard)
    megaflows_revalidated: int = 0            # stale megaflows translated again (a change could affect them)
    megaflows_stale: int = 0                  # marked stale and not translated again yet
    http: dict[str, int] = field(default_factory=dict)   # the /metrics server's own counters (ServerStats)


LOOPS = ("control", "handler", "openflow", "revalidator", "tick")  # every loop that counts, shown at 0 too
DELETE_REASONS = ("flow_limit", "flush", "idle", "purge", "stale")   # why the revalidator or a flush deletes
HTTP_RESULTS = ("scrapes", "evicted", "refused", "timed_out", "bad_requests", "accept_failed", "errors")
REFUSALS = ("max_connections", "accept_failed", "tls_failed", "inactive", "not_reading")  # ChannelStats' fields


class SwitchCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily | InfoMetricFamily]:
        s = self.snapshot()
        dp = s.dp
        yield InfoMetricFamily("xdpswitch_build", "Version of xdpswitch.", value={"version": __version__})
        c = CounterMetricFamily("xdpswitch_lookups", "Packets by fast-path lookup result; the results partition "
                                "every packet the fast path saw.", labels=["result"])
        for result, v in (("emc_hit", dp.emc_hits), ("megaflow_hit", dp.megaflow_hits), ("miss", dp.misses),
                          ("lost", dp.lost)):
            c.add_metric([result], v)
        yield c
        yield CounterMetricFamily("xdpswitch_subtable_lookups", "Megaflow subtables looked up (hits and misses).",
                                  value=dp.mask_lookups)
        yield CounterMetricFamily("xdpswitch_mask_hint_hits", "Megaflow hits found in the hinted subtable.",
                                  value=dp.hint_hits)
        yield CounterMetricFamily("xdpswitch_simple_match_hits", "Megaflow hits found by the simple match, from the "
                                  "ingress port and the Ethernet type with no parse (of megaflow_hit).",
                                  value=dp.simple_hits)
        yield CounterMetricFamily("xdpswitch_emc_inserts", "Exact-match cache inserts.", value=dp.emc_inserts)
        yield CounterMetricFamily("xdpswitch_emc_probes_skipped",
                                  "Packets that did not probe the exact-match cache: it is off, or its recent probes "
                                  "mostly missed (more flows than it holds).", value=dp.emc_skips)
        d = CounterMetricFamily("xdpswitch_drops", "Packets the fast path dropped, by reason.", labels=["reason"])
        for reason, v in sorted(dp.drops.items()):
            d.add_metric([reason], v)
        yield d
        g = GaugeMetricFamily("xdpswitch_flows", "Flows held, by cache.", labels=["cache"])
        g.add_metric(["megaflow"], s.megaflows)
        g.add_metric(["ukey"], s.ukeys)
        g.add_metric(["openflow"], s.rules)
        yield g
        yield GaugeMetricFamily("xdpswitch_megaflow_masks", "Megaflow subtables (distinct masks).", value=s.masks)
        e = GaugeMetricFamily("xdpswitch_map_entries", "Entries in use per fast-path map.", labels=["map"])
        m = GaugeMetricFamily("xdpswitch_map_max_entries", "Capacity per fast-path map.", labels=["map"])
        for name, (used, cap) in sorted(s.maps.items()):
            e.add_metric([name], used)
            m.add_metric([name], cap)
        yield e
        yield m
        u = CounterMetricFamily("xdpswitch_upcalls", "Upcalls by result.", labels=["result"])
        for result in ("ok", "failed", "lost"):
            u.add_metric([result], s.upcalls.get(result, 0))
        yield u
        r = CounterMetricFamily("xdpswitch_upcall_reasons", "Upcalls received, by reason.", labels=["reason"])
        for reason, v in sorted(s.upcall_reasons.items()):
            r.add_metric([reason], v)
        yield r
        yield CounterMetricFamily("xdpswitch_megaflows_installed", "Megaflows installed by the handlers.",
                                  value=s.megaflows_installed)
        dl = CounterMetricFamily("xdpswitch_megaflows_deleted", "Megaflows deleted, by reason.", labels=["reason"])
        for reason in sorted({*DELETE_REASONS, *s.megaflows_deleted}):   # every reason, at 0 until it happens
            dl.add_metric([reason], s.megaflows_deleted.get(reason, 0))
        yield dl
        h = HistogramMetricFamily("xdpswitch_upcall_handling_seconds", "Time to handle one upcall (translate, "
                                  "install, execute, transmit).", unit="")
        h.add_metric([], buckets=[(_le(b), n) for b, n in s.handling_buckets], sum_value=s.handling_sum)
        yield h
        ph = CounterMetricFamily("xdpswitch_upcall_phase_seconds", "Upcall handling time by phase: parse, translate, "
                                 "megaflow, install, execute, transmit.", labels=["phase"])
        for phase, seconds in s.handling_phases.items():
            ph.add_metric([phase], seconds)
        yield ph
        yield GaugeMetricFamily("xdpswitch_revalidator_dump_duration_seconds", "Duration of the last revalidator "
                                "pass (dump and sweep).", value=s.revalidator_dump_seconds)
        yield GaugeMetricFamily("xdpswitch_flow_limit", "Megaflows the handlers may install (adapted by the "
                                "revalidator).", value=s.flow_limit)
        for direction, what, done in (("receive", "rx", "received"), ("transmit", "tx", "transmitted")):
            pk = CounterMetricFamily(f"xdpswitch_port_{direction}_packets", f"Packets {done} per port (in XDP).",
                                     labels=["port", "name"])
            by = CounterMetricFamily(f"xdpswitch_port_{direction}_bytes", f"Bytes {done} per port (in XDP).",
                                     labels=["port", "name"])
            for p in s.ports:
                pk.add_metric([str(p.port_no), p.name], getattr(p.stats, f"{what}_packets"))
                by.add_metric([str(p.port_no), p.name], getattr(p.stats, f"{what}_bytes"))
            yield pk
            yield by
        pd = CounterMetricFamily("xdpswitch_port_drops", "Packets dropped per ingress port.", labels=["port", "name"])
        for p in s.ports:
            pd.add_metric([str(p.port_no), p.name], p.stats.drops)
        yield pd
        sk = CounterMetricFamily("xdpswitch_port_transmit_skb_packets", "Of the packets transmitted per port, those "
                                 "sent by the skb path (the device does not take XDP redirects).",
                                 labels=["port", "name"])
        sp = GaugeMetricFamily("xdpswitch_port_skb_path", "1 while the fast path sends to the port by the skb path "
                               "(e.g. a veth whose peer has neither XDP nor GRO), 0 while by XDP redirect.",
                               labels=["port", "name"])
        for p in s.ports:
            sk.add_metric([str(p.port_no), p.name], p.stats.tx_skb_packets)
            sp.add_metric([str(p.port_no), p.name], 1 if p.tx_path == "skb" else 0)
        yield sk
        yield sp
        le = CounterMetricFamily("xdpswitch_loop_errors", "Exceptions caught in one iteration of a loop that serves "
                                 "others (the loop went on; the first of each is logged with its traceback).",
                                 labels=["loop"])
        for loop in LOOPS:
            le.add_metric([loop], s.loop_errors.get(loop, 0))
        yield le
        yield GaugeMetricFamily("xdpswitch_openflow_connections", "OpenFlow connections up (controllers and "
                                "management clients).", value=s.openflow_connections)
        ref = CounterMetricFamily("xdpswitch_openflow_refused", "OpenFlow connections refused or closed by a limit "
                                  "or a check (docs/security.md).", labels=["reason"])
        for reason in REFUSALS:
            ref.add_metric([reason], s.openflow_refused.get(reason, 0))
        yield ref
        yield CounterMetricFamily("xdpswitch_packet_ins_rate_limited", "Packet-ins not sent: over a connection's "
                                  "controller rate limit (--controller-rate).", value=s.packet_ins_rate_limited)
        yield CounterMetricFamily("xdpswitch_megaflows_mask_limited", "Megaflows given the exact mask because the "
                                  "mask limit was reached (the tuple space explosion guard).", value=s.masks_limited)
        yield CounterMetricFamily("xdpswitch_megaflows_revalidated", "Megaflows translated again because a flow-table "
                                  "or MAC-table change could affect them.", value=s.megaflows_revalidated)
        yield GaugeMetricFamily("xdpswitch_megaflows_stale", "Megaflows a change marked stale, not translated again "
                                "yet.", value=s.megaflows_stale)
        http = CounterMetricFamily("xdpswitch_metrics_http_requests", "The /metrics endpoint's own connections "
                                   "by outcome (exporters/server.py: bounded clients, deadlines).", labels=["result"])
        for result in HTTP_RESULTS:
            http.add_metric([result], s.http.get(result, 0))
        yield http


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def registry_for(snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SwitchCollector(snapshot))
    return reg


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise ValueError(f"bad metrics address {text!r}: HOST:PORT, e.g. {DEFAULT_ADDRESS}")
    return host.strip("[]"), int(port)


def serve(snapshot: Callable[[], Snapshot], address: str = DEFAULT_ADDRESS, max_clients: int = 16,
          timeout: float = 10.0) -> MetricsServer:
    """Serve /metrics on address (exporters/server.py: one thread, bounded clients, deadlines); returns the
    server (close() stops it). OSError if the address cannot be bound."""
    host, port = parse_address(address)
    server: MetricsServer | None = None

    def with_http() -> Snapshot:
        snap = snapshot()
        if server is not None:
            snap.http = dict(vars(server.stats))
        return snap

    registry = registry_for(with_http)
    server = MetricsServer(lambda: (generate_latest(registry), CONTENT_TYPE_LATEST), host, port, max_clients, timeout)
    return server
