"""Byte layouts shared with the C reader: the snapshot container and the control block.

Safe in any process; constants and pure functions only. Every size and offset here is also
stated, with a ``_Static_assert``, in ``native/layout.h``; ``docs/snapshot-format.md`` describes
the same bytes in prose. Change all three together and bump :data:`LAYOUT_VERSION` (or
:data:`CTL_VERSION`).
"""
from __future__ import annotations

import struct
from typing import NamedTuple, Optional

import xxhash

# --------------------------------------------------------------------------------------------
# Snapshot container
# --------------------------------------------------------------------------------------------

MAGIC = b"SHMFLAGS"
LAYOUT_VERSION = 4
HEADER_SIZE = 160
SLOT_SIZE = 8
ENTRY_SIZE = 40
ALIGN = 8
MIN_INDEX_CAP = 8
#: Objects are limited to 2 GiB - 1: bit 31 of an entry's key/raw/rec/pool offset means "in the
#: base object" (layered generations, docs/snapshot-format.md §1.7).
MAX_SNAPSHOT_SIZE = 0x7FFFFFFF
BASE_BIT = 0x80000000
OFF_MASK = 0x7FFFFFFF
#: The builder starts the blob area on a page boundary, so chunks are whole pages and a reader
#: that verifies the directory faults in no blob page (readers require only 8-byte alignment).
BLOB_ALIGN = 4096
#: Chunk size of the per-chunk blob checksums: 1 << CHUNK_SHIFT bytes (64 KiB). Readers accept
#: any shift in [MIN_CHUNK_SHIFT, MAX_CHUNK_SHIFT].
CHUNK_SHIFT = 16
MIN_CHUNK_SHIFT = 12
MAX_CHUNK_SHIFT = 30

#: LMDB-style format word: layout version and struct sizes folded into one u32, so a reader
#: built against another layout refuses the bytes before reading anything else.
FORMAT_WORD = (LAYOUT_VERSION << 24) | ((HEADER_SIZE // 8) << 16) | (SLOT_SIZE << 8) | ENTRY_SIZE
assert FORMAT_WORD == 0x04140828

#: ``sf_header_t``: magic, format, record_format, total_size, checksum, generation,
#: built_at_ms, payload_version, n_flags, n_segments, flag_index_off, flag_index_cap,
#: seg_index_off, seg_index_cap, flag_entries_off, seg_entries_off, chunk_table_off, chunk_shift,
#: n_chunks, blob_off, raw_off, 4 reserved bytes, base_generation, base_size, base_checksum,
#: 16 reserved bytes, header_check.
HEADER_STRUCT = struct.Struct("<8sIIQQQQqIIIIIIIIIIIII4xQQQ16xQ")
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
OFF_FLAG_ENTRIES_OFF = 80
OFF_SEG_ENTRIES_OFF = 84
OFF_CHUNK_TABLE_OFF = 88
OFF_CHUNK_SHIFT = 92
OFF_N_CHUNKS = 96
OFF_BLOB_OFF = 100
OFF_RAW_OFF = 104
OFF_RESERVED0 = 108
OFF_BASE_GENERATION = 112
OFF_BASE_SIZE = 120
OFF_BASE_CHECKSUM = 128
OFF_RESERVED = 136
OFF_HEADER_CHECK = 152

#: Chunk verification states, one byte per chunk after the directory byte (see
#: :func:`shmflags.snapshot.reader.new_state`).
CHUNK_UNKNOWN = 0
CHUNK_OK = 1
CHUNK_BAD = 2

#: ``sf_slot_t``: the key's tag (high 32 bits of its xxh64, :func:`key_tag`), entry offset
#: (0 = empty).
SLOT_STRUCT = struct.Struct("<II")
assert SLOT_STRUCT.size == SLOT_SIZE

#: ``sf_entry_t``: key_off, key_len, raw_off, raw_len, rec_off, rec_len, version_lo, version_hi,
#: pool_off, pool_len.
ENTRY_STRUCT = struct.Struct("<IIIIIIIIII")
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
    flag_entries_off: int
    seg_entries_off: int
    chunk_table_off: int
    chunk_shift: int
    n_chunks: int
    blob_off: int
    raw_off: int
    base_generation: int
    base_size: int
    base_checksum: int
    header_check: int


def key_hash(key: bytes) -> int:
    """Return the index hash of a key: xxh64 of its UTF-8 bytes, seed 0."""
    return xxhash.xxh64_intdigest(key)


def key_tag(hash64: int) -> int:
    """Return the tag an index slot stores for a key whose :func:`key_hash` is ``hash64``:
    its high 32 bits (the low bits pick the home slot, so the tag adds information)."""
    return hash64 >> 32


def checksum(data: bytes | memoryview) -> int:
    """Return xxh3_64 (seed 0) of ``data``: the directory checksum and the header check."""
    return xxhash.xxh3_64_intdigest(data)


def chunk_checksum(data: bytes | memoryview) -> int:
    """Return xxh64 (seed 0) of one blob chunk (the C reader carries xxh64, not xxh3)."""
    return xxhash.xxh64_intdigest(data)


def n_chunks_for(blob_len: int, shift: int) -> int:
    """Return how many chunks of ``1 << shift`` bytes cover ``blob_len`` bytes."""
    return (blob_len + (1 << shift) - 1) >> shift


def index_capacity(n: int) -> int:
    """Return the slot count of an index for ``n`` keys: the smallest power of two >= 1.25n
    (``4 * cap >= 5 * n``), at least 8. So at least a fifth of the slots are empty."""
    cap = MIN_INDEX_CAP
    while 4 * cap < 5 * n:
        cap <<= 1
    return cap


def align(n: int) -> int:
    """Round ``n`` up to a multiple of :data:`ALIGN`."""
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def pack_header(h: Header) -> bytes:
    """Pack ``h`` into :data:`HEADER_SIZE` bytes, recomputing ``header_check`` (the given value is ignored)."""
    raw = HEADER_STRUCT.pack(*h[:-1], 0)
    return raw[:OFF_HEADER_CHECK] + struct.pack("<Q", checksum(raw[:OFF_HEADER_CHECK]))


def unpack_header(buf: bytes | memoryview) -> Header:
    """Unpack the first :data:`HEADER_SIZE` bytes of ``buf`` without validating anything."""
    return Header._make(HEADER_STRUCT.unpack_from(buf, 0))


def stamp_generation(header: bytes | memoryview, generation: int,
                     base_generation: Optional[int] = None) -> bytes:
    """Return a copy of a header with ``generation`` (and ``base_generation``) set and
    ``header_check`` redone.

    The directory checksum does not cover the header, so the publisher stamps the generation
    without rehashing anything.
    """
    h = unpack_header(header)._replace(generation=generation)
    if base_generation is not None:
        h = h._replace(base_generation=base_generation)
    return pack_header(h)


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


def reseal(buf: bytearray) -> bytes:
    """Recompute the chunk table, directory checksum and header check of hand-edited snapshot
    bytes (tests and fuzzers: what anyone can do, so readers never trust checksums alone).

    Fields that are out of range are left as they are; the result may still be invalid.
    """
    h = unpack_header(buf)
    blob_off = min(h.blob_off, len(buf))
    total = min(h.total_size, len(buf))
    if MIN_CHUNK_SHIFT <= h.chunk_shift <= MAX_CHUNK_SHIFT \
            and HEADER_SIZE <= h.chunk_table_off <= h.chunk_table_off + 8 * h.n_chunks <= blob_off:
        size = 1 << h.chunk_shift
        for i in range(h.n_chunks):
            a = h.blob_off + i * size
            struct.pack_into("<Q", buf, h.chunk_table_off + 8 * i,
                             chunk_checksum(bytes(buf[a:max(a, min(a + size, total))])))
    struct.pack_into("<Q", buf, OFF_CHECKSUM, checksum(bytes(buf[HEADER_SIZE:max(blob_off, HEADER_SIZE)])))
    struct.pack_into("<Q", buf, OFF_HEADER_CHECK, checksum(bytes(buf[:OFF_HEADER_CHECK])))
    return bytes(buf)
