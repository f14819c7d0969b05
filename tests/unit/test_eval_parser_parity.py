"""The value parsers of the compiled records (``snapshot/compile.py``, used by the C evaluator)
must agree with the reference evaluator's (``evaluation/``) and with ldclient's."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from ldclient.impl.model.value_parsing import parse_semver as ld_parse_semver
from ldclient.impl.model.value_parsing import parse_time as ld_parse_time

from shmflags.evaluation.attrref import ref_for
from shmflags.evaluation.dates import parse_time
from shmflags.evaluation.semver import parse_semver
from shmflags.snapshot import compile as records

VERSION_TEXT = st.text(alphabet="0123456789.-+abrc\n", max_size=12)
TIME_TEXT = st.one_of(
    st.text(alphabet="0123456789-:TZz+. ", max_size=30),
    st.builds(lambda d, t, f, z: d + t + f + z,
              st.sampled_from(["2017-12-06", "1970-01-01", "2017-W49-3", "20171206", "2017-12-6"]),
              st.sampled_from(["T00:00:00", "T07:30", " 12:00:00", "t00:00:00", "T24:00:00", ""]),
              st.sampled_from(["", ".5", ".123456", ".123456789", ",5"]),
              st.sampled_from(["Z", "z", "+07:00", "-00:30", "+0700", "", "Z\n", "+07:00:30"])))
REF_TEXT = st.text(alphabet="ab/~01", max_size=8)


@settings(max_examples=500, deadline=None)
@given(VERSION_TEXT)
def test_semver_parsers_agree(text):
    ours, compiled, theirs = parse_semver(text), records.parse_semver(text), ld_parse_semver(text)
    assert (ours is None) == (compiled is None) == (theirs is None)
    if ours is not None:
        assert tuple(int(x) for x in compiled[:3]) == ours.core == (theirs.major, theirs.minor, theirs.patch)
        assert compiled[3] == ours.pre == theirs.prerelease


@settings(max_examples=500, deadline=None)
@given(TIME_TEXT)
def test_time_parsers_agree(text):
    assert parse_time(text) == records.parse_time(text) == ld_parse_time(text)


@settings(max_examples=300, deadline=None)
@given(REF_TEXT, st.sampled_from([None, "", "user"]))
def test_attribute_refs_agree(text, kind):
    ours, compiled = ref_for(text, kind), records.attribute_ref(text, kind)
    assert ours.valid == compiled.valid
    if ours.valid:
        assert list(ours.components) == list(compiled.components)
