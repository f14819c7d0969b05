"""backend.py: the evaluator is chosen once at import from SHMFLAGS_EVALUATOR and
SHMFLAGS_REQUIRE_NATIVE, and open_snapshot uses the chosen Snapshot class."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAVE_NATIVE = importlib.util.find_spec("shmflags._native") is not None

PROBE = """
import json, logging, sys
sys.path.insert(0, %r)
logging.basicConfig(level=logging.WARNING, format="LOG %%(levelname)s %%(message)s")
try:
    import shmflags
    from shmflags import backend
    from shmflags.snapshot.builder import SnapshotBuilder
    snap = backend.open_snapshot(SnapshotBuilder().build({}, {}))
    print(json.dumps({"backend": shmflags.evaluator_backend(),
                      "cls": type(snap).__module__, "flags": snap.flag_count}))
except ImportError as exc:
    print(json.dumps({"import_error": str(exc)}))
""" % ROOT


def _probe(**env: str) -> tuple:
    full = {k: v for k, v in os.environ.items()
            if k not in ("SHMFLAGS_EVALUATOR", "SHMFLAGS_REQUIRE_NATIVE")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=full, timeout=60)
    assert out.returncode == 0, out.stderr
    logs = [line for line in out.stderr.splitlines() if line.startswith("LOG")]
    return json.loads(out.stdout.strip().splitlines()[-1]), logs


def test_forced_python():
    res, logs = _probe(SHMFLAGS_EVALUATOR="python")
    assert res == {"backend": "python", "cls": "shmflags._pure", "flags": 0}
    assert logs == []                  # an explicit choice is not warned about


def test_bad_value_is_an_import_error():
    res, _ = _probe(SHMFLAGS_EVALUATOR="fortran")
    assert "SHMFLAGS_EVALUATOR" in res["import_error"] and "fortran" in res["import_error"]


def test_default_prefers_c_else_warns_once():
    res, logs = _probe()
    if HAVE_NATIVE:
        assert res["backend"] == "c" and res["cls"] == "shmflags._native" and logs == []
    else:
        assert res["backend"] == "python"
        assert len(logs) == 1 and "pure-Python" in logs[0] and "WARNING" in logs[0]


def test_require_native_and_forced_c():
    for env in ({"SHMFLAGS_REQUIRE_NATIVE": "1"}, {"SHMFLAGS_EVALUATOR": "c"}):
        res, _ = _probe(**env)
        if HAVE_NATIVE:
            assert res["backend"] == "c"
        else:
            assert "shmflags._native" in res["import_error"]
            assert next(iter(env)) in res["import_error"]


def test_in_process_choice_is_stable():
    from shmflags import backend, evaluator_backend
    assert evaluator_backend() in ("c", "python")
    assert backend.evaluator_backend() == evaluator_backend()
    expected = "shmflags._native" if evaluator_backend() == "c" else "shmflags._pure"
    assert backend.Snapshot.__module__ == expected


@pytest.mark.skipif(not HAVE_NATIVE, reason="C extension not built")
def test_python_forced_even_when_native_required():
    res, _ = _probe(SHMFLAGS_EVALUATOR="python", SHMFLAGS_REQUIRE_NATIVE="1")
    assert res["backend"] == "python"
