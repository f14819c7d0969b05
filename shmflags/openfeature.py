"""``shmflags.openfeature``: the OpenFeature provider (see :mod:`shmflags.integrations.openfeature`).

Safe in any worker; needs ``openfeature-sdk`` (``pip install shmflags[openfeature]``).
"""
from __future__ import annotations

from shmflags.integrations.openfeature import (PROVIDER_NAME, ShmflagsProvider, to_ld_context,
                                               to_resolution_details)

__all__ = ["ShmflagsProvider", "to_ld_context", "to_resolution_details", "PROVIDER_NAME"]
