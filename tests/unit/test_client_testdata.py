"""TestData builds the same flag JSON as ldclient's TestData for the same builder calls."""
from __future__ import annotations

from typing import Any, Callable, List

import pytest
from ldclient.integrations.test_data import TestData as LDTestData

from shmflags.testing import TestData

Steps = Callable[[Any], None]

SCENARIOS: List[Steps] = [
    lambda td: td.update(td.flag("f")),
    lambda td: td.update(td.flag("f").variation_for_all(False)),
    lambda td: td.update(td.flag("f").on(False)),
    lambda td: td.update(td.flag("f").value_for_all({"a": [1, 2]})),
    lambda td: td.update(td.flag("f").variations("red", "green", "blue")
                         .fallthrough_variation(2).off_variation(0)),
    lambda td: td.update(td.flag("f").variations("red", "green")
                         .variation_for_user("bob", 1).variation_for_user("al", 1)
                         .variation_for_user("bob", 0)),
    lambda td: td.update(td.flag("f").variation_for_key("org", "acme", True)
                         .variation_for_user("u1", False)),
    lambda td: td.update(td.flag("f").variations("a", "b").variation_for_user("u", True)),
    lambda td: td.update(td.flag("f").if_match("country", "gb", "fr").and_not_match("plan", "free")
                         .then_return(False)
                         .if_not_match_context("org", "tier", "gold").then_return(True)),
    lambda td: td.update(td.flag("f").variations(1, 2, 3).if_match("x", 1).then_return(2)
                         .clear_rules().if_match_context("device", "os", "ios").then_return(0)),
    # versions increase and builders are copied from the last update
    lambda td: (td.update(td.flag("f").variation_for_user("u", False)),
                td.update(td.flag("f").if_match("k", "v").then_return(False)),
                td.update(td.flag("g").value_for_all("x")),
                td.update(td.flag("f").clear_targets())),
    # a builder changed after update does not change the stored flag
    lambda td: _mutate_after_update(td),
]


def _mutate_after_update(td: Any) -> None:
    builder = td.flag("f").variation_for_user("u", False)
    td.update(builder)
    builder.variation_for_user("v", False)
    td.update(td.flag("h"))


def _ld_flags(td: LDTestData) -> dict:
    return td._make_init_data()[next(iter(td._make_init_data()))]


@pytest.mark.parametrize("index", range(len(SCENARIOS)))
def test_same_flag_json_as_ldclient(index: int) -> None:
    ours, theirs = TestData.data_source(), LDTestData.data_source()
    SCENARIOS[index](ours)
    SCENARIOS[index](theirs)
    assert ours.data()["flags"] == _ld_flags(theirs)
    assert ours.data()["flags"]  # the scenario really produced something


def test_update_pushes_copies_to_subscribers() -> None:
    td = TestData()
    td.update(td.flag("a"))
    seen: list = []
    initial = td.subscribe(lambda kind, item: seen.append((kind, item)))
    assert list(initial["flags"]) == ["a"] and initial["flags"]["a"]["version"] == 1
    td.update(td.flag("a").variation_for_all(False))
    assert seen[0][0] == "flags" and seen[0][1]["version"] == 2
    seen[0][1]["on"] = "mutated"
    assert td.data()["flags"]["a"]["on"] is True


def test_update_raw_bumps_version_and_supports_segments() -> None:
    td = TestData()
    td.update_raw("segments", {"key": "s", "version": 1, "included": ["u"]})
    td.update_raw("segments", {"key": "s", "version": 1, "included": ["v"]})
    seg = td.data()["segments"]["s"]
    assert seg["version"] == 2 and seg["included"] == ["v"]
    with pytest.raises(ValueError):
        td.update_raw("widgets", {"key": "x"})


class _Sink:
    def __init__(self) -> None:
        self.calls: list = []

    def init(self, flags: dict, segments: dict) -> None:
        self.calls.append(("init", sorted(flags), sorted(segments)))

    def upsert(self, kind: str, item: dict) -> None:
        self.calls.append(("upsert", kind, item["key"], item["version"]))

    def set_status(self, state: str, error: Any = None) -> None:
        self.calls.append(("status", state))


def test_supervisor_source_contract() -> None:
    td = TestData()
    td.update(td.flag("a"))
    sink = _Sink()
    source = td(None, sink)
    assert source.name == "testdata"
    source.start()
    td.update(td.flag("b"))
    source.stop()
    td.update(td.flag("c"))
    assert sink.calls == [("init", ["a"], []), ("status", "VALID"), ("upsert", "flags", "b", 1)]
