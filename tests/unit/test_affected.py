"""Which megaflows a change marks stale (ctl/udpif/affected.py): sound on random rule sets and changes (every
megaflow left unmarked still gives each of its packets what the new tables give it), and narrow where it
can be (a rule that no megaflow's packets can meet marks none; a MAC move marks only that MAC's megaflows)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctl.datapath import dpif
from ctl.pipeline.mac_learning import MacLearning
from ctl.pipeline.ofmatch import FIELD_BITS, PACKET_FIELDS, flow_from_text, key_of
from ctl.pipeline.openflow_tables import OpenFlowTables, parse_flow
from ctl.pipeline.xlate import translate
from ctl.udpif.affected import MAX_ADDED, affected
from ctl.udpif.revalidator import Revalidator
from ctl.udpif.upcall import Ukey, Ukeys
from tests.unit.test_megaflow import _valid, actions, matches, packets, rulesets
from tests.unit.test_upcall import make, up

PORTS = {1, 2, 3}


def _ukeys(tables: OpenFlowTables, pkts: list[dict[str, int]], mac: MacLearning | None = None) -> Ukeys:
    """A ukey per packet as the handlers make them (one per megaflow); each keeps its mask as a flow in WC."""
    ukeys = Ukeys()
    for p in pkts:
        key = key_of(p)
        if ukeys.find(key) is not None:
            continue
        tr = translate(tables, p, PORTS, trace=False, mac=mac)
        mask = key_of(tr.wc)
        k = Ukey(key.masked(mask), mask, tr.actions, tr.credits, flow=p, lookups=tr.lookups, normal=tr.normal)
        WC[id(k)] = tr.wc
        ukeys.add(k)
    return ukeys


WC: dict[int, dict[str, int]] = {}


def _still_true(tables: OpenFlowTables, k: Ukey, data: st.DataObject) -> None:
    """Every packet of the megaflow gets its actions from the changed tables: the packet that made it, and
    packets drawn inside its mask. (Translating it again may consult more bits, e.g. to rule out a new rule
    none of its packets can match: that makes a new megaflow narrower, not this one wrong.)"""
    wc = WC[id(k)]
    tr = translate(tables, k.flow, PORTS, trace=False)
    assert tr.actions == k.actions, (k.flow, tr.actions, k.actions)
    for _ in range(3):
        other = dict(k.flow)
        for f in PACKET_FIELDS:
            free = ((1 << FIELD_BITS[f]) - 1) & ~wc[f]
            if free:
                other[f] = (k.flow[f] & wc[f]) | (data.draw(st.integers(0, (1 << FIELD_BITS[f]) - 1)) & free)
        if _valid(other):
            assert translate(tables, other, PORTS, trace=False).actions == k.actions, (k.flow, other)


@st.composite
def changes(draw: st.DrawFn, n_rules: int) -> tuple[str, str, int, str]:
    """(kind, flow text to add, a table or a rule's index, a miss or an action)."""
    kind = draw(st.sampled_from(["add", "add", "delete", "modify", "miss"] if n_rules else ["add", "miss"]))
    if kind == "add":
        table = draw(st.integers(0, 2))
        m = draw(matches())
        head = m.split(",")[0]
        k = head if head in ("ip", "tcp", "udp", "arp", "icmp") else ""
        prio = draw(st.sampled_from([0, 10, 50, 100, 200, 32768]))
        return kind, f"table={table},priority={prio}{',' + m if m else ''},actions={draw(actions(table, k))}", 0, ""
    if kind == "miss":
        return kind, "", draw(st.integers(0, 1)), draw(st.sampled_from(["drop", "continue", "controller"]))
    return kind, "", draw(st.integers(0, n_rules - 1)), draw(st.sampled_from(["output:1", "output:3", "drop"]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rulesets(), pkts=st.lists(packets(), min_size=1, max_size=6), data=st.data())
def test_unmarked_megaflows_stay_true(rules: list[str], pkts: list[dict[str, int]], data: st.DataObject) -> None:
    tables = OpenFlowTables()
    tables.add_many(parse_flow(r) for r in rules)
    ukeys = _ukeys(tables, pkts)
    tables.take_journal()
    kind, text, i, acts = data.draw(changes(len(tables)))
    if kind == "add":
        tables.add(parse_flow(text))
    elif kind == "miss":
        tables.set_miss(i, acts)
    else:
        r = tables.rules()[i]
        spec = parse_flow(f"table={r.table},priority={r.priority},{r.match.format() or ''},actions={acts}")
        if kind == "delete":
            tables.delete(spec, strict=True)
        else:
            tables.modify(spec, strict=True)
    marked = set(affected(ukeys, tables.take_journal()))
    for k in ukeys:
        if k not in marked:
            _still_true(tables, k, data)


def _acl(n: int) -> OpenFlowTables:
    t = OpenFlowTables()
    t.add_many(parse_flow(f"priority=100,udp,tp_dst={1000 + i},actions=output:2") for i in range(n))
    t.add(parse_flow("priority=0,actions=drop"))
    t.take_journal()
    return t


def _udp(port: int, in_port: int = 1) -> dict[str, int]:
    return flow_from_text(f"in_port={in_port},udp,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_src=5000,tp_dst={port}")


def test_a_rule_no_megaflow_can_meet_marks_none() -> None:
    t = _acl(50)
    ukeys = _ukeys(t, [_udp(1000 + i) for i in range(50)])
    t.add(parse_flow("priority=200,udp,tp_dst=9999,actions=output:3"))      # no megaflow's packets go there
    t.add(parse_flow("priority=50,udp,tp_dst=1007,actions=output:3"))       # below the rule 1007's flow found
    t.add(parse_flow("table=1,priority=300,actions=output:3"))              # a table no translation reached
    assert affected(ukeys, t.take_journal()) == []


def test_a_rule_marks_exactly_the_megaflows_it_can_take() -> None:
    t = _acl(50)
    ukeys = _ukeys(t, [_udp(1000 + i) for i in range(50)] + [_udp(7, in_port=2)])  # port 7: the drop rule
    t.add(parse_flow("priority=200,udp,tp_dst=1003,actions=output:3"))
    assert [k.flow["tp_dst"] for k in affected(ukeys, t.take_journal())] == [1003]
    t.add(parse_flow("priority=10,in_port=2,actions=output:3"))             # above the drop rule only
    assert [k.flow["tp_dst"] for k in affected(ukeys, t.take_journal())] == [7]


def test_a_deleted_or_changed_rule_marks_its_megaflows() -> None:
    t = _acl(20)
    ukeys = _ukeys(t, [_udp(1000 + i) for i in range(20)])
    t.delete(parse_flow("udp,tp_dst=1004", actions=False))
    t.modify(parse_flow("udp,tp_dst=1005,actions=output:3"), strict=False)
    assert sorted(k.flow["tp_dst"] for k in affected(ukeys, t.take_journal())) == [1004, 1005]


def test_a_lookup_after_a_write_is_checked_on_the_fields_nothing_wrote() -> None:
    t = OpenFlowTables()
    t.add(parse_flow("priority=10,udp,actions=load:0x1->NXM_NX_REG0[],goto_table:1"))
    t.add(parse_flow("table=1,priority=10,reg0=1,actions=output:2"))
    t.take_journal()
    ukeys = _ukeys(t, [_udp(53)])
    (k,) = ukeys
    assert k.lookups == ((0, 10, frozenset()), (1, 10, frozenset({"reg0"})))
    t.add(parse_flow("table=1,priority=20,udp,tp_dst=9,actions=drop"))   # tp_dst is not in the megaflow: it may
    assert affected(ukeys, t.take_journal()) == [k]
    t.add(parse_flow("table=1,priority=20,reg0=7,actions=drop"))  # reg0 was written: what it held is not known
    assert affected(ukeys, t.take_journal()) == [k]
    t.add(parse_flow("table=1,priority=20,tcp,actions=drop"))     # nothing wrote nw_proto: still the packet's UDP
    t.add(parse_flow("table=1,priority=20,reg1=7,actions=drop"))  # nothing wrote reg1: still zero
    t.add(parse_flow("table=0,priority=20,reg0=1,actions=drop"))  # registers are zero in table 0's lookup
    assert affected(ukeys, t.take_journal()) == []


def test_megaflows_of_unknown_lookups_are_always_marked() -> None:
    t = _acl(2)
    ukeys = _ukeys(t, [_udp(1000)])
    (k,) = ukeys
    ukeys.remove(k)
    k.lookups = None   # adopted from an earlier daemon, not translated yet
    ukeys.add(k)
    t.add(parse_flow("priority=200,udp,tp_dst=9999,actions=output:3"))
    assert affected(ukeys, t.take_journal()) == [k]


def test_a_mac_change_marks_only_that_macs_normal_megaflows() -> None:
    t = OpenFlowTables()
    t.add(parse_flow("actions=NORMAL"))
    t.take_journal()
    mac = MacLearning()
    hosts = [f"02:00:00:00:00:0{i}" for i in range(1, 5)]
    for i, h in enumerate(hosts):
        mac.learn(0, int(h.replace(":", ""), 16), i + 1)
    mac.take_changes()
    pkts = [flow_from_text(f"in_port={i + 1},dl_src={s},dl_dst={d}")
            for i, s in enumerate(hosts) for d in hosts if d != s]
    ukeys = _ukeys(t, pkts, mac)
    assert len(ukeys) == 12 and all(k.normal for k in ukeys)
    mac.learn(0, 0x020000000003, 1)  # host 3 moved to port 1
    marked = affected(ukeys, [], mac.take_changes())
    three = 0x020000000003
    assert sorted(map(id, marked)) == sorted(id(k) for k in ukeys if three in (k.flow["dl_src"], k.flow["dl_dst"]))
    assert len(marked) == 6


def test_a_flow_mod_translates_only_what_it_affects() -> None:
    """Through the Udpif and the revalidator: a rule that meets no megaflow translates none again; one that
    meets one updates it in place."""
    u, dp, _sent = make(*(f"priority=100,udp,tp_dst={p},actions=output:2" for p in (53, 54, 55)))
    rv = Revalidator(u, 200000, ports=lambda: {1, 2, 3})
    for p in (53, 54, 55):
        u.handle([up(p)])
    rv.revalidate()
    swept = rv.swept
    u.change_tables(lambda t: t.add(parse_flow("priority=200,udp,tp_dst=9,actions=output:3")))
    assert not u.pending
    rv.revalidate()
    assert rv.swept == swept
    u.change_tables(lambda t: t.add(parse_flow("priority=200,udp,tp_dst=54,actions=output:3")))
    assert [k.flow["tp_dst"] for k in u.pending] == [54]
    rv.sweep()
    assert rv.swept == swept + 1 and not u.pending
    assert sorted(str(a) for _i, a in dp.flows.values()) == ["[DpOutput(port=2)]"] * 2 + ["[DpOutput(port=3)]"]
    assert dpif.DpOutput(3) in next(k for k in u.ukeys if k.flow["tp_dst"] == 54).actions


def test_thousands_of_added_rules_mark_everything_instead_of_scanning_for_each() -> None:
    t = _acl(5)
    ukeys = _ukeys(t, [_udp(1000 + i) for i in range(5)])
    t.add_many(parse_flow(f"priority=200,udp,tp_dst={20000 + i},actions=output:3") for i in range(MAX_ADDED + 1))
    assert len(affected(ukeys, t.take_journal())) == 5
    t.add_many(parse_flow(f"priority=200,udp,tp_dst={30000 + i},actions=output:3") for i in range(MAX_ADDED))
    assert affected(ukeys, t.take_journal()) == []
