"""``xdpswitch start``: the switch daemon, in the foreground (systemd-friendly: logs to stderr, stops on
SIGTERM or SIGINT and says what it leaves running).

It loads the fast path, attaches the ports (OpenFlow port numbers 1..N in the order given, or ``IF=N``),
binds one AF_XDP socket per port and receive queue for upcalls, loads the OpenFlow tables from its state
file (or from ``--flows``), and runs:
 - handler threads (``ctl/udpif/handler.py``) reading the upcall sockets; a batch that fails is counted and
   the handler goes on; a handler thread that dies anyway is restarted, and the fast path keeps forwarding
   what it has cached meanwhile;
 - a control socket (``/run/xdpswitch/NAME.ctl``, root only, ``ctl/common/unixctl.py``) for ``xdpswitch
   ofctl``, ``trace`` and ``upcall show``, whose commands the modules that own the state register;
 - the revalidator (``ctl/udpif/revalidator.py``): counters credited to rules, idle megaflows expired, megaflows
   revalidated after table changes, rule timeouts, the flow-limit;
 - once a second: the subtables re-ranked by hits (as dpcls does), dead threads restarted;
 - Prometheus ``/metrics`` on ``metrics_address`` (``exporters/collector.py``).

The OpenFlow tables are saved to the state file (atomically) after every control-socket change and within
a second of OpenFlow flow-mods, so a restart comes back with the same rules. The datapath outlives the
daemon: on SIGTERM, SIGINT or a crash its programs stay attached and its maps pinned, and the next start
adopts it (megaflows, EMC and all). Who owns what and which thread runs where: docs/architecture.md.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ctl.common.loops import LoopErrors, log_unraisable, tune_collector
from ctl.common.unixctl import CommandError, Unixctl
from ctl.daemon.control import control_path, mgmt_path
from ctl.daemon.control import request as request  # the client side, re-exported (tests, scripts)
from ctl.datapath import dpif
from ctl.datapath.dpif_xdp import RUN_DIR, Datapath, DatapathConfig, DatapathError
from ctl.datapath.netdev import LinkInfo, LinkMonitor, link_info, links
from ctl.datapath.xsk import XskSocket
from ctl.openflow import codec as oc
from ctl.openflow.connmgr import ChannelConfig, ConnManager
from ctl.openflow.connmgr import register_commands as register_channel_commands
from ctl.openflow.ofproto import REMOVED_REASONS
from ctl.pipeline import ofactions as of
from ctl.pipeline.groups import Group
from ctl.pipeline.mac_learning import DEFAULT_MAX_AGE, MacLearning
from ctl.pipeline.meters import Meter
from ctl.pipeline.openflow_tables import OpenFlowTables, Rule, parse_flow, parse_flows_file, write_state
from ctl.udpif.handler import Handler
from ctl.udpif.revalidator import DEFAULT_MAX_IDLE_MS, DEFAULT_MAX_REVALIDATOR_MS, Revalidator, check_settings
from ctl.udpif.revalidator import register_commands as register_revalidator_commands
from ctl.udpif.revalidator import show as revalidator_show
from ctl.udpif.upcall import (
    DEFAULT_FLOW_LIMIT,
    DEFAULT_MASK_LIMIT,
    DEFAULT_UPCALL_RATE,
    HANDLING_BOUNDS,
    Udpif,
    UpcallLimits,
)
from ctl.udpif.upcall import register_commands as register_upcall_commands
from exporters.collector import PortSample, Snapshot, parse_address, serve

log = logging.getLogger("xdpswitch")

STATE_ROOT = Path("/var/lib/xdpswitch")
MAX_REQUEST = 16 << 20


@dataclass
class PortSpec:
    name: str
    port_no: int


def parse_ports(args: list[str]) -> list[PortSpec]:
    """``IF`` or ``IF=N`` in order: unnumbered ports take the lowest free numbers, starting at 1."""
    out: list[PortSpec] = []
    fixed: dict[int, str] = {}
    for a in args:
        name, _, num = a.partition("=")
        if not name:
            raise ValueError(f"bad port {a!r}: IF or IF=N")
        if num:
            if not num.isdigit() or not 0 < int(num) < 0xFF00:
                raise ValueError(f"bad port number in {a!r}: 1..65279")
            if int(num) in fixed:
                raise ValueError(f"port number {num} given twice ({fixed[int(num)]} and {name})")
            fixed[int(num)] = name
    n = 1
    for a in args:
        name, _, num = a.partition("=")
        if any(p.name == name for p in out):
            raise ValueError(f"port {name} given twice")
        if num:
            out.append(PortSpec(name, int(num)))
            continue
        while n in fixed or any(p.port_no == n for p in out):
            n += 1
        out.append(PortSpec(name, n))
    return out


def rx_queues(ifname: str) -> int:
    li = link_info(ifname)
    if li is None:
        raise ValueError(f"no interface {ifname!r}")
    return max(1, li.rx_queues)


@dataclass
class Switch:
    name: str
    ports: list[PortSpec]
    state_file: Path
    flows_file: Path | None = None
    flow_limit: int = DEFAULT_FLOW_LIMIT
    n_handlers: int = 1
    mode: str = "auto"
    config: DatapathConfig = field(default_factory=DatapathConfig)
    say: Callable[[str], None] = print
    metrics_address: str | None = None   # HOST:PORT for /metrics; None: not served
    max_idle_ms: int = DEFAULT_MAX_IDLE_MS
    max_revalidator_ms: int = DEFAULT_MAX_REVALIDATOR_MS
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    mac_aging_s: int = DEFAULT_MAX_AGE
    replace: bool = False   # a running datapath of this name with another map layout is removed, not refused
    upcall_limits: UpcallLimits = field(default_factory=lambda: UpcallLimits(DEFAULT_UPCALL_RATE))
    mask_limit: int = DEFAULT_MASK_LIMIT   # subtables before new megaflows get the exact mask (0: the datapath's)

    def __post_init__(self) -> None:
        # settings are checked before the fast path is compiled, so a mistake costs no time
        check_settings(self.flow_limit, self.max_idle_ms, self.max_revalidator_ms)
        self.upcall_limits.check()
        if not 0 <= self.mask_limit <= self.config.max_masks:
            raise ValueError(f"mask limit {self.mask_limit} is out of range 0..{self.config.max_masks}")
        if self.channel.mgmt is None:   # as OVS's BRIDGE.mgmt: OpenFlow management only root can reach
            self.channel = replace(self.channel, mgmt=str(mgmt_path(self.name)))
        self._targets = self.channel.targets()
        self.mac = MacLearning(self.mac_aging_s)
        self.datapath_id = self.channel.datapath_id or _default_dpid(self.name)
        self.connmgr: ConnManager | None = None
        self._dirty = False   # OpenFlow changed the tables since the state file was written
        self._link_up: dict[int, bool] = {}   # port -> link up; replaced whole by the link monitor's thread
        if self.n_handlers < 1:
            raise ValueError(f"handlers must be at least 1, got {self.n_handlers}")
        if self.metrics_address:
            parse_address(self.metrics_address)
        self.stop = threading.Event()
        self.clock = dpif.Clock()
        self.errors = LoopErrors()      # every serving loop's caught exceptions (xdpswitch_loop_errors_total)
        self.unixctl = Unixctl(control_path(self.name), self.errors)
        self._pid_fd: int | None = None     # RUN_DIR/NAME.pid, locked while this daemon runs
        self._save_lock = threading.Lock()  # one writer of the state file at a time (tick, control, shutdown)
        self.dp: Datapath | None = None
        self.sockets: dict[tuple[int, int], XskSocket] = {}   # (port, queue): replaced whole, never mutated
        self._handler_of: dict[tuple[int, int], int] = {}     # (port, queue) -> the handler that reads it
        self._port_lock = threading.Lock()                    # one add-port/del-port at a time
        self._ports_added: dict[str, int] = {}                # add-port'ed (persisted in the state file)
        self._ports_deleted: set[str] = set()                 # del-port'ed ports of the command line (persisted)
        self.handlers: list[Handler] = []
        self.handler_restarts = 0
        self.tables = OpenFlowTables(self.clock.monotonic)
        self.udpif: Udpif | None = None
        self.revalidator: Revalidator | None = None
        self._metrics: Any = None
        self._links: LinkMonitor | None = None   # kernel link events -> PORT_STATUS
        self.started = self.clock.monotonic()

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        tune_collector()
        log_unraisable()
        fresh = not self.state_file.exists()
        if not fresh:
            self.tables = OpenFlowTables.load(self.state_file, self.clock.monotonic)
            self.say(f"loaded {len(self.tables)} flows from {self.state_file}")
        if self.flows_file is not None:
            specs = parse_flows_file(self.flows_file.read_text())
            self.tables.clear()
            self.tables.add_many(specs)
            self.say(f"loaded {len(specs)} flows from {self.flows_file} (replacing the saved ones)")
        elif fresh and not self._targets[0] and self.channel.fail_mode == "standalone":
            # as a new OVS bridge without a controller: one flow that makes it a learning switch
            self.tables.add(parse_flow("priority=0,actions=NORMAL"))
            self.say("no controller and fail-mode standalone: added priority=0,actions=NORMAL (a learning switch)")
        self._lock_name()
        if not fresh:
            self._apply_port_changes()
        _raise_nofile()
        self.save()
        self.say(f"loading the fast path for {self.name} (bcc compiles xdp/*.c)")
        try:
            dp = self.dp = Datapath(self.name, self.config, replace=self.replace)
        except Exception:
            self._unlock_name()
            raise
        for note in dp.notes:
            self.say(note)
        if dp.adopted:
            self.say(f"adopting the running datapath {self.name}: its {dp.n_flows} megaflows keep forwarding; "
                     "its programs are replaced in place")
        created = not dp.adopted
        try:
            for spec in self.ports:
                self._attach_port(spec)
            for msg in dp.prune_ports({p.ifindex for p in dp.ports.values()}):
                self.say(msg)
            self._start_services(dp)
        except BaseException:
            self.shutdown(remove=created)  # a datapath this start made goes; one it adopted keeps running
            raise

    def _start_services(self, dp: Datapath) -> None:
        """Everything after the ports: the Udpif, the revalidator, the OpenFlow channel, the handlers, the
        control socket and the metrics (a failure in any stops the start, and start() cleans up)."""
        self.udpif = Udpif(dp, self.tables, self._transmit, lambda: list(dp.ports), self.flow_limit, self.mac,
                           clock=self.clock)
        self.udpif.set_upcall_limits(self.upcall_limits, dp.config.max_ports)
        self.udpif.mask_limit = self.mask_limit
        self.revalidator = Revalidator(self.udpif, self.flow_limit, ports=lambda: set(dp.ports), errors=self.errors)
        self.revalidator.configure(max_idle_ms=self.max_idle_ms, max_revalidator_ms=self.max_revalidator_ms)
        self.udpif.on_removed = self._removed
        if dp.adopted:
            n = self.udpif.adopt(dp.dump_flows())
            self.say(f"adopted {n} megaflows: the revalidator checks each against the tables now")
        self.revalidator.start()
        controllers, listeners = self._targets
        self.connmgr = ConnManager(self, controllers, listeners, self.channel.fail_mode, self.channel.probe_interval,
                                   on_fail_open=self.udpif.set_fail_open, errors=self.errors,
                                   clock=self.clock.monotonic, tls=self.channel.tls,
                                   max_connections=self.channel.max_connections,
                                   controller_rate=self.channel.controller_rate,
                                   controller_burst=self.channel.controller_burst)
        self.udpif.packet_in = self.connmgr.packet_in
        self.connmgr.start()
        self._refresh_links()
        self.udpif.port_up = lambda p: self._link_up.get(p, True)
        self._links = LinkMonitor(self._link_changed)
        for h in range(self.n_handlers):
            self._start_handler(h)
        self._register_commands()
        self.unixctl.serve()
        for t in self.connmgr.listening():
            where = f"unix:{t.path}" if t.kind == "unix" else f"{t.kind}:{t.host}:{t.port}"
            self.say(f"OpenFlow 1.3: listening on {t} ({t.exposure}; ovs-ofctl -O OpenFlow13 show {where})")
            if t.kind == "tcp":
                log.warning("OpenFlow listener %s is plain TCP: %s can change flows (docs/security.md)", t,
                            "any local user" if t.loopback else "any host that reaches it")
        for t in controllers:
            self.say(f"OpenFlow 1.3: controller {t} (fail-mode {self.channel.fail_mode}, "
                     f"datapath id {self.datapath_id:016x})")
        if self.metrics_address:
            try:
                self._metrics = serve(self.metrics_snapshot, self.metrics_address)
            except OSError as e:
                raise OSError(e.errno, f"serving metrics on {self.metrics_address}: {e.strerror}") from None
            host, port = self._metrics.server_address[:2]
            self.say(f"metrics on http://{host}:{port}/metrics")
            if not ipaddress.ip_address(host).is_loopback:
                log.warning("metrics on %s:%d can be read by any host that reaches it (counters, port names; "
                            "nothing can be changed through it)", host, port)
        self.say(f"{self.name}: {len(self.ports)} ports, {len(self.tables)} flows, {self.n_handlers} handler(s); "
                 f"control socket {control_path(self.name)}")

    def _attach_port(self, spec: PortSpec) -> list[XskSocket]:
        """Attach the fast path to a port and open its upcall sockets (one per receive queue); on failure,
        undo what it did and raise. The sockets are not yet read by any handler."""
        assert self.dp is not None
        dp = self.dp
        port = dp.add_port(spec.name, spec.port_no, self.mode)
        made: list[XskSocket] = []
        try:
            for q in range(min(rx_queues(spec.name), self.config.max_queues)):
                xs = XskSocket(spec.name, q)
                made.append(xs)
                dp.set_upcall_socket(port.port_no, q, xs.fileno())
        except BaseException:
            for xs in made:
                xs.close()
            dp.del_port(port.port_no)
            raise
        # copy on write: handlers and the metrics read the dict without a lock
        self.sockets = {**self.sockets, **{(port.port_no, q): xs for q, xs in enumerate(made)}}
        for q in range(len(made)):
            self._handler_of[(port.port_no, q)] = min(
                range(self.n_handlers), key=lambda h: sum(v == h for v in self._handler_of.values()))
        how = ("sent to by XDP redirect" if port.tx_path == "xdp" else
               "sent to by the skb path: the device does not take XDP redirects (a veth whose peer has "
               "neither XDP nor GRO)")
        self.say(f"port {port.port_no}: {port.name} ({port.mode} XDP, {len(made)} upcall queue(s); {how})")
        return made

    def _handler_sockets(self, hid: int) -> list[XskSocket]:
        return [xs for key, xs in self.sockets.items() if self._handler_of.get(key) == hid]

    def _start_handler(self, hid: int) -> None:
        assert self.udpif is not None
        h = Handler(hid, self.udpif, self._handler_sockets(hid), self.stop, self.errors)
        if hid < len(self.handlers):
            self.handlers[hid] = h
        else:
            self.handlers.append(h)
        h.start()

    def run(self) -> None:
        """Until SIGTERM/SIGINT: once a second re-rank subtables, restart a dead handler or revalidator."""
        def on_signal(signum: int, _frame: object) -> None:
            self.say(f"{signal.Signals(signum).name}: stopping")
            self.stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not self.stop.wait(1.0):
            try:
                self.tick()
            except Exception:  # the daemon outlives one bad tick (its maps and threads keep running)
                self.errors.record("tick")

    def tick(self) -> None:
        """Once a second: write the state file if OpenFlow changed the tables, re-rank the subtables, restart
        a thread that died."""
        assert self.dp is not None and self.udpif is not None
        if self._dirty:
            self._dirty = False
            try:
                self.save()
            except Exception:
                self._dirty = True  # try again next tick
                raise
        with self.udpif.lock:
            self.dp.rank_masks()
            changed = self.dp.refresh_tx_paths()  # a container may turn GRO on or off on its end at any time
        for msg in changed:
            log.warning("%s", msg)
        if self.revalidator is not None and not self.revalidator.is_alive() and not self.stop.is_set():
            log.error("the revalidator died; restarting it")
            self.revalidator.start()
        for h in list(self.handlers):
            if not h.is_alive() and not self.stop.is_set():
                self.handler_restarts += 1
                log.error("handler %d died; restarting it", h.hid)
                self._start_handler(h.hid)

    def shutdown(self, remove: bool = False) -> None:
        """Stop the daemon's threads and sockets. The datapath keeps running (ports attached, maps pinned:
        established flows keep forwarding, misses are counted lost) until the next start adopts it; with
        remove it goes too (``xdpswitch dpctl del-dp``)."""
        self.stop.set()
        # each step runs whatever an earlier one raised (logged): a state file that cannot be written must not
        # leave the control socket, the name's lock or the datapath's hold behind
        steps: list[tuple[str, Callable[[], None]]] = [
            ("closing the link monitor", self._close_links),
            ("stopping the OpenFlow channel", lambda: self.connmgr.stop() if self.connmgr is not None else None),
            ("saving the state file", self._save_if_dirty),
            ("stopping the revalidator", lambda: self.revalidator.stop() if self.revalidator is not None else None),
            ("stopping the handlers", self._join_handlers),
            ("closing /metrics", lambda: self._metrics.close() if self._metrics is not None else None),
            ("closing the control sockets", self.unixctl.close),
            ("letting go of the datapath", lambda: self._let_go(remove)),
            ("unlocking the name", self._unlock_name),
        ]
        for what, step in steps:
            try:
                step()
            except Exception:
                log.exception("stopping %s: %s failed; the rest of the shutdown goes on", self.name, what)

    def _join_handlers(self) -> None:
        for h in self.handlers:
            h.join(timeout=2)

    def _close_links(self) -> None:
        if self._links is not None:
            self._links.close()
            self._links = None

    def _save_if_dirty(self) -> None:
        if self._dirty:
            self._dirty = False
            self.save()

    def _let_go(self, remove: bool) -> None:
        """Close the upcall sockets, then leave the datapath running (released) or remove it."""
        if self.dp is None:
            return
        names = [p.name for p in self.dp.ports.values()]
        for (port, q), xs in self.sockets.items():
            try:
                self.dp.set_upcall_socket(port, q, None)
            except DatapathError:
                pass
            xs.close()
        if remove:
            self.dp.close(unpin=True)
            self.say(f"detached from {', '.join(names) or 'no ports'}; {self.name} stopped and its datapath "
                     "removed")
        else:
            self.dp.release()
            self.say(f"{self.name} stopped; its datapath keeps forwarding established flows on "
                     f"{', '.join(names) or 'no ports'} (xdpswitch start adopts it; xdpswitch dpctl del-dp --name "
                     f"{self.name} removes it)")
        self.dp = None

    def _lock_name(self) -> None:
        """One daemon per name: a lock held for the daemon's life (the kernel drops it if the daemon dies)."""
        import fcntl

        RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = RUN_DIR / f"{self.name}.pid"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(f"a switch named {self.name!r} is already running (pid {other}); stop it first, "
                             "or give this one another --name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._pid_fd = fd

    def _unlock_name(self) -> None:
        fd = self._pid_fd
        if fd is not None:
            (RUN_DIR / f"{self.name}.pid").unlink(missing_ok=True)
            os.close(fd)
            self._pid_fd = None

    # --- ports at run time (ovs-vsctl add-port / del-port) ----------------------------------------------

    def add_port(self, ifname: str, ofport: int | None = None) -> dict[str, object]:
        """Add a port to the running switch: attached, its upcall sockets read, floods and NORMAL include it
        once the revalidator pass this waits for is done, PORT_STATUS (add) sent, and remembered in the
        state file. Any refusal (no such interface, already a port here or on another switch, it carries
        the default route, the number taken) changes nothing."""
        assert self.dp is not None and self.udpif is not None and self.revalidator is not None
        with self._port_lock:
            if any(p.name == ifname for p in self.ports):
                raise CommandError(f"{ifname} is already port {next(p.port_no for p in self.ports if p.name == ifname)}"
                                   f" of {self.name}")
            if link_info(ifname) is None:
                raise CommandError(f"no interface named {ifname!r}")
            taken = {p.port_no for p in self.ports}
            if ofport is None:
                ofport = next(n for n in range(1, self.config.max_ports) if n not in taken)
            elif ofport in taken:
                raise CommandError(f"port number {ofport} is taken by "
                                   f"{next(p.name for p in self.ports if p.port_no == ofport)}")
            spec = PortSpec(ifname, ofport)
            try:
                with self.udpif.lock:
                    made = self._attach_port(spec)
            except (DatapathError, OSError, ValueError) as e:
                raise CommandError(f"add-port {ifname}: {e}") from None
            self.ports = [*self.ports, spec]
            for h in self.handlers:   # each new queue goes to the handler with the fewest
                h.set_sockets(self._handler_sockets(h.hid))
            self._ports_added[ifname] = ofport
            self._ports_deleted.discard(ifname)
            self._port_changes_saved()
            with self.udpif.lock:
                self.udpif.xlate_changed()   # floods, groups and NORMAL now reach it
            self.revalidator.request()
            if self.connmgr is not None:
                self.connmgr.ports_changed()
            return {"port": ofport, "name": ifname, "queues": len(made)}

    def del_port(self, ifname: str) -> dict[str, object]:
        """Remove a port from the running switch: its upcall sockets closed once no handler reads them, the
        fast path detached, megaflows that output to it translated again (the revalidator pass this waits
        for), MACs learned on it forgotten, PORT_STATUS (delete) sent, and remembered in the state file."""
        assert self.dp is not None and self.udpif is not None and self.revalidator is not None
        with self._port_lock:
            spec = next((p for p in self.ports if p.name == ifname), None)
            if spec is None:
                raise CommandError(f"{ifname} is not a port of {self.name} (ports: "
                                   f"{', '.join(p.name for p in self.ports) or 'none'})")
            gone = {k: xs for k, xs in self.sockets.items() if k[0] == spec.port_no}
            self.sockets = {k: xs for k, xs in self.sockets.items() if k[0] != spec.port_no}
            for h in self.handlers:
                if not h.set_sockets(self._handler_sockets(h.hid)):
                    log.warning("handler %d did not take its new socket list; it is restarted", h.hid)
            for key in gone:
                self._handler_of.pop(key, None)
            with self.udpif.lock:
                for port, q in gone:
                    try:
                        self.dp.set_upcall_socket(port, q, None)
                    except DatapathError:
                        pass
                try:
                    self.dp.del_port(spec.port_no)
                except DatapathError as e:
                    log.warning("del-port %s: %s (the port is forgotten anyway)", ifname, e)
                self.mac.flush(spec.port_no)
                self.udpif.xlate_changed()
            for xs in gone.values():
                xs.close()
            self.ports = [p for p in self.ports if p is not spec]
            if self._ports_added.pop(ifname, None) is None:
                self._ports_deleted.add(ifname)   # a port of the command line: stays deleted at restart
            self._port_changes_saved()
            self.revalidator.request()
            if self.connmgr is not None:
                self.connmgr.ports_changed()
            return {"port": spec.port_no, "name": ifname}

    def _port_changes_saved(self) -> None:
        try:
            self.save()
        except OSError as e:
            self._dirty = True
            log.error("writing %s failed (%s); retried every second", self.state_file, e.strerror)

    def _apply_port_changes(self) -> None:
        """The state file's run-time port changes on top of the command line's ports: ports added with
        add-port come back, ports of the command line removed with del-port stay removed."""
        try:
            data = json.loads(self.state_file.read_text())
            ports = data.get("ports", {}) if isinstance(data, dict) else {}
            added = ports.get("added", {})
            deleted = ports.get("deleted", [])
            if not (isinstance(added, dict) and all(isinstance(k, str) and isinstance(v, int) for k, v in added.items())
                    and isinstance(deleted, list) and all(isinstance(d, str) for d in deleted)):
                raise ValueError("'ports' must be {\"added\": {IF: N}, \"deleted\": [IF]}")
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.state_file}: {e}") from None
        self._ports_added, self._ports_deleted = dict(added), set(deleted)
        for name in sorted(self._ports_deleted & {p.name for p in self.ports}):
            self.say(f"port {name} was removed with del-port: not adding it (xdpswitch add-port brings it back)")
        keep = [p for p in self.ports if p.name not in self._ports_deleted]
        for name, no in self._ports_added.items():
            if any(p.name == name for p in keep):
                continue
            if any(p.port_no == no for p in keep):
                raise ValueError(f"{self.state_file}: port {name} was added as number {no}, which the command line "
                                 "gives to another port")
            keep.append(PortSpec(name, no))
            self.say(f"port {name} (added with add-port) comes back as port {no}")
        self.ports = keep

    def metrics_snapshot(self) -> Snapshot:
        """What a Prometheus scrape reports (exporters.collector.Snapshot), read now."""
        return _snapshot_of(self)

    def save(self) -> None:
        """Write the state file: the tables copied under the Udpif's lock (their owner), written outside it."""
        lock = self.udpif.lock if self.udpif is not None else threading.RLock()
        with self._save_lock:
            with lock:
                snap = self.tables.snapshot()
            write_state(self.state_file, {**snap.to_json(), "ports": {"added": dict(self._ports_added),
                                                                       "deleted": sorted(self._ports_deleted)}})

    def _removed(self, rules: list[tuple[Rule, str]]) -> None:
        """Rules that expired, or that the control socket deleted: FLOW_REMOVED to the controllers that asked."""
        self._dirty = True  # saved by the next tick
        if self.connmgr is not None:
            for r, why in rules:
                self.connmgr.ofproto.flow_removed(r, REMOVED_REASONS[why])

    # --- what the OpenFlow channel needs (ctl.openflow.ofproto.SwitchOps) ---------------------------------------

    def change_tables(self, fn: Callable[[OpenFlowTables], Any]) -> Any:
        """A flow-mod from the OpenFlow channel. As in OVS it does not wait for the revalidator: the pass
        it wakes brings the megaflows up to date (slow-path ones on their next packet), and the state file
        is written by the next tick, so a controller's flow-mods cost neither a pass nor an fsync each."""
        assert self.udpif is not None
        with self.udpif.lock:
            version = self.tables.version
            result = self.udpif.change_tables(fn)
            if self.tables.version != version:
                self._dirty = True
        return result

    def read_tables(self, fn: Callable[[OpenFlowTables], Any]) -> Any:
        assert self.udpif is not None
        self.udpif.push_stats()
        with self.udpif.lock:
            return fn(self.tables)

    def port_numbers(self) -> set[int]:
        return set(self.dp.ports) if self.dp is not None else set()

    def bucket_stats(self, group: Group) -> list[tuple[int, int]]:
        assert self.udpif is not None
        with self.udpif.lock:
            return self.udpif.group_stats(group)

    def meter_stats(self, meter: Meter) -> list[tuple[int, int]]:
        assert self.udpif is not None
        return self.udpif.meter_stats(meter)

    def _refresh_links(self) -> bool:
        """Each port's link state (admin up and carrier), as fast-failover groups see it; True if one changed."""
        if self.dp is None:
            return False
        kernel = {li.ifindex: li for li in links().values()}
        now = {}
        for p in list(self.dp.ports.values()):
            li = kernel.get(p.ifindex)
            now[p.port_no] = li is not None and li.admin_up and li.carrier
        changed = now != self._link_up
        self._link_up = now
        return changed

    def _link_changed(self, _ifindex: int) -> None:
        """A link event: PORT_STATUS to the controllers, and megaflows translated again if a port went up or down
        (a fast-failover group may pick another bucket)."""
        if self.connmgr is not None:
            self.connmgr.ports_changed()
        if self.udpif is not None and self._refresh_links():
            with self.udpif.lock:
                self.udpif.xlate_changed()

    def port_descs(self) -> list[oc.PortDesc]:
        if self.dp is None:
            return []
        kernel = {li.ifindex: li for li in links().values()}
        return [_port_desc(p.port_no, p.name, kernel.get(p.ifindex)) for p in list(self.dp.ports.values())]

    def port_counters(self) -> list[oc.PortCounters]:
        assert self.dp is not None and self.udpif is not None
        out = []
        port_tx = self.udpif.port_tx()
        for p in list(self.dp.ports.values()):
            st = self.dp.port_stats(p.port_no)
            utx = port_tx.get(p.port_no, (0, 0))
            out.append(oc.PortCounters(p.port_no, st.rx_packets, st.tx_packets + utx[0], st.rx_bytes,
                                       st.tx_bytes + utx[1], st.drops, 0, self.clock.monotonic() - self.started))
        return out

    def packet_out(self, in_port: int, actions: list[of.OfAction], data: bytes) -> None:
        assert self.udpif is not None
        self.udpif.packet_out(in_port, actions, data)

    def _transmit(self, port: int, frames: Sequence[bytes]) -> int:
        xs = self.sockets.get((port, 0))
        if xs is None:
            return 0
        return xs.send(list(frames))

    def socket_drops(self) -> int:
        """Upcalls XDP redirected to a socket whose ring was full (or that dropped them)."""
        total = 0
        for xs in self.sockets.values():
            st = xs.stats()
            total += st["rx_dropped"] + st["rx_ring_full"]
        return total

    # --- control commands the switch itself owns ---------------------------------------------------------

    def _register_commands(self) -> None:
        assert self.udpif is not None and self.revalidator is not None and self.connmgr is not None
        ctl = self.unixctl
        register_upcall_commands(ctl, self.udpif, self.name, self.port_numbers, self._saved, self._upcall_show)
        register_revalidator_commands(ctl, self.revalidator)
        register_channel_commands(ctl, self.connmgr, self._channel_show)
        ctl.register("add-port", self.add_port)
        ctl.register("del-port", self.del_port)
        ctl.register("upcall-limit", self.set_upcall_limit)

    def set_upcall_limit(self, rate: int | None = None, burst: int | None = None, total_rate: int | None = None,
                         total_burst: int | None = None, mask_limit: int | None = None) -> dict[str, int]:
        """upcall set --upcall-rate ... --mask-limit: change the upcall limits or the mask limit of the running
        switch (None: as they are)."""
        assert self.udpif is not None and self.dp is not None
        if mask_limit is not None:
            if not isinstance(mask_limit, int) or not 0 <= mask_limit <= self.config.max_masks:
                raise ValueError(f"mask limit {mask_limit!r} is out of range 0..{self.config.max_masks}")
            self.mask_limit = self.udpif.mask_limit = mask_limit
        cur = self.udpif.upcall_limits
        new = UpcallLimits(cur.port_rate if rate is None else rate, cur.port_burst if burst is None else burst,
                           cur.total_rate if total_rate is None else total_rate,
                           cur.total_burst if total_burst is None else total_burst)
        self.udpif.set_upcall_limits(new, self.dp.config.max_ports)
        self.upcall_limits = new
        return {**new.to_json(), "mask_limit": self.mask_limit}

    def _saved(self) -> None:
        """After an ofctl change (already in the tables and the datapath): write the state file now; if that
        fails (disk full, ...) the change stands, the failure is logged, and the next tick tries again."""
        try:
            self.save()
        except OSError as e:
            self._dirty = True
            log.error("writing %s failed (%s); the change is applied and saving is retried every second",
                      self.state_file, e.strerror)

    def _upcall_show(self) -> dict[str, object]:
        assert self.dp is not None and self.revalidator is not None and self.udpif is not None
        return {"handlers": len(self.handlers), "handler_restarts": self.handler_restarts,
                "socket_drops": self.socket_drops(), "fast_path_lost": self.dp.stats().lost,
                "upcall_limited": self.dp.stats().drops.get("upcall_limit", 0), **self.udpif.upcall_limits.to_json(),
                "mask_limit": self.udpif.mask_limit, "masks": self.dp.n_masks,
                "uptime_s": round(self.clock.monotonic() - self.started, 1), "loop_errors": self.errors.counts(),
                **revalidator_show(self.revalidator)}

    def _channel_show(self) -> dict[str, object]:
        assert self.udpif is not None
        with self.udpif.lock:
            entries, mac_stats = len(self.mac), dict(vars(self.mac.stats))
        return {"datapath_id": f"{self.datapath_id:016x}", "mac_entries": entries, "mac": mac_stats}


def _raise_nofile() -> None:
    """Open files up to the hard limit (systemd's default soft limit, 1024, is about 1000 OpenFlow clients)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, e)


def _default_dpid(name: str) -> int:
    """A stable 48-bit datapath id from the switch name (OVS derives it from the bridge's MAC)."""
    import hashlib

    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:6], "big") or 1


def _port_desc(port_no: int, ifname: str, li: LinkInfo | None) -> oc.PortDesc:
    """An OpenFlow port description from the kernel's view of the interface; one whose link is gone (a
    container deleted) is reported administratively down with no link."""
    if li is None:
        return oc.PortDesc(port_no, bytes(6), ifname, 1, 1, 0, 0)
    mbps = li.speed_mbps
    curr = {10: 1 << 1, 100: 1 << 3, 1000: 1 << 5, 10000: 1 << 6, 40000: 1 << 7, 100000: 1 << 8}.get(mbps, 0)
    return oc.PortDesc(port_no, bytes.fromhex(li.mac.replace(":", "")), ifname, 0 if li.admin_up else 1,
                       4 if li.carrier else 1, curr | (1 << 11 if curr else 0), mbps * 1000)


def _snapshot_of(sw: Switch) -> Any:
    from exporters.collector import Snapshot

    dp, up = sw.dp, sw.udpif
    if dp is None or up is None:
        raise RuntimeError("the datapath is not running")
    st, dps = up.stats, dp.stats()
    with up.lock:  # the tables and ukeys are the Udpif's
        rules, ukeys, stale = len(sw.tables), len(up.ukeys), len(up.pending)
    cum, buckets = 0, []
    for bound, n in zip(HANDLING_BOUNDS, st.handling_counts, strict=True):
        cum += n
        buckets.append((bound, cum))
    return Snapshot(
        datapath=sw.name, dp=dps,
        ports=[PortSample(p.port_no, p.name, dp.port_stats(p.port_no), p.tx_path) for p in list(dp.ports.values())],
        maps=dp.map_usage(), megaflows=dp.n_flows, masks=dp.n_masks, rules=rules, ukeys=ukeys,
        upcalls={"ok": st.ok, "failed": st.failed, "lost": sw.socket_drops() + dps.lost},
        upcall_reasons=dict(st.by_reason), megaflows_installed=st.installed, megaflows_deleted=dict(st.deleted),
        handling_buckets=buckets, handling_sum=st.handling_sum, handling_phases=dict(st.phase_seconds),
        revalidator_dump_seconds=sw.revalidator.stats.last_dump_ms / 1000 if sw.revalidator else 0.0,
        flow_limit=up.flow_limit, loop_errors=sw.errors.counts(),
        openflow_connections=len(sw.connmgr.connected()) if sw.connmgr else 0,
        openflow_refused=sw.connmgr.stats.as_dict() if sw.connmgr else {},
        packet_ins_rate_limited=sw.connmgr.packet_ins_rate_limited if sw.connmgr else 0,
        masks_limited=st.mask_limited, megaflows_revalidated=sw.revalidator.swept if sw.revalidator else 0,
        megaflows_stale=stale)


