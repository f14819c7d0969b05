"""Django middleware that gives every request its LaunchDarkly context and flags.

Add it to ``settings.MIDDLEWARE`` after the authentication middleware::

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "examples.django_middleware.FeatureFlagsMiddleware",
    ]

and, for templates, ``"examples.django_middleware.flags"`` to the ``context_processors`` of
``TEMPLATES``. Then in a view ``request.flags.variation("new-checkout", False)`` and in a
template ``{% if flags.new_checkout %}`` (dashes become underscores there).

Runs in every worker (gunicorn, uWSGI, Daphne...). The middleware holds no client:
``shmflags.get()`` is called per request and returns this process's client, so a worker forked
after Django was set up (``--preload``, uWSGI without lazy-apps) needs no ``post_fork`` hook.
Run ``shmflags-supervisor`` beside the server with the same ``SHMFLAGS_NAME``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import shmflags


def context_for(request: Any) -> shmflags.Context:
    """The LaunchDarkly context of a Django request: the user if logged in, else an
    anonymous context keyed by the session (or ``"anonymous"``)."""
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        builder = shmflags.Context.builder(str(user.pk))
        builder.name(user.get_username())
        email = getattr(user, "email", "")
        if email:
            builder.set("email", email)
        builder.set("staff", bool(getattr(user, "is_staff", False)))
        return builder.build()
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None) or "anonymous"
    return shmflags.Context.builder(key).anonymous(True).build()


class RequestFlags:
    """Flags of one request: evaluations for the request's context, computed on demand.

    :param context: the request's context.
    """

    def __init__(self, context: shmflags.Context) -> None:
        self.context = context
        self._all: Optional[Dict[str, Any]] = None

    def variation(self, key: str, default: Any) -> Any:
        """The flag's value for this request (an analytics event is recorded)."""
        return shmflags.get().variation(key, self.context, default)

    def variation_detail(self, key: str, default: Any) -> Any:
        """Value, variation index and reason."""
        return shmflags.get().variation_detail(key, self.context, default)

    def all(self) -> Dict[str, Any]:
        """Every flag's value (computed once per request; no analytics events, as ldclient's
        ``all_flags_state``)."""
        if self._all is None:
            state = shmflags.get().all_flags_state(self.context)
            self._all = state.to_values_map()
        return self._all

    def __getattr__(self, name: str) -> Any:
        # template access: {{ flags.new_checkout }} reads the flag "new-checkout"
        values = self.all()
        for key in (name, name.replace("_", "-")):
            if key in values:
                return values[key]
        raise AttributeError(name)


class FeatureFlagsMiddleware:
    """Sets ``request.ld_context`` and ``request.flags`` (a :class:`RequestFlags`).

    :param get_response: the next middleware or the view (Django's middleware protocol).
    """

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        request.ld_context = context_for(request)
        request.flags = RequestFlags(request.ld_context)
        return self.get_response(request)


def flags(request: Any) -> Dict[str, Any]:
    """Template context processor: ``{{ flags.banner_text }}``."""
    return {"flags": getattr(request, "flags", None) or RequestFlags(context_for(request))}
