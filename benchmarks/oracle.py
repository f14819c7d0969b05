"""ldclient set up on the same data as shmflags, for side-by-side benchmarks.

Benchmarks only; ldclient is a test/benchmark dependency, never imported by ``shmflags``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional


def ldclient_on_data(payload: Dict[str, Any], *, send_events: bool = False,
                     events_uri: Optional[str] = None) -> Any:
    """An ``ldclient.LDClient`` whose in-memory store holds ``payload`` (no network at all).

    ``use_ldd=True`` makes ldclient read flags from the store without a data source, which is
    how it behaves once its stream has delivered the same put.
    """
    from ldclient.client import LDClient
    from ldclient.config import Config
    from ldclient.feature_store import InMemoryFeatureStore
    from ldclient.versioned_data_kind import FEATURES, SEGMENTS

    store = InMemoryFeatureStore()
    store.init({FEATURES: payload.get("flags", {}), SEGMENTS: payload.get("segments", {})})
    kwargs: Dict[str, Any] = dict(
        sdk_key="sdk-benchmark-key", feature_store=store, use_ldd=True,
        send_events=send_events, diagnostic_opt_out=True,
    )
    if events_uri:
        kwargs["events_uri"] = events_uri
    return LDClient(config=Config(**kwargs), start_wait=0)


def ld_context(ctx: Dict[str, Any]) -> Any:
    """An ``ldclient.Context`` from LD context JSON."""
    from ldclient import Context

    return Context.from_dict(ctx)
