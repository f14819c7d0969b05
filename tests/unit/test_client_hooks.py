"""HookRunner: series order, data threading, errors swallowed, ldclient hooks accepted."""
from __future__ import annotations

import logging
from typing import Any, List, Tuple

import pytest
from ldclient.hook import Hook as LDHook
from ldclient.hook import Metadata as LDMetadata

from shmflags.client.hooks import EvaluationSeriesContext, Hook, HookRunner, Metadata, is_hook


class Recorder(Hook):
    def __init__(self, name: str, log: List[Tuple[Any, ...]]) -> None:
        self.name = name
        self.log = log

    @property
    def metadata(self) -> Metadata:
        return Metadata(name=self.name)

    def before_evaluation(self, series_context: EvaluationSeriesContext, data: dict) -> dict:
        self.log.append(("before", self.name, series_context.key, series_context.method, data))
        return {**data, "from": self.name}

    def after_evaluation(self, series_context: EvaluationSeriesContext, data: dict,
                         detail: Any) -> dict:
        self.log.append(("after", self.name, data, detail))
        return data


def test_order_and_series_data() -> None:
    log: List[Tuple[Any, ...]] = []
    runner = HookRunner([Recorder("one", log), Recorder("two", log)])
    result = runner.run("flag", "ctx", False, "variation",
                        lambda: (log.append(("eval",)) or "DETAIL", "RESULT"))
    assert result == "RESULT"
    assert log == [("before", "one", "flag", "variation", {}),
                   ("before", "two", "flag", "variation", {}),
                   ("eval",),
                   ("after", "two", {"from": "two"}, "DETAIL"),
                   ("after", "one", {"from": "one"}, "DETAIL")]


class Broken(Hook):
    @property
    def metadata(self) -> Metadata:
        return Metadata(name="broken")

    def before_evaluation(self, series_context: EvaluationSeriesContext, data: dict) -> dict:
        raise ValueError("before failed")

    def after_evaluation(self, series_context: EvaluationSeriesContext, data: dict,
                         detail: Any) -> dict:
        assert data == {}, "a failed before stage hands {} to after"
        raise ValueError("after failed")


def test_raising_hook_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    log: List[Tuple[Any, ...]] = []
    runner = HookRunner([Broken(), Recorder("ok", log)])
    with caplog.at_level(logging.ERROR):
        assert runner.run("k", None, 1, "variation_detail", lambda: ("D", 42)) == 42
    messages = [r.getMessage() for r in caplog.records]
    assert any("broken" in m and "before_evaluation" in m for m in messages)
    assert any("broken" in m and "after_evaluation" in m for m in messages)
    assert [entry[0] for entry in log] == ["before", "after"]


class LDStyle(LDHook):
    def __init__(self) -> None:
        self.calls: List[str] = []

    @property
    def metadata(self) -> LDMetadata:
        return LDMetadata(name="ld")

    def before_evaluation(self, series_context: Any, data: dict) -> dict:
        self.calls.append(f"before:{series_context.key}:{series_context.default_value}")
        return data

    def after_evaluation(self, series_context: Any, data: dict, detail: Any) -> dict:
        self.calls.append(f"after:{detail}")
        return data


def test_ldclient_hook_objects_are_accepted() -> None:
    hook = LDStyle()
    runner = HookRunner()
    assert runner.add(hook) and is_hook(hook)
    assert not runner.add(object())
    runner.run("k", None, "dflt", "variation", lambda: ("D", None))
    assert hook.calls == ["before:k:dflt", "after:D"]


def test_no_hooks_calls_evaluate_directly() -> None:
    assert HookRunner().run("k", None, 0, "variation", lambda: ("detail", "value")) == "value"


def test_plugins_contribute_hooks_and_are_registered() -> None:
    import shmflags
    from ldclient.plugin import Plugin, PluginMetadata

    log: List[Tuple[Any, ...]] = []

    class P(Plugin):
        @property
        def metadata(self) -> PluginMetadata:
            return PluginMetadata(name="p")

        def register(self, client: Any, metadata: Any) -> None:
            log.append(("register", type(client).__name__, metadata.sdk.name,
                        metadata.application.id, metadata.sdk_key))

        def get_hooks(self, metadata: Any) -> list:
            return [Recorder("from-plugin", log)]

    class Broken(Plugin):
        @property
        def metadata(self) -> PluginMetadata:
            return PluginMetadata(name="broken")

        def register(self, client: Any, metadata: Any) -> None:
            raise RuntimeError("nope")

        def get_hooks(self, metadata: Any) -> list:
            raise RuntimeError("nope")

    td = shmflags.TestData()
    td.update(td.flag("f"))
    client = shmflags.Client.from_test_data(td, config=shmflags.Config(
        plugins=[Broken(), P()], application={"id": "app"}, sdk_key="sdk-x",
        send_events=False, environ={}))
    assert log == [("register", "Client", "shmflags", "app", "sdk-x")]
    client.variation("f", shmflags.Context.create("u"), False)
    assert [entry[:2] for entry in log[1:]] == [("before", "from-plugin"),
                                                ("after", "from-plugin")]
