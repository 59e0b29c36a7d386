/*
 * test_listing.c — unit tests of key listing (src/repl/listing.c): the query parser, the
 * node-local scan over a real store, the merge of several members' answers into a page,
 * the JSON page, and a client-style pagination loop over three members holding
 * overlapping subsets (each a real store answering through kv_list_scan) that must see
 * every live key exactly once, in order, whatever the page size.
 *
 * Stores live in mkdtemp directories on a private libuv loop; every wait has a deadline.
 * Each criterion test runs in its own process.
 */
#include "common/buf.h"
#include "common/hash.h"
#include "common/hex.h"
#include "common/hlc.h"
#include "kvstore/error.h"
#include "repl/listing.h"
#include "store/store.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

/* ---------- helpers ---------- */

static int parse(const char *q, kv_list_params *p, kv_buf *err)
{
    return kv_list_parse_query(q, strlen(q), p, err);
}

/* (hash, key) order, as the API promises. */
static int order(uint64_t ha, const void *ka, size_t la, uint64_t hb, const void *kb, size_t lb)
{
    if (ha != hb)
        return ha < hb ? -1 : 1;
    size_t n = la < lb ? la : lb;
    int c = memcmp(ka, kb, n);
    if (c)
        return c < 0 ? -1 : 1;
    return la < lb ? -1 : la > lb;
}

static kv_repl_item item(const char *key, uint64_t ts, uint32_t node, uint32_t flags)
{
    return (kv_repl_item){.key = (const uint8_t *)key,
                          .klen = strlen(key),
                          .hash = kv_ring_hash(key, strlen(key)),
                          .ver = {ts, node},
                          .flags = flags};
}

static int item_cmp(const void *a, const void *b)
{
    const kv_repl_item *x = a, *y = b;
    return order(x->hash, x->key, x->klen, y->hash, y->key, y->klen);
}

/* Sort items and keep the first `limit` after the cursor that match the prefix: what a
 * correct member answers. Returns the count; *trunc as the member would say. */
static uint32_t member_answer(const kv_repl_item *all, uint32_t n, const kv_list_params *p,
                              kv_repl_item *out, bool *trunc)
{
    kv_repl_item *s = malloc(n * sizeof(*s) + 1);
    memcpy(s, all, n * sizeof(*s));
    qsort(s, n, sizeof(*s), item_cmp);
    uint32_t k = 0;
    *trunc = false;
    for (uint32_t i = 0; i < n; i++) {
        if (s[i].klen < p->plen || memcmp(s[i].key, p->prefix, p->plen) != 0)
            continue;
        if (p->has_cursor && order(s[i].hash, s[i].key, s[i].klen, p->cursor_hash, p->cursor_key,
                                   p->cursor_klen) <= 0)
            continue;
        if (k == p->limit) {
            *trunc = true;
            break;
        }
        out[k++] = s[i];
    }
    free(s);
    return k;
}

/* Percent-decode a key from the page (the test's own decoder). */
static size_t pct_dec(const char *s, size_t n, uint8_t *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            cr_assert(i + 2 < n, "truncated escape");
            int h = kv_hexval(s[i + 1]), l = kv_hexval(s[i + 2]);
            cr_assert(h >= 0 && l >= 0, "bad escape");
            out[o++] = (uint8_t)(h * 16 + l);
            i += 2;
        } else {
            out[o++] = (uint8_t)s[i];
        }
    }
    return o;
}

typedef struct page_key {
    uint8_t key[KV_REPL_KEY_MAX];
    size_t klen;
    char version[48];
} page_key;

/* Read a rendered page: keys into keys[] (at most cap), the cursor into cursor ("" for
 * null). Asserts the exact shape the header documents. */
static size_t read_page(const char *json, page_key *keys, size_t cap, char *cursor, size_t ccap)
{
    cr_assert(strncmp(json, "{\"keys\":[", 9) == 0, "page starts wrong: %s", json);
    const char *p = json + 9;
    size_t n = 0;
    while (*p == '{') {
        cr_assert(strncmp(p, "{\"key\":\"", 8) == 0, "bad key object at %s", p);
        p += 8;
        const char *q = strchr(p, '"');
        cr_assert_not_null(q);
        cr_assert(n < cap, "too many keys");
        keys[n].klen = pct_dec(p, (size_t)(q - p), keys[n].key);
        p = q;
        cr_assert(strncmp(p, "\",\"version\":\"", 13) == 0, "bad version at %s", p);
        p += 13;
        q = strchr(p, '"');
        cr_assert(q && (size_t)(q - p) < sizeof(keys[n].version));
        memcpy(keys[n].version, p, (size_t)(q - p));
        keys[n].version[q - p] = '\0';
        p = q + 1;
        cr_assert(*p == '}', "bad key object end at %s", p);
        p++;
        n++;
        if (*p == ',')
            p++;
    }
    cr_assert(strncmp(p, "],\"next_cursor\":", 16) == 0, "bad page tail: %s", p);
    p += 16;
    if (strcmp(p, "null}") == 0) {
        cursor[0] = '\0';
    } else {
        cr_assert(*p == '"', "cursor not a string: %s", p);
        const char *q = strchr(p + 1, '"');
        cr_assert(q && strcmp(q, "\"}") == 0, "bad page end: %s", p);
        cr_assert((size_t)(q - p - 1) < ccap);
        memcpy(cursor, p + 1, (size_t)(q - p - 1));
        cursor[q - p - 1] = '\0';
        cr_assert(cursor[0], "empty cursor");
        for (const char *c = cursor; *c; c++)
            cr_assert(kv_hexval(*c) >= 0 || *c == '-', "cursor is not URL-safe: %s", cursor);
    }
    return n;
}

/* Merge answers from `members` (each the full item list of one member) for params p and
 * render the page. */
static void merge_page(const kv_list_params *p, kv_repl_item *const *members, const uint32_t *ns,
                       int nm, kv_buf *out)
{
    kv_list_merge *m = kv_list_merge_new(p);
    cr_assert_not_null(m);
    kv_repl_item *ans = malloc(sizeof(*ans) * (p->limit + 1));
    for (int i = 0; i < nm; i++) {
        bool trunc;
        uint32_t k = member_answer(members[i], ns[i], p, ans, &trunc);
        cr_assert_eq(kv_list_merge_add(m, ans, k, trunc), KV_OK);
    }
    free(ans);
    cr_assert_eq(kv_list_merge_render(m, out), KV_OK);
    kv_list_merge_free(m);
}

/* ---------- query parsing ---------- */

Test(list_query, defaults)
{
    kv_list_params p;
    kv_buf err = KV_BUF_INIT;
    cr_assert_eq(parse("", &p, &err), KV_OK);
    cr_expect_eq(p.plen, 0);
    cr_expect_eq(p.limit, KV_LIST_DEFAULT_LIMIT);
    cr_expect_not(p.has_cursor);
    /* other routes' parameters are not ours; an empty cursor is the first page */
    cr_assert_eq(parse("r=2&consistency=all&cursor=&w", &p, &err), KV_OK);
    cr_expect_eq(p.limit, KV_LIST_DEFAULT_LIMIT);
    cr_expect_not(p.has_cursor);
    kv_buf_free(&err);
}

Test(list_query, prefix_is_percent_decoded)
{
    kv_list_params p;
    kv_buf err = KV_BUF_INIT;
    cr_assert_eq(parse("prefix=users%2F%00a+b%e2%82%ac&limit=1", &p, &err), KV_OK);
    cr_assert_eq(p.plen, 13);
    cr_expect_eq(memcmp(p.prefix, "users/\0a+b\xe2\x82\xac", 13), 0);
    cr_expect_eq(p.limit, 1);
    cr_assert_eq(parse("limit=1000&prefix=", &p, &err), KV_OK);
    cr_expect_eq(p.limit, 1000);
    cr_expect_eq(p.plen, 0);
    kv_buf_free(&err);
}

static void expect_bad(const char *q, const char *param)
{
    kv_list_params p;
    memset(&p, 0x5a, sizeof(p));
    kv_buf err = KV_BUF_INIT;
    cr_expect_eq(parse(q, &p, &err), KV_EINVAL, "'%s' accepted", q);
    cr_expect(err.len > 0 && strncmp(err.data, param, strlen(param)) == 0,
              "'%s': error '%s' does not name %s", q, err.data ? err.data : "", param);
    cr_expect_eq(p.limit, 0x5a5a5a5au, "out written on failure");
    kv_buf_free(&err);
}

Test(list_query, bad_values_name_the_parameter)
{
    expect_bad("limit=0", "limit");
    expect_bad("limit=1001", "limit");
    expect_bad("limit=abc", "limit");
    expect_bad("limit=", "limit");
    expect_bad("limit=-5", "limit");
    expect_bad("limit=99999999999999999999", "limit");
    expect_bad("limit=5&limit=6", "limit");
    expect_bad("prefix=%", "prefix");
    expect_bad("prefix=ab%4", "prefix");
    expect_bad("prefix=%zz", "prefix");
    expect_bad("prefix=a&prefix=b", "prefix");
    expect_bad("cursor=xyz", "cursor");
    expect_bad("cursor=0123456789abcdef", "cursor");    /* no key */
    expect_bad("cursor=0123456789abcdef-", "cursor");   /* empty key */
    expect_bad("cursor=0123456789abcdef-6", "cursor");  /* odd hex */
    expect_bad("cursor=0123456789abcdeg-61", "cursor"); /* not hex */
    expect_bad("cursor=0123456789abcde-61", "cursor");  /* 15 digits */
    expect_bad("cursor=0123456789abcdef_61", "cursor"); /* separator */
    expect_bad("cursor=0123456789abcdef-61&cursor=", "cursor");
    char *big = malloc(4000);
    strcpy(big, "prefix=");
    memset(big + 7, 'a', 1025);
    big[7 + 1025] = '\0';
    expect_bad(big, "prefix");
    strcpy(big, "cursor=0123456789abcdef-");
    memset(big + 24, 'a', 2 * 1025);
    big[24 + 2 * 1025] = '\0';
    expect_bad(big, "cursor");
    free(big);
}

Test(list_query, cursor_round_trips_through_a_page)
{
    /* A page's next_cursor, pasted back, names the same (hash, key). */
    kv_list_params p;
    kv_buf err = KV_BUF_INIT, page = KV_BUF_INIT;
    cr_assert_eq(parse("limit=1", &p, &err), KV_OK);
    const char *key = "k\x01/\xff";
    kv_repl_item its[2] = {item(key, 10, 1, 0), item("other", 10, 1, 0)};
    kv_list_merge *m = kv_list_merge_new(&p);
    cr_assert_eq(kv_list_merge_add(m, its, 2, false), KV_OK);
    cr_assert_eq(kv_list_merge_render(m, &page), KV_OK);
    kv_list_merge_free(m);
    page_key pk[2];
    char cur[4200];
    cr_assert_eq(read_page(page.data, pk, 2, cur, sizeof(cur)), 1);
    cr_assert(cur[0], "one of two keys shown: a cursor is due");
    char q[4300];
    snprintf(q, sizeof(q), "cursor=%s", cur);
    cr_assert_eq(parse(q, &p, &err), KV_OK, "%s", err.data);
    cr_assert(p.has_cursor);
    cr_expect_eq(p.cursor_hash, kv_ring_hash(pk[0].key, pk[0].klen));
    cr_expect_eq(p.cursor_klen, pk[0].klen);
    cr_expect_eq(memcmp(p.cursor_key, pk[0].key, pk[0].klen), 0);
    /* upper-case hex is the same cursor */
    for (char *c = q; *c; c++)
        if (*c >= 'a' && *c <= 'f' && c > q + 6)
            *c = (char)(*c - 'a' + 'A');
    kv_list_params p2;
    cr_assert_eq(parse(q, &p2, &err), KV_OK, "%s", err.data);
    cr_expect_eq(p2.cursor_hash, p.cursor_hash);
    kv_buf_free(&err);
    kv_buf_free(&page);
}

/* ---------- the scan over a real store ---------- */

static char g_dir[4][256];
static uv_loop_t g_loop;
static uv_timer_t g_tick;

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

static void setup(void)
{
    const char *tmp = getenv("TMPDIR");
    for (int i = 0; i < 4; i++) {
        snprintf(g_dir[i], sizeof(g_dir[i]), "%s/kvstore-test-listing-XXXXXX",
                 tmp && *tmp ? tmp : "/tmp");
        cr_assert_not_null(mkdtemp(g_dir[i]), "mkdtemp: %s", strerror(errno));
    }
    cr_assert_eq(uv_loop_init(&g_loop), 0);
    uv_timer_init(&g_loop, &g_tick);
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void teardown(void)
{
    uv_close((uv_handle_t *)&g_tick, NULL);
    uv_run(&g_loop, UV_RUN_DEFAULT);
    cr_expect_eq(uv_loop_close(&g_loop), 0, "loop still has handles");
    for (int i = 0; i < 4; i++)
        nftw(g_dir[i], rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static bool run_until(bool *flag, int timeout_ms)
{
    uint64_t deadline = uv_hrtime() + (uint64_t)timeout_ms * 1000000u;
    uv_timer_start(&g_tick, tick_cb, 5, 5);
    while (!*flag && uv_hrtime() < deadline)
        uv_run(&g_loop, UV_RUN_ONCE);
    uv_timer_stop(&g_tick);
    return *flag;
}

static kv_store *open_store(int i)
{
    kv_store_opts o = {
        .dir = g_dir[i],
        .sync = KV_SYNC_NEVER,
        .segment_bytes = 1 << 20,
        .max_key = 1024,
        .max_value = 1 << 20,
        .node_id = (uint32_t)(i + 1),
        .compaction_dead_ratio = 2.0,
    };
    kv_store *s = NULL;
    int rc = store_open(&s, &g_loop, &o);
    cr_assert_eq(rc, KV_OK, "store_open: %s", kv_strerror(rc));
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
    cr_assert(run_until(&closed, 20000), "store_close did not complete");
}

typedef struct wres {
    bool done;
    int status;
} wres;

static void write_cb(void *arg, int status, const kv_version *ver)
{
    (void)ver;
    wres *r = arg;
    r->done = true;
    r->status = status;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* A version from "now" plus n logical steps, so that tests choose the order. */
static kv_version ver_at(uint64_t n, uint32_t node)
{
    static uint64_t base;
    if (!base)
        base = wall_ms() << KV_HLC_LOGICAL_BITS;
    return (kv_version){base + n, node};
}

/* Write key at version v: a value, a tombstone, or (expired) a value whose TTL passed. */
static void apply(kv_store *s, const void *key, size_t klen, kv_version v, bool tomb, bool expired)
{
    wres r = {0};
    uint64_t expiry = expired ? 1000 : 0; /* 1970: long gone */
    int rc = store_apply(s, key, klen, "v", 1, expiry, &v, tomb, write_cb, &r);
    cr_assert_eq(rc, KV_OK, "store_apply: %s", kv_strerror(rc));
    cr_assert(run_until(&r.done, 10000), "write callback never came");
    cr_assert_eq(r.status, KV_OK, "apply completed with %s", kv_strerror(r.status));
}

static void apply_s(kv_store *s, const char *key, kv_version v, bool tomb, bool expired)
{
    apply(s, key, strlen(key), v, tomb, expired);
}

/* Run a LIST against store s; returns the scan (caller frees) after it is done. */
static kv_list_scan *run_scan(kv_store *s, const kv_list_params *p)
{
    kv_repl_msg m = {.type = KV_REPL_LIST,
                     .key = p->prefix,
                     .klen = p->plen,
                     .limit = p->limit,
                     .has_cursor = p->has_cursor,
                     .cursor_hash = p->cursor_hash,
                     .cursor_key = p->cursor_key,
                     .cursor_klen = p->cursor_klen};
    kv_list_scan *sc = kv_list_scan_new(&m);
    cr_assert_not_null(sc);
    bool done = false;
    for (int i = 0; i < 100000 && !done; i++)
        cr_assert_eq(kv_list_scan_step(sc, s, &done), KV_OK);
    cr_assert(done, "scan never finished");
    return sc;
}

TestSuite(list_scan, .init = setup, .fini = teardown, .timeout = 60);

Test(list_scan, keeps_the_smallest_matches_after_the_cursor)
{
    kv_store *s = open_store(0);
    /* 200 "user/" keys (some deleted, some expired), 50 others */
    for (int i = 0; i < 200; i++) {
        char k[32];
        snprintf(k, sizeof(k), "user/%03d", i);
        apply_s(s, k, ver_at((uint64_t)i + 1, 9), i % 10 == 3, i % 10 == 5);
    }
    for (int i = 0; i < 50; i++) {
        char k[32];
        snprintf(k, sizeof(k), "other/%d", i);
        apply_s(s, k, ver_at(1, 9), false, false);
    }
    kv_list_params p;
    kv_buf err = KV_BUF_INIT;
    cr_assert_eq(parse("prefix=user%2F&limit=17", &p, &err), KV_OK);

    /* Walk the whole prefix page by page with the scan alone: the union is all 200
     * "user/" keys, tombstones and expired values included, in order, once each. */
    size_t seen = 0, tombs = 0, expired = 0;
    uint64_t last_h = 0;
    uint8_t last_k[64];
    size_t last_kl = 0;
    for (int page = 0; page < 100; page++) {
        kv_list_scan *sc = run_scan(s, &p);
        const kv_repl_item *its;
        uint32_t n;
        bool trunc;
        kv_list_scan_result(sc, &its, &n, &trunc);
        cr_assert_leq(n, 17);
        for (uint32_t i = 0; i < n; i++) {
            cr_assert_eq(its[i].klen, 8);
            cr_assert_eq(memcmp(its[i].key, "user/", 5), 0);
            cr_assert_eq(its[i].hash, kv_ring_hash(its[i].key, its[i].klen));
            if (seen > 0)
                cr_assert_gt(order(its[i].hash, its[i].key, its[i].klen, last_h, last_k, last_kl),
                             0, "out of order or repeated");
            char digits[4] = {0};
            memcpy(digits, its[i].key + 5, 3); /* keys are not NUL-terminated */
            int num = atoi(digits);
            cr_expect_eq(its[i].ver.ts, ver_at((uint64_t)num + 1, 9).ts, "%d", num);
            cr_expect_eq(its[i].ver.node, 9);
            if (num % 10 == 3) {
                cr_expect_eq(its[i].flags, KV_REPL_F_TOMBSTONE, "%d", num);
                tombs++;
            } else if (num % 10 == 5) {
                cr_expect_eq(its[i].flags, KV_REPL_F_EXPIRED, "%d", num);
                expired++;
            } else {
                cr_expect_eq(its[i].flags, 0u);
            }
            last_h = its[i].hash;
            memcpy(last_k, its[i].key, its[i].klen);
            last_kl = its[i].klen;
            seen++;
        }
        /* truncated exactly when matches remain: 200 = 11 * 17 + 13 */
        cr_expect_eq(trunc, seen < 200, "page %d: truncated=%d after %zu", page, trunc, seen);
        if (!trunc) {
            cr_expect_eq(n, 13);
            kv_list_scan_free(sc);
            break;
        }
        cr_expect_eq(n, 17);
        p.has_cursor = true;
        p.cursor_hash = last_h;
        memcpy(p.cursor_key, last_k, last_kl);
        p.cursor_klen = last_kl;
        kv_list_scan_free(sc);
    }
    cr_expect_eq(seen, 200);
    cr_expect_eq(tombs, 20);
    cr_expect_eq(expired, 20);

    /* exactly `limit` matches: not truncated */
    cr_assert_eq(parse("prefix=other%2F&limit=50", &p, &err), KV_OK);
    kv_list_scan *sc = run_scan(s, &p);
    const kv_repl_item *its;
    uint32_t n;
    bool trunc;
    kv_list_scan_result(sc, &its, &n, &trunc);
    cr_expect_eq(n, 50);
    cr_expect_not(trunc);
    kv_list_scan_free(sc);
    /* a prefix nothing has */
    cr_assert_eq(parse("prefix=nothing", &p, &err), KV_OK);
    sc = run_scan(s, &p);
    kv_list_scan_result(sc, &its, &n, &trunc);
    cr_expect_eq(n, 0);
    cr_expect_not(trunc);
    kv_list_scan_free(sc);
    kv_buf_free(&err);
    close_store(s);
}

Test(list_scan, keys_are_copied_and_bytes_compared_exactly)
{
    kv_store *s = open_store(0);
    /* keys that differ only after a NUL, and one that is a prefix of another */
    apply(s, "a\0b", 3, ver_at(1, 1), false, false);
    apply(s, "a\0c", 3, ver_at(1, 1), false, false);
    apply(s, "a", 1, ver_at(1, 1), false, false);
    apply(s, "b", 1, ver_at(1, 1), false, false);
    kv_list_params p;
    cr_assert_eq(parse("prefix=a%00", &p, NULL), KV_OK);
    kv_list_scan *sc = run_scan(s, &p);
    /* the store changes after the scan: the result must not */
    apply(s, "a\0b", 3, ver_at(2, 1), true, false);
    const kv_repl_item *its;
    uint32_t n;
    bool trunc;
    kv_list_scan_result(sc, &its, &n, &trunc);
    cr_assert_eq(n, 2);
    for (uint32_t i = 0; i < n; i++) {
        cr_expect_eq(its[i].klen, 3);
        cr_expect_eq(its[i].flags, 0u);
        cr_expect(memcmp(its[i].key, "a\0b", 3) == 0 || memcmp(its[i].key, "a\0c", 3) == 0);
    }
    kv_list_scan_free(sc);
    close_store(s);
}

/* ---------- the merge ---------- */

Test(list_merge, newest_version_wins_and_deleted_keys_are_hidden)
{
    kv_list_params p;
    cr_assert_eq(parse("", &p, NULL), KV_OK);
    /* a: newer value on B; b: deleted on C after A's value; c: expired newest;
     * d: only on A; e: older tombstone on A, newer value on B */
    kv_repl_item A[] = {item("a", 1, 1, 0), item("b", 1, 1, 0), item("c", 1, 1, 0),
                        item("d", 5, 1, 0), item("e", 1, 1, KV_REPL_F_TOMBSTONE)};
    kv_repl_item B[] = {item("a", 7, 2, 0), item("c", 2, 2, KV_REPL_F_EXPIRED), item("e", 3, 2, 0)};
    kv_repl_item C[] = {item("b", 2, 3, KV_REPL_F_TOMBSTONE), item("a", 7, 1, 0)};
    kv_repl_item *members[] = {A, B, C};
    uint32_t ns[] = {5, 3, 2};
    kv_buf page = KV_BUF_INIT;
    merge_page(&p, members, ns, 3, &page);
    page_key pk[8];
    char cur[64];
    size_t n = read_page(page.data, pk, 8, cur, sizeof(cur));
    cr_assert_eq(n, 3, "%s", page.data);
    cr_expect_str_empty(cur, "nothing truncated: the listing is complete");
    /* the three live keys in (hash, key) order with their newest versions */
    const char *want[] = {"a", "d", "e"};
    const char *wver[] = {"7.2", "5.1", "3.2"};
    int idx[3] = {0, 1, 2};
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++)
            if (kv_ring_hash(want[idx[j]], 1) < kv_ring_hash(want[idx[i]], 1)) {
                int t = idx[i];
                idx[i] = idx[j];
                idx[j] = t;
            }
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(pk[i].klen, 1);
        cr_expect_eq(pk[i].key[0], want[idx[i]][0], "%s", page.data);
        cr_expect_str_eq(pk[i].version, wver[idx[i]]);
    }
    kv_buf_free(&page);
}

Test(list_merge, keys_beyond_a_truncated_answer_are_not_returned)
{
    /* 40 keys; member A holds all of them, member B only the even ones and stops at its
     * limit. The page may only show keys up to B's last: beyond it B might hold a newer
     * tombstone it did not send. */
    char names[40][8];
    kv_repl_item all[40], even[20];
    for (int i = 0; i < 40; i++) {
        snprintf(names[i], sizeof(names[i]), "k%02d", i);
        all[i] = item(names[i], 1, 1, 0);
    }
    qsort(all, 40, sizeof(all[0]), item_cmp);
    int ne = 0;
    for (int i = 0; i < 40; i += 2)
        even[ne++] = all[i];
    kv_list_params p;
    cr_assert_eq(parse("limit=5", &p, NULL), KV_OK);
    kv_list_merge *m = kv_list_merge_new(&p);
    /* A's answer: its first 5 (truncated); B's: its first 5 (truncated) — B's last is
     * all[8], A's last all[4]: the bound is all[4] */
    cr_assert_eq(kv_list_merge_add(m, all, 5, true), KV_OK);
    cr_assert_eq(kv_list_merge_add(m, even, 5, true), KV_OK);
    kv_buf page = KV_BUF_INIT;
    cr_assert_eq(kv_list_merge_render(m, &page), KV_OK);
    kv_list_merge_free(m);
    page_key pk[8];
    char cur[64], want[64];
    cr_assert_eq(read_page(page.data, pk, 8, cur, sizeof(cur)), 5, "%s", page.data);
    for (int i = 0; i < 5; i++)
        cr_expect_eq(memcmp(pk[i].key, all[i].key, 3), 0, "%s", page.data);
    snprintf(want, sizeof(want), "%016" PRIx64 "-%02x%02x%02x", all[4].hash, all[4].key[0],
             all[4].key[1], all[4].key[2]);
    cr_expect_str_eq(cur, want);

    /* B's answer: its first five keys, all deleted, and it stopped at its limit; A's
     * complete answer: five live keys after those. B may hold newer tombstones for A's
     * keys, so the page shows nothing and continues from B's last. */
    kv_repl_item tombs[5], live[5];
    for (int i = 0; i < 5; i++) {
        tombs[i] = all[i];
        tombs[i].flags = KV_REPL_F_TOMBSTONE;
        live[i] = all[5 + i];
    }
    m = kv_list_merge_new(&p);
    cr_assert_eq(kv_list_merge_add(m, live, 5, false), KV_OK);
    cr_assert_eq(kv_list_merge_add(m, tombs, 5, true), KV_OK);
    cr_assert_eq(kv_list_merge_render(m, &page), KV_OK);
    kv_list_merge_free(m);
    cr_assert_eq(read_page(page.data, pk, 8, cur, sizeof(cur)), 0, "%s", page.data);
    cr_expect_str_eq(cur, want, "the cursor is B's last key");
    cr_expect_str_not_empty(cur);
    kv_buf_free(&page);
}

Test(list_merge, a_page_of_tombstones_is_empty_but_moves_on)
{
    /* limit 3; the first 6 keys are deleted everywhere, two live keys follow. */
    char names[8][8];
    kv_repl_item its[8];
    for (int i = 0; i < 8; i++) {
        snprintf(names[i], sizeof(names[i]), "t%d", i);
        its[i] = item(names[i], 1, 1, 0);
    }
    qsort(its, 8, sizeof(its[0]), item_cmp);
    for (int i = 0; i < 6; i++)
        its[i].flags = KV_REPL_F_TOMBSTONE;
    kv_repl_item *members[] = {its, its};
    uint32_t ns[] = {8, 8};
    kv_list_params p;
    kv_buf err = KV_BUF_INIT, page = KV_BUF_INIT;
    cr_assert_eq(parse("limit=3", &p, &err), KV_OK);
    size_t total = 0;
    int pages = 0;
    for (; pages < 10; pages++) {
        merge_page(&p, members, ns, 2, &page);
        page_key pk[4];
        char cur[64];
        size_t n = read_page(page.data, pk, 4, cur, sizeof(cur));
        if (pages == 0)
            cr_expect_eq(n, 0, "first page shows only deleted keys: %s", page.data);
        total += n;
        if (!cur[0])
            break;
        char q[96];
        snprintf(q, sizeof(q), "limit=3&cursor=%s", cur);
        cr_assert_eq(parse(q, &p, &err), KV_OK);
    }
    cr_expect_eq(total, 2);
    cr_expect_eq(pages, 2, "3 pages: tombstones, tombstones, the two live keys");
    kv_buf_free(&err);
    kv_buf_free(&page);
}

Test(list_merge, confused_answers_are_refused_or_filtered)
{
    kv_list_params p;
    cr_assert_eq(parse("prefix=x&limit=2", &p, NULL), KV_OK);
    kv_list_merge *m = kv_list_merge_new(&p);
    /* truncated with nothing usable: no bound to vouch up to */
    cr_expect_eq(kv_list_merge_add(m, NULL, 0, true), KV_EPROTO);
    kv_repl_item bad[] = {item("y1", 1, 1, 0)};
    cr_expect_eq(kv_list_merge_add(m, bad, 1, true), KV_EPROTO);
    /* keys outside the prefix (or a wrong hash ordering) are ignored, the rest counts */
    kv_repl_item mixed[] = {item("y2", 1, 1, 0), item("x1", 1, 1, 0)};
    cr_expect_eq(kv_list_merge_add(m, mixed, 2, false), KV_OK);
    kv_buf page = KV_BUF_INIT;
    cr_assert_eq(kv_list_merge_render(m, &page), KV_OK);
    cr_expect_str_eq(page.data, "{\"keys\":[{\"key\":\"x1\",\"version\":\"1.1\"}],"
                                "\"next_cursor\":null}");
    /* rendering twice gives the same page */
    cr_assert_eq(kv_list_merge_render(m, &page), KV_OK);
    cr_expect_str_eq(page.data, "{\"keys\":[{\"key\":\"x1\",\"version\":\"1.1\"}],"
                                "\"next_cursor\":null}");
    kv_list_merge_free(m);
    /* no answers at all: an empty, complete page */
    m = kv_list_merge_new(&p);
    cr_assert_eq(kv_list_merge_render(m, &page), KV_OK);
    cr_expect_str_eq(page.data, "{\"keys\":[],\"next_cursor\":null}");
    kv_list_merge_free(m);
    kv_buf_free(&page);
}

Test(list_merge, render_escapes_keys_like_a_path_segment)
{
    kv_list_params p;
    cr_assert_eq(parse("", &p, NULL), KV_OK);
    const char key[] = "a b/\"%\\?#\x01\xff\xe2\x82\xac:@!$&'()*+,;=-._~Z9";
    kv_repl_item it = {.key = (const uint8_t *)key,
                       .klen = sizeof(key) - 1,
                       .hash = kv_ring_hash(key, sizeof(key) - 1),
                       .ver = {1732700000123ull, 42}};
    kv_list_merge *m = kv_list_merge_new(&p);
    cr_assert_eq(kv_list_merge_add(m, &it, 1, false), KV_OK);
    kv_buf page = KV_BUF_INIT;
    cr_assert_eq(kv_list_merge_render(m, &page), KV_OK);
    cr_expect_str_eq(page.data, "{\"keys\":[{\"key\":\"a%20b%2F%22%25%5C%3F%23%01%FF%E2%82%AC"
                                ":@!$&'()*+,;=-._~Z9\",\"version\":\"1732700000123.42\"}],"
                                "\"next_cursor\":null}");
    kv_list_merge_free(m);
    kv_buf_free(&page);
}

/* ---------- pagination over three members ---------- */

#define NKEYS 240

typedef struct truth {
    uint8_t key[16];
    size_t klen;
    uint64_t hash;
    bool live;
    kv_version newest;
    int seen;
} truth;

static bool has_prefix(const truth *t, const uint8_t *prefix, size_t plen)
{
    return plen == 0 || (t->klen >= plen && memcmp(t->key, prefix, plen) == 0);
}

static int truth_cmp(const void *a, const void *b)
{
    const truth *x = a, *y = b;
    return order(x->hash, x->key, x->klen, y->hash, y->key, y->klen);
}

/*
 * Three stores with overlapping subsets of NKEYS keys (as replicas of a real cluster
 * hold): every key on two or three of them, versions differing between members, some
 * keys deleted (the tombstone only on some members, next to older values elsewhere),
 * some expired. Returns the truth, sorted in (hash, key) order.
 */
static truth *build_members(kv_store **st)
{
    truth *t = calloc(NKEYS, sizeof(*t));
    for (int i = 0; i < NKEYS; i++) {
        /* binary keys too: a NUL and a high byte in some */
        t[i].klen = (size_t)snprintf((char *)t[i].key, sizeof(t[i].key), "%s%03d",
                                     i % 3 == 0 ? "p/" : "q/", i);
        if (i % 7 == 0)
            t[i].key[1] = 0;
        if (i % 11 == 0)
            t[i].key[0] = 0xfe;
        t[i].hash = kv_ring_hash(t[i].key, t[i].klen);
        int skip = i % 4; /* member not holding the key (3: all hold it) */
        int kind = i % 5; /* 0: deleted newest, 1: expired newest, else a live value */
        int newest_on = (i / 4) % 3;
        if (newest_on == skip)
            newest_on = (newest_on + 1) % 3;
        for (int m = 0; m < 3; m++) {
            if (m == skip)
                continue;
            kv_version v = ver_at((uint64_t)(m == newest_on ? 100 : 10 + m), (uint32_t)(m + 1));
            bool newest = m == newest_on;
            apply(st[m], t[i].key, t[i].klen, v, newest && kind == 0, newest && kind == 1);
            if (newest)
                t[i].newest = v;
        }
        t[i].live = kind >= 2;
    }
    qsort(t, NKEYS, sizeof(*t), truth_cmp);
    return t;
}

/* One client-style listing: pages of `limit` with prefix, following next_cursor through
 * the query string, each page merged from the three members' LIST answers. */
static void list_all(kv_store **st, truth *t, const char *prefix_q, const uint8_t *prefix,
                     size_t plen, uint32_t limit)
{
    for (int i = 0; i < NKEYS; i++)
        t[i].seen = 0;
    char q[4400];
    snprintf(q, sizeof(q), "prefix=%s&limit=%u", prefix_q, limit);
    kv_buf err = KV_BUF_INIT, page = KV_BUF_INIT;
    page_key *pk = malloc(sizeof(*pk) * (limit + 1));
    size_t ti = 0; /* position in the truth: keys must come in order */
    int pages = 0;
    for (;; pages++) {
        cr_assert_lt(pages, 2 * NKEYS + 2, "listing with limit %u does not end", limit);
        kv_list_params p;
        cr_assert_eq(parse(q, &p, &err), KV_OK, "%s: %s", q, err.data);
        kv_list_merge *m = kv_list_merge_new(&p);
        for (int s = 0; s < 3; s++) {
            kv_list_scan *sc = run_scan(st[s], &p);
            const kv_repl_item *its;
            uint32_t n;
            bool trunc;
            kv_list_scan_result(sc, &its, &n, &trunc);
            cr_assert_eq(kv_list_merge_add(m, its, n, trunc), KV_OK);
            kv_list_scan_free(sc);
        }
        cr_assert_eq(kv_list_merge_render(m, &page), KV_OK);
        kv_list_merge_free(m);
        char cur[2100];
        size_t n = read_page(page.data, pk, limit + 1, cur, sizeof(cur));
        cr_assert_leq(n, limit);
        for (size_t k = 0; k < n; k++) {
            uint64_t h = kv_ring_hash(pk[k].key, pk[k].klen);
            /* advance through the truth to this key; everything passed must be hidden
             * or outside the prefix */
            while (ti < NKEYS &&
                   order(t[ti].hash, t[ti].key, t[ti].klen, h, pk[k].key, pk[k].klen) < 0) {
                bool match = has_prefix(&t[ti], prefix, plen);
                cr_assert(!(match && t[ti].live), "limit %u: live key skipped", limit);
                ti++;
            }
            cr_assert_lt(ti, NKEYS, "limit %u: key out of order, repeated or unknown", limit);
            cr_assert_eq(order(t[ti].hash, t[ti].key, t[ti].klen, h, pk[k].key, pk[k].klen), 0,
                         "limit %u: unknown or repeated key", limit);
            cr_assert(t[ti].live, "limit %u: a deleted or expired key was listed", limit);
            cr_assert(has_prefix(&t[ti], prefix, plen));
            char v[48];
            snprintf(v, sizeof(v), "%" PRIu64 ".%" PRIu32, t[ti].newest.ts, t[ti].newest.node);
            cr_expect_str_eq(pk[k].version, v, "not the newest version");
            t[ti].seen++;
            ti++;
        }
        if (!cur[0])
            break;
        snprintf(q, sizeof(q), "prefix=%s&limit=%u&cursor=%s", prefix_q, limit, cur);
    }
    size_t want = 0, got = 0;
    for (int i = 0; i < NKEYS; i++) {
        bool match = has_prefix(&t[i], prefix, plen);
        if (match && t[i].live) {
            want++;
            cr_expect_eq(t[i].seen, 1, "limit %u: a live key seen %d times", limit, t[i].seen);
        }
        got += (size_t)t[i].seen;
    }
    cr_expect_eq(got, want, "limit %u", limit);
    cr_expect_gt(want, 0);
    free(pk);
    kv_buf_free(&err);
    kv_buf_free(&page);
}

Test(list_scan, pagination_over_three_members_lists_each_live_key_once)
{
    kv_store *st[3] = {open_store(0), open_store(1), open_store(2)};
    truth *t = build_members(st);
    static const uint32_t limits[] = {1, 7, 100, 1000};
    for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
        list_all(st, t, "", NULL, 0, limits[i]);
        list_all(st, t, "p%2F", (const uint8_t *)"p/", 2, limits[i]);
        list_all(st, t, "%FE", (const uint8_t *)"\xfe", 1, limits[i]);
    }
    free(t);
    for (int i = 0; i < 3; i++)
        close_store(st[i]);
}
