/*
 * module.c - CPython glue for shmflags._native: the Snapshot type (backend
 * contract of docs/internals.md), construction and validation, key listings,
 * error mapping and module constants (result objects are built in result.c).
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
    for (int i = 0; i < SF_VERS; i++)
        Py_CLEAR(self->vers[i].o);
    Py_CLEAR(self->unpack);
    Py_CLEAR(self->parse_time);
    Py_CLEAR(self->re_compile);
    Py_CLEAR(self->big_segments);
    Py_CLEAR(self->flag_lookup);
    sf_flagcache_free(self);
    if (self->has_view)
        PyBuffer_Release(&self->view);
    if (self->has_bview)
        PyBuffer_Release(&self->bview);
    if (self->has_state_view)
        PyBuffer_Release(&self->state_view);
    if (self->has_bstate_view)
        PyBuffer_Release(&self->bstate_view);
    PyMem_Free(self->own_state);
    PyMem_Free(self->own_bstate);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* sf_log_bad_chunk() - one ERROR line on logger "shmflags.snapshot" (any exception set is
 * kept; a failure to log is ignored: the item is unusable either way). */
void sf_log_bad_chunk(const sf_snap_t *t, uint32_t chunk, uint64_t want, uint64_t got)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *logger = NULL, *r = NULL;
    PyObject *logging = PyImport_ImportModule("logging");
    if (logging != NULL)
        logger = PyObject_CallMethod(logging, "getLogger", "s", "shmflags.snapshot");
    if (logger != NULL) {
        uint64_t a = t->blob_off + ((uint64_t)chunk << t->chunk_shift);
        r = PyObject_CallMethod(logger, "error", "sKIKKKK",
                                "shmflags: snapshot generation %d: blob chunk %d [%d, +%d) checksum "
                                "mismatch: expected 0x%016x (chunk table), got 0x%016x; items in it "
                                "are unusable",
                                (unsigned long long)t->generation, chunk, (unsigned long long)a,
                                (unsigned long long)(1ull << t->chunk_shift),
                                (unsigned long long)want, (unsigned long long)got);
    }
    Py_XDECREF(r);
    Py_XDECREF(logger);
    Py_XDECREF(logging);
    PyErr_Clear();
    PyErr_Restore(et, ev, tb);
}

/*
 * The verification state of an object: the caller's writable buffer (kept with the mapping,
 * so a base verified once stays verified for every overlay on it) or a fresh PyMem one.
 */
static uint8_t *get_state(PyObject *arg, const sf_snap_t *s, Py_buffer *view, int *has_view,
                          uint8_t **owned)
{
    if (arg == NULL || arg == Py_None) {
        *owned = PyMem_Calloc(1 + (size_t)s->n_chunks, 1);
        if (*owned == NULL)
            PyErr_NoMemory();
        return *owned;
    }
    if (PyObject_GetBuffer(arg, view, PyBUF_WRITABLE) < 0)
        return NULL;
    *has_view = 1;
    if ((size_t)view->len < 1 + (size_t)s->n_chunks) {
        PyErr_Format(PyExc_ValueError, "verification state: expected at least %u bytes "
                     "(1 + n_chunks), got %zd", 1 + s->n_chunks, view->len);
        return NULL;
    }
    return view->buf;
}

/* header_check always; the directory checksum unless the state says it was verified */
static int verify_object(PyObject *xxh3, const Py_buffer *v, sf_snap_t *s, const char *what)
{
    const sf_header_t *h = v->buf;
    uint64_t hc, dc;
    if (xxh3_range(xxh3, v, 0, offsetof(sf_header_t, header_check), &hc) < 0)
        return -1;
    if (hc != h->header_check) {
        PyObject *t = format_error_type();
        if (t != NULL) {
            PyErr_Format(t, "%s: %s: header_check: expected 0x%016llx, got 0x%016llx",
                         sf_strerror(SF_ECHECKSUM), what, (unsigned long long)hc,
                         (unsigned long long)h->header_check);
            Py_DECREF(t);
        }
        return -1;
    }
    if (s->state[0])
        return 0;
    if (xxh3_range(xxh3, v, SF_HEADER_SIZE, (Py_ssize_t)s->blob_off, &dc) < 0)
        return -1;
    if (dc != h->checksum) {
        PyObject *t = format_error_type();
        if (t != NULL) {
            PyErr_Format(t, "%s: %s: directory checksum: expected 0x%016llx (header), got "
                         "0x%016llx", sf_strerror(SF_ECHECKSUM), what,
                         (unsigned long long)h->checksum, (unsigned long long)dc);
            Py_DECREF(t);
        }
        return -1;
    }
    s->state[0] = 1;
    return 0;
}

static PyObject *Snapshot_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "big_segments", "base", "state", "base_state", NULL};
    PyObject *buffer, *big = Py_None, *base = Py_None, *state = Py_None, *bstate = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OOOO:Snapshot", kwlist, &buffer, &big,
                                     &base, &state, &bstate))
        return NULL;
    SnapshotObject *self = (SnapshotObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_SIMPLE) < 0)
        goto fail;
    self->has_view = 1;
    if (((uintptr_t)self->view.buf & 7u) != 0) {
        /* every struct read assumes 8-byte alignment (mmap and bytes objects provide it) */
        raise_code(SF_EFORMAT, "buffer must start 8-byte aligned (pass the whole mapping)");
        goto fail;
    }
    int rc = sf_snapshot_open(&self->snap, self->view.buf, (size_t)self->view.len);
    if (rc != SF_OK) {
        raise_code(rc, "header rejected");
        goto fail;
    }
    self->snap.state = get_state(state, &self->snap, &self->state_view, &self->has_state_view,
                                 &self->own_state);
    if (self->snap.state == NULL)
        goto fail;
    {
        PyObject *xxh3 = call_import("xxhash", "xxh3_64_intdigest");
        if (xxh3 == NULL)
            goto fail;
        int bad = verify_object(xxh3, &self->view, &self->snap, "snapshot");
        if (!bad && self->snap.base_size != 0) {
            /* an overlay: open, verify and link its base */
            if (base == Py_None) {
                raise_code(SF_ECORRUPT, "overlay without its base object");
                bad = 1;
            } else if (PyObject_GetBuffer(base, &self->bview, PyBUF_SIMPLE) < 0) {
                bad = 1;
            } else {
                self->has_bview = 1;
                if (((uintptr_t)self->bview.buf & 7u) != 0) {
                    raise_code(SF_EFORMAT, "base buffer must start 8-byte aligned");
                    bad = 1;
                } else if ((rc = sf_snapshot_open(&self->under, self->bview.buf,
                                                  (size_t)self->bview.len)) != SF_OK) {
                    raise_code(rc, "base header rejected");
                    bad = 1;
                } else if ((self->under.state = get_state(bstate, &self->under,
                                                          &self->bstate_view,
                                                          &self->has_bstate_view,
                                                          &self->own_bstate)) == NULL
                           || verify_object(xxh3, &self->bview, &self->under, "base") < 0) {
                    bad = 1;
                } else if (sf_snapshot_link(&self->snap, &self->under) != SF_OK) {
                    PyObject *t = format_error_type();
                    if (t != NULL) {
                        PyErr_Format(t, "%s: wrong base: expected generation %llu of %llu bytes, "
                                     "checksum 0x%016llx; got generation %llu of %llu bytes, "
                                     "checksum 0x%016llx (its base_size %llu)",
                                     sf_strerror(SF_ECORRUPT),
                                     (unsigned long long)self->snap.base_generation,
                                     (unsigned long long)self->snap.base_size,
                                     (unsigned long long)self->snap.base_checksum,
                                     (unsigned long long)self->under.generation,
                                     (unsigned long long)self->under.size,
                                     (unsigned long long)self->under.checksum,
                                     (unsigned long long)self->under.base_size);
                        Py_DECREF(t);
                    }
                    bad = 1;
                } else {
                    self->snap.under = &self->under;
                }
            }
        } else if (!bad && base != Py_None) {
            raise_code(SF_ECORRUPT, "self-contained snapshot given a base object");
            bad = 1;
        }
        Py_DECREF(xxh3);
        if (bad)
            goto fail;
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
            self->n_fpages = (uint32_t)(((uint64_t)self->snap.n_flags + SF_FCACHE_PAGE - 1)
                                        >> SF_FCACHE_SHIFT);
            self->fpages = PyMem_Calloc(self->n_fpages, sizeof(sf_flagcache_t *));
            if (self->fpages == NULL) {
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
            return raise_code(SF_ECORRUPT, "entries array");
        }
        PyObject *s = PyUnicode_DecodeUTF8(k, kl, "surrogatepass");
        if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            Py_DECREF(list);
            return raise_code(SF_ECORRUPT, "key is not UTF-8");
        }
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
    const char *k;
    PyObject *tmp;   /* keys with lone surrogates are stored "surrogatepass" */
    if (sf_utf8(key, &k, &kl, &tmp) < 0)
        return NULL;
    const sf_entry_t *ent;
    const uint8_t *raw;
    uint32_t rl;
    int rc = sf_snapshot_find(&self->snap, which, k, (size_t)kl, &ent);
    Py_XDECREF(tmp);
    if (rc == SF_ENOTFOUND)
        Py_RETURN_NONE;
    if (rc != SF_OK || sf_entry_raw(&self->snap, ent, &raw, &rl) != SF_OK)
        return raise_code(SF_ECORRUPT, "entry");
    PyObject *b = PyBytes_FromStringAndSize((const char *)raw, rl);
    if (b == NULL)
        return NULL;
    PyObject *o = PyObject_CallOneArg(self->unpack, b);
    Py_DECREF(b);
    if (o == NULL && !PyErr_ExceptionMatches(PyExc_MemoryError)) {
        /* the builder wrote valid msgpack: damaged bytes are a format error */
        PyErr_Clear();
        return raise_code(SF_ECORRUPT, "raw entry does not decode");
    }
    if (o != NULL && !PyDict_Check(o)) {
        Py_DECREF(o);
        return raise_code(SF_ECORRUPT, "raw entry is not an object");
    }
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
    {"evaluate", (PyCFunction)(void (*)(void))sf_py_evaluate, METH_FASTCALL,
     "evaluate(key, context) -> (value, variation_index, reason, info, prereqs)"},
    {"all_flags_state", (PyCFunction)(void (*)(void))sf_py_all_flags_state,
     METH_VARARGS | METH_KEYWORDS,
     "all_flags_state(context, with_reasons, client_side_only, details_only_for_tracked_flags, now_ms) -> dict"},
    {"all_flags_lazy", (PyCFunction)(void (*)(void))sf_py_all_flags_lazy,
     METH_VARARGS | METH_KEYWORDS,
     "all_flags_lazy(<all_flags_state's arguments>) -> _FlagsState: evaluated now, dicts built on first use"},
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
    .tp_doc = "Snapshot(buffer, big_segments=None, base=None, state=None, base_state=None): a "
              "validated snapshot evaluated in C (holds the buffers; base: the base object of "
              "an overlay; state/base_state: writable verification states kept with the "
              "mappings).",
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

static PyObject *mod_sha1_setup(PyObject *m, PyObject *args)
{
    int allow;
    if (!PyArg_ParseTuple(args, "p", &allow))
        return NULL;
    return PyBool_FromLong(sf_sha1_setup(allow));
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

#if defined(__GNUC__)
/* fence() - a full memory barrier for shm.py's seqlock readers (docs/snapshot-format.md 2.1):
 * atomic_thread_fence(memory_order_seq_cst), spelled as the GCC/Clang builtin in C99. */
static PyObject *mod_fence(PyObject *m, PyObject *unused)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}
#endif

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
    {"_sha1_setup", mod_sha1_setup, METH_VARARGS,
     "_sha1_setup(allow_sha_extensions) -> bool: choose the SHA-1 code (test hook)"},
    {"_strerror", mod_strerror, METH_VARARGS, "_strerror(code) -> str"},
#if defined(__GNUC__)
    {"fence", mod_fence, METH_NOARGS, "fence(): full memory barrier (seq_cst), for shm.py's seqlock"},
#endif
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
    if (getenv("SHMFLAGS_NO_SHA_NI") == NULL)
        sf_sha1_setup(1);
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
        || PyModule_AddIntConstant(m, "MAX_DEPTH", SF_MAX_DEPTH) < 0
        || PyModule_AddObject(m, "__all__", Py_BuildValue("[s]", "Snapshot")) < 0
        || sf_events_add_types(m) < 0   /* events.c: _RecorderCore */
        || sf_result_add_types(m) < 0   /* result.c: _FlagsState */
        || sf_fast_register(m, &SnapshotType) < 0) {   /* the client's fast path (fast.c) */
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
