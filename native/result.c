/*
 * result.c - the Python results of evaluations: the EvalTuple returned by
 * Snapshot.evaluate() and the dict returned by Snapshot.all_flags_state()
 * (ldclient's FeatureFlagsState.to_json_dict()), plus the mapping of
 * evaluator outcomes to them (MALFORMED_FLAG, EXCEPTION, Big Segment status).
 *
 * Invariants: results never share a mutable object with the Snapshot's caches
 * (variation dicts/lists are deep-copied, reason and meta dicts are fresh);
 * damaged record bytes surface as MALFORMED_FLAG, never as an exception.
 * Runs in workers.
 */
#include "sf.h"

#include <sys/mman.h>

/* how many flags ahead all_flags_state prefetches record headers */
#define SF_PREFETCH_AHEAD 4
/* all_flags_state item arrays of at least this many bytes are mapped by themselves */
#define SF_AFS_MMAP_MIN (64u * 1024u)

/* Log the pending exception through logging.getLogger("shmflags._native") and clear it. */
static void log_exception(const char *what, PyObject *key)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *logging = PyImport_ImportModule("logging");
    PyObject *logger = logging ? PyObject_GetAttrString(logging, "getLogger") : NULL;
    Py_XDECREF(logging);
    PyObject *lg = logger ? PyObject_CallFunction(logger, "s", "shmflags._native") : NULL;
    PyObject *r = lg ? PyObject_CallMethod(lg, "error", "ssOO", "%s \"%s\": %r", what, key,
                                           value ? value : Py_None) : NULL;
    Py_XDECREF(r);
    Py_XDECREF(lg);
    Py_XDECREF(logger);
    PyErr_Clear();
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

static PyObject *error_reason(PyObject *error_kind)
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    if (PyDict_SetItem(d, sf_c.s_kind, sf_c.s_ERROR) < 0
        || PyDict_SetItem(d, sf_c.s_errorKind, error_kind) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

static PyObject *context_map(PyObject *ctx)
{
    /* Fast path: shmflags.Context caches the map in its _emap slot once built; reading the
     * slot saves a Python-level call per evaluation.  Anything else (not built yet, another
     * context class) goes through the contract method _eval_map(). */
    PyObject *cached = PyObject_GetAttr(ctx, sf_c.s_emap);
    if (cached != NULL) {
        if (PyDict_CheckExact(cached))
            return cached;
        Py_DECREF(cached);
    } else {
        PyErr_Clear();
    }
    PyObject *m = PyObject_CallMethodNoArgs(ctx, sf_c.s_eval_map);
    if (m == NULL)
        return NULL;
    if (!PyDict_Check(m)) {
        Py_DECREF(m);
        PyErr_SetString(PyExc_TypeError, "context._eval_map() must return a dict");
        return NULL;
    }
    return m;
}

/* The flag's version as an int object (new reference), or NULL with an exception.  Versions
 * go through a small shared table (sf_verslot_t): thousands of flags share a few hundred
 * distinct versions, and no per-flag object is kept (memory, issue 4). */
static PyObject *version_object(SnapshotObject *self, int64_t version)
{
    long long ver = (long long)version;
    sf_verslot_t *slot = &self->vers[(unsigned long long)ver % SF_VERS];
    if (slot->o != NULL && slot->v == ver) {
        Py_INCREF(slot->o);
        return slot->o;
    }
    PyObject *v = PyLong_FromLongLong(ver);
    if (v == NULL)
        return NULL;
    Py_INCREF(v);
    Py_XSETREF(slot->o, v);   /* the caller's reference keeps v alive either way */
    slot->v = ver;
    return v;
}

/*
 * Look a flag up by its str key; 1 found (rec, f set), 0 absent/deleted, -1 corrupt or error.
 * Found records are remembered in flag_lookup (exact str keys only), so a repeated key costs
 * one dict lookup instead of hash + slot + entry + key bytes (four cache misses in a large
 * snapshot).  The record is still validated on every use.
 */
static int find_flag(SnapshotObject *self, PyObject *key, sf_rec_t *rec, const sf_flag_rec_t **f)
{
    if (self->flag_lookup != NULL && PyUnicode_CheckExact(key)) {
        PyObject *hit = PyDict_GetItemWithError(self->flag_lookup, key);
        if (hit != NULL) {
            /* invariant: only ranks verified by sf_flag_cache_for() are stored, so the slot
             * (and its page) exists */
            sf_flagcache_t *fc = sf_flag_cache_at(self, (uint32_t)PyLong_AsSize_t(hit));
            if (fc != NULL) {
                sf_entry_t ent;
                memset(&ent, 0, sizeof(ent));
                ent.rec_off = fc->rec_off;
                ent.rec_len = fc->rec_len;
                ent.pool_off = fc->pool_off;
                ent.pool_len = fc->pool_len;
                if (sf_entry_record(&self->snap, &ent, rec) != SF_OK
                    || sf_flag_header(rec, f) != SF_OK)
                    return -1;
                rec->fc = fc;
                return 1;
            }
            /* no slot (cannot happen, see above): the index path below */
        } else if (PyErr_Occurred()) {
            return -1;
        }
    }
    Py_ssize_t kl;
    const char *k;
    PyObject *tmp;   /* keys with lone surrogates are stored "surrogatepass" (record.h) */
    if (sf_utf8(key, &k, &kl, &tmp) < 0)
        return -1;
    const sf_entry_t *ent;
    int rc = sf_snapshot_find(&self->snap, SF_FLAGS, k, (size_t)kl, &ent);
    Py_XDECREF(tmp);
    if (rc == SF_ENOTFOUND)
        return 0;
    if (rc != SF_OK || sf_entry_record(&self->snap, ent, rec) != SF_OK || sf_flag_header(rec, f) != SF_OK)
        return -1;
    if ((*f)->bits & SF_FLAG_DELETED)
        return 0;
    rec->fc = sf_flag_cache_for(self, ent);
    if (rec->fc != NULL && PyUnicode_CheckExact(key)) {
        if (self->flag_lookup == NULL && (self->flag_lookup = PyDict_New()) == NULL)
            return -1;
        PyObject *rank = PyLong_FromSize_t((size_t)rec->fc->rank);
        int prc = rank ? PyDict_SetItem(self->flag_lookup, key, rank) : -1;
        Py_XDECREF(rank);
        if (prc < 0)
            return -1;
    }
    return 1;
}

/* A corrupt record found while running Python-facing code: clear it, report 1. */
static int corrupt_cleared(void)
{
    if (!PyErr_ExceptionMatches(sf_c.exc_corrupt))
        return 0;
    PyErr_Clear();
    return 1;
}

/* run one top-level evaluation; returns SF_OK/SF_EMALFORMED/SF_EPYTHON */
static int run_eval(sf_eval_t *e, SnapshotObject *self, PyObject *emap, const sf_rec_t *rec,
                    const sf_flag_rec_t *f, sf_result_t *res, int for_all_flags, sf_kmemo_t *memo)
{
    e->kmemo = memo;
    /* not memset: the two key stacks are SF_MAX_DEPTH entries each and only read below np/ns */
    e->events = e->prereq_keys = e->bigseg_status = e->bigseg_cache = NULL;
    e->depth = e->np = e->ns = 0;
    memset(res, 0, sizeof(*res));
    e->so = self;
    e->want_events = !for_all_flags;
    e->want_keys = for_all_flags;
    e->emap = emap;
    e->top.p = NULL;
    e->top.n = 0;
    e->top_rec = *rec;
    e->top_f = f;
    int rc = sf_eval_flag(e, rec, f, res);
    if (rc == SF_EPYTHON && corrupt_cleared())
        rc = SF_EMALFORMED;   /* damaged record bytes: a malformed flag, not an exception */
    if (rc == SF_EMALFORMED || rc == SF_EDEPTH || rc == SF_ECORRUPT) {
        memset(res, 0, sizeof(*res));
        res->kind = SF_R_ERROR;
        res->variation = -1;
        Py_CLEAR(e->bigseg_status);   /* ldclient adds the status only to a completed detail */
        rc = SF_EMALFORMED;
    }
    return rc;
}

/**
 * sf_py_evaluate() - Snapshot.evaluate(key, context): the EvalTuple of docs/internals.md.
 * @self: the Snapshot.
 * @args: key (str) and context (anything with _eval_map()).
 * @nargs: 2.
 *
 * Unexpected Python errors become an EXCEPTION result (logged), damaged record bytes a
 * MALFORMED_FLAG result; only wrong arguments raise.
 * Context: worker; holds the GIL.
 * Return: new reference, or NULL with an exception set.
 */
PyObject *sf_py_evaluate(SnapshotObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "evaluate(key: str, context)");
        return NULL;
    }
    PyObject *key = args[0], *ctx = args[1];
    sf_rec_t rec;
    const sf_flag_rec_t *f;
    int found = find_flag(self, key, &rec, &f);
    if (found < 0 && PyErr_Occurred())
        return NULL;
    if (found <= 0) {
        PyObject *reason = error_reason(found == 0 ? sf_c.s_FLAG_NOT_FOUND : sf_c.s_MALFORMED_FLAG);
        if (reason == NULL)
            return NULL;
        PyObject *empty = PyTuple_New(0);
        PyObject *t = empty ? PyTuple_Pack(5, Py_None, Py_None, reason, Py_None, empty) : NULL;
        Py_DECREF(reason);
        Py_XDECREF(empty);
        return t;
    }
    PyObject *emap = context_map(ctx);
    if (emap == NULL)
        return NULL;
    sf_eval_t e;
    sf_result_t res;
    PyObject *value = NULL, *index = NULL, *reason = NULL, *info = NULL, *prereqs = NULL, *out = NULL;
    sf_kmemo_t memo;
    memo.n = 0;
    int rc = run_eval(&e, self, emap, &rec, f, &res, 0, &memo);
    reason = info = prereqs = NULL;
    if (rc == SF_EPYTHON) {
        /* like ldclient and _pure: an unexpected error is an EXCEPTION result, logged */
        log_exception("Unexpected error while evaluating feature flag", key);
        memset(&res, 0, sizeof(res));
        res.kind = SF_R_ERROR;
        res.variation = -1;
        Py_CLEAR(e.events);
        Py_CLEAR(e.bigseg_status);
        reason = error_reason(sf_c.s_EXCEPTION);
        info = reason ? sf_info_tuple(self, &rec, f, &res) : NULL;
        prereqs = info ? PyTuple_New(0) : NULL;
        if (prereqs != NULL)
            out = PyTuple_Pack(5, Py_None, Py_None, reason, info, prereqs);
        goto done;
    }
    if (res.variation >= 0) {
        value = sf_variation_value(self, &rec, f, res.variation, 1);
        if (value == NULL && corrupt_cleared()) {
            memset(&res, 0, sizeof(res));
            res.kind = SF_R_ERROR;
            res.variation = -1;
            Py_CLEAR(e.bigseg_status);
        }
    }
    if (res.variation >= 0) {
        index = value ? PyLong_FromLong(res.variation) : NULL;
    } else {
        value = Py_None;
        Py_INCREF(value);
        index = Py_None;
        Py_INCREF(index);
    }
    reason = sf_make_reason(&e, &rec, &res);
    if (value == NULL || index == NULL || reason == NULL)
        goto done;
    if (e.bigseg_status && PyDict_SetItem(reason, sf_c.s_bigSegmentsStatus, e.bigseg_status) < 0)
        goto done;
    info = sf_info_tuple(self, &rec, f, &res);
    prereqs = e.events ? PyList_AsTuple(e.events) : PyTuple_New(0);
    if (info == NULL || prereqs == NULL)
        goto done;
    out = PyTuple_Pack(5, value, index, reason, info, prereqs);
done:
    sf_kmemo_clear(&memo);
    if (out == NULL && corrupt_cleared()) {
        /* damaged bytes met while building the result objects: MALFORMED_FLAG */
        PyObject *r = error_reason(sf_c.s_MALFORMED_FLAG), *empty = PyTuple_New(0);
        sf_result_t bad;
        memset(&bad, 0, sizeof(bad));
        bad.kind = SF_R_ERROR;
        bad.variation = -1;
        PyObject *inf = r && empty ? sf_info_tuple(self, &rec, f, &bad) : NULL;
        if (inf == NULL && corrupt_cleared()) {
            inf = Py_None;
            Py_INCREF(inf);
        }
        if (inf != NULL)
            out = PyTuple_Pack(5, Py_None, Py_None, r, inf, empty);
        Py_XDECREF(r);
        Py_XDECREF(empty);
        Py_XDECREF(inf);
    }
    Py_XDECREF(e.events);
    Py_XDECREF(e.bigseg_status);
    Py_XDECREF(e.bigseg_cache);
    Py_XDECREF(value);
    Py_XDECREF(index);
    Py_XDECREF(reason);
    Py_XDECREF(info);
    Py_XDECREF(prereqs);
    Py_DECREF(emap);
    return out;
}

/**
 * sf_fast_eval() - the client's fast path (fast.c): one flag's value, index and (optionally)
 * reason, without the info tuple and the prerequisite tuple of the EvalTuple.
 * @self: the Snapshot.
 * @key: exact str flag key.
 * @emap: the context's evaluation map (kind -> attributes; borrowed).
 * @value: out: new reference to the (copied) variation value, or NULL when no variation.
 * @index: out: variation index, -1 for none.
 * @reason: out when not NULL: new reference to a fresh reason dict.
 * @info: out when not NULL (events wanted): new reference to the EvalTuple's info tuple.
 * @prereqs: out when @info is not NULL: new reference to the list of prerequisite event
 *           tuples (the EvalTuple's fifth field as a list), or NULL for none.
 * @ev_reason: NULL, or (with @info, without @reason) out: new reference to the reason when
 *           the flag's event needs it (info bit 2, an experiment), else NULL - so that
 *           variation() builds a reason only for the evaluations whose feature event has one.
 *
 * With @info, a flag that is not found returns 0: its event (info None) is the Python
 * path's, and the recorder core would refuse it anyway.
 * Invariant: whenever this returns 1 the outcome is exactly what sf_py_evaluate() would put
 * in the EvalTuple's first three fields (same evaluation, same objects built the same way).
 * Every unusual case - a Python exception during evaluation (logged there as EXCEPTION),
 * damaged record bytes, a failed allocation - returns 0 with no exception set and no output,
 * so the caller takes the full path, which produces (and logs) it exactly once.
 * Context: worker; holds the GIL.
 * Return: 1 done, 0 take the slow path.
 */
int sf_fast_eval(SnapshotObject *self, PyObject *key, PyObject *emap, PyObject **value,
                 int32_t *index, PyObject **reason, PyObject **info, PyObject **prereqs,
                 PyObject **ev_reason)
{
    sf_rec_t rec;
    const sf_flag_rec_t *f;
    *value = NULL;
    *index = -1;
    if (reason != NULL)
        *reason = NULL;
    if (info != NULL) {
        *info = NULL;
        *prereqs = NULL;
    }
    if (ev_reason != NULL)
        *ev_reason = NULL;
    int found = find_flag(self, key, &rec, &f);
    if (found < 0) {
        PyErr_Clear();
        return 0;
    }
    if (found == 0) {
        if (info != NULL)
            return 0;   /* FLAG_NOT_FOUND with events: the Python path records it */
        if (reason != NULL && (*reason = error_reason(sf_c.s_FLAG_NOT_FOUND)) == NULL) {
            PyErr_Clear();
            return 0;
        }
        return 1;
    }
    sf_eval_t e;
    sf_result_t res;
    sf_kmemo_t memo;
    memo.n = 0;
    /* events stay on as in evaluate(): building a prerequisite's event may meet damaged
     * bytes, which changes the result (MALFORMED_FLAG); the events themselves are dropped */
    int rc = run_eval(&e, self, emap, &rec, f, &res, 0, &memo);
    int ok = rc != SF_EPYTHON;
    if (ok && res.variation >= 0)
        ok = (*value = sf_variation_value(self, &rec, f, res.variation, 1)) != NULL;
    if (ok && reason != NULL) {
        ok = (*reason = sf_make_reason(&e, &rec, &res)) != NULL
             && (e.bigseg_status == NULL
                 || PyDict_SetItem(*reason, sf_c.s_bigSegmentsStatus, e.bigseg_status) == 0);
    }
    if (ok && info != NULL)
        ok = (*info = sf_info_tuple(self, &rec, f, &res)) != NULL;   /* cached: a new ref */
    if (ok && info != NULL && reason == NULL && ev_reason != NULL
        && sf_is_experiment(&rec, f, &res)) {   /* the info tuple's bit 2 */
        ok = (*ev_reason = sf_make_reason(&e, &rec, &res)) != NULL
             && (e.bigseg_status == NULL
                 || PyDict_SetItem(*ev_reason, sf_c.s_bigSegmentsStatus, e.bigseg_status) == 0);
    }
    *index = res.variation;
    sf_kmemo_clear(&memo);
    if (ok && info != NULL) {
        *prereqs = e.events;   /* the list (or NULL) sf_py_evaluate turns into a tuple */
        e.events = NULL;
    }
    Py_XDECREF(e.events);
    Py_XDECREF(e.bigseg_status);
    Py_XDECREF(e.bigseg_cache);
    if (!ok) {
        PyErr_Clear();
        Py_CLEAR(*value);
        if (reason != NULL)
            Py_CLEAR(*reason);
        if (info != NULL) {
            Py_CLEAR(*info);
            Py_CLEAR(*prereqs);
        }
        if (ev_reason != NULL)
            Py_CLEAR(*ev_reason);
        *index = -1;
        return 0;
    }
    return 1;
}

/*
 * afs_item_t - one flag's outcome in all_flags_state(), between the two passes: pass 1
 * evaluates every flag into a plain C array (and fills the Snapshot's lasting caches while
 * nothing else is allocated, so they pack densely in the heap), pass 2 builds the result
 * dicts in one go (their memory is all freed with the result; issue 4).
 */
typedef struct afs_item {
    PyObject *key;            /* owned (the result may outlive the Snapshot) */
    PyObject *value;          /* owned */
    PyObject *reason;         /* owned: emitted in the metadata; NULL: not emitted */
    PyObject *prereqs;        /* owned list of prerequisite keys, or NULL for none */
    PyObject *debug;          /* owned debugEventsUntilDate, or NULL */
    PyObject *version;        /* owned int, or NULL when not emitted (AFS_OMIT) */
    int32_t variation;        /* -1: none */
    uint32_t bits;            /* AFS_* */
} afs_item_t;

#define AFS_TRACK   1u        /* trackEvents: true */
#define AFS_EXP     2u        /* trackReason: true (in an experiment) */
#define AFS_OMIT    4u        /* details_only_for_tracked_flags: no reason, no version */

/*
 * The item array: a large one is mapped by itself, so that freeing it returns the memory at
 * once; from the C heap, glibc would raise its mmap threshold after the first free and keep
 * later arrays in a heap it does not shrink (the worker's memory, issue 4).  *@map_len is the
 * mapped length, 0 for a heap block.
 */
static afs_item_t *afs_items_alloc(uint32_t cap, size_t *map_len)
{
    size_t len = (size_t)(cap ? cap : 1) * sizeof(afs_item_t);
    *map_len = 0;
    if (len >= SF_AFS_MMAP_MIN) {
        void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) {
            *map_len = len;
            return p;
        }
    }
    return PyMem_RawMalloc(len);
}

static void afs_items_free(afs_item_t *items, uint32_t n, size_t map_len)
{
    for (uint32_t i = 0; i < n; i++) {
        Py_XDECREF(items[i].key);
        Py_XDECREF(items[i].value);
        Py_XDECREF(items[i].reason);
        Py_XDECREF(items[i].prereqs);
        Py_XDECREF(items[i].debug);
        Py_XDECREF(items[i].version);
    }
    if (map_len > 0)
        munmap(items, map_len);
    else
        PyMem_RawFree(items);
}

/* Pass 1 for one flag: evaluate it into @it.  Return 1 stored, 0 left out, -1 error. */
static int afs_eval_one(SnapshotObject *self, PyObject *emap, sf_kmemo_t *memo, uint32_t i,
                        int with_reasons, int client_only, int details_only, long long now_ms,
                        afs_item_t *it)
{
    const sf_entry_t *ent;
    sf_rec_t rec;
    const sf_flag_rec_t *f;
    if (sf_snapshot_entry_at(&self->snap, SF_FLAGS, i, &ent) != SF_OK
        || sf_entry_record(&self->snap, ent, &rec) != SF_OK || sf_flag_header(&rec, &f) != SF_OK)
        return 0;   /* corrupt entry: skipped (validated snapshots never have one) */
    /* No per-flag slot is made here, and the key str is not kept: all_flags_state() names
     * every flag, and a slot and a key per flag for the generation's life would cost each
     * worker ~1 MiB at 10,000 flags (memory, issue 4) to save ~0.3 ms per call.  Values
     * that need decoding go to the generic cache (one entry each) when there is no slot. */
    rec.fc = sf_flag_cache_if_any(self, ent);
    if (f->bits & SF_FLAG_DELETED)
        return 0;
    if (client_only && !(f->bits & SF_FLAG_CLIENT_SIDE))
        return 0;
    PyObject *key;
    const char *kp;
    if (rec.fc != NULL && rec.fc->key != NULL) {
        key = rec.fc->key;
        Py_INCREF(key);
    } else if ((kp = sf_rec_str(&rec, f->key)) == NULL) {
        return 0;   /* a damaged record cannot even be named: left out */
    } else if ((key = sf_key_str(kp, f->key.len)) == NULL) {
        return corrupt_cleared() ? 0 : -1;
    }

    sf_eval_t e;
    sf_result_t res;
    int rc = run_eval(&e, self, emap, &rec, f, &res, 1, memo);
    PyObject *keys = e.prereq_keys;   /* owned; NULL when no prerequisite was seen */
    PyObject *reason = NULL, *value = NULL;
    int exception = 0;
    if (rc == SF_EPYTHON) {
        /* ldclient: an exception while evaluating one flag gives ERROR/EXCEPTION */
        log_exception("Error evaluating flag in all_flags_state", key);
        exception = 1;
        Py_CLEAR(keys);
    }
    if (rc != SF_OK) {
        memset(&res, 0, sizeof(res));
        res.kind = SF_R_ERROR;
        res.variation = -1;
        Py_CLEAR(e.bigseg_status);
    }
    Py_CLEAR(e.events);
    Py_CLEAR(e.bigseg_cache);
    int exp = exception ? 0 : sf_is_experiment(&rec, f, &res);
    if (!(with_reasons || exp)) {
        reason = Py_None;   /* not emitted: skip building it */
        Py_INCREF(reason);
    } else if (exception) {
        reason = error_reason(sf_c.s_EXCEPTION);
    } else {
        reason = sf_make_reason(&e, &rec, &res);
        if (reason != NULL && e.bigseg_status
            && PyDict_SetItem(reason, sf_c.s_bigSegmentsStatus, e.bigseg_status) < 0)
            Py_CLEAR(reason);
        if (reason == NULL && corrupt_cleared()) {
            res.kind = SF_R_ERROR;   /* damaged record: MALFORMED_FLAG */
            res.variation = -1;
            res.in_experiment = 0;
            reason = error_reason(sf_c.s_MALFORMED_FLAG);
        }
    }
    Py_CLEAR(e.bigseg_status);
    if (res.variation >= 0) {
        value = sf_variation_value(self, &rec, f, res.variation, 1);
        if (value == NULL && corrupt_cleared()) {
            res.variation = -1;   /* damaged value blob: MALFORMED_FLAG */
            res.kind = SF_R_ERROR;
            res.in_experiment = 0;
            Py_CLEAR(reason);
            reason = with_reasons ? error_reason(sf_c.s_MALFORMED_FLAG) : (Py_INCREF(Py_None), Py_None);
            value = Py_None;
            Py_INCREF(value);
        }
    } else {
        value = Py_None;
        Py_INCREF(value);
    }
    PyObject *debug = NULL;
    double dd = 0;
    int ok = reason != NULL && value != NULL;
    if (ok && (f->bits & SF_FLAG_HAS_DEBUG)) {
        const sf_value_t *d = &f->debug_date;
        if (d->type == SF_V_INT) {
            debug = PyLong_FromLongLong((int64_t)d->payload);
            dd = (double)(int64_t)d->payload;
        } else if (d->type == SF_V_FLOAT) {
            memcpy(&dd, &d->payload, 8);
            debug = PyFloat_FromDouble(dd);
        } else if (d->type == SF_V_TRUE || d->type == SF_V_FALSE) {
            dd = d->type == SF_V_TRUE;
            debug = PyBool_FromLong(d->type == SF_V_TRUE);
        }
        ok = !(debug == NULL && PyErr_Occurred());   /* another type: damaged, none */
    }
    PyObject *version = NULL;
    if (!ok)
        goto fail;
    int track = (f->bits & SF_FLAG_TRACK_EVENTS) || exp;
    uint32_t bits = (track ? AFS_TRACK : 0u) | (exp ? AFS_EXP : 0u);
    if (details_only && !track && !exp && !(debug != NULL && dd > (double)now_ms))
        bits |= AFS_OMIT;
    if (!(with_reasons || exp) || (bits & AFS_OMIT))
        Py_CLEAR(reason);   /* invariant: items[i].reason != NULL <=> "reason" is emitted */
    /* made here, not in pass 2: the version table keeps some of these objects, and a lasting
     * object among pass 2's short-lived ones would pin their heap arena after the result
     * is freed */
    if (!(bits & AFS_OMIT) && (version = version_object(self, f->version)) == NULL)
        goto fail;
    if (keys != NULL && PyList_GET_SIZE(keys) == 0)
        Py_CLEAR(keys);
    it->key = key;
    it->value = value;
    it->reason = reason;
    it->prereqs = keys;
    it->debug = debug;
    it->version = version;
    it->variation = res.variation;
    it->bits = bits;
    return 1;

fail:
    Py_DECREF(key);
    Py_XDECREF(reason);
    Py_XDECREF(value);
    Py_XDECREF(keys);
    Py_XDECREF(debug);
    return -1;
}

/* Pass 2 for one flag: its metadata dict (ldclient's key order), new reference or NULL. */
static PyObject *afs_meta(const afs_item_t *it)
{
    PyObject *meta = PyDict_New();
    if (meta == NULL)
        return NULL;
    int ok = 1;
    if (it->reason != NULL)
        ok = PyDict_SetItem(meta, sf_c.s_reason, it->reason) == 0;
    if (ok && it->version != NULL)
        ok = PyDict_SetItem(meta, sf_c.s_version, it->version) == 0;
    if (ok && it->prereqs != NULL)
        ok = PyDict_SetItem(meta, sf_c.s_prerequisites, it->prereqs) == 0;
    if (ok && it->variation >= 0) {
        PyObject *v = PyLong_FromLong(it->variation);
        ok = v != NULL && PyDict_SetItem(meta, sf_c.s_variation, v) == 0;
        Py_XDECREF(v);
    }
    if (ok && (it->bits & AFS_TRACK))
        ok = PyDict_SetItem(meta, sf_c.s_trackEvents, Py_True) == 0;
    if (ok && (it->bits & AFS_EXP))
        ok = PyDict_SetItem(meta, sf_c.s_trackReason, Py_True) == 0;
    if (ok && it->debug != NULL)
        ok = PyDict_SetItem(meta, sf_c.s_debugEventsUntilDate, it->debug) == 0;
    if (!ok)
        Py_CLEAR(meta);
    return meta;
}

/*
 * afs_items_t - pass 1's outcome for one context: the evaluated flags in key order.
 * Invariant: items[0..n) hold owned references (afs_item_t), released by afs_items_free.
 */
typedef struct afs_items {
    afs_item_t *items;
    uint32_t n;
    size_t map_len;
} afs_items_t;

/* Pause the cyclic GC while all_flags_state() allocates: its evaluations allocate few
 * objects that live, and thousands of small acyclic result dicts would trigger
 * young-generation collections that traverse the growing result again and again.
 * Return: what afs_gc_resume() needs to restore the previous state. */
static int afs_gc_pause(void)
{
#if PY_VERSION_HEX >= 0x030A0000
    return PyGC_Disable();
#else
    return 0;
#endif
}

static void afs_gc_resume(int was_enabled)
{
#if PY_VERSION_HEX >= 0x030A0000
    if (was_enabled)
        PyGC_Enable();
#else
    (void)was_enabled;
#endif
}

/* Pass 1 of all_flags_state(): parse the arguments, evaluate every flag.  0 or -1 (error). */
static int afs_collect(SnapshotObject *self, PyObject *args, PyObject *kwds, const char *fname,
                       afs_items_t *out)
{
    static char *kwlist[] = {"context", "with_reasons", "client_side_only",
                             "details_only_for_tracked_flags", "now_ms", NULL};
    char fmt[64];
    PyObject *ctx;
    int with_reasons = 0, client_only = 0, details_only = 0;
    long long now_ms = 0;
    snprintf(fmt, sizeof(fmt), "O|pppL:%s", fname);
    out->items = NULL;
    out->n = 0;
    out->map_len = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &ctx,
                                     &with_reasons, &client_only, &details_only, &now_ms))
        return -1;
    PyObject *emap = context_map(ctx);
    if (emap == NULL)
        return -1;
    uint32_t cap = self->snap.n_flags;
    out->items = afs_items_alloc(cap, &out->map_len);
    if (out->items == NULL) {
        Py_DECREF(emap);
        PyErr_NoMemory();
        return -1;
    }
    int gc_was_enabled = afs_gc_pause();
    sf_kmemo_t memo;   /* one context for every flag: its keys are hashed once per call */
    memo.n = 0;
    int rc = 0;
    for (uint32_t i = 0; i < cap; i++) {
#if defined(__GNUC__)
        /* records lie far apart in a large snapshot: start loading a later flag's header
         * while this one is evaluated (a hint only; the read itself is checked later) */
        const sf_entry_t *ahead;
        if (i + SF_PREFETCH_AHEAD < cap
            && sf_snapshot_entry_at(&self->snap, SF_FLAGS, i + SF_PREFETCH_AHEAD, &ahead) == SF_OK
            && (uint64_t)ahead->rec_off + SF_FLAG_REC_SIZE <= self->snap.size) {
            __builtin_prefetch(self->snap.base + ahead->rec_off);
            __builtin_prefetch(self->snap.base + ahead->rec_off + 64);
        }
#endif
        rc = afs_eval_one(self, emap, &memo, i, with_reasons, client_only, details_only,
                          now_ms, &out->items[out->n]);
        if (rc < 0)
            break;
        out->n += (uint32_t)rc;
    }
    sf_kmemo_clear(&memo);
    Py_DECREF(emap);
    afs_gc_resume(gc_was_enabled);
    if (rc < 0) {
        afs_items_free(out->items, out->n, out->map_len);
        out->items = NULL;
        out->n = 0;
        return -1;
    }
    return 0;
}

/* 1 if @key is "$flagsState" or "$valid" (the JSON's own members), else 0 */
static int afs_reserved_key(PyObject *key)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(key);
    if ((len != 6 && len != 11) || PyUnicode_READ_CHAR(key, 0) != '$')
        return 0;
    return PyUnicode_Compare(key, sf_c.s_flagsState) == 0 || PyUnicode_Compare(key, sf_c.s_valid) == 0;
}

/* Pass 2, values: flag key -> value in key order, new reference or NULL.  @skip_reserved
 * leaves out a flag named "$flagsState" or "$valid" (exactly what FeatureFlagsState keeps). */
static PyObject *afs_values(const afs_items_t *it, int skip_reserved)
{
    PyObject *values = PyDict_New();
    if (values == NULL)
        return NULL;
    for (uint32_t i = 0; i < it->n; i++) {
        const afs_item_t *x = &it->items[i];
        if (skip_reserved && afs_reserved_key(x->key))
            continue;
        if (PyDict_SetItem(values, x->key, x->value) < 0) {
            Py_DECREF(values);
            return NULL;
        }
    }
    return values;
}

/* Pass 2, metadata: flag key -> metadata dict in key order, new reference or NULL. */
static PyObject *afs_metadata(const afs_items_t *it)
{
    PyObject *meta_all = PyDict_New();
    if (meta_all == NULL)
        return NULL;
    for (uint32_t i = 0; i < it->n; i++) {
        const afs_item_t *x = &it->items[i];
        PyObject *meta = afs_meta(x);
        int ok = meta != NULL && PyDict_SetItem(meta_all, x->key, meta) == 0;
        Py_XDECREF(meta);
        if (!ok) {
            Py_DECREF(meta_all);
            return NULL;
        }
    }
    return meta_all;
}

/*
 * Pass 2 of all_flags_state(): the result dicts, then the items are released.
 * @full 1: ldclient's to_json_dict() (values, then "$flagsState" and "$valid"), one dict;
 * @full 0: the tuple (values, metadata), values without a flag named "$flagsState" or
 *          "$valid" (exactly what FeatureFlagsState keeps of the full form).
 * @values: the values dict already built for @full 0 (afs_values(it, 1)), or NULL; the
 *          reference is borrowed.
 * Return: new reference, or NULL with an exception set.
 */
static PyObject *afs_build(afs_items_t *it, int full, PyObject *values)
{
    PyObject *meta_all = NULL, *ret = NULL;
    int gc_was_enabled = afs_gc_pause();
    if (values != NULL)
        Py_INCREF(values);
    else
        values = afs_values(it, !full);
    if (values == NULL || (meta_all = afs_metadata(it)) == NULL)
        goto done;
    if (full) {
        if (PyDict_SetItem(values, sf_c.s_flagsState, meta_all) == 0
            && PyDict_SetItem(values, sf_c.s_valid, Py_True) == 0) {
            ret = values;
            values = NULL;
        }
    } else {
        ret = PyTuple_Pack(2, values, meta_all);
    }
done:
    Py_XDECREF(values);
    Py_XDECREF(meta_all);
    afs_items_free(it->items, it->n, it->map_len);
    it->items = NULL;
    it->n = 0;
    afs_gc_resume(gc_was_enabled);
    return ret;
}

/**
 * sf_py_all_flags_state() - Snapshot.all_flags_state(...): ldclient's
 * FeatureFlagsState.to_json_dict() for a valid context, built in C (no events).
 * Return: new reference, or NULL with an exception set.
 */
PyObject *sf_py_all_flags_state(SnapshotObject *self, PyObject *args, PyObject *kwds)
{
    afs_items_t it;
    if (afs_collect(self, args, kwds, "all_flags_state", &it) < 0)
        return NULL;
    return afs_build(&it, 1, NULL);
}

/*
 * _FlagsState: all_flags_state() evaluated, its dicts not built yet (FeatureFlagsState builds
 * them on first use: most of the cost of a result is its 10,000 small dicts, and a caller
 * that only wants the object, or nothing, pays none of it).
 * Invariants: it holds no reference to the Snapshot (a result may outlive its generation);
 * the items it owns (keys, copied values, reasons, prerequisite lists) are reachable from
 * nothing else until built, so the GC need not see them; the dicts it hands out are the
 * caller's too and could be made part of a cycle, so it is a GC type that shows the GC
 * those (values, built) and nothing else;
 * values() builds the values dict alone (what to_values_map() needs), once; build() reuses
 * it, so both calls return the same values dict; once built it keeps only the
 * (values, metadata) tuple, returned by every later call.
 */
typedef struct {
    PyObject_HEAD
    afs_items_t it;           /* pass 1's items until built (then empty) */
    PyObject *values;         /* the values dict once values() made it, until built */
    PyObject *built;          /* (values, metadata) once built */
    int failed;               /* building failed (out of memory): the items are gone */
} FlagsStateObject;

static int FlagsState_traverse(FlagsStateObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->values);
    Py_VISIT(self->built);
    return 0;
}

static int FlagsState_clear(FlagsStateObject *self)
{
    Py_CLEAR(self->values);
    Py_CLEAR(self->built);
    if (self->it.items != NULL) {
        afs_items_free(self->it.items, self->it.n, self->it.map_len);
        self->it.items = NULL;
        self->it.n = 0;
    }
    self->failed = 1;   /* cleared by the GC: a later build() fails instead of inventing */
    return 0;
}

static void FlagsState_dealloc(FlagsStateObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->it.items != NULL)
        afs_items_free(self->it.items, self->it.n, self->it.map_len);
    Py_XDECREF(self->values);
    Py_XDECREF(self->built);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *FlagsState_build(FlagsStateObject *self, PyObject *unused)
{
    if (self->built == NULL) {
        if (self->failed) {
            /* never an empty result in place of the lost one */
            PyErr_SetString(PyExc_RuntimeError, "this all_flags_state result could not be built");
            return NULL;
        }
        self->built = afs_build(&self->it, 0, self->values);
        Py_CLEAR(self->values);   /* now held by built (or lost with the failure) */
        if (self->built == NULL) {
            self->failed = 1;
            return NULL;
        }
    }
    Py_INCREF(self->built);
    return self->built;
}

static PyObject *FlagsState_values(FlagsStateObject *self, PyObject *unused)
{
    if (self->built != NULL) {
        PyObject *v = PyTuple_GET_ITEM(self->built, 0);
        Py_INCREF(v);
        return v;
    }
    if (self->values == NULL) {
        if (self->failed) {
            PyErr_SetString(PyExc_RuntimeError, "this all_flags_state result could not be built");
            return NULL;
        }
        int gc_was_enabled = afs_gc_pause();
        self->values = afs_values(&self->it, 1);
        afs_gc_resume(gc_was_enabled);
        if (self->values == NULL)
            return NULL;   /* the items are intact: a later call may try again */
    }
    Py_INCREF(self->values);
    return self->values;
}

static Py_ssize_t FlagsState_len(FlagsStateObject *self)
{
    return self->built != NULL ? PyDict_GET_SIZE(PyTuple_GET_ITEM(self->built, 1))
                               : (Py_ssize_t)self->it.n;
}

static PyMethodDef FlagsState_methods[] = {
    {"build", (PyCFunction)FlagsState_build, METH_NOARGS,
     "build() -> (values, metadata): the dicts FeatureFlagsState keeps (built once)"},
    {"values", (PyCFunction)FlagsState_values, METH_NOARGS,
     "values() -> the values dict alone (built once; build() returns the same one)"},
    {NULL, NULL, 0, NULL}
};

static PySequenceMethods FlagsState_seq = {
    .sq_length = (lenfunc)FlagsState_len,
};

static PyTypeObject FlagsStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmflags._native._FlagsState",
    .tp_basicsize = sizeof(FlagsStateObject),
    .tp_dealloc = (destructor)FlagsState_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)FlagsState_traverse,
    .tp_clear = (inquiry)FlagsState_clear,
    .tp_doc = "all_flags_state() evaluated; build() makes its dicts once (FeatureFlagsState)",
    .tp_methods = FlagsState_methods,
    .tp_as_sequence = &FlagsState_seq,
};

/**
 * sf_py_all_flags_lazy() - Snapshot.all_flags_lazy(...): all_flags_state()'s evaluation now,
 * its dicts when first asked for (a _FlagsState).
 * Return: new reference, or NULL with an exception set.
 */
PyObject *sf_py_all_flags_lazy(SnapshotObject *self, PyObject *args, PyObject *kwds)
{
    afs_items_t it;
    if (afs_collect(self, args, kwds, "all_flags_lazy", &it) < 0)
        return NULL;
    FlagsStateObject *o = PyObject_GC_New(FlagsStateObject, &FlagsStateType);
    if (o == NULL) {
        afs_items_free(it.items, it.n, it.map_len);
        return NULL;
    }
    o->it = it;
    o->values = NULL;
    o->built = NULL;
    o->failed = 0;
    PyObject_GC_Track(o);
    return (PyObject *)o;
}

/* Add the _FlagsState type to the module (module.c). */
int sf_result_add_types(PyObject *m)
{
    if (PyType_Ready(&FlagsStateType) < 0)
        return -1;
    Py_INCREF(&FlagsStateType);
    if (PyModule_AddObject(m, "_FlagsState", (PyObject *)&FlagsStateType) < 0) {
        Py_DECREF(&FlagsStateType);
        return -1;
    }
    return 0;
}
