"""The OpenFlow connection manager over real loopback TCP (no root needed): HELLO negotiation, errors that
keep the connection, inactivity probes, active connections with reconnect, and a fuzzed stream that
never changes the tables nor stops the channel."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctl.openflow import codec as oc
from ctl.openflow.codec import ET, T
from ctl.openflow.connmgr import PAUSE_READING, ChannelConfig, ConnManager, Target, TlsConfig, parse_target
from ctl.pipeline import ofactions as of
from ctl.pipeline.ofmatch import parse_match
from ctl.pipeline.openflow_tables import parse_flow
from tests.pki import Pki, make_pki
from tests.unit.ofhelpers import FakeSwitch, exhaust_one_accept, flow_mod, msg


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
    assert parse_target("tcp:127.0.0.1:6633", False) == Target("tcp", False, "127.0.0.1", 6633)
    assert parse_target("tcp:127.0.0.1", False).port == 6653
    assert parse_target("ptcp:6654", True) == Target("tcp", True, "127.0.0.1", 6654)
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
    p.send(msg(T.TABLE_MOD, b"\0" * 8, xid=3))
    err = p.expect(T.ERROR)
    assert struct.unpack_from("!HH", err, 8) == (ET.BAD_REQUEST, oc.BRC_BAD_TYPE) and oc.header(err)[3] == 3
    assert err[12:20] == msg(T.TABLE_MOD, b"\0" * 8, xid=3)[:8], "the error carries the offending message"
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
    cm = ConnManager(sw, [Target("tcp", False, "127.0.0.1", port)], [], probe_interval=5, on_fail_open=opened.append)
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
    cm = ConnManager(sw, [Target("tcp", False, "127.0.0.1", 9)], [], fail_mode="standalone", probe_interval=1,
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
    cm.ports_changed()   # what the daemon's LinkMonitor calls on the kernel's link event
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


# --- who may connect, and what a client can cost ------------------------------------------------------------


def test_parse_secure_targets_and_the_channel_checks() -> None:
    assert parse_target("ssl:10.0.0.9", False) == Target("ssl", False, "10.0.0.9", 6653)
    assert str(parse_target("pssl:6655", True)) == "pssl:6655:127.0.0.1"
    assert parse_target("punix:/run/x.mgmt", True) == Target("unix", True, path="/run/x.mgmt")
    assert parse_target("unix:/run/ctl.sock", False).path == "/run/ctl.sock"
    with pytest.raises(ValueError, match="absolute"):
        parse_target("punix:x.mgmt", True)
    with pytest.raises(ValueError, match="allow-remote-plain"):
        ChannelConfig(listen=["ptcp:6654:0.0.0.0"]).targets()
    assert ChannelConfig(listen=["ptcp:6654:0.0.0.0"], allow_remote_plain=True).targets()[1][0].host == "0.0.0.0"
    with pytest.raises(ValueError, match="--private-key, --certificate, --ca-cert"):
        ChannelConfig(controllers=["ssl:127.0.0.1:6653"]).targets()
    with pytest.raises(ValueError, match="--ca-cert /nonexistent/ca.pem: No such file"):
        ChannelConfig(listen=["pssl:0"], tls=TlsConfig(__file__, __file__, "/nonexistent/ca.pem")).targets()
    with pytest.raises(ValueError, match="no ssl: controller or pssl: listener"):
        ChannelConfig(tls=TlsConfig("k", "c", "ca")).targets()
    _, listeners = ChannelConfig(mgmt="/run/xdpswitch/s.mgmt").targets()
    assert [str(t) for t in listeners] == ["punix:/run/xdpswitch/s.mgmt"]
    assert listeners[0].exposure == "root only"


def test_the_connection_cap_refuses_and_counts() -> None:
    sw = FakeSwitch()
    cm = ConnManager(sw, [], [parse_target("ptcp:0", True)], probe_interval=5, max_connections=3)
    cm.start()
    try:
        peers = [connect(cm) for _ in range(5)]
        answered = 0
        for p in peers:
            try:
                p.handshake()
                p.send(msg(T.ECHO_REQUEST, xid=5))
                p.expect(T.ECHO_REPLY)
                answered += 1
            except (ConnectionError, OSError):
                pass
        assert answered == 3
        assert cm.stats.max_connections == 2
    finally:
        cm.stop()


def test_a_trickle_that_never_makes_a_message_is_dropped(mgr: tuple[ConnManager, FakeSwitch]) -> None:
    cm, _ = mgr
    slow = connect(cm)
    good = connect(cm)
    slow.expect(T.HELLO)
    good.handshake()
    header = msg(T.ECHO_REQUEST, b"x" * 100)
    closed = False
    for i in range(len(header)):   # one byte every 0.3 s: 2 probe intervals pass before a message is whole
        try:
            slow.s.sendall(header[i:i + 1])
        except OSError:
            closed = True
            break
        time.sleep(0.3)
        good.send(msg(T.ECHO_REQUEST, xid=i))   # an ordinary peer stays
    if not closed:
        with pytest.raises((ConnectionError, OSError)):
            while True:
                slow.recv(timeout=3)
    assert cm.stats.inactive == 1
    good.send(msg(T.ECHO_REQUEST, b"alive", xid=99))
    while (r := good.expect(T.ECHO_REPLY)) and oc.header(r)[3] != 99:
        pass


def test_a_peer_that_never_reads_is_bounded_then_dropped_and_keeps_its_flow_mods(
        mgr: tuple[ConnManager, FakeSwitch]) -> None:
    """It sends big ECHO_REQUESTs and reads nothing: the replies queue up to the backpressure mark, then its
    messages are not read, and with no complete message for two probe intervals it is closed. The flow-mod
    it sent first stays in the table."""
    cm, sw = mgr
    p = connect(cm)
    p.handshake()
    p.send(flow_mod(parse_match("ip"), [of.Output(2)]) + msg(T.BARRIER_REQUEST, xid=2))
    p.expect(T.BARRIER_REPLY)
    echo = msg(T.ECHO_REQUEST, b"e" * 60000)
    highest = 0
    t_end = time.monotonic() + 8
    p.s.setblocking(False)
    closed = False
    stream = bytearray()
    while time.monotonic() < t_end and not closed:
        if len(stream) < len(echo):
            stream += echo   # whole messages only: a send may take part of one
        try:
            del stream[:p.s.send(stream)]
        except BlockingIOError:
            time.sleep(0.05)
        except OSError:
            closed = True
        with cm.lock:
            highest = max([highest, *(c.pending() for c in cm.conns)])
    assert closed, "a peer that never reads is closed"
    print(f"\nnon-reader: at most {highest} bytes queued for it, closed after {time.monotonic() - t_end + 8:.1f} s")
    assert cm.stats.inactive == 1
    assert highest <= PAUSE_READING + 65536 + len(echo), f"{highest} bytes queued for it"
    assert len(sw.tables) == 1


def test_out_of_descriptors_fails_one_accept_not_the_channel(mgr: tuple[ConnManager, FakeSwitch]) -> None:
    cm, _ = mgr
    exhaust_one_accept(cm.listen_addresses()[0], lambda: cm.stats.accept_failed)
    assert cm.stats.accept_failed >= 1
    assert cm.is_alive()
    time.sleep(1.2)   # the listener rests a second, then accepts again
    p = connect(cm)
    p.handshake()
    p.send(msg(T.ECHO_REQUEST, xid=3))
    assert oc.header(p.expect(T.ECHO_REPLY))[3] == 3


# --- TLS --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Pki]:
    """Two unrelated PKIs made by ovs-pki: the switch's, and an attacker's."""
    return make_pki(tmp_path_factory.mktemp("pki")), make_pki(tmp_path_factory.mktemp("other-pki"))


def switch_tls(pki: Pki) -> TlsConfig:
    return TlsConfig(str(pki.key("sc")), str(pki.cert("sc")), str(pki.controllerca))


def peer_context(pki: Pki, server: bool = False, cert: bool = True) -> ssl.SSLContext:
    """A controller's (or ovs-ofctl's) TLS context: its certificate from pki, the switch CA to trust."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(pki.switchca)
    if cert:
        ctx.load_cert_chain(pki.cert("ctl"), pki.key("ctl"))
    return ctx


@pytest.fixture
def tls_mgr(pkis: tuple[Pki, Pki]) -> Iterator[ConnManager]:
    cm = ConnManager(FakeSwitch(), [], [parse_target("pssl:0", True)], probe_interval=2, tls=switch_tls(pkis[0]))
    cm.start()
    try:
        yield cm
    finally:
        cm.stop()


def tls_connect(cm: ConnManager, ctx: ssl.SSLContext) -> Peer:
    raw = socket.create_connection(cm.listen_addresses()[0], timeout=5)
    return Peer(ctx.wrap_socket(raw))


def test_pssl_serves_a_peer_with_a_certificate_from_the_ca(tls_mgr: ConnManager, pkis: tuple[Pki, Pki]) -> None:
    p = tls_connect(tls_mgr, peer_context(pkis[0]))
    p.handshake()
    p.send(msg(T.FEATURES_REQUEST, xid=7))
    assert struct.unpack_from("!IQ", p.expect(T.FEATURES_REPLY), 4)[1] == 0x1234
    p.send(flow_mod(parse_match("ip"), [of.Output(2)]) + msg(T.BARRIER_REQUEST, xid=9))
    assert oc.header(p.expect(T.BARRIER_REPLY))[3] == 9
    big = msg(T.ECHO_REQUEST, b"z" * 60000, xid=11)   # more than one TLS record each way
    p.send(big * 3)
    for _ in range(3):
        assert p.expect(T.ECHO_REPLY)[8:] == b"z" * 60000
    assert [c["tls"] for c in tls_mgr.show()] == [True]


@pytest.mark.parametrize("who", ["another CA", "no certificate", "plain TCP"])
def test_pssl_refuses_a_peer_the_ca_did_not_sign(tls_mgr: ConnManager, pkis: tuple[Pki, Pki], who: str) -> None:
    if who == "plain TCP":
        p = connect(tls_mgr)
        p.send(oc.hello())
        with pytest.raises((ConnectionError, OSError)):
            p.recv(timeout=5)
    else:
        ctx = peer_context(pkis[1] if who == "another CA" else pkis[0], cert=who != "no certificate")
        ctx.verify_mode = ssl.CERT_NONE   # the attacker does not care who the switch is
        with pytest.raises((ConnectionError, OSError)):
            p = tls_connect(tls_mgr, ctx)   # TLS 1.3: the refusal may come with the first read
            p.handshake()
            p.send(flow_mod(parse_match("ip"), [of.Output(2)]))
            p.recv(timeout=5)
    deadline = time.monotonic() + 3
    while tls_mgr.stats.tls_failed == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tls_mgr.stats.tls_failed == 1
    assert len(tls_mgr.sw.tables) == 0   # type: ignore[attr-defined]


def _tls_controller(ctx: ssl.SSLContext) -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(10)
    return srv, srv.getsockname()[1]


@pytest.mark.parametrize("same_ca", [True, False])
def test_ssl_controller_is_verified(pkis: tuple[Pki, Pki], same_ca: bool) -> None:
    """The switch connects out over TLS: to a controller whose certificate its CA signed, OpenFlow flows;
    to one from another CA, the switch refuses the handshake and retries later."""
    ctrl_pki = pkis[0] if same_ca else pkis[1]
    ctx = peer_context(ctrl_pki, server=True)
    ctx.load_verify_locations(pkis[0].switchca)
    srv, port = _tls_controller(ctx)
    cm = ConnManager(FakeSwitch(), [Target("ssl", False, "127.0.0.1", port)], [], probe_interval=5,
                     tls=switch_tls(pkis[0]))
    cm.start()
    try:
        raw, _ = srv.accept()
        if same_ca:
            p = Peer(ctx.wrap_socket(raw, server_side=True))
            p.handshake()
            p.send(msg(T.FEATURES_REQUEST, xid=3))
            assert oc.header(p.expect(T.FEATURES_REPLY))[3] == 3
            assert [c["tls"] for c in cm.show()] == [True]
        else:
            with pytest.raises((ConnectionError, OSError)):
                p = Peer(ctx.wrap_socket(raw, server_side=True))
                p.recv(timeout=5)
            deadline = time.monotonic() + 3
            while cm.stats.tls_failed == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert cm.stats.tls_failed == 1 and cm.show() == []
            srv.accept()[0].close()   # it tries again (backoff 1 s)
    finally:
        cm.stop()
        srv.close()


def test_packet_ins_over_the_controller_rate_are_dropped_and_counted() -> None:
    """--controller-rate 100 (a burst of 25): 200 packet-ins at once reach the controller 25 times; the rest are
    counted per connection, not sent."""
    from ctl.datapath.dpif import DpController

    sw = FakeSwitch()
    cm = ConnManager(sw, [], [parse_target("ptcp:0", True)], probe_interval=5, controller_rate=100)
    cm.start()
    try:
        p = connect(cm)
        p.handshake()
        p.send(msg(T.FEATURES_REQUEST, xid=2))
        p.expect(T.FEATURES_REPLY)
        for _ in range(200):
            cm.packet_in(DpController(0, 0xFFFF), 1, b"\2" * 60)
        got = 0
        with contextlib.suppress(OSError):   # a quiet half second: everything sent has arrived
            while True:
                got += p.recv(timeout=0.5)[1] == T.PACKET_IN
        [c] = cm.show()
        assert 25 <= got <= 27 and c["packet_ins_rate_limited"] == 200 - got, (got, c)
    finally:
        cm.stop()
    with pytest.raises(ValueError, match="controller rate"):
        ConnManager(sw, [], [], controller_rate=-1)
