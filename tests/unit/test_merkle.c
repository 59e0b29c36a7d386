/*
 * test_merkle.c — the anti-entropy hash trees (src/ae/merkle.h) against a reference model:
 * a tree kept current through 10k random writes, overwrites, deletes and purges equals one
 * rebuilt from the surviving items and the sums computed from the model alone (root, every
 * leaf, inner nodes); the order items arrive in does not matter; diff names exactly the
 * leaves where two replicas differ, sorted and truncated with the true total; a range's
 * digest plus the caller's edge-leaf keys equals the brute-force sum over the range for
 * wrap-around, whole-space, in-one-leaf and leaf-aligned ranges and the 0 / UINT64_MAX
 * corners; item digests tell every field apart and are never 0; bad depths are refused.
 *
 * Expected sums are computed here from the header's shape (leaf = top `depth` bits of the
 * hash, sums mod 2^64), not only by comparing the tree with itself. Random numbers come
 * from a fixed-seed generator: every run tests the same cases.
 */
#include "ae/merkle.h"
#include "common/hash.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * One assertion that reports only when it fails: ctest runs with --full-stats, which
 * ships every passing criterion assertion to the runner, and these tests check millions
 * of conditions in loops.
 */
#define CHECK(cond) REQUIRE(cond, "%s", #cond)
#define REQUIRE(cond, ...)                                                                         \
    do {                                                                                           \
        if (!(cond))                                                                               \
            cr_assert_fail(__VA_ARGS__);                                                           \
    } while (0)

typedef unsigned long long ull;

static uint64_t rnd_state;

static uint64_t rnd(void)
{
    /* splitmix64 */
    uint64_t z = (rnd_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static kv_merkle *new_tree(unsigned depth)
{
    kv_merkle *t = kv_merkle_new(depth);
    CHECK(t != NULL);
    CHECK(kv_merkle_depth(t) == depth);
    return t;
}

/* The leaf of h by the header's definition, computed without the tree. */
static uint64_t leaf_by_spec(unsigned depth, uint64_t h)
{
    return h >> (64 - depth);
}

/* ---- the reference model: a replica's items ---------------------------------------- */

typedef struct item {
    char key[24];
    size_t klen;
    uint64_t hash; /* ring hash of the key */
    bool present;  /* false: the key is absent (never written, or purged) */
    kv_version ver;
    bool tomb;
} item;

static uint64_t digest_of(const item *it)
{
    return kv_merkle_item_digest(it->key, it->klen, &it->ver, it->tomb);
}

/* n keys "key-<i>" (prefix p), all absent. */
static item *make_items(size_t n, const char *p)
{
    item *m = calloc(n, sizeof(*m));
    CHECK(m != NULL);
    for (size_t i = 0; i < n; i++) {
        m[i].klen = (size_t)snprintf(m[i].key, sizeof(m[i].key), "%s-%zu", p, i);
        m[i].hash = kv_ring_hash(m[i].key, m[i].klen);
    }
    return m;
}

static void set_version(item *it, uint64_t ts, uint32_t node, bool tomb)
{
    it->present = true;
    it->ver.ts = ts;
    it->ver.node = node;
    it->tomb = tomb;
}

/* A tree built from scratch from the model's present items. */
static kv_merkle *rebuild(unsigned depth, const item *m, size_t n)
{
    kv_merkle *t = new_tree(depth);
    for (size_t i = 0; i < n; i++)
        if (m[i].present)
            kv_merkle_add(t, m[i].hash, digest_of(&m[i]));
    return t;
}

/*
 * Prefix sums of the leaf sums computed from the model alone: leaf i's expected sum is
 * pre[i+1] - pre[i], a node's is the difference over its leaves (mod 2^64 throughout).
 */
static uint64_t *model_prefix(unsigned depth, const item *m, size_t n)
{
    uint64_t nleaves = (uint64_t)1 << depth;
    uint64_t *pre = calloc((size_t)nleaves + 1, sizeof(uint64_t));
    CHECK(pre != NULL);
    for (size_t i = 0; i < n; i++)
        if (m[i].present)
            pre[leaf_by_spec(depth, m[i].hash) + 1] += digest_of(&m[i]);
    for (uint64_t i = 1; i <= nleaves; i++)
        pre[i] += pre[i - 1];
    return pre;
}

static uint64_t leaf_sum(const kv_merkle *t, uint64_t leaf)
{
    return kv_merkle_node(t, kv_merkle_depth(t), leaf, NULL, NULL);
}

/* Root, every leaf, every node of the top 10 levels and 500 random deeper nodes. */
static void check_against_model(const kv_merkle *t, const item *m, size_t n)
{
    unsigned d = kv_merkle_depth(t);
    uint64_t *pre = model_prefix(d, m, n);
    uint64_t nleaves = (uint64_t)1 << d;
    REQUIRE(kv_merkle_root(t) == pre[nleaves], "depth %u: root %llx, model %llx", d,
            (ull)kv_merkle_root(t), (ull)pre[nleaves]);
    for (uint64_t i = 0; i < nleaves; i++)
        REQUIRE(leaf_sum(t, i) == pre[i + 1] - pre[i], "depth %u leaf %llu", d, (ull)i);
    for (int k = 0; k < 2000; k++) {
        unsigned level;
        uint64_t idx;
        if (k < 1500) {
            /* all nodes of levels 0..min(d, 10), in order, while k lasts */
            unsigned lv = 0;
            uint64_t at = (uint64_t)k;
            while (lv <= d && at >= ((uint64_t)1 << lv)) {
                at -= (uint64_t)1 << lv;
                lv++;
            }
            if (lv > d || lv > 10)
                continue;
            level = lv;
            idx = at;
        } else {
            level = (unsigned)(rnd() % (d + 1));
            idx = rnd() % ((uint64_t)1 << level);
        }
        uint64_t first = idx << (d - level), last = ((idx + 1) << (d - level)) - 1;
        uint64_t want = pre[last + 1] - pre[first];
        REQUIRE(kv_merkle_node(t, level, idx, NULL, NULL) == want,
                "depth %u node level %u index %llu", d, level, (ull)idx);
    }
    free(pre);
}

static void check_equal_trees(const kv_merkle *a, const kv_merkle *b)
{
    unsigned d = kv_merkle_depth(a);
    CHECK(kv_merkle_depth(b) == d);
    CHECK(kv_merkle_root(a) == kv_merkle_root(b));
    for (uint64_t i = 0; i < ((uint64_t)1 << d); i++)
        REQUIRE(leaf_sum(a, i) == leaf_sum(b, i), "depth %u leaf %llu differs", d, (ull)i);
    bool ok = false;
    CHECK(kv_merkle_diff(a, b, NULL, 0, &ok) == 0);
    CHECK(ok);
}

/* ---- (1) kept current on every write == rebuilt from scratch ------------------------ */

/* 10k random operations on nkeys keys; every change goes through kv_merkle_update. */
static void random_history(unsigned depth, uint64_t seed)
{
    const size_t nkeys = 1500;
    item *m = make_items(nkeys, "key");
    kv_merkle *t = new_tree(depth);
    rnd_state = seed;
    uint64_t clock = 1000;
    size_t noops = 0, purges = 0;
    for (int op = 0; op < 10000; op++) {
        item *it = &m[rnd() % nkeys];
        bool had = it->present;
        uint64_t old = had ? digest_of(it) : 0;
        unsigned kind = (unsigned)(rnd() % 10);
        if (kind <= 4) { /* a write: a newer version, from one of five writers */
            set_version(it, ++clock, (uint32_t)(1 + rnd() % 5), false);
        } else if (kind <= 6) { /* a delete: a tombstone with a newer version */
            set_version(it, ++clock, (uint32_t)(1 + rnd() % 5), true);
        } else if (kind == 7) { /* a tombstone purged, or an absent key left absent */
            it->present = false;
            purges += had;
        } else if (kind == 8) { /* a replayed write of the same version: no change */
            noops += had;
        } else { /* the same key written twice by different writers at one ts */
            set_version(it, clock, (uint32_t)(6 + rnd() % 3), rnd() & 1);
        }
        bool has = it->present;
        uint64_t now = has ? digest_of(it) : 0;
        if (!had && has && (op & 1))
            kv_merkle_add(t, it->hash, now);
        else if (had && !has && (op & 1))
            kv_merkle_remove(t, it->hash, old);
        else
            kv_merkle_update(t, it->hash, had, old, has, now);
    }
    CHECK(noops > 100);
    CHECK(purges > 100);
    check_against_model(t, m, nkeys);
    kv_merkle *r = rebuild(depth, m, nkeys);
    check_equal_trees(t, r);
    /* Deleting every item one by one brings every sum back to 0. */
    for (size_t i = 0; i < nkeys; i++)
        if (m[i].present) {
            kv_merkle_remove(t, m[i].hash, digest_of(&m[i]));
            m[i].present = false;
        }
    check_against_model(t, m, nkeys);
    CHECK(kv_merkle_root(t) == 0);
    kv_merkle_free(r);
    kv_merkle_free(t);
    free(m);
}

Test(merkle, updates_match_rebuild_and_model_depth_1)
{
    random_history(1, 11);
}

Test(merkle, updates_match_rebuild_and_model_depth_8)
{
    random_history(8, 12);
}

Test(merkle, updates_match_rebuild_and_model_depth_20)
{
    random_history(20, 13);
}

Test(merkle, equal_digests_are_a_no_op_and_absent_adds_nothing)
{
    kv_merkle *t = new_tree(4);
    kv_merkle_update(t, 123, true, 77, true, 77);
    kv_merkle_update(t, 123, false, 55, false, 66); /* nothing before, nothing after */
    CHECK(kv_merkle_root(t) == 0);
    kv_merkle_add(t, UINT64_MAX, 5);
    kv_merkle_update(t, UINT64_MAX, true, 5, true, 9);
    CHECK(kv_merkle_root(t) == 9);
    CHECK(leaf_sum(t, 15) == 9);
    /* Sums wrap mod 2^64 and still come back exactly. */
    kv_merkle_add(t, 0, UINT64_MAX);
    kv_merkle_add(t, 1, UINT64_MAX);
    CHECK(leaf_sum(t, 0) == UINT64_MAX - 1);
    kv_merkle_remove(t, 0, UINT64_MAX);
    kv_merkle_remove(t, 1, UINT64_MAX);
    kv_merkle_remove(t, UINT64_MAX, 9);
    CHECK(kv_merkle_root(t) == 0);
    CHECK(leaf_sum(t, 0) == 0);
    kv_merkle_free(t);
}

/* ---- (2) order does not matter ------------------------------------------------------ */

Test(merkle, same_items_in_any_order_give_equal_trees)
{
    const size_t n = 3000;
    item *m = make_items(n, "order");
    rnd_state = 21;
    for (size_t i = 0; i < n; i++)
        set_version(&m[i], 5000 + rnd() % 100, (uint32_t)(rnd() % 4), rnd() % 5 == 0);
    size_t *perm = malloc(n * sizeof(*perm));
    CHECK(perm != NULL);
    for (size_t i = 0; i < n; i++)
        perm[i] = i;
    for (size_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
        size_t j = (size_t)(rnd() % (i + 1)), x = perm[i];
        perm[i] = perm[j];
        perm[j] = x;
    }
    const unsigned depths[] = {1, 12, 20};
    for (size_t di = 0; di < sizeof(depths) / sizeof(depths[0]); di++) {
        unsigned d = depths[di];
        kv_merkle *a = new_tree(d), *b = new_tree(d), *c = new_tree(d);
        for (size_t i = 0; i < n; i++)
            kv_merkle_add(a, m[i].hash, digest_of(&m[i]));
        for (size_t i = n; i-- > 0;)
            kv_merkle_add(b, m[i].hash, digest_of(&m[i]));
        /* c: shuffled, and each item first arrives in an older version then is overwritten */
        for (size_t i = 0; i < n; i++) {
            const item *it = &m[perm[i]];
            item older = *it;
            older.ver.ts -= 1;
            kv_merkle_add(c, it->hash, digest_of(&older));
            kv_merkle_update(c, it->hash, true, digest_of(&older), true, digest_of(it));
        }
        CHECK(kv_merkle_root(a) != 0);
        check_equal_trees(a, b);
        check_equal_trees(a, c);
        check_against_model(c, m, n);
        kv_merkle_free(a);
        kv_merkle_free(b);
        kv_merkle_free(c);
    }
    free(perm);
    free(m);
}

/* ---- (3) diff ----------------------------------------------------------------------- */

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

/* Replica b is a copy of a with k keys made different; diff must name their leaves. */
static void diff_case(unsigned depth, size_t k, uint64_t seed)
{
    const size_t n = 4000, extra = 400; /* keys n..n+extra-1 absent in a */
    item *a = make_items(n + extra, "diff");
    rnd_state = seed;
    for (size_t i = 0; i < n; i++)
        set_version(&a[i], 100 + rnd() % 1000, (uint32_t)(rnd() % 3), rnd() % 7 == 0);
    item *b = malloc((n + extra) * sizeof(*b));
    CHECK(b != NULL);
    memcpy(b, a, (n + extra) * sizeof(*b));
    uint64_t *want = malloc((k ? k : 1) * sizeof(uint64_t));
    CHECK(want != NULL);
    size_t nwant = 0;
    bool *touched = calloc(n + extra, sizeof(bool));
    CHECK(touched != NULL);
    for (size_t j = 0; j < k; j++) {
        size_t i;
        do
            i = (size_t)(rnd() % (n + extra));
        while (touched[i]);
        touched[i] = true;
        item *it = &b[i];
        if (!it->present) { /* b has a key a never saw */
            set_version(it, 7, 1, false);
        } else {
            switch (rnd() % 4) {
            case 0: /* b missed the key */
                it->present = false;
                break;
            case 1: /* b holds a newer version */
                it->ver.ts++;
                break;
            case 2: /* same ts, another writer */
                it->ver.node ^= 0x10;
                break;
            default: /* b has the delete, a does not (or the other way round) */
                it->tomb = !it->tomb;
                break;
            }
        }
        want[nwant++] = leaf_by_spec(depth, it->hash);
    }
    qsort(want, nwant, sizeof(*want), cmp_u64);
    size_t u = 0;
    for (size_t j = 0; j < nwant; j++)
        if (u == 0 || want[u - 1] != want[j])
            want[u++] = want[j];
    nwant = u;
    CHECK((k == 0) == (nwant == 0));

    kv_merkle *ta = rebuild(depth, a, n + extra), *tb = rebuild(depth, b, n + extra);
    size_t cap = nwant + 8;
    uint64_t *out = malloc(cap * sizeof(uint64_t));
    CHECK(out != NULL);
    bool ok = false;
    size_t got = kv_merkle_diff(ta, tb, out, cap, &ok);
    CHECK(ok);
    REQUIRE(got == nwant, "depth %u k %zu: diff found %zu leaves, want %zu", depth, k, got, nwant);
    for (size_t j = 0; j < nwant; j++)
        REQUIRE(out[j] == want[j], "depth %u k %zu: out[%zu] %llu want %llu", depth, k, j,
                (ull)out[j], (ull)want[j]);
    /* Symmetric. */
    CHECK(kv_merkle_diff(tb, ta, out, cap, NULL) == nwant);
    for (size_t j = 0; j < nwant; j++)
        CHECK(out[j] == want[j]);
    /* Truncated at max: the first max leaves, nothing past them written, the total returned. */
    size_t max = nwant / 2;
    for (size_t j = 0; j < cap; j++)
        out[j] = 0xABABABABABABABABull;
    CHECK(kv_merkle_diff(ta, tb, out, max, &ok) == nwant);
    CHECK(ok);
    for (size_t j = 0; j < max; j++)
        CHECK(out[j] == want[j]);
    for (size_t j = max; j < cap; j++)
        CHECK(out[j] == 0xABABABABABABABABull);
    CHECK(kv_merkle_diff(ta, tb, NULL, 0, NULL) == nwant);
    /* Equal content after repair: b takes a's items, no difference left. */
    kv_merkle_free(tb);
    tb = rebuild(depth, a, n + extra);
    CHECK(kv_merkle_diff(ta, tb, out, cap, NULL) == 0);
    kv_merkle_free(ta);
    kv_merkle_free(tb);
    free(out);
    free(touched);
    free(want);
    free(b);
    free(a);
}

Test(merkle, diff_names_exactly_the_differing_leaves)
{
    const size_t ks[] = {0, 1, 5, 300};
    const unsigned depths[] = {1, 6, 10, 20};
    for (size_t di = 0; di < sizeof(depths) / sizeof(depths[0]); di++)
        for (size_t ki = 0; ki < sizeof(ks) / sizeof(ks[0]); ki++)
            diff_case(depths[di], ks[ki], 31 + di * 10 + ki);
}

Test(merkle, diff_of_different_depths_is_refused)
{
    kv_merkle *a = new_tree(4), *b = new_tree(5);
    kv_merkle_add(a, 1, 1);
    uint64_t out[4];
    bool ok = true;
    CHECK(kv_merkle_diff(a, b, out, 4, &ok) == 0);
    CHECK(!ok);
    CHECK(kv_merkle_diff(a, b, out, 4, NULL) == 0);
    ok = false;
    CHECK(kv_merkle_diff(a, a, out, 4, &ok) == 0);
    CHECK(ok);
    kv_merkle_free(a);
    kv_merkle_free(b);
}

/* ---- (4) range digests ------------------------------------------------------------- */

typedef struct hitem {
    uint64_t hash, digest;
} hitem;

/* In the ring range [start, end)? (end <= start wraps, start == end is everything.) */
static bool in_range(uint64_t h, uint64_t start, uint64_t end)
{
    if (start == end)
        return true;
    if (start < end)
        return h >= start && h < end;
    return h >= start || h < end;
}

static size_t range_checks;

static void check_range(const kv_merkle *t, const hitem *it, size_t n, uint64_t start, uint64_t end)
{
    unsigned d = kv_merkle_depth(t);
    uint64_t mask = (((uint64_t)1) << (64 - d)) - 1; /* offset bits inside a leaf */
    uint64_t edge[2] = {UINT64_MAX, UINT64_MAX};
    unsigned n_edge = 99;
    uint64_t got = kv_merkle_range_digest(t, start, end, edge, &n_edge);

    /* Edge leaves: exactly the leaves the range cuts (an edge not on a leaf boundary). */
    uint64_t want_edge[2];
    unsigned n_want = 0;
    if (start != end) {
        if (start & mask)
            want_edge[n_want++] = leaf_by_spec(d, start);
        if ((end & mask) && !(n_want == 1 && want_edge[0] == leaf_by_spec(d, end)))
            want_edge[n_want++] = leaf_by_spec(d, end);
    }
    REQUIRE(n_edge == n_want, "depth %u [%llx, %llx): %u edge leaves, want %u", d, (ull)start,
            (ull)end, n_edge, n_want);
    for (unsigned i = 0; i < n_want; i++) {
        bool found = false;
        for (unsigned j = 0; j < n_edge; j++)
            found |= edge[j] == want_edge[i];
        REQUIRE(found, "depth %u [%llx, %llx): edge leaf %llu missing", d, (ull)start, (ull)end,
                (ull)want_edge[i]);
    }

    /* range_digest + the caller's in-range keys of the edge leaves == brute force. */
    uint64_t brute = 0, caller = 0;
    for (size_t i = 0; i < n; i++) {
        if (!in_range(it[i].hash, start, end))
            continue;
        brute += it[i].digest;
        uint64_t leaf = leaf_by_spec(d, it[i].hash);
        for (unsigned j = 0; j < n_edge; j++)
            if (edge[j] == leaf)
                caller += it[i].digest;
    }
    REQUIRE(got + caller == brute, "depth %u [%llx, %llx): %llx + %llx != %llx", d, (ull)start,
            (ull)end, (ull)got, (ull)caller, (ull)brute);
    range_checks++;
}

static void range_cases(unsigned depth, uint64_t seed)
{
    rnd_state = seed;
    uint64_t nleaves = (uint64_t)1 << depth;
    uint64_t lsize_m1 = (((uint64_t)1) << (64 - depth)) - 1; /* leaf size - 1 */
    const size_t nrand = 3000, nspecial = 4 + 4 * 64;
    hitem *it = calloc(nrand + nspecial, sizeof(*it));
    CHECK(it != NULL);
    size_t n = 0;
    for (size_t i = 0; i < nrand; i++)
        it[n++].hash = rnd();
    /* Items on the corners and on both sides of leaf boundaries. */
    it[n++].hash = 0;
    it[n++].hash = 1;
    it[n++].hash = UINT64_MAX;
    it[n++].hash = UINT64_MAX - 1;
    for (int i = 0; i < 64; i++) {
        uint64_t lo = (rnd() % nleaves) << (64 - depth);
        it[n++].hash = lo;
        it[n++].hash = lo - 1; /* the previous leaf's last hash (wraps at 0) */
        it[n++].hash = lo + 1;
        it[n++].hash = lo + lsize_m1;
    }
    kv_merkle *t = new_tree(depth);
    for (size_t i = 0; i < n; i++) {
        it[i].digest = rnd() | 1;
        kv_merkle_add(t, it[i].hash, it[i].digest);
    }

    /* random ranges (about half wrap) */
    for (int i = 0; i < 300; i++)
        check_range(t, it, n, rnd(), rnd());
    /* edges on and next to items */
    for (int i = 0; i < 300; i++) {
        uint64_t s = it[rnd() % n].hash + (rnd() % 3) - 1, e = it[rnd() % n].hash + (rnd() % 3) - 1;
        check_range(t, it, n, s, e);
    }
    /* whole space */
    check_range(t, it, n, 0, 0);
    check_range(t, it, n, UINT64_MAX, UINT64_MAX);
    for (int i = 0; i < 5; i++) {
        uint64_t x = rnd();
        check_range(t, it, n, x, x);
    }
    /* inside one leaf, and its wrap-around complement (everything but a piece of a leaf) */
    for (int i = 0; i < 200; i++) {
        uint64_t lo = (rnd() % nleaves) << (64 - depth);
        uint64_t a = rnd() & lsize_m1, b = rnd() & lsize_m1;
        if (i % 4 == 0)
            a = 0; /* starting on the boundary */
        if (i % 4 == 1) {
            a = rnd() % 3; /* tiny ranges near the boundary */
            b = a + 1 + rnd() % 3;
        }
        if (a > b) {
            uint64_t x = a;
            a = b;
            b = x;
        }
        if (a == b)
            b = a + 1 <= lsize_m1 ? a + 1 : a;
        if (a == b)
            continue;
        check_range(t, it, n, lo + a, lo + b);
        check_range(t, it, n, lo + b, lo + a);
    }
    /* exactly on leaf boundaries: no edge leaves */
    for (int i = 0; i < 200; i++) {
        uint64_t s = (rnd() % nleaves) << (64 - depth), e = (rnd() % nleaves) << (64 - depth);
        if (i % 10 == 0)
            e = 0; /* up to the top of the space */
        check_range(t, it, n, s, e);
        /* one side on a boundary, the other not */
        check_range(t, it, n, s, e + 1 + (rnd() & (lsize_m1 >> 1)));
        check_range(t, it, n, s - 1, e);
    }
    /* corners */
    uint64_t last_lo = (nleaves - 1) << (64 - depth);
    const uint64_t corners[][2] = {
        {0, UINT64_MAX},
        {UINT64_MAX, 0},
        {UINT64_MAX, 1},
        {0, 1},
        {1, 0},
        {UINT64_MAX - 1, UINT64_MAX},
        {UINT64_MAX - 1, 0},
        {0, (uint64_t)1 << 63},
        {(uint64_t)1 << 63, 0},
        {last_lo, 0},
        {last_lo, UINT64_MAX},
        {lsize_m1 + 1, last_lo},
        {last_lo, lsize_m1},
        {lsize_m1, lsize_m1 + 1},
        {UINT64_MAX, UINT64_MAX - 1},
    };
    for (size_t i = 0; i < sizeof(corners) / sizeof(corners[0]); i++)
        check_range(t, it, n, corners[i][0], corners[i][1]);

    kv_merkle_free(t);
    free(it);
}

Test(merkle, range_digest_plus_edge_keys_is_the_range_sum)
{
    const unsigned depths[] = {1, 2, 3, 7, 12, 20};
    range_checks = 0;
    for (size_t i = 0; i < sizeof(depths) / sizeof(depths[0]); i++)
        range_cases(depths[i], 41 + i);
    CHECK(range_checks > 6 * 1500);
}

Test(merkle, range_digest_of_aligned_ranges_sums_whole_leaves)
{
    /* Depth 3: eight leaves with known sums 1, 2, 4, ... 128. */
    kv_merkle *t = new_tree(3);
    for (uint64_t i = 0; i < 8; i++)
        kv_merkle_add(t, (i << 61) + 12345, (uint64_t)1 << i);
    uint64_t edge[2];
    unsigned ne = 9;
    CHECK(kv_merkle_range_digest(t, 0, 0, edge, &ne) == 255);
    CHECK(ne == 0);
    CHECK(kv_merkle_range_digest(t, 1ull << 61, 3ull << 61, edge, &ne) == 2 + 4);
    CHECK(ne == 0);
    CHECK(kv_merkle_range_digest(t, 6ull << 61, 1ull << 61, edge, &ne) == 64 + 128 + 1);
    CHECK(ne == 0);
    CHECK(kv_merkle_range_digest(t, 7ull << 61, 0, edge, &ne) == 128);
    CHECK(ne == 0);
    /* 5..2 wrapping with cut edges: whole 6, 7, 0, 1; edges 5 and 2. */
    CHECK(kv_merkle_range_digest(t, (5ull << 61) + 1, (2ull << 61) + 1, edge, &ne) ==
          64 + 128 + 1 + 2);
    CHECK(ne == 2);
    CHECK((edge[0] == 5 && edge[1] == 2) || (edge[0] == 2 && edge[1] == 5));
    /* Both edges in leaf 4, wrapping: every other leaf whole, leaf 4 reported once. */
    CHECK(kv_merkle_range_digest(t, (4ull << 61) + 100, (4ull << 61) + 50, edge, &ne) == 255 - 16);
    CHECK(ne == 1);
    CHECK(edge[0] == 4);
    kv_merkle_free(t);
}

/* ---- shape: leaves and node ranges --------------------------------------------------- */

Test(merkle, leaves_and_nodes_cover_the_hash_space)
{
    const unsigned depths[] = {1, 5, 20};
    rnd_state = 51;
    for (size_t di = 0; di < sizeof(depths) / sizeof(depths[0]); di++) {
        unsigned d = depths[di];
        kv_merkle *t = new_tree(d);
        uint64_t last = ((uint64_t)1 << d) - 1;
        CHECK(kv_merkle_leaf_of(t, 0) == 0);
        CHECK(kv_merkle_leaf_of(t, UINT64_MAX) == last);
        uint64_t lo, hi;
        kv_merkle_leaf_range(t, 0, &lo, &hi);
        CHECK(lo == 0);
        CHECK(hi == (UINT64_MAX >> d));
        kv_merkle_leaf_range(t, last, &lo, &hi);
        CHECK(hi == UINT64_MAX);
        CHECK(lo == last << (64 - d));
        CHECK(kv_merkle_node(t, 0, 0, &lo, &hi) == 0);
        CHECK(lo == 0 && hi == UINT64_MAX);
        for (int k = 0; k < 1000; k++) {
            uint64_t h = rnd();
            uint64_t leaf = kv_merkle_leaf_of(t, h);
            CHECK(leaf == leaf_by_spec(d, h));
            kv_merkle_leaf_range(t, leaf, &lo, &hi);
            CHECK(lo <= h && h <= hi);
            uint64_t nlo, nhi;
            kv_merkle_node(t, d, leaf, &nlo, &nhi);
            CHECK(nlo == lo && nhi == hi);
            /* the node at each level that holds h covers it, with a power-of-two width */
            for (unsigned level = 1; level <= d; level++) {
                uint64_t idx = h >> (64 - level);
                kv_merkle_node(t, level, idx, &nlo, &nhi);
                CHECK(nlo <= h && h <= nhi);
                CHECK(nhi - nlo == (UINT64_MAX >> level));
            }
        }
        /* Out-of-range coordinates (a peer's bad input): 0 and an empty range, no crash. */
        CHECK(kv_merkle_node(t, d + 1, 0, &lo, &hi) == 0);
        CHECK(lo > hi);
        CHECK(kv_merkle_node(t, d, last + 1, &lo, &hi) == 0);
        CHECK(lo > hi);
        CHECK(kv_merkle_node(t, 0, 1, NULL, NULL) == 0);
        kv_merkle_leaf_range(t, last + 1, &lo, &hi);
        CHECK(lo > hi);
        kv_merkle_free(t);
    }
}

/* ---- (5) item digest ---------------------------------------------------------------- */

Test(merkle, item_digest_tells_every_field_apart_and_is_never_zero)
{
    const kv_version base = {.ts = 0x0001234500000007ull, .node = 42};
    uint64_t d0 = kv_merkle_item_digest("user:1", 6, &base, false);
    CHECK(d0 != 0);
    CHECK(kv_merkle_item_digest("user:1", 6, &base, false) == d0); /* deterministic */
    char copy[] = "user:1";
    CHECK(kv_merkle_item_digest(copy, 6, &base, false) == d0); /* bytes, not the pointer */

    kv_version v;
    uint64_t variants[16];
    size_t nv = 0;
    variants[nv++] = d0;
    variants[nv++] = kv_merkle_item_digest("user:2", 6, &base, false);
    variants[nv++] = kv_merkle_item_digest("user:1", 5, &base, false); /* "user:" */
    variants[nv++] = kv_merkle_item_digest("user:1\0", 7, &base, false);
    variants[nv++] = kv_merkle_item_digest(NULL, 0, &base, false);
    v = base;
    v.ts++;
    variants[nv++] = kv_merkle_item_digest("user:1", 6, &v, false);
    v = base;
    v.ts ^= 1ull << 63;
    variants[nv++] = kv_merkle_item_digest("user:1", 6, &v, false);
    v = base;
    v.node++;
    variants[nv++] = kv_merkle_item_digest("user:1", 6, &v, false);
    v = base;
    v.node ^= 1u << 31;
    variants[nv++] = kv_merkle_item_digest("user:1", 6, &v, false);
    variants[nv++] = kv_merkle_item_digest("user:1", 6, &base, true);
    /* ts and node swapped must not collide */
    v.ts = base.node;
    v.node = (uint32_t)base.ts;
    variants[nv++] = kv_merkle_item_digest("user:1", 6, &v, false);
    for (size_t i = 0; i < nv; i++) {
        CHECK(variants[i] != 0);
        for (size_t j = i + 1; j < nv; j++)
            REQUIRE(variants[i] != variants[j], "variants %zu and %zu collide", i, j);
    }

    /* Many random items: never 0, and no two distinct (key, version, flag) collide. */
    rnd_state = 61;
    const size_t n = 20000;
    uint64_t *ds = malloc(n * sizeof(*ds));
    CHECK(ds != NULL);
    for (size_t i = 0; i < n; i++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "k%zu", i / 4);
        kv_version r = {.ts = rnd(), .node = (uint32_t)rnd()};
        ds[i] = kv_merkle_item_digest(key, (size_t)kl, &r, i & 1);
        CHECK(ds[i] != 0);
    }
    qsort(ds, n, sizeof(*ds), cmp_u64);
    for (size_t i = 1; i < n; i++)
        CHECK(ds[i] != ds[i - 1]);
    free(ds);
}

/* ---- (6) bad depth ----------------------------------------------------------------- */

Test(merkle, bad_depth_is_refused)
{
    CHECK(kv_merkle_new(0) == NULL);
    CHECK(kv_merkle_new(KV_MERKLE_MAX_DEPTH + 1) == NULL);
    CHECK(kv_merkle_new(64) == NULL);
    CHECK(kv_merkle_new((unsigned)-1) == NULL);
    kv_merkle *a = kv_merkle_new(KV_MERKLE_MIN_DEPTH), *b = kv_merkle_new(KV_MERKLE_MAX_DEPTH);
    CHECK(a != NULL && b != NULL);
    CHECK(kv_merkle_depth(a) == KV_MERKLE_MIN_DEPTH);
    CHECK(kv_merkle_depth(b) == KV_MERKLE_MAX_DEPTH);
    CHECK(kv_merkle_root(a) == 0 && kv_merkle_root(b) == 0);
    kv_merkle_free(a);
    kv_merkle_free(b);
    kv_merkle_free(NULL);
}
