/*
 * test_store_merkle.c — the storage engine keeps its anti-entropy tree (src/ae/merkle.h,
 * kv_store_opts.merkle_depth) current on every change of its index (issue 7, deliverable 4).
 *
 * Each test keeps a reference model of what the store holds (key -> version, tombstone,
 * present) from what the write callbacks, purges and compaction report, rebuilds a tree
 * from that model with kv_merkle_new + kv_merkle_add, and checks that store_merkle() has
 * the same root and the same leaves (kv_merkle_diff). A mismatch names the differing
 * leaves and the model's keys in them, with what the store says it holds for those keys.
 *
 * Real segment files in a mkdtemp directory, a private libuv loop driven until the
 * callbacks under test fire (every wait has a deadline): tests/support/storefix.h.
 */
#include "ae/merkle.h"
#include "common/hash.h"
#include "common/hlc.h"
#include "kvstore/error.h"
#include "store/store.h"

#include "storefix.h"

#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NODE_ID 7
#define DEPTH   10
#define NKEYS   300
#define WAIT_MS 10000

static storefix g_fx;

/* ---------- fixture (tests/support/storefix.h) ---------- */

static void setup(void)
{
    storefix_init(&g_fx, "smerkle");
}

static void teardown(void)
{
    storefix_fini(&g_fx);
}

TestSuite(store_merkle, .init = setup, .fini = teardown);

static kv_store_opts opts_for(kv_sync_mode mode, uint64_t seg_bytes, unsigned depth)
{
    return (kv_store_opts){
        .dir = g_fx.dir,
        .sync = mode,
        .sync_interval_ms = 20,
        .segment_bytes = seg_bytes,
        .max_key = 1024,
        .max_value = 1 << 20,
        .node_id = NODE_ID,
        .compaction_dead_ratio = 2.0, /* no automatic compaction: the tests start it */
        .merkle_depth = depth,
    };
}

static kv_store *open_store(kv_sync_mode mode, uint64_t seg_bytes)
{
    kv_store *s = NULL;
    kv_store_opts o = opts_for(mode, seg_bytes, DEPTH);
    int rc = store_open(&s, &g_fx.loop, &o);
    cr_assert_eq(rc, KV_OK, "store_open: %s", kv_strerror(rc));
    cr_assert_not_null(s);
    cr_assert_not_null(store_merkle(s), "merkle_depth %d but no tree", DEPTH);
    cr_assert_eq(kv_merkle_depth(store_merkle(s)), DEPTH);
    return s;
}

static void on_closed(void *arg)
{
    *(bool *)arg = true;
}

static void close_store(kv_store *s)
{
    bool closed = false;
    store_close(s, on_closed, &closed);
    cr_assert(storefix_run_until(&g_fx, storefix_flag_set, &closed, WAIT_MS),
              "store_close did not complete");
}

/* ---------- the reference model ---------- */

typedef struct mkey {
    char key[16];
    size_t klen;
    bool present; /* the store holds an item for key (value, expired value or tombstone) */
    bool tomb;
    bool expired; /* a value written with an expiry already past */
    kv_version ver;
} mkey;

typedef struct model {
    mkey k[NKEYS];
    uint64_t rng;
} model;

static void model_init(model *m, uint64_t seed)
{
    memset(m, 0, sizeof(*m));
    m->rng = seed ? seed : 1;
    for (int i = 0; i < NKEYS; i++)
        m->k[i].klen = (size_t)snprintf(m->k[i].key, sizeof(m->k[i].key), "mk-%03d", i);
}

/* xorshift64*: a seeded sequence, so a failure replays. */
static uint64_t rnd(model *m)
{
    uint64_t x = m->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    m->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uint64_t rnd_below(model *m, uint64_t n)
{
    return rnd(m) % n;
}

static uint64_t key_digest(const mkey *k)
{
    return kv_merkle_item_digest(k->key, k->klen, &k->ver, k->tomb);
}

static const char *fmt_ver(char *b, size_t n, const kv_version *v)
{
    snprintf(b, n, "%" PRIu64 ".%" PRIu64 "@%" PRIu32, v->ts >> KV_HLC_LOGICAL_BITS,
             v->ts & ((1u << KV_HLC_LOGICAL_BITS) - 1), v->node);
    return b;
}

/* What the store says about the model's keys in one leaf: for the failure message. */
static void describe_leaf(kv_store *s, const model *m, const kv_merkle *t, uint64_t leaf)
{
    for (int i = 0; i < NKEYS; i++) {
        const mkey *k = &m->k[i];
        if (kv_merkle_leaf_of(t, kv_ring_hash(k->key, k->klen)) != leaf)
            continue;
        kv_store_meta meta;
        int rc = store_get_meta(s, k->key, k->klen, &meta);
        char a[64], b[64];
        fprintf(stderr, "  leaf %" PRIu64 " key %s: model %s%s ver %s | store %s%s ver %s%s\n",
                leaf, k->key, k->present ? "present" : "absent", k->tomb ? " tomb" : "",
                fmt_ver(a, sizeof(a), &k->ver), rc == KV_OK ? "present" : kv_strerror(rc),
                rc == KV_OK && meta.tombstone ? " tomb" : "",
                rc == KV_OK ? fmt_ver(b, sizeof(b), &meta.ver) : "-",
                rc == KV_OK && meta.expired ? " expired" : "");
    }
}

/* The store's tree equals a tree rebuilt from the model: same root, no differing leaf. */
static void check_tree(kv_store *s, const model *m, const char *what, int step)
{
    const kv_merkle *t = store_merkle(s);
    cr_assert_not_null(t);
    kv_merkle *ref = kv_merkle_new(DEPTH);
    cr_assert_not_null(ref);
    for (int i = 0; i < NKEYS; i++) {
        const mkey *k = &m->k[i];
        if (k->present)
            kv_merkle_add(ref, kv_ring_hash(k->key, k->klen), key_digest(k));
    }
    uint64_t leaves[8];
    bool ok = true;
    size_t n = kv_merkle_diff(t, ref, leaves, 8, &ok);
    uint64_t got = kv_merkle_root(t), want = kv_merkle_root(ref);
    if (n || !ok || got != want) {
        fprintf(stderr,
                "%s (step %d): tree root %016" PRIx64 ", model %016" PRIx64 ", %zu leaves differ\n",
                what, step, got, want, n);
        for (size_t i = 0; i < n && i < 8; i++)
            describe_leaf(s, m, t, leaves[i]);
    }
    kv_merkle_free(ref);
    cr_assert(ok, "%s (step %d): kv_merkle_diff refused the trees", what, step);
    cr_assert_eq(n, 0, "%s (step %d): %zu leaves differ from the model (first %" PRIu64 ")", what,
                 step, n, n ? leaves[0] : 0);
    cr_assert_eq(got, want, "%s (step %d): root %016" PRIx64 " != model's %016" PRIx64, what, step,
                 got, want);
}

/* ---------- writes with their outcome folded into the model ---------- */

enum op_kind { OP_PUT, OP_PUT_EXPIRED, OP_DEL, OP_APPLY };

typedef struct op {
    model *m;
    int key;
    enum op_kind kind;
    bool tomb;         /* OP_APPLY: a tombstone */
    bool must_stale;   /* OP_APPLY: version not newer than one already acknowledged */
    kv_version given;  /* OP_APPLY: the version asked for */
    int expect_status; /* KV_OK: the model follows the outcome; else: that error expected */
    int *pending;
    bool called;
    int status;
    kv_version ver;
} op;

static void op_cb(void *arg, int status, const kv_version *ver)
{
    op *o = arg;
    if (o->called) {
        cr_expect_fail("key %d: callback called twice", o->key);
        return;
    }
    o->called = true;
    o->status = status;
    if (ver)
        o->ver = *ver;
    (*o->pending)--;
    mkey *k = &o->m->k[o->key];
    char a[64], b[64];
    if (o->expect_status != KV_OK) {
        cr_expect_eq(status, o->expect_status, "key %s: status %s, expected %s", k->key,
                     kv_strerror(status), kv_strerror(o->expect_status));
        return; /* a failed write leaves the model as it was */
    }
    if (status == KV_ESTALE) {
        cr_expect_eq(o->kind, OP_APPLY, "key %s: KV_ESTALE from a put/delete", k->key);
        cr_expect(ver && kv_version_cmp(ver, &o->given) >= 0,
                  "key %s: KV_ESTALE with an older stored version %s < %s", k->key,
                  fmt_ver(a, sizeof(a), ver), fmt_ver(b, sizeof(b), &o->given));
        return;
    }
    cr_expect_eq(status, KV_OK, "key %s: write failed: %s", k->key, kv_strerror(status));
    if (status != KV_OK)
        return;
    cr_expect_not(o->must_stale, "key %s: apply of stale version %s succeeded (model %s)", k->key,
                  fmt_ver(a, sizeof(a), &o->given), fmt_ver(b, sizeof(b), &k->ver));
    /* A successful write is newer than everything written to the key before it. */
    cr_expect(!k->present || kv_version_cmp(ver, &k->ver) > 0,
              "key %s: acknowledged version %s not newer than the previous %s", k->key,
              fmt_ver(a, sizeof(a), ver), fmt_ver(b, sizeof(b), &k->ver));
    if (o->kind == OP_APPLY)
        cr_expect_eq(kv_version_cmp(ver, &o->given), 0, "key %s: apply wrote another version",
                     k->key);
    k->present = true;
    k->ver = *ver;
    k->tomb = o->kind == OP_DEL || (o->kind == OP_APPLY && o->tomb);
    k->expired = o->kind == OP_PUT_EXPIRED;
}

static bool none_pending(void *arg)
{
    return *(int *)arg == 0;
}

/* Start one op; an immediate error is a test failure. */
static void start_op(kv_store *s, op *o)
{
    mkey *k = &o->m->k[o->key];
    char val[64];
    size_t vlen = (size_t)snprintf(val, sizeof(val), "v-%s-%" PRIu64, k->key, rnd(o->m) % 1000);
    int rc;
    (*o->pending)++;
    switch (o->kind) {
    case OP_PUT:
        rc = store_put(s, k->key, k->klen, val, vlen, 0, op_cb, o);
        break;
    case OP_PUT_EXPIRED:
        rc = store_put(s, k->key, k->klen, val, vlen, storefix_now_ms() - 10000, op_cb, o);
        break;
    case OP_DEL:
        rc = store_delete(s, k->key, k->klen, op_cb, o);
        break;
    default:
        rc = store_apply(s, k->key, k->klen, val, vlen, 0, &o->given, o->tomb, op_cb, o);
        break;
    }
    if (rc != KV_OK)
        (*o->pending)--;
    cr_assert_eq(rc, KV_OK, "op %d on %s: %s", (int)o->kind, k->key, kv_strerror(rc));
}

/* A random op on a random key: puts, deletes, some values that expire at once (unless
 * no_expiry), and applies with explicit versions: fresh ones (a little ahead of the clock,
 * or the stored timestamp with a higher node id) and stale ones (the acknowledged version
 * itself, or older), which must come back KV_ESTALE and change nothing. */
static void random_op(model *m, op *o, int *pending, bool no_expiry)
{
    memset(o, 0, sizeof(*o));
    o->m = m;
    o->pending = pending;
    o->key = (int)rnd_below(m, NKEYS);
    o->expect_status = KV_OK;
    mkey *k = &m->k[o->key];
    unsigned r = (unsigned)rnd_below(m, 100);
    if (r < 35) {
        o->kind = OP_PUT;
    } else if (r < 40) {
        o->kind = no_expiry ? OP_PUT : OP_PUT_EXPIRED;
    } else if (r < 55) {
        o->kind = OP_DEL;
    } else {
        o->kind = OP_APPLY;
        o->tomb = rnd_below(m, 4) == 0;
        unsigned how = (unsigned)rnd_below(m, 4);
        if (k->present && how == 0) {
            o->given = k->ver; /* equal: not newer */
            o->must_stale = true;
        } else if (k->present && how == 1 && k->ver.ts > 5000) {
            o->given = (kv_version){.ts = k->ver.ts - 1 - rnd_below(m, 5000), .node = 9};
            o->must_stale = true;
        } else if (k->present && how == 2) {
            o->given = (kv_version){.ts = k->ver.ts, .node = k->ver.node + 1}; /* tie-break */
        } else {
            uint64_t ms = storefix_now_ms() + rnd_below(m, 2000);
            o->given = (kv_version){.ts = (ms << KV_HLC_LOGICAL_BITS) | rnd_below(m, 100),
                                    .node = 1 + (uint32_t)rnd_below(m, 5)};
        }
    }
}

/* n random ops in batches (issued together, then every callback awaited); the tree is
 * checked after each batch. */
static void random_ops(kv_store *s, model *m, int n, bool no_expiry, const char *what)
{
    op ops[16];
    int done = 0, batch = 0;
    while (done < n) {
        int pending = 0;
        int b = 1 + (int)rnd_below(m, 16);
        if (b > n - done)
            b = n - done;
        for (int i = 0; i < b; i++) {
            random_op(m, &ops[i], &pending, no_expiry);
            start_op(s, &ops[i]);
        }
        cr_assert(storefix_run_until(&g_fx, none_pending, &pending, WAIT_MS),
                  "%s: batch %d: %d callbacks missing", what, batch, pending);
        done += b;
        check_tree(s, m, what, done);
        batch++;
    }
}

/* ---------- 1. random writes ---------- */

Test(store_merkle, random_writes_follow_the_model)
{
    model *m = malloc(sizeof(*m));
    cr_assert_not_null(m);
    model_init(m, 0x5eed0001);
    kv_store *s = open_store(KV_SYNC_NEVER, 64 * 1024);
    check_tree(s, m, "empty store", 0);
    random_ops(s, m, 2000, false, "random ops");
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_gt(st.applies_stale, 0, "the run made no stale apply");
    check_tree(s, m, "end of run", 2000);
    close_store(s);
    free(m);
}

/* ---------- 2. recovery and compaction ---------- */

/* Compaction drops expired values (the model forgets them) and nothing else. */
static void compact_now(kv_store *s, model *m, int during)
{
    storefix_compaction c = {0};
    cr_assert_eq(store_compact(s, storefix_compact_cb, &c), KV_OK);
    /* Writes while compaction runs: a write made meanwhile wins over the copy. */
    if (during)
        random_ops(s, m, during, true, "ops during compaction");
    cr_assert(storefix_run_until(&g_fx, storefix_flag_set, &c.done, 30000),
              "compaction did not finish");
    cr_assert_eq(c.status, KV_OK, "compaction: %s", kv_strerror(c.status));
    int expired = 0;
    for (int i = 0; i < NKEYS; i++) {
        if (m->k[i].present && m->k[i].expired) {
            m->k[i].present = false;
            expired++;
        }
    }
    cr_expect_eq(c.st.expired_dropped, (uint64_t)expired,
                 "compaction dropped %" PRIu64 " expired/purged records, model has %d",
                 c.st.expired_dropped, expired);
}

static void reopen_and_compact(uint64_t seg_bytes, bool with_expiry, int during)
{
    model *m = malloc(sizeof(*m));
    cr_assert_not_null(m);
    model_init(m, 0x5eed0002 + seg_bytes);
    kv_store *s = open_store(KV_SYNC_NEVER, seg_bytes);
    random_ops(s, m, 2000, !with_expiry, "before reopen");
    close_store(s);

    s = open_store(KV_SYNC_NEVER, seg_bytes);
    check_tree(s, m, "after reopen (recovery)", 0);
    random_ops(s, m, 200, !with_expiry, "after reopen");

    compact_now(s, m, during);
    check_tree(s, m, "after compaction", 0);
    random_ops(s, m, 100, true, "after compaction");
    close_store(s);

    s = open_store(KV_SYNC_NEVER, seg_bytes);
    check_tree(s, m, "reopen after compaction", 0);
    close_store(s);
    free(m);
}

/* One segment (it holds garbage, so compaction seals and rewrites it): expired values
 * stay in the tree across a restart and leave it when compaction drops them. */
Test(store_merkle, reopen_and_compact_one_segment)
{
    reopen_and_compact(4u << 20, true, 0);
}

/* Many small segments (hint files at the reopen after compaction), writes made while
 * the compaction runs. */
Test(store_merkle, reopen_and_compact_many_segments)
{
    reopen_and_compact(8 * 1024, false, 64);
}

/* ---------- 3. purge ---------- */

static void do_one(kv_store *s, model *m, int key, enum op_kind kind)
{
    int pending = 0;
    op o = {.m = m, .key = key, .kind = kind, .pending = &pending, .expect_status = KV_OK};
    start_op(s, &o);
    cr_assert(storefix_run_until(&g_fx, none_pending, &pending, WAIT_MS), "write did not complete");
    cr_assert_eq(o.status, KV_OK, "%s: %s", m->k[key].key, kv_strerror(o.status));
}

Test(store_merkle, purged_tombstones_leave_the_tree)
{
    model *m = malloc(sizeof(*m));
    cr_assert_not_null(m);
    model_init(m, 3);
    kv_store *s = open_store(KV_SYNC_NEVER, 4u << 20);
    for (int i = 0; i < 100; i++)
        do_one(s, m, i, OP_PUT);
    for (int i = 0; i < 60; i++)
        do_one(s, m, i, OP_DEL);
    for (int i = 0; i < 10; i++)
        do_one(s, m, i, OP_DEL); /* a second tombstone over the first */
    check_tree(s, m, "tombstones written", 0);

    /* Too old an upto, a value, a key never written: nothing changes. */
    kv_version older = m->k[0].ver;
    older.ts--;
    cr_expect_eq(store_purge(s, m->k[0].key, m->k[0].klen, &older), KV_EEXIST);
    cr_expect_eq(store_purge(s, m->k[80].key, m->k[80].klen, &m->k[80].ver), KV_EEXIST);
    cr_expect_eq(store_purge(s, m->k[200].key, m->k[200].klen, &m->k[0].ver), KV_ENOTFOUND);
    check_tree(s, m, "refused purges", 0);

    for (int i = 0; i < 40; i++) {
        int rc = store_purge(s, m->k[i].key, m->k[i].klen, &m->k[i].ver);
        cr_assert_eq(rc, KV_OK, "purge %s: %s", m->k[i].key, kv_strerror(rc));
        m->k[i].present = false;
        check_tree(s, m, "purge", i);
    }
    /* Purging again is idempotent: the tree does not move whatever it returns. */
    (void)store_purge(s, m->k[0].key, m->k[0].klen, &m->k[0].ver);
    check_tree(s, m, "second purge", 0);

    /* An apply not newer than the purged tombstone is still refused: no change. */
    int pending = 0;
    op o = {.m = m,
            .key = 1,
            .kind = OP_APPLY,
            .given = m->k[1].ver,
            .pending = &pending,
            .expect_status = KV_ESTALE};
    start_op(s, &o);
    cr_assert(storefix_run_until(&g_fx, none_pending, &pending, WAIT_MS));
    check_tree(s, m, "stale apply over a purged tombstone", 0);

    /* A newer write to a purged key brings it back with the new version. */
    do_one(s, m, 2, OP_PUT);
    check_tree(s, m, "write over a purged tombstone", 0);

    /* Not compacted yet: a restart brings the purged tombstones back (store.h). */
    close_store(s);
    for (int i = 0; i < 40; i++)
        m->k[i].present = true; /* key 2 too: written over, it was present anyway */
    s = open_store(KV_SYNC_NEVER, 4u << 20);
    check_tree(s, m, "reopen before compaction (purged tombstones back)", 0);

    for (int i = 0; i < 40; i++) {
        if (i == 2)
            continue;
        cr_assert_eq(store_purge(s, m->k[i].key, m->k[i].klen, &m->k[i].ver), KV_OK);
        m->k[i].present = false;
    }
    check_tree(s, m, "purged again", 0);
    storefix_compaction c = {0};
    cr_assert_eq(store_compact(s, storefix_compact_cb, &c), KV_OK);
    cr_assert(storefix_run_until(&g_fx, storefix_flag_set, &c.done, 30000),
              "compaction did not finish");
    cr_assert_eq(c.status, KV_OK, "compaction: %s", kv_strerror(c.status));
    check_tree(s, m, "after compaction", 0);
    close_store(s);
    s = open_store(KV_SYNC_NEVER, 4u << 20);
    check_tree(s, m, "reopen after compaction (purged tombstones gone)", 0);
    close_store(s);
    free(m);
}

/* ---------- 4. failed writes roll back ---------- */

Test(store_merkle, failed_writes_roll_back_in_the_tree)
{
    model *m = malloc(sizeof(*m));
    cr_assert_not_null(m);
    model_init(m, 4);
    kv_store *s = open_store(KV_SYNC_ALWAYS, 4u << 20);
    for (int i = 0; i < 6; i++)
        do_one(s, m, i, OP_PUT);
    do_one(s, m, 6, OP_DEL);
    check_tree(s, m, "before the failure", 0);
    uint64_t root_before = kv_merkle_root(store_merkle(s));

    /* One commit group, all covered by the failing fsync: overwrites (key 0 twice),
     * a delete, new keys, applies over a value and over a tombstone. */
    store_debug_fail_next_sync(s, EIO);
    int pending = 0;
    op ops[9];
    memset(ops, 0, sizeof(ops));
    const struct {
        int key;
        enum op_kind kind;
        bool tomb;
    } plan[9] = {{0, OP_PUT, false},   {0, OP_PUT, false},  {1, OP_DEL, false},
                 {50, OP_PUT, false},  {51, OP_DEL, false}, {2, OP_APPLY, false},
                 {6, OP_APPLY, false}, {3, OP_APPLY, true}, {52, OP_APPLY, true}};
    uint64_t ms = storefix_now_ms();
    for (int i = 0; i < 9; i++) {
        ops[i] =
            (op){.m = m,
                 .key = plan[i].key,
                 .kind = plan[i].kind,
                 .tomb = plan[i].tomb,
                 .given = {.ts = ((ms + 1000) << KV_HLC_LOGICAL_BITS) + (uint64_t)i, .node = 3},
                 .pending = &pending,
                 .expect_status = KV_EIO};
        start_op(s, &ops[i]);
    }
    cr_assert(storefix_run_until(&g_fx, none_pending, &pending, WAIT_MS), "%d callbacks missing",
              pending);
    for (int i = 0; i < 9; i++)
        cr_expect_eq(ops[i].status, KV_EIO, "write %d: %s", i, kv_strerror(ops[i].status));
    check_tree(s, m, "after the failed group (model without it)", 0);
    cr_expect_eq(kv_merkle_root(store_merkle(s)), root_before);

    /* The previous values are what the store reports, too. */
    kv_store_meta meta;
    cr_assert_eq(store_get_meta(s, m->k[0].key, m->k[0].klen, &meta), KV_OK);
    cr_expect_eq(kv_version_cmp(&meta.ver, &m->k[0].ver), 0);
    cr_expect_not(meta.tombstone);
    cr_expect_eq(store_get_meta(s, m->k[50].key, m->k[50].klen, &meta), KV_ENOTFOUND);

    /* The next fsync works again, and the tree follows. */
    do_one(s, m, 0, OP_PUT);
    do_one(s, m, 50, OP_DEL);
    check_tree(s, m, "after the failure", 0);
    close_store(s);
    s = open_store(KV_SYNC_ALWAYS, 4u << 20);
    check_tree(s, m, "reopen after the failure", 0);
    close_store(s);
    free(m);
}

/* ---------- 5. options ---------- */

Test(store_merkle, depth_zero_means_no_tree_and_too_deep_is_refused)
{
    kv_store *s = NULL;
    kv_store_opts o = opts_for(KV_SYNC_NEVER, 0, 0);
    cr_assert_eq(store_open(&s, &g_fx.loop, &o), KV_OK);
    cr_expect_null(store_merkle(s));
    close_store(s);

    s = NULL;
    o = opts_for(KV_SYNC_NEVER, 0, KV_MERKLE_MAX_DEPTH + 1);
    cr_expect_eq(store_open(&s, &g_fx.loop, &o), KV_EINVAL);
    cr_expect_null(s);

    o = opts_for(KV_SYNC_NEVER, 0, KV_MERKLE_MAX_DEPTH);
    cr_assert_eq(store_open(&s, &g_fx.loop, &o), KV_OK);
    cr_expect_not_null(store_merkle(s));
    cr_expect_eq(kv_merkle_depth(store_merkle(s)), KV_MERKLE_MAX_DEPTH);
    close_store(s);
}
