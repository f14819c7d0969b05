/*
 * events.c - the common path of EventRecorder.record_evaluation in C, and the packing of
 * feature/debug events for the sender.
 *
 * Owns: the type shmflags._native._RecorderCore (private: not a backend name),
 * the C base class of shmflags.events.recorder.EventRecorder, and the function
 * _native._pack_event.  The core holds the recorder's hot state as members (_deadline,
 * _end, _start, _last_ctx, _last_entry, _summary, _contexts, _events, _unsent_events,
 * _capacity, _dropped, _retry_at, _thread, stats, _lock) and implements
 * record_evaluation() for every evaluation of a context already seen in this window (the
 * last one, or a shmflags Context found by its cached fully-qualified key) before the next
 * slow check (_deadline): it counts the flag (a new flag, a new variation or new kinds
 * included) and its prerequisites (whose counters must exist), adds the context's uses,
 * sets _end, and appends the feature event of a flag that tracks events or is an
 * experiment - or counts its drop when the buffer is full and a retry is pending - when
 * the Python path would keep exactly that one event without flushing (no debug event, no
 * sampling draw, no prerequisite with a full event).
 * Everything else (a first sighting, a debug event, sampling, an unknown flag, the call
 * that fills the buffer, a version change within the window) is passed unchanged to the
 * Python method _record_evaluation_py, which is the reference implementation (and the
 * whole implementation when this extension is absent).  Both work on the same Python
 * objects, built the same way, so the datagrams are the same (tests compare them).
 * The client's fast path (fast.c) reaches the same code through sf_core_record_fast(),
 * without an EvalTuple; a refusal there records nothing and the client takes its Python
 * path.  Two caches (counter, context; see below) replace dict lookups by one slot each.
 * Runs in worker processes only.
 *
 * Data shapes (built by recorder.py; anything else goes to the Python path):
 *   _summary:    dict  flag key -> [default, kinds set, counters, kinds, version] (a getset:
 *                pending counts of the counter cache are folded in when it is read or set)
 *   counters:    dict  variation (int | None) -> [count, value]
 *   _contexts:   dict  fully-qualified key -> entry (a getset: pending uses of the context
 *                cache are folded in when it is read or set, and when _last_entry is read)
 *   _last_entry: list  [context dict, first_ms, count, index, kinds, context]
 *
 * Thread safety.  The Python code changes the window only while holding
 * _lock, in several bytecode steps; another thread can run between them.
 * This code never releases the GIL and never runs Python code (it only
 * touches exact dicts, lists, sets, tuples, ints and str keys, whose hashing,
 * comparison and deallocation are C, and it never drops the last reference to
 * a caller's object: the caches let an old window go only from Python code),
 * so it runs as one atomic step with respect to every other Python thread.  It therefore only needs to know that no thread
 * is inside a locked section: if _lock is held it takes the Python path,
 * which waits for the lock as before.  It never takes the lock itself, so it
 * cannot deadlock with it.
 *
 * Fork safety is unchanged: _deadline routes the first call after construction to the
 * Python path, and makes one call every PID_CHECK_INTERVAL run the Python slow checks
 * first (checks_due(): _checks_due compares the pid), outside the part that runs no
 * Python code; the at-fork hook replaces the window (and _lock) through these same
 * members.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <time.h>

#include "sf.h"

#if PY_VERSION_HEX < 0x030A0000   /* Py_NewRef is 3.10+; the package supports 3.9 */
static inline PyObject *Py_NewRef(PyObject *o) { Py_INCREF(o); return o; }
#endif

/*
 * The counter cache: (flag key, variation, context kinds, version) -> the summary's counter
 * list, for the window's summary dict ``summary``; two-way set-associative on the key's
 * address and the variation (a set is two adjacent 32-byte slots, one cache line; the
 * newest entry goes first, the older one moves to the second way and the one there is
 * dropped).  An entry is only made for a counter that find_counter() found with every one
 * of those kinds in the flag's kinds set and at the flag's version; within one summary
 * dict a counter, its flag and the kinds set only grow (the Python code never removes or
 * replaces them), so the entry stays right until the window's summary dict changes, which
 * empties the cache.  The key, kinds and version are compared by address and held by
 * strong references (an address compared can never be reused for another object
 * meanwhile); the variation (None or an exact int >= 0, the counters dict's key) by value.
 * It replaces the summary lookup, the flag list, the counters dict and its lookup (four to
 * six cache misses with a 10,000-flag summary) by one slot; the counter list itself is
 * kept apart (cc_counter, strong references) and only read when counts are folded in.
 * A count made through a slot is kept in it as a C integer (pending) instead of a new int
 * in the counter list.  Invariant: every read of the summary from Python sees every count,
 * because the pending counts are added to their counter lists (cc_fold) whenever the
 * Python code gets or sets ``_summary`` (its only way to the summary: a getset), and
 * whenever a slot is dropped or moved, or the cache emptied.
 */
#define CC_SLOTS 8192   /* a power of two: 256 KiB of slots, touched only where used */
_Static_assert(CC_SLOTS <= 65536, "cc_dirty holds slot indexes as uint16_t");
typedef struct {
    PyObject *key, *kinds, *version;   /* NULL key: empty slot */
    int32_t variation;    /* the variation: -1 for None, else its value (>= 0) */
    uint32_t pending;     /* counts not yet added to the counter (cc_fold); folded at once
                           * when it reaches UINT32_MAX */
} cc_slot_t;
_Static_assert(sizeof(cc_slot_t) * 2 <= 64 || sizeof(void *) != 8,
               "a set of the counter cache fills one 64-byte cache line");

typedef struct {
    PyObject_HEAD
    double deadline;      /* _deadline: a call at or after it takes the Python path */
    double end;           /* _end: time of the window's last evaluation (s) */
    PyObject *last_ctx;   /* _last_ctx: context object of the last sighting, or None */
    PyObject *last_entry; /* _last_entry: its window entry (list), or None */
    PyObject *summary;    /* _summary: the window's summary dict, or None */
    PyObject *contexts;   /* _contexts: fully-qualified key -> entry, or None */
    PyObject *ctx_type;   /* _context_type: the one class whose cached ``_fqk`` slot is read */
    PyObject *lock;       /* _lock: the recorder's threading.Lock, or None */
    PyObject *locked;     /* lock.locked (bound), cached when _lock is set; NULL if none */
    PyCFunction locked_fn;/* the C function of type(lock).locked (a METH_NOARGS method), or
                           * NULL: then the bound method is called */
    PyObject *events;     /* _events: the window's full events (list), or None */
    Py_ssize_t unsent_events;  /* _unsent_events: events held in packed, unsent datagrams */
    Py_ssize_t capacity;  /* _capacity: events_max_pending */
    Py_ssize_t dropped;   /* _dropped: full events lost since the last datagram */
    PyObject *retry_at;   /* _retry_at: time of the flush thread's next retry, or None */
    PyObject *thread;     /* _thread: this process's flush thread, or None */
    PyObject *stats;      /* stats: {"sent", "send_failures", "dropped"} (dict) */
    PyObject *start;      /* _start: time of the window's first counted evaluation, or None */
    PyObject *cc_summary; /* the summary dict the counter cache is for (strong), or NULL */
    cc_slot_t *cc;        /* CC_SLOTS slots, 64-byte aligned in cc_mem, or NULL until used */
    PyObject **cc_counter;/* the counter list of each slot (strong, NULL for none; in cc_mem) */
    void *cc_mem;         /* the PyMem block holding cc, cc_counter and cc_dirty */
    uint16_t *cc_dirty;   /* indexes of the slots whose pending went 0 -> 1 since the last
                           * fold (CC_SLOTS of them at most; in cc_mem) */
    size_t cc_ndirty;     /* how many; CC_SLOTS + 1: overflowed, fold scans every slot */
    PyObject *cx_contexts;  /* the contexts dict the context cache is for (strong), or NULL */
    struct cx_slot *cx;   /* CX_SLOTS slots, 64-byte aligned inside cx_mem, or NULL */
    void *cx_mem;         /* the PyMem block holding cx (and cx_dirty) */
    uint16_t *cx_dirty;   /* indexes of the slots whose pending went 0 -> 1 since the last
                           * fold (CX_SLOTS of them at most; in cx_mem) */
    size_t cx_ndirty;     /* how many; CX_SLOTS + 1: overflowed, fold scans every slot */
} RecorderCore;

/*
 * The context cache: context object -> its window entry in the contexts dict
 * ``cx_contexts``, two-way set-associative on the context's address (as the counter
 * cache; a set is two adjacent 32-byte slots, one cache line), strong references.  Made
 * only from an entry found in that dict by the context's cached fully-qualified key, whose
 * shape (a list [context dict, first_ms, count (exact int), index, kinds, ...]) is checked
 * then; the Python code replaces an entry of a live window only in _put_back, which
 * empties the cache (_clear_caches), as does _new_window, and never changes an entry's
 * kinds.  A hit therefore needs nothing but its slot: the context's _fqk, the dict lookup
 * and the entry itself are not read (only an event reads the entry, for its JSON).
 * The uses counted through a slot are kept in it as a C integer (pending), not as a new
 * int in entry[2].  Invariant (as the counter cache's): every read of the window's
 * contexts from Python sees every use, because the pending uses are added to their entries
 * (cx_fold) whenever the Python code gets or sets ``_contexts`` or gets ``_last_entry``
 * (getsets: its only ways to an entry), and whenever a slot is dropped or the cache
 * emptied.  (Python code that adds to entry[2] meanwhile - _sight, a call of the last
 * context - adds to the same sum: the fold adds, it never overwrites.)
 */
#define CX_SLOTS 4096   /* a power of two: 128 KiB of slots, touched only where used */
_Static_assert(CX_SLOTS <= 65536, "cx_dirty holds slot indexes as uint16_t");
typedef struct cx_slot {
    PyObject *context;    /* NULL: empty slot */
    PyObject *entry;      /* its entry in cx_contexts */
    PyObject *kinds;      /* entry[4] (the context's kinds tuple), when the slot was made */
    Py_ssize_t pending;   /* uses not yet added to entry[2] (see cx_fold) */
} cx_slot_t;
_Static_assert(sizeof(cx_slot_t) * 2 <= 64 || sizeof(void *) != 8,
               "a set of the context cache fills one 64-byte cache line");

/* Add a slot's pending uses to its entry's count (int + int: C only; the old int is
 * dropped, no Python code runs).  Out of memory, they stay pending for the next fold. */
/*
 * Add @n to the int at @list[@i] (a pending count kept in C, folded into the Python object
 * the summary or the context entry holds).  Return 0, or -1 (error cleared) when the new int
 * cannot be made: the count then stays pending in its slot.
 */
static int list_add(PyObject *list, Py_ssize_t i, unsigned long long n)
{
    PyObject *add = PyLong_FromUnsignedLongLong(n);
    PyObject *sum = add != NULL ? PyNumber_Add(PyList_GET_ITEM(list, i), add) : NULL;
    Py_XDECREF(add);
    if (sum == NULL) {
        PyErr_Clear();
        return -1;
    }
    PyList_SetItem(list, i, sum);   /* steals sum */
    return 0;
}

static void cx_fold_slot(cx_slot_t *s)
{
    if (s->pending == 0)
        return;
    PyObject *entry = s->entry;
    /* cannot fail: checked when the slot was made, and the Python code never changes an
     * entry's shape; a broken invariant keeps the uses pending rather than crash */
    if (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) < 5
        || !PyLong_CheckExact(PyList_GET_ITEM(entry, 2)))
        return;
    if (list_add(entry, 2, (unsigned long long)s->pending) == 0)
        s->pending = 0;
}

/* Fold every slot's pending uses: the slots listed dirty since the last fold, or all
 * after an overflow. */
static void cx_fold(RecorderCore *self)
{
    if (self->cx == NULL)
        return;
    if (self->cx_ndirty > CX_SLOTS) {
        for (size_t i = 0; i < CX_SLOTS; i++)
            cx_fold_slot(&self->cx[i]);
    } else {
        for (size_t i = 0; i < self->cx_ndirty; i++)
            cx_fold_slot(&self->cx[self->cx_dirty[i]]);
    }
    self->cx_ndirty = 0;   /* (a slot a failed fold left pending: folded by cx_clear_slot) */
}

/* Count @uses through slot @s: pending, listed dirty on its first pending use. */
static void cx_count(RecorderCore *self, cx_slot_t *s, Py_ssize_t uses)
{
    if (s->pending == 0) {
        if (self->cx_ndirty < CX_SLOTS)
            self->cx_dirty[self->cx_ndirty++] = (uint16_t)(s - self->cx);
        else
            self->cx_ndirty = CX_SLOTS + 1;   /* listed more than once (slots reused) */
    }
    s->pending += uses;   /* at most 1 + MAX_PREREQS per call: cannot overflow */
}

static void cx_clear_slot(cx_slot_t *s)
{
    cx_fold_slot(s);
    s->pending = 0;   /* (only a failed fold leaves some: out of memory, lost) */
    Py_CLEAR(s->context);
    Py_CLEAR(s->entry);
    Py_CLEAR(s->kinds);
}

static void cx_clear(RecorderCore *self)
{
    if (self->cx != NULL)
        for (size_t i = 0; i < CX_SLOTS; i++)
            if (self->cx[i].context != NULL)
                cx_clear_slot(&self->cx[i]);   /* folds its pending uses */
    self->cx_ndirty = 0;
    Py_CLEAR(self->cx_contexts);
}

/*
 * set_index() - the first slot of the set of a cache of @slots slots (a power of two, two
 * per set) for the mixed addresses @h: Fibonacci hashing, the top bits of a 64-bit product
 * (objects of one size class lie at a fixed stride, so the low bits of an address, or of
 * a product, leave many sets unused).
 */
static inline size_t set_index(uint64_t h, unsigned log2_slots)
{
    return (size_t)((h * 0x9E3779B97F4A7C15u) >> (64 - (log2_slots - 1))) * 2;
}

#define CX_LOG2 12   /* log2(CX_SLOTS) */
_Static_assert((1u << CX_LOG2) == CX_SLOTS, "CX_LOG2 is log2(CX_SLOTS)");

/* The first slot of the set for @context; the second is the next one. */
static size_t cx_index(PyObject *context)
{
    return set_index((uint64_t)(uintptr_t)context >> 4, CX_LOG2);
}

/* The slot of @context for the live contexts dict, or NULL. */
static cx_slot_t *cx_get(RecorderCore *self, PyObject *context)
{
    if (self->cx == NULL || self->cx_contexts != self->contexts)
        return NULL;
    cx_slot_t *s = &self->cx[cx_index(context)];
    if (s[0].context == context)
        return &s[0];
    return s[1].context == context ? &s[1] : NULL;
}

/*
 * cache_bind() - tie a cache (counter or context) to the window's live dict @live before an
 * entry is put in it.  *@bound is the dict the cache is for (strong reference, or NULL);
 * @clear empties the cache and clears *@bound.  Another window: emptying the cache must not
 * free the old window (its values may be any object of the caller's, whose finalizer would
 * run Python code here), so it is only emptied while someone else still holds that dict;
 * otherwise the cache stays off until the Python code empties it (_new_window:
 * _clear_caches).  Return: 1 the cache is for @live, 0 leave it alone.
 */
static int cache_bind(RecorderCore *self, PyObject **bound, PyObject *live,
                      void (*clear)(RecorderCore *))
{
    if (*bound == live)
        return 1;
    if (*bound != NULL && Py_REFCNT(*bound) <= 1)
        return 0;
    clear(self);
    Py_INCREF(live);
    *bound = live;
    return 1;
}

/* Remember @entry, found in the live contexts dict for @context, if it has the shape the
 * slots count in (see the cache's comment).  Return: its slot, or NULL (not cached). */
static cx_slot_t *cx_put(RecorderCore *self, PyObject *context, PyObject *entry)
{
    if (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) < 5
        || !PyLong_CheckExact(PyList_GET_ITEM(entry, 2))
        || !PyTuple_CheckExact(PyList_GET_ITEM(entry, 4)))
        return NULL;
    if (!cache_bind(self, &self->cx_contexts, self->contexts, cx_clear))
        return NULL;
    if (self->cx == NULL) {
        /* the slots aligned to 64 bytes (a set per cache line), then the dirty list */
        size_t bytes = CX_SLOTS * sizeof(cx_slot_t);
        self->cx_mem = PyMem_Calloc(1, bytes + 63 + CX_SLOTS * sizeof(uint16_t));
        if (self->cx_mem == NULL)
            return NULL;
        uintptr_t at = ((uintptr_t)self->cx_mem + 63) & ~(uintptr_t)63;
        self->cx = (cx_slot_t *)at;
        self->cx_dirty = (uint16_t *)(at + bytes);
        self->cx_ndirty = 0;
    }
    cx_slot_t *s = &self->cx[cx_index(context)];
    /* The slot evicted (the second way's, whose place the first way's takes): its entry is
     * in the live dict; its context (possibly an equal twin of the entry's own) must not be
     * freed here, where a finalizer of one of its attributes would run Python code: only
     * evicted while someone else holds it; else the first way's slot is the one replaced,
     * under the same rule, or nothing is cached.  Either way the pending uses of a slot
     * dropped or moved are folded first (a slot the dirty list still names then folds
     * nothing more). */
    if (s[0].context != NULL) {
        if (s[1].context == NULL || Py_REFCNT(s[1].context) > 1) {
            cx_fold_slot(&s[0]);   /* (the dirty list names the first way's index) */
            cx_clear_slot(&s[1]);
            s[1] = s[0];           /* the references move */
            memset(&s[0], 0, sizeof s[0]);
        } else if (Py_REFCNT(s[0].context) <= 1) {
            return NULL;
        } else {
            cx_clear_slot(&s[0]);
        }
    }
    s[0].context = Py_NewRef(context);
    s[0].entry = Py_NewRef(entry);
    s[0].kinds = Py_NewRef(PyList_GET_ITEM(entry, 4));
    s[0].pending = 0;
    return &s[0];
}

/* 1 when @counter has the shape the C path counts in: [count (exact int), value].  The
 * Python code may write a counter list, so it is checked wherever one is counted. */
static int counter_ok(PyObject *counter)
{
    return PyList_CheckExact(counter) && PyList_GET_SIZE(counter) == 2
           && PyLong_CheckExact(PyList_GET_ITEM(counter, 0));
}

/* Add slot @i's pending counts to its counter list (int + int: C only; the old int is
 * dropped, no Python code runs).  Out of memory, they stay pending for the next fold. */
static void cc_fold_slot(RecorderCore *self, size_t i)
{
    cc_slot_t *c = &self->cc[i];
    if (c->pending == 0)
        return;
    PyObject *counter = self->cc_counter[i];
    if (!counter_ok(counter))
        return;   /* cannot happen: checked when the slot was made, and the Python code
                   * never changes a counter's shape; kept pending rather than crash */
    if (list_add(counter, 0, c->pending) == 0)
        c->pending = 0;
}

/* Fold every slot's pending counts (see the cache's comment): the slots listed dirty since
 * the last fold (a few, between two reads of the summary), or all after an overflow. */
static void cc_fold(RecorderCore *self)
{
    if (self->cc == NULL)
        return;
    if (self->cc_ndirty > CC_SLOTS) {
        for (size_t i = 0; i < CC_SLOTS; i++)
            cc_fold_slot(self, i);
    } else {
        for (size_t i = 0; i < self->cc_ndirty; i++)
            cc_fold_slot(self, self->cc_dirty[i]);
    }
    self->cc_ndirty = 0;   /* (a slot a failed fold left pending: folded by cc_clear_slot) */
}

/* Count one through slot @c: pending, listed dirty on its first pending count. */
static void cc_count(RecorderCore *self, cc_slot_t *c)
{
    size_t i = (size_t)(c - self->cc);
    if (c->pending == 0) {
        if (self->cc_ndirty < CC_SLOTS)
            self->cc_dirty[self->cc_ndirty++] = (uint16_t)i;
        else
            self->cc_ndirty = CC_SLOTS + 1;   /* listed more than once (slots reused) */
    }
    if (++c->pending == UINT32_MAX)
        cc_fold_slot(self, i);   /* (still listed: folding it again adds nothing) */
}

static void cc_clear_slot(RecorderCore *self, size_t i)
{
    cc_slot_t *c = &self->cc[i];
    cc_fold_slot(self, i);
    c->pending = 0;   /* (only a failed fold leaves some: out of memory, lost) */
    Py_CLEAR(c->key);
    Py_CLEAR(c->kinds);
    Py_CLEAR(c->version);
    Py_CLEAR(self->cc_counter[i]);
}

/* Empty the counter cache (and forget its summary dict). */
static void cc_clear(RecorderCore *self)
{
    if (self->cc != NULL)
        for (size_t i = 0; i < CC_SLOTS; i++)
            if (self->cc[i].key != NULL)
                cc_clear_slot(self, i);   /* folds its pending counts */
    self->cc_ndirty = 0;
    Py_CLEAR(self->cc_summary);
}

/* The slot value of @variation: -1 for None, its value for an exact int in [0, INT32_MAX),
 * -2 for anything else (not cached). */
static int32_t cc_variation(PyObject *variation)
{
    if (variation == Py_None)
        return -1;
    if (!PyLong_CheckExact(variation))
        return -2;
    int overflow = 0;
    long v = PyLong_AsLongAndOverflow(variation, &overflow);   /* exact int: cannot fail */
    return overflow || v < 0 || v >= INT32_MAX ? -2 : (int32_t)v;
}

#define CC_LOG2 13   /* log2(CC_SLOTS) */
_Static_assert((1u << CC_LOG2) == CC_SLOTS, "CC_LOG2 is log2(CC_SLOTS)");

/* The first slot of the set for (key, variation, kinds); the second is the next one.  The
 * kinds are part of it: a flag evaluated for contexts of two kinds has two counters in two
 * sets, not two entries competing for one. */
static size_t cc_index(PyObject *key, int32_t variation, PyObject *kinds)
{
    uint64_t h = ((uint64_t)(uintptr_t)key >> 4)
                 ^ ((uint64_t)(uintptr_t)kinds >> 4) * 0xC2B2AE3D27D4EB4Fu
                 ^ (uint64_t)(uint32_t)variation << 40;
    return set_index(h, CC_LOG2);
}

/* The slot of these objects for the live summary, or NULL. */
static inline cc_slot_t *cc_get(RecorderCore *self, PyObject *key, int32_t variation,
                         PyObject *kinds, PyObject *version)
{
    if (self->cc == NULL || self->cc_summary != self->summary || variation < -1)
        return NULL;
    cc_slot_t *c = &self->cc[cc_index(key, variation, kinds)];
    if (c->key != key || c->variation != variation || c->kinds != kinds || c->version != version) {
        c++;   /* the set's second way */
        if (c->key != key || c->variation != variation || c->kinds != kinds
            || c->version != version)
            return NULL;
    }
    return c;
}

/* Remember a counter find_counter() found for these objects (see the cache's comment).
 * Failing to allocate the table only leaves the cache off.  Return: its slot, or NULL. */
static cc_slot_t *cc_put(RecorderCore *self, PyObject *key, int32_t variation,
                         PyObject *kinds, PyObject *version, PyObject *counter)
{
    if (variation < -1 || !counter_ok(counter)
        || !cache_bind(self, &self->cc_summary, self->summary, cc_clear))
        return NULL;
    if (self->cc == NULL) {
        /* the slots aligned to 64 bytes (a set per cache line), the counters, the dirty
         * list */
        size_t bytes = CC_SLOTS * sizeof(cc_slot_t), cbytes = CC_SLOTS * sizeof(PyObject *);
        self->cc_mem = PyMem_Calloc(1, bytes + 63 + cbytes + CC_SLOTS * sizeof(uint16_t));
        if (self->cc_mem == NULL)
            return NULL;
        uintptr_t at = ((uintptr_t)self->cc_mem + 63) & ~(uintptr_t)63;
        self->cc = (cc_slot_t *)at;
        self->cc_counter = (PyObject **)(at + bytes);
        self->cc_dirty = (uint16_t *)(at + bytes + cbytes);
        self->cc_ndirty = 0;
    }
    size_t i = cc_index(key, variation, kinds);
    cc_slot_t *c = &self->cc[i];
    if (c->key != NULL) {
        /* the first way's entry moves to the second (the references move with it), its
         * pending counts folded first: the dirty list names the first way's index, so
         * counts moved to the second would be missed by the next fold (until the slot is
         * dropped) */
        cc_fold_slot(self, i);
        cc_clear_slot(self, i + 1);
        c[1] = c[0];
        self->cc_counter[i + 1] = self->cc_counter[i];
        memset(c, 0, sizeof(*c));
        self->cc_counter[i] = NULL;
    }
    c->key = Py_NewRef(key);
    c->kinds = Py_NewRef(kinds);
    c->version = Py_NewRef(version);
    c->variation = variation;
    c->pending = 0;
    self->cc_counter[i] = Py_NewRef(counter);
    return c;
}

static PyTypeObject RecorderCoreType;   /* defined below */
static PyObject *s_record_py; /* "_record_evaluation_py" */
static PyObject *s_checks_due;/* "_checks_due" */
static PyObject *s_locked;    /* "locked" */
static PyObject *s_fqk;       /* "_fqk" */
static PyObject *s_ev;        /* "_ev" */
/* the feature event's keys and kind, interned once */
static PyObject *s_kind, *s_feature, *s_creationDate, *s_key, *s_value, *s_default,
                *s_version, *s_variation, *s_reason, *s_context, *s_prereqOf, *s_debugUntil;
/* The feature event's keys in the Python path's order, values None: [variation present |
 * reason present << 1] (feature_event() copies one; never changed after module init). */
static PyObject *s_event_tmpl[4];

static int core_traverse(RecorderCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->last_ctx);
    Py_VISIT(self->last_entry);
    Py_VISIT(self->summary);
    Py_VISIT(self->contexts);
    Py_VISIT(self->ctx_type);
    Py_VISIT(self->lock);
    Py_VISIT(self->locked);
    Py_VISIT(self->events);
    Py_VISIT(self->retry_at);
    Py_VISIT(self->thread);
    Py_VISIT(self->stats);
    Py_VISIT(self->start);
    Py_VISIT(self->cc_summary);
    Py_VISIT(self->cx_contexts);
    if (self->cx != NULL)
        for (size_t i = 0; i < CX_SLOTS; i++) {
            Py_VISIT(self->cx[i].context);
            Py_VISIT(self->cx[i].entry);
            Py_VISIT(self->cx[i].kinds);
        }
    if (self->cc != NULL)
        for (size_t i = 0; i < CC_SLOTS; i++) {
            cc_slot_t *c = &self->cc[i];
            Py_VISIT(c->key);
            Py_VISIT(c->kinds);
            Py_VISIT(c->version);
            Py_VISIT(self->cc_counter[i]);
        }
    return 0;
}

static int core_clear(RecorderCore *self)
{
    Py_CLEAR(self->last_ctx);
    Py_CLEAR(self->last_entry);
    Py_CLEAR(self->summary);
    Py_CLEAR(self->contexts);
    Py_CLEAR(self->ctx_type);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->locked);
    self->locked_fn = NULL;
    Py_CLEAR(self->events);
    Py_CLEAR(self->retry_at);
    Py_CLEAR(self->thread);
    Py_CLEAR(self->stats);
    Py_CLEAR(self->start);
    cc_clear(self);
    cx_clear(self);
    return 0;
}

static void core_dealloc(RecorderCore *self)
{
    PyObject_GC_UnTrack(self);
    core_clear(self);
    PyMem_Free(self->cc_mem);
    self->cc_mem = NULL;
    self->cc = NULL;
    self->cc_counter = NULL;
    self->cc_dirty = NULL;
    PyMem_Free(self->cx_mem);
    self->cx_mem = NULL;
    self->cx = NULL;
    self->cx_dirty = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *core_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    RecorderCore *self = (RecorderCore *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    /* deadline 0: every call takes the Python path until __init__ has run. */
    self->deadline = 0.0;
    self->end = 0.0;
    self->last_ctx = Py_NewRef(Py_None);
    self->last_entry = Py_NewRef(Py_None);
    self->summary = Py_NewRef(Py_None);
    self->contexts = Py_NewRef(Py_None);
    self->ctx_type = Py_NewRef(Py_None);
    self->lock = Py_NewRef(Py_None);
    self->locked = NULL;
    self->locked_fn = NULL;
    self->events = Py_NewRef(Py_None);
    self->unsent_events = 0;
    self->capacity = 0;   /* no room: feature events take the Python path until __init__ */
    self->dropped = 0;
    self->retry_at = Py_NewRef(Py_None);
    self->thread = Py_NewRef(Py_None);
    self->stats = Py_NewRef(Py_None);
    self->start = Py_NewRef(Py_None);
    self->cc_summary = NULL;
    self->cc = NULL;
    self->cc_counter = NULL;
    self->cc_mem = NULL;
    self->cc_dirty = NULL;
    self->cc_ndirty = 0;
    self->cx_contexts = NULL;
    self->cx = NULL;
    self->cx_mem = NULL;
    self->cx_dirty = NULL;
    self->cx_ndirty = 0;
    return (PyObject *)self;
}

/*
 * The same clock as time.time(): CLOCK_REALTIME, as a double of seconds.  @coarse: the
 * kernel's reading of it at its last tick (CLOCK_REALTIME_COARSE: a memory read, ~5 ns
 * instead of ~25 ns here; up to one tick, 1-4 ms, behind), for what every call reads and a
 * few ms do not change: the deadline check (PID_CHECK_INTERVAL) and the window's end time.
 * Event creation dates, a window's start and a context's first sighting read the exact clock.
 */
static double now_seconds(int coarse)
{
    struct timespec ts;
#ifdef CLOCK_REALTIME_COARSE
    clock_gettime(coarse ? CLOCK_REALTIME_COARSE : CLOCK_REALTIME, &ts);
#else
    (void)coarse;
    clock_gettime(CLOCK_REALTIME, &ts);
#endif
    return (double)((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec) / 1e9;
}

/* Pass the call unchanged to self._record_evaluation_py. */
static PyObject *slow_path(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    PyObject *stack[12];
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs + nkw + 1 > (Py_ssize_t)(sizeof stack / sizeof stack[0])) {
        PyErr_SetString(PyExc_TypeError, "record_evaluation: too many arguments");
        return NULL;
    }
    stack[0] = self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++)
        stack[i + 1] = args[i];
    return PyObject_VectorcallMethod(s_record_py, stack, (size_t)(nargs + 1), kwnames);
}

#define MAX_PREREQS 16   /* more prerequisites than this in one call: Python path */

/* Whether the C path may create containers (see core_common(): needs PyGC_Disable). */
#if PY_VERSION_HEX >= 0x030A0000
#define CAN_CREATE 1
#else
#define CAN_CREATE 0
#endif

static PyObject *s_one;      /* the int 1 */
static PyObject *s_bits[8];  /* the ints 0..7 (info bits) */

/* Info bits (docs/internals.md): 1 trackEvents, 2 experiment (both: a feature event),
 * 4 excludeFromSummaries (not counted).  No other bit is ever set by the evaluator. */
#define INFO_FEATURE 3
#define INFO_EXCLUDED 4

/* The bits of an info tuple (version, bits, debugEventsUntilDate, samplingRatio) that this
 * path can record: 0..7 with no debugEventsUntilDate (a debug event, and its clock
 * comparison, is the Python path's).  Return the bits, or -1 for "take the Python path". */
static int info_bits(PyObject *info)
{
    if (!PyTuple_CheckExact(info) || PyTuple_GET_SIZE(info) != 4
        || PyTuple_GET_ITEM(info, 2) != Py_None)
        return -1;
    PyObject *bits = PyTuple_GET_ITEM(info, 1);
    /* the evaluator's bits are ints made by PyLong_FromLong(0..7), which CPython shares:
     * found by address first (s_bits), else read */
    for (int b = 0; b < 8; b++)
        if (bits == s_bits[b])
            return b;
    if (!PyLong_CheckExact(bits))
        return -1;
    int overflow = 0;
    long b = PyLong_AsLongAndOverflow(bits, &overflow);   /* cannot fail on an exact int */
    return overflow || b < 0 || b > 7 ? -1 : (int)b;
}

/* 1 when samplingRatio keeps every event without drawing a random number (the Python
 * path's _sample(): None, or exactly the int 1); 0: the Python path samples. */
static int keeps_all(PyObject *sampling)
{
    if (sampling == Py_None)
        return 1;
    if (!PyLong_CheckExact(sampling))
        return 0;
    int overflow = 0;
    return PyLong_AsLongAndOverflow(sampling, &overflow) == 1 && !overflow;
}

/* What the summary needs for one (flag, variation) count: find_counter()'s plan. */
typedef struct {
    PyObject *counter;    /* FOUND: the [count, value] list (borrowed from the summary), or
                           * NULL for a counter cache hit (its slot is counted) */
    PyObject *key, *variation, *version;   /* FOUND: what the counter is for (borrowed) */
    int32_t var;          /* FOUND: cc_variation(variation) */
    cc_slot_t *slot;      /* FOUND: its counter cache slot when planned, or NULL */
    PyObject *flag;       /* NEW_COUNTER, or FOUND with add_kinds: the flag's list (borrowed) */
    int how;              /* FOUND, NEW_COUNTER (first of this variation), NEW_FLAG */
    int add_kinds;        /* the context's kinds go into the flag's kinds set first */
} plan_t;

enum { FOUND = 1, NEW_COUNTER = 2, NEW_FLAG = 3 };

/*
 * find_counter() - how to count (key, variation) in the summary for a context of @kinds,
 * at @version, as _record_evaluation_py/_count do: the existing counter, a new counter in
 * an existing flag (the first of this variation), or a new flag (the first count of the
 * flag in this window); the flag's kinds set gets the context's kinds when it lacks one.
 * @kinds: the context's kinds tuple (interned by recorder._kinds_of; exact str members).
 * Return: 1 with *p set; 0 not in the expected shape, or counted under another version in
 * this window ((variation, version) keys: the Python path); -1 a Python exception is set.
 */
static int find_counter(PyObject *summary, PyObject *key, PyObject *kinds, PyObject *version,
                        PyObject *variation, plan_t *p)
{
    p->counter = p->flag = NULL;
    p->add_kinds = 0;
    if (!PyUnicode_CheckExact(key) || (variation != Py_None && !PyLong_CheckExact(variation))
        || !PyTuple_CheckExact(kinds))
        return 0;
    PyObject *flag = PyDict_GetItemWithError(summary, key);   /* borrowed */
    if (flag == NULL) {
        if (PyErr_Occurred())
            return -1;
        /* first in this window: [default, set(kinds), {variation: [1, value]}, kinds,
         * version], made by the caller; set(kinds) hashes exact str members only */
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kinds); i++)
            if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(kinds, i)))
                return 0;
        p->how = NEW_FLAG;
        return 1;
    }
    /* flag = [default, kinds set, counters, last kinds, version].  The kinds set must hold
     * every kind of this context: true when the context has the kinds object the flag was
     * last counted with (kinds tuples are interned), else checked one by one (str members:
     * hashing and comparison are C) and the missing ones added by the caller. */
    if (!PyList_CheckExact(flag) || PyList_GET_SIZE(flag) != 5)
        return 0;
    p->flag = flag;
    if (PyList_GET_ITEM(flag, 3) != kinds) {
        PyObject *set = PyList_GET_ITEM(flag, 1);
        if (!PySet_CheckExact(set))
            return 0;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kinds); i++) {
            PyObject *kind = PyTuple_GET_ITEM(kinds, i);
            if (!PyUnicode_CheckExact(kind))
                return 0;
            int in = PySet_Contains(set, kind);
            if (in < 0)
                return -1;
            if (in == 0)
                p->add_kinds = 1;
        }
    }
    PyObject *fversion = PyList_GET_ITEM(flag, 4);
    if (version != fversion) {
        /* Equal exact ints are the same version; anything else (a new version in this
         * window, None against an int) is keyed by (variation, version): Python path. */
        if (!PyLong_CheckExact(version) || !PyLong_CheckExact(fversion))
            return 0;
        int eq = PyObject_RichCompareBool(version, fversion, Py_EQ);   /* C only for ints */
        if (eq != 1)
            return eq;
    }
    PyObject *counters = PyList_GET_ITEM(flag, 2);
    if (!PyDict_CheckExact(counters))
        return 0;
    PyObject *counter = PyDict_GetItemWithError(counters, variation);  /* borrowed */
    if (counter == NULL) {
        if (PyErr_Occurred())
            return -1;
        p->how = NEW_COUNTER;                                 /* first of this variation */
        return 1;
    }
    if (!counter_ok(counter))
        return 0;
    p->counter = counter;
    p->how = FOUND;
    return 1;
}

/* find_counter() through the counter cache: a hit is a FOUND plan without a flag (nothing
 * else to update); a FOUND result of find_counter() is remembered. */
static int plan_count(RecorderCore *self, PyObject *summary, PyObject *key, PyObject *kinds,
                      PyObject *version, PyObject *variation, int32_t var, plan_t *p)
{
    p->key = key;
    p->variation = variation;
    p->version = version;
    p->var = var;
    if ((p->slot = cc_get(self, key, var, kinds, version)) != NULL) {
        /* a hit: neither the summary nor the counter is read */
        p->counter = NULL;
        p->flag = NULL;
        p->add_kinds = 0;
        p->how = FOUND;
        return 1;
    }
    int r = find_counter(summary, key, kinds, version, variation, p);
    if (r == 1 && p->how == FOUND && !p->add_kinds)
        p->slot = cc_put(self, key, var, kinds, version, p->counter);
    return r;
}

/*
 * apply_plan() - count one evaluation as find_counter() planned it (see there).
 * @dflt: the flag's default when the flag is new; @value: the counter's value when new.
 * Only a MemoryError can fail half-way (as in the Python path).  Return: 0, or -1.
 */
static int apply_plan(RecorderCore *self, PyObject *summary, PyObject *key, PyObject *kinds,
                      PyObject *version, PyObject *variation, PyObject *dflt, PyObject *value,
                      const plan_t *p, double now);

/* list[i] += n for an exact int list[i] (checked by the caller); 0, or -1 on MemoryError. */
static int add_to(PyObject *list, Py_ssize_t i, PyObject *n)
{
    PyObject *sum = PyNumber_Add(PyList_GET_ITEM(list, i), n);   /* int + int: C only */
    if (sum == NULL)
        return -1;
    PyList_SetItem(list, i, sum);   /* steals sum, drops the old int (no Python code) */
    return 0;
}

static int apply_plan(RecorderCore *self, PyObject *summary, PyObject *key, PyObject *kinds,
                      PyObject *version, PyObject *variation, PyObject *dflt, PyObject *value,
                      const plan_t *p, double now)
{
    if (p->how == NEW_FLAG) {
        /* [default, set(kinds), {variation: [1, value]}, kinds, version], as the Python
         * path; the window's first counted evaluation also sets _start */
        PyObject *counter = PyList_New(2), *counters = PyDict_New(), *set = PySet_New(kinds);
        PyObject *flag = PyList_New(5);
        int bad = counter == NULL || counters == NULL || set == NULL || flag == NULL;
        if (!bad) {
            PyList_SET_ITEM(counter, 0, Py_NewRef(s_one));
            PyList_SET_ITEM(counter, 1, Py_NewRef(value));
            bad = PyDict_SetItem(counters, variation, counter) < 0;
        }
        if (!bad) {
            PyList_SET_ITEM(flag, 0, Py_NewRef(dflt));
            PyList_SET_ITEM(flag, 1, set);        /* the list takes the references */
            PyList_SET_ITEM(flag, 2, counters);
            PyList_SET_ITEM(flag, 3, Py_NewRef(kinds));
            PyList_SET_ITEM(flag, 4, Py_NewRef(version));
            set = counters = NULL;
            bad = PyDict_SetItem(summary, key, flag) < 0;
        }
        Py_XDECREF(counter);
        Py_XDECREF(counters);
        Py_XDECREF(set);
        Py_XDECREF(flag);
        if (bad)
            return -1;
        if (self->start == Py_None) {
            PyObject *t = PyFloat_FromDouble(now);
            if (t == NULL)
                return -1;
            Py_SETREF(self->start, t);
        }
        return 0;
    }
    /* an existing flag: first its kinds (flag[3] = kinds; flag[1].update(kinds)) */
    if (p->flag != NULL && PyList_GET_ITEM(p->flag, 3) != kinds) {
        PyObject *set = PyList_GET_ITEM(p->flag, 1);
        for (Py_ssize_t i = 0; p->add_kinds && i < PyTuple_GET_SIZE(kinds); i++)
            if (PySet_Add(set, PyTuple_GET_ITEM(kinds, i)) < 0)   /* exact str: C only */
                return -1;
        Py_INCREF(kinds);
        PyList_SetItem(p->flag, 3, kinds);   /* steals; drops the old tuple (C only) */
    }
    if (p->how == FOUND) {
        /* through the counter's cache slot when it has one (looked up again: another plan
         * of this call may have moved it to its set's other way, or dropped it) */
        cc_slot_t *c = p->slot;
        if (c == NULL || c->key != p->key || c->variation != p->var || c->kinds != kinds
            || c->version != p->version)
            c = cc_get(self, p->key, p->var, kinds, p->version);
        if (c != NULL) {
            cc_count(self, c);
            return 0;
        }
        PyObject *counter = p->counter;
        if (counter == NULL) {
            /* a hit whose slot a later plan of this call dropped (cc_put): no Python code
             * ran and the summary only grew since, so find_counter() finds the same
             * counter (checked: a broken invariant loses the count, never crashes) */
            plan_t q;
            int r = find_counter(summary, p->key, kinds, p->version, p->variation, &q);
            if (r < 0)
                return -1;
            if (r == 0 || q.how != FOUND)
                return 0;
            counter = q.counter;
        }
        return add_to(counter, 0, s_one);
    }
    PyObject *counter = PyList_New(2);   /* NEW_COUNTER: counters[variation] = [1, value] */
    if (counter == NULL)
        return -1;
    PyList_SET_ITEM(counter, 0, Py_NewRef(s_one));
    PyList_SET_ITEM(counter, 1, Py_NewRef(value));
    int r = PyDict_SetItem(PyList_GET_ITEM(p->flag, 2), variation, counter);
    Py_DECREF(counter);
    return r;
}

/*
 * feature_event() - the feature event _Recorder._full() builds for a call's own flag (not a
 * prerequisite, no debug event): the same keys in the same order, the same objects, so the
 * packed bytes are the same.  @now: the call's time (s).  Return: new dict, or NULL with an
 * exception set.
 */
static PyObject *feature_event(PyObject *key, PyObject *value, PyObject *dflt, PyObject *version,
                               PyObject *variation, PyObject *reason, PyObject *ctx_dict,
                               double now)
{
    /* A copy of the template with these keys in this order (the keys and their order
     * copied at once: one allocation, no insertion), whose values are then replaced. */
    PyObject *ev = PyDict_Copy(s_event_tmpl[(variation != Py_None) | (reason != NULL) << 1]);
    if (ev == NULL)
        return NULL;
    /* int(now * 1000) of a positive, finite time: truncation, as int() */
    PyObject *ms = PyLong_FromLongLong((long long)(now * 1000.0));
    int bad = ms == NULL
              || PyDict_SetItem(ev, s_kind, s_feature) < 0
              || PyDict_SetItem(ev, s_creationDate, ms) < 0
              || PyDict_SetItem(ev, s_key, key) < 0
              || PyDict_SetItem(ev, s_value, value) < 0
              || PyDict_SetItem(ev, s_default, dflt) < 0
              || PyDict_SetItem(ev, s_version, version) < 0
              || (variation != Py_None && PyDict_SetItem(ev, s_variation, variation) < 0)
              || (reason != NULL && PyDict_SetItem(ev, s_reason, reason) < 0)
              || PyDict_SetItem(ev, s_context, ctx_dict) < 0;
    Py_XDECREF(ms);
    if (bad)
        Py_CLEAR(ev);
    else
        /* Invariant: nothing but the window's events list refers to this dict (the
         * recorder's code only reads and copies it), so it is never part of a reference
         * cycle, and the collector need not see it.  Untracked, a window of 10,000 events
         * no longer makes the collector's oldest generation due, nor is walked by it. */
        PyObject_GC_UnTrack(ev);
    return ev;
}

/*
 * core_common() - the common case, as _record_evaluation_py computes it: the context's entry
 * gets one use for the evaluation and one per prerequisite with a flag; the flag's counter
 * and each prerequisite's counter get one evaluation (none for a flag excluded from
 * summaries); a flag that tracks events or is an experiment gets its feature event appended
 * to _events; _last_ctx/_last_entry and _end are set.
 * @key, @context, @variation (int or None), @info: as in the EvalTuple.
 * @value: the EvalTuple's value (ignored when @variation is None: the event holds @dflt).
 * @dflt: the caller's default.
 * @reason: the evaluation's reason dict, or None/NULL when the caller did not compute it
 *          (then an event that needs it takes the Python path).
 * @with_reason: 1 variation_detail, 0 variation, -1 unknown (an event takes the Python path).
 * @prereqs: exact tuple or list of prerequisite event tuples, or NULL for none.
 * @now: the time of the call (already checked against _deadline by the caller).
 *
 * A feature event is recorded here only when the Python path would keep exactly one event
 * and not flush: no debug event, no sampling draw, the context's own dict in its entry, room
 * for the event with the buffer still not full after it (the call that fills the buffer, or
 * finds it full, takes the Python path, which drops, counts and flushes), and no
 * prerequisite that needs a full event.
 * Every check comes before the first change, so a call either does all of this or leaves
 * the state unchanged for the Python path (only a MemoryError can stop it half-way, and the
 * Python path has the same property).  Runs no Python code (see the header comment).
 * Return: 1 counted, 0 take the Python path (nothing changed), -1 exception set.
 */
static int core_common_nogc(RecorderCore *self, PyObject *key, PyObject *context,
                            PyObject *variation, int32_t var, PyObject *value, PyObject *dflt,
                            PyObject *reason, int with_reason, PyObject *info,
                            PyObject *prereqs, double now)
{
    Py_ssize_t np = 0;
    PyObject **pitems = NULL;
    if (prereqs != NULL) {
        if (!PyTuple_CheckExact(prereqs) && !PyList_CheckExact(prereqs))
            return 0;
        np = PySequence_Fast_GET_SIZE(prereqs);
        pitems = PySequence_Fast_ITEMS(prereqs);
    }
    /* An existing flag without a debug event; at most MAX_PREREQS prerequisites. */
    int bits = info_bits(info);
    if (bits < 0 || np > MAX_PREREQS)
        return 0;
    int event = (bits & INFO_FEATURE) != 0;
    if (event && !CAN_CREATE)
        return 0;
    PyObject *stat_key = NULL, *stat_val = NULL;   /* the drop case: stats["dropped"] */
    /* the value counted and put in the event: as the Python path, the default when there
     * is no variation */
    PyObject *cvalue = variation == Py_None || value == NULL ? dflt : value;
    if (event) {
        /* as _full(): reason when variation_detail or an experiment, and not None */
        int want_reason = with_reason == 1 || (bits & 2);
        if (with_reason < 0 || !keeps_all(PyTuple_GET_ITEM(info, 3)) || dflt == NULL
            || (want_reason && reason == NULL) || !PyList_CheckExact(self->events))
            return 0;
        Py_ssize_t held = PyList_GET_SIZE(self->events) + self->unsent_events;
        if (held + 1 >= self->capacity) {
            /* The buffer is full or this event fills it.  The Python path then drops the
             * event (_append) and calls _flush_full(), which does nothing while a failed
             * send waits for the flush thread's retry (_retry_at set, thread started): in
             * that case only, the drop is counted here (_dropped, stats["dropped"]).  The
             * event that fills the buffer, or a full buffer with no retry pending, is the
             * Python path's (it flushes from the calling thread). */
            if (held < self->capacity || self->retry_at == Py_None || self->thread == Py_None
                || !PyDict_CheckExact(self->stats) || self->dropped == PY_SSIZE_T_MAX)
                return 0;
            Py_ssize_t pos = 0;
            PyObject *k, *v;
            /* every key an exact str (then setting one compares str data, no __eq__ runs) */
            while (PyDict_Next(self->stats, &pos, &k, &v)) {
                if (!PyUnicode_CheckExact(k))
                    return 0;
                if (PyUnicode_CompareWithASCIIString(k, "dropped") == 0) {
                    stat_key = k;
                    stat_val = v;
                }
            }
            if (stat_val == NULL || !PyLong_CheckExact(stat_val))
                return 0;
            event = 0;   /* counted, not kept */
        }
        if (!want_reason || reason == Py_None)
            reason = NULL;   /* not in the event */
    }
    /* The context's window entry: its context cache slot (which also has its kinds; the
     * entry itself is not read), the last one used, or found by its fully-qualified key.
     * That key is read only from a shmflags Context whose cached ``_fqk`` slot is set (a
     * slot read runs no Python code); a context not yet seen in this window, or any other
     * object, takes the Python path, which creates the entry and fills the cache.  (The
     * last context's entry may be one beyond the contexts bound, not in the dict: never
     * cached, so that its next sighting after another context's is the Python path's.) */
    PyObject *entry = self->last_entry, *summary = self->summary;
    PyObject *new_fq = NULL, *kinds = NULL, *ctx_dict = NULL;   /* new_fq: a first sighting */
    cx_slot_t *slot = cx_get(self, context);
    if (slot != NULL) {
        entry = slot->entry;
    } else if (context != self->last_ctx) {
        if ((PyObject *)Py_TYPE(context) != self->ctx_type || !PyDict_CheckExact(self->contexts))
            return 0;
        PyObject *fq = PyObject_GetAttr(context, s_fqk);
        if (fq == NULL) {
            PyErr_Clear();
            return 0;
        }
        /* fq stays alive after this decref: the context's _fqk slot holds it, the caller
         * holds the context, and no Python code runs here to change either */
        Py_DECREF(fq);
        if (!PyUnicode_CheckExact(fq))
            return 0;
        entry = PyDict_GetItemWithError(self->contexts, fq);   /* borrowed, kept by the dict */
        if (entry == NULL) {
            if (PyErr_Occurred())
                return -1;
            if (!CAN_CREATE)
                return 0;
            /* The context's first sighting in this window (_sight).  Made here when the
             * context carries its JSON and kinds (_ev, cached by the Python path's first
             * sighting of it), the flush thread exists, and the window has room for it
             * without reaching the contexts bound (drop or flush: the Python path's). */
            PyObject *ev = PyObject_GetAttr(context, s_ev);   /* slot: no Python code */
            if (ev == NULL) {
                PyErr_Clear();
                return 0;
            }
            Py_DECREF(ev);   /* kept alive by the context's slot, as fq */
            if (!PyTuple_CheckExact(ev) || PyTuple_GET_SIZE(ev) != 2
                || !PyDict_CheckExact(PyTuple_GET_ITEM(ev, 0))
                || !PyTuple_CheckExact(PyTuple_GET_ITEM(ev, 1))
                || self->thread == Py_None
                || PyDict_GET_SIZE(self->contexts) + 1 >= self->capacity)
                return 0;
            new_fq = fq;
            ctx_dict = PyTuple_GET_ITEM(ev, 0);
            kinds = PyTuple_GET_ITEM(ev, 1);
        } else {
            slot = cx_put(self, context, entry);   /* NULL: not cached (its shape checked
                                                    * below) */
        }
    }
    if (new_fq == NULL) {
        /* entry = [context dict, first_ms, count, index, kinds, context]: the shape of a
         * slot's entry was checked when the slot was made (and the Python code never
         * changes it); another entry's is checked here */
        if (slot == NULL) {
            if (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) < 5
                || !PyLong_CheckExact(PyList_GET_ITEM(entry, 2)))
                return 0;
            kinds = PyList_GET_ITEM(entry, 4);
        } else {
            kinds = slot->kinds;
        }
        /* An event carries the entry's context dict when the entry is this very context;
         * a twin (same fully-qualified key, another object) carries its own, as _json_of():
         * taken here from its cached _ev slot (a slot read: no Python code), else the
         * Python path makes it.  (Only an event reads the entry of a slot; checked again,
         * cheaply, rather than trusting the invariant with memory safety.) */
        if (event && (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) < 5))
            return 0;
        if (event)
            ctx_dict = PyList_GET_ITEM(entry, 0);
        if (event && (PyList_GET_SIZE(entry) < 6 || PyList_GET_ITEM(entry, 5) != context)) {
            if ((PyObject *)Py_TYPE(context) != self->ctx_type)
                return 0;
            PyObject *ev = PyObject_GetAttr(context, s_ev);
            if (ev == NULL) {
                PyErr_Clear();
                return 0;
            }
            Py_DECREF(ev);   /* kept alive by the context's slot */
            if (!PyTuple_CheckExact(ev) || PyTuple_GET_SIZE(ev) != 2
                || !PyDict_CheckExact(PyTuple_GET_ITEM(ev, 0)))
                return 0;
            ctx_dict = PyTuple_GET_ITEM(ev, 0);
        }
    }
    if (!PyDict_CheckExact(summary))
        return 0;
    /* No thread is inside a section locked by the Python code (see the header comment). */
    if (self->locked == NULL)
        return 0;
    /* locked_fn was taken from this lock's own type when _lock was set, and _lock is only
     * replaced through that setter: the direct call is the bound call without its ~70
     * instructions of calling machinery */
    PyObject *held = self->locked_fn != NULL ? self->locked_fn(self->lock, NULL)
                                             : PyObject_CallNoArgs(self->locked);
    if (held == NULL)
        return -1;
    Py_DECREF(held);
    if (held != Py_False)
        return 0;
    /* counters: the flag's (unless excluded from summaries); then one per prerequisite
     * that has a flag (info not None) and is not excluded. */
    /* plans[0..np_plans): the prerequisites' counters (existing ones only: a prerequisite
     * first counted in this window is the Python path's, which also keeps its order of
     * insertion); main: the flag's own, which may be a new counter or a new flag. */
    plan_t plans[MAX_PREREQS], main;
    Py_ssize_t n = 0, uses = 1;
    int r, count_main = !(bits & INFO_EXCLUDED);
    PyObject *version = PyTuple_GET_ITEM(info, 0);
    for (Py_ssize_t i = 0; i < np; i++) {
        /* (prereq_of, key, value, variation, reason, info) */
        PyObject *p = pitems[i];
        if (!PyTuple_CheckExact(p) || PyTuple_GET_SIZE(p) != 6)
            return 0;
        PyObject *pinfo = PyTuple_GET_ITEM(p, 5);
        if (pinfo == Py_None)
            continue;                             /* unknown prerequisite: not counted */
        int pbits = info_bits(pinfo);
        if (pbits < 0 || (pbits & INFO_FEATURE))  /* its full event: Python path */
            return 0;
        uses++;                                   /* every prerequisite event is a use */
        if (pbits & INFO_EXCLUDED)
            continue;
        r = plan_count(self, summary, PyTuple_GET_ITEM(p, 1), kinds,
                       PyTuple_GET_ITEM(pinfo, 0), PyTuple_GET_ITEM(p, 3),
                       cc_variation(PyTuple_GET_ITEM(p, 3)), &plans[n]);
        if (r <= 0 || plans[n].how != FOUND)
            return r < 0 ? -1 : 0;
        n++;
    }
    if (count_main) {
        r = plan_count(self, summary, key, kinds, version, variation, var, &main);
        if (r <= 0)
            return r;
        if (main.how != FOUND && (cvalue == NULL || dflt == NULL || !CAN_CREATE))
            return 0;   /* (no default: not a caller of this module) */
    }
    /* All checked.  @now is the coarse clock (now_seconds()); a call that records more than
     * counts (an event's creation date, a window's start, a first sighting) reads the exact
     * one, which then also ends the window, as in the Python path. */
    if (event || new_fq != NULL
        || (count_main && main.how == NEW_FLAG && self->start == Py_None))
        now = now_seconds(0);
    /* The event (or its drop) first: its failure (no memory) leaves the window unchanged. */
    if (stat_key != NULL) {
        PyObject *sum = PyNumber_Add(stat_val, s_one);   /* int + int: C only */
        /* an existing key of a dict of exact str keys: replaced in place, no Python code */
        r = sum == NULL ? -1 : PyDict_SetItem(self->stats, stat_key, sum);
        Py_XDECREF(sum);
        if (r < 0)
            return -1;
        self->dropped++;
    }
    if (event) {
        PyObject *ev = feature_event(key, cvalue, dflt, version, variation, reason, ctx_dict,
                                     now);
        if (ev == NULL)
            return -1;
        r = PyList_Append(self->events, ev);
        Py_DECREF(ev);
        if (r < 0)
            return -1;
    }
    /* Count, the prerequisites first (as the Python path).  A counter listed twice (a
     * prerequisite reached twice) is incremented twice, as the Python path does. */
    for (Py_ssize_t i = 0; i < n; i++)   /* FOUND plans: key, version, values unused */
        if (apply_plan(self, summary, NULL, kinds, NULL, NULL, NULL, NULL, &plans[i], now) < 0)
            return -1;
    if (count_main && apply_plan(self, summary, key, kinds, version, variation, dflt, cvalue,
                                 &main, now) < 0)
        return -1;
    if (new_fq != NULL) {
        /* as _sight: [context dict, first_ms, uses, index True, kinds, context] */
        PyObject *pyuses = PyLong_FromSsize_t(uses);
        PyObject *ms = pyuses != NULL ? PyLong_FromLongLong((long long)(now * 1000.0)) : NULL;
        entry = ms != NULL ? PyList_New(6) : NULL;
        if (entry == NULL) {
            Py_XDECREF(ms);
            Py_XDECREF(pyuses);
            return -1;
        }
        PyList_SET_ITEM(entry, 0, Py_NewRef(ctx_dict));
        PyList_SET_ITEM(entry, 1, ms);
        PyList_SET_ITEM(entry, 2, pyuses);   /* the list takes the reference */
        PyList_SET_ITEM(entry, 3, Py_NewRef(Py_True));
        PyList_SET_ITEM(entry, 4, Py_NewRef(kinds));
        PyList_SET_ITEM(entry, 5, Py_NewRef(context));
        r = PyDict_SetItem(self->contexts, new_fq, entry);   /* exact str key: C only */
        Py_DECREF(entry);   /* borrowed from the dict from here on */
        if (r < 0)
            return -1;
        cx_put(self, context, entry);
    } else if (slot != NULL) {
        cx_count(self, slot, uses);   /* pending in the slot (see the cache's comment) */
    } else {
        PyObject *pyuses = PyLong_FromSsize_t(uses);
        r = pyuses == NULL ? -1 : add_to(entry, 2, pyuses);
        Py_XDECREF(pyuses);
        if (r < 0)
            return -1;
    }
    if (context != self->last_ctx) {   /* as _sight: this context is now the last one */
        Py_INCREF(context);
        Py_INCREF(entry);
        Py_SETREF(self->last_ctx, context);
        Py_SETREF(self->last_entry, entry);
    }
    self->end = now;
    return 1;
}

/*
 * core_common() - core_common_nogc() with the cyclic garbage collector paused.  Creating a
 * container (an event dict, a new flag, counter or entry) can start a collection, and a
 * collection can run Python code (finalizers, weakref callbacks), which could let another
 * thread replace the window between this call's checks and its changes.  With collection
 * paused for the call's duration no Python code runs (the header's invariant); the
 * allocations made meanwhile count toward the next collection as usual.  Without
 * PyGC_Disable (Python < 3.10) the calls that create containers take the Python path.
 */
static int core_common(RecorderCore *self, PyObject *key, PyObject *context,
                       PyObject *variation, int32_t var, PyObject *value, PyObject *dflt,
                       PyObject *reason, int with_reason, PyObject *info, PyObject *prereqs,
                       double now)
{
#if CAN_CREATE
    int was_enabled = PyGC_Disable();
    int r = core_common_nogc(self, key, context, variation, var, value, dflt, reason,
                             with_reason, info, prereqs, now);
    if (was_enabled)
        PyGC_Enable();
    return r;
#else
    return core_common_nogc(self, key, context, variation, var, value, dflt, reason,
                            with_reason, info, prereqs, now);
#endif
}

/*
 * checks_due() - a call found _deadline passed (@*now: its coarse clock): the slow checks
 * (the pid, the flush interval: self._checks_due(), Python code that may flush, or reset
 * the window after a fork) are made here, before the call, as _record_evaluation_py begins
 * with them; the call is then recorded here as any other (it used to take the Python path,
 * whose first read of _summary and _contexts folded every pending count every
 * PID_CHECK_INTERVAL).  A _deadline of 0 (the first call, a flush due now, a disabled or
 * closed recorder) still sends the call to the Python path.  Runs before core_common():
 * never inside a call that must run no Python code.
 * Return: 1 record here (*now read again, before the new _deadline); 0 take the Python
 * path (which makes the checks itself if still due).
 */
static int checks_due(RecorderCore *self, double *now)
{
    if (self->deadline == 0.0)
        return 0;
    PyObject *r = PyObject_CallMethodNoArgs((PyObject *)self, s_checks_due);
    if (r == NULL) {
        PyErr_Clear();   /* the Python path makes them again, and logs a failure */
        return 0;
    }
    int go = r == Py_True;
    Py_DECREF(r);
    if (!go)
        return 0;
    *now = now_seconds(1);
    return *now < self->deadline;
}

/* record_evaluation(key, context, eval_tuple, default, with_reason): core_common() for the
 * EvalTuple, or the unchanged call to _record_evaluation_py. */
static PyObject *core_record(PyObject *op, PyObject *const *args, size_t nargsf,
                             PyObject *kwnames)
{
    RecorderCore *self = (RecorderCore *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 5 || kwnames != NULL)
        return slow_path(op, args, nargs, kwnames);
    double now = now_seconds(1);
    if (!(now < self->deadline) && !checks_due(self, &now))  /* disabled/closed, ... */
        return slow_path(op, args, nargs, kwnames);
    PyObject *t = args[2];
    if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != 5)
        return slow_path(op, args, nargs, kwnames);
    int with_reason = args[4] == Py_True ? 1 : args[4] == Py_False ? 0 : -1;
    PyObject *variation = PyTuple_GET_ITEM(t, 1);
    int r = core_common(self, args[0], args[1], variation, cc_variation(variation),
                        PyTuple_GET_ITEM(t, 0), args[3], PyTuple_GET_ITEM(t, 2), with_reason, PyTuple_GET_ITEM(t, 3),
                        PyTuple_GET_ITEM(t, 4), now);
    if (r < 0)
        return NULL;
    if (r == 0)
        return slow_path(op, args, nargs, kwnames);
    Py_RETURN_NONE;
}

/**
 * sf_core_check() - whether @o is a _RecorderCore (the client's fast path may hand it
 * evaluations).  Return: 1 or 0.
 */
int sf_core_check(PyObject *o)
{
    return PyObject_TypeCheck(o, &RecorderCoreType);
}

/**
 * sf_core_record_fast() - record one evaluation from the client's fast path (fast.c), which
 * has no EvalTuple: the same checks, counting and feature events as record_evaluation's
 * common case.
 * @core: a _RecorderCore (sf_core_check()).
 * @variation: the variation index as an int, or None.
 * @index: the same as a C integer: -1 for None.
 * @value: the evaluation's value before any typed conversion (NULL or anything when
 *         @variation is None: the event then holds @dflt).
 * @dflt: the caller's default.
 * @reason: the reason dict, or NULL when not computed (an event that needs it - detail,
 *          experiment - then takes the Python path).
 * @with_reason: 1 for variation_detail, else 0.
 * @info: the flag's info tuple; @prereqs: list of prerequisite event tuples, or NULL.
 *
 * When _deadline has passed, the slow checks run first (checks_due(): Python code, which
 * may release the GIL; the caller holds its own references to what it passes).
 * Return: 1 recorded; 0 nothing recorded (the caller must take the full Python path, which
 * records the evaluation, including the deadline's pid and flush checks); -1 exception set.
 */
int sf_core_record_fast(PyObject *core, PyObject *key, PyObject *context, PyObject *variation,
                        int32_t index, PyObject *value, PyObject *dflt, PyObject *reason,
                        int with_reason, PyObject *info, PyObject *prereqs)
{
    RecorderCore *self = (RecorderCore *)core;
    double now = now_seconds(1);
    if (!(now < self->deadline) && !checks_due(self, &now))  /* disabled, closed, ... */
        return 0;
    /* (index: the evaluator's, >= 0 or -1, as cc_variation(variation)) */
    int32_t var = index < 0 ? -1 : index == INT32_MAX ? -2 : index;
    return core_common(self, key, context, variation, var, value, dflt, reason, with_reason,
                       info, prereqs, now);
}

static PyObject *core_get_lock(RecorderCore *self, void *closure)
{
    return Py_NewRef(self->lock);
}

/* Setting _lock also caches its bound ``locked`` method for the fast path. */
static int core_set_lock(RecorderCore *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _lock");
        return -1;
    }
    PyObject *locked = NULL;
    if (value != Py_None) {
        locked = PyObject_GetAttr(value, s_locked);
        if (locked == NULL)
            return -1;
    }
    /* type(lock).locked, when it is a C method taking no arguments (threading.Lock's) */
    PyCFunction fn = NULL;
    if (locked != NULL) {
        PyObject *descr = PyObject_GetAttr((PyObject *)Py_TYPE(value), s_locked);
        if (descr == NULL)
            PyErr_Clear();
        else if (Py_IS_TYPE(descr, &PyMethodDescr_Type)
                 && ((PyMethodDescrObject *)descr)->d_method->ml_flags == METH_NOARGS
                 && PyObject_TypeCheck(value, PyDescr_TYPE(descr)))
            fn = ((PyMethodDescrObject *)descr)->d_method->ml_meth;
        Py_XDECREF(descr);   /* the type holds it, and the lock holds its type */
    }
    Py_SETREF(self->lock, Py_NewRef(value));
    Py_XSETREF(self->locked, locked);
    self->locked_fn = fn;
    return 0;
}

static PyMemberDef core_members[] = {
    {"_deadline", T_DOUBLE, offsetof(RecorderCore, deadline), 0,
     "next time a call takes the Python path (pid check, flush interval); 0 = always"},
    {"_end", T_DOUBLE, offsetof(RecorderCore, end), 0, "time of the last evaluation (s)"},
    {"_last_ctx", T_OBJECT, offsetof(RecorderCore, last_ctx), 0, "context of the last sighting"},
    {"_events", T_OBJECT, offsetof(RecorderCore, events), 0, "the window's full events"},
    {"_unsent_events", T_PYSSIZET, offsetof(RecorderCore, unsent_events), 0,
     "full events held in packed datagrams not sent yet (count against _capacity)"},
    {"_capacity", T_PYSSIZET, offsetof(RecorderCore, capacity), 0,
     "events_max_pending: bound of _events + _unsent_events"},
    {"_start", T_OBJECT, offsetof(RecorderCore, start), 0,
     "time of the window's first counted evaluation (s), or None"},
    {"_dropped", T_PYSSIZET, offsetof(RecorderCore, dropped), 0,
     "full events lost since the last datagram (reported in the next one)"},
    {"_retry_at", T_OBJECT, offsetof(RecorderCore, retry_at), 0,
     "time of the flush thread's next retry of a failed send, or None"},
    {"_thread", T_OBJECT, offsetof(RecorderCore, thread), 0, "the flush thread, or None"},
    {"stats", T_OBJECT, offsetof(RecorderCore, stats), 0,
     "counters: sent, send_failures, dropped"},
    {"_context_type", T_OBJECT, offsetof(RecorderCore, ctx_type), 0,
     "shmflags.Context: contexts of this exact class are looked up by their cached _fqk"},
    {NULL, 0, 0, 0, NULL}
};

/* _summary: every pending count folded in first (the cache's invariant), on get and set. */
static PyObject *core_get_summary(RecorderCore *self, void *closure)
{
    cc_fold(self);
    return Py_NewRef(self->summary);
}

static int core_set_summary(RecorderCore *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _summary");
        return -1;
    }
    cc_fold(self);   /* into the window being replaced, which the caller may still pack */
    Py_SETREF(self->summary, Py_NewRef(value));
    return 0;
}

/* _contexts and _last_entry: every pending use folded in first (the context cache's
 * invariant) on get, and on setting _contexts (into the window being replaced). */
static PyObject *core_get_contexts(RecorderCore *self, void *closure)
{
    cx_fold(self);
    return Py_NewRef(self->contexts);
}

static int core_set_contexts(RecorderCore *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _contexts");
        return -1;
    }
    cx_fold(self);
    Py_SETREF(self->contexts, Py_NewRef(value));
    return 0;
}

static PyObject *core_get_last_entry(RecorderCore *self, void *closure)
{
    cx_fold(self);
    return Py_NewRef(self->last_entry);
}

static int core_set_last_entry(RecorderCore *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _last_entry");
        return -1;
    }
    Py_SETREF(self->last_entry, Py_NewRef(value));
    return 0;
}

static PyGetSetDef core_getset[] = {
    {"_contexts", (getter)core_get_contexts, (setter)core_set_contexts,
     "the window's sightings (fully-qualified key -> entry)", NULL},
    {"_last_entry", (getter)core_get_last_entry, (setter)core_set_last_entry,
     "the window entry of _last_ctx", NULL},
    {"_lock", (getter)core_get_lock, (setter)core_set_lock, "the recorder's lock", NULL},
    {"_summary", (getter)core_get_summary, (setter)core_set_summary,
     "the window's summary (flag key -> [default, kinds, counters, kinds, version])", NULL},
    {NULL, NULL, NULL, NULL, NULL}
};

static PyObject *core_clear_caches(PyObject *op, PyObject *unused)
{
    cc_clear((RecorderCore *)op);   /* may free an old window: called from Python code */
    cx_clear((RecorderCore *)op);
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"_clear_caches", core_clear_caches, METH_NOARGS,
     "Empty the C counter and context caches (the window is replaced or merged into)."},
    {"record_evaluation", (PyCFunction)(void (*)(void))core_record,
     METH_FASTCALL | METH_KEYWORDS,
     "record_evaluation(key, context, eval_tuple, default, with_reason)\n\n"
     "Count one evaluation; the common case here, the rest in _record_evaluation_py."},
    {NULL, NULL, 0, NULL}
};

static PyTypeObject RecorderCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmflags._native._RecorderCore",
    .tp_basicsize = sizeof(RecorderCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Hot state and common path of the event recorder (base of EventRecorder).",
    .tp_new = core_new,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_members = core_members,
    .tp_getset = core_getset,
    .tp_methods = core_methods,
};

/* ---- packing a feature/debug event (shmflags.events.sender._encode_event) ----------------
 *
 * _pack_event(event, context_bytes) -> bytes | None: the validation of
 * datagram.check_event(event, context_checked=True) for a feature or debug event, and the
 * msgpack bytes of msgpack.packb(event, use_bin_type=True) with the context's own (already
 * checked and packed) bytes spliced in as the last field.  None: the schema refuses the
 * event (the sender drops and counts it).  The caller (sender.py) only passes a dict of 2..15
 * fields whose last key is "context" and whose kind is "feature" or "debug"; anything else
 * raises TypeError here, never a crash.  Runs no Python code: every value is checked by its
 * exact type before it is read (so no __eq__/__hash__ of a subclass runs either).
 * tests/unit/test_events_pack.py compares it with the Python functions on random and
 * hostile events.
 */

#define PACK_MAX_DEPTH 32   /* datagram.MAX_DEPTH */

typedef struct {
    char *buf;            /* the caller's stack buffer, or heap (PyMem) once grown */
    Py_ssize_t len, cap;
    int heap;             /* buf is PyMem memory */
} wbuf_t;

static void w_free(wbuf_t *w)
{
    if (w->heap)
        PyMem_Free(w->buf);
}

/* Room for @n more bytes.  0, or -1 with MemoryError. */
static int w_reserve(wbuf_t *w, Py_ssize_t n)
{
    if (n <= w->cap - w->len)
        return 0;
    if (n > PY_SSIZE_T_MAX / 2 - w->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t cap = w->cap ? w->cap : 256;
    while (cap - w->len < n)
        cap *= 2;   /* invariant: cap < PY_SSIZE_T_MAX (checked above) */
    char *b = w->heap ? PyMem_Realloc(w->buf, (size_t)cap) : PyMem_Malloc((size_t)cap);
    if (b == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (!w->heap && w->len > 0)
        memcpy(b, w->buf, (size_t)w->len);
    w->buf = b;
    w->cap = cap;
    w->heap = 1;
    return 0;
}

static inline int w_put(wbuf_t *w, const void *p, Py_ssize_t n)
{
    if (w_reserve(w, n) < 0)
        return -1;
    memcpy(w->buf + w->len, p, (size_t)n);
    w->len += n;
    return 0;
}

/* One byte of type @t followed by the @n low bytes of @v, big-endian (msgpack). */
static inline int w_be(wbuf_t *w, unsigned char t, uint64_t v, int n)
{
    if (w->cap - w->len < 9 && w_reserve(w, 9) < 0)
        return -1;
    unsigned char *b = (unsigned char *)w->buf + w->len;   /* 9 bytes of room (above) */
    b[0] = t;
    for (int i = 0; i < n; i++)
        b[1 + i] = (unsigned char)(v >> (8 * (n - 1 - i)));
    w->len += 1 + n;
    return 0;
}

/* A container or string header: fix form below @fixmax (OR-ed into @fix), else the 8-bit
 * (@t8, str only: 0), 16-bit and 32-bit forms - msgpack-python's choices.
 * Return: 1 written, 0 too long for msgpack (refused), -1 MemoryError. */
static int w_head(wbuf_t *w, Py_ssize_t n, unsigned char fix, Py_ssize_t fixmax,
                  unsigned char t8, unsigned char t16, unsigned char t32)
{
    int rc;
    if (n < fixmax)
        rc = w_be(w, (unsigned char)(fix | n), 0, 0);
    else if (t8 && n < 256)
        rc = w_be(w, t8, (uint64_t)n, 1);
    else if (n < 65536)
        rc = w_be(w, t16, (uint64_t)n, 2);
    else if ((uint64_t)n <= 0xFFFFFFFFu)
        rc = w_be(w, t32, (uint64_t)n, 4);
    else
        return 0;   /* unreachable for a datagram (the caller's size check drops it) */
    return rc < 0 ? -1 : 1;
}

/* An int64 as msgpack-python packs it (smallest form; non-negative as unsigned). */
static int w_int(wbuf_t *w, long long v)
{
    if (v >= 0) {
        uint64_t u = (uint64_t)v;
        if (u < 128)
            return w_be(w, (unsigned char)u, 0, 0);
        if (u < 256)
            return w_be(w, 0xcc, u, 1);
        if (u < 65536)
            return w_be(w, 0xcd, u, 2);
        if (u < 4294967296ull)
            return w_be(w, 0xce, u, 4);
        return w_be(w, 0xcf, u, 8);
    }
    if (v >= -32)
        return w_be(w, (unsigned char)(0xe0 | (v & 0x1f)), 0, 0);
    if (v >= -128)
        return w_be(w, 0xd0, (uint64_t)v, 1);
    if (v >= -32768)
        return w_be(w, 0xd1, (uint64_t)v, 2);
    if (v >= -2147483648ll)
        return w_be(w, 0xd2, (uint64_t)v, 4);
    return w_be(w, 0xd3, (uint64_t)v, 8);
}

/* The int64 value of an exact int within [lo, 2**63 - 1]: 1 with *out, 0 not one. */
static int int64_in(PyObject *o, long long lo, long long *out)
{
    if (!PyLong_CheckExact(o))
        return 0;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);   /* exact int: cannot fail */
    if (overflow || v < lo)
        return 0;
    *out = v;
    return 1;
}

static int w_str(wbuf_t *w, PyObject *s)
{
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (u == NULL) {   /* a lone surrogate: msgpack cannot encode it either */
        PyErr_Clear();
        return 0;
    }
    int r = w_head(w, n, 0xa0, 32, 0xd9, 0xda, 0xdb);
    return r <= 0 ? r : (w_put(w, u, n) < 0 ? -1 : 1);
}

/*
 * pack_json() - datagram._check_json(@o, @depth) and msgpack.packb(@o) in one walk.
 * Return: 1 packed, 0 refused by the JSON rules (w may hold a partial value), -1 error.
 */
static int pack_json(wbuf_t *w, PyObject *o, int depth)
{
    if (o == Py_None)
        return w_be(w, 0xc0, 0, 0) < 0 ? -1 : 1;
    if (o == Py_True || o == Py_False)
        return w_be(w, o == Py_True ? 0xc3 : 0xc2, 0, 0) < 0 ? -1 : 1;
    if (PyUnicode_CheckExact(o))
        return w_str(w, o);
    if (PyFloat_CheckExact(o)) {
        double d = PyFloat_AS_DOUBLE(o);
        if (!isfinite(d))
            return 0;   /* NaN or infinite number */
        uint64_t bits;
        memcpy(&bits, &d, sizeof bits);
        return w_be(w, 0xcb, bits, 8) < 0 ? -1 : 1;
    }
    if (PyLong_CheckExact(o)) {
        long long v;
        if (!int64_in(o, LLONG_MIN, &v))
            return 0;   /* integer out of range */
        return w_int(w, v) < 0 ? -1 : 1;
    }
    if (depth >= PACK_MAX_DEPTH)
        return 0;       /* nested deeper than MAX_DEPTH (or not a JSON value) */
    if (PyList_CheckExact(o)) {
        Py_ssize_t n = PyList_GET_SIZE(o);
        int r = w_head(w, n, 0x90, 16, 0, 0xdc, 0xdd);
        if (r <= 0)
            return r;
        /* the list cannot change meanwhile: no Python code runs */
        for (Py_ssize_t i = 0; i < n; i++)
            if ((r = pack_json(w, PyList_GET_ITEM(o, i), depth + 1)) <= 0)
                return r;
        return 1;
    }
    if (PyDict_CheckExact(o)) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        int r = w_head(w, PyDict_GET_SIZE(o), 0x80, 16, 0, 0xde, 0xdf);
        if (r <= 0)
            return r;
        while (PyDict_Next(o, &pos, &k, &v)) {
            if (!PyUnicode_CheckExact(k))
                return 0;   /* map key is not a string */
            if ((r = w_str(w, k)) <= 0 || (r = pack_json(w, v, depth + 1)) <= 0)
                return r;
        }
        return 1;
    }
    return 0;   /* not a JSON value */
}

/* The value of the str key @text in the exact dict @d (borrowed), or NULL; @name is @text
 * interned.  A walk rather than a lookup, so that no key's __eq__ can run (the dicts are
 * small); a str subclass key is compared by its characters, as dict.get would find it.
 * The recorder's keys are @name itself (one comparison), and another interned exact str
 * cannot have its characters (interning keeps one object per value): only other keys are
 * compared by their characters. */
static PyObject *dict_get_name(PyObject *d, PyObject *name, const char *text)
{
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(d, &pos, &k, &v)) {
        if (k == name)
            return v;
        if (PyUnicode_CheckExact(k) && PyUnicode_CHECK_INTERNED(k))
            continue;
        if (PyUnicode_Check(k) && PyUnicode_CompareWithASCIIString(k, text) == 0)
            return v;
    }
    return NULL;
}

/* The fields a feature or debug event may have (datagram._EVAL_KEYS). */
enum { F_KIND, F_DATE, F_KEY, F_VALUE, F_DEFAULT, F_VERSION, F_VARIATION, F_REASON,
       F_PREREQ_OF, F_CONTEXT, F_DEBUG_UNTIL, F_COUNT, F_OTHER = F_COUNT };
static PyObject **field_names[F_COUNT] = {
    &s_kind, &s_creationDate, &s_key, &s_value, &s_default, &s_version, &s_variation,
    &s_reason, &s_prereqOf, &s_context, &s_debugUntil,
};
/* Their msgpack bytes (a fixstr: 0xa0 | length, then the ASCII name), as w_str() packs
 * them; made at module init. */
static char field_bytes[F_COUNT][16];
static Py_ssize_t field_size[F_COUNT];   /* bytes used in field_bytes[i] */

/* Which field the str @k names: the interned name itself (the recorder's literal keys, one
 * pointer comparison), else compared by characters (PyUnicode_Compare runs no Python code,
 * also for a subclass); F_OTHER. */
static int field_id(PyObject *k)
{
    for (int i = 0; i < F_COUNT; i++)
        if (k == *field_names[i])
            return i;
    for (int i = 0; i < F_COUNT; i++)
        if (PyUnicode_Compare(k, *field_names[i]) == 0)
            return i;
    return F_OTHER;
}

/* check_event()'s per-field rule for field @id of a feature/debug event; 1 ok, 0 refused. */
static int event_field_ok(int id, PyObject *v, int debug)
{
    long long x;
    switch (id) {
    case F_KIND:
    case F_VALUE:
    case F_DEFAULT:
        return 1;   /* kind: checked by the caller; values: JSON rules when packed */
    case F_DATE:
    case F_VARIATION:
        return int64_in(v, 0, &x);
    case F_VERSION:
        return int64_in(v, LLONG_MIN, &x);
    case F_KEY:
    case F_PREREQ_OF:
        return PyUnicode_CheckExact(v) && PyUnicode_GET_LENGTH(v) > 0;
    case F_REASON: {
        if (!PyDict_CheckExact(v))
            return 0;
        PyObject *kind = dict_get_name(v, s_kind, "kind");
        return kind != NULL && PyUnicode_CheckExact(kind);   /* its JSON: packed at depth 1 */
    }
    case F_DEBUG_UNTIL:
        return debug && int64_in(v, 0, &x);
    default:
        return 0;   /* unexpected field */
    }
}

/*
 * pack_event_into() - append the bytes _pack_event() returns for @event to @w.
 * Return: 1 appended; 0 the schema refuses the event (@w may hold a partial write: the
 * caller rewinds); -1 error set; -2 not a call this function takes (the TypeError cases of
 * _pack_event: not a feature or debug event of 2..15 fields whose last key is "context").
 */
static int pack_event_into(wbuf_t *w, PyObject *event, PyObject *cbytes)
{
    Py_ssize_t n = PyDict_GET_SIZE(event);
    PyObject *kind = dict_get_name(event, s_kind, "kind");
    int debug = kind != NULL && kind != s_feature && PyUnicode_CheckExact(kind)
                && PyUnicode_CompareWithASCIIString(kind, "debug") == 0;
    if (n < 2 || n > 15 || kind == NULL || !PyUnicode_CheckExact(kind)
        || (!debug && kind != s_feature && PyUnicode_CompareWithASCIIString(kind, "feature") != 0))
        return -2;
    int r = w_be(w, (unsigned char)(0x80 | n), 0, 0) < 0 ? -1 : 1;   /* fixmap, n < 16 */
    unsigned seen = 0;
    int last_context = 0;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (r > 0 && PyDict_Next(event, &pos, &k, &v)) {
        if (!PyUnicode_Check(k)) {
            r = 0;   /* check_event would find it unexpected */
            break;
        }
        int id = field_id(k);   /* a str subclass: by its characters, as check_event */
        last_context = id == F_CONTEXT;
        if (last_context)
            continue;   /* its bytes come last; it must be the last key (checked below) */
        if (!event_field_ok(id, v, debug)) {
            r = 0;
            break;
        }
        seen |= 1u << id;
        if (k == *field_names[id])   /* the interned name: its bytes, made once */
            r = w_put(w, field_bytes[id], field_size[id]) < 0 ? -1 : 1;
        else
            r = w_str(w, k);
        if (r > 0)
            r = pack_json(w, v, id == F_REASON ? 1 : 0);
    }
    if (r > 0 && !last_context)
        return -2;
    unsigned need = 1u << F_VALUE | 1u << F_DEFAULT | 1u << F_DATE | 1u << F_KEY
                    | (debug ? 1u << F_DEBUG_UNTIL : 0u);
    if (r > 0 && (seen & need) != need)
        r = 0;   /* a required field is missing */
    static const char ctx_key[] = "\xa7" "context";   /* msgpack fixstr "context" */
    if (r > 0 && (w_put(w, ctx_key, 8) < 0
                  || w_put(w, PyBytes_AS_STRING(cbytes), PyBytes_GET_SIZE(cbytes)) < 0))
        r = -1;
    return r;
}

static PyObject *pack_event(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyDict_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "_pack_event(event: dict, context_bytes: bytes)");
        return NULL;
    }
    char small[512];   /* most events fit: no allocation */
    wbuf_t w = {small, 0, sizeof small, 0};
    int r = pack_event_into(&w, args[0], args[1]);
    PyObject *out = NULL;
    if (r > 0)
        out = PyBytes_FromStringAndSize(w.buf, w.len);
    else if (r == 0)
        out = Py_NewRef(Py_None);
    else if (r == -2)
        PyErr_SetString(PyExc_TypeError, "_pack_event takes a feature or debug event of 2 to "
                        "15 fields whose last field is \"context\"");
    w_free(&w);
    return out;
}

/*
 * _pack_event_run(events, start, context_bytes, room) -> (bytes, end): the events
 * events[start:end] packed back to back (each exactly as _pack_event() packs it), as many
 * as fit in @room bytes, for one datagram (sender.pack_window).  It stops before the first
 * event it does not take: not an exact dict; not a feature or debug event of the shape
 * _pack_event() takes; a context dict whose bytes are not in @context_bytes (id(dict) ->
 * bytes, filled by the caller; b"" = refused); an event the schema refuses; or one that
 * does not fit.  The caller handles that event one at a time (sender._encode_event),
 * then calls again: the same bytes, one Python step per datagram instead of per event.
 * Runs no Python code: exact dicts, ints and bytes only (as _pack_event).
 */
static PyObject *pack_event_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyList_CheckExact(args[0]) || !PyLong_CheckExact(args[1])
        || !PyDict_CheckExact(args[2]) || !PyLong_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "_pack_event_run(events: list, start: int, context_bytes: dict, room: int)");
        return NULL;
    }
    PyObject *events = args[0], *cbmap = args[2];
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), room = PyLong_AsSsize_t(args[3]);
    if ((start == -1 || room == -1) && PyErr_Occurred())
        return NULL;
    if (start < 0)
        start = 0;
    wbuf_t w = {NULL, 0, 0, 0};
    Py_ssize_t j = start;
    int r = 1;
    /* the list may not change meanwhile: no Python code runs in this loop */
    for (; j < PyList_GET_SIZE(events); j++) {
        PyObject *ev = PyList_GET_ITEM(events, j);
        if (!PyDict_CheckExact(ev))
            break;
        PyObject *ctx = dict_get_name(ev, s_context, "context");
        if (ctx == NULL || !PyDict_CheckExact(ctx))
            break;
        PyObject *id = PyLong_FromVoidPtr(ctx);   /* id(ctx), as the caller's keys */
        if (id == NULL) {
            r = -1;
            break;
        }
        PyObject *cbytes = PyDict_GetItemWithError(cbmap, id);   /* exact int key: C only */
        Py_DECREF(id);
        if (cbytes == NULL) {
            if (PyErr_Occurred())
                r = -1;
            break;
        }
        if (!PyBytes_CheckExact(cbytes) || PyBytes_GET_SIZE(cbytes) == 0)
            break;   /* a refused context: the caller counts the event */
        Py_ssize_t mark = w.len;
        int one = pack_event_into(&w, ev, cbytes);
        if (one < 0 && one != -2) {
            r = -1;
            break;
        }
        if (one <= 0 || w.len > room) {
            w.len = mark;   /* not taken: the caller's */
            break;
        }
    }
    PyObject *out = NULL;
    if (r > 0) {
        PyObject *blob = PyBytes_FromStringAndSize(w.buf != NULL ? w.buf : "", w.len);
        if (blob != NULL) {
            out = Py_BuildValue("(Nn)", blob, j);
        }
    }
    w_free(&w);
    return out;
}

static PyMethodDef events_functions[] = {
    {"_pack_event", (PyCFunction)(void (*)(void))pack_event, METH_FASTCALL,
     "_pack_event(event, context_bytes) -> bytes | None: check and pack a feature or debug "
     "event whose last field is its context (already packed), as sender._encode_event "
     "does in Python; None when the schema refuses it"},
    {"_pack_event_run", (PyCFunction)(void (*)(void))pack_event_run, METH_FASTCALL,
     "_pack_event_run(events, start, context_bytes, room) -> (bytes, end): events[start:end] "
     "packed back to back as _pack_event packs each, as many as fit in room bytes; stops "
     "before the first event it does not take"},
    {NULL, NULL, 0, NULL}
};

int sf_events_add_types(PyObject *m)
{
    if (s_record_py == NULL) {
        s_record_py = PyUnicode_InternFromString("_record_evaluation_py");
        s_checks_due = PyUnicode_InternFromString("_checks_due");
        s_locked = PyUnicode_InternFromString("locked");
        s_fqk = PyUnicode_InternFromString("_fqk");
        s_ev = PyUnicode_InternFromString("_ev");
        s_one = PyLong_FromLong(1);
        for (int b = 0; b < 8; b++)
            if ((s_bits[b] = PyLong_FromLong(b)) == NULL)
                return -1;
        if (s_record_py == NULL || s_checks_due == NULL || s_locked == NULL || s_fqk == NULL
            || s_ev == NULL
            || s_one == NULL)
            return -1;
        struct { PyObject **slot; const char *text; } names[] = {
            {&s_kind, "kind"}, {&s_feature, "feature"}, {&s_creationDate, "creationDate"},
            {&s_key, "key"}, {&s_value, "value"}, {&s_default, "default"},
            {&s_version, "version"}, {&s_variation, "variation"}, {&s_reason, "reason"},
            {&s_context, "context"}, {&s_prereqOf, "prereqOf"}, {&s_debugUntil, "debugUntil"},
        };
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if ((*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
                return -1;
        for (int t = 0; t < 4; t++) {
            PyObject *d = s_event_tmpl[t] = PyDict_New();
            if (d == NULL || PyDict_SetItem(d, s_kind, Py_None) < 0
                || PyDict_SetItem(d, s_creationDate, Py_None) < 0
                || PyDict_SetItem(d, s_key, Py_None) < 0
                || PyDict_SetItem(d, s_value, Py_None) < 0
                || PyDict_SetItem(d, s_default, Py_None) < 0
                || PyDict_SetItem(d, s_version, Py_None) < 0
                || ((t & 1) && PyDict_SetItem(d, s_variation, Py_None) < 0)
                || ((t & 2) && PyDict_SetItem(d, s_reason, Py_None) < 0)
                || PyDict_SetItem(d, s_context, Py_None) < 0)
                return -1;
        }
    }
    for (int i = 0; i < F_COUNT; i++) {
        Py_ssize_t len;
        const char *u = PyUnicode_AsUTF8AndSize(*field_names[i], &len);
        if (u == NULL)
            return -1;
        if (len > 15) {   /* cannot happen: the names are at most 12 characters */
            PyErr_SetString(PyExc_SystemError, "event field name too long");
            return -1;
        }
        field_bytes[i][0] = (char)(0xa0 | len);
        memcpy(field_bytes[i] + 1, u, (size_t)len);
        field_size[i] = len + 1;
    }
    if (PyType_Ready(&RecorderCoreType) < 0 || PyModule_AddFunctions(m, events_functions) < 0)
        return -1;
    Py_INCREF(&RecorderCoreType);
    if (PyModule_AddObject(m, "_RecorderCore", (PyObject *)&RecorderCoreType) < 0) {
        Py_DECREF(&RecorderCoreType);
        return -1;
    }
    return 0;
}
