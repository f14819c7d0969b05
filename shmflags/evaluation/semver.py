"""Semantic versions for the ``semVer*`` operators: loose parsing and 2.0.0 precedence.

Safe in any process; pure functions and immutable values.

Accepted grammar: ``MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]`` (ASCII, no leading zeros in
numbers). As in ldclient, a string that does not parse is retried with ``.0`` inserted after
its leading run of digits and dots, twice, so ``2`` and ``2.0`` and ``2-rc`` are accepted and
mean ``2.0.0`` / ``2.0.0-rc`` (ld-protocol.md §3.6).
"""
from __future__ import annotations

import re
from typing import Any, Optional, Tuple

__all__ = ["SemVer", "parse_semver", "compare"]

_NUM = r"(?:0|[1-9][0-9]*)"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
_BUILD_ID = r"[0-9a-zA-Z-]+"
_STRICT = re.compile(
    rf"^(?P<major>{_NUM})\.(?P<minor>{_NUM})\.(?P<patch>{_NUM})"
    rf"(?:-(?P<pre>{_PRE_ID}(?:\.{_PRE_ID})*))?"
    rf"(?:\+(?P<build>{_BUILD_ID}(?:\.{_BUILD_ID})*))?\Z"
)
# No DOTALL on purpose: like ldclient, text after a newline is dropped by the retry.
_LEADING_NUMERIC = re.compile(r"^([0-9.]*)(.*)")


class SemVer:
    """A parsed version. Build metadata is kept but never compared.

    :ivar core: ``(major, minor, patch)``
    :ivar pre: pre-release identifiers as sort keys, or ``None`` for a release
    """

    __slots__ = ("core", "pre", "text")

    def __init__(self, core: Tuple[int, int, int], pre: Optional[str], text: str) -> None:
        self.core = core
        self.pre = pre
        self.text = text

    def __repr__(self) -> str:
        return f"SemVer({self.text!r})"


def _strict(text: str) -> Optional[SemVer]:
    m = _STRICT.match(text)
    if m is None:
        return None
    core = (int(m.group("major")), int(m.group("minor")), int(m.group("patch")))
    return SemVer(core, m.group("pre"), text)


def _insert_zero(text: str) -> str:
    m = _LEADING_NUMERIC.match(text)
    assert m is not None  # the pattern matches every string
    return m.group(1) + ".0" + m.group(2)


def parse_semver(value: Any) -> Optional[SemVer]:
    """Parse a flag or context value as a version.

    :param value: anything; only strings can be versions
    :returns: the version, or ``None``
    """
    if not isinstance(value, str):
        return None
    parsed = _strict(value)
    if parsed is not None:
        return parsed
    text = _insert_zero(value)
    parsed = _strict(text)
    if parsed is not None:
        return parsed
    return _strict(_insert_zero(text))


def _pre_key(identifier: str) -> Tuple[int, int, str]:
    if identifier.isdigit():
        digits = identifier.lstrip("0") or "0"
        return (0, len(digits), digits)
    return (1, 0, identifier)


def compare(a: SemVer, b: SemVer) -> int:
    """Semver 2.0.0 precedence: negative, zero or positive like ``cmp``.

    A release sorts after its pre-releases; pre-release identifiers compare numerically when
    both are digits, numbers sort before words, and a longer list wins a tie.
    """
    if a.core != b.core:
        return -1 if a.core < b.core else 1
    pa, pb = a.pre, b.pre
    if pa == pb:
        return 0
    if not pa:
        return 1 if pb else 0
    if not pb:
        return -1
    ka = [_pre_key(x) for x in pa.split(".")]
    kb = [_pre_key(x) for x in pb.split(".")]
    for x, y in zip(ka, kb):
        if x != y:
            return -1 if x < y else 1
    return (len(ka) > len(kb)) - (len(ka) < len(kb))
