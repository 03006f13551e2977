"""The OpenFlow tables: rules in ovs-ofctl syntax, flow-mods, and the state file.

``OpenFlowTables`` holds tables 0..254, each a classifier (``ctl/pipeline/classifier.py``'s ``Table``).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ctl.pipeline.classifier import Table, overlap
from ctl.pipeline.groups import OFPG_ALL, Group, GroupSpec, GroupTable, parse_group
from ctl.pipeline.meters import Meter, MeterSpec, MeterTable, parse_meter
from ctl.pipeline.ofactions import (
    N_TABLES,
    Controller,
    GotoTable,
    GroupAction,
    MeterAction,
    OfAction,
    consistency_error,
    format_actions,
    parse_actions,
    split_actions,
)
from ctl.pipeline.ofmatch import (
    DEFAULT_PREFIXES,
    FlowSyntaxError,
    Match,
    format_match,
    format_prefixes,
    parse_int,
    parse_lines,
    parse_match_tokens,
    parse_prefixes,
    tokens,
)

DEFAULT_PRIORITY = 32768
MISS_ACTIONS = ("drop", "continue", "controller")
# flow-mod flags (OpenFlow 1.3's OFPFF_*), written in flow text by name as ovs-ofctl does
SEND_FLOW_REM, CHECK_OVERLAP, RESET_COUNTS, NO_PKT_COUNTS, NO_BYT_COUNTS = 1, 2, 4, 8, 16
FLAG_NAMES = {"send_flow_rem": SEND_FLOW_REM, "check_overlap": CHECK_OVERLAP, "reset_counts": RESET_COUNTS,
              "no_packet_counts": NO_PKT_COUNTS, "no_byte_counts": NO_BYT_COUNTS}
KEPT_FLAGS = SEND_FLOW_REM | NO_PKT_COUNTS | NO_BYT_COUNTS  # what a rule remembers (the others act once)


# --- flow text -------------------------------------------------------------------------------------------


@dataclass
class FlowSpec:
    """One line of ovs-ofctl flow text: where, match, actions and the numbers around them."""

    match: Match
    actions: list[OfAction] = field(default_factory=list)
    table: int | None = None
    priority: int = DEFAULT_PRIORITY
    cookie: int = 0
    cookie_mask: int = 0   # for del-flows/dump-flows filters: cookie=V/M
    idle_timeout: int = 0
    hard_timeout: int = 0
    has_priority: bool = False
    has_actions: bool = False
    flags: int = 0          # SEND_FLOW_REM | CHECK_OVERLAP | RESET_COUNTS ...


def parse_flow(text: str, *, actions: bool = True) -> FlowSpec:
    """A flow as add-flow takes it (actions=... required) or, with actions=False, a filter as del-flows
    and dump-flows take it (no actions; cookie may carry a mask)."""
    apos = text.find("actions=")
    if apos < 0 and actions:
        raise FlowSyntaxError("missing actions=... (e.g. actions=output:2, actions=drop)", text, len(text.rstrip()), 1)
    if apos >= 0 and not actions:
        raise FlowSyntaxError("no actions here: this command takes a match only", text, apos, 8)
    head_end = apos if apos >= 0 else len(text)
    spec = FlowSpec(Match())
    rest = []
    for t in tokens(text, 0, head_end):
        try:
            if t.key == "table":
                spec.table = _table_arg(t.value)
            elif t.key == "priority":
                spec.priority = parse_int(t.value or "", 16, "priority")
                spec.has_priority = True
            elif t.key == "cookie":
                v, _, m = (t.value or "").partition("/")
                spec.cookie = parse_int(v, 64, "cookie")
                if m:
                    if actions:
                        raise ValueError("cookie masks are for del-flows and dump-flows")
                    spec.cookie_mask = parse_int(m, 64, "cookie mask")
                elif not actions:
                    spec.cookie_mask = (1 << 64) - 1
            elif t.key in ("idle_timeout", "hard_timeout"):
                setattr(spec, t.key, parse_int(t.value or "", 16, t.key))
            elif t.key in FLAG_NAMES and t.value is None:
                spec.flags |= FLAG_NAMES[t.key]
            else:
                rest.append(t)
        except ValueError as e:
            at = t.vpos if t.value else t.pos
            raise FlowSyntaxError(str(e), text, at, len(t.value or t.key)) from None
    spec.match = parse_match_tokens(rest, text)
    if apos >= 0:
        start = apos + len("actions=")
        spec.actions = parse_actions(text[start:], text, start)
        spec.has_actions = True
        bad = consistency_error(spec.match, spec.actions)
        if bad is not None:
            i, why = bad
            item, pos = split_actions(text[start:])[i]  # one item per action ("drop" stands alone)
            raise FlowSyntaxError(why, text, start + pos, len(item))
        tid = spec.table or 0
        for a in spec.actions:
            if isinstance(a, GotoTable) and a.table <= tid:
                at = text.find("goto_table", start)
                raise FlowSyntaxError(f"goto_table:{a.table} from table {tid}: goto_table must go to a later table",
                                      text, at, len(str(a)))
    return spec


def _table_arg(value: str | None) -> int:
    v = parse_int(value or "", 8, "table")
    if v >= N_TABLES:
        raise ValueError(f"table {v} is out of range 0..{N_TABLES - 1}")
    return v


# --- rules ---------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Rule:
    table: int
    priority: int
    match: Match
    actions: list[OfAction]
    cookie: int = 0
    idle_timeout: int = 0
    hard_timeout: int = 0
    created: float = 0.0   # the tables' clock (OpenFlowTables.clock) when it was added
    n_packets: int = 0
    n_bytes: int = 0
    seq: int = 0           # insertion order: ties between equal priorities go to the older rule
    last_used: float = 0.0  # monotonic time of the last packet credited (idle_timeout); creation at first
    flags: int = 0          # KEPT_FLAGS bits (send_flow_rem ...)

    def __post_init__(self) -> None:
        self.last_used = self.created

    def credit(self, packets: int, nbytes: int, now: float) -> None:
        """Count packets and bytes that went through the rule; now (the tables' clock) is its last use."""
        self.n_packets += packets
        self.n_bytes += nbytes
        if packets:
            self.last_used = now

    def to_text(self) -> str:
        """The rule as add-flow text (what the state file keeps)."""
        parts = [f"table={self.table}", f"priority={self.priority}"]
        if self.cookie:
            parts.append(f"cookie={self.cookie:#x}")
        if self.idle_timeout:
            parts.append(f"idle_timeout={self.idle_timeout}")
        if self.hard_timeout:
            parts.append(f"hard_timeout={self.hard_timeout}")
        parts += [n for n, b in FLAG_NAMES.items() if self.flags & b]
        m = format_match(self.match)
        return ",".join(parts + ([m] if m else [])) + f",actions={format_actions(self.actions)}"

    def format(self, now: float) -> str:
        """As ovs-ofctl dump-flows prints it (now: the tables' clock)."""
        head = (f" cookie={self.cookie:#x}, duration={now - self.created:.3f}s, table={self.table}, "
                f"n_packets={self.n_packets}, n_bytes={self.n_bytes}, ")
        if self.idle_timeout:
            head += f"idle_timeout={self.idle_timeout}, "
        if self.hard_timeout:
            head += f"hard_timeout={self.hard_timeout}, "
        head += "".join(f"{n}, " for n, b in FLAG_NAMES.items() if self.flags & b)
        m = format_match(self.match, self.priority)
        return f"{head}{m}{' ' if m else ''}actions={format_actions(self.actions)}"

    def to_json(self, now: float) -> dict[str, object]:
        return {"cookie": f"{self.cookie:#x}", "duration": round(now - self.created, 3), "table": self.table,
                "n_packets": self.n_packets, "n_bytes": self.n_bytes, "idle_timeout": self.idle_timeout,
                "hard_timeout": self.hard_timeout, "priority": self.priority, "match": format_match(self.match),
                "actions": format_actions(self.actions)}


def _outputs_to(rule: Rule, out: OfAction) -> bool:
    """The rule has an output to out (Output(n), or one of the reserved ports; any controller max_len)."""
    return any(a == out or (isinstance(a, Controller) and isinstance(out, Controller)) for a in rule.actions)


# --- all tables, flow-mods, the state file --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Added:
    """A rule went in: it can take packets from lower-priority rules (or a miss) of its table."""

    rule: Rule


@dataclass(frozen=True, eq=False)
class Touched:
    """Rules went out or changed their actions: what went through them changes."""

    rules: tuple[Rule, ...]


@dataclass(frozen=True, eq=False)
class GroupsChanged:
    """Groups changed their buckets or went: what went through any group may change (a fast-failover bucket's
    liveness can hang on another group, so no group id narrows it)."""


@dataclass(frozen=True, eq=False)
class MissChanged:
    """A table's miss behaviour changed: what missed there changes."""

    table: int


@dataclass(frozen=True, eq=False)
class Everything:
    """Anything else (a whole new set of tables, a cleared one): every megaflow may change."""

    why: str


Change = Added | Touched | GroupsChanged | MissChanged | Everything
MAX_JOURNAL = 10_000  # changes kept for the Udpif to read; past it they are one Everything


class UnknownGroup(ValueError):
    """A flow's group action names a group that does not exist (OpenFlow: BAD_ACTION, BAD_OUT_GROUP)."""


class UnknownMeter(ValueError):
    """A flow's meter instruction names a meter that does not exist (OpenFlow: METER_MOD_FAILED, UNKNOWN_METER)."""


class OpenFlowTables:
    """Tables 0..254 with flow-mods as ovs-ofctl issues them, and the group table (``groups``). ``version``
    grows with every change, and ``journal`` says what each change was (``Added``, ``Touched`` ...), so the
    Udpif can tell which megaflows it may affect (``ctl/udpif/affected.py``); the Udpif empties it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.tables: list[Table[Rule]] = [Table(i) for i in range(N_TABLES)]
        self.groups = GroupTable(clock)
        self.meters = MeterTable(clock)
        self.version = 0
        self.journal: list[Change] = []
        self.clock = clock  # seconds, monotonic: rule creation, last use, timeouts (injected in tests)

    def _changed(self, *changes: Change) -> None:
        self.version += 1
        if len(self.journal) + len(changes) > MAX_JOURNAL:
            self.journal = [Everything("more changes than the journal keeps")]
        else:
            self.journal.extend(changes)

    def take_journal(self) -> list[Change]:
        """The changes since the last call (the caller holds the lock that guards these tables)."""
        out, self.journal = self.journal, []
        return out

    def check_groups(self, actions: Iterable[OfAction]) -> None:
        """UnknownGroup if an action goes to a group that does not exist (as OVS's ofpacts_check)."""
        for a in actions:
            if isinstance(a, GroupAction) and a.group_id not in self.groups.groups:
                raise UnknownGroup(f"group:{a.group_id}: there is no group {a.group_id} (add-group makes one)")
            if isinstance(a, MeterAction) and a.meter_id not in self.meters.meters:
                raise UnknownMeter(f"meter:{a.meter_id}: there is no meter {a.meter_id} (add-meter makes one)")

    # --- meters ------------------------------------------------------------------------------------------

    def add_meter(self, spec: MeterSpec) -> Meter:
        m = self.meters.add(spec)
        self._changed()   # no rule can use it yet
        return m

    def modify_meter(self, spec: MeterSpec) -> Meter:
        m = self.meters.modify(spec)
        users = (r for r in self.rules() if any(isinstance(a, MeterAction) and a.meter_id == m.meter_id
                                                for a in r.actions))
        self._changed(Touched(tuple(users)))
        return m

    def delete_meters(self, meter_id: int) -> tuple[list[Meter], list[Rule]]:
        """del-meters: the meters gone, and the rules that used them, deleted with them (as OVS)."""
        gone = self.meters.delete(meter_id)
        if not gone:
            return [], []
        ids = {m.meter_id for m in gone}
        rules = [r for r in self.rules() if any(isinstance(a, MeterAction) and a.meter_id in ids for a in r.actions)]
        for r in rules:
            self.tables[r.table].remove(r)
        self._changed(Touched(tuple(rules)))
        return gone, rules

    def meter_refs(self, meter_id: int) -> int:
        """The rules whose instructions name the meter (OpenFlow's flow_count)."""
        return sum(1 for r in self.rules() for a in r.actions if isinstance(a, MeterAction) and a.meter_id == meter_id)

    # --- groups ------------------------------------------------------------------------------------------

    def add_group(self, spec: GroupSpec) -> Group:
        g = self.groups.add(spec)
        self._changed()   # no rule or bucket can go to it yet
        return g

    def modify_group(self, spec: GroupSpec) -> Group:
        g = self.groups.modify(spec)
        self._changed(GroupsChanged())
        return g

    def delete_groups(self, group_id: int) -> tuple[list[Group], list[Rule]]:
        """del-groups: the groups gone, and the rules that went to them, deleted with them (OpenFlow 1.3,
        6.5: the flows that forward to a deleted group are removed)."""
        gone = self.groups.delete(group_id)
        if not gone:
            return [], []
        ids = {g.group_id for g in gone}
        rules = [r for r in self.rules() if any(isinstance(a, GroupAction) and a.group_id in ids for a in r.actions)]
        for r in rules:
            self.tables[r.table].remove(r)
        self._changed(Touched(tuple(rules)), GroupsChanged())
        return gone, rules

    def group_refs(self, group_id: int) -> int:
        """The rules whose actions go to the group (OpenFlow's ref_count)."""
        return sum(1 for r in self.rules() for a in r.actions if isinstance(a, GroupAction) and a.group_id == group_id)

    def __len__(self) -> int:
        return sum(len(t) for t in self.tables)

    def rules(self, table: int | None = None) -> list[Rule]:
        ts = self.tables if table is None else [self.tables[table]]
        return sorted((r for t in ts for r in t.rules()), key=lambda r: (r.table, -r.priority, r.seq))

    def add(self, spec: FlowSpec) -> Rule:
        """add-flow: a rule with the same match and priority in the same table is replaced; its counters
        carry over unless the flow-mod says reset_counts (OpenFlow 1.3, 6.4)."""
        tid = spec.table or 0
        table = self.tables[tid]
        self.check_groups(spec.actions)
        old = table.find_exact(spec.match, spec.priority)
        if old is not None:
            table.remove(old)
        rule = Rule(tid, spec.priority, spec.match, list(spec.actions), spec.cookie, spec.idle_timeout,
                    spec.hard_timeout, created=self.clock(), flags=spec.flags & KEPT_FLAGS)
        if old is not None and not spec.flags & RESET_COUNTS:
            rule.n_packets, rule.n_bytes = old.n_packets, old.n_bytes
        table.insert(rule)
        self._changed(Added(rule), *([Touched((old,))] if old is not None else []))
        return rule

    def overlaps(self, spec: FlowSpec) -> bool:
        """check_overlap: a rule of the same priority in the same table that some packet could match as
        well as spec's (a rule with the identical match is a replacement, not an overlap)."""
        for r in self.tables[spec.table or 0].by_priority.get(spec.priority, ()):
            if r.match == spec.match:
                continue
            if overlap(r.match, spec.match):
                return True
        return False

    def modify(self, spec: FlowSpec, strict: bool = False, out: OfAction | None = None) -> list[Rule]:
        """OpenFlow modify/modify_strict: the selected rules take spec's actions (and zeroed counters with
        reset_counts); their matches, priorities, cookies and timeouts stay."""
        self.check_groups(spec.actions)
        picked = self.select(spec, strict, out)
        for r in picked:
            r.actions = list(spec.actions)
            if spec.flags & RESET_COUNTS:
                r.n_packets = r.n_bytes = 0
        if picked:
            self._changed(Touched(tuple(picked)))
        return picked

    def add_many(self, specs: Iterable[FlowSpec]) -> list[Rule]:
        return [self.add(s) for s in specs]

    def select(self, spec: FlowSpec, strict: bool = False, out_port: OfAction | None = None,
               out_group: int | None = None) -> list[Rule]:
        """The rules a del-flows/dump-flows filter picks: loosely (the filter covers the rule's match) or
        strictly (same match and priority: found by its subtable, not by a scan); with out_port, only rules
        with an output there; with out_group, only rules that go to that group."""
        grp = None if out_group is None else GroupAction(out_group)
        if strict:
            tables = self.tables if spec.table is None else [self.tables[spec.table]]
            found = (t.find_exact(spec.match, spec.priority) for t in tables)
            return [r for r in found if r is not None
                    and not (spec.cookie_mask and (r.cookie ^ spec.cookie) & spec.cookie_mask)
                    and (out_port is None or _outputs_to(r, out_port))
                    and (grp is None or grp in r.actions)]
        out = []
        for r in self.rules(spec.table):
            if spec.cookie_mask and (r.cookie ^ spec.cookie) & spec.cookie_mask:
                continue
            if out_port is not None and not _outputs_to(r, out_port):
                continue
            if grp is not None and grp not in r.actions:
                continue
            if spec.match.covers(r.match):
                out.append(r)
        return out

    def delete(self, spec: FlowSpec, strict: bool = False, out_port: OfAction | None = None,
               out_group: int | None = None) -> list[Rule]:
        gone = self.select(spec, strict, out_port, out_group)
        for r in gone:
            self.tables[r.table].remove(r)
        if gone:
            self._changed(Touched(tuple(gone)))
        return gone

    def timed_rules(self) -> list[Rule]:
        """The rules that have an idle or hard timeout."""
        return [r for t in self.tables if t.timed for r in t.timed]

    def remove_rule(self, rule: Rule) -> bool:
        """Remove one rule (e.g. expired); False if it is no longer there."""
        table = self.tables[rule.table]
        if table.find_exact(rule.match, rule.priority) is not rule:
            return False
        table.remove(rule)
        self._changed(Touched((rule,)))
        return True

    def clear(self) -> None:
        for t in self.tables:
            for r in list(t.rules()):
                t.remove(r)
        self._changed(Everything("every rule deleted"))

    def set_miss(self, table: int, action: str) -> None:
        if action not in MISS_ACTIONS:
            raise ValueError(f"table-miss {action!r}: one of {', '.join(MISS_ACTIONS)}")
        if action == "continue" and table == N_TABLES - 1:
            raise ValueError(f"table {table} is the last: a miss there cannot continue")
        self.tables[table].miss = action
        self._changed(MissChanged(table))

    def set_prefixes(self, table: int, fields: tuple[str, ...]) -> None:
        """The table's prefix tries (``ofmatch.parse_prefixes``): which address fields, consulted in order."""
        self.tables[table].set_prefixes(fields)
        self._changed()   # the lookups find the same rules: only the masks of new megaflows narrow

    # --- the state file ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        return self.snapshot().to_json()

    def snapshot(self) -> TablesSnapshot:
        """A copy of what the state file keeps, cheap enough to take under the tables' lock (shallow copies:
        a rule's match and action list are replaced by flow-mods, never changed in place); format it
        outside the lock."""
        return TablesSnapshot([copy.copy(r) for r in self.rules()],
                              {str(t.id): t.miss for t in self.tables if t.miss != "drop"},
                              {str(t.id): format_prefixes(t.prefixes) for t in self.tables
                               if t.prefixes != DEFAULT_PREFIXES},
                              [Group(s.group_id, s.type, s.buckets) for s in self.groups.specs()],
                              [Meter(s.meter_id, s.flags, s.bands) for s in self.meters.specs()])

    def load_json(self, data: dict[str, object]) -> None:
        """Replace everything with the contents of a state file; on any error (ValueError) nothing changes."""
        if not isinstance(data, dict):
            raise ValueError("not a state file: expected an object with 'flows' and 'table_miss'")
        flows = data.get("flows", [])
        misses = data.get("table_miss", {})
        if not isinstance(flows, list) or not isinstance(misses, dict):
            raise ValueError("state file: 'flows' must be a list and 'table_miss' a map")
        prefixes = data.get("table_prefixes", {})
        if not isinstance(prefixes, dict):
            raise ValueError("state file: 'table_prefixes' must be a map")
        groups = data.get("groups", [])
        if not isinstance(groups, list):
            raise ValueError("state file: 'groups' must be a list")
        specs = [parse_flow(str(t)) for t in flows]
        fresh = OpenFlowTables(self.clock)
        meters = data.get("meters", [])
        if not isinstance(meters, list):
            raise ValueError("state file: 'meters' must be a list")
        for text in meters:
            fresh.add_meter(parse_meter(str(text)))
        for text in groups:
            fresh.add_group(parse_group(str(text)))
        for what, settings in (("table_miss", misses), ("table_prefixes", prefixes)):
            for tid, value in settings.items():
                if not str(tid).isdigit() or not 0 <= int(tid) < N_TABLES:
                    raise ValueError(f"state file: {what}: table {tid!r} is out of range 0..{N_TABLES - 1}")
                if what == "table_miss":
                    fresh.set_miss(int(tid), str(value))
                else:
                    fresh.set_prefixes(int(tid), parse_prefixes(str(value)))
        fresh.add_many(specs)
        self.tables = fresh.tables
        self.groups = fresh.groups
        self.meters = fresh.meters
        self._changed(Everything("tables loaded from a state file"))

    def save(self, path: Path) -> None:
        """Write the state file (the caller holds whatever lock guards these tables)."""
        write_state(path, self.to_json())

    @classmethod
    def load(cls, path: Path, clock: Callable[[], float] = time.monotonic) -> OpenFlowTables:
        """The tables of a state file; ValueError naming the file and what is wrong with it."""
        t = cls(clock)
        try:
            t.load_json(json.loads(path.read_text()))
        except FlowSyntaxError as e:
            raise ValueError(f"{path}: {e.msg}: {e.text}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: {e}") from None
        except OSError as e:
            raise ValueError(f"{path}: cannot read it: {e.strerror}") from None
        return t


@dataclass
class TablesSnapshot:
    rules: list[Rule]
    misses: dict[str, str]
    prefixes: dict[str, str] = field(default_factory=dict)   # tables whose tries are not the default ones
    groups: list[Group] = field(default_factory=list)        # each after the groups its buckets go to
    meters: list[Meter] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"version": 1, "flows": [r.to_text() for r in self.rules],
                                  "table_miss": dict(self.misses)}
        if self.prefixes:
            out["table_prefixes"] = dict(self.prefixes)
        if self.groups:
            out["groups"] = [g.to_text() for g in self.groups]
        if self.meters:
            out["meters"] = [m.to_text() for m in self.meters]
        return out


def write_state(path: Path, data: dict[str, object]) -> None:
    """Write a state file atomically: a temporary file in the same directory, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_flows_file(text: str) -> list[FlowSpec]:
    """add-flows input: one flow per line; blank lines and # comments are skipped. Errors name the line."""
    return parse_lines(text, parse_flow)


__all__ = ["DEFAULT_PRIORITY", "OFPG_ALL", "FlowSpec", "UnknownGroup", "UnknownMeter",
           "OpenFlowTables", "Rule", "TablesSnapshot", "parse_flow", "parse_flows_file",
           "write_state"]
