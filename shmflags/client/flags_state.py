"""``FeatureFlagsState``: the result of ``all_flags_state`` (ldclient's API and JSON).

Safe in any worker; a plain value built from the backend's ``to_json_dict``-shaped output.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

__all__ = ["FeatureFlagsState"]


class FeatureFlagsState:
    """Every flag's value and metadata for one context, for bootstrapping client-side SDKs.

    Same API as ``ldclient.evaluation.FeatureFlagsState``: :attr:`valid`,
    :meth:`get_flag_value`, :meth:`get_flag_reason`, :meth:`to_values_map`,
    :meth:`to_json_dict`, :meth:`to_json_string`; plus equality by JSON content.

    :param valid: ``False`` when the state could not be computed (invalid context, no data)
    :param state: the backend's output (``{key: value, ..., "$flagsState": {...}}``), or the
        C evaluator's evaluated-but-not-built result (``_native._FlagsState``, from
        ``Snapshot.all_flags_lazy``: its dicts are built on first use, which is most of the
        cost of a result; every method behaves as with the dict); the object takes
        ownership of it
    """

    __slots__ = ("_values_d", "_metadata_d", "_valid", "_lazy")

    def __init__(self, valid: bool, state: Any = None) -> None:
        self._valid = bool(valid)
        self._lazy: Any = None
        values: Optional[Dict[str, Any]] = {}
        metadata: Optional[Dict[str, Any]] = {}
        if state is not None and not isinstance(state, dict) and hasattr(state, "build"):
            self._lazy = state
            values = metadata = None
        elif state:
            # The object owns ``state``: the two special keys are taken out of it in O(1),
            # and what remains (in order) is the values map. No flag key can clash with them
            # (a flag named "$valid" would be overwritten in the backend's output anyway).
            values = state if type(state) is dict else dict(state)
            metadata = values.pop("$flagsState", None) or {}
            values.pop("$valid", None)
        self._values_d = values
        self._metadata_d = metadata

    def _build(self) -> None:
        # build() returns the same (values, metadata) pair on every call, so two threads
        # racing here both store the same dicts; a thread that finds _lazy already gone
        # comes after one that stored both (they are set before _lazy is cleared)
        lazy = self._lazy
        if lazy is None:
            return
        values, metadata = lazy.build()
        self._values_d = values
        self._metadata_d = metadata
        self._lazy = None

    @property
    def _values(self) -> Dict[str, Any]:
        if self._values_d is None:
            # the values dict alone (to_values_map(), get_flag_value()): the 10,000 metadata
            # dicts are built only if asked for; values() and build() hand out the same dict.
            # _build stores both dicts before clearing _lazy, so None here means they are set.
            lazy = self._lazy
            if lazy is not None:
                self._values_d = lazy.values()
        return self._values_d  # type: ignore[return-value]

    @property
    def _metadata(self) -> Dict[str, Any]:
        if self._metadata_d is None:
            self._build()
        return self._metadata_d  # type: ignore[return-value]

    @property
    def valid(self) -> bool:
        """``True`` if this is a real snapshot of flag state."""
        return self._valid

    def get_flag_value(self, key: str) -> Any:
        """The flag's value (``None`` when it served no variation or does not exist)."""
        return self._values.get(key)

    def get_flag_reason(self, key: str) -> Optional[dict]:
        """The flag's reason, if reasons were recorded for it; else ``None``."""
        meta = self._metadata.get(key)
        return None if meta is None else meta.get("reason")

    def to_values_map(self) -> Dict[str, Any]:
        """Flag key → value."""
        return self._values

    def to_json_dict(self) -> Dict[str, Any]:
        """The bootstrap JSON for LaunchDarkly's JavaScript SDK, as a dict."""
        out = self._values.copy()
        out["$flagsState"] = self._metadata
        out["$valid"] = self._valid
        return out

    def to_json_string(self) -> str:
        """:meth:`to_json_dict` serialised with :func:`json.dumps`."""
        return json.dumps(self.to_json_dict())

    def __getstate__(self) -> Dict[str, Any]:
        return self.to_json_dict()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(bool(state.get("$valid")), state)  # type: ignore[misc]

    def __eq__(self, other: object) -> bool:
        if hasattr(other, "to_json_dict"):
            return self.to_json_dict() == other.to_json_dict()  # type: ignore[attr-defined]
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FeatureFlagsState(valid={self._valid}, flags={len(self._values)})"
