"""Per-worker memory for flag data: 1 to 16 worker processes holding 1,000 / 10,000 flags.

Benchmarks only. One supervisor streams the data from the fake LaunchDarkly into shared memory.
Each worker is a separate process (as gunicorn's are). It imports its SDK and the modules the
SDK loads lazily, measures its USS and PSS (``/proc/PID/smaps_rollup`` through psutil), then
gets the flag data the way a real worker does — shmflags attaches to the published snapshot;
ldclient makes a client that streams the same data from the fake — evaluates every flag once
(``all_flags_state``: every page it needs is touched), and measures again while all N workers
are alive, so PSS divides the shared snapshot among them. The figure is the growth per worker
(mean of the N workers): the memory the flag data costs each worker.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

import psutil

from benchmarks import common
from benchmarks.datagen import generate

ROOT = common.ROOT
CONTEXT = {"kind": "user", "key": "user-000001"}


def _mem() -> Dict[str, float]:
    info = psutil.Process().memory_full_info()
    return {"uss": info.uss, "pss": info.pss, "rss": info.rss}


def worker(impl: str, name: str, fake_url: str) -> None:
    """One worker process: report memory before/after loading, driven over stdin/stdout."""
    if impl == "shmflags":
        import shmflags
        # the modules the attach path imports lazily are code, not flag data
        import shmflags.client.source  # noqa: F401
        import shmflags.config  # noqa: F401
        import shmflags.shm  # noqa: F401
        import shmflags.snapshot.compile  # noqa: F401
        import shmflags.snapshot.reader  # noqa: F401
        try:
            import shmflags.integrations.bigsegments  # noqa: F401
        except ImportError:
            pass
        ctx: Any = shmflags.Context.from_dict(CONTEXT)
    else:
        __import__("ldclient.client")  # code, not flag data
        from ldclient import Context
        ctx = Context.from_dict(CONTEXT)
    before = _mem()
    if impl == "ldclient":
        client = common.ldclient_streaming(fake_url, start_wait=60)
    else:
        client, _ = common.shmflags_client(name)
    common.wait_valid(client, ctx, timeout=300)
    state = client.all_flags_state(ctx)
    assert state.valid, "client has no data"
    del state  # the result is the caller's memory, not the SDK's
    import gc
    gc.collect()
    sys.stdout.write("loaded\n")
    sys.stdout.flush()
    sys.stdin.readline()
    after = _mem()
    sys.stdout.write(json.dumps({k: after[k] - before[k] for k in after}) + "\n")
    sys.stdout.flush()
    sys.stdin.readline()
    os._exit(0)  # do not wait for ldclient's threads


def measure(impl: str, n_workers: int, services: common.Services) -> Dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHMFLAGS_")}
    env["PYTHONPATH"] = ROOT
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.memory_bench", "--worker", impl,
                               services.name, services.fake.url], stdin=subprocess.PIPE,
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


def bench(quick: bool, sizes: Optional[List[int]] = None) -> Dict[str, Any]:
    sizes = sizes or ([1000] if quick else [1000, 10_000])
    counts = [1, 4] if quick else [1, 2, 4, 8, 16]
    out: Dict[str, Any] = {"per_worker_mib": {}, "sizes": sizes, "counts": counts,
                           "load_before": common.load_average()}
    for n_flags in sizes:
        data = generate(n_flags, seed=1, n_contexts=10)
        with common.Services(data.payload(), supervisor=True, label="me",
                             heartbeat=None) as services:
            out.setdefault("snapshot_mib", {})[str(n_flags)] = _snapshot_mib(services.name)
            for impl in ("shmflags", "ldclient"):
                for n in counts:
                    print(f"  memory {n_flags} flags: {impl} x{n}", file=sys.stderr, flush=True)
                    out["per_worker_mib"][f"{impl}/{n_flags}/{n}"] = measure(impl, n, services)
    out["load_after"] = common.load_average()
    rows = ["### Per-worker memory for flag data (MiB, growth after loading; mean of N workers; "
            f"ratio = ldclient ÷ shmflags; load {out['load_before'][0]})", "",
            "| flags | workers | shmflags USS | shmflags PSS | ldclient USS | ldclient PSS | "
            "USS ratio | PSS ratio |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n_flags in sizes:
        for n in counts:
            s = out["per_worker_mib"][f"shmflags/{n_flags}/{n}"]
            ld = out["per_worker_mib"][f"ldclient/{n_flags}/{n}"]
            rows.append(f"| {n_flags} | {n} | {s['uss']:.2f} | {s['pss']:.2f} | {ld['uss']:.1f} | "
                        f"{ld['pss']:.1f} | {common.ratio(max(s['uss'], 0.01), ld['uss'])} | "
                        f"{common.ratio(s['pss'], ld['pss'])} |")
    snaps = ", ".join(f"{n} flags: {m:.1f} MiB" for n, m in out["snapshot_mib"].items())
    rows += ["", f"Snapshot in shared memory (mapped by every worker, counted in PSS): {snaps}."]
    out["markdown"] = "\n".join(rows)
    out["targets"] = []
    big = max(sizes)
    for n in counts:
        s = out["per_worker_mib"][f"shmflags/{big}/{n}"]
        if n == max(counts) or n == 8:
            out["targets"].append({
                "target": f"per-worker flag-data memory ≤ 2 MiB at {big} flags ({n} workers)",
                "measured": f"USS {s['uss']:.2f} MiB, PSS {s['pss']:.2f} MiB (ldclient USS "
                            f"{out['per_worker_mib'][f'ldclient/{big}/{n}']['uss']:.0f} MiB)",
                "met": s["uss"] <= 2.0 and s["pss"] <= 2.0})
    return out


def _snapshot_mib(name: str) -> float:
    from shmflags import shm
    att = shm.Attachment(name)
    try:
        return len(att.snapshot_buffer()) / 2**20
    finally:
        att.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        flags_arg = next((int(a.split("=")[1]) for a in sys.argv if a.startswith("--flags=")),
                         None)
        json.dump(bench("--full" not in sys.argv, [flags_arg] if flags_arg else None), sys.stdout)
        sys.stdout.write("\n")
