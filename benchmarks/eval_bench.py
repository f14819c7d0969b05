"""Evaluation speed: ns per variation by category and for the mix, variation_detail, all flags.

Benchmarks only. Each implementation runs in its own process (``--impl``) on the same seeded
data, so that backends chosen at import (``SHMFLAGS_EVALUATOR``) and memory do not interfere;
``benchmarks.__main__`` collects the JSON lines and computes ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

from benchmarks.datagen import Dataset, generate

IMPLS = ("shmflags-c", "shmflags-python", "ldclient")


def _time_calls(fn: Callable[[Any, str], Any], pairs: Sequence[Tuple[Any, str]],
                min_seconds: float) -> float:
    """Median-of-3 ns per call of ``fn(ctx, key)`` over ``pairs``, repeating to ``min_seconds``."""
    results = []
    for _ in range(3):
        calls = 0
        start = time.perf_counter_ns()
        deadline = start + int(min_seconds * 1e9 / 3)
        while True:
            for ctx, key in pairs:
                fn(ctx, key)
            calls += len(pairs)
            now = time.perf_counter_ns()
            if now >= deadline:
                break
        results.append((now - start) / calls)
    results.sort()
    return results[1]


def _make_client(impl: str, data: Dataset) -> Tuple[Any, Callable[[Dict[str, Any]], Any]]:
    if impl == "ldclient":
        from benchmarks.oracle import ld_context, ldclient_on_data

        return ldclient_on_data(data.payload()), ld_context
    import shmflags

    expected = "c" if impl == "shmflags-c" else "python"
    if shmflags.evaluator_backend() != expected:
        raise SystemExit(f"{impl}: evaluator backend is {shmflags.evaluator_backend()!r}; "
                         f"run with SHMFLAGS_EVALUATOR={expected}")
    client = shmflags.Client.from_data(data.payload())
    return client, shmflags.Context.from_dict


def run(impl: str, n_flags: int, *, quick: bool, seed: int = 1) -> Dict[str, Any]:
    """Measure one implementation; returns a JSON-able dict of ns figures."""
    data = generate(n_flags, seed=seed)
    client, to_ctx = _make_client(impl, data)
    rng = random.Random(seed + 1)
    n_ctx = 200 if quick else 1000
    raw_contexts = data.contexts[:n_ctx]
    t0 = time.perf_counter_ns()
    contexts = [to_ctx(c) for c in raw_contexts]
    context_ns = (time.perf_counter_ns() - t0) / len(raw_contexts)
    budget = 0.3 if quick else 1.5
    if impl == "shmflags-python" or impl == "ldclient":
        budget /= 2  # slow implementations need fewer repetitions for the same precision

    out: Dict[str, Any] = {"impl": impl, "flags": n_flags, "context_build_ns": context_ns,
                           "variation_ns": {}}
    variation = client.variation
    for cat, keys in sorted(data.keys_by_category().items()):
        pairs = [(rng.choice(contexts), rng.choice(keys)) for _ in range(500)]
        out["variation_ns"][cat] = _time_calls(lambda c, k: variation(k, c, None), pairs, budget)
    all_keys = list(data.flags)
    mix = [(rng.choice(contexts), rng.choice(all_keys)) for _ in range(2000)]
    out["variation_ns"]["mix"] = _time_calls(lambda c, k: variation(k, c, None), mix, budget)
    detail = client.variation_detail
    out["variation_detail_ns"] = _time_calls(lambda c, k: detail(k, c, None), mix, budget)

    # all_flags_state: a few contexts, repeated.
    ctx_sample = contexts[:20]
    reps = 3 if (quick or n_flags >= 10_000) else 10
    times = []
    for _ in range(reps):
        for ctx in ctx_sample[: (5 if n_flags >= 10_000 else 20)]:
            t0 = time.perf_counter_ns()
            client.all_flags_state(ctx)
            times.append(time.perf_counter_ns() - t0)
    times.sort()
    out["all_flags_state_ns"] = times[len(times) // 2]
    close = getattr(client, "close", None)
    if close:
        close()
    return out


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--impl", choices=IMPLS, required=True)
    parser.add_argument("--flags", type=int, default=1000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.impl == "shmflags-python":
        os.environ.setdefault("SHMFLAGS_EVALUATOR", "python")
    json.dump(run(args.impl, args.flags, quick=args.quick), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
