"""SnapshotReader: every validation step rejects with SnapshotFormatError naming both values."""
from __future__ import annotations

import struct

import pytest

from shmflags.errors import SnapshotFormatError
from shmflags.snapshot import format as fmt
from shmflags.snapshot.builder import SnapshotBuilder
from shmflags.snapshot.reader import SnapshotReader


@pytest.fixture(scope="module")
def snap() -> bytes:
    flags = {f"f{i}": {"key": f"f{i}", "version": i, "variations": [i]} for i in range(10)}
    segs = {"s": {"key": "s", "version": 1, "included": ["a"]}}
    return SnapshotBuilder(use_default_compilers=False).build(flags, segs, built_at_ms=5)


def _rehash(buf: bytearray) -> bytes:
    """Recompute the chunk table and both checksums (what an attacker can do), so structural
    checks are reached."""
    h = fmt.unpack_header(buf)
    if h.chunk_table_off + 8 * h.n_chunks <= min(h.blob_off, len(buf)) \
            and fmt.MIN_CHUNK_SHIFT <= h.chunk_shift <= fmt.MAX_CHUNK_SHIFT:
        size = 1 << h.chunk_shift
        for i in range(h.n_chunks):
            a = h.blob_off + i * size
            struct.pack_into("<Q", buf, h.chunk_table_off + 8 * i,
                             fmt.chunk_checksum(bytes(buf[a:min(a + size, h.total_size)])))
    blob_off = min(h.blob_off, len(buf))
    struct.pack_into("<Q", buf, fmt.OFF_CHECKSUM,
                     fmt.checksum(bytes(buf[fmt.HEADER_SIZE:blob_off])))
    struct.pack_into("<Q", buf, fmt.OFF_HEADER_CHECK, fmt.checksum(bytes(buf[:fmt.OFF_HEADER_CHECK])))
    return bytes(buf)


def _reject(data, *words: str) -> str:
    with pytest.raises(SnapshotFormatError) as ei:
        SnapshotReader(data)
    msg = str(ei.value)
    for w in words:
        assert w in msg, msg
    return msg


def test_valid_snapshot_reads(snap):
    r = SnapshotReader(snap)
    assert r.n_flags == 10 and r.find_flag("f3").version == 3
    assert SnapshotReader(memoryview(snap)).n_flags == 10
    assert SnapshotReader(bytearray(snap)).n_segments == 1


def test_too_short(snap):
    _reject(snap[:100], "at least 160", "got 100")
    _reject(b"", "got 0")


def test_bad_magic(snap):
    _reject(b"XHMFLAGS" + snap[8:], "bad magic", "SHMFLAGS", "XHMFLAGS")


def test_format_word_names_both_values(snap):
    buf = bytearray(snap)
    struct.pack_into("<I", buf, 8, 0x01101020)
    _reject(bytes(buf), "0x04140828", "0x01101020", "layout version 1")
    # layout 2 (16-byte index slots, order arrays) is refused at byte 8 as well
    struct.pack_into("<I", buf, 8, 0x02141020)
    _reject(bytes(buf), "0x04140828", "0x02141020", "layout version 2")
    # and layout 3 (32-byte entries: set members inside the records)
    struct.pack_into("<I", buf, 8, 0x03140820)
    _reject(bytes(buf), "0x04140828", "0x03140820", "layout version 3")


def test_header_check(snap):
    buf = bytearray(snap)
    buf[40] ^= 1     # built_at_ms: not covered by the directory checksum
    _reject(bytes(buf), "header check mismatch")


def test_total_size_larger_than_buffer(snap):
    _reject(snap[:-8], "total_size", f"got {len(snap)}")


def test_truncated_with_fixed_total_size_fails_the_last_chunk_on_use(snap):
    buf = bytearray(snap[:-8])
    struct.pack_into("<Q", buf, fmt.OFF_TOTAL_SIZE, len(buf))
    struct.pack_into("<Q", buf, fmt.OFF_HEADER_CHECK, fmt.checksum(bytes(buf[:fmt.OFF_HEADER_CHECK])))
    r = SnapshotReader(bytes(buf))            # the directory is intact
    with pytest.raises(SnapshotFormatError, match="chunk 0.*checksum mismatch"):
        list(r.flags())


def test_directory_bit_flip(snap):
    h = fmt.unpack_header(snap)
    buf = bytearray(snap)
    buf[(fmt.HEADER_SIZE + h.blob_off) // 2] ^= 0x10
    msg = _reject(bytes(buf), "checksum mismatch", "expected 0x", "directory")
    assert f"0x{h.checksum:016x}" in msg


def test_blob_bit_flip_is_found_on_first_use_and_remembered(snap, caplog):
    h = fmt.unpack_header(snap)
    buf = bytearray(snap)
    buf[h.total_size - 1] ^= 0x10          # last raw byte: the last chunk
    state = bytearray(1 + h.n_chunks)
    r = SnapshotReader(bytes(buf), state=state)        # attach does not hash blobs
    assert state[0] == 1 and set(state[1:]) == {fmt.CHUNK_UNKNOWN}
    want = struct.unpack_from("<Q", snap, h.chunk_table_off + 8 * (h.n_chunks - 1))[0]
    with caplog.at_level("ERROR", logger="shmflags.snapshot"):
        with pytest.raises(SnapshotFormatError) as ei:
            r.find_flag("f3")
        with pytest.raises(SnapshotFormatError):
            r.find_flag("f4")
    msg = str(ei.value)
    assert "chunk" in msg and f"expected 0x{want:016x}" in msg and "got 0x" in msg
    assert state[h.n_chunks] == fmt.CHUNK_BAD
    assert len([rec for rec in caplog.records if "chunk" in rec.getMessage()]) == 1  # once


def test_chunks_are_verified_once_and_the_state_is_shared(snap):
    h = fmt.unpack_header(snap)
    state = bytearray(1 + h.n_chunks)
    r = SnapshotReader(snap, state=state)
    r.decode(r.find_flag("f1"))
    assert state[0] == 1 and all(s == fmt.CHUNK_OK for s in state[1:])
    # A second reader over the same state does not re-hash the directory or chunks: a flipped
    # directory byte goes unnoticed (the state says these bytes were verified).
    buf = bytearray(snap)
    buf[fmt.HEADER_SIZE + 1] ^= 1
    assert SnapshotReader(bytes(buf), state=state).n_flags == 10
    with pytest.raises(SnapshotFormatError, match="at least"):
        SnapshotReader(snap, state=bytearray(h.n_chunks))


def test_small_chunks_cross_item_boundaries():
    flags = {f"f{i}": {"key": f"f{i}", "version": i, "variations": ["x" * 300] * 5}
             for i in range(40)}
    data = SnapshotBuilder(use_default_compilers=False, chunk_shift=12).build(flags, {})
    h = fmt.unpack_header(data)
    assert h.n_chunks > 4 and h.chunk_shift == 12
    r = SnapshotReader(data)
    assert all(r.decode(e)["version"] == e.version for e in r.flags())
    for i in range(1, 1 + h.n_chunks):
        buf = bytearray(data)
        buf[h.blob_off + (i - 1) * 4096 + 5] ^= 1
        r2 = SnapshotReader(bytes(buf))
        bad = 0
        for e in r2.flags() if i > 1 else []:
            try:
                r2.decode(e)
            except SnapshotFormatError as exc:
                assert f"chunk {i - 1}" in str(exc)
                bad += 1
        assert i == 1 or bad >= 1


def test_trailing_bytes_after_total_size_are_ignored(snap):
    assert SnapshotReader(snap + b"\xff" * 64).n_flags == 10


@pytest.mark.parametrize("field,value,words", [
    (fmt.OFF_FLAG_INDEX_CAP, 12, ["power of two", "got 12"]),
    (fmt.OFF_FLAG_INDEX_CAP, 8, ["power of two >= 16", "got 8"]),
    (fmt.OFF_FLAG_INDEX_OFF, 8, ["flag index", "outside the directory"]),
    (fmt.OFF_FLAG_INDEX_OFF, 164, ["multiple of 8"]),
    (fmt.OFF_SEG_INDEX_OFF, 0xFFFFFFF0, ["segment index", "outside the directory"]),
    (fmt.OFF_FLAG_ENTRIES_OFF, 0xFFFFFFF8, ["flag entries", "outside"]),
    (fmt.OFF_SEG_ENTRIES_OFF, 4, ["segment entries", "multiple of 8"]),
    (fmt.OFF_N_FLAGS, 0xFFFFFFFF, ["flag index capacity"]),
    (fmt.OFF_CHUNK_SHIFT, 11, ["chunk_shift", "12..30", "got 11"]),
    (fmt.OFF_N_CHUNKS, 7, ["n_chunks", "expected 1", "got 7"]),
    (fmt.OFF_CHUNK_TABLE_OFF, 4096, ["chunk table", "outside the directory"]),
    (fmt.OFF_BLOB_OFF, 100, ["blob_off", "got 100"]),
    (fmt.OFF_BLOB_OFF, 4097, ["blob_off", "multiple of 8"]),
    (fmt.OFF_RAW_OFF, 8, ["raw_off", "got 8"]),
    (fmt.OFF_BASE_CHECKSUM, 5, ["self-contained", "base_checksum"]),
])
def test_structural_fields_checked_even_with_valid_checksums(snap, field, value, words):
    buf = bytearray(snap)
    struct.pack_into("<I", buf, field, value)
    _reject(_rehash(buf), *words)


def test_entry_offsets_are_bounds_checked_on_use(snap):
    r = SnapshotReader(snap)
    h = r.header
    e = r.find_flag("f1")
    for off, val, word in [(e.offset, 0x7FFFFF00, "key"), (e.offset + 8, 0x7FFFFFFF, "raw"),
                           (e.offset + 16, 3, "record"), (e.offset + 16, h.blob_off + 4, "record"),
                           (e.offset, 0x80001000, "base object")]:
        buf = bytearray(snap)
        struct.pack_into("<I", buf, off, val)
        r2 = SnapshotReader(_rehash(buf))
        with pytest.raises(SnapshotFormatError, match=word):
            r2.find_flag("f1")
        with pytest.raises(SnapshotFormatError):
            list(r2.flags())
    # An index slot pointing outside the body, and one pointing mid-entry.
    for bad in (h.total_size, h.blob_off, 161):
        buf = bytearray(snap)
        for i in range(h.flag_index_cap):
            slot = h.flag_index_off + fmt.SLOT_SIZE * i
            if struct.unpack_from("<I", buf, slot + 4)[0]:
                struct.pack_into("<I", buf, slot + 4, bad)
        r3 = SnapshotReader(_rehash(buf))
        with pytest.raises(SnapshotFormatError):
            for i in range(10):
                r3.find_flag(f"f{i}")


def test_key_must_be_nul_terminated_and_utf8(snap):
    r = SnapshotReader(snap)
    e = r.find_flag("f2")
    key_off = struct.unpack_from("<I", snap, e.offset)[0]
    buf = bytearray(snap)
    buf[key_off + 2] = ord("x")      # overwrite the NUL
    with pytest.raises(SnapshotFormatError, match="NUL"):
        list(SnapshotReader(_rehash(buf)).flags())
    buf = bytearray(snap)
    buf[key_off] = 0xFF
    with pytest.raises(SnapshotFormatError, match="UTF-8"):
        list(SnapshotReader(_rehash(buf)).flags())


def test_full_index_without_empty_slot_terminates(snap):
    r = SnapshotReader(snap)
    h = r.header
    buf = bytearray(snap)
    some_entry = r.find_flag("f0").offset
    for i in range(h.flag_index_cap):
        struct.pack_into("<II", buf, h.flag_index_off + fmt.SLOT_SIZE * i, 1, some_entry)
    assert SnapshotReader(_rehash(buf)).find_flag("nope") is None


def test_raw_that_does_not_decode(snap):
    r = SnapshotReader(snap)
    e = r.find_flag("f4")
    buf = bytearray(snap)
    buf[e.raw_off] = 0xC1            # never-used msgpack byte
    r2 = SnapshotReader(_rehash(buf))
    with pytest.raises(SnapshotFormatError, match="msgpack"):
        r2.decode(r2.find_flag("f4"))


def test_not_a_buffer():
    with pytest.raises(SnapshotFormatError, match="not a byte buffer"):
        SnapshotReader(12345)


# ------------------------------------------------------------------ overlays and their bases


@pytest.fixture(scope="module")
def layered():
    flags = {f"f{i}": {"key": f"f{i}", "version": i, "variations": [f"v{i}" * 40] * 5}
             for i in range(40)}
    b = SnapshotBuilder(use_default_compilers=False, compact_fraction=100.0, chunk_shift=12)
    base = b.build(flags, {}, built_at_ms=5)
    flags = dict(flags, f3={"key": "f3", "version": 99, "variations": ["new"]})
    overlay = b.build(flags, {}, built_at_ms=6, changed=(["f3"], []))
    return base, overlay


def test_overlay_reads_through_its_base(layered):
    base, overlay = layered
    r = SnapshotReader(overlay, base=base)
    assert r.decode(r.find_flag("f3"))["variations"] == ["new"]
    assert r.decode(r.find_flag("f4"))["variations"] == ["v4" * 40] * 5
    assert r.base_header.total_size == len(base)


def test_overlay_without_its_base(layered):
    _base, overlay = layered
    _reject(overlay, "overlay on base generation 0", f"({len(_base)} bytes)", "got none")


def test_base_given_to_a_self_contained_snapshot(layered):
    base, _overlay = layered
    with pytest.raises(SnapshotFormatError, match="expected no base object"):
        SnapshotReader(base, base=base)


def test_wrong_base_names_both(layered, snap):
    base, overlay = layered
    with pytest.raises(SnapshotFormatError) as ei:
        SnapshotReader(overlay, base=snap)
    msg = str(ei.value)
    h = fmt.unpack_header(overlay)
    assert "wrong base" in msg and f"0x{h.base_checksum:016x}" in msg and \
        f"0x{fmt.unpack_header(snap).checksum:016x}" in msg
    # base generation must match too (the publisher stamps both)
    stamped = fmt.stamp_generation(base[:fmt.HEADER_SIZE], 7) + base[fmt.HEADER_SIZE:]
    with pytest.raises(SnapshotFormatError, match="expected generation 0.*got generation 7"):
        SnapshotReader(overlay, base=stamped)
    ok = fmt.stamp_generation(overlay[:fmt.HEADER_SIZE], 8, 7) + overlay[fmt.HEADER_SIZE:]
    assert SnapshotReader(ok, base=stamped).generation == 8
    # an overlay cannot be a base (depth 1)
    with pytest.raises(SnapshotFormatError):
        SnapshotReader(overlay, base=overlay)


def test_base_directory_is_verified(layered):
    base, overlay = layered
    bh = fmt.unpack_header(base)
    buf = bytearray(base)
    buf[bh.flag_entries_off] ^= 1
    with pytest.raises(SnapshotFormatError, match="checksum mismatch"):
        SnapshotReader(overlay, base=bytes(buf))


def test_overlay_entry_pointing_past_the_base(layered):
    base, overlay = layered
    r = SnapshotReader(overlay, base=base)
    e = r.find_flag("f5")
    assert e.raw_off & fmt.BASE_BIT
    for field, value, words in [(8, fmt.BASE_BIT | len(base), ["raw", "blob area of base"]),
                                (16, fmt.BASE_BIT | 8, ["record", "blob area of base"]),
                                (0, fmt.BASE_BIT | 0x7FFFFFF0, ["key", "blob area of base"])]:
        buf = bytearray(overlay)
        struct.pack_into("<I", buf, e.offset + field, value)
        r2 = SnapshotReader(fmt.reseal(buf), base=base)
        with pytest.raises(SnapshotFormatError) as ei:
            r2.decode(r2.find_flag("f5"))
        for w in words:
            assert w in str(ei.value), str(ei.value)


def test_bit_flip_in_a_base_chunk_costs_only_its_items(layered):
    base, overlay = layered
    bh = fmt.unpack_header(base)
    r0 = SnapshotReader(overlay, base=base)
    e7 = r0.find_flag("f7")
    raw7 = e7.raw_off & fmt.OFF_MASK
    buf = bytearray(base)
    buf[raw7 + 2] ^= 0x40
    bad_chunk = (raw7 + 2 - bh.blob_off) >> bh.chunk_shift
    bstate = bytearray(1 + bh.n_chunks)
    r = SnapshotReader(overlay, base=bytes(buf), base_state=bstate)
    with pytest.raises(SnapshotFormatError, match=f"base generation 0 blob chunk {bad_chunk}"):
        r.decode(r.find_flag("f7"))
    assert bstate[1 + bad_chunk] == fmt.CHUNK_BAD
    assert r.decode(r.find_flag("f3"))["variations"] == ["new"]     # overlay's own bytes
    ok = 0
    for e in r.flags():
        try:
            r.decode(e)
            ok += 1
        except SnapshotFormatError:
            pass
    assert 0 < ok < 40
