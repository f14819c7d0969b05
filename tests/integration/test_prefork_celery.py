"""Celery's prefork pool (billiard) with the in-memory broker, beside a real supervisor.

The Celery app, the in-memory broker (``memory://``) and a prefork worker
(``start_worker(pool="prefork")``) live in one driver subprocess
(``prefork_helpers.celery_driver``): tasks are sent and consumed there and run in billiard's
forked pool processes. The parent evaluates before the pool forks, so the pool processes
inherit an attached client. Measured: a patch reaches every pool process (printed latency,
bound 1 s) and the summary counts delivered to ``/bulk`` equal the evaluations after a warm
shutdown of the worker.
"""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.fakes.fake_ld import FakeLD
from tests.integration.prefork_helpers import (Driver, Namespace, flag, pool_follows_patch,
                                               require_worker_client, summary_counts, wait_counts)

pytest.importorskip("celery", reason="Celery is not installed (pip install celery)")
pytestmark = pytest.mark.slow
require_worker_client()


@pytest.fixture
def fake() -> Iterator[FakeLD]:
    with FakeLD(heartbeat_interval=0.5) as f:
        f.set_data({"f1": flag("f1", "v1")}, {})
        yield f


@pytest.fixture
def ns() -> Iterator[Namespace]:
    n = Namespace("ce")
    try:
        yield n
    finally:
        print(n.logs())
        n.close()


def test_celery_prefork_pool_follows_patches_and_events_add_up(fake: FakeLD,
                                                              ns: Namespace) -> None:
    ns.supervisor(fake)
    driver = Driver(ns, ["celery", "3", "parent-eval"])
    try:
        assert driver.hello["parent"]["value"] == "v1", driver.hello
        performed = pool_follows_patch(fake, driver, "celery prefork")
    finally:
        driver.close()
        print(driver.log()[-3000:])
    got = wait_counts(fake, "f1", performed)
    print(f"events: {performed} evaluations performed, {got} counted in /bulk summaries "
          f"({summary_counts(fake.events).get('f1')})")
    assert got == performed
