"""The process-wide client behind ``shmflags.get()`` and ``shmflags.set_config()``.

The only module-level mutable state in shmflags. Creating the client attaches to shared memory
but starts no thread, so a client made before a fork (gunicorn ``preload_app``, a Celery or
``multiprocessing`` parent) is inherited by every child and keeps working there: the singleton
checks the pid on each ``get()`` and lets the client renew its per-process parts (locks, event
socket), keeping the hooks and listeners registered on it. Nothing here runs at import.

``get()`` is on the hot path of code written for ldclient (``ldclient.get().variation(...)``),
so it makes no system call: the child's renewal runs from an ``os.register_at_fork`` hook
(registered when the first client is made), and forks that bypass Python's ``os.fork`` are
still safe because every per-process part of the client checks the pid on its own slow paths.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Optional

log = logging.getLogger(__name__)

_lock = threading.Lock()
_lock_pid = os.getpid()
_client: Any = None
_config: Any = None
_hook_registered = False


def _process_lock() -> threading.Lock:
    """The singleton lock, replaced in a forked child (the parent may have held it)."""
    global _lock, _lock_pid
    pid = os.getpid()
    if pid != _lock_pid:
        _lock, _lock_pid = threading.Lock(), pid
    return _lock


def set_config(config: Any) -> None:
    """Set the configuration of the shared client.

    Before the first :func:`get` it is simply stored. Afterwards a new client is made with it
    and replaces the current one, which is closed (as ``ldclient.set_config`` does).

    :param config: a :class:`shmflags.Config`, or an ``ldclient.Config`` (its settings are
        read into a :class:`shmflags.Config`).
    """
    global _client, _config
    from shmflags.client.client import Client, as_config
    config = as_config(config)
    with _process_lock():
        _config = config
        old = _client
        if old is None:
            return
        log.info("shmflags: re-creating the shared client with a new configuration")
        _client = Client(config)
    try:
        old.close()
    except Exception as exc:  # noqa: BLE001 - closing the old client must not fail the new one
        log.error("closing the previous shared client failed: %r", exc)


def get() -> Any:
    """The shared :class:`shmflags.Client` of this process, created on first use.

    Without :func:`set_config`, the configuration comes from ``SHMFLAGS_*`` environment
    variables (and ``SHMFLAGS_CONFIG``), so replacing ``ldclient.get()`` with
    ``shmflags.get()`` is the only change an application needs. In a forked child the
    inherited client is returned, renewed for the new process.
    """
    client = _client
    if client is not None:
        return client
    from shmflags.client.client import Client
    from shmflags.config import Config
    with _process_lock():
        return _get_locked(Client, Config)


def _get_locked(client_cls: Any, config_cls: Any) -> Any:
    global _client, _hook_registered
    client = _client
    if client is None:
        _client = client = client_cls(_config if _config is not None else config_cls())
        if not _hook_registered:
            _hook_registered = True
            os.register_at_fork(after_in_child=_after_fork_in_child)
    return client


def _after_fork_in_child() -> None:
    _process_lock()
    client = _client
    if client is not None:
        try:
            client._after_fork()
        except Exception as exc:  # noqa: BLE001 - never break the child's start-up
            log.error("shmflags: renewing the shared client after fork failed: %r", exc)


def _reset() -> Optional[Any]:
    """Forget the shared client and configuration (tests only); returns the old client,
    not closed."""
    global _client, _config
    with _process_lock():
        old, _client, _config = _client, None, None
    return old


__all__ = ["get", "set_config"]
