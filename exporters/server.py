"""The /metrics endpoint: one thread, a bounded number of clients, a deadline for each.

http.server's threading server starts a thread per connection and waits on each for as long as the client
likes: 300 idle connections held 300 threads. This one is a selector loop, as the OpenFlow channel is:
 - at most ``max_clients`` connections at a time; when full, a new one closes the oldest that has not sent
   its request yet (counted: idle connections cannot keep a scrape out);
 - each connection has ``timeout`` seconds from accept to send its request and take the reply, else it is
   closed (counted); a request head over 8 KiB is answered 431 and closed;
 - a failed accept (out of descriptors) is counted and rests the listener a second; the loop survives an
   exception in one iteration (counted in ``errors``);
 - a scrape renders the metrics on this thread (a scrape reads the BPF maps: milliseconds), then writes the
   reply without blocking. ``GET``/``HEAD`` of ``/metrics`` or ``/``; anything else is 404 or 405.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_HEAD = 8192


@dataclass
class ServerStats:
    scrapes: int = 0
    evicted: int = 0          # an idle client closed to make room for a new one (max_clients reached)
    refused: int = 0          # max_clients all being answered: the new one is closed at once
    timed_out: int = 0        # no complete request, or the reply not taken, within the timeout
    bad_requests: int = 0     # not HTTP, a head too large, a path or method not served
    accept_failed: int = 0    # out of descriptors, ...
    errors: int = 0           # exceptions caught in the loop


class _Client:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = bytearray()
        self.out = b""
        self.replying = False


class MetricsServer:
    """Serves ``render()`` (bytes, content type) on (host, port); ``close()`` stops it."""

    def __init__(self, render: Callable[[], tuple[bytes, str]], host: str, port: int, max_clients: int = 16,
                 timeout: float = 10.0) -> None:
        self.render = render
        self.max_clients = max_clients
        self.timeout = timeout
        self.stats = ServerStats()
        self._ls = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._ls.bind((host, port))
        except OSError:
            self._ls.close()
            raise
        self._ls.listen(64)
        self._ls.setblocking(False)
        self.server_address: tuple[str, int] = self._ls.getsockname()[:2]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._ls, selectors.EVENT_READ, None)
        self._clients: dict[socket.socket, _Client] = {}
        self._resume_accept = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for c in list(self._clients.values()):
            self._close(c)
        self._sel.close()
        self._ls.close()

    def clients(self) -> int:
        return len(self._clients)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._once()
            except Exception:  # one bad client must not end the endpoint
                self.stats.errors += 1
                log.exception("metrics: error serving a client")
                time.sleep(0.05)

    def _once(self) -> None:
        now = time.monotonic()
        if self._resume_accept and now >= self._resume_accept:
            self._resume_accept = 0.0
            self._sel.register(self._ls, selectors.EVENT_READ, None)
        for key, ev in self._sel.select(timeout=0.2):
            if key.data is None:
                self._accept()
                continue
            c: _Client = key.data
            if ev & selectors.EVENT_READ and not c.replying:
                self._read(c)
            if ev & selectors.EVENT_WRITE and c.replying:
                self._write(c)
        now = time.monotonic()
        for c in list(self._clients.values()):
            if now > c.deadline:
                self.stats.timed_out += 1
                self._close(c)

    def _accept(self) -> None:
        try:
            s, _ = self._ls.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.stats.accept_failed += 1
            log.warning("metrics: accept failed (%s); not accepting for 1 s", e.strerror)
            self._sel.unregister(self._ls)
            self._resume_accept = time.monotonic() + 1.0
            return
        if len(self._clients) >= self.max_clients:
            # full: the oldest client still to send its request makes room (idle connections cannot keep
            # a scrape out); if every one is being answered, the new one is refused
            waiting = [c for c in self._clients.values() if not c.replying]
            if not waiting:
                self.stats.refused += 1
                s.close()
                return
            self.stats.evicted += 1
            self._close(min(waiting, key=lambda c: c.deadline))
        s.setblocking(False)
        c = _Client(s, time.monotonic() + self.timeout)
        self._clients[s] = c
        self._sel.register(s, selectors.EVENT_READ, c)

    def _read(self, c: _Client) -> None:
        try:
            data = c.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(c)
            return
        if not data:
            self._close(c)
            return
        c.buf += data
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(c.buf) > MAX_HEAD:
                self.stats.bad_requests += 1
                self._reply(c, 431, b"request head too large\n")
            return
        self._respond(c, bytes(c.buf[:end]))

    def _respond(self, c: _Client, head: bytes) -> None:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.stats.bad_requests += 1
            self._reply(c, 400, b"not an HTTP/1 request\n")
            return
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            self.stats.bad_requests += 1
            self._reply(c, 405, b"only GET and HEAD\n", extra=b"Allow: GET, HEAD\r\n")
            return
        if target not in (b"/metrics", b"/"):
            self.stats.bad_requests += 1
            self._reply(c, 404, b"only /metrics is here\n")
            return
        try:
            body, ctype = self.render()
        except Exception as e:  # the switch could not answer (e.g. restarting): this scrape fails, not the server
            self._reply(c, 503, f"scrape failed: {e}\n".encode())
            return
        self.stats.scrapes += 1
        self._reply(c, 200, body, ctype, head_only=method == b"HEAD")

    def _reply(self, c: _Client, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
               head_only: bool = False, extra: bytes = b"") -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large", 503: "Service Unavailable"}[code]
        head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n").encode() + extra + b"\r\n"
        c.out = head + (b"" if head_only else body)
        c.replying = True
        self._sel.modify(c.sock, selectors.EVENT_WRITE, c)
        self._write(c)

    def _write(self, c: _Client) -> None:
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(c)
            return
        c.out = c.out[n:]
        if not c.out:
            self._close(c)

    def _close(self, c: _Client) -> None:
        self._clients.pop(c.sock, None)
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        c.sock.close()
