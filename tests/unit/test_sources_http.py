"""Unit tests of shmflags.supervisor.http: backoff math, headers, error classification, session."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shmflags import __version__
from shmflags.config import Config
from shmflags.supervisor import http


def cfg(**kw: object) -> Config:
    return Config("sdk-abc", environ={}, **kw)  # type: ignore[arg-type]


# -- backoff ---------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_to_cap_without_jitter() -> None:
    b = http.Backoff(1.0, rng=lambda: 0.0)
    assert [b.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_backoff_jitter_range_is_half_to_full() -> None:
    hi = http.Backoff(2.0, rng=lambda: 0.0)
    lo = http.Backoff(2.0, rng=lambda: 0.999999)
    for base in (2, 4, 8, 16, 30):
        assert hi.next_delay() == base
        assert base / 2 <= lo.next_delay() < base / 2 + 1e-4
    import random
    b = http.Backoff(1.0, rng=random.Random(7).random)
    delays = [b.next_delay() for _ in range(6)]
    for d, base in zip(delays, (1, 2, 4, 8, 16, 30)):
        assert base / 2 <= d <= base


def test_backoff_resets_after_60s_connected() -> None:
    clock = Clock()
    b = http.Backoff(1.0, rng=lambda: 0.0, clock=clock)
    assert [b.next_delay() for _ in range(3)] == [1, 2, 4]
    b.mark_good()
    clock.now += 59.9
    assert b.next_delay() == 8  # up for less than 60 s: keeps growing
    b.mark_good()
    clock.now += 60.0
    assert b.next_delay() == 1  # up for 60 s: starts over
    assert b.failures == 1


def test_backoff_mark_good_twice_keeps_first_time() -> None:
    clock = Clock()
    b = http.Backoff(1.0, rng=lambda: 0.0, clock=clock)
    b.next_delay()
    b.mark_good()
    clock.now += 40
    b.mark_good()
    clock.now += 30
    assert b.next_delay() == 1


def test_backoff_initial_above_cap_raises_cap() -> None:
    b = http.Backoff(45.0, rng=lambda: 0.0)
    assert [b.next_delay() for _ in range(2)] == [45, 45]


def test_backoff_no_overflow_after_many_failures() -> None:
    b = http.Backoff(1.0, rng=lambda: 0.0)
    for _ in range(5000):
        d = b.next_delay()
    assert d == 30


# -- classification --------------------------------------------------------------------------

@pytest.mark.parametrize("status,ok", [
    (400, True), (408, True), (429, True), (500, True), (502, True), (503, True), (599, True),
    (401, False), (403, False), (404, False), (405, False), (410, False), (499, False),
])
def test_is_recoverable(status: int, ok: bool) -> None:
    assert http.is_recoverable(status) is ok


def test_error_description_names_invalid_key() -> None:
    assert http.error_description(401) == "HTTP error 401 (invalid SDK key)"
    assert http.error_description(403).endswith("(invalid SDK key)")
    assert http.error_description(404) == "HTTP error 404"


def test_error_info_shape() -> None:
    info = http.error_info(http.ERROR_RESPONSE, "boom", 503)
    assert set(info) == {"kind", "statusCode", "message", "time"}
    assert info["kind"] == "ERROR_RESPONSE" and info["statusCode"] == 503
    assert http.error_info(http.NETWORK_ERROR, "x")["statusCode"] == 0
    import time
    assert abs(info["time"] - time.time() * 1000) < 5000  # epoch ms, like the store's


# -- headers ---------------------------------------------------------------------------------

def test_base_headers_minimal() -> None:
    h = http.base_headers(cfg(), "id-1")
    assert h == {
        "Authorization": "sdk-abc",
        "User-Agent": f"shmflags/{__version__}",
        "X-LaunchDarkly-Wrapper": f"shmflags/{__version__}",
        "X-LaunchDarkly-Instance-Id": "id-1",
    }


def test_base_headers_wrapper_and_tags() -> None:
    h = http.base_headers(cfg(wrapper_name="Flask-LD", wrapper_version="1.2",
                              application={"id": "my-app", "version": "1.0.0"}), "i")
    assert h["X-LaunchDarkly-Wrapper"] == f"Flask-LD/1.2 shmflags/{__version__}"
    assert h["X-LaunchDarkly-Tags"] == "application-id/my-app application-version/1.0.0"
    h = http.base_headers(cfg(wrapper_name="W"), "i")
    assert h["X-LaunchDarkly-Wrapper"] == f"W shmflags/{__version__}"


@pytest.mark.parametrize("app_id,app_ver,want", [
    ("ok", None, "application-id/ok"),
    (None, "2.0", "application-version/2.0"),
    ("bad id", "2.0", "application-version/2.0"),
    ("x" * 65, None, ""),
    ("x" * 64, None, "application-id/" + "x" * 64),
    ("ünïcode", "v", "application-version/v"),
])
def test_tags_validation(app_id: str, app_ver: str, want: str) -> None:
    assert http.tags_header(app_id, app_ver) == want


def test_no_tags_header_when_nothing_valid() -> None:
    assert "X-LaunchDarkly-Tags" not in http.base_headers(cfg(application={"id": "a b"}), "i")


def test_instance_id_is_stable_per_process_and_new_after_fork() -> None:
    a = http.process_instance_id()
    assert a == http.process_instance_id() and len(a) == 36
    assert http.base_headers(cfg())["X-LaunchDarkly-Instance-Id"] == a
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.write(w, http.process_instance_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 100).decode()
    os.close(r), os.close(w)
    assert child and child != a


def test_uri_strips_slashes_and_encodes_filter() -> None:
    assert http.uri("http://h:1/", "/all") == "http://h:1/all"
    assert http.uri("http://h//", "/sdk/latest-all", "a b&c") == \
        "http://h/sdk/latest-all?filter=a+b%26c"


def test_timeouts() -> None:
    assert http.timeouts(cfg()) == (10.0, 15.0)
    assert http.timeouts(cfg(http={"connect_timeout": 2}), read=300) == (2.0, 300.0)


# -- session ---------------------------------------------------------------------------------

def test_session_trusts_environment_and_applies_proxy_and_tls_settings() -> None:
    s = http.make_session(cfg())
    assert s.trust_env is True  # HTTPS_PROXY / NO_PROXY / REQUESTS_CA_BUNDLE honoured
    assert s.verify is True and not s.proxies
    s = http.make_session(cfg(http={"http_proxy": "http://proxy:3128", "ca_certs": "/ca.pem",
                                    "cert_file": "/c.pem"}))
    assert s.proxies == {"http": "http://proxy:3128", "https": "http://proxy:3128"}
    assert s.verify == "/ca.pem" and s.cert == "/c.pem"
    s = http.make_session(cfg(http={"disable_ssl_verification": True, "ca_certs": "/ca.pem"}))
    assert s.verify is False


def test_request_options_only_for_configured_settings() -> None:
    assert http.request_options(cfg()) == {}
    assert http.request_options(cfg(http={"http_proxy": "http://p:1", "ca_certs": "/ca.pem",
                                          "cert_file": "/c.pem"})) == {
        "proxies": {"http": "http://p:1", "https": "http://p:1"},
        "verify": "/ca.pem", "cert": "/c.pem"}
    assert http.request_options(cfg(http={"disable_ssl_verification": True,
                                          "ca_certs": "/ca.pem"})) == {"verify": False}


def test_request_options_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets env settings beat Session attributes, but not per-request ones."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/env-ca.pem")
    monkeypatch.setenv("HTTPS_PROXY", "http://envproxy:8080")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    c = cfg(http={"http_proxy": "http://cfgproxy:3128", "ca_certs": "/cfg-ca.pem"})
    s = http.make_session(c)
    opts = http.request_options(c)
    merged = s.merge_environment_settings("https://stream.launchdarkly.com/all",
                                          opts.get("proxies", {}), None, opts.get("verify"), None)
    assert merged["verify"] == "/cfg-ca.pem"
    assert merged["proxies"]["https"] == "http://cfgproxy:3128"


def test_https_proxy_env_is_picked_by_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://envproxy:8080")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    s = http.make_session(cfg())
    settings = s.merge_environment_settings("https://stream.launchdarkly.com/all", {}, None, None, None)
    assert settings["proxies"].get("https") == "http://envproxy:8080"


def test_importing_http_starts_nothing() -> None:
    code = ("import threading, shmflags.supervisor.http as h; "
            "assert threading.active_count() == 1; assert h._instance == (0, '')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=_root())


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
