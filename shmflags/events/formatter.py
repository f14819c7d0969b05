"""Format a context for an analytics event, redacting private attributes as LaunchDarkly requires.

Runs in the supervisor (workers send contexts unredacted; only the supervisor knows the
redaction settings). Output is exactly that of ldclient's event context formatter
(ld-protocol §6.6): ``key``, ``kind`` and ``anonymous`` are always kept; ``name`` and custom
attributes are removed when every attribute is private, when a configured or ``_meta``
reference names them, or (feature, custom and migration events only) when the context is
anonymous; nested references remove one property inside an object, never inside an array;
what was removed is listed in ``_meta.redactedAttributes``.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

from shmflags.context import Context
from shmflags.evaluation.attrref import parse_ref

__all__ = ["ContextFormatter"]

_Path = Tuple[str, ...]


def _literal_path(name: str) -> str:
    """How a whole top-level attribute is listed in ``redactedAttributes``."""
    if not name.startswith("/"):
        return name
    return "/" + name.replace("~", "~0").replace("/", "~1")


def _parse_refs(refs: Iterable[str]) -> List[Tuple[_Path, str]]:
    out = []
    for raw in refs:
        if not isinstance(raw, str):
            continue
        ref = parse_ref(raw)
        if ref.valid:
            out.append((ref.components, ref.raw))
    return out


class ContextFormatter:
    """Redacts contexts for event output.

    :param all_attributes_private: redact every attribute but ``key``/``kind``/``anonymous``
    :param private_attributes: attribute references (``email``, ``/address/street``) redacted
        in every context; invalid references are ignored
    """

    def __init__(self, all_attributes_private: bool, private_attributes: Iterable[str]) -> None:
        self._all_private = bool(all_attributes_private)
        self._private = _parse_refs(private_attributes)

    def format(self, context: Context, redact_anonymous: bool) -> Dict[str, Any]:
        """Return the event representation of ``context``.

        :param context: a valid context
        :param redact_anonymous: ``True`` for feature, custom and migration_op events: an
            anonymous context then keeps only ``key``, ``kind`` and ``anonymous``
        """
        if context.multiple:
            out: Dict[str, Any] = {"kind": "multi"}
            for i in range(context.individual_context_count):
                c = context.get_individual_context(i)
                if c is not None:
                    out[c.kind] = self._single(c, False, redact_anonymous)
            return out
        return self._single(context, True, redact_anonymous)

    def _single(self, context: Context, include_kind: bool, redact_anonymous: bool
                ) -> Dict[str, Any]:
        out: Dict[str, Any] = {"key": context.key}
        if include_kind:
            out["kind"] = context.kind
        anonymous = context.anonymous
        if anonymous:
            out["anonymous"] = True
        refs = self._private
        own = context._private_attributes
        if own:
            refs = refs + _parse_refs(own)
        redact_all = self._all_private or (anonymous and redact_anonymous)
        redacted: List[str] = []
        name = context.name
        if name is not None:
            if self._whole_private("name", refs, redact_all):
                redacted.append("name")
            else:
                out["name"] = name
        attrs = context._attributes
        if attrs:
            for attr, value in attrs.items():
                if self._whole_private(attr, refs, redact_all):
                    redacted.append(_literal_path(attr))
                else:
                    out[attr] = self._redact_value((attr,), value, refs, redacted)
        if redacted:
            out["_meta"] = {"redactedAttributes": redacted}
        return out

    @staticmethod
    def _whole_private(attr: str, refs: List[Tuple[_Path, str]], redact_all: bool) -> bool:
        if redact_all:
            return True
        for components, _ in refs:
            if len(components) == 1 and components[0] == attr:
                return True
        return False

    def _redact_value(self, path: _Path, value: Any, refs: List[Tuple[_Path, str]],
                      redacted: List[str]) -> Any:
        """Copy a JSON object, dropping properties that a nested reference names."""
        if not isinstance(value, dict) or not value:
            return value
        depth = len(path) + 1
        out = {}
        for k, v in value.items():
            hit: Optional[str] = None
            for components, raw in refs:
                if len(components) == depth and components[-1] == k \
                        and components[:-1] == path:
                    hit = raw
                    break
            if hit is not None:
                redacted.append(hit)
            else:
                out[k] = self._redact_value(path + (k,), v, refs, redacted)
        return out
