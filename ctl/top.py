"""``xdpswitch top``: a live view of one switch, refreshed every second (OVS users watch pmd-stats-show and
``dpctl/show -s`` the same way).

It reads the datapath's pinned maps read-only (``ctl/datapath/view.py``: nothing compiled, nothing written)
and asks the daemon, if one runs, for its upcall counters and the revalidator's last pass over the control
socket. Every figure per second is the difference of two samples over the time between them. The top
megaflows by packets/s come from a dump of the megaflow counters, which costs more with more megaflows: with
many, that part is refreshed less often (every ``ceil(megaflows / TOP_FLOWS_PER_S)`` seconds) so the view
stays cheap.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ctl.datapath.dpif import DpStats, PortStats, format_actions
from ctl.datapath.flowkey import format_masked
from ctl.datapath.view import DatapathView

TOP_FLOWS_PER_S = 10_000   # megaflows dumped per second at most for the top list (100k: every 10 s)
TOP_N = 10


@dataclass
class Sample:
    t: float
    dp: DpStats
    ports: dict[int, tuple[str, PortStats]]
    flows: int
    masks: tuple[int, int]
    upcall: dict[str, Any] | None         # the daemon's upcall-show, None when no daemon answers
    megaflows: dict[bytes, tuple[int, str, str]] = field(default_factory=dict)  # key -> packets, match, actions
    megaflows_t: float = 0.0


class Top:
    """Samples of one datapath; ``frame()`` renders the last two."""

    def __init__(self, view: DatapathView, ask: Any = None) -> None:
        self.view = view
        self.ask = ask     # (cmd) -> reply, or raises: the daemon's control socket
        self.prev: Sample | None = None
        self.cur: Sample | None = None
        self.top_prev: Sample | None = None   # the sample the top list's rates are counted from

    def sample(self) -> Sample:
        v = self.view
        upcall = None
        if self.ask is not None:
            try:
                upcall = self.ask("upcall-show")
            except Exception:   # no daemon (or it is restarting): the datapath's figures still show
                upcall = None
        # the daemon knows how many megaflows it installed; without it, count them in the map (costlier)
        usage = v.map_usage(int(upcall["flows"]) if upcall and isinstance(upcall.get("flows"), int) else None)
        ports = {p.port_no: (p.name, v.port_stats(p.port_no)) for p in v.ports()}
        s = Sample(time.monotonic(), v.stats(), ports, usage["mf_entries"][0], usage["mf_masks"], upcall)
        every = max(1, math.ceil(s.flows / TOP_FLOWS_PER_S))
        last = self.cur.megaflows_t if self.cur is not None else 0.0
        if self.cur is None or s.t - last >= every - 0.05:
            c = v.dump_columns()
            s.megaflows = {bytes(k) + bytes(m): (p, "", "") for k, m, p in zip(c.keys, c.masks, c.packets, strict=True)}
            s.megaflows_t = s.t
            self._columns = c
            if self.cur is not None:
                self.top_prev = self.cur if self.cur.megaflows else self.top_prev
        elif self.cur is not None:
            s.megaflows, s.megaflows_t = self.cur.megaflows, self.cur.megaflows_t
        self.prev, self.cur = self.cur, s
        return s

    def top_megaflows(self) -> list[tuple[float, str, str]]:
        """(packets/s, match, actions) of the busiest megaflows since the previous dump."""
        cur, prev = self.cur, self.top_prev
        if cur is None or prev is None or cur.megaflows_t <= prev.megaflows_t or not cur.megaflows:
            return []
        dt = cur.megaflows_t - prev.megaflows_t
        c = self._columns
        rates = []
        for i, (k, m, p) in enumerate(zip(c.keys, c.masks, c.packets, strict=True)):
            before = prev.megaflows.get(bytes(k) + bytes(m))
            d = p - before[0] if before is not None and p >= before[0] else p
            if d > 0:
                rates.append((d / dt, i))
        rates.sort(reverse=True)
        return [(r, format_masked(c.keys[i], c.masks[i], premasked=True), format_actions(c.actions[i]))
                for r, i in rates[:TOP_N]]

    def frame(self, name: str) -> Group:
        cur, prev = self.cur, self.prev
        assert cur is not None
        dt = (cur.t - prev.t) if prev is not None else 0.0

        def rate(now: int, before: int | None) -> float:
            return (now - before) / dt if dt > 0 and before is not None and now >= before else 0.0

        p = prev.dp if prev is not None else None
        layers = [("EMC hit", cur.dp.emc_hits, p.emc_hits if p else None),
                  ("megaflow hit", cur.dp.megaflow_hits, p.megaflow_hits if p else None),
                  ("miss (upcall)", cur.dp.misses, p.misses if p else None),
                  ("lost", cur.dp.lost, p.lost if p else None)]
        rates = [(label, rate(now, before)) for label, now, before in layers]
        total = sum(r for _, r in rates) or 1.0
        caches = Table(title="cache layers", title_justify="left", expand=False)
        caches.add_column("layer")
        caches.add_column("packets/s", justify="right")
        caches.add_column("share", justify="right")
        for label, r in rates:
            caches.add_row(label, f"{r:,.0f}", f"{100 * r / total:.1f}%")

        up, upp = cur.upcall, prev.upcall if prev is not None else None
        if up is not None:
            ok = rate(int(up.get("ok", 0)), int(upp.get("ok", 0)) if upp else None)
            failed = rate(int(up.get("failed", 0)), int(upp.get("failed", 0)) if upp else None)
            lost_now = int(up.get("socket_drops", 0)) + cur.dp.lost
            lost_before = int(upp.get("socket_drops", 0)) + p.lost if upp and p else None
            upline = (f"upcalls/s: {ok:,.0f} ok, {failed:,.0f} failed, {rate(lost_now, lost_before):,.0f} lost   "
                      f"handlers {up.get('handlers', '?')}   revalidator pass {up.get('dump_duration_ms', '?')} ms")
            limit = f" of limit {int(up.get('flow_limit', 0)):,}"
        else:
            upline = (f"upcalls/s: {rate(cur.dp.misses, p.misses if p else None):,.0f} misses, "
                      f"{rate(cur.dp.lost, p.lost if p else None):,.0f} lost   (no daemon answers: the datapath "
                      "forwards what it has cached)")
            limit = ""
        summary = Text(f"{upline}\nmegaflows {cur.flows:,}{limit}   masks {cur.masks[0]} of {cur.masks[1]}")

        ports = Table(title="ports", title_justify="left")
        for col in ("port", "name", "rx/s", "tx/s", "drops/s", "rx", "tx", "drops"):
            ports.add_column(col, justify="right" if col not in ("name",) else "left")
        for no, (pname, st) in sorted(cur.ports.items()):
            before = prev.ports.get(no, (pname, None))[1] if prev is not None else None
            ports.add_row(str(no), pname, f"{rate(st.rx_packets, before.rx_packets if before else None):,.0f}",
                          f"{rate(st.tx_packets, before.tx_packets if before else None):,.0f}",
                          f"{rate(st.drops, before.drops if before else None):,.0f}",
                          f"{st.rx_packets:,}", f"{st.tx_packets:,}", f"{st.drops:,}")

        top = Table(title="top megaflows by packets/s", title_justify="left")
        top.add_column("packets/s", justify="right")
        top.add_column("megaflow")
        top.add_column("actions")
        for r, match, acts in self.top_megaflows():
            top.add_row(f"{r:,.0f}", match, acts)
        head = Text(f"xdpswitch top: {name}   every {dt:.1f} s   (Ctrl-C quits)", style="bold")
        return Group(head, caches, summary, ports, top)


def run_top(name: str, interval: float = 1.0, iterations: int | None = None, console: Console | None = None,
            ask: Any = None) -> None:
    """Refresh the view every interval seconds until Ctrl-C (or iterations frames)."""
    console = console or Console()
    with DatapathView.open(name) as view:
        top = Top(view, ask)
        top.sample()
        time.sleep(min(interval, 0.5))
        top.sample()
        n = 1
        with Live(top.frame(name), console=console, auto_refresh=False, screen=False) as live:
            try:
                while iterations is None or n < iterations:
                    time.sleep(interval)
                    top.sample()
                    live.update(top.frame(name), refresh=True)
                    n += 1
            except KeyboardInterrupt:
                pass
