"""What a device can do with XDP, as the kernel says it (the generic netlink family "netdev", NETDEV_CMD_DEV_GET:
the device's xdp-features).

The one question the datapath asks: can this port take frames that XDP_REDIRECT sends into it
(``NETDEV_XDP_ACT_NDO_XMIT``)? A veth answers no while its peer (the container's end) has neither an XDP
program nor GRO on, which is how container runtimes create them; the kernel would drop every redirected
frame. Such a port is sent to through the skb path (``xdp/skb_tx.c``). The answer changes when the peer
changes, so the daemon asks again every second.
"""

from __future__ import annotations

import os
import socket
import struct

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
