"""The megaflow the pipeline computes: sound (every packet it covers gets the same actions) and at least
as wide as Open vSwitch's (tests/fixtures/megaflow/*.ovs.json, recorded from ovs-vswitchd 3.1's
ofproto/trace by scripts/record_ovs_megaflows.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctl.datapath.flowkey import VLAN_CFI, VLAN_LIMIT
from ctl.pipeline.ofmatch import FIELD_BITS, FIELDS, PACKET_FIELDS, flow_from_text, parse_match
from ctl.pipeline.openflow_tables import OpenFlowTables, parse_flow, parse_flows_file
from ctl.pipeline.xlate import translate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "megaflow"
RULESETS = sorted(p.stem for p in FIXTURES.glob("*.flows"))


def _valid(flow: dict[str, int]) -> bool:
    """A packet the parser can produce: an untagged one has an all-zero vlan_tci; a later fragment has no
    transport fields; nw_frag is no, first or later."""
    if flow["nw_frag"] not in (0, 1, 3):
        return False
    if flow["nw_frag"] == 3 and (flow["tp_src"] or flow["tp_dst"] or flow["tcp_flags"]):
        return False
    if flow["vlan_tci1"]:  # an inner tag only under an outer one, and only with vlan-limit 2
        return VLAN_LIMIT == 2 and bool(flow["vlan_tci"] & VLAN_CFI) and bool(flow["vlan_tci1"] & VLAN_CFI)
    return bool(flow["vlan_tci"] & VLAN_CFI) or flow["vlan_tci"] == 0


def _tables(name: str) -> OpenFlowTables:
    t = OpenFlowTables()
    t.add_many(parse_flows_file((FIXTURES / f"{name}.flows").read_text()))
    return t


def _ovs_cases(name: str) -> list[dict[str, str]]:
    return json.loads((FIXTURES / f"{name}.ovs.json").read_text())["cases"]


def test_every_ruleset_has_ovs_fixtures() -> None:
    assert len(RULESETS) >= 5
    for name in RULESETS:
        packets = [x for x in (FIXTURES / f"{name}.packets").read_text().splitlines() if x.strip()]
        assert [c["packet"] for c in _ovs_cases(name)] == packets, f"re-run scripts/record_ovs_megaflows.py for {name}"


@pytest.mark.parametrize("name", RULESETS)
def test_megaflow_at_least_as_wide_as_ovs(name: str) -> None:
    tables = _tables(name)
    narrower = []
    for case in _ovs_cases(name):
        flow = flow_from_text(case["packet"])
        ours = translate(tables, flow).wc
        ovs = {f: 0 for f in FIELDS}
        for f, (_v, m) in parse_match(case["megaflow"], allow_dp_fields=True).fields.items():
            ovs[f] = m
        if not flow["vlan_tci"] & VLAN_CFI and "vlan" not in case["megaflow"]:
            # OVS's Megaflow line leaves out the no-802.1Q-header match of an untagged packet (its datapath
            # key has no vlan() then, so a tagged packet never matches): count the tag bits as matched
            ovs["vlan_tci"] = 0xFFFF
        extra = {f: hex(ours[f] & ~ovs[f]) for f in FIELDS if ours[f] & ~ovs[f]}
        if extra:
            narrower.append(f"{case['packet']}: we match bits OVS leaves out: {extra} (OVS: {case['megaflow']})")
    assert not narrower, "\n".join(narrower)


@pytest.mark.parametrize("name", RULESETS)
def test_megaflow_sound_on_fixture_rulesets(name: str) -> None:
    tables = _tables(name)
    for case in _ovs_cases(name):
        flow = flow_from_text(case["packet"])
        tr = translate(tables, flow)
        # flip each wildcarded bit in turn: the actions must not change
        for f in PACKET_FIELDS:
            for bit in range(FIELD_BITS[f]):
                if tr.wc[f] >> bit & 1:
                    continue
                other = dict(flow)
                other[f] ^= 1 << bit
                if not _valid(other):
                    continue
                assert translate(tables, other).actions == tr.actions, (case["packet"], f, bit)


def test_megaflow_matches_ovs_exactly_on_simple_prefix_case() -> None:
    t = OpenFlowTables()
    t.add(parse_flow("priority=100,ip,nw_dst=10.0.0.0/24,actions=output:2"))
    t.add(parse_flow("priority=50,tcp,tp_dst=80,actions=output:3"))
    tr = translate(t, flow_from_text("in_port=1,tcp,nw_dst=192.168.1.1,tp_dst=443,tp_src=5555"))
    # ovs-vswitchd 3.1: recirc_id=0,eth,tcp,in_port=1,nw_dst=128.0.0.0/1,nw_frag=no,tp_dst=0x100/0xff00
    assert tr.megaflow().format() == "tcp,in_port=1,nw_dst=128.0.0.0/1,nw_frag=no,tp_dst=0x100/0xff00"


def test_a_miss_in_the_ports_stage_on_another_field_keeps_that_field() -> None:
    # the last stage holds tcp_flags (and nd_target, the ARP addresses) beside the ports: a packet whose ports
    # equal a rule's and whose TCP flags do not must keep the flag bit in its megaflow, or a RST inside it would
    # take this packet's drop (found by test_megaflow_soundness; OVS folds every bit up to the ports there)
    t = OpenFlowTables()
    t.add(parse_flow("priority=10,tcp,tp_src=22,tcp_flags=+rst,actions=output:3"))
    syn = flow_from_text("in_port=1,tcp,tp_src=22,tp_dst=80,tcp_flags=+syn")
    tr = translate(t, syn)
    assert tr.wc["tcp_flags"] & 0x004 and tr.wc["tp_src"] == 0xFFFF
    assert translate(t, {**syn, "tcp_flags": 0x006}).actions != tr.actions  # a RST: the rule's output
    other_port = flow_from_text("in_port=1,tcp,tp_src=23,tp_dst=80,tcp_flags=+syn")
    assert translate(t, other_port).wc["tcp_flags"] & 0x004  # ports apart: the flags were still read


# --- random rule sets and packets -------------------------------------------------------------------------

# small value spaces so that rules and packets meet often
MACS = [0x020000000001, 0x020000000002, 0x010000000000, 0xFFFFFFFFFFFF]
IPS = [0x0A000001, 0x0A000002, 0x0A000101, 0xC0A80001, 0x0A0000FF]
PORTS = [22, 80, 443, 1024, 4096, 53]


@st.composite
def matches(draw: st.DrawFn) -> str:
    parts = []
    kind = draw(st.sampled_from(["", "ip", "tcp", "udp", "arp", "icmp"]))
    if kind:
        parts.append(kind)
    if draw(st.booleans()):
        parts.append(f"in_port={draw(st.integers(1, 3))}")
    if draw(st.integers(0, 3)) == 0:
        mac = draw(st.sampled_from(MACS))
        mask = draw(st.sampled_from(["", "/ff:ff:ff:ff:ff:00", "/01:00:00:00:00:00"]))
        parts.append(f"dl_dst={':'.join(f'{b:02x}' for b in mac.to_bytes(6, 'big'))}{mask}")
    if draw(st.integers(0, 4)) == 0:
        parts.append(draw(st.sampled_from(["dl_vlan=10", "dl_vlan=20", "vlan_tci=0", "vlan_tci=0x1000/0x1000"])))
    if kind in ("ip", "tcp", "udp", "icmp", "arp"):
        for fld in ("nw_src", "nw_dst"):
            if draw(st.booleans()):
                ip = draw(st.sampled_from(IPS))
                plen = draw(st.sampled_from([8, 16, 24, 30, 32]))
                parts.append(f"{fld}={ip >> 24}.{ip >> 16 & 255}.{ip >> 8 & 255}.{ip & 255}/{plen}")
    if kind in ("tcp", "udp"):
        for fld in ("tp_src", "tp_dst"):
            if draw(st.booleans()):
                p = draw(st.sampled_from(PORTS))
                mask = draw(st.sampled_from(["", "/0xff00", "/0xfff0"]))
                parts.append(f"{fld}={p if not mask else hex(p)}{mask}")
    if kind == "tcp" and draw(st.integers(0, 3)) == 0:
        parts.append(draw(st.sampled_from(["tcp_flags=+syn", "tcp_flags=+syn-ack", "tcp_flags=+rst"])))
    if kind == "icmp" and draw(st.booleans()):
        parts.append(f"icmp_type={draw(st.sampled_from([0, 3, 8]))}")
    if kind in ("ip", "tcp", "udp") and draw(st.integers(0, 3)) == 0:
        parts.append(f"nw_tos={draw(st.sampled_from([0, 32, 64]))}")
    if draw(st.integers(0, 2)) == 0:  # pipeline fields, written by earlier tables' actions
        parts.append(draw(st.sampled_from(["reg0=0x5", "reg0=0x1/0x1", "reg0=0", "metadata=0x2", "reg1=0x2",
                                           "reg2=0xa000001/0xffffff00", "metadata=0/0xf"])))
    return ",".join(parts)


# actions and the match kinds they fit (a write's prerequisites must be in the match, as OVS checks)
IP4 = ("ip", "tcp", "udp", "icmp")
ACTIONS = {
    "mod_dl_src:02:00:00:00:00:aa": None, "mod_vlan_vid:30": None, "strip_vlan": None, "push_vlan:0x8100": None,
    "load:0x5->NXM_NX_REG0[]": None, "load:0x1->NXM_NX_REG0[0]": None, "set_field:0x2->metadata": None,
    "move:NXM_OF_IN_PORT[]->NXM_NX_REG1[0..15]": None, "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]": None,
    "dec_ttl": None, "mod_nw_dst:10.0.0.2": IP4, "mod_nw_tos:32": IP4, "set_field:10.0.0.1->ip_src": IP4,
    "move:NXM_OF_IP_SRC[]->NXM_NX_REG2[]": IP4, "load:0x2->NXM_OF_IP_DST[0..7]": IP4,
    "mod_tp_dst:8080": ("tcp", "udp"), "move:NXM_NX_REG0[0..15]->NXM_OF_TCP_DST[]": ("tcp",),
}


@st.composite
def actions(draw: st.DrawFn, table: int, kind: str) -> str:
    acts = []
    fits = sorted(a for a, kinds in ACTIONS.items() if kinds is None or kind in kinds)
    for _ in range(draw(st.integers(0, 2))):
        acts.append(draw(st.sampled_from(fits)))
    if table < 2 and draw(st.integers(0, 2)) == 0:
        acts.append(f"resubmit(,{draw(st.integers(table + 1, 2))})")
    acts.append(draw(st.sampled_from(["output:1", "output:2", "output:3", "flood", "in_port", "drop", "controller"])))
    if table < 2 and draw(st.integers(0, 3)) == 0:
        if draw(st.booleans()):
            acts.append(draw(st.sampled_from(["write_metadata:0x2", "write_metadata:0x1/0x3"])))
        acts.append(f"goto_table:{table + 1}")
    return ",".join(a for a in acts if a != "drop") or "drop"


@st.composite
def rulesets(draw: st.DrawFn) -> list[str]:
    out = []
    for _ in range(draw(st.integers(1, 14))):
        table = draw(st.integers(0, 2))
        m = draw(matches())
        prio = draw(st.sampled_from([0, 10, 50, 100, 200, 32768]))
        kind = m.split(",")[0] if m.split(",")[0] in ("ip", "tcp", "udp", "arp", "icmp") else ""
        out.append(f"table={table},priority={prio}{',' + m if m else ''},actions={draw(actions(table, kind))}")
    return out


@st.composite
def packets(draw: st.DrawFn) -> dict[str, int]:
    flow = {f: 0 for f in FIELDS}
    flow["in_port"] = draw(st.integers(1, 3))
    flow["dl_dst"] = draw(st.sampled_from(MACS))
    flow["dl_src"] = draw(st.sampled_from(MACS))
    flow["vlan_tci"] = draw(st.sampled_from([0, VLAN_CFI | 10, VLAN_CFI | 20, VLAN_CFI | 0x2000 | 10]))
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "ip", "arp", "ipv6", "l2"]))
    flow["dl_type"] = {"arp": 0x0806, "ipv6": 0x86DD, "l2": 0x05FF}.get(kind, 0x0800)
    if kind in ("tcp", "udp", "icmp", "ip", "arp"):
        flow["nw_src"] = draw(st.sampled_from(IPS))
        flow["nw_dst"] = draw(st.sampled_from(IPS + [draw(st.integers(0, 2**32 - 1))]))
    if kind == "arp":
        flow["nw_proto"] = draw(st.sampled_from([1, 2]))
    elif kind != "l2":
        flow["nw_proto"] = {"tcp": 6, "udp": 17, "icmp": 1, "ip": 47, "ipv6": 6}[kind]
        flow["nw_ttl"] = draw(st.sampled_from([1, 2, 64]))
        flow["nw_tos"] = draw(st.sampled_from([0, 32, 64, 33]))
    if kind in ("tcp", "udp", "ipv6"):
        flow["tp_src"] = draw(st.sampled_from(PORTS + [draw(st.integers(0, 65535))]))
        flow["tp_dst"] = draw(st.sampled_from(PORTS + [draw(st.integers(0, 65535))]))
    if kind == "tcp":
        flow["tcp_flags"] = draw(st.sampled_from([0x002, 0x012, 0x010, 0x004]))
    if kind == "icmp":
        flow["tp_src"] = draw(st.sampled_from([0, 3, 8]))
    if kind in ("tcp", "udp", "icmp", "ip", "ipv6"):
        flow["nw_frag"] = draw(st.sampled_from([0, 0, 0, 1, 3]))  # no, first, later
        if flow["nw_frag"] == 3:
            flow["tp_src"] = flow["tp_dst"] = flow["tcp_flags"] = 0
    return flow


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rulesets(), pkt=packets(), data=st.data())
def test_megaflow_soundness(rules: list[str], pkt: dict[str, int], data: st.DataObject) -> None:
    """Any packet inside the megaflow gets the same datapath actions from a full lookup."""
    tables = OpenFlowTables()
    tables.add_many(parse_flow(r) for r in rules)
    tr = translate(tables, pkt, ports={1, 2, 3})
    for _ in range(8):
        other = dict(pkt)
        for f in PACKET_FIELDS:  # the pipeline fields are zero in every packet
            free = ((1 << FIELD_BITS[f]) - 1) & ~tr.wc[f]
            if free:
                other[f] = (pkt[f] & tr.wc[f]) | (data.draw(st.integers(0, (1 << FIELD_BITS[f]) - 1)) & free)
        if _valid(other):
            assert translate(tables, other, ports={1, 2, 3}).actions == tr.actions, (rules, pkt, other)


@settings(max_examples=150, deadline=None)
@given(rules=rulesets(), pkt=packets())
def test_lookup_agrees_with_brute_force(rules: list[str], pkt: dict[str, int]) -> None:
    """The staged, trie-pruned classifier finds the rule a plain scan by priority finds."""
    tables = OpenFlowTables()
    tables.add_many(parse_flow(r) for r in rules)
    for t in tables.tables[:3]:
        wc = {f: 0 for f in FIELDS}
        got = t.lookup(pkt, wc)
        cands = [r for r in t.rules() if r.match.matches(pkt)]
        best = max((r.priority for r in cands), default=None)
        assert (got.priority if got else None) == best
