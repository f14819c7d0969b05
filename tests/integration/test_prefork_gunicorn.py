"""Real gunicorn (sync and gthread workers, with and without --preload, max_requests recycling)
beside a real ``shmflags-supervisor`` streaming from the fake LaunchDarkly service.

The app (``tests.integration.prefork_helpers:app``) calls ``shmflags.get()`` per request — no
post_fork hook. What is measured and asserted:

* a patch pushed on the fake stream reaches every worker pid within 1 s (printed: the latency
  of the slowest worker, including the polling granularity of the test);
* no worker goes back to the old value after it served the new one;
* the summary counters delivered to the fake ``/bulk`` equal the evaluations performed, also
  when workers are recycled by ``max_requests`` under load;
* a supervisor killed with SIGKILL and restarted changes nothing in the values served; only
  the reported status does.
"""
from __future__ import annotations

import signal
import time
from typing import Dict, Iterator, List

import pytest

from tests.fakes.fake_ld import FakeLD
from tests.integration.prefork_helpers import (LATENCY_BOUND, Namespace, evaluations, every_worker,
                                               flag, fmt_switch, free_port, http_json, load,
                                               propagate_patch, require_worker_client,
                                               summary_counts, supervisor_kill9_and_restart,
                                               switch_times, wait_counts, wait_for)

pytestmark = pytest.mark.slow
require_worker_client()

@pytest.fixture
def fake() -> Iterator[FakeLD]:
    with FakeLD(heartbeat_interval=0.5) as f:
        f.set_data({"f1": flag("f1", "v1"), "imp": flag("imp", "i1")}, {})
        yield f


@pytest.fixture
def ns() -> Iterator[Namespace]:
    n = Namespace("gu")
    try:
        yield n
    finally:
        print(n.logs())  # shown by pytest only when the test failed
        n.close()


@pytest.mark.parametrize("worker_class,threads", [("sync", 1), ("gthread", 4)])
@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_patch_reaches_every_worker_and_events_add_up(fake: FakeLD, ns: Namespace,
                                                      worker_class: str, threads: int,
                                                      preload: bool) -> None:
    metrics_port = free_port()
    sup = ns.supervisor(fake, env={"SHMFLAGS_METRICS_ADDR": f"127.0.0.1:{metrics_port}"})
    workers = 3
    server = ns.gunicorn(workers=workers, worker_class=worker_class, threads=threads,
                         preload=preload, env={"PREFORK_EVAL_AT_IMPORT": "imp"})
    # the import-time evaluation ran once in the master (--preload) or in each worker
    _, imp = server.get("/import")
    if preload:
        assert imp["pid"] == server.pid and imp["value"] == "i1", imp
    else:
        assert imp["pid"] != server.pid and imp["value"] == "i1", imp

    before = server.collect("flag=f1&n=3&hold=0.005", every_worker(server, "v1"), timeout=10.0,
                            concurrency=6)
    assert set(server.worker_pids()) <= set(before)
    result = propagate_patch(fake, server, "f1", "v2", 2)
    print(f"gunicorn {worker_class} preload={preload}: patch reached all {workers} workers in "
          f"{result['latency'] * 1000:.1f} ms (per worker, last old..first new: "
          f"{fmt_switch(result['per_worker'])})")
    assert result["latency"] < LATENCY_BOUND, result["per_worker"]

    performed = evaluations(before) + evaluations(result["answers"])
    booted = len(set(server.worker_pids()))
    assert server.stop(signal.SIGTERM) == 0, server.log()[-2000:]
    got = wait_counts(fake, "f1", performed)
    print(f"events: {performed} evaluations of f1 performed, {got} counted in /bulk summaries")
    assert got == performed, summary_counts(fake.events)
    expected_imp = 1 if preload else booted
    got_imp = wait_counts(fake, "imp", expected_imp, timeout=3.0)
    assert got_imp == expected_imp, (got_imp, expected_imp)
    st = ns.status()
    assert st["state"] == "VALID" and st["supervisor_pid"] == sup.pid, st
    assert st["events"]["received"] > 0 and st["events"]["invalid"] == 0, st
    metrics = scrape(metrics_port)
    assert metrics["shmflags_generation"] == st["generation"], metrics
    assert metrics['shmflags_data_source_state{state="VALID"}'] == 1.0, metrics
    assert metrics["shmflags_events_received_total"] > 0, metrics
    assert metrics["shmflags_events_sent_total"] > 0, metrics


def scrape(port: int) -> Dict[str, float]:
    """The supervisor's ``/metrics``: series -> value."""
    code, text = http_json(port, "/metrics")
    assert code == 200, text
    out: Dict[str, float] = {}
    for line in str(text).splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def test_max_requests_recycling_under_load(fake: FakeLD, ns: Namespace) -> None:
    ns.supervisor(fake)
    server = ns.gunicorn(workers=3, max_requests=15, jitter=5)
    requests, per_request = 240, 3
    patch_at = requests // 2
    pushed: List[float] = []

    # first half of the load on v1, then the patch, then the second half
    retries1, first = load(server, f"flag=f1&n={per_request}", patch_at, concurrency=4)
    assert {a["value"] for a in first} == {"v1"}, {a["value"] for a in first}
    assert fake.wait_for_streams(1)
    pushed.append(time.time())
    fake.push("patch", {"path": "/flags/f1", "data": flag("f1", "v2", 2)})
    time.sleep(0.3)
    retries2, second = load(server, f"flag=f1&n={per_request}", requests - patch_at,
                            concurrency=4)
    assert all(a["consistent"] for a in first + second)
    late = [a for a in second if a["t0"] > pushed[0] + 0.3]
    assert late and {a["value"] for a in late} == {"v2"}, {a["value"] for a in late}
    pids = {a["pid"] for a in first + second}
    log = server.log()
    boots = log.count("Booting worker")
    print(f"max_requests=15: {requests} requests answered by {len(pids)} worker pids "
          f"({boots} worker boots, {retries1 + retries2} connection retries)")
    assert len(pids) > 3, "workers were not recycled"

    performed = requests * per_request
    assert server.stop(signal.SIGTERM) == 0
    got = wait_counts(fake, "f1", performed)
    counts = summary_counts(fake.events)["f1"]
    print(f"events under recycling: {performed} evaluations performed, {got} counted "
          f"({counts})")
    assert got == performed, counts


def test_supervisor_kill9_and_restart_changes_only_status(fake: FakeLD, ns: Namespace) -> None:
    sup = ns.supervisor(fake)
    server = ns.gunicorn(workers=3, worker_class="gthread", threads=2)
    supervisor_kill9_and_restart(fake, ns, sup, server, "gunicorn gthread")


def test_workers_started_before_the_supervisor_attach_by_themselves(fake: FakeLD,
                                                                    ns: Namespace) -> None:
    server = ns.gunicorn(workers=3)
    answers = server.collect("flag=f1&hold=0.005", every_worker(server, "default"),
                             timeout=10.0, concurrency=6)
    assert {a["value"] for per in answers.values() for a in per} == {"default"}
    _, st = server.get("/status")
    assert st["initialized"] is False, st

    sup = ns.supervisor(fake, wait=False)
    wait_for(lambda: (ns.control() or {}).get("generation"), 10.0, 0.005,
             "the first generation")
    published = time.time()
    answers = server.collect("flag=f1&hold=0.005", every_worker(server, "v1", published),
                             timeout=10.0, concurrency=6)
    per_worker = switch_times(answers, "v1", published)
    latency = max(per_worker[p][1] for p in server.worker_pids())
    print(f"workers started before the supervisor served real values {latency * 1000:.0f} ms "
          f"after its first publish ({fmt_switch(per_worker)})")
    assert latency < 0.5 + 0.2  # DESIGN §12: within 0.5 s; 0.2 s for the test's polling
    complaints = server.log().count("no shmflags supervisor control block")
    print(f"'no control block' lines in the gunicorn log: {complaints} (3 workers)")
    assert 1 <= complaints <= 3, server.log()[-3000:]
    assert sup.alive()
