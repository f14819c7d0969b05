/*
 * semver.c - semantic versions as ldclient reads them: SemVer 2.0 strictly
 * (semver 3 VersionInfo.parse), else with ".0" inserted after the leading run
 * of digits and dots, once or twice, the remainder cut at the first newline
 * (ldclient's retry with re.search("^([0-9.]*)(.*)")).  compile.py
 * parse_semver() is the Python twin; tests compare both with ldclient.
 */
#include "sf.h"

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_ident(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-';
}

/* numeric component 0|[1-9][0-9]*; return its length or 0 */
static size_t number(const char *s, size_t n)
{
    if (n == 0 || !is_digit(s[0]))
        return 0;
    if (s[0] == '0')
        return 1;
    size_t i = 1;
    while (i < n && is_digit(s[i]))
        i++;
    return i;
}

static int strict(const char *s, size_t n, sf_semver_t *v)
{
    size_t i = 0, k;
    const char **parts[3] = {&v->major, &v->minor, &v->patch};
    size_t *lens[3] = {&v->major_len, &v->minor_len, &v->patch_len};
    for (int c = 0; c < 3; c++) {
        if (c > 0) {
            if (i >= n || s[i] != '.')
                return 0;
            i++;
        }
        k = number(s + i, n - i);
        if (k == 0)
            return 0;
        *parts[c] = s + i;
        *lens[c] = k;
        i += k;
    }
    v->pre = NULL;
    v->pre_len = 0;
    if (i < n && s[i] == '-') {
        size_t start = ++i;
        /* identifiers: maximal runs of [0-9A-Za-z-] separated by '.' */
        for (;;) {
            size_t b = i;
            int digits_only = 1;
            while (i < n && is_ident(s[i])) {
                if (!is_digit(s[i]))
                    digits_only = 0;
                i++;
            }
            if (i == b)
                return 0;
            if (digits_only && s[b] == '0' && i - b > 1)
                return 0;   /* numeric identifiers have no leading zero */
            if (i < n && s[i] == '.') {
                i++;
                continue;
            }
            break;
        }
        v->pre = s + start;
        v->pre_len = i - start;
    }
    if (i < n && s[i] == '+') {
        i++;
        for (;;) {
            size_t b = i;
            while (i < n && is_ident(s[i]))
                i++;
            if (i == b)
                return 0;
            if (i < n && s[i] == '.') {
                i++;
                continue;
            }
            break;
        }
    }
    return i == n;
}

/**
 * sf_semver_parse() - parse a version string the way ldclient does.
 * @s: UTF-8 bytes.
 * @len: length.
 * @scratch: at least @len + 5 bytes; the parts may point into it.
 * @out: the parts (pointers into @s or @scratch).
 *
 * Return: 1 when the string is a version, else 0.
 */
int sf_semver_parse(const char *s, size_t len, char *scratch, sf_semver_t *out)
{
    if (strict(s, len, out))
        return 1;
    size_t lead = 0;
    while (lead < len && (is_digit(s[lead]) || s[lead] == '.'))
        lead++;
    size_t rest = lead;
    while (rest < len && s[rest] != '\n')
        rest++;
    size_t rlen = rest - lead;
    /* lead + ".0" + rest, then lead + ".0.0" + rest */
    memcpy(scratch, s, lead);
    memcpy(scratch + lead, ".0", 2);
    memcpy(scratch + lead + 2, s + lead, rlen);
    if (strict(scratch, lead + 2 + rlen, out))
        return 1;
    memcpy(scratch + lead + 2, ".0", 2);
    memcpy(scratch + lead + 4, s + lead, rlen);
    return strict(scratch, lead + 4 + rlen, out);
}

static int cmp_num(const char *a, size_t al, const char *b, size_t bl)
{
    if (al != bl)
        return al < bl ? -1 : 1;
    int c = memcmp(a, b, al);
    return (c > 0) - (c < 0);
}

static int cmp_bytes(const char *a, size_t al, const char *b, size_t bl)
{
    size_t m = al < bl ? al : bl;
    int c = memcmp(a, b, m);
    if (c != 0)
        return c < 0 ? -1 : 1;
    return (al > bl) - (al < bl);
}

static int all_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_digit(s[i]))
            return 0;
    return n > 0;
}

/**
 * sf_semver_compare() - SemVer precedence as semver 3's Version.compare.
 * @a: first version.
 * @b: second version.
 *
 * Numeric identifiers sort before alphanumeric ones and by value; build
 * metadata is ignored.
 * Return: -1, 0 or 1.
 */
int sf_semver_compare(const sf_semver_t *a, const sf_semver_t *b)
{
    int c;
    if ((c = cmp_num(a->major, a->major_len, b->major, b->major_len)) != 0)
        return c;
    if ((c = cmp_num(a->minor, a->minor_len, b->minor, b->minor_len)) != 0)
        return c;
    if ((c = cmp_num(a->patch, a->patch_len, b->patch, b->patch_len)) != 0)
        return c;
    if (a->pre == NULL || b->pre == NULL) {
        if (a->pre == NULL && b->pre == NULL)
            return 0;
        return a->pre == NULL ? 1 : -1;
    }
    const char *p = a->pre, *pe = a->pre + a->pre_len;
    const char *q = b->pre, *qe = b->pre + b->pre_len;
    for (;;) {
        const char *pn = memchr(p, '.', (size_t)(pe - p));
        const char *qn = memchr(q, '.', (size_t)(qe - q));
        if (pn == NULL) pn = pe;
        if (qn == NULL) qn = qe;
        size_t pl = (size_t)(pn - p), ql = (size_t)(qn - q);
        int pd = all_digits(p, pl), qd = all_digits(q, ql);
        if (pd && qd)
            c = cmp_num(p, pl, q, ql);
        else if (pd != qd)
            c = pd ? -1 : 1;
        else
            c = cmp_bytes(p, pl, q, ql);
        if (c != 0)
            return c;
        int pend = pn == pe, qend = qn == qe;
        if (pend || qend)
            return pend && qend ? 0 : (pend ? -1 : 1);
        p = pn + 1;
        q = qn + 1;
    }
}
