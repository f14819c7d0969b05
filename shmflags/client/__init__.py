"""The worker-side client: ``Client``, ``FeatureFlagsState``. Safe in any worker; opens nothing at import."""
from __future__ import annotations

from shmflags.client.client import Client
from shmflags.client.flags_state import FeatureFlagsState

__all__ = ["Client", "FeatureFlagsState"]
