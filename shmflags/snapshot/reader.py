"""Parses and validates snapshot bytes and looks entries up by key; hostile bytes are expected.

Safe in any process (workers, supervisor, CLI); pure computation over a buffer it never
writes. Every failure is a :class:`~shmflags.errors.SnapshotFormatError` whose message names
the expected and the actual value; no other exception escapes, whatever the bytes.
"""
from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Optional, Union

import msgpack

from shmflags.errors import SnapshotFormatError
from shmflags.snapshot import format as fmt

Buffer = Union[bytes, bytearray, memoryview, Any]   # anything exposing the buffer protocol

#: Same value as ``builder.EXT_BIGINT`` (not imported, so a worker never loads the builder).
_EXT_BIGINT = 1


class Entry(NamedTuple):
    """One validated flag or segment entry."""

    offset: int       # of the sf_entry_t
    key: str
    version: int
    raw_off: int
    raw_len: int
    rec_off: int
    rec_len: int


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_BIGINT:
        try:
            return int(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"bad big integer ext value {data[:32]!r}") from exc
    raise ValueError(f"unexpected msgpack ext type {code}")


def decode_raw(raw: Union[bytes, memoryview], what: str = "item") -> dict:
    """Decode an entry's msgpack into the LD JSON object (a dict).

    :raises SnapshotFormatError: when the bytes are not one msgpack map.
    """
    try:
        obj = msgpack.unpackb(raw, raw=False, ext_hook=_ext_hook, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several types on hostile input
        raise SnapshotFormatError(f"{what}: raw msgpack does not decode: "
                                  f"{type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise SnapshotFormatError(f"{what}: raw msgpack: expected a map, got "
                                  f"{type(obj).__name__}")
    return obj


def check_header(buf: memoryview, *, verify_checksum: bool = True) -> fmt.Header:
    """Validate the header of ``buf`` (steps 1-5 of docs/snapshot-format.md §1.6).

    :param buf: a byte-format memoryview of the whole object.
    :param verify_checksum: hash the body too (skip only when the same bytes were verified).
    :returns: the decoded header.
    :raises SnapshotFormatError: naming the expected and actual value of the first mismatch.
    """
    size = len(buf)
    if size < fmt.HEADER_SIZE:
        raise SnapshotFormatError(
            f"snapshot too short: expected at least {fmt.HEADER_SIZE} bytes, got {size}")
    h = fmt.unpack_header(buf)
    if h.magic != fmt.MAGIC:
        raise SnapshotFormatError(f"bad magic: expected {fmt.MAGIC!r}, got {h.magic!r}")
    if h.format != fmt.FORMAT_WORD:
        raise SnapshotFormatError(
            f"format word mismatch: expected 0x{fmt.FORMAT_WORD:08x}, got 0x{h.format:08x} "
            f"(layout version {h.format >> 24}, this build reads {fmt.LAYOUT_VERSION})")
    check = fmt.checksum(buf[:fmt.OFF_HEADER_CHECK])
    if check != h.header_check:
        raise SnapshotFormatError(
            f"header check mismatch: expected 0x{check:016x}, got 0x{h.header_check:016x}")
    if not fmt.HEADER_SIZE <= h.total_size <= size:
        raise SnapshotFormatError(
            f"bad total_size: expected {fmt.HEADER_SIZE}..{size} (buffer size), "
            f"got {h.total_size}")
    if verify_checksum:
        body = fmt.checksum(buf[fmt.HEADER_SIZE:h.total_size])
        if body != h.checksum:
            raise SnapshotFormatError(
                f"checksum mismatch: expected 0x{h.checksum:016x} (header), "
                f"got 0x{body:016x} (computed over {h.total_size - fmt.HEADER_SIZE} bytes)")
    for name, off, cap, n in (("flag", h.flag_index_off, h.flag_index_cap, h.n_flags),
                              ("segment", h.seg_index_off, h.seg_index_cap, h.n_segments)):
        want = fmt.index_capacity(n)
        if cap < want or cap & (cap - 1):
            raise SnapshotFormatError(
                f"{name} index capacity: expected a power of two >= {want} for {n} keys, "
                f"got {cap}")
        _span(h, f"{name} index", off, cap * fmt.SLOT_SIZE, align=True)
    _span(h, "flag order", h.flag_order_off, 4 * h.n_flags, align=True)
    _span(h, "segment order", h.seg_order_off, 4 * h.n_segments, align=True)
    return h


def _span(h: fmt.Header, what: str, off: int, length: int, *, align: bool = False) -> None:
    if align and off % fmt.ALIGN:
        raise SnapshotFormatError(f"{what} offset {off}: expected a multiple of {fmt.ALIGN}")
    if off < fmt.HEADER_SIZE or off + length > h.total_size:
        raise SnapshotFormatError(
            f"{what} [{off}, {off + length}) outside the body: expected within "
            f"[{fmt.HEADER_SIZE}, {h.total_size})")


class SnapshotReader:
    """A validated view of one snapshot's bytes.

    Opening checks the header, sizes, checksum and the index and order regions; every entry
    is bounds-checked when it is used. The reader keeps a memoryview of ``buffer`` (so an
    mmap stays mapped while the reader lives) and never writes it.

    :param buffer: the snapshot (bytes, mmap, memoryview, ...).
    :param verify_checksum: see :func:`check_header`.
    :raises SnapshotFormatError: the bytes are not a valid snapshot of this build's format.
    """

    def __init__(self, buffer: Buffer, *, verify_checksum: bool = True) -> None:
        try:
            mv = memoryview(buffer)
            if mv.format != "B" or mv.ndim != 1:
                mv = mv.cast("B")
        except (TypeError, ValueError) as exc:
            raise SnapshotFormatError(f"not a byte buffer: {type(buffer).__name__}: {exc}") \
                from None
        self._buf = mv
        self.header = check_header(mv, verify_checksum=verify_checksum)

    # -- header fields -------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self.header.generation

    @property
    def n_flags(self) -> int:
        return self.header.n_flags

    @property
    def n_segments(self) -> int:
        return self.header.n_segments

    @property
    def payload_version(self) -> int:
        return self.header.payload_version

    @property
    def built_at_ms(self) -> int:
        return self.header.built_at_ms

    @property
    def record_format(self) -> int:
        return self.header.record_format

    @property
    def buffer(self) -> memoryview:
        """The snapshot bytes (read-only use only)."""
        return self._buf

    # -- entries -------------------------------------------------------------------------------

    def entry_at(self, off: int, what: str = "entry") -> Entry:
        """Return the entry at byte offset ``off``, bounds-checking it and its blobs."""
        h = self.header
        _span(h, f"{what} at {off}", off, fmt.ENTRY_SIZE, align=True)
        key_off, key_len, raw_off, raw_len, rec_off, rec_len, vlo, vhi = \
            fmt.ENTRY_STRUCT.unpack_from(self._buf, off)
        _span(h, f"{what} at {off}: key", key_off, key_len + 1)
        if self._buf[key_off + key_len] != 0:
            raise SnapshotFormatError(
                f"{what} at {off}: key not NUL-terminated: expected 0 at {key_off + key_len}, "
                f"got {self._buf[key_off + key_len]}")
        _span(h, f"{what} at {off}: raw", raw_off, raw_len)
        _span(h, f"{what} at {off}: record", rec_off, rec_len, align=True)
        try:
            key = str(self._buf[key_off:key_off + key_len], "utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise SnapshotFormatError(f"{what} at {off}: key is not UTF-8: {exc}") from None
        return Entry(off, key, fmt.version_join(vlo, vhi), raw_off, raw_len, rec_off, rec_len)

    def _lookup(self, key: str, index_off: int, cap: int, what: str) -> Optional[Entry]:
        try:
            kb = key.encode("utf-8", "surrogatepass")
        except (UnicodeEncodeError, AttributeError):
            return None
        h = fmt.key_hash(kb)
        mask = cap - 1
        i = h & mask
        buf = self._buf
        unpack = fmt.SLOT_STRUCT.unpack_from
        for _ in range(cap):
            slot_hash, entry_off, _zero = unpack(buf, index_off + i * fmt.SLOT_SIZE)
            if entry_off == 0:
                return None
            if slot_hash == h:
                e = self.entry_at(entry_off, what)
                if e.key == key:
                    return e
            i = (i + 1) & mask
        return None

    def find_flag(self, key: str) -> Optional[Entry]:
        """Return the flag entry for ``key``, or ``None``."""
        h = self.header
        return self._lookup(key, h.flag_index_off, h.flag_index_cap, "flag entry")

    def find_segment(self, key: str) -> Optional[Entry]:
        """Return the segment entry for ``key``, or ``None``."""
        h = self.header
        return self._lookup(key, h.seg_index_off, h.seg_index_cap, "segment entry")

    def _order(self, off: int, n: int, what: str) -> Iterator[Entry]:
        for i in range(n):
            entry_off = int.from_bytes(self._buf[off + 4 * i:off + 4 * i + 4], "little")
            yield self.entry_at(entry_off, what)

    def flags(self) -> Iterator[Entry]:
        """Yield the flag entries in key order."""
        return self._order(self.header.flag_order_off, self.header.n_flags, "flag entry")

    def segments(self) -> Iterator[Entry]:
        """Yield the segment entries in key order."""
        return self._order(self.header.seg_order_off, self.header.n_segments, "segment entry")

    def raw(self, entry: Entry) -> memoryview:
        """Return the msgpack bytes of ``entry`` (a view into the snapshot)."""
        return self._buf[entry.raw_off:entry.raw_off + entry.raw_len]

    def record(self, entry: Entry) -> memoryview:
        """Return the compiled record of ``entry`` (a view into the snapshot)."""
        return self._buf[entry.rec_off:entry.rec_off + entry.rec_len]

    def decode(self, entry: Entry) -> dict:
        """Decode ``entry``'s msgpack into its LD JSON object.

        :raises SnapshotFormatError: when it does not decode to a map.
        """
        return decode_raw(self.raw(entry), f"entry {entry.key!r}")

    def release(self) -> None:
        """Drop the view of the buffer (lets an mmap be closed). The reader is unusable after."""
        self._buf.release()
