"""OpenFeature over shmflags: the vendor-neutral API, LaunchDarkly's answers.

Run it: ``pip install 'shmflags[openfeature]'`` then ``python examples/openfeature_example.py``.
It evaluates in-process data so it needs no supervisor; in a gunicorn/uWSGI app use
``ShmflagsProvider()`` with no client, set once at import (even in the master): every call
then goes to this process's ``shmflags.get()``.
"""
from __future__ import annotations

from openfeature import api
from openfeature.evaluation_context import EvaluationContext

import shmflags
from shmflags.openfeature import ShmflagsProvider

FLAGS = {
    "flags": {
        "new-checkout": {
            "key": "new-checkout", "version": 1, "on": True, "salt": "nc",
            "variations": [False, True], "offVariation": 0, "fallthrough": {"variation": 0},
            "rules": [{"id": "pro-plan", "variation": 1, "clauses": [
                {"contextKind": "user", "attribute": "plan", "op": "in", "values": ["pro"]}]}],
        },
        "max-items": {"key": "max-items", "version": 1, "on": True, "salt": "mi",
                      "variations": [10, 50], "fallthrough": {"variation": 0}},
    }
}


def main() -> None:
    api.set_provider(ShmflagsProvider(shmflags.Client.from_data(FLAGS)))
    client = api.get_client()

    user = EvaluationContext("user-key-123", {"plan": "pro", "name": "Sandy"})
    details = client.get_boolean_details("new-checkout", False, user)
    print(details.value, details.variant, details.reason, details.flag_metadata)

    # A multi-kind context: one nested dict per kind.
    multi = EvaluationContext(attributes={
        "kind": "multi",
        "user": {"targetingKey": "user-key-123", "plan": "free"},
        "organization": {"targetingKey": "org-7", "name": "Acme"},
    })
    print(client.get_boolean_value("new-checkout", False, multi))
    print(client.get_integer_details("max-items", 5, user))
    print(client.get_string_details("missing-flag", "fallback", user))   # FLAG_NOT_FOUND


if __name__ == "__main__":
    main()
