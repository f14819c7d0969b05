"""Big Segments through the provider extension point, compared with ldclient and a fake store."""
from __future__ import annotations

import base64
import hashlib
import threading
import time
from typing import Any, Optional, Tuple

import pytest
from ldclient.client import LDClient
from ldclient.config import BigSegmentsConfig, Config
from ldclient.context import Context as LDContext
from ldclient.interfaces import BigSegmentStore, BigSegmentStoreMetadata, UpdateProcessor
from ldclient.versioned_data_kind import FEATURES, SEGMENTS

from shmflags import Client, Context

MEMBERSHIP = {"a": {"big.g2": True, "other.g1": False}, "b": {"big.g2": False}, "o": {"big-org.g1": True}}


def _hash(key: str) -> str:
    return base64.b64encode(hashlib.sha256(key.encode("utf-8")).digest()).decode("ascii")


class FakeStore(BigSegmentStore):
    """ldclient-side store with the same memberships, keyed by context hash."""

    def __init__(self, stale: bool = False, fail: bool = False) -> None:
        self.stale, self.fail = stale, fail

    def get_metadata(self) -> BigSegmentStoreMetadata:
        now = int(time.time() * 1000)
        return BigSegmentStoreMetadata(now - 10 ** 9 if self.stale else now)

    def get_membership(self, context_hash: str) -> Optional[dict]:
        if self.fail:
            raise RuntimeError("store down")
        for key, membership in MEMBERSHIP.items():
            if _hash(key) == context_hash:
                return membership
        return None

    def stop(self) -> None:
        pass


class Provider:
    """shmflags-side provider with the same answers and statuses."""

    def __init__(self, status: str = "HEALTHY", fail: bool = False) -> None:
        self.status, self.fail, self.calls = status, fail, []

    def get_membership(self, key: str) -> Tuple[Optional[dict], str]:
        self.calls.append(key)
        if self.fail:
            return None, "STORE_ERROR"
        return MEMBERSHIP.get(key, {}), self.status


FLAGS = {
    "uses-big": {"key": "uses-big", "version": 1, "on": True, "variations": [False, True], "fallthrough": {"variation": 0},
                 "rules": [{"id": "r", "variation": 1, "clauses": [{"attribute": "", "op": "segmentMatch", "values": ["big"]}]}]},
    "uses-both": {"key": "uses-both", "version": 1, "on": True, "variations": [False, True], "fallthrough": {"variation": 0},
                  "rules": [{"id": "r", "variation": 1, "clauses": [{"attribute": "", "op": "segmentMatch", "values": ["big-org", "big"]}]}]},
    "prereq": {"key": "prereq", "version": 1, "on": True, "variations": [False, True], "fallthrough": {"variation": 1},
               "prerequisites": [{"key": "uses-big", "variation": 1}]},
}
SEGMENTS_ = {
    "big": {"key": "big", "version": 1, "unbounded": True, "generation": 2, "included": ["b"],
            "rules": [{"clauses": [{"attribute": "plan", "op": "in", "values": ["pro"], "contextKind": "user"}]}]},
    "big-org": {"key": "big-org", "version": 1, "unbounded": True, "generation": 1, "unboundedContextKind": "org"},
}
CONTEXTS = [{"kind": "user", "key": "a"}, {"kind": "user", "key": "b"}, {"kind": "user", "key": "c", "plan": "pro"},
            {"kind": "user", "key": "c"}, {"kind": "org", "key": "o"},
            {"kind": "multi", "org": {"key": "o"}, "user": {"key": "b"}}]


class _Source(UpdateProcessor):
    def __init__(self, store: Any, ready: threading.Event) -> None:
        store.init({FEATURES: FLAGS, SEGMENTS: SEGMENTS_})
        ready.set()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def initialized(self) -> bool:
        return True


@pytest.mark.parametrize("store, provider", [
    (FakeStore(), Provider("HEALTHY")), (FakeStore(stale=True), Provider("STALE")),
    (FakeStore(fail=True), Provider(fail=True)), (None, None),
], ids=["healthy", "stale", "store-error", "not-configured"])
def test_big_segments_agree_with_ldclient(store, provider):
    config = Config("sdk-key", update_processor_class=lambda c, s, r: _Source(s, r), send_events=False,
                    diagnostic_opt_out=True, big_segments=BigSegmentsConfig(store=store) if store else None)
    ld = LDClient(config, start_wait=0)
    try:
        ours = Client.from_data({"flags": FLAGS, "segments": SEGMENTS_}, big_segments=provider)
        for ctx in CONTEXTS:
            for key in FLAGS:
                theirs = ld.variation_detail(key, LDContext.from_dict(ctx), "d")
                got = ours.variation_detail(key, ctx, "d")
                assert (got.value, got.variation_index, got.reason) == \
                       (theirs.value, theirs.variation_index, theirs.reason), (key, ctx)
    finally:
        ld.close()


def test_membership_is_queried_once_per_key_per_evaluation():
    provider = Provider()
    flags = {"f": {"key": "f", "version": 1, "on": True, "variations": [0, 1], "fallthrough": {"variation": 0},
                   "rules": [{"id": "r0", "variation": 1, "clauses": [{"attribute": "", "op": "segmentMatch", "values": ["big"]}]},
                             {"id": "r1", "variation": 1, "clauses": [{"attribute": "", "op": "segmentMatch", "values": ["big"]}]}]}}
    client = Client.from_data({"flags": flags, "segments": SEGMENTS_}, big_segments=provider)
    detail = client.variation_detail("f", Context.create("zzz"), None)
    assert detail.reason == {"kind": "FALLTHROUGH", "bigSegmentsStatus": "HEALTHY"}
    assert provider.calls == ["zzz"]
    client.variation_detail("f", Context.create("zzz"), None)
    assert provider.calls == ["zzz", "zzz"]  # nothing cached across evaluations by the evaluator
