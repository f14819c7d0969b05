"""POSIX shared memory of one namespace: the control block (seqlock) and per-generation snapshots.

:class:`Publisher` runs in the supervisor only (it creates, writes and unlinks objects);
:class:`Attachment` runs in workers and the CLI (it maps objects ``PROT_READ`` and never
writes). Nothing happens at import. Byte layouts are in :mod:`shmflags.snapshot.format`,
``native/layout.h`` and ``docs/snapshot-format.md`` (§2.1 is the seqlock protocol, §2.2 the
publication order); the tags ``[W1]``..``[R3]`` below refer to it.

Object names: control block ``/shmflags.<name>.ctl``, data ``/shmflags.<name>.<generation>``.
"""
from __future__ import annotations

import errno
import grp
import logging
import mmap
import os
import struct
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import posix_ipc

from shmflags.config import is_valid_name
from shmflags.errors import (ConfigError, SnapshotBusy, SnapshotError, SnapshotFormatError,
                             SnapshotUnavailable)
from shmflags.snapshot import format as fmt
from shmflags.snapshot.reader import check_base, check_header, new_state

log = logging.getLogger(__name__)


class SnapshotBaseMissing(SnapshotError):
    """An overlay names a base this publisher has not published (or has unlinked): build a
    self-contained snapshot instead."""


__all__ = ["Publisher", "Attachment", "SnapshotBaseMissing", "cleanup", "ctl_name", "data_name",
           "list_objects", "SHM_DIR"]

#: Where Linux exposes POSIX shared memory objects as files (listing, leak checks).
SHM_DIR = "/dev/shm"


#: Seconds a seqlock read keeps retrying before :class:`SnapshotBusy`. A write section lasts
#: microseconds, but the supervisor can be descheduled inside one on a busy host; a writer that
#: died inside one keeps readers busy until a new supervisor takes over.
READ_TIMEOUT = 0.2

_STATE_CODES = {n: i for i, n in enumerate(fmt.STATE_NAMES)}
_ERROR_CODES = {n: i for i, n in enumerate(fmt.ERROR_KIND_NAMES) if n}
_BIGSEG_CODES = {n: i for i, n in enumerate(fmt.BIGSEG_STATUS_NAMES)}

_UNSET: Any = object()


def _check_name(name: str) -> str:
    if not is_valid_name(name):
        raise ConfigError("name", f"must match [A-Za-z0-9_.-]{{1,64}}, got {name!r}")
    return name


def ctl_name(name: str) -> str:
    """Return the control block's object name for namespace ``name``."""
    return f"/shmflags.{_check_name(name)}.ctl"


def data_name(name: str, generation: int) -> str:
    """Return the data object's name for ``generation`` of namespace ``name``."""
    return f"/shmflags.{_check_name(name)}.{int(generation)}"


def list_objects(name: str) -> Tuple[bool, List[int]]:
    """List what namespace ``name`` has in :data:`SHM_DIR`.

    :returns: (control block present, sorted data generations present).
    """
    prefix = f"shmflags.{_check_name(name)}."
    has_ctl = False
    gens: List[int] = []
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return False, []
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        rest = entry[len(prefix):]
        if rest == "ctl":
            has_ctl = True
        elif rest.isdigit() and rest.isascii():
            gens.append(int(rest))
    return has_ctl, sorted(gens)


def _unlink(obj_name: str) -> bool:
    try:
        posix_ipc.unlink_shared_memory(obj_name)
        return True
    except posix_ipc.ExistentialError:
        return False


def cleanup(name: str) -> List[str]:
    """Remove every object of namespace ``name`` (the control block and all generations).

    Workers that have a snapshot mapped keep serving it; they see no new data until a
    supervisor creates the namespace again. Safe to call when nothing exists.

    :returns: the object names removed.
    """
    has_ctl, gens = list_objects(name)
    removed = [n for n in [data_name(name, g) for g in gens] if _unlink(n)]
    if has_ctl and _unlink(ctl_name(name)):
        removed.append(ctl_name(name))
    return removed


def _resolve_gid(group: Union[None, int, str]) -> Optional[int]:
    if group is None or group == "":
        return None
    if isinstance(group, int) and not isinstance(group, bool):
        return group
    if isinstance(group, str):
        if group.isdigit():
            return int(group)
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError("shm_group", f"no such group: {group!r}") from None
    raise ConfigError("shm_group", f"expected a group name or id, got {group!r}")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _mono_ms() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000_000


def _process_start_ms(pid: int) -> Optional[int]:
    """Start time of ``pid`` in Unix ms (10 ms resolution), or ``None`` if it is gone."""
    try:
        import psutil
        return int(round(psutil.Process(pid).create_time() * 1000))
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess, AccessDenied, ZombieProcess
        return None


def _supervisor_alive(pid: int, start_ms: int) -> bool:
    if pid <= 0:
        return False
    started = _process_start_ms(pid)
    # Same pid and (about) the same start time: the same process, not a reused pid.
    return started is not None and (start_ms == 0 or abs(started - start_ms) <= 1000)


def _make_fence() -> Callable[[], None]:
    """Return a full memory barrier callable (see docs/snapshot-format.md §2.1).

    ``shmflags._native.fence`` (``atomic_thread_fence(memory_order_seq_cst)``) when the C
    extension provides it; otherwise a lock acquire/release pair, whose atomic
    read-modify-writes are full barriers in glibc. On x86-64 (TSO) neither is needed for the
    seqlock; they matter on weakly ordered CPUs.
    """
    try:
        from shmflags import _native
        fence = getattr(_native, "fence", None)
        if callable(fence):
            return fence
    except ImportError:
        pass
    lock = threading.Lock()

    def fence() -> None:
        lock.acquire()
        lock.release()
    return fence


def _read_consistent(mm: mmap.mmap, words: memoryview, start: int, end: int,
                     timeout: float = READ_TIMEOUT) -> bytes:
    """Consistent copy of control-block bytes [start, end) under the seqlock ([R1]..[R3]).

    Spins briefly, then yields, then sleeps in 0.1 ms steps (so a descheduled writer gets a
    CPU) until ``timeout`` seconds have passed.
    """
    seq = fmt.CTL_WORD_SEQ
    attempt = 0
    deadline = 0.0
    while True:
        s1 = words[seq]                        # [R1] one aligned 8-byte load
        if not s1 & 1:
            raw = mm[start:end]                # [R2] copy (may be torn; checked next)
            # [R3] x86-64 does not reorder loads with loads, and CPython performs these in
            # program order; a C reader needs atomic_thread_fence(acquire) here.
            if words[seq] == s1:
                return raw
        attempt += 1
        if attempt < 32:
            continue
        if attempt == 32:
            deadline = time.monotonic() + timeout
        elif time.monotonic() > deadline:
            break
        if attempt < 256:
            os.sched_yield()
        else:
            time.sleep(0.0001)
    raise SnapshotBusy(f"control block kept changing for {timeout:.3f} s (seq {words[seq]}); "
                       f"is a supervisor stuck inside a write?")


def _read_control(mm: mmap.mmap, words: memoryview,
                  timeout: float = READ_TIMEOUT) -> fmt.Control:
    """Consistent decoded copy of a whole control block."""
    return fmt.unpack_control(_read_consistent(mm, words, 0, fmt.CTL_SIZE, timeout))


def _control_status(ctl: fmt.Control) -> Dict[str, Any]:
    """The status dict shared by :meth:`Publisher.status` and :meth:`Attachment.status`."""
    now_mono = _mono_ms()
    err = None
    if ctl.error_kind:
        kind = (fmt.ERROR_KIND_NAMES[ctl.error_kind]
                if ctl.error_kind < len(fmt.ERROR_KIND_NAMES) else "UNKNOWN")
        err = {"kind": kind, "statusCode": ctl.error_status or None,
               "time": ctl.error_time_ms / 1000.0 if ctl.error_time_ms else None,
               "message": ctl.error_message}
    state = fmt.STATE_NAMES[ctl.state] if ctl.state < len(fmt.STATE_NAMES) else "OFF"
    bigseg = (fmt.BIGSEG_STATUS_NAMES[ctl.bigseg_status]
              if ctl.bigseg_status < len(fmt.BIGSEG_STATUS_NAMES) else "STORE_ERROR")
    return {
        "state": state,
        "state_since": ctl.state_since_ms / 1000.0 if ctl.state_since_ms else None,
        "last_error": err,
        "generation": ctl.generation,
        "data_name": ctl.data_name or None,
        "data_size": ctl.data_size,
        "flags": ctl.n_flags,
        "segments": ctl.n_segments,
        "payload_version": ctl.payload_version,
        "supervisor_pid": ctl.supervisor_pid or None,
        "supervisor_alive": _supervisor_alive(ctl.supervisor_pid, ctl.supervisor_start_ms),
        "heartbeat": ctl.heartbeat_ms / 1000.0 if ctl.heartbeat_ms else None,
        "heartbeat_age_s": (max(0.0, (now_mono - ctl.heartbeat_mono_ms) / 1000.0)
                            if ctl.heartbeat_mono_ms else None),
        "last_update": ctl.last_update_ms / 1000.0 if ctl.last_update_ms else None,
        "from_cache": bool(ctl.from_cache),
        "source": ctl.source or None,
        "socket": ctl.socket or None,
        "environment_id": ctl.env_id or None,
        "big_segments": {
            "status": bigseg,
            "available": bool(ctl.bigseg_available),
            "synchronized_on": ctl.bigseg_synced_ms or None,
            "checked": ctl.bigseg_checked_ms / 1000.0 if ctl.bigseg_checked_ms else None,
        },
    }


# ============================================================================================
# Writer
# ============================================================================================

class Publisher:
    """Owns namespace ``name`` on behalf of the one supervisor: publishes generations.

    Opening creates the control block (state INITIALIZING, generation 0) or takes over the one
    a previous supervisor left: its current generation keeps serving, this publisher's first
    generation is higher than any object present, and leftovers are unlinked ``grace`` seconds
    later by :meth:`reap`. A control block whose recorded supervisor is still alive is refused
    unless ``force``.

    All methods are thread-safe (one lock per publisher); the seqlock needs a single writer.
    Do not use a Publisher across fork.

    :param name: namespace (``[A-Za-z0-9_.-]{1,64}``).
    :param mode: permission bits of every object, set with ``fchmod`` whatever the umask.
    :param group: group name or id to ``fchown`` every object to (``None``: leave it).
    :param grace: seconds a superseded generation stays linked before :meth:`reap` unlinks it.
    :param force: take the namespace even if its recorded supervisor looks alive.
    :raises SnapshotError: the namespace belongs to a live supervisor, or shm is unusable.
    :raises ConfigError: a bad name or group.
    """

    def __init__(self, name: str, *, mode: int = 0o640, group: Union[None, int, str] = None,
                 grace: float = 10.0, force: bool = False) -> None:
        self.name = _check_name(name)
        self._mode = int(mode) & 0o777
        self._gid = _resolve_gid(group)
        self._grace = float(grace)
        self._lock = threading.Lock()
        self._fence = _make_fence()
        self._pid = os.getpid()
        self._start_ms = _process_start_ms(self._pid) or _now_ms()
        self._due: List[Tuple[float, str]] = []
        #: self-contained objects this publisher created and has not unlinked, by
        #: (checksum, total_size): the bases an overlay may name
        self._bases: Dict[Tuple[int, int], Tuple[int, str]] = {}
        self._current_base: Optional[str] = None
        self._mm: Optional[mmap.mmap] = None
        self._words: Optional[memoryview] = None
        self._seq = 0
        self._open_control(force)

    # -- control block creation / takeover ----------------------------------------------------

    def _fix_perms(self, fd: int) -> None:
        os.fchmod(fd, self._mode)
        if self._gid is not None:
            os.fchown(fd, -1, self._gid)

    def _open_control(self, force: bool) -> None:
        try:
            self._open_control_once(force)
        except posix_ipc.Error as exc:
            raise SnapshotError(f"cannot open or create {ctl_name(self.name)}: "
                                f"{type(exc).__name__}: {exc}") from None

    def _open_control_once(self, force: bool) -> None:
        cname = ctl_name(self.name)
        for _attempt in range(3):
            try:
                shm = posix_ipc.SharedMemory(cname, posix_ipc.O_CREX, mode=self._mode)
                created = True
            except posix_ipc.ExistentialError:
                try:
                    shm = posix_ipc.SharedMemory(cname, 0)
                except posix_ipc.ExistentialError:
                    continue    # unlinked between the two calls
                created = False
            try:
                if created:
                    self._fix_perms(shm.fd)
                    try:
                        os.posix_fallocate(shm.fd, 0, fmt.CTL_SIZE)
                    except OSError as exc:
                        _unlink(cname)
                        raise SnapshotError(f"cannot create {cname} ({fmt.CTL_SIZE} bytes): "
                                            f"{exc}") from None
                elif not self._wait_initialised(shm.fd):
                    log.warning("shmflags: %s has a foreign or old layout; recreating it", cname)
                    _unlink(cname)
                    continue
                else:
                    self._fix_perms(shm.fd)
                mm = mmap.mmap(shm.fd, fmt.CTL_SIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                shm.close_fd()
            self._mm = mm
            self._words = memoryview(mm).cast("Q")
            if created:
                self._init_fresh()
            else:
                self._take_over(force)
            return
        raise SnapshotError(f"cannot open or create {cname}: it keeps disappearing")

    @staticmethod
    def _wait_initialised(fd: int) -> bool:
        """Is the existing control block ours (waiting up to 1 s for a concurrent creator)?"""
        deadline = time.monotonic() + 1.0
        while True:
            st = os.fstat(fd)
            if st.st_size >= fmt.CTL_SIZE:
                head = os.pread(fd, 16, 0)
                magic, form, size = struct.unpack("<8sII", head)
                if magic == fmt.CTL_MAGIC and form == fmt.CTL_FORMAT_WORD \
                        and size == fmt.CTL_SIZE:
                    return True
                if magic != b"\0" * 8:
                    return False
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def _init_fresh(self) -> None:
        mm = self._mm
        assert mm is not None
        # Fields first, magic last: a concurrent opener waits for the magic.
        now = _now_ms()
        self._seq = 0
        self._write(lambda: (
            struct.pack_into("<qQQQ", mm, fmt.CTL_OFF_SUPERVISOR_PID, self._pid,
                             self._start_ms, now, _mono_ms()),
            struct.pack_into("<QI", mm, fmt.CTL_OFF_STATE_SINCE_MS, now,
                             fmt.STATE_INITIALIZING),
        ))
        struct.pack_into("<II", mm, fmt.CTL_OFF_FORMAT, fmt.CTL_FORMAT_WORD, fmt.CTL_SIZE)
        self._fence()
        mm[fmt.CTL_OFF_MAGIC:fmt.CTL_OFF_MAGIC + 8] = fmt.CTL_MAGIC
        self._generation = 0
        self._current_name: Optional[str] = None
        self._current_base = None
        self._next = self._first_generation(0)
        self._schedule_leftovers(current=None)

    def _take_over(self, force: bool) -> None:
        mm, words = self._mm, self._words
        assert mm is not None and words is not None
        # Owner check first, without the seqlock (pid and start time are written by one
        # store; a live owner may be inside a write section, which must not be disturbed).
        pid, start_ms = struct.unpack_from("<qQ", mm, fmt.CTL_OFF_SUPERVISOR_PID)
        if pid != self._pid and not force and _supervisor_alive(pid, start_ms):
            self.close()
            raise SnapshotError(
                f"namespace {self.name!r} belongs to a live supervisor (pid {pid}); stop it "
                f"first or use force")
        seq = words[fmt.CTL_WORD_SEQ]
        if seq & 1:
            # The previous writer died inside a write section: close it so readers resume.
            # Its half-written fields are rewritten below or by the next publish.
            words[fmt.CTL_WORD_SEQ] = seq + 1
        ctl = _read_control(mm, words)
        self._seq = words[fmt.CTL_WORD_SEQ]
        self._generation = ctl.generation
        self._current_name = ctl.data_name or None if ctl.generation else None
        self._current_base = (self._base_name_of(self._current_name)
                              if self._current_name else None)
        self._next = self._first_generation(ctl.generation)
        now = _now_ms()
        self._write(lambda: struct.pack_into(
            "<qQQQ", mm, fmt.CTL_OFF_SUPERVISOR_PID, self._pid, self._start_ms, now,
            _mono_ms()))
        self._schedule_leftovers(current=self._current_name)
        log.info("shmflags: took over namespace %r at generation %d (previous supervisor "
                 "pid %d)", self.name, ctl.generation, ctl.supervisor_pid)

    def _first_generation(self, current: int) -> int:
        _has_ctl, gens = list_objects(self.name)
        return max([current] + gens) + 1

    def _base_name_of(self, name: str) -> Optional[str]:
        """The base object an existing overlay ``name`` reads from (``None``: self-contained
        or unreadable)."""
        head = read_head(name, fmt.HEADER_SIZE)
        if head is None or len(head) < fmt.HEADER_SIZE or head[:8] != fmt.MAGIC:
            return None
        h = fmt.unpack_header(head)
        if h.format != fmt.FORMAT_WORD or not h.base_size:
            return None
        return data_name(self.name, h.base_generation)

    def _schedule_leftovers(self, current: Optional[str]) -> None:
        _has_ctl, gens = list_objects(self.name)
        deadline = time.monotonic() + self._grace
        for g in gens:
            n = data_name(self.name, g)
            if n != current and n != self._current_base:
                self._due.append((deadline, n))

    def _protected(self) -> Set[str]:
        return {n for n in (self._current_name, self._current_base) if n}

    def _unlink_object(self, name: str) -> bool:
        for k, (_g, n) in list(self._bases.items()):
            if n == name:
                del self._bases[k]
        return _unlink(name)

    # -- seqlock writer -----------------------------------------------------------------------

    def _write(self, body: Callable[[], Any]) -> None:
        """Run ``body`` (field stores into the mmap) inside one seqlock write section."""
        words = self._words
        if words is None:
            raise SnapshotError("publisher is closed")
        seq = self._seq
        # [W1] odd seq: one aligned 8-byte store through the "Q" view, then a full fence so
        # the odd value is visible before any field store (pairs with the reader's [R3]).
        words[fmt.CTL_WORD_SEQ] = seq + 1
        self._fence()
        try:
            body()                                  # [W2] the fields
        finally:
            # [W3] fence so every field store is visible before the even seq (a release;
            # pairs with the reader's acquire load at [R1]).
            self._fence()
            self._seq = seq + 2
            words[fmt.CTL_WORD_SEQ] = seq + 2

    # -- publication --------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """The current published generation (0 = none)."""
        return self._generation

    def publish(self, data: Union[bytes, bytearray, memoryview], *,
                source: Optional[str] = None, from_cache: Optional[bool] = None) -> int:
        """Publish ``data`` (snapshot bytes from the builder) as the next generation.

        The generation number is stamped into the header here, and for an overlay
        (``base_size != 0``) the generation of its base, found by the base's checksum and size
        among the self-contained generations this publisher created and still has. The
        previous generation is unlinked ``grace`` seconds later (by :meth:`reap`, which this
        also calls), or at the next publish if that comes first: older generations are
        unlinked before the new object is created, except the base of the current
        generation, which stays linked until a later generation no longer reads from it. So
        the namespace holds the current generation and its base, plus the previous one and
        its base until their grace ends.

        :param source: also set the control block's ``source`` in the same write section.
        :param from_cache: also set ``from_cache``.
        :returns: the new generation.
        :raises SnapshotFormatError: ``data`` is not a snapshot (header checks).
        :raises SnapshotBaseMissing: ``data`` is an overlay on a base this publisher does not
            have (build a self-contained snapshot and publish that).
        :raises SnapshotError: shared memory is full or unusable (the message says how many
            bytes were needed); the previous generation keeps serving.
        """
        mv = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        h = check_header(mv, verify_checksum=False)
        total = h.total_size
        with self._lock:
            if self._mm is None:
                raise SnapshotError("publisher is closed")
            base_gen: Optional[int] = None
            base_name: Optional[str] = None
            if h.base_size:
                found = self._bases.get((h.base_checksum, h.base_size))
                if found is not None and not os.path.exists(
                        os.path.join(SHM_DIR, found[1].lstrip("/"))):
                    del self._bases[(h.base_checksum, h.base_size)]   # unlinked behind our back
                    found = None
                if found is None:
                    raise SnapshotBaseMissing(
                        f"overlay on a base of {h.base_size} bytes, checksum "
                        f"0x{h.base_checksum:016x}, that this publisher has not published "
                        f"or has unlinked")
                base_gen, base_name = found
            gen = self._next
            name = data_name(self.name, gen)
            # Issue 12: generations older than the current one go now, before the new object
            # takes space, so a burst of publishes keeps at most the current generation, its
            # base and the previous one in /dev/shm. Safe: a reader that read such a name gets
            # ENOENT and rereads the control block; mappings survive unlink.
            keep = self._protected() | ({base_name} if base_name else set())
            for _due, old in self._due:
                if old not in keep:
                    self._unlink_object(old)
            self._due = []     # what was kept is the current generation or its base
            self._create_object(name, gen, mv, total, base_gen)
            mm = self._mm
            now = _now_ms()
            name_raw = fmt.encode_cstr(name, fmt.CTL_NAME_MAX, "data name")
            src_raw = (fmt.encode_cstr(source, fmt.CTL_SOURCE_MAX, "source")
                       if source is not None else None)
            words = self._words
            assert words is not None

            def fields() -> None:
                words[fmt.CTL_WORD_GENERATION] = gen          # one aligned 8-byte store
                struct.pack_into("<QQq", mm, fmt.CTL_OFF_DATA_SIZE, total, h.checksum,
                                 h.payload_version)
                struct.pack_into("<Q", mm, fmt.CTL_OFF_LAST_UPDATE_MS, now)
                struct.pack_into("<II", mm, fmt.CTL_OFF_N_FLAGS, h.n_flags, h.n_segments)
                mm[fmt.CTL_OFF_DATA_NAME:fmt.CTL_OFF_DATA_NAME + fmt.CTL_NAME_MAX] = name_raw
                if src_raw is not None:
                    mm[fmt.CTL_OFF_SOURCE:fmt.CTL_OFF_SOURCE + fmt.CTL_SOURCE_MAX] = src_raw
                if from_cache is not None:
                    struct.pack_into("<I", mm, fmt.CTL_OFF_FROM_CACHE, 1 if from_cache else 0)
            self._write(fields)
            prev, prev_base = self._current_name, self._current_base
            self._current_name = name
            self._current_base = base_name
            self._generation = gen
            self._next = gen + 1
            if not h.base_size:
                self._bases[(h.checksum, total)] = (gen, name)
            deadline = time.monotonic() + self._grace
            for old in (prev, prev_base):
                if old and old not in (name, base_name) and \
                        old not in [n for _t, n in self._due]:
                    self._due.append((deadline, old))
        self.reap()
        return gen

    def _create_object(self, name: str, gen: int, mv: memoryview, total: int,
                       base_gen: Optional[int] = None) -> None:
        try:
            try:
                shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=self._mode)
            except posix_ipc.ExistentialError:
                # Above the current generation, so never announced: a crashed publish left it.
                _unlink(name)
                shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=self._mode)
        except posix_ipc.Error as exc:
            raise SnapshotError(f"cannot create {name}: {type(exc).__name__}: {exc}") from None
        fd = shm.fd
        try:
            self._fix_perms(fd)
            # Every byte of [0, total) is written before the object is announced, so every
            # page is allocated by these writes: a full /dev/shm is ENOSPC here (pwrite), never
            # SIGBUS in a reader later. (posix_fallocate first reserved and zeroed the same
            # pages: ~0.06 ms more CPU per one-flag patch at 10,000 flags.)
            header = fmt.stamp_generation(mv[:fmt.HEADER_SIZE], gen, base_gen)
            _pwrite_all(fd, header, 0)
            _pwrite_all(fd, mv[fmt.HEADER_SIZE:total], fmt.HEADER_SIZE)
        except OSError as exc:
            _unlink(name)
            need = f"; {total} bytes needed" if exc.errno in (errno.ENOSPC, errno.EFBIG) else ""
            raise SnapshotError(f"cannot publish generation {gen} as {name}: "
                                f"{os.strerror(exc.errno or 0) or exc}{need}") from None
        finally:
            shm.close_fd()

    def reap(self, now: Optional[float] = None) -> List[str]:
        """Unlink superseded generations whose grace period has passed.

        :param now: ``time.monotonic()`` value to compare with (tests).
        :returns: the names unlinked.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            keep = self._protected()
            due = [n for t, n in self._due if t <= now and n not in keep]
            self._due = [(t, n) for t, n in self._due if t > now and n not in keep]
            return [n for n in due if self._unlink_object(n)]

    def pending(self) -> List[str]:
        """Names waiting for :meth:`reap`."""
        with self._lock:
            return [n for _t, n in self._due]

    # -- status -------------------------------------------------------------------------------

    def set_status(self, state: Union[None, str, int] = None, *, error: Any = _UNSET,
                   source: Optional[str] = None, from_cache: Optional[bool] = None,
                   socket: Optional[str] = None, big_segments: Optional[dict] = None,
                   environment_id: Optional[str] = None) -> None:
        """Update status fields of the control block in one seqlock write section.

        Arguments left at their default are not changed.

        :param state: ``"INITIALIZING"``, ``"VALID"``, ``"INTERRUPTED"`` or ``"OFF"``;
            ``state_since`` changes only when the state does.
        :param error: ``{"kind", "statusCode", "message", "time"}`` (``time`` in Unix seconds,
            default now; ``message`` cut to 256 UTF-8 bytes), or ``None`` to clear it.
        :param source: the data source's name (``"streaming"``, ``"file"``, ``"cache"``...).
        :param from_cache: whether the served data came from the last-known-good cache.
        :param socket: the event socket path (``""`` when events are off).
        :param big_segments: ``{"status", "available", "synchronized_on" (ms), "checked"
            (Unix seconds)}``.
        :param environment_id: the LaunchDarkly environment id (``X-LD-EnvID``) that workers
            hand to hooks; ``""`` clears it. Longer than 63 UTF-8 bytes is a ValueError.
        """
        ops: List[Callable[[mmap.mmap], None]] = []
        if state is not None:
            code = state if isinstance(state, int) else _STATE_CODES.get(state)
            if code is None or not 0 <= code < len(fmt.STATE_NAMES):
                raise ValueError(f"unknown data source state {state!r}")
            ops.append(lambda mm: self._set_state(mm, code))
        if error is not _UNSET:
            ops.append(_error_writer(error))
        if source is not None:
            raw = fmt.encode_cstr(source, fmt.CTL_SOURCE_MAX, "source")
            ops.append(lambda mm: _put(mm, fmt.CTL_OFF_SOURCE, raw))
        if from_cache is not None:
            ops.append(lambda mm: struct.pack_into("<I", mm, fmt.CTL_OFF_FROM_CACHE,
                                                   1 if from_cache else 0))
        if socket is not None:
            raw_sock = fmt.encode_cstr(socket, fmt.CTL_SOCKET_MAX, "socket path")
            ops.append(lambda mm: _put(mm, fmt.CTL_OFF_SOCKET, raw_sock))
        if big_segments is not None:
            ops.append(_bigseg_writer(big_segments))
        if environment_id is not None:
            raw_env = fmt.encode_cstr(environment_id, fmt.CTL_ENV_ID_MAX, "environment id")
            ops.append(lambda mm: _put(mm, fmt.CTL_OFF_ENV_ID, raw_env))
        if not ops:
            return
        with self._lock:
            mm = self._mm
            if mm is None:
                raise SnapshotError("publisher is closed")
            self._write(lambda: [op(mm) for op in ops])

    @staticmethod
    def _set_state(mm: mmap.mmap, code: int) -> None:
        old = struct.unpack_from("<I", mm, fmt.CTL_OFF_STATE)[0]
        if old != code:
            struct.pack_into("<Q", mm, fmt.CTL_OFF_STATE_SINCE_MS, _now_ms())
            struct.pack_into("<I", mm, fmt.CTL_OFF_STATE, code)

    def heartbeat(self) -> None:
        """Write the heartbeat (call every second from the supervisor's main loop)."""
        with self._lock:
            mm = self._mm
            if mm is None:
                raise SnapshotError("publisher is closed")
            now, mono = _now_ms(), _mono_ms()
            self._write(lambda: struct.pack_into("<QQ", mm, fmt.CTL_OFF_HEARTBEAT_MS, now,
                                                 mono))

    def control(self) -> fmt.Control:
        """The control block as readers see it."""
        with self._lock:
            if self._mm is None or self._words is None:
                raise SnapshotError("publisher is closed")
            return _read_control(self._mm, self._words)

    def status(self) -> Dict[str, Any]:
        """The same dict as :meth:`Attachment.status`."""
        return _control_status(self.control())

    # -- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap the control block. Objects stay (workers keep serving); see :func:`cleanup`."""
        with self._lock:
            if self._words is not None:
                self._words.release()
                self._words = None
            if self._mm is not None:
                self._mm.close()
                self._mm = None

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    cleanup = staticmethod(cleanup)


def _put(mm: mmap.mmap, off: int, raw: bytes) -> None:
    mm[off:off + len(raw)] = raw


def _error_writer(error: Optional[dict]) -> Callable[[mmap.mmap], None]:
    if error is None:
        def clear(mm: mmap.mmap) -> None:
            mm[fmt.CTL_OFF_ERROR_KIND:fmt.CTL_OFF_DATA_NAME] = \
                b"\0" * (fmt.CTL_OFF_DATA_NAME - fmt.CTL_OFF_ERROR_KIND)
        return clear
    if not isinstance(error, dict):
        raise ValueError(f"error must be a dict or None, got {type(error).__name__}")
    kind = _ERROR_CODES.get(error.get("kind") or "UNKNOWN", _ERROR_CODES["UNKNOWN"])
    status = error.get("statusCode") or 0
    status = status if isinstance(status, int) and 0 <= status <= 0xFFFFFFFF else 0
    when = error.get("time")
    when_ms = int(when * 1000) if isinstance(when, (int, float)) and when > 0 else _now_ms()
    msg = fmt.truncate_utf8(str(error.get("message") or ""), fmt.CTL_ERROR_MAX)

    def write(mm: mmap.mmap) -> None:
        struct.pack_into("<IIQII", mm, fmt.CTL_OFF_ERROR_KIND, kind, status, when_ms,
                         len(msg), 0)
        _put(mm, fmt.CTL_OFF_ERROR_MESSAGE, msg.ljust(fmt.CTL_ERROR_MAX, b"\0"))
    return write


def _bigseg_writer(info: dict) -> Callable[[mmap.mmap], None]:
    status = _BIGSEG_CODES.get(info.get("status") or "NOT_CONFIGURED")
    if status is None:
        raise ValueError(f"unknown big segment status {info.get('status')!r}")
    synced = int(info.get("synchronized_on") or 0)
    checked = info.get("checked")
    checked_ms = int(checked * 1000) if isinstance(checked, (int, float)) else _now_ms()

    def write(mm: mmap.mmap) -> None:
        struct.pack_into("<IIQQ", mm, fmt.CTL_OFF_BIGSEG_STATUS, status,
                         1 if info.get("available") else 0, synced, checked_ms)
    return write


def read_head(name: str, size: int) -> Optional[bytes]:
    """The first ``size`` bytes of shared memory object ``name`` (fewer if it is shorter),
    read without mapping it; ``None`` when it cannot be opened (gone, no permission)."""
    try:
        shm = posix_ipc.SharedMemory(name, 0, read_only=True)
    except posix_ipc.Error:
        return None
    try:
        return os.pread(shm.fd, size, 0)
    finally:
        shm.close_fd()


def _pwrite_all(fd: int, data: Union[bytes, memoryview], offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


# ============================================================================================
# Reader
# ============================================================================================

class _Mapping:
    """One mapped, validated object: a generation, or the base an overlay reads from.

    ``state`` is its verification state (``reader.new_state``: directory verified, then one
    byte per blob chunk); it lives as long as the mapping, so an object is hashed once per
    worker however many overlays and Snapshot objects use it.
    """

    __slots__ = ("generation", "mm", "name", "header", "state", "base")

    def __init__(self, generation: int, mm: mmap.mmap, name: str, header: fmt.Header,
                 state: bytearray, base: Optional["_Mapping"] = None) -> None:
        self.generation = generation
        self.mm = mm
        self.name = name
        self.header = header
        self.state = state
        self.base = base


#: The control block's magic, format word and size (compiled once: the first ``struct`` call
#: with a new format in a forked worker compiles and caches it, on pages shared with the master)
_CTL_HEAD = struct.Struct("<8sII")


class Attachment:
    """A worker's read-only view of namespace ``name``.

    Maps the control block ``PROT_READ``; :meth:`generation` is one aligned load from it (the
    hot-path check); :meth:`snapshot_buffer` maps the current generation ``PROT_READ`` after
    validating its header and directory (blob chunks are verified by the readers on first
    use), and keeps serving the previous one if the new one is bad. An overlay generation
    also needs its base object: the attachment maps it once and keeps it (with its
    verification state) for every overlay on the same base. The attachment itself references
    one generation and its base; a caller that still holds an older buffer keeps that mapping
    alive until it lets go (so a worker has two mappings in steady state, and at most four
    while switching from an overlay to an overlay on a new base). Holds no lock and no
    thread; the mappings survive fork and stay valid in the child.

    :param name: namespace.
    :raises SnapshotUnavailable: the namespace has no control block (no supervisor yet).
    :raises SnapshotFormatError: the control block has another layout.
    """

    def __init__(self, name: str) -> None:
        self.name = _check_name(name)
        cname = ctl_name(name)
        try:
            shm = posix_ipc.SharedMemory(cname, 0, read_only=True)
        except posix_ipc.ExistentialError:
            raise SnapshotUnavailable(f"no shmflags namespace {name!r} ({cname} does not "
                                      f"exist): is the supervisor running?") from None
        except posix_ipc.PermissionsError as exc:
            raise SnapshotUnavailable(f"cannot open {cname}: {exc}") from None
        try:
            st = os.fstat(shm.fd)
            if st.st_size == 0:     # created, not yet sized by the supervisor
                raise SnapshotUnavailable(f"{cname} is being created; try again")
            if st.st_size < fmt.CTL_SIZE:
                raise SnapshotFormatError(f"{cname}: expected {fmt.CTL_SIZE} bytes, got "
                                          f"{st.st_size}")
            self._ino = st.st_ino
            mm = mmap.mmap(shm.fd, fmt.CTL_SIZE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            shm.close_fd()
        magic, form, size = _CTL_HEAD.unpack_from(mm, 0)
        if magic == b"\0" * 8:
            mm.close()     # the supervisor writes the magic last, once every field is set
            raise SnapshotUnavailable(f"{cname} is being created; try again")
        if magic != fmt.CTL_MAGIC or form != fmt.CTL_FORMAT_WORD or size != fmt.CTL_SIZE:
            mm.close()
            raise SnapshotFormatError(
                f"{cname}: expected magic {fmt.CTL_MAGIC!r} format 0x{fmt.CTL_FORMAT_WORD:08x} "
                f"size {fmt.CTL_SIZE}, got {magic!r} 0x{form:08x} {size}")
        self._mm: Optional[mmap.mmap] = mm
        self._words: Optional[memoryview] = memoryview(mm).cast("Q")
        self._current: Optional[_Mapping] = None
        self._rejected: Set[int] = set()

    # -- hot path -----------------------------------------------------------------------------

    def generation(self) -> int:
        """The published generation: one aligned 8-byte load, no seqlock (0 = none yet)."""
        words = self._words
        if words is None:
            raise SnapshotError("attachment is closed")
        return words[fmt.CTL_WORD_GENERATION]

    @property
    def mapped_generation(self) -> int:
        """The generation :meth:`snapshot_buffer` currently returns (0 = none)."""
        return self._current.generation if self._current else 0

    def control(self) -> fmt.Control:
        """A consistent copy of the control block.

        :raises SnapshotBusy: it kept changing for :data:`READ_TIMEOUT` seconds.
        """
        if self._mm is None or self._words is None:
            raise SnapshotError("attachment is closed")
        return _read_control(self._mm, self._words)

    def control_bytes(self, start: int = 0, end: int = fmt.CTL_SIZE) -> bytes:
        """A consistent copy of control-block bytes ``[start, end)`` (cheapest seqlock read).

        :raises SnapshotBusy: see :meth:`control`.
        """
        if self._mm is None or self._words is None:
            raise SnapshotError("attachment is closed")
        if not 0 <= start <= end <= fmt.CTL_SIZE:
            raise ValueError(f"range [{start}, {end}) is outside the control block")
        return _read_consistent(self._mm, self._words, start, end)

    def snapshot_buffer(self) -> mmap.mmap:
        """Return the mapping of the current generation, switching if it changed.

        :raises SnapshotUnavailable: nothing published yet (or the object vanished and there
            is no previous mapping).
        :raises SnapshotFormatError: the current generation is invalid and there is no
            previous mapping to keep serving.
        :raises SnapshotBusy: see :meth:`control`.
        """
        cur = self._current
        if cur is not None and cur.generation == self.generation():
            return cur.mm
        return self._switch()

    def snapshot_parts(self) -> Dict[str, Any]:
        """The current generation's arguments for ``Snapshot`` (switching if it changed):
        ``buffer``, ``state``, ``base``, ``base_state`` (``None`` for a self-contained one).

        :raises: as :meth:`snapshot_buffer`.
        """
        self.snapshot_buffer()
        cur = self._current
        assert cur is not None
        base = cur.base
        return {"buffer": cur.mm, "state": cur.state,
                "base": base.mm if base is not None else None,
                "base_state": base.state if base is not None else None}

    def _switch(self) -> mmap.mmap:
        last_error: Optional[SnapshotError] = None
        for _attempt in range(16):
            ctl = self.control()
            cur = self._current
            if ctl.generation == 0:
                raise SnapshotUnavailable(f"namespace {self.name!r}: no snapshot published yet")
            if cur is not None and cur.generation == ctl.generation:
                return cur.mm
            if ctl.generation in self._rejected:
                if cur is not None:
                    return cur.mm
                raise last_error or SnapshotFormatError(
                    f"namespace {self.name!r}: generation {ctl.generation} was rejected")
            try:
                new = self._map(ctl)
            except FileNotFoundError as exc:
                # Superseded and unlinked since we read the control block (the data object or
                # its base): take the newer.
                last_error = SnapshotUnavailable(
                    f"{exc.args[0] if exc.args else ctl.data_name} (for generation "
                    f"{ctl.generation}) does not exist")
                if self.generation() == ctl.generation:
                    time.sleep(0.001)
                continue
            except SnapshotFormatError as exc:
                self._rejected.add(ctl.generation)
                keep = (f"keeping generation {cur.generation}" if cur is not None
                        else "no previous generation to serve")
                log.error("shmflags: rejecting %s (generation %d): %s; %s", ctl.data_name,
                          ctl.generation, exc, keep)
                if cur is not None:
                    return cur.mm
                raise
            self._install(new)
            return new.mm
        cur = self._current
        if cur is not None:
            log.error("shmflags: namespace %r: cannot map the current generation (%s); "
                      "keeping generation %d", self.name, last_error, cur.generation)
            return cur.mm
        raise last_error or SnapshotUnavailable(f"namespace {self.name!r}: no snapshot")

    def _open_object(self, name: str, size: int, what: str) -> mmap.mmap:
        """Map ``size`` bytes of object ``name`` read-only (FileNotFoundError: unlinked)."""
        try:
            shm = posix_ipc.SharedMemory(name, 0, read_only=True)
        except posix_ipc.ExistentialError:
            raise FileNotFoundError(name) from None
        except posix_ipc.PermissionsError as exc:
            raise SnapshotUnavailable(f"cannot open {name}: {exc}") from None
        try:
            have = os.fstat(shm.fd).st_size
            if have < size or size < fmt.HEADER_SIZE:
                raise SnapshotFormatError(f"{name}: expected {size} bytes ({what}), got an "
                                          f"object of {have}")
            return mmap.mmap(shm.fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            shm.close_fd()

    def _map(self, ctl: fmt.Control) -> _Mapping:
        name = ctl.data_name
        if not name.startswith(f"/shmflags.{self.name}."):
            raise SnapshotFormatError(f"control block names {name!r}, expected an object of "
                                      f"namespace {self.name!r}")
        mm = self._open_object(name, ctl.data_size, "control block")
        try:
            # Header and directory only (once per mapping); blob chunks are verified by the
            # readers when first touched, so a worker faults in only the pages it reads.
            with memoryview(mm) as mv:
                h = check_header(mv, verify_checksum=True)
            if h.checksum != ctl.data_checksum:
                raise SnapshotFormatError(
                    f"checksum: expected 0x{ctl.data_checksum:016x} (control block), got "
                    f"0x{h.checksum:016x}")
            if h.generation != ctl.generation or h.total_size != ctl.data_size:
                raise SnapshotFormatError(
                    f"expected generation {ctl.generation} of {ctl.data_size} bytes (control "
                    f"block), got generation {h.generation} of {h.total_size} bytes")
            base = self._map_base(h) if h.base_size else None
        except (SnapshotFormatError, FileNotFoundError, SnapshotUnavailable):
            mm.close()
            raise
        state = new_state(h)
        state[0] = 1
        return _Mapping(ctl.generation, mm, name, h, state, base)

    def _map_base(self, h: fmt.Header) -> _Mapping:
        """The base object of overlay ``h``: the one already mapped when it is the same
        generation (no new mapping, no re-verification), else a new validated mapping."""
        cur = self._current
        for cand in (cur, cur.base if cur is not None else None):
            if cand is not None and cand.generation == h.base_generation \
                    and not cand.header.base_size:
                check_base(h, cand.header)
                return cand
        name = data_name(self.name, h.base_generation)
        mm = self._open_object(name, h.base_size, "overlay's base_size")
        try:
            with memoryview(mm) as mv:
                bh = check_header(mv, verify_checksum=True)
            check_base(h, bh)
        except SnapshotFormatError:
            mm.close()
            raise
        state = new_state(bh)
        state[0] = 1
        return _Mapping(h.base_generation, mm, name, bh, state)

    def _install(self, new: _Mapping) -> None:
        # The old mapping is not closed here: a Snapshot built on it may still be evaluating
        # in another thread. Dropping the reference unmaps it as soon as the last user lets
        # go (CPython frees an mmap when its reference count reaches zero).
        self._current = new

    # -- status -------------------------------------------------------------------------------

    def replaced(self) -> bool:
        """Was the control block unlinked or recreated since this attachment opened it?

        A ``shmflags cleanup`` followed by a new supervisor leaves this attachment on the old,
        orphaned control block; callers that see a stale heartbeat reopen when this is true.
        """
        try:
            return os.stat(os.path.join(SHM_DIR, ctl_name(self.name)[1:])).st_ino != self._ino
        except OSError:
            return True

    def status(self) -> Dict[str, Any]:
        """The namespace's status as a dict (see ``docs/snapshot-format.md`` §2).

        Keys: ``state``, ``state_since``, ``last_error``, ``generation``, ``data_name``,
        ``data_size``, ``flags``, ``segments``, ``payload_version``, ``supervisor_pid``,
        ``supervisor_alive``, ``heartbeat``, ``heartbeat_age_s``, ``last_update``,
        ``from_cache``, ``source``, ``socket``, ``big_segments``, plus ``mapped_generation``.
        Times are Unix seconds (floats).
        """
        out = _control_status(self.control())
        out["mapped_generation"] = self.mapped_generation
        return out

    def close(self) -> None:
        """Drop every mapping this attachment holds (buffers handed out stay valid)."""
        if self._current is not None:
            _close_quietly(self._current.mm)
            if self._current.base is not None:
                _close_quietly(self._current.base.mm)
        self._current = None
        if self._words is not None:
            self._words.release()
            self._words = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self) -> "Attachment":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _close_quietly(mm: mmap.mmap) -> None:
    """Unmap now unless a caller still exports the buffer; then the last reference unmaps."""
    try:
        mm.close()
    except BufferError:
        pass
