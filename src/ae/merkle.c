/*
 * merkle.c — anti-entropy hash trees of additive sums (see merkle.h). Pure and sans-I/O;
 * a tree belongs to one thread (the caller's), nothing here is shared.
 *
 * Design notes:
 * - Storage is one array of 2^(depth+1) sums in 1-based heap order: node k has children
 *   2k and 2k+1, the root is 1, level l index i is node 2^l + i, leaf i is 2^depth + i.
 *   Slot 0 is unused; it buys shift-only index arithmetic and the classic bottom-up
 *   interval walk below. At depth 20 that is 16 MiB.
 * - An update adds (new - old) mod 2^64 to one leaf and every ancestor: depth + 1 words.
 *   Sums wrap; equality of sums is all that matters, and wrapping addition is a group, so
 *   any order of the same changes gives the same tree.
 * - A ring range [start, end) becomes one or two inclusive hash intervals (two when it
 *   wraps). For each, the leaves fully inside are summed by the bottom-up segment walk
 *   (at most two nodes per level, so O(depth)); a leaf cut by an interval edge is reported
 *   instead. A wrapping range whose two edges fall in the same leaf reports that leaf once,
 *   so that the caller, who adds the keys of each reported leaf that lie inside the range,
 *   counts each key once.
 * - The item digest hashes the key with the ring hash, then hashes that together with the
 *   version and the tombstone flag as fixed little-endian bytes: no allocation for long
 *   keys, and the same value on every host. 0 is reserved for "nothing here" and maps to 1.
 */
#include "ae/merkle.h"

#include "common/hash.h"

#include <stdlib.h>

struct kv_merkle {
    unsigned depth;
    uint64_t nleaves; /* 2^depth */
    uint64_t *sum;    /* 2 * nleaves slots, [0] unused */
};

kv_merkle *kv_merkle_new(unsigned depth)
{
    if (depth < KV_MERKLE_MIN_DEPTH || depth > KV_MERKLE_MAX_DEPTH)
        return NULL;
    kv_merkle *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->depth = depth;
    t->nleaves = (uint64_t)1 << depth;
    t->sum = calloc((size_t)(2 * t->nleaves), sizeof(uint64_t));
    if (!t->sum) {
        free(t);
        return NULL;
    }
    return t;
}

void kv_merkle_free(kv_merkle *t)
{
    if (!t)
        return;
    free(t->sum);
    free(t);
}

unsigned kv_merkle_depth(const kv_merkle *t)
{
    return t->depth;
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

uint64_t kv_merkle_item_digest(const void *key, size_t klen, const kv_version *ver, bool tombstone)
{
    uint8_t b[21];
    put_le(b, kv_ring_hash(key, klen), 8);
    put_le(b + 8, ver->ts, 8);
    put_le(b + 16, ver->node, 4);
    b[20] = tombstone ? 1 : 0;
    uint64_t d = kv_ring_hash(b, sizeof(b));
    return d ? d : 1;
}

uint64_t kv_merkle_leaf_of(const kv_merkle *t, uint64_t hash)
{
    return hash >> (64 - t->depth);
}

void kv_merkle_leaf_range(const kv_merkle *t, uint64_t leaf, uint64_t *lo, uint64_t *hi)
{
    if (leaf >= t->nleaves) {
        /* Out of range (a peer's bad index): an empty range, lo > hi. */
        if (lo)
            *lo = 1;
        if (hi)
            *hi = 0;
        return;
    }
    unsigned shift = 64 - t->depth;
    uint64_t first = leaf << shift;
    if (lo)
        *lo = first;
    if (hi)
        *hi = first + (((uint64_t)1 << shift) - 1);
}

void kv_merkle_update(kv_merkle *t, uint64_t hash, bool had, uint64_t old_digest, bool has,
                      uint64_t new_digest)
{
    uint64_t delta = (has ? new_digest : 0) - (had ? old_digest : 0);
    if (delta == 0)
        return;
    for (uint64_t k = t->nleaves + kv_merkle_leaf_of(t, hash); k >= 1; k >>= 1)
        t->sum[k] += delta;
}

void kv_merkle_add(kv_merkle *t, uint64_t hash, uint64_t digest)
{
    kv_merkle_update(t, hash, false, 0, true, digest);
}

void kv_merkle_remove(kv_merkle *t, uint64_t hash, uint64_t digest)
{
    kv_merkle_update(t, hash, true, digest, false, 0);
}

uint64_t kv_merkle_root(const kv_merkle *t)
{
    return t->sum[1];
}

uint64_t kv_merkle_node(const kv_merkle *t, unsigned level, uint64_t index, uint64_t *lo,
                        uint64_t *hi)
{
    if (level > t->depth || index >= ((uint64_t)1 << level)) {
        /* Out of range (a peer's bad coordinates): sum 0 over an empty range, lo > hi. */
        if (lo)
            *lo = 1;
        if (hi)
            *hi = 0;
        return 0;
    }
    if (level == 0) {
        /* The whole space; 64 - 0 would be an undefined shift below. */
        if (lo)
            *lo = 0;
        if (hi)
            *hi = UINT64_MAX;
    } else {
        unsigned shift = 64 - level;
        uint64_t first = index << shift;
        if (lo)
            *lo = first;
        if (hi)
            *hi = first + (((uint64_t)1 << shift) - 1);
    }
    return t->sum[((uint64_t)1 << level) + index];
}

/* Sum of leaves first..last (inclusive, first <= last) from the fewest covering nodes. */
static uint64_t merkle_cover(const kv_merkle *t, uint64_t first, uint64_t last)
{
    uint64_t s = 0;
    uint64_t l = first + t->nleaves, r = last + t->nleaves + 1; /* [l, r) on one level */
    while (l < r) {
        if (l & 1)
            s += t->sum[l++];
        if (r & 1)
            s += t->sum[--r];
        l >>= 1;
        r >>= 1;
    }
    return s;
}

static void merkle_edge(uint64_t edge[2], unsigned *n, uint64_t leaf)
{
    for (unsigned i = 0; i < *n; i++)
        if (edge[i] == leaf)
            return;
    edge[(*n)++] = leaf;
}

/* Adds the whole leaves of the inclusive interval [a, b] (a <= b); records cut leaves. */
static uint64_t merkle_interval(const kv_merkle *t, uint64_t a, uint64_t b, uint64_t edge[2],
                                unsigned *n_edge)
{
    uint64_t la = kv_merkle_leaf_of(t, a), lb = kv_merkle_leaf_of(t, b);
    uint64_t lo_a, hi_b;
    kv_merkle_leaf_range(t, la, &lo_a, NULL);
    kv_merkle_leaf_range(t, lb, NULL, &hi_b);
    uint64_t first = la, last = lb;
    if (la == lb) {
        if (a == lo_a && b == hi_b)
            return t->sum[t->nleaves + la];
        merkle_edge(edge, n_edge, la);
        return 0;
    }
    if (a != lo_a) {
        merkle_edge(edge, n_edge, la);
        first++;
    }
    if (b != hi_b) {
        merkle_edge(edge, n_edge, lb);
        last--; /* lb > la >= 0: no wrap */
    }
    return first <= last ? merkle_cover(t, first, last) : 0;
}

uint64_t kv_merkle_range_digest(const kv_merkle *t, uint64_t start, uint64_t end, uint64_t edge[2],
                                unsigned *n_edge)
{
    *n_edge = 0;
    if (start == end)
        return t->sum[1];
    if (start < end)
        return merkle_interval(t, start, end - 1, edge, n_edge);
    /* Wraps: [start, max] then [0, end), the latter empty when end is 0. */
    uint64_t s = merkle_interval(t, start, UINT64_MAX, edge, n_edge);
    if (end > 0)
        s += merkle_interval(t, 0, end - 1, edge, n_edge);
    return s;
}

/* Depth-first, left child first, so leaves come out in ascending order. */
static void merkle_diff_walk(const kv_merkle *a, const kv_merkle *b, uint64_t k, uint64_t *out,
                             size_t max, size_t *count)
{
    if (a->sum[k] == b->sum[k])
        return;
    if (k >= a->nleaves) {
        if (*count < max)
            out[*count] = k - a->nleaves;
        (*count)++;
        return;
    }
    merkle_diff_walk(a, b, 2 * k, out, max, count);
    merkle_diff_walk(a, b, 2 * k + 1, out, max, count);
}

size_t kv_merkle_diff(const kv_merkle *a, const kv_merkle *b, uint64_t *out, size_t max, bool *ok)
{
    if (!a || !b || a->depth != b->depth) {
        if (ok)
            *ok = false;
        return 0;
    }
    if (ok)
        *ok = true;
    size_t count = 0;
    merkle_diff_walk(a, b, 1, out, max, &count);
    return count;
}
