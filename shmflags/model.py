"""Flag and segment model: LaunchDarkly JSON parsed and validated once into immutable objects.

Safe in any process; parsing is pure and nothing here is shared between processes.

Parsing never raises. Data that ldclient would refuse to store (a wrong JSON type, a missing
required property) yields an object whose ``error`` says why; evaluating such a flag, or a
flag that reaches such a segment, gives ``MALFORMED_FLAG``. Use :func:`validate_payload` (or
:func:`validate_flag` and :func:`validate_segment` for single items) to refuse such data up
front, as ldclient refuses a whole payload. Problems that ldclient only meets while evaluating (a variation index out
of range, an empty rollout, a bad attribute reference, cycles) are kept as data here and handled
by :mod:`shmflags.evaluation` exactly where ldclient handles them.

Clause values are pre-parsed for their operator (numbers, dates as epoch ms, versions, the
``in`` value sets); regular expressions are compiled on first use. The JSON type rules mirror
ldclient's: an "int" accepts Python ``bool`` too, and ``null`` means "absent".
"""
from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from shmflags.errors import DataError
from shmflags.evaluation.attrref import AttrRef, ref_for
from shmflags.evaluation.operators import OP_SEGMENT_MATCH, ClauseValues, op_code, prepare

__all__ = [
    "Flag", "Segment", "Prerequisite", "Target", "Rule", "Clause", "Rollout",
    "WeightedVariation", "SegmentRule", "SegmentTarget", "parse_flag", "parse_segment",
    "validate_flag", "validate_segment", "validate_payload",
]


# -- JSON type checks (null is "absent"; bool is an int, as in Python and ldclient) -----------

def _opt(data: dict, name: str, kind: Any, what: str) -> Any:
    value = data.get(name)
    if value is not None and not isinstance(value, kind):
        raise DataError(f'property "{name}" should be {what} but was {type(value).__name__}')
    return value


def _req(data: dict, name: str, kind: Any, what: str) -> Any:
    value = _opt(data, name, kind, what)
    if value is None:
        raise DataError(f'required property "{name}" is missing')
    return value


def _opt_bool(data: dict, name: str) -> bool:
    return _opt(data, name, bool, "a boolean") is True


def _opt_int(data: dict, name: str) -> Optional[int]:
    return _opt(data, name, int, "an integer")


def _req_int(data: dict, name: str) -> int:
    return _req(data, name, int, "an integer")


def _opt_str(data: dict, name: str) -> Optional[str]:
    return _opt(data, name, str, "a string")


def _req_str(data: dict, name: str) -> str:
    return _req(data, name, str, "a string")


def _list_of(items: list, name: str, kind: Any, what: str) -> list:
    for item in items:
        if not isinstance(item, kind):
            raise DataError(f'property "{name}" should be an array of {what}')
    return items


def _opt_list(data: dict, name: str) -> list:
    return _opt(data, name, list, "an array") or []


def _opt_dicts(data: dict, name: str) -> list:
    return _list_of(_opt_list(data, name), name, dict, "objects")


def _req_dicts(data: dict, name: str) -> list:
    return _list_of(_req(data, name, list, "an array"), name, dict, "objects")


def _opt_strs(data: dict, name: str) -> list:
    return _list_of(_opt_list(data, name), name, str, "strings")


def _req_strs(data: dict, name: str) -> list:
    return _list_of(_req(data, name, list, "an array"), name, str, "strings")


def _object(data: Any) -> dict:
    if not isinstance(data, dict):
        raise DataError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _parse_guarded(item: Any, raw: Any) -> None:
    """Parse ``raw`` into ``item`` (a Flag or Segment); on data ldclient would refuse, keep
    the error and whatever key and version can be read, so the item evaluates as malformed."""
    try:
        item._parse(_object(raw))
    except DataError as exc:
        item.error = str(exc)
        if isinstance(raw, dict):
            key, version = raw.get("key"), raw.get("version")
            item.key = key if isinstance(key, str) else ""
            item.version = version if isinstance(version, int) else 0


def _check_prerequisite_graph(data: dict) -> None:
    """What ldclient's store needs to order flags by prerequisites before storing them.

    It walks ``prerequisites`` of every flag, tombstones included, before any other check: the
    property must be iterable (``null`` is not), each entry an object whose ``key`` can be
    looked up.
    """
    if "prerequisites" not in data:
        return
    prereqs = data["prerequisites"]
    if isinstance(prereqs, (str, dict)) and not prereqs:
        return  # iterates nothing
    if not isinstance(prereqs, list):
        raise DataError('property "prerequisites" should be an array')
    for item in prereqs:
        if not isinstance(item, dict):
            raise DataError('property "prerequisites" should be an array of objects')
        try:
            hash(item.get("key"))
        except TypeError:
            raise DataError('prerequisite "key" should be a string') from None


# -- pieces -----------------------------------------------------------------------------------

class Clause:
    """One clause of a flag or segment rule.

    :ivar context_kind: ``contextKind`` or ``None``
    :ivar attribute: parsed attribute reference (may carry an error)
    :ivar op: operator name; :ivar op_code: its code (0 = unknown)
    :ivar negate: invert the result (not applied when the context kind or value is missing)
    :ivar values: pre-parsed values (:class:`~shmflags.evaluation.operators.ClauseValues`)
    """

    __slots__ = ("context_kind", "kind_key", "attribute", "op", "op_code", "negate", "values")

    def __init__(self, data: dict) -> None:
        self.context_kind: Optional[str] = _opt_str(data, "contextKind")
        #: the kind whose context the clause reads (``contextKind`` or ``user``)
        self.kind_key: str = self.context_kind or "user"
        self.attribute: AttrRef = ref_for(_req_str(data, "attribute"), self.context_kind)
        self.negate: bool = _opt_bool(data, "negate")
        self.op: str = _req_str(data, "op")
        self.op_code: int = op_code(self.op)
        raw_values = _req(data, "values", list, "an array")
        try:
            self.values: ClauseValues = prepare(self.op_code, raw_values)
        except OverflowError as exc:
            raise DataError(f"clause value out of range: {exc}") from None

    @property
    def is_segment_match(self) -> bool:
        """``True`` for a ``segmentMatch`` clause."""
        return self.op_code == OP_SEGMENT_MATCH


class WeightedVariation:
    """One bucket of a rollout: ``variation`` served with ``weight``/100000 probability."""

    __slots__ = ("variation", "weight", "untracked")

    def __init__(self, data: dict) -> None:
        self.variation: int = _req_int(data, "variation")
        self.weight: int = _req_int(data, "weight")
        self.untracked: bool = _opt_bool(data, "untracked")


class Rollout:
    """A percentage rollout or experiment.

    :ivar bucket_by: parsed ``bucketBy`` reference or ``None`` (the key)
    :ivar is_experiment: ``kind == "experiment"`` (``bucketBy`` then ignored)
    :ivar seed: ``seed`` or ``None``
    """

    __slots__ = ("context_kind", "bucket_by", "is_experiment", "seed", "variations")

    def __init__(self, data: dict) -> None:
        self.context_kind: Optional[str] = _opt_str(data, "contextKind")
        bucket_by = _opt_str(data, "bucketBy")
        self.bucket_by: Optional[AttrRef] = (
            None if not bucket_by else ref_for(bucket_by, self.context_kind))
        self.is_experiment: bool = _opt_str(data, "kind") == "experiment"
        self.seed: Optional[int] = _opt_int(data, "seed")
        self.variations: List[WeightedVariation] = [
            WeightedVariation(item) for item in _req_dicts(data, "variations")]


def _variation_or_rollout(data: Optional[dict]) -> Tuple[Optional[int], Optional[Rollout]]:
    data = {} if data is None else data
    variation = _opt_int(data, "variation")
    rollout = _opt(data, "rollout", dict, "an object")
    return variation, (None if rollout is None else Rollout(rollout))


class Prerequisite:
    """``{"key", "variation"}``: the flag ``key`` must serve ``variation``."""

    __slots__ = ("key", "variation")

    def __init__(self, data: dict) -> None:
        self.key: str = _req_str(data, "key")
        self.variation: int = _req_int(data, "variation")


class Target:
    """An individual-targeting entry (``targets`` or ``contextTargets``)."""

    __slots__ = ("context_kind", "variation", "values")

    def __init__(self, data: dict) -> None:
        self.context_kind: Optional[str] = _opt_str(data, "contextKind")
        self.variation: int = _req_int(data, "variation")
        self.values: FrozenSet[str] = frozenset(_req_strs(data, "values"))


class Rule:
    """A flag rule: all clauses must match; serves ``variation`` or ``rollout``."""

    __slots__ = ("id", "clauses", "track_events", "variation", "rollout")

    def __init__(self, data: dict) -> None:
        self.id: Optional[str] = _opt_str(data, "id")
        self.variation, self.rollout = _variation_or_rollout(data)
        self.clauses: List[Clause] = [Clause(item) for item in _req_dicts(data, "clauses")]
        self.track_events: bool = _opt_bool(data, "trackEvents")


class SegmentTarget:
    """An ``includedContexts``/``excludedContexts`` entry."""

    __slots__ = ("context_kind", "values")

    def __init__(self, data: dict) -> None:
        self.context_kind: Optional[str] = _opt_str(data, "contextKind")
        self.values: FrozenSet[str] = frozenset(_req_strs(data, "values"))


class SegmentRule:
    """A segment rule: all clauses match, then the optional ``weight`` bucket test."""

    __slots__ = ("clauses", "rollout_context_kind", "bucket_by", "weight")

    def __init__(self, data: dict) -> None:
        self.clauses: List[Clause] = [Clause(item) for item in _req_dicts(data, "clauses")]
        self.rollout_context_kind: Optional[str] = _opt_str(data, "rolloutContextKind")
        bucket_by = _opt_str(data, "bucketBy")
        self.bucket_by: Optional[AttrRef] = (
            None if not bucket_by else ref_for(bucket_by, self.rollout_context_kind))
        self.weight: Optional[int] = _opt_int(data, "weight")


# -- top-level entities ----------------------------------------------------------------------

class Flag:
    """A feature flag.

    ``error`` is ``None`` for a usable flag; otherwise it says why the JSON was refused and
    every other attribute except ``raw``, ``key`` and ``version`` holds an empty default.
    ``deleted`` flags (tombstones) behave as missing.
    """

    __slots__ = (
        "raw", "error", "key", "version", "deleted", "on", "variations", "off_variation",
        "fallthrough_variation", "fallthrough_rollout", "prerequisites", "targets",
        "context_targets", "rules", "salt", "track_events", "track_events_fallthrough",
        "debug_events_until_date", "client_side", "exclude_from_summaries", "sampling_ratio",
        "migration_check_ratio",
    )

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.error: Optional[str] = None
        self.key: str = ""
        self.version: int = 0
        self.deleted = False
        self.on = False
        self.variations: List[Any] = []
        self.off_variation: Optional[int] = None
        self.fallthrough_variation: Optional[int] = None
        self.fallthrough_rollout: Optional[Rollout] = None
        self.prerequisites: List[Prerequisite] = []
        self.targets: List[Target] = []
        self.context_targets: List[Target] = []
        self.rules: List[Rule] = []
        self.salt = ""
        self.track_events = False
        self.track_events_fallthrough = False
        self.debug_events_until_date: Optional[float] = None
        self.client_side = False
        self.exclude_from_summaries = False
        self.sampling_ratio: Optional[int] = None
        self.migration_check_ratio: Optional[int] = None
        _parse_guarded(self, raw)

    def _parse(self, data: dict) -> None:
        self.version = _req_int(data, "version")
        self.deleted = _opt_bool(data, "deleted")
        _check_prerequisite_graph(data)
        if self.deleted:
            self.key = _opt_str(data, "key") or ""
            return
        self.key = _req_str(data, "key")
        self.variations = _opt_list(data, "variations")
        self.on = _opt_bool(data, "on")
        self.off_variation = _opt_int(data, "offVariation")
        self.fallthrough_variation, self.fallthrough_rollout = _variation_or_rollout(
            _opt(data, "fallthrough", dict, "an object"))
        self.prerequisites = [Prerequisite(p) for p in _opt_dicts(data, "prerequisites")]
        self.rules = [Rule(r) for r in _opt_dicts(data, "rules")]
        self.targets = [Target(t) for t in _opt_dicts(data, "targets")]
        self.context_targets = [Target(t) for t in _opt_dicts(data, "contextTargets")]
        self.salt = _opt_str(data, "salt") or ""
        self.track_events = _opt_bool(data, "trackEvents")
        self.track_events_fallthrough = _opt_bool(data, "trackEventsFallthrough")
        debug = data.get("debugEventsUntilDate")
        if debug is not None and not isinstance(debug, (int, float)):
            raise DataError('property "debugEventsUntilDate" should be a number')
        self.debug_events_until_date = debug
        if "migration" in data:
            self.migration_check_ratio = _opt_int(
                _opt(data, "migration", dict, "an object") or {}, "checkRatio")
        self.exclude_from_summaries = _opt_bool(data, "excludeFromSummaries")
        self.sampling_ratio = _opt_int(data, "samplingRatio")
        availability = data.get("clientSideAvailability")
        if isinstance(availability, dict):
            # ld-protocol.md §2.1: the object wins over the legacy field (ldclient reads only
            # ``clientSide``; LaunchDarkly sends both, consistently).
            self.client_side = availability.get("usingEnvironmentId") is True
        else:
            self.client_side = bool(data.get("clientSide", False))

    def __repr__(self) -> str:
        state = f" error={self.error!r}" if self.error else ""
        return f"<Flag {self.key!r} v{self.version}{state}>"


class Segment:
    """A segment (``unbounded`` ones are Big Segments). ``error`` as for :class:`Flag`."""

    __slots__ = (
        "raw", "error", "key", "version", "deleted", "included", "excluded",
        "included_contexts", "excluded_contexts", "rules", "salt", "unbounded",
        "unbounded_context_kind", "generation",
    )

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.error: Optional[str] = None
        self.key = ""
        self.version = 0
        self.deleted = False
        self.included: FrozenSet[str] = frozenset()
        self.excluded: FrozenSet[str] = frozenset()
        self.included_contexts: List[SegmentTarget] = []
        self.excluded_contexts: List[SegmentTarget] = []
        self.rules: List[SegmentRule] = []
        self.salt = ""
        self.unbounded = False
        self.unbounded_context_kind: Optional[str] = None
        self.generation: Optional[int] = None
        _parse_guarded(self, raw)

    def _parse(self, data: dict) -> None:
        self.version = _req_int(data, "version")
        self.deleted = _opt_bool(data, "deleted")
        if self.deleted:
            self.key = _opt_str(data, "key") or ""
            return
        self.key = _req_str(data, "key")
        self.included = frozenset(_opt_strs(data, "included"))
        self.excluded = frozenset(_opt_strs(data, "excluded"))
        self.included_contexts = [SegmentTarget(t) for t in _opt_dicts(data, "includedContexts")]
        self.excluded_contexts = [SegmentTarget(t) for t in _opt_dicts(data, "excludedContexts")]
        self.rules = [SegmentRule(r) for r in _opt_dicts(data, "rules")]
        self.salt = _opt_str(data, "salt") or ""
        self.unbounded = _opt_bool(data, "unbounded")
        self.unbounded_context_kind = _opt_str(data, "unboundedContextKind")
        self.generation = _opt_int(data, "generation")

    def __repr__(self) -> str:
        state = f" error={self.error!r}" if self.error else ""
        return f"<Segment {self.key!r} v{self.version}{state}>"


def parse_flag(data: Any) -> Flag:
    """Parse one flag's LD JSON (a dict). Never raises; see :attr:`Flag.error`."""
    return Flag(data)


def parse_segment(data: Any) -> Segment:
    """Parse one segment's LD JSON (a dict). Never raises; see :attr:`Segment.error`."""
    return Segment(data)


def validate_flag(data: Any) -> Flag:
    """Parse a flag and refuse it where ldclient would refuse to store it.

    :raises shmflags.errors.DataError: with the reason
    """
    flag = Flag(data)
    if flag.error is not None:
        raise DataError(f"flag {flag.key!r}: {flag.error}")
    return flag


def validate_payload(flags: Any, segments: Any) -> Tuple[Dict[str, Flag], Dict[str, Segment]]:
    """Parse a whole LD payload and refuse it where ldclient would refuse to store it.

    Besides every item's own validation, each flag must sit under its own ``key`` (ldclient's
    store is keyed by the flag's ``key`` property; a mismatch makes it refuse the payload).
    Segments are stored under their payload key.

    :param flags: ``{key: flag JSON}``; :param segments: ``{key: segment JSON}``
    :returns: the parsed ``(flags, segments)``, keyed as given
    :raises shmflags.errors.DataError: naming the first offending item
    """
    if not isinstance(flags, dict) or not isinstance(segments, dict):
        raise DataError('"flags" and "segments" must be JSON objects')
    parsed_flags: Dict[str, Flag] = {}
    for key, item in flags.items():
        flag = validate_flag(item)
        if item.get("key") != key:
            raise DataError(f"flag {key!r}: its \"key\" property is {item.get('key')!r}")
        parsed_flags[key] = flag
    parsed_segments = {key: validate_segment(item) for key, item in segments.items()}
    return parsed_flags, parsed_segments


def validate_segment(data: Any) -> Segment:
    """Parse a segment and refuse it where ldclient would refuse to store it.

    :raises shmflags.errors.DataError: with the reason
    """
    segment = Segment(data)
    if segment.error is not None:
        raise DataError(f"segment {segment.key!r}: {segment.error}")
    return segment
