"""Upcall handling: a miss comes up from the fast path, the pipeline decides, a megaflow goes down.

Names as in OVS's ofproto-dpif-upcall: ``Udpif`` owns the ukeys (user space's record of every installed
megaflow: its match, actions and the rules it went through) and handles batches of upcalls; ``Handler``
threads read the AF_XDP sockets and feed it.

For each upcall in a batch: the flow key is parsed from the frame (the fast path sends the ingress port
in the metadata in front of it); a ukey that already covers the key is reused (identical upcalls in one
batch, or packets that were queued before their megaflow went in); otherwise the pipeline translates it
(``ctl/pipeline/xlate.py``) and the megaflow is installed, unless the flow-limit is reached. Actions the fast path
cannot run are installed as ``userspace`` (slow path): each packet of that megaflow comes up and the
handler runs its actions. Either way the packet itself is executed in user space (``ctl/datapath/execute.py``) and
transmitted through the output port's AF_XDP socket.

Every flow-table change goes through ``Udpif.tables_changed()``, which deletes every megaflow (their EMC
entries die with them) under the same lock that translations hold, so no megaflow computed from old
tables survives the change. (The revalidators will do this flow by flow.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ctl.datapath import dpif
from ctl.datapath.dpif import Action, ActionError, GroupsFull, MapFull
from ctl.datapath.execute import FLOOD, execute
from ctl.datapath.flowkey import FlowKey, parse
from ctl.datapath.xsk import Upcall
from ctl.pipeline.mac_learning import MacLearning
from ctl.pipeline.ofactions import OfAction
from ctl.pipeline.ofmatch import flow_of, key_of
from ctl.pipeline.openflow_tables import OpenFlowTables, Rule
from ctl.pipeline.xlate import translate, translate_actions

log = logging.getLogger(__name__)

DEFAULT_FLOW_LIMIT = 200000  # OVS's other_config:flow-limit default
HANDLING_BOUNDS = (10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 10e-3, float("inf"))
UPCALL_REASONS = {1: "miss", 2: "slow_path"}


class RevalidatorLike(Protocol):
    wake: threading.Event

    def request(self, timeout: float = 5.0) -> bool: ...


class DatapathOps(Protocol):
    """What the upcall layer needs of a datapath (ctl.datapath.dpif_xdp.Datapath; a fake in the unit tier)."""

    def put_flow(self, key: FlowKey, mask: FlowKey, actions: Sequence[Action]) -> int: ...
    def del_flow(self, key: FlowKey, mask: FlowKey) -> bool: ...
    def flow_stats(self, idx: int) -> tuple[int, int, int]: ...
    def flow_stats_all(self) -> dict[int, tuple[int, int, int]]: ...
    @property
    def n_flows(self) -> int: ...


Transmit = Callable[[int, Sequence[bytes]], int]  # (port, frames) -> frames sent
PacketIn = Callable[[dpif.DpController, int, bytes], None]  # (what the pipeline asked, in_port, frame)


@dataclass(eq=False)
class Ukey:
    """One installed megaflow as user space knows it (OVS: struct udpif_key)."""

    key: FlowKey                # masked
    mask: FlowKey
    actions: list[Action]       # what the packet gets (run by the fast path, or here when slow)
    rules: list[Rule]
    slow_path: str = ""         # why the fast path sends its packets up ("" when it runs them)
    idx: int = -1               # the fast path's flow slot; -1 when not installed
    packets: int = 0            # fast-path totals already credited to the rules
    bytes: int = 0
    flow: dict[str, int] = field(default_factory=dict)  # the packet that made it: revalidation translates it again
    version: int = 0            # the tables' version it was translated at
    created_ns: int = 0         # the Udpif's clock.now_ns() when it was made (the fast path's clock)
    dead: bool = False
    normal: bool = False        # NORMAL made it: the revalidator refreshes the source MAC while it is used


class Ukeys:
    """The ukeys, looked up as the fast path looks up megaflows: one dict per mask (tuple space search)."""

    def __init__(self) -> None:
        self.by_mask: dict[int, dict[int, Ukey]] = {}

    def __len__(self) -> int:
        return sum(len(d) for d in self.by_mask.values())

    def __iter__(self) -> Iterator[Ukey]:
        for d in self.by_mask.values():
            yield from d.values()

    def find(self, key: FlowKey) -> Ukey | None:
        k = int.from_bytes(bytes(key), "little")
        for m, d in self.by_mask.items():
            u = d.get(k & m)
            if u is not None:
                return u
        return None

    def add(self, u: Ukey) -> None:
        m = int.from_bytes(bytes(u.mask), "little")
        self.by_mask.setdefault(m, {})[int.from_bytes(bytes(u.key), "little")] = u

    def remove(self, u: Ukey) -> None:
        m = int.from_bytes(bytes(u.mask), "little")
        d = self.by_mask.get(m)
        if d is not None:
            d.pop(int.from_bytes(bytes(u.key), "little"), None)
            if not d:
                del self.by_mask[m]

    def clear(self) -> list[Ukey]:
        gone = [u for d in self.by_mask.values() for u in d.values()]
        self.by_mask.clear()
        return gone


@dataclass
class UpcallStats:
    """Counters of the upcall path (``xdpswitch upcall show``)."""

    received: int = 0
    ok: int = 0                 # handled: the packet went through the pipeline and its actions ran
    failed: int = 0             # could not be handled (a bug or a packet the pipeline chokes on): dropped
    by_reason: dict[str, int] = field(default_factory=lambda: {r: 0 for r in UPCALL_REASONS.values()})
    installed: int = 0          # megaflows put into the fast path
    existing: int = 0           # upcalls answered by a megaflow already installed (same batch, or queued)
    slow_path: int = 0          # megaflows installed as userspace because the fast path cannot run them
    over_flow_limit: int = 0    # upcalls forwarded without installing: flow-limit reached
    install_failed: int = 0     # the fast path refused the megaflow (full): forwarded without installing
    controller: int = 0         # packet-ins the pipeline asked for (sent to every controller that wants them)
    tx_packets: int = 0
    tx_dropped: int = 0         # emissions to ports with no socket, or refused by the socket
    drops: dict[str, int] = field(default_factory=dict)  # packets the actions dropped, by reason
    deleted: dict[str, int] = field(default_factory=dict)  # megaflows deleted, by reason
    # upcall handling time: counts per bucket of HANDLING_BOUNDS (not cumulative), and the sum in seconds
    handling_counts: list[int] = field(default_factory=lambda: [0] * len(HANDLING_BOUNDS))
    handling_sum: float = 0.0

    def to_json(self) -> dict[str, object]:
        return dict(vars(self))

    def observe(self, seconds_each: float, n: int) -> None:
        for i, bound in enumerate(HANDLING_BOUNDS):
            if seconds_each <= bound:
                self.handling_counts[i] += n
                break
        self.handling_sum += seconds_each * n


class Udpif:
    """The upcall layer of one switch: ukeys, translation, installs and the flush on table changes."""

    def __init__(self, dp: DatapathOps, tables: OpenFlowTables, transmit: Transmit,
                 ports: Callable[[], Iterable[int]], flow_limit: int = DEFAULT_FLOW_LIMIT,
                 mac: MacLearning | None = None, clock: dpif.Clock | None = None) -> None:
        self.dp = dp
        self.clock = clock or dpif.Clock()
        self.tables = tables
        self.transmit = transmit
        self.ports = ports
        self.flow_limit = flow_limit
        self.mac = mac if mac is not None else MacLearning()
        self.fail_open = False          # fail-mode standalone with no controller: NORMAL for every packet
        self.ukeys = Ukeys()
        self.stats = UpcallStats()
        self.lock = threading.RLock()   # tables, ukeys and fast-path flow writes change under it
        self.revalidator: RevalidatorLike | None = None  # set: table changes revalidate instead of flushing
        self.on_expired: Callable[[list[tuple[Rule, str]]], None] | None = None
        self.packet_in: PacketIn | None = None   # the OpenFlow channel (ctl/openflow/connmgr.py), when there is one
        self.port_tx: dict[int, tuple[int, int]] = {}  # per port: (packets, bytes) sent from user space

    # --- upcalls -----------------------------------------------------------------------------------

    def handle(self, upcalls: Sequence[Upcall]) -> None:
        """Handle one batch: decide and install under the lock, then execute and transmit outside it."""
        work: list[tuple[Upcall, list[Action]]] = []
        st = self.stats
        t0 = time.perf_counter()
        with self.lock:
            ports = set(self.ports())
            for up in upcalls:
                st.received += 1
                reason = UPCALL_REASONS.get(up.reason, f"reason_{up.reason}")
                st.by_reason[reason] = st.by_reason.get(reason, 0) + 1
                try:
                    work.append((up, self._decide(up, ports)))
                except Exception:
                    st.failed += 1
                    log.exception("upcall from port %d failed", up.in_port)
        out: dict[int, list[bytes]] = {}
        for up, actions in work:
            if self._execute(up.frame, up.in_port, actions, out):
                st.ok += 1
        self._send(out)
        if upcalls:
            st.observe((time.perf_counter() - t0) / len(upcalls), len(upcalls))

    def _execute(self, frame: bytes, in_port: int, actions: Sequence[Action], out: dict[int, list[bytes]]) -> bool:
        """Run actions on one packet: emissions are queued in out by port, packet-ins sent now."""
        st = self.stats
        try:
            res = execute(frame, actions)
        except Exception:
            st.failed += 1
            log.exception("executing %s on a packet failed", dpif.format_actions(actions))
            return False
        for ctrl, data in res.controller:
            st.controller += 1
            if self.packet_in is not None:
                self.packet_in(ctrl, in_port, data)
        if res.drop:
            name = dpif.DropReason(res.drop).name.lower()
            st.drops[name] = st.drops.get(name, 0) + 1
        for port, data in res.emits:
            targets = [p for p in self.ports() if p != in_port] if port == FLOOD else [port]
            for p in targets:
                out.setdefault(p, []).append(data)
        return True

    def _send(self, out: dict[int, list[bytes]]) -> None:
        st = self.stats
        for port, frames in out.items():
            sent = self.transmit(port, frames)
            st.tx_packets += sent
            st.tx_dropped += len(frames) - sent
            p, b = self.port_tx.get(port, (0, 0))
            self.port_tx[port] = (p + sent, b + sum(len(f) for f in frames[:sent]))

    def packet_out(self, in_port: int, actions: list[OfAction], frame: bytes) -> list[Action]:
        """A controller's PACKET_OUT: its actions on frame, as if it had come in on in_port (OFPP_CONTROLLER
        for none). Returns the datapath actions it came to."""
        with self.lock:
            flow = flow_of(parse(frame, in_port))
            tr = translate_actions(self.tables, flow, actions, set(self.ports()), mac=self.mac)
            now = self.clock.monotonic()
            for r in tr.rules:
                r.credit(1, len(frame), now)
            if tr.learned:
                self.xlate_changed()
        out: dict[int, list[bytes]] = {}
        self._execute(frame, in_port, tr.actions, out)
        self._send(out)
        return tr.actions

    def xlate_changed(self) -> None:
        """Something a translation reads besides the rules changed (the MAC table, fail-open): megaflows
        made before must be translated again. The tables' version counts every such input; the caller
        holds the lock."""
        self.tables.version += 1
        rv = self.revalidator
        if rv is not None:
            rv.wake.set()

    def set_fail_open(self, on: bool) -> None:
        with self.lock:
            if self.fail_open != on:
                self.fail_open = on
                self.xlate_changed()

    def _decide(self, up: Upcall, ports: set[int]) -> list[Action]:
        key = parse(up.frame, up.in_port)
        u = self.ukeys.find(key)
        if u is not None and u.slow_path and u.version != self.tables.version:
            # a slow-path megaflow made before the last change: translate this packet afresh rather than
            # wait for the revalidator (a controller's flow-mod then takes effect on the very next packet)
            self.delete_ukey(u, "stale")
            u = None
        if u is not None:
            if not u.slow_path:
                self.stats.existing += 1
            now = self.clock.monotonic()
            for r in u.rules:
                r.credit(1, len(up.frame), now)
            return u.actions
        flow = flow_of(key)
        tr = translate(self.tables, flow, ports, trace=False, mac=self.mac, may_learn=True, fail_open=self.fail_open)
        now = self.clock.monotonic()
        for r in tr.rules:
            r.credit(1, len(up.frame), now)
        if tr.learned:
            self.xlate_changed()
        mask = key_of(tr.wc)
        u = Ukey(key.masked(mask), mask, tr.actions, tr.rules, tr.slow_path, flow=flow, version=self.tables.version,
                 created_ns=self.clock.now_ns(), normal=tr.normal)
        if self.dp.n_flows >= self.flow_limit:
            self.stats.over_flow_limit += 1
            return tr.actions
        try:
            u.idx = self._install(key, mask, u)
        except (ActionError, MapFull) as e:
            self.stats.install_failed += 1
            log.warning("megaflow not installed: %s", e)
            return tr.actions
        self.stats.installed += 1
        if u.slow_path:
            self.stats.slow_path += 1
        self.ukeys.add(u)
        return tr.actions

    def _install(self, key: FlowKey, mask: FlowKey, u: Ukey) -> int:
        """Put u's megaflow: its actions if the fast path can run them, else userspace (slow path)."""
        if not u.slow_path:
            try:
                return self.dp.put_flow(key, mask, u.actions)
            except (ActionError, GroupsFull) as e:
                u.slow_path = str(e)  # e.g. every output group in use: the handler runs the actions instead
        return self.dp.put_flow(key, mask, [dpif.DpUpcall()])

    # --- flow-table changes and rule counters ------------------------------------------------------------

    def dump_stats(self, ukeys: Sequence[Ukey]) -> list[tuple[Ukey, tuple[int, int, int]]]:
        """Each ukey with its megaflow's (packets, bytes, last used), all read in one batched dump."""
        stats = self.dp.flow_stats_all()
        return [(u, stats.get(u.idx, (0, 0, 0)) if u.idx >= 0 else (u.packets, u.bytes, 0)) for u in ukeys]

    def push_stats(self) -> None:
        """Credit each megaflow's new fast-path packets and bytes to the rules it went through."""
        with self.lock:
            for u, (packets, nbytes, _used) in self.dump_stats(list(self.ukeys)):
                self.credit_to(u, packets, nbytes)

    def _credit(self, u: Ukey) -> None:
        if u.idx < 0:
            return
        packets, nbytes, _used = self.dp.flow_stats(u.idx)
        self.credit_to(u, packets, nbytes)

    def credit_to(self, u: Ukey, packets: int, nbytes: int) -> None:
        """Credit the megaflow's totals (as read from the fast path) beyond what was credited already."""
        dp_, db = packets - u.packets, nbytes - u.bytes
        if dp_ > 0:
            if not u.slow_path:  # slow-path packets were credited when they came up
                now = self.clock.monotonic()
                for r in u.rules:
                    r.credit(dp_, db, now)
            u.packets, u.bytes = packets, nbytes

    def tables_changed(self, change: Callable[[OpenFlowTables], object]) -> object:
        """Apply change to the tables. With a revalidator, wait for a pass that re-translates every
        megaflow made from older tables (deleting or updating it); without one, delete every megaflow.
        Either way no megaflow computed from the old tables stays in use once this returns."""
        with self.lock:
            result = change(self.tables)
            if self.revalidator is None:
                self.flush()
                return result
        if not self.revalidator.request():
            log.warning("the revalidator did not finish a pass in time; flushing every megaflow")
            self.flush()
        return result

    def change_tables(self, change: Callable[[OpenFlowTables], object]) -> object:
        """Apply change under the lock without waiting: if the tables changed, the revalidator is woken to
        bring the megaflows up to date (slow-path ones are translated afresh on their next packet)."""
        with self.lock:
            version = self.tables.version
            result = change(self.tables)
            if self.tables.version != version and self.revalidator is not None:
                self.revalidator.wake.set()
            return result

    def delete_ukey(self, u: Ukey, reason: str) -> None:
        """Delete one megaflow (fast path and ukey), crediting its last packets to its rules."""
        with self.lock:
            u.dead = True
            self.ukeys.remove(u)
            if u.idx >= 0:
                self.dp.del_flow(u.key, u.mask)
                self._credit(u)
                self.stats.deleted[reason] = self.stats.deleted.get(reason, 0) + 1

    def flush(self) -> int:
        """Delete every megaflow (fast path and ukeys), crediting their last packets to their rules."""
        with self.lock:
            gone = self.ukeys.clear()
            for u in gone:
                u.dead = True
                if u.idx >= 0:
                    self.dp.del_flow(u.key, u.mask)
            for u in gone:
                self._credit(u)  # after the delete: no packet can hit it any more
            self.stats.deleted["flush"] = self.stats.deleted.get("flush", 0) + sum(u.idx >= 0 for u in gone)
            return len(gone)
