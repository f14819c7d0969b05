"""The worker-side client: ``Client``, ``FeatureFlagsState``, ``get``/``set_config``.

Safe in any worker; opens nothing at import.
"""
from __future__ import annotations

from shmflags.client.client import Client
from shmflags.client.flags_state import FeatureFlagsState
from shmflags.client.singleton import get, set_config

__all__ = ["Client", "FeatureFlagsState", "get", "set_config"]
