"""Flow text (ovs-ofctl syntax), flow-mods, dump-flows output, the state file, and translation details."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctl.datapath import dpif
from ctl.pipeline.ofmatch import FlowSyntaxError, flow_from_text, parse_match
from ctl.pipeline.openflow_tables import OpenFlowTables, parse_flow, parse_flows_file
from ctl.pipeline.xlate import translate


@pytest.mark.parametrize("text", [
    "priority=100,tcp,in_port=1,nw_dst=10.0.0.0/24,tp_dst=80 actions=output:2",
    "priority=5,udp6,ipv6_src=fd00::/64,tp_dst=0x1000/0xf000 actions=drop",
    "priority=7,dl_vlan=10,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=strip_vlan,FLOOD",
    "priority=9,arp,arp_spa=10.0.0.1,arp_tpa=10.0.0.0/8,arp_op=1 actions=ALL",
    "priority=11,ip,nw_src=10.0.0.0/255.0.255.0,nw_tos=32,nw_ttl=64,nw_frag=first actions=mod_nw_tos:0,output:3",
    "priority=12,tcp,tcp_flags=+syn-ack actions=CONTROLLER:65535",
    "priority=13,icmp,icmp_type=8,icmp_code=0 actions=dec_ttl,IN_PORT",
    "priority=14,icmp6,icmpv6_type=135 actions=set_field:fd00::1->ipv6_dst,output:1",
    "priority=15,vlan_tci=0x0000/0x1000 actions=mod_vlan_vid:10,mod_vlan_pcp:3,resubmit(,3),goto_table:4",
    "priority=16,ip actions=mod_dl_src:02:00:00:00:00:01,mod_dl_dst:02:00:00:00:00:02,mod_nw_src:1.2.3.4,"
    "mod_nw_dst:5.6.7.8,output:1",
    "priority=17,tcp actions=mod_tp_src:1,mod_tp_dst:2,push_vlan:0x8100,set_field:3->vlan_vid,resubmit:2",
])
def test_flow_text_round_trips_in_ovs_shape(text: str) -> None:
    t = OpenFlowTables()
    rule = t.add(parse_flow(text.replace(" actions=", ",actions=")))
    line = rule.format(t.clock())
    assert line.startswith(" cookie=0x0, duration=") and ", table=0, n_packets=0, n_bytes=0, " in line
    assert line.split("n_bytes=0, ", 1)[1] == text
    again = OpenFlowTables()
    again.add(parse_flow(rule.to_text()))
    assert again.rules()[0].to_text() == rule.to_text()


def test_dump_format_matches_ovs_ofctl() -> None:
    t = OpenFlowTables()
    r = t.add(parse_flow("table=3,cookie=0x5,idle_timeout=10,hard_timeout=60,priority=32768,ip,actions=drop"))
    line = r.format(now=r.created + 1.5)
    assert line == (" cookie=0x5, duration=1.500s, table=3, n_packets=0, n_bytes=0, idle_timeout=10, "
                    "hard_timeout=60, ip actions=drop")


@pytest.mark.parametrize("text,msg,token", [
    ("priority=10,nw_dest=1.2.3.4,actions=drop", "unknown match field 'nw_dest'", "nw_dest"),
    ("ip,nw_dst=1.2.3.4/33,actions=drop", "prefix length 33", "1.2.3.4/33"),
    ("ip,nw_dst=1.2.3,actions=drop", "not an IPv4 address", "1.2.3"),
    ("tp_dst=80,actions=drop", "tp_dst needs ip/ipv6", "tp_dst=80"),
    ("ip,tp_dst=80,actions=drop", "tp_dst needs tcp/udp/sctp", "tp_dst=80"),
    ("dl_dst=02:00:00:00:00,actions=drop", "not a MAC address", "02:00:00:00:00"),
    ("in_port=0,actions=drop", "port 0 is out of range", "0"),
    ("priority=70000,actions=drop", "out of range", "70000"),
    ("table=255,actions=drop", "table 255 is out of range", "255"),
    ("ip,actions=output:2,fly", "unknown action 'fly'", "fly"),
    ("ip,actions=output:99999", "out of range", "output:99999"),
    ("ip,actions=goto_table:3,output:1", "goto_table must be the last", "output:1"),
    ("ip,actions=set_field:1.2.3.4->ip_foo", "cannot set 'ip_foo'", "set_field:1.2.3.4->ip_foo"),
    ("ip,actions=mod_vlan_vid:5000", "out of range", "mod_vlan_vid:5000"),
        ("ip,actions=normal:3", "takes no argument", "normal:3"),
    ("ip,actions=drop,output:1", "drop cannot be combined", "drop"),
    ("ip", "missing actions", ""),
    ("ip,actions=", "no actions", ""),
    ("ip,nw_tos=33,actions=drop", "ECN bits", "33"),
    ("tcp,tcp_flags=+syn+bogus,actions=drop", "unknown flag 'bogus'", "+syn+bogus"),
    ("ip,nw_frag=sometimes,actions=drop", "nw_frag", "sometimes"),
])
def test_bad_flow_text_points_at_the_token(text: str, msg: str, token: str) -> None:
    with pytest.raises(FlowSyntaxError) as ei:
        parse_flow(text)
    e = ei.value
    assert msg in e.msg
    if token:
        assert e.text[e.pos : e.pos + e.length] == token
    caret_line = str(e).splitlines()[-1]
    assert caret_line.strip().startswith("^")


def test_goto_table_must_go_forward() -> None:
    with pytest.raises(FlowSyntaxError, match="goto_table:2 from table 2"):
        parse_flow("table=2,ip,actions=goto_table:2")


def test_add_replaces_same_match_and_priority() -> None:
    t = OpenFlowTables()
    t.add(parse_flow("priority=5,ip,actions=output:1"))
    t.add(parse_flow("priority=5,ip,actions=output:2"))
    t.add(parse_flow("priority=6,ip,actions=output:3"))
    assert [r.to_text() for r in t.rules()] == ["table=0,priority=6,ip,actions=output:3",
                                                "table=0,priority=5,ip,actions=output:2"]


def test_del_flows_loose_strict_and_cookie() -> None:
    t = OpenFlowTables()
    t.add_many(parse_flows_file("""
        # comment
        priority=10,tcp,nw_dst=10.0.0.1,tp_dst=80,actions=output:1
        priority=20,tcp,nw_dst=10.0.0.1,actions=output:2
        priority=30,udp,actions=output:3
        cookie=0x7,table=1,priority=40,ip,actions=output:4
    """))
    v0 = t.version
    assert len(t.select(parse_flow("tcp", actions=False))) == 2
    assert len(t.select(parse_flow("tcp,tp_dst=80", actions=False))) == 1
    gone = t.delete(parse_flow("priority=20,tcp,nw_dst=10.0.0.1", actions=False), strict=True)
    assert [r.priority for r in gone] == [20]
    assert t.version > v0
    gone = t.delete(parse_flow("cookie=0x7/0xf", actions=False))
    assert [r.table for r in gone] == [1]
    gone = t.delete(parse_flow("table=0", actions=False))
    assert len(gone) == 2 and len(t) == 0


def test_state_file_round_trip_is_atomic(tmp_path: Path) -> None:
    t = OpenFlowTables()
    t.add_many(parse_flows_file("priority=1,ip,actions=output:1\ntable=2,cookie=0x9,hard_timeout=5,arp,actions=flood"))
    t.set_miss(2, "continue")
    path = tmp_path / "flows.json"
    t.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["flows.json"]
    back = OpenFlowTables.load(path)
    assert [r.to_text() for r in back.rules()] == [r.to_text() for r in t.rules()]
    assert back.tables[2].miss == "continue"
    # a bad state file changes nothing
    data = json.loads(path.read_text())
    data["flows"].append("ip,actions=bogus")
    with pytest.raises(FlowSyntaxError):
        back.load_json(data)
    assert len(back) == 2


def test_flows_file_errors_name_the_line() -> None:
    with pytest.raises(FlowSyntaxError, match="line 2: unknown action"):
        parse_flows_file("ip,actions=output:1\nip,actions=bogus\n")


# --- translation ---------------------------------------------------------------------------------------


def _t(*flows: str) -> OpenFlowTables:
    t = OpenFlowTables()
    t.add_many(parse_flow(f) for f in flows)
    return t


def test_table_miss_default_drop_continue_and_controller() -> None:
    t = _t("table=1,priority=1,actions=output:2")
    pkt = flow_from_text("in_port=1,ip,nw_dst=10.0.0.1")
    assert translate(t, pkt).actions == [dpif.DpDrop()]
    t.set_miss(0, "continue")
    assert translate(t, pkt).actions == [dpif.DpOutput(2)]
    t.set_miss(0, "controller")
    tr = translate(t, pkt)
    # a table-miss without a rule: reason no_match, the connection's miss_send_len, no cookie; slow path
    assert tr.actions == [dpif.DpController(reason=0, max_len=-1, table_id=0, cookie=(1 << 64) - 1)]
    assert tr.slow_path


def test_output_to_ingress_is_dropped_unless_in_port() -> None:
    pkt = flow_from_text("in_port=1,ip")
    assert translate(_t("actions=output:1"), pkt).actions == [dpif.DpDrop()]
    assert translate(_t("actions=in_port"), pkt).actions == [dpif.DpOutput(1)]
    assert translate(_t("actions=output:7"), pkt, ports={1, 2}).actions == [dpif.DpDrop()]


def test_resubmit_sees_modified_fields_and_returns() -> None:
    t = _t("table=0,ip,actions=mod_nw_dst:10.0.0.9,resubmit(,1),output:3",
           "table=1,ip,nw_dst=10.0.0.9,actions=output:2")
    tr = translate(t, flow_from_text("in_port=1,ip,nw_dst=10.0.0.1"))
    assert tr.actions == [dpif.DpSetIpv4Dst("10.0.0.9"), dpif.DpOutput(2), dpif.DpOutput(3)]
    assert tr.wc["nw_dst"] == 0  # decided by the action, not by the packet
    assert [r.table for r in tr.rules] == [0, 1]
    assert not tr.slow_path


def test_changes_between_outputs_go_to_the_slow_path() -> None:
    t = _t("ip,actions=output:2,mod_dl_dst:02:00:00:00:00:09,output:3")
    tr = translate(t, flow_from_text("in_port=1,ip"))
    assert tr.slow_path.startswith("'set(eth(dst=02:00:00:00:00:09)),3' after an output")
    assert tr.actions == [dpif.DpOutput(2), dpif.DpSetEthDst("02:00:00:00:00:09"), dpif.DpOutput(3)]


def test_vlan_push_set_pop_and_their_masks() -> None:
    t = _t("in_port=1,actions=mod_vlan_vid:10,output:2", "in_port=2,actions=strip_vlan,output:1")
    untagged = translate(t, flow_from_text("in_port=1"))
    assert untagged.actions == [dpif.DpPushVlan(10, 0), dpif.DpOutput(2)]
    assert untagged.wc["vlan_tci"] == 0x1000
    tagged = translate(t, flow_from_text("in_port=1,dl_vlan=5,dl_vlan_pcp=3"))
    assert tagged.actions == [dpif.DpSetVlan(10, 3), dpif.DpOutput(2)]
    assert tagged.wc["vlan_tci"] == 0xF000  # tag present, and the PCP that SetVlan writes back
    assert translate(t, flow_from_text("in_port=2,dl_vlan=5")).actions == [dpif.DpPopVlan(), dpif.DpOutput(1)]
    assert translate(t, flow_from_text("in_port=2")).actions == [dpif.DpOutput(1)]


def test_trace_shape() -> None:
    t = _t("table=0,priority=100,ip,nw_dst=10.0.0.0/24,actions=goto_table:1", "table=1,actions=output:2")
    text = translate(t, flow_from_text("in_port=1,ip,nw_dst=10.0.0.5")).format_trace("br")
    assert " 0. ip,nw_dst=10.0.0.0/24, priority 100" in text
    assert "    goto_table:1" in text
    assert " 1. priority 32768" in text
    assert "Megaflow: ip,in_port=1,nw_dst=10.0.0.0/24" in text
    assert text.rstrip().endswith("Datapath actions: 2")


def test_megaflow_text_parses_back() -> None:
    t = _t("priority=100,ip,nw_dst=10.0.0.0/24,actions=output:2", "priority=50,tcp,tp_dst=80,actions=output:3")
    tr = translate(t, flow_from_text("in_port=1,tcp,nw_dst=192.168.1.1,tp_dst=443"))
    assert parse_match(tr.megaflow().format()) == tr.megaflow()


def test_flow_of_and_key_of_round_trip() -> None:
    from ctl.datapath.flowkey import build
    from ctl.pipeline.ofmatch import flow_of, key_of

    k = build(in_port=7, vlan_tci=0x1005, dl_type=0x86DD, dl_src="02:00:00:00:00:01", dl_dst="ff:ff:ff:ff:ff:ff",
              nw_proto=6, nw_tos=0x21, nw_ttl=64, tp_src=1, tp_dst=65535, tcp_flags=0x12, ipv6_src="fd00::1",
              ipv6_dst="2001:db8::ffff", arp_sha="02:00:00:00:00:09")
    f = flow_of(k)
    assert f["in_port"] == 7 and f["dl_src"] == 0x020000000001 and f["ipv6_dst"] == int(ip6("2001:db8::ffff"))
    assert bytes(key_of(f)) == bytes(k)


def ip6(text: str) -> int:
    import ipaddress

    return int(ipaddress.IPv6Address(text))


_ALPHABET = "abcdefghijklmnopqrstuvwxyz_0123456789:=,/.()->+ x"
_WORDS = ["ip", "tcp", "udp6", "nw_dst=", "tp_dst=", "actions=", "output:", "resubmit(,", "goto_table:", "set_field:",
          "->", "ip_dst", "dl_vlan=", "tcp_flags=+syn", "priority=", "table=", "0x", "/", "10.0.0.1", "fd00::1", ","]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_WORDS) | st.text(_ALPHABET, max_size=6), max_size=14))
def test_any_flow_text_parses_or_fails_cleanly(parts: list[str]) -> None:
    """Random flow text never escapes as anything but FlowSyntaxError, and what parses round-trips."""
    text = "".join(parts)
    try:
        spec = parse_flow(text)
    except FlowSyntaxError as e:
        assert 0 <= e.pos <= len(text) and e.msg
        return
    t = OpenFlowTables()
    rule = t.add(spec)
    assert parse_flow(rule.to_text()).match == spec.match


def test_strict_selection_and_overlap_check_agree_with_a_scan() -> None:
    """Strict deletes, strict modifies and the overlap check find their rules through the index (subtable,
    priority) rather than a scan; what they find is what a scan of every rule finds."""
    t = OpenFlowTables()
    for i in range(300):
        t.add(parse_flow(f"table={i % 3},priority={10 + i % 5},udp,tp_dst={i},actions=output:2"))
    t.add(parse_flow("table=1,priority=11,cookie=0x5,udp,tp_dst=1,actions=output:3"))
    for text in ("priority=11,udp,tp_dst=1", "table=1,priority=11,udp,tp_dst=1", "priority=12,udp,tp_dst=2",
                 "table=2,priority=10,udp,tp_dst=5", "priority=99,udp,tp_dst=1",
                 "cookie=0x5/0xff,priority=11,udp,tp_dst=1"):
        spec = parse_flow(text, actions=False)
        scan = [r for r in t.rules(spec.table) if r.match == spec.match and r.priority == spec.priority
                and not (spec.cookie_mask and (r.cookie ^ spec.cookie) & spec.cookie_mask)]
        assert t.select(spec, strict=True) == scan, text
    assert t.overlaps(parse_flow("table=1,priority=11,udp,actions=drop"))          # covers tp_dst=1's rule
    assert not t.overlaps(parse_flow("table=1,priority=13,udp,tp_dst=9999,actions=drop"))
    gone = t.delete(parse_flow("table=1,priority=11,udp,tp_dst=1", actions=False), strict=True)
    assert len(gone) == 1 and gone[0].cookie == 0x5
    assert not t.overlaps(parse_flow("table=1,priority=11,udp,tp_dst=1,actions=drop"))


@pytest.mark.parametrize("content, why", [
    ("[]", "not a state file"),
    ('{"table_miss": {"999": "drop"}}', "table '999' is out of range"),
    ('{"table_miss": {"x": "drop"}}', "table 'x' is out of range"),
    ('{"flows": ["priority=1,actions=output:2", "ip,nw_dst=1.2.3.400,actions=drop"]}', "nw_dst"),
    ('{"flows": 5}', "'flows' must be a list"),
    ("{not json", "Expecting property name"),
    ("\xff", ""),
])
def test_a_bad_state_file_is_a_clear_error_naming_it(tmp_path: Path, content: str, why: str) -> None:
    f = tmp_path / "flows.json"
    f.write_text(content, encoding="latin-1")
    with pytest.raises(ValueError) as e:
        OpenFlowTables.load(f)
    assert str(e.value).startswith(f"{f}: ") and why in str(e.value)
