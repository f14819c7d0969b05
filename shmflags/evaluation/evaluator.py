"""The reference evaluator: one flag, one context, one result (ld-protocol.md §3).

Safe in any process; no I/O. Flags and segments are fetched through the two callables given
to :class:`Evaluator`, Big Segment membership through an optional provider.

Structure follows §3.1: off → prerequisites → targets → rules → fallthrough. A structural
problem met on the way (invalid attribute reference, prerequisite or segment cycle, data that
did not validate) aborts the whole evaluation with ``MALFORMED_FLAG``, also from inside a
prerequisite. A variation index out of range or a rollout without buckets is instead a result:
``MALFORMED_FLAG`` for that flag, which a parent sees as a failed prerequisite (§11.15).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from shmflags.evaluation.bucketing import MalformedFlag, attribute_value, bucket
from shmflags.evaluation.detail import BigSegmentsStatus, EvaluationDetail
from shmflags.evaluation.operators import OP_SEGMENT_MATCH, match_value
from shmflags.model import Clause, Flag, Rollout, Segment, SegmentRule

try:  # Python >= 3.8
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]

__all__ = ["Evaluator", "EvalResult", "PrereqEval", "BigSegmentsProvider"]

EvalMap = Dict[str, Dict[str, Any]]
Result = Tuple[Any, Optional[int], dict]  # (value, variation index, reason)


class BigSegmentsProvider(Protocol):
    """Where Big Segment membership comes from (ld-protocol.md §8.3).

    ``get_membership(context_key)`` returns ``(membership, status)``: ``membership`` maps
    segment references ``"<key>.g<generation>"`` to ``True`` (included) / ``False``
    (excluded), or is ``None`` for "no data"; ``status`` is a
    :class:`~shmflags.evaluation.detail.BigSegmentsStatus` value. It is called at most once per
    context key per evaluation.
    """

    def get_membership(self, context_key: str) -> Tuple[Optional[dict], str]:
        """Membership of the context with this key."""
        ...


class PrereqEval:
    """One prerequisite evaluation, for events: the flag, its result, and the parent flag."""

    __slots__ = ("flag", "value", "variation_index", "reason", "prereq_of")

    def __init__(self, flag: Flag, result: Result, prereq_of: Flag) -> None:
        self.flag = flag
        self.value, self.variation_index, self.reason = result
        self.prereq_of = prereq_of

    @property
    def detail(self) -> EvaluationDetail:
        """The prerequisite's result as an :class:`EvaluationDetail`."""
        return EvaluationDetail(self.value, self.variation_index, self.reason)


class EvalResult:
    """Everything one evaluation produced.

    :ivar value: the variation value (``None`` when ``variation_index`` is ``None``)
    :ivar variation_index: ``int`` or ``None``
    :ivar reason: reason dict (with ``bigSegmentsStatus`` when a Big Segment was consulted)
    :ivar prereqs: :class:`PrereqEval` list in evaluation order (nested ones first)
    :ivar prerequisites: keys of the direct prerequisites looked at, in order
    :ivar big_segments_status: status of the last Big Segment query, or ``None``
    """

    __slots__ = ("value", "variation_index", "reason", "prereqs", "prerequisites",
                 "big_segments_status")

    def __init__(self, result: Result, state: "_State") -> None:
        self.value, self.variation_index, self.reason = result
        self.prereqs: List[PrereqEval] = state.events or []
        self.prerequisites: List[str] = state.prerequisites or []
        self.big_segments_status: Optional[str] = state.big_status

    @property
    def detail(self) -> EvaluationDetail:
        """The result as an :class:`EvaluationDetail` (value ``None`` when there is none)."""
        return EvaluationDetail(self.value, self.variation_index, self.reason)


class _State:
    """Per-evaluation bookkeeping: cycle stacks, prerequisite records, Big Segment cache."""

    __slots__ = ("original_key", "prereq_stack", "segment_stack", "depth", "prerequisites",
                 "events", "big_status", "big_membership")

    def __init__(self, original_key: str) -> None:
        self.original_key = original_key
        self.prereq_stack: Optional[List[str]] = None
        self.segment_stack: Optional[List[str]] = None
        self.depth = 0
        self.prerequisites: Optional[List[str]] = None
        self.events: Optional[List[PrereqEval]] = None
        self.big_status: Optional[str] = None
        self.big_membership: Optional[Dict[str, Optional[dict]]] = None


def _malformed() -> Result:
    return (None, None, {"kind": "ERROR", "errorKind": "MALFORMED_FLAG"})


def _variation(flag: Flag, index: int, reason: dict) -> Result:
    variations = flag.variations
    if index < 0 or index >= len(variations):
        return _malformed()
    return (variations[index], index, reason)


def _off(flag: Flag, reason: dict) -> Result:
    if flag.off_variation is None:
        return (None, None, reason)
    return _variation(flag, flag.off_variation, reason)


def _not_configured(_key: str) -> Tuple[Optional[dict], str]:
    return None, BigSegmentsStatus.NOT_CONFIGURED


class Evaluator:
    """Evaluates flags against contexts.

    :param get_flag: key → :class:`~shmflags.model.Flag` or ``None`` (missing or deleted)
    :param get_segment: key → :class:`~shmflags.model.Segment` or ``None``
    :param big_segments: a :class:`BigSegmentsProvider`, or ``None`` (every Big Segment query
        then reports ``NOT_CONFIGURED`` and only the segment's rules are consulted)
    """

    def __init__(self, get_flag: Callable[[str], Optional[Flag]],
                 get_segment: Callable[[Any], Optional[Segment]],
                 big_segments: Optional[BigSegmentsProvider] = None) -> None:
        self._get_flag = get_flag
        self._get_segment = get_segment
        self._membership = (_not_configured if big_segments is None
                            else big_segments.get_membership)

    def evaluate(self, flag: Flag, context: Any) -> EvalResult:
        """Evaluate ``flag`` for a valid context.

        :param flag: the flag (not deleted)
        :param context: a valid :class:`shmflags.Context` (anything with ``_eval_map()``)
        :raises Exception: only unexpected errors (the client reports ``EXCEPTION``)
        """
        state = _State(flag.key)
        try:
            result = self._evaluate(flag, context._eval_map(), state)
        except MalformedFlag:
            return EvalResult(_malformed(), state)
        if state.big_status is not None:
            result[2]["bigSegmentsStatus"] = state.big_status
        return EvalResult(result, state)

    # -- §3.1 -----------------------------------------------------------------------------------

    def _evaluate(self, flag: Flag, emap: EvalMap, state: _State) -> Result:
        if flag.error is not None:
            raise MalformedFlag(flag.error)
        if not flag.on:
            return _off(flag, {"kind": "OFF"})
        if flag.prerequisites:
            failed = self._check_prerequisites(flag, emap, state)
            if failed is not None:
                return _off(flag, failed)
        target = self._check_targets(flag, emap)
        if target is not None:
            return target
        for index, rule in enumerate(flag.rules):
            if self._clauses_match(rule.clauses, emap, state):
                return self._serve(flag, rule.variation, rule.rollout, emap,
                                   {"kind": "RULE_MATCH", "ruleIndex": index, "ruleId": rule.id})
        return self._serve(flag, flag.fallthrough_variation, flag.fallthrough_rollout, emap,
                           {"kind": "FALLTHROUGH"})

    # -- prerequisites ----------------------------------------------------------------------

    def _check_prerequisites(self, flag: Flag, emap: EvalMap, state: _State) -> Optional[dict]:
        pushed = flag.key != state.original_key
        if pushed:
            if state.prereq_stack is None:
                state.prereq_stack = []
            state.prereq_stack.append(flag.key)
        try:
            for prereq in flag.prerequisites:
                pkey = prereq.key
                if pkey == state.original_key or (state.prereq_stack and pkey in state.prereq_stack):
                    raise MalformedFlag(f"prerequisite {pkey!r} is part of a cycle")
                pflag = self._get_flag(pkey)
                if state.depth == 0:
                    if state.prerequisites is None:
                        state.prerequisites = []
                    state.prerequisites.append(pkey)
                if pflag is None:
                    return {"kind": "PREREQUISITE_FAILED", "prerequisiteKey": pkey}
                state.depth += 1
                presult = self._evaluate(pflag, emap, state)
                state.depth -= 1
                if state.events is None:
                    state.events = []
                state.events.append(PrereqEval(pflag, presult, flag))
                if not pflag.on or presult[1] != prereq.variation:
                    return {"kind": "PREREQUISITE_FAILED", "prerequisiteKey": pkey}
            return None
        finally:
            if pushed:
                state.prereq_stack.pop()  # type: ignore[union-attr]

    # -- §3.3 targets ------------------------------------------------------------------------

    def _check_targets(self, flag: Flag, emap: EvalMap) -> Optional[Result]:
        user_targets = flag.targets
        if not flag.context_targets:
            if user_targets:
                user = emap.get("user")
                if user is None:
                    return None
                key = user["key"]
                for t in user_targets:
                    if key in t.values:
                        return _variation(flag, t.variation, {"kind": "TARGET_MATCH"})
            return None
        for t in flag.context_targets:
            kind = t.context_kind or "user"
            attrs = emap.get(kind)
            if attrs is None:
                continue
            key = attrs["key"]
            if kind == "user":
                for ut in user_targets:
                    if ut.variation == t.variation:
                        if key in ut.values:
                            return _variation(flag, t.variation, {"kind": "TARGET_MATCH"})
                        break
                continue
            if key in t.values:
                return _variation(flag, t.variation, {"kind": "TARGET_MATCH"})
        return None

    # -- §3.4 clauses ------------------------------------------------------------------------

    def _clauses_match(self, clauses: List[Clause], emap: EvalMap, state: _State) -> bool:
        for clause in clauses:
            if not self._clause_matches(clause, emap, state):
                return False
        return True

    def _clause_matches(self, clause: Clause, emap: EvalMap, state: _State) -> bool:
        op = clause.op_code
        if op == OP_SEGMENT_MATCH:
            for seg_key in clause.values.raw:
                segment = self._get_segment(seg_key)
                if segment is not None and self._segment_matches(segment, emap, state):
                    return not clause.negate
            return clause.negate
        ref = clause.attribute
        if ref.is_kind:
            matched = False
            for kind in emap:
                if match_value(op, clause.values, kind):
                    matched = True
                    break
            return matched != clause.negate
        attrs = emap.get(clause.kind_key)
        if attrs is None:
            return False
        value = attrs.get(ref.first) if ref.simple else attribute_value(attrs, ref)
        if value is None:
            return False
        if isinstance(value, (list, tuple)):
            matched = False
            for item in value:
                if match_value(op, clause.values, item):
                    matched = True
                    break
        else:
            matched = match_value(op, clause.values, value)
        return matched != clause.negate

    # -- §3.7 rollouts -----------------------------------------------------------------------

    def _serve(self, flag: Flag, variation: Optional[int], rollout: Optional[Rollout],
               emap: EvalMap, reason: dict) -> Result:
        if variation is not None:
            return _variation(flag, variation, reason)
        if rollout is None or not rollout.variations:
            return _malformed()
        weighted = rollout.variations
        value = bucket(rollout.seed, emap, rollout.context_kind, flag.key, flag.salt,
                       None if rollout.is_experiment else rollout.bucket_by)
        experiment = rollout.is_experiment and value >= 0
        total = 0.0
        chosen = weighted[-1]
        for wv in weighted:
            total += wv.weight / 100000.0
            if value < total:
                chosen = wv
                break
        if experiment and not chosen.untracked:
            reason["inExperiment"] = True
        return _variation(flag, chosen.variation, reason)

    # -- §3.8 segments -----------------------------------------------------------------------

    def _segment_matches(self, segment: Segment, emap: EvalMap, state: _State) -> bool:
        if segment.error is not None:
            raise MalformedFlag(segment.error)
        if state.segment_stack is not None and segment.key in state.segment_stack:
            raise MalformedFlag(f"segment {segment.key!r} is part of a cycle")
        if segment.unbounded:
            return self._big_segment_matches(segment, emap, state)
        return self._simple_segment_matches(segment, emap, state, True)

    def _simple_segment_matches(self, segment: Segment, emap: EvalMap, state: _State,
                                use_lists: bool) -> bool:
        if use_lists:
            user = emap.get("user")
            if user is not None and segment.included and user["key"] in segment.included:
                return True
            for t in segment.included_contexts:
                attrs = emap.get(t.context_kind or "user")
                if attrs is not None and t.values and attrs["key"] in t.values:
                    return True
            if user is not None and segment.excluded and user["key"] in segment.excluded:
                return False
            for t in segment.excluded_contexts:
                attrs = emap.get(t.context_kind or "user")
                if attrs is not None and t.values and attrs["key"] in t.values:
                    return False
        if not segment.rules:
            return False
        if state.segment_stack is None:
            state.segment_stack = []
        state.segment_stack.append(segment.key)
        try:
            for rule in segment.rules:
                if self._segment_rule_matches(rule, emap, state, segment):
                    return True
            return False
        finally:
            state.segment_stack.pop()

    def _segment_rule_matches(self, rule: SegmentRule, emap: EvalMap, state: _State,
                              segment: Segment) -> bool:
        if not self._clauses_match(rule.clauses, emap, state):
            return False
        if rule.weight is None:
            return True
        value = bucket(None, emap, rule.rollout_context_kind, segment.key, segment.salt,
                       rule.bucket_by)
        return value < rule.weight / 100000.0

    def _big_segment_matches(self, segment: Segment, emap: EvalMap, state: _State) -> bool:
        if segment.generation is None:
            state.big_status = BigSegmentsStatus.NOT_CONFIGURED
            return False
        attrs = emap.get(segment.unbounded_context_kind or "user")
        if attrs is None:
            return False
        key = attrs["key"]
        cache = state.big_membership
        if cache is not None and key in cache:
            membership = cache[key]
        else:
            membership, state.big_status = self._membership(key)
            if cache is None:
                cache = state.big_membership = {}
            cache[key] = membership
        if membership is not None:
            included = membership.get("%s.g%d" % (segment.key, segment.generation))
            if included is not None:
                return bool(included)
        return self._simple_segment_matches(segment, emap, state, False)
