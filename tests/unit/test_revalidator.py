"""The revalidator's sweep with an in-memory datapath and a fake clock: counters credited, idle megaflows
deleted, table changes revalidated flow by flow (kept, updated in place or deleted as stale), rule
timeouts, the flow-limit's adaptation and the purge above twice the limit."""

from __future__ import annotations

from pathlib import Path

from ctl.datapath import dpif
from ctl.pipeline.openflow_tables import parse_flow
from ctl.udpif.revalidator import Revalidator
from tests.unit.test_upcall import FakeDatapath, make, up


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def ns(self) -> int:
        return int(self.t * 1e9)


def setup(*flows: str) -> tuple[Revalidator, FakeDatapath, Clock]:
    clock = Clock()
    u, dp, _sent = make(*flows, clock=dpif.Clock(clock, clock.ns))  # the switch's clocks all start at 1000 s
    rv = Revalidator(u, 200000, max_idle_ms=10000, ports=lambda: {1, 2, 3})
    return rv, dp, clock


def test_counters_credited_exactly() -> None:
    rv, dp, clock = setup("udp,actions=output:2")
    rv.udpif.handle([up(53)])
    rule = rv.udpif.tables.rules()[0]
    (idx, _), = dp.flows.values()
    dp.stats[idx] = (99, 9900, clock.ns())
    rv.revalidate()
    rv.revalidate()  # nothing new: nothing added
    assert rule.n_packets == 100


def test_idle_megaflows_go() -> None:
    rv, dp, clock = setup("udp,tp_dst=53,actions=output:2", "udp,tp_dst=54,actions=output:3")
    for k in [up(53), up(54)]:
        rv.udpif.handle([k])
    for u in rv.udpif.ukeys:
        u.created_ns = clock.ns()
    busy = next(idx for idx, a in dp.flows.values() if a == [dpif.DpOutput(2)])
    clock.t += 11
    dp.stats[busy] = (5, 500, clock.ns() - 1_000_000)  # used a millisecond ago
    rv.revalidate()
    assert [a for _i, a in dp.flows.values()] == [[dpif.DpOutput(2)]]
    assert rv.udpif.stats.deleted.get("idle", 0) == 1


def test_idle_megaflows_of_a_batch_go_in_one_datapath_write() -> None:
    rv, dp, clock = setup(*(f"priority=10,udp,tp_dst={p},actions=output:2" for p in range(100, 130)))
    rv.udpif.handle([up(p) for p in range(100, 130)])
    assert len(dp.flows) == 30
    clock.t += 11
    rv.revalidate()
    assert not dp.flows and rv.udpif.stats.deleted.get("idle", 0) == 30
    assert dp.del_batches == 1    # 30 under one hold of the lock (MAX_BATCH 50): one batch of deletes


def test_table_change_keeps_unaffected_updates_and_deletes_stale() -> None:
    rv, dp, clock = setup("priority=10,udp,tp_dst=53,actions=output:2", "priority=10,udp,tp_dst=54,actions=output:2",
                          "priority=10,udp,tp_dst=55,actions=output:2")
    u = rv.udpif
    for p, port in ((53, 1), (54, 1), (55, 2)):
        u.handle([up(p, in_port=port)])
    before = set(dp.flows)
    assert len(before) == 3
    u.change_tables(lambda t: t.add(parse_flow("priority=10,udp,tp_dst=54,actions=output:3")))  # same match
    # a rule for port 2 only: port 1's packets leave its subtable at the in_port stage, port 2's need nw_src
    u.change_tables(lambda t: t.add(parse_flow("priority=20,in_port=2,udp,nw_src=10.0.0.0/8,actions=drop")))
    rv.revalidate()
    acts = sorted((str(a), k in before) for k, (_i, a) in dp.flows.items())
    # 53 untouched, 54 updated in place (same key and mask), 55 (port 2) needs nw_src now: deleted as stale
    assert acts == [("[DpOutput(port=2)]", True), ("[DpOutput(port=3)]", True)]
    assert rv.udpif.stats.deleted.get("stale", 0) == 1 and rv.stats.updated == 1
    assert u.stats.deleted.get("flush", 0) == 0  # no global flush


def test_rule_timeouts_expire_rules_and_their_megaflows() -> None:
    rv, dp, clock = setup("hard_timeout=5,udp,tp_dst=53,actions=output:2",
                          "idle_timeout=3,udp,tp_dst=54,actions=output:2", "priority=1,actions=drop")
    u = rv.udpif
    for r in u.tables.rules():
        r.created = r.last_used = clock.t
    clock.t += 4
    rv.revalidate()
    assert sorted(r.to_text() for r in u.tables.rules()) == sorted(
        ["table=0,priority=32768,hard_timeout=5,udp,tp_dst=53,actions=output:2", "table=0,priority=1,actions=drop"])
    clock.t += 2
    rv.revalidate()
    assert [r.priority for r in u.tables.rules()] == [1]
    assert rv.stats.rules_expired == {"idle_timeout": 1, "hard_timeout": 1}


def test_flow_limit_adapts_and_purges() -> None:
    rv, dp, clock = setup("udp,actions=output:2")
    rv._adapt_limit(2500, 5000)
    assert rv.udpif.flow_limit == 80000          # slow dump: divided by its seconds
    rv._adapt_limit(1500, 5000)
    assert rv.udpif.flow_limit == 60000          # cut by a quarter
    rv._adapt_limit(10, 5000)
    assert rv.udpif.flow_limit == 61000          # fast: raised by 1000
    rv.udpif.handle([up(53), up(54, in_port=2), up(55, in_port=3)])
    assert len(dp.flows) == 3
    rv.configure(flow_limit=1)
    rv.udpif.handle([up(56, in_port=1, reason=1)])  # covered by the in_port=1 megaflow: nothing new
    for u in rv.udpif.ukeys:
        u.created_ns = clock.ns()
    rv.revalidate()  # three megaflows, more than twice the limit of one: purge
    assert not dp.flows and rv.udpif.stats.deleted.get("purge", 0) == 3
    rv.configure(flow_limit=0)
    rv.udpif.handle([up(57)])
    assert not dp.flows and rv.udpif.stats.over_flow_limit == 1  # the handlers stop at the limit


def test_settings_out_of_range_change_nothing() -> None:
    import pytest

    rv, _dp, _clock = setup("udp,actions=output:2")
    for kw, msg in (({"flow_limit": -1}, "flow-limit"), ({"max_idle_ms": 5}, "max-idle"),
                    ({"max_revalidator_ms": 10**9}, "max-revalidator")):
        with pytest.raises(ValueError, match=msg):
            rv.configure(**kw)
    assert (rv.configured_limit, rv.max_idle_ms, rv.max_revalidator_ms) == (200000, 10000, 500)


def test_failed_stats_read_deletes_nothing() -> None:
    rv, dp, clock = setup("udp,actions=output:2")
    rv.udpif.handle([up(53)])
    for u in rv.udpif.ukeys:
        u.created_ns = clock.ns()
    clock.t += 3600  # everything looks idle

    def broken() -> dict[int, tuple[int, int, int]]:
        raise OSError("map read failed")

    dp.flow_stats_all = broken  # type: ignore[attr-defined]
    try:
        rv.revalidate()
    except OSError:
        pass
    assert len(dp.flows) == 1 and rv.udpif.stats.deleted.get("idle", 0) == 0
    del dp.flow_stats_all  # type: ignore[attr-defined]
    rv.revalidate()  # the next period reads fine and acts
    assert not dp.flows and rv.udpif.stats.deleted.get("idle", 0) == 1


def test_a_freshly_booted_machine_expires_nothing_early() -> None:
    """Every clock starts near zero, as on a machine booted seconds ago: a megaflow made now is not idle,
    one unused for longer than max-idle is."""
    clock = Clock()
    clock.t = 0.5
    u, dp, _sent = make("udp,actions=output:2", clock=dpif.Clock(clock, clock.ns))
    rv = Revalidator(u, 200000, max_idle_ms=10000, ports=lambda: {1, 2, 3})
    u.handle([up(53)])
    rv.revalidate()
    assert len(dp.flows) == 1 and not u.stats.deleted
    clock.t += 10.5
    rv.revalidate()
    assert not dp.flows and u.stats.deleted == {"idle": 1}


def test_time_namespace_offsets_are_read(tmp_path: Path) -> None:
    f = tmp_path / "timens_offsets"
    f.write_text("monotonic        -400         5\nboottime         -400         0\n")
    assert dpif.timens_offset_ns(str(f)) == -400 * 10**9 + 5
    assert dpif.timens_offset_ns(str(tmp_path / "absent")) == 0
