"""Which megaflows a change can affect, so that a flow-mod translates again only those.

OVS translates every megaflow again after any flow-table change (its xlate cache makes each cheaper, not
rarer): at 100k megaflows that is seconds of work per flow-mod here. Instead each ukey keeps the lookups of
its translation (``xlate.Lookup``: table, priority of the rule found or -1 for a miss, and the fields written
before it; with none the lookup was *pristine*: it saw the packet's own fields), and a change marks:

- ``Added(rule)`` in table T at priority p: the megaflows that looked up T, found nothing there or a rule of
  priority <= p, and have a packet the new rule matches. For a pristine lookup that is exact: the megaflow is
  (key, mask) over the packet's fields, the rule (value, mask'), and they meet when ``(key ^ value) & mask &
  mask'`` is zero, the rule's pipeline fields (registers, metadata) also matching zero. A lookup after a
  write saw the packet's values in the fields nothing wrote and unknown ones in the others: the same test
  over the fields not written (and pipeline fields not written must match zero).
- ``Touched(rules)`` (deleted, or new actions): the megaflows that went through one of those rules.
- ``GroupsChanged``: the megaflows that went through any group (a fast-failover bucket's liveness can
  depend on another group, so any, not only the changed one).
- ``MissChanged(T)``: the megaflows that missed in T.
- ``Everything``: all of them (fail-open, ports coming and going, a state file loaded).
- MAC learning changes (``MacLearning.take_changes``): the NORMAL megaflows whose destination or source is
  a changed (VLAN, MAC), and every NORMAL megaflow that wrote a field before a lookup.

A megaflow with unknown lookups (adopted from an earlier daemon and not translated yet) is always marked.
Each added rule costs a scan of the ukeys (a few ms per 100k): past ``MAX_ADDED`` added rules in one change
(an add-flows of thousands), translating every megaflow again is cheaper, and that is what is done.
The answer is sound, not exact: a marked megaflow is translated again and kept when nothing changed for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from ctl.pipeline.groups import Group
from ctl.pipeline.ofmatch import FULL, PIPELINE_FIELDS, key_of
from ctl.pipeline.openflow_tables import Added, Change, Everything, GroupsChanged, MissChanged, Rule, Touched

if TYPE_CHECKING:
    from ctl.udpif.upcall import Ukey, Ukeys

MAX_ADDED = 256   # a scan is ~0.3 us per ukey, a translation ~80 us: past ~250 scans, translate them all


def _key_int(flow: dict[str, int]) -> int:
    """A flow key's bytes as one integer, as Ukeys keys its dicts."""
    return key_of(flow).as_int()


def _written_bits(written: frozenset[str]) -> int:
    """The key bits of the packet fields in written (every bit for "*"), as _key_int lays them out."""
    bits = _WRITTEN_BITS.get(written)
    if bits is None:
        bits = -1 if "*" in written else _key_int({f: FULL[f] for f in written if f in FULL})
        _WRITTEN_BITS[written] = bits
    return bits


_WRITTEN_BITS: dict[frozenset[str], int] = {}


def _added(ukeys: Ukeys, rule: Rule) -> Iterator[Ukey]:
    fields = rule.match.fields
    pipeline = {f: v for f, (v, _m) in fields.items() if f in PIPELINE_FIELDS}
    packet = {f: vm for f, vm in fields.items() if f not in PIPELINE_FIELDS}
    value = _key_int({f: v for f, (v, _m) in packet.items()})
    bits = _key_int({f: m for f, (_v, m) in packet.items()})
    zero_ok = not any(pipeline.values())   # a pristine lookup saw every pipeline field zero
    t, p = rule.table, rule.priority
    if zero_ok:
        for mask, d in ukeys.by_mask.items():
            both = mask & bits
            want = value & both
            # those whose packets can meet the rule, by a comprehension (a 100k scan in a few ms); then their lookups
            for k in [k for masked, k in d.items() if masked & both == want]:
                lk = k.lookups
                if lk is not None and any(tid == t and prio <= p for tid, prio, _written in lk):
                    yield k
    for k in ukeys.written:
        # a lookup after a write saw the packet's values in the fields not written, and anything in the others
        lk = k.lookups
        if lk is None:
            continue
        for tid, prio, written in lk:
            if tid != t or prio > p or not written:
                continue
            if any(v and f not in written for f, v in pipeline.items()):
                continue   # a pipeline field nothing wrote is zero there: the rule cannot take it
            keep = bits & ~_written_bits(written)
            if not ((k.key.as_int() ^ value) & k.mask.as_int() & keep):
                yield k
                break
    yield from ukeys.unknown


def _touched(ukeys: Ukeys, rules: Sequence[Rule]) -> Iterator[Ukey]:
    yield from ukeys.users(rules)   # an index, not a scan: a rule's delete costs what its megaflows do


def _grouped(ukeys: Iterable[Ukey]) -> Iterator[Ukey]:
    for k in ukeys:
        if k.lookups is None or any(isinstance(c, Group) for c in k.rules):
            yield k


def _missed(ukeys: Iterable[Ukey], table: int) -> Iterator[Ukey]:
    for k in ukeys:
        lk = k.lookups
        if lk is None or any(tid == table and prio < 0 for tid, prio, _p in lk):
            yield k


def _macs(ukeys: Ukeys, every: bool, macs: set[tuple[int, int]]) -> Iterator[Ukey]:
    if every:
        yield from (k for k in ukeys if k.normal)
    else:
        for mac in macs:
            yield from ukeys.by_mac.get(mac, ())
        yield from (k for k in ukeys.written if k.normal)
    yield from ukeys.unknown


def affected(ukeys: Ukeys, changes: Sequence[Change], macs: tuple[bool, set[tuple[int, int]]] = (False, set()),
             ) -> list[Ukey]:
    """The ukeys the changes (and the MAC table's changes) can affect, each once."""
    every_mac, mac_keys = macs
    if any(isinstance(c, Everything) for c in changes) or sum(isinstance(c, Added) for c in changes) > MAX_ADDED:
        return list(ukeys)
    out: dict[Ukey, None] = {}
    for c in changes:
        if isinstance(c, Added):
            out.update(dict.fromkeys(_added(ukeys, c.rule)))
        elif isinstance(c, Touched):
            if c.rules:
                out.update(dict.fromkeys(_touched(ukeys, c.rules)))
        elif isinstance(c, GroupsChanged):
            out.update(dict.fromkeys(_grouped(ukeys)))
        elif isinstance(c, MissChanged):
            out.update(dict.fromkeys(_missed(ukeys, c.table)))
    if every_mac or mac_keys:
        out.update(dict.fromkeys(_macs(ukeys, every_mac, mac_keys)))
    return list(out)
