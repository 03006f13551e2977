"""The benches' run-time statistics (progrun.enable_run_time_stats, prog_run_time) against the kernel."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from ctl.datapath import progrun
from ctl.datapath.netdev import link_info
from tests.bpf.conftest import Bench

FRAME = bytes(Ether() / IP() / UDP())
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


@pytest.fixture
def stats_sysctl_off() -> Iterator[None]:
    """kernel.bpf_stats_enabled at 0 for the test, as it was after: with it set (by anyone, before), the kernel
    times every run whatever the fd does, and "only while the fd is open" cannot be seen."""
    before = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("0")
    try:
        yield
    finally:
        STATS_SYSCTL.write_text(before)


@pytest.mark.usefixtures("stats_sysctl_off")
def test_runs_are_timed_while_the_stats_fd_is_open_and_only_then(tb: Bench) -> None:
    li = link_info(ifindex=tb.ifindex[1])
    assert li is not None and li.xdp_prog_id   # the program attached to port 1 (what bench.sidebyside times)
    pid = li.xdp_prog_id
    fd = progrun.enable_run_time_stats()
    try:
        t0, n0 = progrun.prog_run_time(pid)
        progrun.run_xdp(tb.dp.emc_prog_fd, FRAME, tb.ifindex[1], repeat=50)
        t1, n1 = progrun.prog_run_time(pid)
        assert n1 - n0 == 50 and t1 > t0
    finally:
        os.close(fd)
    progrun.run_xdp(tb.dp.emc_prog_fd, FRAME, tb.ifindex[1], repeat=50)
    assert progrun.prog_run_time(pid) == (t1, n1)   # closed: nothing more counted


def test_an_unknown_program_is_a_clear_error() -> None:
    with pytest.raises(OSError, match="no BPF program"):
        progrun.prog_run_time(2**31 - 1)


def test_a_programs_jit_image_is_what_its_kernel_symbol_names(tb: Bench) -> None:
    """prog_image (bench.jitprofile's disassembly): the program on port 1 is emc_rx; its tag and name are those of
    the kernel symbol perf puts its samples under, and its image is the JIT's machine code (the x86-64 JIT starts
    every program with a 5-byte nop, or endbr64 where indirect branch tracking is on)."""
    li = link_info(ifindex=tb.ifindex[1])
    assert li is not None and li.xdp_prog_id
    img = progrun.prog_image(li.xdp_prog_id)
    assert img.name == "emc_rx" and img.id in progrun.prog_ids()
    assert f" bpf_prog_{img.tag}_emc_rx" in Path("/proc/kallsyms").read_text()
    assert img.jited[:5] == bytes.fromhex("0f1f440000") or img.jited[:4] == bytes.fromhex("f30f1efa")
    assert len(img.jited) > 4096   # the parser, the EMC and every action: thousands of instructions
