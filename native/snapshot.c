/*
 * snapshot.c - the snapshot container (layout.h): header validation, index
 * lookup, ordered iteration, and bounds-checked access to entries and
 * records.  Pure C, no Python; runs in workers.
 *
 * Invariants established by sf_snapshot_open() and relied on afterwards:
 *  - total_size <= the buffer length, so [0, size) is readable;
 *  - both index tables and both order arrays lie inside [128, size);
 *  - index capacities are powers of two (probing masks with cap - 1).
 * Entry offsets read from an index or order array are checked on every use
 * (step 6 of layout.h), since a checksum can be recomputed by an attacker.
 * Checksums themselves are verified by module.c at construction.
 */
#include "sf.h"

static int span_ok(const sf_snap_t *s, uint64_t off, uint64_t len)
{
    return off >= SF_HEADER_SIZE && off <= s->size && len <= s->size - off;
}

static int index_ok(const sf_snap_t *s, uint32_t off, uint32_t cap, uint32_t n)
{
    if ((off & 7u) != 0 || cap < SF_MIN_INDEX_CAP || (cap & (cap - 1)) != 0)
        return 0;
    if ((uint64_t)cap < 2 * (uint64_t)n)
        return 0;
    return span_ok(s, off, (uint64_t)cap * SF_SLOT_SIZE);
}

/**
 * sf_snapshot_open() - validate a snapshot header and fill in a view.
 * @s: the view to fill.
 * @buf: the snapshot bytes (stay owned by the caller, must outlive @s).
 * @len: their length.
 *
 * Checks layout.h steps 1, 3 and 5 (module.c does 2 and 4, the checksums).
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
    s->flag_order_off = h->flag_order_off;
    s->seg_order_off = h->seg_order_off;
    s->record_format = h->record_format;
    if (!index_ok(s, s->flag_index_off, s->flag_index_cap, s->n_flags)
        || !index_ok(s, s->seg_index_off, s->seg_index_cap, s->n_segments))
        return SF_ECORRUPT;
    if ((s->n_flags && !span_ok(s, s->flag_order_off, 4ull * s->n_flags))
        || (s->n_segments && !span_ok(s, s->seg_order_off, 4ull * s->n_segments)))
        return SF_ECORRUPT;
    return SF_OK;
}

static const sf_entry_t *entry(const sf_snap_t *s, uint32_t off)
{
    /* layout.h step 6: aligned and inside the body */
    if ((off & 7u) != 0 || !span_ok(s, off, SF_ENTRY_SIZE))
        return NULL;
    return (const sf_entry_t *)(s->base + off);
}

/**
 * sf_entry_key() - the key bytes of an entry, checked.
 * Return: SF_OK or SF_ECORRUPT.
 */
int sf_entry_key(const sf_snap_t *s, const sf_entry_t *e, const char **key, uint32_t *len)
{
    if (!span_ok(s, e->key_off, (uint64_t)e->key_len + 1)
        || s->base[(uint64_t)e->key_off + e->key_len] != 0)
        return SF_ECORRUPT;
    *key = (const char *)s->base + e->key_off;
    *len = e->key_len;
    return SF_OK;
}

int sf_entry_raw(const sf_snap_t *s, const sf_entry_t *e, const uint8_t **raw, uint32_t *len)
{
    if (e->raw_len == 0 || !span_ok(s, e->raw_off, e->raw_len))
        return SF_ECORRUPT;
    *raw = s->base + e->raw_off;
    *len = e->raw_len;
    return SF_OK;
}

int sf_entry_record(const sf_snap_t *s, const sf_entry_t *e, sf_rec_t *out)
{
    if (e->rec_len == 0 || (e->rec_off & 7u) != 0 || !span_ok(s, e->rec_off, e->rec_len))
        return SF_ECORRUPT;
    out->p = s->base + e->rec_off;
    out->len = e->rec_len;
    out->abs = e->rec_off;
    out->fc = NULL;
    return SF_OK;
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
    uint32_t i = (uint32_t)h & (cap - 1);
    for (uint32_t n = 0; n < cap; n++, i = (i + 1) & (cap - 1)) {
        const sf_slot_t *sl = &slots[i];
        if (sl->entry_off == 0)
            return SF_ENOTFOUND;
        if (sl->hash != h)
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
 * sf_snapshot_entry_at() - the i-th entry in key order.
 * Return: SF_OK, SF_ENOTFOUND (i out of range) or SF_ECORRUPT.
 */
int sf_snapshot_entry_at(const sf_snap_t *s, int which, uint32_t i, const sf_entry_t **out)
{
    uint32_t n = which == SF_FLAGS ? s->n_flags : s->n_segments;
    uint32_t off = which == SF_FLAGS ? s->flag_order_off : s->seg_order_off;
    if (i >= n)
        return SF_ENOTFOUND;
    uint32_t eo;
    memcpy(&eo, s->base + off + 4ull * i, 4);
    const sf_entry_t *e = entry(s, eo);
    if (e == NULL)
        return SF_ECORRUPT;
    *out = e;
    return SF_OK;
}
