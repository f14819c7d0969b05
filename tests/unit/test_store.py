"""The supervisor store: LD version rules, tombstones, status transitions and listeners."""
from __future__ import annotations

from shmflags.supervisor.store import Store


def flag(key, version, **extra):
    return {"key": key, "version": version, **extra}


def test_init_replaces_everything_and_may_lower_versions():
    store = Store()
    store.init({"a": flag("a", 5)}, {"s": flag("s", 2)})
    store.init({"a": flag("a", 1), "b": flag("b", 1)}, {})
    _, flags, segments = store.data()
    assert flags == {"a": flag("a", 1), "b": flag("b", 1)}
    assert segments == {}
    assert store.initialized


def test_upsert_applies_only_newer_versions():
    store = Store()
    store.init({"a": flag("a", 5, on=True)}, {})
    store.upsert("flags", flag("a", 5, on=False))
    store.upsert("flags", flag("a", 4, on=False))
    assert store.get("flags", "a")["on"] is True
    store.upsert("flags", flag("a", 6, on=False))
    assert store.get("flags", "a")["on"] is False
    store.upsert("flags", flag("new", 1))  # never-seen key is applied
    assert store.get("flags", "new") == flag("new", 1)


def test_delete_tombstone_blocks_older_patches_and_newer_resurrects():
    store = Store()
    store.init({"a": flag("a", 3)}, {"s": flag("s", 1)})
    store.delete("flags", "a", 3)  # not newer: ignored
    assert store.get("flags", "a") is not None
    store.delete("flags", "a", 4)
    assert store.get("flags", "a") is None
    _, flags, _ = store.data()
    assert "a" not in flags
    store.upsert("flags", flag("a", 4))  # same version as the tombstone: ignored
    assert store.get("flags", "a") is None
    store.upsert("flags", flag("a", 5))
    assert store.get("flags", "a") == flag("a", 5)
    store.delete("segments", "never-seen", 1)
    store.upsert("segments", flag("never-seen", 1))
    assert store.get("segments", "never-seen") is None


def test_revision_and_changed_event_only_on_applied_changes():
    store = Store()
    store.init({"a": flag("a", 2)}, {})
    rev = store.revision
    store.changed.clear()
    store.upsert("flags", flag("a", 1))
    assert store.revision == rev and not store.changed.is_set()
    store.upsert("flags", flag("a", 3))
    assert store.revision == rev + 1 and store.changed.is_set()


def test_listeners_get_changed_keys():
    store = Store()
    seen = []
    store.add_listener(lambda kind, key: seen.append((kind, key)))
    store.init({"a": flag("a", 1), "b": flag("b", 1)}, {})
    assert seen == [("flags", "a"), ("flags", "b")]
    seen.clear()
    store.init({"a": flag("a", 1), "b": flag("b", 2), "c": flag("c", 1)}, {"s": flag("s", 1)})
    assert seen == [("flags", "b"), ("flags", "c"), ("segments", "s")]
    seen.clear()
    store.upsert("flags", flag("a", 1))
    store.delete("flags", "a", 9)
    assert seen == [("flags", "a")]


def test_failing_listener_does_not_break_store():
    store = Store()
    store.add_listener(lambda kind, key: 1 / 0)
    store.upsert("flags", flag("a", 1))
    assert store.get("flags", "a") == flag("a", 1)


def test_status_interrupted_before_first_success_stays_initializing():
    store = Store()
    store.set_status("INTERRUPTED", {"kind": "NETWORK_ERROR", "message": "boom"})
    status = store.status()
    assert status["state"] == "INITIALIZING"
    assert status["last_error"]["message"] == "boom"
    assert isinstance(status["last_error"]["time"], int)
    store.set_status("VALID")
    since = store.status()["state_since"]
    store.set_status("VALID")
    assert store.status()["state_since"] == since
    store.set_status("INTERRUPTED", {"kind": "INVALID_DATA", "message": "bad"})
    assert store.status()["state"] == "INTERRUPTED"


def test_source_is_cache_until_live_data():
    store = Store()
    store.set_source("file")
    store.init({"a": flag("a", 1)}, {}, from_cache=True)
    assert store.status()["source"] == "cache" and store.status()["from_cache"]
    store.init({"a": flag("a", 1)}, {})
    assert store.status()["source"] == "file" and not store.status()["from_cache"]
    store.init({}, {}, from_cache=True)
    store.upsert("flags", flag("z", 1))
    assert store.status()["source"] == "file"


def test_data_changes_hands_out_dicts_the_store_never_mutates_again():
    """Copy on write: the publisher builds from the store's own dicts (no 10,000-item copy on
    the patch path); a later change, or unshare(), copies first, so what was handed out keeps
    the data of its revision."""
    store = Store()
    store.init({"a": {"key": "a", "version": 1}}, {"s": {"key": "s", "version": 1}})
    rev, flags, segments, changed = store.data_changes()
    assert changed is None and store.shared
    before_f, before_s = dict(flags), dict(segments)
    store.upsert("flags", {"key": "b", "version": 1})
    store.delete("flags", "a", 2)
    store.upsert("segments", {"key": "t", "version": 1})
    assert flags == before_f and segments == before_s
    rev2, flags2, segments2, changed = store.data_changes()
    assert rev2 == rev + 3 and set(flags2) == {"b"} and set(segments2) == {"s", "t"}
    assert changed == ({"a", "b"}, {"t"})
    store.unshare()
    assert not store.shared
    store.upsert("flags", {"key": "c", "version": 1})
    assert set(flags2) == {"b"}
    assert set(store.data()[1]) == {"b", "c"}
