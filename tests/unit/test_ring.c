/*
 * test_ring.c — the consistent-hash ring as its users see it: the same member set gives
 * the same preference lists whatever the order it was learnt in; lists are distinct
 * members, the owner token is the first one above the hash (wrapping at the top); shares
 * are balanced and add up; a ring diff names exactly the hashes whose lists change; and
 * the JSON of GET /v1/cluster/ring.
 *
 * Token values are recomputed here from the header's formula (kv_ring_hash of id || i as
 * 4 little-endian bytes, low bits cleared to the alignment), so the placement itself is
 * checked, not only self-consistency.
 * Random numbers come from a fixed-seed generator: every run tests the same rings.
 */
#include "common/buf.h"
#include "common/hash.h"
#include "kvstore/error.h"
#include "ae/merkle.h"
#include "ring/ring.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

static uint64_t rnd_state;

static uint64_t rnd(void)
{
    /* splitmix64 */
    uint64_t z = (rnd_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* n members with random ids, names "node-<i>" and addresses 127.0.0.1:<7000+i>. */
static kv_ring_member *make_members(size_t n, uint64_t seed)
{
    rnd_state = seed;
    kv_ring_member *m = calloc(n ? n : 1, sizeof(*m));
    CHECK(m != NULL);
    for (size_t i = 0; i < n; i++) {
        for (int b = 0; b < SWIM_ID_LEN; b += 8) {
            uint64_t v = rnd();
            memcpy(m[i].id.b + b, &v, 8);
        }
        snprintf(m[i].name, sizeof(m[i].name), "node-%zu", i);
        snprintf(m[i].addr, sizeof(m[i].addr), "127.0.0.1:%zu", 7000 + i);
    }
    return m;
}

static kv_ring *build(const kv_ring_member *m, size_t n, uint32_t tokens)
{
    kv_ring *r = NULL;
    CHECK(kv_ring_build(&r, m, n, tokens) == KV_OK);
    CHECK(r != NULL);
    return r;
}

static uint64_t token_of(const swim_member_id *id, uint32_t i)
{
    uint8_t in[SWIM_ID_LEN + 4];
    memcpy(in, id->b, SWIM_ID_LEN);
    for (int b = 0; b < 4; b++)
        in[SWIM_ID_LEN + b] = (uint8_t)(i >> (8 * b));
    return kv_ring_hash(in, sizeof(in)) & ~((UINT64_C(1) << (64 - KV_RING_ALIGN_BITS)) - 1);
}

/* The member's id at walk index j of r. */
static const swim_member_id *id_at(const kv_ring *r, uint32_t idx)
{
    return &kv_ring_member_at(r, idx)->id;
}

/* Walk r for h and write the list as ids; returns its length. */
static size_t walk_ids(const kv_ring *r, uint64_t h, size_t want, swim_member_id *ids)
{
    uint32_t idx[64];
    CHECK(want <= 64);
    size_t k = kv_ring_walk(r, h, want, idx);
    for (size_t j = 0; j < k; j++)
        ids[j] = *id_at(r, idx[j]);
    return k;
}

static bool id_eq(const swim_member_id *a, const swim_member_id *b)
{
    return memcmp(a->b, b->b, SWIM_ID_LEN) == 0;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- placement --------------------------------------------------------------------- */

Test(ring, same_members_in_any_order_give_identical_walks)
{
    const size_t n = 7;
    kv_ring_member *m = make_members(n, 1);
    kv_ring_member *shuffled = malloc(n * sizeof(*shuffled));
    CHECK(shuffled != NULL);
    for (size_t i = 0; i < n; i++)
        shuffled[i] = m[(i * 3 + 2) % n]; /* 3 is coprime with 7: a permutation */
    kv_ring *a = build(m, n, 64), *b = build(shuffled, n, 64);
    CHECK(kv_ring_equal(a, b));
    rnd_state = 99;
    for (int t = 0; t < 10000; t++) {
        uint64_t h = rnd();
        swim_member_id la[8], lb[8];
        size_t ka = walk_ids(a, h, 5, la), kb = walk_ids(b, h, 5, lb);
        CHECK(ka == 5);
        CHECK(kb == 5);
        for (size_t j = 0; j < ka; j++)
            REQUIRE(id_eq(&la[j], &lb[j]), "hash %llu position %zu differs", (unsigned long long)h,
                    j);
    }
    /* member_at is the i-th smallest id */
    for (size_t i = 1; i < n; i++)
        CHECK(memcmp(id_at(a, (uint32_t)i - 1)->b, id_at(a, (uint32_t)i)->b, SWIM_ID_LEN) < 0);
    for (size_t i = 0; i < n; i++) {
        long at = kv_ring_find(a, &m[i].id);
        CHECK(at >= 0);
        CHECK(id_eq(id_at(a, (uint32_t)at), &m[i].id));
        cr_assert_str_eq(kv_ring_member_at(a, (size_t)at)->name, m[i].name);
    }
    swim_member_id stranger = {{0}};
    CHECK(kv_ring_find(a, &stranger) == -1);
    kv_ring_free(a);
    kv_ring_free(b);
    free(m);
    free(shuffled);
}

Test(ring, walk_returns_distinct_members_up_to_want)
{
    const size_t n = 6;
    kv_ring_member *m = make_members(n, 2);
    kv_ring *r = build(m, n, 32);
    CHECK(kv_ring_member_count(r) == n);
    CHECK(kv_ring_tokens(r) == 32);
    rnd_state = 5;
    for (int t = 0; t < 2000; t++) {
        uint64_t h = rnd();
        for (size_t want = 0; want <= n + 3; want++) {
            uint32_t out[16];
            size_t k = kv_ring_walk(r, h, want, out);
            CHECK(k == (want < n ? want : n));
            for (size_t i = 0; i < k; i++) {
                CHECK(out[i] < n);
                for (size_t j = 0; j < i; j++)
                    CHECK(out[i] != out[j]);
            }
            /* a longer walk extends a shorter one: fallbacks come after the list */
            uint32_t full[16];
            kv_ring_walk(r, h, n, full);
            for (size_t i = 0; i < k; i++)
                CHECK(out[i] == full[i]);
        }
    }
    kv_ring_free(r);
    free(m);
}

/* All tokens of m, sorted, with their member's id (independent of the ring's code). */
typedef struct tok {
    uint64_t v;
    swim_member_id id;
} tok;

static int cmp_tok(const void *a, const void *b)
{
    const tok *x = a, *y = b;
    if (x->v != y->v)
        return x->v < y->v ? -1 : 1;
    return memcmp(x->id.b, y->id.b, SWIM_ID_LEN);
}

static tok *all_tokens(const kv_ring_member *m, size_t n, uint32_t tokens)
{
    tok *t = malloc(n * tokens * sizeof(*t));
    CHECK(t != NULL);
    for (size_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < tokens; j++)
            t[i * tokens + j] = (tok){token_of(&m[i].id, j), m[i].id};
    qsort(t, n * tokens, sizeof(*t), cmp_tok);
    return t;
}

Test(ring, owner_is_first_token_above_hash_wrapping_at_the_top)
{
    const size_t n = 4;
    const uint32_t T = 16;
    kv_ring_member *m = make_members(n, 3);
    kv_ring *r = build(m, n, T);
    tok *t = all_tokens(m, n, T);
    size_t nt = n * T;
    CHECK(kv_ring_range_count(r) == nt);
    swim_member_id l[1];
    /* above the largest token, and at the very top: the smallest token owns it */
    walk_ids(r, UINT64_MAX, 1, l);
    CHECK(id_eq(&l[0], &t[0].id));
    walk_ids(r, t[nt - 1].v, 1, l);
    CHECK(id_eq(&l[0], &t[0].id));
    /* at the bottom: the smallest token (if 0 is not itself a token) */
    walk_ids(r, 0, 1, l);
    CHECK(id_eq(&l[0], &t[0].id));
    /* exactly on a token: the next token owns it (ranges are [lo, hi)) */
    for (size_t k = 0; k + 1 < nt; k++) {
        walk_ids(r, t[k].v, 1, l);
        REQUIRE(id_eq(&l[0], &t[k + 1].id), "token %zu", k);
        walk_ids(r, t[k + 1].v - 1, 1, l);
        REQUIRE(id_eq(&l[0], &t[k + 1].id), "token %zu", k);
    }
    free(t);
    kv_ring_free(r);
    free(m);
}

Test(ring, ranges_match_tokens_and_walk)
{
    const size_t n = 5;
    const uint32_t T = 32;
    kv_ring_member *m = make_members(n, 4);
    kv_ring *r = build(m, n, T);
    tok *t = all_tokens(m, n, T);
    size_t nt = kv_ring_range_count(r);
    CHECK(nt == n * T);
    for (size_t k = 0; k < nt; k++) {
        uint64_t lo, hi;
        kv_ring_range_at(r, k, &lo, &hi);
        CHECK(hi == t[k].v);
        CHECK(lo == t[k == 0 ? nt - 1 : k - 1].v);
    }
    /* a hash inside range k has the owner of token k first */
    rnd_state = 77;
    for (int i = 0; i < 5000; i++) {
        uint64_t h = rnd();
        size_t k = 0;
        while (k < nt && t[k].v <= h)
            k++;
        if (k == nt)
            k = 0; /* in range 0, which wraps */
        uint64_t lo, hi;
        kv_ring_range_at(r, k, &lo, &hi);
        CHECK(k == 0 ? (h >= lo || h < hi) : (h >= lo && h < hi));
        swim_member_id l[1];
        walk_ids(r, h, 1, l);
        CHECK(id_eq(&l[0], &t[k].id));
    }
    free(t);
    kv_ring_free(r);
    free(m);
}

/* Every range is a union of whole anti-entropy tree leaves at the alignment depth (and
 * deeper): replicas compare ranges from their trees alone, with no partial edge leaf. */
Test(ring, ranges_are_whole_tree_leaves)
{
    const size_t n = 7;
    const uint32_t T = 256;
    kv_ring_member *m = make_members(n, 9);
    kv_ring *r = build(m, n, T);
    kv_merkle *t16 = kv_merkle_new(KV_RING_ALIGN_BITS);
    kv_merkle *t20 = kv_merkle_new(KV_MERKLE_MAX_DEPTH);
    CHECK(t16 && t20);
    size_t nt = kv_ring_range_count(r), empty = 0;
    for (size_t k = 0; k < nt; k++) {
        uint64_t lo, hi, edge[2];
        unsigned n_edge = 9;
        kv_ring_range_at(r, k, &lo, &hi);
        CHECK((lo & 0xffffffffffffull) == 0 && (hi & 0xffffffffffffull) == 0);
        empty += lo == hi;
        if (lo == hi)
            continue; /* a collision: the range is empty (start == end means all here) */
        kv_merkle_range_digest(t16, lo, hi, edge, &n_edge);
        REQUIRE(n_edge == 0, "range %zu [%016llx, %016llx) has %u edge leaves", k,
                (unsigned long long)lo, (unsigned long long)hi, n_edge);
        kv_merkle_range_digest(t20, lo, hi, edge, &n_edge);
        CHECK(n_edge == 0);
    }
    /* 1792 tokens on 65536 positions: a few collide, and the shares stay balanced */
    REQUIRE(empty < 60, "%zu empty ranges", empty);
    double s[7];
    CHECK(kv_ring_shares(r, 1, s) == KV_OK);
    for (size_t i = 0; i < n; i++)
        REQUIRE(s[i] > 0.10 && s[i] < 0.19, "member %zu owns %.3f", i, s[i]);
    kv_merkle_free(t16);
    kv_merkle_free(t20);
    kv_ring_free(r);
    free(m);
}

Test(ring, empty_ring)
{
    kv_ring *r = build(NULL, 0, 64);
    uint32_t out[4];
    CHECK(kv_ring_member_count(r) == 0);
    CHECK(kv_ring_walk(r, 12345, 3, out) == 0);
    CHECK(kv_ring_walk(r, UINT64_MAX, 3, out) == 0);
    CHECK(kv_ring_range_count(r) == 0);
    CHECK(kv_ring_share(r, 0, 1) == 0.0);
    CHECK(kv_ring_member_at(r, 0) == NULL);
    kv_ring *e2 = build(NULL, 0, 64);
    CHECK(kv_ring_equal(r, e2));
    kv_ring_move *mv = (kv_ring_move *)1;
    size_t count = 99;
    CHECK(kv_ring_diff(r, e2, 3, &mv, &count) == KV_OK);
    CHECK(count == 0);
    free(mv);
    kv_ring_free(r);
    kv_ring_free(e2);
}

Test(ring, one_member_owns_everything)
{
    kv_ring_member *m = make_members(1, 6);
    for (uint32_t T = 1; T <= 64; T *= 8) {
        kv_ring *r = build(m, 1, T);
        rnd_state = 8;
        for (int i = 0; i < 1000; i++) {
            uint32_t out[4] = {9, 9, 9, 9};
            CHECK(kv_ring_walk(r, rnd(), 3, out) == 1);
            CHECK(out[0] == 0);
            CHECK(out[1] == 9); /* nothing written past k */
        }
        cr_assert_float_eq(kv_ring_share(r, 0, 1), 1.0, 1e-12, "T=%u", T);
        cr_assert_float_eq(kv_ring_share(r, 0, 3), 1.0, 1e-12, "T=%u", T);
        kv_ring_free(r);
    }
    free(m);
}

Test(ring, bad_arguments_are_refused)
{
    kv_ring_member *m = make_members(3, 7);
    kv_ring *r = NULL;
    CHECK(kv_ring_build(&r, m, 3, 0) == KV_EINVAL);
    CHECK(kv_ring_build(&r, m, 3, KV_RING_TOKENS_MAX + 1) == KV_EINVAL);
    CHECK(r == NULL);
    m[2].id = m[0].id; /* a duplicate id, even with another name */
    CHECK(kv_ring_build(&r, m, 3, 16) == KV_EINVAL);
    CHECK(r == NULL);
    CHECK(kv_ring_build(&r, m, 2, KV_RING_TOKENS_MAX) == KV_OK);
    CHECK(kv_ring_range_count(r) == 2 * KV_RING_TOKENS_MAX);
    kv_ring_move *mv;
    size_t count;
    CHECK(kv_ring_diff(r, r, 0, &mv, &count) == KV_EINVAL);
    CHECK(kv_ring_diff(r, r, KV_RING_DIFF_MAX_N + 1, &mv, &count) == KV_EINVAL);
    kv_ring_free(r);
    free(m);
}

Test(ring, ring_equal_means_same_ids_and_tokens)
{
    kv_ring_member *m = make_members(4, 8);
    kv_ring *a = build(m, 4, 16), *b = build(m, 4, 32), *c = build(m, 3, 16);
    strcpy(m[1].name, "renamed");
    kv_ring *d = build(m, 4, 16);
    CHECK(kv_ring_equal(a, d)); /* names do not place tokens */
    CHECK(!kv_ring_equal(a, b));
    CHECK(!kv_ring_equal(a, c));
    m[3].id.b[0] ^= 1;
    kv_ring *e = build(m, 4, 16);
    CHECK(!kv_ring_equal(a, e));
    kv_ring_free(a);
    kv_ring_free(b);
    kv_ring_free(c);
    kv_ring_free(d);
    kv_ring_free(e);
    free(m);
}

/* ---- shares ------------------------------------------------------------------------ */

static void check_balance(uint32_t T, double lo, double hi)
{
    kv_ring_member *m = make_members(5, 10 + T);
    kv_ring *r = build(m, 5, T);
    for (size_t i = 0; i < 5; i++) {
        double s = kv_ring_share(r, i, 1);
        REQUIRE(s >= lo && s <= hi, "T=%u member %zu primary share %f", T, i, s);
    }
    kv_ring_free(r);
    free(m);
}

Test(ring, primary_shares_are_balanced)
{
    check_balance(64, 0.10, 0.30);
    check_balance(256, 0.15, 0.25);
}

Test(ring, shares_sum_to_the_list_size)
{
    const size_t n = 5;
    kv_ring_member *m = make_members(n, 11);
    kv_ring *r = build(m, n, 64);
    for (size_t want = 1; want <= 7; want++) {
        double all[5], sum = 0;
        CHECK(kv_ring_shares(r, want, all) == KV_OK);
        for (size_t i = 0; i < n; i++) {
            double one = kv_ring_share(r, i, want);
            cr_assert_float_eq(one, all[i], 1e-12);
            CHECK(one > 0 && one <= 1.0);
            sum += one;
        }
        double expect = (double)(want < n ? want : n);
        cr_assert_float_eq(sum, expect, 1e-9, "n=%zu sum %f", want, sum);
    }
    /* a member's replica share is at least its primary share */
    for (size_t i = 0; i < n; i++)
        CHECK(kv_ring_share(r, i, 3) >= kv_ring_share(r, i, 1));
    CHECK(kv_ring_shares(r, 0, (double[5]){0}) == KV_EINVAL);
    CHECK(kv_ring_share(r, n, 1) == 0.0); /* no such member */
    kv_ring_free(r);
    free(m);
}

Test(ring, primary_share_matches_sampling)
{
    /* The exact share against a plain count over random hashes (3 sigma is ~0.004). */
    const size_t n = 3;
    kv_ring_member *m = make_members(n, 12);
    kv_ring *r = build(m, n, 8);
    size_t hits[3] = {0};
    rnd_state = 13;
    const int samples = 100000;
    for (int i = 0; i < samples; i++) {
        uint32_t o;
        kv_ring_walk(r, rnd(), 1, &o);
        hits[o]++;
    }
    for (size_t i = 0; i < n; i++)
        cr_assert_float_eq(kv_ring_share(r, i, 1), (double)hits[i] / samples, 0.01);
    kv_ring_free(r);
    free(m);
}

Test(ring, a_large_ring_builds_fast)
{
    kv_ring_member *m = make_members(100, 14);
    double t0 = now_ms();
    kv_ring *r = build(m, 100, 256);
    double took = now_ms() - t0;
    /* The target is well under 50 ms; the bound leaves room for sanitizer builds. */
    REQUIRE(took < 250.0, "building 100 x 256 took %.1f ms", took);
    cr_log_info("building 100 members x 256 tokens took %.2f ms", took);
    t0 = now_ms();
    rnd_state = 15;
    uint32_t out[3];
    for (int i = 0; i < 100000; i++)
        kv_ring_walk(r, rnd(), 3, out);
    cr_log_info("100k walks (n=3) took %.2f ms", now_ms() - t0);
    kv_ring_free(r);
    free(m);
}

/* ---- diff -------------------------------------------------------------------------- */

static bool in_move(const kv_ring_move *mv, uint64_t h)
{
    if (mv->lo == mv->hi)
        return true; /* the whole ring */
    if (mv->lo < mv->hi)
        return h >= mv->lo && h < mv->hi;
    return h >= mv->lo || h < mv->hi;
}

/* Moves are disjoint and merged: no two neighbours carry the same lists. */
static void check_moves_shape(const kv_ring_move *mv, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        if (i > 0) {
            REQUIRE(mv[i - 1].hi <= mv[i].lo, "moves out of order at %zu", i);
            bool same = mv[i - 1].hi == mv[i].lo && mv[i - 1].n_from == mv[i].n_from &&
                        mv[i - 1].n_to == mv[i].n_to &&
                        memcmp(mv[i - 1].from, mv[i].from, sizeof(mv[i].from)) == 0 &&
                        memcmp(mv[i - 1].to, mv[i].to, sizeof(mv[i].to)) == 0;
            REQUIRE(!same, "adjacent moves %zu and %zu not merged", i - 1, i);
        }
        CHECK(mv[i].n_from <= KV_RING_DIFF_MAX_N);
        CHECK(mv[i].n_to <= KV_RING_DIFF_MAX_N);
    }
}

/*
 * Random hashes: inside a move, the old list is `from` and the new is `to` (and they
 * differ); outside every move, the lists are the same. Returns how many samples hit a move.
 */
static size_t check_diff_by_sampling(const kv_ring *o, const kv_ring *nw, size_t n,
                                     const kv_ring_move *mv, size_t count, uint64_t seed)
{
    rnd_state = seed;
    size_t hit = 0;
    for (int i = 0; i < 20000; i++) {
        uint64_t h = i == 0 ? UINT64_MAX : i == 1 ? 0 : rnd();
        swim_member_id lo_ids[KV_RING_DIFF_MAX_N], ln_ids[KV_RING_DIFF_MAX_N];
        size_t ko = walk_ids(o, h, n, lo_ids), kn = walk_ids(nw, h, n, ln_ids);
        const kv_ring_move *found = NULL;
        for (size_t j = 0; j < count; j++)
            if (in_move(&mv[j], h)) {
                REQUIRE(found == NULL, "hash %llu in two moves", (unsigned long long)h);
                found = &mv[j];
            }
        if (!found) {
            CHECK(ko == kn);
            for (size_t j = 0; j < ko; j++)
                REQUIRE(id_eq(&lo_ids[j], &ln_ids[j]), "hash %llu changed outside every move",
                        (unsigned long long)h);
            continue;
        }
        hit++;
        CHECK(found->n_from == ko);
        CHECK(found->n_to == kn);
        for (size_t j = 0; j < ko; j++)
            CHECK(id_eq(&found->from[j], &lo_ids[j]));
        for (size_t j = 0; j < kn; j++)
            CHECK(id_eq(&found->to[j], &ln_ids[j]));
        bool differ = ko != kn || memcmp(lo_ids, ln_ids, ko * sizeof(lo_ids[0])) != 0;
        CHECK(differ);
    }
    return hit;
}

static bool list_has(const swim_member_id *l, uint32_t k, const swim_member_id *id)
{
    for (uint32_t j = 0; j < k; j++)
        if (id_eq(&l[j], id))
            return true;
    return false;
}

Test(ring, diff_adding_a_member_moves_ranges_to_it_only)
{
    kv_ring_member *m = make_members(4, 20);
    kv_ring *o = build(m, 3, 64), *nw = build(m, 4, 64);
    kv_ring_move *mv = NULL;
    size_t count = 0;
    CHECK(kv_ring_diff(o, nw, 3, &mv, &count) == KV_OK);
    CHECK(count > 0);
    check_moves_shape(mv, count);
    for (size_t i = 0; i < count; i++) {
        REQUIRE(list_has(mv[i].to, mv[i].n_to, &m[3].id), "move %zu does not reach the new member",
                i);
        CHECK(!list_has(mv[i].from, mv[i].n_from, &m[3].id));
        CHECK(mv[i].n_from == 3);
        CHECK(mv[i].n_to == 3);
    }
    size_t hit = check_diff_by_sampling(o, nw, 3, mv, count, 21);
    /* the new member joins 3 of 4 lists: about 3/4 of the hashes see a change */
    REQUIRE(hit > 20000 / 2 && hit < 20000 * 9 / 10, "%zu of 20000 hashes in moves", hit);
    free(mv);

    /* removing it is the mirror image */
    CHECK(kv_ring_diff(nw, o, 3, &mv, &count) == KV_OK);
    CHECK(count > 0);
    check_moves_shape(mv, count);
    for (size_t i = 0; i < count; i++) {
        CHECK(list_has(mv[i].from, mv[i].n_from, &m[3].id));
        CHECK(!list_has(mv[i].to, mv[i].n_to, &m[3].id));
    }
    check_diff_by_sampling(nw, o, 3, mv, count, 22);
    free(mv);
    kv_ring_free(o);
    kv_ring_free(nw);
    free(m);
}

Test(ring, diff_with_primary_lists_and_larger_rings)
{
    kv_ring_member *m = make_members(8, 23);
    kv_ring *o = build(m, 7, 128), *nw = build(m + 1, 7, 128); /* one leaves, one joins */
    for (size_t n = 1; n <= 5; n += 2) {
        kv_ring_move *mv = NULL;
        size_t count = 0;
        CHECK(kv_ring_diff(o, nw, n, &mv, &count) == KV_OK);
        check_moves_shape(mv, count);
        check_diff_by_sampling(o, nw, n, mv, count, 24 + n);
        free(mv);
    }
    kv_ring_free(o);
    kv_ring_free(nw);
    free(m);
}

Test(ring, diff_of_identical_rings_is_empty)
{
    kv_ring_member *m = make_members(5, 30);
    kv_ring *a = build(m, 5, 64);
    strcpy(m[0].name, "another-name");
    kv_ring *b = build(m, 5, 64);
    kv_ring_move *mv = (kv_ring_move *)1;
    size_t count = 99;
    CHECK(kv_ring_diff(a, b, 3, &mv, &count) == KV_OK);
    CHECK(count == 0);
    free(mv);
    kv_ring_free(a);
    kv_ring_free(b);
    free(m);
}

Test(ring, diff_from_an_empty_ring_is_the_whole_ring)
{
    kv_ring_member *m = make_members(3, 31);
    kv_ring *e = build(NULL, 0, 16), *r = build(m, 3, 16);
    kv_ring_move *mv = NULL;
    size_t count = 0;
    CHECK(kv_ring_diff(e, r, 3, &mv, &count) == KV_OK);
    check_moves_shape(mv, count);
    for (size_t i = 0; i < count; i++) {
        CHECK(mv[i].n_from == 0);
        CHECK(mv[i].n_to == 3);
    }
    check_diff_by_sampling(e, r, 3, mv, count, 32);
    free(mv);
    /* a one-member ring against an empty one: exactly one move, the whole ring */
    kv_ring *one = build(m, 1, 16);
    CHECK(kv_ring_diff(one, e, 2, &mv, &count) == KV_OK);
    CHECK(count == 1);
    CHECK(mv[0].lo == mv[0].hi);
    CHECK(mv[0].n_from == 1);
    CHECK(mv[0].n_to == 0);
    free(mv);
    kv_ring_free(one);
    kv_ring_free(e);
    kv_ring_free(r);
    free(m);
}

/* ---- JSON -------------------------------------------------------------------------- */

Test(ring, json_lists_members_by_name_with_shares)
{
    kv_ring_member *m = make_members(3, 40);
    strcpy(m[0].name, "charlie");
    strcpy(m[1].name, "alpha \"quoted\"\n");
    strcpy(m[2].name, "bravo\xff"); /* not UTF-8 */
    kv_ring *r = build(m, 3, 64);
    kv_buf b = KV_BUF_INIT;
    CHECK(kv_ring_json(r, 2, &m[2].id, &b) == KV_OK);
    const char *j = b.data;
    char hex[2 * SWIM_ID_LEN + 1], want[128];
    swim_id_to_hex(&m[2].id, hex);
    snprintf(want, sizeof(want), "{\"node_id\":\"%s\",\"replicas\":2,\"tokens_per_member\":64,",
             hex);
    REQUIRE(strncmp(j, want, strlen(want)) == 0, "%s", j);
    const char *a = strstr(j, "\"name\":\"alpha \\\"quoted\\\"\\u000a\"");
    const char *bv = strstr(j, "\"name\":\"bravo\\ufffd\"");
    const char *c = strstr(j, "\"name\":\"charlie\"");
    REQUIRE(a && bv && c, "%s", j);
    REQUIRE(a < bv && bv < c, "not sorted by name: %s", j);
    CHECK(strstr(j, "\"address\":\"127.0.0.1:7000\"") != NULL);
    CHECK(j[b.len - 1] == '}');
    /* exactly one self, and it is bravo's object */
    const char *self = strstr(j, "\"self\":true");
    CHECK(self && self > bv && self < c);
    CHECK(strstr(self + 1, "\"self\":true") == NULL);
    /* the shares printed are the ring's, and each member's primary comes before replica */
    for (size_t i = 0; i < 3; i++) {
        swim_id_to_hex(&m[i].id, hex);
        long at = kv_ring_find(r, &m[i].id);
        char obj[256];
        snprintf(obj, sizeof(obj), "{\"id\":\"%s\",", hex);
        const char *o = strstr(j, obj);
        CHECK(o != NULL);
        snprintf(obj, sizeof(obj), "\"tokens\":64,\"primary_share\":%.6f,\"replica_share\":%.6f,",
                 kv_ring_share(r, (size_t)at, 1), kv_ring_share(r, (size_t)at, 2));
        const char *s = strstr(o, obj);
        REQUIRE(s && s < strchr(o, '}'), "member %zu: %s not in %s", i, obj, j);
    }
    kv_buf_free(&b);

    /* an empty ring is still a well-formed object */
    kv_ring *e = build(NULL, 0, 16);
    CHECK(kv_ring_json(e, 3, &m[0].id, &b) == KV_OK);
    swim_id_to_hex(&m[0].id, hex);
    snprintf(want, sizeof(want),
             "{\"node_id\":\"%s\",\"replicas\":3,\"tokens_per_member\":16,\"members\":[]}", hex);
    cr_assert_str_eq(b.data, want);
    CHECK(kv_ring_json(e, 0, &m[0].id, &b) == KV_EINVAL);
    kv_buf_free(&b);
    kv_ring_free(e);
    kv_ring_free(r);
    free(m);
}
