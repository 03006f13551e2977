"""The client side of a running switch's control socket, and where its sockets are. Light to import (no bcc,
no pyroute2): the commands that only ask a daemon (``stats``, ``top``, ``ofctl``, ...) load this, not the
daemon (ctl/daemon/switch.py), which serves the socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctl.common import unixctl
from ctl.datapath.view import RUN_DIR
from ctl.pipeline.ofmatch import FlowSyntaxError


class ControlError(RuntimeError):
    """A control request failed; the message is for the user."""


def control_path(name: str) -> Path:
    return RUN_DIR / f"{name}.ctl"


def mgmt_path(name: str) -> Path:
    """The OpenFlow management socket (ovs-ofctl -O OpenFlow13 dump-flows unix:PATH)."""
    return RUN_DIR / f"{name}.mgmt"


def request(name: str, cmd: str, *, timeout: float = 60.0, **args: Any) -> Any:
    """Send one request to a running daemon; returns its result or raises ControlError (FlowSyntaxError
    for bad flow text, with its position)."""
    try:
        return unixctl.request(control_path(name), cmd, timeout=timeout, **args)
    except unixctl.NotListening:
        raise ControlError(f"no switch named {name!r} is running (no {control_path(name)}); start one with "
                           "xdpswitch start") from None
    except unixctl.CommandError as e:
        reply = e.reply
        if "pos" in reply:
            raise FlowSyntaxError(reply["error"], reply.get("text", ""), reply["pos"], reply.get("length", 1)) from None
        raise ControlError(str(e)) from None
