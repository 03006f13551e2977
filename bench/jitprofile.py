"""Where the forwarding CPU's time goes, down to the instructions of the XDP programs: bench.sidebyside's
topology, generator and targets, one target forwarding while perf samples the switch's CPU.

    sudo .venv/bin/python -m bench.jitprofile [--target xdpswitch] [--flows N] [--runs R] [--top K] [--json]

perf (Debian's linux-perf) records cpu-clock samples on CPU 1 at 10 kHz over R runs of 3M frames. The report gives
each symbol's time per delivered packet (its share of the samples times CPU 1's busy time per packet), then, for
each BPF program among them, its hottest instructions, read from its JIT image (BPF_OBJ_GET_INFO_BY_FD) and
disassembled by objdump (binutils): perf's own annotation of BPF programs needs a perf built with libopcodes,
which Debian's is not. cpu-clock is a timer interrupt, not a precise event: a sample names the instruction the
interrupt found waiting, mostly the one after a slow load or a call's return, so read each hot instruction with
the one before it (printed too). Perf's sampling adds to the time per packet; compare shares and targets
measured the same way, not these figures with bench.sidebyside's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import help_text
from bench.sidebyside import (
    OTHER_CPU,
    SETUPS,
    SWITCH_CPU,
    TARGETS,
    Bench,
    cpu_busy_ns,
    exit_on_sigterm,
    run_in_own_netns,
)
from ctl.datapath.progrun import prog_ids, prog_image

FREQ = 10000
BPF_SYM = re.compile(r"bpf_prog_([0-9a-f]{16})_(\w+)")


def perf_samples(data: Path) -> list[tuple[str, int]]:
    """(symbol, offset into it) of every sample in a perf.data."""
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym,symoff"], capture_output=True,
                         text=True, check=True).stdout
    samples = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        sym, _, off = parts[1].rpartition("+0x")
        if sym:
            samples.append((sym, int(off, 16)))
        else:
            samples.append((parts[1], -1))
    return samples


def disassemble(code: bytes) -> list[tuple[int, str]]:
    """(offset, instruction) of x86-64 machine code, by objdump."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(code)
        f.flush()
        out = subprocess.run(["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", f.name], capture_output=True,
                             text=True, check=True).stdout
    insns = []
    for line in out.splitlines():
        m = re.match(r"\s+([0-9a-f]+):\s+(?:[0-9a-f]{2} )+\s*(.*)", line)
        if m:
            insns.append((int(m.group(1), 16), " ".join(m.group(2).split())))
    return insns


def hottest(samples: Counter[int], code: bytes, top: int) -> list[dict[str, Any]]:
    """The top instructions of one program by samples, each with its share of the program and the one before."""
    insns = disassemble(code)
    at = {off: i for i, (off, _) in enumerate(insns)}
    total = sum(samples.values())
    rows = []
    for off, n in samples.most_common(top):
        i = at.get(off)
        rows.append({"offset": off, "share": round(n / total, 4),
                     "insn": insns[i][1] if i is not None else "?",
                     "before": insns[i - 1][1] if i else ""})
    return rows


def profile(target: str, flows: int, runs: int, top: int) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        b = Bench(f"xsj{os.getpid() % 10000}", stack, 3_000_000)
        work = Path(tempfile.mkdtemp(prefix="xsjit"))
        stack.callback(shutil.rmtree, work, True)
        with SETUPS[target](b):
            b.run(flows, max(20000, 2 * flows))   # warm up: first packets go to the slow path
            time.sleep(0.3)
            data = work / "perf.data"
            perf = subprocess.Popen(["perf", "record", "-q", "-C", str(SWITCH_CPU), "-e", "cpu-clock", "-F", str(FREQ),
                                     "-o", str(data), "--", "sleep", "3600"], stdout=subprocess.DEVNULL)
            try:
                time.sleep(0.5)
                delivered, c0 = 0, cpu_busy_ns(SWITCH_CPU)
                for _ in range(runs):
                    delivered += int(b.run(flows)["delivered"])
                busy = cpu_busy_ns(SWITCH_CPU) - c0
            finally:
                perf.send_signal(signal.SIGINT)
                perf.wait(60)
            images = {}   # tag -> image, of the programs loaded now (the target's go with it)
            for pid in prog_ids():
                with contextlib.suppress(OSError):
                    img = prog_image(pid)
                    images[img.tag] = img
        samples = perf_samples(data)
    by_sym = Counter(s for s, _ in samples)
    ns_per_packet = busy / max(delivered, 1)
    total = max(sum(by_sym.values()), 1)
    symbols = [{"symbol": s, "ns_per_packet": round(ns_per_packet * n / total, 1), "share": round(n / total, 4)}
               for s, n in by_sym.most_common() if n / total >= 0.005]
    programs = []
    for s, n in by_sym.most_common():
        m = BPF_SYM.fullmatch(s)
        if not m or n / total < 0.005:
            continue
        found = images.get(m.group(1))
        offsets = Counter(off for sym, off in samples if sym == s)
        programs.append({"symbol": s, "ns_per_packet": round(ns_per_packet * n / total, 1),
                         "hottest": hottest(offsets, found.jited, top) if found else []})
    return {"target": target, "flows": flows, "runs": runs, "delivered": delivered,
            "ns_per_packet": round(ns_per_packet, 1), "samples": total, "symbols": symbols, "programs": programs}


def main() -> int:
    ap = argparse.ArgumentParser(description=help_text(__doc__))
    ap.add_argument("--target", default="xdpswitch", choices=TARGETS, help="what forwards (bench.sidebyside's)")
    ap.add_argument("--flows", type=int, default=1, help="flows the generator cycles through (default 1)")
    ap.add_argument("--runs", type=int, default=5, help="runs of 3M frames while perf records (default 5)")
    ap.add_argument("--top", type=int, default=15, help="instructions listed per program (default 15)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    ap.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench.jitprofile needs root", file=sys.stderr)
        return 2
    missing = [t for t in ("perf", "objdump") if not shutil.which(t)]
    if missing:
        print(f"bench.jitprofile needs {' and '.join(missing)} (Debian: linux-perf, binutils)", file=sys.stderr)
        return 2
    if not args.in_netns:
        return run_in_own_netns("bench.jitprofile")
    exit_on_sigterm()
    os.sched_setaffinity(0, {OTHER_CPU})
    r = profile(args.target, args.flows, args.runs, args.top)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"{r['target']} at {r['flows']} flow{'s' if r['flows'] > 1 else ''}: {r['delivered']} packets delivered, "
          f"CPU {SWITCH_CPU} {r['ns_per_packet']} ns a packet under perf, {r['samples']} samples")
    print(f"{'symbol':56} {'ns/packet':>9} {'share':>7}")
    for s in r["symbols"]:
        print(f"{s['symbol']:56} {s['ns_per_packet']:9.1f} {100 * s['share']:6.1f}%")
    for p in r["programs"]:
        print(f"\n{p['symbol']}: {p['ns_per_packet']} ns a packet; its hottest instructions (offset, share of the "
              f"program's samples, the instruction, the one before it)")
        for h in p["hottest"]:
            print(f"  {h['offset']:#7x} {100 * h['share']:5.1f}%  {h['insn']:40}  after: {h['before']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
