"""Update latency across 8 workers: a patch pushed on the (fake) LaunchDarkly stream → the new
value returned by ``variation`` in every one of 8 worker processes. shmflags (one supervisor
streaming, publishing a new snapshot; 8 workers evaluating on shared memory) next to 8 ldclient
clients, each streaming from the fake itself. Same data, same run.

Benchmarks only. A driver process (``--driver``) forks 8 workers; each evaluates the flag in a
loop, sleeping 0.5 ms between evaluations (a busy server evaluates far more often; the pause
keeps 8 spinning workers from starving the supervisor on a 2-core machine), and writes one line
to the shared pipe when the value changes: ``seen PID VALUE TIME``. The benchmark pushes a
patch, waits until all 8 report the new value, and repeats. Reported per round: the time from
the push until the slowest of the 8 saw the value ("all 8"), and per worker; median and p99
over the rounds (with 30 rounds the p99 is the worst round).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from benchmarks import common
from benchmarks.datagen import generate

FLAG = "bench-update"
WORKERS = 8
PAUSE = 0.0005
CONTEXT = {"kind": "user", "key": "user-000001"}


def _flag(version: int, value: str) -> Dict[str, Any]:
    return {"key": FLAG, "version": version, "on": True, "salt": FLAG,
            "variations": [value, "off"], "offVariation": 1, "fallthrough": {"variation": 0},
            "targets": [], "contextTargets": [], "rules": [], "prerequisites": [],
            "trackEvents": False, "deleted": False}


def _worker(impl: str, args: argparse.Namespace, out_fd: int) -> None:
    if impl == "shmflags":
        import shmflags
        client, _ = common.shmflags_client(args.name)
        ctx: Any = shmflags.Context.from_dict(CONTEXT)
    else:
        from ldclient import Context
        client = common.ldclient_streaming(args.fake, start_wait=120)
        ctx = Context.from_dict(CONTEXT)
    pid = os.getpid()
    last = None
    deadline = time.monotonic() + args.lifetime
    variation, sleep, now = client.variation, time.sleep, time.time
    while time.monotonic() < deadline:
        value = variation(FLAG, ctx, "default")
        if value != last:
            t = now()
            last = value
            os.write(out_fd, f"seen {pid} {value} {t:.6f}\n".encode())
            if value == "stop":
                break
        sleep(PAUSE)
    os._exit(0)


def driver(impl: str, args: argparse.Namespace) -> None:
    """Fork :data:`WORKERS` workers writing to stdout; wait for them."""
    # the SDK is imported by the master, as a preforking server does
    __import__("shmflags" if impl == "shmflags" else "ldclient.client")
    out_fd = sys.stdout.fileno()
    pids = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            try:
                _worker(impl, args, out_fd)
            finally:
                os._exit(1)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)


def _measure(impl: str, services: common.Services, rounds: int, version: List[int]
             ) -> Dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHMFLAGS_")}
    env["PYTHONPATH"] = common.ROOT
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.update_bench", "--driver", impl,
                             "--workers", str(WORKERS), "--lifetime", "600"]
                            + services.worker_args(), cwd=common.ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: "queue.Queue[str]" = queue.Queue()

    def reader() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line)

    threading.Thread(target=reader, daemon=True).start()
    seen: Dict[str, Dict[int, float]] = {}

    def wait_all(value: str, timeout: float) -> Dict[int, float]:
        deadline = time.monotonic() + timeout
        while len(seen.get(value, {})) < WORKERS:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError(f"{impl}: {len(seen.get(value, {}))} of {WORKERS} workers saw "
                                   f"{value!r}; stderr: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}")  # type: ignore[union-attr]
            try:
                line = lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            parts = line.split()
            if len(parts) == 4 and parts[0] == "seen":
                seen.setdefault(parts[2], {})[int(parts[1])] = float(parts[3])
        return seen[value]

    all8: List[float] = []
    each: List[float] = []
    published: List[float] = []
    attachment = None
    if impl == "shmflags":
        from shmflags import shm
        attachment = shm.Attachment(services.name)
    try:
        start_value = f"{impl}-start"
        services.fake.push("patch", {"path": f"/flags/{FLAG}",
                                     "data": _flag(version[0], start_value)})
        version[0] += 1
        wait_all(start_value, 300)  # every worker attached/initialized and serving
        time.sleep(0.3)
        for i in range(rounds):
            value = f"{impl}-v{i}"
            pushed = time.time()
            services.fake.push("patch", {"path": f"/flags/{FLAG}",
                                         "data": _flag(version[0], value)})
            version[0] += 1
            times = wait_all(value, 30)
            if attachment is not None:  # when the supervisor switched the control block
                last = attachment.status().get("last_update")
                if last:
                    published.append((last - pushed) * 1e3)
            lat = [(t - pushed) * 1e3 for t in times.values()]
            all8.append(max(lat))
            each.extend(lat)
            time.sleep(0.15)
        services.fake.push("patch", {"path": f"/flags/{FLAG}", "data": _flag(version[0], "stop")})
        version[0] += 1
        proc.wait(30)
    finally:
        if attachment is not None:
            attachment.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return {"rounds": rounds, "all8_ms": all8,
            "all8_median_ms": common.percentile(all8, 50),
            "all8_p99_ms": common.percentile(all8, 99),
            "worker_median_ms": common.percentile(each, 50),
            "worker_p99_ms": common.percentile(each, 99),
            # shmflags: push → new generation in the control block (ms resolution)
            "published_median_ms": common.percentile(published, 50),
            "published_p99_ms": common.percentile(published, 99)}


def bench(quick: bool, sizes: Optional[List[int]] = None) -> Dict[str, Any]:
    sizes = sizes or ([1000] if quick else [1000, 10_000])
    rounds = 10 if quick else 30
    out: Dict[str, Any] = {"workers": WORKERS, "pause_ms": PAUSE * 1e3, "sizes": {},
                           "load_before": common.load_average()}
    for n in sizes:
        data = generate(n, seed=1, n_contexts=10)
        payload = data.payload()
        payload["flags"][FLAG] = _flag(1, "initial")
        version = [2]
        row: Dict[str, Any] = {}
        with common.Services(payload, supervisor=True, label="up",
                             heartbeat=None) as services:
            for impl in ("shmflags", "ldclient"):
                print(f"  update {n} flags: {impl}", file=sys.stderr, flush=True)
                row[impl] = _measure(impl, services, rounds, version)
        out["sizes"][str(n)] = row
    out["load_after"] = common.load_average()
    out["markdown"] = markdown(out)
    out["targets"] = []
    for n, row in out["sizes"].items():
        s, ld = row["shmflags"], row["ldclient"]
        out["targets"].append({
            "target": f"update visible in all 8 workers ≤ 5 ms ({n} flags)",
            "measured": f"median {s['all8_median_ms']:.1f} ms, p99 {s['all8_p99_ms']:.1f} ms "
                        f"(ldclient: {ld['all8_median_ms']:.1f} / {ld['all8_p99_ms']:.1f} ms)",
            "met": s["all8_median_ms"] <= 5.0})
    return out


def markdown(out: Dict[str, Any]) -> str:
    rows = [f"### Update latency: patch on the stream → new value in all {out['workers']} workers "
            f"(ms; ratio = ldclient ÷ shmflags; load {out['load_before'][0]})", "",
            "| flags | rounds | shmflags all 8: median | p99 | ldclient all 8: median | p99 | "
            "ratio (median) | shmflags per worker: median / p99 | ldclient per worker: median "
            "/ p99 | shmflags push → published: median / p99 |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, row in out["sizes"].items():
        s, ld = row["shmflags"], row["ldclient"]
        rows.append(f"| {n} | {s['rounds']} | {s['all8_median_ms']:.1f} | {s['all8_p99_ms']:.1f} | "
                    f"{ld['all8_median_ms']:.1f} | {ld['all8_p99_ms']:.1f} | "
                    f"{common.ratio(s['all8_median_ms'], ld['all8_median_ms'])} | "
                    f"{s['worker_median_ms']:.1f} / {s['worker_p99_ms']:.1f} | "
                    f"{ld['worker_median_ms']:.1f} / {ld['worker_p99_ms']:.1f} | "
                    f"{s.get('published_median_ms', float('nan')):.0f} / "
                    f"{s.get('published_p99_ms', float('nan')):.0f} |")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--driver", choices=("shmflags", "ldclient"))
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--lifetime", type=float, default=600)
    parser.add_argument("--flags", type=int)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name")
    parser.add_argument("--socket")
    parser.add_argument("--fake")
    parser.add_argument("--redis")
    args = parser.parse_args(argv)
    if args.driver:
        driver(args.driver, args)
    else:
        json.dump(bench(args.quick, [args.flags] if args.flags else None), sys.stdout)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
