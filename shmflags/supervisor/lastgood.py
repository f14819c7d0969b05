"""The last-known-good data file under ``state_dir``: what a restarted supervisor serves first.

Runs in the supervisor only. The file holds the LaunchDarkly JSON of the last published data
(not snapshot bytes, so an upgrade that changes the snapshot layout still finds usable data).

File layout: a 32-byte header — magic ``SHMFLKG1``, u64 payload length, u64 xxh3-64 of the
payload, u64 saved-at Unix ms — then the payload, JSON ``{"flags", "segments", "source"}``.
It is written to a temporary file in the same directory, fsynced, then renamed over the old one,
so a reader sees the old file or the new one, never a mix. A truncated or corrupt file is
reported by :func:`load` as :class:`LastGoodError` and the caller ignores it.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import xxhash

from shmflags.supervisor import atomicfile

log = logging.getLogger(__name__)

MAGIC = b"SHMFLKG1"
_HEADER = struct.Struct("<8sQQQ")


class LastGoodError(Exception):
    """The last-known-good file is unreadable, truncated or fails its checksum."""


class LastGood(NamedTuple):
    """Data read back from the file."""

    flags: Dict[str, Dict[str, Any]]
    segments: Dict[str, Dict[str, Any]]
    source: str
    saved_ms: int


def path_for(state_dir: str, name: str) -> str:
    """The file of namespace ``name`` in ``state_dir``."""
    return os.path.join(state_dir, f"{name}.lastgood")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


#: Per-kind cache of encoded items for :func:`encode`: key → (the item object, its
#: ``"key":{...}`` UTF-8 bytes). The store never mutates an item it holds (an upsert replaces
#: the dict, as the snapshot builder's cache also assumes), so the same object encodes to the
#: same bytes.
EncodeCache = Dict[str, Tuple[Any, bytes]]


def _dumps_items(items: Dict[str, Any], cache: Optional[EncodeCache] = None) -> List[bytes]:
    """``_dumps(items)`` as UTF-8, one item at a time: the same text, but the encoder gives up
    the GIL between items, so a 10,000-flag file does not stall the stream and publisher
    threads for its whole duration.

    With ``cache`` (updated in place: entries of keys no longer in ``items`` are dropped), an
    item whose object is the one encoded last time is not encoded again. A one-flag patch then
    costs one item's encoding plus a join, ~5 ms at 10,000 flags instead of ~200 ms of
    encoding — which, run 0.1 s after each publish, used to overlap the next patch and make
    its publish wait for the GIL (issue #6's update p99).

    Returns the pieces to join (no separators): ``{``, items separated by ``,``, ``}``.
    """
    if not all(type(k) is str for k in items):
        return [_dumps(items).encode("utf-8")]
    dumps = _dumps
    if cache is None:
        return [("{" + ",".join([dumps(k) + ":" + dumps(v) for k, v in items.items()])
                 + "}").encode("utf-8")]
    pieces: List[bytes] = [b"{"]
    append = pieces.append
    get = cache.get
    for k, v in items.items():
        hit = get(k)
        if hit is not None and hit[0] is v:
            piece = hit[1]
        else:
            piece = (dumps(k) + ":" + dumps(v)).encode("utf-8")
            cache[k] = (v, piece)
        append(piece)
        append(b",")
    if len(pieces) > 1:
        pieces.pop()               # the last separator
    append(b"}")
    if len(cache) > len(items):    # keys deleted since the last call
        for k in [k for k in cache if k not in items]:
            del cache[k]
    return pieces


def encode(flags: Dict[str, Any], segments: Dict[str, Any], source: str,
           saved_ms: Optional[int] = None,
           caches: Optional[Tuple[EncodeCache, EncodeCache]] = None) -> bytes:
    """The whole file's bytes for this data (the JSON is what
    ``json.dumps({"flags", "segments", "source"}, separators=(",", ":"))`` gives).

    :param caches: ``(flags cache, segments cache)`` kept by the caller between calls (see
        :func:`_dumps_items`); the output is the same with or without them.
    """
    fcache, scache = caches if caches is not None else (None, None)
    payload = b"".join([b'{"flags":', *_dumps_items(flags, fcache), b',"segments":',
                        *_dumps_items(segments, scache), b',"source":',
                        _dumps(source).encode("utf-8"), b"}"])
    saved = int(time.time() * 1000) if saved_ms is None else saved_ms
    return _HEADER.pack(MAGIC, len(payload), xxhash.xxh3_64_intdigest(payload), saved) + payload


def decode(raw: bytes) -> LastGood:
    """Parse and verify a file's bytes.

    :raises LastGoodError: on a bad magic, length, checksum or payload.
    """
    if len(raw) < _HEADER.size:
        raise LastGoodError(f"truncated: {len(raw)} bytes, header needs {_HEADER.size}")
    magic, length, digest, saved = _HEADER.unpack_from(raw, 0)
    if magic != MAGIC:
        raise LastGoodError(f"bad magic {magic!r}, expected {MAGIC!r}")
    payload = raw[_HEADER.size:]
    if len(payload) != length:
        raise LastGoodError(f"truncated: payload is {len(payload)} bytes, header says {length}")
    if xxhash.xxh3_64_intdigest(payload) != digest:
        raise LastGoodError("checksum mismatch")
    try:
        doc = json.loads(payload)
        flags, segments = doc["flags"], doc["segments"]
        if not isinstance(flags, dict) or not isinstance(segments, dict):
            raise TypeError("flags and segments must be objects")
    except (ValueError, KeyError, TypeError) as exc:
        raise LastGoodError(f"bad payload: {exc}") from None
    return LastGood(flags, segments, str(doc.get("source") or ""), saved)


def load(path: str) -> Optional[LastGood]:
    """Read the file; ``None`` when there is none.

    :raises LastGoodError: when it exists but cannot be used.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LastGoodError(f"cannot read: {exc.strerror or exc}") from None
    return decode(raw)


def save(path: str, data: bytes) -> None:
    """Write ``data`` (from :func:`encode`) to ``path`` atomically and durably."""
    atomicfile.replace(path, data, mode=0o640, durable=True)


class Writer:
    """Writes the newest data handed to :meth:`submit` from a background thread.

    Submissions that arrive while a write is in progress, or within ``min_interval`` of the
    previous write, are coalesced: only the latest is written next. A burst of publishes (a
    busy stream) thus costs at most two writes a second, and the file is never more than
    ``min_interval`` plus one write behind the last publish (the 1 s promise of DESIGN §12).

    Items are encoded once and kept (:func:`_dumps_items`), so a write after a patch costs
    ~5 ms of CPU at 10,000 flags; the first write after a start or a ``put`` encodes
    everything (~200 ms at 10,000 flags).

    A write starts ``settle`` seconds after the submission that triggers it, not at once:
    a full encoding, which right after a publish competes with
    every worker switching to the new generation (2-core hosts); 0.1 s later it does not,
    and the 1 s promise holds.

    :param path: the file.
    :param min_interval: seconds between the starts of two writes.
    :param settle: seconds between a submission and the write it triggers.
    """

    def __init__(self, path: str, min_interval: float = 0.5, settle: float = 0.1) -> None:
        self.path = path
        self.min_interval = min_interval
        self.settle = settle
        self._cond = threading.Condition()
        self._pending: Optional[tuple] = None
        self._due = 0.0
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self.writes = 0
        self.errors = 0
        # encoded items of the last write (used by the writer thread only)
        self._caches: Tuple[EncodeCache, EncodeCache] = ({}, {})

    def start(self) -> None:
        """Start the writer thread."""
        self._thread = threading.Thread(target=self._run, name="shmflags-lastgood", daemon=True)
        self._thread.start()

    def submit(self, flags: Dict[str, Any], segments: Dict[str, Any], source: str) -> None:
        """Queue this data to be written, replacing anything queued but not yet written."""
        with self._cond:
            if self._pending is None:
                self._due = time.monotonic() + self.settle
            self._pending = (flags, segments, source)
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread (waits at most ``timeout``)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        next_write = 0.0
        while True:
            with self._cond:
                while not self._stopping and (
                        self._pending is None
                        or time.monotonic() < max(next_write, self._due)):
                    wait = (None if self._pending is None
                            else max(next_write, self._due) - time.monotonic())
                    self._cond.wait(wait)
                job, self._pending = self._pending, None
                if job is None:
                    return
            next_write = time.monotonic() + self.min_interval
            self._write(*job)

    def _write(self, flags: Dict[str, Any], segments: Dict[str, Any], source: str) -> None:
        try:
            save(self.path, encode(flags, segments, source, caches=self._caches))
            self.writes += 1
        except Exception as exc:  # noqa: BLE001 - disk full, odd data: log, keep the thread
            self.errors += 1
            log.error("cannot write last-known-good file %s: %s", self.path, exc)
