"""Handler threads (OVS: ofproto-dpif-upcall's handlers): each reads its AF_XDP upcall sockets in batches
and hands them to the Udpif with counters of its own (``Udpif.handler_stats()``), so counts stay exact with
several handlers and nobody else writes them. An exception in one batch is logged once, counted
(``LoopErrors``, loop "handler") and the handler goes on with the next batch."""

from __future__ import annotations

import select
import threading

from ctl.common.loops import LoopErrors
from ctl.datapath.xsk import XskSocket
from ctl.udpif.upcall import Udpif


class Handler(threading.Thread):
    def __init__(self, hid: int, udpif: Udpif, sockets: list[XskSocket], stop: threading.Event,
                 errors: LoopErrors, batch: int = 64) -> None:
        super().__init__(name=f"handler{hid}", daemon=True)
        self.hid, self.udpif, self.sockets, self.stop, self.batch = hid, udpif, sockets, stop, batch
        self.errors = errors
        self.stats = udpif.handler_stats()   # written by this thread only

    def run(self) -> None:
        poller = select.poll()
        by_fd = {s.fileno(): s for s in self.sockets}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        while not self.stop.is_set():
            try:
                self._once(poller, by_fd)
            except Exception:
                self.errors.record("handler")

    def _once(self, poller: select.poll, by_fd: dict[int, XskSocket]) -> None:
        for fd, _ev in poller.poll(100):
            ups = by_fd[fd].recv(timeout_ms=0, max_batch=self.batch)
            if ups:
                self.udpif.handle(ups, self.stats)
