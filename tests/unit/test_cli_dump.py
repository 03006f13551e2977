"""dpctl dump-flows writes its JSON by hand (100k megaflows in under half a second): it is the JSON a dump of
the same rows through json.dumps would be, and the text lines are ovs-dpctl's."""

from __future__ import annotations

import json

import pytest

from ctl import cli
from ctl.datapath import dpif
from ctl.datapath.flowkey import FlowKey, build, format_key, mask_for
from ctl.datapath.view import FlowColumns


class Rows:
    def __init__(self, cols: FlowColumns) -> None:
        self.cols = cols

    def dump_columns(self) -> FlowColumns:
        return self.cols


def columns() -> FlowColumns:
    k1, m1 = build(in_port=1, dl_type=0x0800, nw_proto=17, tp_dst=53), mask_for("in_port", "dl_type", "nw_proto",
                                                                                 "tp_dst")
    k2, m2 = build(in_port=2, dl_dst="02:00:00:00:00:01"), mask_for("in_port", "dl_dst")
    shared = (dpif.DpOutput(2),)
    return FlowColumns([bytes(k1.masked(m1)), bytes(k2.masked(m2)), bytes(k1.masked(m1))],
                       [bytes(m1), bytes(m2), bytes(m1)], [shared, (dpif.DpDrop(),), shared], [5, 0, 7],
                       [500, 0, 700], [dpif.now_ns() - 2_000_000_000, 0, 1], [0, 1, 0], [0, 1, 2])


def test_json_dump_is_what_json_dumps_writes(capsys: pytest.CaptureFixture[str]) -> None:
    c = columns()
    cli.dump_flows(Rows(c), cli.Format.json)  # type: ignore[arg-type]
    got = json.loads(capsys.readouterr().out)
    want = []
    for k, m, a, p, b, mid in zip(c.keys, c.masks, c.actions, c.packets, c.bytes, c.mask_ids, strict=True):
        want.append({"match": format_key(FlowKey.from_bytes(k), FlowKey.from_bytes(m)), "packets": p, "bytes": b,
                     "actions": [str(x) for x in a], "mask_id": mid})
    assert [{k: v for k, v in g.items() if k != "used_s"} for g in got] == want
    assert got[1]["used_s"] is None and 1.5 < got[0]["used_s"] < 60


def test_text_dump_lines(capsys: pytest.CaptureFixture[str]) -> None:
    cli.dump_flows(Rows(columns()), cli.Format.text)  # type: ignore[arg-type]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("in_port(1),eth_type(0x0800),ipv4(proto=17),udp(dst=53), packets:5, bytes:500, used:")
    assert lines[0].endswith(", actions:2") and lines[1].endswith("used:never, actions:drop")
