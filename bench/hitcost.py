"""What an EMC hit and a megaflow hit cost, against the baseline, measured in turns, and optionally against
another build of the fast path in the same process.

    sudo .venv/bin/python -m bench.hitcost [--rounds N] [--against DIR] [--json]

Each round runs, on one CPU with BPF_PROG_TEST_RUN, the baseline program (parse + redirect), an EMC hit (the
EMC on) and a megaflow hit (the EMC off: not probed; one subtable) from port 1, and a simple-match hit (a
port-to-port megaflow, xdp/simple_match.h) from port 2, one after another; the figures are the medians over the
rounds of ns/packet and of the per-round ratios (EMC hit / baseline, megaflow hit / EMC hit, simple-match hit /
baseline). This VM's speed drifts by tens of per cent over seconds, and two processes running the same build can
differ by as much: a round's three cases share its conditions, so the ratios hold where the absolute
figures do not. Every program run is attached somewhere for the whole run (the baseline to a spare veth), so
no test run changes the kernel's XDP dispatcher (bench.fastpath's docstring says why), and each case runs
5 times (WARM_RUNS) before the measured rounds.

--against DIR loads a second datapath from the fast-path sources in DIR (an xdp/ directory of another
checkout: what $XDPSWITCH_XDP_DIR names for the switch) and runs its three cases in the same rounds, so two
builds are compared under the same conditions. Both load through this checkout's Python, so DIR must keep
the maps it knows (a change to the programs, not to the map layout).

Targets (issue 13): EMC hit <= 1.5x the baseline, megaflow hit <= 1.3x an EMC hit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench import help_text
from bench.fastpath import frame_for, sh
from ctl.datapath.dpif import DpOutput
from ctl.datapath.dpif_xdp import Datapath, DatapathConfig, DatapathError
from ctl.datapath.flowkey import mask_for, parse
from ctl.datapath.progrun import run_xdp

CASES = ("baseline", "emc", "megaflow", "simple")
WARM_RUNS = 5  # runs of each case before the measured rounds


def build_cases(dp: Datapath, ifindex: int, ifindex2: int, repeat: int) -> dict[str, Callable[[], float]]:
    """The four cases of one datapath, each a callable returning ns/packet of one run."""
    base_fd = dp.load_program("xdp_baseline")
    emc_frame, mf_frame = frame_for(dport=54), frame_for()
    m = mask_for("in_port", "dl_dst", "tp_dst")
    dp.put_flow(parse(emc_frame, 1), m, [DpOutput(2)])
    dp.put_flow(parse(mf_frame, 1), m, [DpOutput(2)])
    # port 2's every IPv4 frame back out of port 2 (its peer drops them): port 1's frames never take it
    dp.put_flow(parse(mf_frame, 2), mask_for("in_port", "dl_type"), [DpOutput(2)])

    def run(fd: int, f: bytes, at: int = ifindex) -> float:
        return float(run_xdp(fd, f, at, repeat=repeat).duration_ns)

    def emc() -> float:
        dp.set_emc_insert_inv_prob(1)
        return run(dp.emc_prog_fd, emc_frame)

    def megaflow() -> float:
        dp.set_emc_insert_inv_prob(0)  # not probed: a megaflow hit
        return run(dp.emc_prog_fd, mf_frame)

    return {"baseline": lambda: run(base_fd, emc_frame), "emc": emc, "megaflow": megaflow,
            "simple": lambda: run(dp.emc_prog_fd, emc_frame, ifindex2)}


def summary(samples: dict[str, list[float]]) -> dict[str, float]:
    b, e, m, s = samples["baseline"], samples["emc"], samples["megaflow"], samples["simple"]
    return {
        **{f"{k}_ns": statistics.median(v) for k, v in samples.items()},
        "emc_vs_baseline": statistics.median(x / y for x, y in zip(e, b, strict=True)),
        "megaflow_vs_emc": statistics.median(x / y for x, y in zip(m, e, strict=True)),
        "simple_vs_baseline": statistics.median(x / y for x, y in zip(s, b, strict=True)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=help_text(__doc__))
    ap.add_argument("--rounds", type=int, default=40, help="rounds of the cases in turns (default 40)")
    ap.add_argument("--repeat", type=int, default=10000, help="packets per run (default 10000)")
    ap.add_argument("--against", type=Path, help="another build's xdp/ directory, run in the same rounds")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench.hitcost needs root", file=sys.stderr)
        return 2
    if args.against is not None and not (args.against / "emc.c").is_file():
        print(f"bench.hitcost: {args.against} has no emc.c (give an xdp/ directory)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {1 if (os.cpu_count() or 1) > 1 else 0})
    tag = f"xshc{os.getpid() % 10000}"
    srcs: dict[str, Path | None] = {"this build": None}
    if args.against is not None:
        srcs["--against"] = args.against.resolve()
    builds: dict[str, dict[str, Callable[[], float]]] = {}
    with contextlib.ExitStack() as cleanup:
        for n, (label, src) in enumerate(srcs.items()):
            for i in (1, 2, 3):  # each build its own two ports and a spare pair (a device takes one XDP program)
                a, b = f"{tag}{n}a{i}", f"{tag}{n}b{i}"
                sh(f"ip link add {a} type veth peer name {b}")
                cleanup.callback(subprocess.run, ["ip", "link", "del", a], capture_output=True)
                sh(f"ip link set {a} up && ip link set {b} up")
            if src is not None:
                os.environ["XDPSWITCH_XDP_DIR"] = str(src)
            try:
                dp = Datapath(f"{tag}{n}", DatapathConfig(max_masks=8, max_flows=1024))
            except (DatapathError, KeyError) as e:  # bcc's KeyError: a map this checkout's code names is not there
                print(f"bench.hitcost: the fast path in {src or 'xdp/'} does not load with this checkout's maps: "
                      f"{e!r} (--against compares builds of the same map layout)", file=sys.stderr)
                return 2
            finally:
                os.environ.pop("XDPSWITCH_XDP_DIR", None)
            cleanup.callback(dp.close, unpin=True)
            p1 = dp.add_port(f"{tag}{n}a1", 1)
            p2 = dp.add_port(f"{tag}{n}a2", 2)
            dp.attach_aux(f"{tag}{n}b2", "xdp_sink")
            dp.refresh_tx_paths()  # port 2's peer has an XDP program: output is a redirect, not the skb path
            dp.attach_aux(f"{tag}{n}a3", "xdp_baseline")  # attached throughout: no dispatcher change per run
            builds[label] = build_cases(dp, p1.ifindex, p2.ifindex, args.repeat)
        samples: dict[str, dict[str, list[float]]] = {label: {c: [] for c in CASES} for label in builds}
        for cases in builds.values():  # out of the window a dispatcher change leaves behind
            for c in CASES:
                for _ in range(WARM_RUNS):
                    cases[c]()
        for _ in range(args.rounds):
            for label, cases in builds.items():
                for c in CASES:
                    samples[label][c].append(cases[c]())
    report = {label: summary(s) for label, s in samples.items()}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"medians of {args.rounds} rounds, {args.repeat} packets a run")
    print(f"{'build':12} {'baseline':>9} {'EMC hit':>8} {'megaflow':>9} {'simple':>7} {'EMC/base':>9} {'mf/EMC':>7} "
          f"{'simple/base':>12}")
    for label, r in report.items():
        print(f"{label:12} {r['baseline_ns']:9.0f} {r['emc_ns']:8.0f} {r['megaflow_ns']:9.0f} {r['simple_ns']:7.0f} "
              f"{r['emc_vs_baseline']:9.2f} {r['megaflow_vs_emc']:7.2f} {r['simple_vs_baseline']:12.2f}")
    print("targets: EMC hit <= 1.5x the baseline, megaflow hit <= 1.3x an EMC hit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
