"""The user-space executor runs the fast path's own action table (tests/action_cases.py) to the same bytes
and the same drop reasons, and emits at every output (which the fast path cannot)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from ctl.datapath import dpif
from ctl.datapath.execute import FLOOD, execute
from tests.action_cases import CASES, XDP_REDIRECT, Case

# "userspace" is the fast path's way up to the handlers; the executor never runs it
EXEC_CASES = [c for c in CASES if not any(isinstance(a, dpif.DpUpcall) for a in c.actions)]


@pytest.mark.parametrize("case", EXEC_CASES, ids=[c.desc for c in EXEC_CASES])
def test_executor_agrees_with_the_fast_path(case: Case) -> None:
    frame = bytes(case.pkt)
    res = execute(frame, case.actions)
    if case.verdict == XDP_REDIRECT:
        want = bytes(case.out) if case.out is not None else frame
        assert res.emits and all(out.hex() == want.hex() for _, out in res.emits)
        assert res.drop == 0
    elif case.drops.get("no_port"):
        assert [p for p, _ in res.emits] == [9]  # the handler finds no port 9 and counts the drop
    else:
        assert not res.emits
        assert {dpif.DropReason(res.drop).name.lower(): 1} == case.drops


def test_emits_at_each_output_with_changes_between() -> None:
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(ttl=9) / UDP() / b"x")
    res = execute(frame, [dpif.DpOutput(2), dpif.DpSetEthDst("02:00:00:00:00:09"), dpif.DpDecTtl(), dpif.DpOutput(3),
                          dpif.DpFlood()])
    assert [p for p, _ in res.emits] == [2, 3, FLOOD]
    assert Ether(res.emits[0][1]).dst == "02:00:00:00:00:02"
    second = Ether(res.emits[1][1])
    assert second.dst == "02:00:00:00:00:09" and second[IP].ttl == 8
    fresh = second.copy()
    del fresh[IP].chksum
    assert Ether(bytes(fresh))[IP].chksum == second[IP].chksum


def test_controller_takes_the_packet_as_modified_so_far() -> None:
    ctrl = dpif.DpController(reason=0, max_len=128, table_id=3, cookie=7)
    res = execute(bytes(Ether() / IP()), [dpif.DpSetEthDst("02:00:00:00:00:09"), ctrl, dpif.DpOutput(2)])
    assert [c for c, _ in res.controller] == [ctrl] and not res.drop
    assert Ether(res.controller[0][1]).dst == "02:00:00:00:00:09"
    assert [p for p, _ in res.emits] == [2]
