"""Pack a worker's flush window into datagrams of at most 64 KiB and send them without blocking.

Runs in workers. :class:`DatagramSender` owns one non-blocking ``SOCK_DGRAM`` Unix socket per
process (it remembers the pid it was opened in and reopens in a forked child); it never
waits for the supervisor. :func:`pack_window` splits a window (summary flags, context
sightings, full events) into datagrams, keeping with each datagram the items it carries so
that the recorder can put back what could not be sent.
"""
from __future__ import annotations

import errno
import os
import socket
from typing import Any, Callable, Dict, List, Optional, Tuple

import msgpack

from shmflags.events.datagram import (
    MAX_DATAGRAM,
    VERSION,
    DatagramError,
    check_context,
    check_context_entry,
    check_event,
    check_summary_flag,
    sighting_fields_ok
)

__all__ = ["DatagramSender", "Packed", "pack_window", "SEND_OK", "SEND_FULL", "SEND_MISSING",
           "SEND_TOO_BIG"]

SEND_OK = 0
"""The datagram was queued on the supervisor's socket."""
SEND_FULL = 1
"""The socket queue is full (``EAGAIN``); try again later."""
SEND_MISSING = 2
"""No supervisor is listening at the path (``ENOENT``/``ECONNREFUSED``, or no permission)."""
SEND_TOO_BIG = 3
"""The kernel refused the datagram's size (``EMSGSIZE``); retrying cannot help."""

_HEADROOM = 256  # bytes reserved for the datagram map header, section names and array headers
_ITEM_LIMIT = MAX_DATAGRAM - _HEADROOM


class Packed:
    """One encoded datagram plus the window items it carries (for putting back on failure).

    :ivar data: the msgpack bytes
    :ivar flags: summary flag items ``[key, default, kinds, counters]``
    :ivar contexts: ``(fq_key, entry)`` pairs of context sightings
    :ivar events: full event dicts
    :ivar dropped: the worker's dropped-event count reported in this datagram
    """

    __slots__ = ("data", "flags", "contexts", "events", "dropped")

    def __init__(self, data: bytes, flags: List[list], contexts: List[Tuple[str, list]],
                 events: List[dict], dropped: int) -> None:
        self.data = data
        self.flags = flags
        self.contexts = contexts
        self.events = events
        self.dropped = dropped


def _encode(obj: Any, check: Callable[[Any], None]) -> Optional[bytes]:
    """msgpack bytes of one item, or ``None`` when the schema would refuse it.

    Such an item is dropped here: the supervisor would reject the whole datagram (and
    LaunchDarkly a whole payload for a NaN).
    """
    try:
        check(obj)  # includes the JSON rules: no NaN or infinity, bounded depth
        return msgpack.packb(obj, use_bin_type=True)
    except (DatagramError, TypeError, ValueError, OverflowError):
        return None


try:  # feature/debug events checked and packed in C (native/events.c); optional
    from shmflags._native import _pack_event  # type: ignore[attr-defined]
    from shmflags._native import _pack_event_run  # type: ignore[attr-defined]
except ImportError:  # no extension (or an older build): the Python code below
    _pack_event = _pack_event_run = None

_CONTEXT_KEY = msgpack.packb("context")
_NO_BYTES = b""
_EVAL_KINDS = ("feature", "debug")
_DATA_OF = {"flags": "flag_data", "contexts": "context_data"}  # _Builder's parallel lists


def _context_bytes(ctx: dict, contexts: Dict[int, bytes]) -> bytes:
    """A context dict checked and packed once per pack (``contexts``: ``id`` of the dict →
    its bytes, ``b""`` when refused; the dicts stay alive for the whole pack, so ids are not
    reused)."""
    cbytes = contexts.get(id(ctx))
    if cbytes is None:
        cbytes = _encode(ctx, check_context) or _NO_BYTES
        contexts[id(ctx)] = cbytes
    return cbytes


def _encode_entry(entry: list, contexts: Dict[int, bytes]) -> Optional[bytes]:
    """msgpack bytes of a context sighting ``entry[:4]`` (``[context, first_ms, count,
    index]``), or ``None`` when the schema would refuse it: exactly ``msgpack.packb(entry[:4])``,
    with the context's bytes from :func:`_context_bytes` (the window's events reuse them)."""
    if type(entry) is not list or len(entry) < 4 or type(entry[0]) is not dict:
        return _encode(entry[:4], check_context_entry)
    first, count, index = entry[1], entry[2], entry[3]
    if not sighting_fields_ok(first, count, index):
        return None
    cbytes = _context_bytes(entry[0], contexts)
    if cbytes is _NO_BYTES:
        return None
    # a fixarray of 4: its header, the context, then the three others as packb packs them
    return b"\x94" + cbytes + msgpack.packb([first, count, index])[1:]


def _encode_event(event: dict, contexts: Dict[int, bytes]) -> Optional[bytes]:
    """msgpack bytes of one event, or ``None`` when the schema would refuse it.

    Many events of a window share one context dict. When ``context`` is the event's last key
    (as the recorder builds feature and debug events) the context is checked and encoded
    once per pack (``contexts``: ``id`` of the dict → its bytes, ``b""`` when refused; the
    dicts stay alive for the whole pack, so ids are not reused) and spliced after the other
    fields: the bytes are exactly ``msgpack.packb(event)`` (fixmap header, keys in order).
    """
    n = len(event)
    ctx = event.get("context")
    if type(ctx) is not dict or not 1 < n <= 15 or next(reversed(event)) != "context":
        return _encode(event, check_event)
    cbytes = _context_bytes(ctx, contexts)
    if cbytes is _NO_BYTES:
        return None
    kind = event.get("kind")
    if _pack_event is not None and type(kind) is str and kind in _EVAL_KINDS:
        # the same rules and bytes as below in one C walk (~10x faster)
        return _pack_event(event, cbytes)
    return _encode_event_py(event, n, cbytes)


def _encode_event_py(event: dict, n: int, cbytes: bytes) -> Optional[bytes]:
    """The rest of :func:`_encode_event` in Python (``native/events.c``'s ``_pack_event``
    does the same for feature and debug events)."""
    try:
        check_event(event, context_checked=True)
        rest = dict(event)
        del rest["context"]
        head = msgpack.packb(rest, use_bin_type=True)
    except (DatagramError, TypeError, ValueError, OverflowError):
        return None
    # head starts with the fixmap header 0x80 | (n - 1); the whole event has n fields.
    return bytes((0x80 | n,)) + head[1:] + _CONTEXT_KEY + cbytes


def _flag_items(key: str, entry: list) -> List[Tuple[bytes, list]]:
    """Encode one summary flag; split it by counter when it is too large for one datagram."""
    default, kinds, counters, version = entry[0], sorted(entry[1]), entry[2], entry[4]
    rows = [[ck[0], ck[1], c[1], c[0]] if type(ck) is tuple else [ck, version, c[1], c[0]]
            for ck, c in counters.items()]
    item = [key, default, kinds, rows]
    data = _encode(item, check_summary_flag)
    if data is not None and len(data) <= _ITEM_LIMIT:
        return [(data, item)]
    out = []
    for row in rows:
        one = [key, default, kinds, [row]]
        data = _encode(one, check_summary_flag)
        if data is not None and len(data) <= _ITEM_LIMIT:
            out.append((data, one))
    return out


class _Builder:
    """Accumulates encoded items for one datagram.

    Each section keeps its encoded bytes and its window items in two parallel lists (no
    tuple per item: a window holds up to ``events_max_pending`` events, and every tuple
    would be one more object for the garbage collector to track and traverse).
    """

    def __init__(self) -> None:
        self.size = 0
        self.flags: List[list] = []
        self.flag_data: List[bytes] = []
        self.contexts: List[Tuple[str, list]] = []
        self.context_data: List[bytes] = []
        self.events: List[dict] = []
        self.event_data: List[bytes] = []

    def empty(self) -> bool:
        return not (self.flags or self.contexts or self.events)

    def fits(self, n: int) -> bool:
        return self.size + n <= _ITEM_LIMIT

    def finish(self, packer: msgpack.Packer, pid: int, seq: int, dropped: int,
               start_ms: int, end_ms: int) -> Packed:
        fields = 3 + (1 if dropped else 0) + (1 if self.flags else 0) \
            + (1 if self.contexts else 0) + (1 if self.events else 0)
        parts = [packer.pack_map_header(fields), packer.pack("v"), packer.pack(VERSION),
                 packer.pack("pid"), packer.pack(pid), packer.pack("seq"), packer.pack(seq)]
        if dropped:
            parts += [packer.pack("dropped"), packer.pack(dropped)]
        if self.flags:
            parts += [packer.pack("summary"), packer.pack_array_header(3),
                      packer.pack(start_ms), packer.pack(max(start_ms, end_ms)),
                      packer.pack_array_header(len(self.flags))]
            parts += self.flag_data
        if self.contexts:
            parts += [packer.pack("contexts"), packer.pack_array_header(len(self.contexts))]
            parts += self.context_data
        if self.events:
            parts += [packer.pack("events"), packer.pack_array_header(len(self.events))]
            parts += self.event_data
        return Packed(b"".join(parts), self.flags, self.contexts, self.events, dropped)


def pack_window(pid: int, seq: int, dropped: int, start_ms: int, end_ms: int,
                summary: Dict[str, list], contexts: Dict[str, list],
                events: List[dict],
                carry: Optional[Dict[int, Tuple[dict, bytes]]] = None
                ) -> Tuple[List[Packed], int]:
    """Split one flush window into datagrams no larger than :data:`MAX_DATAGRAM`.

    :param pid: the sending process
    :param seq: sequence number of the first datagram (the following ones count up)
    :param dropped: full events this worker dropped, reported in the first datagram
    :param start_ms: first evaluation time of the summary window
    :param end_ms: last evaluation time of the summary window
    :param summary: flag key → ``[default, kinds set, counters, last kinds, version]`` where
        counters maps a variation (counted at ``version``) or a ``(variation, version)``
        pair to ``[count, value]``
    :param contexts: fully-qualified key → ``[context dict, first_ms, count, index, …]``
    :param events: full events, LD output-shaped, with unredacted ``context`` dicts
    :param carry: the context dicts packed by the previous pack of the same recorder
        (``id`` → ``(dict, bytes)``), whose bytes this pack reuses; replaced by the ones this
        pack packed, for the next. A worker sees mostly the same contexts window after
        window, and its context dicts are never changed once made (the recorder builds
        them and only reads them), so their bytes are the same; the dicts are held here, so
        their ids are not reused meanwhile. ``None``: every context is packed.
    :returns: the datagrams, and how many items were dropped because msgpack could not encode
        them or they were larger than one datagram
    """
    unsendable = 0
    builders: List[_Builder] = [_Builder()]

    def add(kind: str, data: bytes, obj: Any) -> None:
        b = builders[-1]
        if not b.fits(len(data)):
            b = _Builder()
            builders.append(b)
        getattr(b, kind).append(obj)
        getattr(b, _DATA_OF[kind]).append(data)
        b.size += len(data)

    for key, entry in summary.items():
        items = _flag_items(key, entry)
        if not items:
            unsendable += 1
        for data, item in items:
            add("flags", data, item)
    context_bytes: Dict[int, bytes] = {}   # shared by the sightings and the events
    if carry:
        context_bytes.update((i, kept[1]) for i, kept in carry.items())
    for fq, entry in contexts.items():
        data = _encode_entry(entry, context_bytes)
        if data is None or len(data) > _ITEM_LIMIT:
            unsendable += 1
            continue
        add("contexts", data, (fq, entry))
    # (add() inlined: a window holds up to events_max_pending events, and their packing is
    # the flush's largest cost). With the extension, _pack_event_run packs the events that
    # follow, as many as fit in this datagram, in one call; the loop below takes the one it
    # stopped at (a context not packed yet, an event it refuses or that does not fit), then
    # hands back to it. Without it, the loop packs every event.
    run = _pack_event_run
    b = builders[-1]
    i, n_events = 0, len(events)
    if type(events) is not list:
        run = None
    while i < n_events:
        if run is not None:
            blob, end = run(events, i, context_bytes, _ITEM_LIMIT - b.size)
            if end > i:
                b.events.extend(events[i:end])
                b.event_data.append(blob)
                b.size += len(blob)
                i = end
                if i == n_events:
                    break
        event = events[i]
        i += 1
        data = _encode_event(event, context_bytes)
        if data is None or len(data) > _ITEM_LIMIT:
            unsendable += 1
            continue
        n = len(data)
        if b.size + n > _ITEM_LIMIT:
            b = _Builder()
            builders.append(b)
        b.events.append(event)
        b.event_data.append(data)
        b.size += n
    if carry is not None:
        # the next pack's: this window's sighted contexts (the dicts its events share)
        kept = {}
        for entry in contexts.values():
            if type(entry) is list and len(entry) >= 4 and type(entry[0]) is dict:
                cbytes = context_bytes.get(id(entry[0]))
                if cbytes is not None:
                    kept[id(entry[0])] = (entry[0], cbytes)
        carry.clear()
        carry.update(kept)
    packer = msgpack.Packer(use_bin_type=True)
    out = []
    for i, b in enumerate(builders):
        if b.empty() and not (i == 0 and dropped):
            continue
        out.append(b.finish(packer, pid, seq + len(out), dropped if not out else 0,
                            start_ms, end_ms))
    return out, unsendable


class DatagramSender:
    """A non-blocking datagram socket to the supervisor, reopened after fork.

    :param path: the supervisor's socket path (``Config.socket_path``)
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: Optional[socket.socket] = None
        self._pid = 0

    def _socket(self) -> socket.socket:
        pid = os.getpid()
        sock = self._sock
        if sock is None or self._pid != pid:
            # In a forked child the inherited socket is shared with the parent: open our own.
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self._sock, self._pid = sock, pid
        return sock

    def send(self, data: bytes) -> int:
        """Send one datagram without blocking.

        :param data: at most :data:`MAX_DATAGRAM` bytes
        :returns: :data:`SEND_OK`, :data:`SEND_FULL` or :data:`SEND_MISSING`
        """
        try:
            self._socket().sendto(data, self.path)
            return SEND_OK
        except BlockingIOError:
            return SEND_FULL
        except OSError as exc:
            if exc.errno in (errno.ENOBUFS, errno.EAGAIN):
                return SEND_FULL
            if exc.errno == errno.EMSGSIZE:
                return SEND_TOO_BIG
            return SEND_MISSING

    def after_fork(self) -> None:
        """Forget the parent's socket (without closing the parent's descriptor)."""
        self._sock = None
        self._pid = 0

    def close(self) -> None:
        """Close the socket if this process opened it."""
        sock = self._sock
        self._sock = None
        if sock is not None and self._pid == os.getpid():
            sock.close()
