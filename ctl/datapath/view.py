"""A read-only view of a running datapath: its pinned maps opened by path, read, never written.

``xdpswitch dpctl show``, ``dpctl dump-flows`` and ``stats`` use it, so they compile nothing (no bcc, no
clang: the view speaks the ``bpf()`` system call itself) and cannot disturb the fast path: every map is
opened with ``BPF_F_RDONLY``, which the kernel enforces, and nothing here calls an update or delete.
``ctl/datapath/dpif_xdp.py`` reads its own counters through the same readers (``MapReader``), so the
daemon and the tools agree by construction.

Bulk reads use ``BPF_MAP_LOOKUP_BATCH`` (a few system calls for 100k megaflows).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import functools
import json
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ctl.datapath import dpif
from ctl.datapath.bpfsys import bpf
from ctl.datapath.dpif import DatapathConfig, DpStats, Megaflow, PortStats
from ctl.datapath.flowkey import FLOW_KEY_SIZE, FlowKey
from ctl.datapath.netdev import links

PIN_ROOT = Path("/sys/fs/bpf/xdpswitch")
RUN_DIR = Path("/run/xdpswitch")  # <name>.json: the config and pin directory a datapath runs with
N_GROUPS = 8                      # DP_MAX_GROUPS in xdp/dp_consts.h: one devmap each

BPF_MAP_LOOKUP_ELEM, BPF_MAP_GET_NEXT_KEY, BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD = 1, 4, 7, 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_F_RDONLY = 1 << 3
_NONZERO = re.compile(rb"[^\x00]")
PERCPU_TYPES = {5, 6, 10, 21}  # percpu hash, percpu array, lru percpu hash, percpu cgroup storage


class ViewError(RuntimeError):
    """The datapath cannot be read; the message says what and where."""


@functools.lru_cache(maxsize=1)
def possible_cpus() -> int:
    """The kernel's possible CPUs: the number of values a per-CPU map returns (fixed at boot: read once)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


class MapReader:
    """Reads one BPF map by its fd: lookups, key walks and batched lookups; values summed over CPUs for
    per-CPU maps. Owns the fd when it opened it by path (``close()``)."""

    def __init__(self, fd: int, name: str, owned: bool = False) -> None:
        self.fd, self.name, self.owned = fd, name, owned
        info = ctypes.create_string_buffer(80)
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<IIQ", attr, 0, fd, len(info), ctypes.addressof(info))
        bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
        self.type, _id, self.key_size, self.value_size, self.max_entries = struct.unpack_from("<IIIII", info)
        self.ncpu = possible_cpus() if self.type in PERCPU_TYPES else 1
        self.stride = (self.value_size + 7) & ~7 if self.type in PERCPU_TYPES else self.value_size

    @classmethod
    def open(cls, path: Path) -> MapReader:
        """A pinned map, read-only (the kernel refuses writes through this fd)."""
        p = ctypes.create_string_buffer(str(path).encode())
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<QII", attr, 0, ctypes.addressof(p), 0, BPF_F_RDONLY)
        try:
            fd = bpf(BPF_OBJ_GET, attr)
        except OSError as e:
            raise ViewError(f"cannot open {path}: {e.strerror}") from None
        return cls(fd, path.name, owned=True)

    def close(self) -> None:
        if self.owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def lookup(self, key: bytes) -> list[bytes] | None:
        """The value (one per possible CPU for per-CPU maps), or None when the key is absent."""
        kbuf = ctypes.create_string_buffer(key, self.key_size)
        vbuf = ctypes.create_string_buffer(self.stride * self.ncpu)
        attr = ctypes.create_string_buffer(32)
        struct.pack_into("<IIQQQ", attr, 0, self.fd, 0, ctypes.addressof(kbuf), ctypes.addressof(vbuf), 0)
        try:
            bpf(BPF_MAP_LOOKUP_ELEM, attr)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise ViewError(f"reading {self.name} failed: {e.strerror}") from None
        raw = vbuf.raw
        return [raw[i * self.stride: i * self.stride + self.value_size] for i in range(self.ncpu)]

    def u32(self, key: int) -> list[bytes] | None:
        return self.lookup(struct.pack("<I", key))

    def sums(self, keys: range, fmt: str) -> list[tuple[int, ...]]:
        """For each key of a per-CPU array of integer structs (fmt), the fields summed over CPUs."""
        out = []
        for k in keys:
            vals = self.u32(k) or []
            fields = [struct.unpack_from(fmt, v) for v in vals]
            out.append(tuple(sum(col) for col in zip(*fields, strict=True)) if fields else ())
        return out

    def keys(self) -> Iterator[bytes]:
        """Every key, walked with GET_NEXT_KEY (small maps; use batch() for big ones)."""
        cur = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        attr = ctypes.create_string_buffer(24)
        first = True
        while True:
            struct.pack_into("<IIQQ", attr, 0, self.fd, 0, 0 if first else ctypes.addressof(cur),
                             ctypes.addressof(nxt))
            try:
                bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    return
                raise ViewError(f"walking {self.name} failed: {e.strerror}") from None
            yield nxt.raw
            ctypes.memmove(cur, nxt, self.key_size)
            first = False

    def batch(self, chunk: int = 16384) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) with BPF_MAP_LOOKUP_BATCH; per-CPU values come concatenated (ncpu x stride)."""
        vsize = self.stride * self.ncpu
        for count, kraw, vraw in self.batch_chunks(chunk):
            for i in range(count):
                yield kraw[i * self.key_size:(i + 1) * self.key_size], vraw[i * vsize:(i + 1) * vsize]

    def batch_chunks(self, chunk: int = 16384) -> Iterator[tuple[int, bytes, bytes]]:
        """BPF_MAP_LOOKUP_BATCH a chunk at a time: (count, keys, values), for readers that slice in bulk."""
        vsize = self.stride * self.ncpu
        in_b = ctypes.create_string_buffer(max(self.key_size, 8))
        out_b = ctypes.create_string_buffer(max(self.key_size, 8))
        keys = ctypes.create_string_buffer(chunk * self.key_size)
        vals = ctypes.create_string_buffer(chunk * vsize)
        attr = ctypes.create_string_buffer(56)
        first = True
        while True:
            struct.pack_into("<QQQQIIQQ", attr, 0, 0 if first else ctypes.addressof(in_b), ctypes.addressof(out_b),
                             ctypes.addressof(keys), ctypes.addressof(vals), chunk, self.fd, 0, 0)
            done = False
            try:
                bpf(BPF_MAP_LOOKUP_BATCH, attr)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise ViewError(f"reading {self.name} failed: {e.strerror}") from None
                done = True
            count = struct.unpack_from("<I", attr, 32)[0]
            if count:
                yield count, keys.raw[:count * self.key_size], vals.raw[:count * vsize]
            if done or count == 0:
                return
            ctypes.memmove(in_b, out_b, len(out_b))
            first = False


class FlowColumns(NamedTuple):
    """Every megaflow as parallel lists (see DatapathReader.dump_columns)."""

    keys: list[bytes]
    masks: list[bytes]
    actions: list[tuple[dpif.Action, ...]]
    packets: list[int]
    bytes: list[int]
    used_ns: list[int]
    mask_ids: list[int]
    slots: list[int]


@dataclass
class PortInfo:
    port_no: int
    name: str
    ifindex: int
    mode: str  # as xdp_mode() reports it: native, generic, ...
    tx_path: str = "xdp"  # "skb" when the port does not take XDP redirects (struct dp_port_cfg)


class DatapathReader:
    """What can be read from a datapath's maps, given a reader per map name (pinned or the daemon's own)."""

    def __init__(self, name: str, config: DatapathConfig, reader: Callable[[str], MapReader]) -> None:
        self.name = name
        self.config = config
        self._reader = reader

    def map(self, name: str) -> MapReader:
        return self._reader(name)

    def stats(self) -> DpStats:
        # the packet counters are the first words of each CPU's dp_scratch (xdp/dp_maps.h)
        (s,) = self.map("dp_scratch").sums(range(1), f"<{len(dpif.Stat)}Q")
        s = s or (0,) * len(dpif.Stat)
        d = [v[0] if v else 0 for v in self.map("dp_drops").sums(range(len(dpif.DropReason)), "<Q")]
        return DpStats.from_counters(s, d)

    def port_stats(self, port_no: int) -> PortStats:
        (vals,) = self.map("dp_port_stats").sums(range(port_no, port_no + 1), "<QQQQQQ")
        return PortStats(*vals) if vals else PortStats()

    def bucket_stats(self, base: int, n: int) -> list[tuple[int, int]]:
        """(packets, bytes) of select-group bucket counter slots base..base+n-1 (none before groups existed)."""
        try:
            sums = self.map("dp_bucket_stats").sums(range(base, base + n), "<QQ")
        except ViewError:
            return [(0, 0)] * n
        return [(v[0], v[1]) if v else (0, 0) for v in sums]

    def ports(self) -> list[PortInfo]:
        """Ports as the maps record them (ifindex -> port number)."""
        out = []
        kernel = {li.ifindex: li for li in links().values()}   # one netlink dump for every port
        for k, v in self.map("dp_ports").batch():
            ifindex, port_no = struct.unpack_from("<I", k)[0], struct.unpack_from("<I", v)[0]
            li = kernel.get(ifindex)
            name = li.name if li is not None else f"ifindex {ifindex} (gone)"
            try:
                cfg = self.map("dp_port_cfg").u32(port_no) if port_no < self.config.max_ports else None
            except ViewError:  # a datapath from before the skb path: every port by XDP redirect
                cfg = None
            skb = bool(cfg and struct.unpack_from("<II", cfg[0])[1] & 1)  # struct dp_port_cfg: DP_PORT_SKB_TX
            out.append(PortInfo(port_no, name, ifindex, li.xdp_mode if li is not None else "none",
                                "skb" if skb else "xdp"))
        return sorted(out, key=lambda p: p.port_no)

    def mask_order(self) -> list[int]:
        cfg = self.map("dp_config").u32(0)
        slot = struct.unpack_from("<I", cfg[0], 4)[0] & 1 if cfg else 0
        order = self.map("mf_order").u32(slot)
        if not order:
            return []
        n = struct.unpack_from("<I", order[0])[0]
        return list(order[0][8:8 + min(n, self.config.max_masks)])

    def masks(self) -> dict[int, FlowKey]:
        mm = self.map("mf_masks")
        out = {}
        for mid in self.mask_order():
            v = mm.u32(mid)
            if v:
                out[mid] = FlowKey.from_bytes(v[0])
        return out

    def n_flows(self) -> int:
        """Megaflows installed: the count the Datapath writes to mf_count after every change (one read; counting
        the ways in use in mf_buckets took 0.22 s for the default 524288 buckets)."""
        vals = self.map("mf_count").u32(0)
        return struct.unpack("<Q", vals[0])[0] if vals else 0

    def bucket_ways(self, chunk: int = 16384) -> list[tuple[int, int, int]]:
        """Every megaflow's place in mf_buckets: (bucket, tag, flow slot), in bucket order (an array, read in
        bulk; a tag is odd, so its first byte tells a used way from a free one)."""
        ways, size = dpif.MF_BUCKET_WAYS, dpif.MF_BUCKET.size
        out: list[tuple[int, int, int]] = []
        first = 0
        for count, _kraw, vraw in self.map("mf_buckets").batch_chunks(chunk):
            w = memoryview(vraw).cast("I")
            for j in range(ways):
                used = vraw[4 * j::size]  # way j's first tag byte in every bucket of the chunk
                for hit in _NONZERO.finditer(used):  # found in C: most buckets are empty
                    b = hit.start()
                    out.append((first + b, w[2 * ways * b + j], w[2 * ways * b + ways + j]))
            first += count
        out.sort()
        return out

    def flow_stats_columns(self, hi: int, chunk: int = 16384) -> tuple[list[int], list[int], list[int]]:
        """Packets, bytes and last use of slots 0..hi-1, each a list indexed by slot, summed over CPUs (an
        array: read in slot order)."""
        ms = self.map("mf_stats")
        step, ncpu = ms.stride // 8, ms.ncpu
        row = step * ncpu
        cols: list[list[int]] = [[], [], []]
        for _count, _kraw, vraw in ms.batch_chunks(min(chunk, max(hi, 1))):
            w = memoryview(vraw).cast("Q")
            for f, agg in ((0, sum), (1, sum), (2, max)):
                cols[f].extend(map(agg, zip(*[w[c * step + f::row].tolist() for c in range(ncpu)], strict=True)))
            if len(cols[0]) >= hi:
                break
        return cols[0][:hi], cols[1][:hi], cols[2][:hi]

    def flow_stats_all(self, hi: int, chunk: int = 16384) -> dict[int, tuple[int, int, int]]:
        """(packets, bytes, last used) of every megaflow slot below hi, summed over CPUs."""
        return dict(enumerate(zip(*self.flow_stats_columns(hi, chunk), strict=True))) if hi > 0 else {}

    def group_ports(self) -> dict[int, frozenset[int]]:
        """Each output group's ports (a devmap each)."""
        out = {}
        for g in range(N_GROUPS):
            out[g] = frozenset(struct.unpack_from("<I", k)[0] for k in self.map(f"dp_group{g}").keys()
                               if self.map(f"dp_group{g}").lookup(k) is not None)
        return out

    def dump_flows(self) -> list[Megaflow]:
        """Every megaflow with its actions, packets, bytes and last use."""
        c = self.dump_columns()
        return [Megaflow(key=FlowKey.from_bytes(k), mask=FlowKey.from_bytes(m), actions=list(a), packets=p, bytes=b,
                         used_ns=u, mask_id=mid, flow_idx=s)
                for k, m, a, p, b, u, mid, s in zip(*c, strict=True)]

    def dump_columns(self) -> FlowColumns:
        """Every megaflow, as parallel lists (bulk reads, one list per field: 100k megaflows in a few tenths of
        a second)."""
        slots = [s for _b, _t, s in self.bucket_ways()]
        if not slots:
            return FlowColumns([], [], [], [], [], [], [], [])
        hi = max(slots) + 1
        packets, nbytes, used = self.flow_stats_columns(hi)
        entries = self.map("mf_entries")
        es = entries.stride
        raw: list[bytes] = []
        for _count, _kraw, vraw in entries.batch_chunks(min(16384, hi)):  # an array: read in slot order
            raw.extend(vraw[j:j + es] for j in range(0, len(vraw), es))
            if len(raw) >= hi:
                break
        groups: dict[int, frozenset[int]] = {}

        def ports_of_group(g: int) -> frozenset[int]:
            if not groups:
                groups.update(self.group_ports())
            return groups.get(g, frozenset())

        decoded: dict[bytes, tuple[dpif.Action, ...]] = {}  # by the entry without its generation
        actions = []
        acts_end = dpif.entry_key_offset(self.config.max_actions)  # the actions end, the masked key starts
        keys = [raw[s][acts_end:acts_end + FLOW_KEY_SIZE] for s in slots]
        mids = [dpif.ENTRY_HEADER.unpack_from(raw[s])[2] for s in slots]  # struct mf_entry's mask_id
        for s in slots:
            body = raw[s][4:acts_end]
            a = decoded.get(body)
            if a is None:
                a = decoded[body] = tuple(dpif.decode_actions(dpif.decode_entry(raw[s])[1], ports_of_group))
            actions.append(a)
        mask_raw = {mid: bytes(m) for mid, m in self.masks().items()}
        no_mask = bytes(FlowKey())
        return FlowColumns(keys, [mask_raw.get(m, no_mask) for m in mids], actions, [packets[s] for s in slots],
                           [nbytes[s] for s in slots], [used[s] for s in slots], mids, slots)

    def map_usage(self, n_flows: int | None = None) -> dict[str, tuple[int, int]]:
        """(entries in use, max entries) of the maps that fill up."""
        groups = self.group_ports()
        return {
            "mf_entries": (self.n_flows() if n_flows is None else n_flows, self.config.max_flows),
            "mf_masks": (len(self.mask_order()), self.config.max_masks),
            "dp_groups": (sum(1 for p in groups.values() if p), N_GROUPS),
            "dp_ports": (sum(1 for _ in self.map("dp_ports").keys()), self.config.max_ports - 1),
        }


class DatapathView(DatapathReader):
    """A running datapath's pinned maps, opened read-only by name. Use as a context manager."""

    def __init__(self, name: str, config: DatapathConfig, pin_dir: Path) -> None:
        self.pin_dir = pin_dir
        self._maps: dict[str, MapReader] = {}
        super().__init__(name, config, self._open_map)

    @classmethod
    def open(cls, name: str, pin_root: Path = PIN_ROOT, run_dir: Path = RUN_DIR) -> DatapathView:
        run = run_dir / f"{name}.json"
        try:
            saved = json.loads(run.read_text())
        except FileNotFoundError:
            raise ViewError(f"no datapath named {name!r} is running (nothing in {run_dir})") from None
        except PermissionError:
            raise ViewError(f"{run} is for root only: run this as root") from None
        except (OSError, ValueError) as e:
            raise ViewError(f"{run}: unreadable ({e}); the datapath's daemon rewrites it at start") from None
        try:
            known = {f.name for f in dataclasses.fields(DatapathConfig)}
            config = DatapathConfig(**{k: v for k, v in saved.items() if k in known})
        except (TypeError, ValueError) as e:
            raise ViewError(f"{run}: not a datapath config ({e})") from None
        pin_dir = Path(saved["pin_dir"]) if "pin_dir" in saved else None
        if pin_dir is None or not pin_dir.is_dir():
            layouts = [p for p in (pin_root / name).glob("*") if p.is_dir()] if (pin_root / name).is_dir() else []
            if len(layouts) != 1:
                raise ViewError(f"no datapath named {name!r} is pinned under {pin_root}")
            pin_dir = layouts[0]
        return cls(name, config, pin_dir)

    def _open_map(self, name: str) -> MapReader:
        m = self._maps.get(name)
        if m is None:
            m = self._maps[name] = MapReader.open(self.pin_dir / name)
        return m

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()

    def __enter__(self) -> DatapathView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
