"""``python -m benchmarks --quick | --full``: shmflags next to ldclient, ratios from one run.

Benchmarks only. Writes ``benchmarks/results/latest.json`` and ``latest.md`` (the tables the
README's Performance section quotes). This machine is shared and noisy, so every figure is
compared with ldclient measured in the same run, and ratios are what we report.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def _sub(module: str, args: List[str], env: Dict[str, str] | None = None,
         timeout: float = 900) -> Any:
    """Run ``python -m benchmarks.<module> args`` and parse its last JSON line."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.{module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_eval(quick: bool) -> Dict[str, Any]:
    sizes = [100, 1000] if quick else [100, 1000, 10_000]
    out: Dict[str, Any] = {}
    for n in sizes:
        row = {}
        for impl, env in (("shmflags-c", {"SHMFLAGS_EVALUATOR": "c"}),
                          ("shmflags-python", {"SHMFLAGS_EVALUATOR": "python"}),
                          ("ldclient", {})):
            args = ["--impl", impl, "--flags", str(n)] + (["--quick"] if quick else [])
            row[impl] = _sub("eval_bench", args, env)
        out[str(n)] = row
    return out


BENCHES: Dict[str, Callable[[bool], Dict[str, Any]]] = {"eval": bench_eval}


def _optional_benches() -> None:
    """Register the benchmarks whose modules exist (they land as features land)."""
    for name, module, attr in (("memory", "benchmarks.memory_bench", "bench"),
                               ("publish", "benchmarks.publish_bench", "bench"),
                               ("startup", "benchmarks.startup_bench", "bench"),
                               ("update", "benchmarks.update_bench", "bench"),
                               ("events", "benchmarks.events_bench", "bench"),
                               ("gunicorn", "benchmarks.gunicorn_bench", "bench")):
        try:
            mod = __import__(module, fromlist=[attr])
        except ImportError:
            continue
        BENCHES[name] = getattr(mod, attr)


def _ratio(a: float, b: float) -> str:
    return f"{b / a:.1f}×" if a > 0 else "n/a"


def markdown(results: Dict[str, Any]) -> str:
    """Tables of the results, ratios against ldclient."""
    lines = [f"Machine: {results['machine']}; run {results['date']} "
             f"({'quick' if results['quick'] else 'full'}).", ""]
    ev = results.get("eval")
    if ev:
        lines += ["### Evaluation (ns per call; speed-up = ldclient ÷ shmflags C)", "",
                  "| flags | measure | shmflags C | shmflags Python | ldclient | speed-up |",
                  "|---|---|---:|---:|---:|---:|"]
        for n, row in ev.items():
            c, p, ld = row["shmflags-c"], row["shmflags-python"], row["ldclient"]
            for cat in c["variation_ns"]:
                lines.append(f"| {n} | variation: {cat} | {c['variation_ns'][cat]:.0f} | "
                             f"{p['variation_ns'][cat]:.0f} | {ld['variation_ns'][cat]:.0f} | "
                             f"{_ratio(c['variation_ns'][cat], ld['variation_ns'][cat])} |")
            for m in ("variation_detail_ns", "all_flags_state_ns", "context_build_ns"):
                lines.append(f"| {n} | {m[:-3]} | {c[m]:.0f} | {p[m]:.0f} | {ld[m]:.0f} | "
                             f"{_ratio(c[m], ld[m])} |")
        lines.append("")
    for name, res in results.items():
        if isinstance(res, dict) and "markdown" in res:
            lines += [res["markdown"], ""]
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, short runs (default)")
    mode.add_argument("--full", action="store_true", help="all sizes, longer runs")
    parser.add_argument("--only", action="append", help="run only these benchmarks")
    args = parser.parse_args(argv)
    quick = not args.full
    _optional_benches()
    results: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}, {platform.system()} {platform.release()}",
        "quick": quick,
    }
    for name, fn in BENCHES.items():
        if args.only and name not in args.only:
            continue
        print(f"benchmark {name} ...", file=sys.stderr, flush=True)
        try:
            results[name] = fn(quick)
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            results[name] = {"error": str(exc)}
            print(f"benchmark {name} failed: {exc}", file=sys.stderr)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "latest.json"), "w") as fh:
        json.dump(results, fh, indent=2, sort_keys=True)
    md = markdown(results)
    with open(os.path.join(RESULTS, "latest.md"), "w") as fh:
        fh.write(md)
    print(md)


if __name__ == "__main__":
    main()
