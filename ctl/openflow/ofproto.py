"""What OpenFlow 1.3 messages do to the switch (OVS: ofproto/ofproto.c's handle_* functions).

``OfProto.handle(conn, msg)`` takes one decoded message (``ctl/openflow/codec/``) from a connection
(``ctl/openflow/connmgr.py``) and returns the replies to send on it. Everything it changes goes through the
``SwitchOps`` it is given: the daemon's switch, or a stand-in in the unit tier. Refusals raise
``OfError``; the connection turns them into OFPT_ERROR and lives on. A refused flow-mod changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ctl.openflow import codec as oc
from ctl.openflow.codec import ET, MP, OfError, T
from ctl.pipeline import ofactions as of
from ctl.pipeline.groups import MAX_GROUPS, OFPG_ALL, Group, GroupModError
from ctl.pipeline.meters import MAX_BANDS, MAX_METERS, OFPM_ALL, Meter, MeterModError
from ctl.pipeline.openflow_tables import (
    CHECK_OVERLAP,
    SEND_FLOW_REM,
    FlowSpec,
    OpenFlowTables,
    Rule,
    UnknownGroup,
    UnknownMeter,
)

# flow-removed reasons
RR_IDLE_TIMEOUT, RR_HARD_TIMEOUT, RR_DELETE, RR_GROUP_DELETE = 0, 1, 2, 3
# why a rule went, as the Udpif's on_removed says it (timeouts, and deletes from the control socket)
REMOVED_REASONS = {"idle_timeout": RR_IDLE_TIMEOUT, "hard_timeout": RR_HARD_TIMEOUT, "delete": RR_DELETE,
                   "group_delete": RR_GROUP_DELETE}
ROLE_NOCHANGE, ROLE_EQUAL, ROLE_MASTER, ROLE_SLAVE = 0, 1, 2, 3
CAPABILITIES = 1 | 2 | 4 | 8  # OFPC_FLOW_STATS | OFPC_TABLE_STATS | OFPC_PORT_STATS | OFPC_GROUP_STATS
MAX_RULES = 1_000_000
SOFTWARE = "xdpswitch 0.5"
# messages a slave may not send (OpenFlow 1.3, 6.3.5)
WRITES = {T.FLOW_MOD, T.PACKET_OUT, T.GROUP_MOD, T.PORT_MOD, T.TABLE_MOD, T.METER_MOD}


class SwitchOps(Protocol):
    """What the OpenFlow channel needs of the switch (ctl.daemon.switch.Switch; a stand-in in the unit tier)."""

    name: str
    datapath_id: int

    def change_tables(self, fn: Callable[[OpenFlowTables], Any]) -> Any: ...
    def read_tables(self, fn: Callable[[OpenFlowTables], Any]) -> Any: ...
    def port_descs(self) -> list[oc.PortDesc]: ...
    def port_counters(self) -> list[oc.PortCounters]: ...
    def packet_out(self, in_port: int, actions: list[of.OfAction], data: bytes) -> None: ...
    def bucket_stats(self, group: Group) -> list[tuple[int, int]]: ...
    def meter_stats(self, meter: Meter) -> list[tuple[int, int]]: ...
    def port_numbers(self) -> set[int]: ...


@dataclass
class ConnState:
    """What OpenFlow keeps per connection: role, async filters, switch config."""

    role: int = ROLE_EQUAL
    miss_send_len: int = 128
    config_flags: int = 0
    # (master/equal, slave) bitmaps by reason, OpenFlow 1.3's defaults (table 4.2 of the spec)
    packet_in: tuple[int, int] = (0b011, 0)
    port_status: tuple[int, int] = (0b111, 0b111)
    flow_removed: tuple[int, int] = (0b1111, 0)

    def wants(self, kind: str, reason: int) -> bool:
        masks: tuple[int, int] = getattr(self, kind)
        return bool(masks[1 if self.role == ROLE_SLAVE else 0] >> reason & 1)


@dataclass
class OfProtoStats:
    flow_mods: int = 0
    packet_outs: int = 0
    group_mods: int = 0
    meter_mods: int = 0


class OfProto:
    def __init__(self, switch: SwitchOps, send_async: Callable[[str, int, bytes], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        """send_async(kind, reason, message): to every connection whose async config wants it. clock: the
        tables' clock (rule durations)."""
        self.sw = switch
        self.clock = clock
        self.send_async = send_async
        self.generation_id: int | None = None
        self.stats = OfProtoStats()
        self.conns: list[ConnState] = []   # every connection's state, for role changes

    # --- dispatch ---------------------------------------------------------------------------------

    def handle(self, conn: ConnState, msg: oc.Msg) -> list[bytes]:
        t = msg.type
        if conn.role == ROLE_SLAVE and t in WRITES:
            raise OfError(ET.BAD_REQUEST, oc.BRC_IS_SLAVE, f"{T(t).name} from a slave controller")
        if t == T.ECHO_REQUEST:
            assert isinstance(msg, oc.Echo)
            return [oc.echo_reply(msg.xid, msg.data)]
        if t in (T.ECHO_REPLY, T.ERROR):
            return []
        if t == T.FEATURES_REQUEST:
            return [oc.features_reply(msg.xid, self.sw.datapath_id, of.N_TABLES, CAPABILITIES)]
        if t == T.GET_CONFIG_REQUEST:
            return [oc.get_config_reply(msg.xid, conn.config_flags, conn.miss_send_len)]
        if t == T.SET_CONFIG:
            assert isinstance(msg, oc.SetConfig)
            conn.config_flags, conn.miss_send_len = msg.flags & 3, msg.miss_send_len
            return []
        if t == T.BARRIER_REQUEST:
            return [oc.barrier_reply(msg.xid)]  # every earlier message is done: they run in order
        if t == T.ROLE_REQUEST:
            assert isinstance(msg, oc.RoleRequest)
            return [self._role(conn, msg)]
        if t == T.GET_ASYNC_REQUEST:
            return [oc.get_async_reply(msg.xid, conn.packet_in, conn.port_status, conn.flow_removed)]
        if t == T.SET_ASYNC:
            assert isinstance(msg, oc.SetAsync)
            conn.packet_in, conn.port_status, conn.flow_removed = msg.packet_in, msg.port_status, msg.flow_removed
            return []
        if t == T.FLOW_MOD:
            assert isinstance(msg, oc.FlowMod)
            self.flow_mod(msg)
            return []
        if t == T.PACKET_OUT:
            assert isinstance(msg, oc.PacketOut)
            self.packet_out(msg)
            return []
        if t == T.MULTIPART_REQUEST:
            assert isinstance(msg, oc.MultipartRequest)
            return self.multipart(msg)
        if t == T.GROUP_MOD:
            assert isinstance(msg, oc.GroupMod)
            self.group_mod(msg)
            return []
        if t == T.METER_MOD:
            assert isinstance(msg, oc.MeterMod)
            self.meter_mod(msg)
            return []
        raise OfError(ET.BAD_REQUEST, oc.BRC_BAD_TYPE, f"message type {t}")

    # --- roles -------------------------------------------------------------------------------------

    def _role(self, conn: ConnState, msg: oc.RoleRequest) -> bytes:
        if msg.role > ROLE_SLAVE:
            raise OfError(ET.ROLE_REQUEST_FAILED, oc.RRFC_BAD_ROLE, f"role {msg.role}")
        if msg.role in (ROLE_MASTER, ROLE_SLAVE):
            gen = msg.generation_id
            if self.generation_id is not None and _signed(gen - self.generation_id) < 0:
                raise OfError(ET.ROLE_REQUEST_FAILED, oc.RRFC_STALE, f"generation_id {gen} is stale")
            self.generation_id = gen
        if msg.role == ROLE_MASTER:
            for c in self.conns:
                if c is not conn and c.role == ROLE_MASTER:
                    c.role = ROLE_SLAVE
        if msg.role != ROLE_NOCHANGE:
            conn.role = msg.role
        gen_out = self.generation_id if self.generation_id is not None else 0
        return oc.role_reply(msg.xid, conn.role, gen_out)

    # --- flow-mods ---------------------------------------------------------------------------------

    def flow_mod(self, fm: oc.FlowMod) -> list[Rule]:
        """Apply a flow-mod; OfError (and no change) when OpenFlow says it must fail."""
        self.stats.flow_mods += 1
        cmd = fm.command  # the codec refused unknown commands and flags
        deleting = cmd in (3, 4)
        if fm.table_id == oc.OFPTT_ALL and not deleting:
            raise OfError(ET.FLOW_MOD_FAILED, oc.FMFC_BAD_TABLE_ID, "table OFPTT_ALL is for deletes only")
        if fm.table_id >= of.N_TABLES and fm.table_id != oc.OFPTT_ALL:
            raise OfError(ET.FLOW_MOD_FAILED, oc.FMFC_BAD_TABLE_ID, f"table {fm.table_id}")
        table = None if fm.table_id == oc.OFPTT_ALL else fm.table_id
        for a in fm.actions:
            if isinstance(a, of.GotoTable) and a.table <= (table or 0):
                raise OfError(ET.BAD_INSTRUCTION, oc.BIC_BAD_TABLE_ID,
                              f"goto_table:{a.table} from table {table}: it must go to a later table")
            if isinstance(a, of.TablePort):
                raise OfError(ET.BAD_ACTION, oc.BAC_BAD_OUT_PORT, "output:TABLE is for packet-outs only")
        if not deleting and fm.buffer_id != oc.OFP_NO_BUFFER:
            raise OfError(ET.BAD_REQUEST, oc.BRC_BUFFER_UNKNOWN, "this switch buffers no packets")
        spec = FlowSpec(fm.match, list(fm.actions), table=table, priority=fm.priority, cookie=fm.cookie,
                        cookie_mask=fm.cookie_mask if cmd != 0 else 0, idle_timeout=fm.idle_timeout,
                        hard_timeout=fm.hard_timeout, has_priority=True, has_actions=not deleting, flags=fm.flags)
        if cmd == 0:
            def add(t: OpenFlowTables) -> list[Rule]:
                if fm.flags & CHECK_OVERLAP and t.overlaps(spec):
                    raise OfError(ET.FLOW_MOD_FAILED, oc.FMFC_OVERLAP, "overlaps a rule of the same priority")
                if len(t) >= MAX_RULES and t.tables[spec.table or 0].find_exact(spec.match, spec.priority) is None:
                    raise OfError(ET.FLOW_MOD_FAILED, oc.FMFC_TABLE_FULL, f"{MAX_RULES} rules already")
                return [t.add(spec)]
            return list(self.sw.change_tables(_bad_group_as_error(add)))
        if cmd in (1, 2):
            return list(self.sw.change_tables(_bad_group_as_error(lambda t: t.modify(spec, strict=cmd == 2))))
        out = self._out_filter(fm.out_port)
        group = None if fm.out_group == oc.OFPG_ANY else fm.out_group
        gone: list[Rule] = list(self.sw.change_tables(
            lambda t: t.delete(spec, strict=cmd == 4, out_port=out, out_group=group)))
        for r in gone:
            self.flow_removed(r, RR_DELETE)
        return gone

    def group_mod(self, gm: oc.GroupMod) -> None:
        """Add, modify or delete groups; OfError (and no change) as OVS answers. Deleting a group deletes the
        flows that go to it (FLOW_REMOVED, reason group_delete, to those that asked)."""
        self.stats.group_mods += 1
        spec = gm.spec
        assert spec is not None

        def change(t: OpenFlowTables) -> list[Rule]:
            try:
                if gm.command == 0:
                    t.add_group(spec)
                elif gm.command == 1:
                    t.modify_group(spec)
                else:
                    return t.delete_groups(spec.group_id)[1]
            except GroupModError as e:
                raise OfError(ET.GROUP_MOD_FAILED, e.code, str(e)) from None
            except UnknownGroup as e:
                raise OfError(ET.BAD_ACTION, oc.BAC_BAD_OUT_GROUP, str(e)) from None
            return []
        for r in self.sw.change_tables(change):
            self.flow_removed(r, RR_GROUP_DELETE)

    def meter_mod(self, mm: oc.MeterMod) -> None:
        """Add, modify or delete meters; OfError (and no change) as OVS answers. Deleting a meter deletes the flows
        that use it (FLOW_REMOVED, reason delete, to those that asked)."""
        self.stats.meter_mods += 1
        spec = mm.spec
        assert spec is not None

        def change(t: OpenFlowTables) -> list[Rule]:
            try:
                if mm.command == 0:
                    t.add_meter(spec)
                elif mm.command == 1:
                    t.modify_meter(spec)
                else:
                    return t.delete_meters(spec.meter_id)[1]
            except MeterModError as e:
                raise OfError(ET.METER_MOD_FAILED, e.code, str(e)) from None
            return []
        for r in self.sw.change_tables(change):
            self.flow_removed(r, RR_DELETE)

    @staticmethod
    def _out_filter(port: int) -> of.OfAction | None:
        """The out_port filter as the action a rule must hold (OFPP_ANY: no filter)."""
        if port == oc.OFPP_ANY:
            return None
        try:
            return oc.port_action(port)
        except OfError:
            return of.Output(port)  # not a port a rule can output to: the filter picks nothing

    def flow_removed(self, r: Rule, reason: int) -> None:
        """FLOW_REMOVED for a rule that asked for it (send_flow_rem), to the connections that want it."""
        if not r.flags & SEND_FLOW_REM:
            return
        msg = oc.flow_removed(r.cookie, r.priority, reason, r.table, self.clock() - r.created, r.idle_timeout,
                              r.hard_timeout, r.n_packets, r.n_bytes, r.match)
        self.send_async("flow_removed", reason, msg)

    # --- packet-outs ----------------------------------------------------------------------------------

    def packet_out(self, po: oc.PacketOut) -> None:
        self.stats.packet_outs += 1
        if po.buffer_id != oc.OFP_NO_BUFFER:
            raise OfError(ET.BAD_REQUEST, oc.BRC_BUFFER_UNKNOWN, "this switch buffers no packets")
        if po.in_port != oc.OFPP_CONTROLLER and po.in_port not in self.sw.port_numbers():
            raise OfError(ET.BAD_REQUEST, oc.BRC_BAD_PORT, f"in_port {po.in_port:#x} is not a port of this switch")
        if len(po.data) < 14:
            raise OfError(ET.BAD_REQUEST, oc.BRC_BAD_PACKET, f"a {len(po.data)}-byte packet has no Ethernet header")
        for a in po.actions:
            if isinstance(a, of.GotoTable | of.Resubmit):
                raise OfError(ET.BAD_ACTION, oc.BAC_BAD_TYPE, f"{a} in a packet-out")
        self.sw.packet_out(po.in_port, po.actions, po.data)

    # --- multipart ------------------------------------------------------------------------------------

    def multipart(self, req: oc.MultipartRequest) -> list[bytes]:
        x = req.xid
        if req.mtype == MP.DESC:
            return oc.desc_reply(x, "xdpswitch", "XDP fast path (bcc) with an AF_XDP slow path", SOFTWARE, "None",
                                 f"xdpswitch {self.sw.name}")
        if req.mtype in (MP.FLOW, MP.AGGREGATE):
            assert req.flow is not None
            rules = self._select(req.flow)
            now = self.clock()
            if req.mtype == MP.AGGREGATE:
                return oc.aggregate_reply(x, sum(r.n_packets for r in rules), sum(r.n_bytes for r in rules),
                                          len(rules))
            return oc.flow_stats_reply(x, [oc.FlowStat(r.table, now - r.created, r.priority, r.idle_timeout,
                                                       r.hard_timeout, r.flags, r.cookie, r.n_packets, r.n_bytes,
                                                       r.match, r.actions) for r in rules])
        if req.mtype == MP.TABLE:
            def tables(t: OpenFlowTables) -> list[tuple[int, int, int, int]]:
                out = []
                for tb in t.tables:
                    rules = list(tb.rules())
                    matched = sum(r.n_packets for r in rules)
                    out.append((tb.id, len(rules), matched + tb.n_missed, matched))
                return out
            return oc.table_stats_reply(x, self.sw.read_tables(tables))
        if req.mtype == MP.PORT_STATS:
            ports = self.sw.port_counters()
            if req.port_no != oc.OFPP_ANY:
                ports = [p for p in ports if p.port_no == req.port_no]
                if not ports:
                    raise OfError(ET.BAD_REQUEST, oc.BRC_BAD_PORT, f"no port {req.port_no}")
            return oc.port_stats_reply(x, ports)
        if req.mtype == MP.PORT_DESC:
            return oc.port_desc_reply(x, self.sw.port_descs())
        if req.mtype == MP.GROUP_DESC:
            return oc.group_desc_reply(x, self.sw.read_tables(lambda t: list(t.groups)))
        if req.mtype == MP.GROUP:
            def stats(t: OpenFlowTables) -> list[oc.GroupStat]:
                now = t.clock()
                gs = list(t.groups) if req.group_id == OFPG_ALL else [g for g in [t.groups.get(req.group_id)] if g]
                return [oc.GroupStat(g.group_id, t.group_refs(g.group_id), g.n_packets, g.n_bytes, now - g.created,
                                     self.sw.bucket_stats(g)) for g in gs]
            return oc.group_stats_reply(x, self.sw.read_tables(stats))
        if req.mtype == MP.GROUP_FEATURES:
            return oc.group_features_reply(x, MAX_GROUPS)
        if req.mtype in (MP.METER, MP.METER_CONFIG):
            def meters(t: OpenFlowTables) -> list[bytes]:
                ms = list(t.meters) if req.group_id == OFPM_ALL else [m for m in [t.meters.get(req.group_id)] if m]
                if req.mtype == MP.METER_CONFIG:
                    return oc.meter_config_reply(x, ms)
                now = t.clock()
                return oc.meter_stats_reply(x, [oc.MeterStat(m.meter_id, t.meter_refs(m.meter_id),
                                                             self.sw.meter_stats(m), now - m.created) for m in ms])
            return list(self.sw.read_tables(meters))
        if req.mtype == MP.METER_FEATURES:
            return oc.meter_features_reply(x, MAX_METERS, MAX_BANDS)
        if req.mtype == MP.TABLE_FEATURES:
            if req.table_features:
                raise OfError(ET.TABLE_FEATURES_FAILED, 5, "table features cannot be changed")
            return oc.table_features_reply(x, of.N_TABLES, MAX_RULES)
        raise OfError(ET.BAD_REQUEST, oc.BRC_BAD_MULTIPART, f"multipart type {req.mtype}")

    def _select(self, f: oc.FlowStatsReq) -> list[Rule]:
        if f.table_id != oc.OFPTT_ALL and f.table_id >= of.N_TABLES:
            raise OfError(ET.BAD_REQUEST, oc.BRC_BAD_TABLE_ID, f"table {f.table_id}")
        group = None if f.out_group == oc.OFPG_ANY else f.out_group
        spec = FlowSpec(f.match, table=None if f.table_id == oc.OFPTT_ALL else f.table_id, cookie=f.cookie,
                        cookie_mask=f.cookie_mask)
        out = self._out_filter(f.out_port)
        return list(self.sw.read_tables(lambda t: t.select(spec, False, out, out_group=group)))


def _bad_group_as_error(fn: Callable[[OpenFlowTables], list[Rule]]) -> Callable[[OpenFlowTables], list[Rule]]:
    """A flow-mod whose group action names no group: BAD_ACTION, BAD_OUT_GROUP; whose meter instruction names no
    meter: METER_MOD_FAILED, INVALID_METER (as OVS)."""
    def run(t: OpenFlowTables) -> list[Rule]:
        try:
            return fn(t)
        except UnknownGroup as e:
            raise OfError(ET.BAD_ACTION, oc.BAC_BAD_OUT_GROUP, str(e)) from None
        except UnknownMeter as e:
            raise OfError(ET.METER_MOD_FAILED, oc.MMFC_INVALID_METER, str(e)) from None
    return run


def _signed(v: int) -> int:
    """A 64-bit difference as signed (generation ids wrap)."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v
