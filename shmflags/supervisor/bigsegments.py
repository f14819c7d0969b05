"""Big Segments mirror: polls LaunchDarkly's Big Segment store in Redis and publishes what
workers need into shared memory. Runs in the supervisor only (one daemon thread).

Every ``big_segments_status_poll_interval`` (5 s) the mirror reads
``<prefix>:big_segments_synchronized_on`` as ldclient's status poll does and computes the
store status the same way (query failed → not available; timestamp missing or older than
``big_segments_stale_after`` → stale). When the timestamp moved (or nothing is published
yet, or the last scan failed, or :data:`RESCAN_INTERVAL` passed) it SCANs every
``<prefix>:big_segment_include:*`` / ``..._exclude:*`` set, builds one immutable membership
object (hash table SHA-256(context key) → include/exclude segment references) and publishes
it as ``/shmflags.<name>.bs<N>``; the small control block ``/shmflags.<name>.bs`` then names
generation ``N`` and carries the status. Scans are at most one per
``big_segments_context_cache_time`` (ldclient's own freshness bound for a membership), and
never take more than a fifth of the time (a scan that took T waits 4·T before the next).
Layouts: :mod:`shmflags.integrations.bigsegments` and docs/integrations.md. The status also
goes into the main control block's Big Segment area for ``shmflags status``.

Objects follow the snapshot rules (DESIGN.md §3): created ``O_EXCL`` with the configured
mode and group, space reserved with ``posix_fallocate``, never modified once named in the
control block, unlinked ``generation_grace`` after being superseded. A supervisor that stops
leaves them in place; its successor takes the control block over.
"""
from __future__ import annotations

import base64
import grp
import logging
import mmap
import os
import struct
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import msgpack
import posix_ipc

from shmflags.integrations import bigsegments as fmt
from shmflags.shm import read_head

__all__ = ["BigSegmentsMirror", "BigSegmentsShm", "RedisBigSegmentStore", "build_table",
           "start", "disable", "cleanup", "list_objects", "RESCAN_INTERVAL"]

log = logging.getLogger(__name__)

#: Seconds after which the store is scanned again even if its sync time did not move.
RESCAN_INTERVAL = 60.0
#: A scan may use at most 1 / (1 + SCAN_BACKOFF_FACTOR) of the mirror's wall time.
SCAN_BACKOFF_FACTOR = 4.0
#: SCAN ``COUNT`` hint and the number of SMEMBERS per pipeline round trip.
SCAN_BATCH = 1000

Members = Dict[bytes, Tuple[Set[str], Set[str]]]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- the store ---------------------------------------------------------------------------------

def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _digest(b64: bytes) -> Optional[bytes]:
    """The 32-byte hash behind a canonical base64 key part, else ``None`` (ldclient would
    never query a key spelled any other way)."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        return None
    if len(raw) != 32 or base64.b64encode(raw) != b64:
        return None
    return raw


#: One SCAN batch with every key's members, msgpack-encoded (cmsgpack is built into Redis).
#: A key that is not a set gives ``false`` (skipped, as a pipeline's WRONGTYPE would be).
_SCAN_SCRIPT = """
local r = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local sets = {}
for i, k in ipairs(r[2]) do
  local m = redis.pcall('SMEMBERS', k)
  if type(m) == 'table' and m.err then sets[i] = false else sets[i] = m end
end
return cmsgpack.pack({r[1], r[2], sets})
"""


class RedisBigSegmentStore:
    """Reads the Big Segment store schema of ld-protocol.md §8.3.

    :param url: Redis URL (``big_segments_redis_url``).
    :param prefix: key prefix (``big_segments_redis_prefix``, default ``launchdarkly``).
    :param timeout: socket timeout in seconds for every command.
    """

    def __init__(self, url: str, prefix: Optional[str] = None, timeout: float = 5.0) -> None:
        import redis  # only a supervisor with Big Segments needs the package
        self.prefix = prefix or "launchdarkly"
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout,
                                           socket_connect_timeout=timeout)
        self._script: Any = self._redis.register_script(_SCAN_SCRIPT)
        self._response_error = redis.exceptions.ResponseError

    def get_metadata(self) -> Optional[int]:
        """``big_segments_synchronized_on`` (Unix ms), ``None`` when absent.

        :raises Exception: the store cannot be queried (the status becomes STORE_ERROR).
        """
        value = self._redis.get(self.prefix + ":big_segments_synchronized_on")
        return None if value is None else int(value)

    def scan(self, progress: Optional[Callable[[], None]] = None) -> Tuple[Members, int]:
        """Every context's include and exclude references.

        One round trip per SCAN batch: a short Lua script runs ``SCAN`` and ``SMEMBERS`` for
        the batch and returns it as one msgpack string (3-5x faster than a pipeline parsed
        by redis-py); where scripts are refused, a pipeline per batch.

        :param progress: called after each batch (the mirror's sign of life).
        :returns: ``(digest → (included refs, excluded refs), keys skipped)``; skipped keys
            have a hash part that is not canonical base64 of 32 bytes, or are not sets.
        :raises Exception: the store failed during the scan.
        """
        members: Members = {}
        skipped = 0
        for index, which in enumerate(("include", "exclude")):
            head = f"{self.prefix}:big_segment_{which}:"
            pattern = _glob_escape(head) + "*"
            head_len = len(head.encode("utf-8"))
            for keys, sets in self._batches(pattern):
                for key, refs in zip(keys, sets):
                    digest = _digest(key[head_len:])
                    if digest is None or not isinstance(refs, (list, set, dict)):
                        skipped += 1
                        continue
                    if refs:
                        entry = members.setdefault(digest, (set(), set()))
                        entry[index].update(r.decode("utf-8", "replace") for r in refs)
                if progress is not None:
                    progress()
        return members, skipped

    def _batches(self, pattern: str) -> Iterable[Tuple[List[bytes], List[Any]]]:
        cursor: Any = b"0"
        while True:
            if self._script is not None:
                try:
                    raw = self._script(args=[cursor, pattern, SCAN_BATCH])
                    cursor, keys, sets = msgpack.unpackb(raw, raw=True)
                except self._response_error as exc:
                    log.warning("Big Segment store refuses the scan script (%s); using "
                                "pipelines", exc)
                    self._script = None
                    continue
            else:
                cursor, keys = self._redis.scan(cursor, match=pattern, count=SCAN_BATCH)
                sets = []
                if keys:
                    pipe = self._redis.pipeline(transaction=False)
                    for key in keys:
                        pipe.smembers(key)
                    sets = [None if isinstance(v, Exception) else v
                            for v in pipe.execute(raise_on_error=False)]
            yield keys, sets
            if cursor in (0, b"0", "0"):
                return

    def close(self) -> None:
        """Drop the connections."""
        try:
            self._redis.close()
        except Exception:  # noqa: BLE001 - closing must not raise
            pass


# -- the membership object ----------------------------------------------------------------------

def build_table(members: Dict[bytes, Tuple[Iterable[str], Iterable[str]]], generation: int = 0,
                synced_ms: int = 0, built_ms: Optional[int] = None) -> bytearray:
    """Encode a membership object (layout in :mod:`shmflags.integrations.bigsegments`).

    Deterministic: the same members give the same bytes after the header's generation,
    sync and build times, so an unchanged store is recognised by its checksum.

    :param members: SHA-256 digest (32 bytes) → (included refs, excluded refs); contexts
        with neither are left out (the store has no membership for them).
    """
    # Most contexts share a few membership lists: group by list, encode each list once.
    shapes: Dict[Tuple[Tuple[str, ...], Tuple[str, ...]], List[bytes]] = {}
    for digest, (inc, exc) in members.items():
        if len(digest) != 32:
            raise ValueError(f"context hash must be 32 bytes, got {len(digest)}")
        if inc or exc:
            shape = (tuple(sorted(inc)), tuple(sorted(exc)))
            group = shapes.get(shape)
            if group is None:
                shapes[shape] = [digest]
            else:
                group.append(digest)
    all_refs: Set[str] = set()
    for inc, exc in shapes:
        all_refs.update(inc)
        all_refs.update(exc)
    refs = sorted(all_refs)
    ref_index = {r: i for i, r in enumerate(refs)}
    n = sum(len(g) for g in shapes.values())
    cap = 8
    while cap < 2 * n:
        cap <<= 1
    mask = cap - 1
    refs_off = fmt.HEADER_SIZE + cap * fmt.SLOT_SIZE
    lists_off = refs_off + 8 * len(refs)
    lists: List[bytes] = []
    entries: List[Tuple[bytes, int]] = []
    pos = lists_off
    for (inc, exc) in sorted(shapes):
        idx = [ref_index[r] for r in inc] + [ref_index[r] for r in exc]
        raw = struct.pack(f"<II{len(idx)}I", len(inc), len(exc), *idx)
        raw += b"\0" * (-len(raw) & 7)
        entries.extend((digest, pos) for digest in shapes[(inc, exc)])
        lists.append(raw)
        pos += len(raw)
    entries.sort()                 # placement order fixed, so the bytes are deterministic
    slots = bytearray(cap * fmt.SLOT_SIZE)
    used = bytearray(cap)
    pack_slot = struct.Struct("<32sQ").pack_into
    for digest, list_off in entries:
        slot = int.from_bytes(digest[:8], "little") & mask
        while used[slot]:
            slot = (slot + 1) & mask
        used[slot] = 1
        pack_slot(slots, slot * fmt.SLOT_SIZE, digest, list_off)
    strings_off = pos
    encoded = [r.encode("utf-8") for r in refs]
    ref_table = bytearray()
    str_pos = 0
    for raw in encoded:
        ref_table += struct.pack("<II", str_pos, len(raw))
        str_pos += len(raw)
    strings = b"".join(encoded)
    strings += b"\0" * (-len(strings) & 7)
    buf = bytearray(fmt.HEADER_SIZE)
    buf += slots
    buf += ref_table
    buf += b"".join(lists)
    buf += strings
    total = len(buf)
    assert total == strings_off + len(strings)
    fmt.HEADER.pack_into(buf, 0, fmt.OBJ_MAGIC, fmt.OBJ_FORMAT_WORD, fmt.SLOT_SIZE, total, 0,
                         generation, synced_ms, _now_ms() if built_ms is None else built_ms,
                         n, cap, len(refs), 0, refs_off, lists_off, strings_off)
    struct.pack_into("<Q", buf, 24, fmt.checksum(buf))
    return buf


# -- shared memory ------------------------------------------------------------------------------

def list_objects(name: str) -> Tuple[bool, List[int]]:
    """(control block present, membership generations present) for namespace ``name``."""
    prefix = f"shmflags.{name}.bs"
    has_ctl, gens = False, []
    try:
        entries = os.listdir("/dev/shm")
    except OSError:
        return False, []
    for entry in entries:
        if entry == prefix:
            has_ctl = True
        elif entry.startswith(prefix):
            rest = entry[len(prefix):]
            if rest.isdigit() and rest.isascii():
                gens.append(int(rest))
    return has_ctl, sorted(gens)


def _unlink(obj_name: str) -> bool:
    try:
        posix_ipc.unlink_shared_memory(obj_name)
        return True
    except posix_ipc.ExistentialError:
        return False


def _gid(group: Any) -> Optional[int]:
    if group is None or group == "":
        return None
    if isinstance(group, int):
        return group
    return int(group) if str(group).isdigit() else grp.getgrnam(str(group)).gr_gid


class BigSegmentsShm:
    """Writes namespace ``name``'s Big Segments control block and membership objects.

    Opening creates the control block (status STORE_ERROR until the first poll, generation
    0) or takes over
    the one a previous supervisor left, whose current object keeps serving until the first
    publish; leftover objects are unlinked ``grace`` seconds later by :meth:`reap`. Single
    writer: the supervisor holds the namespace lock. Not for use across fork.
    """

    def __init__(self, name: str, *, mode: int = 0o640, group: Any = None,
                 grace: float = 10.0, poll_interval: float = 5.0) -> None:
        self.name = name
        self._mode = int(mode) & 0o777
        self._gid = _gid(group)
        self._grace = float(grace)
        self._due: List[Tuple[float, str]] = []
        self._mm, self._words = self._open_control()
        self._words[fmt.W_POLL_MS] = int(poll_interval * 1000)
        self._words[fmt.W_PID] = os.getpid()
        _has, gens = list_objects(name)
        current = self._words[fmt.W_GENERATION]
        self._next = max([current] + gens) + 1
        later = time.monotonic() + self._grace
        self._due = [(later, fmt.object_name(name, g)) for g in gens if g != current]
        self.checksum = self._current_checksum(current)

    def _fix_perms(self, fd: int) -> None:
        os.fchmod(fd, self._mode)
        if self._gid is not None:
            os.fchown(fd, -1, self._gid)

    def _open_control(self) -> Tuple[mmap.mmap, memoryview]:
        cname = fmt.ctl_name(self.name)
        try:
            shm = posix_ipc.SharedMemory(cname, posix_ipc.O_CREAT, mode=self._mode)
        except posix_ipc.Error as exc:
            raise OSError(f"cannot open or create {cname}: {exc}") from None
        try:
            self._fix_perms(shm.fd)
            size = os.fstat(shm.fd).st_size
            fresh = size == 0
            if size not in (0, fmt.CTL_SIZE):
                raise OSError(f"{cname} has {size} bytes, expected {fmt.CTL_SIZE}")
            if fresh:
                os.ftruncate(shm.fd, fmt.CTL_SIZE)
            mm = mmap.mmap(shm.fd, fmt.CTL_SIZE, flags=mmap.MAP_SHARED,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            shm.close_fd()
        magic, form = struct.unpack_from("<8sI", mm, 0)
        words = memoryview(mm).cast("Q")
        if not fresh and (magic != fmt.CTL_MAGIC or form != fmt.CTL_FORMAT_WORD):
            if magic != b"\0" * 8:
                log.warning("%s has another layout (%r 0x%08x); re-initialising it", cname,
                            magic, form)
            fresh = True
        if fresh:
            for i in range(2, fmt.CTL_SIZE // 8):
                words[i] = 0
            # Configured but not polled yet: membership cannot be answered (ldclient's first
            # query would wait for the store), which is STORE_ERROR, not NOT_CONFIGURED.
            words[fmt.W_STATUS] = fmt.ST_STORE_ERROR
            struct.pack_into("<II", mm, 8, fmt.CTL_FORMAT_WORD, 0)
            mm[0:8] = fmt.CTL_MAGIC            # last: readers ignore a block without it
        return mm, words

    def _current_checksum(self, generation: int) -> Optional[int]:
        if not generation:
            return None
        head = read_head(fmt.object_name(self.name, generation), fmt.HEADER_SIZE)
        if head is None or len(head) != fmt.HEADER_SIZE:
            return None
        return struct.unpack_from("<Q", head, 24)[0]

    @property
    def generation(self) -> int:
        """The generation the control block names (0: none)."""
        return self._words[fmt.W_GENERATION]

    def publish(self, table: bytearray) -> int:
        """Create the next membership object from :func:`build_table` bytes and name it in
        the control block.

        :returns: its generation.
        :raises OSError: it could not be created (``/dev/shm`` full, say); nothing changed.
        """
        gen = self._next
        self._next += 1
        struct.pack_into("<Q", table, 32, gen)     # outside the checksum
        obj = fmt.object_name(self.name, gen)
        try:
            shm = posix_ipc.SharedMemory(obj, posix_ipc.O_CREX, mode=self._mode)
        except posix_ipc.ExistentialError:
            _unlink(obj)                           # above the current one: never announced
            shm = posix_ipc.SharedMemory(obj, posix_ipc.O_CREX, mode=self._mode)
        try:
            self._fix_perms(shm.fd)
            os.posix_fallocate(shm.fd, 0, len(table))
            view = memoryview(table)
            done = 0
            while done < len(table):
                done += os.pwrite(shm.fd, view[done:], done)
        except OSError as exc:
            _unlink(obj)
            raise OSError(exc.errno, f"cannot publish {obj} ({len(table)} bytes): "
                                     f"{os.strerror(exc.errno or 0)}") from None
        finally:
            shm.close_fd()
        old = self._words[fmt.W_GENERATION]
        self._words[fmt.W_GENERATION] = gen        # one aligned store: the switch
        if old:
            self._due.append((time.monotonic() + self._grace, fmt.object_name(self.name, old)))
        self.checksum = struct.unpack_from("<Q", table, 24)[0]
        return gen

    def set_status(self, status: int, synced_ms: Optional[int]) -> None:
        """Store the status of a poll (and that the supervisor is alive)."""
        self._words[fmt.W_SYNCED_MS] = int(synced_ms or 0)
        self._words[fmt.W_STATUS] = status
        self.touch()

    def touch(self) -> None:
        """Sign of life for the workers' liveness check."""
        self._words[fmt.W_CHECKED_MS] = _now_ms()

    def reap(self, now: Optional[float] = None) -> List[str]:
        """Unlink superseded objects whose grace period has passed."""
        now = time.monotonic() if now is None else now
        current = fmt.object_name(self.name, self.generation)
        due = [n for t, n in self._due if t <= now and n != current]
        self._due = [(t, n) for t, n in self._due if t > now and n != current]
        return [n for n in due if _unlink(n)]

    def close(self) -> None:
        """Unmap the control block (objects stay for the workers)."""
        words, mm = self._words, self._mm
        self._words = None  # type: ignore[assignment]
        if words is not None:
            words.release()
            mm.close()


def disable(name: str) -> List[str]:
    """A supervisor without Big Segments: tell workers still mapping an old control block
    ``NOT_CONFIGURED``, then unlink it and every membership object.

    :returns: the names unlinked.
    """
    has_ctl, gens = list_objects(name)
    if has_ctl:
        try:
            shm = posix_ipc.SharedMemory(fmt.ctl_name(name), 0)
            try:
                if os.fstat(shm.fd).st_size >= fmt.CTL_SIZE:
                    with mmap.mmap(shm.fd, fmt.CTL_SIZE) as mm:
                        if mm[0:8] == fmt.CTL_MAGIC:
                            struct.pack_into("<Q", mm, 8 * fmt.W_STATUS, fmt.ST_NOT_CONFIGURED)
            finally:
                shm.close_fd()
        except (posix_ipc.Error, OSError, ValueError) as exc:
            log.warning("cannot reset %s: %r", fmt.ctl_name(name), exc)
    return cleanup(name)


def cleanup(name: str) -> List[str]:
    """Unlink namespace ``name``'s Big Segments control block and membership objects."""
    has_ctl, gens = list_objects(name)
    removed = [n for n in (fmt.object_name(name, g) for g in gens) if _unlink(n)]
    if has_ctl and _unlink(fmt.ctl_name(name)):
        removed.append(fmt.ctl_name(name))
    return removed


# -- the mirror --------------------------------------------------------------------------------

class BigSegmentsMirror:
    """Polls the store and keeps the shared-memory mirror current (one daemon thread).

    :param config: the supervisor's :class:`shmflags.Config` (``big_segments_*``, ``name``,
        ``shm_mode``, ``shm_group``, ``generation_grace``).
    :param control: the namespace's ``shm.Publisher``, to copy the status into the main
        control block (optional).
    :param store: a store with ``get_metadata()`` / ``scan(progress)`` (default: Redis at
        ``big_segments_redis_url``).
    :param writer: a :class:`BigSegmentsShm` (default: opened for ``config.name``).
    """

    def __init__(self, config: Any, control: Any = None, store: Any = None,
                 writer: Optional[BigSegmentsShm] = None) -> None:
        self.poll_interval = float(config.big_segments_status_poll_interval)
        self.stale_after_ms = float(config.big_segments_stale_after) * 1000.0
        self.min_scan_interval = float(config.big_segments_context_cache_time)
        self.store = store if store is not None else RedisBigSegmentStore(
            config.big_segments_redis_url, config.big_segments_redis_prefix,
            timeout=max(1.0, self.poll_interval))
        self.writer = writer if writer is not None else BigSegmentsShm(
            config.name, mode=config.shm_mode, group=config.shm_group,
            grace=config.generation_grace, poll_interval=self.poll_interval)
        self.control = control
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._scanned_synced: Any = object()     # sync time of the last good scan
        self._scan_failed = True
        self._last_scan = -1e18                  # monotonic start of the last scan
        self._scan_cost = 0.0
        self.status_code = fmt.ST_NOT_CONFIGURED
        self.synced_ms: Optional[int] = None
        self.contexts = 0
        self.scans = 0
        self.last_error: Optional[str] = None

    def start(self) -> None:
        """Poll at once, then every ``status_poll_interval``, on a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="shmflags-bigsegments",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (within the current Redis command's timeout); objects stay."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        self.store.close()
        self.writer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the thread must survive anything
                log.exception("Big Segments poll failed")
            if self._stop.wait(self.poll_interval):
                break

    def poll_once(self) -> str:
        """One status poll, scanning and publishing when due.

        :returns: the status name written.
        """
        available, synced = True, None
        try:
            synced = self.store.get_metadata()
        except Exception as exc:  # noqa: BLE001 - any failure means "not available"
            available = False
            self._note_error(f"Big Segment store status query failed: {exc!r}")
        if available and self._scan_due(synced):
            available = self._scan(synced)
        if not available:
            code = fmt.ST_STORE_ERROR
        elif synced is None or _now_ms() - synced >= self.stale_after_ms:
            code = fmt.ST_STALE
        else:
            code = fmt.ST_HEALTHY
        if available and code != fmt.ST_STORE_ERROR:
            self.last_error = None
        self.status_code, self.synced_ms = code, synced
        self.writer.set_status(code, synced)
        self.writer.reap()
        if self.control is not None:
            try:
                self.control.set_status(big_segments={
                    "status": fmt.STATUS_NAMES[code], "available": available,
                    "synchronized_on": synced or 0, "checked": time.time()})
            except Exception as exc:  # noqa: BLE001 - the mirror itself is what workers use
                log.warning("cannot write the Big Segment status to the control block: %r",
                            exc)
        return fmt.STATUS_NAMES[code]

    def _scan_due(self, synced: Optional[int]) -> bool:
        since = time.monotonic() - self._last_scan
        if since < max(self.min_scan_interval, SCAN_BACKOFF_FACTOR * self._scan_cost):
            return False
        return (self._scan_failed or self.writer.generation == 0
                or synced != self._scanned_synced or since >= RESCAN_INTERVAL)

    def _scan(self, synced: Optional[int]) -> bool:
        """Scan and publish; ``False`` when the store failed (the status is then
        STORE_ERROR). A publish that fails (``/dev/shm`` full) is logged and retried at the
        next poll; it says nothing about the store, and workers keep the previous object."""
        started = time.monotonic()
        self._last_scan = started
        try:
            members, skipped = self.store.scan(self.writer.touch)
        except Exception as exc:  # noqa: BLE001 - a failed scan is a store error
            self._scan_failed = True
            self._note_error(f"Big Segment store scan failed: {exc!r}")
            return False
        finally:
            self._scan_cost = time.monotonic() - started
        self.scans += 1
        if skipped:
            log.warning("Big Segment store: %d keys skipped (hash not canonical base64 of "
                        "SHA-256, or not a set)", skipped)
        try:
            table = build_table(members, synced_ms=synced or 0)
            changed = struct.unpack_from("<Q", table, 24)[0] != self.writer.checksum
            if changed or self.writer.generation == 0:
                gen = self.writer.publish(table)
                log.info("Big Segments: published generation %d (%d contexts, %d bytes, "
                         "%.3f s)", gen, len(members), len(table), time.monotonic() - started)
        except (OSError, ValueError, posix_ipc.Error) as exc:
            self._scan_failed = True
            log.error("Big Segments: cannot publish the membership table: %s", exc)
            return True
        self.contexts = len(members)
        self._scan_failed = False
        self._scanned_synced = synced
        return True

    def _note_error(self, message: str) -> None:
        if message != self.last_error:
            log.error("%s", message)
        self.last_error = message


def start(config: Any, control: Any = None) -> Optional[BigSegmentsMirror]:
    """What the supervisor calls at start: a running mirror when
    ``big_segments_redis_url`` is set, else ``None`` after :func:`disable` (so workers of a
    previous configuration report NOT_CONFIGURED). Never raises: a mirror that cannot start
    is logged, and workers then see NOT_CONFIGURED, as ldclient without a store."""
    if not getattr(config, "big_segments_redis_url", None):
        try:
            disable(config.name)
            if control is not None:   # a previous configuration's status must not linger
                control.set_status(big_segments={"status": "NOT_CONFIGURED",
                                                 "available": False, "synchronized_on": 0})
        except Exception:  # noqa: BLE001
            log.exception("cannot remove the Big Segments objects of %r", config.name)
        return None
    try:
        mirror = BigSegmentsMirror(config, control)
        mirror.start()
    except Exception:  # noqa: BLE001 - flags keep being served without Big Segments
        log.exception("cannot start the Big Segments mirror")
        return None
    log.info("Big Segments: mirroring %s prefix %r every %.1f s", _redact(
        config.big_segments_redis_url), config.big_segments_redis_prefix, mirror.poll_interval)
    return mirror


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://xxxx@{rest.split('@', 1)[1]}"
    return url
