"""Config: ldclient keywords, SHMFLAGS_* environment, TOML, precedence and errors naming settings."""
from __future__ import annotations

import copy
import pickle

import pytest

from shmflags.config import SETTINGS, Config, settings_markdown
from shmflags.errors import ConfigError


def test_defaults_match_ldclient():
    cfg = Config(environ={})
    assert cfg.stream is True
    assert cfg.poll_interval == 30.0
    assert cfg.flush_interval == 5.0
    assert cfg.events_max_pending == 10000
    assert cfg.initial_reconnect_delay == 1.0
    assert cfg.context_keys_capacity == 1000
    assert cfg.send_events is True
    assert cfg.name == "default"
    assert cfg.base_uri == "https://app.launchdarkly.com"


def test_environment_variables_share_the_keyword_stem():
    env = {"SHMFLAGS_STREAM_URI": "http://relay:8030/", "SHMFLAGS_DATA_FILE": "a.yaml, b.json",
           "SHMFLAGS_PRIVATE_ATTRIBUTES": "email,/address/street",
           "SHMFLAGS_DIAGNOSTIC_OPT_OUT": "1", "SHMFLAGS_APPLICATION_ID": "svc",
           "SHMFLAGS_INITIAL_RECONNECT_DELAY": "0.5", "SHMFLAGS_SHM_MODE": "0600"}
    cfg = Config(environ=env)
    assert cfg.stream_uri == "http://relay:8030"
    assert cfg.data_file == ["a.yaml", "b.json"]
    assert cfg.private_attributes == ["email", "/address/street"]
    assert cfg.diagnostic_opt_out is True
    assert cfg.application == {"id": "svc"}
    assert cfg.initial_reconnect_delay == 0.5
    assert cfg.shm_mode == 0o600
    for setting in SETTINGS:
        assert setting.env == "SHMFLAGS_" + setting.name.upper()


def test_precedence_keyword_then_environment_then_file(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[shmflags]\nname = "from-file"\nflush_interval = 9\npoll_interval = 60\n'
                    '[shmflags.application]\nversion = "1.2"\n')
    env = {"SHMFLAGS_FLUSH_INTERVAL": "7"}
    cfg = Config(config_file=str(toml), environ=env, name="kw")
    assert cfg.name == "kw"
    assert cfg.flush_interval == 7.0
    assert cfg.poll_interval == 60.0
    assert cfg.application_version == "1.2"


def test_config_file_from_the_environment(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('name = "from-file"\nflush_interval = 9\n')
    env = {"SHMFLAGS_CONFIG": str(toml), "SHMFLAGS_FLUSH_INTERVAL": "7", "OTHER": "x"}
    cfg = Config(environ=env)
    assert (cfg.name, cfg.flush_interval) == ("from-file", 7.0)
    other = tmp_path / "d.toml"
    other.write_text('name = "keyword-file"\n')
    assert Config(config_file=str(other), environ=env).name == "keyword-file"
    assert Config(environ={"SHMFLAGS_CONFIG": ""}).name == "default"


def test_ldclient_minimums_and_offline_turns_events_off():
    cfg = Config(environ={}, poll_interval=5, diagnostic_recording_interval=1, offline=True)
    assert cfg.poll_interval == 30.0
    assert cfg.diagnostic_recording_interval == 60.0
    assert cfg.send_events is False
    assert Config(environ={}, offline=True, send_events=True).send_events is True


@pytest.mark.parametrize("kwargs,env,setting", [
    ({"stream": "perhaps"}, {}, "stream"),
    ({}, {"SHMFLAGS_STREAM": "perhaps"}, "SHMFLAGS_STREAM"),
    ({"events_max_pending": 0}, {}, "events_max_pending"),
    ({"flush_interval": -1}, {}, "flush_interval"),
    ({"name": "a/b"}, {}, "name"),
    ({"base_uri": "ftp://x"}, {}, "base_uri"),
    ({"metrics_addr": "localhost"}, {}, "metrics_addr"),
    ({"log_format": "xml"}, {}, "log_format"),
    ({"sdk_key": "bad key"}, {}, "sdk_key"),
    ({"no_such_thing": 1}, {}, "no_such_thing"),
])
def test_invalid_values_name_the_setting(kwargs, env, setting):
    with pytest.raises(ConfigError) as info:
        Config(environ=env, **kwargs)
    assert info.value.setting == setting
    assert str(info.value).startswith(setting + ":")


def test_toml_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [\n")
    with pytest.raises(ConfigError, match="config_file"):
        Config(config_file=str(bad), environ={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="colour"):
        Config(config_file=str(unknown), environ={})


def test_sdk_key_is_redacted():
    cfg = Config("sdk-1234567890abcdef", environ={})
    assert cfg.as_dict()["sdk_key"] == "…abcdef"
    assert "1234567890" not in repr(cfg)


def test_markdown_table_lists_every_setting():
    table = settings_markdown()
    for setting in SETTINGS:
        assert f"`{setting.env}`" in table
    assert "`0o640`" in table


def test_configuration_doc_carries_the_current_table():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert settings_markdown() in doc, "regenerate: python -m shmflags.config --markdown"


def test_defaults_are_read_on_demand_but_owned_per_config():
    """Config stores only what was set; a default read later is the default, and a mutable
    default belongs to its Config (appending to one Config's hooks leaves the others')."""
    a, b = Config(environ={}), Config(environ={})
    assert a._values.keys() <= {"send_events"}
    a.hooks.append("h")
    assert a.hooks == ["h"] and b.hooks == [] and Config(environ={}).hooks == []
    assert set(a.as_dict()) == {s.name for s in SETTINGS if not callable(s.default)}
    assert a.as_dict()["flush_interval"] == 5.0
    c = a.copy(flush_interval=2)
    c.hooks.append("i")
    assert c.flush_interval == 2.0 and a.flush_interval == 5.0 and a.hooks == ["h"]
    with pytest.raises(AttributeError):
        a.no_such_setting  # noqa: B018
    for twin in (pickle.loads(pickle.dumps(c)), copy.deepcopy(c), copy.copy(c)):
        assert twin.flush_interval == 2.0 and twin.hooks == ["h", "i"]
        assert twin.poll_interval == 30.0, "defaults still read on demand"


def test_only_shmflags_variables_are_read_and_unknown_ones_ignored():
    env = {"SHMFLAGS_FLUSH_INTERVAL": "3", "SHMFLAGS_NOT_A_SETTING": "x",
           "FLUSH_INTERVAL": "9", "shmflags_flush_interval": "8"}
    assert Config(environ=env).flush_interval == 3.0


@pytest.mark.parametrize("name,ok", [("a", True), ("svc-1.prod_A", True), ("a" * 64, True),
                                     ("a" * 65, False), ("", False), ("a b", False),
                                     ("abc\n", False), ("é", False), ("a/b", False)])
def test_namespace_names(name, ok):
    if ok:
        assert Config(environ={}, name=name).name == name
    else:
        with pytest.raises(ConfigError) as err:
            Config(environ={}, name=name)
        assert err.value.setting == "name"
