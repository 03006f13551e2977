"""OpenFlow connections: to controllers (active) and from management tools (passive).

As OVS's connmgr and rconn. Targets are written as ovs-vsctl writes them:
 - active (``--controller``): ``tcp:HOST[:PORT]``, ``ssl:HOST[:PORT]``, ``unix:PATH``; reconnected with
   exponential backoff (1 s doubling to ``max_backoff``, 8 s);
 - passive (``--listen``): ``ptcp:[PORT][:IP]`` (loopback unless an IP is given), ``pssl:[PORT][:IP]``,
   ``punix:PATH``. The daemon always listens on ``punix:/run/xdpswitch/NAME.mgmt`` (as OVS's
   ``BRIDGE.mgmt``): a socket only root can open, which ``ovs-ofctl ... unix:PATH`` uses.
Who can reach what is in docs/security.md. Plain TCP on a non-loopback address is refused unless the
operator allows it (``allow_remote_plain``), and warned about: anyone who reaches it can change flows.
``ssl:`` and ``pssl:`` use TLS (1.2 or later) with the switch's private key and certificate, and verify the
peer's certificate against the CA certificate (as ovs-vswitchd's ``--private-key``, ``--certificate``,
``--ca-cert``; ``ovs-pki`` lays the files out); a peer without a certificate signed by it is refused.

Every connection starts with HELLO and keeps OpenFlow 1.3 only; a peer that cannot speak it gets
HELLO_FAILED/INCOMPATIBLE and is closed. A connection that has not completed a message for
``probe_interval`` gets an ECHO_REQUEST; for twice that, it is closed (an active one is retried). Bytes
that never make a message do not keep a connection alive, and neither does a TLS handshake that does not
finish within ``probe_interval``.

Limits (a client can cost the daemon only so much):
 - at most ``max_connections`` connections (beyond that an accepted socket is closed at once, logged and
   counted); a failed accept (out of descriptors) is counted and pauses that listener for a second, it
   never stops the channel;
 - backpressure as OVS's ofconn: while a connection has more than ``PAUSE_READING`` bytes of replies the
   peer has not taken, its messages are not read; a peer that neither reads nor sends is then closed by
   the inactivity rule, and one whose backlog passes ``MAX_OUTPUT`` is closed at once. Every message that
   was read was handled whole: nothing it changed in the tables is lost when it is closed;
 - packet-ins beyond ``MAX_BACKLOG`` bytes of backlog are dropped and counted, not queued.

One thread runs every socket (a selector), and does all I/O on TLS connections (an SSL object must not be
read and written from two threads). Messages are decoded by ``ctl/openflow/codec/`` and handled by
``ctl/openflow/ofproto.py`` in the order they arrive, so a BARRIER_REPLY means everything before it is done.
Anything refused is answered with OFPT_ERROR and the connection goes on; only a stream that cannot be
cut into messages any more (a length below 8) is closed. Asynchronous messages (PACKET_IN, FLOW_REMOVED,
PORT_STATUS) may be queued from other threads (the upcall handlers).

Fail mode (as OVS's fail-open): with controllers configured, in ``standalone`` mode, once no controller
has been connected for three probe intervals the switch falls back to NORMAL for every packet, and goes
back to the tables when a controller connects; in ``secure`` mode it keeps to the installed flows.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import selectors
import socket
import ssl
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ctl.common.loops import LoopErrors
from ctl.common.unixctl import Unixctl
from ctl.datapath import dpif
from ctl.openflow import codec as oc
from ctl.openflow.codec import ET, OfError
from ctl.openflow.ofproto import ConnState, OfProto, SwitchOps
from ctl.pipeline.meters import TokenBucket

log = logging.getLogger(__name__)

DEFAULT_PROBE_INTERVAL = 5.0
MAX_BACKOFF = 8.0
MAX_BACKLOG = 4 << 20          # packet-ins queued for one connection at most (bytes)
PAUSE_READING = 1 << 20        # stop reading a connection while this much of its output is queued
MAX_OUTPUT = 64 << 20          # close a connection whose queued output passes this
DEFAULT_MAX_CONNECTIONS = 100
PORT_POLL_S = 10.0             # ports are compared on every link event, and at least this often
TLS_CHUNK = 16384              # one TLS record per write, so a retried write is the same write
FAIL_MODES = ("standalone", "secure")
OFP_TCP_PORT = 6653
ACTIVE = ("tcp", "ssl", "unix")
PASSIVE = ("ptcp", "pssl", "punix")


def check_channel(fail_mode: str, probe_interval: float, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
    if fail_mode not in FAIL_MODES:
        raise ValueError(f"fail-mode {fail_mode!r}: one of {', '.join(FAIL_MODES)}")
    if not 1 <= probe_interval <= 3600:
        raise ValueError(f"inactivity probe {probe_interval} s is out of range 1..3600")
    if not 1 <= max_connections <= 65536:
        raise ValueError(f"max connections {max_connections} is out of range 1..65536")


@dataclass(frozen=True)
class Target:
    """Where to connect or listen: kind is tcp, ssl or unix; passive for a listener."""

    kind: str
    passive: bool
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        prefix = ("p" if self.passive else "") + self.kind
        if self.kind == "unix":
            return f"{prefix}:{self.path}"
        return f"{prefix}:{self.port}:{self.host}" if self.passive else f"{prefix}:{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        return self.kind == "unix" or ipaddress.ip_address(self.host).is_loopback

    @property
    def exposure(self) -> str:
        """Who can change flows through it (for the start-up log and ``ofctl show``)."""
        if self.kind == "unix":
            return "root only"
        if self.kind == "ssl":
            return "TLS, peers with a certificate from the CA"
        return "plain TCP: any local user" if self.loopback else "plain TCP: any host that reaches it"


def parse_target(text: str, passive: bool) -> Target:
    kind, _, rest = text.partition(":")
    kinds = PASSIVE if passive else ACTIVE
    if kind not in kinds:
        forms = ("ptcp:[PORT][:IP], pssl:[PORT][:IP] or punix:PATH" if passive
                 else "tcp:HOST[:PORT], ssl:HOST[:PORT] or unix:PATH")
        raise ValueError(f"{text!r}: expected {forms}")
    kind = kind[1:] if passive else kind
    if kind == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"{text!r}: the socket's path must be absolute")
        return Target("unix", passive, path=rest)
    if passive:
        port_s, _, host = rest.partition(":")
        host = host or "127.0.0.1"
    else:
        host, _, port_s = rest.rpartition(":") if rest.count(":") == 1 else (rest, "", "")
        if not host:
            raise ValueError(f"{text!r}: no host")
    port_s = port_s or str(OFP_TCP_PORT)
    if not port_s.isdigit() or not 0 <= int(port_s) < 65536 or (not passive and int(port_s) == 0):
        raise ValueError(f"{text!r}: bad port {port_s!r}")
    try:
        socket.inet_aton(host)
    except OSError:
        if not passive:
            try:
                host = socket.gethostbyname(host)
            except OSError:
                raise ValueError(f"{text!r}: cannot resolve {host!r}") from None
        else:
            raise ValueError(f"{text!r}: {host!r} is not an IPv4 address") from None
    return Target(kind, passive, host, int(port_s))


@dataclass(frozen=True)
class TlsConfig:
    """The switch's TLS files (ovs-vswitchd's --private-key, --certificate, --ca-cert). With ovs-pki's layout
    (``ovs-pki init; ovs-pki req+sign sc switch``): sc-privkey.pem, sc-cert.pem, and controllerca/cacert.pem
    to verify controllers by."""

    private_key: str | None = None
    certificate: str | None = None
    ca_cert: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.private_key or self.certificate or self.ca_cert)

    def contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """(server, client) contexts, both verifying the peer; ValueError naming the file at fault."""
        missing = [opt for opt, v in (("--private-key", self.private_key), ("--certificate", self.certificate),
                                      ("--ca-cert", self.ca_cert)) if not v]
        if missing:
            raise ValueError(f"ssl: and pssl: need {', '.join(missing)} (the switch's key, its certificate and "
                             "the CA that signs its peers')")
        assert self.private_key and self.certificate and self.ca_cert
        for opt, f in (("--private-key", self.private_key), ("--certificate", self.certificate),
                       ("--ca-cert", self.ca_cert)):
            try:
                Path(f).read_bytes()
            except OSError as e:
                raise ValueError(f"{opt} {f}: {e.strerror}") from None
        out = []
        for purpose in (ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS_CLIENT):
            ctx = ssl.SSLContext(purpose)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.check_hostname = False   # as OVS: the CA vouches for the peer, not a host name
            ctx.verify_mode = ssl.CERT_REQUIRED
            try:
                ctx.load_cert_chain(self.certificate, self.private_key)
            except ssl.SSLError as e:
                raise ValueError(f"--certificate {self.certificate} with --private-key {self.private_key}: "
                                 f"{e.reason or e}") from None
            try:
                ctx.load_verify_locations(self.ca_cert)
            except ssl.SSLError as e:
                raise ValueError(f"--ca-cert {self.ca_cert}: {e.reason or e}") from None
            out.append(ctx)
        return out[0], out[1]


@dataclass
class ConnStats:
    rx_msgs: int = 0
    tx_msgs: int = 0
    errors_sent: int = 0
    packet_ins: int = 0
    packet_ins_dropped: int = 0
    packet_ins_rate_limited: int = 0   # over the controller rate limit (--controller-rate)


@dataclass
class ChannelStats:
    """Connections the channel refused or closed, by reason (counted, shown in ``ofctl show`` and the
    metrics as xdpswitch_openflow_refused_total{reason})."""

    max_connections: int = 0    # accepted beyond the cap and closed at once
    accept_failed: int = 0      # accept() failed (out of descriptors, ...)
    tls_failed: int = 0         # TLS handshake failed (no certificate, another CA, not TLS at all)
    inactive: int = 0           # no complete message in twice the probe interval (or no handshake in one)
    not_reading: int = 0        # output backlog over MAX_OUTPUT

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class Connection:
    """One OpenFlow connection (OVS: struct ofconn over an rconn)."""

    def __init__(self, sock: socket.socket, peer: str, target: Target | None, probe_interval: float,
                 loop_thread: int | None = None, tls: bool = False) -> None:
        self.sock = sock
        self.peer = peer
        self.target = target            # the controller it was made for (None: accepted by a listener)
        self.framer = oc.Framer()
        self.state = ConnState()
        self.out = bytearray()
        self.lock = threading.Lock()
        self.negotiated = False
        self.closed = False
        self.close_reason = "connection closed"
        self.last_alive = time.monotonic()   # a complete message came, or the peer took queued output
        self.probe_sent = False
        self.probe_interval = probe_interval
        self.stats = ConnStats()
        self.limiter: TokenBucket | None = None   # packet-ins to this connection (the channel's controller rate)
        self.connected_at = time.monotonic()
        self.tls = tls
        self.handshaking = tls
        self.handshake_wants = selectors.EVENT_READ
        self.loop_thread = loop_thread       # TLS: only this thread touches the socket

    @property
    def is_controller(self) -> bool:
        return self.target is not None

    def send(self, data: bytes, droppable: bool = False) -> bool:
        """Queue data and write what the socket takes now; False if dropped (closed, or a droppable message
        over the backlog). A backlog over MAX_OUTPUT closes the connection: the peer does not read."""
        with self.lock:
            if self.closed:
                return False
            if droppable and len(self.out) > MAX_BACKLOG:
                return False
            self.out += data
            self.stats.tx_msgs += 1
            if len(self.out) > MAX_OUTPUT:
                self.closed = True
                self.close_reason = f"not reading: over {MAX_OUTPUT >> 20} MiB of output queued"
                return False
            if not self.tls or threading.get_ident() == self.loop_thread:
                self._flush_locked()
            return True

    def flush(self) -> bool:
        """Write what the socket takes; True if something was written."""
        with self.lock:
            before = len(self.out)
            self._flush_locked()
            return len(self.out) < before

    def _flush_locked(self) -> None:
        while self.out and not self.closed and not self.handshaking:
            try:
                n = self.sock.send(self.out[:TLS_CHUNK] if self.tls else self.out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            except OSError as e:
                self.closed = True
                self.close_reason = f"send: {e.strerror or e}"
                return
            del self.out[:n]

    def pending(self) -> int:
        with self.lock:
            return len(self.out)


class ConnManager:
    def __init__(self, switch: SwitchOps, controllers: list[Target], listeners: list[Target],
                 fail_mode: str = "standalone", probe_interval: float = DEFAULT_PROBE_INTERVAL,
                 max_backoff: float = MAX_BACKOFF,
                 on_fail_open: Callable[[bool], None] | None = None, errors: LoopErrors | None = None,
                 clock: Callable[[], float] = time.monotonic, tls: TlsConfig | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, controller_rate: int = 0,
                 controller_burst: int = 0) -> None:
        check_channel(fail_mode, probe_interval, max_connections)
        if not 0 <= controller_rate <= 1_000_000 or not 0 <= controller_burst <= 1_000_000:
            raise ValueError("controller rate and burst are 0..1000000 packet-ins (0: no limit)")
        # OVS's controller_rate_limit/controller_burst_limit: packet-ins per second to each connection, a burst of
        # a quarter of that by default; over it they are dropped and counted (OVS queues a few, then drops)
        self.controller_rate = controller_rate
        self.controller_burst = controller_burst or max(1, controller_rate // 4)
        self.packet_ins_rate_limited = 0    # every connection's, for the metrics (handlers add under self.lock)
        self.errors = errors or LoopErrors()
        self.sw = switch
        self.controllers = controllers
        self.listener_targets = listeners
        self.fail_mode = fail_mode
        self.probe_interval = probe_interval
        self.max_backoff = max_backoff
        self.max_connections = max_connections
        self.on_fail_open = on_fail_open
        self.tls = tls or TlsConfig()
        self._server_ctx: ssl.SSLContext | None = None
        self._client_ctx: ssl.SSLContext | None = None
        if any(t.kind == "ssl" for t in [*controllers, *listeners]):
            self._server_ctx, self._client_ctx = self.tls.contexts()
        self.ofproto = OfProto(switch, self.send_async, clock)
        self.sel = selectors.DefaultSelector()
        self.conns: list[Connection] = []
        self.listeners: list[tuple[socket.socket, Target]] = []
        self._paused: dict[int, float] = {}   # listener index -> when to accept again (after a failed accept)
        self.stats = ChannelStats()           # written by the channel's thread only
        self._last_refusal_log = 0.0
        self.lock = threading.Lock()     # the connection list
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # per controller target: [next attempt time, backoff, connecting socket or None]
        self._active: dict[Target, list[object]] = {t: [0.0, 1.0, None] for t in controllers}
        self.last_controller = time.monotonic()  # when a controller was last connected (start: now)
        self.fail_open = False
        self._ports: dict[int, tuple[int, int]] = {}   # port -> (config, state) as last told to controllers
        self._descs: dict[int, oc.PortDesc] = {}        # port -> its last description (sent again on delete)
        self._next_port_check = 0.0
        self._ports_changed = threading.Event()

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            for t in self.listener_targets:
                self.listeners.append((_listen(t), t))
        except OSError:
            self.close()
            raise
        for i, (s, _) in enumerate(self.listeners):
            self.sel.register(s, selectors.EVENT_READ, ("listen", i))
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._ports = {p.port_no: (p.config, p.state) for p in self.sw.port_descs()}
        self._thread = threading.Thread(target=self._run, name="connmgr", daemon=True)
        self._thread.start()

    def listen_addresses(self) -> list[tuple[str, int]]:
        """The TCP listeners' bound (host, port): a listener given port 0 gets a free one."""
        return [(t.host, t.port) for t in self.listening() if t.kind != "unix"]

    def listening(self) -> list[Target]:
        """Every listener as bound (port 0 resolved)."""
        out = []
        for s, t in self.listeners:
            if t.kind != "unix":
                host, port = s.getsockname()[:2]
                t = Target(t.kind, True, host, port)
            out.append(t)
        return out

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.close()

    def close(self) -> None:
        for c in list(self.conns):
            self._drop(c, "switch stopping", retry=False)
        for s, t in self.listeners:
            s.close()
            if t.kind == "unix":
                Path(t.path).unlink(missing_ok=True)
        self.listeners = []
        for st in self._active.values():
            if isinstance(st[2], socket.socket):
                st[2].close()
                st[2] = None

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    # --- the loop ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._connect_due()
                self._register_writes()
                for key, ev in self.sel.select(timeout=0.25):
                    kind, obj = key.data
                    if kind == "listen":
                        self._accept(obj)
                    elif kind == "wake":
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                    elif kind == "connecting":
                        self._connected(obj, key.fileobj)  # type: ignore[arg-type]
                    elif kind == "conn":
                        self._event(obj, ev)
                # TLS keeps what it decrypted beyond one recv in the SSL object, where select cannot see it
                for c in list(self.conns):
                    if c.tls and not c.handshaking and not c.closed and c.pending() < PAUSE_READING \
                            and c.sock.pending():  # type: ignore[attr-defined]
                        self._readable(c)
                self._timers()
            except Exception:  # one bad event must not end the channel
                self.errors.record("openflow")
                time.sleep(0.1)

    def _event(self, c: Connection, ev: int) -> None:
        if c.handshaking:
            self._handshake(c)
            return
        if ev & selectors.EVENT_WRITE and c.flush():
            c.last_alive = time.monotonic()   # the peer took output it had left waiting: it is there
        if ev & selectors.EVENT_READ and not c.closed:
            self._readable(c)

    def _register_writes(self) -> None:
        for c in list(self.conns):
            if c.closed:
                self._drop(c, c.close_reason)
                if c.close_reason.startswith("not reading"):
                    self.stats.not_reading += 1
                continue
            if c.handshaking:
                want = c.handshake_wants
            else:
                if c.tls:
                    c.flush()   # what other threads queued (they do not write to a TLS socket)
                backlog = c.pending()
                # backpressure (OVS: OFCONN_REPLY_MAX): a peer that does not take our output is not read
                want = ((selectors.EVENT_READ if backlog < PAUSE_READING else 0)
                        | (selectors.EVENT_WRITE if backlog else 0))
            try:
                if self.sel.get_key(c.sock).events != want:
                    self.sel.modify(c.sock, want, ("conn", c))
            except (KeyError, ValueError):
                pass

    def _accept(self, i: int) -> None:
        ls, t = self.listeners[i]
        try:
            s, addr = ls.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            # out of descriptors (or memory): this accept fails, the channel goes on; the listener rests a
            # second so a full descriptor table is not a busy loop
            self.stats.accept_failed += 1
            self._refusal(f"OpenFlow: accept on {t} failed: {e.strerror}; not accepting there for 1 s")
            self.sel.unregister(ls)
            self._paused[i] = time.monotonic() + 1.0
            return
        peer = f"{addr[0]}:{addr[1]}" if t.kind != "unix" else _unix_peer(s)
        with self.lock:
            full = len(self.conns) >= self.max_connections
        if full:
            self.stats.max_connections += 1
            self._refusal(f"OpenFlow: refused {peer} on {t}: {self.max_connections} connections already "
                          "(--max-connections)")
            s.close()
            return
        if t.kind == "ssl":
            assert self._server_ctx is not None
            s.setblocking(False)
            try:
                s = self._server_ctx.wrap_socket(s, server_side=True, do_handshake_on_connect=False)
            except (ssl.SSLError, OSError) as e:
                self.stats.tls_failed += 1
                log.warning("OpenFlow: %s: TLS: %s", peer, e)
                s.close()
                return
        self._add(s, peer, None, tls=t.kind == "ssl")

    def _refusal(self, msg: str) -> None:
        """Log a refusal, at most once a second (a flood of them must not flood the log)."""
        now = time.monotonic()
        if now - self._last_refusal_log >= 1.0:
            self._last_refusal_log = now
            log.warning("%s", msg)

    def _add(self, s: socket.socket, peer: str, target: Target | None, tls: bool = False) -> Connection:
        s.setblocking(False)
        if s.family != socket.AF_UNIX:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = Connection(s, peer, target, self.probe_interval, self._thread.ident if self._thread else None, tls)
        if tls and target is not None:
            c.handshake_wants = selectors.EVENT_WRITE   # the client speaks first
        with self.lock:
            self.conns.append(c)
            self.ofproto.conns.append(c.state)
        self.sel.register(s, c.handshake_wants if tls else selectors.EVENT_READ, ("conn", c))
        c.send(oc.hello())   # TLS: queued until the handshake is done
        log.info("OpenFlow: %s %s%s", "connected to controller" if target else "accepted", peer,
                 " (TLS handshake)" if tls else "")
        return c

    def _handshake(self, c: Connection) -> None:
        try:
            c.sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            c.handshake_wants = selectors.EVENT_READ
            return
        except ssl.SSLWantWriteError:
            c.handshake_wants = selectors.EVENT_WRITE
            return
        except (ssl.SSLError, OSError) as e:
            self.stats.tls_failed += 1
            why = getattr(e, "verify_message", None) or getattr(e, "reason", None) or e.strerror or str(e)
            self._drop(c, f"TLS handshake failed: {why}")
            return
        c.handshaking = False
        c.last_alive = time.monotonic()
        cert = c.sock.getpeercert() or {}  # type: ignore[attr-defined]
        subject = {k: v for rdn in cert.get("subject", ()) for k, v in rdn}
        log.info("OpenFlow: %s: TLS up (peer certificate: %s)", c.peer,
                 ", ".join(f"{k}={v}" for k, v in subject.items()) or "none")
        c.flush()

    def _connect_due(self) -> None:
        now = time.monotonic()
        for t, st in self._active.items():
            if st[2] is not None or now < float(st[0]):  # type: ignore[arg-type]
                continue
            if any(c.target == t for c in self.conns):
                continue
            if t.kind == "unix":
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                err = s.connect_ex(t.path)
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                err = s.connect_ex((t.host, t.port))
            if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
                s.close()
                self._backoff(t, f"connect: {os.strerror(err)}")
                continue
            st[2] = s
            self.sel.register(s, selectors.EVENT_WRITE, ("connecting", t))

    def _connected(self, t: Target, s: socket.socket) -> None:
        self.sel.unregister(s)
        self._active[t][2] = None
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            s.close()
            self._backoff(t, f"connect: {os.strerror(err)}")
            return
        if t.kind == "ssl":
            assert self._client_ctx is not None
            s = self._client_ctx.wrap_socket(s, server_side=False, do_handshake_on_connect=False)
        self._add(s, str(t), t, tls=t.kind == "ssl")

    def _backoff(self, t: Target, why: str) -> None:
        st = self._active[t]
        b = float(st[1])  # type: ignore[arg-type]
        log.info("OpenFlow: %s: %s; retrying in %.0f s", t, why, b)
        st[0] = time.monotonic() + b
        st[1] = min(b * 2, self.max_backoff)

    def _readable(self, c: Connection) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as e:
            self._drop(c, f"receive: {e.strerror or e}")
            return
        if not data:
            self._drop(c, "closed by peer")
            return
        try:
            msgs = c.framer.feed(data)
        except OfError as e:
            self._error(c, 0, e, bytes(c.framer.buf[:64]))
            self._drop(c, f"unframeable stream: {e.msg}")
            return
        if msgs:   # bytes that do not make a message keep nothing alive (a trickle is dropped)
            c.last_alive = time.monotonic()
            c.probe_sent = False
        for raw in msgs:
            if c.closed:
                return
            self._message(c, raw)

    def _message(self, c: Connection, raw: bytes) -> None:
        c.stats.rx_msgs += 1
        xid = oc.header(raw)[3]
        try:
            msg = oc.decode(raw)
            if isinstance(msg, oc.Hello):
                self._hello(c, msg, raw)
                return
            if not c.negotiated:
                raise OfError(ET.BAD_REQUEST, oc.BRC_BAD_TYPE, "a message before HELLO")
            for reply in self.ofproto.handle(c.state, msg):
                c.send(reply)
        except OfError as e:
            log.info("OpenFlow: %s: refused: %s", c.peer, e.msg)
            self._error(c, xid, e, raw)
        except Exception:
            self.errors.record("openflow")
            self._error(c, xid, OfError(ET.BAD_REQUEST, oc.BRC_EPERM, "internal error"), raw)

    def _hello(self, c: Connection, msg: oc.Hello, raw: bytes) -> None:
        ok = (oc.OFP_VERSION in msg.versions) if msg.versions is not None else msg.version >= oc.OFP_VERSION
        if not ok:
            c.send(oc.error(msg.xid, ET.HELLO_FAILED, oc.HFC_INCOMPATIBLE,
                            b"xdpswitch speaks OpenFlow 1.3 (version 4) only"))
            self._drop(c, f"HELLO with version {msg.version}: incompatible", retry=True)
            return
        c.negotiated = True
        if c.is_controller:
            self._active[c.target][1] = 1.0  # type: ignore[index]
            self.last_controller = time.monotonic()
            self._set_fail_open(False)

    def _error(self, c: Connection, xid: int, e: OfError, raw: bytes) -> None:
        c.stats.errors_sent += 1
        c.send(oc.error(xid, e.type, e.code, raw))

    def _drop(self, c: Connection, why: str, retry: bool = True) -> None:
        with self.lock:
            if c in self.conns:
                self.conns.remove(c)
                if c.state in self.ofproto.conns:
                    self.ofproto.conns.remove(c.state)
        with c.lock:
            c.closed = True
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        log.info("OpenFlow: %s: disconnected (%s)", c.peer, why)
        if c.target is not None:
            if c.negotiated:
                self.last_controller = time.monotonic()
            if retry and not self._stop.is_set():
                self._backoff(c.target, why)

    def _timers(self) -> None:
        now = time.monotonic()
        for c in list(self.conns):
            idle = now - c.last_alive
            if c.handshaking and idle > c.probe_interval:
                self.stats.inactive += 1
                self._drop(c, f"no TLS handshake in {c.probe_interval:.0f} s")
            elif idle > 2 * c.probe_interval:
                self.stats.inactive += 1
                self._drop(c, f"no complete message in {2 * c.probe_interval:.0f} s (an inactivity probe went "
                              "unanswered)")
            elif idle > c.probe_interval and not c.probe_sent and not c.handshaking:
                c.probe_sent = True
                c.send(oc.echo_request(0))
        for i, when in list(self._paused.items()):
            if now >= when:
                del self._paused[i]
                self.sel.register(self.listeners[i][0], selectors.EVENT_READ, ("listen", i))
        if self.controllers and self.fail_mode == "standalone":
            up = any(c.is_controller and c.negotiated for c in self.conns)
            if not up and now - self.last_controller >= 3 * self.probe_interval:
                self._set_fail_open(True)
        if self._ports_changed.is_set() or now >= self._next_port_check:
            # the kernel's link events set _ports_changed (ports_changed()); the poll is only a safety net
            self._ports_changed.clear()
            self._next_port_check = now + PORT_POLL_S
            self._check_ports()

    def ports_changed(self) -> None:
        """A link changed (the kernel said so): compare the ports now and send PORT_STATUS for each change."""
        self._ports_changed.set()
        self._wake()

    def _set_fail_open(self, on: bool) -> None:
        if self.fail_open == on:
            return
        self.fail_open = on
        log.warning("OpenFlow: %s fail-open mode", "entering" if on else "leaving")
        if self.on_fail_open is not None:
            self.on_fail_open(on)

    def _check_ports(self) -> None:
        """PORT_STATUS for every port added (reason ADD), deleted (DELETE) or whose config or link state
        changed (MODIFY) since the last look."""
        descs = self.sw.port_descs()
        for p in descs:
            now = (p.config, p.state)
            before = self._ports.get(p.port_no)
            if before != now:
                reason = oc.OFPPR_ADD if before is None else oc.OFPPR_MODIFY
                self.send_async("port_status", reason, oc.port_status(reason, p))
                self._ports[p.port_no] = now
            self._descs[p.port_no] = p
        current = {p.port_no for p in descs}
        for port_no in [n for n in self._ports if n not in current]:
            del self._ports[port_no]
            gone = self._descs.pop(port_no, None) or oc.PortDesc(port_no, bytes(6), "", 1, 1, 0, 0)
            self.send_async("port_status", oc.OFPPR_DELETE, oc.port_status(oc.OFPPR_DELETE, gone))

    # --- asynchronous messages -------------------------------------------------------------------------

    def connected(self) -> list[Connection]:
        with self.lock:
            return [c for c in self.conns if c.negotiated and not c.closed]

    def send_async(self, kind: str, reason: int, msg: bytes) -> None:
        for c in self.connected():
            if c.state.wants(kind, reason):
                c.send(msg, droppable=kind == "packet_in")
        self._wake()

    def packet_in(self, ctrl: dpif.DpController, in_port: int, frame: bytes) -> None:
        """A PACKET_IN for every connection whose async config wants this reason (called by handlers)."""
        sent = False
        for c in self.connected():
            if not c.state.wants("packet_in", ctrl.reason):
                continue
            if self.controller_rate:
                with self.lock:   # several handlers may send packet-ins at once
                    if c.limiter is None:
                        c.limiter = TokenBucket(self.controller_rate, self.controller_burst, time.monotonic_ns())
                    ok = c.limiter.take(time.monotonic_ns())
                    if not ok:
                        c.stats.packet_ins_rate_limited += 1
                        self.packet_ins_rate_limited += 1
                if not ok:
                    continue
            max_len = c.state.miss_send_len if ctrl.max_len < 0 else ctrl.max_len
            data = frame if max_len == oc.OFPCML_NO_BUFFER else frame[:max_len]
            msg = oc.packet_in(oc.OFP_NO_BUFFER, len(frame), ctrl.reason, ctrl.table_id, ctrl.cookie, in_port, data,
                               ctrl.pipeline)
            if c.send(msg, droppable=True):
                c.stats.packet_ins += 1
                sent = True
            else:
                c.stats.packet_ins_dropped += 1
        if sent:
            self._wake()

    def show(self) -> list[dict[str, object]]:
        out = []
        for c in self.connected():
            out.append({"peer": c.peer, "type": "controller" if c.is_controller else "service", "tls": c.tls,
                        "role": {1: "equal", 2: "master", 3: "slave"}.get(c.state.role, "?"),
                        "connected_s": round(time.monotonic() - c.connected_at, 1), **vars(c.stats)})
        return out


def _listen(t: Target) -> socket.socket:
    """A listening socket for t; OSError naming the target. A unix socket is made root-only (mode 0600)."""
    if t.kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = Path(t.path)
        try:
            if path.exists() and not stat.S_ISSOCK(path.lstat().st_mode):
                raise OSError(errno.EEXIST, "exists and is not a socket")
            path.unlink(missing_ok=True)   # a stale socket: the name lock says no daemon of ours is using it
            old = os.umask(0o177)
            try:
                s.bind(t.path)
            finally:
                os.umask(old)
            os.chmod(t.path, stat.S_IRUSR | stat.S_IWUSR)
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"cannot listen on {t}: {e.strerror}") from None
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((t.host, t.port))
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"cannot listen on {t}: {e.strerror}") from None
    s.listen(64)
    s.setblocking(False)
    return s


def _unix_peer(s: socket.socket) -> str:
    """unix:pid=N,uid=N of a unix-socket peer (SO_PEERCRED)."""
    try:
        pid, uid, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return "unix"
    return f"unix:pid={pid},uid={uid}"


@dataclass
class ChannelConfig:
    """The daemon's OpenFlow settings (xdpswitch start --controller/--listen/--fail-mode/--private-key ...)."""

    controllers: list[str] = field(default_factory=list)
    listen: list[str] = field(default_factory=list)
    fail_mode: str = "standalone"
    probe_interval: float = DEFAULT_PROBE_INTERVAL
    datapath_id: int | None = None
    mgmt: str | None = None            # the root-only management socket's path (the daemon sets NAME.mgmt)
    tls: TlsConfig = field(default_factory=TlsConfig)
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    allow_remote_plain: bool = False   # plain TCP on a non-loopback address: refused unless this is set
    controller_rate: int = 0           # packet-ins per second to each connection (0: no limit)
    controller_burst: int = 0          # ... in a burst (0: a quarter of the rate)

    def targets(self) -> tuple[list[Target], list[Target]]:
        """(controllers, listeners), every setting checked (ValueError naming the first bad one)."""
        check_channel(self.fail_mode, self.probe_interval, self.max_connections)
        if self.datapath_id is not None and not 0 < self.datapath_id < 1 << 64:
            raise ValueError(f"datapath id {self.datapath_id:#x} is out of range 1..2^64-1")
        controllers = [parse_target(t, False) for t in self.controllers]
        listeners = [parse_target(t, True) for t in self.listen]
        if self.mgmt is not None:
            listeners.insert(0, Target("unix", True, path=self.mgmt))
        for t in listeners:
            if t.kind == "tcp" and not t.loopback and not self.allow_remote_plain:
                raise ValueError(f"{t} would let any host that reaches {t.host} change flows over plain TCP: "
                                 "use pssl: (TLS) or a loopback address, or pass --allow-remote-plain")
        if any(t.kind == "ssl" for t in [*controllers, *listeners]):
            self.tls.contexts()   # the files load, or a ValueError names the one at fault
        elif self.tls.configured:
            raise ValueError("--private-key/--certificate/--ca-cert are set but no ssl: controller or pssl: "
                             "listener uses them")
        return controllers, listeners


def register_commands(ctl: Unixctl, cm: ConnManager, extra: Callable[[], dict[str, object]]) -> None:
    """channel-show (``xdpswitch ofctl show``): the channel's settings and connections; extra adds what the
    switch owns (datapath id, the MAC table's size)."""

    def channel_show() -> dict[str, object]:
        return {**extra(), "fail_mode": cm.fail_mode, "fail_open": cm.fail_open,
                "controllers": [str(t) for t in cm.controllers],
                "listening": [{"target": str(t), "access": t.exposure} for t in cm.listening()],
                "max_connections": cm.max_connections, "refused": cm.stats.as_dict(),
                "connections": cm.show(), "flow_mods": cm.ofproto.stats.flow_mods,
                "packet_outs": cm.ofproto.stats.packet_outs, "group_mods": cm.ofproto.stats.group_mods,
                "meter_mods": cm.ofproto.stats.meter_mods, "controller_rate": cm.controller_rate,
                "controller_burst": cm.controller_burst}

    ctl.register("channel-show", channel_show)
