/*
 * test_store.c — unit tests of the storage engine (src/store): real segment files in a
 * mkdtemp directory, a private libuv loop driven until the callbacks under test fire
 * (every wait has a deadline), files damaged by hand to prove recovery.
 *
 * Each criterion test runs in its own process, so process-wide tweaks (stderr capture,
 * RLIMIT_FSIZE) cannot leak into other tests.
 */
#include "common/buf.h"
#include "kvstore/error.h"
#include "store/crc32c.h"
#include "store/format.h"
#include "store/store.h"

#include "storefix.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <lz4.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define NODE_ID 7

/* Assertions for hot loops: criterion --full-stats reports every assertion that runs,
 * so loops over thousands of keys only call into criterion when something is wrong. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            cr_assert_fail(__VA_ARGS__);                                                           \
    } while (0)
#define CHECK_SOFT(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond))                                                                               \
            cr_expect_fail(__VA_ARGS__);                                                           \
    } while (0)

static storefix g_fx;

/* ---------- fixture (tests/support/storefix.h) ---------- */

static void setup(void)
{
    storefix_init(&g_fx, "store");
}

static void teardown(void)
{
    storefix_fini(&g_fx);
}

TestSuite(store, .init = setup, .fini = teardown);

static bool run_until(bool *flag, int timeout_ms)
{
    return storefix_run_until(&g_fx, storefix_flag_set, flag, timeout_ms);
}

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
    kv_version last;
    bool ordered; /* versions arrived strictly increasing */
} wcount;

static void count_cb(void *arg, int status, const kv_version *ver)
{
    wcount *c = arg;
    if (status == KV_OK) {
        if (c->ok && !(ver->ts > c->last.ts))
            c->ordered = false;
        c->last = *ver;
        c->ok++;
    }
    c->calls++;
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
    };
}

static kv_store *open_store(kv_sync_mode mode, uint64_t seg_bytes)
{
    kv_store *s = NULL;
    kv_store_opts o = opts_for(mode, seg_bytes);
    int rc = store_open(&s, &g_fx.loop, &o);
    cr_assert_eq(rc, KV_OK, "store_open: %s", kv_strerror(rc));
    cr_assert_not_null(s);
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
    cr_assert_not(closed, "store_close called done synchronously");
    cr_assert(run_until(&closed, 10000), "store_close did not complete");
}

/* Put and wait for the callback, asserting it was not called synchronously. */
static kv_version put_exp(kv_store *s, const char *key, const void *val, size_t vlen,
                          uint64_t expiry)
{
    wres r = {0};
    int rc = store_put(s, key, strlen(key), val, vlen, expiry, write_cb, &r);
    CHECK(rc == KV_OK, "store_put(%s): %s", key, kv_strerror(rc));
    CHECK(r.calls == 0, "callback ran inside store_put");
    CHECK(storefix_run_until(&g_fx, wres_done, &r, 10000), "put callback never came");
    CHECK(r.calls == 1, "%d callbacks", r.calls);
    CHECK(r.status == KV_OK, "put(%s) completed with %s", key, kv_strerror(r.status));
    return r.ver;
}

static kv_version put_str(kv_store *s, const char *key, const char *val)
{
    return put_exp(s, key, val, strlen(val), 0);
}

static kv_version del_key(kv_store *s, const char *key)
{
    wres r = {0};
    int rc = store_delete(s, key, strlen(key), write_cb, &r);
    CHECK(rc == KV_OK, "store_delete(%s): %s", key, kv_strerror(rc));
    CHECK(r.calls == 0, "callback ran inside store_delete");
    CHECK(storefix_run_until(&g_fx, wres_done, &r, 10000), "delete callback never came");
    CHECK(r.status == KV_OK, "delete(%s) completed with %s", key, kv_strerror(r.status));
    return r.ver;
}

static int get_key(kv_store *s, const char *key, kv_buf *out, kv_version *ver)
{
    return store_get(s, key, strlen(key), out, ver);
}

static void expect_val(kv_store *s, const char *key, const char *want)
{
    kv_buf b = KV_BUF_INIT;
    int rc = get_key(s, key, &b, NULL);
    CHECK_SOFT(rc == KV_OK, "get(%s): %s", key, kv_strerror(rc));
    if (rc == KV_OK)
        CHECK_SOFT(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0,
                   "get(%s) returned %zu wrong bytes, want %zu", key, b.len, strlen(want));
    kv_buf_free(&b);
}

static void expect_val_n(kv_store *s, const char *key, const void *want, size_t n)
{
    kv_buf b = KV_BUF_INIT;
    int rc = get_key(s, key, &b, NULL);
    CHECK_SOFT(rc == KV_OK, "get(%s): %s", key, kv_strerror(rc));
    if (rc == KV_OK)
        CHECK_SOFT(b.len == n && memcmp(b.data, want, n) == 0,
                   "get(%s) returned %zu wrong bytes, want %zu", key, b.len, n);
    kv_buf_free(&b);
}

static void expect_missing(kv_store *s, const char *key)
{
    kv_buf b = KV_BUF_INIT;
    int rc = get_key(s, key, &b, NULL);
    CHECK_SOFT(rc == KV_ENOTFOUND, "get(%s): %s, want not found", key, kv_strerror(rc));
    kv_buf_free(&b);
}

static void seg_path(char *out, size_t cap, uint32_t id)
{
    snprintf(out, cap, "%s/store/%010u.seg", g_fx.dir, id);
}

static off_t file_size(const char *path)
{
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0, "stat %s: %s", path, strerror(errno));
    return sb.st_size;
}

static int count_segments(uint64_t *total_bytes)
{
    char dir[300];
    snprintf(dir, sizeof(dir), "%s/store", g_fx.dir);
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    uint64_t bytes = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l > 4 && strcmp(de->d_name + l - 4, ".seg") == 0) {
            char p[600];
            snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
            bytes += (uint64_t)file_size(p);
            n++;
        }
    }
    closedir(d);
    if (total_bytes)
        *total_bytes = bytes;
    return n;
}

static size_t rec_len(const char *key, size_t vlen)
{
    return STORE_REC_HDR_LEN + strlen(key) + vlen;
}

/* stderr capture, to check the log lines a user would see. */
static int g_saved_stderr = -1;
static char g_cap_path[320];

static void capture_begin(void)
{
    snprintf(g_cap_path, sizeof(g_cap_path), "%s/stderr.log", g_fx.dir);
    fflush(stderr);
    g_saved_stderr = dup(STDERR_FILENO);
    int fd = open(g_cap_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert(fd >= 0);
    dup2(fd, STDERR_FILENO);
    close(fd);
}

/* Restore stderr and return what was logged meanwhile (caller frees). The captured text
 * is echoed so that it still shows up in the test output. */
static char *capture_end(void)
{
    fflush(stderr);
    dup2(g_saved_stderr, STDERR_FILENO);
    close(g_saved_stderr);
    FILE *f = fopen(g_cap_path, "r");
    cr_assert_not_null(f);
    char *buf = calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = '\0';
    fclose(f);
    fputs(buf, stderr);
    return buf;
}

/* ---------- building blocks ---------- */

static uint32_t crc_bitwise(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    return ~c;
}

Test(store, crc32c_matches_reference)
{
    cr_expect_eq(store_crc32c(0, "123456789", 9), 0xE3069283u);
    cr_expect_eq(store_crc32c(0, "", 0), 0u);
    uint8_t buf[4099];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)(i * 131u + 7u);
    for (size_t n = 0; n < 40; n++)
        cr_expect_eq(store_crc32c(0, buf + 3, n), crc_bitwise(buf + 3, n), "len %zu", n);
    uint32_t whole = store_crc32c(0, buf, sizeof(buf));
    cr_expect_eq(whole, crc_bitwise(buf, sizeof(buf)));
    uint32_t parts = store_crc32c(store_crc32c(0, buf, 1001), buf + 1001, sizeof(buf) - 1001);
    cr_expect_eq(parts, whole, "chained CRC differs from one-shot");
}

Test(store, record_format_round_trip)
{
    store_rec_hdr h = {.type = STORE_REC_PUT,
                       .klen = 3,
                       .vlen = 5,
                       .raw_vlen = 5,
                       .ts = 0x0102030405060708ull,
                       .node = 0xA1B2C3D4u,
                       .expiry = 42};
    uint8_t rec[STORE_REC_HDR_LEN + 8];
    store_rec_encode(rec, &h, "key", "value");
    memcpy(rec + STORE_REC_HDR_LEN, "keyvalue", 8);
    /* Explicit little-endian layout, not a struct dump. */
    cr_expect_eq(rec[4], STORE_REC_PUT);
    cr_expect_eq(rec[6], 3);
    cr_expect_eq(rec[8], 5);
    cr_expect_eq(rec[16], 0x08);
    cr_expect_eq(rec[23], 0x01);
    cr_expect_eq(rec[24], 0xD4);
    cr_expect_eq(rec[32], 42);

    store_rec_hdr d;
    cr_assert_eq(store_rec_parse(rec, sizeof(rec), &d), STORE_REC_OK);
    cr_expect_eq(d.ts, h.ts);
    cr_expect_eq(d.node, h.node);
    cr_expect_eq(d.expiry, 42u);
    cr_expect_eq(store_rec_parse(rec, sizeof(rec) - 1, &d), STORE_REC_SHORT);
    cr_expect_eq(store_rec_parse(rec, 20, &d), STORE_REC_SHORT);
    rec[STORE_REC_HDR_LEN + 4] ^= 0x01;
    cr_expect_eq(store_rec_parse(rec, sizeof(rec), &d), STORE_REC_BADCRC);
    uint8_t zeros[64] = {0};
    cr_expect_eq(store_rec_parse(zeros, sizeof(zeros), &d), STORE_REC_BADHDR);
}

/* ---------- basic operations ---------- */

Test(store, put_get_delete)
{
    kv_store *s = open_store(KV_SYNC_INTERVAL, 0);
    kv_version v1 = put_str(s, "alpha", "one");
    cr_expect_eq(v1.node, NODE_ID);
    cr_expect_gt(v1.ts, 0u);

    kv_buf b = KV_BUF_INIT;
    kv_version got = {0};
    cr_assert_eq(get_key(s, "alpha", &b, &got), KV_OK);
    cr_expect_eq(b.len, 3u);
    cr_expect_str_eq(b.data, "one");
    cr_expect_eq(got.ts, v1.ts);
    cr_expect_eq(got.node, v1.node);
    expect_missing(s, "beta");

    kv_version vd = del_key(s, "alpha");
    cr_expect_gt(vd.ts, v1.ts);
    expect_missing(s, "alpha");
    /* Deleting what does not exist still writes a tombstone and succeeds. */
    del_key(s, "never-there");
    expect_missing(s, "never-there");

    /* Empty values are values. */
    put_str(s, "empty", "");
    cr_assert_eq(get_key(s, "empty", &b, NULL), KV_OK);
    cr_expect_eq(b.len, 0u);

    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.keys, 1u);
    cr_expect_eq(st.live_bytes, 5u);
    cr_expect_eq(st.puts, 2u);
    cr_expect_eq(st.deletes, 2u);
    cr_expect_eq(st.segments, 1u);
    cr_expect_eq(st.corrupt_records, 0u);
    kv_buf_free(&b);
    close_store(s);
}

Test(store, overwrite_keeps_newest)
{
    kv_store *s = open_store(KV_SYNC_NEVER, 0);
    kv_version a = put_str(s, "k", "first");
    kv_version b = put_str(s, "k", "second, longer");
    cr_expect_gt(b.ts, a.ts);
    expect_val(s, "k", "second, longer");
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.keys, 1u);
    cr_expect_eq(st.live_bytes, 1u + strlen("second, longer"));
    close_store(s);
}

Test(store, binary_keys_and_values)
{
    kv_store *s = open_store(KV_SYNC_NEVER, 0);
    const char key[] = {'a', 0, 'b', (char)0xff};
    uint8_t val[300];
    for (size_t i = 0; i < sizeof(val); i++)
        val[i] = (uint8_t)i;
    wres r = {0};
    cr_assert_eq(store_put(s, key, sizeof(key), val, sizeof(val), 0, write_cb, &r), KV_OK);
    cr_assert(storefix_run_until(&g_fx, wres_done, &r, 5000));
    kv_buf b = KV_BUF_INIT;
    cr_assert_eq(store_get(s, key, sizeof(key), &b, NULL), KV_OK);
    cr_expect_eq(b.len, sizeof(val));
    cr_expect_eq(memcmp(b.data, val, sizeof(val)), 0);
    /* A prefix of a binary key is another key. */
    cr_expect_eq(store_get(s, key, 1, &b, NULL), KV_ENOTFOUND);
    kv_buf_free(&b);
    close_store(s);
}

/* ---------- reopen ---------- */

static void reopen_rebuilds(kv_sync_mode mode)
{
    kv_store *s = open_store(mode, 0);
    char key[32], val[64];
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        snprintf(val, sizeof(val), "value-%d", i);
        put_str(s, key, val);
    }
    for (int i = 0; i < 200; i += 10) {
        snprintf(key, sizeof(key), "key-%d", i);
        snprintf(val, sizeof(val), "updated-%d", i);
        put_str(s, key, val);
    }
    for (int i = 5; i < 200; i += 10) {
        snprintf(key, sizeof(key), "key-%d", i);
        del_key(s, key);
    }
    kv_store_stats before;
    store_stats(s, &before);
    close_store(s);

    s = open_store(mode, 0);
    kv_store_stats after;
    store_stats(s, &after);
    cr_expect_eq(after.keys, before.keys);
    cr_expect_eq(after.keys, 180u);
    cr_expect_eq(after.live_bytes, before.live_bytes);
    cr_expect_eq(after.disk_bytes, before.disk_bytes);
    cr_expect_eq(after.corrupt_records, 0u);
    cr_expect_eq(after.truncated_bytes, 0u);
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        if (i % 10 == 5) {
            expect_missing(s, key);
            continue;
        }
        snprintf(val, sizeof(val), i % 10 == 0 ? "updated-%d" : "value-%d", i);
        expect_val(s, key, val);
    }
    /* Still writable after the reopen. */
    put_str(s, "after-reopen", "yes");
    expect_val(s, "after-reopen", "yes");
    close_store(s);
}

Test(store, reopen_rebuilds_index_always)
{
    reopen_rebuilds(KV_SYNC_ALWAYS);
}

Test(store, reopen_rebuilds_index_interval)
{
    reopen_rebuilds(KV_SYNC_INTERVAL);
}

Test(store, reopen_rebuilds_index_never)
{
    reopen_rebuilds(KV_SYNC_NEVER);
}

Test(store, many_keys_reopen)
{
    enum { N = 50000 };
    kv_store *s = open_store(KV_SYNC_NEVER, 0);
    wcount c = {.want = N, .ordered = true};
    char key[32], val[64];
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < N; i++) {
        int kl = snprintf(key, sizeof(key), "user:%08d", i);
        int vl = snprintf(val, sizeof(val), "payload-%d-abcdefghijklmnopqrstuvwxyz", i);
        CHECK(store_put(s, key, (size_t)kl, val, (size_t)vl, 0, count_cb, &c) == KV_OK, "put %s",
              key);
    }
    uint64_t t1 = uv_hrtime();
    cr_assert(storefix_run_until(&g_fx, wcount_done, &c, 30000));
    cr_expect_eq(c.ok, N);
    cr_expect(c.ordered, "completions out of order");
    fprintf(stderr, "store: %d puts (sync=never) in %.1f ms: %.0f puts/s\n", N,
            (double)(t1 - t0) / 1e6, N / ((double)(t1 - t0) / 1e9));

    kv_buf b = KV_BUF_INIT;
    t0 = uv_hrtime();
    for (int i = 0; i < N; i++) {
        int kl = snprintf(key, sizeof(key), "user:%08d", i);
        CHECK(store_get(s, key, (size_t)kl, &b, NULL) == KV_OK, "get %s", key);
    }
    t1 = uv_hrtime();
    fprintf(stderr, "store: %d gets in %.1f ms: %.0f gets/s\n", N, (double)(t1 - t0) / 1e6,
            N / ((double)(t1 - t0) / 1e9));
    close_store(s);

    t0 = uv_hrtime();
    s = open_store(KV_SYNC_NEVER, 0);
    t1 = uv_hrtime();
    fprintf(stderr, "store: reopen with %d keys in %.1f ms\n", N, (double)(t1 - t0) / 1e6);
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.keys, (uint64_t)N);
    for (int i = 0; i < N; i++) {
        int kl = snprintf(key, sizeof(key), "user:%08d", i);
        int vl = snprintf(val, sizeof(val), "payload-%d-abcdefghijklmnopqrstuvwxyz", i);
        int rc = store_get(s, key, (size_t)kl, &b, NULL);
        CHECK(rc == KV_OK, "%s: %s", key, kv_strerror(rc));
        CHECK(b.len == (size_t)vl && memcmp(b.data, val, b.len) == 0, "%s wrong value", key);
    }
    kv_buf_free(&b);
    close_store(s);
}

Test(store, segment_rotation_and_reopen)
{
    kv_store *s = open_store(KV_SYNC_INTERVAL, 4096);
    char key[32], val[200];
    memset(val, 'v', sizeof(val) - 1);
    val[sizeof(val) - 1] = '\0';
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "rot-%d", i);
        val[0] = (char)('A' + i % 26);
        put_str(s, key, val);
    }
    kv_store_stats st;
    store_stats(s, &st);
    uint64_t disk;
    int files = count_segments(&disk);
    cr_expect_gt(st.segments, 10u);
    cr_expect_eq((int)st.segments, files);
    cr_expect_eq(st.disk_bytes, disk);
    /* No segment grows past segment_bytes (every record here is far smaller). */
    for (uint32_t id = 1; id <= st.segments; id++) {
        char p[320];
        seg_path(p, sizeof(p), id);
        cr_expect_leq(file_size(p), 4096, "segment %u too big", id);
    }
    close_store(s);

    s = open_store(KV_SYNC_INTERVAL, 4096);
    kv_store_stats st2;
    store_stats(s, &st2);
    cr_expect_eq(st2.keys, 300u);
    cr_expect_eq(st2.segments, st.segments);
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "rot-%d", i);
        val[0] = (char)('A' + i % 26);
        expect_val(s, key, val);
    }
    close_store(s);
}

/* ---------- damage ---------- */

static void put_numbered(kv_store *s, int from, int to)
{
    char key[16], val[32];
    for (int i = from; i < to; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        snprintf(val, sizeof(val), "value-number-%d", i);
        put_str(s, key, val);
    }
}

static void expect_numbered(kv_store *s, int from, int to)
{
    char key[16], val[32];
    for (int i = from; i < to; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        snprintf(val, sizeof(val), "value-number-%d", i);
        expect_val(s, key, val);
    }
}

/* Offset in segment 1 of record i written by put_numbered(s, 0, ...). */
static off_t numbered_offset(int i)
{
    off_t off = STORE_SEG_HDR_LEN;
    char key[16], val[32];
    for (int j = 0; j < i; j++) {
        snprintf(key, sizeof(key), "k%d", j);
        snprintf(val, sizeof(val), "value-number-%d", j);
        off += (off_t)rec_len(key, strlen(val));
    }
    return off;
}

static void flip_byte(const char *path, off_t off)
{
    int fd = open(path, O_RDWR);
    cr_assert(fd >= 0);
    uint8_t c;
    cr_assert_eq(pread(fd, &c, 1, off), 1);
    c ^= 0x5A;
    cr_assert_eq(pwrite(fd, &c, 1, off), 1);
    close(fd);
}

Test(store, torn_tail_is_truncated)
{
    kv_store *s = open_store(KV_SYNC_NEVER, 0);
    put_numbered(s, 0, 10);
    close_store(s);

    char p[320];
    seg_path(p, sizeof(p), 1);
    off_t full = file_size(p);
    cr_assert_eq(full, numbered_offset(10));
    /* Cut the last record partway, as a crash in the middle of write(2) would. */
    cr_assert_eq(truncate(p, full - 7), 0);

    capture_begin();
    s = open_store(KV_SYNC_NEVER, 0);
    char *log = capture_end();
    cr_expect_not_null(strstr(log, "truncated torn segment tail"), "no log line: %s", log);
    cr_expect_not_null(strstr(log, "segment=1"), "log lacks the segment: %s", log);
    free(log);
    kv_store_stats st;
    store_stats(s, &st);
    off_t cut = numbered_offset(9);
    cr_expect_eq(st.corrupt_records, 1u);
    cr_expect_eq(st.truncated_bytes, (uint64_t)(full - 7 - cut));
    cr_expect_eq(file_size(p), cut, "file not truncated at the last good record");
    expect_numbered(s, 0, 9);
    expect_missing(s, "k9");
    /* Appends continue at the truncation point. */
    put_numbered(s, 9, 12);
    close_store(s);

    /* Garbage after the last record (a torn write of junk). */
    int fd = open(p, O_WRONLY | O_APPEND);
    cr_assert(fd >= 0);
    uint8_t junk[100];
    memset(junk, 0xAB, sizeof(junk));
    cr_assert_eq(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    close(fd);
    off_t good = file_size(p) - (off_t)sizeof(junk);

    capture_begin();
    s = open_store(KV_SYNC_NEVER, 0);
    log = capture_end();
    cr_expect_not_null(strstr(log, "truncated torn segment tail"));
    free(log);
    store_stats(s, &st);
    cr_expect_eq(st.corrupt_records, 1u);
    cr_expect_eq(st.truncated_bytes, sizeof(junk));
    cr_expect_eq(file_size(p), good);
    expect_numbered(s, 0, 12);
    close_store(s);

    /* A clean reopen finds nothing to repair. */
    s = open_store(KV_SYNC_NEVER, 0);
    store_stats(s, &st);
    cr_expect_eq(st.corrupt_records, 0u);
    expect_numbered(s, 0, 12);
    close_store(s);
}

Test(store, short_tail_header_is_truncated)
{
    kv_store *s = open_store(KV_SYNC_NEVER, 0);
    put_numbered(s, 0, 3);
    close_store(s);
    char p[320];
    seg_path(p, sizeof(p), 1);
    int fd = open(p, O_WRONLY | O_APPEND);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, "\x11\x22\x33", 3), 3); /* less than a record header */
    close(fd);
    s = open_store(KV_SYNC_NEVER, 0);
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.truncated_bytes, 3u);
    expect_numbered(s, 0, 3);
    close_store(s);
}

Test(store, corrupt_middle_record_is_skipped)
{
    kv_store *s = open_store(KV_SYNC_NEVER, 0);
    put_numbered(s, 0, 10);
    close_store(s);

    char p[320];
    seg_path(p, sizeof(p), 1);
    off_t size = file_size(p);
    /* One flipped bit in the value of k4: lengths intact, CRC broken. */
    flip_byte(p, numbered_offset(4) + STORE_REC_HDR_LEN + 2 + 3);

    capture_begin();
    s = open_store(KV_SYNC_NEVER, 0);
    char *log = capture_end();
    cr_expect_not_null(strstr(log, "skipped corrupt record"), "no log line: %s", log);
    free(log);
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.corrupt_records, 1u);
    cr_expect_eq(st.truncated_bytes, 0u);
    cr_expect_eq(file_size(p), size, "a skipped record must not truncate the segment");
    expect_numbered(s, 0, 4);
    expect_missing(s, "k4");
    expect_numbered(s, 5, 10);
    close_store(s);
}

static void remove_hints(void)
{
    char dir[300];
    snprintf(dir, sizeof(dir), "%s/store", g_fx.dir);
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l > 5 && strcmp(de->d_name + l - 5, ".hint") == 0) {
            char p[600];
            snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
            cr_assert_eq(unlink(p), 0);
        }
    }
    closedir(d);
}

static void corrupt_older_segment(bool with_hints)
{
    /* Segment 1 holds k0..k9 (rotation forced by a tiny segment_bytes after them). */
    kv_store *s = open_store(KV_SYNC_NEVER, (uint64_t)numbered_offset(10));
    put_numbered(s, 0, 10);
    put_numbered(s, 10, 20);
    kv_store_stats st;
    store_stats(s, &st);
    cr_assert_geq(st.segments, 2u);
    close_store(s);
    if (!with_hints)
        remove_hints();

    char p[320];
    seg_path(p, sizeof(p), 1);
    cr_assert_eq(file_size(p), numbered_offset(10));
    /* Flip a byte in k2's value: skipped, the rest of segment 1 still read. */
    flip_byte(p, numbered_offset(2) + STORE_REC_HDR_LEN + 2 + 1);
    /* Destroy k7's length field. A scan has no way to find the next record, so the rest
     * of segment 1 is ignored (k7..k9); the hint file still knows where k8 and k9 are.
     * Nothing is truncated and segment 2 is read either way. */
    flip_byte(p, numbered_offset(7) + 9);

    s = open_store(KV_SYNC_NEVER, (uint64_t)numbered_offset(10));
    store_stats(s, &st);
    cr_expect_eq(st.corrupt_records, 2u);
    cr_expect_eq(st.truncated_bytes, 0u);
    cr_expect_eq(st.corrupt_reads, 0u);
    cr_expect_eq(file_size(p), numbered_offset(10), "an older segment must not be truncated");
    expect_numbered(s, 0, 2);
    expect_missing(s, "k2");
    expect_numbered(s, 3, 7);
    expect_missing(s, "k7");
    if (with_hints) {
        cr_expect_geq(st.hint_segments, 1u);
        expect_numbered(s, 8, 10);
    } else {
        cr_expect_eq(st.hint_segments, 0u);
        expect_missing(s, "k9");
    }
    expect_numbered(s, 10, 20);
    close_store(s);
}

Test(store, corrupt_record_in_older_segment_scanned)
{
    corrupt_older_segment(false);
}

Test(store, corrupt_record_in_older_segment_with_hint)
{
    corrupt_older_segment(true);
}

Test(store, corruption_while_open_is_never_served)
{
    kv_store *s = open_store(KV_SYNC_NEVER, 0);
    put_numbered(s, 0, 5);
    char p[320];
    seg_path(p, sizeof(p), 1);
    flip_byte(p, numbered_offset(3) + STORE_REC_HDR_LEN + 2 + 5);

    kv_buf b = KV_BUF_INIT;
    cr_expect_eq(get_key(s, "k3", &b, NULL), KV_ECORRUPT);
    cr_expect_eq(b.len, 0u, "corrupt bytes handed out");
    /* The header is damaged too for k1: still refused. */
    flip_byte(p, numbered_offset(1) + 17);
    cr_expect_eq(get_key(s, "k1", &b, NULL), KV_ECORRUPT);
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.corrupt_reads, 2u);
    expect_val(s, "k0", "value-number-0");
    expect_val(s, "k2", "value-number-2");
    expect_val(s, "k4", "value-number-4");
    kv_buf_free(&b);
    close_store(s);
}

Test(store, newer_format_is_refused)
{
    char dir[300], p[320];
    snprintf(dir, sizeof(dir), "%s/store", g_fx.dir);
    cr_assert_eq(mkdir(dir, 0755), 0);
    seg_path(p, sizeof(p), 1);
    uint8_t hdr[STORE_SEG_HDR_LEN];
    store_seg_hdr_encode(hdr, &(store_seg_hdr){.id = 1});
    store_le16(hdr + 4, STORE_FORMAT_VERSION + 1);
    store_le32(hdr + 28, store_crc32c(0, hdr, 28));
    int fd = open(p, O_WRONLY | O_CREAT, 0644);
    cr_assert_eq(write(fd, hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
    close(fd);

    kv_store *s = NULL;
    kv_store_opts o = opts_for(KV_SYNC_NEVER, 0);
    cr_expect_eq(store_open(&s, &g_fx.loop, &o), KV_ECORRUPT);
    cr_expect_null(s);
    cr_expect_eq(file_size(p), (off_t)sizeof(hdr), "a newer segment must be left untouched");
}

Test(store, reads_lz4_records)
{
    /* Hand-build a segment holding an LZ4-compressed record (flag bit 0), as a later
     * version writing compressed values would. */
    char dir[300], p[320];
    snprintf(dir, sizeof(dir), "%s/store", g_fx.dir);
    cr_assert_eq(mkdir(dir, 0755), 0);
    seg_path(p, sizeof(p), 1);
    char raw[4000];
    for (size_t i = 0; i < sizeof(raw); i++)
        raw[i] = "compressible "[i % 13];
    char comp[LZ4_COMPRESSBOUND(sizeof(raw))];
    int clen = LZ4_compress_default(raw, comp, (int)sizeof(raw), (int)sizeof(comp));
    cr_assert_gt(clen, 0);
    store_rec_hdr h = {.type = STORE_REC_PUT,
                       .flags = STORE_REC_F_LZ4,
                       .klen = 3,
                       .vlen = (uint32_t)clen,
                       .raw_vlen = sizeof(raw),
                       .ts = 5u << 16,
                       .node = 9};
    uint8_t shdr[STORE_SEG_HDR_LEN], rhdr[STORE_REC_HDR_LEN];
    store_seg_hdr_encode(shdr, &(store_seg_hdr){.id = 1});
    store_rec_encode(rhdr, &h, "lz4", comp);
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f);
    fwrite(shdr, 1, sizeof(shdr), f);
    fwrite(rhdr, 1, sizeof(rhdr), f);
    fwrite("lz4", 1, 3, f);
    fwrite(comp, 1, (size_t)clen, f);
    fclose(f);

    kv_store *s = open_store(KV_SYNC_NEVER, 0);
    kv_buf b = KV_BUF_INIT;
    kv_version v;
    cr_assert_eq(get_key(s, "lz4", &b, &v), KV_OK);
    cr_expect_eq(b.len, sizeof(raw));
    cr_expect_eq(memcmp(b.data, raw, sizeof(raw)), 0);
    cr_expect_eq(v.ts, 5u << 16);
    cr_expect_eq(v.node, 9u);
    /* New versions are newer than what was found on disk. */
    kv_version w = put_str(s, "other", "x");
    cr_expect_gt(w.ts, v.ts);
    kv_buf_free(&b);
    close_store(s);
}

/* ---------- limits, expiry, versions ---------- */

Test(store, key_and_value_limits)
{
    kv_store *s = open_store(KV_SYNC_NEVER, 0);
    wres r = {0};
    char *big = calloc(1, (1 << 20) + 2);
    cr_assert_not_null(big);
    memset(big, 'x', (1 << 20) + 1);

    cr_expect_eq(store_put(s, "", 0, "v", 1, 0, write_cb, &r), KV_EINVAL);
    cr_expect_eq(store_put(s, NULL, 3, "v", 1, 0, write_cb, &r), KV_EINVAL);
    cr_expect_eq(store_put(s, big, 1025, "v", 1, 0, write_cb, &r), KV_ETOOBIG);
    cr_expect_eq(store_put(s, "k", 1, big, (1 << 20) + 1, 0, write_cb, &r), KV_ETOOBIG);
    cr_expect_eq(store_delete(s, "", 0, write_cb, &r), KV_EINVAL);
    cr_expect_eq(store_delete(s, big, 1025, write_cb, &r), KV_ETOOBIG);
    kv_buf b = KV_BUF_INIT;
    cr_expect_eq(store_get(s, "", 0, &b, NULL), KV_EINVAL);
    cr_expect_eq(store_get(s, big, 1025, &b, NULL), KV_ETOOBIG);

    /* The limits themselves are fine. */
    cr_assert_eq(store_put(s, big, 1024, big, 1 << 20, 0, write_cb, &r), KV_OK);
    cr_assert(storefix_run_until(&g_fx, wres_done, &r, 5000));
    cr_expect_eq(r.calls, 1, "refused writes must not call back");
    cr_expect_eq(r.status, KV_OK);
    cr_assert_eq(store_get(s, big, 1024, &b, NULL), KV_OK);
    cr_expect_eq(b.len, (size_t)1 << 20);
    cr_expect_eq(memcmp(b.data, big, b.len), 0);
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.puts, 1u);
    cr_expect_eq(st.write_errors, 0u);
    kv_buf_free(&b);
    free(big);
    close_store(s);
}

Test(store, expired_records_read_as_missing)
{
    kv_store *s = open_store(KV_SYNC_INTERVAL, 0);
    uint64_t now = storefix_now_ms();
    put_exp(s, "past", "gone", 4, now - 1000);
    put_exp(s, "future", "here", 4, now + 3600 * 1000);
    put_str(s, "forever", "always");
    expect_missing(s, "past");
    expect_val(s, "future", "here");
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.keys, 2u, "an expired key is not live");

    /* A short TTL: served until its deadline, never after. */
    uint64_t soon = storefix_now_ms() + 150;
    put_exp(s, "soon", "brief", 5, soon);
    uint64_t deadline = storefix_now_ms() + 10000;
    kv_buf b = KV_BUF_INIT;
    int rc;
    for (;;) {
        uint64_t before = storefix_now_ms();
        rc = get_key(s, "soon", &b, NULL);
        uint64_t after = storefix_now_ms();
        if (rc == KV_OK)
            cr_assert_lt(before, soon, "served after its expiry");
        else
            break;
        cr_assert_lt(after, deadline, "never expired");
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL); /* polling a clock-based condition, with a deadline */
    }
    cr_expect_eq(rc, KV_ENOTFOUND);
    cr_expect_geq(storefix_now_ms(), soon);
    close_store(s);

    s = open_store(KV_SYNC_INTERVAL, 0);
    expect_missing(s, "past");
    expect_missing(s, "soon");
    expect_val(s, "future", "here");
    expect_val(s, "forever", "always");
    store_stats(s, &st);
    cr_expect_eq(st.keys, 2u);
    kv_buf_free(&b);
    close_store(s);
}

Test(store, versions_monotonic_across_reopen)
{
    kv_store *s = open_store(KV_SYNC_NEVER, 0);
    wcount c = {.want = 1000, .ordered = true};
    for (int i = 0; i < 1000; i++)
        CHECK(store_put(s, "same", 4, &i, sizeof(i), 0, count_cb, &c) == KV_OK, "put %d", i);
    cr_assert(storefix_run_until(&g_fx, wcount_done, &c, 10000));
    cr_expect(c.ordered, "versions not strictly increasing");
    kv_version last = c.last;
    /* The physical part is the wall clock in ms (upper bits). */
    cr_expect_leq((last.ts >> 16), storefix_now_ms() + 1);
    cr_expect_geq((last.ts >> 16) + 5000, storefix_now_ms());
    kv_version got;
    kv_buf b = KV_BUF_INIT;
    cr_assert_eq(get_key(s, "same", &b, &got), KV_OK);
    cr_expect_eq(got.ts, last.ts);
    int v;
    memcpy(&v, b.data, sizeof(v));
    cr_expect_eq(v, 999);
    close_store(s);

    s = open_store(KV_SYNC_NEVER, 0);
    cr_assert_eq(get_key(s, "same", &b, &got), KV_OK);
    cr_expect_eq(got.ts, last.ts);
    kv_version next = put_str(s, "other", "x");
    cr_expect_gt(next.ts, last.ts, "clock went backwards across reopen");
    kv_buf_free(&b);
    close_store(s);
}

/* ---------- durability modes ---------- */

Test(store, group_commit_shares_fsyncs)
{
    enum { N = 1000 };
    kv_store *s = open_store(KV_SYNC_ALWAYS, 0);
    kv_store_stats st0;
    store_stats(s, &st0);
    wcount c = {.want = N, .ordered = true};
    char key[32];
    for (int i = 0; i < N; i++) {
        int kl = snprintf(key, sizeof(key), "gc-%d", i);
        CHECK(store_put(s, key, (size_t)kl, "v", 1, 0, count_cb, &c) == KV_OK, "put %s", key);
    }
    cr_expect_eq(c.calls, 0, "callbacks ran inside store_put");
    /* Not durable yet, so not visible yet. */
    expect_missing(s, "gc-0");
    cr_assert(storefix_run_until(&g_fx, wcount_done, &c, 30000), "only %d of %d completed", c.calls,
              N);
    cr_expect_eq(c.ok, N);
    cr_expect(c.ordered);
    kv_store_stats st;
    store_stats(s, &st);
    uint64_t fsyncs = st.fsyncs - st0.fsyncs;
    fprintf(stderr, "store: %d concurrent puts (sync=always) took %" PRIu64 " fsyncs\n", N, fsyncs);
    cr_expect_geq(fsyncs, 1u);
    cr_expect_lt(fsyncs, (uint64_t)N, "no group commit: %" PRIu64 " fsyncs", fsyncs);
    cr_expect_eq(st.keys, (uint64_t)N);
    expect_val(s, "gc-0", "v");
    expect_val(s, "gc-999", "v");
    close_store(s);
}

typedef struct reader {
    kv_store *s;
    int calls;
    int seen_ok;
} reader;

/* Reads its own key from inside the completion: with ALWAYS the write must be visible
 * by the time it is acknowledged. */
static void read_back_cb(void *arg, int status, const kv_version *ver)
{
    reader *r = arg;
    r->calls++;
    kv_buf b = KV_BUF_INIT;
    if (status == KV_OK && store_get(r->s, "rb", 2, &b, NULL) == KV_OK)
        r->seen_ok++;
    kv_buf_free(&b);
}

static bool reader_done(void *arg)
{
    return ((reader *)arg)->calls > 0;
}

Test(store, acknowledged_write_is_visible)
{
    kv_sync_mode modes[] = {KV_SYNC_ALWAYS, KV_SYNC_INTERVAL, KV_SYNC_NEVER};
    for (int m = 0; m < 3; m++) {
        kv_store *s = open_store(modes[m], 0);
        reader r = {.s = s};
        cr_assert_eq(store_put(s, "rb", 2, "x", 1, 0, read_back_cb, &r), KV_OK);
        cr_expect_eq(r.calls, 0);
        cr_assert(storefix_run_until(&g_fx, reader_done, &r, 10000));
        cr_expect_eq(r.seen_ok, 1, "mode %d: acked write not visible", m);
        close_store(s);
    }
}

Test(store, callbacks_never_synchronous)
{
    kv_sync_mode modes[] = {KV_SYNC_ALWAYS, KV_SYNC_INTERVAL, KV_SYNC_NEVER};
    for (int m = 0; m < 3; m++) {
        kv_store *s = open_store(modes[m], 0);
        wres r = {0};
        cr_assert_eq(store_put(s, "a", 1, "1", 1, 0, write_cb, &r), KV_OK);
        cr_expect_eq(r.calls, 0, "mode %d: put called back synchronously", m);
        cr_assert(storefix_run_until(&g_fx, wres_done, &r, 10000));
        wres d = {0};
        cr_assert_eq(store_delete(s, "a", 1, write_cb, &d), KV_OK);
        cr_expect_eq(d.calls, 0, "mode %d: delete called back synchronously", m);
        cr_assert(storefix_run_until(&g_fx, wres_done, &d, 10000));
        cr_expect_eq(d.status, KV_OK);
        close_store(s);
    }
}

Test(store, interval_mode_fsyncs_in_background)
{
    kv_store *s = open_store(KV_SYNC_INTERVAL, 0);
    kv_store_stats st;
    store_stats(s, &st);
    uint64_t before = st.fsyncs;
    put_str(s, "a", "1");
    uint64_t deadline = uv_hrtime() + 10000ull * 1000000u;
    storefix_tick_start(&g_fx);
    do {
        uv_run(&g_fx.loop, UV_RUN_ONCE);
        store_stats(s, &st);
    } while (st.fsyncs == before && uv_hrtime() < deadline);
    storefix_tick_stop(&g_fx);
    cr_expect_gt(st.fsyncs, before, "the interval timer never fsynced");
    /* Nothing written since: no further fsyncs over several intervals. */
    uint64_t settled = st.fsyncs;
    uint64_t until = uv_hrtime() + 150ull * 1000000u;
    storefix_tick_start(&g_fx);
    while (uv_hrtime() < until)
        uv_run(&g_fx.loop, UV_RUN_ONCE);
    storefix_tick_stop(&g_fx);
    store_stats(s, &st);
    cr_expect_eq(st.fsyncs, settled, "fsync without new writes");
    close_store(s);
}

typedef struct close_order {
    wcount writes;
    bool closed;
    int writes_at_close;
} close_order;

static void on_closed_order(void *arg)
{
    close_order *o = arg;
    o->closed = true;
    o->writes_at_close = o->writes.calls;
}

static void close_completes_pending(kv_sync_mode mode)
{
    kv_store *s = open_store(mode, 0);
    close_order o = {.writes = {.want = 100, .ordered = true}};
    char key[32];
    for (int i = 0; i < 100; i++) {
        int kl = snprintf(key, sizeof(key), "pc-%d", i);
        cr_assert_eq(store_put(s, key, (size_t)kl, "v", 1, 0, count_cb, &o.writes), KV_OK);
    }
    store_close(s, on_closed_order, &o);
    cr_expect_eq(o.writes.calls, 0);
    /* New writes are refused while closing, without a callback. */
    wres r = {0};
    cr_expect_eq(store_put(s, "late", 4, "v", 1, 0, write_cb, &r), KV_ECLOSED);
    cr_expect_eq(store_delete(s, "late", 4, write_cb, &r), KV_ECLOSED);
    cr_assert(run_until(&o.closed, 10000), "close never completed");
    cr_expect_eq(o.writes_at_close, 100, "done fired before all writes completed");
    cr_expect_eq(o.writes.ok, 100);
    cr_expect_eq(r.calls, 0);

    s = open_store(mode, 0);
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "pc-%d", i);
        expect_val(s, key, "v");
    }
    close_store(s);
}

Test(store, close_completes_pending_always)
{
    close_completes_pending(KV_SYNC_ALWAYS);
}

Test(store, close_completes_pending_never)
{
    close_completes_pending(KV_SYNC_NEVER);
}

/* A write that fails partway (here: the file-size limit, standing in for a full disk)
 * is cut back, reported through its callback, counted, invisible, and the next write
 * succeeds. */
Test(store, failed_write_is_cut_back)
{
    signal(SIGXFSZ, SIG_IGN);
    kv_store *s = open_store(KV_SYNC_NEVER, 0);
    put_str(s, "before", "ok");
    char p[320];
    seg_path(p, sizeof(p), 1);
    off_t size = file_size(p);

    struct rlimit old, lim;
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)size + 100; /* room for part of the next record only */
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    char val[1000];
    memset(val, 'z', sizeof(val));
    wres r = {0};
    int rc = store_put(s, "big", 3, val, sizeof(val), 0, write_cb, &r);
    cr_assert_eq(rc, KV_OK, "buffered: the error comes through the callback");
    cr_expect_eq(r.calls, 0, "callback inside store_put");
    /* Visible to readers until its write fails (NEVER mode reads the buffer). */
    expect_val_n(s, "big", val, sizeof(val));
    cr_assert(storefix_run_until(&g_fx, wres_done, &r, 10000));
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    cr_expect(r.status == KV_EIO || r.status == KV_ENOSPC, "got %s", kv_strerror(r.status));
    cr_expect_eq(file_size(p), size, "partial record left in the log");
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.write_errors, 1u);
    expect_missing(s, "big");

    /* Space is back: the next write simply works. */
    put_exp(s, "big", val, sizeof(val), 0);
    put_str(s, "after", "ok");
    cr_expect_eq(r.calls, 1);
    close_store(s);

    s = open_store(KV_SYNC_NEVER, 0);
    store_stats(s, &st);
    cr_expect_eq(st.corrupt_records, 0u);
    expect_val(s, "before", "ok");
    expect_val(s, "after", "ok");
    kv_buf b = KV_BUF_INIT;
    cr_expect_eq(get_key(s, "big", &b, NULL), KV_OK);
    cr_expect_eq(b.len, sizeof(val));
    kv_buf_free(&b);
    close_store(s);
}

/* An fsync that fails (injected) under ALWAYS: every write it covered and every write
 * queued behind it fails with KV_EIO, none becomes visible, and the log is cut back so
 * that they do not come back after a restart either. */
static void sync_failure(uint64_t seg_bytes)
{
    kv_store *s = open_store(KV_SYNC_ALWAYS, seg_bytes);
    put_str(s, "durable", "yes");
    char p[320];
    seg_path(p, sizeof(p), 1);
    off_t size1 = file_size(p);

    store_debug_fail_next_sync(s, EIO);
    wres seen[10];
    memset(seen, 0, sizeof(seen));
    char key[32];
    for (int i = 0; i < 10; i++) {
        int kl = snprintf(key, sizeof(key), "f-%d", i);
        cr_assert_eq(store_put(s, key, (size_t)kl, "lost-value", 10, 0, write_cb, &seen[i]), KV_OK);
    }
    for (int i = 0; i < 10; i++) {
        cr_assert(storefix_run_until(&g_fx, wres_done, &seen[i], 10000));
        cr_expect_eq(seen[i].calls, 1);
        cr_expect_eq(seen[i].status, KV_EIO, "write %d: %s", i, kv_strerror(seen[i].status));
    }
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof(key), "f-%d", i);
        expect_missing(s, key);
    }
    cr_expect_eq(file_size(p), size1, "failed writes left in the log");
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.write_errors, 10u);
    cr_expect_eq(st.sync_errors, 1u);
    if (seg_bytes)
        cr_expect_geq(st.segments, 4u, "the group did not span rotations");
    uint64_t disk;
    count_segments(&disk);
    cr_expect_eq(st.disk_bytes, disk);

    /* The next fsync works again. */
    put_str(s, "after", "ok");
    expect_val(s, "durable", "yes");
    close_store(s);

    s = open_store(KV_SYNC_ALWAYS, seg_bytes);
    store_stats(s, &st);
    cr_expect_eq(st.corrupt_records, 0u);
    expect_val(s, "durable", "yes");
    expect_val(s, "after", "ok");
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof(key), "f-%d", i);
        expect_missing(s, key);
    }
    close_store(s);
}

Test(store, failed_fsync_fails_the_group)
{
    sync_failure(0);
}

Test(store, failed_fsync_across_rotation)
{
    /* Room for "durable" and two more records per segment: the failed group spans
     * several new segments. */
    sync_failure(STORE_SEG_HDR_LEN + rec_len("durable", 3) + 2 * rec_len("f-0", 10));
}

Test(store, creates_data_dir_and_reports_disk)
{
    char sub[300];
    snprintf(sub, sizeof(sub), "%s/a/b", g_fx.dir);
    kv_store_opts o = opts_for(KV_SYNC_NEVER, 0);
    o.dir = sub;
    kv_store *s = NULL;
    cr_assert_eq(store_open(&s, &g_fx.loop, &o), KV_OK);
    char p[400];
    snprintf(p, sizeof(p), "%s/store/0000000001.seg", sub);
    cr_expect_eq(file_size(p), STORE_SEG_HDR_LEN);
    kv_store_stats st;
    store_stats(s, &st);
    cr_expect_eq(st.disk_bytes, (uint64_t)STORE_SEG_HDR_LEN);
    cr_expect_eq(st.segments, 1u);
    cr_expect_eq(st.keys, 0u);
    close_store(s);

    kv_store_opts bad = opts_for(KV_SYNC_NEVER, 0);
    bad.max_key = 0;
    cr_expect_eq(store_open(&s, &g_fx.loop, &bad), KV_EINVAL);
}
