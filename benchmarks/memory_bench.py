"""Per-worker memory for flag data: N worker processes holding 1,000 / 10,000 flags.

Benchmarks only. Each worker is a separate process (as gunicorn's are): it measures its USS and
PSS after imports, then loads the flag data the way a real worker would — shmflags attaches to
the published snapshot and evaluates every flag once (so every page it needs is touched);
ldclient holds a full client with the same data — and measures again while all N workers are
alive, so PSS divides shared pages among them. The figure reported is the growth per worker.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any, Dict, List

import psutil

from benchmarks.datagen import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mem() -> Dict[str, float]:
    info = psutil.Process().memory_full_info()
    return {"uss": info.uss, "pss": info.pss, "rss": info.rss}


def worker(impl: str, n_flags: int, name: str) -> None:
    """One worker process: report memory before/after loading, driven over stdin/stdout."""
    data = generate(n_flags, seed=1, n_contexts=10)
    import shmflags  # noqa: F401 - imports belong to the baseline

    if impl == "ldclient":
        from benchmarks.oracle import ld_context, ldclient_on_data  # noqa: F401
        import ldclient  # noqa: F401
    payload = json.dumps(data.payload())  # what a worker would have received
    del data
    before = _mem()
    if impl == "ldclient":
        from benchmarks.oracle import ld_context, ldclient_on_data

        client = ldclient_on_data(json.loads(payload))
        ctx = ld_context({"kind": "user", "key": "user-000001"})
    else:
        client = shmflags.Client(shmflags.Config(name=name, send_events=False))
        ctx = shmflags.Context.create("user-000001")
    del payload
    state = client.all_flags_state(ctx)
    assert state.valid, "client has no data"
    sys.stdout.write("loaded\n")
    sys.stdout.flush()
    sys.stdin.readline()
    after = _mem()
    sys.stdout.write(json.dumps({k: after[k] - before[k] for k in after}) + "\n")
    sys.stdout.flush()
    sys.stdin.readline()


def _publish(n_flags: int, name: str) -> Any:
    from shmflags.shm import Publisher
    from shmflags.snapshot.builder import SnapshotBuilder

    data = generate(n_flags, seed=1, n_contexts=10)
    pub = Publisher(name)
    pub.publish(SnapshotBuilder().build(data.flags, data.segments))
    pub.set_status("VALID")
    return pub


def measure(impl: str, n_flags: int, n_workers: int, name: str) -> Dict[str, float]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.memory_bench", "--worker", impl,
                               str(n_flags), name], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for _ in range(n_workers)]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "loaded":
                raise RuntimeError(f"{impl} worker failed to load: {line!r}")
        for p in procs:
            p.stdin.write("measure\n")
            p.stdin.flush()
        figures = [json.loads(p.stdout.readline()) for p in procs]
        for p in procs:
            p.stdin.write("exit\n")
            p.stdin.flush()
    finally:
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    return {k: sum(f[k] for f in figures) / len(figures) / 2**20 for k in ("uss", "pss", "rss")}


def bench(quick: bool) -> Dict[str, Any]:
    sizes = [1000, 10_000]
    counts = [1, 8] if quick else [1, 2, 4, 8, 16]
    out: Dict[str, Any] = {"per_worker_mib": {}}
    for n_flags in sizes:
        name = f"bench-mem-{uuid.uuid4().hex[:8]}"
        pub = _publish(n_flags, name)
        try:
            for impl in ("shmflags", "ldclient"):
                for n in counts:
                    out["per_worker_mib"][f"{impl}/{n_flags}/{n}"] = measure(impl, n_flags, n, name)
        finally:
            from shmflags.shm import cleanup

            pub.close()
            cleanup(name)
    rows = ["### Per-worker memory for flag data (MiB, growth after loading; mean of N workers)", "",
            "| flags | workers | shmflags USS | shmflags PSS | ldclient USS | ldclient PSS | USS ratio |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for n_flags in sizes:
        for n in counts:
            s = out["per_worker_mib"][f"shmflags/{n_flags}/{n}"]
            ld = out["per_worker_mib"][f"ldclient/{n_flags}/{n}"]
            ratio = ld["uss"] / s["uss"] if s["uss"] > 0.01 else float("inf")
            rows.append(f"| {n_flags} | {n} | {s['uss']:.2f} | {s['pss']:.2f} | {ld['uss']:.1f} | "
                        f"{ld['pss']:.1f} | {ratio:.0f}× |")
    out["markdown"] = "\n".join(rows)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        json.dump(bench("--full" not in sys.argv), sys.stdout)
        sys.stdout.write("\n")
        time.sleep(0)
