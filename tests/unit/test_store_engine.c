/*
 * test_store_engine.c — unit tests of the production storage engine features (issue 3):
 * the hybrid logical clock and ring hash, conditional writes (store_apply), tombstones
 * and purge, TTL, compaction (correctness, concurrent writes, a crash between the new
 * segments becoming durable and the old ones being deleted, automatic triggering), hint
 * files (equal to a full scan, corrupt or stale ones ignored), LZ4, range enumeration,
 * rollback of failed writes, and a real full disk (root only: a small tmpfs).
 *
 * Real segment files in a mkdtemp directory and a private libuv loop driven until the
 * callbacks under test fire; every wait has a deadline. Each criterion test runs in its
 * own process.
 */
#include "common/buf.h"
#include "common/hash.h"
#include "common/hlc.h"
#include "kvstore/error.h"
#include "store/crc32c.h"
#include "store/format.h"
#include "store/store.h"

#include "harness.h"
#include "storefix.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define NODE_ID 7

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            cr_assert_fail(__VA_ARGS__);                                                           \
    } while (0)

static storefix g_fx;
static char g_mnt[320]; /* a tmpfs mounted by the ENOSPC test, unmounted by teardown */

/* ---------- fixture (tests/support/storefix.h) ---------- */

static void setup(void)
{
    storefix_init(&g_fx, "engine");
}

static void teardown(void)
{
    storefix_close_loop(&g_fx);
    if (g_mnt[0])
        umount2(g_mnt, MNT_DETACH);
    th_tmpdir_remove(g_fx.dir);
}

TestSuite(engine, .init = setup, .fini = teardown, .timeout = 120);

typedef struct wres {
    int calls;
    int status;
    kv_version ver;
} wres;

static void write_cb(void *arg, int status, const kv_version *ver)
{
    wres *r = arg;
    r->calls++;
    r->status = status;
    if (ver)
        r->ver = *ver;
}

static bool wres_done(void *arg)
{
    return ((wres *)arg)->calls > 0;
}

typedef struct wcount {
    int calls, ok, want;
} wcount;

static void count_cb(void *arg, int status, const kv_version *ver)
{
    (void)ver;
    wcount *c = arg;
    c->calls++;
    if (status == KV_OK)
        c->ok++;
}

static bool wcount_done(void *arg)
{
    wcount *c = arg;
    return c->calls >= c->want;
}

static kv_store_opts opts_for(kv_sync_mode mode, uint64_t seg_bytes)
{
    return (kv_store_opts){
        .dir = g_fx.dir,
        .sync = mode,
        .sync_interval_ms = 20,
        .segment_bytes = seg_bytes,
        .max_key = 1024,
        .max_value = 1 << 20,
        .node_id = NODE_ID,
        .compaction_dead_ratio = 2.0, /* no automatic compaction unless a test asks */
    };
}

static kv_store *open_with(const kv_store_opts *o)
{
    kv_store *s = NULL;
    int rc = store_open(&s, &g_fx.loop, o);
    cr_assert_eq(rc, KV_OK, "store_open: %s", kv_strerror(rc));
    return s;
}

static kv_store *open_store(kv_sync_mode mode, uint64_t seg_bytes)
{
    kv_store_opts o = opts_for(mode, seg_bytes);
    return open_with(&o);
}

static void on_closed(void *arg)
{
    *(bool *)arg = true;
}

static void close_store(kv_store *s)
{
    bool closed = false;
    store_close(s, on_closed, &closed);
    cr_assert(storefix_run_until(&g_fx, storefix_flag_set, &closed, 20000),
              "store_close did not complete");
}

static int wait_write(wres *r)
{
    CHECK(r->calls == 0, "callback ran inside the call");
    CHECK(storefix_run_until(&g_fx, wres_done, r, 10000), "write callback never came");
    CHECK(r->calls == 1, "%d callbacks", r->calls);
    return r->status;
}

static kv_version put_exp(kv_store *s, const char *key, const void *val, size_t vlen,
                          uint64_t expiry)
{
    wres r = {0};
    int rc = store_put(s, key, strlen(key), val, vlen, expiry, write_cb, &r);
    CHECK(rc == KV_OK, "store_put(%s): %s", key, kv_strerror(rc));
    rc = wait_write(&r);
    CHECK(rc == KV_OK, "put(%s) completed with %s", key, kv_strerror(rc));
    return r.ver;
}

static kv_version put_str(kv_store *s, const char *key, const char *val)
{
    return put_exp(s, key, val, strlen(val), 0);
}

static kv_version del_key(kv_store *s, const char *key)
{
    wres r = {0};
    CHECK(store_delete(s, key, strlen(key), write_cb, &r) == KV_OK, "delete %s", key);
    int rc = wait_write(&r);
    CHECK(rc == KV_OK, "delete(%s) completed with %s", key, kv_strerror(rc));
    return r.ver;
}

/* store_apply and wait: returns the status, *out = the version reported. */
static int apply_wait(kv_store *s, const char *key, const char *val, kv_version ver, bool tomb,
                      kv_version *out)
{
    wres r = {0};
    int rc =
        store_apply(s, key, strlen(key), val, val ? strlen(val) : 0, 0, &ver, tomb, write_cb, &r);
    CHECK(rc == KV_OK, "store_apply(%s): %s", key, kv_strerror(rc));
    rc = wait_write(&r);
    if (out)
        *out = r.ver;
    return rc;
}

static void expect_val(kv_store *s, const char *key, const char *want)
{
    kv_buf b = KV_BUF_INIT;
    int rc = store_get(s, key, strlen(key), &b, NULL);
    CHECK(rc == KV_OK, "get(%s): %s", key, kv_strerror(rc));
    CHECK(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0,
          "get(%s) returned '%.*s', want '%s'", key, (int)b.len, b.data, want);
    kv_buf_free(&b);
}

static void expect_missing(kv_store *s, const char *key)
{
    kv_buf b = KV_BUF_INIT;
    int rc = store_get(s, key, strlen(key), &b, NULL);
    CHECK(rc == KV_ENOTFOUND, "get(%s): %s, want not found", key, kv_strerror(rc));
    kv_buf_free(&b);
}

static kv_compact_stats compact_now(kv_store *s)
{
    storefix_compaction c = {0};
    int rc = store_compact(s, storefix_compact_cb, &c);
    cr_assert_eq(rc, KV_OK, "store_compact: %s", kv_strerror(rc));
    cr_assert_not(c.done, "compaction callback inside store_compact");
    cr_assert(storefix_run_until(&g_fx, storefix_flag_set, &c.done, 60000),
              "compaction never finished");
    cr_assert_eq(c.status, KV_OK, "compaction: %s", kv_strerror(c.status));
    cr_assert_not(store_compacting(s));
    return c.st;
}

static void store_dir(char *out, size_t cap)
{
    snprintf(out, cap, "%s/store", g_fx.dir);
}

/* Files in the store directory ending in suffix: count and total bytes. */
static int count_files(const char *suffix, uint64_t *bytes)
{
    char dir[300];
    store_dir(dir, sizeof(dir));
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    uint64_t total = 0;
    struct dirent *de;
    size_t sl = strlen(suffix);
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l > sl && strcmp(de->d_name + l - sl, suffix) == 0) {
            char p[600];
            struct stat sb;
            snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
            if (stat(p, &sb) == 0)
                total += (uint64_t)sb.st_size;
            n++;
        }
    }
    closedir(d);
    if (bytes)
        *bytes = total;
    return n;
}

static void remove_files(const char *suffix)
{
    char dir[300];
    store_dir(dir, sizeof(dir));
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *de;
    size_t sl = strlen(suffix);
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l > sl && strcmp(de->d_name + l - sl, suffix) == 0) {
            char p[600];
            snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
            cr_assert_eq(unlink(p), 0);
        }
    }
    closedir(d);
}

/* ---------- HLC and ring hash ---------- */

Test(engine, hlc_is_monotonic_and_merges)
{
    kv_hlc c;
    kv_hlc_init(&c, 9);
    kv_version a = kv_hlc_now(&c, 1000);
    cr_expect_eq(a.ts, 1000ull << 16);
    cr_expect_eq(a.node, 9u);
    /* Same millisecond: the logical counter ticks. */
    kv_version b = kv_hlc_now(&c, 1000);
    cr_expect_eq(b.ts, (1000ull << 16) + 1);
    /* Wall clock steps back: still strictly increasing. */
    kv_version d = kv_hlc_now(&c, 10);
    cr_expect_gt(d.ts, b.ts);
    /* A version from a node whose clock is ahead: the next local one beats it. */
    kv_version far = {.ts = 5000ull << 16 | 7, .node = 3};
    kv_hlc_observe(&c, &far, 1001);
    kv_version e = kv_hlc_now(&c, 1001);
    cr_expect_gt(kv_version_cmp(&e, &far), 0);
    cr_expect_eq(kv_hlc_ts_ms(e.ts), 5000u);
    cr_expect_eq(kv_hlc_ahead_ms(&far, 1001), 3999u);
    cr_expect_eq(kv_hlc_ahead_ms(&far, 9000), 0u);
    /* Observing something older changes nothing. */
    kv_version old = {.ts = 1, .node = 1};
    kv_hlc_observe(&c, &old, 1001);
    kv_version f = kv_hlc_now(&c, 1001);
    cr_expect_eq(f.ts, e.ts + 1);
    /* Wall clock passes everything seen: counter restarts at 0. */
    kv_version g = kv_hlc_now(&c, 6000);
    cr_expect_eq(g.ts, 6000ull << 16);
    /* Counter overflow within one millisecond just carries into the ms part. */
    kv_hlc_init(&c, 1);
    kv_version last = kv_hlc_now(&c, 42);
    for (int i = 0; i < 70000; i++) {
        kv_version v = kv_hlc_now(&c, 42);
        CHECK(v.ts > last.ts, "not increasing at %d", i);
        last = v;
    }
    /* Ordering: ts first, then node. */
    kv_version x = {.ts = 5, .node = 1}, y = {.ts = 5, .node = 2}, z = {.ts = 6, .node = 0};
    cr_expect_lt(kv_version_cmp(&x, &y), 0);
    cr_expect_lt(kv_version_cmp(&y, &z), 0);
    cr_expect_eq(kv_version_cmp(&x, &x), 0);
}

Test(engine, ring_hash_is_xxh64_seed0)
{
    /* Reference values from xxhsum -H1 (the xxHash project's own tool). */
    static const struct {
        const char *in;
        uint64_t want;
    } v[] = {
        {"", 0xef46db3751d8e999ull},
        {"a", 0xd24ec4f1a98c6e5bull},
        {"abc", 0x44bc2cf5ad770999ull},
        {"0123456789abcdef0123456789abcdef012", 0xf674e02f06c14d72ull},
        {"hello world", 0x45ab6734b21e6968ull},
        {"The quick brown fox jumps over the lazy dog, twice: the quick brown fox jumps over "
         "the lazy dog.",
         0x581d6c19ba1b00f2ull},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        cr_expect_eq(kv_ring_hash(v[i].in, strlen(v[i].in)), v[i].want, "input %zu", i);
}

Test(engine, hlc_saturates_instead_of_wrapping)
{
    kv_hlc c;
    kv_hlc_init(&c, 1);
    kv_version top = {.ts = UINT64_MAX, .node = 5};
    kv_hlc_observe(&c, &top, 1000);
    cr_expect(kv_hlc_exhausted(&c, 1000));
    kv_version v = kv_hlc_now(&c, 1000);
    /* Never wraps to a small timestamp that would lose to what was observed. */
    cr_expect_eq(v.ts, UINT64_MAX);
    kv_hlc_init(&c, 1);
    cr_expect_not(kv_hlc_exhausted(&c, 1000));
}

/* A forged or far-future version from a peer must not push this node's later writes
 * into the past: refused outright. One a few minutes ahead (clock skew) is taken, and a
 * local write after it still wins. */
Test(engine, apply_refuses_far_future_versions_and_local_writes_still_win)
{
    kv_store *s = open_store(KV_SYNC_ALWAYS, 1 << 20);
    wres r = {0};
    kv_version top = {.ts = UINT64_MAX, .node = 9};
    int rc = store_apply(s, "k", 1, "from-peer", 9, 0, &top, false, write_cb, &r);
    cr_expect_eq(rc, KV_EINVAL, "apply at the maximum timestamp: %s", kv_strerror(rc));
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.applies_refused, 1u);

    kv_version skewed = {.ts = (storefix_now_ms() + 5 * 60 * 1000) << KV_HLC_LOGICAL_BITS,
                         .node = 9};
    cr_expect_eq(apply_wait(s, "k", "from-peer", skewed, false, NULL), KV_OK);
    kv_version mine = put_str(s, "k", "local-put");
    cr_expect_gt(kv_version_cmp(&mine, &skewed), 0);
    close_store(s);
    s = open_store(KV_SYNC_ALWAYS, 1 << 20);
    expect_val(s, "k", "local-put");
    close_store(s);
}

/* ---------- conditional writes ---------- */

static void apply_both_ways(kv_sync_mode mode)
{
    kv_store *s = open_store(mode, 0);
    kv_version v10 = {.ts = 10ull << 16, .node = 3};
    kv_version v20 = {.ts = 20ull << 16, .node = 3};
    kv_version v20b = {.ts = 20ull << 16, .node = 4};
    kv_version got;

    /* Absent key: applies, and reports the version written. */
    cr_assert_eq(apply_wait(s, "k", "ten", v10, false, &got), KV_OK);
    cr_expect_eq(kv_version_cmp(&got, &v10), 0);
    expect_val(s, "k", "ten");
    /* Newer: applies. */
    cr_assert_eq(apply_wait(s, "k", "twenty", v20, false, &got), KV_OK);
    expect_val(s, "k", "twenty");
    /* Older: refused with the stored version; nothing changes. */
    cr_assert_eq(apply_wait(s, "k", "stale", v10, false, &got), KV_ESTALE);
    cr_expect_eq(kv_version_cmp(&got, &v20), 0, "refusal must report the stored version");
    expect_val(s, "k", "twenty");
    /* Equal: refused too (not newer). */
    cr_assert_eq(apply_wait(s, "k", "again", v20, false, &got), KV_ESTALE);
    /* Same timestamp, higher node id: newer. */
    cr_assert_eq(apply_wait(s, "k", "tie", v20b, false, &got), KV_OK);
    expect_val(s, "k", "tie");

    /* A tombstone by apply, then an older value is refused against the tombstone. */
    kv_version v30 = {.ts = 30ull << 16, .node = 3};
    cr_assert_eq(apply_wait(s, "k", NULL, v30, true, &got), KV_OK);
    expect_missing(s, "k");
    kv_store_meta m;
    cr_assert_eq(store_get_meta(s, "k", 1, &m), KV_OK);
    cr_expect(m.tombstone);
    cr_expect_eq(kv_version_cmp(&m.ver, &v30), 0);
    cr_assert_eq(apply_wait(s, "k", "zombie", v20, false, &got), KV_ESTALE);
    cr_expect_eq(kv_version_cmp(&got, &v30), 0);
    expect_missing(s, "k");

    /* The clock merged the applied versions: a local write is newer still. */
    kv_version future = {.ts = (storefix_now_ms() + 3600000ull) << 16, .node = 99};
    cr_assert_eq(apply_wait(s, "f", "from the future", future, false, NULL), KV_OK);
    kv_version local = put_str(s, "f", "local");
    cr_expect_gt(kv_version_cmp(&local, &future), 0, "local write lost to a skewed clock");
    expect_val(s, "f", "local");

    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.applies_stale, 3u);
    close_store(s);

    /* Everything survives a restart, and refusals still hold. */
    s = open_store(mode, 0);
    cr_assert_eq(store_get_meta(s, "k", 1, &m), KV_OK);
    cr_expect(m.tombstone);
    cr_expect_eq(kv_version_cmp(&m.ver, &v30), 0);
    cr_assert_eq(apply_wait(s, "k", "zombie", v20, false, &got), KV_ESTALE);
    expect_val(s, "f", "local");
    kv_version after = put_str(s, "g", "x");
    cr_expect_gt(kv_version_cmp(&after, &local), 0, "clock went back across restart");
    close_store(s);
}

Test(engine, apply_conditional_never)
{
    apply_both_ways(KV_SYNC_NEVER);
}

Test(engine, apply_conditional_always)
{
    apply_both_ways(KV_SYNC_ALWAYS);
}

/* Several applies of one key issued back to back (none committed yet) resolve in
 * version order, whatever the order they arrive in. */
static void apply_burst(kv_sync_mode mode)
{
    kv_store *s = open_store(mode, 0);
    int order[] = {5, 2, 9, 9, 1, 7, 3};
    enum { N = sizeof(order) / sizeof(order[0]) };
    wres r[N];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < N; i++) {
        char val[8];
        snprintf(val, sizeof(val), "v%d", order[i]);
        kv_version v = {.ts = (uint64_t)order[i] << 16, .node = 1};
        cr_assert_eq(store_apply(s, "b", 1, val, strlen(val), 0, &v, false, write_cb, &r[i]),
                     KV_OK);
    }
    /* Under ALWAYS nothing is visible before it is durable. */
    if (mode == KV_SYNC_ALWAYS)
        expect_missing(s, "b");
    for (int i = 0; i < N; i++)
        cr_assert(storefix_run_until(&g_fx, wres_done, &r[i], 10000));
    int want[N] = {KV_OK, KV_ESTALE, KV_OK, KV_ESTALE, KV_ESTALE, KV_ESTALE, KV_ESTALE};
    for (int i = 0; i < N; i++)
        cr_expect_eq(r[i].status, want[i], "apply #%d (v%d): %s", i, order[i],
                     kv_strerror(r[i].status));
    expect_val(s, "b", "v9");
    close_store(s);
    s = open_store(mode, 0);
    expect_val(s, "b", "v9");
    close_store(s);
}

Test(engine, apply_burst_resolves_in_version_order_never)
{
    apply_burst(KV_SYNC_NEVER);
}

Test(engine, apply_burst_resolves_in_version_order_always)
{
    apply_burst(KV_SYNC_ALWAYS);
}

/* ---------- tombstones and purge ---------- */

Test(engine, tombstones_are_readable_until_purged)
{
    kv_store *s = open_store(KV_SYNC_INTERVAL, 0);
    put_str(s, "gone", "v");
    kv_version dv = del_key(s, "gone");
    put_str(s, "here", "v");
    kv_store_meta m;
    cr_assert_eq(store_get_meta(s, "gone", 4, &m), KV_OK);
    cr_expect(m.tombstone, "deleted at version V must stay readable");
    cr_expect_eq(kv_version_cmp(&m.ver, &dv), 0);
    cr_assert_eq(store_get_meta(s, "here", 4, &m), KV_OK);
    cr_expect_not(m.tombstone);
    cr_expect_eq(store_get_meta(s, "never", 5, &m), KV_ENOTFOUND);

    /* Purge refuses values, newer tombstones and unknown keys. */
    kv_version older = {.ts = dv.ts - 1, .node = dv.node};
    cr_expect_eq(store_purge(s, "here", 4, &dv), KV_EEXIST);
    cr_expect_eq(store_purge(s, "gone", 4, &older), KV_EEXIST);
    cr_expect_eq(store_purge(s, "never", 5, &dv), KV_ENOTFOUND);

    /* Compaction alone never drops a tombstone that was not purged. */
    for (int i = 0; i < 5; i++)
        put_str(s, "here", "churn");
    compact_now(s);
    close_store(s);
    s = open_store(KV_SYNC_INTERVAL, 0);
    cr_assert_eq(store_get_meta(s, "gone", 4, &m), KV_OK, "tombstone lost by compaction");
    cr_expect(m.tombstone);
    cr_expect_eq(kv_version_cmp(&m.ver, &dv), 0);

    /* Purge: forgotten at once... */
    cr_assert_eq(store_purge(s, "gone", 4, &dv), KV_OK);
    cr_expect_eq(store_get_meta(s, "gone", 4, &m), KV_ENOTFOUND);
    cr_expect_eq(store_purge(s, "gone", 4, &dv), KV_ENOTFOUND, "purge is idempotent");
    expect_missing(s, "gone");
    /* ...an older write is still refused until compaction removed it... */
    kv_version got;
    cr_expect_eq(apply_wait(s, "gone", "zombie", older, false, &got), KV_ESTALE);
    /* ...and the next compaction drops it from disk for good. */
    compact_now(s);
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.tombstones, 0u);
    close_store(s);
    s = open_store(KV_SYNC_INTERVAL, 0);
    cr_expect_eq(store_get_meta(s, "gone", 4, &m), KV_ENOTFOUND, "purged tombstone came back");
    expect_val(s, "here", "churn");
    /* Once gone, the key is new again: any version applies. */
    cr_expect_eq(apply_wait(s, "gone", "reborn", older, false, NULL), KV_OK);
    expect_val(s, "gone", "reborn");
    close_store(s);
}

/* A purged tombstone must not let an older value come back: the value's record lives in
 * a segment compaction rewrites too. */
Test(engine, purge_never_resurrects_older_values)
{
    kv_store *s = open_store(KV_SYNC_NEVER, 4096);
    char val[200];
    memset(val, 'o', sizeof(val) - 1);
    val[sizeof(val) - 1] = '\0';
    put_str(s, "victim", "old value");
    for (int i = 0; i < 40; i++) { /* push the value into older segments */
        char k[16];
        snprintf(k, sizeof(k), "fill-%d", i);
        put_str(s, k, val);
    }
    kv_version dv = del_key(s, "victim");
    for (int i = 0; i < 40; i++) {
        char k[16];
        snprintf(k, sizeof(k), "fill-%d", i);
        put_str(s, k, "short"); /* garbage everywhere */
    }
    cr_assert_eq(store_purge(s, "victim", 6, &dv), KV_OK);
    compact_now(s);
    expect_missing(s, "victim");
    close_store(s);
    s = open_store(KV_SYNC_NEVER, 4096);
    expect_missing(s, "victim");
    kv_store_meta m;
    cr_expect_eq(store_get_meta(s, "victim", 6, &m), KV_ENOTFOUND);
    close_store(s);
}

/* ---------- TTL ---------- */

Test(engine, expired_values_are_dropped_by_compaction)
{
    kv_store *s = open_store(KV_SYNC_NEVER, 4096);
    uint64_t now = storefix_now_ms();
    put_str(s, "old", "the first value, without ttl");
    char val[300];
    memset(val, 'x', sizeof(val) - 1);
    val[sizeof(val) - 1] = '\0';
    for (int i = 0; i < 30; i++) { /* the first value ends up in an older segment */
        char k[16];
        snprintf(k, sizeof(k), "f%d", i);
        put_str(s, k, val);
    }
    put_exp(s, "old", "short-lived", 11, now + 300);
    put_exp(s, "keep", "long-lived", 10, now + 3600 * 1000);
    for (int i = 0; i < 30; i++) {
        char k[16];
        snprintf(k, sizeof(k), "f%d", i);
        put_str(s, k, "y");
    }
    /* Wait (bounded) until it has expired by the wall clock. */
    uint64_t deadline = storefix_now_ms() + 10000;
    while (storefix_now_ms() < now + 400 && storefix_now_ms() < deadline) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    expect_missing(s, "old");
    kv_store_meta m;
    cr_assert_eq(store_get_meta(s, "old", 3, &m), KV_OK);
    cr_expect(m.expired);
    cr_expect_eq(m.expiry_ms, now + 300, "exact expiry in ms");

    kv_compact_stats cs = compact_now(s);
    cr_expect_geq(cs.expired_dropped, 1u);
    cr_expect_eq(store_get_meta(s, "old", 3, &m), KV_ENOTFOUND, "expired entry not dropped");
    expect_val(s, "keep", "long-lived");
    close_store(s);
    s = open_store(KV_SYNC_NEVER, 4096);
    /* The first value (no TTL) must not come back from an older segment. */
    expect_missing(s, "old");
    cr_expect_eq(store_get_meta(s, "old", 3, &m), KV_ENOTFOUND);
    expect_val(s, "keep", "long-lived");
    close_store(s);
}

/* ---------- compaction ---------- */

#define NK 600

static void key_of(int i, char *k, size_t cap)
{
    snprintf(k, cap, "key-%05d", i);
}

static void val_of(int i, int gen, char *v, size_t cap)
{
    snprintf(v, cap, "value-%05d-gen-%d-%.*s", i, gen, 40 + i % 60,
             "padpadpadpadpadpadpadpadpadpadpadpadpadpadpadpadpadpadpadpadpadpadpadpadpadpad"
             "padpadpadpad");
}

/* Write NK keys in several generations, delete some: lots of garbage. */
static void churn(kv_store *s, int gens, int *gen_of)
{
    wcount c = {.want = 0};
    char k[32], v[160];
    for (int g = 0; g < gens; g++) {
        for (int i = 0; i < NK; i++) {
            if (g > 0 && i % (g + 2) != 0)
                continue;
            key_of(i, k, sizeof(k));
            val_of(i, g, v, sizeof(v));
            CHECK(store_put(s, k, strlen(k), v, strlen(v), 0, count_cb, &c) == KV_OK, "put");
            c.want++;
            gen_of[i] = g;
        }
    }
    for (int i = 0; i < NK; i += 7) {
        key_of(i, k, sizeof(k));
        CHECK(store_delete(s, k, strlen(k), count_cb, &c) == KV_OK, "delete");
        c.want++;
        gen_of[i] = -1;
    }
    cr_assert(storefix_run_until(&g_fx, wcount_done, &c, 20000));
    cr_assert_eq(c.ok, c.want);
}

static void expect_gens(kv_store *s, const int *gen_of)
{
    char k[32], v[160];
    for (int i = 0; i < NK; i++) {
        key_of(i, k, sizeof(k));
        if (gen_of[i] < 0) {
            expect_missing(s, k);
            continue;
        }
        val_of(i, gen_of[i], v, sizeof(v));
        expect_val(s, k, v);
    }
}

Test(engine, compaction_keeps_every_live_value)
{
    kv_store *s = open_store(KV_SYNC_NEVER, 16 * 1024);
    int gen_of[NK];
    churn(s, 5, gen_of);
    kv_store_stats before;
    store_stats(s, &before);
    cr_assert_gt(before.dead_bytes, 0u);
    kv_compact_stats cs = compact_now(s);
    cr_expect_gt(cs.segments_in, 0u);
    cr_expect_gt(cs.records_dropped, 0u);
    cr_expect_lt(cs.bytes_out, cs.bytes_in);
    kv_store_stats after;
    store_stats(s, &after);
    fprintf(stderr,
            "compaction: %u segments (%" PRIu64 " bytes) -> %u (%" PRIu64 " bytes), "
            "%" PRIu64 " kept, %" PRIu64 " dropped, %.3f s\n",
            cs.segments_in, cs.bytes_in, cs.segments_out, cs.bytes_out, cs.records_kept,
            cs.records_dropped, cs.seconds);
    cr_expect_lt(after.disk_bytes, before.disk_bytes);
    cr_expect_eq(after.keys, before.keys);
    cr_expect_eq(after.tombstones, before.tombstones, "compaction must keep tombstones");
    uint64_t disk;
    count_files(".seg", &disk);
    cr_expect_eq(after.disk_bytes, disk, "disk_bytes disagrees with the files");
    cr_expect_eq(count_files(".tmp", NULL), 0, "temporary files left behind");
    expect_gens(s, gen_of);
    /* Every new segment has a hint file. */
    cr_expect_geq(count_files(".hint", NULL), (int)cs.segments_out);
    close_store(s);

    s = open_store(KV_SYNC_NEVER, 16 * 1024);
    kv_store_stats re;
    store_stats(s, &re);
    cr_expect_eq(re.keys, before.keys);
    cr_expect_eq(re.tombstones, before.tombstones);
    cr_expect_eq(re.corrupt_records, 0u);
    expect_gens(s, gen_of);
    /* A second compaction right away finds (almost) nothing to do. */
    kv_compact_stats cs2 = compact_now(s);
    cr_expect_eq(cs2.records_dropped, 0u);
    close_store(s);
}

/* Writes and reads go on while a compaction runs; a write made meanwhile wins. */
typedef struct during {
    kv_store *s;
    storefix_compaction c;
    int round;
    int *gen_of;
    wcount w;
    int reads;
} during;

static bool compaction_done(void *arg)
{
    return ((during *)arg)->c.done;
}

Test(engine, compaction_with_concurrent_writes)
{
    kv_store *s = open_store(KV_SYNC_NEVER, 16 * 1024);
    int gen_of[NK];
    churn(s, 4, gen_of);
    during d = {.s = s, .gen_of = gen_of};
    cr_assert_eq(store_compact(s, storefix_compact_cb, &d.c), KV_OK);
    cr_expect_eq(store_compact(s, storefix_compact_cb, &d.c), KV_EEXIST, "two compactions at once");
    /* Until it finishes: overwrite keys, delete some, read others, each loop turn. */
    char k[32], v[160];
    uint64_t deadline = uv_hrtime() + 60ull * 1000000000u;
    int gen = 100;
    while (!d.c.done && uv_hrtime() < deadline) {
        for (int j = 0; j < 20; j++) {
            int i = (d.round * 37 + j * 11) % NK;
            key_of(i, k, sizeof(k));
            if (j == 7) {
                CHECK(store_delete(s, k, strlen(k), count_cb, &d.w) == KV_OK, "delete");
                gen_of[i] = -1;
            } else {
                val_of(i, gen, v, sizeof(v));
                CHECK(store_put(s, k, strlen(k), v, strlen(v), 0, count_cb, &d.w) == KV_OK, "put");
                gen_of[i] = gen;
            }
            d.w.want++;
            int r = (i + 300) % NK;
            key_of(r, k, sizeof(k));
            kv_buf b = KV_BUF_INIT;
            int rc = store_get(s, k, strlen(k), &b, NULL);
            CHECK(rc == KV_OK || rc == KV_ENOTFOUND, "read during compaction: %s", kv_strerror(rc));
            kv_buf_free(&b);
            d.reads++;
        }
        d.round++;
        gen++;
        uv_run(&g_fx.loop, UV_RUN_NOWAIT);
    }
    cr_assert(storefix_run_until(&g_fx, compaction_done, &d, 60000), "compaction never finished");
    cr_assert_eq(d.c.status, KV_OK);
    cr_assert(storefix_run_until(&g_fx, wcount_done, &d.w, 20000));
    cr_expect_eq(d.w.ok, d.w.want);
    fprintf(stderr, "compaction ran over %d loop turns with %d writes and %d reads meanwhile\n",
            d.round, d.w.want, d.reads);
    expect_gens(s, gen_of);
    close_store(s);
    s = open_store(KV_SYNC_NEVER, 16 * 1024);
    expect_gens(s, gen_of);
    close_store(s);
}

/* The process dies after the new segments are durable and before the old ones are
 * deleted: both sets are on disk at the next open. Simulated by putting copies of the
 * old files back after the compaction. */
Test(engine, crash_between_new_durable_and_old_deleted)
{
    kv_store *s = open_store(KV_SYNC_ALWAYS, 16 * 1024);
    int gen_of[NK];
    churn(s, 4, gen_of);
    close_store(s);
    char dir[300], saved[320], cmd[1024];
    store_dir(dir, sizeof(dir));
    snprintf(saved, sizeof(saved), "%s/saved", g_fx.dir);
    snprintf(cmd, sizeof(cmd), "mkdir -p '%s' && cp -p '%s'/*.seg '%s'/", saved, dir, saved);
    cr_assert_eq(system(cmd), 0);

    s = open_store(KV_SYNC_ALWAYS, 16 * 1024);
    kv_store_stats before;
    store_stats(s, &before);
    kv_compact_stats cs = compact_now(s);
    cr_assert_gt(cs.segments_in, 0u);
    close_store(s);
    /* Old segments back (no-clobber: a file the compaction did not delete stays). */
    snprintf(cmd, sizeof(cmd), "cp -n '%s'/*.seg '%s'/", saved, dir);
    cr_assert_eq(system(cmd), 0);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", saved);
    cr_assert_eq(system(cmd), 0);

    s = open_store(KV_SYNC_ALWAYS, 16 * 1024);
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.keys, before.keys, "duplicates changed the key count");
    cr_expect_eq(st.tombstones, before.tombstones);
    cr_expect_eq(st.corrupt_records, 0u);
    expect_gens(s, gen_of);
    /* Writes still go to the right place and win. */
    put_str(s, "key-00001", "after the crash");
    expect_val(s, "key-00001", "after the crash");
    gen_of[1] = -2;
    /* The duplicates are garbage: the next compaction removes them. */
    compact_now(s);
    close_store(s);
    s = open_store(KV_SYNC_ALWAYS, 16 * 1024);
    expect_val(s, "key-00001", "after the crash");
    store_stats(s, &st);
    cr_expect_eq(st.keys, before.keys);
    close_store(s);
}

Test(engine, compaction_starts_by_itself_past_the_thresholds)
{
    kv_store_opts o = opts_for(KV_SYNC_NEVER, 8 * 1024);
    o.compaction_dead_ratio = 0.3;
    o.compaction_min_bytes = 32 * 1024;
    kv_store *s = open_with(&o);
    char v[200];
    memset(v, 'a', sizeof(v) - 1);
    v[sizeof(v) - 1] = '\0';
    /* The same 20 keys over and over: almost everything becomes garbage. */
    wcount c = {0};
    for (int round = 0; round < 60; round++) {
        for (int i = 0; i < 20; i++) {
            char k[16];
            snprintf(k, sizeof(k), "hot-%d", i);
            v[0] = (char)('a' + round % 26);
            CHECK(store_put(s, k, strlen(k), v, strlen(v), 0, count_cb, &c) == KV_OK, "put");
            c.want++;
        }
        cr_assert(storefix_run_until(&g_fx, wcount_done, &c, 10000));
    }
    /* The maintenance timer checks the thresholds every 100 ms. */
    kv_store_stats st;
    uint64_t deadline = uv_hrtime() + 20ull * 1000000000u;
    storefix_tick_start(&g_fx);
    do {
        uv_run(&g_fx.loop, UV_RUN_ONCE);
        store_stats(s, &st);
    } while ((st.compactions == 0 || store_compacting(s)) && uv_hrtime() < deadline);
    storefix_tick_stop(&g_fx);
    cr_expect_geq(st.compactions, 1u, "no automatic compaction");
    cr_expect_lt((double)st.dead_bytes, 0.3 * (double)st.disk_bytes + 8 * 1024);
    for (int i = 0; i < 20; i++) {
        char k[16];
        snprintf(k, sizeof(k), "hot-%d", i);
        v[0] = (char)('a' + 59 % 26);
        expect_val(s, k, v);
    }
    close_store(s);
}

/* Latency of reads and writes while a compaction runs vs. not (printed, not asserted:
 * speed belongs to benchmarks). */
static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(uint64_t *v, size_t n, double p)
{
    if (!n)
        return 0;
    qsort(v, n, sizeof(*v), cmp_u64);
    size_t i = (size_t)ceil(p * (double)n) - 1;
    return (double)v[i < n ? i : n - 1] / 1000.0;
}

typedef struct lat {
    uint64_t *get, *put, *turn, *cpu;
    size_t ng, np, nt, cap;
} lat;

/* CPU time of this thread: what the loop itself spends, without the time the scheduler
 * gives to other processes (the test machine is shared). */
static uint64_t thread_cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void lat_round(kv_store *s, lat *L, int round, wcount *w)
{
    char k[32], v[160];
    uint64_t t0 = uv_hrtime(), c0 = thread_cpu_ns();
    for (int j = 0; j < 50 && L->np < L->cap; j++) {
        int i = (round * 131 + j * 17) % NK;
        key_of(i, k, sizeof(k));
        val_of(i, round, v, sizeof(v));
        uint64_t a = uv_hrtime();
        CHECK(store_put(s, k, strlen(k), v, strlen(v), 0, count_cb, w) == KV_OK, "put");
        L->put[L->np++] = uv_hrtime() - a;
        w->want++;
        key_of((i + 250) % NK, k, sizeof(k));
        kv_buf b = KV_BUF_INIT;
        a = uv_hrtime();
        int rc = store_get(s, k, strlen(k), &b, NULL);
        L->get[L->ng++] = uv_hrtime() - a;
        CHECK(rc == KV_OK || rc == KV_ENOTFOUND, "get: %s", kv_strerror(rc));
        kv_buf_free(&b);
    }
    /* One loop turn: the write(2), the completions and any compaction slice. */
    uv_run(&g_fx.loop, UV_RUN_NOWAIT);
    if (L->nt < L->cap) {
        L->cpu[L->nt] = thread_cpu_ns() - c0;
        L->turn[L->nt++] = uv_hrtime() - t0;
    }
}

Test(engine, latency_during_compaction_is_reported)
{
    kv_store *s = open_store(KV_SYNC_NEVER, 64 * 1024);
    int gen_of[NK];
    for (int k = 0; k < 6; k++)
        churn(s, 3, gen_of);
    enum { CAP = 40000 };
    lat quiet = {calloc(CAP, 8), calloc(CAP, 8), calloc(CAP, 8), calloc(CAP, 8), 0, 0, 0, CAP};
    lat busy = {calloc(CAP, 8), calloc(CAP, 8), calloc(CAP, 8), calloc(CAP, 8), 0, 0, 0, CAP};
    wcount w = {0};
    for (int r = 0; r < 200; r++)
        lat_round(s, &quiet, r, &w);
    storefix_compaction c = {0};
    cr_assert_eq(store_compact(s, storefix_compact_cb, &c), KV_OK);
    uint64_t deadline = uv_hrtime() + 60ull * 1000000000u;
    for (int r = 0; !c.done && uv_hrtime() < deadline; r++)
        lat_round(s, &busy, r, &w);
    cr_assert(storefix_run_until(&g_fx, storefix_flag_set, &c.done, 60000));
    cr_assert(storefix_run_until(&g_fx, wcount_done, &w, 20000));
    cr_expect_eq(w.ok, w.want);
    fprintf(stderr,
            "latency (us) without compaction: get p50 %.1f p99 %.1f, put p50 %.1f p99 %.1f, "
            "loop turn (100 ops) p99 %.1f max %.1f, its cpu p99 %.1f max %.1f (%zu ops)\n",
            pct(quiet.get, quiet.ng, 0.5), pct(quiet.get, quiet.ng, 0.99),
            pct(quiet.put, quiet.np, 0.5), pct(quiet.put, quiet.np, 0.99),
            pct(quiet.turn, quiet.nt, 0.99), pct(quiet.turn, quiet.nt, 1.0),
            pct(quiet.cpu, quiet.nt, 0.99), pct(quiet.cpu, quiet.nt, 1.0), quiet.ng);
    fprintf(stderr,
            "latency (us) during compaction:  get p50 %.1f p99 %.1f, put p50 %.1f p99 %.1f, "
            "loop turn (100 ops) p99 %.1f max %.1f, its cpu p99 %.1f max %.1f (%zu ops; "
            "compaction %u segments, %.3f s)\n",
            pct(busy.get, busy.ng, 0.5), pct(busy.get, busy.ng, 0.99), pct(busy.put, busy.np, 0.5),
            pct(busy.put, busy.np, 0.99), pct(busy.turn, busy.nt, 0.99),
            pct(busy.turn, busy.nt, 1.0), pct(busy.cpu, busy.nt, 0.99), pct(busy.cpu, busy.nt, 1.0),
            busy.ng, c.st.segments_in, c.st.seconds);
    free(quiet.get);
    free(quiet.put);
    free(quiet.turn);
    free(quiet.cpu);
    free(busy.cpu);
    free(busy.get);
    free(busy.put);
    free(busy.turn);
    close_store(s);
}

/* ---------- hint files ---------- */

typedef struct snap_item {
    char key[32];
    kv_store_meta m;
} snap_item;

static void snapshot_meta(kv_store *s, snap_item *out)
{
    char k[32];
    for (int i = 0; i < NK; i++) {
        key_of(i, k, sizeof(k));
        memcpy(out[i].key, k, sizeof(k));
        memset(&out[i].m, 0, sizeof(out[i].m));
        int rc = store_get_meta(s, k, strlen(k), &out[i].m);
        CHECK(rc == KV_OK || rc == KV_ENOTFOUND, "meta %s", k);
        if (rc == KV_ENOTFOUND)
            out[i].m.vlen = UINT32_MAX;
    }
}

Test(engine, hint_load_equals_full_scan)
{
    kv_store *s = open_store(KV_SYNC_INTERVAL, 8 * 1024);
    int gen_of[NK];
    churn(s, 3, gen_of);
    close_store(s); /* every segment gets a hint, the active one at close */
    cr_assert_gt(count_files(".hint", NULL), 1);

    static snap_item a[NK], b[NK];
    s = open_store(KV_SYNC_INTERVAL, 8 * 1024);
    kv_store_stats sh;
    store_stats(s, &sh);
    cr_expect_eq(sh.scanned_segments, 0u, "with hints nothing should need a scan");
    cr_expect_gt(sh.hint_segments, 1u);
    snapshot_meta(s, a);
    expect_gens(s, gen_of);
    close_store(s);

    remove_files(".hint");
    s = open_store(KV_SYNC_INTERVAL, 8 * 1024);
    kv_store_stats ss;
    store_stats(s, &ss);
    cr_expect_eq(ss.hint_segments, 0u);
    snapshot_meta(s, b);
    cr_expect_eq(ss.keys, sh.keys);
    cr_expect_eq(ss.tombstones, sh.tombstones);
    cr_expect_eq(ss.live_bytes, sh.live_bytes);
    cr_expect_eq(ss.disk_bytes, sh.disk_bytes);
    cr_expect_eq(ss.dead_bytes, sh.dead_bytes);
    cr_expect_eq(ss.entries, sh.entries);
    for (int i = 0; i < NK; i++)
        CHECK(memcmp(&a[i].m, &b[i].m, sizeof(a[i].m)) == 0, "%s differs: hint vs scan", a[i].key);
    close_store(s);
}

static void damage_hint(bool stale)
{
    kv_store *s = open_store(KV_SYNC_NEVER, 8 * 1024);
    int gen_of[NK];
    churn(s, 2, gen_of);
    close_store(s);
    char p[400];
    snprintf(p, sizeof(p), "%s/store/0000000001.hint", g_fx.dir);
    struct stat sb;
    cr_assert_eq(stat(p, &sb), 0, "segment 1 has no hint");
    if (stale) {
        /* The segment grew after the hint was written. */
        char sp[400];
        snprintf(sp, sizeof(sp), "%s/store/0000000001.seg", g_fx.dir);
        int fd = open(sp, O_WRONLY | O_APPEND);
        cr_assert(fd >= 0);
        cr_assert_eq(write(fd, "\0\0\0\0", 4), 4);
        close(fd);
    } else {
        int fd = open(p, O_RDWR);
        cr_assert(fd >= 0);
        uint8_t c;
        off_t at = sb.st_size / 2;
        cr_assert_eq(pread(fd, &c, 1, at), 1);
        c ^= 0x40;
        cr_assert_eq(pwrite(fd, &c, 1, at), 1);
        close(fd);
    }
    s = open_store(KV_SYNC_NEVER, 8 * 1024);
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.bad_hints, 1u);
    cr_expect_geq(st.scanned_segments, 1u);
    cr_expect_eq(st.corrupt_reads, 0u);
    expect_gens(s, gen_of);
    close_store(s);
    /* A fresh hint replaced it. */
    s = open_store(KV_SYNC_NEVER, 8 * 1024);
    store_stats(s, &st);
    cr_expect_eq(st.bad_hints, 0u);
    expect_gens(s, gen_of);
    close_store(s);
}

Test(engine, corrupt_hint_falls_back_to_scanning)
{
    damage_hint(false);
}

Test(engine, stale_hint_falls_back_to_scanning)
{
    damage_hint(true);
}

Test(engine, hint_format_round_trip)
{
    uint8_t buf[STORE_HINT_HDR_LEN + 2 * (STORE_HINT_ENT_LEN + 5) + STORE_HINT_FOOT_LEN];
    store_hint_ent e1 = {
        .type = STORE_REC_PUT, .klen = 5, .off = 32, .vlen = 10, .node = 3, .ts = 77, .expiry = 5};
    store_hint_ent e2 = {.type = STORE_REC_TOMBSTONE, .klen = 5, .off = 87, .node = 4, .ts = 78};
    size_t at = STORE_HINT_HDR_LEN;
    store_hint_ent_encode(buf + at, &e1);
    memcpy(buf + at + STORE_HINT_ENT_LEN, "alpha", 5);
    at += STORE_HINT_ENT_LEN + 5;
    store_hint_ent_encode(buf + at, &e2);
    memcpy(buf + at + STORE_HINT_ENT_LEN, "bravo", 5);
    at += STORE_HINT_ENT_LEN + 5;
    uint32_t crc = store_crc32c(0, buf + STORE_HINT_HDR_LEN, at - STORE_HINT_HDR_LEN);
    store_hint_foot_encode(buf + at, 2, crc);
    store_hint_hdr_encode(buf, &(store_hint_hdr){.seg_id = 1, .seg_size = 200, .count = 2});
    store_hint_hdr h;
    cr_assert_eq(store_hint_check(buf, sizeof(buf), &h), STORE_HINT_OK);
    cr_expect_eq(h.count, 2u);
    size_t pos = 0;
    store_hint_ent d;
    cr_assert(store_hint_next(buf, sizeof(buf), &pos, &d));
    cr_expect_eq(d.off, 32u);
    cr_expect_eq(d.expiry, 5u);
    cr_expect_eq(memcmp(d.key, "alpha", 5), 0);
    cr_assert(store_hint_next(buf, sizeof(buf), &pos, &d));
    cr_expect_eq(d.type, STORE_REC_TOMBSTONE);
    cr_expect_not(store_hint_next(buf, sizeof(buf), &pos, &d));
    /* A record said to run past the segment: refused even with a good CRC. */
    store_hint_hdr_encode(buf, &(store_hint_hdr){.seg_id = 1, .seg_size = 100, .count = 2});
    cr_expect_eq(store_hint_check(buf, sizeof(buf), &h), STORE_HINT_BAD);
    /* Every single flipped byte is caught. */
    store_hint_hdr_encode(buf, &(store_hint_hdr){.seg_id = 1, .seg_size = 200, .count = 2});
    for (size_t i = 0; i < sizeof(buf); i++) {
        buf[i] ^= 0x01;
        CHECK(store_hint_check(buf, sizeof(buf), &h) != STORE_HINT_OK, "flip at %zu accepted", i);
        buf[i] ^= 0x01;
    }
    cr_expect_eq(store_hint_check(buf, sizeof(buf) - 1, &h), STORE_HINT_BAD);
}

/* ---------- LZ4 ---------- */

Test(engine, lz4_round_trip_and_incompressible_stored_raw)
{
    kv_store_opts o = opts_for(KV_SYNC_NEVER, 0);
    o.compression_threshold = 512;
    kv_store *s = open_with(&o);
    static char text[64 * 1024], noise[4096];
    for (size_t i = 0; i < sizeof(text); i++)
        text[i] = "the same words again and again, "[i % 32];
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < sizeof(noise); i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise[i] = (char)x;
    }
    kv_store_stats st0, st;
    store_stats(s, &st0);
    put_exp(s, "text", text, sizeof(text), 0);
    store_stats(s, &st);
    cr_expect_eq(st.compressed_puts, st0.compressed_puts + 1, "compressible value not compressed");
    cr_expect_lt(st.disk_bytes - st0.disk_bytes, sizeof(text) / 4, "did not save space");
    put_exp(s, "noise", noise, sizeof(noise), 0);
    kv_store_stats st2;
    store_stats(s, &st2);
    cr_expect_eq(st2.compressed_puts, st.compressed_puts, "incompressible value compressed");
    cr_expect_geq(st2.disk_bytes - st.disk_bytes, sizeof(noise));
    /* Below the threshold: never compressed. */
    put_exp(s, "small", text, 400, 0);
    kv_store_stats st3;
    store_stats(s, &st3);
    cr_expect_eq(st3.compressed_puts, st2.compressed_puts);

    kv_buf b = KV_BUF_INIT;
    for (int round = 0; round < 2; round++) {
        cr_assert_eq(store_get(s, "text", 4, &b, NULL), KV_OK);
        cr_expect_eq(b.len, sizeof(text));
        cr_expect_eq(memcmp(b.data, text, sizeof(text)), 0, "compressed value differs");
        cr_assert_eq(store_get(s, "noise", 5, &b, NULL), KV_OK);
        cr_expect_eq(b.len, sizeof(noise));
        cr_expect_eq(memcmp(b.data, noise, sizeof(noise)), 0);
        cr_assert_eq(store_get(s, "small", 5, &b, NULL), KV_OK);
        cr_expect_eq(b.len, 400u);
        /* And after a restart and a compaction. */
        close_store(s);
        s = open_with(&o);
        put_str(s, "text-old", "x");
        compact_now(s);
    }
    kv_store_meta m;
    cr_assert_eq(store_get_meta(s, "text", 4, &m), KV_OK);
    cr_expect_lt(m.vlen, sizeof(text), "meta reports the stored (compressed) length");
    kv_buf_free(&b);
    close_store(s);
}

/* ---------- range enumeration ---------- */

typedef struct seen {
    uint8_t count[NK + 50];
    int extra;
    int tombs;
    uint64_t lo, hi;
    bool bad_hash;
} seen;

static bool in_range(uint64_t h, uint64_t lo, uint64_t hi)
{
    if (lo == hi)
        return true;
    return lo < hi ? (h >= lo && h < hi) : (h >= lo || h < hi);
}

static bool seen_fn(void *arg, const kv_store_item *it)
{
    seen *sn = arg;
    if (it->hash != kv_ring_hash(it->key, it->klen) || !in_range(it->hash, sn->lo, sn->hi))
        sn->bad_hash = true;
    int i;
    char k[40];
    size_t n = it->klen < sizeof(k) - 1 ? it->klen : sizeof(k) - 1;
    memcpy(k, it->key, n);
    k[n] = '\0';
    if (sscanf(k, "key-%d", &i) == 1 && i >= 0 && i < NK)
        sn->count[i]++;
    else
        sn->extra++;
    if (it->tombstone)
        sn->tombs++;
    return true;
}

static void enumerate(kv_store *s, uint64_t lo, uint64_t hi, size_t chunk, seen *sn, int *calls)
{
    store_cursor cur = {0};
    sn->lo = lo;
    sn->hi = hi;
    while (!cur.done) {
        cr_assert_eq(store_range(s, lo, hi, &cur, chunk, seen_fn, sn), KV_OK);
        (*calls)++;
        CHECK(*calls < 100000, "enumeration does not end");
    }
}

Test(engine, range_covers_every_key_exactly_once)
{
    kv_store *s = open_store(KV_SYNC_NEVER, 16 * 1024);
    int gen_of[NK];
    churn(s, 2, gen_of);
    /* The whole ring, in small chunks. */
    static seen all;
    memset(&all, 0, sizeof(all));
    int calls = 0;
    enumerate(s, 0, 0, 7, &all, &calls);
    cr_expect_gt(calls, NK / 7, "chunks not bounded");
    cr_expect_not(all.bad_hash);
    int tombs = 0;
    for (int i = 0; i < NK; i++) {
        CHECK(all.count[i] == 1, "key %d reported %d times", i, all.count[i]);
        tombs += gen_of[i] < 0;
    }
    cr_expect_eq(all.extra, 0);
    cr_expect_eq(all.tombs, tombs, "tombstones are enumerated with their flag");

    /* Four ranges that tile the ring, one wrapping around zero. */
    uint64_t cut[4] = {0x3000000000000000ull, 0x7000000000000000ull, 0xA000000000000000ull,
                       0xE000000000000000ull};
    static seen part;
    memset(&part, 0, sizeof(part));
    for (int r = 0; r < 4; r++) {
        calls = 0;
        enumerate(s, cut[r], cut[(r + 1) % 4], 50, &part, &calls);
        cr_expect_not(part.bad_hash, "range %d reported a key outside it", r);
    }
    for (int i = 0; i < NK; i++)
        CHECK(part.count[i] == 1, "key %d reported %d times over the 4 ranges", i, part.count[i]);

    /* Writes between chunks: keys present throughout are still reported exactly once. */
    static seen mixed;
    memset(&mixed, 0, sizeof(mixed));
    store_cursor cur = {0};
    mixed.lo = mixed.hi = 0;
    wcount w = {0};
    int round = 0;
    while (!cur.done) {
        cr_assert_eq(store_range(s, 0, 0, &cur, 13, seen_fn, &mixed), KV_OK);
        char k[32];
        snprintf(k, sizeof(k), "new-%d", round++);
        CHECK(store_put(s, k, strlen(k), "v", 1, 0, count_cb, &w) == KV_OK, "put");
        w.want++;
        key_of((round * 7) % NK, k, sizeof(k));
        CHECK(store_put(s, k, strlen(k), "over", 4, 0, count_cb, &w) == KV_OK, "put");
        w.want++;
        uv_run(&g_fx.loop, UV_RUN_NOWAIT);
    }
    for (int i = 0; i < NK; i++)
        CHECK(mixed.count[i] == 1, "key %d reported %d times with writes between chunks", i,
              mixed.count[i]);
    cr_assert(storefix_run_until(&g_fx, wcount_done, &w, 10000));

    /* Purged tombstones are not reported. */
    char k0[32];
    key_of(0, k0, sizeof(k0)); /* key 0 is deleted by churn */
    kv_store_meta m;
    cr_assert_eq(store_get_meta(s, k0, strlen(k0), &m), KV_OK);
    cr_assert(m.tombstone);
    cr_assert_eq(store_purge(s, k0, strlen(k0), &m.ver), KV_OK);
    static seen after;
    memset(&after, 0, sizeof(after));
    calls = 0;
    enumerate(s, 0, 0, 0, &after, &calls);
    cr_expect_eq(after.count[0], 0, "purged tombstone enumerated");
    close_store(s);
}

/* ---------- failed writes roll back ---------- */

Test(engine, failed_write_restores_the_previous_value)
{
    signal(SIGXFSZ, SIG_IGN);
    kv_store *s = open_store(KV_SYNC_NEVER, 0);
    put_str(s, "k", "committed");
    put_str(s, "other", "x");
    char p[400];
    snprintf(p, sizeof(p), "%s/store/0000000001.seg", g_fx.dir);
    struct stat sb;
    cr_assert_eq(stat(p, &sb), 0);
    struct rlimit old, lim;
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)sb.st_size + 10;
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    wres a = {0}, b = {0}, c = {0};
    cr_assert_eq(store_put(s, "k", 1, "doomed-1", 8, 0, write_cb, &a), KV_OK);
    cr_assert_eq(store_put(s, "k", 1, "doomed-2", 8, 0, write_cb, &b), KV_OK);
    cr_assert_eq(store_put(s, "fresh", 5, "doomed", 6, 0, write_cb, &c), KV_OK);
    expect_val(s, "k", "doomed-2"); /* NEVER: visible from the buffer */
    cr_assert(storefix_run_until(&g_fx, wres_done, &c, 10000));
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    cr_expect_neq(a.status, KV_OK);
    cr_expect_neq(b.status, KV_OK);
    cr_expect_neq(c.status, KV_OK);
    expect_val(s, "k", "committed");
    expect_missing(s, "fresh");
    kv_store_meta m;
    cr_expect_eq(store_get_meta(s, "fresh", 5, &m), KV_ENOTFOUND);
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.keys, 2u);
    cr_expect_eq(st.write_errors, 3u);
    put_str(s, "k", "later");
    close_store(s);
    s = open_store(KV_SYNC_NEVER, 0);
    expect_val(s, "k", "later");
    expect_missing(s, "fresh");
    close_store(s);
}

/* ---------- a real full disk (root: a small tmpfs) ---------- */

static void enospc_with(kv_sync_mode mode)
{
    if (geteuid() != 0) {
        cr_skip_test("ENOSPC test needs root to mount a small tmpfs; skipped (CI runs as root)");
        return;
    }
    char mnt[300];
    snprintf(mnt, sizeof(mnt), "%s/small", g_fx.dir);
    cr_assert_eq(mkdir(mnt, 0755), 0);
    if (mount("kvtest", mnt, "tmpfs", 0, "size=1m") != 0) {
        cr_skip_test("cannot mount a tmpfs here (%s); ENOSPC test skipped", strerror(errno));
        return;
    }
    snprintf(g_mnt, sizeof(g_mnt), "%s", mnt);
    /* A filler file, deleted later to give space back. */
    char filler[400];
    snprintf(filler, sizeof(filler), "%s/filler", mnt);
    int ffd = open(filler, O_WRONLY | O_CREAT, 0644);
    cr_assert(ffd >= 0);
    static char blk[256 * 1024];
    memset(blk, 'f', sizeof(blk));
    cr_assert_eq(write(ffd, blk, sizeof(blk)), (ssize_t)sizeof(blk));
    close(ffd);

    kv_store_opts o = opts_for(mode, 64 * 1024);
    char dir[400];
    snprintf(dir, sizeof(dir), "%s/data", mnt);
    o.dir = dir;
    o.compression_threshold = UINT32_MAX;
    kv_store *s = open_with(&o);
    char val[1000];
    memset(val, 'v', sizeof(val));
    int written = 0, status = KV_OK;
    for (int i = 0; i < 5000 && status == KV_OK; i++) {
        char k[32];
        snprintf(k, sizeof(k), "fill-%05d", i);
        wres r = {0};
        int rc = store_put(s, k, strlen(k), val, sizeof(val), 0, write_cb, &r);
        if (rc == KV_OK)
            rc = wait_write(&r);
        status = rc;
        if (rc == KV_OK)
            written++;
    }
    cr_assert_eq(status, KV_ENOSPC, "writing until the disk is full ended with %s",
                 kv_strerror(status));
    cr_assert_gt(written, 10);
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_geq(st.write_errors, 1u);
    /* Reads keep working. */
    for (int i = 0; i < written; i++) {
        char k[32];
        snprintf(k, sizeof(k), "fill-%05d", i);
        kv_buf b = KV_BUF_INIT;
        CHECK(store_get(s, k, strlen(k), &b, NULL) == KV_OK, "read %s on a full disk", k);
        CHECK(b.len == sizeof(val), "wrong length");
        kv_buf_free(&b);
    }
    /* Still full: refused again, nothing half-written. */
    wres r = {0};
    int rc = store_put(s, "more", 4, val, sizeof(val), 0, write_cb, &r);
    if (rc == KV_OK)
        rc = wait_write(&r);
    cr_expect_eq(rc, KV_ENOSPC);
    expect_missing(s, "more");
    /* Space comes back: writes resume. */
    cr_assert_eq(unlink(filler), 0);
    put_exp(s, "more", val, sizeof(val), 0);
    put_str(s, "after", "space is back");
    close_store(s);
    s = open_with(&o);
    expect_val(s, "after", "space is back");
    store_stats(s, &st);
    cr_expect_eq(st.keys, (uint64_t)written + 2);
    cr_expect_eq(st.corrupt_records, 0u, "a failed write left damage behind");
    close_store(s);
    cr_expect_eq(umount(mnt), 0, "umount: %s", strerror(errno));
    g_mnt[0] = '\0';
}

Test(engine, enospc_on_a_full_tmpfs_never)
{
    enospc_with(KV_SYNC_NEVER);
}

Test(engine, enospc_on_a_full_tmpfs_always)
{
    enospc_with(KV_SYNC_ALWAYS);
}
