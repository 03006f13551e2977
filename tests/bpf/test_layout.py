"""The ctypes mirrors match the structs as the C compiler laid them out (Cilium's alignchecker idea).

bcc builds each map's key and value types from clang's own layout, so they are the compiled C."""

import ctypes
import dataclasses

from ctl.datapath import dpif
from ctl.datapath.dpif_xdp import DP_PORT_SLOTS
from ctl.datapath.flowkey import FlowKey, field_layout
from tests.bpf.conftest import Bench


def c_layout(ctype: type) -> dict[str, tuple[int, int]]:
    out = {}
    for name, t in ctype._fields_:  # type: ignore[attr-defined]
        if not name.startswith("__pad"):
            out[name] = (getattr(ctype, name).offset, ctypes.sizeof(t))
    return out


def test_flow_key_matches_compiled_c(bench: Bench) -> None:
    compiled = bench.dp.bpf["mf_masks"].Leaf
    assert ctypes.sizeof(compiled) == ctypes.sizeof(FlowKey) == 104
    assert c_layout(compiled) == field_layout()


def test_mf_key_entry_and_action_sizes(bench: Bench) -> None:
    bucket = bench.dp.bpf["mf_buckets"].Leaf
    assert ctypes.sizeof(bucket) == dpif.MF_BUCKET.size == 64
    assert c_layout(bucket) == {"tag": (0, 4 * dpif.MF_BUCKET_WAYS), "idx": (32, 4 * dpif.MF_BUCKET_WAYS)}
    assert bench.dp.bpf["mf_buckets"].max_entries == bench.dp.config.n_buckets >= 2 * bench.dp.config.max_flows
    assert bench.dp.bpf["dp_port_slots"].max_entries == DP_PORT_SLOTS  # dpif_xdp's copy of dp_consts.h
    entry = bench.dp.bpf["mf_entries"].Leaf
    n = bench.dp.config.max_actions
    assert ctypes.sizeof(entry) == len(dpif.encode_entry(1, [], n))
    assert c_layout(entry)["mask_id"] == (6, 1) and c_layout(entry)["flags"] == (7, 1)
    assert dpif.ENTRY_HEADER.size == 8
    assert c_layout(bench.dp.bpf["mf_simple"].Leaf) == {"idx": (0, 4 * dpif.MF_SIMPLE_WAYS)}
    assert c_layout(entry)["actions"] == (8, n * dpif.ACTION_SIZE)
    assert c_layout(entry)["key"] == (8 + n * dpif.ACTION_SIZE, 104)
    action = dict(entry._fields_)["actions"]._type_  # type: ignore[attr-defined]
    assert c_layout(action) == {"type": (0, 2), "arg16": (2, 2), "arg32": (4, 4), "data": (8, 16)}


def test_enums_match(bench: Bench) -> None:
    scratch = bench.dp.bpf["dp_scratch"].Leaf._type_  # per CPU: an array of the struct
    assert c_layout(scratch)["stats"] == (0, 8 * len(dpif.Stat))  # view.py reads the counters there
    assert bench.dp.bpf["dp_drops"].max_entries == len(dpif.DropReason)


def test_every_map_is_pinned_and_known(bench: Bench) -> None:
    """What a restart checks for (half-removed pins) is what bcc pins."""
    from ctl.datapath.dpif_xdp import map_names

    assert {p.name for p in bench.dp.pin_dir.iterdir()} == map_names()


def test_port_structs_match(bench: Bench) -> None:
    stats = bench.dp.bpf["dp_port_stats"].Leaf._type_  # per CPU: an array of the struct
    assert [n for n, _t in stats._fields_] == [f.name for f in dataclasses.fields(dpif.PortStats)]
    assert c_layout(bench.dp.bpf["dp_port_cfg"].Leaf) == {"ifindex": (0, 4), "flags": (4, 4)}
