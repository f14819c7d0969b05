"""gunicorn configuration for an app using shmflags: nothing flag-specific is needed.

No post_fork hook and no --preload requirement: workers attach to the supervisor's snapshot on
their first evaluation. The supervisor runs beside gunicorn (systemd unit
``shmflags-supervisor.service``, see packaging/systemd and docs/operations.md).
"""
import os

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WORKERS", "4"))
# Recycling workers is safe: each new worker attaches to the same shared snapshot, and a
# graceful exit flushes its pending analytics events to the supervisor.
max_requests = int(os.environ.get("MAX_REQUESTS", "0"))
wsgi_app = "examples.app:app"
