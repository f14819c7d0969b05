"""Turns LaunchDarkly flag and segment JSON into snapshot bytes, reusing unchanged items.

Runs in the supervisor (and in tests and the CLI); pure computation, no I/O. The container
layout is in :mod:`shmflags.snapshot.format` and ``docs/snapshot-format.md``.
"""
from __future__ import annotations

import array
import logging
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import msgpack
import xxhash

from shmflags.errors import SnapshotError
from shmflags.snapshot import format as fmt

log = logging.getLogger(__name__)

#: msgpack ext type holding an integer outside the 64-bit range, as its decimal ASCII digits
#: (LD JSON may carry any integer; ``ldclient`` keeps it exact, so do we).
EXT_BIGINT = 1

Compiler = Callable[[dict], bytes]

_FLAGS = 0
_SEGMENTS = 1


class _Item(NamedTuple):
    """One item's reusable bytes: ``key NUL pad | raw pad | record pad`` plus relative spans."""

    source: dict          # the dict it was built from (identity fast path)
    version: int
    digest: int           # xxh3_64 of the msgpack
    blob: bytes
    key_len: int
    raw_rel: int
    raw_len: int
    rec_rel: int
    rec_len: int
    hash: int             # xxh64 of the key bytes
    version_lo: int
    version_hi: int
    blob_len: int


class _Table(NamedTuple):
    """Cached layout of one kind that depends only on its sorted key set."""

    keys: Tuple[str, ...]
    keyset: frozenset
    cap: int
    slot_ranks: Tuple[int, ...]   # per slot: rank + 1 of the entry in key order, 0 = empty


def _pack_default(obj: Any) -> Any:
    # msgpack calls this for integers outside [-2^63, 2^64) and for non-JSON types.
    if isinstance(obj, int) and not isinstance(obj, bool):
        return msgpack.ExtType(EXT_BIGINT, str(obj).encode("ascii"))
    raise TypeError(f"cannot store {type(obj).__name__} in a snapshot")


def pack_raw(obj: dict) -> bytes:
    """Return the msgpack stored as an entry's ``raw`` blob for an LD JSON object.

    :param obj: a flag or segment as decoded from JSON.
    :raises TypeError: when it holds something JSON cannot (a set, an object, ...).
    """
    return msgpack.packb(obj, use_bin_type=True, default=_pack_default)


def _default_compilers() -> Tuple[Optional[Compiler], Optional[Compiler], int]:
    try:
        from shmflags.snapshot import compile as compile_mod
    except ImportError as exc:
        log.warning("shmflags.snapshot.compile is not importable (%s); snapshots will carry "
                    "no compiled records", exc)
        return None, None, 0
    return (getattr(compile_mod, "compile_flag", None),
            getattr(compile_mod, "compile_segment", None),
            int(getattr(compile_mod, "RECORD_FORMAT", 0)))


def _pad(n: int) -> bytes:
    return b"\0" * (fmt.align(n) - n)


class SnapshotBuilder:
    """Builds snapshot bytes from flag and segment dicts, incrementally.

    Each item's bytes (key, msgpack, compiled record) are cached by key; a later build reuses
    them when the item is the same dict object with the same version, or when its msgpack
    hashes the same. Only the indexes, order arrays, entries and header are rebuilt, so a
    one-flag patch of a large environment costs little.

    Treat the dicts given to :meth:`build` as immutable: a changed item must be a new dict (the
    store replaces, never mutates), or call :meth:`clear` after mutating in place.

    One builder per supervisor; not thread-safe. Nothing in it survives a fork usefully, and
    nothing needs to.

    :param compile_flag: ``flag dict -> record bytes``; default
        ``shmflags.snapshot.compile.compile_flag`` when importable, else no records.
    :param compile_segment: the same for segments.
    :param record_format: the records' format word written into the header; default
        ``shmflags.snapshot.compile.RECORD_FORMAT`` (0 when there are no records).
    :param use_default_compilers: when false, ``None`` compilers mean "no records" instead of
        "the defaults" (golden files use this to pin the container bytes alone).
    """

    def __init__(self, *, compile_flag: Optional[Compiler] = None,
                 compile_segment: Optional[Compiler] = None,
                 record_format: Optional[int] = None,
                 use_default_compilers: bool = True) -> None:
        if use_default_compilers and compile_flag is None and compile_segment is None:
            compile_flag, compile_segment, default_format = _default_compilers()
            if record_format is None:
                record_format = default_format
        self._compilers: Tuple[Optional[Compiler], Optional[Compiler]] = (
            compile_flag, compile_segment)
        self._record_format = int(record_format or 0)
        if not 0 <= self._record_format <= 0xFFFFFFFF:
            raise ValueError("record_format must be a u32")
        self._items: List[Dict[str, _Item]] = [{}, {}]
        self._tables: List[Optional[_Table]] = [None, None]
        self._index_cache: List[Optional[Tuple[_Table, int, bytes]]] = [None, None]
        #: counters of the last build: items reused and items (re)encoded
        self.last_reused = 0
        self.last_encoded = 0

    def clear(self) -> None:
        """Forget every cached item (next build encodes everything)."""
        self._items = [{}, {}]
        self._tables = [None, None]
        self._index_cache = [None, None]

    # ------------------------------------------------------------------ items

    def _compile(self, kind: int, key: str, obj: dict) -> bytes:
        compiler = self._compilers[kind]
        if compiler is None:
            return b""
        try:
            rec = compiler(obj)
        except Exception as exc:  # noqa: BLE001 - one bad item must not stop a publish
            # Like ldclient, a malformed item is stored and evaluates to MALFORMED_FLAG; the
            # C evaluator reads rec_len 0 as "malformed" when record_format != 0.
            log.warning("%s %r: cannot compile (%s: %s); stored without a compiled record",
                        "flag" if kind == _FLAGS else "segment", key, type(exc).__name__, exc)
            return b""
        if not isinstance(rec, (bytes, bytearray, memoryview)):
            raise TypeError(f"compiler returned {type(rec).__name__}, expected bytes")
        return bytes(rec)

    def _item(self, kind: int, key: str, obj: dict, cache: Dict[str, _Item]) -> Tuple[_Item, bool]:
        version = obj.get("version", 0)
        if type(version) is not int:
            version = int(version) if isinstance(version, float) and version.is_integer() else 0
        old = cache.get(key)
        if old is not None and old.source is obj and old.version == version:
            return old, True
        raw = pack_raw(obj)
        digest = fmt.checksum(raw)
        if old is not None and old.version == version and old.digest == digest:
            item = old._replace(source=obj)
            cache[key] = item
            return item, True
        kb = key.encode("utf-8", "surrogatepass")
        rec = self._compile(kind, key, obj)
        head = kb + b"\0"
        head += _pad(len(head))
        raw_rel = len(head)
        rec_rel = raw_rel + fmt.align(len(raw))
        blob = b"".join((head, raw, _pad(len(raw)), rec, _pad(len(rec))))
        lo, hi = fmt.version_split(version)
        item = _Item(obj, version, digest, blob, len(kb), raw_rel, len(raw), rec_rel, len(rec),
                     fmt.key_hash(kb), lo, hi, len(blob))
        cache[key] = item
        return item, False

    def _table(self, kind: int, objs: Mapping[str, Any], cache: Dict[str, _Item]) -> _Table:
        table = self._tables[kind]
        if table is not None and len(table.keyset) == len(objs) and table.keyset == objs.keys():
            return table
        keys = tuple(sorted(objs))    # code-point order == UTF-8 byte order
        cap = fmt.index_capacity(len(keys))
        slots = [0] * cap
        mask = cap - 1
        for rank, key in enumerate(keys):
            i = cache[key].hash & mask
            while slots[i]:
                i = (i + 1) & mask
            slots[i] = rank + 1
        table = _Table(keys, frozenset(keys), cap, tuple(slots))
        self._tables[kind] = table
        return table

    # ------------------------------------------------------------------ build

    def build(self, flags: Mapping[str, dict], segments: Mapping[str, dict], *,
              payload_version: int = 0, built_at_ms: Optional[int] = None,
              generation: int = 0) -> bytes:
        """Return the snapshot bytes for ``flags`` and ``segments``.

        :param flags: flag key -> LD flag JSON object; tombstones (``"deleted": true``) and
            non-dict values are left out.
        :param segments: segment key -> LD segment JSON object; same rules.
        :param payload_version: the LD payload version, stored in the header.
        :param built_at_ms: Unix ms for the header (default: now).
        :param generation: header generation; the publisher stamps the real one.
        :returns: the snapshot, ``total_size`` bytes.
        :raises SnapshotError: when it would exceed the format's 4 GiB limit.
        """
        reused = encoded = 0
        per_kind: List[Tuple[_Table, List[_Item]]] = []
        for kind, objs in enumerate((flags, segments)):
            cache = self._items[kind]
            fresh: Dict[str, _Item] = {}
            for key, obj in objs.items():
                old = cache.get(key)
                if old is not None and old.source is obj:
                    # Same dict as last build: unchanged by the immutability contract.
                    fresh[key] = old
                    reused += 1
                    continue
                if type(key) is not str or not isinstance(obj, dict) \
                        or obj.get("deleted") is True:
                    continue    # tombstones are not stored
                item, hit = self._item(kind, key, obj, cache)
                fresh[key] = item
                if hit:
                    reused += 1
                else:
                    encoded += 1
            # Keep only the items of this build, so the cache does not grow forever.
            self._items[kind] = fresh
            table = self._table(kind, fresh, fresh)
            per_kind.append((table, [fresh[k] for k in table.keys]))
        self.last_reused, self.last_encoded = reused, encoded

        (ftab, fitems), (stab, sitems) = per_kind
        nf, ns = len(fitems), len(sitems)
        flag_index_off = fmt.HEADER_SIZE
        seg_index_off = flag_index_off + ftab.cap * fmt.SLOT_SIZE
        flag_order_off = seg_index_off + stab.cap * fmt.SLOT_SIZE
        seg_order_off = flag_order_off + fmt.align(4 * nf)
        flag_entries_off = seg_order_off + fmt.align(4 * ns)
        seg_entries_off = flag_entries_off + nf * fmt.ENTRY_SIZE
        blobs_off = seg_entries_off + ns * fmt.ENTRY_SIZE

        entries = bytearray((nf + ns) * fmt.ENTRY_SIZE)
        pack_entry = fmt.ENTRY_STRUCT.pack_into
        blobs: List[bytes] = []
        append = blobs.append
        pos = blobs_off
        eoff = 0
        for items in (fitems, sitems):
            for it in items:
                (_src, _v, _d, blob, key_len, raw_rel, raw_len, rec_rel, rec_len, _h, lo, hi,
                 blob_len) = it
                pack_entry(entries, eoff, pos, key_len, pos + raw_rel, raw_len, pos + rec_rel,
                           rec_len, lo, hi)
                eoff += fmt.ENTRY_SIZE
                append(blob)
                pos += blob_len
        total = pos
        if total > fmt.MAX_SNAPSHOT_SIZE:
            raise SnapshotError(f"snapshot would be {total} bytes; the format's limit is "
                                f"{fmt.MAX_SNAPSHOT_SIZE} bytes")

        head = b"".join((
            self._index(_FLAGS, ftab, fitems, flag_entries_off),
            self._index(_SEGMENTS, stab, sitems, seg_entries_off),
            _order_bytes(nf, flag_entries_off),
            _order_bytes(ns, seg_entries_off),
            entries,
        ))
        # Hash the body piece by piece: no copy until the single final join.
        hasher = xxhash.xxh3_64(head)
        update = hasher.update
        for blob in blobs:
            update(blob)
        if built_at_ms is None:
            built_at_ms = int(time.time() * 1000)
        if type(payload_version) is not int or not -(1 << 63) <= payload_version < (1 << 63):
            payload_version = 0     # LD payload versions are small ints; anything else: unknown
        header = fmt.pack_header(fmt.Header(
            fmt.MAGIC, fmt.FORMAT_WORD, self._record_format, total, hasher.intdigest(),
            generation, built_at_ms, payload_version, nf, ns, flag_index_off, ftab.cap,
            seg_index_off, stab.cap, flag_order_off, seg_order_off, 0))
        blobs.insert(0, head)
        blobs.insert(0, header)
        return b"".join(blobs)

    def _index(self, kind: int, table: _Table, items: Sequence[_Item], entries_off: int) -> bytes:
        # Slot bytes depend only on the key set (hashes, ranks) and where the entries start.
        cached = self._index_cache[kind]
        if cached is not None and cached[0] is table and cached[1] == entries_off:
            return cached[2]
        raw = _index_bytes(table, items, entries_off)
        self._index_cache[kind] = (table, entries_off, raw)
        return raw


def _index_bytes(table: _Table, items: Sequence[_Item], entries_off: int) -> bytes:
    pack = fmt.SLOT_STRUCT.pack
    empty = pack(0, 0, 0)
    out = []
    for rank1 in table.slot_ranks:
        if rank1:
            r = rank1 - 1
            out.append(pack(items[r].hash, entries_off + r * fmt.ENTRY_SIZE, 0))
        else:
            out.append(empty)
    return b"".join(out)


def _order_bytes(n: int, entries_off: int) -> bytes:
    # Entries are written in key order at a fixed stride, so the order array is arithmetic.
    arr = array.array("I", range(entries_off, entries_off + n * fmt.ENTRY_SIZE, fmt.ENTRY_SIZE))
    if sys.byteorder != "little":
        arr.byteswap()
    raw = arr.tobytes()
    return raw + _pad(len(raw))
