"""A real supervisor on flag files: publish, eval through the CLI, edits, renames, bad edits."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from supervisor_harness import Harness, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def write_flags(path: Path, color: str, extra: str = "") -> None:
    path.write_text(f"flagValues:\n  color: {color}\n  enabled: true\n{extra}")


def test_supervisor_serves_file_and_cli_evaluates(h, tmp_path):
    flags = tmp_path / "flags.yaml"
    write_flags(flags, "red")
    assert h.cli("status").returncode == 1  # nothing served before a supervisor runs
    sup = h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: h.flag_value("color") == "red", 10)

    out = h.cli("eval", "color", "--context", '{"kind": "user", "key": "u1"}')
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == "red"
    out = h.cli("eval", "color", "--context", '{"key": "u1"}', "--detail")
    assert json.loads(out.stdout) == {"value": "red", "variationIndex": 0,
                                      "reason": {"kind": "FALLTHROUGH"}}
    missing = h.cli("eval", "nope", "--context", '{"key": "u1"}', "--default", '"dflt"',
                    "--detail")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["reason"] == {"kind": "ERROR",
                                                    "errorKind": "FLAG_NOT_FOUND"}
    assert json.loads(missing.stdout)["value"] == "dflt"

    status = h.status()
    assert status["state"] == "VALID"
    assert status["source"] == "file"
    assert status["from_cache"] is False
    assert status["generation"] >= 1
    assert status["flags"] == 2 and status["segments"] == 0
    assert status["supervisor_pid"] == sup.pid
    assert status["heartbeat_age_s"] < 2.0
    assert status["last_error"] is None and status["last_update"] > 0
    assert status["evaluator"] in ("c", "python")
    assert "socket" in status and "events" in status
    assert h.cli("status").returncode == 0

    dump = h.cli("dump", "--flag", "color")
    assert json.loads(dump.stdout)["variations"] == ["red"]
    keys = h.cli("dump", "--keys")
    assert keys.stdout.split() == ["color", "enabled"]


def test_edit_in_place_and_atomic_rename_seen_within_one_second(h, tmp_path):
    flags = tmp_path / "flags.yaml"
    write_flags(flags, "red")
    h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: h.flag_value("color") == "red", 10)

    # Edit in place (same inode).
    started = time.monotonic()
    with open(flags, "r+") as fh:
        text = fh.read().replace("red", "blu")  # same size: only mtime changes
        fh.seek(0)
        fh.write(text)
    wait_for(lambda: h.flag_value("color") == "blu", 1.0)
    in_place = time.monotonic() - started

    # Atomic rename of a new file over the old one.
    tmp = tmp_path / "flags.yaml.new"
    write_flags(tmp, "green")
    started = time.monotonic()
    os.replace(tmp, flags)
    wait_for(lambda: h.flag_value("color") == "green", 1.0)
    renamed = time.monotonic() - started
    assert in_place < 1.0 and renamed < 1.0


def test_malformed_edit_keeps_last_good_data_and_reports_interrupted(h, tmp_path):
    flags = tmp_path / "flags.yaml"
    write_flags(flags, "red")
    h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: h.flag_value("color") == "red", 10)
    generation = h.ctl()["generation"]

    flags.write_text("flagValues:\n  color: [unclosed\n")
    state = wait_for(lambda: h.ctl()["state"] == "INTERRUPTED" and h.ctl(), 2.0)
    assert state["last_error"]["kind"] == "INVALID_DATA"
    assert "invalid YAML" in state["last_error"]["message"]
    assert h.ctl()["generation"] == generation
    assert h.flag_value("color") == "red"
    status = h.status()
    assert status["state"] == "INTERRUPTED" and status["generation"] == generation
    assert "invalid YAML" in status["last_error"]["message"]
    assert h.cli("status").returncode == 0  # still serving

    # A duplicate key fails the whole load the same way.
    flags.write_text("flagValues:\n  color: blue\nflags:\n  color: {\"on\": true}\n")
    wait_for(lambda: "more than once" in (h.ctl()["last_error"] or {}).get("message", ""), 2.0)
    assert h.flag_value("color") == "red"

    write_flags(flags, "fixed")
    wait_for(lambda: h.flag_value("color") == "fixed", 2.0)
    assert h.ctl()["state"] == "VALID"


def test_console_script_starts_fast_on_example_file_and_logs_publish(h):
    started = time.monotonic()
    sup = h.start(env={"SHMFLAGS_DATA_FILE": str(ROOT / "examples" / "flags.yaml")},
                  script=True)
    wait_for(lambda: h.ctl()["generation"] >= 1 if h._attach() else False, 5.0, 0.005)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"first publish took {elapsed:.2f} s"
    wait_for(lambda: "published generation 1" in sup.log(), 2.0)
    out = h.cli("eval", "new-checkout", "--context",
                '{"kind": "user", "key": "alice"}', "--detail")
    assert json.loads(out.stdout) == {"value": True, "variationIndex": 1,
                                      "reason": {"kind": "TARGET_MATCH"}}
    out = h.cli("eval", "banner-text", "--context",
                '{"kind": "user", "key": "x", "plan": "beta"}')
    assert json.loads(out.stdout) == "Welcome back, beta tester!"


def test_sighup_reloads_files(h, tmp_path):
    flags = tmp_path / "flags.yaml"
    write_flags(flags, "red")
    sup = h.start(env={"SHMFLAGS_DATA_FILE": str(flags)})
    wait_for(lambda: h.flag_value("color") == "red", 10)
    generation = h.ctl()["generation"]
    sup.signal(signal.SIGHUP)
    wait_for(lambda: h.ctl()["generation"] > generation, 2.0)
    wait_for(lambda: "SIGHUP: configuration reloaded" in sup.log(), 2.0)
    assert sup.proc.poll() is None


def test_sighup_rereads_config_file_and_switches_files(h, tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write_flags(a, "from-a")
    write_flags(b, "from-b")
    config = tmp_path / "shmflags.toml"
    config.write_text(f'data_file = ["{a}"]\n')
    sup = h.start("--config", str(config))
    wait_for(lambda: h.flag_value("color") == "from-a", 10)
    config.write_text(f'data_file = ["{b}"]\nlog_level = "DEBUG"\n')
    sup.signal(signal.SIGHUP)
    wait_for(lambda: h.flag_value("color") == "from-b", 3.0)
    assert "changed: data_file, log_level" in sup.log()
    config.write_text('data_file = 12\n')  # invalid: logged, old configuration kept
    sup.signal(signal.SIGHUP)
    wait_for(lambda: "configuration not reloaded" in sup.log(), 3.0)
    write_flags(b, "still-b")
    wait_for(lambda: h.flag_value("color") == "still-b", 2.0)
    assert sup.proc.poll() is None
