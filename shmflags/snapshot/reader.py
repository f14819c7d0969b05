"""Parses and validates snapshot bytes and looks entries up by key; hostile bytes are expected.

Safe in any process (workers, supervisor, CLI); pure computation over a buffer it never
writes. Every failure is a :class:`~shmflags.errors.SnapshotFormatError` whose message names
the expected and the actual value; no other exception escapes, whatever the bytes.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, NamedTuple, Optional, Tuple, Union

import msgpack

from shmflags.errors import SnapshotFormatError
from shmflags.snapshot import format as fmt

log = logging.getLogger("shmflags.snapshot")

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
    pool_off: int     # the record's string pool (0 and 0: none)
    pool_len: int


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
        obj = msgpack.unpackb(raw, raw=False, ext_hook=_ext_hook, strict_map_key=True,
                              unicode_errors="surrogatepass")
    except Exception as exc:  # noqa: BLE001 - msgpack raises several types on hostile input
        raise SnapshotFormatError(f"{what}: raw msgpack does not decode: "
                                  f"{type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise SnapshotFormatError(f"{what}: raw msgpack: expected a map, got "
                                  f"{type(obj).__name__}")
    return obj


def new_state(h: fmt.Header) -> bytearray:
    """Return a fresh verification state for an object with header ``h``.

    One byte for the directory (1 = its checksum was verified) then one per blob chunk
    (:data:`~shmflags.snapshot.format.CHUNK_UNKNOWN`, ``CHUNK_OK`` or ``CHUNK_BAD``). A state
    belongs to one mapped object: :class:`shmflags.shm.Attachment` keeps it with the mapping,
    so a base verified once stays verified for every overlay on it; both readers share it.
    """
    return bytearray(1 + h.n_chunks)


def _check_state(state: Any, h: fmt.Header, what: str) -> Any:
    if state is None:
        return new_state(h)
    try:
        n = len(memoryview(state).cast("B"))
    except (TypeError, ValueError) as exc:
        raise SnapshotFormatError(f"{what}: not a writable byte buffer: {exc}") from None
    if n < 1 + h.n_chunks:
        raise SnapshotFormatError(f"{what}: expected at least {1 + h.n_chunks} bytes "
                                  f"(1 + n_chunks), got {n}")
    return state


def check_header(buf: memoryview, *, verify_checksum: bool = True) -> fmt.Header:
    """Validate the header and directory of ``buf`` (steps 1-5 of docs/snapshot-format.md §1.6).

    Blob chunks are not hashed here: readers verify each one on first use.

    :param buf: a byte-format memoryview of the whole object.
    :param verify_checksum: hash the directory too (skip only when the same bytes were verified).
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
    if not fmt.HEADER_SIZE <= h.total_size <= min(size, fmt.MAX_SNAPSHOT_SIZE):
        raise SnapshotFormatError(
            f"bad total_size: expected {fmt.HEADER_SIZE}.."
            f"{min(size, fmt.MAX_SNAPSHOT_SIZE)} (buffer size, 2 GiB limit), got {h.total_size}")
    if h.blob_off % fmt.ALIGN or not fmt.HEADER_SIZE <= h.blob_off <= h.total_size:
        raise SnapshotFormatError(
            f"bad blob_off: expected a multiple of {fmt.ALIGN} in "
            f"[{fmt.HEADER_SIZE}, {h.total_size}], got {h.blob_off}")
    if verify_checksum:
        verify_directory(buf, h)
    for name, off, cap, n in (("flag", h.flag_index_off, h.flag_index_cap, h.n_flags),
                              ("segment", h.seg_index_off, h.seg_index_cap, h.n_segments)):
        want = fmt.index_capacity(n)
        if cap < want or cap & (cap - 1):
            raise SnapshotFormatError(
                f"{name} index capacity: expected a power of two >= {want} for {n} keys, "
                f"got {cap}")
        _dir_span(h, f"{name} index", off, cap * fmt.SLOT_SIZE)
    _dir_span(h, "flag entries", h.flag_entries_off, fmt.ENTRY_SIZE * h.n_flags)
    _dir_span(h, "segment entries", h.seg_entries_off, fmt.ENTRY_SIZE * h.n_segments)
    if not fmt.MIN_CHUNK_SHIFT <= h.chunk_shift <= fmt.MAX_CHUNK_SHIFT:
        raise SnapshotFormatError(
            f"bad chunk_shift: expected {fmt.MIN_CHUNK_SHIFT}..{fmt.MAX_CHUNK_SHIFT}, "
            f"got {h.chunk_shift}")
    want = fmt.n_chunks_for(h.total_size - h.blob_off, h.chunk_shift)
    if h.n_chunks != want:
        raise SnapshotFormatError(
            f"bad n_chunks: expected {want} for {h.total_size - h.blob_off} blob bytes, "
            f"got {h.n_chunks}")
    _dir_span(h, "chunk table", h.chunk_table_off, 8 * h.n_chunks)
    if not h.blob_off <= h.raw_off <= h.total_size:
        raise SnapshotFormatError(
            f"bad raw_off: expected within [{h.blob_off}, {h.total_size}], got {h.raw_off}")
    if h.base_size == 0 and (h.base_generation or h.base_checksum):
        raise SnapshotFormatError(
            f"self-contained snapshot (base_size 0): expected base_generation and "
            f"base_checksum 0, got {h.base_generation} and 0x{h.base_checksum:016x}")
    return h


def verify_directory(buf: memoryview, h: fmt.Header) -> None:
    """Hash the directory ``[HEADER_SIZE, blob_off)`` and compare it with the header's checksum.

    :raises SnapshotFormatError: naming both values.
    """
    body = fmt.checksum(buf[fmt.HEADER_SIZE:h.blob_off])
    if body != h.checksum:
        raise SnapshotFormatError(
            f"checksum mismatch: expected 0x{h.checksum:016x} (header), got 0x{body:016x} "
            f"(computed over the directory, {h.blob_off - fmt.HEADER_SIZE} bytes)")


def check_base(h: fmt.Header, bh: fmt.Header) -> None:
    """Check that ``bh`` (a validated header) is the base that overlay ``h`` names.

    :raises SnapshotFormatError: naming the expected and actual value.
    """
    if bh.base_size:
        raise SnapshotFormatError(
            f"base generation {bh.generation} is itself an overlay (base_size "
            f"{bh.base_size}): expected a self-contained base")
    if (bh.generation, bh.total_size, bh.checksum) != \
            (h.base_generation, h.base_size, h.base_checksum):
        raise SnapshotFormatError(
            f"wrong base: expected generation {h.base_generation} of {h.base_size} bytes, "
            f"checksum 0x{h.base_checksum:016x}; got generation {bh.generation} of "
            f"{bh.total_size} bytes, checksum 0x{bh.checksum:016x}")
    if bh.record_format != h.record_format:
        raise SnapshotFormatError(
            f"base record_format: expected 0x{h.record_format:08x}, got "
            f"0x{bh.record_format:08x}")


def _dir_span(h: fmt.Header, what: str, off: int, length: int) -> None:
    if off % fmt.ALIGN:
        raise SnapshotFormatError(f"{what} offset {off}: expected a multiple of {fmt.ALIGN}")
    if off < fmt.HEADER_SIZE or off + length > h.blob_off:
        raise SnapshotFormatError(
            f"{what} [{off}, {off + length}) outside the directory: expected within "
            f"[{fmt.HEADER_SIZE}, {h.blob_off})")


class _Obj:
    """One validated object (overlay or base): its bytes, header and verification state."""

    __slots__ = ("buf", "h", "state", "label")

    def __init__(self, buf: memoryview, h: fmt.Header, state: Any, label: str) -> None:
        self.buf = buf
        self.h = h
        self.state = state
        self.label = label

    def verify(self, off: int, length: int, what: str) -> None:
        """Verify every chunk covering ``[off, off + length)`` (a span inside the blob area)."""
        h = self.h
        if length <= 0:
            return
        shift = h.chunk_shift
        first = (off - h.blob_off) >> shift
        last = (off + length - 1 - h.blob_off) >> shift
        state = self.state
        for i in range(first, last + 1):
            st = state[1 + i]
            if st == fmt.CHUNK_OK:
                continue
            a = h.blob_off + (i << shift)
            b = min(a + (1 << shift), h.total_size)
            t = h.chunk_table_off + 8 * i
            want = int.from_bytes(self.buf[t:t + 8], "little")
            got = fmt.chunk_checksum(self.buf[a:b])
            if st == fmt.CHUNK_UNKNOWN:
                if got == want:
                    state[1 + i] = fmt.CHUNK_OK
                    continue
                state[1 + i] = fmt.CHUNK_BAD
                log.error("shmflags: snapshot generation %d (%s): blob chunk %d [%d, %d) "
                          "checksum mismatch: expected 0x%016x (chunk table), got 0x%016x; "
                          "items in it are unusable", h.generation, self.label, i, a, b,
                          want, got)
            raise SnapshotFormatError(
                f"{what}: {self.label} blob chunk {i} [{a}, {b}) checksum mismatch: expected "
                f"0x{want:016x} (chunk table), got 0x{got:016x}")


class SnapshotReader:
    """A validated view of one snapshot's bytes (and of its base, for an overlay).

    Opening checks the header, sizes, the directory checksum and the index, entries and chunk
    table regions; every entry is bounds-checked when it is used, and each blob chunk is
    verified against the chunk table the first time a key, raw or record span touches it.
    The reader keeps a memoryview of ``buffer`` (so an mmap stays mapped while the reader
    lives) and never writes it.

    :param buffer: the snapshot (bytes, mmap, memoryview, ...).
    :param verify_checksum: see :func:`check_header` (also skipped when ``state`` says the
        directory was verified).
    :param base: the base object's bytes when the snapshot is an overlay (``base_size != 0``).
    :param state: the object's verification state (:func:`new_state`); default a fresh one.
    :param base_state: the same for ``base``.
    :raises SnapshotFormatError: the bytes are not a valid snapshot of this build's format.
    """

    def __init__(self, buffer: Buffer, *, verify_checksum: bool = True, base: Buffer = None,
                 state: Any = None, base_state: Any = None) -> None:
        mv = _byteview(buffer, "buffer")
        self._buf = mv
        self.header, state = _open(mv, verify_checksum, state, "state")
        self._own = _Obj(mv, self.header, state, "this object")
        self._base: Optional[_Obj] = None
        h = self.header
        if h.base_size:
            if base is None:
                raise SnapshotFormatError(
                    f"overlay on base generation {h.base_generation}: expected the base "
                    f"object ({h.base_size} bytes), got none")
            bmv = _byteview(base, "base")
            bh, base_state = _open(bmv, verify_checksum, base_state, "base_state")
            check_base(h, bh)
            self._base = _Obj(bmv, bh, base_state, f"base generation {bh.generation}")
        elif base is not None:
            raise SnapshotFormatError("self-contained snapshot (base_size 0): expected no "
                                      "base object, got one")

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

    def _blob(self, off: int, length: int, what: str) -> Tuple[_Obj, int]:
        """Resolve a key/raw/rec/pool offset (bit 31: the base) and bounds-check its span.

        :returns: the object holding it and the offset in that object.
        """
        if off & fmt.BASE_BIT:
            obj = self._base
            if obj is None:
                raise SnapshotFormatError(
                    f"{what}: offset 0x{off:08x} refers to a base object (bit 31), but this "
                    f"snapshot has none")
            off &= fmt.OFF_MASK
        else:
            obj = self._own
        h = obj.h
        if off < h.blob_off or off + length > h.total_size:
            raise SnapshotFormatError(
                f"{what} [{off}, {off + length}) outside the blob area of {obj.label}: "
                f"expected within [{h.blob_off}, {h.total_size})")
        return obj, off

    def entry_at(self, off: int, what: str = "entry") -> Entry:
        """Return the entry at byte offset ``off``, bounds-checking it and its blobs.

        The key's chunks are verified here (the key is read); raw, record and pool chunks
        when :meth:`raw`, :meth:`record` or :meth:`pool` reads them.
        """
        _dir_span(self.header, f"{what} at {off}", off, fmt.ENTRY_SIZE)
        key_off, key_len, raw_off, raw_len, rec_off, rec_len, vlo, vhi, pool_off, pool_len = \
            fmt.ENTRY_STRUCT.unpack_from(self._buf, off)
        kobj, koff = self._blob(key_off, key_len + 1, f"{what} at {off}: key")
        self._blob(raw_off, raw_len, f"{what} at {off}: raw")
        robj, roff = self._blob(rec_off, rec_len, f"{what} at {off}: record")
        if pool_len:
            self._blob(pool_off, pool_len, f"{what} at {off}: string pool")
        if roff % fmt.ALIGN:
            raise SnapshotFormatError(
                f"{what} at {off}: record offset {roff}: expected a multiple of {fmt.ALIGN}")
        kobj.verify(koff, key_len + 1, f"{what} at {off}: key")
        kbuf = kobj.buf
        if kbuf[koff + key_len] != 0:
            raise SnapshotFormatError(
                f"{what} at {off}: key not NUL-terminated: expected 0 at {koff + key_len}, "
                f"got {kbuf[koff + key_len]}")
        try:
            key = str(kbuf[koff:koff + key_len], "utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise SnapshotFormatError(f"{what} at {off}: key is not UTF-8: {exc}") from None
        return Entry(off, key, fmt.version_join(vlo, vhi), raw_off, raw_len, rec_off, rec_len,
                     pool_off, pool_len)

    def _lookup(self, key: str, index_off: int, cap: int, what: str) -> Optional[Entry]:
        try:
            kb = key.encode("utf-8", "surrogatepass")
        except (UnicodeEncodeError, AttributeError):
            return None
        h = fmt.key_hash(kb)
        tag = fmt.key_tag(h)
        mask = cap - 1
        i = h & mask
        buf = self._buf
        unpack = fmt.SLOT_STRUCT.unpack_from
        for _ in range(cap):
            slot_tag, entry_off = unpack(buf, index_off + i * fmt.SLOT_SIZE)
            if entry_off == 0:
                return None
            if slot_tag == tag:
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

    def _entries(self, off: int, n: int, what: str) -> Iterator[Entry]:
        # The entries array lies inside the directory (checked at open); each entry's spans
        # are checked by entry_at.
        for i in range(n):
            yield self.entry_at(off + fmt.ENTRY_SIZE * i, what)

    def flags(self) -> Iterator[Entry]:
        """Yield the flag entries in key order (the order of the flag entries array)."""
        return self._entries(self.header.flag_entries_off, self.header.n_flags, "flag entry")

    def segments(self) -> Iterator[Entry]:
        """Yield the segment entries in key order."""
        return self._entries(self.header.seg_entries_off, self.header.n_segments,
                             "segment entry")

    def raw(self, entry: Entry) -> memoryview:
        """Return the msgpack bytes of ``entry`` (a view into the snapshot or its base).

        :raises SnapshotFormatError: a chunk it lies in fails verification.
        """
        what = f"entry {entry.key!r}: raw"
        obj, off = self._blob(entry.raw_off, entry.raw_len, what)
        obj.verify(off, entry.raw_len, what)
        return obj.buf[off:off + entry.raw_len]

    def record(self, entry: Entry) -> memoryview:
        """Return the compiled record of ``entry`` (a view into the snapshot or its base).

        :raises SnapshotFormatError: a chunk it lies in fails verification.
        """
        what = f"entry {entry.key!r}: record"
        obj, off = self._blob(entry.rec_off, entry.rec_len, what)
        obj.verify(off, entry.rec_len, what)
        return obj.buf[off:off + entry.rec_len]

    def pool(self, entry: Entry) -> memoryview:
        """Return the string pool of ``entry``'s record (empty when it has none).

        :raises SnapshotFormatError: a chunk it lies in fails verification.
        """
        if not entry.pool_len:
            return memoryview(b"")
        what = f"entry {entry.key!r}: string pool"
        obj, off = self._blob(entry.pool_off, entry.pool_len, what)
        obj.verify(off, entry.pool_len, what)
        return obj.buf[off:off + entry.pool_len]

    @property
    def base_header(self) -> Optional[fmt.Header]:
        """The base's header for an overlay, else ``None``."""
        return self._base.h if self._base is not None else None

    def decode(self, entry: Entry) -> dict:
        """Decode ``entry``'s msgpack into its LD JSON object.

        :raises SnapshotFormatError: when it does not decode to a map.
        """
        return decode_raw(self.raw(entry), f"entry {entry.key!r}")

    def release(self) -> None:
        """Drop the views of the buffers (lets an mmap be closed). The reader is unusable after."""
        self._buf.release()
        if self._base is not None:
            self._base.buf.release()


def _byteview(buffer: Buffer, what: str) -> memoryview:
    try:
        mv = memoryview(buffer)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
    except (TypeError, ValueError) as exc:
        raise SnapshotFormatError(f"{what}: not a byte buffer: {type(buffer).__name__}: {exc}") \
            from None
    return mv


def _open(mv: memoryview, verify_checksum: bool, state: Any, what: str) -> Tuple[fmt.Header, Any]:
    """check_header, hashing the directory unless ``state`` says it was verified."""
    h = check_header(mv, verify_checksum=False)
    state = _check_state(state, h, what)
    if verify_checksum and not state[0]:
        verify_directory(mv, h)
        state[0] = 1
    return h, state
