/*
 * keygen.c — random numbers, key choosers and workload mixes for kvbench (see keygen.h).
 * No global state.
 */
#include "keygen.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------- rng ---------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void kvb_rng_seed(kvb_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t kvb_rng_next(kvb_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5u, 7) * 9u;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double kvb_rng_double(kvb_rng *r)
{
    return (double)(kvb_rng_next(r) >> 11) * 0x1.0p-53;
}

uint64_t kvb_rng_below(kvb_rng *r, uint64_t n)
{
    /* Reject the top sliver that would make some residues more likely. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do {
        x = kvb_rng_next(r);
    } while (x >= limit);
    return x % n;
}

/* ---------- zipfian ---------- */

double kvb_zeta(uint64_t n, double theta)
{
    double sum = 0.0;
    for (uint64_t i = 1; i <= n; i++)
        sum += 1.0 / pow((double)i, theta);
    return sum;
}

void kvb_zipf_init(kvb_zipf *z, uint64_t n, double theta)
{
    z->n = n;
    z->theta = theta;
    z->alpha = 1.0 / (1.0 - theta);
    z->zetan = kvb_zeta(n, theta);
    double zeta2 = kvb_zeta(n < 2 ? n : 2, theta);
    z->half_pow_theta = pow(0.5, theta);
    /* eta makes the continuous approximation meet the exact head (ranks 0 and 1). */
    z->eta = n < 2 ? 0.0 : (1.0 - pow(2.0 / (double)n, 1.0 - theta)) / (1.0 - zeta2 / z->zetan);
}

uint64_t kvb_zipf_rank(const kvb_zipf *z, kvb_rng *r)
{
    double u = kvb_rng_double(r);
    double uz = u * z->zetan;
    if (uz < 1.0)
        return 0;
    if (uz < 1.0 + z->half_pow_theta)
        return z->n > 1 ? 1 : 0;
    uint64_t rank = (uint64_t)((double)z->n * pow(z->eta * u - z->eta + 1.0, z->alpha));
    return rank < z->n ? rank : z->n - 1;
}

static uint64_t fnv1a64(uint64_t v)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 8; i++) {
        h ^= v & 0xffu;
        h *= 0x100000001b3ull;
        v >>= 8;
    }
    return h;
}

uint64_t kvb_zipf_next(const kvb_zipf *z, kvb_rng *r)
{
    return fnv1a64(kvb_zipf_rank(z, r)) % z->n;
}

uint64_t kvb_key_pick(kvb_dist dist, const kvb_zipf *z, uint64_t nkeys, kvb_rng *r)
{
    if (dist == KVB_DIST_ZIPFIAN)
        return kvb_zipf_next(z, r);
    return kvb_rng_below(r, nkeys);
}

/* ---------- keys ---------- */

size_t kvb_key_min_size(uint64_t nkeys)
{
    uint64_t maxidx = nkeys ? nkeys - 1 : 0;
    size_t digits = 1;
    while (maxidx >= 10) {
        maxidx /= 10;
        digits++;
    }
    return 1 + digits;
}

void kvb_key_format(uint64_t idx, size_t key_size, char *out)
{
    out[0] = 'k';
    for (size_t i = key_size; i > 1; i--) {
        out[i - 1] = (char)('0' + idx % 10);
        idx /= 10;
    }
}

/* ---------- mixes ---------- */

const char *kvb_op_name(kvb_op_kind k)
{
    switch (k) {
    case KVB_OP_READ:
        return "read";
    case KVB_OP_UPDATE:
        return "update";
    case KVB_OP_DELETE:
        return "delete";
    default:
        return "?";
    }
}

int kvb_mix_named(const char *name, kvb_mix *out)
{
    static const struct {
        const char *name;
        unsigned r, u;
    } named[] = {{"a", 50, 50}, {"b", 95, 5}, {"c", 100, 0}, {"write", 0, 100}};
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++) {
        if (strcmp(name, named[i].name) == 0) {
            out->pct[KVB_OP_READ] = named[i].r;
            out->pct[KVB_OP_UPDATE] = named[i].u;
            out->pct[KVB_OP_DELETE] = 0;
            return 0;
        }
    }
    return -1;
}

int kvb_mix_parse(const char *s, kvb_mix *out, char *why, size_t whycap)
{
    kvb_mix m = {{0, 0, 0}};
    unsigned seen = 0;
    const char *p = s;
    while (*p) {
        const char *eq = strchr(p, '=');
        if (!eq) {
            snprintf(why, whycap, "'%s': expected NAME=PERCENT", p);
            return -1;
        }
        size_t nlen = (size_t)(eq - p);
        int kind = -1;
        if (nlen == 4 && strncmp(p, "read", 4) == 0)
            kind = KVB_OP_READ;
        else if ((nlen == 6 && strncmp(p, "update", 6) == 0) ||
                 (nlen == 5 && strncmp(p, "write", 5) == 0))
            kind = KVB_OP_UPDATE;
        else if (nlen == 6 && strncmp(p, "delete", 6) == 0)
            kind = KVB_OP_DELETE;
        if (kind < 0) {
            snprintf(why, whycap, "'%.*s': not one of read, update (or write), delete", (int)nlen,
                     p);
            return -1;
        }
        if (seen & (1u << kind)) {
            snprintf(why, whycap, "'%.*s' given twice", (int)nlen, p);
            return -1;
        }
        seen |= 1u << kind;
        char *end;
        unsigned long v = strtoul(eq + 1, &end, 10);
        if (end == eq + 1 || (*end != ',' && *end != '\0') || v > 100) {
            snprintf(why, whycap, "'%.*s': percentage must be an integer 0..100", (int)nlen, p);
            return -1;
        }
        m.pct[kind] = (unsigned)v;
        p = *end == ',' ? end + 1 : end;
    }
    unsigned total = m.pct[0] + m.pct[1] + m.pct[2];
    if (total != 100) {
        snprintf(why, whycap, "percentages add up to %u, not 100", total);
        return -1;
    }
    *out = m;
    return 0;
}

kvb_op_kind kvb_mix_pick(const kvb_mix *m, kvb_rng *r)
{
    unsigned x = (unsigned)kvb_rng_below(r, 100);
    if (x < m->pct[KVB_OP_READ])
        return KVB_OP_READ;
    if (x < m->pct[KVB_OP_READ] + m->pct[KVB_OP_UPDATE])
        return KVB_OP_UPDATE;
    return KVB_OP_DELETE;
}
