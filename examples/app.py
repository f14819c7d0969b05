"""A WSGI application that evaluates flags per request: the README demo and the examples' app.

Runs in every gunicorn/uWSGI worker. Note what is *not* here: no ``post_fork`` hook, no
``postfork()`` call, no client created per worker by hand. ``shmflags.get()`` returns this
process's client, attached to the supervisor's shared-memory snapshot.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable
from urllib.parse import parse_qs

import shmflags


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """Evaluate every flag for the context named in the query string and answer JSON."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    key = query.get("user", ["alice"])[0]
    builder = shmflags.Context.builder(key).name(key.title())
    for attr in ("plan", "country"):
        if attr in query:
            builder.set(attr, query[attr][0])
    context = builder.build()
    client = shmflags.get()
    state = client.all_flags_state(context)
    body = {
        "pid": os.getpid(),
        "initialized": client.is_initialized(),
        "flags": state.to_values_map(),
    }
    if "flag" in query:
        detail = client.variation_detail(query["flag"][0], context, None)
        body["detail"] = {"value": detail.value, "variationIndex": detail.variation_index,
                          "reason": detail.reason}
    payload = json.dumps(body, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(payload)))])
    return [payload]
