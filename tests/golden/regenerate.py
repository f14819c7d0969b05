"""Regenerates the golden snapshot files from small.json (run only when the layout changes).

Run from the repository root: ``.venv/bin/python tests/golden/regenerate.py``. Writes
``small.snap`` (container bytes, no compiled records) and ``small.layout.json`` (where every
key lives, for a C reader to compare against). Not a test; test_snapshot_golden.py checks the
builder still produces exactly these bytes.
"""
from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from shmflags.snapshot import format as fmt  # noqa: E402
from shmflags.snapshot.builder import SnapshotBuilder  # noqa: E402
from shmflags.snapshot.reader import SnapshotReader  # noqa: E402


def load_dataset() -> dict:
    """Return the golden dataset (``small.json``)."""
    with open(os.path.join(HERE, "small.json"), encoding="utf-8") as f:
        return json.load(f)


def build_golden(dataset: dict) -> bytes:
    """Build the golden snapshot: no compiled records, fixed time and generation."""
    builder = SnapshotBuilder(use_default_compilers=False)
    return builder.build(dataset["flags"], dataset["segments"],
                         payload_version=dataset["payload_version"],
                         built_at_ms=dataset["built_at_ms"],
                         generation=dataset["generation"])


def describe(data: bytes) -> dict:
    """Return the layout description written to ``small.layout.json``."""
    r = SnapshotReader(data)
    h = r.header

    def items(kind: str, entries, index_off: int, cap: int) -> list:
        out = []
        for e in entries:
            kb = e.key.encode("utf-8")
            hh = fmt.key_hash(kb)
            slot = None
            for i in range(cap):
                s = (hh + i) & (cap - 1)
                if fmt.SLOT_STRUCT.unpack_from(data, index_off + fmt.SLOT_SIZE * s)[1] == e.offset:
                    slot = s
                    break
            out.append({"kind": kind, "key": e.key, "key_hex": kb.hex(), "hash": hh,
                        "home_slot": hh & (cap - 1), "slot": slot, "entry_off": e.offset,
                        "version": e.version, "raw_off": e.raw_off, "raw_len": e.raw_len,
                        "rec_off": e.rec_off, "rec_len": e.rec_len,
                        "pool_off": e.pool_off, "pool_len": e.pool_len})
        return out

    return {
        "header": h._asdict() | {"magic": h.magic.decode("ascii")},
        "flags": items("flag", r.flags(), h.flag_index_off, h.flag_index_cap),
        "segments": items("segment", r.segments(), h.seg_index_off, h.seg_index_cap),
        "absent_flag_keys": ["gone", "seg-a", "nope", ""],
        "absent_segment_keys": ["old-seg", "alpha", ""],
    }


def main() -> None:
    data = build_golden(load_dataset())
    with open(os.path.join(HERE, "small.snap"), "wb") as f:
        f.write(data)
    with open(os.path.join(HERE, "small.layout.json"), "w", encoding="utf-8") as f:
        json.dump(describe(data), f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote small.snap ({len(data)} bytes) and small.layout.json")


if __name__ == "__main__":
    main()
