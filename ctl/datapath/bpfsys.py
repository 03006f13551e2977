"""The bpf() system call, for what bcc 0.26 does not expose: test runs and run-time statistics (progrun.py),
read-only access to pinned maps (view.py)."""

from __future__ import annotations

import ctypes
import os
from typing import Any

SYS_BPF = 321  # x86_64

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def bpf(cmd: int, attr: ctypes.Structure | ctypes.Array[Any], what: str = "") -> int:
    """bpf(cmd, &attr, sizeof attr): its result, or OSError with the errno (its text after "what: " if given)."""
    r = _libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if r < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}" if what else os.strerror(err))
    return int(r)
