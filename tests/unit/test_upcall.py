"""The upcall layer's logic with an in-memory datapath: installs, reuse of ukeys, the slow path, the
flow-limit, failures counted, and the flush on table changes crediting rule counters."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from ctl.datapath import dpif
from ctl.datapath.dpif import Action, MapFull
from ctl.datapath.flowkey import FlowKey
from ctl.datapath.xsk import Upcall
from ctl.pipeline.openflow_tables import OpenFlowTables, parse_flow
from ctl.udpif.upcall import Udpif


class FakeDatapath:
    """Megaflows in a dict; a megaflow's packet counter is set by the test (as the fast path would)."""

    def __init__(self, max_flows: int = 100) -> None:
        self.flows: dict[tuple[bytes, bytes], tuple[int, list[Action]]] = {}
        self.stats: dict[int, tuple[int, int, int]] = {}
        self.buckets: dict[int, tuple[int, int]] = {}  # select bucket slot -> (packets, bytes), set by the test
        self.meters: dict[int, list[tuple[int, int, int, int]]] = {}
        self.upcall_limit: dict[int, tuple[int, int]] = {}
        self.max_flows = max_flows
        self.next = 0

    def put_flow(self, key: FlowKey, mask: FlowKey, actions: Sequence[Action]) -> int:
        if len(self.flows) >= self.max_flows:
            raise MapFull("full")
        dpif.encode_actions(actions, max_actions=8, max_port=256, group_for=lambda ports: 0)
        self.next += 1
        self.flows[(bytes(key.masked(mask)), bytes(mask))] = (self.next, list(actions))
        return self.next

    def put_flows(self, items: Sequence[tuple[FlowKey, FlowKey, Sequence[Action]]]) -> list[int | Exception]:
        self.batches = getattr(self, "batches", 0) + 1
        out: list[int | Exception] = []
        for key, mask, actions in items:
            try:
                out.append(self.put_flow(key, mask, actions))
            except Exception as e:
                out.append(e)
        return out

    def del_flow(self, key: FlowKey, mask: FlowKey) -> bool:
        return self.flows.pop((bytes(key.masked(mask)), bytes(mask)), None) is not None

    def del_flows(self, items: Sequence[tuple[FlowKey, FlowKey]]) -> list[bool]:
        self.del_batches = getattr(self, "del_batches", 0) + 1
        return [self.del_flow(key, mask) for key, mask in items]

    def flow_stats(self, idx: int) -> tuple[int, int, int]:
        return self.stats.get(idx, (0, 0, 0))

    def flow_stats_all(self) -> dict[int, tuple[int, int, int]]:
        return {idx: self.flow_stats(idx) for idx, _a in self.flows.values()}

    def bucket_stats(self, base: int, n: int) -> list[tuple[int, int]]:
        return [self.buckets.get(base + i, (0, 0)) for i in range(n)]

    def zero_buckets(self, base: int, n: int) -> None:
        for i in range(n):
            self.buckets.pop(base + i, None)

    def set_meter(self, slot: int, pktps: bool, bands: Sequence[tuple[int, int, int, int]]) -> None:
        self.meters[slot] = list(bands)

    def meter_stats(self, slot: int) -> list[tuple[int, int]]:
        return [(0, 0)] * (1 + len(self.meters.get(slot, [])))

    def set_upcall_limit(self, index: int, rate: int, burst: int) -> None:
        self.upcall_limit[index] = (rate, burst)

    @property
    def n_flows(self) -> int:
        return len(self.flows)


def frame(dport: int, dst: str = "02:00:00:00:00:02") -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst=dst) / IP(src="10.0.0.1", dst="10.0.0.2")
                 / UDP(sport=1, dport=dport) / b"payload")


def up(dport: int, in_port: int = 1, reason: int = 1) -> Upcall:
    return Upcall(reason, in_port, 0, frame(dport))


def make(*flows: str, max_flows: int = 100,
         clock: dpif.Clock | None = None) -> tuple[Udpif, FakeDatapath, dict[int, list[bytes]]]:
    clock = clock or dpif.Clock()
    t = OpenFlowTables(clock.monotonic)
    t.add_many(parse_flow(f) for f in flows)
    dp = FakeDatapath(max_flows)
    sent: dict[int, list[bytes]] = {}

    def tx(port: int, frames: Sequence[bytes]) -> int:
        sent.setdefault(port, []).extend(frames)
        return len(frames)

    return Udpif(dp, t, tx, lambda: [1, 2, 3], clock=clock), dp, sent


def test_identical_upcalls_in_a_batch_install_one_megaflow_and_all_are_sent() -> None:
    u, dp, sent = make("udp,actions=output:2")
    u.handle([up(53), up(53), up(54)])
    assert len(dp.flows) == 1  # the megaflow (udp from port 1) covers all three
    assert (u.stats.installed, u.stats.existing, u.stats.ok) == (1, 2, 3)
    assert len(sent[2]) == 3 and sent[2][0] == frame(53)


def test_handling_time_is_split_by_phase_within_the_total() -> None:
    u, dp, sent = make("udp,actions=output:2")
    u.handle([up(53), up(54)])
    ph = u.stats.phase_seconds
    assert list(ph) == ["parse", "translate", "megaflow", "install", "execute", "transmit"]
    assert all(v > 0 for v in ph.values()), ph       # each phase ran on this batch (a new megaflow, sent)
    assert sum(ph.values()) <= u.stats.handling_sum  # the phases are parts of the handling time, no more
    u.handle([up(55)])   # the megaflow exists: no translation, no install
    before, ph = ph, u.stats.phase_seconds   # stats: every writer's counters summed now (a copy)
    assert ph["translate"] == before["translate"] and ph["install"] == before["install"]
    assert ph["parse"] > before["parse"] and ph["transmit"] > before["transmit"]


def test_slow_path_megaflow_and_flood_transmit() -> None:
    u, dp, sent = make("udp,actions=output:2,mod_dl_dst:02:00:00:00:00:09,output:3", "priority=1,actions=flood")
    u.handle([up(53)])
    (idx, acts), = dp.flows.values()
    assert acts == [dpif.DpUpcall()] and u.stats.slow_path == 1
    assert Ether(sent[3][0]).dst == "02:00:00:00:00:09" and Ether(sent[2][0]).dst == "02:00:00:00:00:02"
    u.handle([Upcall(1, 1, 0, bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / IP() / b"x"))])
    assert len(sent[2]) == 2 and len(sent[3]) == 2 and 1 not in sent  # flood: every port but the ingress


def test_flow_limit_and_full_datapath_still_forward() -> None:
    u, dp, sent = make("udp,tp_dst=53,actions=output:2", "udp,tp_dst=54,actions=output:2", max_flows=1)
    u.flow_limit = 0
    u.handle([up(53)])
    assert u.stats.over_flow_limit == 1 and not dp.flows and len(sent[2]) == 1
    u.flow_limit = 100
    u.handle([up(53), up(54)])
    assert u.stats.install_failed == 1 and len(dp.flows) == 1 and len(sent[2]) == 3


def test_runt_packets_are_handled() -> None:
    u, dp, sent = make("actions=output:2")
    u.handle([Upcall(1, 1, 0, b"\x01\x02"), up(53)])  # a runt is still a packet: it forwards
    assert u.stats.failed == 0 and u.stats.ok == 2 and len(sent[2]) == 2


def test_an_upcall_that_fails_is_counted_and_the_batch_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctl.udpif.upcall

    real = ctl.udpif.upcall.translate

    def translate(tables: object, flow: dict[str, int], *a: object, **kw: object) -> object:
        if flow["tp_dst"] == 66:
            raise RuntimeError("pipeline bug")
        return real(tables, flow, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ctl.udpif.upcall, "translate", translate)
    u, dp, sent = make("udp,tp_dst=53,actions=output:2", "udp,tp_dst=66,actions=output:2")
    u.handle([up(66), up(53)])
    assert (u.stats.failed, u.stats.ok, len(sent[2])) == (1, 1, 1)


def test_table_change_flushes_and_credits_rules() -> None:
    u, dp, sent = make("udp,actions=output:2")
    u.handle([up(53)])
    rule = u.tables.rules()[0]
    (idx, _), = dp.flows.values()
    dp.stats[idx] = (10, 1000, 0)       # ten hits in the fast path since
    u.push_stats()
    assert (rule.n_packets, rule.n_bytes) == (11, 1000 + len(frame(53)))
    dp.stats[idx] = (15, 1500, 0)
    u.change_tables(lambda t: t.add(parse_flow("priority=40000,udp,actions=output:3")), wait=True)
    assert not dp.flows and not len(u.ukeys)
    assert rule.n_packets == 16          # the last hits before the flush were credited
    u.handle([up(53)])
    assert list(dp.flows.values())[0][1] == [dpif.DpOutput(3)]


def test_counters_are_exact_with_several_handlers() -> None:
    """Each handler writes its own counters; the sum read at any time is exact (no lost += updates)."""
    import threading

    u, dp, sent = make("udp,actions=output:2")
    per_thread, n_threads = 400, 4
    stats = [u.handler_stats() for _ in range(n_threads)]

    def work(st: object) -> None:
        for i in range(per_thread):
            u.handle([up(1000 + i % 7)], st)  # type: ignore[arg-type]

    threads = [threading.Thread(target=work, args=(st,)) for st in stats]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = u.stats
    assert total.received == total.ok == per_thread * n_threads
    assert total.installed + total.existing == per_thread * n_threads and total.installed == 1
    assert total.tx_packets == len(sent[2]) == per_thread * n_threads
    assert u.port_tx()[2][0] == per_thread * n_threads
    assert sum(total.handling_counts) == per_thread * n_threads


def test_a_state_save_copies_under_the_lock_while_flow_mods_run() -> None:
    """The state file is copied under the Udpif's lock: a thread changing the tables as fast as it can never
    makes a save fail (the daemon died of 'dictionary changed size during iteration' before)."""
    import threading

    u, _dp, _sent = make("udp,actions=output:2")
    stop = threading.Event()
    failures: list[BaseException] = []

    def churn() -> None:
        i = 0
        while not stop.is_set():
            u.change_tables(lambda t, i=i: t.add(parse_flow(f"priority={i % 50},udp,tp_dst={i % 5000},actions=drop")))
            if i % 3 == 0:
                u.change_tables(lambda t, i=i: t.delete(parse_flow(f"priority={i % 50},udp,tp_dst={i % 5000}",
                                                                   actions=False), strict=True))
            i += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(20):
            try:
                with u.lock:
                    snap = u.tables.snapshot()
                data = snap.to_json()  # formatted outside the lock, from the copy
                assert isinstance(data["flows"], list)
            except BaseException as e:
                failures.append(e)
    finally:
        stop.set()
        t.join()
    assert not failures


def test_a_flooding_port_delays_another_ports_upcall_by_one_small_batch_at_most() -> None:
    """The handler's rounds take at most FAIR_BATCH from each socket, interleaved: the victim's one upcall
    is in the first round even with a thousand of the flooder's queued ahead of it."""
    from ctl.udpif.handler import FAIR_BATCH, take_round

    class FakeSocket:
        def __init__(self, ups: list[Upcall]) -> None:
            self.ups = ups

        def recv(self, timeout_ms: int = 0, max_batch: int = 64) -> list[Upcall]:
            out, self.ups = self.ups[:max_batch], self.ups[max_batch:]
            return out

    flood = FakeSocket([up(1000 + i, in_port=1) for i in range(1000)])
    victim = FakeSocket([up(53, in_port=2)])
    first = take_round([flood, victim], FAIR_BATCH)  # type: ignore[list-item]
    assert len(first) == FAIR_BATCH + 1 and first[1].in_port == 2  # interleaved: the victim's comes second
    rounds = 1
    while take_round([flood, victim], FAIR_BATCH):  # type: ignore[list-item]
        rounds += 1
    assert rounds == 1000 // FAIR_BATCH + (1000 % FAIR_BATCH > 0)


def test_table_stats_count_the_fast_paths_packets_too() -> None:
    """A megaflow that missed table 1 (after a goto from table 0) keeps missing it for every fast-path packet:
    TABLE stats (lookups = matched + missed) must count them, not just the upcall."""
    u, dp, _sent = make("table=0,udp,actions=goto_table:1", "table=1,priority=5,tcp,actions=output:2")
    u.handle([up(53)])
    t0, t1 = u.tables.tables[0], u.tables.tables[1]
    assert (t0.n_missed, t1.n_missed) == (0, 1)
    (idx, _), = dp.flows.values()
    dp.stats[idx] = (10, 1000, 0)       # ten fast-path packets of that megaflow
    u.push_stats()
    assert u.tables.rules()[0].n_packets == 11   # table 0 matched all eleven
    assert (t0.n_missed, t1.n_missed) == (0, 11)  # table 1 missed all eleven


def test_an_unsupported_action_is_logged_once_per_rule_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    u, dp, sent = make("priority=5,dl_vlan=7,actions=resubmit(,0)")  # a loop: deeper than 64 resubmits
    tagged = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=7)
                   / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=9))
    with caplog.at_level(logging.WARNING):
        u.handle([Upcall(1, 1, 0, tagged)])
        u.handle([Upcall(1, 1, 0, tagged[:-1] + b"x")])
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 1 and "deeper than 64 resubmits" in lines[0] and "resubmit(,0)" in lines[0], lines
    (_, actions), = dp.flows.values()
    assert actions == [dpif.DpDrop(dpif.DropReason.UNSUPPORTED)] and not sent


def test_past_the_mask_limit_new_megaflows_get_the_exact_mask() -> None:
    """The tuple space explosion guard: with a limit of 2 subtables, a megaflow that would need a third gets the
    exact mask (counted); a packet is forwarded all the same, and megaflows with an existing mask still go in."""
    from ctl.udpif.upcall import EXACT_MASK

    u, dp, sent = make("priority=30,udp,tp_dst=53,actions=output:2", "priority=20,udp,tp_src=7,actions=output:2",
                       "priority=10,udp,actions=output:3")
    u.mask_limit = 2
    u.handle([up(53)])                                     # mask A (tp_dst)
    u.handle([Upcall(1, 1, 0, bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                                    / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=7, dport=99)))])  # mask B
    assert u.ukeys.n_masks == 2 and u.stats.mask_limited == 0
    u.handle([Upcall(1, 1, 0, bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                                    / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=8, dport=99)))])  # needs C
    assert u.stats.mask_limited == 1 and u.ukeys.n_masks == 3 and u.ukeys.has_mask(EXACT_MASK)
    assert len(sent[3]) == 1
    u.handle([up(53, in_port=2)])                          # mask A again: no limit hit
    assert u.stats.mask_limited == 1 and u.ukeys.n_masks == 3


def test_control_socket_deletes_report_their_rules_for_flow_removed(tmp_path: Path) -> None:
    """del-flows, del-groups and del-meters from the control socket hand the rules they deleted, with why, to
    on_removed (the daemon sends FLOW_REMOVED, as OVS does for deletes through its management socket)."""
    from ctl.common.loops import LoopErrors
    from ctl.common.unixctl import Unixctl
    from ctl.udpif.upcall import register_commands

    u, _dp, _sent = make("send_flow_rem,udp,tp_dst=53,actions=output:2", "udp,tp_dst=54,actions=output:2")
    ctl = Unixctl(tmp_path / "x.ctl", LoopErrors())
    register_commands(ctl, u, "x", lambda: {1, 2, 3}, saved=lambda: None, extra_show=dict)
    got: list[tuple[str, str]] = []
    u.on_removed = lambda rules: got.extend((r.to_text(), why) for r, why in rules)
    assert ctl.run({"cmd": "add-groups", "args": {"groups": ["group_id=1,type=all,bucket=output:3"]}})["ok"]
    assert ctl.run({"cmd": "add-meters", "args": {"meters": ["meter=1,pktps,bands=type=drop,rate=10"]}})["ok"]
    assert ctl.run({"cmd": "add-flows", "args": {"flows": ["udp,tp_dst=55,actions=group:1",
                                                           "udp,tp_dst=56,actions=meter:1,output:2"]}})["ok"]
    assert ctl.run({"cmd": "del-flows", "args": {"filter": "udp,tp_dst=53"}})["ok"]
    assert ctl.run({"cmd": "del-groups", "args": {"filter": "group_id=1"}})["ok"]
    assert ctl.run({"cmd": "del-meters", "args": {"filter": "meter=1"}})["ok"]
    assert [(t.split("actions=")[1], why) for t, why in got] == [
        ("output:2", "delete"), ("group:1", "group_delete"), ("meter:1,output:2", "delete")]
