"""OpenFlow 1.3 meters: the meter table, meter-mods, and their ovs-ofctl text.

A meter measures the packets of the flows whose instructions name it and applies the band whose rate they exceed
(the exceeded band with the highest rate): ``drop``, or ``dscp_remark`` (raise an AF DSCP's drop precedence by
``prec_level``). Rates are in kbps or packets/s; each band is a token bucket of ``burst_size`` (kbits or packets;
without the BURST flag, 100 ms of the rate, at least 32 kbits or 2 packets).

The fast path enforces them (``xdp/actions.h``: one token bucket per band shared by every CPU, refilled with
atomic operations), so a meter is exact to a packet or two per CPU. The table lives in ``OpenFlowTables.meters``
with the same owner and lock as the rules; each meter has a slot in the fast path's ``dp_meters`` map, and
``dirty_slots`` lists the slots whose configuration the owner must (re)write there. Errors are ``MeterModError``
with OpenFlow's meter-mod-failed code, the one OVS gives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ctl.pipeline.ofmatch import FlowSyntaxError, parse_int

KBPS, PKTPS, BURST, STATS = 1, 2, 4, 8
FLAG_NAMES = {"kbps": KBPS, "pktps": PKTPS, "burst": BURST, "stats": STATS}
DROP, DSCP_REMARK = 1, 2
BAND_NAMES = {"drop": DROP, "dscp_remark": DSCP_REMARK}
MAX_METER = 0xFFFF0000        # OFPM_MAX
OFPM_ALL = 0xFFFFFFFF
OFPM_CONTROLLER = 0xFFFFFFFE  # the meter of every packet-in (OVS's controller meter): user space only, no slot
MAX_METERS = 1024             # DP_MAX_METERS
MAX_BANDS = 4                 # DP_METER_MAX_BANDS

# OpenFlow 1.3's ofp_meter_mod_failed_code
UNKNOWN, METER_EXISTS, INVALID_METER, UNKNOWN_METER, BAD_COMMAND, BAD_FLAGS, BAD_RATE, BAD_BURST = range(8)
BAD_BAND, BAD_BAND_VALUE, OUT_OF_METERS, OUT_OF_BANDS = 8, 9, 10, 11


class MeterModError(ValueError):
    """A meter-mod that must fail: code is OpenFlow's OFPMMFC_*; nothing changed."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code


@dataclass(eq=False)
class Band:
    type: int
    rate: int                   # kbps or packets/s, as the meter's flags say
    burst: int = 0              # kbits or packets; 0: the default (see default_burst)
    prec_level: int = 0         # dscp_remark: how much to raise the drop precedence

    def to_text(self) -> str:
        parts = [f"type={'drop' if self.type == DROP else 'dscp_remark'}", f"rate={self.rate}"]
        if self.burst:
            parts.append(f"burst_size={self.burst}")
        if self.type == DSCP_REMARK:
            parts.append(f"prec_level={self.prec_level}")
        return " ".join(parts)


@dataclass(eq=False)
class Meter:
    meter_id: int
    flags: int
    bands: list[Band]
    created: float = 0.0
    slot: int = -1              # its entry in the fast path's dp_meters

    @property
    def pktps(self) -> bool:
        return bool(self.flags & PKTPS)

    def to_text(self) -> str:
        """As add-meter takes it and dump-meters prints it."""
        flags = [n for n, b in FLAG_NAMES.items() if self.flags & b]
        mid = "controller" if self.meter_id == OFPM_CONTROLLER else self.meter_id
        return f"meter={mid},{','.join(flags)}{',' if flags else ''}bands=" + ",".join(
            b.to_text().replace(" ", ",") for b in self.bands)

    def default_burst(self, band: Band) -> int:
        """The bucket size a band gets: its burst_size with the BURST flag, else 100 ms of its rate (a sender that
        paces in 10 ms batches, as os-ken's tester does, loses nothing to a gap a little longer than the last)."""
        if self.flags & BURST and band.burst:
            return band.burst
        return max(band.rate // 10, 2 if self.pktps else 32)


    def buckets(self) -> list[tuple[int, int, int, int]]:
        """Each band as the fast path keeps it: (type, rate, bucket size in tokens, prec_level). A token is what one
        nanosecond at rate 1 adds: a kbps meter's packet costs its bits * 1e6 tokens, a pktps meter's 1e9."""
        unit = 10**9  # tokens per packet, or per kbit (1000 bits * 1e6)
        return [(b.type, b.rate, self.default_burst(b) * unit, b.prec_level) for b in self.bands]


@dataclass
class MeterSpec:
    meter_id: int
    flags: int = KBPS
    bands: list[Band] = field(default_factory=list)


def parse_meter(text: str, *, bands: bool = True) -> MeterSpec:
    """add-meter text: ``meter=N,[kbps|pktps],[burst],[stats],bands=type=drop,rate=R[,burst_size=B]`` (several
    bands: each starts again at ``type=``); with bands=False (del-meters, dump-meters), ``meter=N`` or nothing."""
    text = text.strip()
    head, sep, rest = text.partition("bands=")
    spec = MeterSpec(OFPM_ALL if not bands else -1, 0)
    pos = 0
    for item in head.split(","):
        at = text.find(item, pos)
        pos = at + len(item)
        k, _, v = item.strip().partition("=")
        if not k:
            continue
        try:
            if k == "meter":
                spec.meter_id = {"all": OFPM_ALL, "controller": OFPM_CONTROLLER}.get(v, -1)
                if spec.meter_id < 0:
                    spec.meter_id = parse_int(v, 32, "meter")
                if spec.meter_id not in (OFPM_ALL, OFPM_CONTROLLER) and not 0 < spec.meter_id <= MAX_METER:
                    raise ValueError(f"meter {spec.meter_id} is out of range 1..{MAX_METER}")
            elif k in FLAG_NAMES and not v and bands:
                spec.flags |= FLAG_NAMES[k]
            else:
                raise ValueError(f"unknown meter field {k!r} (meter, kbps, pktps, burst, stats, bands)")
        except ValueError as e:
            raise FlowSyntaxError(str(e), text, max(at, 0), len(item.strip()) or 1) from None
    if spec.meter_id < 0:
        raise FlowSyntaxError("missing meter=N", text, 0, len(head) or 1)
    if not bands:
        if sep:
            raise FlowSyntaxError("no bands here: this command takes meter=N only", text, len(head), 6)
        return spec
    if not spec.flags & (KBPS | PKTPS):
        spec.flags |= KBPS
    if not sep:
        raise FlowSyntaxError("missing bands=type=drop,rate=N", text, len(text), 1)
    base = len(head) + len("bands=")
    cur: Band | None = None
    off = 0
    for item in rest.split(","):
        at = base + off
        off += len(item) + 1
        k, _, v = item.strip().partition("=")
        try:
            if k == "type":
                if v not in BAND_NAMES:
                    raise ValueError(f"band type {v!r}: drop or dscp_remark")
                cur = Band(BAND_NAMES[v], 0)
                spec.bands.append(cur)
            elif cur is None:
                raise ValueError("a band starts with type=drop or type=dscp_remark")
            elif k == "rate":
                cur.rate = parse_int(v, 32, "rate")
            elif k == "burst_size":
                cur.burst = parse_int(v, 32, "burst_size")
            elif k == "prec_level":
                cur.prec_level = parse_int(v, 8, "prec_level")
            else:
                raise ValueError(f"unknown band field {k!r} (type, rate, burst_size, prec_level)")
        except ValueError as e:
            raise FlowSyntaxError(str(e), text, at, len(item) or 1) from None
    return spec


class TokenBucket:
    """rate events per second with a bucket of burst (OVS's token_bucket): the controller connections' packet-in
    limit."""

    def __init__(self, rate: int, burst: int, now_ns: int) -> None:
        self.rate, self.burst = rate, max(burst, 1)
        self.tokens = self.burst * 10**9
        self.last = now_ns

    def take(self, now_ns: int) -> bool:
        self.tokens = min(self.tokens + max(now_ns - self.last, 0) * self.rate, self.burst * 10**9)
        self.last = max(now_ns, self.last)
        if self.tokens >= 10**9:
            self.tokens -= 10**9
            return True
        return False


class SoftMeter:
    """The fast path's meter (xdp/actions.h act_meter) in user space, for the packets the slow path handles: the
    same token buckets, its own (so a meter's rate can be exceeded by what the slow path lets through)."""

    def __init__(self, meter: Meter, now_ns: int) -> None:
        self.pktps = meter.pktps
        self.bands = [[burst, rate, burst, btype, prec] for btype, rate, burst, prec in meter.buckets()]
        self.last = now_ns
        self.counts = [[0, 0] for _ in range(1 + len(self.bands))]  # (packets, bytes): in, then each band

    def take(self, nbytes: int, now_ns: int) -> tuple[int, int]:
        """(band type, prec_level) of the band a packet of nbytes exceeds now, or (0, 0) when it passes."""
        self.counts[0][0] += 1
        self.counts[0][1] += nbytes
        el = min(max(now_ns - self.last, 0), 10**10)
        self.last = max(now_ns, self.last)
        cost = 10**9 if self.pktps else nbytes * 8 * 10**6
        hit, hit_rate = -1, -1
        for i, b in enumerate(self.bands):
            b[0] = min(b[0] + el * b[1], b[2])
            if b[0] >= cost:
                b[0] -= cost
            elif b[1] >= hit_rate:
                hit, hit_rate = i, b[1]
        if hit < 0:
            return 0, 0
        self.counts[1 + hit][0] += 1
        self.counts[1 + hit][1] += nbytes
        return self.bands[hit][3], self.bands[hit][4]


class MeterTable:
    """Meters by number. add/modify/delete change nothing when they raise."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.meters: dict[int, Meter] = {}
        self.clock = clock
        # slots to hand out, oldest freed last: a deleted meter's slot is reused only after every other one, so a
        # megaflow the revalidator has not caught up with yet never meters by a new meter's buckets
        self._free = deque(range(MAX_METERS))
        self.dirty_slots: list[Meter] = []   # meters whose fast-path entry must be (re)written, counters zeroed

    def __len__(self) -> int:
        return len(self.meters)

    def __iter__(self) -> Iterator[Meter]:
        return iter(sorted(self.meters.values(), key=lambda m: m.meter_id))

    def get(self, meter_id: int) -> Meter | None:
        return self.meters.get(meter_id)

    @staticmethod
    def check(spec: MeterSpec) -> None:
        """As OVS validates a meter-mod (add or modify): MeterModError with the code it sends."""
        if not 0 < spec.meter_id <= MAX_METER and spec.meter_id != OFPM_CONTROLLER:
            raise MeterModError(INVALID_METER, f"meter {spec.meter_id:#x} is not a meter number (1..{MAX_METER}, "
                                               "or controller)")
        if spec.flags & ~(KBPS | PKTPS | BURST | STATS) or (spec.flags & KBPS and spec.flags & PKTPS):
            raise MeterModError(BAD_FLAGS, f"meter flags {spec.flags:#x}: kbps or pktps, burst, stats")
        if not spec.bands:
            raise MeterModError(BAD_BAND, "a meter needs a band")
        if len(spec.bands) > MAX_BANDS:
            raise MeterModError(OUT_OF_BANDS, f"{len(spec.bands)} bands; at most {MAX_BANDS}")
        for i, b in enumerate(spec.bands):
            if b.type not in (DROP, DSCP_REMARK):
                raise MeterModError(BAD_BAND, f"band {i}: type {b.type}")
            if not b.rate:
                raise MeterModError(BAD_RATE, f"band {i}: rate 0")
            if b.burst and not spec.flags & BURST:
                raise MeterModError(BAD_BURST, f"band {i}: a burst_size needs the burst flag")
            if b.type == DSCP_REMARK and not 0 < b.prec_level <= 2:
                raise MeterModError(BAD_BAND_VALUE, f"band {i}: prec_level {b.prec_level} (1 or 2)")

    def add(self, spec: MeterSpec) -> Meter:
        if spec.meter_id in self.meters:
            raise MeterModError(METER_EXISTS, f"meter {spec.meter_id} exists (mod-meter changes it)")
        self.check(spec)
        if not self._free and spec.meter_id != OFPM_CONTROLLER:
            raise MeterModError(OUT_OF_METERS, f"{MAX_METERS} meters already")
        slot = -1 if spec.meter_id == OFPM_CONTROLLER else self._free.popleft()
        m = Meter(spec.meter_id, spec.flags, list(spec.bands), created=self.clock(), slot=slot)
        self.meters[m.meter_id] = m
        self.dirty_slots.append(m)
        return m

    def modify(self, spec: MeterSpec) -> Meter:
        old = self.meters.get(spec.meter_id)
        if old is None:
            raise MeterModError(UNKNOWN_METER, f"no meter {spec.meter_id} (add-meter makes one)")
        self.check(spec)
        m = Meter(spec.meter_id, spec.flags, list(spec.bands), created=old.created, slot=old.slot)
        self.meters[m.meter_id] = m
        self.dirty_slots.append(m)
        return m

    def delete(self, meter_id: int) -> list[Meter]:
        gone = list(self.meters.values()) if meter_id == OFPM_ALL else (
            [self.meters[meter_id]] if meter_id in self.meters else [])
        for m in gone:
            del self.meters[m.meter_id]
            if m.slot >= 0:
                self._free.append(m.slot)
        return gone

    def specs(self) -> list[MeterSpec]:
        return [MeterSpec(m.meter_id, m.flags, m.bands) for m in self]


__all__ = ["BURST", "DROP", "DSCP_REMARK", "KBPS", "OFPM_ALL", "OFPM_CONTROLLER", "PKTPS", "STATS", "Band", "Meter",
           "MeterModError", "MeterSpec", "MeterTable", "SoftMeter", "TokenBucket", "parse_meter"]
