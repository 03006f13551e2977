"""OpenFlow 1.3 framing: protocol constants, message and error numbers, ``OfError``, and the
framer that cuts a byte stream into messages.
"""

from __future__ import annotations

import enum
import struct

OFP_VERSION = 4
HEADER = struct.Struct("!BBHI")
MAX_MSG = 0xFFFF

OFPP_MAX = 0xFFFFFF00
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_TABLE = 0xFFFFFFF9
OFPP_NORMAL = 0xFFFFFFFA
OFPP_FLOOD = 0xFFFFFFFB
OFPP_ALL = 0xFFFFFFFC
OFPP_CONTROLLER = 0xFFFFFFFD
OFPP_LOCAL = 0xFFFFFFFE
OFPP_ANY = 0xFFFFFFFF
OFPG_ANY = 0xFFFFFFFF
OFPTT_ALL = 0xFF
OFP_NO_BUFFER = 0xFFFFFFFF
OFPCML_NO_BUFFER = 0xFFFF
OFPVID_PRESENT = 0x1000
NX_VENDOR = 0x00002320
NXAST_RESUBMIT, NXAST_RESUBMIT_TABLE = 1, 14


class T(enum.IntEnum):
    """ofp_type."""

    HELLO = 0
    ERROR = 1
    ECHO_REQUEST = 2
    ECHO_REPLY = 3
    EXPERIMENTER = 4
    FEATURES_REQUEST = 5
    FEATURES_REPLY = 6
    GET_CONFIG_REQUEST = 7
    GET_CONFIG_REPLY = 8
    SET_CONFIG = 9
    PACKET_IN = 10
    FLOW_REMOVED = 11
    PORT_STATUS = 12
    PACKET_OUT = 13
    FLOW_MOD = 14
    GROUP_MOD = 15
    PORT_MOD = 16
    TABLE_MOD = 17
    MULTIPART_REQUEST = 18
    MULTIPART_REPLY = 19
    BARRIER_REQUEST = 20
    BARRIER_REPLY = 21
    QUEUE_GET_CONFIG_REQUEST = 22
    QUEUE_GET_CONFIG_REPLY = 23
    ROLE_REQUEST = 24
    ROLE_REPLY = 25
    GET_ASYNC_REQUEST = 26
    GET_ASYNC_REPLY = 27
    SET_ASYNC = 28
    METER_MOD = 29


class MP(enum.IntEnum):
    """ofp_multipart_type."""

    DESC = 0
    FLOW = 1
    AGGREGATE = 2
    TABLE = 3
    PORT_STATS = 4
    QUEUE = 5
    GROUP = 6
    GROUP_DESC = 7
    GROUP_FEATURES = 8
    METER = 9
    METER_CONFIG = 10
    METER_FEATURES = 11
    TABLE_FEATURES = 12
    PORT_DESC = 13
    EXPERIMENTER = 0xFFFF


class ET(enum.IntEnum):
    """ofp_error_type."""

    HELLO_FAILED = 0
    BAD_REQUEST = 1
    BAD_ACTION = 2
    BAD_INSTRUCTION = 3
    BAD_MATCH = 4
    FLOW_MOD_FAILED = 5
    GROUP_MOD_FAILED = 6
    PORT_MOD_FAILED = 7
    TABLE_MOD_FAILED = 8
    QUEUE_OP_FAILED = 9
    SWITCH_CONFIG_FAILED = 10
    ROLE_REQUEST_FAILED = 11
    METER_MOD_FAILED = 12
    TABLE_FEATURES_FAILED = 13


# the codes we answer with, by type
HFC_INCOMPATIBLE = 0
BRC_BAD_VERSION, BRC_BAD_TYPE, BRC_BAD_MULTIPART, BRC_BAD_EXPERIMENTER = 0, 1, 2, 3
BRC_EPERM, BRC_BAD_LEN, BRC_BUFFER_UNKNOWN, BRC_BAD_TABLE_ID, BRC_IS_SLAVE, BRC_BAD_PORT, BRC_BAD_PACKET = (
    5, 6, 8, 9, 10, 11, 12)
BAC_BAD_TYPE, BAC_BAD_LEN, BAC_BAD_EXPERIMENTER, BAC_BAD_OUT_PORT, BAC_BAD_ARGUMENT = 0, 1, 2, 4, 5
BAC_BAD_OUT_GROUP, BAC_MATCH_INCONSISTENT, BAC_BAD_SET_TYPE, BAC_BAD_SET_ARGUMENT = 9, 12, 13, 15
# ofp_group_mod_failed_code (ctl/pipeline/groups.py raises the rest with GroupModError)
GMFC_BAD_TYPE, GMFC_BAD_COMMAND, GMFC_BAD_BUCKET = 10, 11, 12
# ofp_meter_mod_failed_code (ctl/pipeline/meters.py raises the rest with MeterModError)
MMFC_INVALID_METER, MMFC_BAD_COMMAND, MMFC_BAD_BAND = 2, 4, 8
BIC_UNKNOWN_INST, BIC_UNSUP_INST, BIC_BAD_TABLE_ID, BIC_UNSUP_METADATA, BIC_BAD_LEN = 0, 1, 2, 3, 7
BMC_BAD_TYPE, BMC_BAD_LEN, BMC_BAD_FIELD, BMC_BAD_VALUE, BMC_BAD_MASK, BMC_BAD_PREREQ, BMC_DUP_FIELD = (
    0, 1, 6, 7, 8, 9, 10)
FMFC_UNKNOWN, FMFC_TABLE_FULL, FMFC_BAD_TABLE_ID, FMFC_OVERLAP, FMFC_BAD_TIMEOUT, FMFC_BAD_COMMAND = 0, 1, 2, 3, 5, 6
FMFC_BAD_FLAGS = 7
SCFC_BAD_LEN = 2
RRFC_STALE, RRFC_UNSUP, RRFC_BAD_ROLE = 0, 1, 2


class OfError(Exception):
    """A message we must refuse with OFPT_ERROR (type, code); msg is for logs."""

    def __init__(self, etype: int, code: int, msg: str = "") -> None:
        super().__init__(msg or f"error type {etype} code {code}")
        self.type, self.code, self.msg = etype, code, msg


# --- framing ---------------------------------------------------------------------------------------------


class Framer:
    """Cuts a TCP byte stream into whole OpenFlow messages."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The messages completed by data. OfError(BAD_REQUEST, BAD_LEN) if a header's length is below 8:
        the stream cannot be resynchronised, so the caller closes the connection after answering."""
        self.buf += data
        out = []
        while len(self.buf) >= 8:
            length = int.from_bytes(self.buf[2:4], "big")
            if length < 8:
                raise OfError(ET.BAD_REQUEST, BRC_BAD_LEN, f"message length {length} is below the header's 8")
            if len(self.buf) < length:
                break
            out.append(bytes(self.buf[:length]))
            del self.buf[:length]
        return out


def header(raw: bytes) -> tuple[int, int, int, int]:
    """(version, type, length, xid)."""
    return HEADER.unpack_from(raw)


def _int(v: object) -> int:
    """pyof bitmask fields come back as plain ints or as UBInt wrappers."""
    return int(getattr(v, "value", v))  # type: ignore[call-overload]
