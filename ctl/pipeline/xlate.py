"""Translation: run a packet through the OpenFlow pipeline and get its datapath actions and megaflow mask.

As OVS's ofproto-dpif-xlate does: the packet's flow is walked through the tables (goto_table, resubmit,
table-miss); actions change a working copy of the flow; each output first "commits" the changes made
since the last one as datapath set actions. Every field the walk looked at goes into the wildcard mask,
except bits that an earlier action set to a constant (they no longer depend on the packet).

Always matched, as OVS does: ``in_port`` (an output to the ingress port is dropped) and ``dl_type``.
The result says whether the fast path can run the actions (modifications, then outputs) or whether the
megaflow must send each packet to user space (``slow_path``).
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from ctl.datapath import dpif
from ctl.datapath.execute import transform
from ctl.datapath.flowkey import FLOW_NW_FRAG_ANY, FLOW_NW_FRAG_LATER, VLAN_CFI, mac_str, parse
from ctl.pipeline import ofactions as of
from ctl.pipeline.groups import OFPG_ANY, OFPP_ANY, Bucket, Group
from ctl.pipeline.groups import TYPES as GROUP_TYPES
from ctl.pipeline.mac_learning import MacLearning, is_multicast, vlan_of
from ctl.pipeline.meters import Meter
from ctl.pipeline.ofmatch import (
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    FIELDS,
    FULL,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    PACKET_FIELDS,
    PIPELINE_FIELDS,
    Flow,
    Match,
    flow_of,
    format_flow,
)
from ctl.pipeline.openflow_tables import OpenFlowTables, Rule

MAX_RESUBMIT_DEPTH = 64  # as OVS
Credited = Rule | Group | Bucket  # what a translated packet's counters go to
_PIPELINE_ZERO = dict.fromkeys(PIPELINE_FIELDS, 0)
ALWAYS_EXACT = ("in_port", "dl_type")


@dataclass
class TraceStep:
    depth: int
    table: int
    rule: Rule | None
    notes: list[str] = field(default_factory=list)


Lookup = tuple[int, int, frozenset[str]]
"""One table lookup of a translation: (table, priority of the rule found or -1 for a miss, the fields written
before it). With none written the lookup is *pristine*: the fields it saw are the packet's (pipeline fields
zero). "*" stands for every field (after a recirculation)."""
PRISTINE: frozenset[str] = frozenset()
_INTERNED: dict[frozenset[str], frozenset[str]] = {PRISTINE: PRISTINE}   # one object per set of written fields


@dataclass
class Translation:
    flow: Flow                      # the packet as it came in
    final_flow: Flow                # after the actions
    wc: Flow                        # the megaflow mask: every bit consulted
    actions: list[dpif.Action]      # datapath actions
    rules: list[Rule]               # every rule the packet went through (for their counters)
    steps: list[TraceStep]
    slow_path: str = ""             # why the fast path cannot run the actions ("" when it can)
    normal: bool = False            # NORMAL ran: the megaflow depends on the MAC learning table
    learned: bool = False           # NORMAL learned (or moved) the source MAC
    missed: list[Any] = field(default_factory=list)   # the tables it found no rule in (their miss counters)
    error: str = ""                 # why the packet is dropped as unsupported ("": it is not)
    recirc: bool = False            # the pipeline read the packet again after a pop_mpls: every packet of the
                                    # megaflow is translated on its own (OVS recirculates)
    credits: list[Credited] = field(default_factory=list)  # what a packet counts in: the rules, then the groups
                                    # and buckets it went through (a select group's buckets count in the datapath)
    lookups: tuple[Lookup, ...] = ()  # every table lookup, in order (what a change can affect: ctl/udpif/affected.py)


    def megaflow(self) -> Match:
        return Match.from_masked(self.flow, self.wc)

    def format_trace(self, bridge: str = "xdpswitch") -> str:
        """The trace in the shape of ``ovs-appctl ofproto/trace``."""
        lines = [f"Flow: {format_flow(self.flow)}", "", f'bridge("{bridge}")', "-" * (len(bridge) + 10)]
        for s in self.steps:
            pad = "    " * s.depth
            if s.rule is None:
                lines.append(f"{pad} {s.table}. No match.")
            else:
                r = s.rule
                m = f"{r.match.format()}, priority {r.priority}" if r.match.fields else f"priority {r.priority}"
                lines.append(f"{pad} {s.table}. {m}{', cookie ' + hex(r.cookie) if r.cookie else ''}")
            for n in s.notes:
                lines.append(f"{pad}    {n}")
        lines.append("")
        final = "unchanged" if self.final_flow == self.flow else format_flow(self.final_flow)
        lines.append(f"Final flow: {final}")
        lines.append(f"Megaflow: {self.megaflow().format()}")
        lines.append(f"Datapath actions: {dpif.format_actions(self.actions)}")
        if self.slow_path:
            lines.append(f"This flow is handled by the userspace slow path: {self.slow_path}.")
        return "\n".join(lines)


_NO_BITS = dict.fromkeys(FIELDS, 0)
_WC_START = {f: FULL[f] if f in ALWAYS_EXACT else 0 for f in FIELDS}


class _Ctx:
    def __init__(self, tables: OpenFlowTables, flow: Flow, ports: Collection[int] | None,
                 tracing: bool = True, mac: MacLearning | None = None, may_learn: bool = False,
                 packet: bytes | None = None) -> None:
        self.tables = tables
        self.packet = packet            # the frame itself, when there is one: a recirculation parses it again
        self.recirc = False
        self.halt = 0                   # a DropReason that ended the actions (an MPLS TTL that ran out)
        self.hidden_tags: list[int] = []  # VLAN tags pushed under a newer outer one (802.1ad), innermost first
        self.mac = mac
        self.may_learn = may_learn
        self.normal_used = False
        self.learned = False
        self.orig = dict(flow)
        self.flow = dict(flow)
        self.dp_tagged = bool(flow["vlan_tci"] & VLAN_CFI)  # the packet carries a tag after the actions so far
        self.wc = _WC_START.copy()      # every field 0 but ALWAYS_EXACT's (a copy: cheaper than building it)
        self.set_bits = _NO_BITS.copy()
        self.ttl_changed = False
        self.tracing = tracing
        self.dirty: set[str] = set()    # fields written since the last commit
        self.vlan_tpid = 0x8100
        self.ports = ports
        self.actions: list[dpif.Action] = []
        self.rules: list[Rule] = []
        self.groups: list[Group | Bucket] = []
        self.meters: list[Meter] = []
        self.in_bucket = 0              # group buckets being run, one inside another
        self.committed: dict[str, int] = {}  # in a bucket: the flow as the datapath's packet has it (last commit)
        self.restored: set[str] = set()  # fields a bucket changed that the next commit writes back
        self.live: Callable[[int], bool] | None = None  # is a port up (fast failover); None: every port is
        self.missed: list[Any] = []     # tables that matched no rule (TABLE stats count the megaflow's packets)
        self.lookups: list[Lookup] = []
        self.written: set[str] = set()  # fields that may differ from the packet's now (set, decremented, popped,
                                        # "*" after a recirculation); none: lookups see the packet's own fields
        self.steps: list[TraceStep] = []
        self.error = ""
        self.depth = 0
        if flow["dl_type"] in (ETH_P_IP, ETH_P_IPV6):
            # OVS's default frag handling ("normal"): whether it is a fragment is always in the megaflow, and a
            # fragment, even the first, has no transport ports as far as the tables are concerned
            self.wc["nw_frag"] = FLOW_NW_FRAG_ANY
            if flow["nw_frag"] & FLOW_NW_FRAG_ANY:
                self.wc["nw_frag"] |= FLOW_NW_FRAG_LATER
                self.flow["tp_src"] = self.flow["tp_dst"] = 0
                self.set_bits["tp_src"] = self.set_bits["tp_dst"] = 0xFFFF
                self.written.update(("tp_src", "tp_dst"))  # lookups go through consult(), which leaves them out

    # --- the mask ---------------------------------------------------------------------------------

    def consult(self, f: str, bits: int) -> None:
        """The translation depended on these bits of the packet's field f."""
        if self.recirc:
            return  # past a recirculation: the megaflow sends every packet up, the bits read now are the inner ones
        if f == "nw_ttl" and self.ttl_changed and bits:
            bits = FULL[f]  # the packet's TTL went through a decrement: all of it matters
        self.wc[f] |= bits & ~self.set_bits[f]

    def set(self, f: str, value: int, mask: int) -> None:
        self.flow[f] = (self.flow[f] & ~mask) | (value & mask)
        self.set_bits[f] |= mask
        self.dirty.add(f)
        self.written.add(f)

    # --- the pipeline --------------------------------------------------------------------------------

    def run_table(self, tid: int, in_port: int | None = None) -> None:
        if self.depth >= MAX_RESUBMIT_DEPTH:
            self.error = f"went deeper than {MAX_RESUBMIT_DEPTH} resubmits"
            return
        while True:
            table = self.tables.tables[tid]
            if in_port is None and not self.written:
                rule = table.lookup(self.flow, self.wc)  # nothing changed yet: consulted bits go straight in
            else:
                look = self.flow if in_port is None else {**self.flow, "in_port": in_port}
                scratch: defaultdict[str, int] = defaultdict(int)  # only the fields consulted end up in it
                rule = table.lookup(look, scratch)
                for f, m in scratch.items():
                    if m and not (f == "in_port" and in_port is not None):
                        self.consult(f, m)
            if in_port is None and not self.written:
                written = PRISTINE
            else:
                w = frozenset(self.written | {"in_port"} if in_port is not None else self.written)
                written = _INTERNED.setdefault(w, w)
            self.lookups.append((tid, -1 if rule is None else rule.priority, written))
            step = TraceStep(self.depth, tid, rule)
            if self.tracing:
                self.steps.append(step)
            if rule is None:
                self.missed.append(table)
                if self.may_learn:
                    table.n_missed += 1
                if table.miss == "continue":
                    step.notes.append(f"table-miss: continue to table {tid + 1}")
                    tid += 1
                    in_port = None
                    continue
                if table.miss == "controller":
                    step.notes.append("table-miss: controller")
                    self.to_controller(of.Controller(-1), None, tid)
                else:
                    step.notes.append("table-miss: drop")
                return
            self.rules.append(rule)
            nxt = self.do_actions(rule.actions, step, tid, rule)
            if nxt is None:
                return
            tid, in_port = nxt, None

    def do_actions(self, actions: list[of.OfAction], step: TraceStep, tid: int, rule: Rule | None) -> int | None:
        """Run a rule's actions; returns the goto_table target, if any."""
        for a in actions:
            if self.error or self.halt:
                return None
            if self.tracing:
                step.notes.append(str(a))
            if isinstance(a, of.GotoTable):
                return a.table
            if isinstance(a, of.Resubmit):
                self.depth += 1
                self.run_table(tid if a.table is None else a.table, a.port)
                self.depth -= 1
            elif isinstance(a, of.TablePort):
                self.depth += 1
                self.run_table(0)
                self.depth -= 1
            elif isinstance(a, of.GroupAction):
                self.group(a.group_id, step, tid, rule)
            elif isinstance(a, of.MeterAction):
                m = self.tables.meters.get(a.meter_id)
                if m is not None:
                    self.commit()
                    self.actions.append(dpif.DpMeter(m.slot, m.meter_id))
                    self.meters.append(m)
            elif isinstance(a, of.Controller):
                note = self.to_controller(a, rule, tid)
                if note and self.tracing:
                    step.notes.append(f"    -> {note}")
            elif isinstance(a, of.DecTtl) and self.invalid_ttl(rule, tid):
                if self.tracing:
                    step.notes.append("    -> the TTL is 1 or 0: a PACKET_IN (invalid_ttl) to the controllers that "
                                      "ask for it, and the rest of the actions do not run (as OVS)")
                return None
            else:
                note = self.do_action(a)
                if note and self.tracing:
                    step.notes.append(f"    -> {note}")
        return None

    # --- groups ------------------------------------------------------------------------------------

    def group(self, gid: int, step: TraceStep, tid: int, rule: Rule | None) -> None:
        """A group action (OVS: xlate_group_action): all and indirect run every bucket, fast failover the first
        live one, select one per packet, picked by the datapath (DpSelect). Each bucket sees the packet as it
        was before the group: its changes do not carry over."""
        g = self.tables.groups.get(gid)
        note = step.notes.append if self.tracing else (lambda _n: None)
        if g is None:
            note(f"    -> no group {gid}: nothing")  # it was deleted under a ukey being revalidated
            return
        self.groups.append(g)
        if g.type == GROUP_TYPES["select"]:
            self.select(g, step, tid, rule)
            return
        buckets = g.buckets
        if g.type == GROUP_TYPES["ff"]:
            live = next((b for b in g.buckets if self.bucket_live(b)), None)
            buckets = [live] if live is not None else []
            note(f"    -> fast failover: bucket {g.buckets.index(live)} is the first live one" if live is not None
                 else "    -> fast failover: no live bucket, the packet is dropped")
        for b in buckets:
            self.groups.append(b)
            note(f"    -> bucket {g.buckets.index(b)}: {of.format_actions(b.actions)}")
            self.bucket(b, step, tid, rule)
            if self.error:
                return

    def bucket_live(self, b: Bucket, depth: int = 0) -> bool:
        """Fast failover: a bucket is live while the port it watches is up, or the group it watches has a live
        bucket (OVS's bucket_is_alive)."""
        if b.watch_port != OFPP_ANY:
            if self.ports is not None and b.watch_port not in self.ports:
                return False
            if self.live is not None and not self.live(b.watch_port):
                return False
        if b.watch_group != OFPG_ANY:
            g = self.tables.groups.get(b.watch_group)
            if g is None or depth > 32:
                return False
            return any(self.bucket_live(x, depth + 1) for x in g.buckets)
        return True

    def bucket(self, b: Bucket, step: TraceStep, tid: int, rule: Rule | None, alone: bool = False) -> None:
        """Run a bucket's actions on a copy of the packet (OVS's xlate_group_bucket): afterwards the working flow
        is what it was before, and the next output rewrites whatever the bucket's outputs left changed. alone:
        the datapath runs the bucket's actions on a copy of its own (DpSelect), so nothing is left changed."""
        self.commit()
        saved = (dict(self.flow), dict(self.set_bits), list(self.hidden_tags), self.vlan_tpid, self.ttl_changed)
        outer = self.committed
        self.committed = dict(self.flow)
        self.in_bucket += 1
        self.depth += 1
        mark = len(self.actions)
        self.do_actions(b.actions, step, tid, rule)
        self.depth -= 1
        self.in_bucket -= 1
        after = self.committed
        self.committed = outer
        flow, self.set_bits, self.hidden_tags, self.vlan_tpid, self.ttl_changed = saved
        self.flow = flow
        self.dirty = set()
        if alone:
            self.dp_tagged = bool(flow["vlan_tci"] & VLAN_CFI)
            return
        if any(isinstance(x, dpif.DpPushMpls | dpif.DpPopMpls) for x in self.actions[mark:]):
            self.error = "an MPLS push or pop in a group bucket: the packet cannot be put back for the next one"
            return
        for f in PACKET_FIELDS:
            if after[f] != flow[f]:
                # the datapath's packet still has the bucket's change: the next output rewrites it back (with the
                # packet's own value, so all of it goes into the megaflow then)
                self.set_bits[f] = FULL[f]
                self.dirty.add(f)
                self.restored.add(f)
        self.dp_tagged = bool(after["vlan_tci"] & VLAN_CFI)
        if self.in_bucket:
            self.committed = {**self.committed, **{f: after[f] for f in PACKET_FIELDS}}

    def select(self, g: Group, step: TraceStep, tid: int, rule: Rule | None) -> None:
        """A select group: every bucket with a weight is translated (the megaflow holds what any of them
        consults), and the datapath picks one per packet by select_hash()."""
        note = step.notes.append if self.tracing else (lambda _n: None)
        self.commit()
        buckets: list[tuple[int, int, tuple[dpif.Action, ...]]] = []
        for i, b in enumerate(g.buckets):
            if not b.weight:
                buckets.append((i, 0, ()))
                continue
            mark = len(self.actions)
            note(f"    -> bucket {i} (weight {b.weight}): {of.format_actions(b.actions)}")
            self.bucket(b, step, tid, rule, alone=True)
            acts = tuple(self.actions[mark:])
            del self.actions[mark:]
            buckets.append((i, b.weight, acts))
        if not any(w for _, w, _ in buckets):
            note("    -> no bucket has a weight: the packet is dropped")
            return
        self.actions.append(dpif.DpSelect(g.group_id, g.stats_base, tuple(buckets)))
        note("    -> the datapath picks one of these per packet, by a hash of its addresses and ports")

    def do_action(self, a: of.OfAction) -> str:
        fl = self.flow
        in_port = self.orig["in_port"]
        if isinstance(a, of.Output):
            if a.port == in_port:
                return "skipped: output to the input port is dropped (use in_port)"
            if self.ports is not None and a.port not in self.ports:
                return f"skipped: no port {a.port}"
            self.commit()
            self.actions.append(dpif.DpOutput(a.port))
        elif isinstance(a, of.InPort):
            self.commit()
            self.actions.append(dpif.DpOutput(in_port))
        elif isinstance(a, of.Flood):
            self.commit()
            self.actions.append(dpif.DpFlood())
        elif isinstance(a, of.Normal):
            return self.normal()
        elif isinstance(a, of.DecTtl):
            if fl["dl_type"] not in (ETH_P_IP, ETH_P_IPV6):
                return "skipped: not IP"
            self.commit()
            self.actions.append(dpif.DpDecTtl())
            self.flow["nw_ttl"] = (fl["nw_ttl"] - 1) & 0xFF
            self.written.add("nw_ttl")
            self.ttl_changed = True
            return "the datapath drops the packet if its TTL is 1 or 0 (it never gets here: see invalid_ttl)"
        elif isinstance(a, of.PushVlan):
            self.consult("vlan_tci", VLAN_CFI)
            note = ""
            if fl["vlan_tci"] & VLAN_CFI:
                # 802.1ad/QinQ: the tag there becomes the inner one, payload as far as the flow is concerned
                # (OVS's vlan-limit 1); the new outer tag starts at VID 0, PCP 0, as OVS's push_vlan
                self.consult("vlan_tci", 0xFFFF)
                self.commit()
                self.hidden_tags.append(fl["vlan_tci"])
                self.dp_tagged = False  # the datapath's outer tag is the inner one now: the next commit pushes
                note = "an outer tag (802.1ad): the tag that was there is now the inner one"
            self.vlan_tpid = a.tpid
            self.set("vlan_tci", VLAN_CFI, 0xFFFF)
            return note
        elif isinstance(a, of.StripVlan):
            self.consult("vlan_tci", VLAN_CFI)
            if not fl["vlan_tci"] & VLAN_CFI:
                return "skipped: no VLAN tag"
            if self.hidden_tags or fl["vlan_tci1"] & VLAN_CFI:
                # the inner tag becomes the packet's tag: one pushed here, or one parsed (vlan-limit 2), whose bits
                # all go into the megaflow (later lookups read them under vlan_tci's name)
                self.commit()
                self.actions.append(dpif.DpPopVlan())
                self.written.update(("vlan_tci", "vlan_tci1"))
                if self.hidden_tags:
                    fl["vlan_tci"] = self.hidden_tags.pop()
                else:
                    self.consult("vlan_tci1", 0xFFFF)
                    fl["vlan_tci"], fl["vlan_tci1"] = fl["vlan_tci1"], 0
                    self.set_bits["vlan_tci"] = 0xFFFF
                self.dp_tagged = True
                return "popped the outer tag: the inner one is the packet's tag now"
            self.set("vlan_tci", 0, 0xFFFF)
        elif isinstance(a, of.SetField):
            return self.set_field(a)
        elif isinstance(a, of.Move):
            return self.move(a)
        elif isinstance(a, of.WriteMetadata):
            self.set("metadata", a.value, a.mask)
        elif isinstance(a, of.PushMpls | of.PopMpls | of.SetMplsTtl | of.DecMplsTtl):
            return self.mpls(a)
        return ""

    def mpls(self, a: of.PushMpls | of.PopMpls | of.SetMplsTtl | of.DecMplsTtl) -> str:
        """MPLS as OVS's flow_push_mpls/flow_pop_mpls: the datapath actions run in user space."""
        fl = self.flow
        is_mpls = fl["dl_type"] in of.MPLS_TYPES
        if isinstance(a, of.PushMpls):
            if is_mpls:
                self.consult("mpls_lse", FULL["mpls_lse"])
                lse = fl["mpls_lse"] & ~0x100        # a copy of the top entry, no longer the bottom of the stack
            else:
                # as OVS's flow_push_mpls: explicit null (label 2 for IPv6), TC from the DSCP's low bits, the
                # IP TTL (64 when zero or not IP)
                label, tc, ttl = (2 if fl["dl_type"] == ETH_P_IPV6 else 0), 0, 64
                if fl["dl_type"] in (ETH_P_IP, ETH_P_IPV6):
                    self.consult("nw_tos", 0xFC)
                    self.consult("nw_ttl", 0xFF)
                    tc, ttl = (fl["nw_tos"] >> 2) & 7, fl["nw_ttl"] or 64
                lse = label << 12 | tc << 9 | 0x100 | ttl
            self.commit()
            self.actions.append(dpif.DpPushMpls(a.ethertype, lse))
            self.set("dl_type", a.ethertype, 0xFFFF)
            self.set("mpls_lse", lse, FULL["mpls_lse"])
            self.dirty.discard("mpls_lse")
            self.dirty.discard("dl_type")
            return ""
        if not is_mpls:
            return "skipped: not MPLS"
        if isinstance(a, of.SetMplsTtl):
            self.set("mpls_lse", a.ttl, 0xFF)
            return ""
        if isinstance(a, of.DecMplsTtl):
            self.consult("mpls_lse", 0xFF)
            ttl = fl["mpls_lse"] & 0xFF
            if ttl <= 1:
                self.halt = dpif.DropReason.TTL_EXPIRED
                return "the MPLS TTL ran out: dropped"
            self.set("mpls_lse", ttl - 1, 0xFF)
            return ""
        self.commit()
        self.actions.append(dpif.DpPopMpls(a.ethertype))
        return self.recirculate(a.ethertype)

    def recirculate(self, ethertype: int) -> str:
        """Read the packet again after a pop_mpls (OVS: recirculation): the fields past the label are only in the
        frame. Without a frame (a trace of a flow) they stay zero."""
        self.recirc = True
        self.written.add("*")
        frame = transform(self.packet, self.actions) if self.packet is not None else None
        if frame is None:
            for f in PACKET_FIELDS:
                if f not in ("in_port", "vlan_tci", "dl_src", "dl_dst"):
                    self.flow[f] = 0
            self.flow["dl_type"] = ethertype
            return "recirculated: the fields after the label are not known without a packet"
        new = flow_of(parse(frame, self.orig["in_port"]))
        for f in PACKET_FIELDS:
            if f != "in_port":
                self.flow[f] = new[f]
        self.dp_tagged = bool(self.flow["vlan_tci"] & VLAN_CFI)
        return "recirculated: the packet is parsed again past the popped label"

    def move(self, a: of.Move) -> str:
        """Copy bits between fields; the source bits are consulted (the result depends on them)."""
        src, dst = a.src, a.dst
        why = _unmet(dst.field, self.flow) or _unmet(src.field, self.flow)
        if why:
            self.consult("dl_type", FULL["dl_type"])
            return f"skipped: {why}"
        bits = (self.flow[src.field] >> src.ofs) & ((1 << src.n_bits) - 1)
        self.consult(src.field, src.mask & FULL[src.field])
        return self.set_field(of.SetField(dst.field, (bits << dst.ofs) & FULL[dst.field], dst.mask & FULL[dst.field],
                                          str(dst), hex(bits), load=True))

    def invalid_ttl(self, rule: Rule | None, tid: int) -> bool:
        """dec_ttl of a packet whose TTL is 1 or 0, as OVS's compose_dec_ttl: a PACKET_IN with reason invalid_ttl,
        then nothing more of this action list. The megaflow keeps the TTL's bits above the lowest, so it holds
        either only such packets or none of them (the datapath's own check never sees one)."""
        fl = self.flow
        if fl["dl_type"] not in (ETH_P_IP, ETH_P_IPV6):
            return False
        self.consult("nw_ttl", 0xFE)
        if fl["nw_ttl"] > 1:
            return False
        self.commit()
        pipeline = tuple((f, self.flow[f]) for f in PIPELINE_FIELDS if self.flow[f])
        cookie = rule.cookie if rule is not None else 0xFFFFFFFFFFFFFFFF
        self.actions.append(dpif.DpController(2, 0xFFFF, tid, cookie, pipeline))
        return True

    def to_controller(self, a: of.Controller, rule: Rule | None, tid: int) -> str:
        """A PACKET_IN of the packet as it is now: reason no_match for a table-miss (a miss with no rule,
        or OpenFlow 1.3's table-miss rule: priority 0, empty match), action otherwise."""
        self.commit()
        miss = rule is None or (rule.priority == 0 and not rule.match.fields)
        cookie = rule.cookie if rule is not None else 0xFFFFFFFFFFFFFFFF
        pipeline = tuple((f, self.flow[f]) for f in PIPELINE_FIELDS if self.flow[f])
        self.actions.append(dpif.DpController(0 if miss else 1, a.max_len, tid, cookie, pipeline))
        return "sent to the controller (a PACKET_IN; the megaflow takes the slow path)"

    def normal(self) -> str:
        """The L2 learning switch (OVS: xlate_normal): learn the source on the ingress port, then output to
        where the destination was learned, or flood when it is unknown, broadcast or multicast. The
        megaflow matches the MACs and the VLAN, so a new source or destination comes up to be learned."""
        fl = self.flow
        in_port = self.orig["in_port"]
        self.normal_used = True
        self.consult("dl_src", FULL["dl_src"])
        self.consult("dl_dst", FULL["dl_dst"])
        self.consult("vlan_tci", VLAN_CFI | 0x0FFF)
        vlan = vlan_of(fl["vlan_tci"])
        src, dst = fl["dl_src"], fl["dl_dst"]
        if is_multicast(src):
            return "dropped: the source MAC is multicast"
        note = ""
        if self.mac is not None and self.may_learn and 0 < in_port < 0xFF00 and self.mac.learn(vlan, src, in_port):
            self.learned = True
            note = f"learned {mac_str(src.to_bytes(6, 'big'))} on port {in_port} (vlan {vlan}); "
        port = None if is_multicast(dst) or self.mac is None else self.mac.lookup(vlan, dst)
        if port is None or (self.ports is not None and port not in self.ports):
            self.commit()
            self.actions.append(dpif.DpFlood())
            return note + ("flood: broadcast or multicast destination" if is_multicast(dst)
                           else "flood: unknown destination")
        if port == in_port:
            return note + "dropped: the destination was learned on the input port"
        self.commit()
        self.actions.append(dpif.DpOutput(port))
        return note + f"forwarded to port {port}, where the destination was learned"

    def set_field(self, a: of.SetField) -> str:
        fl = self.flow
        f = a.field
        dl_type = fl["dl_type"]
        if f in PIPELINE_FIELDS:
            self.set(f, a.value, a.mask)
            return ""
        if f == "mpls_lse":
            if dl_type not in of.MPLS_TYPES:
                return "skipped: not MPLS"
            self.set(f, a.value, a.mask)
            return ""
        if f == "vlan_tci":
            self.consult("vlan_tci", VLAN_CFI)
            if not fl["vlan_tci"] & VLAN_CFI:
                # OpenFlow 1.0's mod_vlan_vid/pcp on an untagged packet pushes a tag
                self.set("vlan_tci", VLAN_CFI | (a.value & a.mask), 0xFFFF)
                return "pushes a tag: the packet had none"
            self.set(f, a.value, a.mask)
            return ""
        arp = a.name.startswith("arp_") or (a.load and "ARP" in a.name)
        nd = f == "nd_target" or "nd_" in a.name or (a.load and "_ND_" in a.name)
        if nd:
            self.consult("nw_proto", 0xFF)
            self.consult("tp_src", 0xFF)
            self.consult("tp_dst", 0xFF)
            if dl_type != ETH_P_IPV6 or fl["nw_proto"] != IPPROTO_ICMPV6 or fl["tp_src"] not in (135, 136) \
                    or fl["tp_dst"]:
                return "skipped: not IPv6 neighbor discovery"
        elif arp or f in ("arp_sha", "arp_tha"):
            if dl_type != ETH_P_ARP:
                return "skipped: not ARP"
        elif f in ("nw_src", "nw_dst") and dl_type != ETH_P_IP:
            return "skipped: not IPv4"
        if f in ("ipv6_src", "ipv6_dst", "ipv6_label") and dl_type != ETH_P_IPV6:
            return "skipped: not IPv6"
        if f in ("nw_tos", "nw_ttl") and dl_type not in (ETH_P_IP, ETH_P_IPV6):
            return "skipped: not IP"
        if f == "nw_proto" and not arp:
            return "skipped: the IP protocol cannot be rewritten"
        if f in ("tp_src", "tp_dst"):
            if dl_type not in (ETH_P_IP, ETH_P_IPV6):
                return "skipped: not IP"
            self.consult("nw_proto", 0xFF)
            self.consult("nw_frag", 2)
            icmp = "icmp" in a.name
            want = (IPPROTO_ICMP, IPPROTO_ICMPV6) if icmp else (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP)
            if fl["nw_proto"] not in want or fl["nw_frag"] & 2:
                return "skipped: no ICMP header" if icmp else "skipped: no TCP, UDP or SCTP header"
        self.set(f, a.value, a.mask)
        return ""

    # --- datapath actions ------------------------------------------------------------------------------

    def commit(self) -> None:
        """Datapath set actions for the fields actions wrote since the last commit (OVS:
        commit_odp_actions). A written field is rewritten even when the value happens to be the packet's
        own, so the actions never depend on the packet's value of a field they set."""
        fl, out, dirty = self.flow, self.actions, self.dirty
        if not dirty:
            return
        if self.restored:
            for f in self.restored & dirty:
                self.wc[f] |= FULL[f]
            self.restored.clear()
        for f, act in (("dl_src", dpif.DpSetEthSrc), ("dl_dst", dpif.DpSetEthDst)):
            if f in dirty:
                out.append(act(mac_str(fl[f].to_bytes(6, "big"))))
        if "vlan_tci" in dirty:
            tci, was_tagged = fl["vlan_tci"], self.dp_tagged
            if not tci & VLAN_CFI:
                if was_tagged:
                    out.append(dpif.DpPopVlan())
            else:
                self.consult("vlan_tci", 0xE000)  # SetVlan/PushVlan write the PCP too
                out.append(dpif.DpSetVlan(tci & 0x0FFF, tci >> 13) if was_tagged
                           else dpif.DpPushVlan(tci & 0x0FFF, tci >> 13, self.vlan_tpid))
        for f in dirty:
            if f in _WHOLE_FIELD_SETS:  # the datapath writes the whole field: bits not set came from the packet
                self.consult(f, FULL[f])
        arp = fl["dl_type"] == 0x0806
        for f, act4 in (("nw_src", dpif.DpSetIpv4Src), ("nw_dst", dpif.DpSetIpv4Dst)):
            if f in dirty and arp:
                out.append(dpif.DpSetField("arp_spa" if f == "nw_src" else "arp_tpa", fl[f]))
            elif f in dirty:
                out.append(act4(str(ipaddress.IPv4Address(fl[f]))))
        v6 = fl["dl_type"] == ETH_P_IPV6
        for f, name in (("nw_proto", "arp_op"), ("arp_sha", "nd_sll" if v6 else "arp_sha"),
                        ("arp_tha", "nd_tll" if v6 else "arp_tha"), ("nd_target", "nd_target"),
                        ("ipv6_label", "ipv6_label"), ("nw_ttl", "nw_ttl")):
            if f in dirty:
                out.append(dpif.DpSetField(name, fl[f]))
        for f, act6 in (("ipv6_src", dpif.DpSetIpv6Src), ("ipv6_dst", dpif.DpSetIpv6Dst)):
            if f in dirty:
                out.append(act6(str(ipaddress.IPv6Address(fl[f]))))
        if "nw_tos" in dirty:
            if self.set_bits["nw_tos"] & 0xFC:
                out.append(dpif.DpSetDscp(fl["nw_tos"] >> 2))
            if self.set_bits["nw_tos"] & 0x03:
                out.append(dpif.DpSetField("ecn", fl["nw_tos"] & 3))
        proto = fl["nw_proto"]
        for i, f in enumerate(("tp_src", "tp_dst")):
            if f not in dirty:
                continue
            if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
                out.append(dpif.DpSetField(("icmp_type", "icmp_code")[i], fl[f] & 0xFF))
            elif proto == IPPROTO_SCTP:
                out.append(dpif.DpSetField(("sctp_src", "sctp_dst")[i], fl[f]))
            elif i == 0:
                out.append(dpif.DpSetTpSrc(fl[f]))
            else:
                out.append(dpif.DpSetTpDst(fl[f]))
        if "mpls_lse" in dirty:
            out.append(dpif.DpSetMpls(fl["mpls_lse"]))
        self.dp_tagged = bool(fl["vlan_tci"] & VLAN_CFI)
        dirty.clear()
        if self.in_bucket:
            self.committed = dict(fl)

    def finish(self) -> Translation:
        acts = self.actions
        emitting = (dpif.DpOutput, dpif.DpFlood, dpif.DpController, dpif.DpSelect)
        outputs = [a for a in acts if isinstance(a, emitting)]
        if self.error:
            acts = [dpif.DpDrop(dpif.DropReason.UNSUPPORTED)]
        elif self.halt and not outputs:
            acts = [dpif.DpDrop(self.halt)]
        elif not outputs:
            acts = [dpif.DpDrop(0)]
        else:
            if any(isinstance(a, dpif.DpFlood) for a in outputs):
                # flood reaches every port but the ingress: explicit outputs to other ports add nothing
                # when no change was made between them
                first = acts.index(next(a for a in acts if isinstance(a, dpif.DpOutput | dpif.DpFlood)))
                tail = acts[first:]
                if all(isinstance(a, dpif.DpFlood) or (isinstance(a, dpif.DpOutput) and a.port != self.orig["in_port"])
                       for a in tail):
                    acts = acts[:first] + [dpif.DpFlood()]
            # anything after the last output changes nothing that leaves
            last = max(i for i, a in enumerate(acts) if isinstance(a, emitting))
            acts = acts[: last + 1]
        if self.orig["nw_proto"] in (IPPROTO_ICMP, IPPROTO_ICMPV6) and self.orig["dl_type"] in (ETH_P_IP, ETH_P_IPV6):
            # ICMP type and code are 8 bits: the high bytes of tp_src/tp_dst are always zero (OVS does this too)
            self.wc["tp_src"] &= 0xFF
            self.wc["tp_dst"] &= 0xFF
        if self.orig["dl_type"] not in (ETH_P_IP, ETH_P_IPV6) or (
                self.wc["nw_proto"] == 0xFF and self.orig["nw_proto"] != IPPROTO_TCP):
            # tcp_flags is zero in every packet that is not TCP: matching it adds nothing (as OVS)
            self.wc["tcp_flags"] = 0
        self.wc.update(_PIPELINE_ZERO)  # zero in every packet at table 0: never part of a megaflow
        slow = dpif.fast_path_error(acts)
        if self.recirc:
            slow = "pop_mpls: the fast path does not parse past MPLS, so each packet is translated again after the pop"
        return Translation(self.orig, self.flow, self.wc, acts, self.rules, self.steps, slow, self.normal_used,
                           self.learned, self.missed, self.error, self.recirc,
                           [*self.rules, *self.groups] if self.groups else list[Credited](self.rules),
                           tuple(self.lookups))


# fields whose datapath set action writes every bit (the value comes from the working flow)
_WHOLE_FIELD_SETS = ("dl_src", "dl_dst", "nw_src", "nw_dst", "ipv6_src", "ipv6_dst", "tp_src", "tp_dst", "mpls_lse",
                     "nw_proto", "arp_sha", "arp_tha", "ipv6_label", "nw_ttl", "nd_target")
_FIELD_NEEDS = {"nw_src": (ETH_P_IP, 0x0806), "nw_dst": (ETH_P_IP, 0x0806), "ipv6_src": (ETH_P_IPV6,),
                "ipv6_dst": (ETH_P_IPV6,), "nw_tos": (ETH_P_IP, ETH_P_IPV6), "nw_ttl": (ETH_P_IP, ETH_P_IPV6),
                "nw_proto": (ETH_P_IP, ETH_P_IPV6, 0x0806), "tp_src": (ETH_P_IP, ETH_P_IPV6),
                "tp_dst": (ETH_P_IP, ETH_P_IPV6), "arp_sha": (0x0806,), "arp_tha": (0x0806,)}


def _unmet(f: str, flow: Flow) -> str:
    """Why a packet does not have field f (its dl_type is not one the field lives in), or ""."""
    need = _FIELD_NEEDS.get(f)
    if need and flow["dl_type"] not in need:
        return f"the packet has no {f} (dl_type {flow['dl_type']:#06x})"
    return ""


def translate(tables: OpenFlowTables, flow: Flow, ports: Collection[int] | None = None,
              trace: bool = True, *, mac: MacLearning | None = None, may_learn: bool = False,
              fail_open: bool = False, packet: bytes | None = None,
              live: Callable[[int], bool] | None = None) -> Translation:
    """Run flow through the pipeline from table 0. ports: the switch's port numbers (outputs elsewhere
    are skipped); None skips that check. trace=False leaves the per-table steps out (the handlers' way).
    mac: the table NORMAL uses; may_learn: NORMAL may add to it (a real packet, not a revalidation or a
    trace). fail_open: no controller is connected in fail-mode standalone, so every packet takes NORMAL
    whatever the tables say (OVS's fail-open flow). packet: the frame, for a recirculation to parse again.
    live: whether a port is up (a fast-failover group's watch_port); None: every port of ports is."""
    ctx = _Ctx(tables, flow, ports, trace, mac, may_learn, packet)
    ctx.live = live
    if fail_open:
        step = TraceStep(0, 0, None, ["fail-open: no controller is connected, so NORMAL handles every packet"])
        ctx.steps.append(step)
        note = ctx.normal()
        if trace:
            step.notes.append(f"    -> {note}")
    else:
        ctx.run_table(0)
    return ctx.finish()


def translate_actions(tables: OpenFlowTables, flow: Flow, actions: list[of.OfAction],
                      ports: Collection[int] | None = None, *, mac: MacLearning | None = None,
                      packet: bytes | None = None, live: Callable[[int], bool] | None = None) -> Translation:
    """A PACKET_OUT's actions on its packet (output:TABLE runs the pipeline from table 0)."""
    ctx = _Ctx(tables, flow, ports, True, mac, True, packet)
    ctx.live = live
    step = TraceStep(0, 0, None, ["packet-out"])
    ctx.steps.append(step)
    ctx.do_actions(actions, step, 0, None)
    return ctx.finish()
