"""Big Segments against a real redis-server: the supervisor's mirror publishes the store into
shared memory, workers evaluate through ``ShmBigSegments`` on both backends, and every
evaluation detail equals ldclient's configured with ``BigSegmentsConfig(store=
Redis.new_big_segment_store(...))`` on the same flags, segments and contexts: included,
excluded, both, absent, other kinds, fresh / stale / missing sync time, store down, not
configured, and a membership change."""
from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

import pytest

from tests.fakes.redis_server import RedisServer, redis_server_available

pytestmark = pytest.mark.skipif(not redis_server_available(), reason="no redis-server")

redis = pytest.importorskip("redis")

from shmflags import Client, Context  # noqa: E402
from shmflags.config import Config  # noqa: E402
from shmflags.integrations import bigsegments as bs  # noqa: E402
from shmflags.supervisor import bigsegments as mirror_mod  # noqa: E402

PREFIX = "bstest"


def _seg(key: str, generation: Optional[int], **kw: Any) -> Dict[str, Any]:
    seg = {"key": key, "version": 1, "unbounded": True, "salt": key, "included": [],
           "excluded": [], "rules": []}
    if generation is not None:
        seg["generation"] = generation
    seg.update(kw)
    return seg


SEGMENTS = {
    "big1": _seg("big1", 2),
    # ignored for a big segment (only rules are consulted when the store says nothing)
    "big2": _seg("big2", 1, included=["absent"], rules=[{"id": "r", "clauses": [
        {"attribute": "email", "op": "endsWith", "values": ["@corp.example"]}]}]),
    "big-org": _seg("big-org", 7, unboundedContextKind="org"),
    "big-nogen": _seg("big-nogen", None),
    "small": {"key": "small", "version": 1, "salt": "s", "included": ["inc"], "excluded": [],
              "rules": []},
}


def _flag(key: str, segs: List[str], **kw: Any) -> Dict[str, Any]:
    flag = {"key": key, "version": 1, "on": True, "salt": key, "variations": [False, True],
            "offVariation": 0, "fallthrough": {"variation": 0},
            "rules": [{"id": f"{key}-r", "variation": 1, "clauses": [
                {"attribute": "", "op": "segmentMatch", "values": segs}]}]}
    flag.update(kw)
    return flag


FLAGS = {
    "f-big1": _flag("f-big1", ["big1"]),
    "f-big2": _flag("f-big2", ["big2"]),
    "f-either": _flag("f-either", ["big1", "big2"]),
    "f-org": _flag("f-org", ["big-org"]),
    "f-nogen": _flag("f-nogen", ["big-nogen"]),
    "f-small": _flag("f-small", ["small"]),
    "f-prereq": {"key": "f-prereq", "version": 1, "on": True, "salt": "p",
                 "variations": ["no", "yes"], "offVariation": 0,
                 "fallthrough": {"variation": 1},
                 "prerequisites": [{"key": "f-big1", "variation": 1}]},
    "f-plain": {"key": "f-plain", "version": 1, "on": True, "salt": "x",
                "variations": ["a"], "fallthrough": {"variation": 0}},
}

CONTEXTS = [
    Context.create("inc"),
    Context.create("exc"),
    Context.builder("exc-mail").set("email", "e@corp.example").build(),
    Context.create("both"),
    Context.create("absent"),
    Context.builder("absent-mail").set("email", "a@corp.example").build(),
    Context.create("in-big2"),
    Context.create("acme", "org"),
    Context.create("inc", "org"),
    Context.create_multi(Context.create("inc"), Context.create("acme", "org")),
    Context.create("ünïcode-ключ"),
]


def _hash(key: str) -> str:
    return base64.b64encode(hashlib.sha256(key.encode("utf-8")).digest()).decode("ascii")


def populate(r: Any, synced_ms: Optional[int]) -> None:
    r.flushdb()
    inc, exc = f"{PREFIX}:big_segment_include:", f"{PREFIX}:big_segment_exclude:"
    r.sadd(inc + _hash("inc"), "big1.g2", "big2.g1")
    r.sadd(exc + _hash("exc"), "big1.g2", "big2.g1")
    r.sadd(exc + _hash("exc-mail"), "big1.g2")
    r.sadd(inc + _hash("both"), "big1.g2")
    r.sadd(exc + _hash("both"), "big1.g2", "big2.g1")
    r.sadd(inc + _hash("in-big2"), "big2.g1", "big1.g1")     # big1.g1: an old generation
    r.sadd(inc + _hash("acme"), "big-org.g7")
    r.sadd(inc + _hash("ünïcode-ключ"), "big1.g2")
    r.sadd(f"{PREFIX}:big_segment_include:not-base64!", "big1.g2")   # ignored by both
    r.set(f"{PREFIX}:unrelated", "x")
    if synced_ms is not None:
        r.set(f"{PREFIX}:big_segments_synchronized_on", str(synced_ms))


# -- ldclient oracle -----------------------------------------------------------------------

def ld_client(url: Optional[str], stale_after: float = 120.0) -> Any:
    from ldclient.client import LDClient
    from ldclient.config import BigSegmentsConfig
    from ldclient.config import Config as LDConfig
    from ldclient.integrations import Redis
    from ldclient.interfaces import UpdateProcessor
    from ldclient.versioned_data_kind import FEATURES, SEGMENTS as LD_SEGMENTS

    class Stub(UpdateProcessor):
        def __init__(self, config: Any, store: Any, ready: threading.Event) -> None:
            store.init({FEATURES: FLAGS, LD_SEGMENTS: SEGMENTS})
            self._ready = ready

        def start(self) -> None:
            self._ready.set()

        def stop(self) -> None:
            pass

        def initialized(self) -> bool:
            return True

        def is_alive(self) -> bool:
            return True

    logging.getLogger("ldclient").setLevel(logging.CRITICAL)
    big = None
    if url is not None:
        big = BigSegmentsConfig(store=Redis.new_big_segment_store(url=url, prefix=PREFIX),
                                stale_after=stale_after, status_poll_interval=60)
    kwargs = {"big_segments": big} if big is not None else {}
    return LDClient(LDConfig("sdk-key", update_processor_class=Stub, send_events=False,
                             diagnostic_opt_out=True, **kwargs), start_wait=1)


def ld_details(url: Optional[str], stale_after: float = 120.0) -> Dict[tuple, tuple]:
    from ldclient.context import Context as LDContext
    client = ld_client(url, stale_after)
    try:
        out = {}
        for i, ctx in enumerate(CONTEXTS):
            ld_ctx = LDContext.from_dict(ctx.to_dict())
            for key in FLAGS:
                d = client.variation_detail(key, ld_ctx, "default")
                out[(i, key)] = (d.value, d.variation_index, d.reason)
            out[(i, "all_flags_state")] = client.all_flags_state(
                ld_ctx, with_reasons=True).to_json_dict()
        status = client.big_segment_store_status_provider.status
        out["status"] = (status.available, status.stale)
        return out
    finally:
        client.close()


# -- shmflags side -------------------------------------------------------------------------

def our_clients(name: str) -> List[Client]:
    """One client per backend, each with the worker's Big Segments provider."""
    from shmflags.backend import Snapshot
    from shmflags.snapshot.builder import SnapshotBuilder
    clients = [Client.from_data({"flags": FLAGS, "segments": SEGMENTS},
                                big_segments=bs.ShmBigSegments(name))]
    data = SnapshotBuilder().build(FLAGS, SEGMENTS)
    clients.append(Client(Snapshot(data, big_segments=bs.ShmBigSegments(name))))
    try:
        from shmflags import _pure
        clients.append(Client(_pure.Snapshot(data, big_segments=bs.ShmBigSegments(name))))
    except ImportError:  # pragma: no cover
        pass
    return clients


def our_details(name: str) -> List[Dict[Any, tuple]]:
    results = []
    for client in our_clients(name):
        out = {}
        for i, ctx in enumerate(CONTEXTS):
            for key in FLAGS:
                d = client.variation_detail(key, ctx, "default")
                out[(i, key)] = (d.value, d.variation_index, d.reason)
            out[(i, "all_flags_state")] = client.all_flags_state(
                ctx, with_reasons=True).to_json_dict()
        out["status"] = bs.ShmBigSegments(name).status()
        results.append(out)
    return results


@pytest.fixture(scope="module")
def server():
    with RedisServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def no_scan_backoff(monkeypatch):
    """Tests poll back to back; the mirror would otherwise wait 4x a scan's duration."""
    monkeypatch.setattr(mirror_mod, "SCAN_BACKOFF_FACTOR", 0.0)


@pytest.fixture
def name():
    ns = "bst" + uuid.uuid4().hex[:10]
    yield ns
    mirror_mod.cleanup(ns)


def make_mirror(name: str, url: str, stale_after: float = 120.0, **kw: Any):
    config = Config(name=name, big_segments_redis_url=url, big_segments_redis_prefix=PREFIX,
                    big_segments_stale_after=stale_after, big_segments_context_cache_time=0.0,
                    generation_grace=0.5, **kw)
    return mirror_mod.BigSegmentsMirror(config)


def assert_same(name: str, url: Optional[str], stale_after: float = 120.0,
                expect_status: Optional[str] = None) -> None:
    expected = ld_details(url, stale_after)
    for got in our_details(name):
        diffs = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
        assert not diffs, diffs
    if expect_status is not None:
        reasons = [v[2] for k, v in expected.items()
                   if k != "status" and k[1] != "all_flags_state"]
        assert {r.get("bigSegmentsStatus") for r in reasons} >= {expect_status}


def test_healthy_matches_ldclient(server, name):
    r = redis.Redis.from_url(server.url)
    populate(r, int(time.time() * 1000))
    mirror = make_mirror(name, server.url)
    try:
        assert mirror.poll_once() == "HEALTHY"
        assert mirror.contexts == 7            # the non-base64 key is skipped
        assert_same(name, server.url, expect_status="HEALTHY")
    finally:
        mirror.stop()


def test_stale_and_missing_sync_time(server, name):
    r = redis.Redis.from_url(server.url)
    populate(r, int(time.time() * 1000) - 200_000)
    mirror = make_mirror(name, server.url, stale_after=120.0)
    try:
        assert mirror.poll_once() == "STALE"
        assert_same(name, server.url, 120.0, expect_status="STALE")
        r.delete(f"{PREFIX}:big_segments_synchronized_on")
        assert mirror.poll_once() == "STALE"
        assert_same(name, server.url, 120.0, expect_status="STALE")
    finally:
        mirror.stop()


def test_store_down_then_back(name):
    with RedisServer() as srv:
        r = redis.Redis.from_url(srv.url)
        populate(r, int(time.time() * 1000))
        mirror = make_mirror(name, srv.url)
        try:
            assert mirror.poll_once() == "HEALTHY"
            srv.stop()
            assert mirror.poll_once() == "STORE_ERROR"
            assert_same(name, srv.url, expect_status="STORE_ERROR")
            srv.start()
            r = redis.Redis.from_url(srv.url)
            populate(r, int(time.time() * 1000))
            assert mirror.poll_once() == "HEALTHY"
            assert_same(name, srv.url, expect_status="HEALTHY")
        finally:
            mirror.stop()


def test_not_configured(name):
    mirror_mod.disable(name)
    assert_same(name, None, expect_status="NOT_CONFIGURED")


def test_membership_change_is_picked_up(server, name):
    r = redis.Redis.from_url(server.url)
    populate(r, int(time.time() * 1000) - 1000)
    mirror = make_mirror(name, server.url)
    worker = bs.ShmBigSegments(name)
    try:
        mirror.poll_once()
        gen = worker.info()["generation"]
        assert worker.get_membership("absent") == (None, "HEALTHY")
        mirror.poll_once()                          # nothing changed: same object
        assert worker.info()["generation"] == gen
        r.sadd(f"{PREFIX}:big_segment_include:{_hash('absent')}", "big1.g2")
        r.srem(f"{PREFIX}:big_segment_include:{_hash('inc')}", "big1.g2")
        r.set(f"{PREFIX}:big_segments_synchronized_on", str(int(time.time() * 1000)))
        mirror.poll_once()
        assert worker.info()["generation"] == gen + 1
        assert worker.get_membership("absent") == ({"big1.g2": True}, "HEALTHY")
        assert worker.get_membership("inc") == ({"big2.g1": True}, "HEALTHY")
        assert_same(name, server.url)
        time.sleep(0.6)                              # generation_grace
        mirror.poll_once()
        assert mirror_mod.list_objects(name) == (True, [gen + 1])
    finally:
        mirror.stop()


def test_context_cache_size_bounds_the_worker_memo(server, name):
    """big_segments_context_cache_size bounds each worker's memo; answers stay right."""
    r = redis.Redis.from_url(server.url)
    populate(r, int(time.time() * 1000))
    mirror = make_mirror(name, server.url)
    worker = bs.ShmBigSegments(name, cache_size=2)
    try:
        mirror.poll_once()
        for key in ["inc", "absent", "other", "inc", "x", "inc"]:
            expected = {"big1.g2": True, "big2.g1": True} if key == "inc" else None
            assert worker.get_membership(key) == (expected, "HEALTHY")
            assert 1 <= len(worker._cache) <= 2
    finally:
        mirror.stop()
    from shmflags.client.source import ShmSource
    from shmflags.config import Config
    source = ShmSource(Config(name=name, big_segments_context_cache_size=7, environ={}))
    try:
        assert source.big_segments.cache_size == 7
    finally:
        source.close()
    with pytest.raises(ValueError):
        bs.ShmBigSegments(name, cache_size=0)


def test_supervisor_gone_reads_stale(server, name, monkeypatch):
    r = redis.Redis.from_url(server.url)
    populate(r, int(time.time() * 1000))
    mirror = make_mirror(name, server.url)
    worker = bs.ShmBigSegments(name)
    mirror.poll_once()
    mirror.stop()
    assert worker.get_membership("inc")[1] == "HEALTHY"
    monkeypatch.setattr(bs, "LIVENESS_SLACK_MS", -16_000)   # 3 polls + slack already passed
    assert worker.get_membership("inc") == ({"big1.g2": True, "big2.g1": True}, "STALE")
    assert worker.status() == (True, True)


def test_mirror_thread_and_takeover(server, name):
    """The mirror's own thread polls; a second mirror (a restarted supervisor) takes the
    control block over and publishes a higher generation."""
    r = redis.Redis.from_url(server.url)
    populate(r, int(time.time() * 1000))
    worker = bs.ShmBigSegments(name)
    first = make_mirror(name, server.url, big_segments_status_poll_interval=0.1)
    first.start()
    deadline = time.monotonic() + 10
    while worker.info()["status"] != "HEALTHY" and time.monotonic() < deadline:
        time.sleep(0.02)
    first.stop()
    gen = worker.info()["generation"]
    assert gen >= 1
    second = make_mirror(name, server.url)
    try:
        r.set(f"{PREFIX}:big_segments_synchronized_on", str(int(time.time() * 1000)))
        second.writer.checksum = None                # force a publish of the same data
        assert second.poll_once() == "HEALTHY"
        assert worker.info()["generation"] > gen
        assert worker.get_membership("acme") == ({"big-org.g7": True}, "HEALTHY")
    finally:
        second.stop()


def test_corrupt_object_is_rejected(server, name, caplog):
    r = redis.Redis.from_url(server.url)
    populate(r, int(time.time() * 1000))
    mirror = make_mirror(name, server.url)
    try:
        mirror.poll_once()
        worker = bs.ShmBigSegments(name)
        assert worker.get_membership("inc")[0] == {"big1.g2": True, "big2.g1": True}
        bad = bytearray(mirror_mod.build_table({bs.context_hash("inc"): ({"x.g1"}, ())}))
        bad[-1] ^= 0xFF                              # checksum no longer matches
        mirror.writer.publish(bad)
        with caplog.at_level(logging.ERROR):
            assert worker.get_membership("inc")[0] == {"big1.g2": True, "big2.g1": True}
        assert "rejected" in caplog.text
        fresh = bs.ShmBigSegments(name)               # nothing valid to fall back to
        assert fresh.get_membership("inc") == (None, "STORE_ERROR")
    finally:
        mirror.stop()


# -- a real supervisor process, a worker reading through ShmSource -------------------------

def test_real_supervisor_end_to_end(tmp_path):
    import json
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from supervisor_harness import Harness, wait_for

    from shmflags.client.source import ShmSource

    flags_file = tmp_path / "flags.json"
    flags_file.write_text(json.dumps({"flags": FLAGS, "segments": SEGMENTS}))
    h = Harness(tmp_path)
    with RedisServer() as srv:
        r = redis.Redis.from_url(srv.url)
        populate(r, int(time.time() * 1000))
        try:
            h.start(env={"SHMFLAGS_DATA_FILE": str(flags_file),
                         "SHMFLAGS_BIG_SEGMENTS_REDIS_URL": srv.url,
                         "SHMFLAGS_BIG_SEGMENTS_REDIS_PREFIX": PREFIX,
                         "SHMFLAGS_BIG_SEGMENTS_STATUS_POLL_INTERVAL": "0.2",
                         "SHMFLAGS_BIG_SEGMENTS_CONTEXT_CACHE_TIME": "0"})
            source = ShmSource(Config(name=h.name))
            status = bs.StatusProvider(source.big_segments)
            wait_for(lambda: source.current() is not None
                     and status.status.available, 15, 0.05)
            client = Client(source.current())
            expected = ld_details(srv.url)
            for i, ctx in enumerate(CONTEXTS):
                for key in FLAGS:
                    d = client.variation_detail(key, ctx, "default")
                    assert (d.value, d.variation_index, d.reason) == expected[(i, key)], (i, key)
            assert (status.status.available, status.status.stale) == expected["status"]
            report = h.status()
            assert report["big_segments"]["status"] == "HEALTHY"
            assert report["big_segments"]["available"] is True

            seen: List[Any] = []
            status.add_listener(seen.append)
            # Relay finishes a sync: the worker sees it without reopening its snapshot.
            r.sadd(f"{PREFIX}:big_segment_include:{_hash('absent')}", "big1.g2")
            r.set(f"{PREFIX}:big_segments_synchronized_on", str(int(time.time() * 1000)))
            wait_for(lambda: client.variation("f-big1", Context.create("absent"), None), 10,
                     0.05)
            srv.stop()
            wait_for(lambda: client.variation_detail("f-big1", Context.create("inc"), None)
                     .reason.get("bigSegmentsStatus") == "STORE_ERROR", 10, 0.05)
            status.poll()
            assert seen and seen[-1].available is False
            wait_for(lambda: h.status()["big_segments"]["status"] == "STORE_ERROR", 10, 0.1)
        finally:
            h.close()
            mirror_mod.cleanup(h.name)
    assert mirror_mod.list_objects(h.name) == (False, [])


def test_pipeline_fallback_when_scripts_are_refused(server, name):
    r = redis.Redis.from_url(server.url)
    populate(r, int(time.time() * 1000))
    mirror = make_mirror(name, server.url)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise redis.exceptions.ResponseError("NOPERM this user has no permissions to run "
                                             "the 'evalsha' command")

    mirror.store._script = refuse
    try:
        assert mirror.poll_once() == "HEALTHY"
        assert mirror.store._script is None
        assert mirror.contexts == 7
        assert_same(name, server.url, expect_status="HEALTHY")
    finally:
        mirror.stop()


def test_table_round_trip_property():
    """Random memberships: every context reads back as ldclient's Redis store would build
    it (excludes false, includes true, include wins), absent ones as None; bytes are
    deterministic."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    refs = st.sampled_from(["a.g1", "b.g2", "c.g3", "ü.g4", "long-segment-key.g123456"])
    memberships = st.dictionaries(st.text(max_size=12),
                                  st.tuples(st.frozensets(refs), st.frozensets(refs)),
                                  max_size=60)

    @hypothesis.settings(max_examples=150, deadline=None)
    @hypothesis.given(memberships, st.lists(st.text(max_size=12), max_size=10))
    def check(by_key: Dict[str, Any], others: List[str]) -> None:
        members = {bs.context_hash(k): v for k, v in by_key.items()}
        raw = mirror_mod.build_table(members, built_ms=1)
        assert raw == mirror_mod.build_table(dict(reversed(list(members.items()))),
                                             built_ms=1)
        table = bs.BigSegmentsTable(bytes(raw))
        for key, (inc, exc) in by_key.items():
            expect: Optional[Dict[str, bool]] = {r: False for r in exc}
            expect.update({r: True for r in inc})
            assert table.membership(bs.context_hash(key)) == (expect or None)
        for key in others:
            if key not in by_key:
                assert table.membership(bs.context_hash(key)) is None

    check()


def test_damaged_objects_are_refused():
    raw = bytes(mirror_mod.build_table({bs.context_hash("k"): ({"a.g1"}, set())}))
    bs.BigSegmentsTable(raw)
    for cut in (0, 50, bs.HEADER_SIZE, len(raw) - 8):
        with pytest.raises(ValueError):
            bs.BigSegmentsTable(raw[:cut])
    for offset in (0, 8, 16, 56, 72, 88, len(raw) - 1):
        bad = bytearray(raw)
        bad[offset] ^= 0x5A
        with pytest.raises(ValueError):
            bs.BigSegmentsTable(bytes(bad))


def test_sighup_turns_the_mirror_on_and_off(tmp_path):
    import json
    import signal
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from supervisor_harness import Harness, wait_for

    flags_file = tmp_path / "flags.json"
    flags_file.write_text(json.dumps({"flags": FLAGS, "segments": SEGMENTS}))
    config = tmp_path / "shmflags.toml"
    config.write_text(f'data_file = ["{flags_file}"]\n')
    h = Harness(tmp_path)
    worker = bs.ShmBigSegments(h.name)
    with RedisServer() as srv:
        populate(redis.Redis.from_url(srv.url), int(time.time() * 1000))
        try:
            sup = h.start("--config", str(config))
            wait_for(lambda: h.flag_value("f-plain") == "a", 10)
            assert worker.get_membership("inc") == (None, "NOT_CONFIGURED")
            config.write_text(f'data_file = ["{flags_file}"]\n'
                              f'big_segments_redis_url = "{srv.url}"\n'
                              f'big_segments_redis_prefix = "{PREFIX}"\n'
                              'big_segments_status_poll_interval = 0.2\n')
            sup.signal(signal.SIGHUP)
            wait_for(lambda: worker.get_membership("inc")[1] == "HEALTHY", 10, 0.05)
            assert worker.get_membership("inc")[0] == {"big1.g2": True, "big2.g1": True}
            wait_for(lambda: h.status()["big_segments"]["status"] == "HEALTHY", 10, 0.1)
            assert "takes effect on restart" not in sup.log()
            config.write_text(f'data_file = ["{flags_file}"]\n')
            sup.signal(signal.SIGHUP)
            wait_for(lambda: worker.get_membership("inc") == (None, "NOT_CONFIGURED"), 10, 0.05)
            assert mirror_mod.list_objects(h.name) == (False, [])
            assert h.status()["big_segments"]["status"] == "NOT_CONFIGURED"
            assert sup.proc.poll() is None
        finally:
            h.close()
            mirror_mod.cleanup(h.name)


def test_worker_follows_a_recreated_namespace(server, name):
    """cleanup + a new supervisor: generation numbers restart, the worker must not keep the
    old object because the new one has the same number."""
    r = redis.Redis.from_url(server.url)
    populate(r, int(time.time() * 1000))
    first = make_mirror(name, server.url)
    first.poll_once()
    first.stop()
    worker = bs.ShmBigSegments(name)
    assert worker.get_membership("inc")[0] == {"big1.g2": True, "big2.g1": True}
    assert worker.info()["generation"] == 1
    mirror_mod.cleanup(name)
    r.delete(f"{PREFIX}:big_segment_include:{_hash('inc')}")
    second = make_mirror(name, server.url)
    try:
        second.poll_once()
        assert second.writer.generation == 1
        worker._suspect = True                       # what the liveness check would set
        worker._next_open = 0.0
        assert worker.get_membership("inc") == (None, "HEALTHY")
    finally:
        second.stop()


def test_provider_survives_fork(server, name):
    import multiprocessing
    r = redis.Redis.from_url(server.url)
    populate(r, int(time.time() * 1000))
    mirror = make_mirror(name, server.url)
    try:
        mirror.poll_once()
        worker = bs.ShmBigSegments(name)
        assert worker.get_membership("inc")[1] == "HEALTHY"      # mapped before fork
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()

        def child() -> None:
            queue.put((worker.get_membership("inc"), worker.get_membership("exc"),
                       worker.status()))

        proc = ctx.Process(target=child)
        proc.start()
        got = queue.get(timeout=20)
        proc.join(20)
        assert proc.exitcode == 0
        assert got == (({"big1.g2": True, "big2.g1": True}, "HEALTHY"),
                       ({"big1.g2": False, "big2.g1": False}, "HEALTHY"), (True, False))
    finally:
        mirror.stop()


def test_lookups_during_continuous_republishing(server, name):
    """A worker process looks up while the mirror keeps publishing alternating memberships
    (and unlinking the superseded objects): every answer is one of the two published ones."""
    import multiprocessing
    r = redis.Redis.from_url(server.url)
    populate(r, int(time.time() * 1000))
    mirror = make_mirror(name, server.url)
    key = f"{PREFIX}:big_segment_include:{_hash('flip')}"
    r.sadd(key, "big1.g2")
    mirror.poll_once()
    valid = [{"big1.g2": True}, {"big2.g1": True}]
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    queue = ctx.Queue()

    def reader() -> None:
        worker = bs.ShmBigSegments(name)
        seen, bad, gens = 0, [], set()
        while not stop.is_set():
            membership, status = worker.get_membership("flip")
            worker._cache.clear()                   # look at the table every time
            gens.add(worker.info()["generation"])
            if membership not in valid or status != "HEALTHY":
                bad.append((membership, status))
            seen += 1
        queue.put((seen, bad[:5], len(gens)))

    proc = ctx.Process(target=reader)
    proc.start()
    try:
        deadline = time.monotonic() + 2.0
        flips = 0
        while time.monotonic() < deadline:
            r.delete(key)
            r.sadd(key, "big2.g1" if flips % 2 == 0 else "big1.g2")
            r.set(f"{PREFIX}:big_segments_synchronized_on", str(int(time.time() * 1000)))
            mirror.poll_once()
            flips += 1
        stop.set()
        seen, bad, generations = queue.get(timeout=20)
        proc.join(20)
        time.sleep(0.6)                                   # generation_grace
        mirror.poll_once()
        assert mirror_mod.list_objects(name)[1] == [mirror.writer.generation]
    finally:
        stop.set()
        if proc.is_alive():
            proc.kill()
        mirror.stop()
    assert bad == []
    assert seen > 100 and flips > 5 and generations > 2
