"""Big Segments in a worker: membership read from the supervisor's shared-memory mirror.

Safe in any worker: no threads, no sockets, no network; a lookup is a SHA-256, a few loads
from a read-only mapping and no lock. The supervisor (:mod:`shmflags.supervisor.bigsegments`)
polls LaunchDarkly's Big Segment store in Redis (ld-protocol.md §8.3) and publishes

* ``/shmflags.<name>.bs`` — the **Big Segments control block** (64 bytes, below): which
  membership object is current and the store status of the last poll;
* ``/shmflags.<name>.bs<N>`` — one immutable **membership object** per refresh: an
  open-addressing hash table from SHA-256(context key) to the segment references the context
  is included in / excluded from.

:class:`ShmBigSegments` is the Big Segments provider both evaluators call
(``get_membership(context_key) -> (membership | None, status)``, docs/internals.md), and
answers ``big_segment_store_status_provider.status``. Layouts (little-endian, every offset
absolute from byte 0 of its object, 8-byte aligned) are documented in docs/integrations.md;
the constants here are the one definition (the supervisor's writer imports them).

Control block: every field after the format word is one aligned 8-byte word that the
supervisor writes with one store, and no reader needs two fields to agree, so there is no
seqlock: a reader may see the new generation with the previous poll's status, which is as
good as either order.
"""
from __future__ import annotations

import hashlib
import logging
import mmap
import os
import struct
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import posix_ipc
import xxhash

from shmflags.client.status import BigSegmentStoreStatus
from shmflags.client.status import BigSegmentStoreStatusProvider as _BaseStatusProvider

__all__ = ["ShmBigSegments", "StatusProvider", "BigSegmentsTable", "ctl_name", "object_name",
           "context_hash", "STATUS_NAMES"]

log = logging.getLogger(__name__)

# -- control block /shmflags.<name>.bs ----------------------------------------------------------

CTL_MAGIC = b"SHMFLBSC"
CTL_VERSION = 1
CTL_SIZE = 64
CTL_FORMAT_WORD = (CTL_VERSION << 24) | CTL_SIZE
#: u64 word indexes; each written by the supervisor with one aligned store.
W_GENERATION = 2       # current membership object N (0: none yet)
W_STATUS = 3           # index into STATUS_NAMES, computed at the last poll as ldclient does
W_SYNCED_MS = 4        # store's big_segments_synchronized_on at the last poll (0: none)
W_CHECKED_MS = 5       # Unix ms of the supervisor's last sign of life (poll or scan batch)
W_POLL_MS = 6          # big_segments_status_poll_interval in ms (for the liveness bound)
W_PID = 7              # supervisor pid (diagnostics)
#: Same order as ``shmflags.snapshot.format.BIGSEG_STATUS_NAMES`` (the main control block).
STATUS_NAMES = ("NOT_CONFIGURED", "HEALTHY", "STALE", "STORE_ERROR")
ST_NOT_CONFIGURED, ST_HEALTHY, ST_STALE, ST_STORE_ERROR = range(4)

# -- membership object /shmflags.<name>.bs<N> ---------------------------------------------------

OBJ_MAGIC = b"SHMFLBS1"
OBJ_VERSION = 1
HEADER_SIZE = 96
OBJ_FORMAT_WORD = (OBJ_VERSION << 24) | HEADER_SIZE
SLOT_SIZE = 40         # 32-byte SHA-256 digest + u64 list offset (0 = empty slot)
#: magic, format, slot size, total size, checksum, generation, synced_ms, built_ms,
#: n_contexts, cap, n_refs, reserved, refs_off, lists_off, strings_off
HEADER = struct.Struct("<8sIIQQQQQIIIIQQQ")
assert HEADER.size == HEADER_SIZE

#: How long without a sign of life (beyond three poll intervals) before a worker stops
#: trusting HEALTHY and reports STALE: the supervisor is gone or stuck.
LIVENESS_SLACK_MS = 5000
#: Default number of context keys whose membership a worker memoises per mirror table
#: (ldclient's BigSegmentsConfig.context_cache_size default).
CACHE_SIZE = 1000
_MISS: Any = object()
#: Minimum seconds between attempts to open a missing (or replaced) control block.
REOPEN_INTERVAL = 1.0


def ctl_name(name: str) -> str:
    """The Big Segments control block's object name for namespace ``name``."""
    return f"/shmflags.{name}.bs"


def object_name(name: str, generation: int) -> str:
    """The name of membership object ``generation`` of namespace ``name``."""
    return f"/shmflags.{name}.bs{int(generation)}"


def context_hash(context_key: str) -> bytes:
    """SHA-256 of the context key's UTF-8 (the store keys its base64, §8.3)."""
    return hashlib.sha256(context_key.encode("utf-8")).digest()


def checksum(buf: Any) -> int:
    """xxh3-64 of the bytes after the header."""
    return xxhash.xxh3_64_intdigest(memoryview(buf)[HEADER_SIZE:])


class BigSegmentsTable:
    """A validated membership object (any buffer: an mmap, bytes).

    :raises ValueError: the bytes are not a valid membership object.
    """

    def __init__(self, buf: Any, verify_checksum: bool = True) -> None:
        mv = memoryview(buf)
        if len(mv) < HEADER_SIZE:
            raise ValueError(f"membership object too short ({len(mv)} bytes)")
        (magic, form, slot_size, total, check, self.generation, self.synced_ms,
         self.built_ms, self.n_contexts, cap, n_refs, _r, refs_off, lists_off,
         strings_off) = HEADER.unpack_from(mv, 0)
        if magic != OBJ_MAGIC or form != OBJ_FORMAT_WORD or slot_size != SLOT_SIZE:
            raise ValueError(f"expected magic {OBJ_MAGIC!r} format 0x{OBJ_FORMAT_WORD:08x}, got "
                             f"{magic!r} 0x{form:08x} slot {slot_size}")
        if total > len(mv) or total < HEADER_SIZE:
            raise ValueError(f"total size {total} does not fit the {len(mv)}-byte object")
        if cap & (cap - 1) or cap == 0 or self.n_contexts > cap:
            raise ValueError(f"bad table capacity {cap} for {self.n_contexts} contexts")
        if not (HEADER_SIZE + cap * SLOT_SIZE == refs_off <= lists_off <= strings_off <= total
                and refs_off + 8 * n_refs <= lists_off):
            raise ValueError("section offsets out of order or out of bounds")
        mv = mv[:total]
        if verify_checksum and checksum(mv) != check:
            raise ValueError("checksum mismatch")
        self._mv = mv
        self._words = mv[:refs_off].cast("Q")
        self._mask = cap - 1
        self._lists_off, self._total = lists_off, total
        refs: List[str] = []
        for i in range(n_refs):
            off, length = struct.unpack_from("<II", mv, refs_off + 8 * i)
            start = strings_off + off
            if start + length > total:
                raise ValueError(f"segment reference {i} out of bounds")
            refs.append(bytes(mv[start:start + length]).decode("utf-8"))
        self._refs = refs

    @property
    def refs(self) -> List[str]:
        """Every segment reference ``"<key>.g<generation>"`` in the object."""
        return list(self._refs)

    def membership(self, digest: bytes) -> Optional[Dict[str, bool]]:
        """The context's membership map, or ``None`` when the store has nothing for it.

        Excluded references map to ``False``, included ones to ``True`` (include wins,
        as in ldclient's Redis store). Slots are compared on their first 8 bytes (the probe
        hash) before the whole digest.
        """
        words, mask = self._words, self._mask
        h = int.from_bytes(digest[:8], "little")
        i = h & mask
        for _probe in range(mask + 1):
            w = (HEADER_SIZE >> 3) + i * (SLOT_SIZE >> 3)
            list_off = words[w + 4]
            if list_off == 0:
                return None
            if words[w] == h and self._mv[w << 3:(w << 3) + 32] == digest:
                return self._read_list(list_off)
            i = (i + 1) & mask
        return None

    def _read_list(self, off: int) -> Dict[str, bool]:
        if not self._lists_off <= off <= self._total - 8:
            raise ValueError(f"membership list offset {off} out of bounds")
        n_inc, n_exc = struct.unpack_from("<II", self._mv, off)
        idx = struct.unpack_from(f"<{n_inc + n_exc}I", self._mv, off + 8)
        refs = self._refs
        out: Dict[str, bool] = {}
        for j in idx[n_inc:]:
            out[refs[j]] = False
        for j in idx[:n_inc]:
            out[refs[j]] = True
        return out


def _open_readonly(obj_name: str) -> Optional[Tuple[mmap.mmap, int]]:
    """Map a whole object read-only; ``None`` when it does not exist."""
    try:
        shm = posix_ipc.SharedMemory(obj_name, 0, read_only=True)
    except posix_ipc.ExistentialError:
        return None
    try:
        st = os.fstat(shm.fd)
        if st.st_size == 0:
            return None
        return mmap.mmap(shm.fd, st.st_size, flags=mmap.MAP_SHARED,
                         prot=mmap.PROT_READ), st.st_ino
    finally:
        shm.close_fd()


class ShmBigSegments:
    """The Big Segments provider of a worker on namespace ``name``.

    Status per query follows ldclient's ``BigSegmentStoreManager``: no mirror (the supervisor
    has no ``big_segments_redis_url``) → ``NOT_CONFIGURED``; store unavailable at the last
    poll → ``STORE_ERROR`` with no membership (what ldclient answers once its per-context
    cache has expired, since its own query fails too); ``big_segments_synchronized_on`` missing
    or older than ``stale_after`` → ``STALE``; else ``HEALTHY``. One addition: when the
    supervisor has shown no sign of life for three poll intervals plus 5 s, HEALTHY reads as
    STALE, since nothing refreshes the mirror any more.

    Holds no lock and no thread; the mappings survive fork. Never raises from
    :meth:`get_membership` (a damaged object gives ``STORE_ERROR``).

    :param name: the shmflags namespace (``Config.name``).
    :param cache_size: memberships memoised per mirror table (``big_segments_context_cache_size``,
        ldclient's ``BigSegmentsConfig.context_cache_size``); the memo is emptied when full and
        whenever the supervisor publishes a new table, so it never serves stale data.
    """

    def __init__(self, name: str, cache_size: int = CACHE_SIZE) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self.name = name
        self.cache_size = cache_size
        self._ctl: Optional[mmap.mmap] = None
        self._words: Any = None
        self._ino = 0
        self._next_open = 0.0
        self._suspect = False
        self._table: Optional[BigSegmentsTable] = None
        self._table_gen = 0
        self._bad_gen = 0
        self._cache: Dict[str, Optional[dict]] = {}   # context key -> membership, this table

    # -- control block -----------------------------------------------------------------

    def _attach(self) -> Any:
        """The control block's words, (re)opened at most every REOPEN_INTERVAL."""
        now = time.monotonic()
        if now < self._next_open:
            return self._words
        self._next_open = now + REOPEN_INTERVAL
        try:
            opened = _open_readonly(ctl_name(self.name))
        except (posix_ipc.Error, OSError, ValueError) as exc:
            log.error("shmflags: cannot open %s: %r", ctl_name(self.name), exc)
            opened = None
        if opened is None:
            self._ctl = self._words = None
            return None
        mm, ino = opened
        if ino == self._ino and self._words is not None:
            mm.close()
            return self._words
        magic, form = struct.unpack_from("<8sI", mm, 0)
        if magic != CTL_MAGIC or form != CTL_FORMAT_WORD or len(mm) < CTL_SIZE:
            mm.close()   # being created (magic written last) or another layout
            return self._words
        if self._words is not None:
            # A new block (cleanup, then another supervisor): its generations start afresh,
            # so forget the object mapped under the old one.
            self._table, self._table_gen, self._bad_gen, self._cache = None, 0, 0, {}
        self._ctl, self._words, self._ino = mm, memoryview(mm)[:CTL_SIZE].cast("Q"), ino
        return self._words

    def _status_code(self, words: Any) -> int:
        code = words[W_STATUS]
        if code >= len(STATUS_NAMES):
            return ST_STORE_ERROR
        if code == ST_HEALTHY:
            age = time.time() * 1000.0 - words[W_CHECKED_MS]
            if age > 3 * words[W_POLL_MS] + LIVENESS_SLACK_MS:
                self._suspect = True   # gone, stuck, or its block was replaced: look again
                return ST_STALE
        return code

    def _current_words(self) -> Any:
        words = self._words
        if words is None or ((self._suspect or words[W_STATUS] == ST_NOT_CONFIGURED)
                             and time.monotonic() >= self._next_open):
            self._suspect = False
            words = self._attach()
        return words

    # -- provider interface ------------------------------------------------------------

    def get_membership(self, context_key: str) -> Tuple[Optional[dict], str]:
        """``(membership | None, status)`` for the context with this key (see the class doc).

        Results are memoised per membership object (at most :data:`CACHE_SIZE` keys, then
        the memo starts afresh); the maps returned are shared, so callers must not modify
        them (the evaluators only read them).
        """
        words = self._words
        if words is None or self._suspect or words[W_STATUS] == ST_NOT_CONFIGURED:
            words = self._current_words()
            if words is None:
                return None, STATUS_NAMES[ST_NOT_CONFIGURED]
        try:
            code = self._status_code(words)
            if code == ST_NOT_CONFIGURED or code == ST_STORE_ERROR:
                return None, STATUS_NAMES[code]
            if words[W_GENERATION] != self._table_gen:
                self._table_for(words[W_GENERATION])
            cache = self._cache
            membership = cache.get(context_key, _MISS)
            if membership is _MISS:
                table = self._table
                if table is None:
                    return None, STATUS_NAMES[ST_STORE_ERROR]
                membership = table.membership(context_hash(context_key))
                if len(cache) >= self.cache_size:
                    cache.clear()
                cache[context_key] = membership
            return membership, STATUS_NAMES[code]
        except Exception as exc:  # noqa: BLE001 - evaluation must go on
            log.error("shmflags: Big Segment lookup failed: %r", exc)
            return None, STATUS_NAMES[ST_STORE_ERROR]

    def _table_for(self, generation: int) -> Optional[BigSegmentsTable]:
        if generation == self._table_gen:
            return self._table
        if generation == 0 or generation == self._bad_gen:
            return self._table
        try:
            opened = _open_readonly(object_name(self.name, generation))
            if opened is None:      # superseded and unlinked already: the block moved on
                return self._table
            table = BigSegmentsTable(opened[0])
        except (ValueError, OSError, posix_ipc.Error) as exc:
            log.error("shmflags: %s rejected (%s); keeping generation %d",
                      object_name(self.name, generation), exc, self._table_gen)
            self._bad_gen = generation
            return self._table
        self._table, self._table_gen, self._cache = table, generation, {}
        return table

    def status(self) -> Tuple[bool, bool]:
        """``(available, stale)`` for ``big_segment_store_status_provider.status``:
        ``(False, False)`` without a mirror, as ldclient without a store."""
        words = self._current_words()
        if words is None:
            return False, False
        code = self._status_code(words)
        return code in (ST_HEALTHY, ST_STALE), code == ST_STALE

    def info(self) -> Dict[str, Any]:
        """The control block's fields, for status displays."""
        words = self._current_words()
        if words is None:
            return {"status": STATUS_NAMES[ST_NOT_CONFIGURED], "generation": 0}
        return {"status": STATUS_NAMES[self._status_code(words)],
                "generation": words[W_GENERATION],
                "synchronized_on": words[W_SYNCED_MS] or None,
                "checked": words[W_CHECKED_MS] / 1000.0 if words[W_CHECKED_MS] else None,
                "contexts": self._table.n_contexts if self._table is not None else None}



class StatusProvider(_BaseStatusProvider):
    """``client.big_segment_store_status_provider`` over a :class:`ShmBigSegments`.

    ``status`` comes from the supervisor's mirror; listeners are called (from the client's
    watcher thread, which calls :meth:`poll` on each tick) when ``available`` or ``stale``
    changes, as ldclient's are.

    :param big_segments: the worker's provider (``ShmSource.big_segments``).
    :param ensure_watching: starts the client's watcher thread in this process.
    """

    def __init__(self, big_segments: ShmBigSegments,
                 ensure_watching: Optional[Callable[[], None]] = None) -> None:
        super().__init__()
        self._big_segments = big_segments
        self._ensure_watching = ensure_watching
        self._last: Optional[BigSegmentStoreStatus] = None

    @property
    def status(self) -> BigSegmentStoreStatus:
        """``BigSegmentStoreStatus(available, stale)``; ``(False, False)`` without a mirror
        (no ``big_segments_redis_url`` on the supervisor), as ldclient without a store."""
        return BigSegmentStoreStatus(*self._big_segments.status())

    def add_listener(self, listener: Callable[[BigSegmentStoreStatus], None]) -> None:
        """Call ``listener(status)`` on each change (from the watcher thread)."""
        if self._last is None:
            self._last = self.status
        super().add_listener(listener)
        if self._ensure_watching is not None:
            self._ensure_watching()

    def has_listeners(self) -> bool:
        """Whether anyone listens (the watcher may skip :meth:`poll` otherwise)."""
        return bool(self._listeners)

    def poll(self) -> None:
        """Notify listeners if the status changed since the last poll."""
        if not self._listeners:
            return
        status, last = self.status, self._last
        self._last = status
        if last is not None and status != last:
            self._listeners.notify(status)
