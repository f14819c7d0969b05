"""The in-process Client: data loading, typed variations, invalid contexts, never raising."""
from __future__ import annotations

import json

import pytest

import shmflags
from shmflags import Client, Context, EvaluationDetail, FeatureFlagsState
from shmflags.errors import DataError

DATA = {"flags": {
    "bool": {"key": "bool", "version": 1, "on": True, "variations": [True, False], "fallthrough": {"variation": 0}},
    "int": {"key": "int", "version": 1, "on": True, "variations": [3, 1], "fallthrough": {"variation": 0}},
    "float": {"key": "float", "version": 1, "on": True, "variations": [2.75, -2.75], "fallthrough": {"variation": 0}},
    "neg": {"key": "neg", "version": 1, "on": True, "variations": [2.75, -2.75], "fallthrough": {"variation": 1}},
    "str": {"key": "str", "version": 1, "on": True, "variations": ["s"], "fallthrough": {"variation": 0}},
    "json": {"key": "json", "version": 1, "on": True, "variations": [{"a": [1]}], "fallthrough": {"variation": 0}},
    "off": {"key": "off", "version": 1, "on": False, "variations": ["x"], "offVariation": None},
}, "segments": {}}
USER = {"kind": "user", "key": "u"}
WRONG = {"kind": "ERROR", "errorKind": "WRONG_TYPE"}


@pytest.fixture
def client():
    return Client.from_data(DATA)


def test_public_names():
    assert shmflags.Client is Client and shmflags.Context is Context
    assert shmflags.EvaluationDetail is EvaluationDetail and shmflags.FeatureFlagsState is FeatureFlagsState


@pytest.mark.parametrize("form", ["dict", "str", "bytes", "path", "pathstr", "yaml"])
def test_from_data_forms(tmp_path, form):
    text = json.dumps(DATA)
    if form == "dict":
        data = DATA
    elif form == "str":
        data = text
    elif form == "bytes":
        data = text.encode()
    elif form == "yaml":
        path = tmp_path / "flags.yaml"
        path.write_text("flags:\n  str: {key: str, version: 1, \"on\": true, variations: [s], fallthrough: {variation: 0}}\n")
        data = path
    else:
        path = tmp_path / "flags.json"
        path.write_text(text)
        data = path if form == "path" else str(path)
    assert Client.from_data(data).variation("str", USER, "d") == "s"


def test_from_data_flag_values_shorthand():
    client = Client.from_data({"flagValues": {"simple": "blue"}})
    assert client.variation_detail("simple", USER, "d") == EvaluationDetail("blue", 0, {"kind": "FALLTHROUGH"})


@pytest.mark.parametrize("bad", ["[1]", b"{not json", 5, "/no/such/file.json", {"flags": []}])
def test_from_data_rejects_unreadable_data(bad):
    with pytest.raises(DataError):
        Client.from_data(bad)


def test_typed_variations(client):
    assert client.bool_variation("bool", USER, False) is True
    assert client.bool_variation_detail("int", USER, False) == EvaluationDetail(False, None, WRONG)
    assert client.int_variation("int", USER, 0) == 3
    assert client.int_variation("float", USER, 0) == 2 and client.int_variation("neg", USER, 0) == -2
    assert client.int_variation_detail("bool", USER, 7) == EvaluationDetail(7, None, WRONG)  # bool is not a number
    assert client.float_variation("int", USER, 0.0) == 3.0 and isinstance(client.float_variation("int", USER, 0.0), float)
    assert client.float_variation_detail("str", USER, 1.5) == EvaluationDetail(1.5, None, WRONG)
    assert client.string_variation("str", USER, "d") == "s"
    assert client.string_variation_detail("json", USER, "d") == EvaluationDetail("d", None, WRONG)
    assert client.json_variation("json", USER, None) == {"a": [1]}
    assert client.json_variation_detail("bool", USER, None).value is True


def test_typed_variation_keeps_the_original_error_when_there_is_no_value(client):
    assert client.bool_variation_detail("missing", USER, True).reason == {"kind": "ERROR", "errorKind": "FLAG_NOT_FOUND"}
    assert client.string_variation_detail("off", USER, "d") == EvaluationDetail("d", None, {"kind": "OFF"})


@pytest.mark.parametrize("ctx", [None, 5, "user", {"kind": "user"}, {"kind": "user", "key": ""},
                                 {"kind": "multi"}, Context.create("")])
def test_invalid_context_gives_user_not_specified(client, ctx):
    detail = client.variation_detail("str", ctx, "d")
    assert detail == EvaluationDetail("d", None, {"kind": "ERROR", "errorKind": "USER_NOT_SPECIFIED"})
    state = client.all_flags_state(ctx)
    assert not state.valid and state.to_json_dict() == {"$flagsState": {}, "$valid": False}


def test_context_forms(client):
    from ldclient import Context as LDContext
    for ctx in (Context.create("u"), LDContext.create("u"), USER):
        assert client.variation("str", ctx, "d") == "s"


class _Exploding:
    def evaluate(self, key, context):
        raise RuntimeError("boom")

    def all_flags_state(self, *args):
        raise RuntimeError("boom")


def test_backend_errors_become_exception_reason():
    client = Client(_Exploding())
    assert client.variation_detail("f", USER, 1) == EvaluationDetail(1, None, {"kind": "ERROR", "errorKind": "EXCEPTION"})
    assert client.all_flags_state(USER).valid is False


def test_feature_flags_state_api(client):
    state = client.all_flags_state(USER, with_reasons=True)
    assert state.valid
    assert state.get_flag_value("str") == "s" and state.get_flag_value("off") is None
    assert state.get_flag_reason("str") == {"kind": "FALLTHROUGH"} and state.get_flag_reason("nope") is None
    assert state.to_values_map()["json"] == {"a": [1]}
    assert json.loads(state.to_json_string()) == state.to_json_dict()
    assert state.to_json_dict()["$valid"] is True
    assert state == client.all_flags_state(USER, with_reasons=True)
    assert state != client.all_flags_state(USER)
    assert client.all_flags_state(USER).get_flag_reason("str") is None


def test_recorder_receives_evaluations():
    seen = []

    class Recorder:
        def record_evaluation(self, key, context, eval_tuple, default, with_reason):
            seen.append((key, context.key, eval_tuple[:3], default, with_reason))

        def close(self):
            seen.append("closed")

    client = Client(Client.from_data(DATA).backend, recorder=Recorder())
    client.variation("str", USER, "d")
    client.variation_detail("missing", USER, "d")
    client.variation("str", {"kind": "user"}, "d")  # invalid context: no event
    client.close()
    assert seen == [("str", "u", ("s", 0, {"kind": "FALLTHROUGH"}), "d", False),
                    ("missing", "u", (None, None, {"kind": "ERROR", "errorKind": "FLAG_NOT_FOUND"}), "d", True),
                    "closed"]
