/*
 * sha1.c - SHA-1 (FIPS 180-4), used only for LaunchDarkly bucketing.
 *
 * Written from the specification.  Bucketing hashes short strings, so this
 * favours clarity over speed.  No state outside the caller's sf_sha1_t.
 */
#include "sf.h"

static inline uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

/* One 64-byte block; the message schedule is kept as a rolling 16-word window. */
static void block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[16];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16
             | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
#define W(i) (i < 16 ? w[i] : (w[(i) & 15] = rol(w[((i) - 3) & 15] ^ w[((i) - 8) & 15] \
                                               ^ w[((i) - 14) & 15] ^ w[(i) & 15], 1)))
#define STEP(i, f, k) do { uint32_t t = rol(a, 5) + (f) + e + (k) + W(i); \
                           e = d; d = c; c = rol(b, 30); b = a; a = t; } while (0)
    for (int i = 0; i < 20; i++)
        STEP(i, (b & c) | (~b & d), 0x5A827999u);
    for (int i = 20; i < 40; i++)
        STEP(i, b ^ c ^ d, 0x6ED9EBA1u);
    for (int i = 40; i < 60; i++)
        STEP(i, (b & c) | (b & d) | (c & d), 0x8F1BBCDCu);
    for (int i = 60; i < 80; i++)
        STEP(i, b ^ c ^ d, 0xCA62C1D6u);
#undef STEP
#undef W
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
}

void sf_sha1_init(sf_sha1_t *s)
{
    s->h[0] = 0x67452301u; s->h[1] = 0xEFCDAB89u; s->h[2] = 0x98BADCFEu;
    s->h[3] = 0x10325476u; s->h[4] = 0xC3D2E1F0u;
    s->total = 0;
    s->used = 0;
}

void sf_sha1_update(sf_sha1_t *s, const void *data, size_t len)
{
    const uint8_t *p = data;
    s->total += len;
    while (len > 0) {
        size_t take = 64 - s->used;
        if (take > len)
            take = len;
        memcpy(s->buf + s->used, p, take);
        s->used += take;
        p += take;
        len -= take;
        if (s->used == 64) {
            block(s->h, s->buf);
            s->used = 0;
        }
    }
}

void sf_sha1_final(sf_sha1_t *s, uint8_t out[20])
{
    uint64_t bits = s->total * 8;
    s->buf[s->used++] = 0x80;
    if (s->used > 56) {          /* no room for the length: pad this block, then another */
        memset(s->buf + s->used, 0, 64 - s->used);
        block(s->h, s->buf);
        s->used = 0;
    }
    memset(s->buf + s->used, 0, 56 - s->used);
    for (int i = 0; i < 8; i++)
        s->buf[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    block(s->h, s->buf);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(s->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)s->h[i];
    }
}
