"""Context redaction for event output, compared with ldclient's EventContextFormatter (the oracle)."""
from __future__ import annotations

from typing import Any, Dict, List

import ldclient
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ldclient.impl.events.event_context_formatter import EventContextFormatter

from shmflags.context import Context
from shmflags.events.formatter import ContextFormatter


def both(props: Dict[str, Any], all_private: bool, private: List[str], redact_anon: bool):
    ours = ContextFormatter(all_private, private).format(Context.from_dict(props), redact_anon)
    ld_ctx = ldclient.Context.from_dict(props)
    assert ld_ctx.valid, ld_ctx.error
    fmt = EventContextFormatter(all_private, private)
    theirs = (fmt.format_context_redact_anonymous(ld_ctx) if redact_anon
              else fmt.format_context(ld_ctx))
    return ours, theirs


USER = {"kind": "user", "key": "u-1", "name": "Sandy", "email": "s@example.com",
        "address": {"street": "1 Main", "city": "Berlin", "geo": {"lat": 1, "lng": 2}},
        "tags": [{"a": 1}], "/weird": 1, "a~b": 2}

CASES = [
    (USER, False, [], False),
    (USER, True, [], False),
    (USER, False, ["email", "name"], False),
    (USER, False, ["/address/street", "/address/geo/lat", "/tags/0/a", "/nope/x"], False),
    (USER, False, ["/address"], False),
    (USER, False, ["~1weird", "/~1weird", "/a~0b", "bad~", "", "/"], False),
    (dict(USER, anonymous=True), False, [], True),
    (dict(USER, anonymous=True), False, [], False),
    (dict(USER, _meta={"privateAttributes": ["email", "/address/city"]}), False, ["name"], False),
    ({"kind": "multi",
      "user": {"key": "u-1", "anonymous": True, "name": "n", "email": "e"},
      "org": {"key": "acme", "address": {"city": "Berlin", "country": "DE"},
              "_meta": {"privateAttributes": ["/address/country"]}}}, False, [], True),
    ({"kind": "multi",
      "user": {"key": "u-1", "email": "e", "_meta": {"privateAttributes": ["email"]}},
      "org": {"key": "acme", "email": "keep"}}, False, [], False),
    ({"kind": "org", "key": "a:b%c", "name": "x"}, False, ["name"], True),
]


@pytest.mark.parametrize("props,all_private,private,redact_anon", CASES)
def test_formatter_matches_ldclient(props, all_private, private, redact_anon):
    ours, theirs = both(props, all_private, private, redact_anon)
    assert ours == theirs
    assert "_meta" not in ours or "privateAttributes" not in ours["_meta"]


def test_nested_redaction_lists_the_path_and_keeps_siblings():
    ours, _ = both(USER, False, ["/address/geo/lat"], False)
    assert ours["address"] == {"street": "1 Main", "city": "Berlin", "geo": {"lng": 2}}
    assert ours["_meta"] == {"redactedAttributes": ["/address/geo/lat"]}


def test_anonymous_redaction_keeps_only_key_kind_anonymous():
    ours, _ = both(dict(USER, anonymous=True), False, [], True)
    assert set(ours) == {"key", "kind", "anonymous", "_meta"}
    assert ours["_meta"]["redactedAttributes"][0] == "name"
    assert "/~1weird" in ours["_meta"]["redactedAttributes"]


_names = st.sampled_from(["name", "email", "a", "b", "/s", "x~y", "deep"])
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=3))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["a", "b", "c", "/d"]), inner,
                                            max_size=3)),
    max_leaves=8)
_refs = st.lists(st.sampled_from(["name", "email", "a", "/a", "/a/b", "/a/b/c", "/b/a", "/deep",
                                  "/deep/a", "/~1s", "x~y", "/x~0y", "/a/c", "~", "/c/a/b"]),
                 max_size=4)


@st.composite
def _single(draw, kind):
    props: Dict[str, Any] = {"key": draw(st.sampled_from(["k", "k2", "a:b"]))}
    if kind is not None:
        props["kind"] = kind
    for name in draw(st.lists(_names, max_size=5, unique=True)):
        props[name] = draw(st.text(max_size=3)) if name == "name" else draw(_values)
    if draw(st.booleans()):
        props["anonymous"] = True
    own = draw(_refs)
    if own:
        props["_meta"] = {"privateAttributes": own}
    return props


@st.composite
def _contexts(draw):
    if draw(st.booleans()):
        return draw(_single(draw(st.sampled_from(["user", "org"]))))
    return {"kind": "multi", "user": draw(_single(None)), "org": draw(_single(None))}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(props=_contexts(), all_private=st.booleans(), private=_refs, redact_anon=st.booleans())
def test_formatter_differential(props, all_private, private, redact_anon):
    ours, theirs = both(props, all_private, private, redact_anon)
    assert ours == theirs
