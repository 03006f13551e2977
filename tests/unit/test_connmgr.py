"""The OpenFlow connection manager over real loopback TCP (no root needed): HELLO negotiation, errors that
keep the connection, inactivity probes, active connections with reconnect, and a fuzzed stream that
never changes the tables nor stops the channel."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctl.openflow import codec as oc
from ctl.openflow.codec import ET, T
from ctl.openflow.connmgr import ConnManager, Target, parse_target
from ctl.pipeline import ofactions as of
from ctl.pipeline.ofmatch import parse_match
from ctl.pipeline.openflow_tables import parse_flow
from tests.unit.ofhelpers import FakeSwitch, flow_mod, msg


class Peer:
    """A controller's end of one connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.s = sock
        self.s.settimeout(5)
        self.framer = oc.Framer()
        self.pending: list[bytes] = []

    def send(self, raw: bytes) -> None:
        self.s.sendall(raw)

    def recv(self, timeout: float = 5.0) -> bytes:
        end = time.monotonic() + timeout
        while not self.pending:
            self.s.settimeout(max(0.01, end - time.monotonic()))
            data = self.s.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.pending += self.framer.feed(data)
        return self.pending.pop(0)

    def expect(self, mtype: int) -> bytes:
        while True:
            m = self.recv()
            if m[1] == mtype:
                return m
            if m[1] != T.ECHO_REQUEST:
                raise AssertionError(f"wanted type {mtype}, got {m[1]}: {m.hex()}")

    def handshake(self) -> None:
        self.expect(T.HELLO)
        self.send(oc.hello())


@pytest.fixture
def mgr() -> Iterator[tuple[ConnManager, FakeSwitch]]:
    sw = FakeSwitch()
    cm = ConnManager(sw, [], [parse_target("ptcp:0", True)], probe_interval=1)
    cm.start()
    try:
        yield cm, sw
    finally:
        cm.stop()


def connect(cm: ConnManager) -> Peer:
    host, port = cm.listen_addresses()[0]
    return Peer(socket.create_connection((host, port), timeout=5))


def test_parse_targets() -> None:
    assert parse_target("tcp:127.0.0.1:6633", False) == Target(False, "127.0.0.1", 6633)
    assert parse_target("tcp:127.0.0.1", False).port == 6653
    assert parse_target("ptcp:6654", True) == Target(True, "127.0.0.1", 6654)
    assert parse_target("ptcp:6654:0.0.0.0", True).host == "0.0.0.0"
    for bad, passive in (("udp:1.2.3.4:5", False), ("tcp::5", False), ("ptcp:x", True), ("tcp:1.2.3.4:0", False)):
        with pytest.raises(ValueError):
            parse_target(bad, passive)


def test_features_and_barrier_after_hello(mgr: tuple[ConnManager, FakeSwitch]) -> None:
    cm, sw = mgr
    p = connect(cm)
    p.handshake()
    p.send(msg(T.FEATURES_REQUEST, xid=7))
    r = p.expect(T.FEATURES_REPLY)
    assert struct.unpack_from("!IQ", r, 4)[1] == 0x1234 and oc.header(r)[3] == 7
    p.send(flow_mod(parse_match("ip"), [of.Output(2)]) + msg(T.BARRIER_REQUEST, xid=9))
    assert oc.header(p.expect(T.BARRIER_REPLY))[3] == 9
    assert len(sw.tables) == 1, "the barrier reply comes after the flow-mod is done"


def test_an_old_version_only_peer_is_refused(mgr: tuple[ConnManager, FakeSwitch]) -> None:
    cm, _ = mgr
    p = connect(cm)
    p.expect(T.HELLO)
    p.send(msg(T.HELLO, version=1))
    err = p.expect(T.ERROR)
    assert struct.unpack_from("!HH", err, 8) == (ET.HELLO_FAILED, oc.HFC_INCOMPATIBLE)
    with pytest.raises((ConnectionError, OSError)):
        p.recv(timeout=3)


def test_errors_keep_the_connection(mgr: tuple[ConnManager, FakeSwitch]) -> None:
    cm, sw = mgr
    p = connect(cm)
    p.handshake()
    p.send(msg(T.GROUP_MOD, b"\0" * 8, xid=3))
    err = p.expect(T.ERROR)
    assert struct.unpack_from("!HH", err, 8) == (ET.BAD_REQUEST, oc.BRC_BAD_TYPE) and oc.header(err)[3] == 3
    assert err[12:20] == msg(T.GROUP_MOD, b"\0" * 8, xid=3)[:8], "the error carries the offending message"
    p.send(msg(T.ECHO_REQUEST, b"still here", xid=4))
    assert p.expect(T.ECHO_REPLY)[8:] == b"still here"


def test_an_idle_peer_is_probed_then_dropped(mgr: tuple[ConnManager, FakeSwitch]) -> None:
    cm, _ = mgr
    p = connect(cm)
    p.handshake()
    m = p.recv(timeout=3)
    assert m[1] == T.ECHO_REQUEST          # silent for one probe interval
    with pytest.raises((ConnectionError, OSError)):
        while True:                        # no answer for another: closed
            p.recv(timeout=4)


def test_active_connection_reconnects_with_backoff() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(10)
    port = srv.getsockname()[1]
    sw = FakeSwitch()
    opened: list[bool] = []
    cm = ConnManager(sw, [Target(False, "127.0.0.1", port)], [], probe_interval=5, on_fail_open=opened.append)
    cm.start()
    try:
        s, _ = srv.accept()
        p = Peer(s)
        p.handshake()
        p.send(msg(T.FEATURES_REQUEST))
        p.expect(T.FEATURES_REPLY)
        assert len(cm.connected()) == 1
        s.close()                                   # the controller goes away ...
        t0 = time.monotonic()
        s2, _ = srv.accept()                        # ... and the switch comes back after its backoff
        assert 0.5 < time.monotonic() - t0 < 5
        Peer(s2).handshake()
        s2.close()
    finally:
        cm.stop()
        srv.close()
    assert opened == [], "fail-open needs three probe intervals without a controller"


def test_standalone_goes_fail_open_without_a_controller() -> None:
    sw = FakeSwitch()
    opened: list[bool] = []
    cm = ConnManager(sw, [Target(False, "127.0.0.1", 9)], [], fail_mode="standalone", probe_interval=1,
                     on_fail_open=opened.append)
    cm.start()
    try:
        deadline = time.monotonic() + 8
        while not opened and time.monotonic() < deadline:
            time.sleep(0.1)
        assert opened == [True] and cm.fail_open
    finally:
        cm.stop()


def test_port_status_on_a_link_change(mgr: tuple[ConnManager, FakeSwitch]) -> None:
    cm, sw = mgr
    p = connect(cm)
    p.handshake()
    p.send(msg(T.BARRIER_REQUEST))
    p.expect(T.BARRIER_REPLY)
    sw.link_down.add(2)
    ps = p.expect(T.PORT_STATUS)
    assert ps[8] == 2 and struct.unpack_from("!I", ps, 16)[0] == 2
    assert struct.unpack_from("!I", ps, 16 + 36)[0] == 1   # OFPPS_LINK_DOWN


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 40), st.binary(max_size=120)), min_size=1, max_size=6))
def test_fuzzed_stream_never_changes_the_tables_nor_stops_the_channel(
        mgr: tuple[ConnManager, FakeSwitch], junk: list[tuple[int, bytes]]) -> None:
    cm, sw = mgr
    if not len(sw.tables):
        sw.tables.add(parse_flow("priority=5,ip,actions=output:2"))
    before = [r.to_text() for r in sw.tables.rules()]
    p = connect(cm)
    p.handshake()
    for mtype, body in junk:
        if mtype in (T.FLOW_MOD, T.PACKET_OUT, T.SET_CONFIG, T.ROLE_REQUEST, T.SET_ASYNC, T.HELLO):
            mtype = T.MULTIPART_REQUEST if mtype != T.FLOW_MOD else mtype
        if mtype == T.FLOW_MOD:
            body = body[:40]  # too short to be a flow-mod: refused, nothing added
        p.send(msg(mtype, body, xid=11))
    p.send(msg(T.ECHO_REQUEST, b"ok", xid=12))
    while True:
        m = p.recv()
        if m[1] == T.ECHO_REPLY and oc.header(m)[3] == 12:
            break
    assert [r.to_text() for r in sw.tables.rules()] == before
    p.s.close()
