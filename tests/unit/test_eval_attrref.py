"""Attribute reference parsing (ld-protocol.md §3.5), checked against ldclient's parser."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ldclient.impl.model.attribute_ref import AttributeRef

from shmflags.evaluation.attrref import parse_literal, parse_ref, ref_for


@pytest.mark.parametrize("raw, components", [
    ("name", ("name",)), ("/name", ("name",)), ("/a/b", ("a", "b")), ("/a~1b", ("a/b",)),
    ("/a~0b", ("a~b",)), ("/~01", ("~1",)), ("/~10", ("/0",)), ("a/b", ("a/b",)),
    ("a~b", ("a~b",)), ("/kind", ("kind",)), ("/0/1", ("0", "1")),
])
def test_valid_references(raw, components):
    ref = parse_ref(raw)
    assert ref.valid and ref.error is None
    assert ref.components == components
    assert ref.depth == len(components)


@pytest.mark.parametrize("raw", ["", "/", "//", "/a/", "/a//b", "/a~", "/a~2", "/~x", "/a~~1"])
def test_invalid_references(raw):
    ref = parse_ref(raw)
    assert not ref.valid and ref.error
    assert ref.components == () and ref.depth == 0 and not ref.is_kind


def test_literal_names_keep_slashes_and_tildes():
    assert parse_literal("/attr/a").components == ("/attr/a",)
    assert parse_literal("a~").components == ("a~",)
    assert not parse_literal("").valid


def test_context_kind_selects_the_syntax():
    assert ref_for("/a/b", None).components == ("/a/b",)
    assert ref_for("/a/b", "").components == ("/a/b",)
    assert ref_for("/a/b", "user").components == ("a", "b")


@pytest.mark.parametrize("raw, expected", [("kind", True), ("/kind", True), ("kind", True),
                                           ("/kind/x", False), ("Kind", False), ("key", False)])
def test_is_kind(raw, expected):
    assert parse_ref(raw).is_kind is expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab/~01x", max_size=8), st.booleans())
def test_matches_ldclient_parser(raw, with_kind):
    ours = ref_for(raw, "user" if with_kind else None)
    theirs = AttributeRef.from_path(raw) if with_kind else AttributeRef.from_literal(raw)
    assert ours.valid == theirs.valid
    if ours.valid:
        assert list(ours.components) == [theirs[i] for i in range(theirs.depth)]
