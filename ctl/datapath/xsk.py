"""A pure-Python AF_XDP socket (receive and transmit), as measured in shared/FACTS.md: no package needed.

Setup order matters: socket, UMEM_REG, ring sizes, XDP_MMAP_OFFSETS, mmap the rings, then bind (through
libc: Python's bind rejects family 44) with XDP_COPY | XDP_USE_NEED_WAKEUP (veth has no zero-copy).
Ring work is done per batch: read the producer once, handle every descriptor, write the consumer once.
The fast path writes ``struct upcall_meta`` just before each frame (bpf_xdp_adjust_meta); AF_XDP copies
it into the UMEM in front of the frame, where ``recv()`` reads it.

``send()`` transmits frames out of the bound device (copy mode: inside the ``sendto`` kick, at most 32
per call, EAGAIN meaning "call again"); sent frames return to the free list through the completion ring.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import socket
import struct
import threading
from dataclasses import dataclass

AF_XDP = 44
SOL_XDP = 283
XDP_MMAP_OFFSETS, XDP_RX_RING, XDP_TX_RING, XDP_UMEM_REG = 1, 2, 3, 4
XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_STATISTICS = 5, 6, 7
XDP_PGOFF_RX_RING = 0
XDP_PGOFF_TX_RING = 0x80000000
XDP_UMEM_PGOFF_FILL_RING = 0x100000000
XDP_UMEM_PGOFF_COMPLETION_RING = 0x180000000
XDP_COPY = 1 << 1
XDP_USE_NEED_WAKEUP = 1 << 3
UPCALL_META = struct.Struct("<HHI")  # struct upcall_meta: reason, in_port, hash

_libc = ctypes.CDLL(None, use_errno=True)


class _Ring:
    """One mmap'ed ring: producer, consumer and descriptors at the kernel's offsets."""

    def __init__(self, fd: int, pgoff: int, offsets: tuple[int, int, int, int], size: int, desc_size: int) -> None:
        prod, cons, desc, _flags = offsets
        self.map = mmap.mmap(fd, desc + size * desc_size, mmap.MAP_SHARED | mmap.MAP_POPULATE,
                             mmap.PROT_READ | mmap.PROT_WRITE, offset=pgoff)
        self.producer = ctypes.c_uint32.from_buffer(self.map, prod)
        self.consumer = ctypes.c_uint32.from_buffer(self.map, cons)
        self.desc = desc
        self.mask = size - 1
        self.desc_size = desc_size

    def close(self) -> None:
        del self.producer, self.consumer
        self.map.close()


@dataclass
class Upcall:
    reason: int
    in_port: int
    hash: int
    frame: bytes


class XskSocket:
    """An AF_XDP socket bound to (ifname, queue) in copy mode: receives upcalls, transmits frames.
    ``send()`` may be called from several threads; ``recv()`` from one."""

    def __init__(self, ifname: str, queue: int = 0, frames: int = 4096, frame_size: int = 2048,
                 ring_size: int = 2048) -> None:
        if frames <= ring_size:
            raise ValueError("give the UMEM more frames than fill-ring slots, or receiving stalls")
        self.frame_size = frame_size
        self.sock = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
        fd = self.sock.fileno()
        self.umem = mmap.mmap(-1, frames * frame_size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self.umem))
        reg = struct.pack("<QQIIII", addr, frames * frame_size, frame_size, 0, 0, 0)
        self.sock.setsockopt(SOL_XDP, XDP_UMEM_REG, reg)
        for opt in (XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_RX_RING, XDP_TX_RING):
            self.sock.setsockopt(SOL_XDP, opt, struct.pack("<I", ring_size))
        off = struct.unpack("<16Q", self.sock.getsockopt(SOL_XDP, XDP_MMAP_OFFSETS, 128))
        self.rx = _Ring(fd, XDP_PGOFF_RX_RING, off[0:4], ring_size, 16)
        self.tx = _Ring(fd, XDP_PGOFF_TX_RING, off[4:8], ring_size, 16)
        self.fill = _Ring(fd, XDP_UMEM_PGOFF_FILL_RING, off[8:12], ring_size, 8)
        self.comp = _Ring(fd, XDP_UMEM_PGOFF_COMPLETION_RING, off[12:16], ring_size, 8)
        all_frames = list(range(0, frames * frame_size, frame_size))
        # receive frames feed the fill ring; transmit frames are kept apart so sending never starves receiving
        n_tx = max(1, (frames - ring_size) // 2)
        self._free = all_frames[n_tx:]
        self._tx_free = all_frames[:n_tx]
        self._tx_lock = threading.Lock()
        self.tx_sent = 0
        self.tx_dropped = 0
        self.received = 0       # upcalls read (the handler that owns the socket writes it)
        self._refill()
        sxdp = struct.pack("<HHIII", AF_XDP, XDP_COPY | XDP_USE_NEED_WAKEUP, socket.if_nametoindex(ifname),
                           queue, 0)
        buf = ctypes.create_string_buffer(sxdp, len(sxdp))
        if _libc.bind(fd, buf, len(sxdp)) != 0:
            err = ctypes.get_errno()
            self.close()
            raise OSError(err, f"binding AF_XDP to {ifname} queue {queue}: {os.strerror(err)}")
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)

    def stats(self) -> dict[str, int]:
        """The kernel's counters for this socket (XDP_STATISTICS): rx_dropped and rx_ring_full are
        upcalls the fast path redirected here that never reached the ring."""
        raw = self.sock.getsockopt(SOL_XDP, XDP_STATISTICS, 48)
        names = ("rx_dropped", "rx_invalid_descs", "tx_invalid_descs", "rx_ring_full", "rx_fill_ring_empty_descs",
                 "tx_ring_empty_descs")
        vals = struct.unpack("<6Q", raw.ljust(48, b"\0"))
        return dict(zip(names, vals, strict=True))

    def fileno(self) -> int:
        return self.sock.fileno()

    def _refill(self) -> None:
        ring = self.fill
        prod = ring.producer.value
        room = ring.mask + 1 - (prod - ring.consumer.value) % (1 << 32)
        n = min(room, len(self._free))
        for i in range(n):
            struct.pack_into("<Q", ring.map, ring.desc + ((prod + i) & ring.mask) * 8, self._free.pop())
        ring.producer.value = (prod + n) % (1 << 32)

    def recv(self, timeout_ms: int = 1000, max_batch: int = 64) -> list[Upcall]:
        """The upcalls waiting (after waiting up to timeout_ms for the first)."""
        self._refill()
        ring = self.rx
        if ring.producer.value == ring.consumer.value:
            self.poller.poll(timeout_ms)
        cons, prod = ring.consumer.value, ring.producer.value
        out = []
        n = min((prod - cons) % (1 << 32), max_batch)
        for i in range(n):
            addr, length, _ = struct.unpack_from("<QII", ring.map, ring.desc + ((cons + i) & ring.mask) * 16)
            reason, in_port, h = UPCALL_META.unpack_from(self.umem, addr - UPCALL_META.size)
            out.append(Upcall(reason, in_port, h, bytes(self.umem[addr : addr + length])))
            self._free.append(addr - addr % self.frame_size)
        ring.consumer.value = (cons + n) % (1 << 32)
        self.received += n
        self._refill()
        return out

    def _reap(self) -> None:
        """Take transmitted frames back from the completion ring."""
        ring = self.comp
        cons, prod = ring.consumer.value, ring.producer.value
        n = (prod - cons) % (1 << 32)
        for i in range(n):
            self._tx_free.append(struct.unpack_from("<Q", ring.map, ring.desc + ((cons + i) & ring.mask) * 8)[0])
        ring.consumer.value = (cons + n) % (1 << 32)

    def send(self, frames: list[bytes]) -> int:
        """Transmit frames out of the bound device; returns how many were queued. Frames that do not fit a
        UMEM frame, or find no free frame or ring slot, are counted in tx_dropped."""
        if not frames:
            return 0
        with self._tx_lock:
            self._reap()
            ring = self.tx
            prod = ring.producer.value
            room = ring.mask + 1 - (prod - ring.consumer.value) % (1 << 32)
            n = 0
            for f in frames:
                if n >= room or not self._tx_free or len(f) > self.frame_size:
                    self.tx_dropped += 1
                    continue
                addr = self._tx_free.pop()
                self.umem[addr : addr + len(f)] = f
                struct.pack_into("<QII", ring.map, ring.desc + ((prod + n) & ring.mask) * 16, addr, len(f), 0)
                n += 1
            ring.producer.value = (prod + n) % (1 << 32)
            for _ in range(64):  # copy mode sends inside the kick, 32 frames at a time
                try:
                    self.sock.send(b"", socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    if e.errno in (errno.ENXIO, errno.ENETDOWN, errno.ENODEV):
                        # the device is down or gone (a container deleted): these frames go nowhere
                        self.tx_dropped += n
                        return 0
                    if e.errno not in (errno.EBUSY, errno.ENOBUFS):
                        raise
                if ring.consumer.value == ring.producer.value:
                    break
            self._reap()
            self.tx_sent += n
            return n

    def close(self) -> None:
        for ring in ("rx", "tx", "fill", "comp"):
            if hasattr(self, ring):
                getattr(self, ring).close()
        self.sock.close()
