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
    """Recompute both checksums so structural checks are reached."""
    total = struct.unpack_from("<Q", buf, fmt.OFF_TOTAL_SIZE)[0]
    struct.pack_into("<Q", buf, fmt.OFF_CHECKSUM, fmt.checksum(bytes(buf[128:total])))
    struct.pack_into("<Q", buf, fmt.OFF_HEADER_CHECK, fmt.checksum(bytes(buf[:120])))
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
    _reject(snap[:100], "at least 128", "got 100")
    _reject(b"", "got 0")


def test_bad_magic(snap):
    _reject(b"XHMFLAGS" + snap[8:], "bad magic", "SHMFLAGS", "XHMFLAGS")


def test_format_word_names_both_values(snap):
    buf = bytearray(snap)
    struct.pack_into("<I", buf, 8, 0x02101020)
    _reject(bytes(buf), "0x01101020", "0x02101020", "layout version 2")


def test_header_check(snap):
    buf = bytearray(snap)
    buf[40] ^= 1     # built_at_ms: not covered by the body checksum
    _reject(bytes(buf), "header check mismatch")


def test_total_size_larger_than_buffer(snap):
    _reject(snap[:-8], "total_size", f"got {len(snap)}")


def test_truncated_with_fixed_total_size_fails_checksum(snap):
    buf = bytearray(snap[:-8])
    struct.pack_into("<Q", buf, fmt.OFF_TOTAL_SIZE, len(buf))
    struct.pack_into("<Q", buf, fmt.OFF_HEADER_CHECK, fmt.checksum(bytes(buf[:120])))
    _reject(bytes(buf), "checksum mismatch")


def test_body_bit_flip(snap):
    buf = bytearray(snap)
    buf[len(buf) // 2] ^= 0x10
    _reject(bytes(buf), "checksum mismatch", "expected 0x")


def test_trailing_bytes_after_total_size_are_ignored(snap):
    assert SnapshotReader(snap + b"\xff" * 64).n_flags == 10


@pytest.mark.parametrize("field,value,words", [
    (fmt.OFF_FLAG_INDEX_CAP, 12, ["power of two", "got 12"]),
    (fmt.OFF_FLAG_INDEX_CAP, 8, ["power of two >= 32", "got 8"]),
    (fmt.OFF_FLAG_INDEX_OFF, 8, ["flag index", "outside the body"]),
    (fmt.OFF_FLAG_INDEX_OFF, 132, ["multiple of 8"]),
    (fmt.OFF_SEG_INDEX_OFF, 0xFFFFFFF0, ["segment index", "outside the body"]),
    (fmt.OFF_FLAG_ORDER_OFF, 0xFFFFFFF8, ["flag order", "outside"]),
    (fmt.OFF_N_FLAGS, 0xFFFFFFFF, ["flag index capacity"]),
])
def test_structural_fields_checked_even_with_valid_checksums(snap, field, value, words):
    buf = bytearray(snap)
    struct.pack_into("<I", buf, field, value)
    _reject(_rehash(buf), *words)


def test_entry_offsets_are_bounds_checked_on_use(snap):
    r = SnapshotReader(snap)
    h = r.header
    e = r.find_flag("f1")
    for off, val, word in [(e.offset, 0xFFFFFF00, "key"), (e.offset + 8, 0x7FFFFFFF, "raw"),
                           (e.offset + 16, 3, "record")]:
        buf = bytearray(snap)
        struct.pack_into("<I", buf, off, val)
        r2 = SnapshotReader(_rehash(buf))
        with pytest.raises(SnapshotFormatError, match=word):
            r2.find_flag("f1")
        with pytest.raises(SnapshotFormatError):
            list(r2.flags())
    # An index slot pointing outside the body, and one pointing mid-entry.
    for bad in (h.total_size, 129):
        buf = bytearray(snap)
        for i in range(h.flag_index_cap):
            slot = h.flag_index_off + 16 * i
            if struct.unpack_from("<I", buf, slot + 8)[0]:
                struct.pack_into("<I", buf, slot + 8, bad)
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
        struct.pack_into("<QII", buf, h.flag_index_off + 16 * i, 1, some_entry, 0)
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
