"""``python -m benchmarks --quick | --full [--only NAME ...]``: shmflags next to ldclient, ratios
from one run.

Benchmarks only. Every ``benchmarks/<name>_bench.py`` module that defines ``bench(quick) ->
dict`` is a benchmark (``"markdown"`` holds its table, ``"targets"`` its verdicts on the goals of
issue 10). Results go to ``benchmarks/results/latest.json`` and ``latest.md`` plus PNG plots; a
run with ``--only`` replaces those benchmarks' results and keeps the others', each stamped with
its own time and load average. This machine is shared and noisy, so every figure is compared
with ldclient measured in the same run, and ratios are what we report.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: the order benchmarks run in (others found on disk follow, alphabetically)
ORDER = ("eval", "publish", "startup", "update", "memory", "gunicorn")

BENCHES: Dict[str, Callable[[bool], Dict[str, Any]]] = {}


def discover() -> Dict[str, Callable[[bool], Dict[str, Any]]]:
    """Register every ``benchmarks/<name>_bench.py`` that exposes ``bench(quick)``."""
    found = sorted(os.path.basename(p)[:-len("_bench.py")]
                   for p in glob.glob(os.path.join(ROOT, "benchmarks", "*_bench.py")))
    names = [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]
    for name in names:
        try:
            mod = importlib.import_module(f"benchmarks.{name}_bench")
        except ImportError as exc:
            print(f"benchmark {name}: cannot import ({exc})", file=sys.stderr)
            continue
        fn = getattr(mod, "bench", None)
        if callable(fn):
            BENCHES[name] = fn
    return BENCHES


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh
                        if line.startswith("model name")), platform.processor())
    except OSError:
        cpu = platform.processor()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def versions() -> str:
    out = []
    for dist in ("launchdarkly-server-sdk", "gunicorn", "redis"):
        try:
            from importlib.metadata import version
            out.append(f"{dist} {version(dist)}")
        except Exception:  # noqa: BLE001
            pass
    try:
        import shmflags
        out.append(f"shmflags {shmflags.__version__} (evaluator {shmflags.evaluator_backend()})")
    except Exception:  # noqa: BLE001
        pass
    return ", ".join(out)


def markdown(results: Dict[str, Any]) -> str:
    """The report: machine, the targets' verdicts, then each benchmark's table."""
    lines = [f"Machine: {results['machine']}.", f"Software: {results.get('versions', '')}.", ""]
    benches = results.get("benchmarks", {})
    stamps = [f"{name}: {res.get('_date', '?')}, {'quick' if res.get('_quick') else 'full'}, "
              f"load {res.get('_load', ['?'])[0]}" for name, res in benches.items()]
    if stamps:
        lines += ["Runs (UTC date, mode, 1-minute load average at the start): "
                  + "; ".join(stamps) + ".", ""]
    targets = [t for res in benches.values() for t in res.get("targets", [])]
    if targets:
        lines += ["### Targets (issue 10)", "", "| target | measured | met |", "|---|---|:-:|"]
        lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |"
                  for t in targets]
        lines.append("")
    for name, res in benches.items():
        if "markdown" in res:
            lines += [res["markdown"], ""]
        elif "error" in res:
            lines += [f"### {name}: failed", "", "```", res["error"][-1500:], "```", ""]
    plots = results.get("plots") or []
    if plots:
        lines += ["Plots: " + ", ".join(f"`benchmarks/results/{p}`" for p in plots) + ".", ""]
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, short runs (default)")
    mode.add_argument("--full", action="store_true", help="all sizes, longer runs")
    parser.add_argument("--only", action="append", help="run only this benchmark (repeatable); "
                        "the other benchmarks' previous results are kept")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--render", action="store_true", help="measure nothing: redo the tables "
                        "and plots from results/latest.json (modules with a render(result))")
    args = parser.parse_args(argv)
    quick = not args.full
    discover()
    if args.list:
        print("\n".join(BENCHES))
        return
    os.makedirs(RESULTS, exist_ok=True)
    latest = os.path.join(RESULTS, "latest.json")
    results: Dict[str, Any] = {"benchmarks": {}}
    if args.render:
        with open(latest) as fh:
            results = json.load(fh)
        for name, res in results.get("benchmarks", {}).items():
            mod = sys.modules.get(f"benchmarks.{name}_bench")
            if mod is not None and callable(getattr(mod, "render", None)) and "error" not in res:
                mod.render(res)
        args.only = ["-"]  # run nothing below
    elif args.only and os.path.exists(latest):
        with open(latest) as fh:
            old = json.load(fh)
        results["benchmarks"].update(old.get("benchmarks", {}))
    if not args.render:
        results.update(machine=machine(), versions=versions())
    for name, fn in BENCHES.items():
        if args.only and name not in args.only:
            continue
        print(f"benchmark {name} ...", file=sys.stderr, flush=True)
        stamp = {"_date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "_quick": quick,
                 "_load": [round(x, 2) for x in os.getloadavg()]}
        t0 = time.monotonic()
        try:
            res = fn(quick)
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            import traceback
            res = {"error": traceback.format_exc()}
            print(f"benchmark {name} failed: {exc}", file=sys.stderr)
        res.update(stamp, _seconds=round(time.monotonic() - t0, 1))
        results["benchmarks"][name] = res
        with open(latest, "w") as fh:  # after each benchmark: a crash keeps what was measured
            json.dump(results, fh, indent=1, sort_keys=True)
    try:
        from benchmarks.plots import plot_all
        results["plots"] = plot_all(results, RESULTS)
    except Exception as exc:  # noqa: BLE001 - plots are optional (matplotlib: bench extra)
        print(f"plots skipped: {exc}", file=sys.stderr)
    with open(latest, "w") as fh:
        json.dump(results, fh, indent=1, sort_keys=True)
    md = markdown(results)
    with open(os.path.join(RESULTS, "latest.md"), "w") as fh:
        fh.write(md)
    print(md)


if __name__ == "__main__":
    main()
