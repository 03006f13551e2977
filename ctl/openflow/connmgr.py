"""OpenFlow connections: to controllers (active) and from management tools (passive).

As OVS's connmgr and rconn: ``--controller tcp:HOST:PORT`` connects out and reconnects with exponential
backoff (1 s doubling to ``max_backoff``, 8 s); ``--listen ptcp:PORT[:IP]`` accepts connections (loopback
unless an IP is given), which ovs-ofctl uses. Every connection starts with HELLO and keeps OpenFlow 1.3
only; a peer that cannot speak it gets HELLO_FAILED/INCOMPATIBLE and is closed. A connection silent for
``probe_interval`` gets an ECHO_REQUEST; silent for twice that, it is closed (and an active one retried).

One thread runs every socket (a selector). Messages are decoded by ``ctl/openflow/codec/`` and handled by
``ctl/openflow/ofproto.py`` in the order they arrive, so a BARRIER_REPLY means everything before it is done.
Anything refused is answered with OFPT_ERROR and the connection goes on; only a stream that cannot be
cut into messages any more (a length below 8) is closed.

Asynchronous messages (PACKET_IN, FLOW_REMOVED, PORT_STATUS) may be sent from other threads (the upcall
handlers); each connection buffers what the socket does not take at once, up to ``MAX_BACKLOG`` bytes,
beyond which packet-ins are dropped and counted rather than queued without bound.

Fail mode (as OVS's fail-open): with controllers configured, in ``standalone`` mode, once no controller
has been connected for three probe intervals the switch falls back to NORMAL for every packet, and goes
back to the tables when a controller connects; in ``secure`` mode it keeps to the installed flows.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ctl.common.loops import LoopErrors
from ctl.common.unixctl import Unixctl
from ctl.datapath import dpif
from ctl.openflow import codec as oc
from ctl.openflow.codec import ET, OfError
from ctl.openflow.ofproto import ConnState, OfProto, SwitchOps

log = logging.getLogger(__name__)

DEFAULT_PROBE_INTERVAL = 5.0
MAX_BACKOFF = 8.0
MAX_BACKLOG = 4 << 20
FAIL_MODES = ("standalone", "secure")
OFP_TCP_PORT = 6653


def check_channel(fail_mode: str, probe_interval: float) -> None:
    if fail_mode not in FAIL_MODES:
        raise ValueError(f"fail-mode {fail_mode!r}: one of {', '.join(FAIL_MODES)}")
    if not 1 <= probe_interval <= 3600:
        raise ValueError(f"inactivity probe {probe_interval} s is out of range 1..3600")


@dataclass(frozen=True)
class Target:
    """tcp:HOST[:PORT] (connect) or ptcp:[PORT][:IP] (listen), as ovs-vsctl set-controller writes them."""

    passive: bool
    host: str
    port: int

    def __str__(self) -> str:
        return f"ptcp:{self.port}:{self.host}" if self.passive else f"tcp:{self.host}:{self.port}"


def parse_target(text: str, passive: bool) -> Target:
    kind, _, rest = text.partition(":")
    want = "ptcp" if passive else "tcp"
    if kind != want:
        raise ValueError(f"{text!r}: expected {want}:{'PORT[:IP]' if passive else 'HOST[:PORT]'}")
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
    return Target(passive, host, int(port_s))


@dataclass
class ConnStats:
    rx_msgs: int = 0
    tx_msgs: int = 0
    errors_sent: int = 0
    packet_ins: int = 0
    packet_ins_dropped: int = 0


class Connection:
    """One OpenFlow connection (OVS: struct ofconn over an rconn)."""

    def __init__(self, sock: socket.socket, peer: str, target: Target | None, probe_interval: float) -> None:
        self.sock = sock
        self.peer = peer
        self.target = target            # the controller it was made for (None: accepted by a listener)
        self.framer = oc.Framer()
        self.state = ConnState()
        self.out = bytearray()
        self.lock = threading.Lock()
        self.negotiated = False
        self.closed = False
        self.last_rx = time.monotonic()
        self.probe_sent = False
        self.probe_interval = probe_interval
        self.stats = ConnStats()
        self.connected_at = time.monotonic()

    @property
    def is_controller(self) -> bool:
        return self.target is not None

    def send(self, data: bytes, droppable: bool = False) -> bool:
        """Queue data and write what the socket takes now; False if dropped (closed, or a droppable message
        over the backlog)."""
        with self.lock:
            if self.closed:
                return False
            if droppable and len(self.out) > MAX_BACKLOG:
                return False
            self.out += data
            self.stats.tx_msgs += 1
            self._flush_locked()
            return True

    def flush(self) -> None:
        with self.lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        while self.out and not self.closed:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.closed = True
                return
            del self.out[:n]

    def pending(self) -> bool:
        with self.lock:
            return bool(self.out)


class ConnManager:
    def __init__(self, switch: SwitchOps, controllers: list[Target], listeners: list[Target],
                 fail_mode: str = "standalone", probe_interval: float = DEFAULT_PROBE_INTERVAL,
                 max_backoff: float = MAX_BACKOFF,
                 on_fail_open: Callable[[bool], None] | None = None, errors: LoopErrors | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        check_channel(fail_mode, probe_interval)
        self.errors = errors or LoopErrors()
        self.sw = switch
        self.controllers = controllers
        self.listener_targets = listeners
        self.fail_mode = fail_mode
        self.probe_interval = probe_interval
        self.max_backoff = max_backoff
        self.on_fail_open = on_fail_open
        self.ofproto = OfProto(switch, self.send_async, clock)
        self.sel = selectors.DefaultSelector()
        self.conns: list[Connection] = []
        self.listeners: list[socket.socket] = []
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
        self._ports: dict[int, tuple[int, int]] = {}
        self._next_port_check = 0.0

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        for t in self.listener_targets:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((t.host, t.port))
            except OSError as e:
                s.close()
                self.close()
                raise OSError(e.errno, f"cannot listen on {t}: {e.strerror}") from None
            s.listen(16)
            s.setblocking(False)
            self.listeners.append(s)
            self.sel.register(s, selectors.EVENT_READ, ("listen", None))
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._ports = {p.port_no: (p.config, p.state) for p in self.sw.port_descs()}
        self._thread = threading.Thread(target=self._run, name="connmgr", daemon=True)
        self._thread.start()

    def listen_addresses(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for s in self.listeners]

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.close()

    def close(self) -> None:
        for c in list(self.conns):
            self._drop(c, "switch stopping", retry=False)
        for s in self.listeners:
            s.close()
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
                        self._accept(key.fileobj)  # type: ignore[arg-type]
                    elif kind == "wake":
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                    elif kind == "connecting":
                        self._connected(obj, key.fileobj)  # type: ignore[arg-type]
                    elif kind == "conn":
                        if ev & selectors.EVENT_WRITE:
                            obj.flush()
                        if ev & selectors.EVENT_READ:
                            self._readable(obj)
                self._timers()
            except Exception:  # one bad event must not end the channel
                self.errors.record("openflow")
                time.sleep(0.1)

    def _register_writes(self) -> None:
        for c in list(self.conns):
            if c.closed:
                self._drop(c, "connection closed")
                continue
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.pending() else 0)
            try:
                if self.sel.get_key(c.sock).events != want:
                    self.sel.modify(c.sock, want, ("conn", c))
            except (KeyError, ValueError):
                pass

    def _accept(self, ls: socket.socket) -> None:
        try:
            s, addr = ls.accept()
        except OSError:
            return
        self._add(s, f"{addr[0]}:{addr[1]}", None)

    def _add(self, s: socket.socket, peer: str, target: Target | None) -> Connection:
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = Connection(s, peer, target, self.probe_interval)
        with self.lock:
            self.conns.append(c)
            self.ofproto.conns.append(c.state)
        self.sel.register(s, selectors.EVENT_READ, ("conn", c))
        c.send(oc.hello())
        log.info("OpenFlow: %s %s", "connected to controller" if target else "accepted", peer)
        return c

    def _connect_due(self) -> None:
        now = time.monotonic()
        for t, st in self._active.items():
            if st[2] is not None or now < float(st[0]):  # type: ignore[arg-type]
                continue
            if any(c.target == t for c in self.conns):
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex((t.host, t.port))
            if err not in (0, errno.EINPROGRESS):
                s.close()
                self._backoff(t, f"connect: {errno.errorcode.get(err, err)}")
                continue
            st[2] = s
            self.sel.register(s, selectors.EVENT_WRITE, ("connecting", t))

    def _connected(self, t: Target, s: socket.socket) -> None:
        self.sel.unregister(s)
        self._active[t][2] = None
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            s.close()
            self._backoff(t, f"connect: {errno.errorcode.get(err, err)}")
            return
        self._add(s, str(t), t)

    def _backoff(self, t: Target, why: str) -> None:
        st = self._active[t]
        b = float(st[1])  # type: ignore[arg-type]
        log.info("OpenFlow: %s: %s; retrying in %.0f s", t, why, b)
        st[0] = time.monotonic() + b
        st[1] = min(b * 2, self.max_backoff)

    def _readable(self, c: Connection) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._drop(c, f"receive: {e.strerror}")
            return
        if not data:
            self._drop(c, "closed by peer")
            return
        c.last_rx = time.monotonic()
        c.probe_sent = False
        try:
            msgs = c.framer.feed(data)
        except OfError as e:
            self._error(c, 0, e, bytes(c.framer.buf[:64]))
            self._drop(c, f"unframeable stream: {e.msg}")
            return
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
            idle = now - c.last_rx
            if idle > 2 * c.probe_interval:
                self._drop(c, f"no answer to an inactivity probe in {c.probe_interval:.0f} s")
            elif idle > c.probe_interval and not c.probe_sent:
                c.probe_sent = True
                c.send(oc.echo_request(0))
        if self.controllers and self.fail_mode == "standalone":
            up = any(c.is_controller and c.negotiated for c in self.conns)
            if not up and now - self.last_controller >= 3 * self.probe_interval:
                self._set_fail_open(True)
        if now >= self._next_port_check:
            self._next_port_check = now + 1.0
            self._check_ports()

    def _set_fail_open(self, on: bool) -> None:
        if self.fail_open == on:
            return
        self.fail_open = on
        log.warning("OpenFlow: %s fail-open mode", "entering" if on else "leaving")
        if self.on_fail_open is not None:
            self.on_fail_open(on)

    def _check_ports(self) -> None:
        """PORT_STATUS (modify) for every port whose config or link state changed."""
        for p in self.sw.port_descs():
            now = (p.config, p.state)
            if self._ports.get(p.port_no) != now:
                if p.port_no in self._ports:
                    self.send_async("port_status", 2, oc.port_status(2, p))
                self._ports[p.port_no] = now

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
            max_len = c.state.miss_send_len if ctrl.max_len < 0 else ctrl.max_len
            data = frame if max_len == oc.OFPCML_NO_BUFFER else frame[:max_len]
            msg = oc.packet_in(oc.OFP_NO_BUFFER, len(frame), ctrl.reason, ctrl.table_id, ctrl.cookie, in_port, data)
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
            out.append({"peer": c.peer, "type": "controller" if c.is_controller else "service",
                        "role": {1: "equal", 2: "master", 3: "slave"}.get(c.state.role, "?"),
                        "connected_s": round(time.monotonic() - c.connected_at, 1), **vars(c.stats)})
        return out


@dataclass
class ChannelConfig:
    """The daemon's OpenFlow settings (xdpswitch start --controller/--listen/--fail-mode ...)."""

    controllers: list[str] = field(default_factory=list)
    listen: list[str] = field(default_factory=list)
    fail_mode: str = "standalone"
    probe_interval: float = DEFAULT_PROBE_INTERVAL
    datapath_id: int | None = None

    def targets(self) -> tuple[list[Target], list[Target]]:
        """(controllers, listeners), every setting checked (ValueError naming the first bad one)."""
        check_channel(self.fail_mode, self.probe_interval)
        if self.datapath_id is not None and not 0 < self.datapath_id < 1 << 64:
            raise ValueError(f"datapath id {self.datapath_id:#x} is out of range 1..2^64-1")
        return ([parse_target(t, False) for t in self.controllers], [parse_target(t, True) for t in self.listen])


def register_commands(ctl: Unixctl, cm: ConnManager, extra: Callable[[], dict[str, object]]) -> None:
    """channel-show (``xdpswitch ofctl show``): the channel's settings and connections; extra adds what the
    switch owns (datapath id, the MAC table's size)."""

    def channel_show() -> dict[str, object]:
        return {**extra(), "fail_mode": cm.fail_mode, "fail_open": cm.fail_open,
                "controllers": [str(t) for t in cm.controllers],
                "listening": [f"ptcp:{p}:{h}" for h, p in cm.listen_addresses()],
                "connections": cm.show(), "flow_mods": cm.ofproto.stats.flow_mods,
                "packet_outs": cm.ofproto.stats.packet_outs}

    ctl.register("channel-show", channel_show)
