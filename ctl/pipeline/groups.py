"""OpenFlow groups: the group table, group-mods, and their ovs-ofctl text.

A group is a list of buckets, each an action list. What a packet gets depends on the type (OpenFlow 1.3,
5.6.1; OVS's ofproto-dpif-xlate ``xlate_group_action``):

- ``all``: every bucket, each on its own copy of the packet (flooding, multicast);
- ``select``: one bucket per packet, picked by a hash of the packet's addresses and ports, in proportion to
  the buckets' weights (ECMP, load balancing). The fast path picks it per packet (``xdp/actions.h``), so a
  megaflow does not have to match the hashed fields;
- ``indirect``: its one bucket (a next hop many flows share);
- ``ff`` (fast failover): the first bucket whose watched port is up (or whose watched group has a live
  bucket).

The table lives in ``OpenFlowTables.groups`` and so shares its owner and lock (the Udpif's); every change
bumps the tables' version, so the revalidator brings the megaflows up to date. Errors are ``GroupModError``
carrying OpenFlow's group-mod-failed code, the one OVS gives.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ctl.pipeline.ofactions import (
    OFPG_MAX,
    GotoTable,
    GroupAction,
    OfAction,
    Output,
    WriteMetadata,
    format_actions,
    parse_actions,
)
from ctl.pipeline.ofmatch import OFPP_MAX, FlowSyntaxError, parse_int, parse_lines

OFPG_ALL = 0xFFFFFFFC     # group-mod delete: every group
OFPG_ANY = 0xFFFFFFFF     # no watch group / no filter
OFPP_ANY = 0xFFFFFFFF     # no watch port
TYPES = {"all": 0, "select": 1, "indirect": 2, "ff": 3}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
MAX_GROUPS = 65536
MAX_BUCKETS = 256         # per group
MAX_CHAIN = 32            # groups a packet may go through, one inside another (OVS: a depth limit too)

# OpenFlow 1.3's ofp_group_mod_failed_code
GROUP_EXISTS, INVALID_GROUP, WEIGHT_UNSUPPORTED, OUT_OF_GROUPS, OUT_OF_BUCKETS = 0, 1, 2, 3, 4
CHAINING_UNSUPPORTED, WATCH_UNSUPPORTED, LOOP, UNKNOWN_GROUP, CHAINED_GROUP = 5, 6, 7, 8, 9
BAD_TYPE, BAD_COMMAND, BAD_BUCKET, BAD_WATCH = 10, 11, 12, 13


class GroupModError(ValueError):
    """A group-mod that must fail: code is OpenFlow's OFPGMFC_* (the error OVS sends); nothing changed."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code


@dataclass(eq=False)
class Bucket:
    actions: list[OfAction]
    weight: int = 0                 # select only (OVS's default for a select bucket is 1)
    watch_port: int = OFPP_ANY      # ff: the bucket is live while this port is up
    watch_group: int = OFPG_ANY     # ff: ... or while this group has a live bucket
    n_packets: int = 0
    n_bytes: int = 0

    def credit(self, packets: int, nbytes: int, now: float) -> None:
        self.n_packets += packets
        self.n_bytes += nbytes

    def to_text(self, gtype: int) -> str:
        parts = []
        if gtype == TYPES["select"] and self.weight != 1:
            parts.append(f"weight:{self.weight}")  # as ovs-ofctl prints it: 1 is a select bucket's default
        if self.watch_port != OFPP_ANY:
            parts.append(f"watch_port:{self.watch_port}")
        if self.watch_group != OFPG_ANY:
            parts.append(f"watch_group:{self.watch_group}")
        return "bucket=" + ",".join(parts + [f"actions={format_actions(self.actions)}"])


@dataclass(eq=False)
class Group:
    group_id: int
    type: int
    buckets: list[Bucket]
    created: float = 0.0            # the tables' clock when it was added
    n_packets: int = 0
    n_bytes: int = 0
    stats_base: int = -1            # select: the first of its buckets' counter slots in the fast path (-1: none,
                                    # its packets take the slow path); GroupTable hands them out

    def credit(self, packets: int, nbytes: int, now: float) -> None:
        self.n_packets += packets
        self.n_bytes += nbytes

    @property
    def type_name(self) -> str:
        return TYPE_NAMES[self.type]

    def to_text(self) -> str:
        """As add-group takes it and dump-groups prints it (OpenFlow 1.3)."""
        return ",".join([f"group_id={self.group_id}", f"type={self.type_name}"]
                        + [b.to_text(self.type) for b in self.buckets])

    def referenced_groups(self) -> set[int]:
        return {a.group_id for b in self.buckets for a in b.actions if isinstance(a, GroupAction)}


@dataclass
class GroupSpec:
    """One group-mod's content: what add-group, mod-group and OpenFlow's GROUP_MOD carry."""

    group_id: int
    type: int = 0
    buckets: list[Bucket] = field(default_factory=list)


# --- text ------------------------------------------------------------------------------------------------


_BUCKET_PARAMS = ("weight", "watch_port", "watch_group", "bucket_id")


def parse_group(text: str, *, buckets: bool = True) -> GroupSpec:
    """add-group/mod-group text: ``group_id=N,type=all|select|indirect|ff[,bucket=...]...``; each bucket
    ``bucket=[weight:W,][watch_port:P,][watch_group:G,]actions=ACTIONS`` (or the actions alone). With
    buckets=False (del-groups, dump-groups), only ``group_id=N`` (or nothing: every group)."""
    text = text.strip()
    starts = [m.start() for m in re.finditer(r"(?:^|,)\s*bucket=", text)]
    head = text[: starts[0]] if starts else text
    spec = GroupSpec(OFPG_ALL if not buckets else -1, -1)
    pos = 0
    for item in head.split(","):
        k, sep, v = item.strip().partition("=")
        at = text.find(item, pos)
        pos = at + len(item)
        if not k:
            continue
        try:
            if k == "group_id":
                spec.group_id = OFPG_ALL if v == "all" else parse_int(v, 32, "group_id")
                if spec.group_id > OFPG_MAX and spec.group_id != OFPG_ALL:
                    raise ValueError(f"group_id {spec.group_id} is out of range 0..{OFPG_MAX}")
            elif k == "type" and buckets:
                t = {"fast_failover": "ff"}.get(v, v)
                if t not in TYPES:
                    raise ValueError(f"type {v!r}: one of all, select, indirect, ff")
                spec.type = TYPES[t]
            elif k in ("selection_method", "selection_method_param", "fields") and buckets:
                pass  # OpenFlow 1.5's select parameters: this switch always hashes addresses and ports
            else:
                raise ValueError(f"unknown group field {k!r} (group_id, type, bucket)")
        except ValueError as e:
            raise FlowSyntaxError(str(e), text, max(at, 0), len(item.strip())) from None
    if spec.group_id < 0:
        raise FlowSyntaxError("missing group_id=N", text, 0, len(head) or 1)
    if not buckets:
        if starts:
            raise FlowSyntaxError("no buckets here: this command takes group_id=N only", text, starts[0], 7)
        return spec
    if spec.type < 0:
        raise FlowSyntaxError("missing type=all|select|indirect|ff", text, 0, len(head) or 1)
    for i, s in enumerate(starts):
        begin = text.index("bucket=", s) + len("bucket=")
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        spec.buckets.append(_parse_bucket(text, begin, end, spec.type))
    return spec


def _parse_bucket(text: str, begin: int, end: int, gtype: int) -> Bucket:
    body = text[begin:end]
    b = Bucket([], weight=1 if gtype == TYPES["select"] else 0)
    off = 0
    while True:
        m = re.match(r"\s*(\w+)[:=]([^,]*)(?:,|$)", body[off:])
        if not m or m.group(1) not in _BUCKET_PARAMS:
            break
        name, value = m.group(1), m.group(2)
        try:
            if name == "weight":
                b.weight = parse_int(value, 16, "weight")
            elif name == "watch_port":
                b.watch_port = parse_int(value, 32, "watch_port")
                if not 0 < b.watch_port < OFPP_MAX:
                    raise ValueError(f"watch_port {b.watch_port} is out of range 1..{OFPP_MAX - 1}")
            elif name == "watch_group":
                b.watch_group = parse_int(value, 32, "watch_group")
        except ValueError as e:
            raise FlowSyntaxError(str(e), text, begin + off + m.start(2), len(value)) from None
        off += m.end()
    rest = body[off:]
    lead = len(rest) - len(rest.lstrip())
    if rest.lstrip().startswith("actions="):
        lead += len("actions=")
    acts = rest[lead:].rstrip().rstrip(",")
    if not acts:
        raise FlowSyntaxError("a bucket needs actions (bucket=actions=output:1, or actions=drop)", text,
                              begin + off, max(1, len(rest)))
    b.actions = parse_actions(acts, text, begin + off + lead)
    return b


def parse_groups_file(text: str) -> list[GroupSpec]:
    """add-groups input: one group per line; blank lines and # comments skipped. Errors name the line."""
    return parse_lines(text, parse_group)


# --- the table -------------------------------------------------------------------------------------------


SELECT_MAX_BUCKETS = 5    # buckets of a select group the fast path picks from (DP_SELECT_MAX_BUCKETS)
BUCKET_SLOTS = 4096       # the fast path's per-bucket counters (DP_BUCKET_SLOTS)


class GroupTable:
    """Groups by number. check() is every validation a group-mod gets; add/modify/delete change nothing
    when they raise. A select group small enough for the fast path gets SELECT_MAX_BUCKETS counter slots
    there (``Group.stats_base``); ``fresh_slots`` lists the bases handed out since the owner last zeroed them
    in the datapath (a base freed by a deleted group is reused)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.groups: dict[int, Group] = {}
        self.clock = clock
        # bases to hand out, a freed one last (as meter slots): a megaflow not yet revalidated after its group went
        # never counts into a new group's buckets
        self._free_bases = deque(range(0, BUCKET_SLOTS - SELECT_MAX_BUCKETS + 1, SELECT_MAX_BUCKETS))
        self.fresh_slots: list[int] = []

    def _take_slots(self, g: Group) -> None:
        if g.type == TYPES["select"] and 0 < len(g.buckets) <= SELECT_MAX_BUCKETS and self._free_bases:
            g.stats_base = self._free_bases.popleft()
            self.fresh_slots.append(g.stats_base)

    def _free_slots(self, g: Group) -> None:
        if g.stats_base >= 0:
            self._free_bases.append(g.stats_base)
            g.stats_base = -1

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[Group]:
        return iter(sorted(self.groups.values(), key=lambda g: g.group_id))

    def get(self, group_id: int) -> Group | None:
        return self.groups.get(group_id)

    def check(self, spec: GroupSpec) -> None:
        """As OVS validates a group-mod (add or modify): GroupModError with the code it sends."""
        if spec.group_id > OFPG_MAX:
            raise GroupModError(INVALID_GROUP, f"group {spec.group_id:#x} is a reserved number")
        if spec.type not in TYPE_NAMES:
            raise GroupModError(BAD_TYPE, f"group type {spec.type}")
        if len(spec.buckets) > MAX_BUCKETS:
            raise GroupModError(OUT_OF_BUCKETS, f"{len(spec.buckets)} buckets; at most {MAX_BUCKETS}")
        if spec.type == TYPES["indirect"] and len(spec.buckets) != 1:
            raise GroupModError(INVALID_GROUP, f"an indirect group has exactly one bucket, not {len(spec.buckets)}")
        for i, b in enumerate(spec.buckets):
            if spec.type != TYPES["select"] and b.weight:
                raise GroupModError(BAD_BUCKET, f"bucket {i}: a weight is for select groups only")
            if spec.type == TYPES["ff"]:
                if b.watch_port == OFPP_ANY and b.watch_group == OFPG_ANY:
                    raise GroupModError(BAD_WATCH, f"bucket {i}: a fast-failover bucket watches a port or a group")
                if b.watch_group != OFPG_ANY and b.watch_group not in self.groups:
                    raise GroupModError(BAD_WATCH, f"bucket {i}: watch_group {b.watch_group} does not exist")
            elif b.watch_port != OFPP_ANY or b.watch_group != OFPG_ANY:
                raise GroupModError(BAD_WATCH, f"bucket {i}: only fast-failover buckets watch ports or groups")
            for a in b.actions:
                if isinstance(a, GotoTable | WriteMetadata):
                    raise GroupModError(BAD_BUCKET, f"bucket {i}: {a} is an instruction, not an action")
                if isinstance(a, GroupAction) and a.group_id not in self.groups:
                    raise GroupModError(UNKNOWN_GROUP, f"bucket {i}: group {a.group_id} does not exist")
                if isinstance(a, Output) and not 0 < a.port < OFPP_MAX:
                    raise GroupModError(BAD_BUCKET, f"bucket {i}: output to port {a.port}")
        refs = {a.group_id for b in spec.buckets for a in b.actions if isinstance(a, GroupAction)}
        refs |= {b.watch_group for b in spec.buckets if b.watch_group != OFPG_ANY}
        if spec.group_id in refs or any(spec.group_id in self._reachable(r) for r in refs):
            raise GroupModError(LOOP, f"group {spec.group_id} would reach itself through its buckets")
        if self._depth(refs) + 1 > MAX_CHAIN:
            raise GroupModError(CHAINING_UNSUPPORTED, f"groups chained more than {MAX_CHAIN} deep")

    def _reachable(self, gid: int) -> set[int]:
        seen: set[int] = set()
        todo = [gid]
        while todo:
            g = self.groups.get(todo.pop())
            if g is None or g.group_id in seen:
                continue
            seen.add(g.group_id)
            todo.extend(g.referenced_groups() | {b.watch_group for b in g.buckets if b.watch_group != OFPG_ANY})
        return seen

    def _depth(self, refs: set[int]) -> int:
        depth = 0
        for r in refs:
            g = self.groups.get(r)
            if g is not None:
                depth = max(depth, 1 + self._depth(g.referenced_groups()))
        return depth

    def add(self, spec: GroupSpec) -> Group:
        if spec.group_id in self.groups:
            raise GroupModError(GROUP_EXISTS, f"group {spec.group_id} exists (mod-group changes it)")
        if len(self.groups) >= MAX_GROUPS:
            raise GroupModError(OUT_OF_GROUPS, f"{MAX_GROUPS} groups already")
        self.check(spec)
        g = Group(spec.group_id, spec.type, list(spec.buckets), created=self.clock())
        self._take_slots(g)
        self.groups[g.group_id] = g
        return g

    def modify(self, spec: GroupSpec) -> Group:
        """mod-group: new type and buckets; its counters start again (the buckets are new)."""
        if spec.group_id not in self.groups:
            raise GroupModError(UNKNOWN_GROUP, f"no group {spec.group_id} (add-group makes one)")
        self.check(spec)
        old = self.groups[spec.group_id]
        g = Group(spec.group_id, spec.type, list(spec.buckets), created=old.created, n_packets=old.n_packets,
                  n_bytes=old.n_bytes)
        self._free_slots(old)
        self._take_slots(g)
        self.groups[g.group_id] = g
        return g

    def delete(self, group_id: int) -> list[Group]:
        """del-groups: one group (nothing when there is none, as OpenFlow says) or OFPG_ALL. A group another
        group's bucket goes to cannot go alone (CHAINED_GROUP)."""
        if group_id == OFPG_ALL:
            gone = list(self.groups.values())
            self.groups.clear()
            for g in gone:
                self._free_slots(g)
            return gone
        one = self.groups.get(group_id)
        if one is None:
            return []
        users = sorted(o.group_id for o in self.groups.values()
                       if group_id in o.referenced_groups() or any(b.watch_group == group_id for b in o.buckets))
        if users:
            raise GroupModError(CHAINED_GROUP, f"group {group_id} is used by group {users[0]}: delete that first")
        del self.groups[group_id]
        self._free_slots(one)
        return [one]

    def specs(self) -> list[GroupSpec]:
        """The groups as specs, each after the groups its buckets go to: a state file restores them in this
        order."""
        order: list[int] = []
        seen: set[int] = set()

        def visit(gid: int) -> None:
            if gid in seen or gid not in self.groups:
                return
            seen.add(gid)
            g = self.groups[gid]
            for r in sorted(g.referenced_groups() | {b.watch_group for b in g.buckets if b.watch_group != OFPG_ANY}):
                visit(r)
            order.append(gid)

        for gid in sorted(self.groups):
            visit(gid)
        return [GroupSpec(g.group_id, g.type, g.buckets) for g in (self.groups[i] for i in order)]


__all__ = ["OFPG_ALL", "OFPG_ANY", "TYPES", "Bucket", "Group", "GroupModError", "GroupSpec", "GroupTable",
           "parse_group", "parse_groups_file"]
