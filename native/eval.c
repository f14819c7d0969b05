/*
 * eval.c - the flag evaluator over compiled records (LD protocol section 3),
 * with ldclient's answers: prerequisites, targets, rules, clauses, segments,
 * rollouts and experiments, plus the Python objects of a result (reason,
 * value, event info).
 *
 * Invariants:
 *  - every record byte is read through the bounds-checked accessors of
 *    sf.h; a failed check is a structural error (SF_EMALFORMED), which the
 *    caller reports as ERROR/MALFORMED_FLAG - never a crash;
 *  - structural errors (bad attribute reference, prerequisite or segment
 *    cycle, nesting deeper than SF_MAX_DEPTH, corrupt record) abort the whole
 *    evaluation, as ldclient's EvaluationException does; "soft" errors
 *    (variation out of range, empty rollout) are results;
 *  - context data is read, never written; Python exceptions raised by it
 *    (or by re) propagate as SF_EPYTHON.
 * Runs in workers; all state lives in the caller's sf_eval_t.
 */
#include "sf.h"

static inline double bits_to_double(uint64_t b) { double d; memcpy(&d, &b, 8); return d; }

/* ---- small helpers ---- */

/**
 * sf_rec_pystr() - the Python str of a record string, cached per Snapshot.
 * Return: borrowed reference, or NULL with an exception set.
 */
/* Store @o (held by the generic cache) in @slot if it is a compact ASCII str; return @o. */
static inline PyObject *remember_short(sf_strslot_t *slot, uint64_t h, PyObject *o)
{
    if (slot != NULL && PyUnicode_CheckExact(o) && PyUnicode_IS_COMPACT_ASCII(o)) {
        slot->h = h;
        slot->s = o;   /* borrowed: the generic cache keeps it alive (sf_strslot_t) */
    }
    return o;
}

/* Content hash of a short string (sf_strslot_t); any mix works, equality is checked. */
static inline uint64_t short_hash(const char *p, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n, w;
    while (n >= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    if (n > 0) {
        w = 0;
        memcpy(&w, p, n);
        h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    }
    return h ^ (h >> 32);
}

PyObject *sf_rec_pystr(SnapshotObject *so, const sf_rec_t *rec, sf_ref_t ref)
{
    /* the default context kind is by far the most common string: no cache probe */
    if (ref.len == 4 && (uint64_t)ref.off + 5 <= rec->len && memcmp(rec->p + ref.off, "user", 5) == 0)
        return sf_c.s_user;
    const char *s = NULL;
    sf_strslot_t *slot = NULL;
    uint64_t h = 0;
    if (ref.len <= SF_STRS_MAXLEN) {
        /* short strings: first by content in the small table (see sf_strslot_t) */
        s = sf_rec_str(rec, ref);
        if (s == NULL) {
            PyErr_SetString(sf_c.exc_corrupt, "corrupt record string");
            return NULL;
        }
        h = short_hash(s, ref.len);
        slot = &so->strs[h & (SF_STRS - 1)];
        if (slot->s != NULL && slot->h == h && PyUnicode_GET_LENGTH(slot->s) == (Py_ssize_t)ref.len
            && memcmp(PyUnicode_DATA(slot->s), s, ref.len) == 0)
            return slot->s;
    }
    uint64_t key = SF_CACHE_KEY(rec->abs + ref.off, SF_TAG_STR);
    PyObject *o = sf_cache_get(&so->cache, key);
    if (o != NULL)
        return remember_short(slot, h, o);
    if (s == NULL)
        s = sf_rec_str(rec, ref);
    if (s == NULL) {
        PyErr_SetString(sf_c.exc_corrupt, "corrupt record string");
        return NULL;
    }
    o = PyUnicode_DecodeUTF8(s, ref.len, "surrogatepass");
    if (o == NULL) {
        PyErr_SetString(sf_c.exc_corrupt, "record string is not UTF-8");
        return NULL;
    }
    PyUnicode_InternInPlace(&o);
    PyObject *cached = sf_cache_put(&so->cache, key, o);
    Py_DECREF(o);
    return cached != NULL ? remember_short(slot, h, cached) : NULL;
}

/**
 * sf_flag_key() - the flag's key as a str (borrowed; per-flag cache when known).
 */
PyObject *sf_flag_key(SnapshotObject *so, const sf_rec_t *rec, const sf_flag_rec_t *f)
{
    sf_flagcache_t *fc = rec->fc;
    if (fc == NULL)
        return sf_rec_pystr(so, rec, f->key);
    if (fc->key != NULL)
        return fc->key;
    /* with a per-flag slot the key is held there only: not interned and not in the generic
     * cache (each would hold another reference and entry per flag; memory, issue 4) */
    const char *s = sf_rec_str(rec, f->key);
    if (s == NULL) {
        PyErr_SetString(sf_c.exc_corrupt, "corrupt record string");
        return NULL;
    }
    fc->key = sf_key_str(s, f->key.len);   /* the slot owns it (NULL: nothing cached) */
    return fc->key;
}

/**
 * sf_key_str() - a str of @n key bytes from a record (new reference): ASCII (nearly every
 * flag key) is copied into a compact str directly, ~6x fewer instructions than the
 * decoder; anything else is decoded as UTF-8 with "surrogatepass" (record.h).
 * Return: new reference, or NULL with sf_c.exc_corrupt (or MemoryError) set.
 */
PyObject *sf_key_str(const char *s, uint32_t n)
{
    uint32_t i = 0;
    while (i < n && (unsigned char)s[i] < 0x80)
        i++;
    if (i == n) {
        PyObject *k = PyUnicode_New(n, 127);
        if (k != NULL)
            memcpy(PyUnicode_1BYTE_DATA(k), s, n);
        return k;
    }
    PyObject *k = PyUnicode_DecodeUTF8(s, n, "surrogatepass");
    if (k == NULL && !PyErr_ExceptionMatches(PyExc_MemoryError))
        PyErr_SetString(sf_c.exc_corrupt, "record string is not UTF-8");
    return k;
}

/**
 * sf_flag_cache_for() - the per-flag cache slot of a flag entry, or NULL.
 *
 * Ranks come from the entry's position in the flag entries array (layout 3: the array is
 * the key order).  An entry outside it (an index slot may name any entry in the
 * directory; a corrupt one) simply gets no slot (NULL), which only costs speed.
 * Invariant: a returned slot belongs to the entry at flag_entries_off + 40*rank, rank <
 * n_flags.
 */
static sf_flagcache_t *flag_cache(SnapshotObject *so, const sf_entry_t *ent, int make_page)
{
    if (so->fpages == NULL)
        return NULL;
    uint32_t off = (uint32_t)((const uint8_t *)ent - so->snap.base);
    if (off < so->entries_base || (off - so->entries_base) % SF_ENTRY_SIZE != 0)
        return NULL;
    uint32_t rank = (off - so->entries_base) / SF_ENTRY_SIZE;
    if (rank >= so->snap.n_flags)
        return NULL;
    /* rank < n_flags, so rank >> SHIFT < n_fpages */
    sf_flagcache_t **page = &so->fpages[rank >> SF_FCACHE_SHIFT];
    if (*page == NULL && !make_page)
        return NULL;
    if (*page == NULL) {
        /* a failed allocation only costs speed: no slot, no exception */
        *page = PyMem_Calloc(SF_FCACHE_PAGE, sizeof(sf_flagcache_t));
        if (*page == NULL)
            return NULL;
    }
    sf_flagcache_t *fc = &(*page)[rank & (SF_FCACHE_PAGE - 1)];
    fc->rec_off = ent->rec_off;
    fc->rec_len = ent->rec_len;
    fc->pool_off = ent->pool_off;
    fc->pool_len = ent->pool_len;
    fc->rank = rank;
    return fc;
}

sf_flagcache_t *sf_flag_cache_for(SnapshotObject *so, const sf_entry_t *ent)
{
    return flag_cache(so, ent, 1);
}

/** sf_flag_cache_if_any() - like sf_flag_cache_for(), but NULL rather than a new page. */
sf_flagcache_t *sf_flag_cache_if_any(SnapshotObject *so, const sf_entry_t *ent)
{
    return flag_cache(so, ent, 0);
}

sf_flagcache_t *sf_flag_cache_at(SnapshotObject *so, uint32_t rank)
{
    if (so->fpages == NULL || rank >= so->snap.n_flags)
        return NULL;
    sf_flagcache_t *page = so->fpages[rank >> SF_FCACHE_SHIFT];
    return page == NULL ? NULL : &page[rank & (SF_FCACHE_PAGE - 1)];
}

void sf_flagcache_free(SnapshotObject *so)
{
    if (so->fpages == NULL)
        return;
    for (uint32_t p = 0; p < so->n_fpages; p++) {
        sf_flagcache_t *page = so->fpages[p];
        if (page == NULL)
            continue;
        for (uint32_t i = 0; i < SF_FCACHE_PAGE; i++) {
            sf_flagcache_t *fc = &page[i];
            Py_CLEAR(fc->key);
            Py_CLEAR(fc->info[0]);
            Py_CLEAR(fc->info[1]);
            if (fc->values != NULL) {
                for (uint32_t j = 0; j < fc->nvalues; j++)
                    Py_CLEAR(fc->values[j]);
                PyMem_Free(fc->values);
                fc->values = NULL;
            }
        }
        PyMem_Free(page);
    }
    PyMem_Free(so->fpages);
    so->fpages = NULL;
}

/* Convert "a Python exception is set" into the evaluator's code. */
#define PYFAIL SF_EPYTHON

/* individual context of a kind: borrowed dict, or NULL (absent: *rc = SF_OK) */
static PyObject *individual(sf_eval_t *e, const sf_rec_t *rec, sf_ref_t kind, int *rc)
{
    *rc = SF_OK;
    PyObject *k = sf_rec_pystr(e->so, rec, kind);
    if (k == NULL) {
        *rc = PYFAIL;
        return NULL;
    }
    PyObject *d = PyDict_GetItemWithError(e->emap, k);
    if (d == NULL && PyErr_Occurred())
        *rc = PYFAIL;
    return d;
}

/* d.get(k) as a new reference (None when absent); NULL on error */
static PyObject *dict_get(PyObject *d, PyObject *k)
{
    if (PyDict_CheckExact(d)) {
        PyObject *v = PyDict_GetItemWithError(d, k);
        if (v == NULL) {
            if (PyErr_Occurred())
                return NULL;
            v = Py_None;
        }
        Py_INCREF(v);
        return v;
    }
    /* a dict subclass: honour its get(), as ldclient's value.get() does */
    return PyObject_CallMethodOneArg(d, sf_c.s_get, k);
}

/* context key string (UTF-8) of an individual context */
static int context_key(PyObject *ctxd, const char **p, Py_ssize_t *n, PyObject **tmp, PyObject **keyobj)
{
    PyObject *k = PyDict_GetItemWithError(ctxd, sf_c.s_key);
    *keyobj = k;
    *tmp = NULL;
    if (k == NULL) {
        if (PyErr_Occurred())
            return PYFAIL;
        *p = NULL;
        return SF_OK;
    }
    if (!PyUnicode_Check(k)) {
        *p = NULL;
        return SF_OK;
    }
    return sf_utf8(k, p, n, tmp) < 0 ? PYFAIL : SF_OK;
}

void sf_kmemo_clear(sf_kmemo_t *m)
{
    for (int i = 0; i < m->n; i++)
        Py_CLEAR(m->e[i].owner);
    m->n = 0;
}

/*
 * The key of the context of @kind (interned str) as UTF-8 and its xxh64, memoized.
 * Return: 1 present, 0 no such context (or a non-str key), <0 code.  *@tmp_out is an owned
 * object to release when the memo was full (else NULL).
 */
static int kind_key(sf_eval_t *e, PyObject *kind, const char **p, Py_ssize_t *n, uint64_t *h,
                    PyObject **tmp_out)
{
    sf_kmemo_t *m = e->kmemo;
    *tmp_out = NULL;
    for (int i = 0; m != NULL && i < m->n; i++) {
        if (m->e[i].kind == kind) {
            if (m->e[i].key == NULL)
                return 0;
            *p = m->e[i].key;
            *n = m->e[i].len;
            *h = m->e[i].hash;
            return 1;
        }
    }
    PyObject *ctxd = PyDict_GetItemWithError(e->emap, kind);
    PyObject *tmp = NULL, *ko = NULL;
    *p = NULL;
    if (ctxd == NULL && PyErr_Occurred())
        return PYFAIL;
    if (ctxd != NULL) {
        int rc = context_key(ctxd, p, n, &tmp, &ko);
        if (rc != SF_OK)
            return rc;
    }
    if (*p != NULL)
        *h = sf_xxh64(*p, (size_t)*n, 0);
    if (m != NULL && m->n < SF_KMEMO) {
        /* the memo owns what keeps the bytes alive, whatever the context does meanwhile */
        m->e[m->n].kind = kind;
        m->e[m->n].key = *p;
        m->e[m->n].len = *p ? *n : 0;
        m->e[m->n].hash = *p ? *h : 0;
        m->e[m->n].owner = tmp != NULL ? tmp : (*p != NULL ? (Py_INCREF(ko), ko) : NULL);
        m->n++;
    } else {
        *tmp_out = tmp;
    }
    return *p != NULL;
}

/* is the key of the context of @kind in the set at @set_off? 1/0, or <0 code */
static int key_in_set_obj(sf_eval_t *e, const sf_rec_t *rec, PyObject *kind, uint32_t set_off)
{
    if (set_off == 0)
        return 0;
    const char *p;
    Py_ssize_t n;
    uint64_t h;
    PyObject *tmp;
    int rc = kind_key(e, kind, &p, &n, &h, &tmp);
    if (rc <= 0)
        return rc;
    int r = sf_strset_has(rec, set_off, p, (size_t)n, h);
    Py_XDECREF(tmp);
    return r < 0 ? SF_EMALFORMED : r;
}

static int key_in_set(sf_eval_t *e, const sf_rec_t *rec, sf_ref_t kind, uint32_t set_off)
{
    if (set_off == 0)
        return 0;
    PyObject *k = sf_rec_pystr(e->so, rec, kind);
    return k == NULL ? PYFAIL : key_in_set_obj(e, rec, k, set_off);
}

/* attribute value by compiled reference: new reference (None when missing) */
static int get_attr(sf_eval_t *e, const sf_rec_t *rec, PyObject *ctxd, uint32_t attr_off,
                    PyObject **out)
{
    const sf_attrref_t *a = sf_rec_at(rec, attr_off, sizeof(sf_attrref_t));
    if (a == NULL || a->n == 0)
        return SF_EMALFORMED;
    const sf_ref_t *comps = sf_rec_at(rec, attr_off + 8, (uint64_t)a->n * sizeof(sf_ref_t));
    if (comps == NULL)
        return SF_EMALFORMED;
    PyObject *value = ctxd;
    Py_INCREF(value);
    for (uint32_t i = 0; i < a->n; i++) {
        if (!PyDict_Check(value)) {   /* only JSON objects can be traversed */
            Py_DECREF(value);
            value = Py_None;
            Py_INCREF(value);
            break;
        }
        PyObject *k = sf_rec_pystr(e->so, rec, comps[i]);
        if (k == NULL) {
            Py_DECREF(value);
            return PYFAIL;
        }
        PyObject *next = dict_get(value, k);
        Py_DECREF(value);
        if (next == NULL)
            return PYFAIL;
        value = next;
    }
    *out = value;
    return SF_OK;
}

/* ---- bucketing ---- */

/* bucket value for a rollout or weighted segment rule; -1 when the kind is absent */
static int bucket(sf_eval_t *e, const sf_rec_t *rec, sf_ref_t prefix, sf_ref_t kind,
                  uint32_t bucket_by, double *out)
{
    int rc;
    PyObject *ctxd = individual(e, rec, kind, &rc);
    if (ctxd == NULL) {
        *out = -1.0;
        return rc;
    }
    PyObject *value;
    if (bucket_by == 0) {
        value = PyDict_GetItemWithError(ctxd, sf_c.s_key);
        if (value == NULL && PyErr_Occurred())
            return PYFAIL;
        if (value == NULL)
            value = Py_None;
        Py_INCREF(value);
    } else if (bucket_by == SF_ATTR_INVALID) {
        return SF_EMALFORMED;
    } else if ((rc = get_attr(e, rec, ctxd, bucket_by, &value)) != SF_OK) {
        return rc;
    }
    *out = 0.0;
    PyObject *s = NULL;
    if (PyUnicode_CheckExact(value)) {
        s = value;
        Py_INCREF(s);
    } else if (PyUnicode_Check(value) || (PyLong_Check(value) && !PyBool_Check(value))) {
        s = PyObject_Str(value);   /* ldclient formats with '%s' */
        if (s == NULL) {
            Py_DECREF(value);
            return PYFAIL;
        }
    }
    Py_DECREF(value);
    if (s == NULL)
        return SF_OK;   /* not bucketable: bucket 0 */
    const char *pfx = sf_rec_str(rec, prefix);
    if (pfx == NULL) {
        Py_DECREF(s);
        return SF_EMALFORMED;
    }
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(s, &n);   /* strict, like .encode('utf-8') */
    if (p == NULL) {
        Py_DECREF(s);
        return PYFAIL;
    }
    *out = sf_bucket_value(pfx, prefix.len, p, (size_t)n);
    Py_DECREF(s);
    return SF_OK;
}

/* ---- flag parts ---- */

/**
 * sf_flag_header() - check a flag record's header (size, magic, version).
 * @rec: the record.
 * @out: the header, on success.
 *
 * Return: SF_OK or SF_ECORRUPT.
 */
int sf_flag_header(const sf_rec_t *rec, const sf_flag_rec_t **out)
{
    if (rec->len < sizeof(sf_flag_rec_t))
        return SF_ECORRUPT;
    const sf_flag_rec_t *f = (const sf_flag_rec_t *)rec->p;
    if (f->magic != SF_FLAG_MAGIC || f->rec_version != SF_REC_VERSION)
        return SF_ECORRUPT;
    *out = f;
    return SF_OK;
}

static int segment_header(const sf_rec_t *rec, const sf_segment_rec_t **out)
{
    if (rec->len < sizeof(sf_segment_rec_t))
        return SF_ECORRUPT;
    const sf_segment_rec_t *s = (const sf_segment_rec_t *)rec->p;
    if (s->magic != SF_SEGMENT_MAGIC || s->rec_version != SF_REC_VERSION)
        return SF_ECORRUPT;
    *out = s;
    return SF_OK;
}

static void set_error(sf_result_t *out)
{
    out->kind = SF_R_ERROR;
    out->variation = -1;
    out->in_experiment = 0;
}

/* _get_variation: index in range (and encodable) or MALFORMED_FLAG result */
static void get_variation(const sf_rec_t *rec, const sf_flag_rec_t *f, int32_t index,
                          sf_result_t *out)
{
    int bad = 0;
    const sf_ref_t *vars = sf_rec_array(rec, f->variations, sizeof(sf_ref_t), &bad);
    if (bad || index < 0 || (uint32_t)index >= f->variations.len || vars[index].len == 0) {
        set_error(out);
        return;
    }
    out->variation = index;
}

static void off_value(const sf_rec_t *rec, const sf_flag_rec_t *f, sf_result_t *out)
{
    if (!(f->bits & SF_FLAG_HAS_OFF)) {
        out->variation = -1;
        return;
    }
    get_variation(rec, f, f->off_variation, out);
}

/* variation or rollout -> result (reason kind already set by the caller) */
static int vor_value(sf_eval_t *e, const sf_rec_t *rec, const sf_flag_rec_t *f,
                     const sf_vor_t *vor, sf_result_t *out)
{
    if (vor == NULL || vor->kind == SF_VOR_NONE) {
        set_error(out);
        return SF_OK;
    }
    if (vor->kind == SF_VOR_VARIATION) {
        get_variation(rec, f, vor->variation, out);
        return SF_OK;
    }
    if (vor->kind != SF_VOR_ROLLOUT)
        return SF_EMALFORMED;
    const sf_rollout_t *ro = sf_rec_at(rec, vor->rollout_off, sizeof(sf_rollout_t));
    if (ro == NULL)
        return SF_EMALFORMED;
    int bad = 0;
    const sf_weighted_t *wv = sf_rec_array(rec, ro->variations, sizeof(sf_weighted_t), &bad);
    if (bad)
        return SF_EMALFORMED;
    if (ro->variations.len == 0) {
        set_error(out);
        return SF_OK;
    }
    int experiment = (ro->bits & SF_ROLLOUT_EXPERIMENT) != 0;
    double b;
    int rc = bucket(e, rec, ro->prefix, ro->kind, experiment ? 0 : ro->bucket_by, &b);
    if (rc != SF_OK)
        return rc;
    /* a missing context kind gives bucket -1: first variation, never in the experiment */
    int is_exp = experiment && b >= 0;
    double sum = 0.0;
    const sf_weighted_t *chosen = &wv[ro->variations.len - 1];
    for (uint32_t i = 0; i < ro->variations.len; i++) {
        sum += wv[i].weight;
        if (b < sum) {
            chosen = &wv[i];
            break;
        }
    }
    get_variation(rec, f, chosen->variation, out);
    if (out->kind != SF_R_ERROR)
        out->in_experiment = is_exp && !(chosen->bits & SF_WV_UNTRACKED);
    return SF_OK;
}

/* ---- clauses and segments ---- */

static int clause_matches(sf_eval_t *e, const sf_rec_t *rec, const sf_clause_t *c, int *match);

/* Too deep: ldclient (and the Python backends) hit RecursionError, reported as EXCEPTION. */
static int too_deep(void)
{
    PyErr_SetString(PyExc_RecursionError, "prerequisite or segment nesting deeper than 200");
    return SF_EPYTHON;
}

static int push_key(sf_keyref_t *stack, int *n, const char *p, uint32_t len)
{
    if (*n >= SF_MAX_DEPTH)
        return too_deep();
    stack[*n].p = p;
    stack[*n].n = len;
    (*n)++;
    return SF_OK;
}

static int on_stack(const sf_keyref_t *stack, int n, const char *p, uint32_t len)
{
    for (int i = 0; i < n; i++)
        if (stack[i].n == len && memcmp(stack[i].p, p, len) == 0)
            return 1;
    return 0;
}

static int rule_clauses_match(sf_eval_t *e, const sf_rec_t *rec, sf_ref_t clauses, int *match)
{
    int bad = 0;
    const sf_clause_t *cl = sf_rec_array(rec, clauses, sizeof(sf_clause_t), &bad);
    if (bad)
        return SF_EMALFORMED;
    *match = 1;
    for (uint32_t i = 0; i < clauses.len; i++) {
        int rc = clause_matches(e, rec, &cl[i], match);
        if (rc != SF_OK)
            return rc;
        if (!*match)
            return SF_OK;
    }
    return SF_OK;
}

/* user key in a segment's included/excluded set: 1/0, or <0 code */
static int user_key_in(sf_eval_t *e, const sf_rec_t *rec, uint32_t set_off)
{
    return key_in_set_obj(e, rec, sf_c.s_user, set_off);
}

/* any sf_target_t entry whose context key is in its set: 1/0, or <0 code */
static int any_target(sf_eval_t *e, const sf_rec_t *rec, sf_ref_t targets)
{
    int bad = 0;
    const sf_target_t *t = sf_rec_array(rec, targets, sizeof(sf_target_t), &bad);
    if (bad)
        return SF_EMALFORMED;
    for (uint32_t i = 0; i < targets.len; i++) {
        int r = key_in_set(e, rec, t[i].kind, t[i].set);
        if (r != 0)
            return r;
    }
    return 0;
}

/* _simple_segment_match_context: included, includedContexts, excluded,
 * excludedContexts, then rules (cycle-checked on the segment stack) */
static int segment_simple(sf_eval_t *e, const sf_rec_t *rec, const sf_segment_rec_t *s,
                          int use_lists, int *match)
{
    int bad = 0, r;
    *match = 0;
    if (use_lists) {
        if ((r = user_key_in(e, rec, s->included)) != 0 || (r = any_target(e, rec, s->included_contexts)) != 0) {
            if (r < 0)
                return r;
            *match = 1;
            return SF_OK;
        }
        if ((r = user_key_in(e, rec, s->excluded)) != 0 || (r = any_target(e, rec, s->excluded_contexts)) != 0)
            return r < 0 ? r : SF_OK;
    }
    if (s->rules.len == 0)
        return SF_OK;
    const sf_segrule_t *rules = sf_rec_array(rec, s->rules, sizeof(sf_segrule_t), &bad);
    if (bad)
        return SF_EMALFORMED;
    const char *key = sf_rec_str(rec, s->key);
    if (key == NULL)
        return SF_EMALFORMED;
    int rc = push_key(e->sstack, &e->ns, key, s->key.len);
    if (rc != SF_OK)
        return rc;
    for (uint32_t i = 0; i < s->rules.len && rc == SF_OK; i++) {
        int m;
        rc = rule_clauses_match(e, rec, rules[i].clauses, &m);
        if (rc != SF_OK || !m)
            continue;
        if (!(rules[i].bits & SF_SEGRULE_HAS_WEIGHT)) {
            *match = 1;
            break;
        }
        double b;
        rc = bucket(e, rec, s->prefix, rules[i].kind, rules[i].bucket_by, &b);
        if (rc == SF_OK && b < rules[i].weight) {
            *match = 1;
            break;
        }
    }
    e->ns--;
    return rc;
}

/* _segment_matches_context for the segment named by a clause value */
static int segment_matches(sf_eval_t *e, const char *skey, uint32_t sklen, int *match)
{
    *match = 0;
    const sf_entry_t *ent;
    int rc = sf_snapshot_find(&e->so->snap, SF_SEGMENTS, skey, sklen, &ent);
    if (rc == SF_ENOTFOUND)
        return SF_OK;   /* unknown segment: no match, not an error */
    if (rc != SF_OK)
        return SF_EMALFORMED;
    sf_rec_t srec;
    const sf_segment_rec_t *s;
    if (sf_entry_record(&e->so->snap, ent, &srec) != SF_OK || segment_header(&srec, &s) != SF_OK)
        return SF_EMALFORMED;
    if (s->bits & SF_SEG_DELETED)
        return SF_OK;   /* a tombstone: absent */
    if (s->bits & SF_SEG_MALFORMED)
        return SF_EMALFORMED;   /* data ldclient would refuse (reference evaluator: same) */
    const char *key = sf_rec_str(&srec, s->key);
    if (key == NULL)
        return SF_EMALFORMED;
    if (on_stack(e->sstack, e->ns, key, s->key.len))
        return SF_EMALFORMED;   /* segment cycle */
    if (!(s->bits & SF_SEG_UNBOUNDED))
        return segment_simple(e, &srec, s, 1, match);
    /* Big Segment: membership from the provider (none: NOT_CONFIGURED), then rules only */
    if (!(s->bits & SF_SEG_HAS_GENERATION)) {
        Py_INCREF(sf_c.s_NOT_CONFIGURED);
        Py_XSETREF(e->bigseg_status, sf_c.s_NOT_CONFIGURED);
        return SF_OK;
    }
    PyObject *ctxd = individual(e, &srec, s->unbounded_kind, &rc);
    if (ctxd == NULL)
        return rc;
    PyObject *ckey = PyDict_GetItemWithError(ctxd, sf_c.s_key);
    if (ckey == NULL)
        return PyErr_Occurred() ? PYFAIL : SF_OK;
    PyObject *membership = NULL;   /* borrowed from the per-evaluation cache */
    if (e->so->big_segments == NULL) {
        Py_INCREF(sf_c.s_NOT_CONFIGURED);
        Py_XSETREF(e->bigseg_status, sf_c.s_NOT_CONFIGURED);
    } else {
        if (e->bigseg_cache == NULL && (e->bigseg_cache = PyDict_New()) == NULL)
            return PYFAIL;
        membership = PyDict_GetItemWithError(e->bigseg_cache, ckey);
        if (membership == NULL) {
            if (PyErr_Occurred())
                return PYFAIL;
            PyObject *r = PyObject_CallMethodOneArg(e->so->big_segments, sf_c.s_get_membership, ckey);
            if (r == NULL)
                return PYFAIL;
            if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) != 2) {
                Py_DECREF(r);
                PyErr_SetString(PyExc_TypeError, "get_membership() must return (membership, status)");
                return PYFAIL;
            }
            Py_INCREF(PyTuple_GET_ITEM(r, 1));
            Py_XSETREF(e->bigseg_status, PyTuple_GET_ITEM(r, 1));
            int prc = PyDict_SetItem(e->bigseg_cache, ckey, PyTuple_GET_ITEM(r, 0));
            Py_DECREF(r);
            if (prc < 0)
                return PYFAIL;
            membership = PyDict_GetItemWithError(e->bigseg_cache, ckey);
            if (membership == NULL)
                return PYFAIL;
        }
        if (membership == Py_None)
            membership = NULL;
    }
    if (membership != NULL) {
        PyObject *ref = PyUnicode_FromFormat("%U.g%lld", sf_rec_pystr(e->so, &srec, s->key),
                                             (long long)s->generation);
        if (ref == NULL)
            return PYFAIL;
        PyObject *included = PyObject_CallMethodOneArg(membership, sf_c.s_get, ref);
        Py_DECREF(ref);
        if (included == NULL)
            return PYFAIL;
        if (included != Py_None) {
            int t = PyObject_IsTrue(included);
            Py_DECREF(included);
            if (t < 0)
                return PYFAIL;
            *match = t;
            return SF_OK;
        }
        Py_DECREF(included);
    }
    return segment_simple(e, &srec, s, 0, match);
}

/* match one context value (not an array) against a clause */
static int match_value(sf_eval_t *e, const sf_rec_t *rec, const sf_clause_t *c, PyObject *v,
                       int *m)
{
    int r = sf_op_match(e, rec, c, v);
    if (r < 0)
        return PYFAIL;
    *m = r;
    return SF_OK;
}

static int clause_matches(sf_eval_t *e, const sf_rec_t *rec, const sf_clause_t *c, int *match)
{
    int negate = (c->bits & SF_CLAUSE_NEGATE) != 0;
    int rc, m = 0;
    if (c->op == SF_OP_SEGMENT_MATCH) {
        int bad = 0;
        const sf_value_t *vals = sf_rec_array(rec, c->values, sizeof(sf_value_t), &bad);
        if (bad)
            return SF_EMALFORMED;
        for (uint32_t i = 0; i < c->values.len && !m; i++) {
            if (vals[i].type != SF_V_STR)
                continue;
            sf_ref_t kr = {(uint32_t)vals[i].payload, vals[i].len};
            const char *k = vals[i].payload <= UINT32_MAX ? sf_rec_str(rec, kr) : NULL;
            if (k == NULL)
                return SF_EMALFORMED;
            if ((rc = segment_matches(e, k, kr.len, &m)) != SF_OK)
                return rc;
        }
        *match = m != negate;
        return SF_OK;
    }
    if (c->attr != 0 && (c->bits & SF_CLAUSE_ATTR_KIND)) {
        /* "kind": match the clause against every individual kind */
        PyObject *kind;
        Py_ssize_t pos = 0;
        while (!m && PyDict_Next(e->emap, &pos, &kind, NULL)) {
            if ((rc = match_value(e, rec, c, kind, &m)) != SF_OK)
                return rc;
        }
        *match = m != negate;
        return SF_OK;
    }
    PyObject *ctxd = individual(e, rec, c->kind, &rc);
    if (ctxd == NULL) {
        *match = 0;   /* no such context: false, negate not applied */
        return rc;
    }
    if (c->attr == 0)
        return SF_EMALFORMED;   /* invalid attribute reference */
    PyObject *value;
    if ((rc = get_attr(e, rec, ctxd, c->attr, &value)) != SF_OK)
        return rc;
    if (value == Py_None) {
        Py_DECREF(value);
        *match = 0;   /* missing attribute: false, negate not applied */
        return SF_OK;
    }
    if (PyList_Check(value) || PyTuple_Check(value)) {
        /* any element; indexes re-checked each step in case the list changes */
        for (Py_ssize_t i = 0; !m; i++) {
            Py_ssize_t len = PyList_Check(value) ? PyList_GET_SIZE(value) : PyTuple_GET_SIZE(value);
            if (i >= len)
                break;
            PyObject *item = PyList_Check(value) ? PyList_GET_ITEM(value, i)
                                                 : PyTuple_GET_ITEM(value, i);
            Py_INCREF(item);
            rc = match_value(e, rec, c, item, &m);
            Py_DECREF(item);
            if (rc != SF_OK) {
                Py_DECREF(value);
                return rc;
            }
        }
    } else if ((rc = match_value(e, rec, c, value, &m)) != SF_OK) {
        Py_DECREF(value);
        return rc;
    }
    Py_DECREF(value);
    *match = m != negate;
    return SF_OK;
}

/* ---- targets ---- */

static int check_targets(sf_eval_t *e, const sf_rec_t *rec, const sf_flag_rec_t *f,
                         sf_result_t *out, int *hit)
{
    int bad = 0, r;
    *hit = 0;
    /* Old data has only "targets"; otherwise "contextTargets" defines the order, and its
     * user-kind entries carry the keys of the first matching "targets" entry (compile.py). */
    sf_ref_t list = f->context_targets.len ? f->context_targets : f->targets;
    const sf_target_t *t = sf_rec_array(rec, list, sizeof(sf_target_t), &bad);
    if (bad)
        return SF_EMALFORMED;
    for (uint32_t i = 0; i < list.len; i++) {
        if ((r = key_in_set(e, rec, t[i].kind, t[i].set)) < 0)
            return r;
        if (r) {
            *hit = 1;
            out->kind = SF_R_TARGET_MATCH;
            get_variation(rec, f, t[i].variation, out);
            return SF_OK;
        }
    }
    return SF_OK;
}

/* ---- prerequisites ---- */

/**
 * sf_info_tuple() - the EvalTuple's info: (version, bits, debugEventsUntilDate, samplingRatio)
 * with bits 1 trackEvents, 2 experiment, 4 excludeFromSummaries (docs/internals.md).
 * @so: the Snapshot (its caches).
 * @rec: the flag's record.
 * @f: its header.
 * @r: the result (NULL: no experiment bit).
 *
 * Return: new reference (shared, immutable), or NULL with an exception set.
 */
PyObject *sf_info_tuple(SnapshotObject *so, const sf_rec_t *rec, const sf_flag_rec_t *f,
                        const sf_result_t *r)
{
    /* immutable, so one tuple per (flag, experiment bit) is shared (cache tag INFO) */
    int exp = r != NULL && sf_is_experiment(rec, f, r);
    uint64_t ckey = SF_CACHE_KEY(rec->abs + (exp ? 8u : 0u), SF_TAG_INFO);
    PyObject *cached = rec->fc ? rec->fc->info[exp] : sf_cache_get(&so->cache, ckey);
    if (cached != NULL) {
        Py_INCREF(cached);
        return cached;
    }
    long bits = 0;
    if (f->bits & SF_FLAG_TRACK_EVENTS)
        bits |= 1;
    if (exp)
        bits |= 2;
    if (f->bits & SF_FLAG_EXCLUDE_SUMMARIES)
        bits |= 4;
    PyObject *debug = Py_None, *sampling = Py_None;
    Py_INCREF(debug);
    Py_INCREF(sampling);
    if (f->bits & SF_FLAG_HAS_DEBUG) {
        const sf_value_t *d = &f->debug_date;
        PyObject *o = NULL;
        if (d->type == SF_V_INT)
            o = PyLong_FromLongLong((int64_t)d->payload);
        else if (d->type == SF_V_FLOAT)
            o = PyFloat_FromDouble(bits_to_double(d->payload));
        else if (d->type == SF_V_TRUE || d->type == SF_V_FALSE)
            o = PyBool_FromLong(d->type == SF_V_TRUE);
        if (o != NULL)
            Py_SETREF(debug, o);
    }
    if (f->bits & SF_FLAG_HAS_SAMPLING) {
        PyObject *o = PyLong_FromLongLong(f->sampling_ratio);
        if (o != NULL)
            Py_SETREF(sampling, o);
    }
    PyObject *version = PyLong_FromLongLong(f->version);
    PyObject *pbits = PyLong_FromLong(bits);
    PyObject *t = NULL;
    if (version != NULL && pbits != NULL && !PyErr_Occurred())
        t = PyTuple_Pack(4, version, pbits, debug, sampling);
    Py_XDECREF(version);
    Py_XDECREF(pbits);
    Py_DECREF(debug);
    Py_DECREF(sampling);
    if (t == NULL)
        return NULL;
    PyObject *keep;
    if (rec->fc != NULL) {
        if (rec->fc->info[exp] == NULL) {
            Py_INCREF(t);
            rec->fc->info[exp] = t;
        }
        keep = rec->fc->info[exp];
    } else {
        keep = sf_cache_put(&so->cache, ckey, t);
    }
    Py_XINCREF(keep);
    Py_DECREF(t);
    return keep;
}

static int add_prereq_event(sf_eval_t *e, const sf_rec_t *prec, const sf_flag_rec_t *parent,
                            const sf_rec_t *rec, const sf_flag_rec_t *pf, const sf_result_t *r)
{
    if (!e->want_events)
        return SF_OK;
    if (e->events == NULL && (e->events = PyList_New(0)) == NULL)
        return PYFAIL;
    PyObject *of = sf_flag_key(e->so, prec, parent);
    PyObject *key = sf_flag_key(e->so, rec, pf);
    if (of == NULL || key == NULL)
        return PYFAIL;
    PyObject *value = r->variation >= 0 ? sf_variation_value(e->so, rec, pf, r->variation, 1)
                                        : (Py_INCREF(Py_None), Py_None);
    PyObject *index = r->variation >= 0 ? PyLong_FromLong(r->variation)
                                        : (Py_INCREF(Py_None), Py_None);
    PyObject *reason = sf_make_reason(e, rec, r);
    PyObject *info = sf_info_tuple(e->so, rec, pf, r);
    int rc = SF_OK;
    if (value == NULL || index == NULL || reason == NULL || info == NULL) {
        rc = PYFAIL;
    } else {
        PyObject *t = PyTuple_Pack(6, of, key, value, index, reason, info);
        if (t == NULL || PyList_Append(e->events, t) < 0)
            rc = PYFAIL;
        Py_XDECREF(t);
    }
    Py_XDECREF(value);
    Py_XDECREF(index);
    Py_XDECREF(reason);
    Py_XDECREF(info);
    return rc;
}

static int check_prereqs(sf_eval_t *e, const sf_rec_t *rec, const sf_flag_rec_t *f,
                         sf_result_t *out, int *failed)
{
    int bad = 0, rc = SF_OK;
    *failed = 0;
    const sf_prereq_t *pr = sf_rec_array(rec, f->prereqs, sizeof(sf_prereq_t), &bad);
    if (bad)
        return SF_EMALFORMED;
    if (f->prereqs.len == 0)
        return SF_OK;
    const char *fkey = sf_rec_str(rec, f->key);
    if (fkey == NULL)
        return SF_EMALFORMED;
    if (e->top.p == NULL) {
        /* the top-level key is read only when a prerequisite needs the cycle check */
        e->top.p = sf_rec_str(&e->top_rec, e->top_f->key);
        e->top.n = e->top_f->key.len;
        if (e->top.p == NULL)
            return SF_EMALFORMED;
    }
    int pushed = 0;
    if (!(f->key.len == e->top.n && memcmp(fkey, e->top.p, e->top.n) == 0)) {
        if ((rc = push_key(e->pstack, &e->np, fkey, f->key.len)) != SF_OK)
            return rc;
        pushed = 1;
    }
    for (uint32_t i = 0; i < f->prereqs.len; i++) {
        const char *pk = sf_rec_str(rec, pr[i].key);
        if (pk == NULL) {
            rc = SF_EMALFORMED;
            break;
        }
        uint32_t pkl = pr[i].key.len;
        if ((pkl == e->top.n && memcmp(pk, e->top.p, pkl) == 0) || on_stack(e->pstack, e->np, pk, pkl)) {
            rc = SF_EMALFORMED;   /* prerequisite cycle */
            break;
        }
        const sf_entry_t *ent;
        int frc = sf_snapshot_find(&e->so->snap, SF_FLAGS, pk, pkl, &ent);
        if (frc != SF_OK && frc != SF_ENOTFOUND) {
            rc = SF_EMALFORMED;
            break;
        }
        if (e->want_keys && e->depth == 0) {
            PyObject *k = sf_rec_pystr(e->so, rec, pr[i].key);
            if (k == NULL || (e->prereq_keys == NULL && (e->prereq_keys = PyList_New(0)) == NULL)
                || PyList_Append(e->prereq_keys, k) < 0) {
                rc = PYFAIL;
                break;
            }
        }
        int fail = 0;
        const sf_flag_rec_t *pf = NULL;
        sf_rec_t prec;
        if (frc == SF_OK) {
            if (sf_entry_record(&e->so->snap, ent, &prec) != SF_OK || sf_flag_header(&prec, &pf) != SF_OK) {
                rc = SF_EMALFORMED;
                break;
            }
            prec.fc = sf_flag_cache_for(e->so, ent);
            if (pf->bits & SF_FLAG_DELETED)
                pf = NULL;
            else if (pf->bits & SF_FLAG_MALFORMED) {
                rc = SF_EMALFORMED;
                break;
            }
        }
        if (pf == NULL) {
            fail = 1;   /* missing prerequisite: failed, no event */
        } else {
            sf_result_t pres;
            memset(&pres, 0, sizeof(pres));
            e->depth++;
            rc = sf_eval_flag(e, &prec, pf, &pres);
            e->depth--;
            if (rc != SF_OK)
                break;
            /* no variation (-1) never satisfies a prerequisite, even "variation": -1 */
            if (!(pf->bits & SF_FLAG_ON) || pres.variation < 0 || pres.variation != pr[i].variation)
                fail = 1;
            if ((rc = add_prereq_event(e, rec, f, &prec, pf, &pres)) != SF_OK)
                break;
        }
        if (fail) {
            *failed = 1;
            out->kind = SF_R_PREREQUISITE_FAILED;
            out->prereq_key = pk;
            out->prereq_len = pkl;
            break;
        }
    }
    if (pushed)
        e->np--;
    return rc;
}

/**
 * sf_eval_flag() - evaluate one flag record for the context in @e.
 * @e: evaluation state (context, stacks, prerequisite events).
 * @rec: the flag's record.
 * @f: its header (sf_flag_header()).
 * @out: the result; zero it before the call.
 *
 * Context: worker; holds the GIL.
 * Return: SF_OK (result in @out, possibly an ERROR result), SF_EMALFORMED
 * (structural error: the whole evaluation is MALFORMED_FLAG) or SF_EPYTHON.
 */
int sf_eval_flag(sf_eval_t *e, const sf_rec_t *rec, const sf_flag_rec_t *f, sf_result_t *out)
{
    int rc, hit, bad = 0;
    out->variation = -1;
    out->in_experiment = 0;
    /* invariant: recursion is bounded even where no key is pushed (a flag stored under
     * another key than its own can reach itself without tripping the cycle check) */
    if (e->depth >= SF_MAX_DEPTH)
        return too_deep();
    if (f->bits & SF_FLAG_MALFORMED)
        return SF_EMALFORMED;
    if (!(f->bits & SF_FLAG_ON)) {
        out->kind = SF_R_OFF;
        off_value(rec, f, out);
        return SF_OK;
    }
    if ((rc = check_prereqs(e, rec, f, out, &hit)) != SF_OK)
        return rc;
    if (hit) {
        off_value(rec, f, out);
        return SF_OK;
    }
    if ((rc = check_targets(e, rec, f, out, &hit)) != SF_OK || hit)
        return rc;
    const sf_rule_t *rules = sf_rec_array(rec, f->rules, sizeof(sf_rule_t), &bad);
    if (bad)
        return SF_EMALFORMED;
    for (uint32_t i = 0; i < f->rules.len; i++) {
        int m;
        if ((rc = rule_clauses_match(e, rec, rules[i].clauses, &m)) != SF_OK)
            return rc;
        if (m) {
            out->kind = SF_R_RULE_MATCH;
            out->rule_index = (int32_t)i;
            out->rule = &rules[i];
            return vor_value(e, rec, f, &rules[i].vor, out);
        }
    }
    out->kind = SF_R_FALLTHROUGH;
    return vor_value(e, rec, f, &f->fallthrough, out);
}

/* ---- Python objects of a result ---- */

/**
 * sf_is_experiment() - does the result need its reason in events (LD protocol 6.3)?
 *
 * inExperiment, or a rule match on a rule with trackEvents, or a fallthrough of a flag with
 * trackEventsFallthrough; never for errors.
 * Return: 1 or 0.
 */
int sf_is_experiment(const sf_rec_t *rec, const sf_flag_rec_t *f, const sf_result_t *r)
{
    if (r->kind == SF_R_ERROR)
        return 0;
    if (r->in_experiment)
        return 1;
    if (r->kind == SF_R_RULE_MATCH)
        return r->rule != NULL && (r->rule->bits & SF_RULE_TRACK_EVENTS) != 0;
    if (r->kind == SF_R_FALLTHROUGH)
        return (f->bits & SF_FLAG_TRACK_FALLTHROUGH) != 0;
    return 0;
}

/**
 * sf_make_reason() - a fresh reason dict for a result (read-only by contract).
 * Return: new reference, or NULL with an exception set.
 */
PyObject *sf_make_reason(sf_eval_t *e, const sf_rec_t *rec, const sf_result_t *r)
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    PyObject *kind;
    switch (r->kind) {
    case SF_R_OFF: kind = sf_c.s_OFF; break;
    case SF_R_FALLTHROUGH: kind = sf_c.s_FALLTHROUGH; break;
    case SF_R_TARGET_MATCH: kind = sf_c.s_TARGET_MATCH; break;
    case SF_R_RULE_MATCH: kind = sf_c.s_RULE_MATCH; break;
    case SF_R_PREREQUISITE_FAILED: kind = sf_c.s_PREREQUISITE_FAILED; break;
    default: kind = sf_c.s_ERROR; break;
    }
    if (PyDict_SetItem(d, sf_c.s_kind, kind) < 0)
        goto fail;
    if (r->kind == SF_R_ERROR) {
        if (PyDict_SetItem(d, sf_c.s_errorKind, sf_c.s_MALFORMED_FLAG) < 0)
            goto fail;
        return d;
    }
    if (r->kind == SF_R_RULE_MATCH) {
        PyObject *idx = PyLong_FromLong(r->rule_index);
        if (idx == NULL || PyDict_SetItem(d, sf_c.s_ruleIndex, idx) < 0) {
            Py_XDECREF(idx);
            goto fail;
        }
        Py_DECREF(idx);
        PyObject *id = Py_None;   /* ldclient sends "ruleId": null for a rule without id */
        if (r->rule->bits & SF_RULE_HAS_ID) {
            id = sf_rec_pystr(e->so, rec, r->rule->id);
            if (id == NULL)
                goto fail;
        }
        if (PyDict_SetItem(d, sf_c.s_ruleId, id) < 0)
            goto fail;
    } else if (r->kind == SF_R_PREREQUISITE_FAILED) {
        PyObject *k = PyUnicode_DecodeUTF8(r->prereq_key, r->prereq_len, "surrogatepass");
        if (k == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            PyErr_SetString(sf_c.exc_corrupt, "prerequisite key is not UTF-8");
        if (k == NULL || PyDict_SetItem(d, sf_c.s_prerequisiteKey, k) < 0) {
            Py_XDECREF(k);
            goto fail;
        }
        Py_DECREF(k);
    }
    if (r->in_experiment && PyDict_SetItem(d, sf_c.s_inExperiment, Py_True) < 0)
        goto fail;
    return d;
fail:
    Py_DECREF(d);
    return NULL;
}

/**
 * sf_deep_copy() - copy dicts and lists (recursively); share everything else.
 * Return: new reference, or NULL with an exception set.
 */
PyObject *sf_deep_copy(PyObject *o, int depth)
{
    if (depth > 600) {   /* beyond msgpack's 511-level packing limit: never for stored values */
        PyErr_SetString(PyExc_RecursionError, "variation value nested too deeply");
        return NULL;
    }
    if (PyList_CheckExact(o)) {
        Py_ssize_t n = PyList_GET_SIZE(o);
        PyObject *l = PyList_New(n);
        if (l == NULL)
            return NULL;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *c = sf_deep_copy(PyList_GET_ITEM(o, i), depth + 1);
            if (c == NULL) {
                Py_DECREF(l);
                return NULL;
            }
            PyList_SET_ITEM(l, i, c);
        }
        return l;
    }
    if (PyDict_CheckExact(o)) {
        PyObject *d = PyDict_New(), *k, *v;
        Py_ssize_t pos = 0;
        if (d == NULL)
            return NULL;
        while (PyDict_Next(o, &pos, &k, &v)) {
            PyObject *c = sf_deep_copy(v, depth + 1);
            if (c == NULL || PyDict_SetItem(d, k, c) < 0) {
                Py_XDECREF(c);
                Py_DECREF(d);
                return NULL;
            }
            Py_DECREF(c);
        }
        return d;
    }
    Py_INCREF(o);
    return o;
}

/**
 * sf_variation_value() - the value of variation @index (decoded once per
 * Snapshot and cached, except one-byte values, which are shared objects; dicts and lists
 * copied when @copy).
 * Return: new reference, or NULL with an exception set.
 */
PyObject *sf_variation_value(SnapshotObject *so, const sf_rec_t *rec, const sf_flag_rec_t *f,
                             int32_t index, int copy)
{
    int bad = 0;
    const sf_ref_t *vars = sf_rec_array(rec, f->variations, sizeof(sf_ref_t), &bad);
    if (bad || index < 0 || (uint32_t)index >= f->variations.len) {
        PyErr_SetString(sf_c.exc_corrupt, "corrupt variation");
        return NULL;
    }
    sf_ref_t v = vars[index];
    if (v.len == 1 && v.off != 0 && (uint64_t)v.off + 2 <= rec->len && rec->p[v.off + 1] == 0) {
        /* one-byte msgpack values decode to shared objects: built directly, never cached
         * (most flags are booleans; memory, issue 4).  Same objects as unpack_value gives. */
        uint8_t b = rec->p[v.off];
        if (b == 0xc3)
            Py_RETURN_TRUE;
        if (b == 0xc2)
            Py_RETURN_FALSE;
        if (b == 0xc0)
            Py_RETURN_NONE;
        if (b <= 0x7f)
            return PyLong_FromLong(b);   /* positive fixint: a small int, no allocation */
    }
    uint64_t key = SF_CACHE_KEY(rec->abs + v.off, SF_TAG_VARIATION);
    sf_flagcache_t *fc = rec->fc;
    if (fc != NULL && fc->values == NULL) {
        fc->values = PyMem_Calloc(f->variations.len, sizeof(PyObject *));
        if (fc->values == NULL)
            return PyErr_NoMemory();
        fc->nvalues = f->variations.len;
    }
    if (fc != NULL && (uint32_t)index >= fc->nvalues)
        fc = NULL;   /* a record that changed shape cannot happen; stay safe anyway */
    PyObject *o = fc != NULL ? fc->values[index] : sf_cache_get(&so->cache, key);
    if (o == NULL) {
        const char *blob = sf_rec_str(rec, v);
        if (blob == NULL || v.len == 0) {
            PyErr_SetString(sf_c.exc_corrupt, "corrupt variation");
            return NULL;
        }
        PyObject *raw = PyBytes_FromStringAndSize(blob, v.len);
        if (raw == NULL)
            return NULL;
        o = PyObject_CallOneArg(so->unpack, raw);
        Py_DECREF(raw);
        if (o == NULL) {
            /* compile.py wrote this blob: failing to decode it means damaged bytes */
            if (!PyErr_ExceptionMatches(PyExc_MemoryError))
                PyErr_SetString(sf_c.exc_corrupt, "variation blob does not decode");
            return NULL;
        }
        if (fc != NULL) {
            if (fc->values[index] == NULL)
                fc->values[index] = o;   /* the slot owns the reference */
            else
                Py_DECREF(o);            /* another evaluation filled it meanwhile */
            o = fc->values[index];
        } else {
            PyObject *cached = sf_cache_put(&so->cache, key, o);
            Py_DECREF(o);
            if (cached == NULL)
                return NULL;
            o = cached;
        }
    }
    if (copy && (PyDict_Check(o) || PyList_Check(o)))
        return sf_deep_copy(o, 0);
    Py_INCREF(o);
    return o;
}
