"""A Flask application using shmflags: the same code as with ldclient, minus ``postfork()``.

Run it under any preforking server, beside a supervisor on the same ``SHMFLAGS_NAME``::

    SHMFLAGS_DATA_FILE=examples/flags.yaml shmflags-supervisor &
    gunicorn -w 4 examples.flask_app:app
    curl 'http://127.0.0.1:8000/?user=carol&plan=pro'

Runs in every worker. Nothing is created at import: ``shmflags.get()`` returns this process's
client on the first request (after a fork it is a fresh, attached client; no hook needed).
"""
from __future__ import annotations

import os
from typing import Any, Dict

from flask import Flask, g, jsonify, request

import shmflags

app = Flask(__name__)


def current_context() -> shmflags.Context:
    """The LaunchDarkly context of the request (here from the query string; in a real app
    from the logged-in user and the organisation)."""
    if "ld_context" not in g:
        key = request.args.get("user", "anonymous")
        builder = shmflags.Context.builder(key).name(key.title())
        if key == "anonymous":
            builder.anonymous(True)
        for attr in ("plan", "country", "email"):
            if attr in request.args:
                builder.set(attr, request.args[attr])
        g.ld_context = builder.build()
    return g.ld_context


def flag(key: str, default: Any) -> Any:
    """Evaluate ``key`` for the current request's context."""
    return shmflags.get().variation(key, current_context(), default)


@app.context_processor
def inject_flags() -> Dict[str, Any]:
    """Templates can write ``{% if flag("new-checkout", False) %}``."""
    return {"flag": flag}


@app.route("/")
def index() -> Any:
    """Evaluate the example flags (examples/flags.yaml) for the request's context."""
    client = shmflags.get()
    context = current_context()
    detail = client.variation_detail("banner-text", context, "Welcome!")
    return jsonify({
        "pid": os.getpid(),  # which worker answered
        "new_checkout": flag("new-checkout", False),
        "banner": detail.value,
        "banner_reason": detail.reason,
        "page_size": flag("search-page-size", 20),
        "maintenance": flag("maintenance-mode", False),
    })


@app.route("/flags")
def all_flags() -> Any:
    """Every flag's value for the context, as a front end would bootstrap them."""
    state = shmflags.get().all_flags_state(current_context(), client_side_only=False)
    return jsonify(state.to_json_dict())


@app.route("/checkout", methods=["POST"])
def checkout() -> Any:
    """A custom event for experimentation metrics."""
    shmflags.get().track("checkout-completed", current_context(), metric_value=1.0)
    return jsonify({"ok": True})
