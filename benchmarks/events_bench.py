"""Datagram throughput into the supervisor's event service, and the worker's recording cost.

Benchmarks only. A sender process records evaluations with ``EventRecorder`` (each flush packs
its window into msgpack datagrams on the Unix socket); the supervisor-side ``EventService``
runs in this process, as in ``shmflags-supervisor``, delivering to the fake LaunchDarkly.
Reported: datagrams/s and summarized evaluations/s the service takes in, and the worker's
``record_evaluation`` cost. ldclient has no cross-process path to compare with; its own
per-evaluation event cost is in the ``eval`` benchmark ("variation: mix, events on").
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SENDER = r'''
import json, sys, time
from shmflags import Config, Context
from shmflags.events.recorder import EventRecorder
sock, n_windows, per_window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rec = EventRecorder(Config(send_events=True, flush_interval=3600), sock)
ctxs = [Context.create(f"user-{i}") for i in range(per_window)]
result = ("on", 0, {"kind": "FALLTHROUGH"}, (7, 0, None, None), ())
t0 = time.perf_counter()
for w in range(n_windows):
    for i in range(per_window):
        rec.record_evaluation(f"flag-{i % 50}", ctxs[i], result, "off", False)
    rec.flush()
elapsed = time.perf_counter() - t0
rec.close()
print(json.dumps({"sent": rec.stats["sent"], "record_ns": elapsed / (n_windows * per_window) * 1e9,
                  "evaluations": n_windows * per_window}))
'''


def bench(quick: bool) -> Dict[str, Any]:
    sys.path.insert(0, ROOT)
    from shmflags import Config
    from shmflags.events.service import EventService
    from tests.fakes.fake_ld import FakeLD

    n_windows, per_window = (200, 500) if quick else (1000, 500)
    with tempfile.TemporaryDirectory(prefix="sfev") as tmp, FakeLD() as fake:
        sock = os.path.join(tmp, "ev.sock")
        service = EventService(Config(sdk_key="sdk-bench", events_uri=fake.url, socket=sock,
                                      flush_interval=1.0, diagnostic_opt_out=True))
        service.start()
        try:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", _SENDER, sock, str(n_windows),
                                   str(per_window)], capture_output=True, text=True, cwd=ROOT,
                                  env=dict(os.environ, PYTHONPATH=ROOT), timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            sender = json.loads(proc.stdout.strip().splitlines()[-1])
            deadline = time.monotonic() + 120
            while service.counters()["received"] < sender["sent"] and time.monotonic() < deadline:
                time.sleep(0.01)
            elapsed = time.perf_counter() - t0
            counters = service.counters()
        finally:
            service.stop(flush=True)
    out = {
        "datagrams": counters["received"], "datagrams_sent": sender["sent"],
        "invalid": counters["invalid"], "evaluations": sender["evaluations"],
        "seconds": elapsed, "datagrams_per_s": counters["received"] / elapsed,
        "evaluations_per_s": sender["evaluations"] / elapsed,
        "record_evaluation_ns": sender["record_ns"],
    }
    out["markdown"] = "\n".join([
        "### Events: worker recording and datagram throughput into the supervisor", "",
        "| measure | value |", "|---|---:|",
        f"| `record_evaluation` (worker, untracked flag, incl. packing on flush) | "
        f"{out['record_evaluation_ns']:.0f} ns |",
        f"| datagrams received by the supervisor | {out['datagrams']} of {out['datagrams_sent']} "
        f"sent ({out['invalid']} invalid) |",
        f"| datagrams/s into the supervisor (end to end, one sender) | {out['datagrams_per_s']:.0f} |",
        f"| evaluations summarized/s (with {per_window} distinct contexts per window) | "
        f"{out['evaluations_per_s']:.0f} |"])
    return out


if __name__ == "__main__":
    json.dump(bench("--full" not in sys.argv), sys.stdout)
    sys.stdout.write("\n")
