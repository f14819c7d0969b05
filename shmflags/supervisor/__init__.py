"""The supervisor: one process per host and namespace that publishes flag data into shared memory.

Runs in the supervisor only; importing this package starts nothing. Modules, one job each:
``main`` (start-up, loop, signals), ``store`` (versioned data and status), ``publisher`` (store
to snapshot to shared memory), ``lastgood`` (the last-known-good file), ``atomicfile`` (temp
file + rename), ``lock`` (one supervisor per namespace), ``sdnotify`` (systemd), ``metrics``
(``/metrics``, ``/status``), ``status`` (the status report), ``logsetup`` and ``sources/``
(where the data comes from).
"""
