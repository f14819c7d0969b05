"""The `shmflags` CLI against a real supervisor: status text, dump, watch, usage errors."""
from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from supervisor_harness import PY, Harness, wait_for


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def test_status_text_for_absent_and_served_namespace(h, tmp_path):
    absent = h.cli("status")
    assert absent.returncode == 1
    assert "no supervisor has created this namespace" in absent.stdout
    flags = tmp_path / "f.yaml"
    flags.write_text("flagValues: {a: 1}\nsegments: {s: {included: [x]}}\n")
    sup = h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: h.flag_value("a") == 1, 10)
    out = h.cli("status")
    assert out.returncode == 0
    assert "state:       VALID" in out.stdout
    assert "1 flags, 1 segments" in out.stdout
    assert f"pid {sup.pid} running" in out.stdout


def test_dump_everything_and_one_segment(h, tmp_path):
    flags = tmp_path / "f.yaml"
    flags.write_text("flagValues: {a: 1}\nsegments: {s: {included: [x], version: 4}}\n")
    h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: h.flag_value("a") == 1, 10)
    doc = json.loads(h.cli("dump").stdout)
    assert doc["flags"]["a"]["variations"] == [1]
    assert doc["segments"] == {"s": {"key": "s", "included": ["x"], "version": 4}}
    seg = h.cli("dump", "--segment", "s")
    assert json.loads(seg.stdout)["version"] == 4
    assert h.cli("dump", "--flag", "zzz").returncode == 1


def test_watch_prints_each_new_generation(h, tmp_path):
    flags = tmp_path / "f.yaml"
    flags.write_text("flagValues: {a: 1}\n")
    h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: h.flag_value("a") == 1, 10)
    watch = subprocess.Popen([PY, "-m", "shmflags", "watch"], env=h.env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        first = watch.stdout.readline()
        assert "VALID" in first and "source=file" in first
        generation = h.ctl()["generation"]
        flags.write_text("flagValues: {a: 2}\n")
        second = watch.stdout.readline()
        assert f"generation {generation + 1} VALID" in second
    finally:
        watch.send_signal(signal.SIGTERM)
        assert watch.wait(5) == 0


def test_eval_usage_errors(h):
    bad = h.cli("eval", "a", "--context", "{not json")
    assert bad.returncode == 2 and "must be JSON" in bad.stderr
    invalid = h.cli("eval", "a", "--context", '{"kind": "user"}')
    assert invalid.returncode == 2 and "invalid context" in invalid.stderr
    nothing = h.cli("eval", "a", "--context", '{"key": "k"}')
    assert nothing.returncode == 1 and "serves no snapshot" in nothing.stderr
