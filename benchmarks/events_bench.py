"""Analytics events: what events on costs per ``variation``, and datagram throughput into the
supervisor.

Benchmarks only. Three parts, each implementation in its own fresh process:

* ``variation`` events off vs on, shmflags and ldclient in the same run, on the same data
  (1,000 flags, ``datagen`` seed 1) and the same seeded (context, flag) pairs: the ``mix``
  (2,000 pairs, a random context per call, as the ``eval`` benchmark) and ``request`` (the
  same pairs in runs of 20 evaluations per context, as a web request evaluates). shmflags is
  an in-process client (``Client.from_data``, the C evaluator on snapshot bytes) whose worker
  recorder sends datagrams to an ``EventService`` running in this process; "shmflags, Python
  recorder" is the same with ``PythonEventRecorder`` (the recorder without its C common
  path), so one run shows both. ldclient holds the same data in its in-memory store and
  posts its events to the fake LaunchDarkly. Fastest of 5 rounds (other load only adds time).
  Ratio = events on ÷ events off of the same SDK.
* ``record_evaluation`` alone, common case (untracked flag, context already seen in the
  window, no sampling): C path and Python path.
* datagram throughput: 1 and 4 sender processes record windows of 500 evaluations over 50
  flags, with 500 distinct contexts per window (every evaluation a new sighting) or 10, and
  flush each window; the supervisor's ``EventService`` (receive, validate, merge, post) runs
  in this process, as in ``shmflags-supervisor``, posting to the fake LaunchDarkly (also in
  this process). Reported: datagrams/s and evaluations/s it takes in, end to end (first
  sender start to the last datagram received), and whether the summary counts posted to
  ``/bulk`` equal the evaluations made. With several senders the figure is bounded by the
  receiving side rather than by one sender's packing; on a 2-core machine the senders, the
  service and the fake share the cores, so it is a lower bound for the service alone.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: implementation -> (SDK, events on, recorder class for shmflags)
VARIATION_IMPLS = {
    "shmflags, events off": ("shmflags", False, None),
    "shmflags, events on": ("shmflags", True, "EventRecorder"),
    "shmflags, events on, Python recorder": ("shmflags", True, "PythonEventRecorder"),
    "ldclient, events off": ("ldclient", False, None),
    "ldclient, events on": ("ldclient", True, None),
}

_SENDER = r'''
import json, sys, time
from shmflags import Config, Context
from shmflags.events.recorder import EventRecorder
sock, n_windows, per_window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tag, n_ctx = sys.argv[4], int(sys.argv[5])
rec = EventRecorder(Config(send_events=True, flush_interval=3600), sock)
ctxs = [Context.create(f"user-{tag}-{i % n_ctx}") for i in range(per_window)]
result = ("on", 0, {"kind": "FALLTHROUGH"}, (7, 0, None, None), ())
t0 = time.perf_counter()
for w in range(n_windows):
    for i in range(per_window):
        rec.record_evaluation(f"flag-{i % 50}", ctxs[i], result, "off", False)
    rec.flush()
elapsed = time.perf_counter() - t0
rec.close()
print(json.dumps({"sent": rec.stats["sent"], "record_ns": elapsed / (n_windows * per_window) * 1e9,
                  "evaluations": n_windows * per_window, "dropped": rec.stats["dropped"]}))
'''


def _pairs(data: Any, to_ctx: Any) -> Tuple[List[Tuple[Any, str]], List[Tuple[Any, str]]]:
    """The ``mix`` and ``request`` workloads (same seed in every process)."""
    rng = random.Random(2)
    contexts = [to_ctx(c) for c in data.contexts[:1000]]
    keys = list(data.flags)
    mix = [(rng.choice(contexts), rng.choice(keys)) for _ in range(2000)]
    request = []
    for i in range(100):
        ctx = rng.choice(contexts)
        request += [(ctx, rng.choice(keys)) for _ in range(20)]
    return mix, request


def run_variation(impl: str, socket_path: str, fake_url: str, quick: bool) -> Dict[str, Any]:
    """One implementation, in this (fresh) process."""
    from benchmarks import common
    from benchmarks.datagen import generate

    sdk, events, recorder_cls = VARIATION_IMPLS[impl]
    data = generate(1000, seed=1, n_contexts=1000)
    budget = 0.4 if quick else 1.5
    out: Dict[str, Any] = {"impl": impl, "load_before": common.load_average()}
    if sdk == "ldclient":
        from benchmarks.oracle import ld_context, ldclient_on_data
        client = ldclient_on_data(data.payload(), send_events=events, events_uri=fake_url)
        to_ctx = ld_context
    else:
        import shmflags
        from shmflags.config import Config
        from shmflags.events import recorder as R
        config = Config(send_events=events, socket=socket_path)
        # (a tree without PythonEventRecorder, for a before/after run: its only recorder)
        recorder = getattr(R, recorder_cls, R.EventRecorder)(config) if events else None
        client = shmflags.Client.from_data(data.payload(), config=config)
        if recorder is not None:  # the chosen recorder instead of the configured one
            old, client._recorder = client._recorder, recorder
            if old is not None:
                old.close()
        to_ctx = shmflags.Context.from_dict
        out["evaluator"] = shmflags.evaluator_backend()
    mix, request = _pairs(data, to_ctx)
    variation = client.variation
    for _ in range(2):  # warm: every context seen in the window, every counter made
        for ctx, key in mix + request:
            variation(key, ctx, None)
    for name, pairs in (("mix", mix), ("request", request)):
        out[f"{name}_ns"], out[f"{name}_cpu_ns"] = common.time_calls_cpu(
            lambda c, k: variation(k, c, None), pairs, budget)
    if sdk == "shmflags" and events:
        rec = client._recorder
        ctx = to_ctx({"kind": "user", "key": "bench-common"})
        t = ("on", 0, {"kind": "FALLTHROUGH"}, (7, 0, None, None), ())
        record = rec.record_evaluation
        record("bench-flag", ctx, t, "off", False)
        pairs = [(ctx, "bench-flag")] * 1000
        out["record_common_ns"], out["record_common_cpu_ns"] = common.time_calls_cpu(
            lambda c, k: record(k, c, t, "off", False), pairs, budget)
    out["load_after"] = common.load_average()
    close = getattr(client, "close", None)
    if close:
        close()
    return out


def _throughput(sock: str, senders: int, n_windows: int, per_window: int, n_ctx: int,
                service: Any, fake: Any) -> Dict[str, Any]:
    before = service.counters()["received"]
    n_bulk = len(fake.events)
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", _SENDER, sock, str(n_windows),
                               str(per_window), str(i), str(n_ctx)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=ROOT)) for i in range(senders)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(stderr[-2000:])
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    sent = sum(r["sent"] for r in results)
    deadline = time.monotonic() + 120
    while service.counters()["received"] - before < sent and time.monotonic() < deadline:
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    received = service.counters()["received"] - before
    evaluations = sum(r["evaluations"] for r in results)
    # Delivered: the summary counts in the /bulk posts that follow.
    service.flush()
    delivered = 0
    for p in fake.events[n_bulk:]:
        for ev in p.payload:
            if ev.get("kind") == "summary":
                delivered += sum(c["count"] for f in ev["features"].values()
                                 for c in f["counters"])
    return {"senders": senders, "contexts": n_ctx, "datagrams": received, "datagrams_sent": sent,
            "evaluations": evaluations, "delivered": delivered, "seconds": elapsed,
            "datagrams_per_s": received / elapsed, "evaluations_per_s": evaluations / elapsed,
            "record_ns": min(r["record_ns"] for r in results),
            "dropped": sum(r["dropped"] for r in results)}


def bench(quick: bool) -> Dict[str, Any]:
    from benchmarks import common
    from shmflags import Config
    from shmflags.events.service import EventService
    from tests.fakes.fake_ld import FakeLD

    out: Dict[str, Any] = {"load_before": common.load_average(), "variation": {},
                           "throughput": []}
    n_windows, per_window = (100, 500) if quick else (400, 500)
    multi = 4
    with tempfile.TemporaryDirectory(prefix="sfev") as tmp, FakeLD() as fake:
        sock = os.path.join(tmp, "ev.sock")
        service = EventService(Config(sdk_key="sdk-bench", events_uri=fake.url, socket=sock,
                                      flush_interval=1.0, diagnostic_opt_out=True))
        service.start()
        try:
            for impl in VARIATION_IMPLS:
                proc = subprocess.run(
                    [sys.executable, "-m", "benchmarks.events_bench", "--variation", impl, sock,
                     fake.url] + (["--quick"] if quick else []),
                    capture_output=True, text=True, cwd=ROOT,
                    env=dict(os.environ, PYTHONPATH=ROOT), timeout=900)
                if proc.returncode != 0:
                    raise RuntimeError(f"{impl}: {proc.stderr[-2000:]}")
                out["variation"][impl] = json.loads(proc.stdout.strip().splitlines()[-1])
            for n_ctx in (per_window, 10):
                for senders in (1, multi):
                    out["throughput"].append(_throughput(
                        sock, senders, n_windows // senders, per_window, n_ctx, service, fake))
            counters = service.counters()
        finally:
            service.stop(flush=True)
    out["invalid"] = counters["invalid"]
    out["load_after"] = common.load_average()
    out["markdown"] = markdown(out)
    return out


def _ns(v: float) -> str:
    return f"{v / 1000:.2f} µs" if v >= 1000 else f"{v:.0f} ns"


def markdown(out: Dict[str, Any]) -> str:
    v = out["variation"]
    load = out["load_before"][0]
    lines = [f"### Events: `variation` events on vs off (1000 flags; fastest of 5 rounds; "
             f"load {load:.2f} at the start)", "",
             "| SDK | workload | events off | events on | added by events | on ÷ off | "
             "CPU: off | CPU: on | CPU: on ÷ off |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for sdk, on_name in (("shmflags", "shmflags, events on"),
                         ("shmflags, Python recorder", "shmflags, events on, Python recorder"),
                         ("ldclient", "ldclient, events on")):
        off = v["ldclient, events off" if sdk == "ldclient" else "shmflags, events off"]
        on = v[on_name]
        for w in ("mix", "request"):
            a, b = off[f"{w}_ns"], on[f"{w}_ns"]
            ca, cb = off[f"{w}_cpu_ns"], on[f"{w}_cpu_ns"]
            lines.append(f"| {sdk} | {w} | {_ns(a)} | {_ns(b)} | {_ns(b - a)} | "
                         f"{b / a:.2f}× | {_ns(ca)} | {_ns(cb)} | {cb / ca:.2f}× |")
    lines += ["", "`mix`: a random context per call; `request`: 20 evaluations per context. "
              "Wall time, and the process's CPU time (all its threads, so the SDKs' event "
              "threads count; other processes' load does not). Target (issue 8): events on "
              "≤ 2× events off for shmflags.", ""]
    on, onp = v["shmflags, events on"], v["shmflags, events on, Python recorder"]
    lines += ["| `record_evaluation`, common case (untracked flag, context seen, no sampling) | "
              "C path | Python path |", "|---|---:|---:|",
              f"| ns per call (wall) | {_ns(on['record_common_ns'])} | "
              f"{_ns(onp['record_common_ns'])} |",
              f"| ns per call (CPU) | {_ns(on['record_common_cpu_ns'])} | "
              f"{_ns(onp['record_common_cpu_ns'])} |", ""]
    lines += ["### Events: datagram throughput into the supervisor's EventService", "",
              "| contexts per window | senders | datagrams received / sent | datagrams/s | "
              "evaluations/s | evaluations delivered to /bulk / made | "
              "sender record+pack ns/eval |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for t in out["throughput"]:
        lines.append(f"| {t['contexts']} | {t['senders']} | {t['datagrams']} / "
                     f"{t['datagrams_sent']} | "
                     f"{t['datagrams_per_s']:.0f} | {t['evaluations_per_s']:.0f} | "
                     f"{t['delivered']} / {t['evaluations']} | {t['record_ns']:.0f} |")
    lines += ["", "Each sender: windows of 500 evaluations over 50 flags, each window flushed "
              "(the windows are split among the senders, same total); 500 distinct contexts "
              "per window (every evaluation a new sighting: index-event work in the service) "
              "or 10 (mostly summaries). End to end: first sender start to last datagram "
              "received. The service and the fake LaunchDarkly it posts to run in the "
              "benchmark process and share the 2 cores with the senders, so with several "
              "senders the figure is bounded by the receiving side; a lower bound for the "
              f"service alone. Invalid datagrams: {out['invalid']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    if "--variation" in sys.argv:
        i = sys.argv.index("--variation")
        impl, sock, url = sys.argv[i + 1:i + 4]
        json.dump(run_variation(impl, sock, url, "--quick" in sys.argv), sys.stdout)
    else:
        result = bench("--full" not in sys.argv)
        if "--markdown" in sys.argv:
            print(result["markdown"])
        else:
            json.dump(result, sys.stdout)
    sys.stdout.write("\n")
