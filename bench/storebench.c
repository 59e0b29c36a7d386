/*
 * storebench.c — the storage engine benchmark (issue 3, item 10). Drives src/store
 * directly (no HTTP) on one libuv loop thread, as the node does, and prints a markdown
 * table of what it measured, with the targets beside the figures.
 *
 *   storebench [--keys N] [--quick] [--dir DIR] [--window W] [--max-seconds S]
 *              [--seed S] [--keep]
 *
 * Phases (each on data it creates itself; keys are 16 bytes, values 100 bytes):
 *   1. load N keys with sync=never: puts/s; memory per key = (VmRSS after − VmRSS
 *      before) / N − 16 (the key bytes), VmRSS from /proc/self/status, "before" taken
 *      right after store_open of the empty directory, "after" once every put has
 *      completed; also the index's own accounting (kv_store_stats.index_bytes / N);
 *   2. N gets of uniformly random existing keys: gets/s (every answer checked);
 *   3. latency without compaction: single get / put (overwrite) timings, p50 and p99
 *      (a put is timed from store_put to its completion callback);
 *   4. compaction: overwrite half of the keys (so half of the log is garbage), then
 *      store_compact; throughput = segment bytes read / compaction seconds (and bytes
 *      written); the same get/put latency sampling runs on the loop while it runs;
 *   5. restart: close, store_open again (hint files written by compaction), keys/s =
 *      keys / store_open wall time; then the hint files are deleted and it is opened
 *      again (every segment scanned). Page cache warm (the files were just written);
 *   6. load N keys with sync=interval (100 ms): puts/s;
 *   7. load N keys with sync=always, W puts in flight at a time (group commit), bounded
 *      by --max-seconds: puts/s, fsyncs, puts per fsync.
 * Every phase stops at --max-seconds (default 120) and then reports what it did ("partial").
 *
 * Single-threaded: the engine's own threadpool work (fsync, compaction) is the only other
 * activity. Numbers depend on the machine and on what else runs: quote them with the
 * machine line printed above the table.
 */
#include "common/buf.h"
#include "common/log.h"
#include "kvstore/error.h"
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define SB_KLEN 16
#define SB_VLEN 100

typedef struct sb_opts {
    uint64_t keys;
    uint32_t window;
    double max_seconds;
    uint64_t seed;
    const char *dir;
    bool keep, quick;
    unsigned merkle_depth;
} sb_opts;

static sb_opts g_o;
static uv_loop_t g_loop;
static char g_root[512];

/* ---------- small helpers ---------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* CPU seconds (user + system) of the calling thread: the loop thread's own work, which
 * other processes on a busy machine cannot inflate the way they inflate wall time. */
static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t sb_rand(uint64_t *s)
{
    /* splitmix64 */
    uint64_t x = (*s += 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "storebench: %s: %s\n", what, rc ? kv_strerror(rc) : strerror(errno));
    exit(1);
}

/* Key i: exactly 16 bytes, "k" + 15 decimal digits. */
static void key_of(uint64_t i, char *out)
{
    char tmp[32];
    snprintf(tmp, sizeof tmp, "k%015" PRIu64, i);
    memcpy(out, tmp, SB_KLEN);
}

/* Value of key i, generation g: 100 bytes that do not compress (no LZ4 shortcut). */
static void value_of(uint64_t i, uint64_t g, uint8_t *out)
{
    uint64_t s = i * 0x2545f4914f6cdd1dull + g;
    for (int j = 0; j < SB_VLEN; j += 8) {
        uint64_t r = sb_rand(&s);
        memcpy(out + j, &r, (size_t)(SB_VLEN - j < 8 ? SB_VLEN - j : 8));
    }
}

/* VmRSS or RssAnon from /proc/self/status, in bytes. */
static uint64_t proc_status_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return 0;
    char line[256];
    uint64_t kb = 0;
    size_t fl = strlen(field);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, field, fl) == 0 && line[fl] == ':') {
            kb = strtoull(line + fl + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb * 1024;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_rf(const char *path)
{
    nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* ---------- store plumbing ---------- */

typedef struct sb_ctx {
    uint64_t done, failed;
    int first_err;
} sb_ctx;

static void put_cb(void *arg, int status, const kv_version *ver)
{
    (void)ver;
    sb_ctx *c = arg;
    c->done++;
    if (status != KV_OK) {
        c->failed++;
        if (!c->first_err)
            c->first_err = status;
    }
}

static void closed_cb(void *arg)
{
    *(bool *)arg = true;
}

static kv_store_opts base_opts(const char *dir, kv_sync_mode mode)
{
    return (kv_store_opts){
        .dir = dir,
        .sync = mode,
        .sync_interval_ms = 100,
        .segment_bytes = 64ull << 20,
        .max_key = 1024,
        .max_value = 1 << 20,
        .node_id = 1,
        /* Compaction only when the benchmark asks for it (phase 4). */
        .compaction_dead_ratio = 2.0,
        .merkle_depth = g_o.merkle_depth,
    };
}

static kv_store *open_store(const kv_store_opts *o, double *secs)
{
    kv_store *s = NULL;
    double t0 = now_s();
    int rc = store_open(&s, &g_loop, o);
    if (secs)
        *secs = now_s() - t0;
    if (rc != KV_OK)
        die("store_open", rc);
    return s;
}

static void close_store(kv_store *s)
{
    bool done = false;
    store_close(s, closed_cb, &done);
    while (!done)
        uv_run(&g_loop, UV_RUN_ONCE);
}

/*
 * Put keys [0, n) (in a seeded random order when shuffle) with generation g, keeping at
 * most `window` puts in flight. Stops at the deadline. Returns the puts completed and
 * their seconds.
 */
static double g_load_cpu; /* loop-thread CPU seconds of the last load() */

static uint64_t load(kv_store *s, uint64_t n, uint64_t g, uint32_t window, bool shuffle,
                     double *secs, bool *partial)
{
    double c0 = thread_cpu_s();
    sb_ctx c = {0};
    uint64_t issued = 0, rs = g_o.seed ^ (g * 7919);
    char key[SB_KLEN];
    uint8_t val[SB_VLEN];
    double t0 = now_s(), deadline = t0 + g_o.max_seconds;
    *partial = false;
    while (c.done < issued || issued < n) {
        while (issued < n && issued - c.done < window) {
            uint64_t i = shuffle ? sb_rand(&rs) % n : issued;
            key_of(i, key);
            value_of(i, g, val);
            int rc = store_put(s, key, SB_KLEN, val, SB_VLEN, 0, put_cb, &c);
            if (rc != KV_OK)
                die("store_put", rc);
            issued++;
        }
        uv_run(&g_loop, UV_RUN_ONCE);
        if ((issued & 0x3fff) == 0 && now_s() > deadline && issued < n) {
            *partial = true;
            n = issued; /* stop issuing; drain what is in flight */
        }
    }
    *secs = now_s() - t0;
    g_load_cpu = thread_cpu_s() - c0;
    if (c.failed)
        die("a put failed", c.first_err);
    return c.done;
}

/* ---------- latency sampling ---------- */

typedef struct sb_lat {
    uint64_t *get_ns, *put_ns;
    size_t ngets, nputs, cap;
} sb_lat;

static void lat_init(sb_lat *l, size_t cap)
{
    l->get_ns = malloc(cap * sizeof(uint64_t));
    l->put_ns = malloc(cap * sizeof(uint64_t));
    if (!l->get_ns || !l->put_ns)
        die("malloc", KV_ENOMEM);
    l->ngets = l->nputs = 0;
    l->cap = cap;
}

static void lat_free(sb_lat *l)
{
    free(l->get_ns);
    free(l->put_ns);
}

static uint64_t pct(uint64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, cmp_u64);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i];
}

/*
 * One sample: a get of a random key, then a put (overwrite) of another, each timed (the
 * put until its callback). While `until_idle` is set, sampling continues until
 * store_compacting() turns false (or the deadline); otherwise `count` samples.
 */
static void sample_latency(kv_store *s, sb_lat *l, uint64_t n, size_t count, bool until_idle,
                           uint64_t *rng)
{
    kv_buf v = {0};
    char key[SB_KLEN];
    uint8_t val[SB_VLEN];
    double deadline = now_s() + g_o.max_seconds;
    for (size_t k = 0; l->ngets < l->cap; k++) {
        if (until_idle ? !store_compacting(s) : k >= count)
            break;
        if ((k & 255) == 0 && now_s() > deadline)
            break;
        uint64_t i = sb_rand(rng) % n;
        key_of(i, key);
        uint64_t t0 = now_ns();
        int rc = store_get(s, key, SB_KLEN, &v, NULL);
        uint64_t t1 = now_ns();
        if (rc != KV_OK && rc != KV_ENOTFOUND)
            die("store_get during latency sampling", rc);
        l->get_ns[l->ngets++] = t1 - t0;

        i = sb_rand(rng) % n;
        key_of(i, key);
        value_of(i, 99, val);
        sb_ctx c = {0};
        t0 = now_ns();
        rc = store_put(s, key, SB_KLEN, val, SB_VLEN, 0, put_cb, &c);
        if (rc != KV_OK)
            die("store_put during latency sampling", rc);
        while (c.done == 0)
            uv_run(&g_loop, UV_RUN_ONCE);
        l->put_ns[l->nputs++] = now_ns() - t0;
    }
    kv_buf_free(&v);
}

/* ---------- results ---------- */

#define SB_MAX_ROWS 32

typedef struct sb_row {
    char what[128], result[160], target[48], met[16];
} sb_row;

static sb_row g_rows[SB_MAX_ROWS];
static int g_nrows;

__attribute__((format(printf, 4, 5))) static void row(const char *what, const char *target,
                                                      const char *met, const char *fmt, ...)
{
    if (g_nrows >= SB_MAX_ROWS)
        return;
    sb_row *r = &g_rows[g_nrows++];
    snprintf(r->what, sizeof r->what, "%s", what);
    snprintf(r->target, sizeof r->target, "%s", target);
    snprintf(r->met, sizeof r->met, "%s", met);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->result, sizeof r->result, fmt, ap);
    va_end(ap);
}

static const char *yesno(bool ok)
{
    return ok ? "yes" : "**no**";
}

static void fmt_rate(char *out, size_t cap, double per_s)
{
    if (per_s >= 1e6)
        snprintf(out, cap, "%.2f M/s", per_s / 1e6);
    else
        snprintf(out, cap, "%.0f k/s", per_s / 1e3);
}

static void print_machine(int argc, char **argv)
{
    char model[256] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "model name", 10) == 0) {
                char *c = strchr(line, ':');
                if (c) {
                    c++;
                    while (*c == ' ')
                        c++;
                    c[strcspn(c, "\n")] = '\0';
                    snprintf(model, sizeof model, "%s", c);
                }
                break;
            }
        }
        fclose(f);
    }
    struct utsname u;
    uname(&u);
    time_t t = time(NULL);
    char date[64];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&t));
    printf("machine: %ld cores (nproc), CPU \"%s\", Linux %s, %.1f GiB RAM\n",
           sysconf(_SC_NPROCESSORS_ONLN), model, u.release,
           (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE) / (1u << 30));
    char la[64] = "?";
    FILE *lf = fopen("/proc/loadavg", "r");
    if (lf) {
        if (fgets(la, sizeof la, lf))
            la[strcspn(la, "\n")] = '\0';
        fclose(lf);
    }
    printf("date: %s; data directory: %s; /proc/loadavg at start: %s\n", date, g_root, la);
    printf("command:");
    for (int i = 0; i < argc; i++)
        printf(" %s", argv[i]);
    printf("\n\n");
}

static void print_table(void)
{
    printf("| measurement | result | issue target | met |\n");
    printf("|---|---|---|---|\n");
    for (int i = 0; i < g_nrows; i++)
        printf("| %s | %s | %s | %s |\n", g_rows[i].what, g_rows[i].result, g_rows[i].target,
               g_rows[i].met);
}

/* Delete hint files (anything in the store directory that is not a segment). */
static int remove_hints(const char *data_dir)
{
    char dir[700];
    snprintf(dir, sizeof dir, "%s/store", data_dir);
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l > 5 && strcmp(de->d_name + l - 5, ".hint") == 0) {
            char p[1000];
            snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
            if (unlink(p) == 0)
                n++;
        }
    }
    closedir(d);
    return n;
}

/* ---------- restart measurement in a fresh process ---------- */

typedef struct sb_open_result {
    uint64_t keys, hint_segments, scanned_segments;
    uint64_t rss_before, rss_after;   /* VmRSS */
    uint64_t anon_before, anon_after; /* RssAnon: heap and anonymous maps only */
    double secs;
} sb_open_result;

/* `storebench --measure-open DIR` (internal): open the store in DIR once, print one line
 * of figures, close. */
static int measure_open(const char *dir)
{
    kv_store_opts o = base_opts(dir, KV_SYNC_NEVER);
    uint64_t r0 = proc_status_kb("VmRSS"), a0 = proc_status_kb("RssAnon");
    double secs;
    kv_store *s = open_store(&o, &secs);
    uint64_t r1 = proc_status_kb("VmRSS"), a1 = proc_status_kb("RssAnon");
    kv_store_stats st;
    store_stats(s, &st);
    printf("%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64
           " %.6f\n",
           st.keys, st.hint_segments, st.scanned_segments, r0, r1, a0, a1, secs);
    fflush(stdout);
    close_store(s);
    return 0;
}

static int run_measure_open(const char *dir, sb_open_result *r)
{
    char self[512], cmd[1400];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -1;
    self[n] = '\0';
    snprintf(cmd, sizeof cmd, "'%s' --measure-open '%s'", self, dir);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    int got = fscanf(p,
                     "%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
                     " %" SCNu64 " %lf",
                     &r->keys, &r->hint_segments, &r->scanned_segments, &r->rss_before,
                     &r->rss_after, &r->anon_before, &r->anon_after, &r->secs);
    int st = pclose(p);
    return got == 8 && st == 0 && r->secs > 0 && r->keys > 0 ? 0 : -1;
}

/* ---------- phases ---------- */

static void compact_cb(void *arg, int status, const kv_compact_stats *st)
{
    kv_compact_stats *out = arg;
    if (status != KV_OK)
        die("compaction failed", status);
    *out = *st;
}

static void phase_never_gets_compaction_restart(void)
{
    char dir[600];
    snprintf(dir, sizeof dir, "%s/never", g_root);
    uint64_t n = g_o.keys;
    kv_store_opts o = base_opts(dir, KV_SYNC_NEVER);
    kv_store *s = open_store(&o, NULL);

    /* 1. load + memory */
    uint64_t rss0 = proc_status_kb("VmRSS"), anon0 = proc_status_kb("RssAnon");
    double secs;
    bool partial;
    uint64_t done = load(s, n, 1, 4096, false, &secs, &partial);
    uint64_t rss1 = proc_status_kb("VmRSS"), anon1 = proc_status_kb("RssAnon");
    char rate[32];
    fmt_rate(rate, sizeof rate, (double)done / secs);
    row("puts/s, sync=never (single loop thread)", "≥ 1M/s", yesno(done / secs >= 1e6),
        "%s (%" PRIu64 " puts in %.2f s%s; loop thread CPU %.2f s)", rate, done, secs,
        partial ? ", partial" : "", g_load_cpu);
    n = done;
    double per_key = (double)(rss1 - rss0) / (double)n - SB_KLEN;
    double anon_key = (double)(anon1 - anon0) / (double)n - SB_KLEN;
    kv_store_stats st;
    store_stats(s, &st);
    row("memory per key beyond the key bytes: VmRSS growth / keys − 16", "≤ 40 B",
        yesno(per_key <= 40), "%.1f B (RssAnon: %.1f B; index's own count: %.1f B/key incl. key)",
        per_key, anon_key, (double)st.index_bytes / (double)n);

    /* 2. gets */
    kv_buf v = {0};
    char key[SB_KLEN];
    uint64_t rng = g_o.seed ^ 0x6765747300ull, gets = 0;
    double t0 = now_s(), deadline = t0 + g_o.max_seconds, c0 = thread_cpu_s();
    for (; gets < n; gets++) {
        uint64_t i = sb_rand(&rng) % n;
        key_of(i, key);
        int rc = store_get(s, key, SB_KLEN, &v, NULL);
        if (rc != KV_OK || v.len != SB_VLEN)
            die("store_get of a loaded key", rc ? rc : KV_ECORRUPT);
        if ((gets & 0xffff) == 0 && now_s() > deadline)
            break;
    }
    secs = now_s() - t0;
    double gcpu = thread_cpu_s() - c0;
    kv_buf_free(&v);
    fmt_rate(rate, sizeof rate, (double)gets / secs);
    row("gets/s, random existing keys (single loop thread)", "≥ 1M/s", yesno(gets / secs >= 1e6),
        "%s (%" PRIu64 " gets in %.2f s; loop thread CPU %.2f s)", rate, gets, secs, gcpu);

    /* 3. latency, quiet store */
    size_t nsamples = n < 200000 ? (size_t)n : 200000;
    sb_lat quiet;
    lat_init(&quiet, nsamples);
    uint64_t lrng = g_o.seed ^ 0x6c6174ull;
    sample_latency(s, &quiet, n, nsamples, false, &lrng);

    /* 4. compaction: overwrite half of the keys → about half of the log is garbage */
    load(s, n / 2, 2, 4096, false, &secs, &partial);
    store_stats(s, &st);
    uint64_t disk_before = st.disk_bytes, dead_before = st.dead_bytes;
    kv_compact_stats cs = {0};
    sb_lat busy;
    lat_init(&busy, 2000000);
    int rc = store_compact(s, compact_cb, &cs);
    if (rc != KV_OK)
        die("store_compact", rc);
    double ct0 = now_s();
    sample_latency(s, &busy, n, 0, true, &lrng);
    while (store_compacting(s))
        uv_run(&g_loop, UV_RUN_ONCE);
    /* The callback may come one loop iteration after store_compacting turns false. */
    for (int i = 0; i < 100 && cs.seconds == 0 && cs.bytes_in == 0; i++)
        uv_run(&g_loop, UV_RUN_NOWAIT);
    double cwall = now_s() - ct0;
    store_stats(s, &st);
    double csecs = cs.seconds > 0 ? cs.seconds : cwall;
    if (cs.bytes_in > 0) {
        row("compaction throughput (segment bytes read / s)", "–", "–",
            "%.0f MB/s in, %.0f MB/s out (%.1f MB → %.1f MB, %u → %u segments, %.2f s)",
            (double)cs.bytes_in / 1e6 / csecs, (double)cs.bytes_out / 1e6 / csecs,
            (double)cs.bytes_in / 1e6, (double)cs.bytes_out / 1e6, cs.segments_in, cs.segments_out,
            csecs);
    } else {
        row("compaction throughput", "–", "–",
            "n/a: compaction rewrote nothing (%.1f MB on disk, %.1f MB dead before)",
            (double)disk_before / 1e6, (double)dead_before / 1e6);
    }
    uint64_t qg50 = pct(quiet.get_ns, quiet.ngets, 0.5),
             qg99 = pct(quiet.get_ns, quiet.ngets, 0.99);
    uint64_t qp50 = pct(quiet.put_ns, quiet.nputs, 0.5),
             qp99 = pct(quiet.put_ns, quiet.nputs, 0.99);
    row("get latency p50 / p99, no compaction", "–", "–", "%.1f / %.1f µs (%zu samples)",
        (double)qg50 / 1e3, (double)qg99 / 1e3, quiet.ngets);
    row("put latency p50 / p99, no compaction (call → callback, sync=never)", "–", "–",
        "%.1f / %.1f µs", (double)qp50 / 1e3, (double)qp99 / 1e3);
    if (busy.ngets > 0) {
        uint64_t bg50 = pct(busy.get_ns, busy.ngets, 0.5),
                 bg99 = pct(busy.get_ns, busy.ngets, 0.99);
        uint64_t bp50 = pct(busy.put_ns, busy.nputs, 0.5),
                 bp99 = pct(busy.put_ns, busy.nputs, 0.99);
        row("get latency p50 / p99, during compaction", "–", "–", "%.1f / %.1f µs (%zu samples)",
            (double)bg50 / 1e3, (double)bg99 / 1e3, busy.ngets);
        row("put latency p50 / p99, during compaction", "–", "–", "%.1f / %.1f µs",
            (double)bp50 / 1e3, (double)bp99 / 1e3);
    } else {
        row("get/put latency during compaction", "–", "–",
            "n/a: compaction finished before the first sample (%.3f s)", cwall);
    }
    lat_free(&quiet);
    lat_free(&busy);
    uint64_t keys = st.keys;

    /* 5. restart with hint files, then without: each in a fresh process (see
     * measure_open), so the heap the first store freed cannot hide the new index. */
    close_store(s);
    sb_open_result r;
    if (run_measure_open(dir, &r) != 0)
        die("restart measurement (child process)", KV_EIO);
    if (r.keys != keys)
        fprintf(stderr, "storebench: WARNING: %" PRIu64 " keys after restart, %" PRIu64 " before\n",
                r.keys, keys);
    fmt_rate(rate, sizeof rate, (double)r.keys / r.secs);
    if (r.hint_segments > 0)
        row("restart from hint files (store_open wall time, fresh process)", "≥ 2M keys/s",
            yesno(r.keys / r.secs >= 2e6),
            "%s keys (%" PRIu64 " keys in %.3f s; %" PRIu64 " segments from hints, %" PRIu64
            " scanned)",
            rate, r.keys, r.secs, r.hint_segments, r.scanned_segments);
    else
        row("restart from hint files", "≥ 2M keys/s", "**no**",
            "n/a: no hint file was loaded (%s keys, %" PRIu64 " segments scanned)", rate,
            r.scanned_segments);
    /* Reads go through mmap, so VmRSS after an open also counts the segment and hint pages
     * the open touched (page cache, shared and reclaimable); RssAnon is the engine's own
     * memory. */
    double mem = (double)(r.rss_after - r.rss_before) / (double)r.keys - SB_KLEN;
    double anon = (double)(r.anon_after - r.anon_before) / (double)r.keys - SB_KLEN;
    row("memory per key after a restart: RssAnon growth of store_open / keys − 16 (fresh "
        "process)",
        "≤ 40 B", yesno(anon <= 40),
        "%.1f B (VmRSS: %.1f B, which adds the mapped file pages the open read)", anon, mem);
    int removed = remove_hints(dir);
    if (run_measure_open(dir, &r) != 0)
        die("restart measurement (child process)", KV_EIO);
    fmt_rate(rate, sizeof rate, (double)r.keys / r.secs);
    row("restart scanning every segment (hint files deleted)", "–", "–",
        "%s keys (%" PRIu64 " keys in %.3f s; %d hint files deleted first)", rate, r.keys, r.secs,
        removed);
    rm_rf(dir);
}

static void phase_load(kv_sync_mode mode, const char *name, uint32_t window)
{
    char dir[600];
    snprintf(dir, sizeof dir, "%s/%s", g_root, name);
    kv_store_opts o = base_opts(dir, mode);
    kv_store *s = open_store(&o, NULL);
    double secs;
    bool partial;
    uint64_t done = load(s, g_o.keys, 1, window, false, &secs, &partial);
    kv_store_stats st;
    store_stats(s, &st);
    char rate[32], what[128];
    fmt_rate(rate, sizeof rate, (double)done / secs);
    if (mode == KV_SYNC_ALWAYS) {
        snprintf(what, sizeof what, "puts/s, sync=always, %u puts in flight (group commit)",
                 window);
        row(what, "–", "–",
            "%s (%" PRIu64 " puts in %.2f s%s; %" PRIu64 " fsyncs, %.0f puts/fsync)", rate, done,
            secs, partial ? ", partial: --max-seconds" : "", st.fsyncs,
            st.fsyncs ? (double)done / (double)st.fsyncs : 0.0);
    } else {
        snprintf(what, sizeof what, "puts/s, sync=%s", name);
        row(what, "–", "–",
            "%s (%" PRIu64 " puts in %.2f s%s; %" PRIu64 " fsyncs; loop thread CPU %.2f s)", rate,
            done, secs, partial ? ", partial" : "", st.fsyncs, g_load_cpu);
    }
    close_store(s);
    rm_rf(dir);
}

/* ---------- main ---------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: storebench [options]   (storage engine benchmark; prints a markdown table)\n"
               "  --keys N          keys to load (default 1000000; 16-byte keys, 100-byte values)\n"
               "  --quick           100000 keys, 20 s per phase at most\n"
               "  --dir DIR         parent of the scratch directory (default $TMPDIR or /tmp)\n"
               "  --window W        puts in flight for sync=always (default 1000)\n"
               "  --max-seconds S   bound on each phase (default 120); a phase cut short says so\n"
               "  --seed S          RNG seed for key order and sampling (default 1)\n"
               "  --keep            keep the scratch directory\n"
               "  --merkle-depth D  keep an anti-entropy tree of 2^D leaves, as a node does (16);\n"
               "                    default 0 = none\n");
}

int main(int argc, char **argv)
{
    g_o = (sb_opts){.keys = 1000000, .window = 1000, .max_seconds = 120, .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--quick") == 0) {
            g_o.quick = true;
        } else if (strcmp(a, "--keep") == 0) {
            g_o.keep = true;
        } else if (v && strcmp(a, "--keys") == 0) {
            g_o.keys = strtoull(v, NULL, 10);
            i++;
        } else if (v && strcmp(a, "--window") == 0) {
            g_o.window = (uint32_t)strtoul(v, NULL, 10);
            i++;
        } else if (v && strcmp(a, "--max-seconds") == 0) {
            g_o.max_seconds = strtod(v, NULL);
            i++;
        } else if (v && strcmp(a, "--merkle-depth") == 0) {
            g_o.merkle_depth = (unsigned)strtoul(v, NULL, 10);
            i++;
        } else if (v && strcmp(a, "--seed") == 0) {
            g_o.seed = strtoull(v, NULL, 0);
            i++;
        } else if (v && strcmp(a, "--measure-open") == 0) {
            kv_log_setup(KV_LOG_WARN, KV_LOG_TEXT, "storebench");
            if (uv_loop_init(&g_loop) != 0)
                die("uv_loop_init", 0);
            return measure_open(v);
        } else if (v && strcmp(a, "--dir") == 0) {
            g_o.dir = v;
            i++;
        } else {
            fprintf(stderr, "storebench: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (g_o.quick) {
        g_o.keys = 100000;
        if (g_o.max_seconds > 20)
            g_o.max_seconds = 20;
    }
    if (g_o.keys < 1000 || g_o.window == 0 || g_o.max_seconds <= 0) {
        fprintf(stderr, "storebench: need --keys >= 1000, --window >= 1, --max-seconds > 0\n");
        return 2;
    }
    const char *parent = g_o.dir ? g_o.dir : getenv("TMPDIR");
    snprintf(g_root, sizeof g_root, "%s/storebench-XXXXXX", parent && *parent ? parent : "/tmp");
    if (!mkdtemp(g_root))
        die("mkdtemp", 0);
    kv_log_setup(KV_LOG_WARN, KV_LOG_TEXT, "storebench");
    if (uv_loop_init(&g_loop) != 0)
        die("uv_loop_init", 0);

    print_machine(argc, argv);
    fprintf(stderr,
            "storebench: %" PRIu64 " keys; phase 1-5 (sync=never, gets, compaction, "
            "restart)...\n",
            g_o.keys);
    phase_never_gets_compaction_restart();
    fprintf(stderr, "storebench: phase 6 (sync=interval)...\n");
    phase_load(KV_SYNC_INTERVAL, "interval", 4096);
    fprintf(stderr, "storebench: phase 7 (sync=always)...\n");
    phase_load(KV_SYNC_ALWAYS, "always", g_o.window);
    print_table();

    if (!g_o.keep)
        rm_rf(g_root);
    uv_loop_close(&g_loop);
    return 0;
}
