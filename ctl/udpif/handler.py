"""Handler threads (OVS: ofproto-dpif-upcall's handlers): each reads its AF_XDP upcall sockets in batches
and hands them to the Udpif with counters of its own (``Udpif.handler_stats()``), so counts stay exact with
several handlers and nobody else writes them. An exception in one batch is logged once, counted
(``LoopErrors``, loop "handler") and the handler goes on with the next batch.

Fairness between ports (OVS dispatches upcalls per port for the same reason): each round takes at most
FAIR_BATCH upcalls from every socket that has some, and looks again for ready sockets before the next
round, so a port flooding new flows delays another port's first packet by at most one small batch of its
own, not by everything queued behind it."""

from __future__ import annotations

import select
import threading

from ctl.common.loops import LoopErrors
from ctl.datapath.xsk import Upcall, XskSocket
from ctl.udpif.upcall import Udpif

FAIR_BATCH = 16   # upcalls taken from one socket per round


class Handler(threading.Thread):
    def __init__(self, hid: int, udpif: Udpif, sockets: list[XskSocket], stop: threading.Event,
                 errors: LoopErrors, batch: int = 64) -> None:
        super().__init__(name=f"handler{hid}", daemon=True)
        self.hid, self.udpif, self.sockets, self.stop, self.batch = hid, udpif, list(sockets), stop, batch
        self.errors = errors
        self.stats = udpif.handler_stats()   # written by this thread only
        self._lock = threading.Lock()        # _pending: the socket list set_sockets() hands over
        self._pending: list[XskSocket] | None = None
        self._taken = threading.Event()

    def set_sockets(self, sockets: list[XskSocket], timeout: float = 5.0) -> bool:
        """Read these sockets from now on (a port added or deleted at run time). Returns once the thread has
        taken the new list, so a socket left out may be closed; False if it did not within timeout (it is
        not running: the list is taken when it starts)."""
        with self._lock:
            self._pending = list(sockets)
            self._taken.clear()
        if not self.is_alive():
            self.sockets = list(sockets)
            return True
        return self._taken.wait(timeout)

    def _poller(self) -> tuple[select.poll, dict[int, XskSocket]]:
        poller = select.poll()
        by_fd = {s.fileno(): s for s in self.sockets}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        return poller, by_fd

    def run(self) -> None:
        poller, by_fd = self._poller()
        while not self.stop.is_set():
            if self._pending is not None:
                with self._lock:
                    self.sockets, self._pending = self._pending, None
                poller, by_fd = self._poller()
                self._taken.set()
            try:
                self._once(poller, by_fd)
            except Exception:
                self.errors.record("handler")

    def _once(self, poller: select.poll, by_fd: dict[int, XskSocket]) -> None:
        ready = [fd for fd, _ev in poller.poll(100)]
        while ready and self._pending is None:   # a new socket list is taken between rounds
            batch = take_round([by_fd[fd] for fd in ready], min(self.batch, FAIR_BATCH))
            if batch:
                self.udpif.handle(batch, self.stats)
            ready = [fd for fd, _ev in poller.poll(0)]  # who has upcalls now, the flooder and the rest alike


def take_round(sockets: list[XskSocket], budget: int) -> list[Upcall]:
    """One round: at most budget upcalls from each socket, interleaved socket by socket."""
    per = [s.recv(timeout_ms=0, max_batch=budget) for s in sockets]
    out: list[Upcall] = []
    for i in range(max((len(p) for p in per), default=0)):
        out.extend(p[i] for p in per if i < len(p))
    return out
