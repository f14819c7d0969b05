"""ShmflagsProvider through the OpenFeature SDK's own client API, compared with
LaunchDarkly's OpenFeature provider over ldclient on the same flags (when installed)."""
from __future__ import annotations

import datetime
import threading
import time
from typing import Any, Dict, List

import pytest

pytest.importorskip("openfeature")

from openfeature import api  # noqa: E402
from openfeature.evaluation_context import EvaluationContext  # noqa: E402
from openfeature.event import ProviderEvent  # noqa: E402
from openfeature.exception import ErrorCode  # noqa: E402
from openfeature.flag_evaluation import Reason  # noqa: E402
from openfeature.provider import ProviderStatus  # noqa: E402
from openfeature.track import TrackingEventDetails  # noqa: E402

from shmflags import Client  # noqa: E402
from shmflags.client.status import (DataSourceErrorInfo, DataSourceErrorKind,  # noqa: E402
                                    DataSourceState, DataSourceStatus)
from shmflags.evaluation import EvaluationDetail  # noqa: E402
from shmflags.openfeature import ShmflagsProvider, to_ld_context  # noqa: E402


def _flag(key: str, variations: List[Any], **kw: Any) -> Dict[str, Any]:
    base = {"key": key, "version": 1, "on": True, "salt": key, "variations": variations,
            "fallthrough": {"variation": 0}, "offVariation": 1 if len(variations) > 1 else 0}
    base.update(kw)
    return base


FLAGS = {
    "bool": _flag("bool", [True, False]),
    "bool-off": _flag("bool-off", [True, False], on=False),
    "bool-off-null": _flag("bool-off-null", [True, False], on=False, offVariation=None),
    "targeted": _flag("targeted", ["a", "b"], targets=[{"values": ["alice"], "variation": 1}],
                      contextTargets=[{"contextKind": "user", "values": [], "variation": 1},
                                      {"contextKind": "org", "values": ["acme"], "variation": 1}]),
    "ruled": _flag("ruled", ["x", "y", "z"], rules=[
        {"id": "r-pro", "variation": 2, "clauses": [
            {"attribute": "plan", "op": "in", "values": ["pro"], "contextKind": "user"}]},
        {"id": "r-joined", "variation": 1, "clauses": [
            {"attribute": "joined", "op": "before", "values": ["2020-01-01T00:00:00Z"]}]},
        {"id": "r-org", "variation": 1, "clauses": [
            {"attribute": "name", "op": "startsWith", "values": ["Acme"],
             "contextKind": "org"}]},
    ]),
    "prereq": _flag("prereq", ["on", "off"], prerequisites=[{"key": "bool-off",
                                                             "variation": 0}]),
    "int": _flag("int", [3, 4.75, -2.5]),
    "int-trunc": _flag("int-trunc", [4.75, 3]),
    "float": _flag("float", [2.5, 1]),
    "float-int": _flag("float-int", [7, 1]),
    "string": _flag("string", ["hello", "bye"]),
    "object": _flag("object", [{"a": [1, 2], "b": None}, {}]),
    "array": _flag("array", [[1, "two"], []]),
    "experiment": _flag("experiment", ["e0", "e1"], trackEventsFallthrough=True,
                        fallthrough={"rollout": {"kind": "experiment", "variations": [
                            {"variation": 1, "weight": 100000}]}}),
    "malformed": _flag("malformed", ["m"], fallthrough={"variation": 5}),
    "anon-rule": _flag("anon-rule", ["named", "anon"], rules=[
        {"id": "r-anon", "variation": 1, "clauses": [
            {"attribute": "anonymous", "op": "in", "values": [True]}]}]),
}

CONTEXTS = [
    EvaluationContext("u1"),
    EvaluationContext("alice"),
    EvaluationContext("bob", {"plan": "pro"}),
    EvaluationContext("carol", {"joined": datetime.datetime(2019, 5, 1, 12, 0)}),
    EvaluationContext("dora", {"joined": datetime.datetime(
        2019, 5, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))}),
    EvaluationContext(None, {"key": "from-key-attr", "plan": "pro"}),
    EvaluationContext("acme", {"kind": "org", "name": "Acme Inc"}),
    EvaluationContext(None, {"kind": "multi",
                             "user": {"targetingKey": "u9", "plan": "pro"},
                             "org": {"key": "acme", "name": "Acme Inc"}}),
    EvaluationContext("anon", {"anonymous": True, "name": "Anon",
                               "privateAttributes": ["plan"], "plan": "free"}),
    EvaluationContext(None, {}),                         # no key: TARGETING_KEY_MISSING
    EvaluationContext("", {"name": "x"}),                # empty key
    EvaluationContext("k", {"kind": "user!"}),           # invalid kind
    EvaluationContext("k", {"kind": 7}),                 # non-string kind → user
]

CALLS = [
    ("get_boolean_details", "bool", False), ("get_boolean_details", "bool-off", True),
    ("get_boolean_details", "bool-off-null", True), ("get_boolean_details", "missing", True),
    ("get_boolean_details", "string", False), ("get_string_details", "targeted", "dflt"),
    ("get_string_details", "ruled", "dflt"), ("get_string_details", "prereq", "dflt"),
    ("get_string_details", "experiment", "dflt"), ("get_string_details", "malformed", "d"),
    ("get_string_details", "anon-rule", "d"), ("get_string_details", "int", "d"),
    ("get_integer_details", "int", 0), ("get_integer_details", "int-trunc", 0),
    ("get_integer_details", "bool", 0), ("get_float_details", "float", 0.0),
    ("get_float_details", "float-int", 0.0), ("get_float_details", "string", 0.0),
    ("get_object_details", "object", {}), ("get_object_details", "array", []),
    ("get_object_details", "string", {"d": 1}),
]


def _shape(details: Any) -> tuple:
    return (details.flag_key, details.value, type(details.value).__name__, details.variant,
            details.reason, details.error_code, details.error_message,
            dict(details.flag_metadata))


@pytest.fixture
def of_client():
    api.set_provider(ShmflagsProvider(Client.from_data({"flags": FLAGS})), domain="shmflags")
    yield api.get_client("shmflags")
    api.clear_providers()


def test_metadata_and_import_path():
    import shmflags.integrations.openfeature as integ
    assert ShmflagsProvider is integ.ShmflagsProvider
    assert ShmflagsProvider(Client.from_data({"flags": {}})).get_metadata().name == "shmflags"


def test_reasons_variants_metadata(of_client):
    ctx = EvaluationContext("bob", {"plan": "pro"})
    d = of_client.get_string_details("ruled", "dflt", ctx)
    assert (d.value, d.variant, d.reason, d.error_code) == ("z", "2", "RULE_MATCH", None)
    assert d.flag_metadata == {"variationIndex": 2, "ruleIndex": 0, "ruleId": "r-pro"}
    d = of_client.get_boolean_details("bool-off", True, ctx)
    assert (d.value, d.variant, d.reason) == (False, "1", Reason.DISABLED)
    d = of_client.get_string_details("targeted", "dflt", EvaluationContext("alice"))
    assert (d.value, d.reason) == ("b", Reason.TARGETING_MATCH)
    d = of_client.get_boolean_details("bool", False, ctx)
    assert (d.value, d.variant, d.reason) == (True, "0", "FALLTHROUGH")
    d = of_client.get_string_details("prereq", "dflt", ctx)
    assert d.reason == "PREREQUISITE_FAILED" and d.flag_metadata["prerequisiteKey"] == "bool-off"
    d = of_client.get_string_details("experiment", "dflt", ctx)
    assert d.flag_metadata == {"variationIndex": 1, "inExperiment": True}


def test_errors(of_client):
    ctx = EvaluationContext("u1")
    d = of_client.get_boolean_details("missing", True, ctx)
    assert (d.value, d.reason, d.error_code, d.variant) == (True, Reason.ERROR,
                                                            ErrorCode.FLAG_NOT_FOUND, None)
    d = of_client.get_boolean_details("string", False, ctx)
    assert (d.value, d.reason, d.error_code) == (False, Reason.ERROR, ErrorCode.TYPE_MISMATCH)
    d = of_client.get_string_details("malformed", "d", ctx)
    assert (d.value, d.error_code) == ("d", ErrorCode.PARSE_ERROR)
    d = of_client.get_boolean_details("bool", False, EvaluationContext(None, {"plan": "x"}))
    assert (d.value, d.error_code) == (False, ErrorCode.TARGETING_KEY_MISSING)
    d = of_client.get_integer_details("int-trunc", 0, ctx)
    assert (d.value, d.variant, d.error_code) == (4, "0", None)


def test_provider_not_ready_and_general():
    class NotReady:
        def variation_detail(self, key, context, default):
            return EvaluationDetail(default, None, {"kind": "ERROR",
                                                    "errorKind": "CLIENT_NOT_READY"})

        def is_initialized(self):
            return False

    class Broken(NotReady):
        def variation_detail(self, key, context, default):
            return EvaluationDetail(default, None, {"kind": "ERROR", "errorKind": "EXCEPTION"})

    provider = ShmflagsProvider(NotReady(), start_wait=0.0)
    d = provider.resolve_boolean_details("f", True, EvaluationContext("u"))
    assert (d.value, d.reason, d.error_code) == (True, Reason.ERROR, ErrorCode.PROVIDER_NOT_READY)
    d = ShmflagsProvider(Broken()).resolve_string_details("f", "x", EvaluationContext("u"))
    assert (d.value, d.error_code) == ("x", ErrorCode.GENERAL)
    d = provider.resolve_boolean_details("f", True, None)
    assert d.error_code == ErrorCode.TARGETING_KEY_MISSING
    api.set_provider(provider, domain="not-ready")
    try:
        assert api.get_client("not-ready").get_provider_status() == ProviderStatus.ERROR
    finally:
        api.clear_providers()


def test_context_mapping():
    ctx = to_ld_context(EvaluationContext(None, {
        "kind": "multi",
        "user": {"targetingKey": "u1", "name": "Ann", "anonymous": True,
                 "privateAttributes": ["email", 3], "email": "a@b.c",
                 "when": datetime.datetime(2024, 1, 2, 3, 4, 5)},
        "org": {"key": "o1", "tags": ["a", {"b": 1}]},
        "junk": "not a dict"}))
    assert ctx.valid and ctx.multiple
    user, org = ctx.get_individual_context("user"), ctx.get_individual_context("org")
    assert (user.key, user.name, user.anonymous) == ("u1", "Ann", True)
    assert list(user.private_attributes) == ["email"]
    assert user.get("when") == "2024-01-02T03:04:05Z"
    assert (org.key, org.get("tags")) == ("o1", ["a", {"b": 1}])
    single = to_ld_context(EvaluationContext("tk", {"key": "other", "kind": "device",
                                                    "name": 5, "anonymous": "yes"}))
    assert (single.kind, single.key, single.name, single.anonymous) == ("device", "tk", None,
                                                                        False)
    assert not to_ld_context(EvaluationContext(None, {})).valid


class _RecordingClient:
    def __init__(self):
        self.calls: List[tuple] = []
        self.listeners: Dict[str, Any] = {}
        client = self

        class _Status:
            status = DataSourceStatus(DataSourceState.INITIALIZING, 0.0, None)

            def add_listener(self, fn):
                client.listeners["status"] = fn

            def remove_listener(self, fn):
                client.listeners.pop("status", None)

        class _Tracker:
            def add_listener(self, fn):
                client.listeners["flags"] = fn

            def remove_listener(self, fn):
                client.listeners.pop("flags", None)

        self.data_source_status_provider = _Status()
        self.flag_tracker = _Tracker()
        self.ready = True

    def is_initialized(self):
        return self.ready

    def track(self, *args):
        self.calls.append(args)

    def variation_detail(self, key, context, default):
        return EvaluationDetail(True, 0, {"kind": "FALLTHROUGH"})


def test_track():
    fake = _RecordingClient()
    api.set_provider(ShmflagsProvider(fake), domain="track")
    try:
        client = api.get_client("track")
        ctx = EvaluationContext("u1", {"plan": "pro"})
        client.track("plain", ctx)
        client.track("with-value", ctx, TrackingEventDetails(value=9.5, attributes={"a": 1}))
        client.track("with-data", ctx, TrackingEventDetails(attributes={"a": 2}))
        client.track("empty-details", ctx, TrackingEventDetails())
        client.track("no-key")       # passed on: the client drops an invalid context
        ShmflagsProvider(fake).track("no-context", None)   # never reaches the client
    finally:
        api.clear_providers()
    got = [(c[0], c[1].key, c[1].get("plan")) + tuple(c[2:]) for c in fake.calls]
    assert got == [("plain", "u1", "pro"), ("with-value", "u1", "pro", {"a": 1}, 9.5),
                   ("with-data", "u1", "pro", {"a": 2}), ("empty-details", "u1", "pro"),
                   ("no-key", "", None)]
    assert not fake.calls[-1][1].valid


def test_provider_events():
    fake = _RecordingClient()
    seen: List[tuple] = []

    def handler(details):
        seen.append((details.provider_event_type if hasattr(details, "provider_event_type")
                     else None, details.flags_changed, details.message, details.error_code))

    api.set_provider(ShmflagsProvider(fake), domain="events")
    try:
        client = api.get_client("events")
        assert client.get_provider_status() == ProviderStatus.READY
        for event in (ProviderEvent.PROVIDER_READY, ProviderEvent.PROVIDER_STALE,
                      ProviderEvent.PROVIDER_ERROR, ProviderEvent.PROVIDER_CONFIGURATION_CHANGED):
            client.add_handler(event, handler)
        deadline = time.monotonic() + 5      # READY runs at once for a ready provider
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(seen) == 1
        seen.clear()
        on_status, on_flag = fake.listeners["status"], fake.listeners["flags"]
        err = DataSourceErrorInfo(DataSourceErrorKind.ERROR_RESPONSE, 401, 0.0, "HTTP 401")
        on_status(DataSourceStatus(DataSourceState.INTERRUPTED, 1.0, None))
        on_status(DataSourceStatus(DataSourceState.INTERRUPTED, 2.0, None))   # no repeat
        assert client.get_provider_status() == ProviderStatus.STALE
        on_status(DataSourceStatus(DataSourceState.VALID, 3.0, None))
        assert client.get_provider_status() == ProviderStatus.READY
        on_status(DataSourceStatus(DataSourceState.OFF, 4.0, err))
        assert client.get_provider_status() == ProviderStatus.ERROR
        on_flag(type("Change", (), {"key": "bool"})())
        deadline = time.monotonic() + 5      # the SDK runs handlers on a thread pool
        while len(seen) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        api.clear_providers()
    assert sorted([s[1:] for s in seen], key=repr) == sorted([
        (None, "the data source is interrupted", None),
        (None, None, None),
        (None, "HTTP 401", ErrorCode.GENERAL),
        (["bool"], None, None),
    ], key=repr)
    assert "status" not in fake.listeners and "flags" not in fake.listeners  # shutdown


def test_initialize_waits_for_data():
    fake = _RecordingClient()
    fake.ready = False
    threading.Timer(0.2, lambda: setattr(fake, "ready", True)).start()
    provider = ShmflagsProvider(fake, start_wait=3.0)
    provider.initialize(EvaluationContext())
    assert fake.ready and "status" in fake.listeners
    provider.shutdown()


# -- the same answers as LaunchDarkly's provider over ldclient ------------------------------

@pytest.fixture(scope="module")
def ld_of_client():
    ld_openfeature = pytest.importorskip("ld_openfeature")
    from ldclient.config import Config
    from ldclient.interfaces import UpdateProcessor
    from ldclient.versioned_data_kind import FEATURES, SEGMENTS

    class Stub(UpdateProcessor):
        def __init__(self, config, store, ready):
            store.init({FEATURES: FLAGS, SEGMENTS: {}})
            self._ready = ready

        def start(self):
            self._ready.set()

        def stop(self):
            pass

        def initialized(self):
            return True

        def is_alive(self):
            return True

    import logging
    logging.getLogger("ldclient").setLevel(logging.CRITICAL)
    provider = ld_openfeature.LaunchDarklyProvider(
        Config("sdk-key", update_processor_class=Stub, send_events=False,
               diagnostic_opt_out=True), start_wait=1)
    yield provider


@pytest.mark.parametrize("ctx_index", range(len(CONTEXTS)))
def test_same_details_as_launchdarkly_provider(ld_of_client, ctx_index):
    api.set_provider(ld_of_client, domain="ld")
    api.set_provider(ShmflagsProvider(Client.from_data({"flags": FLAGS})), domain="ours")
    try:
        ld, ours = api.get_client("ld"), api.get_client("ours")
        ctx = CONTEXTS[ctx_index]
        for method, key, default in CALLS:
            expect = getattr(ld, method)(key, default, ctx)
            got = getattr(ours, method)(key, default, ctx)
            assert _shape(got) == _shape(expect), (method, key, ctx)
    finally:
        api.clear_providers()


def test_example_runs():
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "examples" / "openfeature_example.py")],
                         capture_output=True, text=True, timeout=60, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "True 1 RULE_MATCH {'variationIndex': 1, " \
                                         "'ruleIndex': 0, 'ruleId': 'pro-plan'}"


def test_standard_reasons_option():
    provider = ShmflagsProvider(Client.from_data({"flags": FLAGS}), standard_reasons=True)
    ctx = EvaluationContext("bob", {"plan": "pro"})
    d = provider.resolve_string_details("ruled", "dflt", ctx)
    assert (d.value, d.reason, d.flag_metadata["ruleId"]) == ("z", Reason.TARGETING_MATCH, "r-pro")
    assert provider.resolve_boolean_details("bool", False, ctx).reason == "FALLTHROUGH"
    assert provider.resolve_boolean_details("bool-off", True, ctx).reason == Reason.DISABLED
