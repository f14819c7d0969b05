"""One configuration for the supervisor, the worker client and the CLI.

Safe in any process. Every keyword of ``ldclient.Config`` is accepted with the same name and
meaning, plus shmflags' own settings. Values come from, in order of precedence: keyword
arguments, ``SHMFLAGS_*`` environment variables (``SHMFLAGS_`` + the keyword in upper case;
nested options flatten with an underscore: ``SHMFLAGS_APPLICATION_ID``,
``SHMFLAGS_HTTP_CONNECT_TIMEOUT``), an optional TOML file, then the defaults.

The table :data:`SETTINGS` is the single source of truth: it drives parsing, validation and
``docs/configuration.md`` (``python -m shmflags.config --markdown`` regenerates that page).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from shmflags.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"


def is_valid_name(name: Any) -> bool:
    """Whether ``name`` is a namespace name: 1 to 64 of ``[A-Za-z0-9_.-]`` (no regex: this
    runs in every new worker, where the first use of a pattern costs page faults)."""
    return isinstance(name, str) and 0 < len(name) <= 64 and not name.strip(_NAME_CHARS)




def _bool(setting: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(setting, f"expected a boolean (true/false/1/0), got {value!r}")


def _number(setting: str, value: Any, *, minimum: float = 0.0, integer: bool = False) -> Any:
    if isinstance(value, bool):
        raise ConfigError(setting, f"expected a number, got {value!r}")
    try:
        num = int(value) if integer else float(value)
    except (TypeError, ValueError):
        kind = "an integer" if integer else "a number of seconds"
        raise ConfigError(setting, f"expected {kind}, got {value!r}") from None
    if integer and isinstance(value, float) and value != int(value):
        raise ConfigError(setting, f"expected an integer, got {value!r}")
    if num < minimum:
        raise ConfigError(setting, f"must be >= {minimum:g}, got {value!r}")
    return num


def _seconds(setting: str, value: Any) -> float:
    return float(_number(setting, value))


def _int(setting: str, value: Any) -> int:
    return int(_number(setting, value, integer=True))


def _positive_int(setting: str, value: Any) -> int:
    return int(_number(setting, value, minimum=1, integer=True))


def _str(setting: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(setting, f"expected a string, got {value!r}")
    return value


def _uri(setting: str, value: Any) -> str:
    text = _str(setting, value) or ""
    if not re.match(r"^https?://[^\s/]+", text):
        raise ConfigError(setting, f"expected an http(s) URI, got {value!r}")
    return text.rstrip("/")


def _str_list(setting: str, value: Any) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple, set, frozenset)):
        out = []
        for item in value:
            if not isinstance(item, str):
                raise ConfigError(setting, f"expected strings, got {item!r}")
            out.append(item)
        return out
    raise ConfigError(setting, f"expected a list or comma-separated string, got {value!r}")


def _mode(setting: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            raise ConfigError(setting, f"expected an octal mode such as 0640, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ConfigError(setting, f"expected a file mode 0..0777, got {value!r}")
    return value


def _name(setting: str, value: Any) -> str:
    text = _str(setting, value)
    if not is_valid_name(text):
        raise ConfigError(setting, f"must match [A-Za-z0-9_.-]{{1,64}}, got {value!r}")
    return text


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def parse(setting: str, value: Any) -> str:
        text = _str(setting, value)
        if text not in choices:
            raise ConfigError(setting, f"must be one of {', '.join(choices)}; got {value!r}")
        return text

    return parse


def _optional_bool(setting: str, value: Any) -> Optional[bool]:
    return None if value is None else _bool(setting, value)


def _any(setting: str, value: Any) -> Any:
    return value


def _sdk_key(setting: str, value: Any) -> str:
    text = _str(setting, value) or ""
    # LaunchDarkly SDK keys are [A-Za-z0-9._-]; ldclient discards others (ld-protocol §1.3).
    if text and (len(text) > 8192 or not re.match(r"^[A-Za-z0-9._-]+$", text)):
        raise ConfigError(setting, "contains characters outside [A-Za-z0-9._-] or is too long")
    return text


def _addr(setting: str, value: Any) -> Optional[str]:
    text = _str(setting, value)
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(setting, f"expected HOST:PORT, got {value!r}")
    return text


@dataclass(frozen=True)
class Setting:
    """One configuration setting: its keyword, parser, default and which process reads it."""

    name: str
    parse: Callable[[str, Any], Any]
    default: Any
    reads: str  # "supervisor", "worker" or "both"
    doc: str
    ldclient: bool = True  # a keyword of ldclient.Config (or of one of its nested configs)

    @property
    def env(self) -> str:
        return "SHMFLAGS_" + self.name.upper()


def _s(name: str, parse: Callable[[str, Any], Any], default: Any, reads: str, doc: str,
       ldclient: bool = True) -> Setting:
    return Setting(name, parse, default, reads, doc, ldclient)


SETTINGS: Tuple[Setting, ...] = (
    # --- ldclient.Config keywords -------------------------------------------------------
    _s("sdk_key", _sdk_key, "", "both",
       "LaunchDarkly server-side SDK key. Needed only to contact LaunchDarkly or a Relay Proxy "
       "(streaming, polling, events) and for secure_mode_hash. Never written to shared memory."),
    _s("base_uri", _uri, "https://app.launchdarkly.com", "supervisor", "Polling base URI."),
    _s("events_uri", _uri, "https://events.launchdarkly.com", "supervisor", "Events base URI."),
    _s("stream_uri", _uri, "https://stream.launchdarkly.com", "supervisor", "Streaming base URI."),
    _s("events_max_pending", _positive_int, 10000, "both",
       "Capacity of the full-event buffer (per worker and in the supervisor)."),
    _s("flush_interval", _seconds, 5.0, "both", "Seconds between event flushes."),
    _s("stream", _bool, True, "supervisor", "Use streaming; false means polling."),
    _s("initial_reconnect_delay", _seconds, 1.0, "supervisor",
       "First stream reconnect delay in seconds (exponential backoff, jitter, 30 s cap)."),
    _s("defaults", _any, {}, "worker", "Accepted for compatibility; ldclient ignores it too."),
    _s("send_events", _optional_bool, None, "both",
       "Send analytics events (default: true unless offline)."),
    _s("update_processor_class", _any, None, "supervisor",
       "Accepted for compatibility; shmflags' supervisor has its own sources.", True),
    _s("poll_interval", _seconds, 30.0, "supervisor",
       "Polling interval in seconds (minimum 30, as ldclient)."),
    _s("use_ldd", _bool, False, "supervisor",
       "Daemon mode: read flags from the persistent store (Redis) written by a Relay Proxy."),
    _s("feature_store", _any, None, "supervisor", "Accepted for compatibility; see redis_url."),
    _s("feature_requester_class", _any, None, "supervisor", "Accepted for compatibility."),
    _s("event_processor_class", _any, None, "worker", "Accepted for compatibility."),
    _s("private_attributes", _str_list, [], "supervisor",
       "Attribute references redacted from events (comma-separated in the environment)."),
    _s("all_attributes_private", _bool, False, "supervisor",
       "Redact every attribute but key/kind/anonymous from events."),
    _s("offline", _bool, False, "both",
       "Offline: no network; workers return defaults unless a snapshot is served."),
    _s("context_keys_capacity", _positive_int, 1000, "supervisor",
       "Size of the LRU that de-duplicates index events."),
    _s("context_keys_flush_interval", _seconds, 300.0, "supervisor",
       "Seconds after which the index de-duplication LRU is cleared."),
    _s("diagnostic_opt_out", _bool, False, "supervisor", "Do not send diagnostic events."),
    _s("diagnostic_recording_interval", _seconds, 900.0, "supervisor",
       "Seconds between periodic diagnostic events (minimum 60)."),
    _s("wrapper_name", _str, None, "supervisor", "Wrapper name for X-LaunchDarkly-Wrapper."),
    _s("wrapper_version", _str, None, "supervisor", "Wrapper version for X-LaunchDarkly-Wrapper."),
    _s("application_id", _str, None, "supervisor",
       "application.id (X-LaunchDarkly-Tags). Keyword: application={'id': ...}."),
    _s("application_version", _str, None, "supervisor",
       "application.version (X-LaunchDarkly-Tags). Keyword: application={'version': ...}."),
    _s("http_connect_timeout", _seconds, 10.0, "supervisor",
       "HTTP connect timeout (http=HTTPConfig(connect_timeout=...))."),
    _s("http_read_timeout", _seconds, 15.0, "supervisor",
       "HTTP read timeout (http=HTTPConfig(read_timeout=...))."),
    _s("http_http_proxy", _str, None, "supervisor",
       "Proxy URL (http=HTTPConfig(http_proxy=...)); HTTPS_PROXY/HTTP_PROXY are also honoured."),
    _s("http_ca_certs", _str, None, "supervisor", "CA bundle path (HTTPConfig.ca_certs)."),
    _s("http_cert_file", _str, None, "supervisor", "Client certificate (HTTPConfig.cert_file)."),
    _s("http_disable_ssl_verification", _bool, False, "supervisor",
       "Disable TLS verification (HTTPConfig.disable_ssl_verification)."),
    _s("big_segments_redis_url", _str, None, "supervisor",
       "Redis URL of the big segment store (big_segments=BigSegmentsConfig(store=...))."),
    _s("big_segments_redis_prefix", _str, "launchdarkly", "supervisor",
       "Key prefix of the big segment store."),
    _s("big_segments_context_cache_size", _positive_int, 1000, "worker",
       "BigSegmentsConfig.context_cache_size: memberships each worker memoises per mirror table."),
    _s("big_segments_context_cache_time", _seconds, 5.0, "supervisor",
       "BigSegmentsConfig.context_cache_time."),
    _s("big_segments_status_poll_interval", _seconds, 5.0, "supervisor",
       "BigSegmentsConfig.status_poll_interval."),
    _s("big_segments_stale_after", _seconds, 120.0, "supervisor",
       "BigSegmentsConfig.stale_after."),
    _s("hooks", _any, [], "worker", "Evaluation hooks (objects with ldclient's Hook interface)."),
    _s("plugins", _any, [], "worker", "Accepted for compatibility (ldclient plugins)."),
    _s("enable_event_compression", _bool, False, "supervisor", "gzip event payloads."),
    _s("omit_anonymous_contexts", _bool, False, "supervisor",
       "Omit anonymous contexts from index and identify events."),
    _s("payload_filter_key", _str, None, "supervisor", "LaunchDarkly payload filter key."),
    _s("datasystem_config", _any, None, "supervisor", "Accepted for compatibility (FDv2 is not used)."),
    # --- shmflags' own settings ------------------------------------------------------------
    _s("name", _name, "default", "both",
       "Namespace of the shared-memory objects and the event socket.", False),
    _s("data_file", _str_list, [], "supervisor",
       "Flag file(s), JSON or YAML (comma-separated in the environment). Selects the file source.",
       False),
    _s("redis_url", _str, None, "supervisor",
       "Redis URL of LaunchDarkly's persistent store (read in daemon mode, written otherwise).",
       False),
    _s("redis_prefix", _str, "launchdarkly", "supervisor", "Redis key prefix.", False),
    _s("redis_refresh_interval", _seconds, 5.0, "supervisor",
       "Seconds between reads of the Redis store in daemon mode.", False),
    _s("redis_write", _bool, False, "supervisor",
       "Also write the data the supervisor streams into Redis (LaunchDarkly's schema).", False),
    _s("state_dir", _str, "/var/lib/shmflags", "supervisor",
       "Directory of the last-known-good snapshot and the namespace lock.", False),
    _s("socket", _str, None, "both",
       "Event socket path (default: /run/shmflags/<name>.sock if writable, else "
       "$TMPDIR/shmflags.<name>.sock).", False),
    _s("metrics_addr", _addr, None, "supervisor",
       "HOST:PORT for the loopback HTTP /metrics and /status endpoints (off by default).", False),
    _s("log_format", _choice("text", "json"), "text", "both", "Log line format.", False),
    _s("log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", "supervisor",
       "Supervisor log level.", False),
    _s("evaluator", _choice("auto", "c", "python"), "auto", "worker",
       "Force the evaluator backend (also read from SHMFLAGS_EVALUATOR at import).", False),
    _s("heartbeat_timeout", _seconds, 5.0, "worker",
       "Heartbeat age after which workers report the data source INTERRUPTED.", False),
    _s("attach_interval", _seconds, 0.1, "worker",
       "How often a client without a snapshot re-checks for one.", False),
    _s("generation_grace", _seconds, 10.0, "supervisor",
       "Seconds a superseded generation stays before it is unlinked.", False),
    _s("shm_mode", _mode, 0o640, "supervisor", "Mode of the shared-memory objects.", False),
    _s("shm_group", _str, None, "supervisor", "Group owning the shared-memory objects.", False),
    _s("socket_mode", _mode, 0o660, "supervisor", "Mode of the event socket.", False),
    _s("max_stream_message_bytes", _positive_int, 256 * 1024 * 1024, "supervisor",
       "Largest stream message or poll body accepted.", False),
    _s("start_wait", _seconds, 5.0, "worker",
       "Seconds Client() waits for a first snapshot (ldclient's start_wait).", False),
)

_BY_NAME: Dict[str, Setting] = {s.name: s for s in SETTINGS}
_BY_ENV: Dict[str, str] = {s.env: s.name for s in SETTINGS}
_DEFAULTS: Dict[str, Any] = {s.name: s.default for s in SETTINGS}
_MUTABLE_DEFAULTS: Tuple[str, ...] = tuple(s.name for s in SETTINGS
                                           if isinstance(s.default, (list, dict)))

# Nested ldclient keywords flattened to our table: keyword -> {attribute: setting name}.
_NESTED = {
    "application": {"id": "application_id", "version": "application_version"},
    "http": {
        "connect_timeout": "http_connect_timeout",
        "read_timeout": "http_read_timeout",
        "http_proxy": "http_http_proxy",
        "ca_certs": "http_ca_certs",
        "cert_file": "http_cert_file",
        "disable_ssl_verification": "http_disable_ssl_verification",
    },
    "big_segments": {
        "context_cache_size": "big_segments_context_cache_size",
        "context_cache_time": "big_segments_context_cache_time",
        "status_poll_interval": "big_segments_status_poll_interval",
        "stale_after": "big_segments_stale_after",
    },
}


def _flatten_nested(keyword: str, value: Any) -> Dict[str, Any]:
    """Turn ``application={...}`` / ``http=HTTPConfig(...)`` into flat setting values."""
    out: Dict[str, Any] = {}
    if value is None:
        return out
    for attr, setting in _NESTED[keyword].items():
        if isinstance(value, Mapping):
            if attr in value:
                out[setting] = value[attr]
        elif hasattr(value, attr):
            out[setting] = getattr(value, attr)
    if keyword == "big_segments" and not isinstance(value, Mapping):
        store = getattr(value, "store", None)
        url = getattr(store, "redis_url", None) or getattr(store, "url", None)
        if url:
            out["big_segments_redis_url"] = url
    return out


class Config:
    """Configuration shared by the supervisor, workers and the CLI.

    :param sdk_key: the LaunchDarkly SDK key (optional for file and Redis sources).
    :param kwargs: any keyword of ``ldclient.Config`` or of :data:`SETTINGS`.
    :param config_file: optional TOML file (``[shmflags]`` table or top-level keys).
    :param environ: environment to read ``SHMFLAGS_*`` from (default ``os.environ``).
    :raises ConfigError: on an unknown keyword or an invalid value, naming the setting.
    """

    def __init__(self, sdk_key: Optional[str] = None, *, config_file: Optional[str] = None,
                 environ: Optional[Mapping[str, str]] = None, **kwargs: Any) -> None:
        if sdk_key is not None:
            kwargs["sdk_key"] = sdk_key
        explicit: Dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in _NESTED:
                explicit.update(_flatten_nested(key, value))
            elif key in _BY_NAME:
                explicit[key] = value
            else:
                raise ConfigError(key, "unknown setting")
        env = os.environ if environ is None else environ
        from_env = list(_shmflags_env(env))   # SHMFLAGS_CONFIG is one of them
        path = config_file or dict(from_env).get("SHMFLAGS_CONFIG")
        from_file = _read_toml(path) if path else {}
        # Only what is set is parsed and stored; a default is read from _DEFAULTS when first
        # asked for (__getattr__). A forked worker builds its Config on pages it shares with
        # the master, and touching an object there (even a reference count) copies its page:
        # ~5 us each here, and copying all 63 defaults touched ~100 pages.
        values: Dict[str, Any] = {}
        given: Dict[str, Tuple[Any, str]] = {}
        for name, raw in from_file.items():
            if name in _BY_NAME:
                given[name] = (raw, "config file")
        for var, raw in from_env:
            name = _BY_ENV.get(var)
            if name is not None:
                given[name] = (raw, var)
        for name, raw in explicit.items():
            given[name] = (raw, "keyword")
        for name, (raw, origin) in given.items():
            try:
                values[name] = _BY_NAME[name].parse(name, raw)
            except ConfigError as exc:
                raise ConfigError(origin if origin.startswith("SHMFLAGS_") else name,
                                  str(exc).split(": ", 1)[-1]) from None
        unknown = sorted(k for k in from_file if k not in _BY_NAME) if from_file else ()
        if unknown:
            raise ConfigError(unknown[0], "unknown setting in config file")
        for name, floor in (("poll_interval", 30.0), ("diagnostic_recording_interval", 60.0)):
            if name in values:
                values[name] = max(values[name], floor)
        if values.get("send_events") is None:
            values["send_events"] = not values.get("offline", _DEFAULTS["offline"])
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            values = self.__dict__["_values"]
            return values[name]
        except KeyError:
            pass
        try:
            value = _DEFAULTS[name]
        except KeyError:
            raise AttributeError(name) from None
        if "_values" not in self.__dict__:   # half made (unpickling, copy): no defaults yet
            raise AttributeError(name)
        if isinstance(value, (list, dict)):   # each Config owns its mutable defaults
            value = values[name] = _copy_default(value)
        return value

    # -- derived values -----------------------------------------------------------------

    @property
    def application(self) -> Dict[str, str]:
        """ldclient's ``application`` dict."""
        app = {"id": self.application_id, "version": self.application_version}
        return {k: v for k, v in app.items() if v}

    @property
    def socket_path(self) -> str:
        """Where workers send events and the supervisor listens."""
        if self.socket:
            return str(self.socket)
        run_dir = "/run/shmflags"
        if os.path.isdir(run_dir) and os.access(run_dir, os.W_OK):
            return os.path.join(run_dir, f"{self.name}.sock")
        tmp = os.environ.get("TMPDIR", "/tmp")
        return os.path.join(tmp, f"shmflags.{self.name}.sock")

    @property
    def proxy_url(self) -> Optional[str]:
        """The HTTP(S) proxy in force: the http option first, then HTTPS_PROXY / HTTP_PROXY."""
        if self.http_http_proxy:
            return str(self.http_http_proxy)
        for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
            if os.environ.get(var):
                return os.environ[var]
        return None

    def copy(self, **changes: Any) -> "Config":
        """A new Config with some settings replaced (environment not re-read)."""
        new = Config.__new__(Config)
        values = {k: _copy_default(v) for k, v in self._values.items()}
        for key, value in changes.items():
            if key in _NESTED:
                flat = _flatten_nested(key, value)
            elif key in _BY_NAME:
                flat = {key: value}
            else:
                raise ConfigError(key, "unknown setting")
            for k, v in flat.items():
                values[k] = _BY_NAME[k].parse(k, v)
        new._values = values
        return new

    def as_dict(self, *, redact: bool = True) -> Dict[str, Any]:
        """Every setting's value; the SDK key shows only its last 6 characters."""
        out = {name: getattr(self, name) for name in _BY_NAME}
        out = {k: v for k, v in out.items() if not callable(v)}
        if redact and out.get("sdk_key"):
            out["sdk_key"] = "…" + str(out["sdk_key"])[-6:]
        return out

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.as_dict().items()
                   if v != _BY_NAME[k].default and v not in ([], {}, None)}
        return f"Config({', '.join(f'{k}={v!r}' for k, v in sorted(changed.items()))})"


def _shmflags_env(env: Mapping[str, str]) -> Iterator[Tuple[str, str]]:
    """The ``SHMFLAGS_*`` variables of ``env``."""
    for var in env:
        if var.startswith("SHMFLAGS_"):
            yield var, env[var]


def _copy_default(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


def _read_toml(path: Optional[str]) -> Dict[str, Any]:
    if not path:
        return {}
    try:
        import tomllib  # type: ignore[import-not-found]
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise ConfigError("config_file", "reading TOML needs Python 3.11+ or tomli") from None
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("config_file", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config_file", f"{path} is not valid TOML: {exc}") from None
    table = data.get("shmflags", data)
    flat: Dict[str, Any] = {}
    for key, value in table.items():
        if key in _NESTED and isinstance(value, dict):
            flat.update(_flatten_nested(key, value))
        else:
            flat[key] = value
    return flat


def settings_markdown(settings: Iterable[Setting] = SETTINGS) -> str:
    """The settings table of ``docs/configuration.md``."""
    lines = ["| keyword | environment variable | default | read by | ldclient | meaning |",
             "|---|---|---|---|---|---|"]
    for s in settings:
        default = oct(s.default) if s.parse is _mode else repr(s.default)
        lines.append(f"| `{s.name}` | `{s.env}` | `{default}` | {s.reads} | "
                     f"{'yes' if s.ldclient else ''} | {s.doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - documentation helper
    if "--markdown" in sys.argv:
        sys.stdout.write(settings_markdown())
