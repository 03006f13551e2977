"""Links as the kernel reports them, through pyroute2 (rtnetlink): what a port is (``link_info``: ifindex,
MTU, MAC, queues, carrier, admin state, driver, attached XDP mode), and what changes (``LinkMonitor``: the
kernel's RTNLGRP_LINK events, pushed as they happen, which the daemon turns into OpenFlow PORT_STATUS at once).

And what a device can do with XDP (the generic netlink family "netdev", NETDEV_CMD_DEV_GET: the device's
xdp-features), asked directly: pyroute2 has no binding for that family.

The one question the datapath asks: can this port take frames that XDP_REDIRECT sends into it
(``NETDEV_XDP_ACT_NDO_XMIT``)? A veth answers no while its peer (the container's end) has neither an XDP
program nor GRO on, which is how container runtimes create them; the kernel would drop every redirected
frame. Such a port is sent to through the skb path (``xdp/skb_tx.c``). The answer changes when the peer
changes, so the daemon asks again every second.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NETDEV_CMD_DEV_GET = 1
NETDEV_A_DEV_IFINDEX = 1
NETDEV_A_DEV_XDP_FEATURES = 3
NLM_F_REQUEST = 1
NLMSG_ERROR = 2

XDP_ACT_BASIC = 1 << 0
XDP_ACT_REDIRECT = 1 << 1
XDP_ACT_NDO_XMIT = 1 << 2       # frames XDP_REDIRECTs into the device are transmitted


class NetdevError(OSError):
    """The kernel would not say (no netdev family: a kernel before 6.3, or no such device)."""


def _attrs(data: bytes) -> dict[int, bytes]:
    out, off = {}, 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[off + 4: off + length]
        off += (length + 3) & ~3
    return out


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _request(sock: socket.socket, family: int, cmd: int, attrs: bytes, seq: int) -> dict[int, bytes]:
    body = struct.pack("=BBH", cmd, 1, 0) + attrs
    sock.send(struct.pack("=IHHII", 16 + len(body), family, NLM_F_REQUEST, seq, 0) + body)
    data = sock.recv(65536)
    length, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", data)
    if mtype == NLMSG_ERROR:
        err = -struct.unpack_from("=i", data, 16)[0]
        if err:
            raise NetdevError(err, os.strerror(err))
        return {}
    return _attrs(data[20:length])


def xdp_features(ifindex: int) -> int:
    """The device's NETDEV_XDP_ACT_* bits."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC) as s:
        s.settimeout(2)
        fam = _request(s, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, _attr(CTRL_ATTR_FAMILY_NAME, b"netdev\0"), 1)
        if CTRL_ATTR_FAMILY_ID not in fam:
            raise NetdevError(0, "the kernel has no netdev netlink family")
        family = struct.unpack("=H", fam[CTRL_ATTR_FAMILY_ID][:2])[0]
        dev = _request(s, family, NETDEV_CMD_DEV_GET, _attr(NETDEV_A_DEV_IFINDEX, struct.pack("=I", ifindex)), 2)
    raw = dev.get(NETDEV_A_DEV_XDP_FEATURES)
    if raw is None:
        raise NetdevError(0, f"ifindex {ifindex}: no xdp-features in the kernel's answer")
    return int(struct.unpack("=Q", raw[:8])[0])


def takes_redirects(ifindex: int) -> bool:
    """Frames XDP_REDIRECTed into the device are delivered. When the kernel cannot say, assume not: the skb
    path always delivers, the redirect path would drop silently."""
    try:
        return bool(xdp_features(ifindex) & XDP_ACT_NDO_XMIT)
    except OSError:
        return False


# --- links (rtnetlink through pyroute2) ---------------------------------------------------------------------

# IFLA_XDP_ATTACHED, as the kernel numbers it and as pyroute2 names it (ip link's names)
XDP_MODES: dict[object, str] = {0: "none", 1: "native", 2: "generic", 3: "offload", 4: "multi",
                                "none": "none", "xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload",
                                "xdpmulti": "multi", "multi": "multi"}


@dataclass(frozen=True)
class LinkInfo:
    ifindex: int
    name: str
    mtu: int
    mac: str
    rx_queues: int       # in use (sysfs), not the maximum rtnetlink reports
    admin_up: bool
    carrier: bool
    driver: str          # the link kind for virtual devices (veth, tun, ...), else the bus driver
    xdp_mode: str        # none, native, generic, offload, multi
    speed_mbps: int = 0  # 0: unknown (virtual devices)
    xdp_prog_id: int = 0  # the attached XDP program's id (0: none)


def _link_info(msg: object) -> LinkInfo:
    m = msg  # a pyroute2 ifinfmsg
    get = m.get  # type: ignore[attr-defined]
    name = get("IFLA_IFNAME") or ""
    kind = ""
    linkinfo = get("IFLA_LINKINFO")
    if linkinfo is not None:
        kind = linkinfo.get("IFLA_INFO_KIND") or ""
    if not kind:
        try:
            kind = Path(f"/sys/class/net/{name}/device/driver").resolve().name
        except OSError:
            kind = ""
    xdp = get("IFLA_XDP")
    mode = XDP_MODES.get(xdp.get("IFLA_XDP_ATTACHED") or 0, "unknown") if xdp is not None else "none"
    admin_up = bool(m["flags"] & 1)  # type: ignore[index]
    try:
        speed = int(Path(f"/sys/class/net/{name}/speed").read_text())   # ethtool's; not in rtnetlink
    except (OSError, ValueError):
        speed = 0
    try:   # the queues in use (rtnetlink has only how many may be: a veth allocates one per CPU, uses one)
        queues = len(list(Path(f"/sys/class/net/{name}/queues").glob("rx-*")))
    except OSError:
        queues = 0
    return LinkInfo(m["index"], name, get("IFLA_MTU") or 0, get("IFLA_ADDRESS") or "00:00:00:00:00:00",  # type: ignore[index]
                    queues or get("IFLA_NUM_RX_QUEUES") or 1, admin_up, admin_up and bool(get("IFLA_CARRIER")),
                    kind or "unknown", mode, max(speed, 0),
                    int(xdp.get("IFLA_XDP_PROG_ID") or 0) if xdp is not None else 0)


def link_info(ifname: str | None = None, ifindex: int | None = None) -> LinkInfo | None:
    """One link by name or index, or None if there is no such link."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            msgs = ipr.link("get", index=ifindex) if ifindex is not None else ipr.link("get", ifname=ifname)
        except NetlinkError:
            return None
    return _link_info(msgs[0]) if msgs else None


def links() -> dict[str, LinkInfo]:
    """Every link of this namespace by name (one netlink dump)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {li.name: li for li in map(_link_info, ipr.get_links())}


def xdp_mode(ifname: str) -> str:
    """The XDP mode attached to ifname as the kernel reports it: none, native, generic, offload; "unknown"
    when there is no such link."""
    li = link_info(ifname)
    return li.xdp_mode if li is not None else "unknown"


class LinkMonitor:
    """Calls ``on_change(ifindex)`` from its own thread for every link event the kernel pushes (RTM_NEWLINK,
    RTM_DELLINK: admin state, carrier, a link deleted or renamed). An exception in the callback is logged
    and the monitor goes on."""

    def __init__(self, on_change: Callable[[int], None]) -> None:
        self.on_change = on_change
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="links", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        # pyroute2's socket belongs to the thread that made it (its event loop): made, bound and read here
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl import RTMGRP_LINK

        try:
            ipr = IPRoute()
            ipr.bind(groups=RTMGRP_LINK)
        except Exception as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        with ipr:
            fd = ipr.fileno()
            while not self._stop.is_set():
                try:
                    ready, _, _ = select.select([fd], [], [], 0.25)
                    if not ready:
                        continue
                    for msg in ipr.get():
                        if msg.get("event") in ("RTM_NEWLINK", "RTM_DELLINK"):
                            self.on_change(msg["index"])
                except Exception:  # one bad event must not end the watch
                    log.exception("link monitor: an event failed; going on")
                    self._stop.wait(0.1)
