"""Pure-Python snapshot backend: the ``_native.Snapshot`` interface over a mapped snapshot.

Runs in workers (and wherever the C extension is missing or ``SHMFLAGS_EVALUATOR=python``).
Entries are decoded from their msgpack into model objects on first use and cached on the
``Snapshot`` instance (one per generation); evaluation is the reference evaluator's
:class:`~shmflags.evaluation.backend.ModelBackend`. No threads, no I/O, no module state.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from shmflags.errors import SnapshotFormatError
from shmflags.evaluation.backend import EvalTuple, ModelBackend
from shmflags.model import Flag, Segment, parse_flag, parse_segment
from shmflags.snapshot.reader import SnapshotReader

__all__ = ["Snapshot"]


class _Entries:
    """The decoded-object caches over one reader.

    Kept apart from :class:`Snapshot` so that the evaluator's reference cycle
    (``ModelBackend`` <-> ``Evaluator``) never contains the ``Snapshot``: dropping the last
    reference to a Snapshot runs its ``__del__`` at once, which releases the buffer, so an
    old generation is unmapped without waiting for the cyclic garbage collector.
    """

    def __init__(self, reader: SnapshotReader) -> None:
        self.reader = reader
        self.flags: Dict[str, Optional[Flag]] = {}
        self.segments: Dict[str, Optional[Segment]] = {}
        self.keys: Optional[List[str]] = None

    def get_flag(self, key: Any) -> Optional[Flag]:
        try:
            return self.flags[key]
        except KeyError:
            pass
        except TypeError:          # unhashable key
            return None
        flag: Optional[Flag] = None
        try:
            entry = self.reader.find_flag(key)
            if entry is not None:
                flag = parse_flag(self.reader.decode(entry))
        except SnapshotFormatError:
            flag = parse_flag(None)       # error set: evaluates as MALFORMED_FLAG
            flag.key = key
        self.flags[key] = flag
        return flag

    def get_segment(self, key: Any) -> Optional[Segment]:
        try:
            return self.segments[key]
        except KeyError:
            pass
        except TypeError:
            return None
        seg: Optional[Segment] = None
        try:
            entry = self.reader.find_segment(key)
            if entry is not None:
                seg = parse_segment(self.reader.decode(entry))
        except SnapshotFormatError:
            seg = parse_segment(None)
            seg.key = key
        self.segments[key] = seg
        return seg

    def flag_keys(self) -> List[str]:
        if self.keys is None:
            self.keys = [e.key for e in self.reader.flags()]
        return self.keys


class Snapshot:
    """A snapshot opened for evaluation (backend contract, docs/internals.md).

    :param buffer: the snapshot bytes (bytes, mmap, memoryview); kept referenced while the
        object lives (and released when it is dropped), never written.
    :param big_segments: optional Big Segments provider for the evaluator.
    :param base: the base object's bytes when ``buffer`` is an overlay.
    :param state: the object's verification state (``reader.new_state``), shared with the
        mapping; ``base_state`` the same for ``base``.
    :raises SnapshotFormatError: the bytes are not a valid snapshot.

    An entry whose bytes do not decode (hand-made bytes, or a blob chunk that fails its
    checksum when first read) evaluates as a malformed flag, like unparseable JSON in
    ldclient.
    Safe to share between threads: the caches only ever gain equal values.
    """

    def __init__(self, buffer: Any, big_segments: Any = None, base: Any = None,
                 state: Any = None, base_state: Any = None) -> None:
        self._reader = SnapshotReader(buffer, base=base, state=state, base_state=base_state)
        self._entries = _Entries(self._reader)
        self._backend = ModelBackend(self._entries.get_flag, self._entries.get_segment,
                                     self._entries.flag_keys, big_segments)

    def __del__(self) -> None:
        reader = getattr(self, "_reader", None)
        if reader is not None:
            try:
                reader.release()
            except (BufferError, ValueError):
                pass    # a view handed out is still alive: it keeps the mapping

    # -- header ---------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """The generation stamped by the publisher (0 for bytes never published)."""
        return self._reader.generation

    @property
    def flag_count(self) -> int:
        return self._reader.n_flags

    @property
    def segment_count(self) -> int:
        return self._reader.n_segments

    @property
    def payload_version(self) -> int:
        return self._reader.payload_version

    # -- backend contract ------------------------------------------------------------------------

    def evaluate(self, key: str, context: Any) -> EvalTuple:
        """Evaluate flag ``key`` for a valid context → ``(value, index, reason, info, prereqs)``."""
        return self._backend.evaluate(key, context)

    def all_flags_state(self, context: Any, with_reasons: bool = False,
                        client_side_only: bool = False,
                        details_only_for_tracked_flags: bool = False,
                        now_ms: int = 0) -> dict:
        """ldclient's ``FeatureFlagsState.to_json_dict()`` for a valid context (no events)."""
        return self._backend.all_flags_state(context, with_reasons, client_side_only,
                                             details_only_for_tracked_flags, now_ms)

    def all_flags_lazy(self, context: Any, with_reasons: bool = False,
                       client_side_only: bool = False,
                       details_only_for_tracked_flags: bool = False,
                       now_ms: int = 0) -> "_FlagsState":
        """:meth:`all_flags_state` in the C backend's lazy form (``_native._FlagsState``).

        Here the dicts are built at once (the Python evaluator builds them as it goes); the
        object only gives the client one shape for both backends.
        """
        return _FlagsState(self.all_flags_state(context, with_reasons, client_side_only,
                                                details_only_for_tracked_flags, now_ms))

    def flag_keys(self) -> List[str]:
        """Every flag key, sorted (a new list each call).

        :raises SnapshotFormatError: an order entry is out of bounds (hand-made bytes only).
        """
        return list(self._entries.flag_keys())

    def segment_keys(self) -> List[str]:
        """Every segment key, sorted."""
        return [e.key for e in self._reader.segments()]

    def raw_flag(self, key: str) -> Optional[dict]:
        """The flag's LD JSON as stored (a fresh dict), or ``None``."""
        entry = self._reader.find_flag(key)
        return None if entry is None else self._reader.decode(entry)

    def raw_segment(self, key: str) -> Optional[dict]:
        """The segment's LD JSON as stored (a fresh dict), or ``None``."""
        entry = self._reader.find_segment(key)
        return None if entry is None else self._reader.decode(entry)

    def __repr__(self) -> str:
        return (f"<shmflags._pure.Snapshot generation={self.generation} "
                f"flags={self.flag_count} segments={self.segment_count}>")


class _FlagsState:
    """``all_flags_lazy``'s result (same API as ``_native._FlagsState``) over a built dict."""

    __slots__ = ("_built",)

    def __init__(self, state: Dict[str, Any]) -> None:
        meta = state.pop("$flagsState", None) or {}
        state.pop("$valid", None)
        self._built = (state, meta)

    def build(self) -> tuple:
        """``(values, metadata)``: the same pair on every call."""
        return self._built

    def values(self) -> Dict[str, Any]:
        """The values dict: the one :meth:`build` returns."""
        return self._built[0]

    def __len__(self) -> int:
        return len(self._built[1])
