/*
 * bucket.c - LaunchDarkly's bucket value: SHA-1 of "<prefix>.<value>", the
 * first 15 hex digits (60 bits) as an integer, divided by 0xFFFFFFFFFFFFFFF.
 *
 * The division is done in double exactly as ldclient does it (int / float:
 * the integer is rounded to a double first), so results agree bit for bit.
 */
#include "sf.h"

/**
 * sf_bucket_value() - bucket in [0, 1) for a prefix and a bucketable value.
 * @prefix: "<flagKey>.<salt>", "<segmentKey>.<salt>" or str(seed).
 * @plen: its length.
 * @value: the UTF-8 value string (a key, or an integer in decimal).
 * @vlen: its length.
 *
 * Return: the bucket value.
 */
double sf_bucket_value(const char *prefix, size_t plen, const char *value, size_t vlen)
{
    sf_sha1_t s;
    uint8_t d[20];
    sf_sha1_init(&s);
    sf_sha1_update(&s, prefix, plen);
    sf_sha1_update(&s, ".", 1);
    sf_sha1_update(&s, value, vlen);
    sf_sha1_final(&s, d);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | d[i];
    v >>= 4;   /* first 15 hex digits = top 60 bits */
    return (double)v / (double)0xFFFFFFFFFFFFFFFULL;
}
