/*
 * module.c - CPython glue for shmflags._native: the Snapshot type (backend
 * contract of docs/internals.md), error mapping and module constants.
 *
 * Invariants:
 *  - a Snapshot holds a Py_buffer on the object it was given for its whole
 *    life, so the bytes it reads cannot be unmapped or freed under it;
 *  - per-Snapshot caches (decoded variations, attribute-name strings,
 *    compiled regexes) die with it: one generation never sees another's;
 *  - the only process-wide state is sf_c, interned constant strings created
 *    once at import and never changed (safe across fork).
 * Runs in workers.
 */
#include "sf.h"

sf_consts_t sf_c;

/* ---- error mapping: one table (py-lmdb error_map style) ---- */
static PyObject *format_error_type(void)
{
    PyObject *mod = PyImport_ImportModule("shmflags.errors");
    if (mod == NULL)
        return NULL;
    PyObject *t = PyObject_GetAttrString(mod, "SnapshotFormatError");
    Py_DECREF(mod);
    return t;
}

static const struct { int code; int format_error; } error_map[] = {
    {SF_EFORMAT, 1}, {SF_ESIZE, 1}, {SF_ECORRUPT, 1}, {SF_ECHECKSUM, 1}, {SF_ERECFORMAT, 1},
};

static PyObject *raise_code(int code, const char *detail)
{
    PyObject *type = PyExc_RuntimeError, *owned = NULL;
    for (size_t i = 0; i < sizeof(error_map) / sizeof(error_map[0]); i++) {
        if (error_map[i].code == code && error_map[i].format_error) {
            owned = format_error_type();
            if (owned == NULL)
                return NULL;
            type = owned;
        }
    }
    PyErr_Format(type, "%s%s%s", sf_strerror(code), detail ? ": " : "", detail ? detail : "");
    Py_XDECREF(owned);
    return NULL;
}

/* ---- construction ---- */

static PyObject *call_import(const char *module, const char *attr)
{
    PyObject *mod = PyImport_ImportModule(module);
    if (mod == NULL)
        return NULL;
    PyObject *o = PyObject_GetAttrString(mod, attr);
    Py_DECREF(mod);
    return o;
}

/* xxh3_64 of buf[a:b] through the xxhash module (construction only) */
static int xxh3_range(PyObject *xxh3, const Py_buffer *v, Py_ssize_t a, Py_ssize_t b, uint64_t *out)
{
    PyObject *mv = PyMemoryView_FromMemory((char *)v->buf + a, b - a, PyBUF_READ);
    if (mv == NULL)
        return -1;
    PyObject *r = PyObject_CallOneArg(xxh3, mv);
    Py_DECREF(mv);
    if (r == NULL)
        return -1;
    *out = PyLong_AsUnsignedLongLong(r);
    Py_DECREF(r);
    return PyErr_Occurred() ? -1 : 0;
}

static void Snapshot_dealloc(SnapshotObject *self)
{
    sf_cache_clear(&self->cache);
    Py_CLEAR(self->unpack);
    Py_CLEAR(self->parse_time);
    Py_CLEAR(self->re_compile);
    Py_CLEAR(self->big_segments);
    Py_CLEAR(self->flag_lookup);
    sf_flagcache_free(self);
    if (self->has_view)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Snapshot_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "big_segments", NULL};
    PyObject *buffer, *big = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:Snapshot", kwlist, &buffer, &big))
        return NULL;
    SnapshotObject *self = (SnapshotObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_SIMPLE) < 0)
        goto fail;
    self->has_view = 1;
    int rc = sf_snapshot_open(&self->snap, self->view.buf, (size_t)self->view.len);
    if (rc != SF_OK) {
        raise_code(rc, "header rejected");
        goto fail;
    }
    {
        PyObject *xxh3 = call_import("xxhash", "xxh3_64_intdigest");
        if (xxh3 == NULL)
            goto fail;
        const sf_header_t *h = self->view.buf;
        uint64_t hc, bc;
        int ok = xxh3_range(xxh3, &self->view, 0, 120, &hc) == 0
                 && xxh3_range(xxh3, &self->view, SF_HEADER_SIZE, (Py_ssize_t)self->snap.size, &bc) == 0;
        Py_DECREF(xxh3);
        if (!ok)
            goto fail;
        if (hc != h->header_check || bc != h->checksum) {
            raise_code(SF_ECHECKSUM, hc != h->header_check ? "header_check" : "body checksum");
            goto fail;
        }
    }
    if (self->snap.record_format != SF_RECORD_FORMAT) {
        PyObject *t = format_error_type();
        if (t != NULL) {
            PyErr_Format(t, "%s: snapshot has 0x%08x, this build reads 0x%08x",
                         sf_strerror(SF_ERECFORMAT), self->snap.record_format, SF_RECORD_FORMAT);
            Py_DECREF(t);
        }
        goto fail;
    }
    if (self->snap.n_flags > 0) {
        const sf_entry_t *first;
        if (sf_snapshot_entry_at(&self->snap, SF_FLAGS, 0, &first) == SF_OK) {
            self->entries_base = (uint32_t)((const uint8_t *)first - self->snap.base);
            self->fcache = PyMem_Calloc(self->snap.n_flags, sizeof(sf_flagcache_t));
            if (self->fcache == NULL) {
                PyErr_NoMemory();
                goto fail;
            }
        }
    }
    self->unpack = call_import("shmflags.snapshot.compile", "unpack_value");
    self->parse_time = call_import("shmflags.snapshot.compile", "parse_time_string");
    self->re_compile = call_import("re", "compile");
    if (big != Py_None) {
        Py_INCREF(big);
        self->big_segments = big;
    }
    if (self->unpack == NULL || self->parse_time == NULL || self->re_compile == NULL)
        goto fail;
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

/* ---- properties ---- */

static PyObject *Snapshot_generation(SnapshotObject *self, void *c)
{
    return PyLong_FromUnsignedLongLong(self->snap.generation);
}

static PyObject *Snapshot_flag_count(SnapshotObject *self, void *c)
{
    return PyLong_FromUnsignedLong(self->snap.n_flags);
}

static PyObject *Snapshot_payload_version(SnapshotObject *self, void *c)
{
    return PyLong_FromLongLong(((const sf_header_t *)self->snap.base)->payload_version);
}

static PyObject *Snapshot_segment_count(SnapshotObject *self, void *c)
{
    return PyLong_FromUnsignedLong(self->snap.n_segments);
}

/* ---- evaluation ---- */

/* Log the pending exception through logging.getLogger("shmflags._native") and clear it. */
static void log_exception(const char *what, PyObject *key)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *logger = call_import("logging", "getLogger");
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

/* The flag's version as a cached int object (borrowed), or NULL with an exception. */
static PyObject *version_object(SnapshotObject *self, const sf_rec_t *rec, const sf_flag_rec_t *f)
{
    if (rec->fc != NULL && rec->fc->version != NULL)
        return rec->fc->version;
    uint64_t ck = SF_CACHE_KEY(rec->abs, SF_TAG_VERSION);
    PyObject *v = rec->fc ? NULL : sf_cache_get(&self->cache, ck);
    if (v != NULL)
        return v;
    v = PyLong_FromLongLong(f->version);
    if (v == NULL)
        return NULL;
    if (rec->fc != NULL) {
        if (rec->fc->version == NULL)
            rec->fc->version = v;   /* the slot owns it */
        else
            Py_DECREF(v);
        return rec->fc->version;
    }
    PyObject *cached = sf_cache_put(&self->cache, ck, v);
    Py_DECREF(v);
    return cached;
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
            /* invariant: only ranks verified by sf_flag_cache_for() are stored */
            sf_flagcache_t *fc = &self->fcache[PyLong_AsSize_t(hit)];
            sf_entry_t ent;
            memset(&ent, 0, sizeof(ent));
            ent.rec_off = fc->rec_off;
            ent.rec_len = fc->rec_len;
            if (sf_entry_record(&self->snap, &ent, rec) != SF_OK || sf_flag_header(rec, f) != SF_OK)
                return -1;
            rec->fc = fc;
            return 1;
        }
        if (PyErr_Occurred())
            return -1;
    }
    Py_ssize_t kl;
    const char *k = PyUnicode_AsUTF8AndSize(key, &kl);
    if (k == NULL)
        return -1;
    const sf_entry_t *ent;
    int rc = sf_snapshot_find(&self->snap, SF_FLAGS, k, (size_t)kl, &ent);
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
        PyObject *rank = PyLong_FromSize_t((size_t)(rec->fc - self->fcache));
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
                    const sf_flag_rec_t *f, sf_result_t *res, int for_all_flags)
{
    /* not memset: the two key stacks are SF_MAX_DEPTH entries each and only read below np/ns */
    e->events = e->prereq_keys = e->bigseg_status = e->bigseg_cache = NULL;
    e->depth = e->np = e->ns = 0;
    memset(res, 0, sizeof(*res));
    e->so = self;
    e->want_events = !for_all_flags;
    e->want_keys = for_all_flags;
    e->emap = emap;
    e->top.p = sf_rec_str(rec, f->key);
    e->top.n = f->key.len;
    if (e->top.p == NULL)
        return SF_EMALFORMED;
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

static PyObject *Snapshot_evaluate(SnapshotObject *self, PyObject *const *args, Py_ssize_t nargs)
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
    int rc = run_eval(&e, self, emap, &rec, f, &res, 0);
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

static PyObject *Snapshot_all_flags_state(SnapshotObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"context", "with_reasons", "client_side_only",
                             "details_only_for_tracked_flags", "now_ms", NULL};
    PyObject *ctx;
    int with_reasons = 0, client_only = 0, details_only = 0;
    long long now_ms = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|pppL:all_flags_state", kwlist, &ctx,
                                     &with_reasons, &client_only, &details_only, &now_ms))
        return NULL;
    PyObject *emap = context_map(ctx);
    if (emap == NULL)
        return NULL;
    int gc_was_enabled = 0;
    (void)gc_was_enabled;
    PyObject *out = PyDict_New(), *meta_all = PyDict_New();
    if (out == NULL || meta_all == NULL)
        goto fail;
#if PY_VERSION_HEX >= 0x030A0000
    /* thousands of small acyclic dicts would trigger young-generation collections that
     * traverse the growing result again and again; restored on every exit below */
    gc_was_enabled = PyGC_Disable();
#endif
    for (uint32_t i = 0; i < self->snap.n_flags; i++) {
        const sf_entry_t *ent;
        sf_rec_t rec;
        const sf_flag_rec_t *f;
        if (sf_snapshot_entry_at(&self->snap, SF_FLAGS, i, &ent) != SF_OK
            || sf_entry_record(&self->snap, ent, &rec) != SF_OK || sf_flag_header(&rec, &f) != SF_OK)
            continue;   /* corrupt entry: skipped (validated snapshots never have one) */
        rec.fc = sf_flag_cache_for(self, ent);
        if (f->bits & SF_FLAG_DELETED)
            continue;
        if (client_only && !(f->bits & SF_FLAG_CLIENT_SIDE))
            continue;
        PyObject *key = sf_flag_key(self, &rec, f);
        if (key == NULL) {
            if (corrupt_cleared())
                continue;   /* a damaged record cannot even be named: left out */
            goto fail;
        }

        sf_eval_t e;
        sf_result_t res;
        int rc = run_eval(&e, self, emap, &rec, f, &res, 1);
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
        PyObject *meta = PyDict_New();
        int ok = reason != NULL && value != NULL && meta != NULL
                 && PyDict_SetItem(out, key, value) == 0;
        if (ok) {
            int track = (f->bits & SF_FLAG_TRACK_EVENTS) || exp;
            PyObject *debug = NULL;
            double dd = 0;
            if (f->bits & SF_FLAG_HAS_DEBUG) {
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
            int omit = details_only && !track && !exp && !(debug != NULL && dd > (double)now_ms);
            if (ok && (with_reasons || exp) && !omit)
                ok = PyDict_SetItem(meta, sf_c.s_reason, reason) == 0;
            if (ok && !omit) {
                PyObject *v = version_object(self, &rec, f);
                ok = v != NULL && PyDict_SetItem(meta, sf_c.s_version, v) == 0;
            }
            if (ok && keys != NULL && PyList_GET_SIZE(keys) > 0)
                ok = PyDict_SetItem(meta, sf_c.s_prerequisites, keys) == 0;
            if (ok && res.variation >= 0) {
                PyObject *v = PyLong_FromLong(res.variation);
                ok = v != NULL && PyDict_SetItem(meta, sf_c.s_variation, v) == 0;
                Py_XDECREF(v);
            }
            if (ok && track)
                ok = PyDict_SetItem(meta, sf_c.s_trackEvents, Py_True) == 0;
            if (ok && exp)
                ok = PyDict_SetItem(meta, sf_c.s_trackReason, Py_True) == 0;
            if (ok && debug != NULL)
                ok = PyDict_SetItem(meta, sf_c.s_debugEventsUntilDate, debug) == 0;
            Py_XDECREF(debug);
            if (ok)
                ok = PyDict_SetItem(meta_all, key, meta) == 0;
        }
        Py_XDECREF(meta);
        Py_CLEAR(e.bigseg_status);
        Py_XDECREF(reason);
        Py_XDECREF(value);
        Py_XDECREF(keys);
        if (!ok)
            goto fail;
    }
    if (PyDict_SetItem(out, sf_c.s_flagsState, meta_all) < 0
        || PyDict_SetItem(out, sf_c.s_valid, Py_True) < 0)
        goto fail;
    Py_DECREF(meta_all);
    Py_DECREF(emap);
#if PY_VERSION_HEX >= 0x030A0000
    if (gc_was_enabled)
        PyGC_Enable();
#endif
    return out;
fail:
    Py_XDECREF(out);
    Py_XDECREF(meta_all);
    Py_DECREF(emap);
#if PY_VERSION_HEX >= 0x030A0000
    if (gc_was_enabled)
        PyGC_Enable();
#endif
    return NULL;
}

static PyObject *keys_of(SnapshotObject *self, int which)
{
    uint32_t n = which == SF_FLAGS ? self->snap.n_flags : self->snap.n_segments;
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (uint32_t i = 0; i < n; i++) {
        const sf_entry_t *ent;
        const char *k;
        uint32_t kl;
        if (sf_snapshot_entry_at(&self->snap, which, i, &ent) != SF_OK
            || sf_entry_key(&self->snap, ent, &k, &kl) != SF_OK) {
            Py_DECREF(list);
            return raise_code(SF_ECORRUPT, "order array");
        }
        PyObject *s = PyUnicode_DecodeUTF8(k, kl, "surrogatepass");
        if (s == NULL || PyList_Append(list, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(s);
    }
    return list;
}

static PyObject *Snapshot_flag_keys(SnapshotObject *self, PyObject *unused)
{
    return keys_of(self, SF_FLAGS);
}

static PyObject *Snapshot_segment_keys(SnapshotObject *self, PyObject *unused)
{
    return keys_of(self, SF_SEGMENTS);
}

static PyObject *Snapshot_repr(SnapshotObject *self)
{
    return PyUnicode_FromFormat("<shmflags._native.Snapshot generation=%llu flags=%u segments=%u>",
                                (unsigned long long)self->snap.generation, self->snap.n_flags,
                                self->snap.n_segments);
}

static PyObject *raw_item(SnapshotObject *self, PyObject *args, int which)
{
    PyObject *key;
    if (!PyArg_ParseTuple(args, "U", &key))
        return NULL;
    Py_ssize_t kl;
    const char *k = PyUnicode_AsUTF8AndSize(key, &kl);
    if (k == NULL)
        return NULL;
    const sf_entry_t *ent;
    const uint8_t *raw;
    uint32_t rl;
    int rc = sf_snapshot_find(&self->snap, which, k, (size_t)kl, &ent);
    if (rc == SF_ENOTFOUND)
        Py_RETURN_NONE;
    if (rc != SF_OK || sf_entry_raw(&self->snap, ent, &raw, &rl) != SF_OK)
        return raise_code(SF_ECORRUPT, "entry");
    PyObject *b = PyBytes_FromStringAndSize((const char *)raw, rl);
    if (b == NULL)
        return NULL;
    PyObject *o = PyObject_CallOneArg(self->unpack, b);
    Py_DECREF(b);
    return o;
}

static PyObject *Snapshot_raw_flag(SnapshotObject *self, PyObject *args)
{
    return raw_item(self, args, SF_FLAGS);
}

static PyObject *Snapshot_raw_segment(SnapshotObject *self, PyObject *args)
{
    return raw_item(self, args, SF_SEGMENTS);
}

static PyMethodDef Snapshot_methods[] = {
    {"evaluate", (PyCFunction)(void (*)(void))Snapshot_evaluate, METH_FASTCALL,
     "evaluate(key, context) -> (value, variation_index, reason, info, prereqs)"},
    {"all_flags_state", (PyCFunction)(void (*)(void))Snapshot_all_flags_state,
     METH_VARARGS | METH_KEYWORDS,
     "all_flags_state(context, with_reasons, client_side_only, details_only_for_tracked_flags, now_ms) -> dict"},
    {"flag_keys", (PyCFunction)Snapshot_flag_keys, METH_NOARGS, "flag_keys() -> sorted list of keys"},
    {"segment_keys", (PyCFunction)Snapshot_segment_keys, METH_NOARGS, "segment_keys() -> sorted list"},
    {"raw_flag", (PyCFunction)Snapshot_raw_flag, METH_VARARGS, "raw_flag(key) -> dict | None"},
    {"raw_segment", (PyCFunction)Snapshot_raw_segment, METH_VARARGS, "raw_segment(key) -> dict | None"},
    {NULL, NULL, 0, NULL}
};

static PyGetSetDef Snapshot_getset[] = {
    {"generation", (getter)Snapshot_generation, NULL, "generation from the header", NULL},
    {"flag_count", (getter)Snapshot_flag_count, NULL, "number of flags", NULL},
    {"segment_count", (getter)Snapshot_segment_count, NULL, "number of segments", NULL},
    {"payload_version", (getter)Snapshot_payload_version, NULL, "LD payload version (0 = unknown)", NULL},
    {NULL, NULL, NULL, NULL, NULL}
};

static PyTypeObject SnapshotType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmflags._native.Snapshot",
    .tp_basicsize = sizeof(SnapshotObject),
    .tp_dealloc = (destructor)Snapshot_dealloc,
    .tp_repr = (reprfunc)Snapshot_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Snapshot(buffer): a validated snapshot evaluated in C (holds the buffer).",
    .tp_methods = Snapshot_methods,
    .tp_getset = Snapshot_getset,
    .tp_new = Snapshot_new,
};

/* ---- test hooks (underscore names; not part of the backend contract) ---- */

static PyObject *mod_bucket(PyObject *m, PyObject *args)
{
    const char *p, *v;
    Py_ssize_t pl, vl;
    if (!PyArg_ParseTuple(args, "s#s#", &p, &pl, &v, &vl))
        return NULL;
    return PyFloat_FromDouble(sf_bucket_value(p, (size_t)pl, v, (size_t)vl));
}

static PyObject *mod_semver_cmp(PyObject *m, PyObject *args)
{
    const char *a, *b;
    Py_ssize_t al, bl;
    if (!PyArg_ParseTuple(args, "s#s#", &a, &al, &b, &bl))
        return NULL;
    char *sa = PyMem_Malloc((size_t)al + 5), *sb = PyMem_Malloc((size_t)bl + 5);
    PyObject *r = NULL;
    sf_semver_t va, vb;
    if (sa == NULL || sb == NULL) {
        PyErr_NoMemory();
    } else if (!sf_semver_parse(a, (size_t)al, sa, &va) || !sf_semver_parse(b, (size_t)bl, sb, &vb)) {
        r = Py_None;
        Py_INCREF(r);
    } else {
        r = PyLong_FromLong(sf_semver_compare(&va, &vb));
    }
    PyMem_Free(sa);
    PyMem_Free(sb);
    return r;
}

static PyObject *mod_xxh64(PyObject *m, PyObject *args)
{
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "y*", &b))
        return NULL;
    uint64_t h = sf_xxh64(b.buf, (size_t)b.len, 0);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLongLong(h);
}

static PyObject *mod_strerror(PyObject *m, PyObject *args)
{
    int code;
    if (!PyArg_ParseTuple(args, "i", &code))
        return NULL;
    return PyUnicode_FromString(sf_strerror(code));
}

static PyMethodDef module_methods[] = {
    {"_bucket", mod_bucket, METH_VARARGS, "_bucket(prefix, value) -> float (test hook)"},
    {"_semver_compare", mod_semver_cmp, METH_VARARGS, "_semver_compare(a, b) -> -1|0|1|None (test hook)"},
    {"_xxh64", mod_xxh64, METH_VARARGS, "_xxh64(bytes) -> int (test hook)"},
    {"_strerror", mod_strerror, METH_VARARGS, "_strerror(code) -> str"},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "shmflags._native",
    "C evaluator over mapped snapshots (see docs/internals.md, backend contract).",
    -1, module_methods, NULL, NULL, NULL, NULL
};

static int intern(PyObject **slot, const char *s)
{
    *slot = PyUnicode_InternFromString(s);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC PyInit__native(void)
{
    if (intern(&sf_c.s_eval_map, "_eval_map") || intern(&sf_c.s_emap, "_emap") || intern(&sf_c.s_kind, "kind")
        || intern(&sf_c.s_key, "key") || intern(&sf_c.s_get, "get")
        || intern(&sf_c.s_search, "search") || intern(&sf_c.s_errorKind, "errorKind")
        || intern(&sf_c.s_ruleIndex, "ruleIndex") || intern(&sf_c.s_ruleId, "ruleId")
        || intern(&sf_c.s_inExperiment, "inExperiment")
        || intern(&sf_c.s_prerequisiteKey, "prerequisiteKey")
        || intern(&sf_c.s_bigSegmentsStatus, "bigSegmentsStatus")
        || intern(&sf_c.s_NOT_CONFIGURED, "NOT_CONFIGURED")
        || intern(&sf_c.s_get_membership, "get_membership") || intern(&sf_c.s_OFF, "OFF")
        || intern(&sf_c.s_FALLTHROUGH, "FALLTHROUGH") || intern(&sf_c.s_TARGET_MATCH, "TARGET_MATCH")
        || intern(&sf_c.s_RULE_MATCH, "RULE_MATCH")
        || intern(&sf_c.s_PREREQUISITE_FAILED, "PREREQUISITE_FAILED")
        || intern(&sf_c.s_ERROR, "ERROR") || intern(&sf_c.s_MALFORMED_FLAG, "MALFORMED_FLAG")
        || intern(&sf_c.s_FLAG_NOT_FOUND, "FLAG_NOT_FOUND") || intern(&sf_c.s_EXCEPTION, "EXCEPTION")
        || intern(&sf_c.s_variation, "variation") || intern(&sf_c.s_version, "version")
        || intern(&sf_c.s_reason, "reason") || intern(&sf_c.s_trackEvents, "trackEvents")
        || intern(&sf_c.s_trackReason, "trackReason")
        || intern(&sf_c.s_debugEventsUntilDate, "debugEventsUntilDate")
        || intern(&sf_c.s_prerequisites, "prerequisites") || intern(&sf_c.s_flagsState, "$flagsState")
        || intern(&sf_c.s_valid, "$valid") || intern(&sf_c.s_user, "user"))
        return NULL;
    sf_c.exc_corrupt = PyErr_NewException("shmflags._native.CorruptRecord", PyExc_ValueError, NULL);
    if (sf_c.exc_corrupt == NULL)
        return NULL;
    if (PyType_Ready(&SnapshotType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SnapshotType);
    if (PyModule_AddObject(m, "Snapshot", (PyObject *)&SnapshotType) < 0
        || PyModule_AddIntConstant(m, "RECORD_FORMAT", (long)SF_RECORD_FORMAT) < 0
        || PyModule_AddIntConstant(m, "FORMAT_WORD", (long)SF_FORMAT_WORD) < 0
        || PyModule_AddIntConstant(m, "MAX_DEPTH", SF_MAX_DEPTH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
