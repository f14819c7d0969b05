/*
 * record.h - compiled flag and segment records, as written by
 * shmflags/snapshot/compile.py and read in place by the C evaluator.
 *
 * A record is one self-contained blob inside a snapshot (sf_entry_t.rec_off,
 * rec_len in layout.h).  Invariants:
 *  - little-endian, fixed-width types; every offset is a u32 relative to the
 *    first byte of the record, 8-byte aligned for structs; offset 0 means
 *    "absent" (the record header occupies offset 0, so nothing else can);
 *  - strings are UTF-8 (lone surrogates encoded "surrogatepass"), stored
 *    inline, unaligned, with a NUL after @len bytes; string-set members instead
 *    live in the record's string pool, a span of its own (sf_entry_t.pool_off,
 *    pool_len in layout.h), each with a LEB128 length prefix and no NUL
 *    (sf_strset_t);
 *  - nothing in a record is trusted: the reader bounds-checks every offset
 *    and count against rec_len before it dereferences (snapshot.c), and
 *    treats a failed check as a malformed flag, never as a crash.
 * docs/snapshot-format.md ("Compiled records") describes the same bytes;
 * compile.py states every size below and test_parity.py compares them.
 */
#ifndef SHMFLAGS_RECORD_H
#define SHMFLAGS_RECORD_H

#include <stddef.h>
#include <stdint.h>

#define SF_REC_VERSION        4u
#define SF_FLAG_MAGIC         0x52464653u   /* "SFFR" */
#define SF_SEGMENT_MAGIC      0x52534653u   /* "SFSR" */
#define SF_FLAG_REC_SIZE      128u
#define SF_SEGMENT_REC_SIZE   96u
/* The header's record_format word: version and the two header sizes. */
#define SF_RECORD_FORMAT  ((SF_REC_VERSION << 24) | (SF_FLAG_REC_SIZE << 12) \
                           | (SF_SEGMENT_REC_SIZE << 4) | 0x8u)

/* Operator codes (shmflags/snapshot/ops.py is the one source of names). */
enum {
    SF_OP_UNKNOWN = 0, SF_OP_IN = 1, SF_OP_ENDS_WITH = 2, SF_OP_STARTS_WITH = 3,
    SF_OP_MATCHES = 4, SF_OP_CONTAINS = 5, SF_OP_LESS_THAN = 6,
    SF_OP_LESS_THAN_OR_EQUAL = 7, SF_OP_GREATER_THAN = 8,
    SF_OP_GREATER_THAN_OR_EQUAL = 9, SF_OP_BEFORE = 10, SF_OP_AFTER = 11,
    SF_OP_SEMVER_EQUAL = 12, SF_OP_SEMVER_LESS_THAN = 13,
    SF_OP_SEMVER_GREATER_THAN = 14, SF_OP_SEGMENT_MATCH = 15,
    SF_OP_COUNT = 16
};

/* sf_flag_rec_t.bits */
#define SF_FLAG_ON              (1u << 0)
#define SF_FLAG_MALFORMED       (1u << 1)   /* ldclient would refuse the JSON */
#define SF_FLAG_DELETED         (1u << 2)   /* tombstone */
#define SF_FLAG_TRACK_EVENTS    (1u << 3)
#define SF_FLAG_TRACK_FALLTHROUGH (1u << 4)
#define SF_FLAG_EXCLUDE_SUMMARIES (1u << 5)
#define SF_FLAG_CLIENT_SIDE     (1u << 6)   /* usingEnvironmentId, else clientSide */
#define SF_FLAG_MOBILE_KEY      (1u << 7)
#define SF_FLAG_HAS_OFF         (1u << 8)   /* offVariation is not null */
#define SF_FLAG_HAS_SAMPLING    (1u << 9)
#define SF_FLAG_HAS_DEBUG       (1u << 10)  /* debug_date holds debugEventsUntilDate */

/* sf_segment_rec_t.bits */
#define SF_SEG_MALFORMED        (1u << 1)   /* behaves as an absent segment */
#define SF_SEG_DELETED          (1u << 2)
#define SF_SEG_UNBOUNDED        (1u << 3)
#define SF_SEG_HAS_GENERATION   (1u << 4)

#define SF_RULE_HAS_ID          (1u << 0)   /* else reason.ruleId is null */
#define SF_RULE_TRACK_EVENTS    (1u << 1)
#define SF_CLAUSE_NEGATE        (1u << 0)
#define SF_CLAUSE_ATTR_KIND     (1u << 1)   /* attribute is exactly the one component "kind" */
#define SF_ROLLOUT_EXPERIMENT   (1u << 0)
#define SF_SEGRULE_HAS_WEIGHT   (1u << 0)
#define SF_WV_UNTRACKED         (1u << 0)

/* Attribute-reference offsets: 0 = none (bucket by key), this = invalid ref. */
#define SF_ATTR_INVALID         0xFFFFFFFFu

enum { SF_VOR_NONE = 0, SF_VOR_VARIATION = 1, SF_VOR_ROLLOUT = 2 };

/* sf_value_t.type */
enum {
    SF_V_NULL = 0, SF_V_FALSE = 1, SF_V_TRUE = 2, SF_V_INT = 3, SF_V_FLOAT = 4,
    SF_V_STR = 5,
    SF_V_PACKED = 6,   /* array/object/big int as msgpack: compared with Python == */
    SF_V_OPAQUE = 7    /* not representable: equal to nothing */
};
/* sf_value_t.aux_ok */
#define SF_AUX_TIME   (1u << 0)   /* aux = epoch-ms double (before/after) */
#define SF_AUX_SEMVER (1u << 1)   /* aux = offset of an sf_semver_t */
#define SF_AUX_REGEX  (1u << 2)   /* string compiles with Python re */

/* sf_ref_t - a string (off, byte length) or an array (off, element count). */
typedef struct sf_ref {
    uint32_t off;
    uint32_t len;
} sf_ref_t;

/* sf_value_t - one typed clause value (or debugEventsUntilDate). */
typedef struct sf_value {
    uint8_t  type;       /*  0 SF_V_* */
    uint8_t  aux_ok;     /*  1 SF_AUX_* */
    uint16_t reserved;   /*  2 0 */
    uint32_t len;        /*  4 STR/PACKED: byte length */
    uint64_t payload;    /*  8 INT: int64; FLOAT: double bits; STR/PACKED: offset */
    uint64_t aux;        /* 16 TIME: double bits; SEMVER: offset of sf_semver_t */
} sf_value_t;

/* sf_vor_t - variation or rollout (fallthrough, rule). */
typedef struct sf_vor {
    uint32_t kind;       /*  0 SF_VOR_*; NONE evaluates to MALFORMED_FLAG */
    int32_t  variation;  /*  4 VARIATION: index (out of i32 range stored as -1) */
    uint32_t rollout_off;/*  8 ROLLOUT: offset of sf_rollout_t */
    uint32_t reserved;   /* 12 */
} sf_vor_t;

/* sf_rollout_t */
typedef struct sf_rollout {
    uint32_t bits;       /*  0 SF_ROLLOUT_* */
    uint32_t bucket_by;  /*  4 sf_attrref_t offset; 0 = key; SF_ATTR_INVALID; 0 for experiments */
    sf_ref_t kind;       /*  8 context kind ("user" when absent or empty) */
    sf_ref_t prefix;     /* 16 hash prefix: str(seed), else "<flagKey>.<salt>" */
    sf_ref_t variations; /* 24 sf_weighted_t[] */
} sf_rollout_t;

/* sf_weighted_t - weight is weight/100000.0 as ldclient computes it. */
typedef struct sf_weighted {
    double   weight;     /*  0 */
    int32_t  variation;  /*  8 */
    uint32_t bits;       /* 12 SF_WV_UNTRACKED */
} sf_weighted_t;

/* sf_attrref_t - header of n components, each an sf_ref_t string, n >= 1. */
typedef struct sf_attrref {
    uint32_t n;
    uint32_t reserved;
    /* sf_ref_t comps[n] follow */
} sf_attrref_t;

/* sf_clause_t */
typedef struct sf_clause {
    uint8_t  op;         /*  0 SF_OP_* */
    uint8_t  bits;       /*  1 SF_CLAUSE_* */
    uint16_t reserved0;  /*  2 */
    uint32_t attr;       /*  4 sf_attrref_t offset; 0 = invalid reference */
    sf_ref_t kind;       /*  8 context kind ("user" when absent or empty) */
    sf_ref_t values;     /* 16 sf_value_t[] */
    uint32_t set;        /* 24 sf_strset_t of the string values (large "in" lists); 0 = none */
    uint32_t reserved1;  /* 28 */
} sf_clause_t;

/* sf_rule_t - flag rule */
typedef struct sf_rule {
    sf_ref_t id;         /*  0 rule id (SF_RULE_HAS_ID) */
    uint32_t bits;       /*  8 SF_RULE_* */
    uint32_t reserved;   /* 12 */
    sf_ref_t clauses;    /* 16 sf_clause_t[] */
    sf_vor_t vor;        /* 24 */
} sf_rule_t;

/* sf_prereq_t */
typedef struct sf_prereq {
    sf_ref_t key;        /*  0 */
    int32_t  variation;  /*  8 */
    uint32_t reserved;   /* 12 */
} sf_prereq_t;

/* sf_target_t - flag target (set resolved at compile time for user kind) or segment
 * included/excluded-contexts entry. */
typedef struct sf_target {
    sf_ref_t kind;       /*  0 effective context kind */
    int32_t  variation;  /*  8 */
    uint32_t set;        /* 12 sf_strset_t of keys; 0 = empty (may be shared) */
    uint32_t reserved[2];/* 16 */
} sf_target_t;

/*
 * sf_strset_t - a string set: ordered linear probing on a 32-bit fingerprint.
 *   fp = xxh64(UTF-8 bytes, seed 0) >> 32; home(fp) = (fp * home) >> 32 (< home, monotonic
 *   in fp).  compile.py places the strings in fingerprint order, each at
 *   max(home(fp), previous position + 1), without wrap-around, so used slots are sorted
 *   by fp and a string is never before its home.  Empty slots are {SF_SET_EMPTY_FP, 0}, and
 *   one such slot (the sentinel) is always last.  A lookup skips from home(fp) past smaller
 *   fps, then compares the strings of the slots with an equal fp: at load 0.875 about 4
 *   slots.  Each used slot's off points at the string in the record's string pool (an
 *   offset from the pool's start; the pool's byte 0 is reserved, so a member's off is
 *   >= 1): a LEB128 byte length, then the bytes (no NUL, unaligned).  The pool is kept
 *   apart from the record so that a lookup that matches no fingerprint reads only the
 *   record's pages (issue 4: a worker maps only the pages it reads).
 */
#define SF_SET_EMPTY_FP 0xFFFFFFFFu
typedef struct sf_strset {
    uint32_t nslots;     /*  0 slots that follow, the sentinel included (>= 1) */
    uint32_t home;       /*  4 home positions m (>= 1; may exceed nslots: trailing ones empty) */
    /* sf_setslot_t slots[nslots] follow */
} sf_strset_t;

typedef struct sf_setslot {
    uint32_t fp;         /*  0 fingerprint; SF_SET_EMPTY_FP when empty */
    uint32_t off;        /*  4 string in the pool (LEB128 length + bytes); 0 = empty slot */
} sf_setslot_t;

/* sf_semver_t - decimal digit strings; pre.off == 0 means no pre-release. */
typedef struct sf_semver_rec {
    sf_ref_t major, minor, patch, pre;
} sf_semver_rec_t;

/*
 * sf_flag_rec_t - at offset 0 of a flag record.  The first 64 bytes (one cache line) hold
 * what every evaluation reads; the second line the fallthrough and the fields only events
 * and reasons need.  compile.py places the variations array right after the header.
 */
typedef struct sf_flag_rec {
    uint32_t   magic;            /*   0 SF_FLAG_MAGIC */
    uint16_t   rec_version;      /*   4 SF_REC_VERSION */
    uint16_t   reserved0;        /*   6 */
    uint32_t   bits;             /*   8 SF_FLAG_* */
    int32_t    off_variation;    /*  12 (SF_FLAG_HAS_OFF) */
    sf_ref_t   variations;       /*  16 sf_ref_t[] msgpack blobs; len 0 = unencodable */
    sf_ref_t   prereqs;          /*  24 sf_prereq_t[] */
    sf_ref_t   targets;          /*  32 sf_target_t[] (old user targets) */
    sf_ref_t   context_targets;  /*  40 sf_target_t[] */
    sf_ref_t   rules;            /*  48 sf_rule_t[] */
    uint32_t   reserved1[2];     /*  56 */
    sf_vor_t   fallthrough;      /*  64 */
    sf_ref_t   key;              /*  80 */
    int64_t    version;          /*  88 */
    int64_t    sampling_ratio;   /*  96 (1 when absent) */
    sf_value_t debug_date;       /* 104 debugEventsUntilDate (SF_FLAG_HAS_DEBUG) */
} sf_flag_rec_t;

/* sf_segrule_t */
typedef struct sf_segrule {
    sf_ref_t clauses;    /*  0 sf_clause_t[] */
    sf_ref_t kind;       /*  8 rolloutContextKind ("user" when absent) */
    uint32_t bucket_by;  /* 16 as sf_rollout_t.bucket_by */
    uint32_t bits;       /* 20 SF_SEGRULE_HAS_WEIGHT */
    double   weight;     /* 24 weight/100000.0 */
} sf_segrule_t;

/* sf_segment_rec_t - at offset 0 of a segment record. */
typedef struct sf_segment_rec {
    uint32_t magic;              /*  0 SF_SEGMENT_MAGIC */
    uint16_t rec_version;        /*  4 */
    uint16_t reserved0;          /*  6 */
    uint32_t bits;               /*  8 SF_SEG_* */
    uint32_t reserved1;          /* 12 */
    int64_t  version;            /* 16 */
    int64_t  generation;         /* 24 (SF_SEG_HAS_GENERATION) */
    sf_ref_t key;                /* 32 */
    sf_ref_t prefix;             /* 40 "<key>.<salt>" */
    sf_ref_t unbounded_kind;     /* 48 */
    uint32_t included;           /* 56 sf_strset_t (user keys); 0 = empty */
    uint32_t excluded;           /* 60 */
    sf_ref_t included_contexts;  /* 64 sf_target_t[] */
    sf_ref_t excluded_contexts;  /* 72 sf_target_t[] */
    sf_ref_t rules;              /* 80 sf_segrule_t[] */
    uint32_t reserved2[2];       /* 88 */
} sf_segment_rec_t;

_Static_assert(sizeof(sf_ref_t) == 8, "ref");
_Static_assert(sizeof(sf_value_t) == 24, "value (compile.py VALUE_SIZE)");
_Static_assert(sizeof(sf_vor_t) == 16, "vor");
_Static_assert(sizeof(sf_rollout_t) == 32, "rollout (ROLLOUT_SIZE)");
_Static_assert(sizeof(sf_weighted_t) == 16, "weighted (WEIGHTED_SIZE)");
_Static_assert(sizeof(sf_attrref_t) == 8, "attrref");
_Static_assert(sizeof(sf_clause_t) == 32, "clause (CLAUSE_SIZE)");
_Static_assert(sizeof(sf_rule_t) == 40, "rule (RULE_SIZE)");
_Static_assert(offsetof(sf_rule_t, vor) == 24, "rule.vor");
_Static_assert(sizeof(sf_prereq_t) == 16, "prereq (PREREQ_SIZE)");
_Static_assert(sizeof(sf_target_t) == 24, "target (TARGET_SIZE)");
_Static_assert(sizeof(sf_strset_t) == 8, "strset");
_Static_assert(sizeof(sf_setslot_t) == 8, "setslot (SLOT_SIZE)");
_Static_assert(offsetof(sf_setslot_t, off) == 4, "setslot.off");
_Static_assert(sizeof(sf_semver_rec_t) == 32, "semver (SEMVER_SIZE)");
_Static_assert(sizeof(sf_flag_rec_t) == SF_FLAG_REC_SIZE, "flag record");
_Static_assert(offsetof(sf_flag_rec_t, off_variation) == 12, "flag.off_variation");
_Static_assert(offsetof(sf_flag_rec_t, variations) == 16, "flag.variations");
_Static_assert(offsetof(sf_flag_rec_t, rules) == 48, "flag.rules");
_Static_assert(offsetof(sf_flag_rec_t, fallthrough) == 64, "flag.fallthrough");
_Static_assert(offsetof(sf_flag_rec_t, key) == 80, "flag.key");
_Static_assert(offsetof(sf_flag_rec_t, version) == 88, "flag.version");
_Static_assert(offsetof(sf_flag_rec_t, debug_date) == 104, "flag.debug_date");
_Static_assert(sizeof(sf_segrule_t) == 32, "segrule (SEGRULE_SIZE)");
_Static_assert(sizeof(sf_segment_rec_t) == SF_SEGMENT_REC_SIZE, "segment record");
_Static_assert(offsetof(sf_segment_rec_t, key) == 32, "segment.key");
_Static_assert(offsetof(sf_segment_rec_t, rules) == 80, "segment.rules");

#endif /* SHMFLAGS_RECORD_H */
