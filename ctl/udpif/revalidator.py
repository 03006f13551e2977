"""The revalidator: keeps the megaflows true to the OpenFlow tables, counted, and within bounds.

As OVS's revalidator threads do, every ``max_revalidator`` (default 500 ms) one pass dumps every ukey's
fast-path counters and then sweeps:
 - the new packets and bytes of each megaflow are credited to the rules it went through;
 - a megaflow idle longer than ``max_idle`` (default 10 s; 100 ms while over the flow-limit) is deleted;
 - each stale megaflow is translated again (see below);
 - OpenFlow rules whose idle_timeout or hard_timeout has passed are deleted (and their megaflows with
   them, on the same pass);
 - the flow-limit adapts as OVS's does: cut when a dump is slow, raised by 1000 when it is fast, never
   above the configured limit; above twice the limit every megaflow is purged.

A flow-table or MAC-table change marks stale only the megaflows it can affect (``Udpif.note_changes``,
``ctl/udpif/affected.py``) and wakes the revalidator, which translates those at once, without a dump: each
from the packet that created it. If the new translation needs no bit the megaflow's mask lacks, it stays
(its actions updated in place if they changed); otherwise it is deleted ("stale"). There is no global flush.

Deleting a megaflow turns its generation even, so EMC entries and mask hints that still point at it stop
matching at once (see ctl/datapath/dpif_xdp.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ctl.common.loops import LoopErrors
from ctl.common.unixctl import Unixctl
from ctl.datapath.dpif import ActionError, MapFull
from ctl.pipeline.ofmatch import key_of
from ctl.pipeline.openflow_tables import OpenFlowTables, Rule
from ctl.pipeline.xlate import translate
from ctl.udpif.upcall import Udpif, Ukey

log = logging.getLogger(__name__)

DEFAULT_MAX_IDLE_MS = 10000
DEFAULT_MAX_REVALIDATOR_MS = 500
MIN_FLOW_LIMIT = 1000
MAX_BATCH = 50   # ukeys swept per hold of the Udpif's lock (OVS: REVALIDATE_MAX_BATCH) ...
MAX_HOLD_S = 0.001  # ... or fewer: a re-translation costs ~70 us here, so a hold ends after a millisecond


class RevalidatorStopped(RuntimeError):
    """A caller waited for a pass, but the revalidator is not running."""


@dataclass
class RevalidatorStats:
    dumps: int = 0
    last_dump_ms: float = 0.0
    avg_flows: float = 0.0
    max_flows: int = 0
    updated: int = 0                # megaflows whose actions changed in place (under the Udpif's lock)
    rules_expired: dict[str, int] = field(default_factory=lambda: {"idle_timeout": 0, "hard_timeout": 0})


def check_settings(flow_limit: int | None, max_idle_ms: int | None, max_revalidator_ms: int | None) -> None:
    """ValueError naming the first setting out of range."""
    if flow_limit is not None and not 0 <= flow_limit <= 10_000_000:
        raise ValueError(f"flow-limit {flow_limit} is out of range 0..10000000")
    if max_idle_ms is not None and not 100 <= max_idle_ms <= 3_600_000:
        raise ValueError(f"max-idle {max_idle_ms} ms is out of range 100..3600000")
    if max_revalidator_ms is not None and not 50 <= max_revalidator_ms <= 60_000:
        raise ValueError(f"max-revalidator {max_revalidator_ms} ms is out of range 50..60000")


class Revalidator:
    """One revalidator thread for a Udpif (OVS runs several; one is plenty for a Python handler's rate)."""

    def __init__(self, udpif: Udpif, flow_limit: int, max_idle_ms: int = DEFAULT_MAX_IDLE_MS,
                 max_revalidator_ms: int = DEFAULT_MAX_REVALIDATOR_MS, ports: Callable[[], set[int]] = set,
                 clock: Callable[[], float] | None = None, now_ns: Callable[[], int] | None = None,
                 errors: LoopErrors | None = None) -> None:
        self.udpif = udpif
        udpif.revalidator = self   # table changes now revalidate (without one, the Udpif flushes)
        self.configured_limit = flow_limit
        self.max_idle_ms = max_idle_ms
        self.max_revalidator_ms = max_revalidator_ms
        self.ports = ports
        self.clock = clock or udpif.clock.monotonic   # the Udpif's clocks unless told otherwise
        self.now_ns = now_ns or udpif.clock.now_ns
        self.stats = RevalidatorStats()   # written by the revalidator thread only
        self.errors = errors or LoopErrors()
        self.wake = threading.Event()
        self.pass_done = threading.Condition()
        self.passes = 0
        self._busy = False  # a pass is running (it may have read the tables before a change): under pass_done
        self._full = False  # a whole pass was asked for (request, configure): under pass_done
        self.settled = 0    # the Udpif's marks when its pending ukeys were last all translated: under pass_done
        self.swept = 0      # stale megaflows translated again: written under the Udpif's lock (sweep() runs on
                            # the revalidator thread and on settle()'s callers)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # --- settings ------------------------------------------------------------------------------------

    def configure(self, flow_limit: int | None = None, max_idle_ms: int | None = None,
                  max_revalidator_ms: int | None = None) -> None:
        """Change settings at run time; out-of-range values raise ValueError and change nothing."""
        check_settings(flow_limit, max_idle_ms, max_revalidator_ms)
        if flow_limit is not None:
            self.configured_limit = flow_limit
            self.udpif.flow_limit = flow_limit
        if max_idle_ms is not None:
            self.max_idle_ms = max_idle_ms
        if max_revalidator_ms is not None:
            self.max_revalidator_ms = max_revalidator_ms
        with self.pass_done:
            self._full = True
        self.wake.set()

    # --- the thread ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="revalidator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        next_pass = self.clock()
        while not self._stop.is_set():
            self.wake.wait(max(0.0, next_pass - self.clock()))
            self.wake.clear()
            if self._stop.is_set():
                break
            try:
                with self.pass_done:
                    full, self._full = self._full or self.clock() >= next_pass, False
                if full:
                    next_pass = self.clock() + self.max_revalidator_ms / 1000
                    self.revalidate()   # it sweeps the stale ones too
                else:
                    self.sweep()
            except Exception:  # a failed pass (e.g. a map read) is retried next period; nothing was deleted on it
                self.errors.record("revalidator")

    def _alive_or_raise(self) -> None:
        if not self.is_alive() or self._stop.is_set():
            raise RevalidatorStopped("the revalidator is not running: the change is in the tables and "
                                     "reaches the datapath when it runs again")

    def settle(self) -> None:
        """Return once every megaflow marked stale before this call is translated again (or deleted): only
        the marked ones, no dump. The caller sweeps them itself (batch by batch under the Udpif's lock, as
        the revalidator thread would), so it never waits behind a dump pass."""
        with self.udpif.lock:
            target = self.udpif.marks
        with self.pass_done:
            if self.settled >= target:
                return
        self.sweep()

    def request(self) -> None:
        """Wake the revalidator and wait for a whole pass that started after this call, however long it
        takes. Raises RevalidatorStopped if the thread is not running (or stops while waited for)."""
        with self.pass_done:
            target = self.passes + 2 if self._busy else self.passes + 1
            self._full = True
            self.wake.set()
            while self.passes < target:
                self._alive_or_raise()
                self.pass_done.wait(0.5)

    # --- one pass ------------------------------------------------------------------------------------------

    def revalidate(self) -> None:
        """One pass: dump every ukey's counters, then sweep them in batches of MAX_BATCH (or MAX_HOLD_S of
        work), taking the Udpif's lock for one batch at a time (OVS's REVALIDATE_MAX_BATCH), so handlers and
        flow-mods are served between batches however many megaflows there are. A stale ukey is translated again
        against the tables as they are when its batch runs; the stale ones left (marked during the pass) are
        swept at its end, so a change made before the pass started is in every megaflow when it ends."""
        u = self.udpif
        t0 = self.clock()
        with self.pass_done:
            self._busy = True
        try:
            self._expire_rules()
            with u.lock:
                if u.mac.expire():
                    u.note_changes()
                ukeys = list(u.ukeys)
            n = len(ukeys)
            over = n > u.flow_limit
            max_idle_ns = (100 if over else self.max_idle_ms) * 1_000_000
            if n > 2 * u.flow_limit:
                self.udpif.delete_ukeys(ukeys, "purge")
                ukeys = []
            now = self.now_ns()
            samples = u.dump_stats(ukeys)  # dump: read everything first (a failed read fails the pass)
            i = 0
            while i < len(samples):
                with u.lock:
                    held = time.perf_counter()
                    end = min(i + MAX_BATCH, len(samples))
                    idle: dict[str, list[Ukey]] = {}   # by reason: deleted together at the batch's end
                    while i < end and time.perf_counter() - held < MAX_HOLD_S:
                        k, st = samples[i]
                        i += 1
                        if k.dead:
                            continue
                        packets, nbytes, used = st
                        if packets != k.packets:
                            u.credit_to(k, packets, nbytes)
                            if k.normal:
                                self._refresh_mac(k)
                        last = used if used > k.created_ns else k.created_ns
                        if now - last > max_idle_ns:
                            why = "flow_limit" if over and now - last <= self.max_idle_ms * 1_000_000 else "idle"
                            idle.setdefault(why, []).append(k)
                            continue
                        if k in u.pending:
                            self._revalidate_one(k)
                    for why, gone in idle.items():
                        u.delete_ukeys(gone, why)
                time.sleep(0)  # let go of the GIL too: a handler waiting for the lock gets it before the next batch
                if u.pending:
                    self.sweep()   # a flow-mod's megaflows do not wait for the end of a long pass
            dump_ms = (self.clock() - t0) * 1000
            self._adapt_limit(dump_ms, n)
            s = self.stats
            s.dumps += 1
            s.last_dump_ms = dump_ms
            s.avg_flows = (s.avg_flows * (s.dumps - 1) + n) / s.dumps
            s.max_flows = max(s.max_flows, n)
            self.sweep()
        finally:
            with self.pass_done:
                self._busy = False
                self.passes += 1
                self.pass_done.notify_all()

    def sweep(self) -> None:
        """Translate again every stale ukey, oldest first, in batches as a pass does; then record the Udpif's
        marks as settled (settle() waits for that)."""
        u = self.udpif
        while True:
            with u.lock:
                if not u.pending:
                    marks = u.marks
                    break
                held = time.perf_counter()
                n = 0
                while u.pending and n < MAX_BATCH and time.perf_counter() - held < MAX_HOLD_S:
                    k, _ = u.pending.popitem(last=False)
                    n += 1
                    if not k.dead:
                        self._revalidate_one(k)
            time.sleep(0)
        with self.pass_done:
            self.settled = max(self.settled, marks)
            self.pass_done.notify_all()

    def _refresh_mac(self, k: Ukey) -> None:
        """A NORMAL megaflow forwarded packets: its source MAC is alive (OVS learns from revalidated flows)."""
        if self.udpif.mac.learn_flow(k.flow):
            self.udpif.note_changes()

    def _revalidate_one(self, k: Ukey) -> None:
        """Translate a stale ukey again: it stays (actions updated in place if they changed) or goes."""
        u = self.udpif
        u.pending.pop(k, None)
        self.swept += 1
        try:
            tr = translate(u.tables, k.flow, self.ports(), trace=False, mac=u.mac, fail_open=u.fail_open,
                           live=u.port_up)
        except Exception:  # never leave it in the datapath untranslated: without it the next packet comes up
            log.exception("translating a megaflow again failed: deleting it")
            self.udpif.delete_ukeys([k], "stale")
            return
        new_mask = key_of(tr.wc).as_int()
        old_mask = k.mask.as_int()
        if new_mask & ~old_mask or bool(tr.slow_path) != bool(k.slow_path):
            self.udpif.delete_ukeys([k], "stale")
            return
        if tr.actions != k.actions:
            try:
                if k.idx >= 0 and not k.slow_path:
                    k.idx = self.udpif.dp.put_flow(k.key, k.mask, tr.actions)
            except (ActionError, MapFull):
                self.udpif.delete_ukeys([k], "stale")
                return
            k.actions = tr.actions
            self.stats.updated += 1
        u.ukeys.retranslated(k, tr.credits, tr.lookups, tr.normal)
        k.missed = tr.missed

    def _adapt_limit(self, dump_ms: float, n: int) -> None:
        """OVS's udpif_revalidator flow-limit rules."""
        u = self.udpif
        limit = u.flow_limit
        if dump_ms > 2000:
            limit = int(limit / (dump_ms / 1000))
        elif dump_ms > 1300:
            limit = limit * 3 // 4
        elif dump_ms < 1000 and n > 2000 and limit < n * 1000 / max(dump_ms, 1):
            limit += 1000
        u.flow_limit = max(min(limit, self.configured_limit), min(MIN_FLOW_LIMIT, self.configured_limit))

    def _expire_rules(self) -> None:
        now = self.clock()
        u = self.udpif
        expired: list[tuple[Rule, str]] = []
        with u.lock:
            for r in u.tables.timed_rules():
                if r.hard_timeout and now - r.created >= r.hard_timeout:
                    expired.append((r, "hard_timeout"))
                elif r.idle_timeout and now - r.last_used >= r.idle_timeout:
                    expired.append((r, "idle_timeout"))
            if expired:
                def drop(t: OpenFlowTables) -> None:
                    for r, _why in expired:
                        t.remove_rule(r)
                u.change_tables(drop)  # not waited for: this thread runs the pass that brings it in
        for _r, why in expired:
            self.stats.rules_expired[why] += 1
        if expired and u.on_removed is not None:
            u.on_removed(expired)



def register_commands(ctl: Unixctl, rv: Revalidator) -> None:
    """upcall-set (ovs-vsctl's other_config flow-limit, max-idle, max-revalidator) and the revalidator's
    part of upcall-show."""

    def upcall_set(flow_limit: int | None = None, max_idle: int | None = None,
                   max_revalidator: int | None = None) -> dict[str, object]:
        for v in (flow_limit, max_idle, max_revalidator):
            if v is not None and not isinstance(v, int):
                raise ValueError(f"{v!r} is not a whole number")
        rv.configure(flow_limit, max_idle, max_revalidator)
        return {"flow_limit": rv.configured_limit, "max_idle": rv.max_idle_ms, "max_revalidator": rv.max_revalidator_ms}

    ctl.register("set", upcall_set)


def show(rv: Revalidator) -> dict[str, object]:
    """The revalidator's lines of upcall-show."""
    s = rv.stats
    return {"flow_limit_configured": rv.configured_limit, "max_idle": rv.max_idle_ms,
            "max_revalidator": rv.max_revalidator_ms, "avg_flows": round(s.avg_flows), "max_flows": s.max_flows,
            "dump_duration_ms": round(s.last_dump_ms, 1), "dumps": s.dumps, "rules_expired": dict(s.rules_expired),
            "revalidated": rv.swept, "updated_in_place": s.updated}
