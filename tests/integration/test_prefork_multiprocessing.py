"""``multiprocessing.Pool`` workers (fork and spawn) beside a real supervisor on the fake LD.

The pool runs in a driver subprocess (``prefork_helpers.mp_driver``) so that each test has its
own process-wide ``shmflags.get()`` client and namespace. With ``fork`` the parent evaluates
first, so the pool workers inherit an attached client; with ``spawn`` each worker starts
fresh. Measured: a patch reaches every pool worker (printed latency, bound 1 s) and the summary
counts delivered to ``/bulk`` equal the evaluations, after ``pool.close(); pool.join()``.
"""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.fakes.fake_ld import FakeLD
from tests.integration.prefork_helpers import (Driver, Namespace, flag, pool_follows_patch,
                                               require_worker_client, summary_counts, wait_counts)

pytestmark = pytest.mark.slow
require_worker_client()


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


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_follow_patches_and_events_add_up(fake: FakeLD, ns: Namespace,
                                                       method: str) -> None:
    ns.supervisor(fake)
    parent_eval = ["parent-eval"] if method == "fork" else []
    driver = Driver(ns, ["mp", method, "3"] + parent_eval)
    try:
        if parent_eval:
            assert driver.hello["parent"]["value"] == "v1", driver.hello
        performed = pool_follows_patch(fake, driver, f"multiprocessing {method}")
    finally:
        driver.close()
        print(driver.log()[-3000:])
    got = wait_counts(fake, "f1", performed)
    print(f"events: {performed} evaluations performed, {got} counted in /bulk summaries "
          f"({summary_counts(fake.events).get('f1')})")
    assert got == performed
