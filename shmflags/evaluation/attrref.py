"""Attribute references: parse a clause or ``bucketBy`` attribute string once into path components.

Safe in any process; pure functions and immutable objects only.

With a context kind present the string is a reference (``/a/b`` is a path, ``~1`` and ``~0``
escape ``/`` and ``~``); without one (legacy data) it is always a literal attribute name
(ld-protocol.md §3.5). A reference that cannot be parsed keeps its error, and the evaluator
turns it into ``MALFORMED_FLAG`` only when it is actually used.
"""
from __future__ import annotations

from typing import Optional, Tuple

__all__ = ["AttrRef", "parse_ref", "parse_literal", "ref_for"]


class AttrRef:
    """A parsed attribute reference.

    :ivar components: path components, unescaped (empty tuple when invalid)
    :ivar error: why the reference is invalid, or ``None``
    :ivar is_kind: the reference names exactly the ``kind`` attribute
    :ivar raw: the string as written in the flag data
    """

    __slots__ = ("raw", "components", "error", "is_kind", "first", "simple")

    def __init__(self, raw: str, components: Tuple[str, ...], error: Optional[str]) -> None:
        self.raw = raw
        self.components = components
        self.error = error
        self.first = components[0] if components else None
        self.is_kind = error is None and components == ("kind",)
        #: valid and one component: the value is ``attrs.get(first)`` (the evaluator's fast path)
        self.simple = error is None and len(components) == 1

    @property
    def valid(self) -> bool:
        """``True`` when the reference parsed."""
        return self.error is None

    @property
    def depth(self) -> int:
        """Number of path components (0 when invalid)."""
        return len(self.components)

    def __repr__(self) -> str:
        return f"AttrRef({self.raw!r}, components={self.components!r}, error={self.error!r})"


_EMPTY = "attribute reference cannot be empty"


def _error(raw: str, message: str) -> AttrRef:
    return AttrRef(raw, (), message)


def _unescape(component: str) -> Optional[str]:
    """Undo ``~1`` → ``/`` and ``~0`` → ``~``; ``None`` for any other use of ``~``."""
    if "~" not in component:
        return component
    out = []
    i = 0
    n = len(component)
    while i < n:
        ch = component[i]
        if ch == "~":
            if i + 1 >= n:
                return None
            nxt = component[i + 1]
            if nxt == "0":
                out.append("~")
            elif nxt == "1":
                out.append("/")
            else:
                return None
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_ref(raw: str) -> AttrRef:
    """Parse ``raw`` as an attribute reference (a clause with a ``contextKind``).

    :param raw: ``name`` (one literal component) or ``/path/to/value``
    :returns: the parsed reference; invalid ones carry ``error``
    """
    if raw == "" or raw == "/":
        return _error(raw, _EMPTY)
    if raw[0] != "/":
        return AttrRef(raw, (raw,), None)
    parts = raw[1:].split("/")
    comps = []
    for part in parts:
        if part == "":
            return _error(raw, "attribute reference contained a double slash or a trailing slash")
        unescaped = _unescape(part)
        if unescaped is None:
            return _error(raw, "attribute reference contained an escape character (~) that was not followed by 0 or 1")
        comps.append(unescaped)
    return AttrRef(raw, tuple(comps), None)


def parse_literal(raw: str) -> AttrRef:
    """Treat ``raw`` as one literal attribute name (legacy clause without ``contextKind``).

    :param raw: the attribute name; may contain ``/`` and ``~``
    :returns: a one-component reference, or an invalid one for ``""``
    """
    if raw == "":
        return _error(raw, _EMPTY)
    return AttrRef(raw, (raw,), None)


def ref_for(raw: str, context_kind: Optional[str]) -> AttrRef:
    """Parse ``raw`` the way LaunchDarkly does given the clause's (or rollout's) context kind.

    :param raw: attribute string from the flag data
    :param context_kind: the ``contextKind`` next to it; ``None`` or ``""`` means legacy data
    """
    if context_kind is None or context_kind == "":
        return parse_literal(raw)
    return parse_ref(raw)
