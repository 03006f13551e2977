"""Every datapath action, table-driven: input packet, flow, expected verdict, expected output bytes and
expected counter deltas (as Katran's and Cilium's BPF tests are written). Expected packets are built by
scapy with fresh checksums, so every incremental checksum update is checked bit for bit."""

from __future__ import annotations

import pytest

from ctl.datapath.dpif import DpOutput
from ctl.datapath.flowkey import mask_for, parse
from ctl.datapath.progrun import XDP_DROP, XDP_REDIRECT
from tests.action_cases import CASES, Case
from tests.bpf.conftest import Bench


@pytest.mark.parametrize("case", CASES, ids=[c.desc for c in CASES])
def test_action(tb: Bench, case: Case) -> None:
    frame = bytes(case.pkt)
    tb.dp.put_flow(parse(frame, 1), mask_for("in_port"), case.actions)
    before, ports_before = tb.stats(), tb.port_stats()

    r = tb.run(frame, in_port=1)

    assert r.verdict_name == {XDP_DROP: "DROP", XDP_REDIRECT: "REDIRECT"}[case.verdict]
    if case.verdict == XDP_REDIRECT:
        want = bytes(case.out) if case.out is not None else frame
        assert r.frame.hex() == want.hex()
    delta = tb.stats().delta(before)
    assert (delta.megaflow_hits, delta.packets) == (1, 1)
    assert {k: v for k, v in delta.drops.items() if v} == case.drops
    outputs = [a.port for a in case.actions if isinstance(a, DpOutput)]
    tx = case.tx if case.tx is not None else (
        {outputs[0]: 1} if case.verdict == XDP_REDIRECT and len(outputs) == 1 else {})
    ports = tb.port_stats()
    assert ports[1].rx_packets - ports_before[1].rx_packets == 1
    assert {p: ports[p].tx_packets - ports_before[p].tx_packets for p in ports
            if ports[p].tx_packets != ports_before[p].tx_packets} == tx
