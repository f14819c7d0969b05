"""``TestData``: flag data built in code for tests, with ldclient's builder API (ld-protocol §9.2).

Safe in any process; starts nothing. Use it in-process with ``Client.from_test_data(td)``
(no supervisor, no shared memory), or as a supervisor source (``td.source(config, sink)``,
also reachable by calling ``td(config, sink)``), so that a test can drive a real supervisor and
its workers. Every ``td.update(...)`` reaches each client or source built from it.
"""
from __future__ import annotations

import copy
import threading
from typing import Any, Callable, Dict, List, Optional, Set

_TRUE_INDEX = 0
_FALSE_INDEX = 1
_USER = "user"


def _bool_index(value: bool) -> int:
    return _TRUE_INDEX if value else _FALSE_INDEX


class TestData:
    """Flag configurations that tests set with builders and push to clients.

    ::

        td = TestData.data_source()
        td.update(td.flag("new-checkout").variation_for_all(True))
        client = shmflags.Client.from_test_data(td)
        td.update(td.flag("new-checkout").variation_for_user("alice", False))

    Like ldclient's, the builders support individual targets and rules with the ``in``
    operator (negated or not), not rollouts or other operators; for anything else, put full
    flag JSON into a flag file or use :meth:`update_raw`.
    """

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._builders: Dict[str, FlagBuilder] = {}
        self._flags: Dict[str, Dict[str, Any]] = {}
        self._segments: Dict[str, Dict[str, Any]] = {}
        self._subscribers: List[Callable[[str, Dict[str, Any]], None]] = []

    @staticmethod
    def data_source() -> "TestData":
        """A new, empty :class:`TestData` (ldclient's factory name)."""
        return TestData()

    def flag(self, key: str) -> "FlagBuilder":
        """A builder for ``key``: a copy of the last one given to :meth:`update`, or a new
        boolean flag (variations ``[True, False]``, on, serving ``True``, off serving ``False``).
        """
        with self._lock:
            previous = self._builders.get(key)
        if previous is not None:
            return previous._copy()
        return FlagBuilder(key).boolean_flag()

    def update(self, flag_builder: "FlagBuilder") -> "TestData":
        """Store the builder's flag with the next version and push it to every client.

        Later changes to ``flag_builder`` have no effect unless it is passed here again.

        :returns: this TestData.
        """
        with self._lock:
            old = self._flags.get(flag_builder._key)
            version = (old["version"] if old else 0) + 1
            flag = flag_builder._build(version)
            self._flags[flag_builder._key] = flag
            self._builders[flag_builder._key] = flag_builder._copy()
            subscribers = list(self._subscribers)
        for notify in subscribers:
            notify("flags", copy.deepcopy(flag))
        return self

    def update_raw(self, kind: str, item: Dict[str, Any]) -> "TestData":
        """Store a flag or segment given as LaunchDarkly JSON (an shmflags extension).

        The version is set to one more than the stored item's, so the update always applies.

        :param kind: ``"flags"`` or ``"segments"``.
        :param item: the item's JSON; it must have a ``key``.
        """
        if kind not in ("flags", "segments"):
            raise ValueError(f"kind must be 'flags' or 'segments', got {kind!r}")
        item = copy.deepcopy(item)
        with self._lock:
            store = self._flags if kind == "flags" else self._segments
            old = store.get(item["key"])
            item["version"] = max((old["version"] if old else 0) + 1, int(item.get("version", 1)))
            store[item["key"]] = item
            if kind == "flags":
                self._builders.pop(item["key"], None)
            subscribers = list(self._subscribers)
        for notify in subscribers:
            notify(kind, copy.deepcopy(item))
        return self

    def data(self) -> Dict[str, Dict[str, Dict[str, Any]]]:
        """A deep copy of the current data: ``{"flags": {...}, "segments": {...}}``."""
        with self._lock:
            return {"flags": copy.deepcopy(self._flags),
                    "segments": copy.deepcopy(self._segments)}

    def subscribe(self, notify: Callable[[str, Dict[str, Any]], None]) -> Dict[str, Any]:
        """Register ``notify(kind, item)`` for every later update.

        :returns: the data at the moment of subscription (as :meth:`data`), so nothing is
            missed between the two.
        """
        with self._lock:
            self._subscribers.append(notify)
            return {"flags": copy.deepcopy(self._flags),
                    "segments": copy.deepcopy(self._segments)}

    def unsubscribe(self, notify: Callable[[str, Dict[str, Any]], None]) -> None:
        """Stop calling ``notify``; unknown callbacks are ignored."""
        with self._lock:
            self._subscribers = [n for n in self._subscribers if n != notify]

    def source(self, config: Any, sink: Any) -> "TestDataSource":
        """A supervisor source (internals.md source contract) fed by this TestData."""
        return TestDataSource(self, config, sink)

    def __call__(self, config: Any, sink: Any) -> "TestDataSource":
        return self.source(config, sink)


class TestDataSource:
    """Supervisor-side source that copies a :class:`TestData` into the store.

    Runs in whichever process owns the store; ``start`` loads everything as a put, then each
    ``td.update`` becomes an upsert. It needs no thread of its own.
    """

    __test__ = False
    name = "testdata"

    def __init__(self, td: TestData, config: Any, sink: Any) -> None:
        self._td = td
        self._config = config
        self._sink = sink
        self._started = False

    def start(self) -> None:
        """Load the current data into the sink and follow later updates."""
        if self._started:
            return
        self._started = True
        data = self._td.subscribe(self._on_update)
        self._sink.init(data["flags"], data["segments"])
        self._sink.set_status("VALID")

    def stop(self) -> None:
        """Stop following updates."""
        self._td.unsubscribe(self._on_update)
        self._started = False

    def _on_update(self, kind: str, item: Dict[str, Any]) -> None:
        self._sink.upsert(kind, item)


class FlagBuilder:
    """Builds one flag configuration for :class:`TestData` (ldclient's ``FlagBuilder``).

    Methods that take a variation accept an index, or a bool, which first turns the flag into
    a boolean flag and then means index 0 for ``True`` and 1 for ``False``.

    :param key: the flag key.
    """

    def __init__(self, key: str) -> None:
        self._key = key
        self._on = True
        self._variations: List[Any] = []
        self._off_variation: Optional[int] = None
        self._fallthrough_variation: Optional[int] = None
        # context kind -> variation index -> keys
        self._targets: Dict[str, Dict[int, Set[str]]] = {}
        self._rules: List[FlagRuleBuilder] = []

    def _copy(self) -> "FlagBuilder":
        other = FlagBuilder(self._key)
        other._on = self._on
        other._variations = list(self._variations)
        other._off_variation = self._off_variation
        other._fallthrough_variation = self._fallthrough_variation
        other._targets = {kind: {i: set(keys) for i, keys in by_var.items()}
                          for kind, by_var in self._targets.items()}
        other._rules = list(self._rules)
        return other

    def on(self, on: bool) -> "FlagBuilder":
        """Turn targeting on or off."""
        self._on = on
        return self

    def fallthrough_variation(self, variation: Any) -> "FlagBuilder":
        """The variation served when targeting is on and nothing more specific matched."""
        if isinstance(variation, bool):
            self.boolean_flag()._fallthrough_variation = _bool_index(variation)
        else:
            self._fallthrough_variation = variation
        return self

    def off_variation(self, variation: Any) -> "FlagBuilder":
        """The variation served when targeting is off."""
        if isinstance(variation, bool):
            self.boolean_flag()._off_variation = _bool_index(variation)
        else:
            self._off_variation = variation
        return self

    def boolean_flag(self) -> "FlagBuilder":
        """Make this a boolean flag (``[True, False]``, fallthrough ``True``, off ``False``),
        unless it already has exactly those variations."""
        if self._is_boolean_flag():
            return self
        return (self.variations(True, False).fallthrough_variation(_TRUE_INDEX)
                .off_variation(_FALSE_INDEX))

    def _is_boolean_flag(self) -> bool:
        v = self._variations
        return len(v) == 2 and v[0] is True and v[1] is False

    def variations(self, *variations: Any) -> "FlagBuilder":
        """Replace the variation values (any JSON values)."""
        self._variations = list(variations)
        return self

    def variation_for_all(self, variation: Any) -> "FlagBuilder":
        """Serve ``variation`` to everyone: targeting on, targets and rules removed,
        fallthrough set; the off variation is left as it was."""
        if isinstance(variation, bool):
            return self.boolean_flag().variation_for_all(_bool_index(variation))
        return self.clear_rules().clear_targets().on(True).fallthrough_variation(variation)

    def value_for_all(self, value: Any) -> "FlagBuilder":
        """Make ``value`` the only variation and serve it to everyone."""
        return self.variations(value).variation_for_all(0)

    def variation_for_user(self, user_key: str, variation: Any) -> "FlagBuilder":
        """Target the ``user`` context with key ``user_key``."""
        return self.variation_for_key(_USER, user_key, variation)

    def variation_for_key(self, context_kind: str, context_key: str,
                          variation: Any) -> "FlagBuilder":
        """Target the context of kind ``context_kind`` and key ``context_key``; the key is
        removed from the targets of every other variation."""
        if isinstance(variation, bool):
            return self.boolean_flag().variation_for_key(context_kind, context_key,
                                                         _bool_index(variation))
        by_var = self._targets.setdefault(context_kind, {})
        for index in range(len(self._variations)):
            if index == variation:
                by_var.setdefault(index, set()).add(context_key)
            elif index in by_var:
                by_var[index].discard(context_key)
        return self

    def if_match(self, attribute: str, *values: Any) -> "FlagRuleBuilder":
        """Start a rule: the ``user`` attribute is one of ``values``."""
        return self.if_match_context(_USER, attribute, *values)

    def if_match_context(self, context_kind: str, attribute: str,
                         *values: Any) -> "FlagRuleBuilder":
        """Start a rule: the attribute of the ``context_kind`` context is one of ``values``."""
        return FlagRuleBuilder(self).and_match_context(context_kind, attribute, *values)

    def if_not_match(self, attribute: str, *values: Any) -> "FlagRuleBuilder":
        """Start a rule: the ``user`` attribute is none of ``values``."""
        return self.if_not_match_context(_USER, attribute, *values)

    def if_not_match_context(self, context_kind: str, attribute: str,
                             *values: Any) -> "FlagRuleBuilder":
        """Start a rule: the attribute of the ``context_kind`` context is none of ``values``."""
        return FlagRuleBuilder(self).and_not_match_context(context_kind, attribute, *values)

    def clear_rules(self) -> "FlagBuilder":
        """Remove every rule."""
        self._rules = []
        return self

    def clear_targets(self) -> "FlagBuilder":
        """Remove every individual target."""
        self._targets = {}
        return self

    def _build(self, version: int) -> Dict[str, Any]:
        targets: List[Dict[str, Any]] = []
        context_targets: List[Dict[str, Any]] = []
        for kind, by_var in self._targets.items():
            for index, keys in by_var.items():
                if kind == _USER:
                    # User keys live in the old-style list; contextTargets keeps a placeholder
                    # so the evaluator knows where user targets fall in the order.
                    targets.append({"variation": index, "values": sorted(keys)})
                    context_targets.append({"contextKind": kind, "variation": index, "values": []})
                else:
                    context_targets.append({"contextKind": kind, "variation": index,
                                            "values": sorted(keys)})
        return {
            "key": self._key,
            "version": version,
            "on": self._on,
            "variations": copy.deepcopy(self._variations),
            "prerequisites": [],
            "salt": "",
            "offVariation": self._off_variation,
            "fallthrough": {"variation": self._fallthrough_variation},
            "targets": targets,
            "contextTargets": context_targets,
            "rules": [rule._build(f"rule{i}") for i, rule in enumerate(self._rules)],
        }


class FlagRuleBuilder:
    """Builds one rule of a :class:`FlagBuilder`: clauses ANDed, then a variation.

    Start one with ``FlagBuilder.if_match`` (and friends); finish with :meth:`then_return`.
    """

    def __init__(self, flag_builder: FlagBuilder) -> None:
        self._flag_builder = flag_builder
        self._clauses: List[Dict[str, Any]] = []
        self._variation: Optional[int] = None

    def and_match(self, attribute: str, *values: Any) -> "FlagRuleBuilder":
        """Also require the ``user`` attribute to be one of ``values``."""
        return self.and_match_context(_USER, attribute, *values)

    def and_match_context(self, context_kind: str, attribute: str,
                          *values: Any) -> "FlagRuleBuilder":
        """Also require the ``context_kind`` attribute to be one of ``values``."""
        return self._clause(context_kind, attribute, values, negate=False)

    def and_not_match(self, attribute: str, *values: Any) -> "FlagRuleBuilder":
        """Also require the ``user`` attribute to be none of ``values``."""
        return self.and_not_match_context(_USER, attribute, *values)

    def and_not_match_context(self, context_kind: str, attribute: str,
                              *values: Any) -> "FlagRuleBuilder":
        """Also require the ``context_kind`` attribute to be none of ``values``."""
        return self._clause(context_kind, attribute, values, negate=True)

    def _clause(self, kind: str, attribute: str, values: Any, negate: bool) -> "FlagRuleBuilder":
        self._clauses.append({"contextKind": kind, "attribute": attribute, "op": "in",
                              "values": list(values), "negate": negate})
        return self

    def then_return(self, variation: Any) -> FlagBuilder:
        """Finish the rule, serving ``variation``; returns the flag builder."""
        if isinstance(variation, bool):
            self._flag_builder.boolean_flag()
            return self.then_return(_bool_index(variation))
        self._variation = variation
        self._flag_builder._rules.append(self)
        return self._flag_builder

    def _build(self, rule_id: str) -> Dict[str, Any]:
        return {"id": rule_id, "variation": self._variation,
                "clauses": copy.deepcopy(self._clauses)}


__all__ = ["TestData", "FlagBuilder", "FlagRuleBuilder", "TestDataSource"]
