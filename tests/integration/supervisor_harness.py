"""Test helper: run a real ``shmflags-supervisor`` process and the ``shmflags`` CLI.

Each harness has its own namespace and state directory; :meth:`Harness.close` stops every
process it started, by pid, and removes the namespace's shared-memory objects.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from shmflags import shm
from shmflags.snapshot.reader import SnapshotReader

PY = sys.executable
BIN = Path(PY).parent
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; raise AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(interval)


class Supervisor:
    """One supervisor subprocess (stderr captured to a file)."""

    def __init__(self, proc: subprocess.Popen, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


class Harness:
    """A namespace, a state directory and the processes of one test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.name = f"t{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.state_dir = tmp_path / "state"
        # The test's own settings only, but keep the evaluator choice CI runs the suite with.
        keep = ("SHMFLAGS_REQUIRE_NATIVE", "SHMFLAGS_EVALUATOR")
        self.env = {k: v for k, v in os.environ.items()
                    if (k in keep or not k.startswith("SHMFLAGS_"))
                    and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        self.env.update({"SHMFLAGS_NAME": self.name, "SHMFLAGS_STATE_DIR": str(self.state_dir),
                         "SHMFLAGS_SEND_EVENTS": "false", "PYTHONUNBUFFERED": "1"})
        self.supervisors: List[Supervisor] = []
        self._attachment: Optional[shm.Attachment] = None

    # -- processes --------------------------------------------------------------------------

    def start(self, *args: str, env: Optional[Dict[str, str]] = None,
              script: bool = False) -> Supervisor:
        """Start a supervisor (``python -m shmflags supervisor``, or the console script)."""
        cmd = [str(BIN / "shmflags-supervisor")] if script else [PY, "-m", "shmflags",
                                                                  "supervisor"]
        log_path = self.tmp / f"supervisor-{len(self.supervisors)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd + list(args), env={**self.env, **(env or {})},
                                    stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        sup = Supervisor(proc, log_path)
        self.supervisors.append(sup)
        return sup

    def cli(self, *args: str, env: Optional[Dict[str, str]] = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run ``python -m shmflags ARGS`` in this namespace."""
        return subprocess.run([PY, "-m", "shmflags", *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def status(self) -> Dict[str, Any]:
        """``shmflags status --json``, parsed."""
        out = self.cli("status", "--json")
        return json.loads(out.stdout)

    def close(self) -> None:
        for sup in self.supervisors:
            try:
                sup.stop()
            except Exception:  # noqa: BLE001 - best effort in teardown
                pass
        if self._attachment is not None:
            self._attachment.close()
        shm.cleanup(self.name)

    # -- in-process reads (fast, for timing assertions) ---------------------------------------

    def attachment(self) -> shm.Attachment:
        if self._attachment is not None and self._attachment.replaced():
            self._attachment.close()  # cleaned up and recreated: reopen, as a worker does
            self._attachment = None
        if self._attachment is None:
            self._attachment = wait_for(self._attach, 10.0)
        return self._attachment

    def _attach(self) -> Optional[shm.Attachment]:
        try:
            return shm.Attachment(self.name)
        except Exception:  # noqa: BLE001 - not created yet
            return None

    def ctl(self) -> Dict[str, Any]:
        """The control block's status dict."""
        return self.attachment().status()

    def raw_flag(self, key: str) -> Optional[dict]:
        """The flag's LD JSON in the generation being served (None when absent or none)."""
        att = self.attachment()
        try:
            parts = att.snapshot_parts()
        except Exception:  # noqa: BLE001 - nothing published yet
            return None
        reader = SnapshotReader(parts["buffer"], base=parts["base"], state=parts["state"],
                                base_state=parts["base_state"])
        try:
            entry = reader.find_flag(key)
            return reader.decode(entry) if entry is not None else None
        finally:
            reader.release()

    def flag_value(self, key: str) -> Any:
        """Value of a ``flagValues`` flag (its only variation), or None."""
        flag = self.raw_flag(key)
        return flag["variations"][0] if flag else None


def run_with_small_dev_shm(driver: Path, args: List[str], size: str = "256k",
                           timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``python driver ARGS`` in a private mount namespace whose /dev/shm is a ``size``
    tmpfs, so a test can fill "/dev/shm" without touching the machine's.

    Calls ``pytest.skip`` when ``unshare`` is missing or not permitted (needs root or
    CAP_SYS_ADMIN). The driver can import this module and ``shmflags``.
    """
    import pytest

    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot create a mount namespace here (needs root/CAP_SYS_ADMIN)")
    script = (f"mount -t tmpfs -o size={size},mode=1777 tmpfs /dev/shm && "
              f"exec {PY} {driver} {' '.join(args)}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHMFLAGS_")
           or k in ("SHMFLAGS_REQUIRE_NATIVE", "SHMFLAGS_EVALUATOR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), str(ROOT),
                                                      os.environ.get("PYTHONPATH")]))
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=timeout, env=env)
