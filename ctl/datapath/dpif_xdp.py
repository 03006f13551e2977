"""The XDP datapath: compile and load the fast path with bcc, attach it to ports, and manage its caches.

This is the only module that imports bcc. Everything above it (the upcall handlers, the CLI, the
exporter) talks to a ``Datapath`` through the methods below and the types of ``ctl.datapath.dpif``.

Maps are pinned under ``/sys/fs/bpf/xdpswitch/<name>/<layout>`` (``layout`` hashes the C source and the
sizes), so a later process that opens the same datapath name gets the same maps and rebuilds its state
from them (flows, masks, ports, groups); ``close(unpin=True)`` removes them.

Concurrency with the fast path, which reads these maps while they are written:
 - a new megaflow's entry (``mf_entries``) is written before its bucket (``mf_buckets``) names it;
 - a replaced or deleted megaflow leaves its bucket (or the bucket is repointed) first, then its entry's
   generation turns even; EMC entries carry the odd generation they saw, so they stop matching at once;
 - a bucket is rewritten whole, and a reader may see it half written: a way's tag and index that do not
   belong together name an entry whose subtable or masked key does not match, which the fast path checks;
 - freed flow indexes are reused oldest first, long after any reader could still hold them;
 - the subtable order is double-buffered: the idle slot is written, then ``dp_config`` flips to it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bcc import BPF  # the only bcc import in the project
from bcc.libbcc import lib as libbcc
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

import xdp  # the fast path's C sources travel as this package
from ctl.datapath import dpif, flowkey
from ctl.datapath.dpif import Action, DatapathConfig, DpStats, MapFull, Megaflow, PortStats
from ctl.datapath.flowkey import FlowKey, mask_words
from ctl.datapath.netdev import takes_redirects, xdp_mode
from ctl.datapath.view import PIN_ROOT, RUN_DIR, DatapathReader, MapReader, possible_cpus

log = logging.getLogger(__name__)

XDP_DIR = Path(xdp.__file__).resolve().parent   # the xdp package: installed with ctl (a wheel carries it)
PROGRAM_FILES = ("emc.c", "megaflow.c", "skb_tx.c", "baseline.c")
TC_PRIO = 120                  # the tc filter (clsact ingress) that runs dp_skb_tx on every port
DP_PORT_SKB_TX = 1             # struct dp_port_cfg flags
DP_CFG_SKB_FLOOD = 2           # struct dp_config flags
DP_CFG_NO_SIMPLE = 4
DP_PORT_SLOTS = 1024           # dp_consts.h
DP_SKB_MAX_COPIES = 64         # dp_consts.h: ports a flood or group reaches on the skb path
# What the maps look like (and where megaflows sit in them: dp_hash.h): a build whose other files changed can
# share a running datapath's maps (and replace its programs without a gap); one whose layout changed cannot.
LAYOUT_FILES = ("dp_consts.h", "dp_structs.h", "dp_maps.h", "dp_hash.h")

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
N_GROUPS = 8  # DP_MAX_GROUPS in dp_consts.h: one devmap each
_KEY0 = struct.pack("<I", 0)  # the key of a one-entry array
_STATS = struct.Struct("<QQQ")  # struct mf_flow_stats: one CPU's packets, bytes, used_ns
_STATS_ZERO = bytes(_STATS.size)
_NO_WAYS = (0,) * (2 * dpif.MF_BUCKET_WAYS)  # a bucket with every way free


class DatapathError(RuntimeError):
    """A datapath operation failed; the message says what and where."""


@dataclass
class Port:
    port_no: int
    name: str
    ifindex: int
    mode: str  # as xdp_mode() reports it: "native" or "generic" for ports this process attached
    tx_path: str = "xdp"  # how the fast path sends to it: "xdp" (redirect) or "skb" (dp_skb_tx)


@dataclass
class _Pending:
    """A megaflow prepared by put_flow: its slot, mask id, place in mf_buckets and entry, and what it replaces."""

    idx: int
    mid: int
    fkey: bytes                 # the megaflow's identity (dpif.mf_key_bytes)
    place: tuple[int, int]      # (bucket, tag) in mf_buckets (dpif.mf_place), its way taken in the mirror
    prev: int | None            # the flow slot its way named before (a replaced megaflow); None: the way was free
    entry: bytes
    old: tuple[int, int] | None
    groups: list[int]
    fresh: bool                 # the slot was never used since the maps were made: its counters are zero


def xdp_dir() -> Path:
    """The fast path's sources: the xdp package, or $XDPSWITCH_XDP_DIR (a build to test or upgrade to)."""
    return Path(os.environ.get("XDPSWITCH_XDP_DIR") or XDP_DIR)


def map_layout(config: DatapathConfig) -> str:
    """A digest of everything that shapes the maps: the layout headers and the size cflags."""
    text = "".join((xdp_dir() / f).read_text() for f in LAYOUT_FILES) + " ".join(config.cflags())
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def map_names() -> set[str]:
    """Every map dp_maps.h declares (each pinned under its own name)."""
    text = (xdp_dir() / "dp_maps.h").read_text()
    names = set(re.findall(r"^DP_MAP\([^;]*?,\s*(\w+),\s*[^,;]+\);", text, re.M))
    names |= set(re.findall(r"^DP_DEVMAP\((\w+),", text, re.M))
    names |= set(re.findall(r"^_BPF_XSKMAP\((\w+),", text, re.M))
    return names


def program_source() -> str:
    """emc.c, megaflow.c and baseline.c with our own headers inlined: bcc only loads functions, and
    only rewrites map calls, in its main text."""
    seen: set[str] = set()
    src_dir = xdp_dir()

    def inline(name: str) -> str:
        out = []
        for line in (src_dir / name).read_text().splitlines():
            m = re.match(r'\s*#include "([^"]+)"', line)
            if m:
                if m.group(1) not in seen:
                    seen.add(m.group(1))
                    out.append(inline(m.group(1)))
            else:
                out.append(line)
        return "\n".join(out)

    return "\n".join(inline(f) for f in PROGRAM_FILES)


def default_route_interfaces() -> set[str]:
    """Interfaces that carry a default route (attaching to them could cut the machine off)."""
    names = set()
    try:
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            f = line.split()
            if len(f) > 7 and f[1] == "00000000" and f[7] == "00000000":
                names.add(f[0])
        for line in Path("/proc/net/ipv6_route").read_text().splitlines():
            f = line.split()
            if len(f) == 10 and f[0] == "0" * 32 and f[1] == "00" and f[9] != "lo":
                names.add(f[9])
    except OSError:
        pass
    return names


class Datapath:
    """One switch's fast path: its programs, maps, ports and caches.

    ``Datapath(name)`` compiles and loads (about three seconds here, mostly clang). If a datapath of that
    name is running (its maps pinned, its programs attached), the new one adopts it: same maps, so every
    megaflow keeps forwarding, and ``add_port`` replaces the old programs on a port atomically. A running
    datapath whose map layout differs is refused (``replace=True`` removes it first). ``release()`` lets go
    and leaves the datapath running (what the daemon does on exit); ``close(unpin=True)`` removes it
    (ports detached, pins gone). As a context manager (scripts, tests, benchmarks), ``close()`` detaches
    the ports this process attached."""

    def __init__(self, name: str = "xdpswitch", config: DatapathConfig | None = None,
                 pin_root: Path = PIN_ROOT, replace: bool = False) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise DatapathError(f"bad datapath name {name!r}: letters, digits, '_', '.', '-' only")
        self.name = name
        self.config = config or DatapathConfig()
        flowkey.set_vlan_limit(self.config.vlan_limit)  # the Python parser reads frames as these programs do
        self.notes: list[str] = []     # what opening it found and did (for the daemon to say)
        src = program_source()
        cflags = self.config.cflags()
        layout = map_layout(self.config)
        self.build = hashlib.sha256((src + " ".join(cflags)).encode()).hexdigest()[:12]
        self.pin_dir = pin_root / name / layout
        self._ensure_bpffs(pin_root)
        self._check_pins(pin_root / name, layout, replace)
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        reused_pins = any(self.pin_dir.iterdir())
        self.adopted = reused_pins     # maps (and so megaflows, maybe attached ports) of an earlier process
        cflags += [f'-DDP_PIN_DIR="{self.pin_dir}"', "-Wno-unused-function"]
        try:
            self.bpf = BPF(text=src, cflags=cflags)
            self.prog_emc = self.bpf.load_func("emc_rx", BPF.XDP)
            self.prog_mf = self.bpf.load_func("mf_rx", BPF.XDP)
            self.prog_skb = self.bpf.load_func("dp_skb_tx", BPF.SCHED_CLS)
        except Exception as e:  # bcc raises plain Exception
            if not reused_pins:  # maps this attempt pinned: nothing else uses them
                shutil.rmtree(self.pin_dir, ignore_errors=True)
                with contextlib.suppress(OSError):
                    self.pin_dir.parent.rmdir()
            raise DatapathError(f"loading the fast path failed: {e}") from e
        try:
            self._init_state(reused_pins)
        except Exception as e:  # bcc's KeyError: sources whose maps are not the ones this code names
            self.bpf.cleanup()
            if not reused_pins:
                shutil.rmtree(self.pin_dir, ignore_errors=True)
                with contextlib.suppress(OSError):
                    self.pin_dir.parent.rmdir()
            raise DatapathError(f"the fast path in {xdp_dir()} does not have the maps this code uses: {e!r}") from e
        RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        (RUN_DIR / f"{name}.json").write_text(json.dumps({**dataclasses.asdict(self.config),
                                                          "pin_dir": str(self.pin_dir), "build": self.build}))
        atexit.register(self.close)

    def _init_state(self, reused_pins: bool) -> None:
        """Point dp_progs at mf_rx and build this process's state from the maps (empty or adopted)."""
        self.bpf["dp_progs"][ctypes.c_int(0)] = ctypes.c_int(self.prog_mf.fd)
        self.ports: dict[int, Port] = {}
        self._readers: dict[str, MapReader] = {}
        self._masks: dict[bytes, int] = {}          # mask bytes -> mask id
        self._mask_refs: dict[int, int] = {}        # mask id -> flows using it
        self._mask_order: list[int] = []
        self._flows: dict[bytes, tuple[int, int]] = {}  # mf_key bytes -> (flow idx, mask id)
        self._places: dict[tuple[int, int], bytes] = {}  # (bucket, tag) -> mf_key bytes of the megaflow there
        self._buckets: dict[int, list[int]] = {}    # mf_buckets as written (or being prepared): 8 tags, 8 slots
        self._n_buckets = self.config.n_buckets
        self._free_idx: deque[int] = deque()
        self._next_idx = 0
        self._groups: dict[frozenset[int], int] = {}
        self._group_refs: dict[int, int] = {}
        self._flow_group: dict[int, int] = {}       # flow idx -> group id
        self._order_slot = 0
        self._mask_hits_seen: dict[int, int] = {}
        self._closed = False
        self._gens: dict[int, int] = {}             # flow idx -> generation last written (a cache)
        self._simple: dict[int, list[int]] = {}     # in_port -> its simple-match megaflows' slots (mf_simple)
        self._simple_port: dict[int, int] = {}      # simple-match megaflow slot -> its in_port
        self._simple_dirty: set[int] = set()        # ports whose mf_simple entry is to be written
        self._fresh = False                         # the slot _alloc_idx() gave last was never used
        self._enc_cache: dict[tuple[Action, ...], list[bytes]] = {}  # action lists without groups, encoded
        # flow slots at or above this index have all-zero counters (never used since the maps were made)
        self._clean_from = self.config.max_flows if reused_pins else 0
        self._ncpus = possible_cpus()   # a per-CPU map's value holds one struct per possible CPU
        self._seed = self._hash_seed()
        self.reader = DatapathReader(self.name, self.config, self._map_reader)
        self._recover()
        self.set_emc_insert_inv_prob(self.config.emc_insert_inv_prob)
        self.set_simple_match(self.config.simple_match)

    # --- lifecycle ---------------------------------------------------------------------------------

    @staticmethod
    def _ensure_bpffs(root: Path) -> None:
        mounts = Path("/proc/mounts").read_text().split("\n")
        if not any(len(f := m.split()) > 2 and f[2] == "bpf" and root.is_relative_to(f[1]) for m in mounts):
            raise DatapathError(f"no bpffs is mounted above {root}: run scripts/setup.sh")

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, unpin: bool = False) -> None:
        """Detach the ports this process attached. With unpin, remove the datapath: every port its maps
        record is detached and the pinned maps go (the caches with them)."""
        if self._closed:
            return
        ports = list(self.ports.values())
        if unpin:
            known = {p.ifindex for p in ports}
            ports += [Port(p.port_no, p.name, p.ifindex, p.mode) for p in self.reader.ports()
                      if p.ifindex not in known and p.mode in MODE_FLAGS]
        for port in ports:
            try:
                self._detach(port)
            except DatapathError as e:
                log.warning("%s", e)
        self.ports.clear()
        if unpin:
            shutil.rmtree(self.pin_dir.parent, ignore_errors=True)
            (RUN_DIR / f"{self.name}.json").unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        """Let go of the datapath and leave it running: ports stay attached, maps stay pinned, so
        established flows keep forwarding until a new process adopts it (or ``xdpswitch dpctl del-dp``)."""
        if self._closed:
            return
        for r in self._readers.values():
            r.close()
        self.bpf.cleanup()
        self._closed = True
        atexit.unregister(self.close)

    def _check_pins(self, root: Path, layout: str, replace: bool) -> None:
        """Refuse (or with replace, remove) a running datapath of this name whose map layout differs, and
        clear pins that an interrupted removal left incomplete."""
        if not root.is_dir():
            return
        expected = map_names()
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            present = {p.name for p in d.iterdir()}
            if not present:
                d.rmdir()
                continue
            if d.name == layout and expected <= present:
                continue
            if d.name == layout:
                gone = remove_pinned(self.name, d) if "dp_ports" in present else []
                self.notes.append(f"{d} held {len(present)} of the {len(expected)} maps (an interrupted "
                                  f"removal?): removed them (detached {', '.join(gone) or 'no ports'}); starting "
                                  "with empty caches")
                continue
            if not replace:
                raise DatapathError(
                    f"datapath {self.name!r} is running with another map layout (pinned at {d}); this build "
                    f"cannot share its maps. `xdpswitch dpctl del-dp --name {self.name}` removes it (its established "
                    "flows stop), or start with --replace to remove it and start afresh")
            gone = remove_pinned(self.name, d)
            self.notes.append(f"replaced datapath {self.name!r} of another layout ({d}; detached "
                              f"{', '.join(gone) or 'no ports'})")

    # --- ports -------------------------------------------------------------------------------------

    def add_port(self, ifname: str, port_no: int | None = None, mode: str = "auto",
                 allow_default_route: bool = False) -> Port:
        """Attach the fast path to ifname as port port_no (the lowest free number by default).

        mode: "native" (driver XDP), "generic" (skb XDP) or "auto" (native, else generic with a
        warning). Refuses an interface that carries the default route unless allow_default_route."""
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise DatapathError(f"no interface named {ifname!r}") from None
        if ifname in default_route_interfaces() and not allow_default_route:
            raise DatapathError(f"{ifname} carries the default route; attaching could cut this machine "
                                "off (allow_default_route to insist)")
        if any(p.name == ifname for p in self.ports.values()):
            raise DatapathError(f"{ifname} is already a port")
        if port_no is None:
            port_no = next(n for n in range(1, self.config.max_ports + 1) if n not in self.ports)
        if not 0 < port_no < self.config.max_ports:
            raise DatapathError(f"port number {port_no} is out of range 1..{self.config.max_ports - 1}")
        if port_no in self.ports:
            raise DatapathError(f"port number {port_no} is taken by {self.ports[port_no].name}")
        modes = ["native", "generic"] if mode == "auto" else [mode]
        if any(m not in MODE_FLAGS for m in modes):
            raise DatapathError(f"bad XDP mode {mode!r}: native, generic or auto")
        errors = []
        current = xdp_mode(ifname)
        if current in MODE_FLAGS and ifindex in self._recorded_ifindexes():
            # ours, left running by an earlier process: swap the program in place (no detach window)
            modes, replacing = [current], True
        else:
            replacing = False
            if current not in ("none", "unknown"):
                raise DatapathError(f"{ifname} already has an XDP program ({current}) that is not datapath "
                                    f"{self.name!r}'s; detach it first (ip link set dev {ifname} xdp off)")
        for m in modes:
            try:
                flags = MODE_FLAGS[m] | (0 if replacing else XDP_FLAGS_UPDATE_IF_NOEXIST)
                BPF.attach_xdp(ifname.encode(), self.prog_emc, flags)
            except Exception as e:
                errors.append(f"{m}: {e}")
                continue
            if m == "generic" and mode == "auto":
                log.warning("%s: native XDP failed (%s); running in generic mode", ifname, errors[0])
            port = Port(port_no, ifname, ifindex, m)
            try:
                self._attach_tc(ifindex)
            except Exception as e:
                if not replacing:
                    BPF.remove_xdp(ifname.encode(), MODE_FLAGS[m])
                raise DatapathError(f"attaching the skb path (tc clsact ingress) to {ifname} failed: {e}") from e
            self.ports[port_no] = port
            port.tx_path = "xdp" if takes_redirects(ifindex) else "skb"
            self._write_port(port)
            return port
        raise DatapathError(f"attaching to {ifname} failed: {'; '.join(errors)}")

    def _attach_tc(self, ifindex: int) -> None:
        """dp_skb_tx on the port's ingress (a clsact qdisc, made if absent; our filter replaced in place)."""
        with IPRoute() as ipr:
            try:
                ipr.tc("add", "clsact", ifindex)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
            ipr.tc("replace-filter", "bpf", ifindex, 1, prio=TC_PRIO, fd=self.prog_skb.fd, name="dp_skb_tx",
                   parent="ffff:fff2", classid=1, direct_action=True)

    def set_tx_path(self, port_no: int, path: str) -> None:
        """Send to a port by "xdp" (redirect) or "skb" (dp_skb_tx), whatever the kernel says it takes (for
        tests and benchmarks; refresh_tx_paths() goes back to what the kernel says)."""
        if path not in ("xdp", "skb") or port_no not in self.ports:
            raise DatapathError(f"no port {port_no}, or a path other than xdp or skb: {path!r}")
        self.ports[port_no].tx_path = path
        self._write_port_cfg(port_no)
        self._write_skb_flood()

    def refresh_tx_paths(self) -> list[str]:
        """Ask the kernel again which ports take XDP_REDIRECTed frames (a container may turn GRO on or off
        on its end at any time) and switch each port's path accordingly; what changed, for the log."""
        changed = []
        for port in list(self.ports.values()):
            path = "xdp" if takes_redirects(port.ifindex) else "skb"
            if path != port.tx_path:
                port.tx_path = path
                self._write_port_cfg(port.port_no)
                changed.append(f"port {port.port_no} ({port.name}): now sent to by the {path} path")
        if changed:
            self._write_skb_flood()
        return changed

    def _write_port_cfg(self, port_no: int) -> None:
        """struct dp_port_cfg of port_no: its ifindex and its tx path."""
        port = self.ports.get(port_no)
        cfg = self.bpf["dp_port_cfg"]
        v = cfg.Leaf()
        if port is not None:
            v.ifindex = port.ifindex
            v.flags = DP_PORT_SKB_TX if port.tx_path == "skb" else 0
        cfg[ctypes.c_uint32(port_no)] = v

    def _write_skb_targets(self, key: int | None = None) -> None:
        """The ports a flood (key 0) and each output group (key 1 + g) reach on the skb path."""
        keys = [key] if key is not None else [0, *range(1, 1 + N_GROUPS)]
        table = self.bpf["dp_skb_targets"]
        for k in keys:
            if k == 0:
                members = sorted(self.ports)
            else:
                members = sorted(p for p in self._group_ports(k - 1) if p in self.ports)
            v = table.Leaf()
            v.n = min(len(members), DP_SKB_MAX_COPIES)
            for i, p in enumerate(members[:DP_SKB_MAX_COPIES]):
                v.t[i].ifindex = self.ports[p].ifindex
                v.t[i].port_no = p
            table[ctypes.c_uint32(k)] = v

    def _write_skb_flood(self) -> None:
        """Floods and groups take the skb path while any port does (they reach every member either way)."""
        on = any(p.tx_path == "skb" for p in self.ports.values())
        cfg = self.bpf["dp_config"]
        cur = cfg[ctypes.c_uint32(0)]
        flags = (cur.flags & ~DP_CFG_SKB_FLOOD) | (DP_CFG_SKB_FLOOD if on else 0)
        if flags != cur.flags:
            cur.flags = flags
            cfg[ctypes.c_uint32(0)] = cur

    def _recorded_ifindexes(self) -> set[int]:
        return {p.ifindex for p in self.reader.ports()}

    def prune_ports(self, keep: set[int]) -> list[str]:
        """Forget ports an earlier process attached that are not in keep (ifindexes): detach them (if the
        interface still exists) and delete their map entries. Returns what was done, for the user."""
        done = []
        mine = {p.port_no for p in self.ports.values()}
        for p in self.reader.ports():
            if p.ifindex in keep:
                continue
            self._write_port_slots(without=p.ifindex)
            try:
                del self.bpf["dp_ports"][ctypes.c_uint32(p.ifindex)]
            except KeyError:
                pass
            if p.port_no not in mine:
                try:
                    del self.bpf["dp_tx_ports"][ctypes.c_int(p.port_no)]
                except KeyError:
                    pass
            if p.port_no not in mine:
                self.bpf["dp_port_cfg"][ctypes.c_uint32(p.port_no)] = self.bpf["dp_port_cfg"].Leaf()
            if p.name.startswith("ifindex "):
                done.append(f"port {p.port_no} ({p.name}) vanished while no daemon ran: forgotten")
                continue
            detach_tc(p.ifindex)
            if p.mode in MODE_FLAGS:
                try:
                    BPF.remove_xdp(p.name.encode(), MODE_FLAGS[p.mode])
                except Exception as e:
                    done.append(f"port {p.port_no} ({p.name}) is no longer configured; detaching it failed: {e}")
                    continue
            done.append(f"port {p.port_no} ({p.name}) is no longer configured: detached")
        return done

    def _write_port_slots(self, without: int = 0) -> None:
        """Rewrite dp_port_slots from dp_ports (less ifindex without, about to go): per slot the port of the
        lowest ifindex with that residue. One batch write of the whole array."""
        slots: dict[int, tuple[int, int]] = {}
        for k, v in sorted(self.bpf["dp_ports"].items(), key=lambda kv: int(kv[0].value)):
            ifindex = int(k.value)
            if ifindex != without:
                slots.setdefault(ifindex & (DP_PORT_SLOTS - 1), (ifindex, int(v.port_no)))
        self._batch_update("dp_port_slots", [struct.pack("<I", i) for i in range(DP_PORT_SLOTS)],
                           [struct.pack("<II", *slots.get(i, (0, 0))) for i in range(DP_PORT_SLOTS)])

    def _write_port(self, port: Port) -> None:
        self._write_port_cfg(port.port_no)
        self._write_skb_targets()
        self._write_skb_flood()
        self.bpf["dp_ports"][ctypes.c_uint32(port.ifindex)] = self.bpf["dp_ports"].Leaf(port.port_no, 0)
        self._write_port_slots()
        self.bpf["dp_tx_ports"][ctypes.c_int(port.port_no)] = ctypes.c_int(port.ifindex)
        for ports, g in self._groups.items():
            if port.port_no in ports:
                self.bpf[f"dp_group{g}"][ctypes.c_int(port.port_no)] = ctypes.c_int(port.ifindex)

    def del_port(self, port_no: int) -> None:
        port = self.ports.pop(port_no, None)
        if port is None:
            raise DatapathError(f"no port {port_no}")
        self._detach(port)
        self._write_skb_targets()
        self._write_skb_flood()

    def _detach(self, port: Port) -> None:
        self.bpf["dp_port_cfg"][ctypes.c_uint32(port.port_no)] = self.bpf["dp_port_cfg"].Leaf()
        detach_tc(port.ifindex)
        self._write_port_slots(without=port.ifindex)
        for table, key in (("dp_ports", ctypes.c_uint32(port.ifindex)), ("dp_tx_ports", ctypes.c_int(port.port_no))):
            try:
                del self.bpf[table][key]
            except KeyError:
                pass
        for g in self._groups.values():
            try:
                del self.bpf[f"dp_group{g}"][ctypes.c_int(port.port_no)]
            except KeyError:
                pass
        try:
            BPF.remove_xdp(port.name.encode(), MODE_FLAGS[port.mode])
        except Exception as e:
            if "No such device" not in str(e):
                raise DatapathError(f"detaching from {port.name} failed: {e}") from e

    def set_upcall_socket(self, port_no: int, queue: int, fd: int | None) -> None:
        """Send port_no/queue's misses to the AF_XDP socket fd (bound to that port and queue), or, with
        None, to nobody (they are counted lost)."""
        if port_no not in self.ports or not 0 <= queue < self.config.max_queues:
            raise DatapathError(f"no port {port_no} or queue {queue} out of range 0..{self.config.max_queues - 1}")
        table = self.bpf["upcall_xsks"]
        key = ctypes.c_int(port_no * self.config.max_queues + queue)
        if fd is None:
            try:
                del table[key]
            except KeyError:
                pass
        else:
            table[key] = ctypes.c_int(fd)

    # --- megaflows ---------------------------------------------------------------------------------

    def put_flow(self, key: FlowKey, mask: FlowKey, actions: Sequence[Action]) -> int:
        """Install (or replace) the megaflow key/mask -> actions. Returns its flow index.

        Raises ActionError for actions the fast path cannot run and MapFull when a map or the mask,
        flow or group space is full; in both cases nothing changes."""
        p = self._prepare(key, mask, actions)
        try:
            self._write_entry(p.idx, p.entry)
            self._write_stats([p])
            self._write_buckets([p.place[0]])
        except Exception:
            self._abandon(p)  # nothing names it: the mirror, the slot, the groups and the mask go back
            raise
        self._committed(p)
        self._write_count()
        self._write_simple()
        return p.idx

    def put_flows(self, items: Sequence[tuple[FlowKey, FlowKey, Sequence[Action]]]) -> list[int | Exception]:
        """put_flow for a batch (an upcall batch's new megaflows): the entries and then the buckets are
        written with one BPF_MAP_UPDATE_BATCH each instead of a syscall per megaflow, in the order the fast
        path needs (an entry before the bucket that names it). Per item: its flow index, or the exception
        put_flow would have raised (nothing changed for that one)."""
        out: list[int | Exception] = []
        pending: list[tuple[int, _Pending]] = []
        fkeys: set[bytes] = set()  # the megaflows of this batch
        for i, (key, mask, actions) in enumerate(items):
            try:
                p = self._prepare(key, mask, actions)
                if p.fkey in fkeys:  # the same megaflow twice in one batch (rare): write what came before it
                    self._abandon(p)  # first, then prepare this one again, so that it replaces it as put_flow would
                    self._flush(pending, out)
                    pending, fkeys = [], set()
                    p = self._prepare(key, mask, actions)
            except Exception as e:
                out.append(e)
                continue
            out.append(p.idx)
            pending.append((i, p))
            fkeys.add(p.fkey)
        self._flush(pending, out)
        return out

    def _flush(self, pending: list[tuple[int, _Pending]], out: list[int | Exception]) -> None:
        if not pending:
            return
        ps = [p for _i, p in pending]
        try:
            self._batch_update("mf_entries", [struct.pack("<I", p.idx) for p in ps], [p.entry for p in ps])
            for p in ps:
                self._gens[p.idx] = struct.unpack_from("<I", p.entry)[0]
            self._write_stats(ps)
            self._write_buckets({p.place[0] for p in ps})
        except DatapathError as e:
            for i, p in reversed(pending):  # the mirror's ways go back in the order they were taken
                self._abandon(p)
                out[i] = e
            return
        for p in ps:
            self._committed(p)
        self._write_count()
        self._write_simple()

    def _batch_update(self, name: str, keys: list[bytes], values: list[bytes]) -> None:
        """BPF_MAP_UPDATE_BATCH: every key of keys, or DatapathError."""
        table = self.bpf[name]
        count = ctypes.c_uint32(len(keys))
        kbuf = ctypes.create_string_buffer(b"".join(keys))
        vbuf = ctypes.create_string_buffer(b"".join(values))
        r = libbcc.bpf_update_batch(table.map_fd, kbuf, vbuf, ctypes.byref(count))
        if r < 0:
            err = -r if r != -1 else ctypes.get_errno()
            raise DatapathError(f"writing {name} in a batch failed: {os.strerror(err)}")

    def _prepare(self, key: FlowKey, mask: FlowKey, actions: Sequence[Action]) -> _Pending:
        """Everything of put_flow but the three map writes: encode, take a slot, a mask and groups."""
        masked = key.masked(mask)
        mask_raw = bytes(mask)
        new_mask = mask_raw not in self._masks
        if new_mask and len(self._masks) >= self.config.max_masks:
            raise MapFull(f"all {self.config.max_masks} megaflow masks are in use")
        group_taken: list[int] = []

        def group_for(ports: frozenset[int]) -> int:
            g = self._group_acquire(ports)
            group_taken.append(g)
            return g

        try:
            acts = tuple(actions)
            recs = self._enc_cache.get(acts)
            if recs is None:
                recs = dpif.encode_actions(acts, max_actions=self.config.max_actions,
                                           max_port=self.config.max_ports, group_for=group_for)
                if not group_taken and len(self._enc_cache) < 4096:
                    self._enc_cache[acts] = recs  # no group reference taken: safe to reuse as is
            idx = self._alloc_idx()
        except Exception:
            for g in group_taken:
                self._group_release(g)
            raise
        mid = self._mask_acquire(mask_raw) if new_mask else self._masks[mask_raw]
        if not new_mask:
            self._mask_refs[mid] += 1
        fkey = dpif.mf_key_bytes(mid, masked)
        place = dpif.mf_place(fkey, self._seed, self._n_buckets, mask_words(mask_raw))
        try:
            prev = self._take_way(place, fkey, idx)
        except MapFull:
            self._free_idx.appendleft(idx)  # never written: the next megaflow may have it at once
            for g in group_taken:
                self._group_release(g)
            self._mask_release(mid)
            raise
        old = self._flows.get(fkey)
        gen = 0 if self._fresh else self._read_gen(idx)
        gen = gen + 1 if gen & 1 == 0 else gen + 2
        flags = dpif.MF_F_SIMPLE if dpif.is_simple_match(fkey[8:], mask_raw, recs) else 0
        entry = dpif.encode_entry(gen, recs, self.config.max_actions, fkey[8:], mid, flags)
        return _Pending(idx, mid, fkey, place, prev, entry, old, group_taken, self._fresh)

    def _take_way(self, place: tuple[int, int], fkey: bytes, idx: int) -> int | None:
        """Name idx in fkey's way of its bucket (in the mirror: written by the caller). Returns the slot the way
        named before (the megaflow fkey being replaced), or None if it was free. MapFull for a tag another
        megaflow holds in that bucket (a hash collision) or a bucket with no free way: nothing changes, and
        the megaflow's packets take the slow path."""
        b, tag = place
        owner = self._places.get(place)
        if owner is not None and owner != fkey:
            raise MapFull(f"megaflow hash collision in bucket {b} (its packets take the slow path)")
        ways = self._buckets.get(b)
        if ways is None:
            ways = self._buckets[b] = [0] * (2 * dpif.MF_BUCKET_WAYS)
        n = dpif.MF_BUCKET_WAYS
        if owner is not None:
            j = ways.index(tag, 0, n)
            prev, ways[n + j] = ways[n + j], idx
            return prev
        if 0 not in ways[:n]:
            raise MapFull(f"megaflow bucket {b} is full ({n} megaflows; its packets take the slow path)")
        j = ways.index(0, 0, n)
        ways[j], ways[n + j] = tag, idx
        self._places[place] = fkey
        return None

    def _give_way(self, place: tuple[int, int], prev: int | None) -> None:
        """Undo _take_way: the way names prev again, or is free (and the bucket gone when empty)."""
        b, tag = place
        ways = self._buckets[b]
        n = dpif.MF_BUCKET_WAYS
        j = ways.index(tag, 0, n)
        if prev is not None:
            ways[n + j] = prev
            return
        ways[j] = ways[n + j] = 0
        del self._places[place]
        if not any(ways):
            del self._buckets[b]

    def _write_buckets(self, buckets: Iterable[int]) -> None:
        """These buckets as the mirror has them (all ways free for one it no longer holds), in one batch."""
        order = sorted(buckets)
        self._batch_update("mf_buckets", [struct.pack("<I", b) for b in order],
                           [dpif.MF_BUCKET.pack(*self._buckets.get(b, _NO_WAYS)) for b in order])

    def _committed(self, p: _Pending) -> None:
        """Its bucket names it: record it, and retire the megaflow it replaced."""
        self._flows[p.fkey] = (p.idx, p.mid)
        if p.groups:
            self._flow_group[p.idx] = p.groups[0]
        if p.old:
            self._mask_release(p.old[1])  # the replaced flow's reference to the same mask
            self._retire([p.old[0]])
        if dpif.ENTRY_HEADER.unpack_from(p.entry)[3] & dpif.MF_F_SIMPLE:
            self._simple_add(p.idx, struct.unpack_from("<I", p.fkey, 8)[0])

    def _abandon(self, p: _Pending) -> None:
        """The megaflow could not go in: give back its way, the slot, the groups and the mask."""
        self._give_way(p.place, p.prev)
        self._kill([p.idx])
        self._free_idx.append(p.idx)
        for g in p.groups:
            self._group_release(g)
        self._mask_release(p.mid)

    def del_flow(self, key: FlowKey, mask: FlowKey) -> bool:
        """Delete the megaflow key/mask; False if there is none."""
        return self.del_flows([(key, mask)])[0]

    def del_flows(self, items: Sequence[tuple[FlowKey, FlowKey]]) -> list[bool]:
        """Delete megaflows (key, mask) in one go: their buckets are written with one BPF_MAP_UPDATE_BATCH, then
        their entries' generations turned even with another (EMC entries naming them stop matching), before
        their slots are free again; the count is written once. Per item: whether there was one."""
        out: list[bool] = []
        gone: list[tuple[int, int]] = []   # (slot, mask id)
        buckets: set[int] = set()
        for key, mask in items:
            mask_raw = bytes(mask)
            mid = self._masks.get(mask_raw)
            fkey = dpif.mf_key_bytes(mid, key.masked(mask)) if mid is not None else b""
            found = self._flows.pop(fkey, None)
            out.append(found is not None)
            if found is not None:
                place = dpif.mf_place(fkey, self._seed, self._n_buckets, mask_words(mask_raw))
                self._give_way(place, None)
                buckets.add(place[0])
                gone.append(found)
        if gone:
            self._write_buckets(buckets)
            self._retire([idx for idx, _mid in gone])
            for _idx, mid in gone:
                self._mask_release(mid)
            self._write_count()
            self._write_simple()
        return out

    def flush_flows(self) -> int:
        """Delete every megaflow (and so every EMC entry's target). Returns how many went."""
        masks = {mid: FlowKey.from_bytes(raw) for raw, mid in self._masks.items()}
        return sum(self.del_flows([(FlowKey.from_bytes(fkey[8:]), masks[mid])
                                   for fkey, (_idx, mid) in list(self._flows.items())]))

    def dump_flows(self) -> list[Megaflow]:
        """Every megaflow with its actions and its packets, bytes and last use summed over CPUs (read from the
        maps, as the read-only tools read them)."""
        return self.reader.dump_flows()

    def flow_stats_all(self) -> dict[int, tuple[int, int, int]]:
        """(packets, bytes, last used) of every slot ever used, read in batches (BPF_MAP_LOOKUP_BATCH): a few
        syscalls for 200k megaflows instead of one each."""
        return self.reader.flow_stats_all(self._next_idx)

    @property
    def hash_seed(self) -> int:
        """mf_hash()'s seed for this datapath's megaflows' places in mf_buckets (with mf_seed() per subtable)."""
        return self._seed

    @property
    def n_flows(self) -> int:
        return len(self._flows)

    @property
    def n_masks(self) -> int:
        return len(self._masks)

    def mask_order(self) -> list[int]:
        return list(self._mask_order)

    def rank_masks(self) -> list[int]:
        """Re-sort the subtables by hits since the last ranking (dpcls does this every second)."""
        hits_now = self._percpu_sums("mf_mask_hits", self._mask_order)
        recent = {m: hits_now[m] - self._mask_hits_seen.get(m, 0) for m in self._mask_order}
        self._mask_hits_seen.update(hits_now)
        order = dpif.rank_masks(self._mask_order, recent)
        if order != self._mask_order:  # unchanged: no write (the maps stay still on an idle switch)
            self._write_order(order)
        return list(self._mask_order)

    def flush_emc(self) -> None:
        """Empty every CPU's EMC and mask hints (both refill from megaflow hits), and start the EMC's probe
        sampler again (emc.c: every CPU probes)."""
        for name, n in (("emc_entries", self.config.emc_entries), ("mf_hints", self.config.hint_entries),
                        ("emc_sampler", 1)):
            table = self.bpf[name]
            zero = table.Leaf()
            for i in range(n):
                table[ctypes.c_uint32(i)] = zero

    def set_emc_insert_inv_prob(self, inv: int) -> None:
        """Insert into the EMC on 1 in inv megaflow hits (OVS's emc-insert-inv-prob); 0 disables."""
        if not 0 <= inv <= 0xFFFFFFFF:
            raise ValueError(f"emc insert inverse probability {inv} is out of range 0..4294967295")
        cfg = self.bpf["dp_config"]
        cur = cfg[ctypes.c_uint32(0)]
        cur.emc_insert_inv_prob = inv
        cfg[ctypes.c_uint32(0)] = cur

    def _hash_seed(self) -> int:
        """mf_hash()'s seed: the running datapath's, or a new random one for new maps (before any megaflow)."""
        cfg = self.bpf["dp_config"]
        cur = cfg[ctypes.c_uint32(0)]
        if not cur.hash_seed:
            cur.hash_seed = int.from_bytes(os.urandom(4), "little") or 1
            cfg[ctypes.c_uint32(0)] = cur
        return int(cur.hash_seed)

    def set_simple_match(self, enabled: bool) -> None:
        """Use (the default) or skip the simple match (xdp/simple_match.h); off, every packet is parsed and goes
        through the EMC and the megaflow cache, which shows what the simple match saves."""
        cfg = self.bpf["dp_config"]
        cur = cfg[ctypes.c_uint32(0)]
        cur.flags = (cur.flags & ~DP_CFG_NO_SIMPLE) | (0 if enabled else DP_CFG_NO_SIMPLE)
        cfg[ctypes.c_uint32(0)] = cur

    def set_mask_hints(self, enabled: bool) -> None:
        """Use (the default) or ignore the per-CPU mask hints; off shows the cost of a full subtable walk."""
        cfg = self.bpf["dp_config"]
        cur = cfg[ctypes.c_uint32(0)]
        cur.flags = (cur.flags & ~1) | (0 if enabled else 1)
        cfg[ctypes.c_uint32(0)] = cur

    # --- counters ----------------------------------------------------------------------------------

    def stats(self) -> DpStats:
        return self.reader.stats()

    def port_stats(self, port_no: int) -> PortStats:
        return self.reader.port_stats(port_no)

    def bucket_stats(self, base: int, n: int) -> list[tuple[int, int]]:
        """(packets, bytes) the fast path counted in select-group bucket slots base..base+n-1."""
        return self.reader.bucket_stats(base, n)

    def zero_buckets(self, base: int, n: int) -> None:
        """Start bucket counter slots at zero (a group got them; an earlier one may have used them)."""
        r = self._map_reader("dp_bucket_stats")
        zero = bytes(r.stride * r.ncpu)
        for k in range(base, min(base + n, dpif.BUCKET_SLOTS)):
            self._raw_update("dp_bucket_stats", struct.pack("<I", k), zero)

    @staticmethod
    def _meter_value(pktps: bool, bands: Sequence[tuple[int, int, int, int]]) -> bytes:
        """struct dp_meter: its bands' buckets full, the refill clock now (bpf_ktime_get_ns is CLOCK_MONOTONIC)."""
        raw = struct.pack("<QII", time.monotonic_ns(), 1 if pktps else 0, len(bands))
        for btype, rate, burst, prec in bands:
            raw += struct.pack("<qQQII", burst, rate, burst, btype, prec)
        return raw + bytes(32 * (dpif.METER_MAX_BANDS - len(bands)))

    def set_upcall_limit(self, index: int, rate: int, burst: int) -> None:
        """The upcall limit of port index (0: the whole datapath's): rate upcalls/s with a bucket of burst; rate 0
        is no limit. What goes over is dropped in XDP, counted as DropReason.UPCALL_LIMIT (and lost)."""
        bands = [(1, rate, max(burst, 1) * 10**9, 0)] if rate else []
        self._raw_update("dp_upcall_meters", struct.pack("<I", index), self._meter_value(True, bands))

    def set_meter(self, slot: int, pktps: bool, bands: Sequence[tuple[int, int, int, int]]) -> None:
        """Write meter slot's bands (type, rate, bucket size in tokens, prec_level), their buckets full, and zero
        its counters (a new or changed meter)."""
        self._raw_update("dp_meters", struct.pack("<I", slot), self._meter_value(pktps, bands))
        r = self._map_reader("dp_meter_stats")
        zero = bytes(r.stride * r.ncpu)
        per = 1 + dpif.METER_MAX_BANDS
        for k in range(slot * per, slot * per + per):
            self._raw_update("dp_meter_stats", struct.pack("<I", k), zero)

    def meter_stats(self, slot: int) -> list[tuple[int, int]]:
        """(packets, bytes) that went into meter slot, then each band's (the packets over its rate)."""
        per = 1 + dpif.METER_MAX_BANDS
        sums = self._map_reader("dp_meter_stats").sums(range(slot * per, slot * per + per), "<QQ")
        return [(v[0], v[1]) if v else (0, 0) for v in sums]

    def _map_reader(self, name: str) -> MapReader:
        """The reader of one of this process's maps (the same code the read-only tools use)."""
        r = self._readers.get(name)
        if r is None:
            r = self._readers[name] = MapReader(self.bpf[name].map_fd, name)
        return r

    def map_usage(self) -> dict[str, tuple[int, int]]:
        """(entries in use, max entries) of the maps that fill up."""
        return {
            "mf_entries": (len(self._flows), self.config.max_flows),
            "mf_masks": (len(self._masks), self.config.max_masks),
            "dp_groups": (len(self._groups), N_GROUPS),
            "dp_ports": (len(self.ports), self.config.max_ports - 1),
        }

    # --- internals ---------------------------------------------------------------------------------

    def _percpu_sums(self, name: str, keys: Iterable[int]) -> dict[int, int]:
        table = self.bpf[name]
        return {k: sum(int(v) for v in table.getvalue(ctypes.c_uint32(k))) for k in keys}

    def flow_stats(self, idx: int) -> tuple[int, int, int]:
        """(packets, bytes, last used ns) of megaflow slot idx, summed over CPUs. A deleted megaflow's
        totals stay readable until its slot is reused (oldest freed first, long after)."""
        vals = self.bpf["mf_stats"].getvalue(ctypes.c_uint32(idx))
        return (sum(v.packets for v in vals), sum(v.bytes for v in vals), max(v.used_ns for v in vals))

    def _read_gen(self, idx: int) -> int:
        gen = self._gens.get(idx)
        if gen is None:
            gen = self._gens[idx] = int(self.bpf["mf_entries"][ctypes.c_uint32(idx)].gen)
        return gen

    def _write_entry(self, idx: int, raw: bytes) -> None:
        self._raw_update("mf_entries", struct.pack("<I", idx), raw)
        self._gens[idx] = struct.unpack_from("<I", raw)[0]

    def _write_count(self) -> None:
        """mf_count: how many megaflows there are, for the read-only tools (DatapathReader.n_flows)."""
        self._raw_update("mf_count", _KEY0, struct.pack("<Q", len(self._flows)))

    # --- the simple match (xdp/simple_match.h) ------------------------------------------------------
    # mf_simple is a hint the fast path checks against the megaflow itself (alive, MF_F_SIMPLE, in_port and
    # dl_type), so its ways are written after the entries they name and may lag a deletion.

    def _simple_add(self, idx: int, port: int) -> None:
        ways = self._simple.setdefault(port, [])
        if len(ways) < dpif.MF_SIMPLE_WAYS and 0 <= port < self.config.max_ports:
            ways.append(idx)  # a fifth dl_type on one port: its megaflow is found by the parse and the caches
            self._simple_port[idx] = port
            self._simple_dirty.add(port)

    def _simple_drop(self, idx: int) -> None:
        port = self._simple_port.pop(idx, None)
        if port is not None:
            self._simple[port].remove(idx)
            self._simple_dirty.add(port)

    def _write_simple(self) -> None:
        """The changed ports' mf_simple entries, in one batch."""
        if not self._simple_dirty:
            return
        ports = sorted(self._simple_dirty)
        values = []
        for port in ports:
            ways = self._simple.get(port, [])
            values.append(struct.pack(f"<{dpif.MF_SIMPLE_WAYS}I", *[i + 1 for i in ways],
                                      *[0] * (dpif.MF_SIMPLE_WAYS - len(ways))))
            if not ways:
                self._simple.pop(port, None)
        try:
            self._batch_update("mf_simple", [struct.pack("<I", p) for p in ports], values)
        except DatapathError as e:  # a way left stale names a dead megaflow: the fast path parses instead
            log.warning("%s: the simple match's ways not written: %s", self.name, e)
        self._simple_dirty.clear()

    def _raw_update(self, name: str, key: bytes, value: bytes) -> None:
        """One map update straight through libbpf: bcc's table objects cost more than the syscall."""
        table = self.bpf[name]
        r = libbcc.bpf_update_elem(table.map_fd, ctypes.c_char_p(key), ctypes.c_char_p(value), 0)
        if r < 0:
            err = -r if r != -1 else ctypes.get_errno()
            if err in (errno.E2BIG, errno.ENOMEM, errno.ENOSPC):
                raise MapFull(f"{name} is full ({table.max_entries} entries)")
            raise DatapathError(f"writing {name} failed: {os.strerror(err)}")

    def _write_stats(self, ps: list[_Pending]) -> None:
        """Start each new megaflow's counters at zero, or at the totals of the one it replaces (on the first CPU),
        in one batch. A slot never used since the maps were made is zero already and skipped."""
        keys, values = [], []
        for p in ps:
            if p.old is None and p.fresh:
                continue
            first = _STATS.pack(*self.flow_stats(p.old[0])) if p.old is not None else _STATS_ZERO
            keys.append(struct.pack("<I", p.idx))
            values.append(first + _STATS_ZERO * (self._ncpus - 1))
        if keys:
            self._batch_update("mf_stats", keys, values)

    def _kill(self, idxs: list[int]) -> None:
        """Turn these slots' generations even (keeping their actions: a packet that read the entry before still
        runs them whole), written in one batch: EMC entries naming them stop matching."""
        fd = self.bpf["mf_entries"].map_fd
        size = ctypes.sizeof(self.bpf["mf_entries"].Leaf)
        buf = ctypes.create_string_buffer(size)
        keys, values = [], []
        for idx in idxs:
            key = struct.pack("<I", idx)
            r = libbcc.bpf_lookup_elem(fd, ctypes.c_char_p(key), buf)
            if r < 0:
                err = -r if r != -1 else ctypes.get_errno()
                raise DatapathError(f"reading mf_entries[{idx}] failed: {os.strerror(err)}")
            gen = struct.unpack_from("<I", buf)[0]
            if gen & 1:
                gen += 1
                keys.append(key)
                values.append(struct.pack("<I", gen) + buf.raw[4:size])
            self._gens[idx] = gen
        if keys:
            self._batch_update("mf_entries", keys, values)

    def _retire(self, idxs: list[int]) -> None:
        """Deleted or replaced megaflows' slots: generations even, groups released, the slots free again."""
        self._kill(idxs)
        for idx in idxs:
            self._simple_drop(idx)
            g = self._flow_group.pop(idx, None)
            if g is not None:
                self._group_release(g)
            self._free_idx.append(idx)

    def _alloc_idx(self) -> int:
        # reuse the oldest freed index only once the never-used ones are gone: the longest grace period
        if self._next_idx < self.config.max_flows:
            self._next_idx += 1
            self._fresh = self._next_idx - 1 >= self._clean_from
            return self._next_idx - 1
        if self._free_idx:
            self._fresh = False
            return self._free_idx.popleft()
        raise MapFull(f"all {self.config.max_flows} megaflow slots are in use")

    def _mask_acquire(self, mask_raw: bytes) -> int:
        mid = next(m for m in range(self.config.max_masks) if m not in self._mask_refs)
        table = self.bpf["mf_masks"]
        table[ctypes.c_uint32(mid)] = table.Leaf.from_buffer_copy(mask_raw)
        self._masks[mask_raw] = mid
        self._mask_refs[mid] = 1
        self._mask_hits_seen[mid] = self._percpu_sums("mf_mask_hits", [mid])[mid]
        self._write_order(self._mask_order + [mid])
        return mid

    def _mask_release(self, mid: int) -> None:
        self._mask_refs[mid] -= 1
        if self._mask_refs[mid] > 0:
            return
        del self._mask_refs[mid]
        self._masks = {raw: m for raw, m in self._masks.items() if m != mid}
        self._write_order([m for m in self._mask_order if m != mid])

    def _write_order(self, order: list[int]) -> None:
        table = self.bpf["mf_order"]
        slot = 1 - self._order_slot
        raw = struct.pack("<II", len(order), 0) + bytes(order).ljust(self.config.max_masks, b"\0")
        table[ctypes.c_uint32(slot)] = table.Leaf.from_buffer_copy(raw.ljust(ctypes.sizeof(table.Leaf), b"\0"))
        cfg = self.bpf["dp_config"]
        cur = cfg[ctypes.c_uint32(0)]
        cur.mf_order_slot = slot
        cfg[ctypes.c_uint32(0)] = cur
        self._order_slot = slot
        self._mask_order = list(order)

    def _group_acquire(self, ports: frozenset[int]) -> int:
        g = self._groups.get(ports)
        if g is None:
            free = [i for i in range(N_GROUPS) if i not in self._group_refs]
            if not free:
                raise dpif.GroupsFull(f"all {N_GROUPS} output groups are in use")
            g = free[0]
            table = self.bpf[f"dp_group{g}"]
            for p in self._devmap_ports(table):
                del table[ctypes.c_int(p)]
            for p in ports:
                if p in self.ports:
                    table[ctypes.c_int(p)] = ctypes.c_int(self.ports[p].ifindex)
            self._groups[ports] = g
            self._group_refs[g] = 0
            self._write_skb_targets(1 + g)  # the skb path finds the group's members here
        self._group_refs[g] += 1
        return g

    def _group_release(self, g: int) -> None:
        self._group_refs[g] -= 1
        if self._group_refs[g] == 0:
            del self._group_refs[g]
            self._groups = {ps: x for ps, x in self._groups.items() if x != g}

    def _group_ports(self, g: int) -> frozenset[int]:
        return next((ps for ps, x in self._groups.items() if x == g), frozenset())

    def attached_ports(self) -> list[Port]:
        """Ports as the maps record them (for a reopened datapath, which attached none itself)."""
        return [Port(p.port_no, p.name, p.ifindex, p.mode, p.tx_path) for p in self.reader.ports()]

    def _recover(self) -> None:
        """Rebuild flows, masks, order and groups from pinned maps left by an earlier process."""
        cfg = self.bpf["dp_config"][ctypes.c_uint32(0)]
        self._order_slot = int(cfg.mf_order_slot) & 1
        order = self.bpf["mf_order"][ctypes.c_uint32(self._order_slot)]
        self._mask_order = [int(order.ids[i]) for i in range(int(order.n_masks))]
        masks = self.bpf["mf_masks"]
        for mid in self._mask_order:
            self._masks[bytes(masks[ctypes.c_uint32(mid)])] = mid
            self._mask_refs[mid] = 0
        used = set()
        entries = self.bpf["mf_entries"]
        for b, tag, idx in self.reader.bucket_ways():
            raw_entry = bytes(entries[ctypes.c_uint32(idx)])
            _gen, _n, mid, flags = dpif.ENTRY_HEADER.unpack_from(raw_entry)
            fkey = dpif.mf_key_bytes(mid, dpif.entry_key(raw_entry, self.config.max_actions))
            if flags & dpif.MF_F_SIMPLE:
                self._simple_add(idx, struct.unpack_from("<I", fkey, 8)[0])
            self._flows[fkey] = (idx, mid)
            self._take_way((b, tag), fkey, idx)
            self._mask_refs[mid] = self._mask_refs.get(mid, 0) + 1
            used.add(idx)
            _gen, recs = dpif.decode_entry(raw_entry)
            for r in recs:
                if struct.unpack_from("<H", r)[0] == dpif.ActType.GROUP:
                    g = struct.unpack_from("<I", r, 4)[0]
                    self._flow_group[idx] = g
                    self._group_refs[g] = self._group_refs.get(g, 0) + 1
        for g in self._group_refs:
            self._groups[frozenset(self._devmap_ports(self.bpf[f"dp_group{g}"]))] = g
        empty = {m for m, n in self._mask_refs.items() if n == 0}
        if empty:  # subtables whose last flow went with the earlier process
            for mid in empty:
                del self._mask_refs[mid]
            self._masks = {raw: m for raw, m in self._masks.items() if m not in empty}
            self._write_order([m for m in self._mask_order if m not in empty])
        self._next_idx = max(used) + 1 if used else 0
        self._free_idx = deque(i for i in range(self._next_idx) if i not in used)
        self._simple_dirty.update(range(self.config.max_ports))  # the ways as the recovered megaflows have them
        self._write_count()  # an earlier process may have died between a change and its count
        self._write_simple()
        if self._flows:
            log.info("%s: recovered %d megaflows in %d subtables from %s", self.name, len(self._flows),
                     len(self._masks), self.pin_dir)

    def _devmap_ports(self, table: object) -> list[int]:
        """The port numbers set in a devmap (an array: every index iterates, only set ones look up)."""
        out = []
        for p in range(self.config.max_ports):
            try:
                table[ctypes.c_int(p)]  # type: ignore[index]
            except KeyError:
                continue
            out.append(p)
        return out

    # --- for tests and benchmarks --------------------------------------------------------------------

    def load_program(self, fn: str) -> int:
        """Load one more program of the compiled source (e.g. baseline.c's) and return its fd."""
        return int(self.bpf.load_func(fn, BPF.XDP).fd)

    def attach_aux(self, ifname: str, fn: str) -> None:
        """Attach one of baseline.c's programs (native mode) to an interface that is not a port, e.g.
        xdp_sink on the far end of a benchmark's veth. It stays until the interface goes."""
        try:
            BPF.attach_xdp(ifname.encode(), self.bpf.load_func(fn, BPF.XDP), XDP_FLAGS_DRV_MODE)
        except Exception as e:
            raise DatapathError(f"attaching {fn} to {ifname} failed: {e}") from e

    @staticmethod
    def detach_aux(ifname: str) -> None:
        try:
            BPF.remove_xdp(ifname.encode(), XDP_FLAGS_DRV_MODE)
        except Exception as e:
            raise DatapathError(f"detaching from {ifname} failed: {e}") from e

    @property
    def emc_prog_fd(self) -> int:
        return int(self.prog_emc.fd)



def remove_pinned(name: str, pin_dir: Path) -> list[str]:
    """Detach every port a pinned datapath's maps record and remove its pins; the names of the ports detached.
    Compiles nothing (the maps are read through ctl/datapath/view.py)."""
    gone = []
    try:
        ports = DatapathReader(name, DatapathConfig(), lambda m: MapReader.open(pin_dir / m)).ports()
    except Exception as e:  # unreadable pins: nothing to detach that we can know of
        log.warning("%s: cannot read its ports (%s); removing the pins only", pin_dir, e)
        ports = []
    for p in ports:
        detach_tc(p.ifindex)
        if p.mode in MODE_FLAGS:
            try:
                BPF.remove_xdp(p.name.encode(), MODE_FLAGS[p.mode])
                gone.append(p.name)
            except Exception as e:
                log.warning("detaching from %s failed: %s", p.name, e)
    shutil.rmtree(pin_dir, ignore_errors=True)
    return gone


def remove_datapath(name: str, pin_root: Path = PIN_ROOT, run_dir: Path = RUN_DIR) -> list[str]:
    """``xdpswitch dpctl del-dp``: detach every port of the datapath and remove its pins and run file. Returns
    the ports detached; DatapathError when there is no such datapath."""
    root = pin_root / name
    run = run_dir / f"{name}.json"
    if not root.is_dir() and not run.exists():
        raise DatapathError(f"no datapath named {name!r} (nothing under {root} or {run})")
    gone = []
    if root.is_dir():
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            gone += remove_pinned(name, d)
        shutil.rmtree(root, ignore_errors=True)
    run.unlink(missing_ok=True)
    return gone


def detach_tc(ifindex: int) -> None:
    """Remove dp_skb_tx from a port's ingress (our filter only; the clsact qdisc stays for others)."""
    try:
        with IPRoute() as ipr:
            ipr.tc("del-filter", "bpf", ifindex, 1, prio=TC_PRIO, parent="ffff:fff2")
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            log.warning("removing the skb path from ifindex %d failed: %s", ifindex, e)
