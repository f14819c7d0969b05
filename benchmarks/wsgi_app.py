"""The WSGI application of the gunicorn benchmark (``benchmarks.wsgi_app:app``) and the gunicorn
configuration of its ldclient variant (``-c benchmarks/wsgi_app.py``: ``on_starting`` makes the
client in the master, ``post_fork`` calls ``postfork()``, as LaunchDarkly documents).

Benchmarks only. ``BENCH_SDK`` picks the SDK: ``none`` (the baseline: same request work, no
evaluation), ``shmflags`` (``shmflags.get()`` once the public worker client is there; a client
on ``SHMFLAGS_NAME`` until then) or ``ldclient`` (``ldclient.get()``). Every request builds one
context from the query (``?u=KEY``) and evaluates :data:`N_EVALS` flags (``BENCH_FLAGS``, comma
separated), answering the values as JSON.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterable, List

SDK = os.environ.get("BENCH_SDK", "none")
FLAGS: List[str] = [k for k in os.environ.get("BENCH_FLAGS", "").split(",") if k]
N_EVALS = 20
_PLANS = ("free", "pro", "enterprise", "trial")
_COUNTRIES = ("DE", "FR", "US", "GB", "JP", "BR", "IN")

_state: Dict[str, Any] = {"pid": 0, "client": None}


def _shmflags_client() -> Any:
    pid = os.getpid()
    if _state["pid"] != pid:
        import shmflags
        from benchmarks import common
        if common.shmflags_public_client_ready() and hasattr(shmflags, "get"):
            _state["client"] = shmflags.get()
        else:
            send = os.environ.get("SHMFLAGS_SEND_EVENTS", "true").lower() in ("1", "true")
            _state["client"], _ = common.shmflags_client(
                os.environ["SHMFLAGS_NAME"], send_events=send,
                socket=os.environ.get("SHMFLAGS_SOCKET"))
        _state["pid"] = pid
    return _state["client"]


def _context_dict(key: str) -> Dict[str, Any]:
    h = sum(key.encode()) if key else 0
    return {"kind": "user", "key": key, "email": f"{key}@example.com",
            "plan": _PLANS[h % 4], "country": _COUNTRIES[h % 7], "age": 18 + h % 60,
            "appVersion": "2.1"}


def app(environ: Dict[str, Any], start_response: Callable) -> Iterable[bytes]:
    query = environ.get("QUERY_STRING", "")
    key = query[2:] if query.startswith("u=") else "user-000001"
    raw = _context_dict(key)
    flags = FLAGS[:N_EVALS]
    if SDK == "shmflags":
        import shmflags
        client = _shmflags_client()
        ctx = shmflags.Context.from_dict(raw)
        values = [client.variation(k, ctx, None) for k in flags]
    elif SDK == "ldclient":
        import ldclient
        from ldclient import Context
        client = ldclient.get()
        ctx = Context.from_dict(raw)
        values = [client.variation(k, ctx, None) for k in flags]
    else:
        values = [None for _ in flags]
    body = json.dumps({"key": key, "values": values}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


# --------------------------------------------------------------- gunicorn config (ldclient)


def on_starting(server: Any) -> None:
    if SDK == "ldclient":
        import ldclient
        from benchmarks.common import ld_config
        url = os.environ["BENCH_FAKE_URL"]
        send = os.environ.get("BENCH_LD_EVENTS", "false") == "true"
        ldclient.set_config(ld_config(stream_uri=url, base_uri=url, events_uri=url,
                                      send_events=send))


def post_fork(server: Any, worker: Any) -> None:
    if SDK == "ldclient":
        import ldclient
        ldclient.get().postfork(start_wait=60)
