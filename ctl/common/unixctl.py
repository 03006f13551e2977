"""The control socket (OVS: unixctl): one JSON request per connection on a root-only unix socket,
``{"cmd": NAME, "args": {...}}``, answered by ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
MESSAGE, ...}``.

Commands are registered by the module that owns the state they show or change
(``unixctl_command_register`` in OVS), so the server knows none of them. A command reports a user's mistake
by raising ``ValueError`` (or a subclass; one with ``reply_fields()`` adds them to the reply, e.g. where
in the flow text the mistake is) or ``CommandError``; anything else is a bug: it is logged with its
traceback, counted (``LoopErrors``, loop "control"), and answered as an internal error. The serving loop
outlives any request.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctl.common.loops import LoopErrors

MAX_REQUEST = 16 << 20


class CommandError(RuntimeError):
    """A control request failed; the message is for the user. reply: the whole error reply."""

    def __init__(self, msg: str, reply: dict[str, Any] | None = None) -> None:
        super().__init__(msg)
        self.reply = reply or {"ok": False, "error": msg}


class NotListening(CommandError):
    """Nothing listens on the socket (no daemon of that name is running)."""


class Unixctl:
    """The command registry and its server thread. ``register()`` before or after ``serve()``."""

    def __init__(self, path: Path, errors: LoopErrors) -> None:
        self.path = path
        self.errors = errors
        self._commands: dict[str, Callable[..., Any]] = {}   # written at start-up, read by the server thread
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        if name in self._commands:
            raise ValueError(f"control command {name!r} registered twice")
        self._commands = {**self._commands, name: fn}

    def run(self, req: object) -> dict[str, Any]:
        """One request, as the socket would answer it."""
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "error": 'bad request: expected {"cmd": NAME, "args": {...}}'}
        args = req.get("args") or {}
        if not isinstance(args, dict):
            return {"ok": False, "error": "bad request: args must be an object"}
        fn = self._commands.get(req["cmd"])
        if fn is None:
            return {"ok": False, "error": f"unknown command {req['cmd']!r}"}
        try:
            return {"ok": True, "result": fn(**args)}
        except TypeError as e:
            if e.__traceback__ is not None and e.__traceback__.tb_next is None:  # the call itself: bad arguments
                return {"ok": False, "error": f"{req['cmd']}: {e}"}
            self.errors.record("control")
            return {"ok": False, "error": f"{req['cmd']}: internal error (logged): {e}"}
        except (ValueError, CommandError) as e:
            extra = getattr(e, "reply_fields", None)
            return {"ok": False, "error": str(e), **(extra() if callable(extra) else {})}
        except Exception as e:
            self.errors.record("control")
            return {"ok": False, "error": f"{req['cmd']}: internal error (logged): {e}"}

    def serve(self) -> None:
        RUN = self.path.parent
        RUN.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, stat.S_IRUSR | stat.S_IWUSR)
        s.listen(16)
        s.settimeout(0.5)
        self._sock = s
        self._thread = threading.Thread(target=self._loop, name="control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            self.path.unlink(missing_ok=True)
            self._sock = None

    def _loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:   # out of descriptors: this request fails, the loop rests a moment and goes on
                self._stop.wait(0.1)
                continue
            try:
                with conn:
                    self._serve_one(conn)
            except Exception:
                self.errors.record("control")

    def _serve_one(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            raw = recv_all(conn)
            req = json.loads(raw)
        except (OSError, ValueError) as e:
            reply: dict[str, Any] = {"ok": False, "error": f"bad request: {e}"}
        else:
            conn.settimeout(None)  # the command may take long (a flow-mod waits for its revalidator pass)
            reply = self.run(req)
        try:
            conn.sendall(json.dumps(reply).encode())
        except OSError:
            pass


def recv_all(conn: socket.socket) -> bytes:
    chunks = []
    total = 0
    while True:
        b = conn.recv(65536)
        if not b:
            break
        chunks.append(b)
        total += len(b)
        if total > MAX_REQUEST:
            raise ValueError("request too large")
    return b"".join(chunks)


def request(path: Path, cmd: str, *, timeout: float = 60.0, **args: Any) -> Any:
    """Send one request; returns its result or raises CommandError (whose reply has every field)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        raise NotListening(f"nothing is listening on {path}") from None
    except PermissionError:
        raise CommandError(f"{path} is for root only") from None
    except OSError as e:
        raise CommandError(f"cannot reach {path}: {e.strerror}") from None
    with s:
        try:
            s.sendall(json.dumps({"cmd": cmd, "args": args}).encode())
            s.shutdown(socket.SHUT_WR)
            raw = recv_all(s)
        except TimeoutError:
            raise CommandError(f"{cmd}: no answer from {path} in {timeout:.0f} s") from None
        except OSError as e:
            raise CommandError(f"{cmd}: {path}: {e.strerror}") from None
    try:
        reply = json.loads(raw or b"{}")
    except ValueError:
        raise CommandError(f"{cmd}: a reply that is not JSON from {path}") from None
    if not reply.get("ok"):
        raise CommandError(reply.get("error", "no reply"), reply)
    return reply.get("result")
