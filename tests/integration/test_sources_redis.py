"""Redis daemon-mode source and write-through against a real redis-server, with ldclient as oracle.

ldclient's own Redis feature store writes the data the source must read, and an ldclient in
daemon mode (``use_ldd=True``) must read what the writer wrote.
"""
from __future__ import annotations

import json
import time
from typing import Any, Dict, Iterator

import pytest

redis = pytest.importorskip("redis")

from ldclient import Context as LDContext  # noqa: E402 - test oracle only
from ldclient.client import LDClient  # noqa: E402
from ldclient.config import Config as LDConfig  # noqa: E402
from ldclient.feature_store import CacheConfig  # noqa: E402
from ldclient.integrations import Redis as LDRedis  # noqa: E402
from ldclient.versioned_data_kind import FEATURES, SEGMENTS  # noqa: E402

from shmflags.config import Config  # noqa: E402
from shmflags.supervisor.sources.redis_source import RedisSource  # noqa: E402
from shmflags.supervisor.sources.redis_writer import RedisWriter  # noqa: E402
from shmflags.supervisor.store import Store  # noqa: E402
from tests.fakes.redis_server import RedisServer, free_port, redis_server_available  # noqa: E402
from tests.fakes.sink import RecordingSink  # noqa: E402

pytestmark = pytest.mark.skipif(not redis_server_available(), reason="redis-server not installed")


def flag(key: str, version: int = 1, value: Any = "on") -> Dict[str, Any]:
    return {"key": key, "version": version, "on": True, "variations": [value, "off"],
            "fallthrough": {"variation": 0}, "offVariation": 1, "targets": [], "rules": [],
            "prerequisites": [], "salt": key, "trackEvents": False,
            "trackEventsFallthrough": False, "debugEventsUntilDate": None, "deleted": False,
            "clientSide": False}


SEG = {"key": "s1", "version": 2, "included": ["u1"], "excluded": [], "rules": [], "salt": "s",
       "deleted": False}


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def prefix(server: RedisServer, request: pytest.FixtureRequest) -> str:
    name = "t" + str(abs(hash(request.node.name)))
    client = redis.Redis.from_url(server.url)
    for key in client.keys(name + ":*"):
        client.delete(key)
    client.close()
    return name


def cfg(url: str, prefix: str, **kw: Any) -> Config:
    return Config(use_ldd=True, redis_url=url, redis_prefix=prefix, redis_refresh_interval=0.1,
                  environ={}, **kw)


def test_daemon_reads_store_written_by_ldclient(server: RedisServer, prefix: str) -> None:
    ld_store = LDRedis.new_feature_store(url=server.url, prefix=prefix, caching=CacheConfig.disabled())
    ld_store.init({FEATURES: {"f1": flag("f1"), "f2": flag("f2", 3)}, SEGMENTS: {"s1": SEG}})
    ld_store.delete(FEATURES, "f2", 4)  # tombstone: must be dropped
    sink = RecordingSink()
    src = RedisSource(cfg(server.url, prefix), sink)
    src.start()
    try:
        assert sink.wait_count("init", 1)
        _, flags, segments = sink.of("init")[0]
        assert flags == {"f1": flag("f1")}
        assert segments == {"s1": SEG}
        assert sink.statuses()[-1] == ("VALID", None)
        # unchanged data: no second init over several refreshes
        time.sleep(0.4)
        assert src.reads >= 3 and len(sink.of("init")) == 1
        ld_store.upsert(FEATURES, flag("f1", 2, value="new"))
        assert sink.wait_count("init", 2)
        assert sink.of("init")[1][1]["f1"]["variations"][0] == "new"
    finally:
        src.stop()
    assert not src.running


def test_missing_inited_means_not_initialized(server: RedisServer, prefix: str) -> None:
    client = redis.Redis.from_url(server.url)
    client.hset(f"{prefix}:features", "f1", json.dumps(flag("f1")))
    sink = RecordingSink()
    src = RedisSource(cfg(server.url, prefix), sink)
    src.start()
    try:
        time.sleep(0.35)
        assert src.reads >= 2
        assert sink.calls == []  # no data, no status change: the store stays INITIALIZING
        client.set(f"{prefix}:$inited", "x")
        assert sink.wait_count("init", 1)
        client.delete(f"{prefix}:$inited")
        assert sink.wait_for(lambda s: s.statuses()[-1][0] == "INTERRUPTED")
        assert sink.statuses()[-1][1]["kind"] == "STORE_ERROR"
    finally:
        src.stop()
        client.close()


def test_invalid_item_is_invalid_data(server: RedisServer, prefix: str) -> None:
    client = redis.Redis.from_url(server.url)
    client.hset(f"{prefix}:features", "f1", "{nope")
    client.set(f"{prefix}:$inited", "x")
    sink = RecordingSink()
    src = RedisSource(cfg(server.url, prefix), sink)
    try:
        assert src.refresh() is False
        assert sink.statuses()[-1][1]["kind"] == "INVALID_DATA"
        assert sink.of("init") == []
    finally:
        client.close()


def test_item_the_model_refuses_is_invalid_data_and_keeps_last_data(
        server: RedisServer, prefix: str) -> None:
    """Redis items go through the same model validation as stream and poll items."""
    client = redis.Redis.from_url(server.url)
    client.hset(f"{prefix}:features", "f1", json.dumps(flag("f1")))
    client.set(f"{prefix}:$inited", "x")
    sink = RecordingSink()
    src = RedisSource(cfg(server.url, prefix), sink)
    try:
        assert src.refresh() is True
        assert sink.of("init")[0][1] == {"f1": flag("f1")}
        bad = dict(flag("f1", 2), rules=[{"clauses": "not a list"}])
        client.hset(f"{prefix}:features", "f1", json.dumps(bad))
        assert src.refresh() is False
        status = sink.statuses()[-1]
        assert status[0] == "INTERRUPTED" and status[1]["kind"] == "INVALID_DATA"
        assert "clauses" in status[1]["message"]
        assert len(sink.of("init")) == 1  # the version-1 data stays published
        client.hset(f"{prefix}:features", "f1", json.dumps(dict(flag("f1", 3), key="other")))
        assert src.refresh() is False
        assert "has key 'other'" in sink.statuses()[-1][1]["message"]
    finally:
        client.close()


def test_connection_errors_then_recovery() -> None:
    port = free_port()
    sink = RecordingSink()
    src = RedisSource(cfg(f"redis://127.0.0.1:{port}/0", "p", http_connect_timeout=0.5), sink)
    src.start()
    try:
        assert sink.wait_for(lambda s: len(s.statuses()) >= 2)
        assert all(st == "INTERRUPTED" and e["kind"] == "NETWORK_ERROR" for st, e in sink.statuses())
        with RedisServer(port) as srv:
            c = redis.Redis.from_url(srv.url)
            c.hset("p:features", "f1", json.dumps(flag("f1")))
            c.set("p:$inited", "p:$inited")
            c.close()
            assert sink.wait_count("init", 1, timeout=5)
            assert sink.statuses()[-1] == ("VALID", None)
    finally:
        src.stop()


def _ld_client(url: str, prefix: str) -> LDClient:
    store = LDRedis.new_feature_store(url=url, prefix=prefix, caching=CacheConfig.disabled())
    return LDClient(LDConfig("sdk-key", use_ldd=True, feature_store=store, send_events=False,
                             diagnostic_opt_out=True), start_wait=0)


def test_write_through_is_read_back_by_ldclient(server: RedisServer, prefix: str) -> None:
    store = Store()
    writer = RedisWriter(cfg(server.url, prefix, redis_write=True), store)
    store.add_listener(writer.on_change)
    writer.start()
    ld = _ld_client(server.url, prefix)
    try:
        ctx = LDContext.create("u1")
        store.init({"f1": flag("f1", value="a"), "f2": flag("f2")}, {"s1": SEG})
        _wait(lambda: ld.variation("f1", ctx, "default") == "a")
        assert ld.variation_detail("f1", ctx, "default").reason == {"kind": "FALLTHROUGH"}
        assert ld.variation("f2", ctx, "default") == "on"
        assert writer.full_writes == 1
        # a patch goes through WATCH/MULTI as one item write
        store.upsert("flags", flag("f1", 2, value="b"))
        _wait(lambda: ld.variation("f1", ctx, "default") == "b")
        assert writer.full_writes == 1 and writer.item_writes >= 1
        # a delete disappears for ldclient
        store.delete("flags", "f2", 5)
        _wait(lambda: ld.variation("f2", ctx, "default") == "default")
        assert ld.variation_detail("f2", ctx, "default").reason["errorKind"] == "FLAG_NOT_FOUND"
        # Redis restarted empty: $inited vanishes, the writer repopulates within an interval
        raw = redis.Redis.from_url(server.url)
        raw.delete(f"{prefix}:$inited", f"{prefix}:features", f"{prefix}:segments")
        _wait(lambda: raw.exists(f"{prefix}:$inited") == 1)
        assert json.loads(raw.hget(f"{prefix}:features", "f1"))["version"] == 2
        raw.close()
    finally:
        writer.stop()
        ld.close()


def test_writer_item_version_check(server: RedisServer, prefix: str) -> None:
    store = Store()
    writer = RedisWriter(cfg(server.url, prefix, redis_write=True), store)
    writer.write_all({"f1": flag("f1", 5)}, {})
    assert writer.write_item("flags", flag("f1", 5)) is False  # same version: skipped
    assert writer.write_item("flags", flag("f1", 6)) is True
    raw = redis.Redis.from_url(server.url)
    assert json.loads(raw.hget(f"{prefix}:features", "f1"))["version"] == 6
    assert raw.get(f"{prefix}:$inited") is not None
    raw.close()


def test_writer_retries_on_watch_conflict(server: RedisServer, prefix: str) -> None:
    writer = RedisWriter(cfg(server.url, prefix, redis_write=True), Store())
    writer.write_all({"f1": flag("f1", 1)}, {})
    other = redis.Redis.from_url(server.url)
    calls = []

    def concurrent_writer(hash_key: str, key: str) -> None:
        calls.append(key)
        if len(calls) == 1:  # another client changes the hash after our WATCH
            other.hset(hash_key, key, json.dumps(flag("f1", 2)))

    writer._before_multi = concurrent_writer
    assert writer.write_item("flags", flag("f1", 3, value="mine")) is True
    assert calls == ["f1", "f1"]  # the first EXEC failed and was retried
    assert json.loads(other.hget(f"{prefix}:features", "f1"))["variations"][0] == "mine"
    other.close()


def test_writer_mirrors_a_put_that_lowers_versions(server: RedisServer, prefix: str) -> None:
    store = Store()
    writer = RedisWriter(cfg(server.url, prefix, redis_write=True), store)
    store.add_listener(writer.on_change)
    store.init({"f1": flag("f1", 5)}, {})
    writer.sync()
    assert writer.full_writes == 1
    store.init({"f1": flag("f1", 3, value="rolled-back")}, {})  # a put may lower versions
    writer.sync()  # per item: Redis has 5 > 3, so it schedules a full rewrite
    writer.sync()
    assert writer.full_writes == 2
    raw = redis.Redis.from_url(server.url)
    assert json.loads(raw.hget(f"{prefix}:features", "f1"))["version"] == 3
    raw.close()


def test_round_trip_writer_to_daemon_source(server: RedisServer, prefix: str) -> None:
    """A shmflags supervisor in daemon mode reads what another one's writer wrote."""
    store = Store()
    writer = RedisWriter(cfg(server.url, prefix, redis_write=True), store)
    store.init({"f1": flag("f1")}, {"s1": SEG})
    writer.sync()
    sink = RecordingSink()
    src = RedisSource(cfg(server.url, prefix), sink)
    assert src.refresh() is True
    assert sink.of("init")[0][1:] == ({"f1": flag("f1")}, {"s1": SEG})


def _wait(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    assert predicate()
