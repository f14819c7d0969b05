"""Publish time for a full put and a one-flag patch (10,000 flags in a full run, 1,000 quick).

Benchmarks only. shmflags: the supervisor's work (incremental SnapshotBuilder, then
Publisher.publish: new object, write, control block switch), measured in this process on the
same code the supervisor runs. ldclient: what each worker's own client does with the same
stream message (JSON parse + in-memory store init/upsert) — once per worker process, where
shmflags does it once per host; the host's total for 8 workers is 8 times that. The stream's
JSON parse is in the ldclient figure only (the supervisor parses too, not counted here).
"""
from __future__ import annotations

import copy
import json
import statistics
import sys
import time
import uuid
from typing import Any, Dict, List

from benchmarks import common
from benchmarks.datagen import generate


def _median_ms(samples: List[float]) -> float:
    return statistics.median(samples) * 1e3


def bench(quick: bool, n_flags: int = 0) -> Dict[str, Any]:
    n_flags = n_flags or (1000 if quick else 10_000)
    from shmflags.shm import Publisher, cleanup
    from shmflags.snapshot.builder import SnapshotBuilder

    data = generate(n_flags, seed=1, n_contexts=10)
    reps = 3 if quick else 10
    name = f"bench-pub-{uuid.uuid4().hex[:8]}"
    pub = Publisher(name, grace=0.0)
    out: Dict[str, Any] = {"flags": n_flags, "load_before": common.load_average(),
                           "json_bytes": len(json.dumps(data.payload()))}
    try:
        full, patch_build, patch_publish, patch_total = [], [], [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            blob = SnapshotBuilder().build(data.flags, data.segments)
            pub.publish(blob)
            full.append(time.perf_counter() - t0)
            pub.reap()
        builder = SnapshotBuilder()
        flags = dict(data.flags)
        base_blob = builder.build(flags, data.segments)
        pub.publish(base_blob)
        key = next(iter(flags))
        for i in range(reps * 5):
            flag = copy.deepcopy(flags[key])
            flag["version"] += 1
            flag["on"] = not flag["on"]
            flags[key] = flag
            t0 = time.perf_counter()
            # As the supervisor does (store.data_changes → publisher): the changed key is
            # passed, so the patch is an overlay on the last self-contained generation.
            blob = builder.build(flags, data.segments, changed=([key], []))
            t1 = time.perf_counter()
            pub.publish(blob)
            t2 = time.perf_counter()
            patch_build.append(t1 - t0)
            patch_publish.append(t2 - t1)
            patch_total.append(t2 - t0)
            pub.reap()
        out["shmflags"] = {"full_put_ms": _median_ms(full), "patch_build_ms": _median_ms(patch_build),
                           "patch_publish_ms": _median_ms(patch_publish),
                           "patch_total_ms": _median_ms(patch_total),
                           "patch_total_p99_ms": max(patch_total) * 1e3,
                           "snapshot_bytes": len(base_blob), "overlay_bytes": len(blob),
                           "patch_kind": builder.last_kind}
    finally:
        pub.close()
        cleanup(name)

    from ldclient.feature_store import InMemoryFeatureStore
    from ldclient.versioned_data_kind import FEATURES, SEGMENTS

    put_text = json.dumps({"path": "/", "data": data.payload()})
    ld_full, ld_patch = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        msg = json.loads(put_text)
        store = InMemoryFeatureStore()
        store.init({FEATURES: msg["data"]["flags"], SEGMENTS: msg["data"]["segments"]})
        ld_full.append(time.perf_counter() - t0)
    flag = copy.deepcopy(data.flags[key])
    for i in range(reps * 5):
        flag["version"] += 1
        text = json.dumps({"path": f"/flags/{key}", "data": flag})
        t0 = time.perf_counter()
        msg = json.loads(text)
        store.upsert(FEATURES, msg["data"])
        ld_patch.append(time.perf_counter() - t0)
    out["ldclient_per_worker"] = {"full_put_ms": _median_ms(ld_full), "patch_ms": _median_ms(ld_patch)}
    out["load_after"] = common.load_average()
    s, ld = out["shmflags"], out["ldclient_per_worker"]
    out["markdown"] = "\n".join([
        f"### Publishing at {n_flags} flags (ms, median; ratio = ldclient × 8 workers ÷ shmflags "
        f"once per host; load {out['load_before'][0]})", "",
        "| step | shmflags (once per host) | ldclient (in every worker) | ldclient, 8 workers | "
        "ratio | ratio, one worker |", "|---|---:|---:|---:|---:|---:|",
        f"| full put | {s['full_put_ms']:.1f} | {ld['full_put_ms']:.1f} | "
        f"{8 * ld['full_put_ms']:.1f} | {common.ratio(s['full_put_ms'], 8 * ld['full_put_ms'])} | "
        f"{common.ratio(s['full_put_ms'], ld['full_put_ms'])} |",
        f"| one-flag patch | {s['patch_total_ms']:.2f} (build {s['patch_build_ms']:.2f} + publish "
        f"{s['patch_publish_ms']:.2f}; worst {s['patch_total_p99_ms']:.2f}) | {ld['patch_ms']:.3f} | "
        f"{8 * ld['patch_ms']:.3f} | {common.ratio(s['patch_total_ms'], 8 * ld['patch_ms'])} | "
        f"{common.ratio(s['patch_total_ms'], ld['patch_ms'])} |",
        f"| data size | snapshot {s['snapshot_bytes'] / 2**20:.1f} MiB (shared), one-flag "
        f"overlay {s['overlay_bytes'] / 2**20:.2f} MiB | stream JSON "
        f"{out['json_bytes'] / 2**20:.1f} MiB | — | — | — |"])
    return out


if __name__ == "__main__":
    flags_arg = next((int(a.split("=")[1]) for a in sys.argv if a.startswith("--flags=")), 0)
    json.dump(bench("--full" not in sys.argv, flags_arg), sys.stdout)
    sys.stdout.write("\n")
