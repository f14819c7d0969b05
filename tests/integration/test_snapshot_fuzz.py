"""Fuzzed snapshots (truncated, bit-flipped, re-checksummed, wrong magic/version/size) against
the reader backend in child processes: a crash, a hang or any exception other than
SnapshotFormatError is a failure.

``SHMFLAGS_FUZZ_CASES`` sets the count (default 10^5); ``SHMFLAGS_FUZZ_BACKEND`` the target
(``python`` default, ``c`` for the C reader). ``scripts/fuzz_snapshot.py`` runs 10^6 by hand.
"""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import fuzz_snapshot  # noqa: E402

CASES = int(float(os.environ.get("SHMFLAGS_FUZZ_CASES", "1e5")))
BACKEND = os.environ.get("SHMFLAGS_FUZZ_BACKEND", "python")


@pytest.mark.slow
def test_fuzzed_snapshots_never_crash_or_raise_other_errors():
    res = fuzz_snapshot.run(CASES, backend=BACKEND, seed=20261126, jobs=2, timeout=1200)
    print("\nfuzz:", {k: v for k, v in res.items() if k != "failures"})
    assert res["crashes"] == [], res["crashes"][:5]
    assert res["n_failures"] == 0, res["failures"][:5]
    assert res["rejected"] + res["accepted"] == CASES
    # Both outcomes are exercised in quantity: the structural checks, not just the checksum.
    assert res["rejected"] > CASES // 5 and res["accepted"] > CASES // 5
    assert set(res["mutations"]) == set(fuzz_snapshot.MUTATIONS)


def test_harness_reports_crashes_and_foreign_exceptions():
    """Negative control: a deliberately broken backend is caught, case by case."""
    res = fuzz_snapshot.run(2000, backend="selftest", seed=7, jobs=2, timeout=300)
    assert res["crashes"], "an abort() in the target was not reported"
    assert all(c["returncode"] < 0 for c in res["crashes"])
    assert res["n_failures"] > 0
    assert all("IndexError" in f["error"] for f in res["failures"])
    # Each crash names a case that reproduces it.
    idx = res["crashes"][0]["index"]
    _kind, data = fuzz_snapshot.make_case(fuzz_snapshot.base_snapshots(), 7, idx)
    assert len(data) % 97 == 13


def test_cases_are_deterministic():
    bases = fuzz_snapshot.base_snapshots()
    assert [fuzz_snapshot.make_case(bases, 3, i) for i in range(50)] == \
        [fuzz_snapshot.make_case(bases, 3, i) for i in range(50)]
