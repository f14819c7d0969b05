/*
 * ops.c - clause operators, dispatched on the op code (record.h SF_OP_*),
 * with ldclient's semantics (LD protocol section 3.6): a type mismatch is a
 * non-match, booleans are never numbers, numbers compare as doubles, "in"
 * compares JSON values with Python equality.
 *
 * Invariants: clause values come from a bounds-checked record; context
 * values are borrowed Python objects, never mutated.  Exact builtin types
 * take C fast paths; anything else (subclasses, containers, big integers)
 * falls back to the Python operation ldclient itself performs, so both
 * give one answer.  Regex (the matches operator) always calls Python re.
 */
#include "sf.h"

#include <math.h>

static inline double bits_to_double(uint64_t b) { double d; memcpy(&d, &b, 8); return d; }

/**
 * sf_utf8() - UTF-8 bytes of a str (subclasses included).
 * @s: the str.
 * @p: out: bytes.
 * @n: out: length.
 * @tmp: out: a new bytes object to release afterwards when lone surrogates
 *       forced a "surrogatepass" encoding (else NULL).
 *
 * Return: 0, or -1 with a Python exception set.
 */
int sf_utf8(PyObject *s, const char **p, Py_ssize_t *n, PyObject **tmp)
{
    *tmp = NULL;
    *p = PyUnicode_AsUTF8AndSize(s, n);
    if (*p != NULL)
        return 0;
    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
        return -1;
    PyErr_Clear();
    *tmp = PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass");
    if (*tmp == NULL)
        return -1;
    *p = PyBytes_AS_STRING(*tmp);
    *n = PyBytes_GET_SIZE(*tmp);
    return 0;
}

/**
 * sf_clause_value_object() - the Python object of a typed clause value
 * (cached per Snapshot; borrowed reference).
 *
 * Return: borrowed reference, or NULL with an exception set.
 */
PyObject *sf_clause_value_object(SnapshotObject *so, const sf_rec_t *rec, const sf_value_t *v)
{
    uint64_t key = SF_CACHE_KEY(rec->abs + (uint32_t)((const uint8_t *)v - rec->p), SF_TAG_VALUE);
    PyObject *o = sf_cache_get(&so->cache, key);
    if (o != NULL)
        return o;
    switch (v->type) {
    case SF_V_NULL: o = Py_None; Py_INCREF(o); break;
    case SF_V_FALSE: o = Py_False; Py_INCREF(o); break;
    case SF_V_TRUE: o = Py_True; Py_INCREF(o); break;
    case SF_V_INT: o = PyLong_FromLongLong((int64_t)v->payload); break;
    case SF_V_FLOAT: o = PyFloat_FromDouble(bits_to_double(v->payload)); break;
    case SF_V_STR: {
        sf_ref_t r = {(uint32_t)v->payload, v->len};
        const char *s = sf_rec_str(rec, r);
        if (s == NULL || v->payload > UINT32_MAX) {
            PyErr_SetString(sf_c.exc_corrupt, "corrupt clause value");
            return NULL;
        }
        o = PyUnicode_DecodeUTF8(s, r.len, "surrogatepass");
        if (o == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            PyErr_SetString(sf_c.exc_corrupt, "clause string is not UTF-8");
        break;
    }
    case SF_V_PACKED: {
        const uint8_t *b = v->payload <= UINT32_MAX && v->len > 0
            ? (const uint8_t *)sf_rec_str(rec, (sf_ref_t){(uint32_t)v->payload, v->len}) : NULL;
        if (b == NULL) {
            PyErr_SetString(sf_c.exc_corrupt, "corrupt clause value");
            return NULL;
        }
        PyObject *raw = PyBytes_FromStringAndSize((const char *)b, v->len);
        if (raw == NULL)
            return NULL;
        o = PyObject_CallOneArg(so->unpack, raw);
        Py_DECREF(raw);
        if (o == NULL && !PyErr_ExceptionMatches(PyExc_MemoryError))
            PyErr_SetString(sf_c.exc_corrupt, "clause value does not decode");
        break;
    }
    default:
        PyErr_SetString(sf_c.exc_corrupt, "opaque clause value");
        return NULL;
    }
    if (o == NULL)
        return NULL;
    PyObject *cached = sf_cache_put(&so->cache, key, o);
    Py_DECREF(o);   /* the cache holds it (or an equal one that won a race) */
    return cached;
}

/* exact comparison of an int64 and a double, as Python's int == float */
static int eq_i64_double(int64_t i, double d)
{
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0))
        return 0;
    if ((double)(int64_t)d != d)
        return 0;
    return (int64_t)d == i;
}

/* Python equality fallback: 1, 0, -1 error */
static int py_equal(SnapshotObject *so, const sf_rec_t *rec, PyObject *u, const sf_value_t *v)
{
    if (v->type == SF_V_OPAQUE)
        return 0;
    PyObject *c = sf_clause_value_object(so, rec, v);
    if (c == NULL)
        return -1;
    if (PyBool_Check(u) != PyBool_Check(c))
        return 0;
    PyObject *r = PyObject_RichCompare(u, c, Py_EQ);
    if (r == NULL)
        return -1;
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

/* "in": one context value against one clause value */
static int op_in(SnapshotObject *so, const sf_rec_t *rec, PyObject *u, const sf_value_t *v)
{
    switch (v->type) {
    case SF_V_NULL:
        return u == Py_None;
    case SF_V_TRUE:
        return u == Py_True;
    case SF_V_FALSE:
        return u == Py_False;
    case SF_V_INT:
        if (PyLong_CheckExact(u)) {
            int overflow;
            long long x = PyLong_AsLongLongAndOverflow(u, &overflow);
            if (x == -1 && PyErr_Occurred())
                return -1;
            return !overflow && x == (int64_t)v->payload;
        }
        if (PyFloat_CheckExact(u))
            return eq_i64_double((int64_t)v->payload, PyFloat_AS_DOUBLE(u));
        if (PyBool_Check(u) || PyUnicode_CheckExact(u) || u == Py_None)
            return 0;
        return py_equal(so, rec, u, v);
    case SF_V_FLOAT:
        if (PyFloat_CheckExact(u))
            return PyFloat_AS_DOUBLE(u) == bits_to_double(v->payload);
        if (PyLong_CheckExact(u)) {
            int overflow;
            long long x = PyLong_AsLongLongAndOverflow(u, &overflow);
            if (x == -1 && PyErr_Occurred())
                return -1;
            if (!overflow)
                return eq_i64_double(x, bits_to_double(v->payload));
        }
        if (PyBool_Check(u) || PyUnicode_CheckExact(u) || u == Py_None)
            return 0;
        return py_equal(so, rec, u, v);
    case SF_V_STR:
        if (PyUnicode_CheckExact(u)) {
            const char *p;
            Py_ssize_t n;
            PyObject *tmp;
            if (sf_utf8(u, &p, &n, &tmp) < 0)
                return -1;
            sf_ref_t r = {(uint32_t)v->payload, v->len};
            const char *s = sf_rec_str(rec, r);
            int eq = s != NULL && (size_t)n == r.len && memcmp(p, s, r.len) == 0;
            Py_XDECREF(tmp);
            if (s == NULL) {
                PyErr_SetString(sf_c.exc_corrupt, "corrupt clause value");
                return -1;
            }
            return eq;
        }
        if (!PyUnicode_Check(u))
            return 0;
        return py_equal(so, rec, u, v);
    case SF_V_PACKED:
        if (PyBool_Check(u) || u == Py_None || PyUnicode_CheckExact(u))
            return 0;
        return py_equal(so, rec, u, v);
    default:
        return 0;
    }
}

/* number view of a value: 1 ok, 0 not a number, -1 error (float() overflow, as Python) */
static int as_number(PyObject *u, double *out)
{
    if (PyFloat_Check(u)) {
        *out = PyFloat_AS_DOUBLE(u);
        return 1;
    }
    if (PyLong_Check(u) && !PyBool_Check(u)) {
        *out = PyLong_AsDouble(u);
        if (*out == -1.0 && PyErr_Occurred())
            return -1;
        return 1;
    }
    return 0;
}

static int clause_number(SnapshotObject *so, const sf_rec_t *rec, const sf_value_t *v, double *out)
{
    if (v->type == SF_V_INT) {
        *out = (double)(int64_t)v->payload;
        return 1;
    }
    if (v->type == SF_V_FLOAT) {
        *out = bits_to_double(v->payload);
        return 1;
    }
    if (v->type == SF_V_PACKED) {
        PyObject *o = sf_clause_value_object(so, rec, v);
        if (o == NULL)
            return -1;
        return as_number(o, out);
    }
    return 0;
}

/* epoch-ms view of a context value for before/after: 1 ok, 0 invalid, -1 error */
static int as_time(SnapshotObject *so, PyObject *u, double *out)
{
    int r = as_number(u, out);
    if (r != 0)
        return r;
    if (!PyUnicode_Check(u))
        return 0;
    PyObject *t = PyObject_CallOneArg(so->parse_time, u);
    if (t == NULL)
        return -1;
    if (t == Py_None) {
        Py_DECREF(t);
        return 0;
    }
    *out = PyFloat_AsDouble(t);
    Py_DECREF(t);
    if (*out == -1.0 && PyErr_Occurred())
        return -1;
    return 1;
}

static const char *find_bytes(const char *h, size_t hn, const char *n, size_t nn)
{
    if (nn == 0)
        return h;
    while (hn >= nn) {
        const char *p = memchr(h, n[0], hn - nn + 1);
        if (p == NULL)
            return NULL;
        if (memcmp(p, n, nn) == 0)
            return p;
        hn -= (size_t)(p - h) + 1;
        h = p + 1;
    }
    return NULL;
}

static int semver_clause(const sf_rec_t *rec, const sf_value_t *v, sf_semver_t *out)
{
    if (v->aux > UINT32_MAX)
        return -1;
    const sf_semver_rec_t *s = sf_rec_at(rec, (uint32_t)v->aux, sizeof(sf_semver_rec_t));
    if (s == NULL)
        return -1;
    out->major = sf_rec_str(rec, s->major); out->major_len = s->major.len;
    out->minor = sf_rec_str(rec, s->minor); out->minor_len = s->minor.len;
    out->patch = sf_rec_str(rec, s->patch); out->patch_len = s->patch.len;
    if (out->major == NULL || out->minor == NULL || out->patch == NULL)
        return -1;
    if (s->pre.off == 0) {
        out->pre = NULL;
        out->pre_len = 0;
    } else {
        out->pre = sf_rec_str(rec, s->pre);
        out->pre_len = s->pre.len;
        if (out->pre == NULL || out->pre_len == 0)
            return -1;
    }
    return 0;
}

static PyObject *regex_for(SnapshotObject *so, const sf_rec_t *rec, const sf_value_t *v)
{
    uint64_t key = SF_CACHE_KEY(rec->abs + (uint32_t)((const uint8_t *)v - rec->p), SF_TAG_REGEX);
    PyObject *pat = sf_cache_get(&so->cache, key);
    if (pat != NULL)
        return pat;
    PyObject *src = sf_clause_value_object(so, rec, v);
    if (src == NULL)
        return NULL;
    pat = PyObject_CallOneArg(so->re_compile, src);
    if (pat == NULL) {
        /* compile.py checked the pattern; a failure now is still a non-match */
        PyErr_Clear();
        pat = Py_None;
        Py_INCREF(pat);
    }
    PyObject *cached = sf_cache_put(&so->cache, key, pat);
    Py_DECREF(pat);
    return cached;
}

/**
 * sf_op_match() - does one context value match any value of a clause?
 * @e: evaluation state (Snapshot caches).
 * @rec: the record holding the clause.
 * @c: the clause (op is not segmentMatch).
 * @value: the context value (an array element for array attributes).
 *
 * Return: 1 match, 0 no match, -1 Python exception set (SF_ECORRUPT data
 * raises ValueError, which the evaluator turns into MALFORMED_FLAG).
 */
int sf_op_match(sf_eval_t *e, const sf_rec_t *rec, const sf_clause_t *c, PyObject *value)
{
    SnapshotObject *so = e->so;
    int bad = 0;
    const sf_value_t *vals = sf_rec_array(rec, c->values, sizeof(sf_value_t), &bad);
    if (bad) {
        PyErr_SetString(sf_c.exc_corrupt, "corrupt clause");
        return -1;
    }
    uint32_t n = c->values.len;
    int op = c->op;
    if (op <= SF_OP_UNKNOWN || op >= SF_OP_SEGMENT_MATCH || n == 0)
        return 0;

    if (op == SF_OP_IN) {
        if (c->set != 0 && PyUnicode_CheckExact(value)) {
            /* a str equals only str values, all of which are in the set */
            const char *p;
            Py_ssize_t len;
            PyObject *tmp;
            if (sf_utf8(value, &p, &len, &tmp) < 0)
                return -1;
            int r = sf_strset_has(rec, c->set, p, (size_t)len, sf_xxh64(p, (size_t)len, 0));
            Py_XDECREF(tmp);
            if (r < 0) {
                PyErr_SetString(sf_c.exc_corrupt, "corrupt clause set");
                return -1;
            }
            return r;
        }
        for (uint32_t i = 0; i < n; i++) {
            int r = op_in(so, rec, value, &vals[i]);
            if (r != 0)
                return r;
        }
        return 0;
    }

    if (op == SF_OP_STARTS_WITH || op == SF_OP_ENDS_WITH || op == SF_OP_CONTAINS) {
        if (!PyUnicode_Check(value))
            return 0;
        const char *p;
        Py_ssize_t len;
        PyObject *tmp;
        if (sf_utf8(value, &p, &len, &tmp) < 0)
            return -1;
        int found = 0;
        for (uint32_t i = 0; i < n && !found; i++) {
            if (vals[i].type != SF_V_STR)
                continue;
            sf_ref_t r = {(uint32_t)vals[i].payload, vals[i].len};
            const char *s = sf_rec_str(rec, r);
            if (s == NULL || vals[i].payload > UINT32_MAX) {
                Py_XDECREF(tmp);
                PyErr_SetString(sf_c.exc_corrupt, "corrupt clause value");
                return -1;
            }
            /* byte-wise tests on UTF-8 agree with code-point tests on str */
            if ((size_t)len < r.len)
                continue;
            if (op == SF_OP_STARTS_WITH)
                found = memcmp(p, s, r.len) == 0;
            else if (op == SF_OP_ENDS_WITH)
                found = memcmp(p + len - r.len, s, r.len) == 0;
            else
                found = find_bytes(p, (size_t)len, s, r.len) != NULL;
        }
        Py_XDECREF(tmp);
        return found;
    }

    if (op == SF_OP_MATCHES) {
        if (!PyUnicode_Check(value))
            return 0;
        for (uint32_t i = 0; i < n; i++) {
            if (!(vals[i].aux_ok & SF_AUX_REGEX) || vals[i].type != SF_V_STR)
                continue;
            PyObject *pat = regex_for(so, rec, &vals[i]);
            if (pat == NULL)
                return -1;
            if (pat == Py_None)
                continue;
            PyObject *m = PyObject_CallMethodOneArg(pat, sf_c.s_search, value);
            if (m == NULL)
                return -1;
            int hit = m != Py_None;
            Py_DECREF(m);
            if (hit)
                return 1;
        }
        return 0;
    }

    if (op >= SF_OP_LESS_THAN && op <= SF_OP_GREATER_THAN_OR_EQUAL) {
        double u = 0;
        int have = 0;   /* like ldclient, float(context value) only once a clause number is seen */
        if (!(PyFloat_Check(value) || (PyLong_Check(value) && !PyBool_Check(value))))
            return 0;
        for (uint32_t i = 0; i < n; i++) {
            double cv;
            int k = clause_number(so, rec, &vals[i], &cv);
            if (k < 0)
                return -1;
            if (k == 0)
                continue;
            if (!have) {
                if (as_number(value, &u) < 0)
                    return -1;
                have = 1;
            }
            int hit;
            switch (op) {
            case SF_OP_LESS_THAN: hit = u < cv; break;
            case SF_OP_LESS_THAN_OR_EQUAL: hit = u <= cv; break;
            case SF_OP_GREATER_THAN: hit = u > cv; break;
            default: hit = u >= cv; break;
            }
            if (hit)
                return 1;
        }
        return 0;
    }

    if (op == SF_OP_BEFORE || op == SF_OP_AFTER) {
        double u = 0;
        int have = 0;   /* the context value is parsed only if a clause time is valid */
        for (uint32_t i = 0; i < n; i++) {
            if (!(vals[i].aux_ok & SF_AUX_TIME))
                continue;
            if (!have) {
                int r = as_time(so, value, &u);
                if (r <= 0)
                    return r;
                have = 1;
            }
            double t = bits_to_double(vals[i].aux);
            if (op == SF_OP_BEFORE ? u < t : u > t)
                return 1;
        }
        return 0;
    }

    /* semver operators */
    if (!PyUnicode_Check(value))
        return 0;
    const char *p;
    Py_ssize_t len;
    PyObject *tmp;
    if (sf_utf8(value, &p, &len, &tmp) < 0)
        return -1;
    char small[256];
    char *scratch = (size_t)len + 5 <= sizeof(small) ? small : PyMem_Malloc((size_t)len + 5);
    if (scratch == NULL) {
        Py_XDECREF(tmp);
        PyErr_NoMemory();
        return -1;
    }
    sf_semver_t uv;
    int result = 0;
    int parsed = -1;   /* parse lazily: only when a clause version is valid */
    for (uint32_t i = 0; i < n && result == 0; i++) {
        if (!(vals[i].aux_ok & SF_AUX_SEMVER))
            continue;
        sf_semver_t cv;
        if (semver_clause(rec, &vals[i], &cv) < 0) {
            PyErr_SetString(sf_c.exc_corrupt, "corrupt semver value");
            result = -1;
            break;
        }
        if (parsed < 0)
            parsed = sf_semver_parse(p, (size_t)len, scratch, &uv);
        if (!parsed)
            break;
        int cmp = sf_semver_compare(&uv, &cv);
        if (op == SF_OP_SEMVER_EQUAL)
            result = cmp == 0;
        else if (op == SF_OP_SEMVER_LESS_THAN)
            result = cmp < 0;
        else
            result = cmp > 0;
    }
    if (scratch != small)
        PyMem_Free(scratch);
    Py_XDECREF(tmp);
    return result;
}
