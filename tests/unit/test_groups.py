"""Groups: ovs-ofctl text, group-mod validation (the OpenFlow errors OVS gives), translation of each type, the
select hash, the user-space executor, and groups over OpenFlow (GROUP_MOD, GROUP_DESC, GROUP, GROUP_FEATURES)."""

from __future__ import annotations

import socket
import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ctl.datapath import dpif
from ctl.datapath.execute import execute
from ctl.datapath.flowkey import parse, select_hash
from ctl.openflow import codec as oc
from ctl.openflow.codec import ET, MP, OfError, T
from ctl.pipeline import groups as gr
from ctl.pipeline import ofactions as of
from ctl.pipeline.ofmatch import FlowSyntaxError, flow_of, parse_match
from ctl.pipeline.openflow_tables import OpenFlowTables, UnknownGroup, parse_flow
from ctl.pipeline.xlate import translate
from tests.unit.ofhelpers import flow_mod, msg, multipart
from tests.unit.test_ofproto import Rig

SELECT = ("group_id=1,type=select,bucket=actions=output:2,"
          "bucket=weight:3,actions=mod_dl_dst:02:00:00:00:00:09,output:3")


def frame(src: str = "10.0.0.1", sport: int = 1000, dst: str = "10.0.0.2", dport: int = 80) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst=dst)
                 / TCP(sport=sport, dport=dport))


def tables(*lines: str) -> OpenFlowTables:
    t = OpenFlowTables()
    for line in lines:
        if line.startswith("group_id"):
            t.add_group(gr.parse_group(line))
        else:
            t.add(parse_flow(line))
    return t


# --- text -------------------------------------------------------------------------------------------------


def test_group_text_round_trips_as_ovs_ofctl_prints_it() -> None:
    for text in (SELECT, "group_id=2,type=all,bucket=actions=output:1,bucket=actions=output:2",
                 "group_id=3,type=ff,bucket=watch_port:1,actions=output:1,bucket=watch_port:2,actions=output:2",
                 "group_id=4,type=indirect,bucket=actions=set_field:10.0.0.1->ip_dst,output:1"):
        spec = gr.parse_group(text)
        g = gr.Group(spec.group_id, spec.type, spec.buckets)
        assert g.to_text() == text
    # the short forms ovs-ofctl takes
    g = gr.parse_group("group_id=5,type=select,bucket=output:1,bucket=weight=2,actions=output:2")
    assert [(b.weight, b.actions) for b in g.buckets] == [(1, [of.Output(1)]), (2, [of.Output(2)])]


@pytest.mark.parametrize("text, where", [
    ("type=all,bucket=output:1", "group_id"),
    ("group_id=1,bucket=output:1", "type"),
    ("group_id=1,type=fancy,bucket=output:1", "fancy"),
    ("group_id=1,type=all,bucket=output:99999", "99999"),
    ("group_id=1,type=all,bucket=weight:x,actions=output:1", "x"),
    ("group_id=1,type=all,bucket=", "bucket needs actions"),
    ("group_id=4294967295,type=all", "out of range"),
])
def test_bad_group_text_points_at_the_problem(text: str, where: str) -> None:
    with pytest.raises(FlowSyntaxError) as ei:
        gr.parse_group(text)
    assert where in str(ei.value)


# --- the table --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, code", [
    ("group_id=1,type=indirect,bucket=output:1,bucket=output:2", gr.INVALID_GROUP),
    ("group_id=1,type=all,bucket=weight:3,actions=output:1", gr.BAD_BUCKET),
    ("group_id=1,type=ff,bucket=output:1", gr.BAD_WATCH),
    ("group_id=1,type=all,bucket=watch_port:1,actions=output:1", gr.BAD_WATCH),
    ("group_id=1,type=all,bucket=group:9", gr.UNKNOWN_GROUP),
    ("group_id=1,type=all,bucket=goto_table:1", gr.BAD_BUCKET),
])
def test_bad_group_mods_are_refused_with_ovs_errors_and_change_nothing(text: str, code: int) -> None:
    t = tables("group_id=2,type=all,bucket=output:1")
    version = t.version
    with pytest.raises(gr.GroupModError) as ei:
        t.add_group(gr.parse_group(text))
    assert ei.value.code == code
    assert t.version == version and [g.group_id for g in t.groups] == [2]


def test_exists_unknown_loops_and_chains() -> None:
    t = tables("group_id=1,type=all,bucket=output:1", "group_id=2,type=all,bucket=group:1")
    with pytest.raises(gr.GroupModError) as ei:
        t.add_group(gr.parse_group("group_id=1,type=all,bucket=output:2"))
    assert ei.value.code == gr.GROUP_EXISTS
    with pytest.raises(gr.GroupModError) as ei:
        t.modify_group(gr.parse_group("group_id=9,type=all,bucket=output:2"))
    assert ei.value.code == gr.UNKNOWN_GROUP
    with pytest.raises(gr.GroupModError) as ei:
        t.modify_group(gr.parse_group("group_id=1,type=all,bucket=group:2"))
    assert ei.value.code == gr.LOOP
    with pytest.raises(gr.GroupModError) as ei:
        t.delete_groups(1)                      # group 2 goes to it
    assert ei.value.code == gr.CHAINED_GROUP
    assert t.delete_groups(77) == ([], [])      # no such group: nothing, no error (OpenFlow 1.3)


def test_flows_need_their_group_and_go_with_it() -> None:
    t = tables("group_id=1,type=all,bucket=output:1")
    with pytest.raises(UnknownGroup):
        t.add(parse_flow("in_port=2,actions=group:2"))
    t.add(parse_flow("in_port=2,actions=group:1"))
    t.add(parse_flow("in_port=3,actions=output:1"))
    assert t.group_refs(1) == 1
    gone, rules = t.delete_groups(gr.OFPG_ALL)
    assert [g.group_id for g in gone] == [1] and [r.to_text() for r in rules] == [
        "table=0,priority=32768,in_port=2,actions=group:1"]
    assert len(t) == 1


def test_state_file_keeps_groups_and_restores_chains_in_order() -> None:
    t = tables("group_id=5,type=all,bucket=output:1", "group_id=1,type=all,bucket=group:5,bucket=output:3",
               SELECT.replace("group_id=1", "group_id=7"), "in_port=1,actions=group:1")
    data = t.to_json()
    again = OpenFlowTables()
    again.load_json(data)
    assert [g.to_text() for g in again.groups] == [g.to_text() for g in t.groups]
    assert again.to_json() == data
    with pytest.raises(ValueError, match="no group"):
        OpenFlowTables().load_json({**data, "groups": []})  # flows that go to groups it does not have


def test_select_groups_get_fast_path_counter_slots_reused_last() -> None:
    t = tables(SELECT, "group_id=2,type=select," + ",".join(["bucket=output:1"] * 6))
    a, big = t.groups.get(1), t.groups.get(2)
    assert a is not None and big is not None and a.stats_base >= 0 and big.stats_base == -1  # 6 > 5 buckets
    base = a.stats_base
    t.groups.fresh_slots.clear()
    t.delete_groups(1)
    t.add_group(gr.parse_group(SELECT))
    again = t.groups.get(1)
    assert again is not None and again.stats_base != base and t.groups.fresh_slots == [again.stats_base]


# --- translation --------------------------------------------------------------------------------------------


def test_select_is_picked_by_the_datapath_and_the_megaflow_does_not_match_the_hash_fields() -> None:
    t = tables(SELECT, "in_port=1,actions=group:1")
    tr = translate(t, flow_of(parse(frame(), 1)), ports={1, 2, 3})
    assert tr.megaflow().format() == "ip,in_port=1,nw_frag=no"
    [sel] = tr.actions
    assert isinstance(sel, dpif.DpSelect) and not tr.slow_path
    assert [(n, w) for n, w, _ in sel.buckets] == [(0, 1), (1, 3)]
    assert [g.group_id for g in tr.credits if isinstance(g, gr.Group)] == [1]


def test_all_group_runs_each_bucket_on_the_packet_as_it_was() -> None:
    t = tables("group_id=2,type=all,bucket=mod_nw_dst:10.9.9.9,output:2,bucket=output:3",
               "in_port=1,actions=group:2")
    tr = translate(t, flow_of(parse(frame(), 1)), ports={1, 2, 3})
    assert dpif.format_actions(tr.actions) == "set(ipv4(dst=10.9.9.9)),2,set(ipv4(dst=10.0.0.2)),3"
    assert "nw_dst=10.0.0.2" in tr.megaflow().format()   # the put-back value is the packet's own
    res = execute(frame(), tr.actions)
    assert [(p, IP(f[14:]).dst) for p, f in res.emits] == [(2, "10.9.9.9"), (3, "10.0.0.2")]
    plain = tables("group_id=2,type=all,bucket=output:2,bucket=output:3", "in_port=1,actions=group:2")
    tr = translate(plain, flow_of(parse(frame(), 1)), ports={1, 2, 3})
    assert tr.actions == [dpif.DpOutput(2), dpif.DpOutput(3)] and not tr.slow_path  # an XDP output set
    assert len([b for b in tr.credits if isinstance(b, gr.Bucket)]) == 2


def test_fast_failover_takes_the_first_live_bucket() -> None:
    t = tables("group_id=3,type=ff,bucket=watch_port:2,actions=output:2,bucket=watch_port:3,actions=output:3",
               "in_port=1,actions=group:3")
    fl = flow_of(parse(frame(), 1))
    assert translate(t, fl, ports={1, 2, 3}).actions == [dpif.DpOutput(2)]
    assert translate(t, fl, ports={1, 3}).actions == [dpif.DpOutput(3)]         # port 2 is gone
    assert translate(t, fl, ports={1}).actions == [dpif.DpDrop(0)]              # no live bucket


def test_indirect_chains_and_deleted_groups() -> None:
    t = tables("group_id=5,type=indirect,bucket=mod_dl_src:02:00:00:00:00:05,output:3",
               "group_id=6,type=all,bucket=group:5", "in_port=1,actions=group:6,output:2")
    tr = translate(t, flow_of(parse(frame(), 1)), ports={1, 2, 3})
    assert dpif.format_actions(tr.actions) == "set(eth(src=02:00:00:00:00:05)),3,set(eth(src=02:00:00:00:00:01)),2"


# --- the hash and the executor ------------------------------------------------------------------------------


def test_select_hash_is_symmetric_and_ignores_tcp_flags() -> None:
    a = parse(frame("10.0.0.1", 1000, "10.0.0.2", 80), 1)
    b = parse(bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / IP(src="10.0.0.2", dst="10.0.0.1")
                    / TCP(sport=80, dport=1000)), 2)
    c = parse(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst="10.0.0.2")
                    / TCP(sport=1000, dport=80, flags="A")), 1)
    assert select_hash(a) == select_hash(b) == select_hash(c)
    assert len({select_hash(parse(frame(sport=p), 1)) for p in range(1000, 1100)}) == 100


def test_weights_split_connections_in_proportion() -> None:
    sel = dpif.DpSelect(1, 0, ((0, 1, (dpif.DpOutput(2),)), (1, 0, ()), (2, 3, (dpif.DpOutput(3),))))
    key = parse(frame(), 1)
    picks = []
    for p in range(1, 4001):          # 4000 connections: the key of each, without building 4000 frames
        key.tp_src = socket.htons(p)
        picks.append(sel.pick(select_hash(key))[0])
    assert picks.count(1) == 0
    assert 900 <= picks.count(0) <= 1100 and 2900 <= picks.count(2) <= 3100


def test_executor_runs_the_picked_bucket_on_a_copy_and_reports_it() -> None:
    t = tables(SELECT, "in_port=1,actions=group:1,output:4")
    fr = frame()
    tr = translate(t, flow_of(parse(fr, 1)), ports={1, 2, 3, 4})
    assert "after a select group" in tr.slow_path  # the fast path emits once
    res = execute(fr, tr.actions)
    n, _w, _acts = tr.actions[0].pick(select_hash(parse(fr, 1)))  # type: ignore[union-attr]
    port = (2, 3)[n]
    assert [p for p, _ in res.emits] == [port, 4]
    assert res.emits[1][1] == fr                    # the bucket's rewrite stayed in its copy
    assert res.buckets == [(1, n, len(fr))]


def test_fast_path_encoding_round_trips() -> None:
    t = tables(SELECT, "in_port=1,actions=mod_vlan_vid:5,group:1")
    tr = translate(t, flow_of(parse(frame(), 1)), ports={1, 2, 3})
    recs = dpif.encode_actions(tr.actions, max_actions=8, max_port=256, group_for=lambda p: 0)
    assert [struct.unpack_from("<H", r)[0] for r in recs] == [
        dpif.ActType.PUSH_VLAN, dpif.ActType.SELECT, dpif.ActType.OUTPUT, dpif.ActType.SET_ETH_DST,
        dpif.ActType.OUTPUT]
    back = dpif.decode_actions(recs, lambda g: frozenset())
    sel = back[-1]
    assert isinstance(sel, dpif.DpSelect) and [a for _, _, a in sel.buckets] == [b[2] for b in tr.actions[-1].buckets]  # type: ignore[union-attr]


# --- OpenFlow -----------------------------------------------------------------------------------------------


def group_mod(command: int, gtype: int, gid: int, buckets: list[tuple[int, int, int, list[of.OfAction]]]) -> bytes:
    body = struct.pack("!HBxI", command, gtype, gid)
    for weight, wport, wgroup, acts in buckets:
        raw = oc.encode_actions(acts)
        body += struct.pack("!HHII4x", 16 + len(raw), weight, wport, wgroup) + raw
    return msg(T.GROUP_MOD, body)


ANY = 0xFFFFFFFF


def test_group_mod_desc_stats_and_features_over_openflow() -> None:
    rig = Rig()
    rig.do(group_mod(0, 1, 1, [(1, ANY, ANY, [of.Output(2)]), (2, ANY, ANY, [of.Output(3)])]))
    rig.do(flow_mod(parse_match("in_port=1"), [of.GroupAction(1)], cookie=5))
    assert [g.to_text() for g in rig.sw.tables.groups] == [
        "group_id=1,type=select,bucket=actions=output:2,bucket=weight:2,actions=output:3"]
    [desc] = rig.do(multipart(MP.GROUP_DESC))
    assert struct.unpack_from("!HBxI", desc, 16) == (8 + 2 * 32, 1, 1)
    g = rig.sw.tables.groups.get(1)
    assert g is not None
    g.credit(3, 300, 0.0)
    g.buckets[1].credit(3, 300, 0.0)
    [st] = rig.do(multipart(MP.GROUP, struct.pack("!I4x", gr.OFPG_ALL)))
    length, gid, refs, packets, nbytes = struct.unpack_from("!H2xII4xQQ", st, 16)
    assert (length, gid, refs, packets, nbytes) == (40 + 32, 1, 1, 3, 300)
    assert struct.unpack_from("!QQQQ", st, 16 + 40) == (0, 0, 3, 300)
    [feat] = rig.do(multipart(MP.GROUP_FEATURES))
    assert struct.unpack_from("!II", feat, 16)[0] == 0xF
    # the flow's group action comes back in flow stats
    [fs] = rig.do(multipart(MP.FLOW, struct.pack("!B3xII4xQQ", 0xFF, ANY, ANY, 0, 0) + oc.encode_match(
        parse_match(""))))
    assert struct.pack("!HHI", 22, 8, 1) in fs
    # out_group filters
    rig.do(flow_mod(None, [], command=3, table=oc.OFPTT_ALL, out_group=2))
    assert len(rig.sw.tables) == 1
    rig.do(flow_mod(None, [], command=3, table=oc.OFPTT_ALL, out_group=1))
    assert len(rig.sw.tables) == 0


def test_deleting_a_group_removes_its_flows_with_flow_removed() -> None:
    rig = Rig()
    rig.do(group_mod(0, 0, 4, [(0, ANY, ANY, [of.Output(2)])]))
    rig.do(flow_mod(parse_match("in_port=1"), [of.GroupAction(4)], flags=1, cookie=9))
    rig.do(group_mod(2, 0, 4, []))
    assert len(rig.sw.tables) == 0 and len(rig.sw.tables.groups) == 0
    [(kind, reason, raw)] = rig.sent
    assert (kind, reason) == ("flow_removed", 3) and struct.unpack_from("!Q", raw, 8)[0] == 9


@pytest.mark.parametrize("raw, etype, code", [
    (group_mod(0, 7, 1, []), ET.GROUP_MOD_FAILED, 10),
    (group_mod(5, 0, 1, []), ET.GROUP_MOD_FAILED, 11),
    (group_mod(1, 0, 1, []), ET.GROUP_MOD_FAILED, gr.UNKNOWN_GROUP),
    (group_mod(0, 2, 1, [(0, ANY, ANY, [of.Output(1)])] * 2), ET.GROUP_MOD_FAILED, gr.INVALID_GROUP),
    (group_mod(0, 3, 1, [(0, ANY, ANY, [of.Output(1)])]), ET.GROUP_MOD_FAILED, gr.BAD_WATCH),
    (group_mod(0, 0, 1, [(0, ANY, ANY, [of.GroupAction(3)])]), ET.GROUP_MOD_FAILED, gr.UNKNOWN_GROUP),
    (group_mod(0, 0, 0xFFFFFFFD, []), ET.GROUP_MOD_FAILED, gr.INVALID_GROUP),
    (msg(T.GROUP_MOD, struct.pack("!HBxI", 0, 0, 1) + struct.pack("!HHII4x", 40, 0, ANY, ANY)), ET.GROUP_MOD_FAILED,
     12),
    (flow_mod(parse_match("in_port=1"), [of.GroupAction(8)]), ET.BAD_ACTION, oc.BAC_BAD_OUT_GROUP),
])
def test_group_refusals(raw: bytes, etype: int, code: int) -> None:
    rig = Rig()
    version = rig.sw.tables.version
    with pytest.raises(OfError) as ei:
        rig.do(raw)
    assert (ei.value.type, ei.value.code) == (etype, code)
    assert rig.sw.tables.version == version and not rig.sw.tables.groups.groups
