"""Semantic versions and timestamps: our parsers against the libraries ldclient uses."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ldclient.impl.model.value_parsing import parse_semver as ld_parse_semver
from ldclient.impl.model.value_parsing import parse_time as ld_parse_time

from shmflags.evaluation.dates import is_number, parse_time
from shmflags.evaluation.semver import compare, parse_semver

VERSIONS = ["2", "2.0", "2.0.0", "2-rc", "2.0-rc", "2.0.0-rc.1", "2.0.0+build", "2.0.0-rc+b.1",
            "v2.0.0", "02.0.0", "2.0.0.0", "", "2.", "1.2-3", "2\nx", "1.0.0-01", "1.0.0-0a",
            "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta.11", "1.0.0-beta.2", "99999999999999999999.0.0",
            "1.0.0-rc.1+build.1", "1.0.0+", "1.0.0-", "１.0.0", "1.0.0-ü"]


@pytest.mark.parametrize("text", VERSIONS)
def test_semver_parse_agrees_with_ldclient(text):
    ours, theirs = parse_semver(text), ld_parse_semver(text)
    assert (ours is None) == (theirs is None)
    if ours is not None:
        assert ours.core == (theirs.major, theirs.minor, theirs.patch)
        assert ours.pre == theirs.prerelease


@pytest.mark.parametrize("a, b, expected", [
    ("2", "2.0.0", 0), ("2-rc", "2.0.0-rc", 0), ("2.0.0+build", "2.0.0", 0),
    ("2.0.0-rc", "2.0.0", -1), ("2.0.0-rc.2", "2.0.0-rc.10", -1), ("2.0.0-rc.a", "2.0.0-rc.1", 1),
    ("2.0.0-rc", "2.0.0-rc.1", -1), ("1.10.0", "1.9.0", 1), ("1.0.0-alpha", "1.0.0-alpha.1", -1),
])
def test_semver_precedence(a, b, expected):
    assert compare(parse_semver(a), parse_semver(b)) == expected
    assert compare(parse_semver(b), parse_semver(a)) == -expected


_PARTS = st.sampled_from(["0", "1", "2", "10", "01", "rc", "a", "b1", "-", "x-y"])
_VERSIONS = st.builds(lambda core, pre, build: core + pre + build,
                      st.sampled_from(["1", "1.0", "1.0.0", "1.2.3", "2.0.0", "1.2"]),
                      st.one_of(st.just(""), st.lists(_PARTS, min_size=1, max_size=3).map(lambda p: "-" + ".".join(p))),
                      st.sampled_from(["", "+b", "+b.1"]))


@settings(max_examples=400, deadline=None)
@given(_VERSIONS, _VERSIONS)
def test_semver_compare_agrees_with_ldclient(a, b):
    ours_a, ours_b = parse_semver(a), parse_semver(b)
    theirs_a, theirs_b = ld_parse_semver(a), ld_parse_semver(b)
    assert (ours_a is None) == (theirs_a is None)
    if ours_a is not None and ours_b is not None:
        sign = lambda x: (x > 0) - (x < 0)
        assert sign(compare(ours_a, ours_b)) == sign(theirs_a.compare(theirs_b))


TIMES = [1512518400000, 1512518400000.5, 0, -1, True, None, "2017-12-06T00:00:00Z",
         "2017-12-06T00:00:00z", "2017-12-06t00:00:00Z", "2017-12-06T00:00:00.123456789Z",
         "2017-12-06T07:00:00+07:00", "2017-12-06T00:00:00-00:30", "2017-12-06", "2017-12-06T00:00:00",
         "1512518400000", "", "2017-12-06 00:00:00+00:00", "2017-12-06T00:00Z", "2017-12-06T25:00:00Z",
         "2017-12-06T00:00:00Z\n", "20171206T000000Z", "2017-W49-3T00:00:00Z", [1], {"t": 1}]


@pytest.mark.parametrize("value", TIMES, ids=repr)
def test_parse_time_agrees_with_ldclient(value):
    assert parse_time(value) == ld_parse_time(value)


def test_equal_instants_parse_equal():
    assert parse_time("2017-12-06T07:00:00.000+07:00") == parse_time("2017-12-06T00:00:00Z") == 1512518400000.0


def test_is_number_excludes_bool():
    assert is_number(1) and is_number(1.5) and is_number(-0.0)
    assert not is_number(True) and not is_number("1") and not is_number(None)
