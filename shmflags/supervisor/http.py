"""HTTP helpers shared by the supervisor's LaunchDarkly clients: headers, session, backoff, errors.

Runs in the supervisor (streaming, polling and event delivery all use it). The module holds no
supervisor state: every function takes the :class:`~shmflags.config.Config` it needs, so the
events engineer can reuse :func:`base_headers` and :func:`is_recoverable` for ``/bulk``.

Headers (ld-protocol §1.3): ``Authorization`` is the raw SDK key; ``User-Agent`` is
``shmflags/<version>`` (we do not impersonate ``PythonClient``); ``X-LaunchDarkly-Wrapper`` is
always sent and names shmflags, after the configured wrapper when there is one
(``"MyWrapper/2.0 shmflags/0.1.0"``, space-separated product tokens as in ``User-Agent``);
``X-LaunchDarkly-Tags`` carries valid ``application`` values; ``X-LaunchDarkly-Instance-Id`` is
one random UUID per supervisor process.

Errors (ld-protocol §1.6, the legacy rule): 400, 408, 429, every 5xx and every network error
are recoverable; any other 4xx (401, 403, 404, ...) is not: the data source goes ``OFF``.
(ldclient 9.20 instead keeps retrying such statuses every 5 to 60 minutes; see
``docs/compatibility.md``.)
"""
from __future__ import annotations

import logging
import os
import random
import re
import time
import uuid
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import urlencode

import requests

from shmflags import __version__
from shmflags.config import Config

__all__ = [
    "USER_AGENT", "Backoff", "base_headers", "error_description", "error_info", "is_recoverable",
    "make_session", "missing_key_error", "process_instance_id", "record_environment_id", "request_options", "tags_header", "timeouts", "uri",
    "UNKNOWN", "NETWORK_ERROR", "ERROR_RESPONSE", "INVALID_DATA", "STORE_ERROR",
]

log = logging.getLogger(__name__)

#: ``User-Agent`` and the shmflags part of ``X-LaunchDarkly-Wrapper``.
USER_AGENT = f"shmflags/{__version__}"

# Data source error kinds (ld-protocol §10.1).
UNKNOWN = "UNKNOWN"
NETWORK_ERROR = "NETWORK_ERROR"
ERROR_RESPONSE = "ERROR_RESPONSE"
INVALID_DATA = "INVALID_DATA"
STORE_ERROR = "STORE_ERROR"

_TAG_VALUE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_RECOVERABLE_4XX = frozenset((400, 408, 429))

_instance: Tuple[int, str] = (0, "")


def process_instance_id() -> str:
    """The ``X-LaunchDarkly-Instance-Id`` of this process: a UUID made on first use.

    A forked child gets a new one (the pid is checked), so two processes never share an id.
    """
    global _instance
    pid = os.getpid()
    if _instance[0] != pid:
        _instance = (pid, str(uuid.uuid4()))
    return _instance[1]


def tags_header(application_id: Optional[str], application_version: Optional[str]) -> str:
    """``X-LaunchDarkly-Tags`` value; invalid values are dropped with a warning.

    :returns: ``"application-id/<id> application-version/<ver>"`` (either part may be absent),
        or ``""`` when there is nothing valid to send.
    """
    parts = []
    for tag, value in (("application-id", application_id),
                       ("application-version", application_version)):
        if not value:
            continue
        if not _TAG_VALUE.match(value):
            log.warning("ignoring %s %r: it must be 1-64 characters of [A-Za-z0-9._-]", tag, value)
            continue
        parts.append(f"{tag}/{value}")
    return " ".join(parts)


def base_headers(config: Config, instance_id: Optional[str] = None) -> Dict[str, str]:
    """Headers every request to LaunchDarkly or a Relay Proxy carries (ld-protocol §1.3).

    :param config: supplies ``sdk_key``, ``wrapper_name``/``wrapper_version`` and
        ``application_id``/``application_version``.
    :param instance_id: ``X-LaunchDarkly-Instance-Id``; default :func:`process_instance_id`.
    :returns: a new dict the caller may extend (``Content-Type``, ``If-None-Match``, ...).
    """
    wrapper = USER_AGENT
    if config.wrapper_name:
        own = config.wrapper_name + (f"/{config.wrapper_version}" if config.wrapper_version else "")
        wrapper = f"{own} {USER_AGENT}"
    headers = {
        "Authorization": config.sdk_key or "",
        "User-Agent": USER_AGENT,
        "X-LaunchDarkly-Wrapper": wrapper,
        "X-LaunchDarkly-Instance-Id": instance_id or process_instance_id(),
    }
    tags = tags_header(config.application_id, config.application_version)
    if tags:
        headers["X-LaunchDarkly-Tags"] = tags
    return headers


def uri(base: str, path: str, filter_key: Optional[str] = None) -> str:
    """``base`` without trailing slashes, then ``path``, then ``?filter=<key>`` (URL-encoded)."""
    out = base.rstrip("/") + path
    if filter_key:
        out += "?" + urlencode({"filter": filter_key})
    return out


def timeouts(config: Config, read: Optional[float] = None) -> Tuple[float, float]:
    """``(connect, read)`` timeouts for ``requests``; ``read`` overrides the configured one."""
    return (float(config.http_connect_timeout),
            float(config.http_read_timeout if read is None else read))


def request_options(config: Config) -> Dict[str, Any]:
    """Per-request ``requests`` keywords for the ``http_*`` settings: pass them to every call.

    They must be given per request, not only on the session: ``requests`` lets
    ``REQUESTS_CA_BUNDLE`` override ``Session.verify`` and environment proxies override
    ``Session.proxies``, while per-request values win over both. Settings left at their
    defaults are omitted, so the environment (``HTTPS_PROXY``, ``NO_PROXY``,
    ``REQUESTS_CA_BUNDLE``) still applies to them.

    * ``http_http_proxy`` → ``proxies`` for both schemes (overrides the environment's proxy);
    * ``http_disable_ssl_verification`` → ``verify=False``; else ``http_ca_certs`` →
      ``verify=<bundle>``;
    * ``http_cert_file`` → ``cert``.
    """
    options: Dict[str, Any] = {}
    if config.http_http_proxy:
        options["proxies"] = {"http": config.http_http_proxy, "https": config.http_http_proxy}
    if config.http_disable_ssl_verification:
        options["verify"] = False
    elif config.http_ca_certs:
        options["verify"] = config.http_ca_certs
    if config.http_cert_file:
        options["cert"] = config.http_cert_file
    return options


def make_session(config: Config) -> requests.Session:
    """A ``requests.Session`` for one source or delivery thread.

    ``trust_env`` stays on, so ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` and
    ``REQUESTS_CA_BUNDLE`` work as everywhere else in Python. The ``http_*`` settings are
    also recorded on the session, but callers must still pass :func:`request_options` with
    each request (see there why). No headers are set here: pass :func:`base_headers`.
    """
    session = requests.Session()
    options = request_options(config)
    if "proxies" in options:
        session.proxies.update(options["proxies"])
    if "verify" in options:
        session.verify = options["verify"]
    if "cert" in options:
        session.cert = options["cert"]
    return session


def is_recoverable(status: int) -> bool:
    """Whether an HTTP error status is worth retrying (ld-protocol §1.6, legacy rule).

    400, 408, 429 and anything that is not a 4xx are recoverable; every other 4xx is not.
    """
    return not (400 <= status < 500) or status in _RECOVERABLE_4XX


def error_description(status: int) -> str:
    """``"HTTP error 401 (invalid SDK key)"`` style text for logs and ``last_error``."""
    suffix = " (invalid SDK key)" if status in (401, 403) else ""
    return f"HTTP error {status}{suffix}"


def error_info(kind: str, message: str, status: int = 0) -> Dict[str, Any]:
    """The ``error`` dict given to ``SourceSink.set_status`` (ld-protocol §10.1); ``time`` is
    epoch milliseconds, as the store and the file source use.

    :param kind: one of :data:`UNKNOWN`, :data:`NETWORK_ERROR`, :data:`ERROR_RESPONSE`,
        :data:`INVALID_DATA`, :data:`STORE_ERROR`.
    """
    return {"kind": kind, "statusCode": int(status), "message": message,
            "time": int(time.time() * 1000)}


def record_environment_id(sink: Any, headers: Any) -> None:
    """Pass the ``X-LD-EnvID`` response header to ``sink.set_environment_id`` if both exist.

    ldclient gives the environment id to hooks (``EvaluationSeriesContext.environment_id``);
    the method is optional on the sink, so stores that do not carry it need not define it.
    """
    env_id = headers.get("X-LD-EnvID") if headers is not None else None
    setter = getattr(sink, "set_environment_id", None)
    if env_id and setter is not None:
        setter(str(env_id))


def missing_key_error(config: Config, what: str) -> Optional[Dict[str, Any]]:
    """An error dict if ``config.sdk_key`` is empty (the source then goes ``OFF`` at once).

    LaunchDarkly and the Relay Proxy answer 401 without a key; saying so without contacting
    them gives a clearer ``last_error``.
    """
    if config.sdk_key:
        return None
    return error_info(UNKNOWN, f"sdk_key is not set: {what} needs a LaunchDarkly SDK key")


class Backoff:
    """Reconnect delays of ld-protocol §1.6, for one connection at a time.

    The first connection is immediate (nobody asks for a delay). After the n-th consecutive
    failure the delay is ``base = min(initial * 2**(n-1), maximum)`` less a uniform jitter of up
    to half of it, so it lies in ``[base/2, base]``. If the connection that just failed had been
    good (see :meth:`mark_good`) for at least ``reset_interval`` seconds, ``n`` starts over.

    :param initial: first delay (``initial_reconnect_delay``); a value above ``maximum``
        raises the cap to it instead of being cut down.
    :param rng: returns a float in ``[0, 1)``; tests pin it.
    :param clock: monotonic seconds; tests pin it.
    """

    def __init__(self, initial: float, *, maximum: float = 30.0, reset_interval: float = 60.0,
                 rng: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.initial = max(0.0, float(initial))
        self.maximum = max(float(maximum), self.initial)
        self.reset_interval = reset_interval
        self._rng = rng
        self._clock = clock
        self._failures = 0
        self._good_since: Optional[float] = None

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far (0 after a reset)."""
        return self._failures

    def mark_good(self) -> None:
        """Record that the connection is up now (call on a successful connect)."""
        if self._good_since is None:
            self._good_since = self._clock()

    def next_delay(self) -> float:
        """Record a failure and return the seconds to wait before the next attempt."""
        if self._good_since is not None and self._clock() - self._good_since >= self.reset_interval:
            self._failures = 0
        self._good_since = None
        self._failures += 1
        exponent = min(self._failures - 1, 30)
        base = min(self.initial * (2 ** exponent), self.maximum)
        return base - self._rng() * base / 2
