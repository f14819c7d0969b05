"""Tables that C and Python each state must agree: exported names, op codes, record layout.

``_native`` (C) and ``_pure`` (Python) must expose the same public names and Snapshot members;
``native/record.h`` must give every operator the code ``shmflags/snapshot/ops.py`` gives it and
every struct the size ``compile.py`` writes; ``native/layout.h`` must agree with ``format.py``;
the C error table must have one message per code.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import native_module
from shmflags import _pure
from shmflags.snapshot import compile as C
from shmflags.snapshot import format as fmt
from shmflags.snapshot.ops import OP_CODES, OP_NAMES, OP_UNKNOWN

NATIVE = Path(__file__).resolve().parents[2] / "native"


def _public(obj):
    return {n for n in dir(obj) if not n.startswith("_")}


def test_modules_export_the_same_snapshot_interface():
    N = native_module()
    assert list(N.__all__) == list(_pure.__all__) == ["Snapshot"]
    assert _public(N.Snapshot) == _public(_pure.Snapshot)
    # extras of the C module are constants and the seqlock fence, never another backend name
    assert _public(N) - set(N.__all__) <= {"RECORD_FORMAT", "FORMAT_WORD", "MAX_DEPTH", "fence"}


def test_native_constants_match_python():
    N = native_module()
    assert N.RECORD_FORMAT == C.RECORD_FORMAT
    assert N.FORMAT_WORD == fmt.FORMAT_WORD


def _record_h() -> str:
    return (NATIVE / "record.h").read_text()


def _camel_to_c(name: str) -> str:
    return "SF_OP_" + re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper().replace("SEM_VER", "SEMVER")


def test_op_codes_match_record_h():
    text = _record_h()
    c_codes = {m.group(1): int(m.group(2)) for m in re.finditer(r"(SF_OP_[A-Z_]+) = (\d+)", text)}
    assert c_codes.pop("SF_OP_UNKNOWN") == OP_UNKNOWN
    assert c_codes.pop("SF_OP_COUNT") == max(OP_CODES.values()) + 1
    assert c_codes == {_camel_to_c(name): code for name, code in OP_CODES.items()}
    assert set(OP_NAMES) == set(OP_CODES.values())
    assert len(set(OP_CODES.values())) == len(OP_CODES)
    # no operator name is spelled in the C sources: C dispatches on codes only
    for path in NATIVE.glob("*.c"):
        src = path.read_text()
        for name in OP_CODES:
            if len(name) > 2:
                assert f'"{name}"' not in src, (path.name, name)


def _define(text: str, name: str) -> int:
    m = re.search(rf"#define {name}\s+\(?([0-9a-fA-Fx]+)u?", text)
    assert m, name
    return int(m.group(1), 0)


@pytest.mark.parametrize("c_name,py_value", [
    ("SF_REC_VERSION", C.RECORD_VERSION), ("SF_FLAG_MAGIC", C.FLAG_MAGIC),
    ("SF_SEGMENT_MAGIC", C.SEGMENT_MAGIC), ("SF_FLAG_REC_SIZE", C.FLAG_REC_SIZE),
    ("SF_SEGMENT_REC_SIZE", C.SEGMENT_REC_SIZE), ("SF_FLAG_ON", C.FLAG_ON),
    ("SF_FLAG_MALFORMED", C.FLAG_MALFORMED), ("SF_FLAG_DELETED", C.FLAG_DELETED),
    ("SF_FLAG_TRACK_EVENTS", C.FLAG_TRACK_EVENTS),
    ("SF_FLAG_TRACK_FALLTHROUGH", C.FLAG_TRACK_FALLTHROUGH),
    ("SF_FLAG_EXCLUDE_SUMMARIES", C.FLAG_EXCLUDE_SUMMARIES),
    ("SF_FLAG_CLIENT_SIDE", C.FLAG_CLIENT_SIDE), ("SF_FLAG_MOBILE_KEY", C.FLAG_MOBILE_KEY),
    ("SF_FLAG_HAS_OFF", C.FLAG_HAS_OFF), ("SF_FLAG_HAS_SAMPLING", C.FLAG_HAS_SAMPLING),
    ("SF_FLAG_HAS_DEBUG", C.FLAG_HAS_DEBUG), ("SF_SEG_MALFORMED", C.SEG_MALFORMED),
    ("SF_SEG_DELETED", C.SEG_DELETED), ("SF_SEG_UNBOUNDED", C.SEG_UNBOUNDED),
    ("SF_SEG_HAS_GENERATION", C.SEG_HAS_GENERATION), ("SF_RULE_HAS_ID", C.RULE_HAS_ID),
    ("SF_RULE_TRACK_EVENTS", C.RULE_TRACK_EVENTS), ("SF_CLAUSE_NEGATE", C.CLAUSE_NEGATE),
    ("SF_CLAUSE_ATTR_KIND", C.CLAUSE_ATTR_KIND), ("SF_ROLLOUT_EXPERIMENT", C.ROLLOUT_EXPERIMENT),
    ("SF_SEGRULE_HAS_WEIGHT", C.SEGRULE_HAS_WEIGHT), ("SF_WV_UNTRACKED", C.WV_UNTRACKED),
    ("SF_AUX_TIME", C.AUX_TIME), ("SF_AUX_SEMVER", C.AUX_SEMVER), ("SF_AUX_REGEX", C.AUX_REGEX),
])
def test_record_constants_match(c_name, py_value):
    text = _record_h()
    m = re.search(rf"#define {c_name}\s+\(1u << (\d+)\)", text)
    value = 1 << int(m.group(1)) if m else _define(text, c_name)
    assert value == py_value


def test_enums_and_sizes_match():
    text = _record_h()
    enums = {m.group(1): int(m.group(2)) for m in re.finditer(r"(SF_(?:V|VOR)_[A-Z]+) = (\d+)", text)}
    assert enums == {"SF_V_NULL": C.V_NULL, "SF_V_FALSE": C.V_FALSE, "SF_V_TRUE": C.V_TRUE,
                     "SF_V_INT": C.V_INT, "SF_V_FLOAT": C.V_FLOAT, "SF_V_STR": C.V_STR,
                     "SF_V_PACKED": C.V_PACKED, "SF_V_OPAQUE": C.V_OPAQUE,
                     "SF_VOR_NONE": C.VOR_NONE, "SF_VOR_VARIATION": C.VOR_VARIATION,
                     "SF_VOR_ROLLOUT": C.VOR_ROLLOUT}
    sizes = {m.group(1): int(m.group(2))
             for m in re.finditer(r"sizeof\((sf_\w+_t)\) == (\d+)", text)}
    assert sizes["sf_value_t"] == C.VALUE_SIZE
    assert sizes["sf_clause_t"] == C.CLAUSE_SIZE
    assert sizes["sf_rule_t"] == C.RULE_SIZE
    assert sizes["sf_segrule_t"] == C.SEGRULE_SIZE
    assert sizes["sf_rollout_t"] == C.ROLLOUT_SIZE
    assert sizes["sf_target_t"] == C.TARGET_SIZE
    assert sizes["sf_prereq_t"] == C.PREREQ_SIZE
    assert sizes["sf_weighted_t"] == C.WEIGHTED_SIZE
    assert sizes["sf_setslot_t"] == C.SLOT_SIZE
    assert sizes["sf_semver_rec_t"] == C.SEMVER_SIZE
    assert "SF_ATTR_INVALID         0xFFFFFFFFu" in text


def test_string_set_layout_matches():
    """Record version 4 string sets: 8-byte header {nslots, home}, 8-byte slots {fp, off}, the
    members in the record's pool (a span of its own: sf_entry_t.pool_off/pool_len)."""
    text = _record_h()
    sizes = {m.group(1): int(m.group(2))
             for m in re.finditer(r"sizeof\((sf_\w+_t)\) == (\d+)", text)}
    assert sizes["sf_strset_t"] == 8 and sizes["sf_setslot_t"] == C.SLOT_SIZE == 8
    assert "offsetof(sf_setslot_t, off) == 4" in text
    assert re.search(r"uint32_t nslots;.*\n\s*uint32_t home;", text)
    assert re.search(r"uint32_t fp;.*\n\s*uint32_t off;", text)
    assert C.RECORD_VERSION == 4 and C.RECORD_FORMAT == 0x04080608
    assert (C.SET_LOAD_NUM, C.SET_LOAD_DEN) == (7, 8)
    assert _define(text, "SF_SET_EMPTY_FP") == C.SET_EMPTY_FP == 0xFFFFFFFF
    doc = (NATIVE.parent / "docs" / "snapshot-format.md").read_text()
    assert "`0x04080608` for version 4" in doc and "ceil(count · 8 / 7)" in doc


def test_layout_h_matches_format_py():
    text = (NATIVE / "layout.h").read_text()
    assert _define(text, "SF_HEADER_SIZE") == fmt.HEADER_SIZE
    assert _define(text, "SF_SLOT_SIZE") == fmt.SLOT_SIZE
    assert _define(text, "SF_ENTRY_SIZE") == fmt.ENTRY_SIZE
    assert _define(text, "SF_LAYOUT_VERSION") == fmt.LAYOUT_VERSION


def test_error_table_has_one_message_per_code():
    N = native_module()
    text = (NATIVE / "sf.h").read_text()
    codes = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define (SF_E[A-Z]+)\s+\((-\d+)\)", text)}
    assert len(codes) == len(set(codes.values())) >= 9
    messages = [N._strerror(code) for code in codes.values()]
    assert "unknown error" not in messages
    assert len(set(messages)) == len(messages)
    assert N._strerror(0) == "success" and N._strerror(-1) == "unknown error"
