/*
 * hash.c - xxh64 (index and string-set hash), string-set lookup, and the
 * per-Snapshot Python object cache.
 *
 * xxh64 is Yann Collet's XXH64 (seed 0 for every shmflags use), written
 * from the public specification; Python's xxhash.xxh64_intdigest gives the
 * same numbers (the builder and compile.py use it).  Runs in workers.
 */
#include "sf.h"

#define P1 11400714785074694791ULL
#define P2 14029467366897019727ULL
#define P3 1609587929392839161ULL
#define P4 9650029242287828579ULL
#define P5 2870177450012600261ULL

static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t round1(uint64_t acc, uint64_t in)
{
    acc += in * P2;
    acc = rotl(acc, 31);
    return acc * P1;
}
static inline uint64_t merge(uint64_t acc, uint64_t v)
{
    acc ^= round1(0, v);
    return acc * P1 + P4;
}

/**
 * sf_xxh64() - XXH64 of a byte string.
 * @data: bytes.
 * @len: length.
 * @seed: seed (0 everywhere in shmflags).
 *
 * Return: the 64-bit hash.
 */
uint64_t sf_xxh64(const void *data, size_t len, uint64_t seed)
{
    const uint8_t *p = data, *end = p + len;
    uint64_t h;
    if (len >= 32) {
        const uint8_t *limit = end - 32;
        uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
        do {
            v1 = round1(v1, rd64(p)); p += 8;
            v2 = round1(v2, rd64(p)); p += 8;
            v3 = round1(v3, rd64(p)); p += 8;
            v4 = round1(v4, rd64(p)); p += 8;
        } while (p <= limit);
        h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
        h = merge(h, v1); h = merge(h, v2); h = merge(h, v3); h = merge(h, v4);
    } else {
        h = seed + P5;
    }
    h += (uint64_t)len;
    while (p + 8 <= end) {
        h ^= round1(0, rd64(p));
        h = rotl(h, 27) * P1 + P4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)rd32(p) * P1;
        h = rotl(h, 23) * P2 + P3;
        p += 4;
    }
    while (p < end) {
        h ^= (*p) * P5;
        h = rotl(h, 11) * P1;
        p++;
    }
    h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32;
    return h;
}

/*
 * set_member_eq() - does the set member at @off of the record's string pool (LEB128 length +
 * bytes) equal @key?  Only the bytes read are fetched (and their chunks verified), so a
 * lookup that compares no member reads nothing of the pool.
 * Return: 1 equal, 0 not, -1 out of the pool, a bad length prefix or a failed chunk.
 */
static inline int set_member_eq(const sf_rec_t *r, uint32_t off, const char *key, size_t klen)
{
    /* invariant: the prefix is at most 5 bytes (a u32) and all of them lie in the pool: the
     * first is fetched alone, the rest only when the first says they follow */
    const uint8_t *p = sf_rec_pool(r, off, 1);
    if (p == NULL)
        return -1;
    uint64_t n = *p;
    uint32_t used = 1;
    if (n >= 0x80) {
        n &= 0x7F;
        for (int shift = 7;; shift += 7) {
            if (shift > 28 || (p = sf_rec_pool(r, off + used, 1)) == NULL)
                return -1;
            uint8_t b = *p;
            used++;
            n |= (uint64_t)(b & 0x7F) << shift;
            if (b < 0x80)
                break;
        }
    }
    /* invariant: the n member bytes end inside the pool (off + used <= pool_len here) */
    if (n > (uint64_t)r->pool_len - off - used)
        return -1;
    if (n != klen)
        return 0;
    if (n == 0)
        return 1;
    p = sf_rec_pool(r, off + used, (uint32_t)n);
    if (p == NULL)
        return -1;
    return memcmp(p, key, klen) == 0;
}

/**
 * sf_strset_has() - membership test in a compiled string set (record.h sf_strset_t).
 * @r: the record holding the set.
 * @off: offset of the sf_strset_t (0 = empty set).
 * @key: UTF-8 bytes.
 * @klen: their length.
 * @hash: sf_xxh64(key, klen, 0), computed once by the caller.
 *
 * The scan ends at the sentinel slot at the latest (checked first), so a corrupt set ends;
 * a corrupt but in-bounds set (unsorted, wrong fingerprints) can only give a wrong answer.
 * Return: 1 member, 0 not a member, -1 corrupt set.
 */
int sf_strset_has(const sf_rec_t *r, uint32_t off, const char *key, size_t klen, uint64_t hash)
{
    if (off == 0)
        return 0;
    /* invariant: the 8-byte header is 8-aligned and inside the record, so off + 8 <= len
     * (no u32 wrap below) */
    const sf_strset_t *set = sf_rec_at(r, off, sizeof(sf_strset_t));
    if (set == NULL)
        return -1;
    uint32_t nslots = set->nslots, m = set->home;
    if (nslots == 0 || m == 0)
        return -1;
    /* invariant: the slot array fits in the record */
    const sf_setslot_t *slots = sf_rec_at(r, off + (uint32_t)sizeof(sf_strset_t),
                                          (uint64_t)nslots * sizeof(sf_setslot_t));
    if (slots == NULL)
        return -1;
    /* invariant: the last slot is the sentinel {SF_SET_EMPTY_FP, 0}: both loops below stop
     * at it at the latest (fp <= SF_SET_EMPTY_FP; an equal fp meets off 0), so i < nslots */
    if (slots[nslots - 1].fp != SF_SET_EMPTY_FP || slots[nslots - 1].off != 0)
        return -1;
    uint32_t fp = (uint32_t)(hash >> 32);
    /* home < m; a home at or past the sentinel means nothing was placed there or later */
    uint32_t i = (uint32_t)(((uint64_t)fp * m) >> 32);
    if (i >= nslots)
        i = nslots - 1;
    /* skip the members displaced from earlier homes (smaller fingerprints; the slots are in
     * fingerprint order); an empty slot (fp SF_SET_EMPTY_FP) ends the skip */
    while (slots[i].fp < fp)
        i++;
    for (; slots[i].fp == fp; i++) {
        if (slots[i].off == 0)
            return 0;   /* empty slot or the sentinel: not a member */
        int eq = set_member_eq(r, slots[i].off, key, klen);
        if (eq != 0)
            return eq;  /* member, or a corrupt member */
        /* a 32-bit collision: the next slot may hold the same fingerprint */
    }
    return 0;
}

/* ---- object cache: open addressing on a u64 key; key 0 is never used ---- */

static size_t slot_of(uint64_t key, size_t cap)
{
    key ^= key >> 33; key *= P2; key ^= key >> 29;
    return (size_t)key & (cap - 1);
}

/**
 * sf_cache_get() - the object cached under @key, or NULL.
 * @c: a Snapshot's cache.
 * @key: SF_CACHE_KEY(absolute offset, tag).
 *
 * Return: borrowed reference (valid for the Snapshot's life: entries are never replaced).
 */
PyObject *sf_cache_get(sf_cache_t *c, uint64_t key)
{
    if (c->cap == 0)
        return NULL;
    size_t i = slot_of(key, c->cap);
    while (c->slots[i].key != 0) {
        if (c->slots[i].key == key)
            return c->slots[i].val;
        i = (i + 1) & (c->cap - 1);
    }
    return NULL;
}

static int grow(sf_cache_t *c)
{
    size_t ncap = c->cap ? c->cap * 2 : 64;
    sf_cache_slot_t *ns = PyMem_Calloc(ncap, sizeof(sf_cache_slot_t));
    if (ns == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < c->cap; i++) {
        if (c->slots[i].key == 0)
            continue;
        size_t j = slot_of(c->slots[i].key, ncap);
        while (ns[j].key != 0)
            j = (j + 1) & (ncap - 1);
        ns[j] = c->slots[i];
    }
    PyMem_Free(c->slots);
    c->slots = ns;
    c->cap = ncap;
    return 0;
}

/**
 * sf_cache_put() - remember @val under @key unless the key is taken.
 * @c: a Snapshot's cache.
 * @key: SF_CACHE_KEY(absolute offset, tag).
 * @val: the object (the cache takes its own reference).
 *
 * Return: the cached object (borrowed; @val or the one stored first), NULL when out of memory.
 */
PyObject *sf_cache_put(sf_cache_t *c, uint64_t key, PyObject *val)
{
    /* invariant: load factor <= 1/2, so probing always finds an empty slot */
    if ((c->used + 1) * 2 > c->cap && grow(c) < 0)
        return NULL;
    size_t i = slot_of(key, c->cap);
    while (c->slots[i].key != 0 && c->slots[i].key != key)
        i = (i + 1) & (c->cap - 1);
    /* invariant: a cached object is never replaced, so borrowed references stay valid
     * for the Snapshot's life even when two evaluations race to fill the same entry */
    if (c->slots[i].key == key)
        return c->slots[i].val;
    Py_INCREF(val);
    c->slots[i].key = key;
    c->slots[i].val = val;
    c->used++;
    return val;
}

/** sf_cache_clear() - release every cached object (Snapshot deallocation). */
void sf_cache_clear(sf_cache_t *c)
{
    for (size_t i = 0; i < c->cap; i++)
        if (c->slots[i].key != 0)
            Py_CLEAR(c->slots[i].val);
    PyMem_Free(c->slots);
    c->slots = NULL;
    c->cap = c->used = 0;
}
