"""Bucketing vectors of ld-protocol.md §3.7 and the value rules of §11.9–13."""
from __future__ import annotations

import pytest

from shmflags.evaluation.attrref import parse_literal, parse_ref
from shmflags.evaluation.bucketing import MalformedFlag, bucket


def user(**attrs):
    return {"user": dict({"kind": "user", "key": "userKeyA", "anonymous": False}, **attrs)}


@pytest.mark.parametrize("seed, key, attrs, bucket_by, expected", [
    (None, "userKeyA", {}, None, 42157), (None, "userKeyB", {}, None, 67084),
    (61, "userKeyA", {}, None, 9801), (None, "x", {"intAttr": 33333}, parse_ref("intAttr"), 54771),
    (None, "x", {"obj": {"id": "userKeyB"}}, parse_ref("/obj/id"), 67084),
])
def test_spec_vectors(seed, key, attrs, bucket_by, expected):
    value = bucket(seed, user(key=key, **attrs), None, "hashKey", "saltyA", bucket_by)
    assert int(value * 100000) == expected


@pytest.mark.parametrize("attr_value", [33.0, 33.5, True, ["a"], {"a": 1}, None])
def test_unbucketable_values_give_zero(attr_value):
    attrs = {} if attr_value is None else {"v": attr_value}
    assert bucket(None, user(**attrs), None, "hashKey", "saltyA", parse_ref("v")) == 0.0


def test_missing_context_kind_gives_minus_one():
    assert bucket(None, user(), "org", "hashKey", "saltyA", None) == -1


def test_invalid_bucket_by_is_malformed_only_when_the_kind_exists():
    with pytest.raises(MalformedFlag):
        bucket(None, user(), "user", "k", "s", parse_ref("//"))
    assert bucket(None, user(), "org", "k", "s", parse_ref("//")) == -1


def test_legacy_bucket_by_is_literal():
    ctx = user(**{"/obj/id": "userKeyB"})
    assert int(bucket(None, ctx, None, "hashKey", "saltyA", parse_literal("/obj/id")) * 100000) == 67084


def test_integer_and_string_of_it_bucket_alike():
    a = bucket(None, user(v=33333), None, "hashKey", "saltyA", parse_ref("v"))
    b = bucket(None, user(v="33333"), None, "hashKey", "saltyA", parse_ref("v"))
    assert a == b and 0 < a < 1
