"""Golden snapshot: the builder reproduces tests/golden/small.snap byte for byte, the reader
reads it back, and the layout description agrees with the bytes."""
from __future__ import annotations

import json
import os
import struct
import sys

import pytest

from shmflags.snapshot import format as fmt
from shmflags.snapshot.reader import SnapshotReader

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "golden")
sys.path.insert(0, GOLDEN)
import regenerate  # noqa: E402


@pytest.fixture(scope="module")
def dataset() -> dict:
    return regenerate.load_dataset()


@pytest.fixture(scope="module")
def golden() -> bytes:
    with open(os.path.join(GOLDEN, "small.snap"), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def layout() -> dict:
    with open(os.path.join(GOLDEN, "small.layout.json"), encoding="utf-8") as f:
        return json.load(f)


def test_builder_reproduces_golden_bytes(dataset, golden):
    built = regenerate.build_golden(dataset)
    assert len(built) == len(golden)
    assert built == golden


def test_golden_header_fields(golden, dataset):
    assert golden[:8] == b"SHMFLAGS"
    assert struct.unpack_from("<I", golden, 8)[0] == 0x04140828
    r = SnapshotReader(golden)
    h = r.header
    assert h.total_size == len(golden)
    assert h.generation == dataset["generation"]
    assert h.built_at_ms == dataset["built_at_ms"]
    assert h.payload_version == dataset["payload_version"]
    assert h.record_format == 0
    live_flags = [k for k, v in dataset["flags"].items() if not v.get("deleted")]
    live_segs = [k for k, v in dataset["segments"].items() if not v.get("deleted")]
    assert (h.n_flags, h.n_segments) == (len(live_flags), len(live_segs))
    assert h.flag_index_cap == 16 and h.seg_index_cap == 8
    assert h.blob_off % 4096 == 0 and h.chunk_shift == 16 and h.n_chunks == 1
    assert h.checksum == fmt.checksum(golden[160:h.blob_off])
    assert h.header_check == fmt.checksum(golden[:152])
    assert struct.unpack_from("<Q", golden, h.chunk_table_off)[0] == \
        fmt.chunk_checksum(golden[h.blob_off:])
    assert (h.base_generation, h.base_size, h.base_checksum) == (0, 0, 0)
    assert golden[108:112] == b"\0" * 4 and golden[136:152] == b"\0" * 16
    # hot region (keys; no records here) first, raw msgpack after it
    entries = [r.find_flag(k) for k in live_flags] + [r.find_segment(k) for k in live_segs]
    assert max(struct.unpack_from("<I", golden, e.offset)[0] for e in entries) < h.raw_off
    assert min(e.raw_off for e in entries) == h.raw_off


def test_golden_reads_back_to_dataset(golden, dataset):
    r = SnapshotReader(golden)
    flags = {k: v for k, v in dataset["flags"].items() if not v.get("deleted")}
    segs = {k: v for k, v in dataset["segments"].items() if not v.get("deleted")}
    assert [e.key for e in r.flags()] == sorted(flags, key=lambda k: k.encode("utf-8"))
    assert [e.key for e in r.segments()] == sorted(segs)
    for key, obj in flags.items():
        e = r.find_flag(key)
        assert e is not None and e.key == key
        assert e.version == obj["version"]
        assert r.decode(e) == obj
        assert e.rec_len == 0
    for key, obj in segs.items():
        e = r.find_segment(key)
        assert e is not None and r.decode(e) == obj
    assert r.find_flag("gone") is None
    assert r.find_segment("old-seg") is None
    assert r.find_flag("seg-a") is None          # segments and flags are separate
    assert r.decode(r.find_flag("shared")) != r.decode(r.find_segment("shared"))


def test_layout_description_matches_bytes(golden, layout):
    h = SnapshotReader(golden).header
    assert layout["header"]["checksum"] == h.checksum
    probed = 0
    for item in layout["flags"] + layout["segments"]:
        index_off = h.flag_index_off if item["kind"] == "flag" else h.seg_index_off
        slot_tag, entry_off = fmt.SLOT_STRUCT.unpack_from(
            golden, index_off + fmt.SLOT_SIZE * item["slot"])
        assert (slot_tag, entry_off) == (item["hash"] >> 32, item["entry_off"])
        assert item["hash"] == fmt.key_hash(bytes.fromhex(item["key_hex"]))
        key_off, key_len = struct.unpack_from("<II", golden, entry_off)
        assert golden[key_off:key_off + key_len + 1] == bytes.fromhex(item["key_hex"]) + b"\0"
        probed += item["slot"] != item["home_slot"]
    # The dataset is chosen so that probing collides and wraps around the end of the index.
    assert probed >= 2
    assert any(i["slot"] < i["home_slot"] for i in layout["flags"])
