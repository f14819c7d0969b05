"""Differential and unit tests for shmflags.context against ldclient.Context (the oracle)."""
from __future__ import annotations

import copy
import json
import os
import pickle
from typing import Any, List, Tuple

import ldclient
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmflags.context import Context, ContextBuilder, ContextMultiBuilder, coerce

LD = ldclient.Context

# Names probed with get() on every compared context: built-ins, metadata, oddities.
PROBE_NAMES = ["key", "kind", "name", "anonymous", "_meta", "", "email", "x", "/x",
               "a~b", "privateAttributes", "custom", "missing"]

# -- comparison ------------------------------------------------------------------------


def assert_same(ours: Context, theirs: Any, depth: int = 0) -> None:
    """Assert every observable property of our context equals ldclient's."""
    assert isinstance(ours, Context)
    assert ours.valid == theirs.valid, (ours, theirs)
    assert ours.error == theirs.error
    assert ours.to_dict() == theirs.to_dict()
    assert ours.to_json_string() == theirs.to_json_string()
    assert repr(ours) == repr(theirs)
    assert ours.fully_qualified_key == theirs.fully_qualified_key
    assert ours.kind == theirs.kind
    assert ours.key == theirs.key
    assert ours.name == theirs.name
    assert ours.anonymous == theirs.anonymous
    assert ours.multiple == theirs.multiple
    assert ours.individual_context_count == theirs.individual_context_count
    assert list(ours.private_attributes) == list(theirs.private_attributes)
    assert list(ours.custom_attributes) == list(theirs.custom_attributes)
    names = set(PROBE_NAMES) | set(theirs.custom_attributes)
    for n in names:
        assert ours.get(n) == theirs.get(n), n
        assert type(ours.get(n)) is type(theirs.get(n)), n
        assert ours[n] == theirs[n]
    assert ours[3] is None and theirs[3] is None
    for i in range(-1, theirs.individual_context_count + 1):
        mine, other = ours.get_individual_context(i), theirs.get_individual_context(i)
        assert (mine is None) == (other is None), i
        if mine is not None and depth == 0:
            assert_same(mine, other, depth + 1)
            assert ours.get_individual_context(mine.kind) is mine
    for k in ("user", "org", "multi", "", "nope"):
        assert (ours.get_individual_context(k) is None) == (theirs.get_individual_context(k) is None)
    if depth == 0:
        assert_same(ours.without_anonymous_contexts(), theirs.without_anonymous_contexts(), 1)
        if ours.valid:
            assert_eval_map(ours, theirs)


def assert_eval_map(ours: Context, theirs: Any) -> None:
    """_eval_map answers exactly what ldclient's evaluator reads through get()."""
    emap = ours._eval_map()
    assert emap is ours._eval_map()  # cached
    assert set(emap) == {theirs.get_individual_context(i).kind
                         for i in range(theirs.individual_context_count)}
    for kind, attrs in emap.items():
        single = theirs.get_individual_context(kind)
        assert attrs["kind"] == kind
        assert attrs["key"] == single.key
        assert "anonymous" in attrs and attrs["anonymous"] == single.anonymous
        assert ("name" in attrs) == (single.name is not None)
        assert "_meta" not in attrs
        for n in set(PROBE_NAMES) | set(single.custom_attributes) | set(attrs):
            assert attrs.get(n) == single.get(n), n
        assert set(attrs) - {"kind", "key", "anonymous", "name"} == set(single.custom_attributes)


def both(recipe) -> Tuple[Context, Any]:
    return recipe(Context), recipe(LD)


# -- strategies ------------------------------------------------------------------------

KINDS = ["user", "org", "a.b_c-D9", "", "kind", "multi", "org:x", "ü", "with space",
         "User", "o/rg", "%", "device"]
kinds = st.one_of(st.sampled_from(KINDS), st.text(max_size=6))
keys = st.one_of(st.sampled_from(["", "k", "a:b", "a%b:c", "%3A", "ü-ключ", "user:x", " "]),
                 st.text(max_size=8))
ATTR_NAMES = ["key", "kind", "name", "anonymous", "_meta", "", "email", "x", "/x", "a~b",
              "privateAttributes", "custom"]
attr_names = st.one_of(st.sampled_from(ATTR_NAMES), st.text(max_size=5))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**60, 2**60),
                    st.floats(allow_nan=False), st.text(max_size=6))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)
refs = st.one_of(st.sampled_from(["x", "/x", "/x/y", "/a~1b", "/", "//", "a~b", "/~2", ""]),
                 st.text(max_size=5))
metas = st.one_of(
    st.none(), json_values,
    st.fixed_dictionaries({}, optional={"privateAttributes": st.one_of(
        st.lists(refs, max_size=3), json_values, st.lists(json_values, max_size=2))}),
)


GOOD_KINDS = ["user", "org", "device", "a.b_c-D9", "User"]
good_kinds = st.sampled_from(GOOD_KINDS)
good_names = st.one_of(st.sampled_from(["email", "x", "/x", "a~b", "custom", "tier", "ünï"]),
                       st.text(min_size=1, max_size=5).filter(lambda n: n != "_meta"))
good_keys = st.one_of(st.sampled_from(["k", "a:b", "a%b:c", "%3A", "ü-ключ", " "]),
                      st.text(min_size=1, max_size=8))


@st.composite
def single_dicts(draw, with_kind: bool = True) -> dict:
    """A single-kind context dict: usually valid (sane), sometimes anything goes."""
    sane = draw(st.integers(0, 9)) < 6
    d = draw(st.dictionaries(good_names if sane else attr_names, json_values, max_size=4))
    if draw(st.integers(0, 9)) < (9 if sane else 8):
        d["key"] = draw(good_keys if sane else keys)
    if draw(st.booleans()):
        d["name"] = draw(st.one_of(st.none(), st.text(max_size=5)) if sane else
                         st.one_of(st.none(), st.text(max_size=5), json_values))
    if draw(st.booleans()):
        d["anonymous"] = draw(st.booleans() if sane else st.one_of(st.booleans(), json_values))
    if draw(st.booleans()):
        d["_meta"] = draw(st.fixed_dictionaries({"privateAttributes": st.lists(refs, max_size=3)})
                          if sane else metas)
    if with_kind:
        d["kind"] = draw(good_kinds if sane else kinds)
    elif not sane and draw(st.integers(0, 4)) == 0:
        d["kind"] = draw(st.one_of(kinds, json_values))
    else:
        d.pop("kind", None)
    # Shuffle so that property order (which matters for repeated names) varies.
    items = list(d.items())
    order = draw(st.permutations(range(len(items))))
    return {items[i][0]: items[i][1] for i in order}


@st.composite
def multi_dicts(draw) -> dict:
    d: dict = {"kind": "multi"}
    sane = draw(st.integers(0, 9)) < 6
    for kind in draw(st.lists(good_kinds if sane else kinds, max_size=4)):
        d[kind] = draw(single_dicts(with_kind=False) if sane else
                       st.one_of(single_dicts(with_kind=False), json_values))
    return d


context_dicts = st.one_of(single_dicts(), multi_dicts())

builder_ops = st.lists(st.one_of(
    st.tuples(st.just("kind"), st.one_of(st.none(), kinds)),
    st.tuples(st.just("key"), keys),
    st.tuples(st.just("name"), st.one_of(st.none(), st.text(max_size=5))),
    st.tuples(st.just("anonymous"), st.booleans()),
    st.tuples(st.just("set"), attr_names, json_values),
    st.tuples(st.just("try_set"), attr_names, json_values),
    st.tuples(st.just("private"), st.lists(refs, max_size=3)),
    st.tuples(st.just("build")),
), max_size=8)


def run_ops(cls, builder, ops) -> Tuple[List[Any], List[Any]]:
    """Apply builder operations; return try_set results and contexts built on the way."""
    results: List[Any] = []
    built: List[Any] = []
    for op in ops:
        name = op[0]
        if name == "build":
            c = builder.build()
            built.append((c, copy.deepcopy(c.to_dict())))
        elif name == "set":
            assert builder.set(op[1], op[2]) is builder
        elif name == "try_set":
            results.append(builder.try_set(op[1], op[2]))
        elif name == "private":
            assert builder.private(*op[1]) is builder
        else:
            assert getattr(builder, name)(op[1]) is builder
    c = builder.build()
    built.append((c, copy.deepcopy(c.to_dict())))
    return results, built


def assert_builds_same(b_ours, b_theirs) -> None:
    """Compare contexts built along the way, each as it was when built.

    ldclient's copy-on-write misses an empty attribute dict, so a context built after
    ``set(name, None)`` can change when the builder is used again; ours never does
    (docs/compatibility.md). Such ldclient contexts are compared by their state at build time.
    """
    assert len(b_ours) == len(b_theirs)
    for (o, o_snap), (t, t_snap) in zip(b_ours, b_theirs):
        assert o.to_dict() == o_snap == t_snap
        if t.to_dict() == t_snap:
            assert_same(o, t)
    ours = [o for o, _ in b_ours]
    theirs = [t for t, _ in b_theirs]
    for i, (o1, t1) in enumerate(zip(ours, theirs)):
        for o2, t2 in zip(ours[i:], theirs[i:]):
            if t1.to_dict() == b_theirs[i][1]:
                assert (o1 == o2) == (t1 == t2)
                assert (o1 != o2) == (t1 != t2)


# SHMFLAGS_CONTEXT_EXAMPLES raises the example count for a long differential run.
DIFF = settings(max_examples=int(os.environ.get("SHMFLAGS_CONTEXT_EXAMPLES", "150")),
                deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- differential: from_dict -----------------------------------------------------------


@DIFF
@given(context_dicts)
def test_from_dict_matches_ldclient(props):
    snapshot = json.dumps(props, sort_keys=True, default=repr)
    ours, theirs = Context.from_dict(props), LD.from_dict(props)
    assert_same(ours, theirs)
    assert json.dumps(props, sort_keys=True, default=repr) == snapshot  # input untouched
    if ours.valid:
        # to_dict round-trips on both sides.
        assert_same(Context.from_dict(ours.to_dict()), LD.from_dict(theirs.to_dict()))
        assert Context.from_dict(ours.to_dict()).to_dict() == ours.to_dict()
        # Equality after a round trip (false when an attribute was set to None) as ldclient.
        assert (Context.from_dict(ours.to_dict()) == ours) == \
            (LD.from_dict(theirs.to_dict()) == theirs)


@DIFF
@given(st.lists(context_dicts, min_size=0, max_size=4))
def test_create_multi_matches_ldclient(dicts):
    ours = Context.create_multi(*[Context.from_dict(d) for d in dicts])
    theirs = LD.create_multi(*[LD.from_dict(d) for d in dicts])
    assert_same(ours, theirs)
    mb_ours, mb_theirs = Context.multi_builder(), LD.multi_builder()
    for d in dicts:
        assert mb_ours.add(Context.from_dict(d)) is mb_ours
        mb_theirs.add(LD.from_dict(d))
    assert_same(mb_ours.build(), mb_theirs.build())


# -- differential: builders ------------------------------------------------------------


@DIFF
@given(keys, builder_ops)
def test_builder_matches_ldclient(key, ops):
    r_ours, b_ours = run_ops(Context, Context.builder(key), ops)
    r_theirs, b_theirs = run_ops(LD, LD.builder(key), ops)
    assert r_ours == r_theirs
    assert_builds_same(b_ours, b_theirs)


@DIFF
@given(single_dicts(), builder_ops)
def test_builder_from_context_matches_ldclient(props, ops):
    src_ours, src_theirs = Context.from_dict(props), LD.from_dict(props)
    before = src_ours.to_dict()
    r_ours, b_ours = run_ops(Context, Context.builder_from_context(src_ours), ops)
    r_theirs, b_theirs = run_ops(LD, LD.builder_from_context(src_theirs), ops)
    assert r_ours == r_theirs
    assert_builds_same(b_ours, b_theirs)
    assert src_ours.to_dict() == before


@DIFF
@given(keys, st.one_of(st.none(), kinds))
def test_create_matches_ldclient(key, kind):
    assert_same(Context.create(key, kind), LD.create(key, kind))
    assert_same(Context.create(key), LD.create(key))


# -- hand-picked edge cases ------------------------------------------------------------

EDGE_DICTS = [
    {"kind": "user", "key": "u"},
    {"kind": "user", "key": ""},
    {"kind": "user"},
    {"kind": "org", "key": "a%b:c"},
    {"kind": "org", "key": "%3A:%25"},
    {"kind": "ü", "key": "x"},
    {"kind": "", "key": "x"},
    {"kind": "kind", "key": "x"},
    {"kind": "multi"},
    {"kind": "o rg", "key": "x"},
    {"kind": None, "key": "x"},
    {"kind": 3, "key": "x"},
    {"kind": "user", "key": None},
    {"kind": "user", "key": 5},
    {"kind": "user", "key": "k", "name": 5},
    {"kind": "user", "key": "k", "name": None},
    {"kind": "user", "key": "k", "anonymous": None},
    {"kind": "user", "key": "k", "anonymous": "true"},
    {"kind": "user", "key": "k", "anonymous": 1},
    {"kind": "user", "key": "k", "anonymous": True, "name": "ñame"},
    {"kind": "user", "key": "k", "anonymous": False},
    {"kind": "user", "key": "k", "_meta": None},
    {"kind": "user", "key": "k", "_meta": []},
    {"kind": "user", "key": "k", "_meta": {}},
    {"kind": "user", "key": "k", "_meta": {"privateAttributes": None}},
    {"kind": "user", "key": "k", "_meta": {"privateAttributes": "email"}},
    {"kind": "user", "key": "k", "_meta": {"privateAttributes": [1]}},
    {"kind": "user", "key": "k", "_meta": {"privateAttributes": []}},
    {"kind": "user", "key": "k", "_meta": {"privateAttributes": ["/a/b", "/a~1b/c~0d", "x"]}},
    {"kind": "user", "key": "k", "": 1},
    {"kind": "user", "key": "k", "x": None},
    {"kind": "user", "key": "k", "address": {"city": {"zip": "1"}}, "arr": [1, [2]]},
    {"kind": "user", "key": "k", "custom": {"a": 1}, "privateAttributeNames": ["a"]},
    {"kind": "multi", "user": {"key": "u"}},
    {"kind": "multi", "user": {"key": ""}},
    {"kind": "multi", "user": {"key": "u"}, "org": {"key": "o:1%"}},
    {"kind": "multi", "user": {"key": "u"}, "org": "o"},
    {"kind": "multi", "user": {"key": "u"}, "multi": {"key": "m"}},
    {"kind": "multi", "user": {"key": "u"}, "kind2": {"key": "k", "kind": "user"}},
    {"kind": "multi", "user": {"key": "u", "kind": "org"}, "org": {"key": "o"}},
    {"kind": "multi", "b": {"key": ""}, "a": {"key": "x", "name": 1}, "c": {"key": "c"}},
    {"kind": "multi", "b": {"key": "", "kind": "z"}, "a": {"key": "", "kind": "z"}},
    {"kind": "multi", "user": {"key": "u", "anonymous": True}, "org": {"key": "o"}},
    {"kind": "multi", "user": {"key": "u", "anonymous": True},
     "org": {"key": "o", "anonymous": True}},
    {"kind": "multi", "org": {"key": "o", "_meta": {"privateAttributes": ["tier"]},
                              "tier": "gold"}, "user": {"key": "u", "name": "S"}},
]


@pytest.mark.parametrize("props", EDGE_DICTS, ids=[json.dumps(d) for d in EDGE_DICTS])
def test_edge_dicts_match_ldclient(props):
    assert_same(Context.from_dict(props), LD.from_dict(props))


def test_edge_builders_match_ldclient():
    recipes = [
        lambda C: C.create("x", "multi"),
        lambda C: C.create("", "org"),
        lambda C: C.create("a:b", "org"),
        lambda C: C.create_multi(),
        lambda C: C.create_multi(C.create("a")),
        lambda C: C.create_multi(C.create("")),
        lambda C: C.create_multi(C.create("a"), C.create("b")),
        lambda C: C.create_multi(C.create(""), C.create("x", "kind"), C.create("o", "org")),
        lambda C: C.create_multi(C.create("a"), C.create("b"), C.create("", "org")),
        lambda C: C.create_multi(C.create_multi(C.create("a"), C.create("b", "org")),
                                 C.create("c", "dev")),
        lambda C: C.create_multi(C.create_multi(C.create("a"), C.create("b", "org")),
                                 C.create("c", "org")),
        lambda C: C.builder("k").kind("org").kind(None).build(),
        lambda C: C.builder("k").kind("").build(),
        lambda C: C.builder("k").set("key", 5).set("kind", 6).set("name", 7).build(),
        lambda C: C.builder("k").set("anonymous", 1).set("_meta", {"a": 1}).set("", 3).build(),
        lambda C: C.builder("k").name(5).build(),  # ldclient does not type-check name()
        lambda C: C.builder("k").anonymous(1).build(),
        lambda C: C.builder("k").set("x", None).build(),
        lambda C: C.builder("k").set("x", 1).set("x", None).build(),
        lambda C: C.builder("k").private().build(),
        lambda C: C.builder("k").private("a", "/b/c").private("a").build(),
        lambda C: C.builder_from_context(C.create_multi(C.create("a"), C.create("b", "o"))).build(),
        lambda C: C.builder_from_context(C.create("")).key("z").build(),
        lambda C: C.create("a").without_anonymous_contexts(),
        lambda C: C.builder("a").anonymous(True).build().without_anonymous_contexts(),
        lambda C: C.create("").without_anonymous_contexts(),
    ]
    for recipe in recipes:
        ours, theirs = both(recipe)
        assert_same(ours, theirs)


def test_equality_matches_ldclient():
    pairs = [
        lambda C: (C.create("a"), C.create("a")),
        lambda C: (C.create("a"), C.create("a", "org")),
        lambda C: (C.create(""), C.create("", "org")),
        lambda C: (C.create(""), C.create("")),
        lambda C: (C.create("a"), C.builder("a").set("x", None).build()),
        lambda C: (C.builder("a").set("x", 1).build(), C.builder("a").set("x", 1).build()),
        lambda C: (C.builder("a").set("x", 1).build(), C.builder("a").set("x", 2).build()),
        lambda C: (C.builder("a").private("x").build(), C.builder("a").build()),
        lambda C: (C.create_multi(C.create("a"), C.create("b", "o")),
                   C.create_multi(C.create("b", "o"), C.create("a"))),
        lambda C: (C.create_multi(C.create("a"), C.create("b", "o")),
                   C.create_multi(C.create("a"), C.create("c", "o"))),
        lambda C: (C.create("a"), "a"),
    ]
    for recipe in pairs:
        (o1, o2), (t1, t2) = both(recipe)
        assert (o1 == o2) == (t1 == t2)
        assert (o1 != o2) == (t1 != t2)


def test_constructor_signature_matches_ldclient():
    args = [
        ("org", "k", "n", True, {"x": 1}, ["x"], None, False, None),
        (None, "", None, False, None, None, None, True, None),
        (None, "", None, False, None, None, None, False, None),
        (None, "", None, False, None, None, None, False, "boom"),
        (None, "", None, False, None, None, [], False, None),
    ]
    for a in args:
        assert_same(Context(*a), LD(*a))
    ours = Context(None, "", multi_contexts=[Context.create("a"), Context.create("b", "o")])
    theirs = LD(None, "", multi_contexts=[LD.create("a"), LD.create("b", "o")])
    assert_same(ours, theirs)


def test_constants_and_exports():
    assert Context.DEFAULT_KIND == LD.DEFAULT_KIND == "user"
    assert Context.MULTI_KIND == LD.MULTI_KIND == "multi"
    assert isinstance(Context.builder("k"), ContextBuilder)
    assert isinstance(Context.multi_builder(), ContextMultiBuilder)
    public = {n for n in dir(LD) if not n.startswith("_")}
    assert public <= set(dir(Context))
    for cls_ours, cls_ld in ((ContextBuilder, ldclient.ContextBuilder),
                             (ContextMultiBuilder, ldclient.ContextMultiBuilder)):
        assert {n for n in dir(cls_ld) if not n.startswith("_")} <= set(dir(cls_ours))


def test_unhashable_like_ldclient():
    with pytest.raises(TypeError):
        hash(LD.create("a"))
    with pytest.raises(TypeError):
        hash(Context.create("a"))


def test_repr_of_invalid_and_unserialisable():
    assert repr(Context.create("")) == "[invalid context: context key must not be None or empty]"
    ours = Context.builder("a").set("when", object()).build()
    theirs = LD.builder("a").set("when", object()).build()
    with pytest.raises(TypeError):
        theirs.to_json_string()
    with pytest.raises(TypeError):
        ours.to_json_string()


# -- immutability ----------------------------------------------------------------------


def test_context_is_independent_of_inputs_and_builders():
    props = {"kind": "org", "key": "k", "tier": "gold", "_meta": {"privateAttributes": ["tier"]}}
    c = Context.from_dict(props)
    props["tier"] = "lead"
    props["_meta"]["privateAttributes"].append("other")
    assert c.get("tier") == "gold"
    assert list(c.private_attributes) == ["tier"]

    b = Context.builder("k").set("a", 1).private("a")
    c1 = b.build()
    b.set("a", 2).set("b", 3).private("b").name("n")
    c2 = b.build()
    assert (c1.get("a"), c1.get("b"), c1.name, list(c1.private_attributes)) == (1, None, None, ["a"])
    assert (c2.get("a"), c2.get("b"), c2.name, list(c2.private_attributes)) == (2, 3, "n", ["a", "b"])

    b2 = Context.builder_from_context(c2).set("a", 9).private("z")
    b2.build()
    assert c2.get("a") == 2 and list(c2.private_attributes) == ["a", "b"]

    attrs = {"x": 1}
    priv = ["x"]
    c3 = Context("user", "k", None, False, attrs, priv)
    attrs["x"] = 2
    priv.append("y")
    assert c3.get("x") == 1 and list(c3.private_attributes) == ["x"]


def test_builder_reuse_after_none_attribute_keeps_context_immutable():
    # ldclient bug: the built context shares the builder's (empty) attribute dict.
    b = LD.builder("k").set("email", None)
    first = b.build()
    b.set("email", "late")
    assert first.get("email") == "late"
    ours = Context.builder("k").set("email", None)
    first_ours = ours.build()
    ours.set("email", "late")
    assert first_ours.get("email") is None and first_ours.to_dict() == {"key": "k", "kind": "user"}
    assert ours.build().get("email") == "late"


def test_read_views_cannot_mutate_context():
    c = Context.builder("k").set("a", 1).private("a").build()
    with pytest.raises(TypeError):
        c.custom_attributes["a"] = 2  # type: ignore[index]
    pa = c.private_attributes
    pa.append("b")  # type: ignore[attr-defined]
    assert list(c.private_attributes) == ["a"]
    with pytest.raises(AttributeError):
        c.some_new_attribute = 1  # type: ignore[attr-defined]


# -- fully-qualified key ---------------------------------------------------------------


@pytest.mark.parametrize("ctx,expected", [
    (lambda: Context.create("u-123"), "u-123"),
    (lambda: Context.create("a:b%c"), "a:b%c"),  # user kind: key unescaped
    (lambda: Context.create("acme", "org"), "org:acme"),
    (lambda: Context.create("a%b:c", "org"), "org:a%25b%3Ac"),
    (lambda: Context.create_multi(Context.create("u1"), Context.create("acme:eu", "org")),
     "org:acme%3Aeu:user:u1"),
    (lambda: Context.create(""), ""),
])
def test_fully_qualified_key_examples(ctx, expected):
    c = ctx()
    assert c.fully_qualified_key == expected
    assert c.fully_qualified_key is c.fully_qualified_key  # cached


# -- _eval_map -------------------------------------------------------------------------


def test_eval_map_single_and_multi():
    user = Context.builder("u").name("Sandy").set("email", "s@x").set("address", {"c": "DE"}) \
        .private("email").build()
    org = Context.builder("acme").kind("org").anonymous(True).set("tier", "gold").build()
    assert user._eval_map() == {"user": {"kind": "user", "key": "u", "anonymous": False,
                                         "name": "Sandy", "email": "s@x",
                                         "address": {"c": "DE"}}}
    assert org._eval_map() == {"org": {"kind": "org", "key": "acme", "anonymous": True,
                                       "tier": "gold"}}
    multi = Context.create_multi(user, org)
    emap = multi._eval_map()
    assert emap == {**user._eval_map(), **org._eval_map()}
    assert multi._eval_map() is emap
    assert Context.create("")._eval_map() == {}
    assert "_meta" not in Context.from_dict(
        {"kind": "user", "key": "k", "_meta": {"privateAttributes": ["a"]}})._eval_map()["user"]


def test_eval_map_builtins_override_constructor_attributes():
    c = Context("user", "k", None, False, {"key": "other", "name": "n", "kind": "x", "z": 1})
    assert c._eval_map() == {"user": {"kind": "user", "key": "k", "anonymous": False, "z": 1}}
    theirs = LD("user", "k", None, False, {"key": "other", "name": "n", "kind": "x", "z": 1})
    for n in ("key", "name", "kind", "z", "anonymous"):
        assert c._eval_map()["user"].get(n) == theirs.get(n)


# -- old user format (our extension) ---------------------------------------------------


def test_old_user_format_conversion():
    c = Context.from_dict({
        "key": "u-123", "name": "Sandy", "email": "s@example.com", "anonymous": True,
        "firstName": "S", "lastName": None, "country": "DE", "avatar": "a", "ip": "1.2.3.4",
        "custom": {"plan": "pro", "groups": ["a", "b"], "gone": None, "key": "no", "kind": "no"},
        "privateAttributeNames": ["email", "/weird/name", "a~b"], "secondary": "x",
        "unknownProp": 42,
    })
    assert c.valid, c.error
    assert c.kind == "user" and c.key == "u-123" and c.name == "Sandy" and c.anonymous is True
    assert c.to_dict() == {
        "key": "u-123", "kind": "user", "name": "Sandy", "anonymous": True,
        "firstName": "S", "email": "s@example.com", "country": "DE", "avatar": "a",
        "ip": "1.2.3.4", "plan": "pro", "groups": ["a", "b"],
        "_meta": {"privateAttributes": ["email", "/~1weird~1name", "a~b"]},
    }
    assert c.get("lastName") is None and c.get("unknownProp") is None
    assert c.get("secondary") is None and c._secondary == "x"
    assert c.fully_qualified_key == "u-123"
    # ldclient refuses this format outright.
    assert LD.from_dict({"key": "u-123"}).error == 'invalid data type for "kind"'


def test_old_user_format_empty_key_and_nulls():
    c = Context.from_dict({"key": "", "anonymous": None, "name": None, "custom": None,
                           "privateAttributeNames": None, "secondary": None})
    assert c.valid and c.key == "" and c.anonymous is False and c.name is None
    assert c.fully_qualified_key == ""
    assert c._eval_map() == {"user": {"kind": "user", "key": "", "anonymous": False}}
    assert list(c.custom_attributes) == [] and list(c.private_attributes) == []


@pytest.mark.parametrize("props,error", [
    ({}, 'old-style user data must have a "key"'),
    ({"key": None}, 'old-style user data must have a "key"'),
    ({"key": 5}, 'invalid data type for "key"'),
    ({"key": "k", "name": 5}, 'invalid data type for "name"'),
    ({"key": "k", "anonymous": "yes"}, 'invalid data type for "anonymous"'),
    ({"key": "k", "email": 5}, 'invalid data type for "email"'),
    ({"key": "k", "custom": []}, 'invalid data type for "custom"'),
    ({"key": "k", "privateAttributeNames": "email"}, 'invalid data type for "privateAttributeNames"'),
    ({"key": "k", "privateAttributeNames": [1]}, 'invalid data type for "privateAttributeNames"'),
    ({"key": "k", "secondary": 1}, 'invalid data type for "secondary"'),
])
def test_old_user_format_errors(props, error):
    c = Context.from_dict(props)
    assert not c.valid
    assert c.error == error


def test_old_user_format_inside_multi_is_not_special():
    # Members of a multi-context never carry "kind", so they are parsed as new-format members.
    c = Context.from_dict({"kind": "multi", "user": {"key": "u", "custom": {"a": 1}},
                           "org": {"key": "o"}})
    assert c.get_individual_context("user").get("custom") == {"a": 1}


# -- coerce ----------------------------------------------------------------------------


@DIFF
@given(context_dicts)
def test_coerce_ldclient_context(props):
    theirs = LD.from_dict(props)
    ours = coerce(theirs)
    assert isinstance(ours, Context)
    assert ours.valid == theirs.valid
    assert ours.error == theirs.error
    assert ours.to_dict() == theirs.to_dict()
    assert ours.fully_qualified_key == theirs.fully_qualified_key
    if ours.valid:
        assert_same(ours, theirs)
    assert_same(coerce(props), LD.from_dict(props))


def test_coerce_cases():
    c = Context.create("a")
    assert coerce(c) is c
    assert coerce({"kind": "org", "key": "o"}) == Context.create("o", "org")
    assert coerce({"key": "old"}).valid
    ld_empty = ldclient.ContextBuilder("")
    ld_empty._allow_empty_key(True)
    converted = coerce(ld_empty.build())
    assert converted.valid and converted.key == ""
    assert coerce(LD.create("")).error == "context key must not be None or empty"
    for bad in (None, "user-key", 5, ["a"], object()):
        res = coerce(bad)
        assert isinstance(res, Context)
        assert not res.valid and res.error
    assert coerce(None).error == "Cannot use None as a context"
    assert "str" in coerce("k").error


def test_coerce_never_raises_on_hostile_ldclient_lookalike():
    class Boom:
        valid = True

        def to_dict(self):
            raise RuntimeError("nope")

    Boom.__module__ = "ldclient.fake"
    res = coerce(Boom())
    assert not res.valid and "nope" in res.error

    class Weird:
        def to_dict(self):
            return "not a dict"

    Weird.__module__ = "ldclient.context"
    assert not coerce(Weird()).valid
    Weird.__module__ = "myapp"
    assert "Weird" in coerce(Weird()).error


# -- deliberate divergences (docs/compatibility.md) ------------------------------------


def test_non_string_keys_and_kinds_are_invalid_instead_of_raising():
    assert LD.create(None).valid  # ldclient quirk: None passes its '' check
    assert Context.create(None).error == "context key must not be None or empty"
    assert Context.create(5).error == 'invalid data type for "key"'
    with pytest.raises(TypeError):
        LD.create("k", 5)
    assert Context.create("k", 5).error == 'invalid data type for "kind"'
    assert Context.create_multi("x", Context.create("a")).error == "cannot use str as a context"
    assert Context.from_dict("k").error == "cannot use str as a context"


# -- pickling and copying --------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip(protocol):
    cases = [
        Context.from_dict({"kind": "multi", "user": {"key": "u", "a": [1], "name": "n"},
                           "org": {"key": "o:%", "_meta": {"privateAttributes": ["x"]}}}),
        Context.builder("k").anonymous(True).set("x", {"y": 2}).build(),
        Context.from_dict({"key": "", "secondary": "s"}),
        Context.create(""),
    ]
    for c in cases:
        c._eval_map()
        _ = c.fully_qualified_key
        d = pickle.loads(pickle.dumps(c, protocol=protocol))
        assert d == c and d is not c
        assert (d.valid, d.error, d.to_dict()) == (c.valid, c.error, c.to_dict())
        assert d.fully_qualified_key == c.fully_qualified_key
        assert d._eval_map() == c._eval_map()
        assert d._secondary == c._secondary
        assert copy.deepcopy(c) == c and copy.copy(c) == c
