/*
 * store_fuzz.h — what the storage engine's fuzz targets (fuzz_segment.c, fuzz_hint.c)
 * share: a scratch data directory on tmpfs, valid segments built with the engine's own
 * codec, and fz_check_store, which opens the store over whatever files the target wrote
 * and holds it to its promises (see there). Header-only: each target is one translation
 * unit. Single-threaded apart from the libuv threadpool the store uses.
 */
#ifndef KV_TESTS_FUZZ_STORE_FUZZ_H
#define KV_TESTS_FUZZ_STORE_FUZZ_H

#include "common/buf.h"
#include "common/log.h"
#include "kvstore/error.h"
#include "store/format.h"
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <lz4.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#define FZ_UNUSED __attribute__((unused))

#define FZ_PROBE_KEY "fuzz-probe-key"
#define FZ_PROBE_VAL "fuzz-probe-value"

static char g_root[256];  /* mkdtemp dir */
static char g_data[300];  /* <root>/data: the store's data dir */
static char g_store[320]; /* <data>/store */
static uv_loop_t g_loop;

#define FZ_CHECK(cond, what)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz: broken promise: %s (%s:%d)\n", what, __FILE__, __LINE__);       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

FZ_UNUSED static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

FZ_UNUSED static void fz_init(void)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    snprintf(g_root, sizeof g_root, "%s/kvfuzz-XXXXXX", base ? base : "/tmp");
    FZ_CHECK(mkdtemp(g_root) != NULL, "mkdtemp");
    snprintf(g_data, sizeof g_data, "%s/data", g_root);
    snprintf(g_store, sizeof g_store, "%s/store", g_data);
    FZ_CHECK(uv_loop_init(&g_loop) == 0, "uv_loop_init");
    const char *lg = getenv("FUZZ_LOG");
    /* One level above ERROR: nothing is logged. */
    kv_log_setup(lg && *lg == '1' ? KV_LOG_DEBUG : (kv_log_level)(KV_LOG_ERROR + 1), KV_LOG_TEXT,
                 "fuzz");
}

FZ_UNUSED static void fz_cleanup(void)
{
    nftw(g_root, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

FZ_UNUSED static void write_file(const char *name, const uint8_t *p, size_t n)
{
    char path[400];
    snprintf(path, sizeof path, "%s/%s", g_store, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    FZ_CHECK(fd >= 0, "create segment file");
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, p + off, n - off);
        FZ_CHECK(w > 0, "write segment file");
        off += (size_t)w;
    }
    close(fd);
}

/* A valid segment `id` with a put, an overwrite of it and a tombstone. */
FZ_UNUSED static size_t valid_segment(uint32_t id, uint8_t *out, size_t cap)
{
    store_seg_hdr sh = {.id = id, .created_ms = 1};
    store_seg_hdr_encode(out, &sh);
    size_t pos = STORE_SEG_HDR_LEN;
    static const struct {
        const char *key, *val;
        uint8_t type;
    } recs[] = {
        {"alpha", "first value of alpha", STORE_REC_PUT},
        {"alpha", "second value", STORE_REC_PUT},
        {"beta", "", STORE_REC_TOMBSTONE},
    };
    for (size_t i = 0; i < sizeof recs / sizeof *recs; i++) {
        size_t klen = strlen(recs[i].key), vlen = strlen(recs[i].val);
        store_rec_hdr h = {.type = recs[i].type,
                           .klen = (uint16_t)klen,
                           .vlen = (uint32_t)vlen,
                           .raw_vlen = (uint32_t)vlen,
                           .ts = ((uint64_t)id << 20) + i + 1,
                           .node = 1};
        FZ_CHECK(pos + store_rec_len(&h) <= cap, "valid segment fits");
        store_rec_encode(out + pos, &h, recs[i].key, vlen ? recs[i].val : NULL);
        memcpy(out + pos + STORE_REC_HDR_LEN, recs[i].key, klen);
        memcpy(out + pos + STORE_REC_HDR_LEN + klen, recs[i].val, vlen);
        pos += store_rec_len(&h);
    }
    return pos;
}

/* ---------- what the files say ---------- */

/* The bytes of one file the target wrote, for the checks. */
typedef struct fz_file {
    const uint8_t *p;
    size_t n;
} fz_file;

/*
 * Is there an intact record for key with version (ts, node) whose decoded value equals
 * val? LZ4 records are decoded; a record that does not decode never matches.
 */
FZ_UNUSED static bool intact_record_matches(const fz_file *files, int nfiles, const void *key,
                                            size_t klen, const kv_version *ver, const kv_buf *val)
{
    for (int f = 0; f < nfiles; f++) {
        for (size_t off = 0; off + STORE_REC_HDR_LEN <= files[f].n; off++) {
            store_rec_hdr h;
            if (store_rec_parse(files[f].p + off, files[f].n - off, &h) != STORE_REC_OK)
                continue;
            const uint8_t *k = files[f].p + off + STORE_REC_HDR_LEN;
            if (h.type != STORE_REC_PUT || h.klen != klen || memcmp(k, key, klen) != 0 ||
                h.ts != ver->ts || h.node != ver->node)
                continue;
            const uint8_t *v = k + h.klen;
            if (!(h.flags & STORE_REC_F_LZ4)) {
                if (h.vlen == val->len && memcmp(v, val->data, val->len) == 0)
                    return true;
                continue;
            }
            if (h.raw_vlen != val->len)
                continue;
            char *dec = malloc(h.raw_vlen ? h.raw_vlen : 1);
            FZ_CHECK(dec != NULL, "malloc");
            int d = LZ4_decompress_safe((const char *)v, dec, (int)h.vlen, (int)h.raw_vlen);
            bool eq = d >= 0 && (uint32_t)d == h.raw_vlen && memcmp(dec, val->data, val->len) == 0;
            free(dec);
            if (eq)
                return true;
        }
    }
    return false;
}

/* store_get every key named by a plausible record header anywhere in the files. */
FZ_UNUSED static void read_every_key(kv_store *s, const fz_file *files, int nfiles)
{
    kv_buf val = {0};
    for (int f = 0; f < nfiles; f++) {
        for (size_t off = 0; off + STORE_REC_HDR_LEN <= files[f].n; off++) {
            store_rec_hdr h;
            const uint8_t *p = files[f].p + off;
            store_rec_hdr_decode(p, &h);
            if (!store_rec_hdr_plausible(&h, p) || h.klen == 0)
                continue;
            if (off + STORE_REC_HDR_LEN + h.klen > files[f].n)
                continue;
            const uint8_t *key = p + STORE_REC_HDR_LEN;
            kv_version ver;
            int rc = store_get(s, key, h.klen, &val, &ver);
            FZ_CHECK(rc == KV_OK || rc == KV_ENOTFOUND || rc == KV_ECORRUPT || rc == KV_EIO ||
                         rc == KV_ETOOBIG,
                     "store_get returns a documented status");
            if (rc == KV_OK)
                FZ_CHECK(intact_record_matches(files, nfiles, key, h.klen, &ver, &val),
                         "a value served is an intact record of that key and version");
        }
    }
    kv_buf_free(&val);
}

/* ---------- enumeration ---------- */

typedef struct fz_items {
    kv_store_item *v;
    uint8_t **keys;
    size_t n, cap;
} fz_items;

FZ_UNUSED static bool collect(void *arg, const kv_store_item *it)
{
    fz_items *c = arg;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        c->v = realloc(c->v, cap * sizeof(*c->v));
        c->keys = realloc(c->keys, cap * sizeof(*c->keys));
        FZ_CHECK(c->v && c->keys, "realloc");
        c->cap = cap;
    }
    uint8_t *k = malloc(it->klen ? it->klen : 1);
    FZ_CHECK(k != NULL, "malloc");
    memcpy(k, it->key, it->klen);
    c->keys[c->n] = k;
    c->v[c->n] = *it;
    c->v[c->n].key = k;
    c->n++;
    return true;
}

/*
 * Enumerate the whole ring with store_range (small chunks, so the cursor is exercised)
 * and hold every item to what store_get_meta and store_get say about the same key: the
 * same version and kind, a value readable (or reported damaged) exactly when the item is
 * a live value, no key reported twice, and as many items as the index holds. The items
 * are left in *out (the caller frees them with fz_items_free).
 */
FZ_UNUSED static void enumerate_and_check(kv_store *s, const fz_file *files, int nfiles,
                                          fz_items *out)
{
    fz_items items = {0};
    store_cursor cur = {0};
    for (int guard = 0; !cur.done; guard++) {
        FZ_CHECK(guard < 1000000, "store_range terminates");
        int rc = store_range(s, 0, 0, &cur, 7, collect, &items);
        FZ_CHECK(rc == KV_OK, "store_range over the whole ring succeeds");
    }
    kv_store_stats st;
    store_stats(s, &st);
    /* (entries is 0 in engine builds that do not maintain it yet.) */
    FZ_CHECK(st.entries == 0 || items.n == st.entries,
             "store_range reports every index entry once");
    kv_buf val = {0};
    for (size_t i = 0; i < items.n; i++) {
        const kv_store_item *it = &items.v[i];
        for (size_t j = i + 1; j < items.n; j++)
            FZ_CHECK(
                !(items.v[j].klen == it->klen && memcmp(items.v[j].key, it->key, it->klen) == 0),
                "no key reported twice");
        kv_store_meta m;
        int rc = store_get_meta(s, it->key, it->klen, &m);
        FZ_CHECK(rc == KV_OK, "an enumerated key has metadata");
        FZ_CHECK(kv_version_cmp(&m.ver, &it->ver) == 0 && m.tombstone == it->tombstone,
                 "store_get_meta agrees with store_range");
        kv_version ver;
        rc = store_get(s, it->key, it->klen, &val, &ver);
        if (it->tombstone || it->expired || m.expired) {
            FZ_CHECK(rc == KV_ENOTFOUND, "a tombstone or expired value reads as absent");
        } else {
            FZ_CHECK(rc == KV_OK || rc == KV_ECORRUPT || rc == KV_EIO,
                     "a live value reads back or is reported damaged");
            bool probe = it->klen == strlen(FZ_PROBE_KEY) &&
                         memcmp(it->key, FZ_PROBE_KEY, it->klen) == 0; /* not in files */
            if (rc == KV_OK && !probe)
                FZ_CHECK(kv_version_cmp(&ver, &it->ver) == 0 &&
                             intact_record_matches(files, nfiles, it->key, it->klen, &ver, &val),
                         "the value served is the intact record of the enumerated version");
        }
    }
    kv_buf_free(&val);
    *out = items;
}

FZ_UNUSED static void fz_items_free(fz_items *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->keys[i]);
    free(c->v);
    free(c->keys);
    *c = (fz_items){0};
}

/* Is the item for key (klen bytes) in c? Its index, or SIZE_MAX. */
FZ_UNUSED static size_t fz_items_find(const fz_items *c, const void *key, size_t klen)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->v[i].klen == klen && memcmp(c->v[i].key, key, klen) == 0)
            return i;
    return SIZE_MAX;
}

typedef struct fz_apply {
    bool done;
    int status;
    kv_version ver;
} fz_apply;

FZ_UNUSED static void apply_cb(void *arg, int status, const kv_version *ver)
{
    fz_apply *a = arg;
    a->done = true;
    a->status = status;
    if (ver)
        a->ver = *ver;
}

FZ_UNUSED static void run_until_applied(fz_apply *a);

/*
 * Conditional writes and purges against whatever recovery produced, for the first few
 * enumerated keys: an apply at the stored version must be refused (KV_ESTALE, reporting
 * a version at least as new) — values, expired values and tombstones all count; a
 * tombstone can be purged up to its own version, is then gone from store_get_meta, and
 * an apply at its version is still refused. Purged keys are marked (their tombstone may
 * come back after a restart, as store.h says). Nothing here changes a stored value.
 */
FZ_UNUSED static void fz_check_apply_purge(kv_store *s, fz_items *items, bool *purged)
{
    for (size_t i = 0; i < items->n && i < 8; i++) {
        const kv_store_item *it = &items->v[i];
        fz_apply a = {0};
        int rc = store_apply(s, it->key, it->klen, "x", 1, 0, &it->ver, false, apply_cb, &a);
        FZ_CHECK(rc == KV_OK, "store_apply is accepted");
        run_until_applied(&a);
        FZ_CHECK(a.status == KV_ESTALE && kv_version_cmp(&a.ver, &it->ver) >= 0,
                 "an apply at the stored version is refused with the stored version");
        if (!it->tombstone)
            continue;
        rc = store_purge(s, it->key, it->klen, &it->ver);
        FZ_CHECK(rc == KV_OK, "a tombstone can be purged up to its own version");
        purged[i] = true;
        kv_store_meta m;
        FZ_CHECK(store_get_meta(s, it->key, it->klen, &m) == KV_ENOTFOUND,
                 "a purged tombstone is gone from store_get_meta");
        a = (fz_apply){0};
        rc = store_apply(s, it->key, it->klen, NULL, 0, 0, &it->ver, true, apply_cb, &a);
        FZ_CHECK(rc == KV_OK, "store_apply is accepted");
        run_until_applied(&a);
        FZ_CHECK(a.status == KV_ESTALE, "an apply at a purged tombstone's version is refused");
    }
}

/*
 * A restart must not change what the store holds: b (after close and reopen) has exactly
 * a's keys with the same versions and kinds, plus the probe key written in between;
 * tombstones purged before the restart (purged[i] for a->v[i]) may be there or not.
 */
FZ_UNUSED static void fz_items_check_same(const fz_items *a, const fz_items *b, const bool *purged)
{
    size_t probes = 0;
    for (size_t i = 0; i < b->n; i++) {
        const kv_store_item *y = &b->v[i];
        if (y->klen == strlen(FZ_PROBE_KEY) && memcmp(y->key, FZ_PROBE_KEY, y->klen) == 0) {
            probes++;
            continue;
        }
        size_t j = fz_items_find(a, y->key, y->klen);
        FZ_CHECK(j != SIZE_MAX, "a restart brings back no key that was not there before");
        FZ_CHECK(kv_version_cmp(&a->v[j].ver, &y->ver) == 0 && a->v[j].tombstone == y->tombstone,
                 "a restart keeps every key's version and kind");
    }
    FZ_CHECK(probes == 1, "the probe is there after the restart");
    for (size_t i = 0; i < a->n; i++) {
        const kv_store_item *x = &a->v[i];
        if (x->klen == strlen(FZ_PROBE_KEY) && memcmp(x->key, FZ_PROBE_KEY, x->klen) == 0)
            continue;
        FZ_CHECK(purged[i] || fz_items_find(b, x->key, x->klen) != SIZE_MAX,
                 "a restart loses no key");
    }
}

/* ---------- loop helpers ---------- */

typedef struct fz_wait {
    bool done;
    int status;
} fz_wait;

FZ_UNUSED static void write_cb(void *arg, int status, const kv_version *ver)
{
    (void)ver;
    fz_wait *w = arg;
    w->done = true;
    w->status = status;
}

FZ_UNUSED static void close_cb(void *arg)
{
    ((fz_wait *)arg)->done = true;
}

FZ_UNUSED static void run_until(fz_wait *w)
{
    while (!w->done)
        uv_run(&g_loop, UV_RUN_ONCE);
}

FZ_UNUSED static void run_until_applied(fz_apply *a)
{
    while (!a->done)
        uv_run(&g_loop, UV_RUN_ONCE);
}

FZ_UNUSED static void close_store(kv_store *s)
{
    fz_wait w = {0};
    store_close(s, close_cb, &w);
    run_until(&w);
}

FZ_UNUSED static kv_store_opts opts(void)
{
    return (kv_store_opts){.dir = g_data,
                           .sync = KV_SYNC_NEVER,
                           .segment_bytes = 4096,
                           .max_key = 1024,
                           .max_value = 1 << 20,
                           .node_id = 99};
}

FZ_UNUSED static void expect_probe(kv_store *s)
{
    kv_buf val = {0};
    int rc = store_get(s, FZ_PROBE_KEY, strlen(FZ_PROBE_KEY), &val, NULL);
    FZ_CHECK(rc == KV_OK, "the probe written after recovery reads back");
    FZ_CHECK(val.len == strlen(FZ_PROBE_VAL) && memcmp(val.data, FZ_PROBE_VAL, val.len) == 0,
             "the probe's value is intact");
    kv_buf_free(&val);
}

/*
 * Open the store over the files just written (files: their bytes, for the checks) and
 * hold it to its promises: open succeeds, or fails only with KV_ECORRUPT / KV_EIO (a
 * newer format version, an unreadable file) — never for plain damage; every key named by
 * a plausible record header anywhere reads back intact or as absent/damaged, never as
 * bytes that are not an intact record of that key and version; store_range, store_get_meta
 * and store_get agree; a put after recovery completes, reads back, and survives a close
 * and a reopen, which changes nothing else (same keys, versions and kinds). A broken
 * promise aborts.
 */
FZ_UNUSED static void fz_check_store(const fz_file *files, int nfiles)
{
    kv_store_opts o = opts();
    kv_store *s = NULL;
    int rc = store_open(&s, &g_loop, &o);
    if (rc != KV_OK) {
        /* Refusing is allowed only for a reason the contract names (a segment of a newer
         * format version, an unreadable file); never for plain damage. */
        FZ_CHECK(rc == KV_ECORRUPT || rc == KV_EIO,
                 "store_open fails only with a documented status");
        return;
    }
    read_every_key(s, files, nfiles);
    fz_items before;
    enumerate_and_check(s, files, nfiles, &before);
    bool *purged = calloc(before.n + 1, sizeof(bool));
    FZ_CHECK(purged != NULL, "calloc");
    fz_check_apply_purge(s, &before, purged);

    fz_wait w = {0};
    rc = store_put(s, FZ_PROBE_KEY, strlen(FZ_PROBE_KEY), FZ_PROBE_VAL, strlen(FZ_PROBE_VAL), 0,
                   write_cb, &w);
    FZ_CHECK(rc == KV_OK, "a put after recovery is accepted");
    run_until(&w);
    FZ_CHECK(w.status == KV_OK, "a put after recovery completes");
    expect_probe(s);
    close_store(s);

    /* What recovery left behind plus the probe must reopen cleanly. */
    rc = store_open(&s, &g_loop, &o);
    FZ_CHECK(rc == KV_OK, "the store reopens after recovery and one write");
    expect_probe(s);
    fz_items after;
    enumerate_and_check(s, files, nfiles, &after);
    fz_items_check_same(&before, &after, purged);
    free(purged);
    fz_items_free(&before);
    fz_items_free(&after);
    close_store(s);
}

/* Empty the scratch data directory and recreate <data>/store. */
FZ_UNUSED static void fz_reset_dir(void)
{
    static bool inited;
    if (!inited) {
        fz_init();
        atexit(fz_cleanup);
        inited = true;
    }
    nftw(g_data, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    FZ_CHECK(mkdir(g_data, 0755) == 0 && mkdir(g_store, 0755) == 0, "mkdir data/store");
}

#endif
