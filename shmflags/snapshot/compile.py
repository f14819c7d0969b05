"""Compile LaunchDarkly flag and segment JSON into self-contained binary records (any process).

The supervisor's snapshot builder calls :func:`compile_flag` / :func:`compile_segment` once per
flag or segment version and stores the bytes in the snapshot; the C evaluator
(``shmflags._native``) reads them in place. The byte layout is ``native/record.h`` and the
"Compiled records" section of ``docs/snapshot-format.md``.

Everything an evaluation needs is typed here, once: operator codes, attribute references split
into components, clause values typed (numbers, strings, dates as epoch ms, semvers parsed,
regex validity), target lists and large ``in`` lists as string sets (fingerprint = xxh64 >> 32, seed 0), variations
as msgpack blobs, and every field events need.

Compilation never raises. Data that ldclient's model would refuse (a wrong JSON type anywhere
its parser checks one) compiles to a record marked *malformed*: a malformed flag evaluates to
``ERROR``/``MALFORMED_FLAG``, a malformed segment behaves as absent (ldclient never stores such
data). :func:`parse_time` and :func:`parse_semver` are the exact value parsers shared with the
C evaluator, which calls :func:`parse_time_string` for context values given as strings.
"""
from __future__ import annotations

import math
import re
import struct
from datetime import datetime, timezone
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import msgpack
import xxhash

from shmflags.snapshot.ops import OP_CODES, OP_SEGMENT_MATCH, op_code

__all__ = [
    "RECORD_FORMAT", "Compiled", "compile_flag", "compile_segment", "pack_value", "unpack_value",
    "parse_time", "parse_time_string", "parse_semver", "attribute_ref",
]

# ---------------------------------------------------------------------------------------------
# Format constants (mirrored in native/record.h; tests/unit/test_parity.py compares them)
# ---------------------------------------------------------------------------------------------

#: Record format version; the container header stores :data:`RECORD_FORMAT`, which folds it
#: with the two record-header sizes (``native/record.h`` ``SF_RECORD_FORMAT``).
RECORD_VERSION = 4
FLAG_MAGIC = 0x52464653  # "SFFR" little-endian
SEGMENT_MAGIC = 0x52534653  # "SFSR" little-endian
FLAG_REC_SIZE = 128
SEGMENT_REC_SIZE = 96
VALUE_SIZE = 24
CLAUSE_SIZE = 32
RULE_SIZE = 40
SEGRULE_SIZE = 32
ROLLOUT_SIZE = 32
TARGET_SIZE = 24
PREREQ_SIZE = 16
WEIGHTED_SIZE = 16
SLOT_SIZE = 8
SEMVER_SIZE = 32
RECORD_FORMAT = (RECORD_VERSION << 24) | (FLAG_REC_SIZE << 12) | (SEGMENT_REC_SIZE << 4) | 0x8
#: ``in`` clauses with more string values than this get a hash set.
IN_SET_MIN = 8
#: String sets have ceil(count / load) home positions, load = SET_LOAD_NUM / SET_LOAD_DEN.
SET_LOAD_NUM = 7
SET_LOAD_DEN = 8
#: Fingerprint field of an empty string-set slot (and of the sentinel that ends the slots).
SET_EMPTY_FP = 0xFFFFFFFF

# flag bits (sf_flag_rec_t.bits)
FLAG_ON = 1 << 0
FLAG_MALFORMED = 1 << 1
FLAG_DELETED = 1 << 2
FLAG_TRACK_EVENTS = 1 << 3
FLAG_TRACK_FALLTHROUGH = 1 << 4
FLAG_EXCLUDE_SUMMARIES = 1 << 5
FLAG_CLIENT_SIDE = 1 << 6
FLAG_MOBILE_KEY = 1 << 7
FLAG_HAS_OFF = 1 << 8
FLAG_HAS_SAMPLING = 1 << 9
FLAG_HAS_DEBUG = 1 << 10

# segment bits
SEG_MALFORMED = 1 << 1
SEG_DELETED = 1 << 2
SEG_UNBOUNDED = 1 << 3
SEG_HAS_GENERATION = 1 << 4

# rule / clause / rollout bits
RULE_HAS_ID = 1 << 0
RULE_TRACK_EVENTS = 1 << 1
CLAUSE_NEGATE = 1 << 0
CLAUSE_ATTR_KIND = 1 << 1
ROLLOUT_EXPERIMENT = 1 << 0
SEGRULE_HAS_WEIGHT = 1 << 0
WV_UNTRACKED = 1 << 0

# variation-or-rollout kinds
VOR_NONE = 0
VOR_VARIATION = 1
VOR_ROLLOUT = 2

# typed clause values (sf_value_t.type)
V_NULL = 0
V_FALSE = 1
V_TRUE = 2
V_INT = 3
V_FLOAT = 4
V_STR = 5
V_PACKED = 6  # array, object or out-of-range integer as msgpack: compared in Python
V_OPAQUE = 7  # not representable: equal to nothing

# sf_value_t.aux_ok bits
AUX_TIME = 1 << 0  # aux holds a valid epoch-ms double (before/after)
AUX_SEMVER = 1 << 1  # aux holds the offset of an sf_semver_t
AUX_REGEX = 1 << 2  # the string compiles as a Python regular expression

#: msgpack extension type for integers outside the int64/uint64 range (decimal ASCII).
EXT_BIGINT = 1

_DEFAULT_KIND = "user"

_U32 = struct.Struct("<I")

# ---------------------------------------------------------------------------------------------
# Value helpers
# ---------------------------------------------------------------------------------------------


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, int) and not isinstance(obj, bool):
        return msgpack.ExtType(EXT_BIGINT, str(int(obj)).encode("ascii"))
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError("not a JSON value: %r" % type(obj).__name__)


def pack_value(value: Any) -> bytes:
    """Encode a JSON value as msgpack (big integers as an extension type); may raise.

    :param value: a JSON-compatible value.
    :returns: msgpack bytes that :func:`unpack_value` decodes back to an equal value.
    :raises TypeError, ValueError, OverflowError: for values JSON cannot hold.
    """
    return msgpack.packb(value, default=_pack_default, use_bin_type=True,
                         unicode_errors="surrogatepass", strict_types=False)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_BIGINT:
        return int(data.decode("ascii"))
    return msgpack.ExtType(code, data)


def unpack_value(data: bytes) -> Any:
    """Decode msgpack written by :func:`pack_value` (the C evaluator calls this).

    :param data: msgpack bytes.
    :returns: the value, with lists and dicts freshly built.
    """
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook,
                           unicode_errors="surrogatepass", use_list=True)


def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


_EPOCH = datetime.fromtimestamp(0, timezone.utc)
_TRAILING_Z = re.compile("Z$", re.IGNORECASE)


def parse_time_string(text: str) -> Optional[float]:
    """Parse an RFC 3339 date-time string as ldclient does; return epoch ms or ``None``.

    ldclient delegates to ``datetime.fromisoformat`` after turning a final ``Z`` into
    ``+00:00``; a timestamp without an offset is rejected.

    :param text: the string.
    :returns: milliseconds since the epoch as a float, or ``None`` when invalid.
    """
    try:
        parsed = datetime.fromisoformat(_TRAILING_Z.sub("+00:00", text))
        return (parsed - _EPOCH).total_seconds() * 1000.0
    except Exception:  # noqa: BLE001 - any failure means "not a timestamp", as in ldclient
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_time(value: Any) -> Optional[float]:
    """Return epoch ms for a clause or context value (number or RFC 3339 string), else None."""
    if _is_number(value):
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, str):
        return parse_time_string(value)
    return None


_SEMVER = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?\Z", re.ASCII)
_LEADING_VERSION = re.compile(r"[0-9.]*")


def parse_semver(value: Any) -> Optional[Tuple[str, str, str, Optional[str]]]:
    """Parse a semantic version the way ldclient does; return its parts or ``None``.

    Strict SemVer 2.0 first; failing that, ldclient inserts ``.0`` after the leading run of
    digits and dots (up to twice), keeping the rest only up to the first newline.

    :param value: any value; only strings can parse.
    :returns: ``(major, minor, patch, prerelease or None)`` as decimal strings.
    """
    if not isinstance(value, str):
        return None
    text = str(value)
    m = _SEMVER.match(text)
    if m is None:
        lead = _LEADING_VERSION.match(text).group(0)
        rest = text[len(lead):].split("\n", 1)[0]
        m = _SEMVER.match(lead + ".0" + rest) or _SEMVER.match(lead + ".0.0" + rest)
        if m is None:
            return None
    return m.group(1), m.group(2), m.group(3), m.group(4)


class AttrRef:
    """A compiled attribute reference: components, or an error."""

    __slots__ = ("components", "valid")

    def __init__(self, components: Optional[List[str]]) -> None:
        self.components = components
        self.valid = components is not None


_BAD_ESCAPE = re.compile("~[^01]|~$")


def attribute_ref(text: str, context_kind: Optional[str]) -> AttrRef:
    """Split an attribute string into components as ldclient does (LD protocol §3.5).

    :param text: the ``attribute`` / ``bucketBy`` string.
    :param context_kind: the clause's or rollout's ``contextKind``; without one (``None`` or
        ``""``) the string is a literal attribute name.
    :returns: an :class:`AttrRef`; ``valid`` is False for an invalid reference.
    """
    if text == "":
        return AttrRef(None)
    if context_kind is None or context_kind == "" or text[0] != "/":
        return AttrRef([text])
    if text == "/":
        return AttrRef(None)
    parts = text[1:].split("/")
    out = []
    for part in parts:
        if part == "" or _BAD_ESCAPE.search(part):
            return AttrRef(None)
        out.append(part.replace("~1", "/").replace("~0", "~"))
    return AttrRef(out)


# ---------------------------------------------------------------------------------------------
# Validation mirroring ldclient's model parser (any failure → malformed record)
# ---------------------------------------------------------------------------------------------


class _Bad(Exception):
    """Raised inside compilation when ldclient's parser would refuse the data."""


def _opt(data: dict, name: str, types: Any) -> Any:
    value = data.get(name)
    if value is not None and not isinstance(value, types):
        raise _Bad(name)
    return value


def _req(data: dict, name: str, types: Any) -> Any:
    value = _opt(data, name, types)
    if value is None:
        raise _Bad(name)
    return value


def _opt_bool(data: dict, name: str) -> bool:
    return _opt(data, name, bool) is True


def _opt_list(data: dict, name: str) -> list:
    return _opt(data, name, list) or []


def _list_of(items: list, types: Any) -> list:
    for item in items:
        if not isinstance(item, types):
            raise _Bad("item")
    return items


def _check_prerequisite_graph(flag: dict) -> None:
    """ldclient's store walks every flag's ``prerequisites`` (tombstones too) to order a
    payload before storing it: the property must iterate (``null`` does not) into objects
    whose ``key`` can be looked up; otherwise the data is refused."""
    if "prerequisites" not in flag:
        return
    prereqs = flag["prerequisites"]
    if isinstance(prereqs, (str, dict)) and not prereqs:
        return
    if not isinstance(prereqs, list):
        raise _Bad("prerequisites")
    for item in prereqs:
        if not isinstance(item, dict):
            raise _Bad("prerequisites")
        try:
            hash(item.get("key"))
        except TypeError:
            raise _Bad("prerequisite key") from None


# ---------------------------------------------------------------------------------------------
# Record writer
# ---------------------------------------------------------------------------------------------


def _align8(n: int) -> int:
    return (n + 7) & ~7


class Compiled(NamedTuple):
    """One item compiled: the record and its string pool (docs/snapshot-format.md §5.2.1).

    The container stores them as two spans (``sf_entry_t`` ``rec_off`` and ``pool_off``), so
    that evaluations, which read records and set slots but set members only when a
    fingerprint matches, leave the pool's pages untouched (issue 4: per-worker memory). The
    builder may move every member into one pool shared by the items of a snapshot (the same
    user keys recur across target lists and segments): ``sets`` says where the slots to
    rewrite are.
    """

    record: bytes     # a multiple of 8 long
    pool: bytes       # empty, or byte 0 reserved (0) and the members of every set after it
    sets: Tuple[int, ...] = ()   # offset in ``record`` of each distinct string set


class _Writer:
    """An append-only byte arena; offsets are relative to its start.

    Structs (:meth:`alloc`) start 8-aligned; strings (:meth:`bytes_`) are packed unaligned,
    since readers copy or compare them byte-wise. Set members go to a second arena,
    :attr:`pool`, whose offsets start at 1 (0 marks an empty set slot).
    """

    def __init__(self, header_size: int) -> None:
        self.buf = bytearray(header_size)
        self.pool = bytearray(1)
        self.set_offs: List[int] = []
        self._strings: Dict[bytes, int] = {}
        self._sets: Dict[Tuple[str, ...], int] = {}

    def alloc(self, size: int) -> int:
        off = _align8(len(self.buf))
        self.buf.extend(b"\0" * (off + _align8(max(size, 1)) - len(self.buf)))
        return off

    def put(self, off: int, fmt: str, *values: Any) -> None:
        struct.pack_into(fmt, self.buf, off, *values)

    def bytes_(self, data: bytes) -> Tuple[int, int]:
        """Store ``data`` NUL-terminated, unaligned (deduplicated); return (off, len)."""
        off = self._strings.get(data)
        if off is None:
            off = len(self.buf)
            self.buf += data
            self.buf.append(0)
            self._strings[data] = off
        return off, len(data)

    def string(self, text: str) -> Tuple[int, int]:
        return self.bytes_(_utf8(text))

    def done(self) -> Compiled:
        """The record, zero-padded to a multiple of 8 bytes (the container aligns records),
        and its pool (empty when no set has a member)."""
        self.buf.extend(b"\0" * (_align8(len(self.buf)) - len(self.buf)))
        if len(self.pool) == 1:
            return Compiled(bytes(self.buf), b"")
        return Compiled(bytes(self.buf), bytes(self.pool), tuple(self.set_offs))


def _varint(n: int) -> bytes:
    """LEB128: 7 bits per byte, least significant first, high bit = more bytes follow."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SHORT_LEN = [bytes([n]) for n in range(0x80)]


def set_fingerprint(raw: bytes) -> int:
    """The 32-bit fingerprint a string set orders and finds ``raw`` by: xxh64 >> 32."""
    return xxhash.xxh64_intdigest(raw) >> 32


def set_home_slots(count: int) -> int:
    """Home positions of a set of ``count`` strings: ceil(count / load), load = SET_LOAD."""
    return -(-count * SET_LOAD_DEN // SET_LOAD_NUM)


def _strset(w: _Writer, keys: Sequence[str]) -> int:
    """Write a string set (sf_strset_t, docs/snapshot-format.md §5.2); return its offset.

    0 when ``keys`` is empty. Ordered linear probing: strings sorted by fingerprint ``fp``,
    each placed at ``max(home(fp), previous position + 1)`` with ``home(fp) = (fp * m) >> 32``
    (monotonic in fp), so the slots are in fingerprint order and a lookup scans from
    ``home(fp)`` past smaller fingerprints. Empty slots hold ``(0xFFFFFFFF, 0)`` and one such
    slot ends the table (the sentinel: no wrap-around, no bounds check in the scan). The same
    key list in one record is written once.
    """
    memo_key = tuple(keys)
    off = w._sets.get(memo_key)
    if off is not None:
        return off
    uniq = dict.fromkeys([k.encode("utf-8", "surrogatepass") for k in keys])
    if not uniq:
        return 0
    m = set_home_slots(len(uniq))
    h64 = xxhash.xxh64_intdigest
    items = sorted([(h64(raw) >> 32, raw) for raw in uniq])
    placed = []
    pieces = []
    nxt = rel = 0
    for fp, raw in items:
        pos = (fp * m) >> 32
        if pos < nxt:
            pos = nxt
        nxt = pos + 1
        n = len(raw)
        prefix = _SHORT_LEN[n] if n < 0x80 else _varint(n)
        pieces.append(prefix)
        pieces.append(raw)
        placed.append((pos, fp, rel))
        rel += len(prefix) + n
    nslots = nxt + 1  # the sentinel
    off = w.alloc(8 + SLOT_SIZE * nslots)
    pool_off = len(w.pool)  # the members in the record's pool, in slot order, unaligned
    w.pool += b"".join(pieces)
    slots = [SET_EMPTY_FP, 0] * nslots
    for pos, fp, rel in placed:
        slots[2 * pos] = fp
        slots[2 * pos + 1] = pool_off + rel
    struct.pack_into("<II%dI" % (2 * nslots), w.buf, off, nslots, m, *slots)
    w._sets[memo_key] = off
    w.set_offs.append(off)
    return off


def _attrref(w: _Writer, ref: Optional[AttrRef]) -> int:
    """Write an attribute reference; return its offset (0 for none or invalid)."""
    if ref is None or not ref.valid:
        return 0
    comps = ref.components or []
    off = w.alloc(8 + 8 * len(comps))
    w.put(off, "<II", len(comps), 0)
    for i, comp in enumerate(comps):
        w.put(off + 8 + 8 * i, "<II", *w.string(comp))
    return off


def _kind_str(w: _Writer, kind: Optional[str]) -> Tuple[int, int]:
    return w.string(kind or _DEFAULT_KIND)


def _semver_rec(w: _Writer, parts: Tuple[str, str, str, Optional[str]]) -> int:
    major, minor, patch, pre = parts
    off = w.alloc(SEMVER_SIZE)
    fields: List[int] = []
    for part in (major, minor, patch, pre):
        if part is None:
            fields += [0, 0]
        else:
            fields += list(w.string(part))
    w.put(off, "<8I", *fields)
    return off


def _value(w: _Writer, off: int, value: Any, op: int) -> None:
    """Write one typed clause value (sf_value_t) at ``off``."""
    vtype, length, payload, aux_ok, aux = V_OPAQUE, 0, b"\0" * 8, 0, b"\0" * 8
    if value is None:
        vtype = V_NULL
    elif value is True:
        vtype = V_TRUE
    elif value is False:
        vtype = V_FALSE
    elif type(value) is float:
        vtype, payload = V_FLOAT, struct.pack("<d", value)
    elif isinstance(value, int) and not isinstance(value, bool) and type(value) is int:
        if -(1 << 63) <= value < (1 << 63):
            vtype, payload = V_INT, struct.pack("<q", value)
        else:
            vtype = V_PACKED
    elif type(value) is str:
        vtype = V_STR
        s_off, length = w.string(value)
        payload = struct.pack("<Q", s_off)
    elif type(value) in (list, dict):
        vtype = V_PACKED
    if vtype == V_PACKED:
        try:
            blob = pack_value(value)
        except Exception:  # noqa: BLE001 - unencodable junk equals nothing
            vtype = V_OPAQUE
        else:
            b_off, length = w.bytes_(blob)
            payload = struct.pack("<Q", b_off)
    if op in (OP_CODES["before"], OP_CODES["after"]):
        if _is_number(value):
            try:
                float(value)
            except OverflowError:
                # ldclient's parser raises here, so the whole flag is refused
                raise _Bad("date value out of range") from None
        t = parse_time(value)
        if t is not None:
            aux_ok, aux = AUX_TIME, struct.pack("<d", t)
    elif op in (OP_CODES["semVerEqual"], OP_CODES["semVerLessThan"],
                OP_CODES["semVerGreaterThan"]):
        parts = parse_semver(value)
        if parts is not None:
            aux_ok, aux = AUX_SEMVER, struct.pack("<Q", _semver_rec(w, parts))
    elif op == OP_CODES["matches"] and vtype == V_STR:
        try:
            re.compile(value)
            aux_ok = AUX_REGEX
        except Exception:  # noqa: BLE001 - an invalid pattern never matches
            aux_ok = 0
    struct.pack_into("<BBHI8s8s", w.buf, off, vtype, aux_ok, 0, length, payload, aux)


def _clauses(w: _Writer, items: list) -> Tuple[int, int]:
    _list_of(items, dict)
    parsed = []
    for c in items:
        kind = _opt(c, "contextKind", str)
        attr = _req(c, "attribute", str)
        negate = _opt_bool(c, "negate")
        op_name = _req(c, "op", str)
        values = _req(c, "values", list)
        parsed.append((kind, attr, negate, op_name, values))
    if not parsed:
        return 0, 0
    base = w.alloc(CLAUSE_SIZE * len(parsed))
    for i, (kind, attr, negate, op_name, values) in enumerate(parsed):
        op = op_code(op_name)
        ref = attribute_ref(attr, kind)
        bits = CLAUSE_NEGATE if negate else 0
        if ref.valid and ref.components == ["kind"]:
            bits |= CLAUSE_ATTR_KIND
        attr_off = _attrref(w, ref)
        k_off, k_len = _kind_str(w, kind)
        v_off = w.alloc(VALUE_SIZE * len(values)) if values else 0
        for j, v in enumerate(values):
            _value(w, v_off + VALUE_SIZE * j, v, op)
        set_off = 0
        strs = [v for v in values if type(v) is str]
        if op == OP_CODES["in"] and len(strs) > IN_SET_MIN:
            set_off = _strset(w, strs)
        w.put(base + CLAUSE_SIZE * i, "<BBHIIIIIII", op, bits, 0, attr_off, k_off, k_len,
              v_off, len(values), set_off, 0)
    return base, len(parsed)


def _rollout(w: _Writer, ro: dict, flag_key: str, salt: str) -> int:
    kind = _opt(ro, "contextKind", str)
    bucket_by = _opt(ro, "bucketBy", str)
    experiment = _opt(ro, "kind", str) == "experiment"
    seed = _opt(ro, "seed", int)
    wvs = []
    for wv in _list_of(_req(ro, "variations", list), dict):
        var = _req(wv, "variation", int)
        weight = _req(wv, "weight", int)
        untracked = _opt_bool(wv, "untracked")
        wvs.append((var, weight, untracked))
    ref = None if (bucket_by is None or bucket_by == "" or experiment) else attribute_ref(bucket_by, kind)
    off = w.alloc(ROLLOUT_SIZE)
    wv_off = w.alloc(WEIGHTED_SIZE * len(wvs)) if wvs else 0
    for i, (var, weight, untracked) in enumerate(wvs):
        try:
            frac = weight / 100000.0
        except OverflowError:
            frac = math.inf if weight > 0 else -math.inf
        w.put(wv_off + WEIGHTED_SIZE * i, "<dii", frac, _clamp_i32(var),
              WV_UNTRACKED if untracked else 0)
    prefix = str(seed) if seed is not None else "%s.%s" % (flag_key, salt)
    bits = ROLLOUT_EXPERIMENT if experiment else 0
    bucket_off = 0xFFFFFFFF if (ref is not None and not ref.valid) else _attrref(w, ref)
    k_off, k_len = _kind_str(w, kind)
    p_off, p_len = w.string(prefix)
    w.put(off, "<IIIIIIII", bits, bucket_off, k_off, k_len, p_off, p_len, wv_off, len(wvs))
    return off


_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1


def _clamp_i32(v: int) -> int:
    """Variation indexes outside i32 are out of range anyway: clamp to a negative sentinel."""
    v = int(v)
    return v if _I32_MIN <= v <= _I32_MAX else -1


def _vor(w: _Writer, off: int, data: Optional[dict], flag_key: str, salt: str) -> None:
    """Write an sf_vor_t at ``off`` from a VariationOrRollout dict (or None)."""
    data = {} if data is None else data
    var = _opt(data, "variation", int)
    ro = _opt(data, "rollout", dict)
    ro_off = 0 if ro is None else _rollout(w, ro, flag_key, salt)  # validated even if unused
    if var is not None:
        w.put(off, "<IiII", VOR_VARIATION, _clamp_i32(var), 0, 0)
    elif ro is not None:
        w.put(off, "<IiII", VOR_ROLLOUT, 0, ro_off, 0)
    else:
        w.put(off, "<IiII", VOR_NONE, 0, 0, 0)


def _targets(w: _Writer, items: list, user_targets: Optional[List[Tuple[int, list]]]) -> Tuple[int, int]:
    """Write sf_target_t entries; with ``user_targets``, user-kind entries borrow their keys."""
    parsed = []
    for t in _list_of(items, dict):
        kind = _opt(t, "contextKind", str)
        var = _req(t, "variation", int)
        values = _list_of(_req(t, "values", list), str)
        parsed.append((kind, var, values))
    if not parsed:
        return 0, 0
    base = w.alloc(TARGET_SIZE * len(parsed))
    for i, (kind, var, values) in enumerate(parsed):
        # old-style "targets" always name user keys, whatever contextKind they carry
        eff_kind = (kind or _DEFAULT_KIND) if user_targets is not None else _DEFAULT_KIND
        if user_targets is not None and eff_kind == _DEFAULT_KIND:
            keys: list = []
            for ut_var, ut_values in user_targets:
                if ut_var == var:
                    keys = ut_values
                    break
        else:
            keys = values
        k_off, k_len = w.string(eff_kind)
        w.put(base + TARGET_SIZE * i, "<IIiIII", k_off, k_len, _clamp_i32(var), _strset(w, keys), 0, 0)
    return base, len(parsed)


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------

#: sf_flag_rec_t: hot line (magic, version, bits, offVariation, five array refs), then the
#: fallthrough (written by _vor at FALLTHROUGH_OFF), key, version, samplingRatio, debug date.
_FLAG_HDR = "<IHHIi10I2I16sIIqq24s"
FALLTHROUGH_OFF = 64


def _flag_header(w: _Writer, bits: int, version: int, sampling: int, debug: bytes, off_var: int,
                 refs: List[int]) -> None:
    """Pack the header; ``refs``: key off/len, (unused), variations, prereqs, targets,
    contextTargets, rules (off/count pairs)."""
    struct.pack_into(_FLAG_HDR, w.buf, 0, FLAG_MAGIC, RECORD_VERSION, 0, bits, off_var,
                     *refs[4:14], 0, 0, b"\0" * 16, refs[0], refs[1], version, sampling, debug)


def _i64(v: int) -> int:
    v = int(v)
    return v if -(1 << 63) <= v < (1 << 63) else 0


def compile_flag(flag: Any) -> Compiled:
    """Compile one flag's LD JSON into a record (``sf_flag_rec_t``); never raises.

    :param flag: the flag as decoded JSON (a dict).
    :returns: the record bytes (a multiple of 8 long) and its string pool.
    """
    try:
        return _compile_flag(flag)
    except (_Bad, Exception):  # noqa: BLE001 - anything unparseable is "malformed"
        return _malformed_flag(flag)


def _event_fields(flag: dict) -> Dict[str, Any]:
    """The event fields of a malformed flag that a field-by-field parser reaches.

    ``shmflags.model`` (like ldclient's model) parses a flag's properties in document order
    and stops at the first bad one; the event fields come late (trackEvents onward), so they
    count only when everything before them parsed. Events for a malformed flag then carry
    the same version/trackEvents/excludeFromSummaries/debug/sampling in both evaluators.
    """
    out: Dict[str, Any] = {}
    try:
        _req(flag, "version", int)
        _check_prerequisite_graph(flag)
        if _opt_bool(flag, "deleted"):
            return out
        key = _req(flag, "key", str)
        _opt_list(flag, "variations")
        _opt_bool(flag, "on")
        _opt(flag, "offVariation", int)
        scratch = _Writer(0)
        _vor(scratch, scratch.alloc(16), _opt(flag, "fallthrough", dict), key, "")
        for p in _list_of(_opt_list(flag, "prerequisites"), dict):
            _req(p, "key", str)
            _req(p, "variation", int)
        for r in _list_of(_opt_list(flag, "rules"), dict):
            _opt(r, "id", str)
            _vor(scratch, scratch.alloc(16), r, key, "")
            _clauses(scratch, _req(r, "clauses", list))
            _opt_bool(r, "trackEvents")
        for name in ("targets", "contextTargets"):
            for t in _list_of(_opt_list(flag, name), dict):
                _opt(t, "contextKind", str)
                _req(t, "variation", int)
                _list_of(_req(t, "values", list), str)
        _opt(flag, "salt", str)
        out["track"] = _opt_bool(flag, "trackEvents")
        _opt_bool(flag, "trackEventsFallthrough")
        out["debug"] = _opt(flag, "debugEventsUntilDate", (int, float))
        if "migration" in flag:
            _opt(_opt(flag, "migration", dict) or {}, "checkRatio", int)
        out["exclude"] = _opt_bool(flag, "excludeFromSummaries")
        out["sampling"] = _opt(flag, "samplingRatio", int)
    except Exception:  # noqa: BLE001 - stop at the first property that does not parse
        pass
    return out


def _malformed_flag(flag: Any) -> Compiled:
    w = _Writer(FLAG_REC_SIZE)
    key = flag.get("key") if isinstance(flag, dict) else None
    version = flag.get("version") if isinstance(flag, dict) else None
    k = w.string(key if isinstance(key, str) else "")
    v = _i64(version) if isinstance(version, int) else 0
    refs = [0] * 17
    refs[0], refs[1] = k
    bits, sampling, debug_raw = FLAG_MALFORMED, 1, b"\0" * 24
    ev = _event_fields(flag) if isinstance(flag, dict) else {}
    if ev.get("track"):
        bits |= FLAG_TRACK_EVENTS
    if ev.get("exclude"):
        bits |= FLAG_EXCLUDE_SUMMARIES
    if ev.get("sampling") is not None:
        bits |= FLAG_HAS_SAMPLING
        sampling = _i64(ev["sampling"])
    if ev.get("debug") is not None:
        bits |= FLAG_HAS_DEBUG
        tmp = _Writer(24)
        _value(tmp, 0, ev["debug"], 0)
        debug_raw = bytes(tmp.buf[:24])
    _flag_header(w, bits, v, sampling, debug_raw, 0, refs)
    return w.done()


def _compile_flag(flag: Any) -> Compiled:
    if not isinstance(flag, dict):
        raise _Bad("flag")
    version = _req(flag, "version", int)
    _check_prerequisite_graph(flag)
    w = _Writer(FLAG_REC_SIZE)
    refs = [0] * 17
    if _opt_bool(flag, "deleted"):
        key = _opt(flag, "key", str) or ""
        refs[0], refs[1] = w.string(key)
        _flag_header(w, FLAG_DELETED, _i64(version), 1, b"\0" * 24, 0, refs)
        return w.done()
    key = _req(flag, "key", str)
    variations = _opt_list(flag, "variations")
    on = _opt_bool(flag, "on")
    off_var = _opt(flag, "offVariation", int)
    fallthrough = _opt(flag, "fallthrough", dict)
    prereqs = []
    for p in _list_of(_opt_list(flag, "prerequisites"), dict):
        prereqs.append((_req(p, "key", str), _req(p, "variation", int)))
    rules = _list_of(_opt_list(flag, "rules"), dict)
    targets = _opt_list(flag, "targets")
    ctx_targets = _opt_list(flag, "contextTargets")
    salt = _opt(flag, "salt", str) or ""
    track = _opt_bool(flag, "trackEvents")
    track_ft = _opt_bool(flag, "trackEventsFallthrough")
    debug = _opt(flag, "debugEventsUntilDate", (int, float))
    if "migration" in flag:
        mig = _opt(flag, "migration", dict) or {}
        _opt(mig, "checkRatio", int)
    exclude = _opt_bool(flag, "excludeFromSummaries")
    sampling = _opt(flag, "samplingRatio", int)

    bits = 0
    if on:
        bits |= FLAG_ON
    if track:
        bits |= FLAG_TRACK_EVENTS
    if track_ft:
        bits |= FLAG_TRACK_FALLTHROUGH
    if exclude:
        bits |= FLAG_EXCLUDE_SUMMARIES
    csa = flag.get("clientSideAvailability")
    if isinstance(csa, dict):
        # ld-protocol.md §2.1: the object wins over the legacy field (as shmflags.model)
        client_side = csa.get("usingEnvironmentId") is True
        mobile = csa.get("usingMobileKey") is True
    else:
        client_side = bool(flag.get("clientSide"))
        mobile = True
    if client_side:
        bits |= FLAG_CLIENT_SIDE
    if mobile:
        bits |= FLAG_MOBILE_KEY
    if off_var is not None:
        bits |= FLAG_HAS_OFF
    if sampling is not None:
        bits |= FLAG_HAS_SAMPLING
    debug_raw = bytearray(24)
    if debug is not None:
        bits |= FLAG_HAS_DEBUG
        tmp = _Writer(24)
        _value(tmp, 0, debug, 0)
        debug_raw[:] = tmp.buf[:24]

    # variations first: right after the header, in the cache lines an evaluation reads next
    # (array of (off, len) msgpack blobs; len 0 = unencodable, MALFORMED at eval)
    if variations:
        v_base = w.alloc(8 * len(variations))
        for i, value in enumerate(variations):
            try:
                blob = pack_value(value)
            except Exception:  # noqa: BLE001
                w.put(v_base + 8 * i, "<II", 0, 0)
            else:
                w.put(v_base + 8 * i, "<II", *w.bytes_(blob))
        refs[4], refs[5] = v_base, len(variations)
    refs[0], refs[1] = w.string(key)
    if prereqs:
        p_base = w.alloc(PREREQ_SIZE * len(prereqs))
        for i, (pkey, pvar) in enumerate(prereqs):
            w.put(p_base + PREREQ_SIZE * i, "<IIiI", *w.string(pkey), _clamp_i32(pvar), 0)
        refs[6], refs[7] = p_base, len(prereqs)
    user_targets = []
    for t in _list_of(targets, dict):
        user_targets.append((_req(t, "variation", int), _list_of(_req(t, "values", list), str)))
    refs[8], refs[9] = _targets(w, targets, None)
    refs[10], refs[11] = _targets(w, ctx_targets, user_targets)
    parsed_rules = []
    for r in rules:
        rid = _opt(r, "id", str)
        _opt(r, "variation", int)
        _opt(r, "rollout", dict)
        clauses = _req(r, "clauses", list)
        parsed_rules.append((rid, r, clauses, _opt_bool(r, "trackEvents")))
    if parsed_rules:
        r_base = w.alloc(RULE_SIZE * len(parsed_rules))
        for i, (rid, r, clauses, rtrack) in enumerate(parsed_rules):
            c_off, c_n = _clauses(w, clauses)
            rbits = (RULE_HAS_ID if rid is not None else 0) | (RULE_TRACK_EVENTS if rtrack else 0)
            id_off, id_len = w.string(rid) if rid is not None else (0, 0)
            roff = r_base + RULE_SIZE * i
            w.put(roff, "<IIIIII", id_off, id_len, rbits, 0, c_off, c_n)
            _vor(w, roff + 24, r, key, salt)
        refs[12], refs[13] = r_base, len(parsed_rules)
    _flag_header(w, bits, _i64(version), _i64(sampling) if sampling is not None else 1,
                 bytes(debug_raw), _clamp_i32(off_var) if off_var is not None else 0, refs)
    _vor(w, FALLTHROUGH_OFF, fallthrough, key, salt)
    return w.done()


# ---------------------------------------------------------------------------------------------
# Segments
# ---------------------------------------------------------------------------------------------

_SEG_HDR = "<IHHIIqq14I"


def compile_segment(segment: Any) -> Compiled:
    """Compile one segment's LD JSON into a record (``sf_segment_rec_t``); never raises.

    :param segment: the segment as decoded JSON (a dict).
    :returns: the record bytes (a multiple of 8 long) and its string pool.
    """
    try:
        return _compile_segment(segment)
    except (_Bad, Exception):  # noqa: BLE001
        w = _Writer(SEGMENT_REC_SIZE)
        key = segment.get("key") if isinstance(segment, dict) else None
        k = w.string(key if isinstance(key, str) else "")
        struct.pack_into(_SEG_HDR, w.buf, 0, SEGMENT_MAGIC, RECORD_VERSION, 0, SEG_MALFORMED, 0,
                         0, 0, k[0], k[1], *([0] * 12))
        return w.done()


def _compile_segment(seg: Any) -> Compiled:
    if not isinstance(seg, dict):
        raise _Bad("segment")
    version = _req(seg, "version", int)
    w = _Writer(SEGMENT_REC_SIZE)
    if _opt_bool(seg, "deleted"):
        k = w.string(_opt(seg, "key", str) or "")
        struct.pack_into(_SEG_HDR, w.buf, 0, SEGMENT_MAGIC, RECORD_VERSION, 0, SEG_DELETED, 0,
                         _i64(version), 0, k[0], k[1], *([0] * 12))
        return w.done()
    key = _req(seg, "key", str)
    included = _list_of(_opt_list(seg, "included"), str)
    excluded = _list_of(_opt_list(seg, "excluded"), str)
    inc_ctx = _opt_list(seg, "includedContexts")
    exc_ctx = _opt_list(seg, "excludedContexts")
    rules = []
    for r in _list_of(_opt_list(seg, "rules"), dict):
        clauses = _req(r, "clauses", list)
        kind = _opt(r, "rolloutContextKind", str)
        bucket_by = _opt(r, "bucketBy", str)
        weight = _opt(r, "weight", int)
        rules.append((clauses, kind, bucket_by, weight))
    salt = _opt(seg, "salt", str) or ""
    unbounded = _opt_bool(seg, "unbounded")
    ukind = _opt(seg, "unboundedContextKind", str)
    generation = _opt(seg, "generation", int)
    for t in _list_of(inc_ctx, dict) + _list_of(exc_ctx, dict):
        _opt(t, "contextKind", str)
        _list_of(_req(t, "values", list), str)

    bits = 0
    if unbounded:
        bits |= SEG_UNBOUNDED
    if generation is not None:
        bits |= SEG_HAS_GENERATION
    k_off, k_len = w.string(key)
    p_off, p_len = w.string("%s.%s" % (key, salt))
    u_off, u_len = w.string(ukind or _DEFAULT_KIND)
    inc_set = _strset(w, included)
    exc_set = _strset(w, excluded)
    ic_off, ic_n = _seg_targets(w, inc_ctx)
    ec_off, ec_n = _seg_targets(w, exc_ctx)
    r_off = w.alloc(SEGRULE_SIZE * len(rules)) if rules else 0
    for i, (clauses, kind, bucket_by, weight) in enumerate(rules):
        c_off, c_n = _clauses(w, clauses)
        ref = None if (bucket_by is None or bucket_by == "") else attribute_ref(bucket_by, kind)
        bucket_off = 0xFFFFFFFF if (ref is not None and not ref.valid) else _attrref(w, ref)
        rk_off, rk_len = w.string(kind or _DEFAULT_KIND)
        frac = 0.0
        if weight is not None:
            try:
                frac = weight / 100000.0
            except OverflowError:
                frac = math.inf if weight > 0 else -math.inf
        w.put(r_off + SEGRULE_SIZE * i, "<IIIIIId", c_off, c_n, rk_off, rk_len, bucket_off,
              SEGRULE_HAS_WEIGHT if weight is not None else 0, frac)
    struct.pack_into(_SEG_HDR, w.buf, 0, SEGMENT_MAGIC, RECORD_VERSION, 0, bits, 0,
                     _i64(version), _i64(generation) if generation is not None else 0,
                     k_off, k_len, p_off, p_len, u_off, u_len, inc_set, exc_set,
                     ic_off, ic_n, ec_off, ec_n, r_off, len(rules))
    return w.done()


def _seg_targets(w: _Writer, items: list) -> Tuple[int, int]:
    if not items:
        return 0, 0
    base = w.alloc(TARGET_SIZE * len(items))
    for i, t in enumerate(items):
        k_off, k_len = w.string(_opt(t, "contextKind", str) or _DEFAULT_KIND)
        w.put(base + TARGET_SIZE * i, "<IIiIII", k_off, k_len, 0, _strset(w, t["values"]), 0, 0)
    return base, len(items)
