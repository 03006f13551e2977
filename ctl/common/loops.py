"""Loops that serve others (handlers, the revalidator, the OpenFlow connections, the control socket, the
daemon's tick) survive an exception in one iteration: it is logged once with its traceback, counted, and
the loop goes on. A loop that dies takes a whole service down with it; one bad packet, message or request
must not.

``tune_collector()`` sets the garbage collector for a process that serves such loops over 100k+ long-lived
ukeys (see COLLECTOR_THRESHOLDS); ``log_unraisable()`` logs what a destructor raises in one line.

``LoopErrors`` is owned by the daemon and shared by its loops. Each count is written under its lock (an
exception is rare; the lock is not on any fast path) and read as a copy.
"""

from __future__ import annotations

import errno
import gc
import logging
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("xdpswitch")
SHORTAGES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS)


# The cyclic collector's thresholds for a daemon that holds 100k+ long-lived ukeys: at the default (700, 10,
# 10), a revalidator pass's 200k short-lived stats tuples promote enough objects to start a full collection
# nearly every pass, and each full collection walks every ukey, stalling handlers and flow-mods for hundreds
# of ms (bench.revalidator: a MAC learned under 100k NORMAL megaflows took 2.1 s, 0.3 s with these). Ukeys,
# rules and flows form no cycles and go by reference counting; these thresholds still collect young cycles,
# and old ones rarely (after 50 x 100 young collections).
COLLECTOR_THRESHOLDS = (100_000, 50, 100)


def tune_collector() -> None:
    """Set COLLECTOR_THRESHOLDS (the daemon at start; benchmarks that stand for it, too)."""
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


def log_unraisable() -> None:
    """Exceptions Python cannot raise to anyone (in an object's ``__del__``: e.g. pyroute2's asyncio loop, half
    made when the descriptors ran out, failing to close) go to the log in one line, not as a traceback on
    stderr (the daemon's start; the loops' own failures are LoopErrors')."""
    def hook(u: sys.UnraisableHookArgs) -> None:
        where = getattr(u.object, "__qualname__", None) or type(u.object).__name__
        log.error("an exception in %s was ignored (%s: %s)", where, type(u.exc_value).__name__, u.exc_value)

    sys.unraisablehook = hook


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
