"""``multiprocessing.Pool`` workers (fork and spawn) beside a real supervisor on the fake LD.

The pool runs in a driver subprocess (``prefork_helpers.mp_driver``) so that each test has its
own process-wide ``shmflags.get()`` client and namespace. With ``fork`` the parent evaluates
first, so the pool workers inherit an attached client; with ``spawn`` each worker starts
fresh. Measured: a patch reaches every pool worker (printed latency, bound 1 s) and the summary
counts delivered to ``/bulk`` equal the evaluations, after ``pool.close(); pool.join()``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List

import pytest

from tests.fakes.fake_ld import FakeLD
from tests.integration.prefork_helpers import (LATENCY_BOUND, ROOT, Namespace, flag, fmt_switch,
                                               summary_counts, switch_times, wait_counts)

pytestmark = pytest.mark.slow


@pytest.fixture
def fake() -> Iterator[FakeLD]:
    with FakeLD(heartbeat_interval=0.5) as f:
        f.set_data({"f1": flag("f1", "v1")}, {})
        yield f


@pytest.fixture
def ns() -> Iterator[Namespace]:
    n = Namespace("mp")
    try:
        yield n
    finally:
        print(n.logs())
        n.close()


class Driver:
    """The driver subprocess and its line protocol."""

    def __init__(self, ns: Namespace, method: str, processes: int, parent_eval: bool) -> None:
        args = [sys.executable, "-m", "tests.integration.prefork_helpers", "mp", method,
                str(processes)] + (["parent-eval"] if parent_eval else [])
        self.stderr = open(ns.dir / f"mp-{method}.err", "wb")
        self.proc = subprocess.Popen(args, env=ns.env, cwd=str(ROOT), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     start_new_session=True)
        self.hello = self.read()

    def read(self) -> Any:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            self.proc.wait(5)
            raise AssertionError(f"driver exited {self.proc.returncode}: "
                                 f"{open(self.stderr.name).read()[-3000:]}")
        return json.loads(line)

    def round(self, key: str, n: int) -> List[Dict[str, Any]]:
        self.proc.stdin.write(f"round {key} {n}\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("exit\n")  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]
                assert self.read() == {"closed": True}
                self.proc.wait(10)
            finally:
                if self.proc.poll() is None:
                    import os
                    import signal
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
        self.stderr.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_follow_patches_and_events_add_up(fake: FakeLD, ns: Namespace,
                                                       method: str) -> None:
    ns.supervisor(fake)
    processes = 3
    parent_eval = method == "fork"
    driver = Driver(ns, method, processes, parent_eval)
    try:
        workers = set(driver.hello["workers"])
        if parent_eval:
            assert driver.hello["parent"]["value"] == "v1", driver.hello
        performed = 1 if parent_eval else 0
        answers: Dict[int, List[Dict[str, Any]]] = {}

        def add(batch: List[Dict[str, Any]]) -> None:
            for a in batch:
                answers.setdefault(a["pid"], []).append(a)

        # every worker answers v1
        for _ in range(20):
            batch = driver.round("f1", 12)
            performed += len(batch)
            add(batch)
            if workers <= {a["pid"] for a in batch}:
                break
        assert workers <= set(answers), (workers, set(answers))
        assert {a["value"] for per in answers.values() for a in per} == {"v1"}

        assert fake.wait_for_streams(1)
        pushed = time.time()
        fake.push("patch", {"path": "/flags/f1", "data": flag("f1", "v2", 2)})
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            batch = driver.round("f1", 6)
            performed += len(batch)
            add(batch)
            if all(any(a["value"] == "v2" and a["t"] >= pushed for a in answers.get(p, ()))
                   for p in workers):
                break
        per_worker = switch_times(answers, "v2", pushed)
        assert set(per_worker) >= workers, per_worker
        latency = max(per_worker[p][1] for p in workers)
        print(f"multiprocessing {method}: patch reached all {processes} pool workers in "
              f"{latency * 1000:.1f} ms ({fmt_switch(per_worker)})")
        assert latency < LATENCY_BOUND
    finally:
        driver.close()
    got = wait_counts(fake, "f1", performed)
    print(f"events: {performed} evaluations performed, {got} counted in /bulk summaries "
          f"({summary_counts(fake.events).get('f1')})")
    assert got == performed
