"""Turns LaunchDarkly flag and segment JSON into snapshot bytes, reusing unchanged items.

Runs in the supervisor (and in tests and the CLI); pure computation, no I/O. The container
layout is in :mod:`shmflags.snapshot.format` and ``docs/snapshot-format.md``.
"""
from __future__ import annotations

import array
import logging
import sys
import time
from typing import (Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence,
                    Tuple)

import msgpack

from shmflags.errors import SnapshotError
from shmflags.snapshot import format as fmt

log = logging.getLogger(__name__)

#: msgpack ext type holding an integer outside the 64-bit range, as its decimal ASCII digits
#: (LD JSON may carry any integer; ``ldclient`` keeps it exact, so do we).
EXT_BIGINT = 1

#: ``item dict -> record bytes`` or ``(record bytes, string pool bytes)``
#: (:class:`shmflags.snapshot.compile.Compiled`).
Compiler = Callable[[dict], Any]

_FLAGS = 0
_SEGMENTS = 1


class _Item(NamedTuple):
    """One item's reusable bytes: the hot blob ``key NUL pad | record pad`` (what the C
    evaluator reads), the pool blob ``string pool pad`` (set members, read only on a
    fingerprint match) and the raw blob ``msgpack pad`` (Python evaluator, dump), plus spans."""

    source: dict          # the dict it was built from (identity fast path)
    version: int
    digest: int           # xxh3_64 of the msgpack
    hot: bytes
    pool: bytes
    raw: bytes
    key_len: int
    rec_rel: int          # record offset inside ``hot``
    rec_len: int
    pool_len: int         # 0: no pool
    sets: Tuple[int, ...]  # string sets in the record (offsets from it): its pool can be shared
    raw_len: int
    hash: int             # xxh64 of the key bytes
    version_lo: int
    version_hi: int


class _Table(NamedTuple):
    """Cached layout of one kind that depends only on its sorted key set."""

    keys: Tuple[str, ...]
    keyset: frozenset
    cap: int
    slot_ranks: Tuple[int, ...]   # per slot: rank + 1 of the entry in key order, 0 = empty


class _Base(NamedTuple):
    """What an overlay needs of the last self-contained build (its base)."""

    checksum: int
    size: int
    blob_len: int
    items: Tuple[Dict[str, _Item], Dict[str, _Item]]    # per kind: key -> item, as built
    rank: Tuple[Dict[str, int], Dict[str, int]]         # per kind: key -> rank in key order
    n_flags: int
    head: bytes               # the indexes, as in the base's directory
    entries: bytes            # the base's entries with bit 31 set on key/raw/rec offsets
    entries_off: int          # where the entries start (the same in every overlay on it)
    dir_fields: Tuple[int, int, int, int, int, int]   # flag/seg index off+cap, entries offs


#: Compaction: an overlay whose blob area would exceed this fraction of its base's blob area,
#: or :data:`COMPACT_MAX_BYTES`, is written self-contained instead (and becomes the next base).
COMPACT_FRACTION = 0.25
COMPACT_MAX_BYTES = 8 << 20


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
    # JSON may carry lone surrogates ("\ud800" is legal JSON and json.loads keeps it):
    # store them as their UTF-8-style bytes, as the compiled records do.
    return msgpack.packb(obj, use_bin_type=True, default=_pack_default,
                         unicode_errors="surrogatepass")


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
    hashes the same. Only the indexes, entries and header are rebuilt, so a
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
    :param chunk_shift: blob chunks are ``1 << chunk_shift`` bytes (tests use small chunks).
    :param compact_fraction: an overlay larger than this fraction of its base's blob area is
        written self-contained instead (:data:`COMPACT_FRACTION`).
    :param compact_max_bytes: ... or larger than this many bytes (:data:`COMPACT_MAX_BYTES`).
    """

    def __init__(self, *, compile_flag: Optional[Compiler] = None,
                 compile_segment: Optional[Compiler] = None,
                 record_format: Optional[int] = None,
                 use_default_compilers: bool = True,
                 chunk_shift: int = fmt.CHUNK_SHIFT,
                 compact_fraction: float = COMPACT_FRACTION,
                 compact_max_bytes: int = COMPACT_MAX_BYTES) -> None:
        if use_default_compilers and compile_flag is None and compile_segment is None:
            compile_flag, compile_segment, default_format = _default_compilers()
            if record_format is None:
                record_format = default_format
        self._compilers: Tuple[Optional[Compiler], Optional[Compiler]] = (
            compile_flag, compile_segment)
        self._record_format = int(record_format or 0)
        if not fmt.MIN_CHUNK_SHIFT <= chunk_shift <= fmt.MAX_CHUNK_SHIFT:
            raise ValueError(f"chunk_shift must be in [{fmt.MIN_CHUNK_SHIFT}, "
                             f"{fmt.MAX_CHUNK_SHIFT}]")
        self._chunk_shift = int(chunk_shift)
        self._compact_fraction = float(compact_fraction)
        self._compact_max = int(compact_max_bytes)
        if not 0 <= self._record_format <= 0xFFFFFFFF:
            raise ValueError("record_format must be a u32")
        self._items: List[Dict[str, _Item]] = [{}, {}]
        self._pool = _SharedPool()
        self._tables: List[Optional[_Table]] = [None, None]
        self._index_cache: List[Optional[Tuple[_Table, int, bytes]]] = [None, None]
        self._base: Optional[_Base] = None
        #: per kind: items that differ from the base's (changed or added since it), by key
        self._since: List[Dict[str, _Item]] = [{}, {}]
        #: per kind: keys of the base that are gone since
        self._removed: List[set] = [set(), set()]
        #: counters of the last build: items reused and items (re)encoded
        self.last_reused = 0
        self.last_encoded = 0
        #: what the last build wrote: "full" (self-contained) or "overlay"
        self.last_kind = ""

    def clear(self) -> None:
        """Forget every cached item and the base (next build encodes everything)."""
        self._items = [{}, {}]
        self._pool.clear()
        self._tables = [None, None]
        self._index_cache = [None, None]
        self.forget_base()

    def forget_base(self) -> None:
        """Make the next build self-contained (e.g. its base was never published)."""
        self._base = None
        self._since = [{}, {}]
        self._removed = [set(), set()]

    # ------------------------------------------------------------------ items

    def _compile(self, kind: int, key: str, obj: dict) -> Tuple[bytes, bytes, Tuple[int, ...]]:
        """``(record, pool, sets)`` of one item; empty when it has no compiled record."""
        compiler = self._compilers[kind]
        if compiler is None:
            return b"", b"", ()
        try:
            rec = compiler(obj)
        except Exception as exc:  # noqa: BLE001 - one bad item must not stop a publish
            # Like ldclient, a malformed item is stored and evaluates to MALFORMED_FLAG; the
            # C evaluator reads rec_len 0 as "malformed" when record_format != 0.
            log.warning("%s %r: cannot compile (%s: %s); stored without a compiled record",
                        "flag" if kind == _FLAGS else "segment", key, type(exc).__name__, exc)
            return b"", b"", ()
        pool: Any = b""
        sets: Any = ()
        if isinstance(rec, tuple) and len(rec) in (2, 3):
            rec, pool, *more = rec
            sets = more[0] if more else ()
        for part in (rec, pool):
            if not isinstance(part, (bytes, bytearray, memoryview)):
                raise TypeError(f"compiler returned {type(part).__name__}, expected bytes "
                                "or (record, pool[, sets])")
        if not rec or not pool:
            pool, sets = b"", ()    # no record or no members: nothing points into a pool
        return bytes(rec), bytes(pool), tuple(int(o) for o in sets)

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
        rec, pool, sets = self._compile(kind, key, obj)
        head = kb + b"\0"
        head += _pad(len(head))
        hot = b"".join((head, rec, _pad(len(rec))))
        lo, hi = fmt.version_split(version)
        item = _Item(obj, version, digest, hot, pool + _pad(len(pool)), raw + _pad(len(raw)),
                     len(kb), len(head), len(rec), len(pool), sets, len(raw), fmt.key_hash(kb),
                     lo, hi)
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
              generation: int = 0,
              changed: Optional[Tuple[Iterable[str], Iterable[str]]] = None) -> bytes:
        """Return the snapshot bytes for ``flags`` and ``segments``.

        Without ``changed``: a self-contained snapshot (items reused from the cache when they
        are the same dict or hash the same), which becomes the base of later overlays. With
        ``changed``: an overlay on that base holding every item changed since it, unless
        there is no base yet or the overlay would be too large (then self-contained:
        compaction, see :data:`COMPACT_FRACTION`). :attr:`last_kind` says which.

        :param flags: flag key -> LD flag JSON object; tombstones (``"deleted": true``) and
            non-dict values are left out.
        :param segments: segment key -> LD segment JSON object; same rules.
        :param payload_version: the LD payload version, stored in the header.
        :param built_at_ms: Unix ms for the header (default: now).
        :param generation: header generation; the publisher stamps the real one.
        :param changed: ``(flag keys, segment keys)`` that may differ from the previous
            build's input (added, replaced or removed): only these are looked at. Every other
            item must be the same as in the previous build.
        :returns: the snapshot, ``total_size`` bytes.
        :raises SnapshotError: when it would exceed the format's 2 GiB limit.
        """
        if changed is not None and self._base is not None:
            try:
                data = self._overlay(flags, segments, changed, payload_version, built_at_ms,
                                     generation)
            except BaseException:
                self.forget_base()     # the item state may be half updated: start over
                raise
            if data is not None:
                self.last_kind = "overlay"
                return data
        try:
            data = self._build_full(flags, segments, payload_version, built_at_ms, generation)
        except BaseException:
            self.forget_base()
            raise
        self.last_kind = "full"
        return data

    def _build_full(self, flags: Mapping[str, dict], segments: Mapping[str, dict],
                    payload_version: int, built_at_ms: Optional[int], generation: int) -> bytes:
        self.forget_base()
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
        return self._full(ftab, fitems, stab, sitems, payload_version, built_at_ms, generation)

    def _full(self, ftab: _Table, fitems: List[_Item], stab: _Table, sitems: List[_Item],
              payload_version: int, built_at_ms: Optional[int], generation: int) -> bytes:
        """Lay out a self-contained snapshot (docs/snapshot-format.md §1)."""
        nf, ns = len(fitems), len(sitems)
        items = fitems + sitems
        hots, table = self._pool.link(items)
        pools = [table] + [b"" if it.sets else it.pool for it in items]
        hot_pos, pool_at, raw_pos, raw_start, blob = _blob_area(hots, pools,
                                                                [it.raw for it in items])
        pool_pos = [pool_at[0] if it.sets else pool_at[i + 1] for i, it in enumerate(items)]
        pool_lens = [len(table) if it.sets else it.pool_len for it in items]
        blob_len = len(blob)

        flag_index_off = fmt.HEADER_SIZE
        seg_index_off = flag_index_off + fmt.align(ftab.cap * fmt.SLOT_SIZE)
        flag_entries_off = seg_index_off + fmt.align(stab.cap * fmt.SLOT_SIZE)
        seg_entries_off = flag_entries_off + nf * fmt.ENTRY_SIZE
        chunk_table_off = seg_entries_off + ns * fmt.ENTRY_SIZE
        shift = self._chunk_shift
        n_chunks = fmt.n_chunks_for(blob_len, shift)
        dir_end = chunk_table_off + 8 * n_chunks
        blob_off = _align_to(dir_end, fmt.BLOB_ALIGN)
        total = blob_off + blob_len
        if total > fmt.MAX_SNAPSHOT_SIZE:
            raise SnapshotError(f"snapshot would be {total} bytes; the format's limit is "
                                f"{fmt.MAX_SNAPSHOT_SIZE} bytes")

        entries = bytearray((nf + ns) * fmt.ENTRY_SIZE)
        eoff = 0
        for it, hp, pp, pl, rp in zip(items, hot_pos, pool_pos, pool_lens, raw_pos):
            _pack_entry(entries, eoff, it, blob_off + hp, blob_off + rp, blob_off + pp, pl)
            eoff += fmt.ENTRY_SIZE
        directory = b"".join((
            self._index(_FLAGS, ftab, fitems, flag_entries_off),
            self._index(_SEGMENTS, stab, sitems, seg_entries_off),
            entries,
            _chunk_table(blob, shift),
            bytes(blob_off - dir_end),
        ))
        directory_sum = fmt.checksum(directory)
        header = self._header(directory_sum, total, payload_version, built_at_ms, generation, nf,
                              ns, flag_index_off, ftab.cap, seg_index_off, stab.cap,
                              flag_entries_off, seg_entries_off, chunk_table_off, shift, n_chunks,
                              blob_off, blob_off + raw_start, 0, 0, 0)
        # Remember this build as the base of the overlays that follow.
        over = bytearray(entries)
        words = memoryview(over).cast("I")
        for i in range(0, len(words), fmt.ENTRY_SIZE // 4):
            words[i] |= fmt.BASE_BIT            # key_off
            words[i + 2] |= fmt.BASE_BIT        # raw_off
            words[i + 4] |= fmt.BASE_BIT        # rec_off
            if words[i + 9]:                    # pool_len
                words[i + 8] |= fmt.BASE_BIT    # pool_off
        words.release()
        self._base = _Base(
            directory_sum, total, blob_len,
            (dict(zip(ftab.keys, fitems)), dict(zip(stab.keys, sitems))),
            ({k: r for r, k in enumerate(ftab.keys)}, {k: r for r, k in enumerate(stab.keys)}),
            nf, directory[:flag_entries_off - fmt.HEADER_SIZE], bytes(over), flag_entries_off,
            (flag_index_off, ftab.cap, seg_index_off, stab.cap, flag_entries_off,
             seg_entries_off))
        return b"".join((header, directory, blob))

    def _overlay(self, flags: Mapping[str, dict], segments: Mapping[str, dict],
                 changed: Tuple[Iterable[str], Iterable[str]], payload_version: int,
                 built_at_ms: Optional[int], generation: int) -> Optional[bytes]:
        """An overlay on :attr:`_base` (docs/snapshot-format.md §1.7), or ``None`` when it
        would be too large (compaction: the caller builds self-contained)."""
        base = self._base
        assert base is not None
        encoded = 0
        for kind, (objs, keys) in enumerate(zip((flags, segments), changed)):
            cache = self._items[kind]
            since = self._since[kind]
            removed = self._removed[kind]
            in_base = base.items[kind]
            for key in keys:
                obj = objs.get(key)
                bitem = in_base.get(key)
                if type(key) is not str or not isinstance(obj, dict) \
                        or obj.get("deleted") is True:
                    cache.pop(key, None)
                    since.pop(key, None)
                    if bitem is not None:
                        removed.add(key)
                    continue
                removed.discard(key)
                if bitem is not None and bitem.source is obj:
                    cache[key] = bitem
                    since.pop(key, None)
                    continue
                item, hit = self._item(kind, key, obj, cache)
                encoded += not hit
                if bitem is not None and bitem.version == item.version \
                        and bitem.digest == item.digest:
                    since.pop(key, None)      # same bytes as in the base: read them there
                else:
                    since[key] = item
        self.last_encoded, self.last_reused = encoded, 0

        fsince = sorted(self._since[_FLAGS].items())
        ssince = sorted(self._since[_SEGMENTS].items())
        items = [it for _k, it in fsince] + [it for _k, it in ssince]
        blob_len = sum(len(it.hot) + len(it.pool) + len(it.raw) for it in items)
        if blob_len > min(self._compact_fraction * base.blob_len, self._compact_max):
            return None

        hot_pos, pool_pos, raw_pos, raw_start, blob = _blob_area(
            [it.hot for it in items], [it.pool for it in items], [it.raw for it in items])
        shift = self._chunk_shift
        n_chunks = fmt.n_chunks_for(blob_len, shift)
        same_keys = not self._removed[_FLAGS] and not self._removed[_SEGMENTS] and all(
            k in base.rank[_FLAGS] for k, _i in fsince) and all(
            k in base.rank[_SEGMENTS] for k, _i in ssince)
        if same_keys:
            # Same key set as the base: its indexes and entry positions hold;
            # copy its entries (all pointing into the base) and repoint the changed ones.
            nf = base.n_flags
            ns = len(base.rank[_SEGMENTS])
            head = base.head
            (flag_index_off, ftab_cap, seg_index_off, stab_cap, entries_off,
             seg_entries_off) = base.dir_fields
            chunk_table_off = entries_off + len(base.entries)
            blob_off = _align_to(chunk_table_off + 8 * n_chunks, fmt.BLOB_ALIGN)
            entries = bytearray(base.entries)
            ranks = [base.rank[_FLAGS][k] for k, _i in fsince] + \
                [nf + base.rank[_SEGMENTS][k] for k, _i in ssince]
            for it, rank, hp, pp, rp in zip(items, ranks, hot_pos, pool_pos, raw_pos):
                _pack_entry(entries, rank * fmt.ENTRY_SIZE, it, blob_off + hp, blob_off + rp,
                            blob_off + pp, it.pool_len)
        else:
            # Keys were added or removed: rebuild the indexes; entries of
            # unchanged items are copied from the base's (already pointing into it).
            per_kind = []
            for kind in (_FLAGS, _SEGMENTS):
                cur = self._items[kind]
                table = self._table(kind, cur, cur)
                per_kind.append((table, [cur[k] for k in table.keys]))
            (ftab, fitems), (stab, sitems) = per_kind
            nf, ns = len(fitems), len(sitems)
            ftab_cap, stab_cap = ftab.cap, stab.cap
            flag_index_off = fmt.HEADER_SIZE
            seg_index_off = flag_index_off + fmt.align(ftab.cap * fmt.SLOT_SIZE)
            entries_off = seg_index_off + fmt.align(stab.cap * fmt.SLOT_SIZE)
            seg_entries_off = entries_off + nf * fmt.ENTRY_SIZE
            chunk_table_off = entries_off + (nf + ns) * fmt.ENTRY_SIZE
            blob_off = _align_to(chunk_table_off + 8 * n_chunks, fmt.BLOB_ALIGN)
            own = {}
            for kind_items, off in ((fsince, 0), (ssince, len(fsince))):
                for j, (k, _it) in enumerate(kind_items):
                    own[(kind_items is ssince, k)] = off + j
            entries = bytearray((nf + ns) * fmt.ENTRY_SIZE)
            bent = base.entries
            eoff = 0
            for kind, table in ((_FLAGS, ftab), (_SEGMENTS, stab)):
                brank = base.rank[kind]
                shift_rank = 0 if kind == _FLAGS else base.n_flags
                for key in table.keys:
                    j = own.get((kind == _SEGMENTS, key))
                    if j is None:
                        r = (brank[key] + shift_rank) * fmt.ENTRY_SIZE
                        entries[eoff:eoff + fmt.ENTRY_SIZE] = bent[r:r + fmt.ENTRY_SIZE]
                    else:
                        it = items[j]
                        _pack_entry(entries, eoff, it, blob_off + hot_pos[j],
                                    blob_off + raw_pos[j], blob_off + pool_pos[j], it.pool_len)
                    eoff += fmt.ENTRY_SIZE
            head = b"".join((
                self._index(_FLAGS, ftab, fitems, entries_off),
                self._index(_SEGMENTS, stab, sitems, seg_entries_off),
            ))
        dir_end = chunk_table_off + 8 * n_chunks
        total = blob_off + blob_len
        directory = b"".join((head, entries, _chunk_table(blob, shift), bytes(blob_off - dir_end)))
        header = self._header(fmt.checksum(directory), total, payload_version, built_at_ms,
                              generation, nf, ns, flag_index_off, ftab_cap, seg_index_off,
                              stab_cap, entries_off, seg_entries_off, chunk_table_off, shift,
                              n_chunks, blob_off, blob_off + raw_start, 0, base.size,
                              base.checksum)
        return b"".join((header, directory, blob))

    def _header(self, directory_sum: int, total: int, payload_version: int,
                built_at_ms: Optional[int], generation: int, *fields: int) -> bytes:
        if built_at_ms is None:
            built_at_ms = int(time.time() * 1000)
        if type(payload_version) is not int or not -(1 << 63) <= payload_version < (1 << 63):
            payload_version = 0     # LD payload versions are small ints; anything else: unknown
        return fmt.pack_header(fmt.Header(
            fmt.MAGIC, fmt.FORMAT_WORD, self._record_format, total, directory_sum,
            generation, built_at_ms, payload_version, *fields, 0))

    def _index(self, kind: int, table: _Table, items: Sequence[_Item], entries_off: int) -> bytes:
        # Slot bytes depend only on the key set (hashes, ranks) and where the entries start.
        cached = self._index_cache[kind]
        if cached is not None and cached[0] is table and cached[1] == entries_off:
            return cached[2]
        raw = _index_bytes(table, items, entries_off)
        self._index_cache[kind] = (table, entries_off, raw)
        return raw


def _pack_entry(buf: bytearray, at: int, it: _Item, key_off: int, raw_off: int, pool_off: int,
                pool_len: int) -> None:
    """Write ``it``'s ``sf_entry_t`` at ``at``: its hot blob (key, then record) at ``key_off``,
    its raw blob at ``raw_off``, and the pool its record reads at ``pool_off`` (``pool_len``
    bytes; offset 0 when there is none)."""
    fmt.ENTRY_STRUCT.pack_into(buf, at, key_off, it.key_len, raw_off, it.raw_len,
                               key_off + it.rec_rel, it.rec_len, it.version_lo, it.version_hi,
                               pool_off if pool_len else 0, pool_len)


def _blob_area(hots: Sequence[bytes], pools: Sequence[bytes],
               raws: Sequence[bytes]) -> Tuple[List[int], List[int], List[int], int, bytes]:
    """Lay out a blob area: every hot blob (keys and records, what the C evaluator reads),
    then every string pool (read on a fingerprint match only), then every raw blob, so C
    workers fault in only the pages of the records they evaluate (plus the kernel's
    fault-around: 64 KiB around each) and never raw pages. Each blob is a multiple of 8 long.

    :returns: ``(hot_pos, pool_pos, raw_pos, raw_start, blob)``: each blob's position and
        where the raw blobs start, relative to the area's start.
    """
    pos = 0
    spans: List[List[int]] = []
    starts: List[int] = []
    for part in (hots, pools, raws):
        starts.append(pos)
        at: List[int] = []
        for b in part:
            at.append(pos)
            pos += len(b)
        spans.append(at)
    return spans[0], spans[1], spans[2], starts[2], b"".join([*hots, *pools, *raws])


class _SharedPool:
    """One pool of string-set members for a self-contained object, kept across builds.

    Target lists and segments of an environment name the same user keys again and again (in
    the benchmarks' data, 1,000 users make up 400,000 set members), and a member is read
    whenever a lookup finds it, so per-item pools put most of their pages in every worker.
    Here each distinct member (its length prefix and bytes) is stored once, and each set slot
    (``native/record.h`` ``sf_strset_t``: ``u32 nslots``, ``u32 home``, then ``nslots`` ×
    ``{u32 fp, u32 off}``) is repointed from the item's own pool to it.

    Linking costs ~0.3 µs per member (~130 ms at 10,000 flags here), so the pool and every
    linked record are kept: a later full build links only new or changed items, and their
    new members are appended. Members of items gone since stay as garbage until the items
    relinked since the pool was started exceed three times the items with sets now; then it
    starts over (the next build links every item again).
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Start over: an empty pool, no linked record."""
        self._table = bytearray(1)          # byte 0 reserved: slot offset 0 is an empty slot
        self._where: Dict[bytes, int] = {}
        self._linked: Dict[int, Tuple[_Item, bytes]] = {}    # id(item) -> (item, hot blob)
        self._relinked = 0

    def link(self, items: Sequence[_Item]) -> Tuple[List[bytes], bytes]:
        """The hot blobs of ``items`` (the records of items with sets repointed) and the
        pool, padded to 8 (empty when no item has a set member)."""
        live = sum(1 for it in items if it.sets)
        if self._relinked > 3 * live:
            self.clear()
        linked: Dict[int, Tuple[_Item, bytes]] = {}
        hots: List[bytes] = []
        for it in items:
            if not it.sets:
                hots.append(it.hot)
                continue
            got = self._linked.get(id(it))
            if got is None or got[0] is not it:
                got = (it, self._relink(it))
                self._relinked += 1
            linked[id(it)] = got
            hots.append(got[1])
        self._linked = linked       # only this build's items: the cache does not grow
        table = self._table
        if len(table) == 1:
            return hots, b""
        if len(table) > fmt.OFF_MASK:
            raise SnapshotError(f"string pool of {len(table)} bytes; the format's limit is "
                                f"{fmt.OFF_MASK} bytes")
        return hots, bytes(table + _pad(len(table)))

    def _relink(self, it: _Item) -> bytes:
        table, where, pool = self._table, self._where, it.pool
        moved = {0: 0}              # an empty slot stays empty
        pos, end = 1, it.pool_len
        while pos < end:
            start = pos
            n = pool[pos]
            pos += 1
            if n >= 0x80:           # a LEB128 length of more than one byte
                n &= 0x7F
                shift = 7
                while True:
                    b = pool[pos]
                    pos += 1
                    n |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
            pos += n
            member = pool[start:pos]
            off = where.get(member)
            if off is None:
                off = where[member] = len(table)
                table += member
            moved[start] = off
        hot = bytearray(it.hot)
        for set_off in it.sets:
            at = it.rec_rel + set_off
            nslots = int.from_bytes(hot[at:at + 4], "little")
            span = slice(at + 8, at + 8 + 8 * nslots)
            slots = array.array("I", hot[span])     # {fp, off} pairs, little-endian
            slots[1::2] = array.array("I", [moved[o] for o in slots[1::2]])
            hot[span] = slots.tobytes()
        return bytes(hot)


def _index_bytes(table: _Table, items: Sequence[_Item], entries_off: int) -> bytes:
    """The slots of one index: ``(tag, entry offset)``, empty slots zero; padded to 8."""
    pack = fmt.SLOT_STRUCT.pack
    empty = pack(0, 0)
    out = []
    for rank1 in table.slot_ranks:
        if rank1:
            r = rank1 - 1
            out.append(pack(fmt.key_tag(items[r].hash), entries_off + r * fmt.ENTRY_SIZE))
        else:
            out.append(empty)
    raw = b"".join(out)
    return raw + _pad(len(raw))


def _align_to(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _chunk_table(blob: bytes, shift: int) -> bytes:
    """xxh64 of each ``1 << shift`` byte chunk of the blob area, as u64s."""
    size = 1 << shift
    mv = memoryview(blob)
    digest = fmt.chunk_checksum
    sums = array.array("Q", (digest(mv[i:i + size]) for i in range(0, len(blob), size)))
    if sys.byteorder != "little":
        sums.byteswap()
    return sums.tobytes()
