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

#if defined(__GNUC__) && defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define SF_HAVE_SHA_NI_CODE 1

/* One block with the x86 SHA extensions: same result as block(), several times faster. */
__attribute__((target("sha,sse4.1,ssse3")))
static void block_ni(uint32_t h[5], const uint8_t *p)
{
    const __m128i mask = _mm_set_epi64x(0x0001020304050607LL, 0x08090a0b0c0d0e0fLL);
    __m128i abcd = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)h), 0x1B);
    __m128i e0 = _mm_set_epi32((int)h[4], 0, 0, 0);
    const __m128i abcd_save = abcd, e_save = e0;
    __m128i w[4], e = e0, e_prev = e0;
    for (int g = 0; g < 20; g++) {
        if (g < 4) {
            w[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * g)), mask);
        } else {
            /* W[g] = msg2(msg1(W[g-4], W[g-3]) ^ W[g-2], W[g-1]); W[g-4] lives in w[g & 3] */
            __m128i t = _mm_sha1msg1_epu32(w[g & 3], w[(g - 3) & 3]);
            t = _mm_xor_si128(t, w[(g - 2) & 3]);
            w[g & 3] = _mm_sha1msg2_epu32(t, w[(g - 1) & 3]);
        }
        e = g == 0 ? _mm_add_epi32(e0, w[0]) : _mm_sha1nexte_epu32(e_prev, w[g & 3]);
        e_prev = abcd;
        switch (g / 5) {   /* the round function is an immediate operand */
        case 0: abcd = _mm_sha1rnds4_epu32(abcd, e, 0); break;
        case 1: abcd = _mm_sha1rnds4_epu32(abcd, e, 1); break;
        case 2: abcd = _mm_sha1rnds4_epu32(abcd, e, 2); break;
        default: abcd = _mm_sha1rnds4_epu32(abcd, e, 3); break;
        }
    }
    e0 = _mm_sha1nexte_epu32(e_prev, e_save);
    abcd = _mm_add_epi32(abcd, abcd_save);
    _mm_storeu_si128((__m128i *)h, _mm_shuffle_epi32(abcd, 0x1B));
    h[4] = (uint32_t)_mm_extract_epi32(e0, 3);
}

static int cpu_has_sha_ni(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSE4_1) || !(c & bit_SSSE3))
        return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (b & (1u << 29)) != 0;   /* CPUID.(7,0):EBX.SHA */
}
#endif

/* Chosen once at module import (sf_sha1_setup) and never changed: a constant, not state. */
static void (*block_fn)(uint32_t h[5], const uint8_t *p) = block;

/**
 * sf_sha1_setup() - pick the SHA-1 block function for this CPU.
 * @allow_ni: 0 forces the portable code (tests compare both).
 *
 * Context: module import only.
 * Return: 1 when the SHA extensions are used.
 */
int sf_sha1_setup(int allow_ni)
{
    block_fn = block;
#ifdef SF_HAVE_SHA_NI_CODE
    if (allow_ni && cpu_has_sha_ni()) {
        block_fn = block_ni;
        return 1;
    }
#endif
    return 0;
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
            block_fn(s->h, s->buf);
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
        block_fn(s->h, s->buf);
        s->used = 0;
    }
    memset(s->buf + s->used, 0, 56 - s->used);
    for (int i = 0; i < 8; i++)
        s->buf[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    block_fn(s->h, s->buf);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(s->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)s->h[i];
    }
}
