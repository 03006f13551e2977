"""Helpers for the OpenFlow unit tests: messages a controller sends, built byte by byte, and a stand-in
switch (real OpenFlowTables, no datapath) that records what the channel asked of it."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from ctl.openflow import codec as oc
from ctl.pipeline import ofactions as of
from ctl.pipeline.groups import Group
from ctl.pipeline.meters import Meter
from ctl.pipeline.ofmatch import Match
from ctl.pipeline.openflow_tables import OpenFlowTables


def msg(mtype: int, body: bytes = b"", xid: int = 1, version: int = 4) -> bytes:
    return struct.pack("!BBHI", version, mtype, 8 + len(body), xid) + body


def flow_mod(match: Match | None = None, actions: list[of.OfAction] | None = None, *, command: int = 0,
             table: int = 0, priority: int = 100, cookie: int = 0, cookie_mask: int = 0, idle: int = 0,
             hard: int = 0, buffer_id: int = oc.OFP_NO_BUFFER, out_port: int = oc.OFPP_ANY,
             out_group: int = oc.OFPG_ANY, flags: int = 0, xid: int = 1) -> bytes:
    body = struct.pack("!QQBBHHHIIIH2x", cookie, cookie_mask, table, command, idle, hard, priority, buffer_id,
                       out_port, out_group, flags)
    body += oc.encode_match(match or Match()) + oc.encode_instructions(actions or [])
    return msg(oc.T.FLOW_MOD, body, xid)


def packet_out(data: bytes, actions: list[of.OfAction], in_port: int = oc.OFPP_CONTROLLER,
               buffer_id: int = oc.OFP_NO_BUFFER) -> bytes:
    acts = oc.encode_actions(actions)
    return msg(oc.T.PACKET_OUT, struct.pack("!IIH6x", buffer_id, in_port, len(acts)) + acts + data)


def multipart(mtype: int, body: bytes = b"", xid: int = 1) -> bytes:
    return msg(oc.T.MULTIPART_REQUEST, struct.pack("!HH4x", mtype, 0) + body, xid)


def flow_stats_request(match: Match | None = None, table: int = oc.OFPTT_ALL, out_port: int = oc.OFPP_ANY,
                       cookie: int = 0, cookie_mask: int = 0, mtype: int = oc.MP.FLOW) -> bytes:
    body = struct.pack("!B3xII4xQQ", table, out_port, oc.OFPG_ANY, cookie, cookie_mask)
    return multipart(mtype, body + oc.encode_match(match or Match()))


class FakeSwitch:
    """SwitchOps over real tables; packet-outs are recorded."""

    def __init__(self) -> None:
        self.name = "fake"
        self.datapath_id = 0x1234
        self.tables = OpenFlowTables()
        self.packet_outs: list[tuple[int, list[of.OfAction], bytes]] = []
        self.ports = {1: "p1", 2: "p2", 3: "p3"}
        self.link_down: set[int] = set()

    def change_tables(self, fn: Callable[[OpenFlowTables], Any]) -> Any:
        return fn(self.tables)

    def read_tables(self, fn: Callable[[OpenFlowTables], Any]) -> Any:
        return fn(self.tables)

    def port_numbers(self) -> set[int]:
        return set(self.ports)

    def port_descs(self) -> list[oc.PortDesc]:
        return [oc.PortDesc(n, bytes([2, 0, 0, 0, 0, n]), name, 0, 1 if n in self.link_down else 4)
                for n, name in self.ports.items()]

    def port_counters(self) -> list[oc.PortCounters]:
        return [oc.PortCounters(n, rx_packets=10 * n) for n in self.ports]

    def packet_out(self, in_port: int, actions: list[of.OfAction], data: bytes) -> None:
        self.packet_outs.append((in_port, actions, data))

    def bucket_stats(self, group: Group) -> list[tuple[int, int]]:
        return [(b.n_packets, b.n_bytes) for b in group.buckets]

    def meter_stats(self, meter: Meter) -> list[tuple[int, int]]:
        return [(7, 700)] + [(n, 100 * n) for n in range(len(meter.bands))]


def exhaust_one_accept(address: tuple[str, int], failed: Callable[[], int]) -> None:
    """Connect to address with the descriptor table full but for the client's own socket, so the server's
    accept() has none; returns once failed() (the server's count of failed accepts) is above zero or 3 s
    passed. The open-file limit is restored."""
    import os
    import resource
    import socket
    import time

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[Any] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(int(fd) for fd in os.listdir("/proc/self/fd")) + 16, hard))
        while True:
            try:
                held.append(open("/dev/null"))  # noqa: SIM115 (held open on purpose)
            except OSError:
                break
        held.pop().close()   # one left: the client's socket takes it
        held.append(socket.create_connection(address, timeout=2))
        deadline = time.monotonic() + 3
        while failed() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for f in held:
            f.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
