"""Side by side: one forwarding test through a bare XDP redirect, this switch, tc with a cls_bpf redirect,
the Linux bridge and Open vSwitch's userspace datapath (AF_XDP ports), at 1, 1000 and 100000 flows,
interleaved.

    sudo .venv/bin/python -m bench.sidebyside [--json] [--quick] [--rounds N] [--png FILE] [--prog-time]

Topology (a network namespace of its own, removed at the end, so the bridge's netfilter hooks can be off
without touching the machine's): veths gen<->in and out<->sink.
A generator (BPF_PROG_RUN's XDP live-frames mode, XDP_TX on gen) sends 64-byte UDP frames whose ports cycle
over N flows into in; the switch under test forwards in -> out; an XDP program on sink counts and drops.
The switch's work runs on CPU 1 (in's NAPI as a thread pinned there; Open vSwitch's PMD thread there); the
generator, the sink's NAPI thread and every control process run on CPU 0. Per run: Mpps counted at the
sink, and switch CPU ns/packet (CPU 1's busy time over the packets delivered: elapsed time less its cpuidle
residency, which is precise to a microsecond where /proc/stat's busy time is sampled at the tick). Each round
measures every target once per flow count, in the same order, so drift spreads evenly; the table gives the
best of the rounds (most Mpps, fewest ns/packet) and the ratios to the bare redirect of the same flow count, then
the median of the rounds' ns/packet and its ratio to the bare redirect's median; the lines on issue 13's targets
add the median of the rounds' own ratios (each round's bare redirect over the switch, a few seconds apart, so
the VM's slower drift cancels; the JSON has it for every target). With --prog-time, also what a
run of the XDP program on in costs in place (median of the rounds; the switch's includes its tail call), from the
kernel's run-time statistics, enabled for the bench's lifetime through BPF_ENABLE_STATS: they add two clock reads
to every run of every program, so the CPU figures of such a run are not comparable with a run without it.

Each target as a user would run it:
  - bare: an XDP program on in that redirects every frame to out through a devmap (the floor);
  - bare-read: the same after reading the frame's Ethernet, IPv4 and UDP headers: the generator wrote the
    frame on the other CPU, so its first read here is a cache miss that any switch which looks at the packet
    pays and the bare redirect does not;
  - xdpswitch: ``xdpswitch start`` with in and out as ports 1 and 2 and ``in_port=1,actions=output:2``;
  - xdpswitch-nosimple: the same with ``--no-simple-match``: every frame is parsed and looked up in the EMC (at
    1 flow, EMC hits), to show what the simple match saves;
  - xdpswitch-noemc: the same with ``--emc-insert-inv-prob 0 --no-simple-match`` (the EMC stays empty: every
    packet is parsed, skips the EMC probe and is a megaflow hit), to show what the EMC saves with few flows and
    costs with many;
  - tc: a cls_bpf program on in's ingress (clsact, direct-action) that bpf_redirect()s to out;
  - bridge: a Linux bridge of in and out, the destination MAC static on out;
  - ovs: ovs-vswitchd with a netdev bridge, in and out as ``type=afxdp`` ports, pmd-cpu-mask on CPU 1,
    ``in_port=in,actions=output:out``.
The report is a table and, with --png, a plot of Mpps and ns/packet (matplotlib).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bcc import BPF  # type: ignore[import-untyped]
from pyroute2 import IPRoute, NetlinkError
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from bench import help_text
from ctl.datapath.netdev import link_info
from ctl.datapath.progrun import enable_run_time_stats, prog_run_time, run_xdp

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("bare", "bare-read", "xdpswitch", "xdpswitch-nosimple", "xdpswitch-noemc", "tc", "bridge", "ovs")
FLOWS = (1, 1000, 100000)
SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
XDP_FLAGS_DRV_MODE = 1 << 2
SWITCH_CPU, OTHER_CPU = 1, 0
TARGET_VS_BARE = {1: 0.8, 100000: 0.7}   # issue 13: the switch's CPU per packet against the bare redirect's

PROGRAMS = r"""
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <uapi/linux/pkt_cls.h>

BPF_ARRAY(gen_flows_n, u32, 1);
BPF_PERCPU_ARRAY(gen_next, u32, 1);
BPF_PERCPU_ARRAY(sink_count, u64, 1);
BPF_DEVMAP(bare_out, 1);
BPF_ARRAY(tc_out, u32, 1);

/* the generator: each frame's UDP ports name the next of N flows (source port 1024 + n % 32768,
   destination 2000 + n / 32768; no checksum to fix: it is zero) */
int gen_flows(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct udphdr *udp = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
    u32 k = 0;
    u32 *n = gen_flows_n.lookup(&k), *c = gen_next.lookup(&k);
    if ((void *)(udp + 1) > end || !n || !c)
        return XDP_TX;
    u32 v = *c + 1;
    if (v >= *n)
        v = 0;
    *c = v;
    udp->source = htons(1024 + (v & 0x7fff));
    udp->dest = htons(2000 + (v >> 15));
    return XDP_TX;
}

/* the bare redirect after reading the frame's Ethernet, IPv4 and UDP headers (what any parser must touch) */
BPF_PERCPU_ARRAY(read_sum, u64, 1);
int bare_read(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(struct ethhdr);
    struct udphdr *udp = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
    u32 k = 0;
    u64 *s = read_sum.lookup(&k);
    if ((void *)(udp + 1) > end || !s)
        return XDP_DROP;
    *s += eth->h_proto + ip->protocol + ip->saddr + ip->daddr + udp->source + udp->dest;
    return bare_out.redirect_map(0, XDP_DROP);
}

int sink(struct xdp_md *ctx)
{
    u32 k = 0;
    u64 *c = sink_count.lookup(&k);
    if (c)
        *c += 1;
    return XDP_DROP;
}

int bare(struct xdp_md *ctx)
{
    return bare_out.redirect_map(0, XDP_DROP);
}

int tc_redirect(struct __sk_buff *skb)
{
    u32 k = 0;
    u32 *out = tc_out.lookup(&k);
    return out ? bpf_redirect(*out, 0) : TC_ACT_SHOT;
}
"""


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True)


def frame() -> bytes:
    return bytes(Ether(src=SRC_MAC, dst=DST_MAC) / IP(src="10.0.0.1", dst="10.0.0.2", ttl=64)
                 / UDP(sport=1024, dport=2000, chksum=0) / (b"x" * 18))


def cpu_busy_ns(cpu: int) -> int:
    """CPU cpu's busy time so far, in ns, on a clock of its own: elapsed (monotonic) minus the idle time its
    cpuidle states have counted, read while running on cpu (so no idle period is open: a CPU's idle time is
    added when it wakes). Precise to a microsecond, where /proc/stat's busy fields are sampled at the
    scheduler tick (4 ms here) and a run's switch CPU is busy for about half a second. Time the hypervisor
    takes from the CPU while it runs counts as busy (/proc/stat's steal field says how much). Without cpuidle:
    the tick-sampled sum from /proc/stat."""
    states = sorted(Path(f"/sys/devices/system/cpu/cpu{cpu}/cpuidle").glob("state*/time"))
    if not states:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
                return busy * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        raise RuntimeError(f"no cpu{cpu} in /proc/stat")
    home = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})   # returns once this thread runs there
    try:
        now = time.monotonic_ns()
        idle_us = sum(int(p.read_text()) for p in states)
    finally:
        os.sched_setaffinity(0, home)
    return now - idle_us * 1000


def napi_threads(dev: str) -> list[int]:
    """The pids of dev's threaded NAPI kthreads ("napi/DEV-ID")."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                if (p / "comm").read_text().strip().startswith(f"napi/{dev}-"):
                    out.append(int(p.name))
    return out


def pin_napi(dev: str, cpu: int, realtime: bool = False) -> None:
    """Run dev's NAPI as threads (created now, or when XDP comes and goes) and pin them to cpu; realtime:
    SCHED_FIFO, so that it preempts the generator sharing its CPU (the sink must never be what drops)."""
    Path(f"/sys/class/net/{dev}/threaded").write_text("1")
    pids = napi_threads(dev)
    if not pids:
        raise RuntimeError(f"{dev} has no NAPI thread (GRO or XDP must be on)")
    for pid in pids:
        os.sched_setaffinity(pid, {cpu})
        if realtime:
            os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(50))


class Bench:
    def __init__(self, tag: str, stack: contextlib.ExitStack, n_frames: int, prog_time: bool = False) -> None:
        self.tag = tag
        self.stack = stack
        self.n_frames = n_frames
        self.prog_time = prog_time   # time the XDP program on in (the kernel's run-time statistics, on meanwhile)
        if prog_time:
            stack.callback(os.close, enable_run_time_stats())
        self.gen, self.inp, self.out, self.sink = f"{tag}g", f"{tag}i", f"{tag}o", f"{tag}s"
        for a, b in ((self.gen, self.inp), (self.out, self.sink)):
            sh(f"ip link add {a} type veth peer name {b}")
            stack.callback(sh, f"ip link del {a}", False)
        for d in (self.gen, self.inp, self.out, self.sink):
            sh(f"sysctl -qw net.ipv6.conf.{d}.disable_ipv6=1")
            sh(f"ip link set {d} up")
            sh(f"ethtool -K {d} tx off tso off gso off", False)
        # NAPI on in and sink (GRO on makes a veth take frames from its peer's XDP without a program of its
        # own), as threads: in's on the switch's CPU, sink's on the other
        for d in (self.inp, self.sink):
            sh(f"ethtool -K {d} gro on")
        self.ifindex = {d: socket.if_nametoindex(d) for d in (self.gen, self.inp, self.out, self.sink)}
        self.bpf = BPF(text=PROGRAMS)
        self.gen_fd = self.bpf.load_func("gen_flows", BPF.XDP).fd
        BPF.attach_xdp(self.sink.encode(), self.bpf.load_func("sink", BPF.XDP), XDP_FLAGS_DRV_MODE)
        self.bpf["bare_out"][0] = self.bpf["bare_out"].Leaf(self.ifindex[self.out])
        self.bpf["tc_out"][0] = self.bpf["tc_out"].Leaf(self.ifindex[self.out])
        pin_napi(self.sink, OTHER_CPU, realtime=True)
        pin_napi(self.inp, SWITCH_CPU)

    def delivered(self) -> int:
        return sum(self.bpf["sink_count"][0])

    def run(self, flows: int, n: int | None = None) -> dict[str, float]:
        """Send n frames over flows flows; Mpps at the sink and CPU 1's ns per delivered packet."""
        n = n or self.n_frames
        self.bpf["gen_flows_n"][0] = self.bpf["gen_flows_n"].Leaf(flows)
        pin_napi(self.inp, SWITCH_CPU)   # XDP coming or going may have made new NAPI threads
        pin_napi(self.sink, OTHER_CPU, realtime=True)
        li = link_info(self.inp) if self.prog_time else None
        prog = li.xdp_prog_id if li else 0
        p0 = prog_run_time(prog) if prog else (0, 0)
        d0, c0, t0 = self.delivered(), cpu_busy_ns(SWITCH_CPU), time.perf_counter()
        run_xdp(self.gen_fd, frame(), self.ifindex[self.gen], repeat=n, live=True, batch_size=64)
        time.sleep(0.05)   # what is in flight arrives
        dt = time.perf_counter() - t0 - 0.05
        got, busy = self.delivered() - d0, cpu_busy_ns(SWITCH_CPU) - c0
        out = {"mpps": got / dt / 1e6, "ns_per_packet": busy / max(got, 1), "delivered": got, "sent": n}
        if prog:
            p1 = prog_run_time(prog)
            out["prog_ns"] = (p1[0] - p0[0]) / max(p1[1] - p0[1], 1)
        return out


def run_in_own_netns(module: str) -> int:
    """Run the module again, with this process's arguments and --in-netns, inside a network namespace of its own
    (ip netns exec also gives it its own /sys, where bpffs is mounted again for the switch's pins); the namespace
    and everything in it go at the end. A SIGTERM or SIGINT here is passed on, and the run takes it as an exit
    (exit_on_sigterm): it takes its targets down, then the namespace goes."""
    ns = f"xsbn{os.getpid() % 10000}"
    sh(f"ip netns add {ns}")
    try:
        # ip netns exec and sh both exec: the process started is, in the end, the module's
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "sh", "-c",
                                 "mount -t bpf bpf /sys/fs/bpf && exec \"$0\" \"$@\"", sys.executable, "-m",
                                 module, *sys.argv[1:], "--in-netns"], cwd=ROOT)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
        return proc.wait()
    finally:
        sh(f"ip netns del {ns}", False)


def exit_on_sigterm() -> None:
    """Take a SIGTERM or SIGINT as sys.exit, once: the targets' context managers then take them down (the switch,
    its pins, XDP), and a second signal (Ctrl-C reaches both processes, and the outer one passes it on) does not
    cut that short."""
    def leave(signum: int, _frame: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        sys.exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, leave)


# --- the targets: each a context manager that sets the switch up on in and out, and takes it down ---------


@contextlib.contextmanager
def bare(b: Bench, prog: str = "bare") -> Iterator[None]:
    BPF.attach_xdp(b.inp.encode(), b.bpf.load_func(prog, BPF.XDP), XDP_FLAGS_DRV_MODE)
    try:
        yield
    finally:
        BPF.remove_xdp(b.inp.encode(), XDP_FLAGS_DRV_MODE)


@contextlib.contextmanager
def xdpswitch(b: Bench, *extra: str) -> Iterator[None]:
    name = f"{b.tag}x"
    state = Path(tempfile.mkdtemp(prefix="xsbench"))
    flows = state / "start.flows"
    flows.write_text("priority=10,in_port=1,actions=output:2\n")
    log = (state / "daemon.log").open("w")
    cli = [sys.executable, "-m", "ctl.cli"]
    proc = subprocess.Popen(["taskset", "-c", str(OTHER_CPU), *cli, "start", "--name", name, "--state-dir", str(state),
                             "--flows", str(flows), "--metrics-address", "none", "--port", f"{b.inp}=1",
                             "--port", f"{b.out}=2", *extra], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.time() + 90
        while not Path(f"/run/xdpswitch/{name}.ctl").exists():
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"xdpswitch did not start: {(state / 'daemon.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        if proc.poll() is None:
            proc.kill()
        subprocess.run([*cli, "dpctl", "del-dp", "--name", name], cwd=ROOT, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def tc(b: Bench) -> Iterator[None]:
    fn = b.bpf.load_func("tc_redirect", BPF.SCHED_CLS)
    idx = b.ifindex[b.inp]
    with IPRoute() as ipr:
        with contextlib.suppress(NetlinkError):   # a switch that ran before leaves its clsact qdisc (empty)
            ipr.tc("del", "clsact", idx)
        ipr.tc("add", "clsact", idx)
        try:
            ipr.tc("add-filter", "bpf", idx, ":1", fd=fn.fd, name=fn.name, parent="ffff:fff2", classid=1,
                   direct_action=True)
            yield
        finally:
            ipr.tc("del", "clsact", idx)


@contextlib.contextmanager
def bridge(b: Bench) -> Iterator[None]:
    br = f"{b.tag}br"
    sh(f"ip link add {br} type bridge")
    try:
        sh(f"sysctl -qw net.ipv6.conf.{br}.disable_ipv6=1")
        for d in (b.inp, b.out):
            sh(f"ip link set {d} master {br}")
        sh(f"ip link set {br} up")
        sh(f"bridge fdb add {DST_MAC} dev {b.out} master static")
        for nf in Path("/proc/sys/net/bridge").glob("bridge-nf-call-*"):
            nf.write_text("0")   # br_netfilter's hooks off, in this namespace only
        yield
    finally:
        sh(f"ip link del {br}", False)


@contextlib.contextmanager
def ovs(b: Bench) -> Iterator[None]:
    d = Path(tempfile.mkdtemp(prefix="xsbovs"))
    env = {**os.environ, "OVS_RUNDIR": str(d), "OVS_DBDIR": str(d), "OVS_LOGDIR": str(d), "OVS_SYSCONFDIR": str(d)}
    pin = ["taskset", "-c", str(OTHER_CPU)]

    def run(*cmd: str) -> None:
        subprocess.run([*cmd], check=True, capture_output=True, env=env)

    def vsctl(*args: str) -> None:
        run("ovs-vsctl", f"--db=unix:{d}/db.sock", "--timeout=30", *args)

    try:
        run("ovsdb-tool", "create", f"{d}/conf.db", "/usr/share/openvswitch/vswitch.ovsschema")
        run(*pin, "ovsdb-server", f"{d}/conf.db", f"--remote=punix:{d}/db.sock", f"--pidfile={d}/ovsdb-server.pid",
            f"--unixctl={d}/ovsdb-server.ctl", f"--log-file={d}/ovsdb-server.log", "--detach")
        vsctl("--no-wait", "init")
        vsctl("--no-wait", "set", "Open_vSwitch", ".", f"other_config:pmd-cpu-mask={1 << SWITCH_CPU:#x}")
        run(*pin, "ovs-vswitchd", f"unix:{d}/db.sock", f"--pidfile={d}/ovs-vswitchd.pid",
            f"--unixctl={d}/ovs-vswitchd.ctl", f"--log-file={d}/ovs-vswitchd.log", "--detach")
        br = f"{b.tag}ob"
        vsctl("add-br", br, "--", "set", "bridge", br, "datapath_type=netdev")
        vsctl("add-port", br, b.inp, "--", "set", "interface", b.inp, "type=afxdp", "ofport_request=1")
        vsctl("add-port", br, b.out, "--", "set", "interface", b.out, "type=afxdp", "ofport_request=2")
        run("ovs-ofctl", "-O", "OpenFlow13", "del-flows", f"unix:{d}/{br}.mgmt")
        run("ovs-ofctl", "-O", "OpenFlow13", "add-flow", f"unix:{d}/{br}.mgmt", "in_port=1,actions=output:2")
        yield
    finally:
        for p in ("ovs-vswitchd", "ovsdb-server"):
            pidfile = d / f"{p}.pid"
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
        time.sleep(1)
        for dev in (b.inp, b.out):   # what OVS may leave attached
            with contextlib.suppress(Exception):
                BPF.remove_xdp(dev.encode(), 0)
        shutil.rmtree(d, ignore_errors=True)


SETUPS: dict[str, Callable[[Bench], contextlib.AbstractContextManager[None]]] = {
    "bare": bare, "bare-read": lambda b: bare(b, "bare_read"), "xdpswitch": xdpswitch,
    "xdpswitch-noemc": lambda b: xdpswitch(b, "--emc-insert-inv-prob", "0", "--no-simple-match"),
    "xdpswitch-nosimple": lambda b: xdpswitch(b, "--no-simple-match"),
    "tc": tc, "bridge": bridge, "ovs": ovs}


def measure(b: Bench, target: str, flows: tuple[int, ...]) -> dict[int, dict[str, float]]:
    with SETUPS[target](b):
        out = {}
        for n in flows:
            b.run(n, n=max(20000, 2 * n))   # warm up: first packets go to the slow path, megaflows go in
            time.sleep(0.3)
            out[n] = b.run(n)
        return out


def report(results: dict[str, dict[int, list[dict[str, float]]]], flows: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per target and flow count the best of its rounds (most Mpps; fewest ns/packet, each on its own: a target
    the generator does not saturate delivers what is offered, and its CPU per packet is the figure), and the
    ratios to the bare redirect's best of the same flow count; the median of its rounds' ns/packet with its
    ratio to the bare redirect's median (which no single lucky round moves); and the median of the rounds' own
    ratios, each round's bare redirect over its ns/packet (paired: the VM's drift over minutes cancels within a
    round, as bench.fastpath takes its ratios in turns)."""
    rows = []
    for target, by_flows in results.items():
        for n in flows:
            runs = by_flows.get(n, [])
            if not runs:
                continue
            mpps, ns = max(r["mpps"] for r in runs), min(r["ns_per_packet"] for r in runs)
            ns_med = statistics.median(r["ns_per_packet"] for r in runs)
            bare_runs = results.get("bare", {}).get(n, [])
            bare_mpps = max((r["mpps"] for r in bare_runs), default=0.0)
            bare_ns = min((r["ns_per_packet"] for r in bare_runs), default=0.0)
            bare_med = statistics.median(r["ns_per_packet"] for r in bare_runs) if bare_runs else 0.0
            paired = (statistics.median(b["ns_per_packet"] / r["ns_per_packet"] for b, r in zip(bare_runs, runs,
                                                                                                  strict=True))
                      if bare_runs and len(bare_runs) == len(runs) else None)
            rows.append({"target": target, "flows": n, "mpps": round(mpps, 3), "ns_per_packet": round(ns, 1),
                         "mpps_vs_bare": round(mpps / bare_mpps, 2) if bare_mpps else None,
                         "bare_ns_vs_ns": round(bare_ns / ns, 2) if bare_ns else None,
                         "ns_per_packet_median": round(ns_med, 1),
                         "prog_ns_median": round(statistics.median(r["prog_ns"] for r in runs), 1)
                         if all("prog_ns" in r for r in runs) else None,
                         "bare_ns_vs_ns_median": round(bare_med / ns_med, 2) if bare_med else None,
                         "bare_ns_vs_ns_paired": round(paired, 2) if paired is not None else None,
                         "rounds": len(runs), "ns_per_packet_rounds": [round(r["ns_per_packet"], 1) for r in runs],
                         "delivered_of_sent": " ".join(f"{r['delivered']:.0f}/{r['sent']:.0f}" for r in runs),
                         "delivered_pct_rounds": [round(100 * r["delivered"] / r["sent"]) for r in runs]})
    return rows


def plot(rows: list[dict[str, Any]], flows: tuple[int, ...], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in TARGETS if any(r["target"] == t for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(targets), 1)
    for i, t in enumerate(targets):
        xs = [j + i * width for j in range(len(flows))]
        by = {r["flows"]: r for r in rows if r["target"] == t}
        for ax, key in zip(axes, ("mpps", "ns_per_packet"), strict=True):
            vals = [by[n][key] if n in by else 0 for n in flows]
            bars = ax.bar(xs, vals, width, label=t)
            if key == "ns_per_packet":
                ax.bar_label(bars, labels=[f"{by[n]['bare_ns_vs_ns']}x" if n in by and by[n]["bare_ns_vs_ns"]
                                           else "" for n in flows], fontsize=7, rotation=90, padding=2)
    for ax, title in zip(axes, ("Mpps delivered (64-byte UDP)", "switch CPU ns/packet (label: bare ns / ns)"),
                         strict=True):
        ax.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(flows))],
                      [f"{n} flow{'s' if n > 1 else ''}" for n in flows])
        ax.set_title(title)
    axes[1].set_yscale("log")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(targets), fontsize=9)
    offered = max(r["mpps"] for r in rows if r["target"] == "bare") if any(r["target"] == "bare" for r in rows) else 0
    fig.suptitle(f"bench.sidebyside: one core forwards veth to veth (the generator offers about {offered:.1f} Mpps)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=help_text(__doc__))
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--quick", action="store_true", help="one round of fewer frames")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every target (default 3)")
    ap.add_argument("--png", type=Path, help="write the plot here (matplotlib)")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"a subset of {','.join(TARGETS)}")
    ap.add_argument("--prog-time", action="store_true",
                    help="also time the XDP program on the ingress port in place (the kernel's run-time statistics, "
                         "which add two clock reads to every program run: the CPU figures of such a run are higher)")
    ap.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench.sidebyside needs root", file=sys.stderr)
        return 2
    if not args.in_netns:
        return run_in_own_netns("bench.sidebyside")
    exit_on_sigterm()
    targets = [t for t in args.targets.split(",") if t]
    bad = [t for t in targets if t not in SETUPS]
    if bad:
        print(f"unknown targets: {', '.join(bad)} (known: {', '.join(TARGETS)})", file=sys.stderr)
        return 2
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        print("bench.sidebyside needs two CPUs (one for the switch)", file=sys.stderr)
        return 2
    rounds, n_frames = (1, 1_000_000) if args.quick else (args.rounds, 3_000_000)
    os.sched_setaffinity(0, {OTHER_CPU})
    results: dict[str, dict[int, list[dict[str, float]]]] = {t: {} for t in targets}
    failed: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        b = Bench(f"xsb{os.getpid() % 10000}", stack, n_frames, args.prog_time)
        for _ in range(rounds):
            for t in targets:
                if t in failed:
                    continue
                try:
                    for n, r in measure(b, t, FLOWS).items():
                        results[t].setdefault(n, []).append(r)
                except Exception as e:  # one target that cannot run here is reported, the others go on
                    failed[t] = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    rows = report(results, FLOWS)
    if args.png:
        plot(rows, FLOWS, args.png)
    if args.json:
        print(json.dumps({"rows": rows, "failed": failed, "rounds": rounds, "frames_per_run": n_frames}, indent=1))
        return 0
    print(f"{'target':16} {'flows':>7} {'Mpps':>7} {'ns/pkt':>8} {'Mpps/bare':>9} {'bare ns/ns':>10} {'median':>8} "
          f"{'(ratio)':>7}  ns/pkt per round  % delivered per round (the rest mostly overflowed a veth ring)")
    for r in rows:
        print(f"{r['target']:16} {r['flows']:>7} {r['mpps']:7.3f} {r['ns_per_packet']:8.1f} "
              f"{r['mpps_vs_bare'] if r['mpps_vs_bare'] is not None else '-':>9} "
              f"{r['bare_ns_vs_ns'] if r['bare_ns_vs_ns'] is not None else '-':>10} {r['ns_per_packet_median']:8.1f} "
              f"{r['bare_ns_vs_ns_median'] if r['bare_ns_vs_ns_median'] is not None else '-':>7}  "
              f"{r['ns_per_packet_rounds']}  {r['delivered_pct_rounds']}"
              + (f"  program {r['prog_ns_median']} ns a run" if r["prog_ns_median"] is not None else ""))
    for t, why in failed.items():
        print(f"{t}: not measured: {why}")
    for r in rows:   # issue 13's targets
        target = TARGET_VS_BARE.get(int(r["flows"])) if r["target"] == "xdpswitch" else None
        if target is not None and r["bare_ns_vs_ns"] is not None:
            print(f"xdpswitch at {r['flows']} flow{'s' if r['flows'] > 1 else ''}: bare ns / ns {r['bare_ns_vs_ns']} "
                  f"(best rounds), {r['bare_ns_vs_ns_median']} (medians), {r['bare_ns_vs_ns_paired']} (median of the "
                  f"rounds' own ratios); target >= {target}")
    if args.png:
        print(f"plot: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
