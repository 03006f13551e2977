"""Loops that serve others (handlers, the revalidator, the OpenFlow connections, the control socket, the
daemon's tick) survive an exception in one iteration: it is logged once with its traceback, counted, and
the loop goes on. A loop that dies takes a whole service down with it; one bad packet, message or request
must not.

``LoopErrors`` is owned by the daemon and shared by its loops. Each count is written under its lock (an
exception is rare; the lock is not on any fast path) and read as a copy.
"""

from __future__ import annotations

import errno
import logging
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("xdpswitch")
SHORTAGES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS)


class LoopErrors:
    """Exceptions caught per loop (``xdpswitch_loop_errors_total{loop}``): the first of each loop is logged with
    its traceback, later ones in one line with the count so far; a shortage of descriptors or memory is
    always one line (the machine's state, not a bug)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}   # guarded by _lock

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def record(self, loop: str) -> None:
        """Count the exception being handled and log it (call from an except block)."""
        with self._lock:
            n = self._counts[loop] = self._counts.get(loop, 0) + 1
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) and exc.errno in SHORTAGES:
            # the machine ran short (descriptors, memory), not a bug: one line, no traceback
            log.error("%s: an iteration failed for want of resources (%s; %d so far); the loop goes on", loop,
                      exc, n)
        elif n == 1:
            log.exception("%s: an iteration failed; the loop goes on", loop)
        else:
            log.error("%s: an iteration failed again (%d so far); the loop goes on", loop, n)

    def run(self, loop: str, fn: Callable[[], T]) -> T | None:
        """fn(), or None when it raised (counted and logged)."""
        try:
            return fn()
        except Exception:
            self.record(loop)
            return None
