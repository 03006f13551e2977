"""Read-only tools at scale: `xdpswitch dpctl show`, `stats`, `dpctl dump-flows` and `top` on a datapath with
100k megaflows, as a user runs them (a new process each), against the command line's own start-up
(`xdpswitch --help`) measured in the same run; and what one refresh of `top` costs in its process.

    sudo .venv/bin/python -m bench.dpctl [--json] [--flows N]

Target (not a test): dpctl show and stats under 0.5 s at 100k megaflows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import help_text
from bench.revalidator import RULES, fill
from ctl.datapath.dpif_xdp import Datapath, DatapathConfig
from ctl.pipeline.openflow_tables import OpenFlowTables, parse_flow
from ctl.udpif.upcall import Udpif

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "ctl.cli"]


def top_refresh(name: str, flows: int) -> dict[str, float]:
    """What one refresh of `xdpswitch top` costs in its process (a sample and a frame): with the top-megaflow
    dump (every ceil(megaflows / 10k) seconds), without it (the other seconds), and without it when the
    daemon answers how many megaflows there are (its upcall-show; here a reply with that figure)."""
    from rich.console import Console

    from ctl.datapath.view import DatapathView
    from ctl.top import Top

    console = Console(file=open(os.devnull, "w"), width=200)  # noqa: SIM115
    rows: dict[str, float] = {}
    with DatapathView.open(name) as view:
        for label, ask in (("no daemon", None), ("daemon answers", lambda cmd: {"flows": flows})):
            top = Top(view, ask)
            top.sample()
            with_dump = without = 1e9
            for _ in range(3):
                assert top.cur is not None
                top.cur.megaflows_t = 0.0   # due: the next sample dumps
                t0 = time.perf_counter()
                top.sample()
                console.print(top.frame(name))
                with_dump = min(with_dump, time.perf_counter() - t0)
                t0 = time.perf_counter()
                top.sample()
                console.print(top.frame(name))
                without = min(without, time.perf_counter() - t0)
            rows[f"top refresh + dump ({label})"] = with_dump
            rows[f"top refresh ({label})"] = without
    return rows


def best_of(cmd: list[str], runs: int = 5) -> float:
    """Best wall time in seconds of cmd as a new process."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=help_text(__doc__))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--flows", type=int, default=100_000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench.dpctl needs root", file=sys.stderr)
        return 2
    tables = OpenFlowTables()
    tables.add_many(parse_flow(r) for r in RULES)
    name = "xsbenchdpctl"
    dp = Datapath(name, DatapathConfig(max_flows=262144))
    try:
        u = Udpif(dp, tables, lambda port, frames: len(frames), lambda: [1, 2], flow_limit=10_000_000)
        fill(dp, u, args.flows, 0)
        assert dp.n_flows == args.flows, f"{dp.n_flows} megaflows, not {args.flows}"
        base = best_of([*CLI, "--help"])
        rows = {"cli start-up (--help)": base}
        for label, cmd in (("dpctl show", ["dpctl", "show"]), ("stats", ["stats"]),
                           ("dpctl dump-flows", ["dpctl", "dump-flows", "-f", "json"]),
                           ("top, first frame", ["top", "--interval", "0.1", "--iterations", "1"])):
            rows[label] = best_of([*CLI, *cmd, "--name", name], runs=3 if "dump" in label else 5)
        rows.update(top_refresh(name, args.flows))
    finally:
        dp.close(unpin=True)
    if args.json:
        print(json.dumps({"megaflows": args.flows, "seconds": rows}, indent=1))
        return 0
    print(f"{args.flows} megaflows, best of runs, each a new process:")
    for label, s in rows.items():
        print(f"  {label:<38} {s * 1000:7.0f} ms  ({s / base:.2f}x the command line's start-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
