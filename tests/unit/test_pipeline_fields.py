"""Registers, metadata, tun_id, MPLS and the set_field targets only user space rewrites: their text, their
OpenFlow encoding, what the pipeline does with them, and the frames the executor makes (checksums checked by
scapy)."""

from __future__ import annotations

import pytest
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP

from ctl.datapath import dpif
from ctl.datapath.execute import crc32c, execute
from ctl.datapath.flowkey import parse
from ctl.openflow.codec.actions import decode_instructions, encode_instructions
from ctl.openflow.codec.oxm import match_of_oxms, oxms_of_match
from ctl.pipeline.ofmatch import PIPELINE_FIELDS, flow_of, parse_match
from ctl.pipeline.openflow_tables import OpenFlowTables, parse_flow
from ctl.pipeline.xlate import translate

E = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def tables(*rules: str) -> OpenFlowTables:
    t = OpenFlowTables()
    for r in rules:
        t.add(parse_flow(r))
    return t


def run(t: OpenFlowTables, frame: bytes, in_port: int = 1) -> tuple[str, bytes | None]:
    """The datapath actions for a frame and the frame that leaves port 2 (None: nothing does)."""
    tr = translate(t, flow_of(parse(frame, in_port)), {1, 2, 3}, packet=frame)
    out = [f for p, f in execute(frame, tr.actions).emits if p == 2]
    return dpif.format_actions(tr.actions), (out[0] if out else None)


@pytest.mark.parametrize("text", [
    "reg0=0x5", "reg15=0x1/0xff", "metadata=0xff", "metadata=0x1/0x3", "tun_id=0x3039", "dl_type=0x8847,mpls_label=100",
    "dl_type=0x8847,mpls_tc=3,mpls_bos=1", "ipv6,ipv6_label=0x00064", "ipv6,ipv6_label=0x00060/0xffff0",
])
def test_match_text_and_oxm_round_trip(text: str) -> None:
    m = parse_match(text)
    assert parse_match(m.format()) == m
    raw = oxms_of_match(m)
    tlvs, p = [], 0
    while p < len(raw):
        cls, fh, ln = int.from_bytes(raw[p:p + 2], "big"), raw[p + 2], raw[p + 3]
        tlvs.append((cls, fh >> 1, bool(fh & 1), raw[p + 4:p + 4 + ln]))
        p += 4 + ln
    assert match_of_oxms(tlvs) == m


@pytest.mark.parametrize("actions", [
    "load:0x5->NXM_NX_REG0[],move:NXM_OF_IN_PORT[]->NXM_NX_REG1[0..15],output:2",
    "set_field:0x5->reg3,write_metadata:0x1/0x1,goto_table:2",
    "push_mpls:0x8847,set_field:100->mpls_label,set_mpls_ttl(9),dec_mpls_ttl,output:2",
    "pop_mpls:0x0800,goto_table:1", "ip,actions=set_field:1->ip_ecn,mod_nw_ttl:7,output:2",
    "arp,actions=set_field:2->arp_op,set_field:10.1.1.1->arp_spa,set_field:aa:aa:aa:aa:aa:aa->arp_tha,output:2",
    "ip,actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],load:0xa000001->NXM_OF_IP_DST[],output:2",
    "dl_type=0x8847,actions=pop_mpls:0x0800,set_field:10.0.0.9->ip_dst,output:2",
])
def test_actions_text_and_openflow_round_trip(actions: str) -> None:
    match, _, actions = actions.rpartition("actions=")
    rule = parse_flow(f"{match}actions={actions}")
    assert parse_flow(f"{match}actions={','.join(str(a) for a in rule.actions)}").actions == rule.actions
    assert decode_instructions(encode_instructions(rule.actions), 0) == rule.actions


def test_bad_pipeline_text_is_refused_at_the_token() -> None:
    for bad, why in (("actions=load:0x1ff->NXM_NX_REG0[0..7],output:2", "out of range"),
                     ("actions=move:NXM_NX_REG0[0..7]->NXM_NX_REG1[0..3],output:2", "widths differ"),
                     ("actions=load:1->NXM_OF_ETH_TYPE[],output:2", "cannot be written"),
                     ("actions=write_metadata:1,output:2", "only goto_table may follow"),
                     ("actions=load:1->NXM_NX_REG0[40],output:2", "outside"),
                     ("actions=push_mpls:0x0800,output:2", "not an MPLS")):
        with pytest.raises(ValueError, match=why):
            parse_flow(bad)


def test_registers_and_metadata_steer_without_entering_the_megaflow() -> None:
    t = tables("table=0,ip,actions=load:0x5->NXM_NX_REG0[],write_metadata:0x2/0x2,goto_table:1",
               "table=1,reg0=5,metadata=0x2/0x2,actions=output:2", "table=1,priority=0,actions=output:3")
    frame = bytes(Ether(**E) / IP(dst="10.0.0.2") / UDP())
    tr = translate(t, flow_of(parse(frame, 1)), {1, 2, 3})
    assert dpif.format_actions(tr.actions) == "2"
    assert not any(tr.wc[f] for f in PIPELINE_FIELDS)
    assert "reg0" not in tr.megaflow().format() and "metadata" not in tr.megaflow().format()


def test_move_consults_the_bits_it_copies() -> None:
    t = tables("ip,actions=move:NXM_OF_IP_SRC[0..7]->NXM_NX_REG0[0..7],resubmit(,1)",
               "table=1,reg0=0x1/0xff,actions=output:2", "table=1,priority=0,actions=output:3")
    a, _ = run(t, bytes(Ether(**E) / IP(src="10.0.0.1") / UDP()))
    b, _ = run(t, bytes(Ether(**E) / IP(src="10.0.0.9") / UDP()))
    assert (a, b) == ("2", "3")
    tr = translate(t, flow_of(parse(bytes(Ether(**E) / IP(src="10.0.0.1") / UDP()), 1)), {1, 2, 3})
    assert tr.wc["nw_src"] == 0xFF


def test_pop_mpls_recirculates_and_matches_the_inner_packet() -> None:
    t = tables("table=0,dl_type=0x8847,actions=pop_mpls:0x0800,goto_table:1",
               "table=1,ip,nw_dst=10.0.0.2,actions=output:2", "table=1,priority=0,actions=output:3")
    inner = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2)
    frame = bytes(Ether(**E) / MPLS(label=100, s=1, ttl=64) / inner)
    tr = translate(t, flow_of(parse(frame, 1)), {1, 2, 3}, packet=frame)
    assert tr.recirc and tr.slow_path
    acts, out = run(t, frame)
    assert acts == "pop_mpls(eth_type=0x800),2"
    assert out == bytes(Ether(**E) / inner)
    other = bytes(Ether(**E) / MPLS(label=100, s=1) / IP(src="10.0.0.1", dst="10.0.0.3") / TCP())
    assert run(t, other)[0] == "pop_mpls(eth_type=0x800),3"


def test_push_and_set_mpls() -> None:
    t = tables("ip,actions=push_mpls:0x8847,set_field:100->mpls_label,dec_mpls_ttl,output:2")
    acts, out = run(t, bytes(Ether(**E) / IP(tos=0x0C, ttl=9) / UDP()))  # DSCP 3: TC 3, as OVS
    assert out is not None
    got = Ether(out)
    assert got.type == 0x8847 and got[MPLS].label == 100 and got[MPLS].ttl == 8 and got[MPLS].cos == 3
    assert got[MPLS].s == 1 and got[IP].ttl == 9


def test_mpls_match_in_the_megaflow() -> None:
    t = tables("dl_type=0x8847,mpls_label=100,actions=output:2", "priority=0,actions=output:3")
    frame = bytes(Ether(**E) / MPLS(label=100, cos=5, ttl=3) / IP())
    tr = translate(t, flow_of(parse(frame, 1)), {1, 2, 3})
    assert dpif.format_actions(tr.actions) == "2"
    assert tr.wc["mpls_lse"] == 0xFFFFF000


@pytest.mark.parametrize(("rule", "pkt", "check"), [
    ("ip,actions=set_field:3->ip_ecn,output:2", Ether(**E) / IP(tos=0x20) / UDP(),
     lambda p: p[IP].tos == 0x23),
    ("ip,actions=mod_nw_ttl:7,output:2", Ether(**E) / IP(ttl=64) / UDP(), lambda p: p[IP].ttl == 7),
    ("icmp,actions=set_field:0->icmpv4_type,output:2", Ether(**E) / IP() / ICMP(type=8), lambda p: p[ICMP].type == 0),
    ("icmp6,actions=set_field:129->icmpv6_type,output:2", Ether(**E) / IPv6() / ICMPv6EchoRequest(),
     lambda p: p[IPv6].payload.type == 129),
    ("sctp,actions=set_field:6789->sctp_dst,output:2", Ether(**E) / IP() / SCTP(sport=1, dport=2),
     lambda p: p[SCTP].dport == 6789),
    ("arp,actions=set_field:2->arp_op,set_field:10.9.9.9->arp_spa,set_field:aa:aa:aa:aa:aa:aa->arp_tha,output:2",
     Ether(**E) / ARP(op=1),
     lambda p: p[ARP].op == 2 and p[ARP].psrc == "10.9.9.9" and p[ARP].hwdst == "aa:aa:aa:aa:aa:aa"),
    ("ipv6,actions=set_field:203->ipv6_flabel,output:2", Ether(**E) / IPv6(fl=100) / UDP(),
     lambda p: p[IPv6].fl == 203),
])
def test_user_space_rewrites_keep_checksums_right(rule: str, pkt, check) -> None:  # type: ignore[no-untyped-def]
    acts, out = run(tables(rule), bytes(pkt))
    assert out is not None, acts
    got = Ether(out)
    assert check(got), got.show(dump=True)
    again = Ether(out)
    for layer in (IP, ICMP, UDP, SCTP):
        if layer in again and hasattr(again[layer], "chksum"):
            want = again[layer].chksum
            del again[layer].chksum
            assert Ether(bytes(again))[layer].chksum == want, f"{layer.__name__} checksum"
    if IPv6 in got and got[IPv6].payload.name.startswith("ICMPv6"):
        want = got[IPv6].payload.cksum
        del again[IPv6].payload.cksum
        assert Ether(bytes(again))[IPv6].payload.cksum == want


def test_crc32c_known_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283


def test_802_1ad_outer_tag_is_parsed_and_a_second_tag_pushed_as_ovs() -> None:
    """An 0x88a8 tag is the packet's VLAN (the inner one payload, as OVS's vlan-limit 1); push_vlan onto a
    tagged packet adds an outer tag with VID 0 (set afterwards); popping back to the inner tag too, all in the
    fast path (it counts the tags a packet carries)."""
    k = parse(bytes(Ether(**E) / Dot1AD(vlan=7) / Dot1Q(vlan=100) / IP() / UDP()), 1)
    assert k.vlan_tci == 0x1007 and k.dl_type == 0x8100
    t = tables("ip,actions=push_vlan:0x88a8,mod_vlan_vid:7,output:2")
    frame = bytes(Ether(**E) / Dot1Q(vlan=100, prio=3) / IP() / UDP())
    tr = translate(t, flow_of(parse(frame, 1)), {1, 2, 3}, packet=frame)
    assert dpif.format_actions(tr.actions) == "push_vlan(tpid=0x88a8,vid=7,pcp=0),2" and not tr.slow_path
    assert tr.wc["vlan_tci"] == 0xFFFF  # the inner tag goes out as it came: all of it is in the megaflow
    got = Ether([f for p, f in execute(frame, tr.actions).emits if p == 2][0])
    assert got.type == 0x88A8 and got[Dot1AD].vlan == 7 and got[Dot1Q].vlan == 100 and got[Dot1Q].prio == 3
    t = tables("ip,actions=push_vlan:0x88a8,strip_vlan,mod_vlan_vid:9,output:2")
    tr = translate(t, flow_of(parse(frame, 1)), {1, 2, 3}, packet=frame)
    assert dpif.format_actions(tr.actions) == "push_vlan(tpid=0x88a8,vid=0,pcp=0),pop_vlan,set(vlan(vid=9,pcp=3)),2"
    assert not tr.slow_path
    got = Ether([f for p, f in execute(frame, tr.actions).emits if p == 2][0])
    assert got.type == 0x8100 and got[Dot1Q].vlan == 9 and got[Dot1Q].prio == 3 and Dot1AD not in got


def test_prefix_tries_follow_the_tables_setting_in_order() -> None:
    """OVS's Flow_Table prefixes: ip_dst then ip_src by default (the first trie that rules the subtable out
    is the only one un-wildcarded), in the order given, or none (the stage's whole mask is consulted)."""
    from ctl.pipeline.ofmatch import parse_prefixes

    t = tables("ip,nw_src=10.0.0.0/8,nw_dst=10.0.0.0/8,actions=output:2", "priority=0,actions=output:3")
    frame = bytes(Ether(**E) / IP(src="192.168.0.1", dst="172.16.0.1") / UDP())

    def wc() -> tuple[int, int]:
        tr = translate(t, flow_of(parse(frame, 1)), {1, 2, 3})
        assert dpif.format_actions(tr.actions) == "3"
        return tr.wc["nw_dst"], tr.wc["nw_src"]

    assert wc() == (0x80000000, 0)
    t.set_prefixes(0, parse_prefixes("ip_src,ip_dst"))
    assert wc() == (0, 0x80000000)
    t.set_prefixes(0, parse_prefixes("none"))
    assert wc() == (0xFF000000, 0xFF000000)
    for bad in ("ip_dst,ip_dst", "tcp_dst", "ip_dst,ip_src,ipv6_dst,ipv6_src"):
        with pytest.raises(ValueError, match="prefixes"):
            parse_prefixes(bad)


def test_table_prefixes_survive_the_state_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ctl.pipeline.ofmatch import DEFAULT_PREFIXES, parse_prefixes

    t = tables("ipv6,ipv6_dst=2001:db8::/32,actions=output:2")
    frame = bytes(Ether(**E) / IPv6(dst="2002::1") / UDP())
    assert translate(t, flow_of(parse(frame, 1)), {1, 2, 3}).wc["ipv6_dst"] >> 96 == 0xFFFFFFFF  # no trie
    t.set_prefixes(0, parse_prefixes("ipv6_dst,ip_dst"))
    t.save(tmp_path / "s.json")
    back = OpenFlowTables.load(tmp_path / "s.json")
    assert back.tables[0].prefixes == ("ipv6_dst", "nw_dst") and back.tables[1].prefixes == DEFAULT_PREFIXES
    tr = translate(back, flow_of(parse(frame, 1)), {1, 2, 3})
    assert tr.wc["ipv6_dst"] == 0xFFFE << 112  # decided by the leading bits the trie examined, not all 32


def test_fragments_have_no_ports_for_the_tables_as_ovs_normal_frag_handling() -> None:
    t = tables("tcp,tp_dst=80,actions=output:2", "priority=0,actions=output:3")
    whole = bytes(Ether(**E) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(dport=80))
    first = bytes(Ether(**E) / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / TCP(dport=80))
    a = translate(t, flow_of(parse(whole, 1)), {1, 2, 3})
    b = translate(t, flow_of(parse(first, 1)), {1, 2, 3})
    assert (dpif.format_actions(a.actions), dpif.format_actions(b.actions)) == ("2", "3")
    assert "nw_frag=no" in a.megaflow().format() and "nw_frag=first" in b.megaflow().format()
    assert b.wc["tp_dst"] == 0  # every first fragment of the megaflow, whatever its ports, goes the same way


def test_dec_ttl_of_an_expiring_packet_is_an_invalid_ttl_packet_in_as_ovs() -> None:
    t = tables("table=0,ip,actions=dec_ttl,output:2,resubmit(,1)", "table=1,ip,actions=output:3")
    expiring = bytes(Ether(**E) / IP(ttl=1) / UDP())
    tr = translate(t, flow_of(parse(expiring, 1)), {1, 2, 3})
    assert dpif.format_actions(tr.actions).startswith("controller(reason=invalid_ttl")
    assert tr.wc["nw_ttl"] == 0xFE  # only TTL 0 and 1 share this megaflow
    res = execute(expiring, tr.actions)
    assert not res.emits and res.drop == dpif.DropReason.TTL_EXPIRED and len(res.controller) == 1
    live = translate(t, flow_of(parse(bytes(Ether(**E) / IP(ttl=64) / UDP()), 1)), {1, 2, 3})
    assert dpif.format_actions(live.actions) == "dec_ttl,2,3" and live.wc["nw_ttl"] == 0xFE


@pytest.mark.parametrize(("flow", "why"), [
    ("actions=set_field:1.2.3.4->ip_src,output:2", "ip_src needs ip"),
    ("ip,actions=load:1->NXM_OF_TCP_DST[],output:2", "tcp_dst needs tcp"),
    ("tcp,actions=move:NXM_OF_UDP_SRC[]->NXM_NX_REG0[0..15],output:2", "udp_src needs udp"),
    ("ipv6,actions=mod_nw_src:1.2.3.4,output:2", "ip_src needs ip"),
    ("ip,actions=push_mpls:0x8847,set_field:1.2.3.4->ip_src,output:2", "ip_src needs ip"),
])
def test_a_write_without_its_prerequisite_is_refused_as_ovs(flow: str, why: str) -> None:
    """As OVS's ofpacts_check: the text error points at the action, OpenFlow gets BAD_ACTION/MATCH_INCONSISTENT."""
    import struct as _s

    from ctl.openflow.codec import OfError, decode
    from ctl.openflow.codec.oxm import encode_match
    from ctl.pipeline.ofactions import parse_actions
    from ctl.pipeline.ofmatch import FlowSyntaxError

    with pytest.raises(FlowSyntaxError, match=why) as e:
        parse_flow(flow)
    pointed = flow[e.value.pos: e.value.pos + e.value.length]
    assert pointed in flow.rpartition("actions=")[2].split(",") and not pointed.startswith(("output", "push_mpls"))
    head, _, acts = flow.rpartition("actions=")
    match = parse_match(head.rstrip(",")) if head else parse_match("")
    body = _s.pack("!QQBBHHHIIIH2x", 0, 0, 0, 0, 0, 0, 100, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    raw = body + encode_match(match) + encode_instructions(parse_actions(acts))
    msg = _s.pack("!BBHI", 4, 14, 8 + len(raw), 7) + raw
    with pytest.raises(OfError) as err:
        decode(msg)
    assert (err.value.type, err.value.code) == (2, 12)


def test_vlan_limit_2_pop_exposes_the_inner_tag_in_the_fast_path() -> None:
    from ctl.datapath.flowkey import set_vlan_limit

    set_vlan_limit(2)
    try:
        t = tables("table=0,dl_vlan=7,actions=strip_vlan,resubmit(,1)",
                   "table=1,dl_vlan=100,actions=mod_vlan_pcp:6,output:2", "table=1,priority=0,actions=output:3")
        frame = bytes(Ether(**E) / Dot1AD(vlan=7) / Dot1Q(vlan=100, prio=3) / IP() / UDP())
        k = parse(frame, 1)
        assert (k.vlan_tci, k.vlan_tci1, k.dl_type) == (0x1007, 0x7064, 0x0800)
        tr = translate(t, flow_of(k), {1, 2, 3}, packet=frame)
        assert dpif.format_actions(tr.actions) == "pop_vlan,set(vlan(vid=100,pcp=6)),2" and not tr.slow_path
        assert tr.wc["vlan_tci1"] == 0xFFFF
        got = Ether([f for p, f in execute(frame, tr.actions).emits if p == 2][0])
        assert got.type == 0x8100 and got[Dot1Q].vlan == 100 and got[Dot1Q].prio == 6 and Dot1AD not in got
    finally:
        set_vlan_limit(1)


def test_an_arp_responder_as_neutron_writes_it() -> None:
    """move/load on ARP fields (the op included, which shares nw_proto): an ARP reply built in the switch."""
    t = tables("arp,arp_op=1,actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],mod_dl_src:0a:00:00:00:00:fe,"
               "load:0x2->NXM_OF_ARP_OP[],move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],"
               "move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],load:0x0a0000fe->NXM_OF_ARP_SPA[],"
               "load:0x0a00000000fe->NXM_NX_ARP_SHA[],in_port")
    frame = bytes(Ether(**E) / ARP(op=1, hwsrc=E["src"], psrc="10.0.0.1", pdst="10.0.0.254"))
    tr = translate(t, flow_of(parse(frame, 1)), {1, 2, 3})
    got = Ether([f for p, f in execute(frame, tr.actions).emits if p == 1][0])
    assert got.dst == E["src"] and got.src == "0a:00:00:00:00:fe" and got[ARP].op == 2
    assert (got[ARP].psrc, got[ARP].pdst, got[ARP].hwdst) == ("10.0.0.254", "10.0.0.1", E["src"])
    with pytest.raises(ValueError, match="cannot be written"):
        parse_flow("ip,actions=load:6->NXM_OF_IP_PROTO[],output:2")
