"""Real uWSGI beside a real ``shmflags-supervisor`` streaming from the fake LaunchDarkly service.

uWSGI's default configuration is the hard case for fork safety: the app is imported in the
master and the workers are forked from it (no ``lazy-apps``), and without ``enable-threads``
a worker's Python threads do not run while it waits for requests. The app calls
``shmflags.get()`` per request and once at import (``PREFORK_EVAL_AT_IMPORT``), so the workers
inherit an attached client from the master. Also tested: ``lazy-apps`` (the app imported in
each worker), ``harakiri`` (a worker killed by the master mid-request is replaced by one that
serves the right values) and ``max-requests`` recycling under load, with event counts.
"""
from __future__ import annotations

import signal
import time
from typing import Iterator

import pytest

from tests.fakes.fake_ld import FakeLD
from tests.integration.prefork_helpers import (LATENCY_BOUND, Namespace, evaluations, every_worker,
                                               flag, fmt_switch, load, propagate_patch,
                                               require_worker_client, summary_counts,
                                               supervisor_kill9_and_restart, wait_counts, wait_for)

pytestmark = pytest.mark.slow
require_worker_client()


@pytest.fixture
def fake() -> Iterator[FakeLD]:
    with FakeLD(heartbeat_interval=0.5) as f:
        f.set_data({"f1": flag("f1", "v1"), "imp": flag("imp", "i1")}, {})
        yield f


@pytest.fixture
def ns() -> Iterator[Namespace]:
    n = Namespace("uw")
    try:
        yield n
    finally:
        print(n.logs())  # shown by pytest only when the test failed
        n.close()


@pytest.mark.parametrize("lazy_apps", [False, True], ids=["default", "lazy-apps"])
def test_patch_reaches_every_worker_and_events_add_up(fake: FakeLD, ns: Namespace,
                                                      lazy_apps: bool) -> None:
    ns.supervisor(fake)
    workers = 3
    server = ns.uwsgi(processes=workers, lazy_apps=lazy_apps,
                      env={"PREFORK_EVAL_AT_IMPORT": "imp"})
    _, imp = server.get("/import")
    if lazy_apps:
        assert imp["pid"] != server.pid and imp["value"] == "i1", imp
    else:
        assert imp["pid"] == server.pid and imp["value"] == "i1", imp

    before = server.collect("flag=f1&n=3&hold=0.005", every_worker(server, "v1"), timeout=10.0,
                            concurrency=6)
    result = propagate_patch(fake, server, "f1", "v2", 2)
    mode = "lazy-apps" if lazy_apps else "default (app imported in the master)"
    print(f"uWSGI {mode}: patch reached all {workers} workers in "
          f"{result['latency'] * 1000:.1f} ms ({fmt_switch(result['per_worker'])})")
    assert result["latency"] < LATENCY_BOUND, result["per_worker"]

    performed = evaluations(before) + evaluations(result["answers"])
    assert server.stop(signal.SIGTERM) == 0, server.log()[-2000:]
    got = wait_counts(fake, "f1", performed)
    print(f"events: {performed} evaluations of f1 performed, {got} counted in /bulk summaries")
    assert got == performed, summary_counts(fake.events)
    expected_imp = workers if lazy_apps else 1
    got_imp = wait_counts(fake, "imp", expected_imp, timeout=3.0)
    print(f"import-time evaluations: {expected_imp} performed, {got_imp} counted")
    assert got_imp == expected_imp


def test_supervisor_kill9_and_restart_changes_only_status(fake: FakeLD, ns: Namespace) -> None:
    sup = ns.supervisor(fake)
    server = ns.uwsgi(processes=3)
    supervisor_kill9_and_restart(fake, ns, sup, server, "uWSGI default")


def test_harakiri_replaces_a_worker_that_serves_correct_values(fake: FakeLD,
                                                              ns: Namespace) -> None:
    ns.supervisor(fake)
    server = ns.uwsgi(processes=2, harakiri=1)
    server.collect("flag=f1&hold=0.005", every_worker(server, "v1"), timeout=10.0,
                   concurrency=4)
    pids = set(server.worker_pids())
    started = time.monotonic()
    try:
        code, _ = server.get("/sleep?s=8", timeout=10.0)
    except OSError:
        code = 0  # the master killed the worker: the connection is closed without an answer
    killed_after = time.monotonic() - started
    assert killed_after < 5.0 and code != 200, (code, killed_after)
    replaced = wait_for(lambda: (set(server.worker_pids()) - pids and
                                 len(server.worker_pids()) == 2), 5.0, 0.05,
                        "the replacement worker")
    assert "HARAKIRI" in server.log()
    new_pids = set(server.worker_pids()) - pids
    print(f"harakiri killed a worker after {killed_after:.1f} s; replacement {new_pids}")
    answers = server.collect("flag=f1&hold=0.005", every_worker(server, "v1"), timeout=10.0,
                             concurrency=4)
    assert new_pids <= set(answers) and replaced
    result = propagate_patch(fake, server, "f1", "v2", 2)
    print(f"after harakiri a patch reached both workers in {result['latency'] * 1000:.1f} ms")
    assert result["latency"] < LATENCY_BOUND


def test_max_requests_recycling_under_load(fake: FakeLD, ns: Namespace) -> None:
    ns.supervisor(fake)
    server = ns.uwsgi(processes=3, max_requests=15)
    requests, per_request = 240, 3
    retries1, first = load(server, f"flag=f1&n={per_request}", requests // 2)
    assert {a["value"] for a in first} == {"v1"}
    assert fake.wait_for_streams(1)
    pushed = time.time()
    fake.push("patch", {"path": "/flags/f1", "data": flag("f1", "v2", 2)})
    time.sleep(0.3)
    retries2, second = load(server, f"flag=f1&n={per_request}", requests - requests // 2)
    late = [a for a in second if a["t0"] > pushed + 0.3]
    assert late and {a["value"] for a in late} == {"v2"}, {a["value"] for a in late}
    assert all(a["consistent"] for a in first + second)
    pids = {a["pid"] for a in first + second}
    print(f"uWSGI max-requests=15: {requests} requests answered by {len(pids)} worker pids "
          f"({retries1 + retries2} connection retries)")
    assert len(pids) > 3, "workers were not recycled"
    performed = requests * per_request
    # What is under test is the recycling (workers exiting after max-requests mid-run). The
    # final stop is uWSGI's SIGTERM, a brutal shutdown that may kill a loaded worker before its
    # exit flush, so let the live workers' flush interval (0.5 s) pass first. Also let the
    # master finish any "respawning too fast" pause (2 s) that the last recycling started: a
    # SIGTERM during that pause makes uWSGI respawn a worker it then never stops (seen twice).
    time.sleep(3.0)
    assert server.stop(signal.SIGTERM, timeout=30.0) == 0, server.log()[-2000:]
    got = wait_counts(fake, "f1", performed)
    print(f"events under recycling: {performed} evaluations performed, {got} counted "
          f"({summary_counts(fake.events).get('f1')})")
    assert got == performed
