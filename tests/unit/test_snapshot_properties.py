"""Property tests: any flag/segment dicts round-trip through builder and reader, and an
incremental build always equals a fresh build of the same data."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmflags.snapshot.builder import SnapshotBuilder
from shmflags.snapshot.reader import SnapshotReader

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80),
                         st.floats(allow_nan=False), st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
keys = st.text(min_size=0, max_size=12)
items = st.dictionaries(keys, st.fixed_dictionaries(
    {"version": st.integers(-(2**63), 2**63 - 1)},
    optional={"deleted": st.booleans(), "on": st.booleans(), "extra": json_values}),
    max_size=25)

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _live(objs):
    return {k: v for k, v in objs.items() if v.get("deleted") is not True}


@SETTINGS
@given(items, items, st.integers(-(2**63), 2**63 - 1))
def test_round_trip(flags, segments, payload_version):
    data = SnapshotBuilder(use_default_compilers=False).build(
        flags, segments, payload_version=payload_version)
    r = SnapshotReader(data)
    assert r.payload_version == payload_version
    for objs, entries, find in ((flags, r.flags(), r.find_flag),
                                (segments, r.segments(), r.find_segment)):
        live = _live(objs)
        got = list(entries)
        assert [e.key for e in got] == sorted(live, key=lambda k: k.encode("utf-8",
                                                                            "surrogatepass"))
        for key, obj in live.items():
            e = find(key)
            assert e is not None and e.version == obj["version"]
            assert r.decode(e) == obj
        for key in objs:
            if key not in live:
                assert find(key) is None


@SETTINGS
@given(st.lists(items, min_size=2, max_size=4))
def test_incremental_equals_fresh(sequence):
    warm = SnapshotBuilder(use_default_compilers=False)
    for flags in sequence:
        assert warm.build(flags, {}, built_at_ms=9) == \
            SnapshotBuilder(use_default_compilers=False).build(flags, {}, built_at_ms=9)
