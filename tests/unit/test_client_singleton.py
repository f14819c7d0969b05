"""shmflags.get() / set_config(): one client per process, env config, ldclient.Config accepted."""
from __future__ import annotations

import os
import uuid
from typing import Iterator

import ldclient
import pytest

import shmflags
from shmflags.client import singleton


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    ns = f"t-single-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SHMFLAGS_NAME", ns)
    monkeypatch.setenv("SHMFLAGS_START_WAIT", "0")
    monkeypatch.setenv("SHMFLAGS_SEND_EVENTS", "false")
    old = singleton._reset()
    if old is not None:
        old.close()
    yield ns
    old = singleton._reset()
    if old is not None:
        old.close()


def test_get_without_set_config_reads_the_environment(fresh: str) -> None:
    client = shmflags.get()
    assert client is shmflags.get()
    assert client._config.name == fresh
    assert client.variation("f", shmflags.Context.create("u"), "d") == "d"


def test_set_config_replaces_and_closes_the_old_client() -> None:
    td = shmflags.TestData()
    td.update(td.flag("f").variation_for_all(True))
    shmflags.set_config(shmflags.Config(update_processor_class=td, send_events=False))
    first = shmflags.get()
    assert first.variation("f", shmflags.Context.create("u"), False) is True
    td2 = shmflags.TestData()
    td2.update(td2.flag("f").variation_for_all(False))
    shmflags.set_config(shmflags.Config(update_processor_class=td2, send_events=False))
    second = shmflags.get()
    assert second is not first and first._closed
    assert second.variation("f", shmflags.Context.create("u"), True) is False


def test_ldclient_config_is_accepted() -> None:
    td = shmflags.TestData()
    td.update(td.flag("f").value_for_all("x"))
    shmflags.set_config(ldclient.Config("sdk-abc", update_processor_class=td, send_events=False,
                                        application={"id": "app"}))
    client = shmflags.get()
    assert client.get_sdk_key() == "sdk-abc"
    assert client._config.application == {"id": "app"}
    assert client.variation("f", ldclient.Context.create("u"), None) == "x"


def test_forked_child_gets_the_inherited_client_renewed() -> None:
    td = shmflags.TestData()
    td.update(td.flag("f").variation_for_all(True))
    shmflags.set_config(shmflags.Config(update_processor_class=td, send_events=False))
    parent_client = shmflags.get()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            client = shmflags.get()
            ok = (client is parent_client and client._pid == os.getpid()
                  and client.variation("f", shmflags.Context.create("u"), False) is True)
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.waitpid(pid, 0)
    assert got == b"1"


def test_lock_held_at_fork_does_not_deadlock_the_child() -> None:
    singleton._process_lock().acquire()  # as if another thread were inside get() at fork
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                shmflags.get()
                os.write(w, b"1")
            finally:
                os._exit(0)
        os.close(w)
        import select
        ready, _, _ = select.select([r], [], [], 10)
        assert ready and os.read(r, 1) == b"1"
        os.waitpid(pid, 0)
    finally:
        singleton._process_lock().release()
