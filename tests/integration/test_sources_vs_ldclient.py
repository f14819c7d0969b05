"""Differential: the streaming/polling sources feeding the real Store end with the same data as
ldclient's own data sources fed the same stream by the fake LaunchDarkly service."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterator

import pytest

from ldclient.client import LDClient  # test oracle only
from ldclient.config import Config as LDConfig
from ldclient.feature_store import InMemoryFeatureStore
from ldclient.interfaces import DataSourceState
from ldclient.versioned_data_kind import FEATURES, SEGMENTS

from shmflags.config import Config
from shmflags.supervisor.sources.polling import PollingSource
from shmflags.supervisor.sources.streaming import StreamingSource
from shmflags.supervisor.store import Store
from tests.fakes.fake_ld import FakeLD, sse_frame


def flag(key: str, version: int, value: Any = True) -> Dict[str, Any]:
    return {"key": key, "version": version, "on": True, "variations": [value, False],
            "fallthrough": {"variation": 0}, "offVariation": 1}


def seg(key: str, version: int) -> Dict[str, Any]:
    return {"key": key, "version": version, "included": [], "excluded": [], "rules": []}


@pytest.fixture
def fake() -> Iterator[FakeLD]:
    with FakeLD(heartbeat_interval=0.2) as f:
        f.set_data({"a": flag("a", 5), "b": flag("b", 1)}, {"s": seg("s", 2)})
        yield f


def ld_client(fake: FakeLD, store: InMemoryFeatureStore, stream: bool = True) -> LDClient:
    cfg = LDConfig("sdk-key", stream_uri=fake.url, base_uri=fake.url, events_uri=fake.url,
                   stream=stream, send_events=False, diagnostic_opt_out=True,
                   initial_reconnect_delay=0.05, feature_store=store)
    return LDClient(cfg, start_wait=5)


def live(store: InMemoryFeatureStore) -> Dict[str, Dict[str, Any]]:
    """ldclient's store as plain JSON dicts (it holds model objects over the original JSON)."""
    def plain(kind: Any) -> Dict[str, Any]:
        return {k: (v.to_json_dict() if hasattr(v, "to_json_dict") else v)
                for k, v in store.all(kind, lambda x: x).items()}
    return {"flags": plain(FEATURES), "segments": plain(SEGMENTS)}


def ours(store: Store) -> Dict[str, Dict[str, Any]]:
    _, flags, segments = store.data()
    return {"flags": flags, "segments": segments}


def wait(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_same_data_after_the_same_stream(fake: FakeLD) -> None:
    store = Store()
    src = StreamingSource(Config("sdk-key", stream_uri=fake.url, initial_reconnect_delay=0.05,
                                 environ={}), store)
    src.start()
    ld_store = InMemoryFeatureStore()
    ld = ld_client(fake, ld_store)
    try:
        assert ld.is_initialized()
        assert wait(lambda: store.status()["state"] == "VALID")
        assert fake.wait_for_streams(2)
        events = [
            ("patch", {"path": "/flags/a", "data": flag("a", 6, "x")}),    # newer: applied
            ("patch", {"path": "/flags/a", "data": flag("a", 4, "old")}),  # older: ignored
            ("patch", {"path": "/flags/c", "data": flag("c", 1)}),         # new flag
            ("delete", {"path": "/flags/b", "version": 2}),                # tombstone
            ("patch", {"path": "/flags/b", "data": flag("b", 2)}),         # not newer than it
            ("delete", {"path": "/segments/s", "version": 1}),             # older: ignored
            ("patch", {"path": "/segments/t", "data": seg("t", 9)}),
            ("patch", {"path": "/unknown/z", "data": {"key": "z", "version": 1}}),
            ("whatever", {"x": 1}),
        ]
        for name, body in events:
            fake.push_raw(sse_frame(name, body))
        assert wait(lambda: live(ld_store) == ours(store) and "t" in ours(store)["segments"])
        want = live(ld_store)
        assert want["flags"]["a"]["version"] == 6 and "b" not in want["flags"]
        # malformed data: both drop the connection, reconnect and get the fake's put again
        fake.push_raw(sse_frame("patch", "{broken"))
        assert wait(lambda: len(fake.requests_to("/all")) >= 4)
        assert wait(lambda: live(ld_store) == ours(store))
        assert ours(store) == {"flags": {"a": flag("a", 5), "b": flag("b", 1)},
                               "segments": {"s": seg("s", 2)}}
    finally:
        src.stop()
        ld.close()


def test_same_data_by_polling(fake: FakeLD) -> None:
    store = Store()
    src = PollingSource(Config("sdk-key", base_uri=fake.url, stream=False, environ={}), store,
                        _interval=0.1)
    src.start()
    ld_store = InMemoryFeatureStore()
    ld = ld_client(fake, ld_store, stream=False)
    try:
        assert ld.is_initialized()
        assert wait(lambda: live(ld_store) == ours(store))
    finally:
        src.stop()
        ld.close()


def test_status_before_first_success_and_after(fake: FakeLD) -> None:
    """As ldclient: errors before the first put leave INITIALIZING; later ones INTERRUPTED."""
    fake.respond_with(503, path="/all", times=2)
    store = Store()
    src = StreamingSource(Config("sdk-key", stream_uri=fake.url, initial_reconnect_delay=0.2,
                                 environ={}), store)
    src.start()
    try:
        assert wait(lambda: store.last_error is not None)
        assert store.status()["state"] == "INITIALIZING"
        assert store.last_error["statusCode"] == 503
        assert wait(lambda: store.status()["state"] == "VALID")
        fake.respond_with(503, path="/all", times=1)
        fake.disconnect_streams()
        assert wait(lambda: store.status()["state"] == "INTERRUPTED")
        assert wait(lambda: store.status()["state"] == "VALID")
    finally:
        src.stop()


def test_401_status_ours_off_ldclient_keeps_retrying(fake: FakeLD) -> None:
    """A documented divergence: ldclient 9.20 retries a 401 in its extended regime."""
    fake.respond_with(401, path="/all")
    store = Store()
    src = StreamingSource(Config("sdk-key", stream_uri=fake.url, environ={}), store)
    src.start()
    ld = LDClient(LDConfig("sdk-key", stream_uri=fake.url, base_uri=fake.url,
                           events_uri=fake.url, send_events=False, diagnostic_opt_out=True),
                  start_wait=0)
    try:
        assert wait(lambda: store.status()["state"] == "OFF")
        assert wait(lambda: ld.data_source_status_provider.status.error is not None)
        ld_state = ld.data_source_status_provider.status.state
        assert ld_state in (DataSourceState.INITIALIZING, DataSourceState.OFF)
        assert ld.data_source_status_provider.status.error.status_code == 401
    finally:
        src.stop()
        ld.close()
