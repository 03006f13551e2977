"""The read-only datapath view (``ctl/datapath/view.py``): what ``dpctl`` and ``stats`` read from the pinned
maps is what the datapath itself holds, and the kernel refuses every write through the view."""

from __future__ import annotations

import ctypes
import errno
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from ctl.datapath.bpfsys import bpf
from ctl.datapath.dpif import DpDrop, DpOutput, DpSetIpv4Dst
from ctl.datapath.dpif_xdp import Datapath
from ctl.datapath.flowkey import mask_for, parse
from ctl.datapath.view import DatapathView, MapReader, ViewError
from tests.bpf.conftest import CONFIG, Bench

BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM = 2, 3


def udp(dport: int = 53) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst="10.0.0.2")
                 / UDP(sport=1000, dport=dport) / (b"x" * 18))


def snapshot(view: DatapathView) -> dict[str, list[tuple[bytes, bytes]]]:
    out = {}
    for p in sorted(view.pin_dir.iterdir()):
        m = view.map(p.name)
        if m.type in (3, 17):  # prog array, xskmap: not readable from user space
            continue
        if m.type in (14,):    # devmap: no batch lookups
            out[p.name] = [(k, b"".join(m.lookup(k) or [])) for k in m.keys()]
        else:
            out[p.name] = sorted(m.batch())
    return out


def test_the_view_reads_what_the_datapath_holds_and_writes_nothing(tb: Bench) -> None:
    key = parse(udp(), 1)
    tb.dp.put_flow(key, mask_for("in_port", "dl_dst"), [DpSetIpv4Dst("10.0.0.3"), DpOutput(2), DpOutput(3)])
    tb.dp.put_flow(key, mask_for("tp_dst"), [DpDrop()])
    tb.dp.put_flow(parse(udp(54), 2), mask_for("in_port", "tp_dst"), [DpOutput(1)])
    for _ in range(3):
        tb.run(udp())
    with DatapathView.open(tb.dp.name) as view:
        before = snapshot(view)
        assert view.pin_dir == tb.dp.pin_dir
        mine = sorted((f.match(), str(f.actions), f.packets, f.bytes, f.mask_id) for f in tb.dp.dump_flows())
        theirs = sorted((f.match(), str(f.actions), f.packets, f.bytes, f.mask_id) for f in view.dump_flows())
        assert mine == theirs and len(mine) == 3
        assert view.map_usage() == tb.dp.map_usage()
        assert view.stats() == tb.dp.stats() and view.stats().packets >= 3
        assert view.mask_order() == tb.dp.mask_order()
        assert [(p.port_no, p.ifindex) for p in view.ports()] == sorted((n, i) for n, i in tb.ifindex.items())
        assert view.port_stats(1) == tb.dp.port_stats(1)
        assert snapshot(view) == before  # reading changed no byte of any map
        # the kernel enforces read-only: every write through the view's fds is refused
        flows = view.map("mf_buckets")
        k, v = next((k, v) for k, v in flows.batch() if any(v))
        for cmd, attr in ((BPF_MAP_UPDATE_ELEM, _elem(flows, k, v)), (BPF_MAP_DELETE_ELEM, _elem(flows, k, None))):
            with pytest.raises(OSError) as e:
                bpf(cmd, attr)
            assert e.value.errno == errno.EPERM
        assert snapshot(view) == before


def test_the_view_counts_megaflows_from_the_count_the_datapath_keeps(tb: Bench) -> None:
    # mf_count: written by the Datapath after every change, read by the tools in one lookup (not the buckets)
    def counts() -> tuple[int, int]:
        with DatapathView.open(tb.dp.name) as view:
            return view.n_flows(), view.map_usage()["mf_entries"][0]

    m = mask_for("in_port", "tp_dst")
    assert counts() == (0, 0)
    tb.dp.put_flow(parse(udp(1), 1), m, [DpOutput(2)])
    assert counts() == (1, 1)
    results = tb.dp.put_flows([(parse(udp(p), 1), m, [DpOutput(2)]) for p in range(2, 12)])
    assert all(isinstance(r, int) for r in results) and counts() == (11, 11)
    tb.dp.put_flow(parse(udp(1), 1), m, [DpDrop()])  # a replaced megaflow is not a new one
    assert counts() == (11, 11)
    assert tb.dp.del_flow(parse(udp(1), 1), m) and counts() == (10, 10)
    assert not tb.dp.del_flow(parse(udp(1), 1), m) and counts() == (10, 10)
    # a process that died between a change and its count: the next one to adopt the datapath counts again
    tb.dp.bpf["mf_count"][ctypes.c_uint32(0)] = ctypes.c_uint64(999)
    assert counts() == (999, 999)
    again = Datapath(tb.dp.name, CONFIG)
    try:
        assert again.n_flows == 10 and counts() == (10, 10)
    finally:
        again.close()  # no unpin: the first datapath keeps its maps
    assert tb.dp.flush_flows() == 10 and counts() == (0, 0)


def _elem(m: MapReader, key: bytes, value: bytes | None) -> ctypes.Array[ctypes.c_char]:
    kb = ctypes.create_string_buffer(key)
    vb = ctypes.create_string_buffer(value or b"\0")
    attr = ctypes.create_string_buffer(32)
    struct.pack_into("<IIQQQ", attr, 0, m.fd, 0, ctypes.addressof(kb), ctypes.addressof(vb) if value else 0, 0)
    _elem.keep = (kb, vb)  # type: ignore[attr-defined]  # alive until the call
    return attr


def test_a_datapath_that_is_not_there_is_a_clear_error() -> None:
    with pytest.raises(ViewError, match="no datapath named 'xs-none' is running"):
        DatapathView.open("xs-none")
