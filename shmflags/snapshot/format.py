"""Byte layouts shared with the C reader: the snapshot container and the control block.

Safe in any process; constants and pure functions only. Every size and offset here is also
stated, with a ``_Static_assert``, in ``native/layout.h``; ``docs/snapshot-format.md`` describes
the same bytes in prose. Change all three together and bump :data:`LAYOUT_VERSION` (or
:data:`CTL_VERSION`).
"""
from __future__ import annotations

import struct
from typing import NamedTuple

import xxhash

# --------------------------------------------------------------------------------------------
# Snapshot container
# --------------------------------------------------------------------------------------------

MAGIC = b"SHMFLAGS"
LAYOUT_VERSION = 1
HEADER_SIZE = 128
SLOT_SIZE = 16
ENTRY_SIZE = 32
ALIGN = 8
MIN_INDEX_CAP = 8
MAX_SNAPSHOT_SIZE = 0xFFFFFFFF  # offsets are u32

#: LMDB-style format word: layout version and struct sizes folded into one u32, so a reader
#: built against another layout refuses the bytes before reading anything else.
FORMAT_WORD = (LAYOUT_VERSION << 24) | ((HEADER_SIZE // 8) << 16) | (SLOT_SIZE << 8) | ENTRY_SIZE
assert FORMAT_WORD == 0x01101020

#: ``sf_header_t``: magic, format, record_format, total_size, checksum, generation,
#: built_at_ms, payload_version, n_flags, n_segments, flag_index_off, flag_index_cap,
#: seg_index_off, seg_index_cap, flag_order_off, seg_order_off, 32 reserved bytes, header_check.
HEADER_STRUCT = struct.Struct("<8sIIQQQQqIIIIIIII32xQ")
assert HEADER_STRUCT.size == HEADER_SIZE

# Header field offsets (layout.h ``offsetof(sf_header_t, ...)``).
OFF_MAGIC = 0
OFF_FORMAT = 8
OFF_RECORD_FORMAT = 12
OFF_TOTAL_SIZE = 16
OFF_CHECKSUM = 24
OFF_GENERATION = 32
OFF_BUILT_AT_MS = 40
OFF_PAYLOAD_VERSION = 48
OFF_N_FLAGS = 56
OFF_N_SEGMENTS = 60
OFF_FLAG_INDEX_OFF = 64
OFF_FLAG_INDEX_CAP = 68
OFF_SEG_INDEX_OFF = 72
OFF_SEG_INDEX_CAP = 76
OFF_FLAG_ORDER_OFF = 80
OFF_SEG_ORDER_OFF = 84
OFF_RESERVED = 88
OFF_HEADER_CHECK = 120

#: ``sf_slot_t``: xxh64 of the key, entry offset (0 = empty), zero.
SLOT_STRUCT = struct.Struct("<QII")
assert SLOT_STRUCT.size == SLOT_SIZE

#: ``sf_entry_t``: key_off, key_len, raw_off, raw_len, rec_off, rec_len, version_lo, version_hi.
ENTRY_STRUCT = struct.Struct("<IIIIIIII")
assert ENTRY_STRUCT.size == ENTRY_SIZE


class Header(NamedTuple):
    """The decoded ``sf_header_t`` (field order as in the struct)."""

    magic: bytes
    format: int
    record_format: int
    total_size: int
    checksum: int
    generation: int
    built_at_ms: int
    payload_version: int
    n_flags: int
    n_segments: int
    flag_index_off: int
    flag_index_cap: int
    seg_index_off: int
    seg_index_cap: int
    flag_order_off: int
    seg_order_off: int
    header_check: int


def key_hash(key: bytes) -> int:
    """Return the index hash of a key: xxh64 of its UTF-8 bytes, seed 0."""
    return xxhash.xxh64_intdigest(key)


def checksum(data: bytes | memoryview) -> int:
    """Return xxh3_64 (seed 0) of ``data``: the body checksum and the header check."""
    return xxhash.xxh3_64_intdigest(data)


def index_capacity(n: int) -> int:
    """Return the slot count of an index for ``n`` keys: a power of two >= 2n, at least 8."""
    cap = MIN_INDEX_CAP
    while cap < 2 * n:
        cap <<= 1
    return cap


def align(n: int) -> int:
    """Round ``n`` up to a multiple of :data:`ALIGN`."""
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def pack_header(h: Header) -> bytes:
    """Pack ``h`` into 128 bytes, recomputing ``header_check`` (the given value is ignored)."""
    raw = HEADER_STRUCT.pack(*h[:-1], 0)
    return raw[:OFF_HEADER_CHECK] + struct.pack("<Q", checksum(raw[:OFF_HEADER_CHECK]))


def unpack_header(buf: bytes | memoryview) -> Header:
    """Unpack the first 128 bytes of ``buf`` without validating anything."""
    return Header._make(HEADER_STRUCT.unpack_from(buf, 0))


def stamp_generation(header: bytes | memoryview, generation: int) -> bytes:
    """Return a copy of a 128-byte header with ``generation`` set and ``header_check`` redone.

    The body checksum does not cover the header, so the publisher stamps the generation
    without rehashing the body.
    """
    return pack_header(unpack_header(header)._replace(generation=generation))


def version_split(version: int) -> tuple[int, int]:
    """Split an int64 LD version into (lo, hi) u32 halves (two's complement)."""
    v = version & 0xFFFFFFFFFFFFFFFF
    return v & 0xFFFFFFFF, v >> 32


def version_join(lo: int, hi: int) -> int:
    """Join (lo, hi) u32 halves into the signed int64 LD version."""
    v = (hi << 32) | lo
    return v - (1 << 64) if v >= (1 << 63) else v


# --------------------------------------------------------------------------------------------
# Control block  /shmflags.<name>.ctl
# --------------------------------------------------------------------------------------------

CTL_MAGIC = b"SHMFLCTL"
CTL_VERSION = 1
CTL_SIZE = 1024
CTL_FORMAT_WORD = (CTL_VERSION << 24) | CTL_SIZE
assert CTL_FORMAT_WORD == 0x01000400

CTL_NAME_MAX = 128
CTL_ERROR_MAX = 256
CTL_SOURCE_MAX = 32
CTL_SOCKET_MAX = 112
CTL_ENV_ID_MAX = 64

# Control-block field offsets (layout.h ``offsetof(sf_ctl_t, ...)``).
CTL_OFF_MAGIC = 0
CTL_OFF_FORMAT = 8
CTL_OFF_SIZE = 12
CTL_OFF_SEQ = 16
CTL_OFF_GENERATION = 24
CTL_OFF_DATA_SIZE = 32
CTL_OFF_DATA_CHECKSUM = 40
CTL_OFF_PAYLOAD_VERSION = 48
CTL_OFF_SUPERVISOR_PID = 56
CTL_OFF_SUPERVISOR_START_MS = 64
CTL_OFF_HEARTBEAT_MS = 72
CTL_OFF_HEARTBEAT_MONO_MS = 80
CTL_OFF_LAST_UPDATE_MS = 88
CTL_OFF_STATE_SINCE_MS = 96
CTL_OFF_STATE = 104
CTL_OFF_FROM_CACHE = 108
CTL_OFF_N_FLAGS = 112
CTL_OFF_N_SEGMENTS = 116
CTL_OFF_ERROR_KIND = 120
CTL_OFF_ERROR_STATUS = 124
CTL_OFF_ERROR_TIME_MS = 128
CTL_OFF_ERROR_LEN = 136
CTL_OFF_RESERVED0 = 140
CTL_OFF_ERROR_MESSAGE = 144
CTL_OFF_DATA_NAME = 400
CTL_OFF_SOURCE = 528
CTL_OFF_SOCKET = 560
CTL_OFF_BIGSEG_STATUS = 672
CTL_OFF_BIGSEG_AVAILABLE = 676
CTL_OFF_BIGSEG_SYNCED_MS = 680
CTL_OFF_BIGSEG_CHECKED_MS = 688
CTL_OFF_ENV_ID = 696
CTL_OFF_RESERVED = 760

#: The whole ``sf_ctl_t`` (reserved tail included), field order as in layout.h.
CTL_STRUCT = struct.Struct("<8sIIQQQQqqQQQQQIIIIIIQII256s128s32s112sIIQQ64s264x")
assert CTL_STRUCT.size == CTL_SIZE

#: u64 word indexes (``memoryview.cast("Q")``) of the words read/written with one 8-byte access.
CTL_WORD_SEQ = CTL_OFF_SEQ // 8
CTL_WORD_GENERATION = CTL_OFF_GENERATION // 8

# Data-source states (ldclient DataSourceState), in layout.h order.
STATE_INITIALIZING = 0
STATE_VALID = 1
STATE_INTERRUPTED = 2
STATE_OFF = 3
STATE_NAMES = ("INITIALIZING", "VALID", "INTERRUPTED", "OFF")

# Last-error kinds (ldclient DataSourceErrorKind); index 0 means "no error recorded".
ERROR_KIND_NAMES = (None, "UNKNOWN", "NETWORK_ERROR", "ERROR_RESPONSE", "INVALID_DATA",
                    "STORE_ERROR")

# Big Segment store status (ldclient BigSegmentsStatus).
BIGSEG_STATUS_NAMES = ("NOT_CONFIGURED", "HEALTHY", "STALE", "STORE_ERROR")


class Control(NamedTuple):
    """The decoded ``sf_ctl_t`` (strings decoded, reserved fields dropped)."""

    magic: bytes
    format: int
    size: int
    seq: int
    generation: int
    data_size: int
    data_checksum: int
    payload_version: int
    supervisor_pid: int
    supervisor_start_ms: int
    heartbeat_ms: int
    heartbeat_mono_ms: int
    last_update_ms: int
    state_since_ms: int
    state: int
    from_cache: int
    n_flags: int
    n_segments: int
    error_kind: int
    error_status: int
    error_time_ms: int
    error_len: int
    reserved0: int
    error_message: str
    data_name: str
    source: str
    socket: str
    bigseg_status: int
    bigseg_available: int
    bigseg_synced_ms: int
    bigseg_checked_ms: int
    env_id: str


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def unpack_control(buf: bytes | memoryview) -> Control:
    """Decode a 1024-byte control block copy (no validation beyond struct sizes)."""
    f = list(CTL_STRUCT.unpack_from(buf, 0))
    err_len = min(f[21], CTL_ERROR_MAX)
    f[23] = bytes(f[23][:err_len]).decode("utf-8", "replace")
    f[24] = _cstr(f[24])
    f[25] = _cstr(f[25])
    f[26] = _cstr(f[26])
    f[31] = _cstr(f[31])
    return Control._make(f)


def encode_cstr(value: str, size: int, what: str) -> bytes:
    """Encode ``value`` as a NUL-terminated field of ``size`` bytes, or raise ValueError."""
    raw = value.encode("utf-8")
    if len(raw) >= size or b"\0" in raw:
        raise ValueError(f"{what} must be at most {size - 1} UTF-8 bytes without NUL: {value!r}")
    return raw.ljust(size, b"\0")


def truncate_utf8(text: str, limit: int) -> bytes:
    """Encode ``text`` as UTF-8, cut to at most ``limit`` bytes on a character boundary."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8")
