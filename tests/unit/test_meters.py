"""Meters: ovs-ofctl text, meter-mod validation (OVS's errors), the user-space token buckets, the meter instruction
in translation and in the executor, meters over OpenFlow, the controller meter and the packet-in rate limit."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from ctl.datapath import dpif
from ctl.datapath.execute import execute
from ctl.datapath.flowkey import parse
from ctl.openflow import codec as oc
from ctl.openflow.codec import ET, MP, OfError, T
from ctl.pipeline import meters as mt
from ctl.pipeline import ofactions as of
from ctl.pipeline.ofmatch import FlowSyntaxError, flow_of, parse_match
from ctl.pipeline.openflow_tables import OpenFlowTables, UnknownMeter, parse_flow
from ctl.pipeline.xlate import translate
from tests.unit.ofhelpers import flow_mod, msg, multipart
from tests.unit.test_ofproto import Rig

DROP10M = "meter=1,kbps,burst,stats,bands=type=drop,rate=10000,burst_size=100"


def test_meter_text_round_trips() -> None:
    for text in (DROP10M, "meter=2,pktps,bands=type=dscp_remark,rate=100,prec_level=1",
                 "meter=3,kbps,bands=type=drop,rate=5000,type=dscp_remark,rate=1000,prec_level=2",
                 "meter=controller,pktps,bands=type=drop,rate=10"):
        spec = mt.parse_meter(text)
        assert mt.Meter(spec.meter_id, spec.flags, spec.bands).to_text() == text
    assert mt.parse_meter("meter=4,bands=type=drop,rate=1").flags == mt.KBPS   # kbps unless told


@pytest.mark.parametrize("text, where", [
    ("kbps,bands=type=drop,rate=1", "meter=N"),
    ("meter=1,kbps", "bands="),
    ("meter=1,bands=rate=5", "starts with type"),
    ("meter=1,bands=type=police,rate=5", "police"),
    ("meter=0,bands=type=drop,rate=5", "out of range"),
    ("meter=1,fast,bands=type=drop,rate=5", "fast"),
])
def test_bad_meter_text_points_at_the_problem(text: str, where: str) -> None:
    with pytest.raises(FlowSyntaxError) as ei:
        mt.parse_meter(text)
    assert where in str(ei.value)


@pytest.mark.parametrize("text, code", [
    ("meter=1,kbps,bands=type=drop,rate=0", mt.BAD_RATE),
    ("meter=1,kbps,bands=type=drop,rate=5,burst_size=9", mt.BAD_BURST),
    ("meter=1,kbps,pktps,bands=type=drop,rate=5", mt.BAD_FLAGS),
    ("meter=1,kbps,bands=type=dscp_remark,rate=5,prec_level=7", mt.BAD_BAND_VALUE),
    ("meter=1,kbps,bands=" + ",".join(["type=drop,rate=5"] * 5), mt.OUT_OF_BANDS),
])
def test_bad_meter_mods_are_refused_with_ovs_errors(text: str, code: int) -> None:
    t = OpenFlowTables()
    with pytest.raises(mt.MeterModError) as ei:
        t.add_meter(mt.parse_meter(text))
    assert ei.value.code == code and len(t.meters) == 0


def test_meters_flows_and_the_state_file() -> None:
    t = OpenFlowTables()
    with pytest.raises(UnknownMeter):
        t.add(parse_flow("in_port=1,actions=meter:1,output:2"))
    m = t.add_meter(mt.parse_meter(DROP10M))
    assert m.slot >= 0 and t.meters.dirty_slots == [m]
    t.add(parse_flow("in_port=1,actions=meter:1,output:2"))
    with pytest.raises(mt.MeterModError) as ei:
        t.add_meter(mt.parse_meter(DROP10M))
    assert ei.value.code == mt.METER_EXISTS
    again = OpenFlowTables()
    again.load_json(t.to_json())
    assert [x.to_text() for x in again.meters] == [DROP10M] and len(again) == 1
    with pytest.raises(FlowSyntaxError, match="meter is an instruction"):
        parse_flow("in_port=1,actions=output:2,meter:1")
    gone, rules = t.delete_meters(mt.OFPM_ALL)
    assert [x.meter_id for x in gone] == [1] and len(rules) == 1 and len(t) == 0


def test_soft_meter_and_token_bucket_rates() -> None:
    m = mt.Meter(1, mt.PKTPS | mt.BURST, [mt.Band(mt.DROP, 100, 10)])
    sm = mt.SoftMeter(m, 0)
    passed = sum(sm.take(100, i * 1_000_000)[0] == 0 for i in range(1000))   # 1000 packets over one second
    assert 105 <= passed <= 111          # the burst of 10, then 100/s
    assert sm.counts[0][0] == 1000 and sm.counts[1][0] == 1000 - passed
    kb = mt.Meter(2, mt.KBPS, [mt.Band(mt.DSCP_REMARK, 1000, 0, 1)])   # 1 Mbps, burst 100 ms: 100 kbits
    sm = mt.SoftMeter(kb, 0)
    over = [sm.take(1250, i * 1_000_000)[0] for i in range(1000)]       # 10 Mbps for a second
    assert 888 <= over.count(mt.DSCP_REMARK) <= 891  # 100 packets of 10 kbits a second, 10 in the bucket
    tb = mt.TokenBucket(10, 5, 0)
    assert sum(tb.take(0) for _ in range(10)) == 5 and tb.take(100_000_000)   # refilled: one more after 100 ms


def test_remark_raises_af_drop_precedence_only() -> None:
    assert [dpif.remark_dscp(d, 1) for d in (10, 12, 14, 18, 46, 0)] == [12, 14, 14, 20, 46, 0]
    assert dpif.remark_dscp(34, 2) == 38


def test_the_meter_instruction_translates_first_and_the_executor_applies_it() -> None:
    t = OpenFlowTables()
    m = t.add_meter(mt.parse_meter("meter=1,pktps,bands=type=dscp_remark,rate=10,prec_level=1"))
    t.add(parse_flow("in_port=1,ip,actions=meter:1,output:2"))
    fr = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", tos=18 << 2) / UDP(sport=1, dport=2))
    tr = translate(t, flow_of(parse(fr, 1)), ports={1, 2})
    assert tr.actions == [dpif.DpMeter(m.slot, 1), dpif.DpOutput(2)] and not tr.slow_path
    assert tr.megaflow().format() == "ip,in_port=1,nw_frag=no"   # a meter reads nothing the megaflow must match
    res = execute(fr, tr.actions, meter=lambda slot, n: (mt.DSCP_REMARK, 1))
    out = IP(res.emits[0][1][14:])
    assert out.tos >> 2 == 20 and out.chksum == IP(bytes(IP(src="10.0.0.1", dst="10.0.0.2", tos=20 << 2)
                                                         / UDP(sport=1, dport=2))).chksum
    res = execute(fr, tr.actions, meter=lambda slot, n: (mt.DROP, 0))
    assert res.emits == [] and res.drop == dpif.DropReason.METER
    recs = dpif.encode_actions(tr.actions, max_actions=8, max_port=256, group_for=lambda p: 0)
    assert dpif.decode_actions(recs, lambda g: frozenset()) == [dpif.DpMeter(m.slot), dpif.DpOutput(2)]


def meter_mod(command: int, flags: int, mid: int, bands: list[tuple[int, int, int, int]]) -> bytes:
    body = struct.pack("!HHI", command, flags, mid)
    for btype, rate, burst, prec in bands:
        body += struct.pack("!HHIIB3x", btype, 16, rate, burst, prec)
    return msg(T.METER_MOD, body)


def test_meters_over_openflow() -> None:
    rig = Rig()
    rig.do(meter_mod(0, mt.KBPS | mt.BURST | mt.STATS, 1, [(1, 10000, 100, 0)]))
    rig.do(flow_mod(parse_match("in_port=1"), [of.MeterAction(1), of.Output(2)]))
    assert [m.to_text() for m in rig.sw.tables.meters] == [DROP10M]
    assert rig.sw.tables.rules()[0].to_text().endswith("actions=meter:1,output:2")
    [cfg] = rig.do(multipart(MP.METER_CONFIG, struct.pack("!I4x", mt.OFPM_ALL)))
    assert struct.unpack_from("!HHI", cfg, 16) == (24, mt.KBPS | mt.BURST | mt.STATS, 1)
    assert struct.unpack_from("!HHII", cfg, 24) == (1, 16, 10000, 100)
    [st] = rig.do(multipart(MP.METER, struct.pack("!I4x", 1)))
    mid, length, flows, pin, bin_ = struct.unpack_from("!IH6xIQQ", st, 16)
    assert (mid, length, flows, pin, bin_) == (1, 56, 1, 7, 700)        # FakeSwitch's counters
    assert struct.unpack_from("!QQ", st, 16 + 40) == (0, 0)
    [feat] = rig.do(multipart(MP.METER_FEATURES))
    assert struct.unpack_from("!IIIB", feat, 16) == (mt.MAX_METERS, 6, 0xF, mt.MAX_BANDS)
    [fs] = rig.do(multipart(MP.FLOW, struct.pack("!B3xII4xQQ", 0xFF, 0xFFFFFFFF, 0xFFFFFFFF, 0, 0)
                            + oc.encode_match(parse_match(""))))
    assert struct.pack("!HHI", 6, 8, 1) in fs                           # the meter instruction comes back
    rig.do(meter_mod(2, 0, mt.OFPM_ALL, []))
    assert len(rig.sw.tables) == 0 and len(rig.sw.tables.meters) == 0


@pytest.mark.parametrize("raw, code", [
    (meter_mod(0, mt.KBPS, 1, []), mt.BAD_BAND),
    (meter_mod(0, mt.KBPS, 1, [(3, 5, 0, 0)]), mt.BAD_BAND),
    (meter_mod(1, mt.KBPS, 9, [(1, 5, 0, 0)]), mt.UNKNOWN_METER),
    (meter_mod(0, mt.KBPS, 0xFFFF0001, [(1, 5, 0, 0)]), mt.INVALID_METER),
    (meter_mod(7, mt.KBPS, 1, [(1, 5, 0, 0)]), mt.BAD_COMMAND),
    (flow_mod(parse_match("in_port=1"), [of.MeterAction(4), of.Output(2)]), mt.INVALID_METER),
])
def test_meter_refusals(raw: bytes, code: int) -> None:
    rig = Rig()
    with pytest.raises(OfError) as ei:
        rig.do(raw)
    assert (ei.value.type, ei.value.code) == (ET.METER_MOD_FAILED, code)
    assert len(rig.sw.tables.meters) == 0 and len(rig.sw.tables) == 0
