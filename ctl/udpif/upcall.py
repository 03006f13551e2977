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

Every flow-table change goes through ``Udpif.change_tables()``: the change is made under the lock that
translations hold, the megaflows it can affect are marked stale (``ctl/udpif/affected.py``), and the
revalidator translates those again (``ctl/udpif/revalidator.py``); a caller that asks to wait gets control
back once every marked megaflow is up to date.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ctl.common.unixctl import Unixctl
from ctl.datapath import dpif
from ctl.datapath.dpif import Action, ActionError, GroupsFull, MapFull
from ctl.datapath.execute import FLOOD, execute
from ctl.datapath.flowkey import FlowKey, mac_str, parse_layout
from ctl.datapath.xsk import Upcall
from ctl.pipeline.groups import OFPG_ALL, SELECT_MAX_BUCKETS, Group, parse_group
from ctl.pipeline.mac_learning import MacLearning, vlan_of
from ctl.pipeline.meters import OFPM_ALL, OFPM_CONTROLLER, Meter, SoftMeter, parse_meter
from ctl.pipeline.ofactions import N_TABLES, OfAction
from ctl.pipeline.ofmatch import (
    FULL,
    FlowSyntaxError,
    flow_from_text,
    flow_of,
    format_prefixes,
    key_of,
    parse_prefixes,
)
from ctl.pipeline.openflow_tables import Change, Everything, OpenFlowTables, Rule, parse_flow
from ctl.pipeline.xlate import Credited, Lookup, Translation, translate, translate_actions
from ctl.udpif.affected import affected

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_FLOW_LIMIT = 200000  # OVS's other_config:flow-limit default
EXACT_MASK = key_of(dict(FULL))  # every bit of every field: the mask limit's one subtable for all
DEFAULT_MASK_LIMIT = 32      # subtables (the datapath holds 64); the daemon's default
DEFAULT_UPCALL_RATE = 5000   # upcalls/s from one port (the daemon's default; a handler sets up 5-10k flows/s here)
HANDLING_BOUNDS = (10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 10e-3, float("inf"))
UPCALL_REASONS = {1: "miss", 2: "slow_path"}
# where handling time goes (``UpcallStats.phase_seconds``; dpif-netdev's pmd-perf-show splits a PMD's cycles the
# same way): parse (the frame, and the ukey lookup), translate (the pipeline), megaflow (its mask and ukey),
# install (the batch's map writes), execute (the actions on the packets), transmit (AF_XDP)
PHASES = ("parse", "translate", "megaflow", "install", "execute", "transmit")


@dataclass(frozen=True)
class UpcallLimits:
    """Upcalls per second the fast path lets through to the handlers: from each port, and from all of them (0: no
    limit). Over it, a miss is dropped at the driver and counted (drop reason upcall_limit), so one port's storm of
    new flows cannot take the handlers from the others. The buckets hold burst upcalls (0: one second's worth)."""

    port_rate: int = 0
    port_burst: int = 0
    total_rate: int = 0
    total_burst: int = 0

    def check(self) -> None:
        for name in ("port_rate", "port_burst", "total_rate", "total_burst"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 10_000_000:
                raise ValueError(f"{name.replace('_', '-')} {v!r} is out of range 0..10000000")

    def to_json(self) -> dict[str, int]:
        return {"upcall_rate": self.port_rate, "upcall_burst": self.port_burst or self.port_rate,
                "upcall_total_rate": self.total_rate, "upcall_total_burst": self.total_burst or self.total_rate}


class RevalidatorLike(Protocol):
    def settle(self) -> None: ...

    wake: threading.Event

    def request(self) -> None: ...


class DatapathOps(Protocol):
    """What the upcall layer needs of a datapath (ctl.datapath.dpif_xdp.Datapath; a fake in the unit tier)."""

    def put_flow(self, key: FlowKey, mask: FlowKey, actions: Sequence[Action]) -> int: ...
    def put_flows(self, items: Sequence[tuple[FlowKey, FlowKey, Sequence[Action]]]) -> list[int | Exception]: ...
    def del_flow(self, key: FlowKey, mask: FlowKey) -> bool: ...
    def del_flows(self, items: Sequence[tuple[FlowKey, FlowKey]]) -> list[bool]: ...
    def flow_stats(self, idx: int) -> tuple[int, int, int]: ...
    def flow_stats_all(self) -> dict[int, tuple[int, int, int]]: ...
    def bucket_stats(self, base: int, n: int) -> list[tuple[int, int]]: ...
    def zero_buckets(self, base: int, n: int) -> None: ...
    def set_meter(self, slot: int, pktps: bool, bands: Sequence[tuple[int, int, int, int]]) -> None: ...
    def set_upcall_limit(self, index: int, rate: int, burst: int) -> None: ...
    def meter_stats(self, slot: int) -> list[tuple[int, int]]: ...
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
    rules: list[Credited]       # the rules, groups and buckets its packets go through (their counters)
    slow_path: str = ""         # why the fast path sends its packets up ("" when it runs them)
    idx: int = -1               # the fast path's flow slot; -1 when not installed
    packets: int = 0            # fast-path totals already credited to the rules
    bytes: int = 0
    flow: dict[str, int] = field(default_factory=dict)  # the packet that made it: revalidation translates it again
    lookups: tuple[Lookup, ...] | None = None  # its translation's table lookups; None: unknown (adopted)
    created_ns: int = 0         # the Udpif's clock.now_ns() when it was made (the fast path's clock)
    dead: bool = False
    normal: bool = False        # NORMAL made it: the revalidator refreshes the source MAC while it is used
    missed: list[Any] = field(default_factory=list)   # tables it matched no rule in: credited as misses
    recirc: bool = False        # slow path, and each packet is translated on its own (it recirculates)


class Ukeys:
    """The ukeys, looked up as the fast path looks up megaflows: one dict per mask (tuple space search), and
    indexed by the rules they went through (a rule's change finds its megaflows without a scan)."""

    def __init__(self) -> None:
        self.by_mask: dict[int, dict[int, Ukey]] = {}
        self.by_rule: dict[Rule, set[Ukey]] = {}
        self.unknown: set[Ukey] = set()   # lookups unknown (adopted, not translated yet): every change marks them
        self.written: set[Ukey] = set()   # a lookup came after a write (it did not see the packet's own fields)
        self.by_mac: dict[tuple[int, int], set[Ukey]] = {}   # NORMAL ones by (VLAN, MAC), source and destination

    def _index(self, u: Ukey) -> None:
        if u.lookups is None:
            self.unknown.add(u)
        elif any(written for _t, _p, written in u.lookups):
            self.written.add(u)
        if u.normal:
            for mac in _macs_of(u):
                self.by_mac.setdefault(mac, set()).add(u)
        for r in u.rules:
            if isinstance(r, Rule):
                self.by_rule.setdefault(r, set()).add(u)

    def _unindex(self, u: Ukey) -> None:
        self.unknown.discard(u)
        self.written.discard(u)
        if u.normal:
            for mac in _macs_of(u):
                users = self.by_mac.get(mac)
                if users is not None:
                    users.discard(u)
                    if not users:
                        del self.by_mac[mac]
        for r in u.rules:
            if isinstance(r, Rule):
                users = self.by_rule.get(r)
                if users is not None:
                    users.discard(u)
                    if not users:
                        del self.by_rule[r]

    def retranslated(self, u: Ukey, rules: list[Credited], lookups: tuple[Lookup, ...], normal: bool) -> None:
        """u was translated again: what it goes through now."""
        self._unindex(u)
        u.rules, u.lookups, u.normal = rules, lookups, normal
        self._index(u)

    def users(self, rules: Iterable[Rule]) -> set[Ukey]:
        """The ukeys that went through any of rules, and those whose lookups are unknown."""
        out = set(self.unknown)
        for r in rules:
            out.update(self.by_rule.get(r, ()))
        return out

    def __len__(self) -> int:
        return sum(len(d) for d in self.by_mask.values())

    def __iter__(self) -> Iterator[Ukey]:
        for d in self.by_mask.values():
            yield from d.values()

    @property
    def n_masks(self) -> int:
        return len(self.by_mask)

    def has_mask(self, mask: FlowKey) -> bool:
        return mask.as_int() in self.by_mask

    def find(self, key: FlowKey) -> Ukey | None:
        k = key.as_int()
        for m, d in self.by_mask.items():
            u = d.get(k & m)
            if u is not None:
                return u
        return None

    def add(self, u: Ukey) -> None:
        m = u.mask.as_int()
        self.by_mask.setdefault(m, {})[u.key.as_int()] = u
        self._index(u)

    def remove(self, u: Ukey) -> None:
        m = u.mask.as_int()
        d = self.by_mask.get(m)
        if d is not None:
            if d.pop(u.key.as_int(), None) is u:
                self._unindex(u)
            if not d:
                del self.by_mask[m]

    def clear(self) -> list[Ukey]:
        gone = [u for d in self.by_mask.values() for u in d.values()]
        self.by_mask.clear()
        self.by_rule.clear()
        self.unknown.clear()
        self.written.clear()
        self.by_mac.clear()
        return gone


def _macs_of(u: Ukey) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (VLAN, MAC) entries of the MAC table a NORMAL megaflow's translation depends on."""
    vlan = vlan_of(u.flow["vlan_tci"])
    return (vlan, u.flow["dl_dst"]), (vlan, u.flow["dl_src"])


@dataclass
class UpcallStats:
    """Counters of the upcall path (``xdpswitch upcall show``). One instance per writer (each handler, the
    OpenFlow channel's packet-outs, and one written only under ``Udpif.lock``), summed when read, as OVS
    sums its per-thread coverage counters: no two threads ever ``+=`` the same integer."""

    received: int = 0
    ok: int = 0                 # handled: the packet went through the pipeline and its actions ran
    failed: int = 0             # could not be handled (a bug or a packet the pipeline chokes on): dropped
    by_reason: dict[str, int] = field(default_factory=lambda: {r: 0 for r in UPCALL_REASONS.values()})
    installed: int = 0          # megaflows put into the fast path
    existing: int = 0           # upcalls answered by a megaflow already installed (same batch, or queued)
    slow_path: int = 0          # megaflows installed as userspace because the fast path cannot run them
    over_flow_limit: int = 0    # upcalls forwarded without installing: flow-limit reached
    install_failed: int = 0     # the fast path refused the megaflow (full): forwarded without installing
    mask_limited: int = 0       # megaflows narrowed to the exact mask: the mask limit was reached (TSE guard)
    controller: int = 0         # packet-ins the pipeline asked for (sent to every controller that wants them)
    tx_packets: int = 0
    tx_dropped: int = 0         # emissions to ports with no socket, or refused by the socket
    drops: dict[str, int] = field(default_factory=dict)  # packets the actions dropped, by reason
    deleted: dict[str, int] = field(default_factory=dict)  # megaflows deleted, by reason
    # upcall handling time: counts per bucket of HANDLING_BOUNDS (not cumulative), and the sum in seconds
    handling_counts: list[int] = field(default_factory=lambda: [0] * len(HANDLING_BOUNDS))
    handling_sum: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))  # see PHASES
    port_tx: dict[int, list[int]] = field(default_factory=dict)  # port -> [packets, bytes] sent from user space

    def to_json(self) -> dict[str, object]:
        out = dict(vars(self))
        del out["port_tx"]
        return out

    def observe(self, seconds_each: float, n: int) -> None:
        for i, bound in enumerate(HANDLING_BOUNDS):
            if seconds_each <= bound:
                self.handling_counts[i] += n
                break
        self.handling_sum += seconds_each * n

    def add(self, other: UpcallStats) -> None:
        """Add other's counts into these (other is a copy nobody writes, or this one is)."""
        for name, v in vars(other).items():
            mine = getattr(self, name)
            if isinstance(v, dict):
                for k, x in list(v.items()):
                    if isinstance(x, list):
                        cur = mine.setdefault(k, [0] * len(x))
                        for i, y in enumerate(x):
                            cur[i] += y
                    else:
                        mine[k] = mine.get(k, 0) + x
            elif isinstance(v, list):
                for i, x in enumerate(list(v)):
                    mine[i] += x
            else:
                setattr(self, name, mine + v)


@dataclass
class Decision:
    """What the pipeline decided for one upcall, with what was computed on the way (the frame is parsed once:
    its key went to the ukey lookup and the pipeline, its offsets go on to the executor)."""

    upcall: Upcall
    actions: list[Action]
    layout: tuple[FlowKey, int, int]    # (key, l3 offset, l4 offset) from flowkey.parse_layout


class Udpif:
    """The upcall layer of one switch: ukeys, translation, installs, and table changes.

    Threads and what they own (OVS's ofproto-dpif-upcall.c says the same of its threads):
     - ``lock`` (re-entrant) guards the OpenFlow tables (``tables``: rules, their counters, the version,
       the journal of changes), the MAC table (``mac``), the ukeys and the stale ones (``pending``, ``marks``),
       ``fail_open``, the fast path's flow writes (``dp.put_flow``, ``dp.del_flow``), and ``_locked_stats``.
       Anyone who reads the tables or ukeys (state save, dumps, ``upcall show``, metrics) copies what it
       needs under the lock and works outside it.
     - handler threads (``ctl/udpif/handler.py``) each call ``handle()`` with their own ``UpcallStats``: they
       decide under the lock and execute and transmit outside it.
     - the revalidator thread (``ctl/udpif/revalidator.py``) takes the lock one batch of ukeys at a time.
     - the OpenFlow channel's thread calls ``packet_out()`` and ``change_tables()``; its counters are
       ``_channel_stats``.
    """

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
        tables.take_journal()   # changes made before there were megaflows affect none
        self.mac.take_changes()
        # the stale ukeys, oldest first (taken with popitem(last=False): O(1), where a dict's first key is not)
        self.pending: OrderedDict[Ukey, None] = OrderedDict()
        self.marks = 0                  # times ukeys were marked stale (the revalidator's settle() waits on it)
        self.lock = threading.RLock()   # see the class docstring for what it guards
        self._locked_stats = UpcallStats()    # written only under lock (deletions)
        self._channel_stats = UpcallStats()   # written only by the thread that calls packet_out()
        self._unsupported_logged: set[tuple[int, str]] = set()   # (rule, why) already logged; under the lock
        self._default_stats = UpcallStats()   # handle() without stats of its own (one caller at a time)
        self._handler_stats: list[UpcallStats] = []   # one per handler, each written by its handler only
        self.revalidator: RevalidatorLike | None = None  # set: table changes revalidate instead of flushing
        # rules that went other than by an OpenFlow flow-mod (timeouts; deletes from the control socket), with
        # why ("idle_timeout", "hard_timeout", "delete", "group_delete"): the daemon sends FLOW_REMOVED
        self.on_removed: Callable[[list[tuple[Rule, str]]], None] | None = None
        self.packet_in: PacketIn | None = None   # the OpenFlow channel (ctl/openflow/connmgr.py), when there is one
        self.upcall_limits = UpcallLimits()   # what set_upcall_limits() last wrote (none until it is called)
        self.mask_limit = 0                   # subtables before new megaflows get the exact mask (0: no limit)
        self.port_up: Callable[[int], bool] | None = None  # a port's link is up (fast failover); None: all are
        self._soft_meters: dict[int, SoftMeter] = {}   # slot -> the slow path's meter; under _meter_lock
        self._meter_lock = threading.Lock()
        self.sync_groups_and_meters()    # groups and meters of a state file were made before we got the tables

    # --- counters ----------------------------------------------------------------------------------------

    def handler_stats(self) -> UpcallStats:
        """A new set of counters for one handler thread (only that thread writes it)."""
        st = UpcallStats()
        with self.lock:
            self._handler_stats = self._handler_stats + [st]
        return st

    @property
    def stats(self) -> UpcallStats:
        """Every writer's counters summed, now (a copy: reading it changes nothing)."""
        total = UpcallStats()
        for st in [self._locked_stats, self._channel_stats, self._default_stats, *self._handler_stats]:
            total.add(st)
        return total

    # --- upcalls -----------------------------------------------------------------------------------

    def handle(self, upcalls: Sequence[Upcall], stats: UpcallStats | None = None) -> None:
        """Handle one batch: decide and install under the lock, then execute and transmit outside it.
        stats: the calling handler's own counters (``handler_stats()``)."""
        st = stats if stats is not None else self._default_stats
        work: list[Decision] = []
        pending: list[tuple[Ukey, FlowKey]] = []  # new megaflows, installed together after the batch's decisions
        t0 = time.perf_counter()
        ph = st.phase_seconds
        with self.lock:
            ports = set(self.ports())
            for up in upcalls:
                st.received += 1
                reason = UPCALL_REASONS.get(up.reason, f"reason_{up.reason}")
                st.by_reason[reason] = st.by_reason.get(reason, 0) + 1
                try:
                    work.append(self._decide(up, ports, st, pending))
                except Exception:
                    st.failed += 1
                    log.exception("upcall from port %d failed", up.in_port)
            if pending:
                t1 = time.perf_counter()
                self._install(pending, st)
                ph["install"] += time.perf_counter() - t1
        t2 = time.perf_counter()
        out: dict[int, list[bytes]] = {}
        for d in work:
            if self._execute(d.upcall.frame, d.upcall.in_port, d.actions, out, st, d.layout):
                st.ok += 1
        t3 = time.perf_counter()
        ph["execute"] += t3 - t2
        self._send(out, st)
        ph["transmit"] += time.perf_counter() - t3
        if upcalls:
            st.observe((time.perf_counter() - t0) / len(upcalls), len(upcalls))

    def _execute(self, frame: bytes, in_port: int, actions: Sequence[Action], out: dict[int, list[bytes]],
                 st: UpcallStats, layout: tuple[FlowKey, int, int] | None = None) -> bool:
        """Run actions on one packet: emissions are queued in out by port, packet-ins sent now."""
        try:
            res = execute(frame, actions, layout, self._meter)
        except Exception:
            st.failed += 1
            log.exception("executing %s on a packet failed", dpif.format_actions(actions))
            return False
        if res.buckets:
            self._credit_buckets(res.buckets)
        for ctrl, data in res.controller:
            if self.tables.meters.get(OFPM_CONTROLLER) is not None and self._meter(-1, len(data))[0] == 1:
                st.drops["controller_meter"] = st.drops.get("controller_meter", 0) + 1
                continue
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

    def _send(self, out: dict[int, list[bytes]], st: UpcallStats) -> None:
        for port, frames in out.items():
            sent = self.transmit(port, frames)
            st.tx_packets += sent
            st.tx_dropped += len(frames) - sent
            pt = st.port_tx.setdefault(port, [0, 0])
            pt[0] += sent
            pt[1] += sum(len(f) for f in frames[:sent])

    def _credit_buckets(self, taken: list[tuple[int, int, int]]) -> None:
        """Select buckets that slow-path packets took: (group, bucket, bytes)."""
        with self.lock:
            for gid, n, nbytes in taken:
                g = self.tables.groups.get(gid)
                if g is not None and n < len(g.buckets):
                    g.buckets[n].credit(1, nbytes, 0.0)

    def port_tx(self) -> dict[int, tuple[int, int]]:
        """Per port: (packets, bytes) sent from user space, every writer summed."""
        return {p: (v[0], v[1]) for p, v in self.stats.port_tx.items()}

    def packet_out(self, in_port: int, actions: list[OfAction], frame: bytes) -> list[Action]:
        """A controller's PACKET_OUT: its actions on frame, as if it had come in on in_port (OFPP_CONTROLLER
        for none). Returns the datapath actions it came to. Called by the OpenFlow channel's thread only."""
        layout = parse_layout(frame, in_port)
        with self.lock:
            flow = flow_of(layout[0])
            tr = translate_actions(self.tables, flow, actions, set(self.ports()), mac=self.mac, packet=frame,
                                   live=self.port_up)
            now = self.clock.monotonic()
            for r in tr.credits:
                r.credit(1, len(frame), now)
            if tr.learned:
                self.note_changes()
        out: dict[int, list[bytes]] = {}
        self._execute(frame, in_port, tr.actions, out, self._channel_stats, layout)
        self._send(out, self._channel_stats)
        return tr.actions

    def xlate_changed(self, why: str = "the ports or fail-open changed") -> None:
        """Something every translation may read changed (the ports, fail-open): every megaflow must be
        translated again. The caller holds the lock."""
        self.note_changes(Everything(why))

    def note_changes(self, *extra: Change) -> int:
        """Mark stale the ukeys that the tables' journal, the MAC table's changes and extra can affect, and
        wake the revalidator to translate them again. How many were marked. The caller holds the lock."""
        changes = [*self.tables.take_journal(), *extra]
        macs = self.mac.take_changes()
        if not changes and not macs[0] and not macs[1]:
            return 0
        n = 0
        for k in affected(self.ukeys, changes, macs):
            if k not in self.pending:   # stale: a change may have affected it, until translated again
                self.pending[k] = None
                n += 1
        if n:
            self.marks += 1
            rv = self.revalidator
            if rv is not None:
                rv.wake.set()
        return n

    def set_fail_open(self, on: bool) -> None:
        with self.lock:
            if self.fail_open != on:
                self.fail_open = on
                self.xlate_changed()

    def _decide(self, up: Upcall, ports: set[int], st: UpcallStats,
                pending: list[tuple[Ukey, FlowKey]]) -> Decision:
        """What the pipeline does with one upcall. A new megaflow's ukey goes into the ukeys at once (a later
        upcall of the same batch finds it) and into pending, to be installed with the batch's others."""
        t0 = time.perf_counter()
        layout = parse_layout(up.frame, up.in_port)
        key = layout[0]
        u = self.ukeys.find(key)
        t1 = time.perf_counter()
        ph = st.phase_seconds
        ph["parse"] += t1 - t0
        if u is not None and u.slow_path and u in self.pending:
            # a slow-path megaflow made before the last change: translate this packet afresh rather than
            # wait for the revalidator (a controller's flow-mod then takes effect on the very next packet)
            self.delete_ukeys([u], "stale")
            u = None
        if u is not None and u.recirc:
            d = self._translate_one(up, key, ports, layout)
            ph["translate"] += time.perf_counter() - t1
            return d
        if u is not None:
            if not u.slow_path:
                st.existing += 1
            now = self.clock.monotonic()
            for r in u.rules:
                r.credit(1, len(up.frame), now)
            return Decision(up, u.actions, layout)
        flow = flow_of(key)
        tr = translate(self.tables, flow, ports, trace=False, mac=self.mac, may_learn=True, fail_open=self.fail_open,
                       packet=up.frame, live=self.port_up)
        now = self.clock.monotonic()
        for r in tr.credits:
            r.credit(1, len(up.frame), now)
        if tr.error:
            self._unsupported(tr)
        if tr.learned:
            self.note_changes()
        t2 = time.perf_counter()
        ph["translate"] += t2 - t1
        mask = key_of(tr.wc)
        if self.mask_limit and self.ukeys.n_masks >= self.mask_limit and not self.ukeys.has_mask(mask):
            # the tuple space explosion guard: past the limit, a megaflow that would need a new subtable gets the
            # exact mask instead (every bit of the packet: always sound, one subtable for all of them); a crafted
            # stream then costs upcalls, which the upcall limits bound, instead of a longer search for every packet
            mask = EXACT_MASK
            st.mask_limited += 1
        u = Ukey(key.masked(mask), mask, tr.actions, tr.credits, tr.slow_path, flow=flow, lookups=tr.lookups,
                 created_ns=self.clock.now_ns(), normal=tr.normal, missed=tr.missed, recirc=tr.recirc)
        if self.dp.n_flows + len(pending) >= self.flow_limit:
            st.over_flow_limit += 1
        else:
            self.ukeys.add(u)
            pending.append((u, key))
        ph["megaflow"] += time.perf_counter() - t2
        return Decision(up, tr.actions, layout)

    def _translate_one(self, up: Upcall, key: FlowKey, ports: set[int],
                       layout: tuple[FlowKey, int, int]) -> Decision:
        """A packet of a recirculating megaflow: translated with its own bytes (the megaflow says only that it
        comes up), its rules credited."""
        tr = translate(self.tables, flow_of(key), ports, trace=False, mac=self.mac, may_learn=True,
                       fail_open=self.fail_open, packet=up.frame, live=self.port_up)
        now = self.clock.monotonic()
        for r in tr.credits:
            r.credit(1, len(up.frame), now)
        if tr.learned:
            self.note_changes()
        return Decision(up, tr.actions, layout)

    def _install(self, pending: list[tuple[Ukey, FlowKey]], st: UpcallStats) -> None:
        """Put a batch's new megaflows in one go (batched map writes): each with its actions if the fast path
        can run them, else userspace (slow path); one that cannot go in leaves the ukeys again (its packet
        was handled all the same, and the next comes up)."""
        slow = [dpif.DpUpcall()]
        results = self.dp.put_flows([(key, u.mask, slow if u.slow_path else u.actions) for u, key in pending])
        for (u, key), r in zip(pending, results, strict=True):
            if isinstance(r, ActionError | GroupsFull) and not u.slow_path:
                u.slow_path = str(r)  # e.g. every output group in use: the handler runs the actions instead
                try:
                    r = self.dp.put_flow(key, u.mask, slow)
                except (ActionError, MapFull) as e:
                    r = e
            if isinstance(r, Exception):
                st.install_failed += 1
                log.warning("megaflow not installed: %s", r)
                u.dead = True
                self.ukeys.remove(u)
                continue
            u.idx = r
            st.installed += 1
            if u.slow_path:
                st.slow_path += 1

    def _unsupported(self, tr: Translation) -> None:
        """A translation that ends in an unsupported action drops its packets (counted as drops, reason
        unsupported): say so in the log, once per rule that led there (the caller holds the lock)."""
        rule = tr.rules[-1] if tr.rules else None
        key = (id(rule), tr.error)
        if key in self._unsupported_logged:
            return
        self._unsupported_logged.add(key)
        log.warning("packets matching %s are dropped (counted as drops, reason unsupported): %s %s",
                    tr.megaflow(), rule.to_text() if rule is not None else "the pipeline", tr.error)

    def adopt(self, megaflows: Iterable[dpif.Megaflow]) -> int:
        """Make ukeys for megaflows an earlier process installed (a restart adopting a running datapath).
        Each keeps forwarding; the first revalidator pass translates it against these tables (its masked
        key is a packet it covers), keeps it, updates its actions in place, or deletes it. Packets it
        counted before are not credited to the rules again."""
        n = 0
        with self.lock:
            now = self.clock.now_ns()
            for m in megaflows:
                slow = "adopted" if m.actions == [dpif.DpUpcall()] else ""
                u = Ukey(m.key, m.mask, list(m.actions), [], slow, idx=m.flow_idx, packets=m.packets,
                         bytes=m.bytes, flow=flow_of(m.key), created_ns=now)
                self.ukeys.add(u)
                self.pending[u] = None
                n += 1
            if n:
                self.marks += 1
                if self.revalidator is not None:
                    self.revalidator.wake.set()
        return n

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
                for t in u.missed:   # TABLE stats: a fast-path packet that missed a table is a lookup there
                    t.n_missed += dp_
            u.packets, u.bytes = packets, nbytes

    def change_tables(self, change: Callable[[OpenFlowTables], T], wait: bool = False) -> T:
        """Apply change to the tables under the lock and mark stale the megaflows it can affect
        (``note_changes``); the revalidator translates those again (slow-path ones are also translated afresh
        on their next packet). With wait, the caller translates them itself (``Revalidator.settle``) and
        returns once every megaflow marked so far is up to date: then no megaflow computed from the old tables
        is in the datapath. A Udpif with no revalidator (the unit tier) deletes every megaflow instead."""
        with self.lock:
            version = self.tables.version
            try:
                result = change(self.tables)
            finally:
                self.sync_groups_and_meters()
            changed = self.tables.version != version
            if changed and self.revalidator is None:
                self.tables.take_journal()
                self.flush()
                return result
            self.note_changes()
        rv = self.revalidator
        if changed and rv is not None and wait:
            rv.settle()
        return result

    def set_upcall_limits(self, limits: UpcallLimits, max_ports: int) -> None:
        """Write the upcall limits into the fast path: every port number's, and the datapath's."""
        limits.check()
        with self.lock:
            for p in range(1, max_ports):
                self.dp.set_upcall_limit(p, limits.port_rate, limits.port_burst or limits.port_rate)
            self.dp.set_upcall_limit(0, limits.total_rate, limits.total_burst or limits.total_rate)
            self.upcall_limits = limits

    def sync_groups_and_meters(self) -> None:
        """Bring the fast path's group and meter state up to the tables, before any megaflow can use it: zero the
        counters of the bucket slots groups took since the last call (an earlier group may have counted in them),
        write new and changed meters (full buckets, zeroed counters). The caller holds the lock."""
        fresh = self.tables.groups.fresh_slots
        while fresh:
            self.dp.zero_buckets(fresh.pop(), SELECT_MAX_BUCKETS)
        dirty = self.tables.meters.dirty_slots
        while dirty:
            m = dirty.pop(0)
            if m.slot >= 0:
                self.dp.set_meter(m.slot, m.pktps, m.buckets())
            with self._meter_lock:
                self._soft_meters[m.slot] = SoftMeter(m, time.monotonic_ns())   # slot -1: the controller meter

    def _meter(self, slot: int, nbytes: int) -> tuple[int, int]:
        """The slow path's meter verdict for a packet (execute()'s meter)."""
        with self._meter_lock:
            sm = self._soft_meters.get(slot)
            return sm.take(nbytes, time.monotonic_ns()) if sm is not None else (0, 0)

    def meter_stats(self, m: Meter) -> list[tuple[int, int]]:
        """(packets, bytes) into meter m and over each of its bands: the fast path's and the slow path's."""
        fast = self.dp.meter_stats(m.slot) if m.slot >= 0 else []
        with self._meter_lock:
            sm = self._soft_meters.get(m.slot)
            soft = sm.counts if sm is not None else []
        out = []
        for i in range(1 + len(m.bands)):
            p, n = fast[i] if i < len(fast) else (0, 0)
            sp, sn = soft[i] if i < len(soft) else (0, 0)
            out.append((p + sp, n + sn))
        return out

    def group_stats(self, g: Group) -> list[tuple[int, int]]:
        """(packets, bytes) of each bucket of g: its own counters (credited from megaflows, and slow-path packets)
        plus, for a select group, what the fast path counted per bucket. The caller holds the lock."""
        fast = self.dp.bucket_stats(g.stats_base, len(g.buckets)) if g.stats_base >= 0 else []
        out = []
        for i, b in enumerate(g.buckets):
            p, n = fast[i] if i < len(fast) else (0, 0)
            out.append((b.n_packets + p, b.n_bytes + n))
        return out

    def delete_ukeys(self, ukeys: Sequence[Ukey], reason: str) -> None:
        """Delete megaflows (fast path and ukeys; the fast path's in one batch), crediting their last packets to
        their rules. Ukeys already deleted are skipped."""
        with self.lock:
            live = [u for u in ukeys if not u.dead]
            for u in live:
                u.dead = True
                self.ukeys.remove(u)
                self.pending.pop(u, None)
            self._forget(live, reason)

    def _forget(self, gone: list[Ukey], reason: str) -> None:
        """The fast path's part of deleting ukeys already out of the ukeys: their megaflows in one batch, then
        their last packets credited (after the delete: no packet can hit them any more). Under the lock."""
        installed = [u for u in gone if u.idx >= 0]
        if not installed:
            return
        self.dp.del_flows([(u.key, u.mask) for u in installed])
        for u in installed:
            self._credit(u)
        self._locked_stats.deleted[reason] = self._locked_stats.deleted.get(reason, 0) + len(installed)

    def flush(self) -> int:
        """Delete every megaflow (fast path and ukeys), crediting their last packets to their rules."""
        with self.lock:
            gone = self.ukeys.clear()
            self.pending.clear()
            for u in gone:
                u.dead = True
            self._forget(gone, "flush")
            return len(gone)


# --- control commands (registered here: the Udpif owns the tables, the ukeys and the MAC table) -------------


_S = TypeVar("_S")
_R = TypeVar("_R")


def _parse_each(texts: object, parse: Callable[[str], _S], what: str) -> list[_S]:
    """A control request's list of texts, each parsed; an error in one of several names which."""
    if not isinstance(texts, list):
        raise ValueError(f"{what}s must be a list of {what} texts")
    out = []
    for n, text in enumerate(texts, 1):
        try:
            out.append(parse(str(text)))
        except FlowSyntaxError as e:
            if len(texts) > 1:
                raise FlowSyntaxError(f"{what} {n}: {e.msg}", e.text, e.pos, e.length) from None
            raise
    return out


def _all_or_nothing(specs: list[_S], apply: Callable[[OpenFlowTables, _S], _R],
                    undo: Callable[[OpenFlowTables, _R], object] | None) -> Callable[[OpenFlowTables], None]:
    """A change applying every spec; if one is refused, undo() takes back the ones applied before it."""
    def change(t: OpenFlowTables) -> None:
        done = []
        try:
            for sp in specs:
                done.append(apply(t, sp))
        except ValueError:
            if undo is not None:
                for r in done:
                    undo(t, r)
            raise
    return change


def register_commands(ctl: Unixctl, udpif: Udpif, name: str, ports: Callable[[], set[int]],
                      saved: Callable[[], None], extra_show: Callable[[], dict[str, object]]) -> None:
    """ofctl add-flows|del-flows|mod-table|dump-flows, add-groups|del-groups|dump-groups|dump-group-stats,
    add-meters|del-meters|dump-meters|meter-stats,
    trace, revalidator-purge, fdb-show and upcall-show.
    A change returns once every megaflow it can affect is up to date, then saved() writes the state file;
    the rules it deleted go to on_removed (FLOW_REMOVED, as OVS sends for deletes through its management
    socket). extra_show: what upcall-show adds that the Udpif does not own (handlers, sockets, ...)."""

    def removed(rules: list[Rule], why: str) -> None:
        if rules and udpif.on_removed is not None:
            udpif.on_removed([(r, why) for r in rules])

    def add_flows(flows: list[str]) -> dict[str, int]:
        specs = _parse_each(flows, parse_flow, "flow")
        udpif.change_tables(lambda t: t.add_many(specs), wait=True)
        saved()
        with udpif.lock:
            return {"added": len(specs), "flows": len(udpif.tables)}

    def del_flows(filter: str = "", strict: bool = False) -> dict[str, int]:
        spec = parse_flow(str(filter), actions=False)
        gone = udpif.change_tables(lambda t: t.delete(spec, bool(strict)), wait=True)
        removed(gone, "delete")
        saved()
        with udpif.lock:
            return {"deleted": len(gone), "flows": len(udpif.tables)}

    def mod_table(table: int, miss: str = "", prefixes: str = "") -> dict[str, object]:
        """The table-miss behaviour (drop, continue, controller) and/or the prefix tries (``ip_dst,ip_src``,
        ``none``) of one table."""
        if not isinstance(table, int) or not 0 <= table < N_TABLES:
            raise ValueError(f"table {table!r} is out of range 0..{N_TABLES - 1}")
        if not miss and not prefixes:
            raise ValueError("mod-table needs a table-miss action or prefixes=...")
        fields = parse_prefixes(str(prefixes)) if prefixes else None

        def change(t: OpenFlowTables) -> None:
            if miss:
                t.set_miss(table, str(miss))
            if fields is not None:
                t.set_prefixes(table, fields)

        udpif.change_tables(change, wait=True)
        saved()
        with udpif.lock:
            tab = udpif.tables.tables[table]
            return {"table": table, "miss": tab.miss, "prefixes": format_prefixes(tab.prefixes)}

    def dump_flows(filter: str = "", strict: bool = False) -> list[dict[str, object]]:
        spec = parse_flow(str(filter), actions=False)
        udpif.push_stats()
        with udpif.lock:
            now = udpif.tables.clock()
            return [{**r.to_json(now), "line": r.format(now)} for r in udpif.tables.select(spec, bool(strict))]

    def trace(flow: str) -> dict[str, object]:
        f = flow_from_text(str(flow))
        with udpif.lock:
            tr = translate(udpif.tables, f, ports(), live=udpif.port_up)
        return {"text": tr.format_trace(name), "megaflow": tr.megaflow().format(),
                "actions": [str(a) for a in tr.actions], "slow_path": tr.slow_path,
                "tables": [{"table": s.table, "rule": s.rule.to_text() if s.rule else None} for s in tr.steps]}

    def add_groups(groups: list[str], modify: bool = False) -> dict[str, int]:
        specs = _parse_each(groups, parse_group, "group")
        change = _all_or_nothing(specs, OpenFlowTables.modify_group if modify else OpenFlowTables.add_group,
                                 None if modify else lambda t, g: t.groups.delete(g.group_id))
        udpif.change_tables(change, wait=True)
        saved()
        with udpif.lock:
            return {"added" if not modify else "modified": len(specs), "groups": len(udpif.tables.groups)}

    def del_groups(filter: str = "") -> dict[str, int]:
        spec = parse_group(str(filter), buckets=False)
        gone, rules = udpif.change_tables(lambda t: t.delete_groups(spec.group_id), wait=True)
        removed(rules, "group_delete")
        saved()
        with udpif.lock:
            return {"deleted": len(gone), "flows_deleted": len(rules), "groups": len(udpif.tables.groups)}

    def _groups(filter: str) -> list[Group]:
        gid = parse_group(str(filter), buckets=False).group_id
        return [g for g in udpif.tables.groups if gid in (OFPG_ALL, g.group_id)]

    def dump_groups(filter: str = "") -> list[dict[str, object]]:
        with udpif.lock:
            return [{"group_id": g.group_id, "type": g.type_name, "line": g.to_text()} for g in _groups(filter)]

    def dump_group_stats(filter: str = "") -> list[dict[str, object]]:
        udpif.push_stats()
        with udpif.lock:
            now = udpif.tables.clock()
            out: list[dict[str, object]] = []
            for g in _groups(filter):
                buckets = udpif.group_stats(g)
                out.append({"group_id": g.group_id, "duration": round(now - g.created, 3),
                            "ref_count": udpif.tables.group_refs(g.group_id), "packet_count": g.n_packets,
                            "byte_count": g.n_bytes,
                            "buckets": [{"packet_count": p, "byte_count": n} for p, n in buckets]})
            return out

    def add_meters(meters: list[str], modify: bool = False) -> dict[str, int]:
        specs = _parse_each(meters, parse_meter, "meter")
        change = _all_or_nothing(specs, OpenFlowTables.modify_meter if modify else OpenFlowTables.add_meter,
                                 None if modify else lambda t, m: t.meters.delete(m.meter_id))
        udpif.change_tables(change, wait=True)
        saved()
        with udpif.lock:
            return {"added" if not modify else "modified": len(specs), "meters": len(udpif.tables.meters)}

    def del_meters(filter: str = "") -> dict[str, int]:
        spec = parse_meter(str(filter), bands=False)
        gone, rules = udpif.change_tables(lambda t: t.delete_meters(spec.meter_id), wait=True)
        removed(rules, "delete")   # OpenFlow 1.3 has no meter_delete reason: OVS says delete too
        saved()
        with udpif.lock:
            return {"deleted": len(gone), "flows_deleted": len(rules), "meters": len(udpif.tables.meters)}

    def _meters(filter: str) -> list[Meter]:
        mid = parse_meter(str(filter), bands=False).meter_id
        return [m for m in udpif.tables.meters if mid in (OFPM_ALL, m.meter_id)]

    def dump_meters(filter: str = "") -> list[dict[str, object]]:
        with udpif.lock:
            return [{"meter_id": m.meter_id, "line": m.to_text()} for m in _meters(filter)]

    def meter_stats(filter: str = "") -> list[dict[str, object]]:
        with udpif.lock:
            now = udpif.tables.clock()
            out: list[dict[str, object]] = []
            for m in _meters(filter):
                st = udpif.meter_stats(m)
                out.append({"meter_id": m.meter_id, "flow_count": udpif.tables.meter_refs(m.meter_id),
                            "packet_in_count": st[0][0], "byte_in_count": st[0][1],
                            "duration": round(now - m.created, 3),
                            "bands": [{"packet_count": p, "byte_count": n} for p, n in st[1:]]})
            return out

    def revalidator_purge() -> dict[str, int]:
        with udpif.lock:
            keys = list(udpif.ukeys)
            udpif.delete_ukeys(keys, "purge")
        return {"deleted": len(keys)}

    def fdb_show() -> list[dict[str, object]]:
        with udpif.lock:
            entries = udpif.mac.dump()
        return [{"port": p, "vlan": v, "mac": mac_str(m.to_bytes(6, "big")), "age": int(age)}
                for p, v, m, age in entries]

    def upcall_show() -> dict[str, object]:
        with udpif.lock:
            n_ukeys, n_stale = len(udpif.ukeys), len(udpif.pending)
        return {"name": name, "flows": udpif.dp.n_flows, "flow_limit": udpif.flow_limit, "ukeys": n_ukeys,
                "stale": n_stale, **extra_show(), **udpif.stats.to_json()}

    for cmd, fn in (("add-flows", add_flows), ("del-flows", del_flows), ("mod-table", mod_table),
                    ("dump-flows", dump_flows), ("trace", trace), ("revalidator-purge", revalidator_purge),
                    ("fdb-show", fdb_show), ("upcall-show", upcall_show), ("add-groups", add_groups),
                    ("del-groups", del_groups), ("dump-groups", dump_groups), ("dump-group-stats", dump_group_stats),
                    ("add-meters", add_meters), ("del-meters", del_meters), ("dump-meters", dump_meters),
                    ("meter-stats", meter_stats)):
        ctl.register(cmd, fn)
