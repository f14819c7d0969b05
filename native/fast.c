/*
 * fast.c - the worker client's hot path in C: the generation watch (_Watch) and the
 * variation fast path (_Fast).  Neither is part of the backend contract (underscore names);
 * shmflags/client/source.py and client.py use them when the C evaluator is chosen.
 *
 * _Watch(slow, offset) is ShmSource.current(): while attached (``words`` is the control
 * block's buffer) and the published generation equals the served (or the rejected) one, it
 * returns the served snapshot after one aligned 8-byte acquire load, and calls ``slow()``
 * (the Python implementation) every 256th call and on every change.
 *
 * _Fast(current, context_type, detail_type) answers variation()/variation_detail() for the
 * common case - a valid context of exactly ``context_type``, a C Snapshot being served, no
 * hooks (the client checks) - and returns the module's _SLOW sentinel for anything else, so
 * the client's full Python path (with its logging, CLIENT_NOT_READY, USER_NOT_SPECIFIED,
 * EXCEPTION and WRONG_TYPE handling) stays the only place those happen.  With ``recorder``
 * set (a _RecorderCore, events on) it also counts the evaluation through
 * sf_core_record_fast() (events.c) and returns _SLOW when the core refuses the call.
 *
 * Invariants:
 *  - a _Watch holds no buffer export between calls: it takes one for the duration of one
 *    load, so closing the control block's mapping (Attachment.close) never fails because
 *    of it, and a closed mapping only sends the call to ``slow()``;
 *  - the generation word is read with an acquire load, aligned and inside the buffer (both
 *    checked on every read), so a snapshot published before the generation store is visible;
 *  - _Fast reads the context's ``_error`` and ``_emap`` slots and writes the detail type's
 *    three slots through offsets taken from the types' own member descriptors at
 *    construction (checked: writable object slots of exactly that type); a type without
 *    them is refused (context) or built by calling it (detail);
 *  - with a recorder, an evaluation is either counted by the core and answered here, or
 *    not recorded at all and answered _SLOW (the Python path then evaluates again and
 *    records it): never both, never neither; a WRONG_TYPE typed variation is always _SLOW;
 *  - every object handed out is a new reference; nothing here is process-wide state except
 *    the _SLOW sentinel and the Snapshot type pointer, both set once at import.
 * Runs in workers; holds the GIL throughout.
 */
#include "sf.h"
#include <math.h>
#include <structmember.h>

static PyTypeObject *snapshot_type;   /* the C Snapshot type (module.c), set at import */
static PyObject *slow_sentinel;       /* _native._SLOW */

#define WATCH_PERIOD 256   /* calls between two visits of the slow path while unchanged */

/* ---- _Watch ---------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *words;          /* exporter of the control block (None: not attached) */
    PyObject *snapshot;       /* the served snapshot or None (never NULL after init) */
    PyObject *slow;           /* callable: the Python current(); None: returns snapshot */
    unsigned long long generation;      /* generation of ``snapshot`` (0 = none) */
    unsigned long long bad_generation;  /* generation rejected as corrupt (0 = none) */
    long countdown;           /* calls left before the next visit of the slow path */
    Py_ssize_t offset;        /* byte offset of the u64 generation in ``words`` */
    vectorcallfunc vectorcall;
} WatchObject;

/* One acquire load of the generation word; 1 with *out set, 0 when it cannot be read. */
static int watch_load(WatchObject *w, uint64_t *out)
{
    Py_buffer v;
    if (w->words == NULL || w->words == Py_None)
        return 0;
    if (PyObject_GetBuffer(w->words, &v, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();   /* closed or released mapping: the slow path reports it */
        return 0;
    }
    const char *p = (const char *)v.buf + w->offset;
    int ok = w->offset >= 0 && v.len >= w->offset + 8 && ((uintptr_t)p & 7u) == 0;
    if (ok) {
#if defined(__GNUC__)
        *out = __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE);
#else
        *out = *(const volatile uint64_t *)p;   /* aligned 8-byte loads are single-copy atomic */
#endif
    }
    PyBuffer_Release(&v);
    return ok;
}

/* The served snapshot (borrowed) when nothing needs the slow path, else NULL. */
static PyObject *watch_fast(WatchObject *w)
{
    uint64_t g;
    if (!watch_load(w, &g) || (g != w->generation && g != w->bad_generation))
        return NULL;
    if (--w->countdown <= 0)
        return NULL;   /* the slow path resets the countdown and runs its periodic checks */
    return w->snapshot;
}

static PyObject *watch_call(WatchObject *w)
{
    PyObject *s = watch_fast(w);
    if (s != NULL) {
        Py_INCREF(s);
        return s;
    }
    if (w->slow == NULL || w->slow == Py_None) {
        Py_INCREF(w->snapshot);
        return w->snapshot;
    }
    return PyObject_CallNoArgs(w->slow);
}

static PyObject *Watch_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0)) {
        PyErr_SetString(PyExc_TypeError, "_Watch() takes no arguments");
        return NULL;
    }
    return watch_call((WatchObject *)self);
}

static PyObject *Watch_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"slow", "offset", NULL};
    PyObject *slow = Py_None;
    Py_ssize_t offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|On:_Watch", kwlist, &slow, &offset))
        return NULL;
    if (offset < 0 || (offset & 7) != 0) {
        PyErr_SetString(PyExc_ValueError, "offset must be a non-negative multiple of 8");
        return NULL;
    }
    WatchObject *w = (WatchObject *)type->tp_alloc(type, 0);
    if (w == NULL)
        return NULL;
    Py_INCREF(slow);
    w->slow = slow;
    Py_INCREF(Py_None);
    w->snapshot = Py_None;
    Py_INCREF(Py_None);
    w->words = Py_None;
    w->offset = offset;
    w->countdown = WATCH_PERIOD;
    w->vectorcall = Watch_vectorcall;
    return (PyObject *)w;
}

static int Watch_traverse(WatchObject *w, visitproc visit, void *arg)
{
    Py_VISIT(w->words);
    Py_VISIT(w->snapshot);
    Py_VISIT(w->slow);
    return 0;
}

static int Watch_clear(WatchObject *w)
{
    Py_CLEAR(w->words);
    Py_CLEAR(w->slow);
    /* snapshot stays a valid object (None) so a call during teardown cannot crash */
    PyObject *old = w->snapshot;
    Py_INCREF(Py_None);
    w->snapshot = Py_None;
    Py_XDECREF(old);
    return 0;
}

static void Watch_dealloc(WatchObject *w)
{
    PyObject_GC_UnTrack(w);
    Watch_clear(w);
    Py_CLEAR(w->snapshot);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

/* object attributes: None instead of NULL, never deletable */
static int set_object(PyObject **slot, PyObject *v, const char *name)
{
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "cannot delete %s", name);
        return -1;
    }
    Py_INCREF(v);
    Py_XSETREF(*slot, v);
    return 0;
}

static PyObject *get_object(PyObject *o)
{
    o = o != NULL ? o : Py_None;
    Py_INCREF(o);
    return o;
}

static PyObject *Watch_get_words(WatchObject *w, void *c) { return get_object(w->words); }
static int Watch_set_words(WatchObject *w, PyObject *v, void *c) { return set_object(&w->words, v, "words"); }
static PyObject *Watch_get_snapshot(WatchObject *w, void *c) { return get_object(w->snapshot); }
static int Watch_set_snapshot(WatchObject *w, PyObject *v, void *c) { return set_object(&w->snapshot, v, "snapshot"); }
static PyObject *Watch_get_slow(WatchObject *w, void *c) { return get_object(w->slow); }
static int Watch_set_slow(WatchObject *w, PyObject *v, void *c) { return set_object(&w->slow, v, "slow"); }

static PyObject *Watch_load(WatchObject *w, PyObject *unused)
{
    uint64_t g;
    if (!watch_load(w, &g))
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(g);
}

static PyMethodDef Watch_methods[] = {
    {"load", (PyCFunction)Watch_load, METH_NOARGS,
     "load() -> int | None: the published generation (one acquire load), None when the "
     "control block cannot be read (not attached, closed)"},
    {NULL, NULL, 0, NULL}
};

static PyGetSetDef Watch_getset[] = {
    {"words", (getter)Watch_get_words, (setter)Watch_set_words,
     "buffer exporter of the control block (None: not attached)", NULL},
    {"snapshot", (getter)Watch_get_snapshot, (setter)Watch_set_snapshot,
     "the snapshot served while the generation is unchanged (None: none)", NULL},
    {"slow", (getter)Watch_get_slow, (setter)Watch_set_slow,
     "callable run instead of the fast path (periodically and on any change)", NULL},
    {NULL, NULL, NULL, NULL, NULL}
};

static PyMemberDef Watch_members[] = {
    {"generation", T_ULONGLONG, offsetof(WatchObject, generation), 0,
     "generation of the served snapshot (0 = none)"},
    {"bad_generation", T_ULONGLONG, offsetof(WatchObject, bad_generation), 0,
     "generation rejected as unusable (0 = none)"},
    {"countdown", T_LONG, offsetof(WatchObject, countdown), 0,
     "calls left before the next visit of the slow path"},
    {"offset", T_PYSSIZET, offsetof(WatchObject, offset), READONLY,
     "byte offset of the generation word"},
    {NULL, 0, 0, 0, NULL}
};

static PyTypeObject WatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmflags._native._Watch",
    .tp_basicsize = sizeof(WatchObject),
    .tp_dealloc = (destructor)Watch_dealloc,
    .tp_vectorcall_offset = offsetof(WatchObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "_Watch(slow=None, offset=0): callable returning the served snapshot; one "
              "acquire load of the generation word while unchanged, slow() otherwise.",
    .tp_traverse = (traverseproc)Watch_traverse,
    .tp_clear = (inquiry)Watch_clear,
    .tp_methods = Watch_methods,
    .tp_members = Watch_members,
    .tp_getset = Watch_getset,
    .tp_new = Watch_new,
};

/* ---- _Fast ----------------------------------------------------------------------------- */

enum { KIND_ANY = 0, KIND_BOOL = 1, KIND_INT = 2, KIND_FLOAT = 3, KIND_STR = 4 };

typedef struct {
    PyObject_HEAD
    PyObject *current;        /* callable () -> snapshot | None; a _Watch is read inline */
    PyTypeObject *ctx_type;   /* shmflags.Context (exact type only) */
    PyObject *detail_type;    /* EvaluationDetail */
    PyObject *recorder;       /* a _RecorderCore the evaluations are counted in, or None */
    PyObject *fallback[2];    /* variation / variation_detail entry points: the full Python
                                 path called on _SLOW (None until the client sets them) */
    Py_ssize_t off_error, off_emap;                /* slots of ctx_type */
    Py_ssize_t off_value, off_index, off_reason;   /* slots of detail_type, or -1 */
} FastObject;

/* Byte offset of the writable object slot @name defined by @t itself, or -1. */
static Py_ssize_t slot_offset(PyTypeObject *t, const char *name)
{
    PyObject *d = t->tp_dict != NULL ? PyDict_GetItemString(t->tp_dict, name) : NULL;
    if (d == NULL || Py_TYPE(d) != &PyMemberDescr_Type
        || ((PyDescrObject *)d)->d_type != t)
        return -1;
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if (m->type != T_OBJECT_EX || (m->flags & READONLY) || m->offset < (Py_ssize_t)sizeof(PyObject))
        return -1;
    return m->offset;
}

#define SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))

static PyObject *Fast_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"current", "context_type", "detail_type", NULL};
    PyObject *current, *ctx_type, *detail_type;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O!:_Fast", kwlist, &current,
                                     &PyType_Type, &ctx_type, &PyType_Type, &detail_type))
        return NULL;
    if (!PyCallable_Check(current)) {
        PyErr_SetString(PyExc_TypeError, "current must be callable");
        return NULL;
    }
    Py_ssize_t oe = slot_offset((PyTypeObject *)ctx_type, "_error");
    Py_ssize_t om = slot_offset((PyTypeObject *)ctx_type, "_emap");
    if (oe < 0 || om < 0) {
        PyErr_SetString(PyExc_TypeError, "context_type needs __slots__ _error and _emap");
        return NULL;
    }
    FastObject *f = (FastObject *)type->tp_alloc(type, 0);
    if (f == NULL)
        return NULL;
    Py_INCREF(current);
    f->current = current;
    Py_INCREF(ctx_type);
    f->ctx_type = (PyTypeObject *)ctx_type;
    Py_INCREF(detail_type);
    f->detail_type = detail_type;
    Py_INCREF(Py_None);
    f->recorder = Py_None;
    Py_INCREF(Py_None);
    f->fallback[0] = Py_None;
    Py_INCREF(Py_None);
    f->fallback[1] = Py_None;
    f->off_error = oe;
    f->off_emap = om;
    PyTypeObject *dt = (PyTypeObject *)detail_type;
    f->off_value = slot_offset(dt, "_value");
    f->off_index = slot_offset(dt, "_variation_index");
    f->off_reason = slot_offset(dt, "_reason");
    if (f->off_value < 0 || f->off_index < 0 || f->off_reason < 0
        || dt->tp_basicsize < (Py_ssize_t)sizeof(PyObject) + 3 * (Py_ssize_t)sizeof(PyObject *))
        f->off_value = f->off_index = f->off_reason = -1;   /* built by calling the type */
    return (PyObject *)f;
}

static int Fast_traverse(FastObject *f, visitproc visit, void *arg)
{
    Py_VISIT(f->current);
    Py_VISIT(f->ctx_type);
    Py_VISIT(f->detail_type);
    Py_VISIT(f->recorder);
    Py_VISIT(f->fallback[0]);
    Py_VISIT(f->fallback[1]);
    return 0;
}

static int Fast_clear(FastObject *f)
{
    Py_CLEAR(f->current);
    Py_CLEAR(f->ctx_type);
    Py_CLEAR(f->detail_type);
    Py_CLEAR(f->recorder);
    Py_CLEAR(f->fallback[0]);
    Py_CLEAR(f->fallback[1]);
    return 0;
}

static void Fast_dealloc(FastObject *f)
{
    PyObject_GC_UnTrack(f);
    Fast_clear(f);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

/*
 * The shared front half: check the arguments, find the snapshot, evaluate.
 * @info, @prereqs, @ev_reason: NULL, or (with a recorder) out: the event inputs of
 * sf_fast_eval().
 * Return 1 with the sf_fast_eval() outputs, 0 for "take the slow path" (nothing set).
 */
static int fast_eval(FastObject *f, PyObject *const *args, Py_ssize_t nargs, int *kind,
                     PyObject **value, int32_t *index, PyObject **reason, PyObject **info,
                     PyObject **prereqs, PyObject **ev_reason)
{
    if (nargs < 3 || nargs > 4 || f->current == NULL)
        return 0;
    PyObject *key = args[0], *ctx = args[1];
    *kind = KIND_ANY;
    if (nargs == 4) {
        long k = PyLong_Check(args[3]) ? PyLong_AsLong(args[3]) : -1;
        if (k < KIND_ANY || k > KIND_STR) {
            PyErr_Clear();
            return 0;
        }
        *kind = (int)k;
    }
    /* an exact str key and a valid context of exactly the contract's type: anything else
     * (invalid context, ldclient.Context, dict) is the slow path's business */
    if (!PyUnicode_CheckExact(key) || Py_TYPE(ctx) != f->ctx_type
        || SLOT(ctx, f->off_error) != Py_None)
        return 0;
    PyObject *snap;
    if (Py_TYPE(f->current) == &WatchType && (snap = watch_fast((WatchObject *)f->current)) != NULL) {
        Py_INCREF(snap);
    } else {
        snap = PyObject_CallNoArgs(f->current);
        if (snap == NULL) {
            PyErr_Clear();
            return 0;
        }
    }
    int done = 0;
    if (Py_TYPE(snap) == snapshot_type) {   /* None (not ready) or another backend: slow */
        PyObject *emap = SLOT(ctx, f->off_emap);
        if (emap != NULL && PyDict_CheckExact(emap)) {
            Py_INCREF(emap);
        } else {
            /* first evaluation of this context: the contract method builds and caches it */
            emap = PyObject_CallMethodNoArgs(ctx, sf_c.s_eval_map);
            if (emap == NULL || !PyDict_Check(emap)) {
                PyErr_Clear();
                Py_XDECREF(emap);
                emap = NULL;
            }
        }
        if (emap != NULL) {
            done = sf_fast_eval((SnapshotObject *)snap, key, emap, value, index, reason,
                                info, prereqs, ev_reason);
            Py_DECREF(emap);
        }
    }
    Py_DECREF(snap);
    return done;
}

/* @value (owned) converted as the typed variation @kind wants; NULL (no exception) when its
 * JSON type is wrong; the same conversions as client.py's _as_bool/_as_int/... */
static PyObject *typed(PyObject *value, int kind)
{
    PyObject *out = NULL;
    switch (kind) {
    case KIND_ANY:
        return value;
    case KIND_BOOL:
        if (PyBool_Check(value))
            return value;
        break;
    case KIND_STR:
        if (PyUnicode_Check(value))
            return value;
        break;
    case KIND_INT:
        if (PyLong_CheckExact(value))
            return value;
        if (PyFloat_CheckExact(value) && isfinite(PyFloat_AS_DOUBLE(value)))
            out = PyLong_FromDouble(PyFloat_AS_DOUBLE(value));   /* truncates toward zero */
        break;
    case KIND_FLOAT:
        if (PyFloat_CheckExact(value))
            return value;
        if (PyLong_CheckExact(value)) {
            double d = PyLong_AsDouble(value);   /* OverflowError: wrong type, as float() */
            out = d == -1.0 && PyErr_Occurred() ? NULL : PyFloat_FromDouble(d);
        }
        break;
    }
    PyErr_Clear();
    Py_DECREF(value);
    return out;
}

static PyObject *slow(void)
{
    Py_INCREF(slow_sentinel);
    return slow_sentinel;
}

/*
 * Record the evaluation just made in f->recorder (sf_core_record_fast()); consumes @info and
 * @prereqs.  @raw: the value before any typed conversion (NULL when @index < 0); @reason: the
 * reason when computed, else NULL; both borrowed.  Return 1 recorded (or lost to an exception,
 * which is cleared: the Python path also only logs a recording failure), 0 nothing recorded:
 * the caller returns _SLOW and the Python path evaluates again and records (the evaluation is
 * deterministic and this one has left no trace, so the outcome is the one it would have had
 * from the start).
 */
static int fast_record(FastObject *f, PyObject *const *args, int32_t index, PyObject *raw,
                       PyObject *reason, int with_reason, PyObject *info, PyObject *prereqs)
{
    PyObject *variation = Py_None;
    if (index >= 0)
        variation = PyLong_FromLong(index);   /* small ints: cached, no allocation */
    else
        Py_INCREF(variation);
    /* held for the call: the core may run Python code first (its slow checks), which
     * could replace f->recorder */
    PyObject *core = Py_NewRef(f->recorder);
    int r = variation == NULL ? -1
            : sf_core_record_fast(core, args[0], args[1], variation, index, raw, args[2],
                                  reason, with_reason, info, prereqs);
    Py_DECREF(core);
    Py_XDECREF(variation);
    Py_DECREF(info);
    Py_XDECREF(prereqs);
    if (r < 0)
        PyErr_Clear();
    return r != 0;
}

/* _Fast.value(key, context, default, kind=0) -> value | default | _SLOW */
static PyObject *Fast_value(FastObject *f, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *value, *info, *prereqs, *ev_reason;
    int32_t index;
    int kind;
    int events = f->recorder != Py_None;
    if (!fast_eval(f, args, nargs, &kind, &value, &index, NULL, events ? &info : NULL,
                   events ? &prereqs : NULL, events ? &ev_reason : NULL))
        return slow();
    if (events) {
        /* the event holds the value as evaluated, the caller gets it converted */
        PyObject *raw = value;
        Py_XINCREF(raw);
        /* A wrong JSON type is recorded with variation None: the Python path's case */
        if (index >= 0 && (value = typed(value, kind)) == NULL) {
            Py_DECREF(raw);
            Py_XDECREF(ev_reason);
            Py_DECREF(info);
            Py_XDECREF(prereqs);
            return slow();
        }
        int done = fast_record(f, args, index, raw, ev_reason, 0, info, prereqs);
        Py_XDECREF(raw);
        Py_XDECREF(ev_reason);
        if (!done) {
            Py_XDECREF(value);
            return slow();
        }
        if (index < 0) {
            Py_INCREF(args[2]);
            return args[2];
        }
        return value;
    }
    if (index < 0) {
        Py_INCREF(args[2]);
        return args[2];
    }
    value = typed(value, kind);
    if (value == NULL) {   /* WRONG_TYPE: the default, as the slow path returns */
        Py_INCREF(args[2]);
        return args[2];
    }
    return value;
}

/* _Fast.detail(key, context, default, kind=0) -> EvaluationDetail | _SLOW */
static PyObject *Fast_detail(FastObject *f, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *value, *reason, *idx, *raw = NULL, *info = NULL, *prereqs = NULL;
    int32_t index;
    int kind;
    int events = f->recorder != Py_None;
    if (!fast_eval(f, args, nargs, &kind, &value, &index, &reason,
                   events ? &info : NULL, events ? &prereqs : NULL, NULL))
        return slow();
    if (index < 0) {
        value = args[2];
        Py_INCREF(value);
        idx = Py_None;
        Py_INCREF(idx);
    } else {
        raw = value;   /* the event holds the value as evaluated */
        Py_INCREF(raw);
        value = typed(value, kind);
        idx = value != NULL ? PyLong_FromLong(index) : NULL;
        if (idx == NULL) {   /* WRONG_TYPE (its reason object is the slow path's) or no memory */
            PyErr_Clear();
            Py_XDECREF(value);
            Py_DECREF(raw);
            Py_DECREF(reason);
            Py_XDECREF(info);
            Py_XDECREF(prereqs);
            return slow();
        }
    }
    /* recorded before the detail is built: a refusal leaves nothing recorded */
    int done = !events || fast_record(f, args, index, raw, reason, 1, info, prereqs);
    Py_XDECREF(raw);
    if (!done) {
        Py_DECREF(value);
        Py_DECREF(idx);
        Py_DECREF(reason);
        return slow();
    }
    PyObject *d;
    if (f->off_value >= 0) {
        /* EvaluationDetail.__init__ only stores its three arguments in these slots */
        PyTypeObject *dt = (PyTypeObject *)f->detail_type;
        d = dt->tp_alloc(dt, 0);
        if (d != NULL) {
            SLOT(d, f->off_value) = value;      /* the slots take the references */
            SLOT(d, f->off_index) = idx;
            SLOT(d, f->off_reason) = reason;
            return d;
        }
    } else {
        PyObject *a[3] = {value, idx, reason};
        d = PyObject_Vectorcall(f->detail_type, a, 3, NULL);
    }
    Py_DECREF(value);
    Py_DECREF(idx);
    Py_DECREF(reason);
    if (d == NULL) {
        PyErr_Clear();
        return slow();
    }
    return d;
}

/*
 * entry() - Client.variation / Client.variation_detail as one C call (no Python frame): the
 * client installs the bound methods below as instance attributes while the fast path may
 * answer for it (no hooks; no recorder, or one whose core counts here), so a call reaches
 * fast_eval() directly.  Everything the fast path does not answer — _SLOW, a call with
 * keywords or another number of arguments — is passed on unchanged to fallback[@which], the
 * client's full Python path, which then decides (and raises TypeError for a bad call, as
 * the method it replaces would).
 */
static PyObject *entry(FastObject *f, int which, PyObject *const *args, size_t nargsf,
                       PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs == 3 && kwnames == NULL) {
        PyObject *r = which == 0 ? Fast_value(f, args, 3) : Fast_detail(f, args, 3);
        if (r != slow_sentinel && r != NULL)
            return r;
        if (r == NULL)   /* not expected; the full path answers instead of raising */
            PyErr_Clear();
        else
            Py_DECREF(r);
    }
    PyObject *fallback = f->fallback[which];
    if (fallback == Py_None) {
        PyErr_SetString(PyExc_RuntimeError, "_Fast entry point used without a fallback");
        return NULL;
    }
    return PyObject_Vectorcall(fallback, args, nargs, kwnames);
}

/* _Fast.variation(key, context, default) -> the value, through fallback_value when needed */
static PyObject *Fast_variation(FastObject *f, PyObject *const *args, size_t nargsf,
                                PyObject *kwnames)
{
    return entry(f, 0, args, nargsf, kwnames);
}

/* _Fast.variation_detail(key, context, default) -> EvaluationDetail (same fallbacks) */
static PyObject *Fast_variation_detail(FastObject *f, PyObject *const *args, size_t nargsf,
                                       PyObject *kwnames)
{
    return entry(f, 1, args, nargsf, kwnames);
}

/* fallback_value / fallback_detail: the getset closure is the index in f->fallback */
static PyObject *Fast_get_fallback(FastObject *f, void *which)
{
    return get_object(f->fallback[(intptr_t)which]);
}

static int Fast_set_fallback(FastObject *f, PyObject *v, void *which)
{
    const char *name = which ? "fallback_detail" : "fallback_value";
    if (v != NULL && v != Py_None && !PyCallable_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be callable or None", name);
        return -1;
    }
    return set_object(&f->fallback[(intptr_t)which], v, name);
}

static PyObject *Fast_get_recorder(FastObject *f, void *c) { return get_object(f->recorder); }

/* recorder: None, or a _RecorderCore whose record_evaluation is the C one (the client
 * checks that no subclass overrides it before attaching) */
static int Fast_set_recorder(FastObject *f, PyObject *v, void *c)
{
    if (v != NULL && v != Py_None && !sf_core_check(v)) {
        PyErr_SetString(PyExc_TypeError, "recorder must be None or a _RecorderCore");
        return -1;
    }
    return set_object(&f->recorder, v, "recorder");
}

static PyGetSetDef Fast_getset[] = {
    {"recorder", (getter)Fast_get_recorder, (setter)Fast_set_recorder,
     "_RecorderCore that counts the fast path's evaluations (None: events off)", NULL},
    {"fallback_value", (getter)Fast_get_fallback, (setter)Fast_set_fallback,
     "what variation() calls when the fast path does not answer (None: not an entry yet)",
     (void *)0},
    {"fallback_detail", (getter)Fast_get_fallback, (setter)Fast_set_fallback,
     "what variation_detail() calls when the fast path does not answer", (void *)1},
    {NULL, NULL, NULL, NULL, NULL}
};

static PyMethodDef Fast_methods[] = {
    {"value", (PyCFunction)(void (*)(void))Fast_value, METH_FASTCALL,
     "value(key, context, default, kind=0) -> the variation value, default, or _SLOW"},
    {"detail", (PyCFunction)(void (*)(void))Fast_detail, METH_FASTCALL,
     "detail(key, context, default, kind=0) -> EvaluationDetail or _SLOW"},
    {"variation", (PyCFunction)(void (*)(void))Fast_variation, METH_FASTCALL | METH_KEYWORDS,
     "variation(key, context, default) -> value (fallback_value answers what value() cannot)"},
    {"variation_detail", (PyCFunction)(void (*)(void))Fast_variation_detail,
     METH_FASTCALL | METH_KEYWORDS,
     "variation_detail(key, context, default) -> EvaluationDetail (fallback_detail answers "
     "what detail() cannot)"},
    {NULL, NULL, 0, NULL}
};

static PyTypeObject FastType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmflags._native._Fast",
    .tp_basicsize = sizeof(FastObject),
    .tp_dealloc = (destructor)Fast_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "_Fast(current, context_type, detail_type): the client's variation fast path "
              "(returns _SLOW when the full path must answer).",
    .tp_traverse = (traverseproc)Fast_traverse,
    .tp_clear = (inquiry)Fast_clear,
    .tp_methods = Fast_methods,
    .tp_getset = Fast_getset,
    .tp_new = Fast_new,
};

/* ---- _ContextBuilder: Context.from_dict's common case ------------------------------------ */

/* The slots of shmflags.Context, in the order of CTX_SLOT_NAMES. */
enum { CS_KIND, CS_KEY, CS_NAME, CS_ANON, CS_ATTRS, CS_PRIVATE, CS_MULTI, CS_ERROR, CS_FQK,
       CS_EMAP, CS_SECONDARY, CS_COUNT };
static const char *const CTX_SLOT_NAMES[CS_COUNT] = {
    "_kind", "_key", "_name", "_anon", "_attrs", "_private", "_multi", "_error", "_fqk",
    "_emap", "_secondary"};

#define CTX_MAX_SLOTS 32

typedef struct {
    PyObject_HEAD
    PyTypeObject *ctx_type;
    Py_ssize_t off[CS_COUNT];
    /* every object slot the type defines: a built context has None in each slot it does not
     * set here (a slot added in context.py is never left unset, whatever its name) */
    Py_ssize_t all_off[CTX_MAX_SLOTS];
    int n_all;
    PyObject *s_kind, *s_user;   /* interned "kind" and "user" */
} ContextBuilderObject;

static PyObject *ContextBuilder_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"context_type", NULL};
    PyObject *ctx_type;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!:_ContextBuilder", kwlist, &PyType_Type,
                                     &ctx_type))
        return NULL;
    ContextBuilderObject *b = (ContextBuilderObject *)type->tp_alloc(type, 0);
    if (b == NULL)
        return NULL;
    Py_INCREF(ctx_type);
    b->ctx_type = (PyTypeObject *)ctx_type;
    for (int i = 0; i < CS_COUNT; i++) {
        b->off[i] = slot_offset(b->ctx_type, CTX_SLOT_NAMES[i]);
        if (b->off[i] < 0) {
            PyErr_Format(PyExc_TypeError, "context_type needs the __slots__ entry %s",
                         CTX_SLOT_NAMES[i]);
            Py_DECREF(b);
            return NULL;
        }
    }
    for (PyMemberDef *m = b->ctx_type->tp_members; m != NULL && m->name != NULL; m++) {
        if (m->type != T_OBJECT_EX || (m->flags & READONLY))
            continue;
        if (b->n_all == CTX_MAX_SLOTS) {
            PyErr_SetString(PyExc_TypeError, "context_type has too many __slots__");
            Py_DECREF(b);
            return NULL;
        }
        b->all_off[b->n_all++] = m->offset;
    }
    if ((b->s_kind = PyUnicode_InternFromString("kind")) == NULL
        || (b->s_user = PyUnicode_InternFromString("user")) == NULL) {
        Py_DECREF(b);
        return NULL;
    }
    return (PyObject *)b;
}

static int ContextBuilder_traverse(ContextBuilderObject *b, visitproc visit, void *arg)
{
    Py_VISIT(b->ctx_type);
    return 0;
}

static void ContextBuilder_dealloc(ContextBuilderObject *b)
{
    PyObject_GC_UnTrack(b);
    Py_CLEAR(b->ctx_type);
    Py_CLEAR(b->s_kind);
    Py_CLEAR(b->s_user);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

/* Whether @kind (an exact str) is a valid single-context kind: non-empty, not "kind" or
 * "multi", only [-a-zA-Z0-9._] (context.py _kind_error()). */
static int kind_ok(ContextBuilderObject *b, PyObject *kind)
{
    if (kind == b->s_user)
        return 1;
    if (!PyUnicode_IS_ASCII(kind))
        return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(kind);
    const unsigned char *c = PyUnicode_1BYTE_DATA(kind);
    if (n == 0 || (n == 4 && memcmp(c, "kind", 4) == 0) || (n == 5 && memcmp(c, "multi", 5) == 0))
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char ch = c[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')
              || ch == '-' || ch == '.' || ch == '_'))
            return 0;
    }
    return 1;
}

enum { P_ATTR, P_KEY, P_KIND, P_NAME, P_ANONYMOUS, P_OTHER };

/* Which property the exact-str dict key @k is: the built-ins by length and bytes (no call per
 * candidate); P_OTHER for "" and "_meta", which the Python path handles. */
static int prop_of(PyObject *k)
{
    if (!PyUnicode_IS_ASCII(k))
        return P_ATTR;
    const char *c = (const char *)PyUnicode_1BYTE_DATA(k);
    switch (PyUnicode_GET_LENGTH(k)) {
    case 0: return P_OTHER;
    case 3: return memcmp(c, "key", 3) == 0 ? P_KEY : P_ATTR;
    case 4: return memcmp(c, "kind", 4) == 0 ? P_KIND : memcmp(c, "name", 4) == 0 ? P_NAME
                                                                                : P_ATTR;
    case 5: return memcmp(c, "_meta", 5) == 0 ? P_OTHER : P_ATTR;
    case 9: return memcmp(c, "anonymous", 9) == 0 ? P_ANONYMOUS : P_ATTR;
    default: return P_ATTR;
    }
}

/*
 * _ContextBuilder.from_dict(props) -> Context | _SLOW
 *
 * The common case of Context.from_dict, built as context.py's _from_dict_single() and
 * _make_single() build it: an exact dict with an exact-str "kind" (not "multi"), a non-empty
 * exact-str "key", "name" None or an exact str, "anonymous" a bool, and other attributes
 * under exact-str keys (a None value removes the attribute, as there).  Anything else — a
 * dict subclass, "_meta", a "" key, a wrong type, an invalid kind or key, the old user format,
 * a multi-context — returns _SLOW and context.py answers it, so the C path never decides an
 * error or an edge case.  Invariant: every slot gets the object the Python path would store
 * (the dict's own key/kind/name/bool objects; a fresh attribute dict or None).
 */
static PyObject *ContextBuilder_from_dict(ContextBuilderObject *b, PyObject *props)
{
    if (!PyDict_CheckExact(props))
        return slow();
    PyObject *kind = PyDict_GetItemWithError(props, b->s_kind);   /* borrowed */
    if (kind == NULL) {
        PyErr_Clear();
        return slow();
    }
    if (!PyUnicode_CheckExact(kind))
        return slow();
    PyObject *key = NULL, *name = Py_None, *anon = Py_False, *attrs = NULL;
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(props, &pos, &k, &v)) {    /* borrowed; no Python code runs here */
        if (!PyUnicode_CheckExact(k))
            goto fallback;
        switch (prop_of(k)) {
        case P_KEY:
            if (!PyUnicode_CheckExact(v))
                goto fallback;
            key = v;
            continue;
        case P_KIND:
            kind = v;          /* the same object the lookup above found */
            continue;
        case P_NAME:
            if (v != Py_None && !PyUnicode_CheckExact(v))
                goto fallback;
            name = v;
            continue;
        case P_ANONYMOUS:
            if (!PyBool_Check(v))
                goto fallback;
            anon = v;
            continue;
        case P_OTHER:
            goto fallback;     /* "" or "_meta" */
        default:
            break;
        }
        /* the first attribute makes the dict, even one whose value is None (as there) */
        if (attrs == NULL && (attrs = PyDict_New()) == NULL)
            goto fallback;
        if (v == Py_None) {
            if (PyDict_DelItem(attrs, k) < 0) {
                if (!PyErr_ExceptionMatches(PyExc_KeyError))
                    goto fallback;
                PyErr_Clear();
            }
        } else if (PyDict_SetItem(attrs, k, v) < 0) {
            goto fallback;
        }
    }
    if (key == NULL || PyUnicode_GET_LENGTH(key) == 0 || !kind_ok(b, kind))
        goto fallback;
    PyObject *c = b->ctx_type->tp_alloc(b->ctx_type, 0);
    if (c == NULL)
        goto fallback;
    for (int i = 0; i < b->n_all; i++) {   /* tp_alloc zeroed them: NULL until set */
        Py_INCREF(Py_None);
        SLOT(c, b->all_off[i]) = Py_None;
    }
    PyObject *vals[4] = {kind, key, name, anon};
    for (int i = 0; i < 4; i++) {       /* CS_KIND..CS_ANON */
        Py_INCREF(vals[i]);
        Py_SETREF(SLOT(c, b->off[i]), vals[i]);
    }
    if (attrs != NULL)                   /* the slot takes our reference */
        Py_SETREF(SLOT(c, b->off[CS_ATTRS]), attrs);
    return c;

fallback:
    PyErr_Clear();
    Py_XDECREF(attrs);
    return slow();
}

static PyMethodDef ContextBuilder_methods[] = {
    {"from_dict", (PyCFunction)ContextBuilder_from_dict, METH_O,
     "from_dict(props) -> Context for the common case of Context.from_dict, else _SLOW"},
    {NULL, NULL, 0, NULL}
};

static PyTypeObject ContextBuilderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmflags._native._ContextBuilder",
    .tp_basicsize = sizeof(ContextBuilderObject),
    .tp_dealloc = (destructor)ContextBuilder_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "_ContextBuilder(context_type): Context.from_dict's common case in C "
              "(returns _SLOW for everything else).",
    .tp_traverse = (traverseproc)ContextBuilder_traverse,
    .tp_methods = ContextBuilder_methods,
    .tp_new = ContextBuilder_new,
};

/**
 * sf_fast_register() - add _Watch, _Fast and _SLOW to the module (called once at import).
 * Return: 0, or -1 with an exception set.
 */
int sf_fast_register(PyObject *module, PyTypeObject *snap_type)
{
    snapshot_type = snap_type;
    if (PyType_Ready(&WatchType) < 0 || PyType_Ready(&FastType) < 0
        || PyType_Ready(&ContextBuilderType) < 0)
        return -1;
    slow_sentinel = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    if (slow_sentinel == NULL)
        return -1;
    Py_INCREF(&WatchType);
    if (PyModule_AddObject(module, "_Watch", (PyObject *)&WatchType) < 0) {
        Py_DECREF(&WatchType);
        return -1;
    }
    Py_INCREF(&FastType);
    if (PyModule_AddObject(module, "_Fast", (PyObject *)&FastType) < 0) {
        Py_DECREF(&FastType);
        return -1;
    }
    Py_INCREF(&ContextBuilderType);
    if (PyModule_AddObject(module, "_ContextBuilder", (PyObject *)&ContextBuilderType) < 0) {
        Py_DECREF(&ContextBuilderType);
        return -1;
    }
    Py_INCREF(slow_sentinel);
    if (PyModule_AddObject(module, "_SLOW", slow_sentinel) < 0) {
        Py_DECREF(slow_sentinel);
        return -1;
    }
    return 0;
}
