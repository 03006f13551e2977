"""A flow-mod against megaflows in the real fast path: only the megaflows it can affect are translated again;
the others keep their slot and their counters, and packets go where the new tables say."""

from __future__ import annotations

from collections.abc import Sequence

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from ctl.datapath.dpif import DpOutput
from ctl.datapath.xsk import Upcall
from ctl.pipeline.ofmatch import flow_of
from ctl.pipeline.openflow_tables import OpenFlowTables, parse_flow
from ctl.udpif.revalidator import Revalidator
from ctl.udpif.upcall import Udpif
from tests.bpf.conftest import Bench

PORTS = range(1000, 1100)


def udp(dport: int) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst="10.0.0.2")
                 / UDP(sport=1000, dport=dport) / (b"x" * 18))


def test_a_flow_mod_translates_only_the_megaflows_it_affects(tb: Bench) -> None:
    tables = OpenFlowTables()
    tables.add_many(parse_flow(f"priority=100,udp,tp_dst={p},actions=output:2") for p in PORTS)

    def tx(_port: int, frames: Sequence[bytes]) -> int:
        return len(frames)

    u = Udpif(tb.dp, tables, tx, lambda: [1, 2, 3])
    rv = Revalidator(u, 200000, ports=lambda: {1, 2, 3})
    u.handle([Upcall(1, 1, 0, udp(p)) for p in PORTS])
    for p in PORTS:   # one packet each through XDP: every megaflow has a counter to keep
        tb.run(udp(p))
    before = {flow_of(f.key)["tp_dst"]: f for f in tb.dp.dump_flows()}
    assert len(before) == len(PORTS) and all(f.packets == 1 for f in before.values())

    # a rule no megaflow's packets can meet, then one that takes port 1042's
    u.change_tables(lambda t: t.add(parse_flow("priority=200,udp,tp_dst=7,actions=output:3")), wait=True)
    assert rv.swept == 0
    u.change_tables(lambda t: t.add(parse_flow("priority=200,udp,tp_dst=1042,actions=output:3")), wait=True)
    assert rv.swept == 1 and not u.pending

    after = {flow_of(f.key)["tp_dst"]: f for f in tb.dp.dump_flows()}
    assert after.keys() == before.keys()
    changed = {p for p in after if (after[p].flow_idx, after[p].actions) != (before[p].flow_idx, before[p].actions)}
    assert changed == {1042} and after[1042].actions == [DpOutput(3)]
    assert all(after[p].packets == 1 for p in after if p != 1042)   # counters kept where nothing changed

    ports = tb.port_stats()
    tb.run(udp(1042))
    tb.run(udp(1043))
    now = tb.port_stats()
    assert now[3].tx_packets - ports[3].tx_packets == 1
    assert now[2].tx_packets - ports[2].tx_packets == 1
