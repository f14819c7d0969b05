/*
 * sf.h - declarations shared by the C files of shmflags._native.
 *
 * Owns: error codes, the container view (sf_snap_t), bounds-checked record
 * accessors, the Python-facing Snapshot object layout (used by module.c and
 * eval.c) and the evaluator entry points.  Runs in worker processes only.
 *
 * Invariant: every pointer into the snapshot buffer is produced by one of the
 * accessors below, which check offset, size and alignment against the
 * record or container length first.  Nothing else does pointer arithmetic on
 * buffer bytes.
 */
#ifndef SHMFLAGS_SF_H
#define SHMFLAGS_SF_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "layout.h"
#include "record.h"

/* ---- error codes (errors.c holds the one message table) ---- */
#define SF_OK          0
#define SF_ERR_BASE    (-30800)
#define SF_EFORMAT     (-30800)   /* magic or format word mismatch */
#define SF_ESIZE       (-30799)   /* buffer shorter than the header says */
#define SF_ECORRUPT    (-30798)   /* an offset or count points outside its container */
#define SF_ENOTFOUND   (-30797)   /* no such key */
#define SF_EMALFORMED  (-30796)   /* structural flag error: evaluation yields MALFORMED_FLAG */
#define SF_EPYTHON     (-30795)   /* a Python exception is set */
#define SF_EDEPTH      (-30794)   /* prerequisite/segment nesting deeper than SF_MAX_DEPTH */
#define SF_ECHECKSUM   (-30793)   /* header or body checksum mismatch */
#define SF_ERECFORMAT  (-30792)   /* compiled-record format of another build */
#define SF_ERR_LAST    (-30792)

const char *sf_strerror(int code);

/* events.c: adds the _RecorderCore type (event recorder common path) to the module. */
int sf_events_add_types(PyObject *m);

/* Deepest prerequisite or segment nesting followed; deeper raises RecursionError inside the
 * evaluation, reported as ERROR/EXCEPTION like ldclient's own RecursionError (which the
 * Python evaluators hit at about 330 levels). */
#define SF_MAX_DEPTH 200

/* ---- hashing ---- */
uint64_t sf_xxh64(const void *data, size_t len, uint64_t seed);

typedef struct sf_sha1 {
    uint32_t h[5];
    uint64_t total;
    uint8_t  buf[64];
    size_t   used;
} sf_sha1_t;
int sf_sha1_setup(int allow_ni);
void sf_sha1_init(sf_sha1_t *s);
void sf_sha1_update(sf_sha1_t *s, const void *data, size_t len);
void sf_sha1_final(sf_sha1_t *s, uint8_t out[20]);

double sf_bucket_value(const char *prefix, size_t plen, const char *value, size_t vlen);

/* ---- semver ---- */
typedef struct sf_semver {
    const char *major; size_t major_len;
    const char *minor; size_t minor_len;
    const char *patch; size_t patch_len;
    const char *pre;   size_t pre_len;   /* pre == NULL: no pre-release */
} sf_semver_t;
/* Parse as ldclient does; @scratch must hold len + 5 bytes. Return 1 if valid. */
int sf_semver_parse(const char *s, size_t len, char *scratch, sf_semver_t *out);
int sf_semver_compare(const sf_semver_t *a, const sf_semver_t *b);

/* ---- container view ---- */
typedef struct sf_snap {
    const uint8_t *base;      /* byte 0 of the object */
    uint64_t size;            /* header total_size, checked <= buffer length */
    uint64_t generation;
    uint32_t n_flags, n_segments;
    uint32_t flag_index_off, flag_index_cap;
    uint32_t seg_index_off, seg_index_cap;
    uint32_t flag_entries_off, seg_entries_off;   /* entries arrays, in key order */
    uint32_t record_format;
    uint32_t blob_off;        /* directory is [SF_HEADER_SIZE, blob_off), blobs [blob_off, size) */
    uint32_t chunk_table_off, chunk_shift, n_chunks;
    uint64_t checksum;        /* header checksum (of the directory) */
    uint64_t base_generation, base_size, base_checksum;   /* overlay link; base_size 0 = none */
    uint8_t *state;           /* 1 + n_chunks bytes: directory verified, then chunk states */
    const struct sf_snap *under;   /* the base object's view (overlay), or NULL */
} sf_snap_t;

enum { SF_FLAGS = 0, SF_SEGMENTS = 1 };

int sf_snapshot_open(sf_snap_t *s, const void *buf, size_t len);
int sf_snapshot_link(const sf_snap_t *s, const sf_snap_t *base);
/* Log a blob chunk that failed verification (module.c; once per chunk and object). */
void sf_log_bad_chunk(const sf_snap_t *t, uint32_t chunk, uint64_t want, uint64_t got);
int sf_snapshot_find(const sf_snap_t *s, int which, const char *key, size_t klen,
                     const sf_entry_t **out);
int sf_snapshot_entry_at(const sf_snap_t *s, int which, uint32_t i, const sf_entry_t **out);
int sf_entry_key(const sf_snap_t *s, const sf_entry_t *e, const char **key, uint32_t *len);
int sf_entry_raw(const sf_snap_t *s, const sf_entry_t *e, const uint8_t **raw, uint32_t *len);

/*
 * sf_flagcache_t - per-flag Python objects of one Snapshot, indexed by the flag's rank in
 * key order: one cache line to reach everything a result needs, instead of a probe of the
 * generic cache per object.  Filled lazily; owned by the Snapshot.  Slots live in pages of
 * SF_FCACHE_PAGE, allocated when a flag of the page is first evaluated: a worker that
 * switches to a new generation and evaluates a few flags allocates (and later frees) a few
 * KiB, not a slot per flag (~0.5 MB zeroed and walked per switch at 10,000 flags).
 */
typedef struct sf_flagcache {
    PyObject *key;            /* str: not interned and not in the generic cache (held once) */
    PyObject *info[2];        /* info tuples without / with the experiment bit */
    PyObject **values;        /* decoded variations (nvalues of them), or NULL; variations
                               * that decode to singletons (true/false/null/0..127) are not
                               * stored: sf_variation_value() makes them without a cache */
    uint32_t nvalues;
    uint32_t rec_off, rec_len;/* record span, 0 until known */
    uint32_t pool_off, pool_len;/* the record's string pool span (sf_entry_t) */
    uint32_t rank;            /* the slot's own rank (flag_lookup stores it) */
} sf_flagcache_t;   /* 56 bytes; made for flags evaluated alone, not by all_flags_state (issue 4) */

#define SF_FCACHE_SHIFT 6u
#define SF_FCACHE_PAGE  (1u << SF_FCACHE_SHIFT)   /* slots per page: 64 x 56 B = 3.5 KiB */

/* sf_rec_t - a bounds-checked view of one compiled record. */
typedef struct sf_rec {
    const uint8_t *p;
    uint32_t len;
    uint32_t abs;             /* rec_off in the snapshot (cache keys) */
    sf_flagcache_t *fc;       /* the flag's cache slot, or NULL (generic cache) */
    const sf_snap_t *pool_obj;/* the object holding the string pool; NULL: no pool */
    uint32_t pool_off;        /* its offset there (bit 31 cleared), inside the blob area */
    uint32_t pool_len;        /* bytes; chunks verified only when bytes are read */
} sf_rec_t;

int sf_entry_record(const sf_snap_t *s, const sf_entry_t *e, sf_rec_t *out);
const uint8_t *sf_rec_pool(const sf_rec_t *r, uint32_t off, uint32_t len);

/* Return a pointer to @size bytes at @off in @r, 8-aligned, or NULL. */
static inline const void *sf_rec_at(const sf_rec_t *r, uint32_t off, uint64_t size)
{
    if (off == 0 || (off & 7u) != 0 || (uint64_t)off + size > r->len)
        return NULL;
    return r->p + off;
}

/* Return the array @ref of elements of @elsize bytes (NULL when count is 0 or bad). */
static inline const void *sf_rec_array(const sf_rec_t *r, sf_ref_t ref, uint32_t elsize, int *bad)
{
    if (ref.len == 0)
        return NULL;
    const void *p = sf_rec_at(r, ref.off, (uint64_t)ref.len * elsize);
    if (p == NULL)
        *bad = 1;
    return p;
}

/* Return the string @ref (NUL-terminated in the record), or NULL if out of bounds. */
static inline const char *sf_rec_str(const sf_rec_t *r, sf_ref_t ref)
{
    if (ref.off == 0 || (uint64_t)ref.off + ref.len + 1 > r->len || r->p[ref.off + ref.len] != 0)
        return NULL;
    return (const char *)r->p + ref.off;
}

/* Look @key up in the string set at @off. Return 1 member, 0 not, -1 corrupt. */
int sf_strset_has(const sf_rec_t *r, uint32_t off, const char *key, size_t klen, uint64_t hash);

/* ---- Python object cache (per Snapshot): u64 key -> strong ref ---- */
typedef struct sf_cache_slot {
    uint64_t key;             /* 0 = empty */
    PyObject *val;
} sf_cache_slot_t;

typedef struct sf_cache {
    sf_cache_slot_t *slots;   /* key and value side by side: one cache line per probe */
    size_t cap, used;
} sf_cache_t;

PyObject *sf_cache_get(sf_cache_t *c, uint64_t key);            /* borrowed or NULL */
/* Store @val under @key unless the key is already there; return the cached object (borrowed):
 * the existing one when another caller got there first (e.g. while Python code ran). */
PyObject *sf_cache_put(sf_cache_t *c, uint64_t key, PyObject *val);
void sf_cache_clear(sf_cache_t *c);

/* cache key tags */
#define SF_TAG_VARIATION 1u
#define SF_TAG_STR       2u
#define SF_TAG_VALUE     3u
#define SF_TAG_REGEX     4u
#define SF_TAG_INFO      5u
#define SF_CACHE_KEY(abs_off, tag) (((uint64_t)(abs_off) << 3) | (tag))

/*
 * sf_strslot_t - a direct-mapped table of short ASCII record strings looked up by content:
 * attribute names, context kinds and keys recur in thousands of records, and one probe of this
 * small (hot) table replaces a probe of the per-record-offset cache (cold in a large snapshot).
 * Invariant: ``s`` is a borrowed reference that the Snapshot's generic cache also holds (only
 * strings returned by it are stored), so replacing a slot never frees anything; the table is
 * zeroed by tp_alloc and needs no teardown.
 */
#define SF_STRS 256
#define SF_STRS_MAXLEN 32
/*
 * sf_verslot_t - flag versions as int objects, shared by every flag of one version: a
 * direct-mapped table (version mod SF_VERS) instead of one int object per flag.  A slot owns
 * its object; a collision replaces it (the caller holds its own reference meanwhile).
 */
#define SF_VERS 256
typedef struct sf_verslot {
    long long v;
    PyObject *o;              /* int, or NULL (empty slot) */
} sf_verslot_t;

typedef struct sf_strslot {
    uint64_t h;               /* content hash (sf_rec_pystr) */
    PyObject *s;              /* compact ASCII str, or NULL (empty slot) */
} sf_strslot_t;

/* ---- the Python Snapshot object ---- */
typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;
    sf_snap_t snap;
    sf_snap_t under;          /* the base object's view when snap is an overlay */
    Py_buffer bview;          /* the base object's bytes */
    int has_bview;
    Py_buffer state_view, bstate_view;   /* caller-owned verification states, when given */
    int has_state_view, has_bstate_view;
    uint8_t *own_state, *own_bstate;     /* PyMem states when none was given */
    sf_cache_t cache;
    PyObject *unpack;        /* shmflags.snapshot.compile.unpack_value */
    PyObject *parse_time;    /* shmflags.snapshot.compile.parse_time_string */
    PyObject *re_compile;    /* re.compile */
    PyObject *big_segments;  /* BigSegmentsProvider (get_membership) or NULL */
    PyObject *flag_lookup;   /* exact str key -> PyLong rank: skips the index */
    sf_flagcache_t **fpages; /* ceil(n_flags / SF_FCACHE_PAGE) page pointers (NULL until a
                                flag of the page is evaluated), or NULL: no flag cache */
    uint32_t n_fpages;
    uint32_t entries_base;   /* entry offset of rank 0 */
    sf_strslot_t strs[SF_STRS];   /* short record strings by content (eval.c sf_rec_pystr) */
    sf_verslot_t vers[SF_VERS];   /* flag versions (result.c version_object) */
} SnapshotObject;

/* interned strings and constant objects, created once at module init */
typedef struct sf_consts {
    PyObject *s_eval_map, *s_emap, *s_kind, *s_key, *s_get, *s_search;
    PyObject *s_errorKind, *s_ruleIndex, *s_ruleId, *s_inExperiment, *s_prerequisiteKey;
    PyObject *s_bigSegmentsStatus, *s_NOT_CONFIGURED, *s_get_membership;
    PyObject *s_OFF, *s_FALLTHROUGH, *s_TARGET_MATCH, *s_RULE_MATCH, *s_PREREQUISITE_FAILED,
             *s_ERROR, *s_MALFORMED_FLAG, *s_FLAG_NOT_FOUND, *s_EXCEPTION;
    PyObject *s_variation, *s_version, *s_reason, *s_trackEvents, *s_trackReason,
             *s_debugEventsUntilDate, *s_prerequisites, *s_flagsState, *s_valid, *s_user;
    PyObject *exc_corrupt;   /* raised for record bytes that fail a check; becomes MALFORMED_FLAG */
} sf_consts_t;
extern sf_consts_t sf_c;

/* ---- evaluator ---- */
enum { SF_R_OFF, SF_R_FALLTHROUGH, SF_R_TARGET_MATCH, SF_R_RULE_MATCH,
       SF_R_PREREQUISITE_FAILED, SF_R_ERROR };

typedef struct sf_result {
    int kind;                 /* SF_R_* */
    int32_t variation;        /* -1 = none */
    int32_t rule_index;
    int in_experiment;
    const sf_rule_t *rule;    /* RULE_MATCH */
    const char *prereq_key;   /* PREREQUISITE_FAILED */
    uint32_t prereq_len;
} sf_result_t;

typedef struct sf_keyref { const char *p; uint32_t n; } sf_keyref_t;

/*
 * sf_kmemo_t - context keys already looked up in this call, by kind (interned str, compared
 * by identity): UTF-8 bytes and xxh64, so target and segment lists hash a key once.  Valid
 * while the context map is held (one evaluate() or one all_flags_state() call).
 */
#define SF_KMEMO 8
typedef struct sf_kmemo {
    int n;
    struct {
        PyObject *kind;       /* borrowed interned str */
        const char *key;      /* NULL: no context of this kind (or a non-str key) */
        Py_ssize_t len;
        uint64_t hash;
        PyObject *owner;      /* owned: the key str, or its "surrogatepass" bytes */
    } e[SF_KMEMO];
} sf_kmemo_t;
void sf_kmemo_clear(sf_kmemo_t *m);

typedef struct sf_eval {
    SnapshotObject *so;
    PyObject *emap;           /* kind -> attribute dict (borrowed for the call) */
    PyObject *events;         /* list of prerequisite event tuples, or NULL */
    PyObject *prereq_keys;    /* depth-0 prerequisite keys (all_flags_state; owned, lazy) */
    int want_events, want_keys;
    int depth;
    PyObject *bigseg_status;  /* status of the last Big Segment query (owned), or NULL */
    PyObject *bigseg_cache;   /* context key -> membership for this evaluation, or NULL */
    sf_kmemo_t *kmemo;        /* the caller's context-key memo */
    sf_keyref_t top;          /* top-level flag key, resolved lazily from top_rec/top_f */
    sf_rec_t top_rec;
    const sf_flag_rec_t *top_f;
    sf_keyref_t pstack[SF_MAX_DEPTH]; int np;
    sf_keyref_t sstack[SF_MAX_DEPTH]; int ns;
} sf_eval_t;

int sf_eval_flag(sf_eval_t *e, const sf_rec_t *rec, const sf_flag_rec_t *f, sf_result_t *out);
int sf_flag_header(const sf_rec_t *rec, const sf_flag_rec_t **out);
PyObject *sf_make_reason(sf_eval_t *e, const sf_rec_t *rec, const sf_result_t *r);
PyObject *sf_variation_value(SnapshotObject *so, const sf_rec_t *rec, const sf_flag_rec_t *f,
                             int32_t index, int copy);
PyObject *sf_info_tuple(SnapshotObject *so, const sf_rec_t *rec, const sf_flag_rec_t *f,
                        const sf_result_t *r);
PyObject *sf_rec_pystr(SnapshotObject *so, const sf_rec_t *rec, sf_ref_t ref);
PyObject *sf_flag_key(SnapshotObject *so, const sf_rec_t *rec, const sf_flag_rec_t *f);
PyObject *sf_key_str(const char *s, uint32_t n);   /* new str of record key bytes */
sf_flagcache_t *sf_flag_cache_for(SnapshotObject *so, const sf_entry_t *ent);
sf_flagcache_t *sf_flag_cache_if_any(SnapshotObject *so, const sf_entry_t *ent);   /* no new page */
/* the slot of a rank sf_flag_cache_for() returned before, or NULL */
sf_flagcache_t *sf_flag_cache_at(SnapshotObject *so, uint32_t rank);
void sf_flagcache_free(SnapshotObject *so);
PyObject *sf_deep_copy(PyObject *o, int depth);
int sf_is_experiment(const sf_rec_t *rec, const sf_flag_rec_t *f, const sf_result_t *r);

/* Python-facing results (result.c) */
PyObject *sf_py_evaluate(SnapshotObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *sf_py_all_flags_state(SnapshotObject *self, PyObject *args, PyObject *kwds);
PyObject *sf_py_all_flags_lazy(SnapshotObject *self, PyObject *args, PyObject *kwds);
int sf_result_add_types(PyObject *m);   /* the _FlagsState type */
int sf_fast_eval(SnapshotObject *self, PyObject *key, PyObject *emap, PyObject **value,
                 int32_t *index, PyObject **reason, PyObject **info, PyObject **prereqs,
                 PyObject **ev_reason);

/* the recorder core's common path for the client's fast path (events.c) */
int sf_core_check(PyObject *o);
int sf_core_record_fast(PyObject *core, PyObject *key, PyObject *context, PyObject *variation,
                        int32_t index, PyObject *value, PyObject *dflt, PyObject *reason,
                        int with_reason, PyObject *info, PyObject *prereqs);

/* the client's fast path (fast.c): the _Watch and _Fast types, registered on the module */
int sf_fast_register(PyObject *module, PyTypeObject *snapshot_type);

/* operators (ops.c): 1 match, 0 no match, -1 Python error set */
int sf_op_match(sf_eval_t *e, const sf_rec_t *rec, const sf_clause_t *c, PyObject *value);
PyObject *sf_clause_value_object(SnapshotObject *so, const sf_rec_t *rec, const sf_value_t *v);
int sf_utf8(PyObject *s, const char **p, Py_ssize_t *n, PyObject **tmp);

#endif /* SHMFLAGS_SF_H */
