"""BPF_PROG_TEST_RUN for XDP programs through the bpf() syscall (bcc 0.26 exposes no context or flags).

Used by the bpf test tier and bench/: run a loaded program on a frame as if it arrived on a device and
queue, get its verdict, the frame it left and the kernel's time per run; or, with ``live=True``
(BPF_F_TEST_XDP_LIVE_FRAMES), really transmit what it redirects: a packet generator in the kernel. Also what
bench/ reads of loaded programs: the kernel's run-time statistics, and a program's JIT image (bench.jitprofile).
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from ctl.datapath.bpfsys import bpf

BPF_PROG_TEST_RUN = 10
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
VERDICTS = {0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}


class XdpMd(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in
                ("data", "data_end", "data_meta", "ingress_ifindex", "rx_queue_index", "egress_ifindex")]


class _TestAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


@dataclass
class RunResult:
    verdict: int
    frame: bytes      # the frame as the program left it (empty in live mode)
    duration_ns: int  # average per run, as the kernel measured it

    @property
    def verdict_name(self) -> str:
        return VERDICTS.get(self.verdict, str(self.verdict))


def run_xdp(prog_fd: int, frame: bytes, ifindex: int, rx_queue: int = 0, repeat: int = 1,
            live: bool = False, batch_size: int = 0) -> RunResult:
    """Run an XDP program on frame as if received on ifindex/rx_queue."""
    buf_in = ctypes.create_string_buffer(bytes(frame), len(frame))
    out_size = len(frame) + 512
    buf_out = ctypes.create_string_buffer(out_size)
    md = XdpMd(data=0, data_end=len(frame), data_meta=0, ingress_ifindex=ifindex, rx_queue_index=rx_queue)
    attr = _TestAttr(prog_fd=prog_fd, data_size_in=len(frame), data_in=ctypes.addressof(buf_in),
                     repeat=repeat, ctx_size_in=ctypes.sizeof(md), ctx_in=ctypes.addressof(md))
    if live:
        attr.flags = BPF_F_TEST_XDP_LIVE_FRAMES
        attr.batch_size = batch_size
    else:
        attr.data_size_out = out_size
        attr.data_out = ctypes.addressof(buf_out)
    bpf(BPF_PROG_TEST_RUN, attr, "BPF_PROG_TEST_RUN failed")
    data = b"" if live else buf_out.raw[: attr.data_size_out]
    return RunResult(attr.retval, data, attr.duration)


BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0


def enable_run_time_stats() -> int:
    """Have the kernel time every run of every BPF program (BPF_ENABLE_STATS) for as long as the returned fd is
    open: closed (or the process gone), the statistics stop, where kernel.bpf_stats_enabled would stay set. Each
    run then costs two clock reads more."""
    attr = (ctypes.c_uint32 * 4)(BPF_STATS_RUN_TIME)
    return bpf(BPF_ENABLE_STATS, attr, "BPF_ENABLE_STATS failed")


def prog_run_time(prog_id: int) -> tuple[int, int]:
    """The kernel's (run_time_ns, run_cnt) of the program with this id (counted while statistics are enabled)."""
    attr = (ctypes.c_uint32 * 4)(prog_id)
    fd = bpf(BPF_PROG_GET_FD_BY_ID, attr, f"no BPF program {prog_id}")
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
    finally:
        os.close(fd)
    return int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))


class _ProgInfo(ctypes.Structure):
    """The head of the kernel's struct bpf_prog_info (uapi), as far as name."""
    _fields_ = [
        ("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32), ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16),
    ]


@dataclass
class ProgImage:
    id: int
    tag: str        # hex, as in the program's kernel symbol bpf_prog_<tag>_<name>
    name: str
    jited: bytes    # the machine code the JIT made of it


def _prog_info(fd: int, info: _ProgInfo) -> None:
    attr = (ctypes.c_uint64 * 2)(fd | ctypes.sizeof(info) << 32, ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr, "BPF_OBJ_GET_INFO_BY_FD failed")


def prog_image(prog_id: int) -> ProgImage:
    """The program with this id: its tag, name and JIT image (for profiles: perf names a program's samples
    bpf_prog_<tag>_<name> and gives offsets into this image)."""
    attr = (ctypes.c_uint32 * 4)(prog_id)
    fd = bpf(BPF_PROG_GET_FD_BY_ID, attr, f"no BPF program {prog_id}")
    try:
        info = _ProgInfo()
        _prog_info(fd, info)
        n = info.jited_prog_len
        buf = ctypes.create_string_buffer(n)
        info = _ProgInfo(jited_prog_len=n, jited_prog_insns=ctypes.addressof(buf))
        _prog_info(fd, info)
        return ProgImage(prog_id, bytes(info.tag).hex(), info.name.decode(errors="replace"), buf.raw[:n])
    finally:
        os.close(fd)


def prog_ids() -> list[int]:
    """Every loaded BPF program's id."""
    ids: list[int] = []
    cur = 0
    while True:
        attr = (ctypes.c_uint32 * 4)(cur)
        try:
            bpf(BPF_PROG_GET_NEXT_ID, attr)
        except OSError as e:
            if e.errno == errno.ENOENT:   # no more
                return ids
            raise
        cur = attr[1]
        ids.append(cur)
