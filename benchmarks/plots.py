"""PNG plots of the benchmark results: time per evaluation by category, and per-worker memory
against the number of workers. Benchmarks only; needs matplotlib (the ``bench`` extra).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

EVAL_IMPLS = (("shmflags-c", "shmflags (C)"), ("shmflags-python", "shmflags (Python)"),
              ("ldclient", "ldclient (streaming, in memory)"),
              ("ldclient-redis-cached", "ldclient Redis, cached"),
              ("ldclient-redis-uncached", "ldclient Redis, uncached"))


def plot_all(results: Dict[str, Any], outdir: str) -> List[str]:
    """Write the plots the results allow; returns their file names."""
    import matplotlib
    matplotlib.use("Agg")
    benches = results.get("benchmarks", {})
    made = []
    if "sizes" in benches.get("eval", {}):
        made.append(plot_eval(benches["eval"], os.path.join(outdir, "eval_ns.png")))
    if "per_worker_mib" in benches.get("memory", {}):
        made.append(plot_memory(benches["memory"], os.path.join(outdir, "memory.png")))
    return [os.path.basename(p) for p in made]


def plot_eval(res: Dict[str, Any], path: str) -> str:
    import matplotlib.pyplot as plt
    sizes = list(res["sizes"])
    fig, axes = plt.subplots(len(sizes), 1, figsize=(13, 4.2 * len(sizes)), squeeze=False)
    for ax, n in zip(axes[:, 0], sizes):
        row = res["sizes"][n]
        base = row.get("shmflags-c", {}).get("variation_ns", {})
        cats = sorted(base, key=lambda k: (k == "mix", k)) + ["detail", "events on"]
        width = 0.8 / len(EVAL_IMPLS)
        for i, (impl, label) in enumerate(EVAL_IMPLS):
            r = row.get(impl, {})
            vals = [r.get("variation_ns", {}).get(c, float("nan")) for c in cats[:-2]]
            vals.append(r.get("variation_detail_ns", float("nan")))
            ev = {"shmflags-c": "shmflags-c+events", "ldclient": "ldclient+events"}.get(impl)
            vals.append(row.get(ev, {}).get("variation_ns", {}).get("mix", float("nan"))
                        if ev else float("nan"))
            xs = [j + (i - len(EVAL_IMPLS) / 2 + 0.5) * width for j in range(len(cats))]
            ax.bar(xs, [v / 1e3 for v in vals], width, label=label)
        ax.set_yscale("log")
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels([c if c not in ("detail", "events on") else
                            {"detail": "variation_detail\n(mix)",
                             "events on": "mix,\nevents on"}[c] for c in cats])
        ax.set_ylabel("µs per call (log)")
        load = row.get("shmflags-c", {}).get("load_before", ["?"])[0]
        ax.set_title(f"variation by flag category, {n} flags (load {load})")
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_memory(res: Dict[str, Any], path: str) -> str:
    import matplotlib.pyplot as plt
    sizes = res.get("sizes") or sorted({int(k.split("/")[1]) for k in res["per_worker_mib"]})
    counts = res.get("counts") or sorted({int(k.split("/")[2]) for k in res["per_worker_mib"]})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.2), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        for impl, color in (("shmflags", "tab:blue"), ("ldclient", "tab:red")):
            for metric, style in (("uss", "-o"), ("pss", "--s")):
                ys = [res["per_worker_mib"].get(f"{impl}/{n}/{c}", {}).get(metric, float("nan"))
                      for c in counts]
                ax.plot(counts, [max(y, 0.01) for y in ys], style, color=color,
                        label=f"{impl} {metric.upper()}")
        ax.axhline(2.0, color="gray", lw=0.8, ls=":", label="2 MiB target")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(counts)
        ax.set_xticklabels([str(c) for c in counts])
        ax.set_xlabel("workers")
        ax.set_ylabel("MiB per worker for flag data (log)")
        ax.set_title(f"{n} flags")
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
