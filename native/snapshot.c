/*
 * snapshot.c - the snapshot container (layout.h): header validation, index
 * lookup, ordered iteration, and bounds-checked access to entries and
 * records.  Pure C, no Python; runs in workers.
 *
 * Invariants established by sf_snapshot_open() and relied on afterwards:
 *  - total_size <= the buffer length, so [0, size) is readable;
 *  - both index tables, both entries arrays and the chunk table lie inside
 *    the directory [160, blob_off);
 *  - index capacities are powers of two (probing masks with cap - 1).
 * Entry offsets read from an index slot are checked on every use
 * (step 6 of layout.h), since a checksum can be recomputed by an attacker.
 * The header check and the directory checksum are verified by module.c at
 * construction (once per mapped object); blob chunks here, at first use, in
 * the three accessors that reach blob bytes (key, raw, record).
 */
#include "sf.h"

/* [off, off + len) inside the directory [SF_HEADER_SIZE, blob_off) */
static int dir_ok(const sf_snap_t *s, uint64_t off, uint64_t len)
{
    return off >= SF_HEADER_SIZE && off <= s->blob_off && len <= s->blob_off - off;
}

static int index_ok(const sf_snap_t *s, uint32_t off, uint32_t cap, uint32_t n)
{
    if ((off & 7u) != 0 || cap < SF_MIN_INDEX_CAP || (cap & (cap - 1)) != 0)
        return 0;
    /* at least a fifth of the slots empty: 4*cap >= 5*n (in 64 bits: no overflow) */
    if (4 * (uint64_t)cap < 5 * (uint64_t)n)
        return 0;
    return dir_ok(s, off, (uint64_t)cap * SF_SLOT_SIZE);
}

/**
 * sf_snapshot_open() - validate a snapshot header and fill in a view.
 * @s: the view to fill.
 * @buf: the snapshot bytes (stay owned by the caller, must outlive @s).
 * @len: their length.
 *
 * Checks layout.h steps 1, 3 and 5 for this object alone (module.c does 2
 * and 4, the checksums, sets @s->state and links an overlay's base with
 * sf_snapshot_link()).
 * Return: SF_OK, SF_EFORMAT, SF_ESIZE or SF_ECORRUPT.
 */
int sf_snapshot_open(sf_snap_t *s, const void *buf, size_t len)
{
    const sf_header_t *h = buf;
    memset(s, 0, sizeof(*s));
    if (len < SF_HEADER_SIZE || ((uintptr_t)buf & 7u) != 0)
        return len < SF_HEADER_SIZE ? SF_ESIZE : SF_EFORMAT;
    if (memcmp(h->magic, SF_SNAPSHOT_MAGIC, SF_SNAPSHOT_MAGIC_LEN) != 0
        || h->format != SF_FORMAT_WORD)
        return SF_EFORMAT;
    if (h->total_size < SF_HEADER_SIZE || h->total_size > len
        || h->total_size > SF_MAX_SNAPSHOT_SIZE)
        return SF_ESIZE;
    s->base = buf;
    s->size = h->total_size;
    s->generation = h->generation;
    s->n_flags = h->n_flags;
    s->n_segments = h->n_segments;
    s->flag_index_off = h->flag_index_off;
    s->flag_index_cap = h->flag_index_cap;
    s->seg_index_off = h->seg_index_off;
    s->seg_index_cap = h->seg_index_cap;
    s->flag_entries_off = h->flag_entries_off;
    s->seg_entries_off = h->seg_entries_off;
    s->record_format = h->record_format;
    s->blob_off = h->blob_off;
    s->chunk_table_off = h->chunk_table_off;
    s->chunk_shift = h->chunk_shift;
    s->n_chunks = h->n_chunks;
    s->checksum = h->checksum;
    s->base_generation = h->base_generation;
    s->base_size = h->base_size;
    s->base_checksum = h->base_checksum;
    if ((s->blob_off & 7u) != 0 || s->blob_off < SF_HEADER_SIZE || s->blob_off > s->size)
        return SF_ESIZE;
    if (!index_ok(s, s->flag_index_off, s->flag_index_cap, s->n_flags)
        || !index_ok(s, s->seg_index_off, s->seg_index_cap, s->n_segments))
        return SF_ECORRUPT;
    /* entries arrays: 8-aligned, inside the directory (so entry i of a kind, at
     * entries_off + 40*i for i < n, is too) */
    if ((s->flag_entries_off & 7u) != 0 || (s->seg_entries_off & 7u) != 0
        || !dir_ok(s, s->flag_entries_off, (uint64_t)SF_ENTRY_SIZE * s->n_flags)
        || !dir_ok(s, s->seg_entries_off, (uint64_t)SF_ENTRY_SIZE * s->n_segments))
        return SF_ECORRUPT;
    if (s->chunk_shift < SF_MIN_CHUNK_SHIFT || s->chunk_shift > SF_MAX_CHUNK_SHIFT)
        return SF_ECORRUPT;
    uint64_t blob_len = s->size - s->blob_off;
    if (s->n_chunks != ((blob_len + (1ull << s->chunk_shift) - 1) >> s->chunk_shift))
        return SF_ECORRUPT;
    if ((s->chunk_table_off & 7u) != 0 || !dir_ok(s, s->chunk_table_off, 8ull * s->n_chunks))
        return SF_ECORRUPT;
    if (h->raw_off < s->blob_off || h->raw_off > s->size)
        return SF_ECORRUPT;
    if (s->base_size == 0 && (s->base_generation != 0 || s->base_checksum != 0))
        return SF_ECORRUPT;
    return SF_OK;
}

/**
 * sf_snapshot_link() - check that @base is the base object overlay @s names.
 * Both views must be open (and their checksums verified by the caller).
 * Return: SF_OK or SF_ECORRUPT.
 */
int sf_snapshot_link(const sf_snap_t *s, const sf_snap_t *base)
{
    if (s->base_size == 0 || base->base_size != 0)
        return SF_ECORRUPT;
    if (base->generation != s->base_generation || base->size != s->base_size
        || base->checksum != s->base_checksum || base->record_format != s->record_format)
        return SF_ECORRUPT;
    return SF_OK;
}

/*
 * Verify the chunks of @t covering [off, off + len) (inside the blob area, len > 0) against
 * the chunk table, once each: the state byte remembers the outcome.  Return 1 when all match.
 */
static int chunks_ok(const sf_snap_t *t, uint64_t off, uint64_t len)
{
    uint64_t first = (off - t->blob_off) >> t->chunk_shift;
    uint64_t last = (off + len - 1 - t->blob_off) >> t->chunk_shift;
    for (uint64_t i = first; i <= last; i++) {
        uint8_t st = t->state[1 + i];
        if (st == SF_CHUNK_OK)
            continue;
        if (st != SF_CHUNK_UNKNOWN)
            return 0;
        uint64_t a = t->blob_off + (i << t->chunk_shift);
        uint64_t b = a + (1ull << t->chunk_shift);
        if (b > t->size)
            b = t->size;
        uint64_t want, got = sf_xxh64(t->base + a, (size_t)(b - a), 0);
        memcpy(&want, t->base + t->chunk_table_off + 8 * i, 8);
        if (got != want) {
            t->state[1 + i] = SF_CHUNK_BAD;
            sf_log_bad_chunk(t, (uint32_t)i, want, got);
            return 0;
        }
        t->state[1 + i] = SF_CHUNK_OK;
    }
    return 1;
}

/*
 * Resolve a key/raw/rec/pool offset (bit 31: the base object) to the object holding it and
 * the plain offset; 1 when [off, off + len) lies inside that object's blob area (no chunk
 * verified), else 0 (also when len is 0 or there is no base).
 */
static int blob_span(const sf_snap_t *s, uint32_t off, uint64_t len, const sf_snap_t **obj,
                     uint32_t *plain)
{
    const sf_snap_t *t = s;
    if (off & SF_BASE_BIT) {
        t = s->under;
        if (t == NULL)
            return 0;
        off &= SF_OFF_MASK;
    }
    if (off < t->blob_off || off > t->size || len > t->size - off || len == 0)
        return 0;
    *obj = t;
    *plain = off;
    return 1;
}

/*
 * A pointer to @len bytes at @off (as blob_span) with every chunk verified; NULL when out of
 * bounds, no base, or a chunk fails.  With sf_rec_pool(), the only way an accessor reaches
 * blob bytes (layout.h step 6).
 */
static const uint8_t *blob_at(const sf_snap_t *s, uint32_t off, uint64_t len)
{
    const sf_snap_t *t;
    uint32_t plain;
    if (!blob_span(s, off, len, &t, &plain) || !chunks_ok(t, plain, len))
        return NULL;
    return t->base + plain;
}

static const sf_entry_t *entry(const sf_snap_t *s, uint32_t off)
{
    /* layout.h step 6: aligned and inside the directory */
    if ((off & 7u) != 0 || !dir_ok(s, off, SF_ENTRY_SIZE))
        return NULL;
    return (const sf_entry_t *)(s->base + off);
}

/**
 * sf_entry_key() - the key bytes of an entry, checked.
 * Return: SF_OK or SF_ECORRUPT.
 */
int sf_entry_key(const sf_snap_t *s, const sf_entry_t *e, const char **key, uint32_t *len)
{
    const uint8_t *p = blob_at(s, e->key_off, (uint64_t)e->key_len + 1);
    if (p == NULL || p[e->key_len] != 0)
        return SF_ECORRUPT;
    *key = (const char *)p;
    *len = e->key_len;
    return SF_OK;
}

int sf_entry_raw(const sf_snap_t *s, const sf_entry_t *e, const uint8_t **raw, uint32_t *len)
{
    const uint8_t *p = e->raw_len == 0 ? NULL : blob_at(s, e->raw_off, e->raw_len);
    if (p == NULL)
        return SF_ECORRUPT;
    *raw = p;
    *len = e->raw_len;
    return SF_OK;
}

int sf_entry_record(const sf_snap_t *s, const sf_entry_t *e, sf_rec_t *out)
{
    if (e->rec_len == 0 || (e->rec_off & 7u) != 0)
        return SF_ECORRUPT;
    const uint8_t *p = blob_at(s, e->rec_off, e->rec_len);
    if (p == NULL)
        return SF_ECORRUPT;
    out->p = p;
    out->len = e->rec_len;
    out->abs = e->rec_off;    /* bit 31 kept: base and own records never share cache keys */
    out->fc = NULL;
    out->pool_obj = NULL;
    out->pool_off = out->pool_len = 0;
    /* the pool span is bounds-checked here, its chunks verified only for the bytes a set
     * lookup reads (sf_rec_pool): an evaluation that compares no member never reads it */
    if (e->pool_len != 0) {
        if (!blob_span(s, e->pool_off, e->pool_len, &out->pool_obj, &out->pool_off))
            return SF_ECORRUPT;
        out->pool_len = e->pool_len;
    }
    return SF_OK;
}

/**
 * sf_rec_pool() - @len bytes at @off in a record's string pool, their chunks verified.
 * Return: a pointer, or NULL when there is no pool, the bytes are outside it (or @len is 0),
 * or a chunk does not match its checksum.
 */
const uint8_t *sf_rec_pool(const sf_rec_t *r, uint32_t off, uint32_t len)
{
    /* invariant: [pool_off, pool_off + pool_len) is inside pool_obj's blob area
     * (sf_entry_record), so a sub-span of it is too */
    if (r->pool_obj == NULL || len == 0 || off > r->pool_len || len > r->pool_len - off)
        return NULL;
    uint64_t abs = (uint64_t)r->pool_off + off;
    if (!chunks_ok(r->pool_obj, abs, len))
        return NULL;
    return r->pool_obj->base + abs;
}

/**
 * sf_snapshot_find() - look a key up in the flag or segment index.
 * @s: the snapshot.
 * @which: SF_FLAGS or SF_SEGMENTS.
 * @key: UTF-8 key bytes.
 * @klen: their length.
 * @out: the entry, when found.
 *
 * Probing stops at an empty slot or after cap slots (a corrupt index
 * without empty slots cannot loop).
 * Return: SF_OK, SF_ENOTFOUND or SF_ECORRUPT.
 */
int sf_snapshot_find(const sf_snap_t *s, int which, const char *key, size_t klen,
                     const sf_entry_t **out)
{
    uint32_t off = which == SF_FLAGS ? s->flag_index_off : s->seg_index_off;
    uint32_t cap = which == SF_FLAGS ? s->flag_index_cap : s->seg_index_cap;
    const sf_slot_t *slots = (const sf_slot_t *)(s->base + off);
    uint64_t h = sf_xxh64(key, klen, 0);
    uint32_t tag = (uint32_t)(h >> 32);
    uint32_t i = (uint32_t)h & (cap - 1);
    for (uint32_t n = 0; n < cap; n++, i = (i + 1) & (cap - 1)) {
        const sf_slot_t *sl = &slots[i];
        if (sl->entry_off == 0)
            return SF_ENOTFOUND;
        if (sl->tag != tag)
            continue;
        const sf_entry_t *e = entry(s, sl->entry_off);
        const char *k;
        uint32_t kl;
        if (e == NULL || sf_entry_key(s, e, &k, &kl) != SF_OK)
            return SF_ECORRUPT;
        if (kl == klen && memcmp(k, key, klen) == 0) {
            *out = e;
            return SF_OK;
        }
    }
    return SF_ENOTFOUND;
}

/**
 * sf_snapshot_entry_at() - the i-th entry in key order: entry i of the kind's
 * entries array.
 * Return: SF_OK, SF_ENOTFOUND (i out of range) or SF_ECORRUPT.
 */
int sf_snapshot_entry_at(const sf_snap_t *s, int which, uint32_t i, const sf_entry_t **out)
{
    uint32_t n = which == SF_FLAGS ? s->n_flags : s->n_segments;
    uint32_t off = which == SF_FLAGS ? s->flag_entries_off : s->seg_entries_off;
    if (i >= n)
        return SF_ENOTFOUND;
    /* i < n and the array was checked inside the directory at open; entry() checks again */
    const sf_entry_t *e = entry(s, (uint32_t)(off + (uint64_t)SF_ENTRY_SIZE * i));
    if (e == NULL)
        return SF_ECORRUPT;
    *out = e;
    return SF_OK;
}
