"""The MAC learning table behind the NORMAL action (OVS: lib/mac-learning.c).

Entries are keyed by (VLAN, MAC) and point at the port the MAC was last seen on. An entry not refreshed for
``max_age`` seconds (default 300, OVS's) expires; when the table is full the least recently used entry
goes. ``take_changes()`` says which entries changed since it was last called (a new entry, a move, an
expiry, an eviction, a flush), so the Udpif translates again only the NORMAL megaflows of those MACs.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ctl.datapath.flowkey import VLAN_CFI

DEFAULT_MAX_AGE = 300
DEFAULT_MAX_ENTRIES = 8192
MAX_CHANGES = 4096   # entries remembered as changed; past it, every entry counts as changed


def vlan_of(vlan_tci: int) -> int:
    """The VLAN a flow key's vlan_tci puts the packet in (0: untagged)."""
    return vlan_tci & 0x0FFF if vlan_tci & VLAN_CFI else 0


def is_multicast(mac: int) -> bool:
    """The group bit of a 48-bit MAC (broadcast included)."""
    return bool(mac >> 40 & 1)


@dataclass
class MacStats:
    learned: int = 0
    moved: int = 0
    expired: int = 0
    evicted: int = 0


class MacLearning:
    def __init__(self, max_age: float = DEFAULT_MAX_AGE, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 1 <= max_age <= 86400:
            raise ValueError(f"mac-aging-time {max_age} s is out of range 1..86400")
        if max_entries < 1:
            raise ValueError(f"mac-table-size {max_entries} must be at least 1")
        self.max_age = max_age
        self.max_entries = max_entries
        self.clock = clock
        # (vlan, mac) -> [port, last seen], least recently used first
        self.entries: OrderedDict[tuple[int, int], list[float]] = OrderedDict()
        self.changed: set[tuple[int, int]] = set()   # (vlan, mac) changed since take_changes(); under lock
        self.changed_all = False
        self.stats = MacStats()
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def learn_flow(self, flow: dict[str, int]) -> bool:
        """learn() the source of a packet (a flow key as a dict), unless the source is multicast."""
        return not is_multicast(flow["dl_src"]) and self.learn(vlan_of(flow["vlan_tci"]), flow["dl_src"],
                                                                 flow["in_port"])

    def learn(self, vlan: int, mac: int, port: int) -> bool:
        """mac was seen on port: True when that changes where packets to it go (new or moved)."""
        with self.lock:
            key = (vlan, mac)
            e = self.entries.get(key)
            now = self.clock()
            if e is not None:
                self.entries.move_to_end(key)
                e[1] = now
                if int(e[0]) == port:
                    return False
                e[0] = port
                self.stats.moved += 1
            else:
                if len(self.entries) >= self.max_entries:
                    self._note(self.entries.popitem(last=False)[0])
                    self.stats.evicted += 1
                self.entries[key] = [port, now]
                self.stats.learned += 1
            self._note(key)
            return True

    def _note(self, key: tuple[int, int]) -> None:
        """key's entry changed (the caller holds the lock)."""
        if len(self.changed) >= MAX_CHANGES:
            self.changed_all = True
            self.changed.clear()
        elif not self.changed_all:
            self.changed.add(key)

    def take_changes(self) -> tuple[bool, set[tuple[int, int]]]:
        """(every entry may have changed, the (vlan, mac) entries that changed) since the last call."""
        with self.lock:
            out = (self.changed_all, self.changed)
            self.changed_all, self.changed = False, set()
            return out

    def lookup(self, vlan: int, mac: int) -> int | None:
        e = self.entries.get((vlan, mac))
        if e is None or self.clock() - e[1] >= self.max_age:
            return None
        return int(e[0])

    def expire(self) -> int:
        """Drop entries older than max_age; how many went."""
        now = self.clock()
        with self.lock:
            old = [k for k, (_p, used) in self.entries.items() if now - used >= self.max_age]
            for k in old:
                del self.entries[k]
                self._note(k)
            if old:
                self.stats.expired += len(old)
            return len(old)

    def flush(self, port: int | None = None) -> int:
        """Forget every entry (or those on one port, e.g. when its link goes down)."""
        with self.lock:
            gone = [k for k, (p, _u) in self.entries.items() if port is None or int(p) == port]
            for k in gone:
                del self.entries[k]
                self._note(k)
            return len(gone)

    def dump(self) -> list[tuple[int, int, int, float]]:
        """(port, vlan, mac, age in seconds) for every entry, as ovs-appctl fdb/show lists them."""
        now = self.clock()
        with self.lock:
            return [(int(p), v, m, now - used) for (v, m), (p, used) in self.entries.items()]
