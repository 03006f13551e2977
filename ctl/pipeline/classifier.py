"""The classifier of one OpenFlow table, organised as Open vSwitch's is (lib/classifier.c): rules grouped
into subtables by mask, subtables visited in order of their highest priority and the walk stopped as soon
as no later subtable can beat the best match, each subtable looked up in stages (metadata, L2, L3, L4) so
that a miss in an early stage leaves the later fields wildcarded, and prefix tries on the IPv4/IPv6
addresses (and the transport ports of the last stage) so that a miss un-wildcards only the leading bits
that decided it.

``Table.lookup(flow, wc)`` returns the rule and ORs into ``wc`` every bit it consulted: that is the
megaflow mask. It is also the oracle the tests compare the caches against. Strict lookups
(``find_exact``) and the overlap check (``by_priority``) are indexed: neither scans the table.

ClsRules are anything with the ``ClsRule`` attributes (``ctl/pipeline/openflow_tables.py``'s ``ClsRule``).
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterable, Iterator
from typing import Generic, Protocol, TypeVar

from ctl.pipeline.ofmatch import (
    DEFAULT_PREFIXES,
    FIELD_BITS,
    FULL,
    PREFIX_FIELDS,
    STAGES,
    Flow,
    Match,
    prefix_len,
    prefix_mask,
)


class ClsRule(Protocol):
    match: Match
    priority: int
    seq: int            # set by Table.insert: insertion order, ties go to the older rule
    idle_timeout: int
    hard_timeout: int


R = TypeVar("R", bound=ClsRule)



class _Proj:
    """Projects a flow onto some fields under a mask, as a tuple (the index key of a stage)."""

    def __init__(self, fields: tuple[str, ...], mask: dict[str, int]) -> None:
        self.get = operator.itemgetter(*fields) if fields else (lambda _f: ())
        self.one = len(fields) == 1
        self.masks = tuple(mask[f] for f in fields)
        self.exact = all(mask[f] == FULL[f] for f in fields)

    def __call__(self, flow: Flow) -> tuple[int, ...]:
        v = self.get(flow)
        if self.one:
            v = (v,)
        if self.exact:
            return v  # type: ignore[no-any-return]
        return tuple([a & m for a, m in zip(v, self.masks, strict=True)])


class Subtable(Generic[R]):
    """ClsRules that share one mask, indexed stage by stage (OVS: struct cls_subtable)."""

    def __init__(self, mask: dict[str, int]) -> None:
        self.mask = mask
        self.fields = tuple(f for f in FIELD_BITS if mask.get(f))
        # the non-empty stages, each the cumulative field list up to and including it
        stages = [tuple(f for f in s if mask.get(f)) for s in STAGES]
        stages = [s for s in stages if s]
        self.stage_fields = stages
        self.cumulative = [tuple(f for s in stages[: i + 1] for f in s) for i in range(len(stages))]
        self.proj = [_Proj(fs, mask) for fs in self.cumulative]
        self.full_proj = _Proj(self.fields, mask)
        self.indices: list[dict[tuple[int, ...], int]] = [{} for _ in stages[:-1]]
        self.rules: dict[tuple[int, ...], list[R]] = {}
        self.n_rules = 0
        self.priorities: dict[int, int] = {}  # priority -> rules with it (max_priority without a scan)
        self.max_priority = -1
        self.trie_plen = {f: (prefix_len(mask[f], FIELD_BITS[f]) or 0) for f in PREFIX_FIELDS if mask.get(f)}
        # the ports are the last stage (L4) whenever the mask has them
        self.ports_mask = (mask.get("tp_src", 0) << 16) | mask.get("tp_dst", 0)
        self.before_ports = tuple(f for f in self.fields if f not in ("tp_src", "tp_dst"))
        self.ports_values: list[int] = []   # sorted masked (tp_src << 16 | tp_dst) of the rules
        self.seq = 0

    def key_of(self, match: Match) -> tuple[int, ...]:
        return self.full_proj(_values(match))

    def _ports(self, flow: Flow) -> int:
        return (flow.get("tp_src", 0) << 16 | flow.get("tp_dst", 0)) & self.ports_mask

    def insert(self, rule: R) -> None:
        flow = _values(rule.match)
        for i, idx in enumerate(self.indices):
            k = self.proj[i](flow)
            idx[k] = idx.get(k, 0) + 1
        rules = self.rules.setdefault(self.full_proj(flow), [])
        rules.append(rule)
        rules.sort(key=lambda r: (-r.priority, r.seq))
        self.n_rules += 1
        self.priorities[rule.priority] = self.priorities.get(rule.priority, 0) + 1
        self.max_priority = max(self.max_priority, rule.priority)
        if self.ports_mask:
            bisect.insort(self.ports_values, self._ports(flow))

    def remove(self, rule: R) -> None:
        flow = _values(rule.match)
        for i, idx in enumerate(self.indices):
            k = self.proj[i](flow)
            idx[k] -= 1
            if not idx[k]:
                del idx[k]
        key = self.full_proj(flow)
        self.rules[key].remove(rule)
        if not self.rules[key]:
            del self.rules[key]
        self.n_rules -= 1
        left = self.priorities[rule.priority] = self.priorities[rule.priority] - 1
        if not left:
            del self.priorities[rule.priority]
            if rule.priority == self.max_priority:
                self.max_priority = max(self.priorities, default=-1)
        if self.ports_mask:
            self.ports_values.pop(bisect.bisect_left(self.ports_values, self._ports(flow)))

    def __len__(self) -> int:
        return self.n_rules

    def find(self, flow: Flow, wc: Flow, tries: _TrieCtx) -> R | None:
        """The best rule of this subtable for flow, folding what was consulted into wc (find_match_wc)."""
        consulted: list[str] = []
        last = len(self.stage_fields) - 1
        for i, stage in enumerate(self.stage_fields):
            if tries.skip(self, stage, flow, wc):
                self._fold(wc, consulted)
                return None
            if i == last:
                break
            consulted.extend(stage)
            if self.proj[i](flow) not in self.indices[i]:
                self._fold(wc, consulted)
                return None
        rules = self.rules.get(self.full_proj(flow))
        if rules is None and self.ports_mask:
            # the last stage has the ports: un-wildcard only the leading port bits that tell this packet
            # apart from every rule (OVS's ports trie), and every other bit of the mask, the last stage's
            # too (tcp_flags, nd_target, the ARP addresses): the miss may have been theirs (OVS: fill_range_wc
            # up to the ports)
            bits = _bits_to_decide(self._ports(flow), self.ports_values, 32)
            pm = self.ports_mask & prefix_mask(bits, 32)
            wc["tp_src"] |= pm >> 16
            wc["tp_dst"] |= pm & 0xFFFF
            self._fold(wc, self.before_ports)
            return None
        self._fold(wc, self.fields)
        return rules[0] if rules else None

    def _fold(self, wc: Flow, fields: Iterable[str]) -> None:
        for f in fields:
            wc[f] |= self.mask[f]


def _values(match: Match) -> Flow:
    """A match's values as a (partial) flow: its subtable's projections read them like a packet's."""
    return {f: v for f, (v, _m) in match.fields.items()}


def _common_bits(a: int, b: int, bits: int) -> int:
    return bits - (a ^ b).bit_length()


def _bits_to_decide(value: int, sorted_values: list[int], bits: int) -> int:
    """How many leading bits of value tell it apart from every value in sorted_values (all of full length):
    one past the longest common prefix with any of them (the neighbours in sorted order hold the longest)."""
    if not sorted_values:
        return 0
    i = bisect.bisect_left(sorted_values, value)
    best = 0
    for j in (i - 1, i):
        if 0 <= j < len(sorted_values):
            best = max(best, min(_common_bits(value, sorted_values[j], bits) + 1, bits))
    return best


class _Trie:
    """The prefixes (value, length) that a table's rules hold on one address field (OVS: a prefix trie),
    kept per length as sorted lists so one lookup costs a bisection per distinct length."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_len: dict[int, list[int]] = {}     # plen -> sorted prefix values (top plen bits)
        self.count: dict[tuple[int, int], int] = {}

    def add(self, value: int, plen: int) -> None:
        k = (value >> (self.bits - plen), plen)
        self.count[k] = self.count.get(k, 0) + 1
        if self.count[k] == 1:
            bisect.insort(self.by_len.setdefault(plen, []), k[0])

    def remove(self, value: int, plen: int) -> None:
        k = (value >> (self.bits - plen), plen)
        self.count[k] -= 1
        if not self.count[k]:
            del self.count[k]
            lst = self.by_len[plen]
            lst.pop(bisect.bisect_left(lst, k[0]))
            if not lst:
                del self.by_len[plen]

    def lookup(self, addr: int) -> tuple[set[int], int]:
        """(the prefix lengths with a rule prefix that matches addr, the leading bits a trie walk for addr
        examines). The second is OVS's trie_lookup() result: for each prefix, the bits in common with addr
        plus the first differing one, capped at the prefix's length; the most over all prefixes."""
        plens: set[int] = set()
        maskbits = 0
        for plen, values in self.by_len.items():
            top = addr >> (self.bits - plen)
            i = bisect.bisect_left(values, top)
            if i < len(values) and values[i] == top:
                plens.add(plen)
                maskbits = max(maskbits, plen)
                continue
            for j in (i - 1, i):
                if 0 <= j < len(values):
                    maskbits = max(maskbits, min(_common_bits(top, values[j], plen) + 1, plen))
        return plens, maskbits


class _TrieCtx:
    """One lookup's trie results, computed on demand (OVS: struct trie_ctx)."""

    def __init__(self, tries: dict[str, _Trie]) -> None:
        self.tries = tries              # the table's tries, in the order they are consulted
        self.done: dict[str, tuple[set[int], int]] = {}

    def skip(self, st: Subtable, stage: tuple[str, ...], flow: Flow, wc: Flow) -> bool:
        """OVS's check_tries(): can the subtable be skipped because no rule prefix of its length on a trie
        field in this stage matches? If so, the trie's examined bits go into wc. The tries are consulted in
        the table's order (its prefixes setting)."""
        for f in self.tries:
            if f not in stage:
                continue
            plen = st.trie_plen.get(f)
            if not plen:
                continue
            res = self.done.get(f)
            if res is None:
                res = self.done[f] = self.tries[f].lookup(flow[f])
            plens, maskbits = res
            if plen in plens:
                continue
            bits = FIELD_BITS[f]
            if maskbits <= plen:
                wc[f] |= prefix_mask(maskbits, bits)
                return True
            pm = prefix_mask(maskbits, bits)
            if wc[f] & pm == pm:
                return True
        return False


class Table(Generic[R]):
    """One OpenFlow table: a classifier of rules (OVS: struct classifier)."""

    def __init__(self, table_id: int) -> None:
        self.id = table_id
        self.subtables: dict[tuple[tuple[str, int], ...], Subtable] = {}
        self.order: list[Subtable] = []     # by max priority, highest first
        self.prefixes: tuple[str, ...] = DEFAULT_PREFIXES
        self.tries = {f: _Trie(FIELD_BITS[f]) for f in self.prefixes}
        self.miss = "drop"
        self._seq = 0
        self.timed: set[R] = set()   # rules with an idle or hard timeout (the revalidator checks only these)
        self.by_priority: dict[int, set[R]] = {}  # the overlap check looks only at rules of its priority
        self.n_missed = 0               # packets translated here that matched no rule (upcalls, packet-outs)

    def __len__(self) -> int:
        return sum(len(s) for s in self.subtables.values())

    def rules(self) -> Iterator[R]:
        for st in self.subtables.values():
            for rs in st.rules.values():
                yield from rs

    def find_exact(self, match: Match, priority: int) -> R | None:
        st = self.subtables.get(_mask_key(match))
        if st is None:
            return None
        return next((r for r in st.rules.get(st.key_of(match), []) if r.priority == priority), None)

    def insert(self, rule: R) -> None:
        mk = _mask_key(rule.match)
        st = self.subtables.get(mk)
        if st is None:
            st = self.subtables[mk] = Subtable({f: rule.match.mask(f) for f in FIELD_BITS})
            self._seq += 1
            st.seq = self._seq
        self._seq += 1
        rule.seq = self._seq
        st.insert(rule)
        for f, plen in st.trie_plen.items():
            if plen and f in self.tries:
                self.tries[f].add(rule.match.fields[f][0], plen)
        if rule.idle_timeout or rule.hard_timeout:
            self.timed.add(rule)
        self.by_priority.setdefault(rule.priority, set()).add(rule)
        self._sort()

    def remove(self, rule: R) -> None:
        mk = _mask_key(rule.match)
        st = self.subtables[mk]
        st.remove(rule)
        self.timed.discard(rule)
        same = self.by_priority.get(rule.priority)
        if same is not None:
            same.discard(rule)
            if not same:
                del self.by_priority[rule.priority]
        for f, plen in st.trie_plen.items():
            if plen and f in self.tries:
                self.tries[f].remove(rule.match.fields[f][0], plen)
        if not len(st):
            del self.subtables[mk]
        self._sort()

    def set_prefixes(self, fields: tuple[str, ...]) -> None:
        """Which address fields have a prefix trie, in the order lookups consult them (OVS's Flow_Table
        prefixes); the tries are built again from the rules."""
        assert all(f in PREFIX_FIELDS for f in fields), fields
        self.prefixes = tuple(fields)
        self.tries = {f: _Trie(FIELD_BITS[f]) for f in self.prefixes}
        for st in self.subtables.values():
            for f, plen in st.trie_plen.items():
                if plen and f in self.tries:
                    for rs in st.rules.values():
                        for r in rs:
                            self.tries[f].add(r.match.fields[f][0], plen)

    def _sort(self) -> None:
        self.order = sorted(self.subtables.values(), key=lambda s: (-s.max_priority, s.seq))

    def lookup(self, flow: Flow, wc: Flow) -> R | None:
        """The highest-priority rule matching flow; every bit consulted is ORed into wc."""
        best: R | None = None
        ctx = _TrieCtx(self.tries)
        for st in self.order:
            if best is not None and st.max_priority <= best.priority:
                break
            r = st.find(flow, wc, ctx)
            if r is not None and (best is None or r.priority > best.priority
                                  or (r.priority == best.priority and r.seq < best.seq)):
                best = r
        return best


def overlap(a: Match, b: Match) -> bool:
    """Some packet matches both: every field's common mask bits agree."""
    for f, (v, m) in a.fields.items():
        ov, om = b.fields.get(f, (0, 0))
        if (v ^ ov) & m & om:
            return False
    return True


def _mask_key(match: Match) -> tuple[tuple[str, int], ...]:
    return tuple((f, m) for f, (_v, m) in sorted(match.fields.items()))
