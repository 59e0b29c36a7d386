/*
 * test_replication_skew.c — the real-time-order promise (DESIGN §8) under clock skew, seen
 * by clients of three real kvstore processes whose wall clocks are minutes apart: each node
 * runs under libfaketime (Debian package `faketime`) with FAKETIME="-5m", "+0" and "+3m";
 * FAKETIME_DONT_FAKE_MONOTONIC=1 keeps timers and timeouts on true time. The skew is checked
 * first (each node's HTTP Date header, and the wall part of the first version each
 * coordinator assigns); the test fails if it did not take effect.
 *
 * Shown here:
 *  (a) one client writes 300 values to one key through rotating coordinators, waiting for
 *      each acknowledgement; a quorum read through another node after each ack returns
 *      exactly that value and version — zero stale reads, zero lost writes — and each
 *      acknowledged version is newer than the one before, whatever the coordinators' clocks;
 *  (b) six client threads write unique values to three keys and read them through all
 *      nodes for a bounded time; a checker verifies the recorded history: no read returns a
 *      value (or a version) older than a write acknowledged before the read began, nothing
 *      that was never written or not yet started, and a write that began after another was
 *      acknowledged has the newer version. The checker is itself tested on synthetic
 *      histories with each kind of anomaly, so that it can fail.
 *
 * Skipped (with a message) when libfaketime is not installed.
 */
#include "cluster.h"

#include <criterion/criterion.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static th_cluster g_c;

/* The nodes' clock offsets, seconds: minutes apart, in both directions. */
static const int g_skew_s[5] = {-300, 0, 180, -120, 60};
static const char *const g_faketime[5] = {"FAKETIME=-5m", "FAKETIME=+0", "FAKETIME=+3m",
                                          "FAKETIME=-2m", "FAKETIME=+1m"};

static const char *const g_args[] = {"--replication.timeout", "2s", NULL};

static char g_preload[300], g_asan[600];
static const char *g_env[5][6];

static void setup(void)
{
    memset(&g_c, 0, sizeof g_c);
}

static void teardown(void)
{
    th_cluster_fini(&g_c);
}

TestSuite(replication_skew, .init = setup, .fini = teardown, .timeout = 120);

/* Path of libfaketime.so.1, or NULL. */
static const char *find_libfaketime(void)
{
    static const char *const cand[] = {
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    };
    for (size_t i = 0; i < sizeof cand / sizeof cand[0]; i++) {
        FILE *f = fopen(cand[i], "rb");
        if (f) {
            fclose(f);
            return cand[i];
        }
    }
    return NULL;
}

/* Parse an HTTP Date ("Fri, 27 Nov 2026 14:51:45 GMT") into seconds since the epoch. */
static bool parse_http_date(const char *s, time_t *out)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(s, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL)
        return false;
    *out = timegm(&tm);
    return true;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Start n nodes (3 or 5), each under libfaketime with its offset, and check that the skew
 * took effect: the HTTP Date of each node, and the wall part of the first version each
 * coordinator assigns (written in ascending clock order, so no node has yet merged a
 * newer clock), are off true time by the offset (±30 s).
 */
static void start_skewed_cluster(int n)
{
    const char *lib = find_libfaketime();
    if (lib == NULL)
        cr_skip_test("libfaketime.so.1 not found (Debian package `faketime`; "
                     "scripts/setup-deps.sh --test installs it): clock-skew tests skipped");
    snprintf(g_preload, sizeof g_preload, "LD_PRELOAD=%s", lib);
    /* libfaketime comes before the ASan runtime in a sanitizer build: tell ASan it is fine. */
    const char *asan = getenv("ASAN_OPTIONS");
    snprintf(g_asan, sizeof g_asan, "ASAN_OPTIONS=%s%sverify_asan_link_order=0", asan ? asan : "",
             asan && *asan ? ":" : "");
    th_cluster_init(&g_c, n);
    g_c.args = g_args;
    for (int i = 0; i < n; i++) {
        g_env[i][0] = g_preload;
        g_env[i][1] = g_faketime[i];
        g_env[i][2] = "FAKETIME_DONT_FAKE_MONOTONIC=1";
        g_env[i][3] = g_asan;
        g_env[i][4] = NULL;
        g_c.node_env[i] = g_env[i];
    }
    cr_assert_eq(th_cluster_start(&g_c, 20000), 0, "%d skewed nodes did not start and converge", n);

    for (int i = 0; i < n; i++) {
        th_resp r;
        cr_assert_eq(th_http(g_c.node[i].port, "GET", "/healthz", NULL, 0, &r), 0);
        time_t now = time(NULL);
        char date[80];
        time_t t;
        bool ok = th_resp_header(&r, "Date", date, sizeof date) && parse_http_date(date, &t);
        th_resp_free(&r);
        cr_assert(ok, "n%d: no parsable Date header", i);
        long off = (long)(t - now);
        cr_log_info("n%d: HTTP Date is %+ld s from true time (%s)", i, off, g_faketime[i]);
        cr_assert(labs(off - g_skew_s[i]) <= 30,
                  "n%d runs %+ld s off true time, want %+d s: the clock skew did not take effect",
                  i, off, g_skew_s[i]);
    }
    int order[5];
    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int i = 1; i < n; i++) /* ascending clocks: insertion sort by offset */
        for (int j = i; j > 0 && g_skew_s[order[j]] < g_skew_s[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    for (int k = 0; k < n; k++) {
        int i = order[k];
        char key[32];
        snprintf(key, sizeof key, "skew-probe-%d", i);
        th_kv_resp r;
        th_kv_put(&g_c.node[i], key, "probe", NULL, &r);
        int64_t now = wall_ms();
        TH_CLUSTER_CHECK(&g_c, r.status == 204 && r.has_version, "PUT %s through n%d: %d %s", key,
                         i, r.status, r.body);
        int64_t off = (int64_t)(r.ts >> 16) - now;
        cr_log_info("n%d: first version %s, wall part %+lld ms from true time", i, r.etag,
                    (long long)off);
        TH_CLUSTER_CHECK(&g_c, llabs(off - g_skew_s[i] * 1000LL) <= 30000,
                         "n%d's first version %s has a wall part %+lld ms from true time, want "
                         "%+d s: the coordinator's clock is not skewed",
                         i, r.etag, (long long)off, g_skew_s[i]);
        th_kv_resp_free(&r);
    }
}

/* Stop every node with SIGTERM: each must exit 0 with a log free of sanitizer reports. */
static void stop_all_clean(void)
{
    for (int i = 0; i < g_c.n; i++)
        cr_expect(th_node_stop_clean(&g_c.node[i], 10000), "n%d did not stop cleanly", i);
}

/* ---------- (a) a sequence of writes through rotating coordinators ---------- */

/*
 * Write nseq values to `key`, write i through node i mod n, waiting for each
 * acknowledgement, then read it at quorum through another node (rotating): every read must
 * return exactly the value and version just acknowledged, and every acknowledged version
 * must be newer than the one before. Then the final value through every node.
 */
static void run_sequence(int n, int nseq, const char *key)
{
    int stale = 0, failed = 0, not_newer = 0;
    char first_bad[700] = "";
    uint64_t prev_ts = 0;
    uint32_t prev_node = 0;
    char val[32], want[32] = "";
    for (int i = 0; i < nseq; i++) {
        int w = i % n, rd = (w + 1 + (i / n) % (n - 1)) % n; /* never the writer */
        snprintf(val, sizeof val, "%s-%03d", key, i);
        th_kv_resp r;
        th_kv_put(&g_c.node[w], key, val, NULL, &r);
        if (r.status != 204 || !r.has_version) {
            failed++;
            if (!first_bad[0])
                snprintf(first_bad, sizeof first_bad, "write %d through n%d: status %d %s", i, w,
                         r.status, r.body);
            th_kv_resp_free(&r);
            continue;
        }
        uint64_t ts = r.ts;
        uint32_t nd = r.node;
        th_kv_resp_free(&r);
        if (want[0] && th_kv_version_cmp(ts, nd, prev_ts, prev_node) <= 0) {
            not_newer++;
            if (!first_bad[0])
                snprintf(first_bad, sizeof first_bad,
                         "write %d through n%d acknowledged version %llu.%u, not newer than the "
                         "previous acknowledged write's %llu.%u",
                         i, w, (unsigned long long)ts, nd, (unsigned long long)prev_ts, prev_node);
        }
        prev_ts = ts;
        prev_node = nd;
        snprintf(want, sizeof want, "%s", val);
        th_kv_get(&g_c.node[rd], key, NULL, &r);
        if (r.status != 200 || strcmp(r.body, val) != 0 || r.ts != ts || r.node != nd) {
            stale++;
            if (!first_bad[0])
                snprintf(first_bad, sizeof first_bad,
                         "after write %d through n%d was acknowledged (%s = version %llu.%u), a "
                         "quorum read through n%d returned status %d '%.100s' version %s",
                         i, w, val, (unsigned long long)ts, nd, rd, r.status, r.body, r.etag);
        }
        th_kv_resp_free(&r);
    }
    cr_log_info("%d nodes: %d sequential writes through rotating skewed coordinators: %d failed, "
                "%d not newer than their predecessor, %d stale reads",
                n, nseq, failed, not_newer, stale);
    if (failed || stale || not_newer)
        th_cluster_dump(&g_c, key, 30);
    cr_assert(failed == 0 && stale == 0 && not_newer == 0,
              "%d failed writes, %d stale reads, %d versions not newer; first: %s", failed, stale,
              not_newer, first_bad);
    for (int i = 0; i < n; i++) {
        th_kv_resp r;
        th_kv_get(&g_c.node[i], key, NULL, &r);
        TH_CLUSTER_CHECK(&g_c,
                         r.status == 200 && strcmp(r.body, want) == 0 && r.ts == prev_ts &&
                             r.node == prev_node,
                         "final quorum read through n%d: %d '%s' %s, want '%s' %llu.%u", i,
                         r.status, r.body, r.etag, want, (unsigned long long)prev_ts, prev_node);
        th_kv_resp_free(&r);
    }
    double bumps = th_cluster_metric_sum(&g_c, -1, "kv_repl_version_bumps_total", NULL);
    cr_log_info("write rounds re-sent with a newer version (a replica held a newer one): %g",
                bumps);
}

Test(replication_skew, sequential_writes_through_rotating_skewed_coordinators_are_never_lost)
{
    start_skewed_cluster(3);
    run_sequence(3, 300, "seq");
    stop_all_clean();
}

/* With 5 nodes and N=3 most coordinators are not replicas of the key: their clocks have not
 * merged the key's versions, and the slow ones are minutes behind the last write. */
Test(replication_skew, five_skewed_nodes_coordinators_outside_the_preference_list_lose_nothing)
{
    start_skewed_cluster(5);
    run_sequence(5, 200, "seq5");
    run_sequence(5, 100, "seq5b");
    stop_all_clean();
}

/* ---------- (b) the concurrent history check ---------- */

typedef enum { OP_WRITE = 1, OP_READ = 2 } op_kind;

/* One client operation as the client saw it. Times are monotonic microseconds; cmp is
 * INT64_MAX when no answer arrived (the outcome is unknown). */
typedef struct hist_op {
    op_kind kind;
    int key;
    int client;
    int node;
    int64_t inv, cmp;
    int status;
    char value[24]; /* write: the value written; read (200): the value returned */
    bool has_version;
    uint64_t ts; /* write (204): the acknowledged version; read (200): the returned version */
    uint32_t vnode;
} hist_op;

typedef struct check_result {
    int reads_checked; /* reads that answered 200 or 404 */
    int acked_writes;
    int stale;       /* value or version older than an acknowledged earlier write */
    int phantom;     /* a value nobody wrote, or whose write began after the read ended */
    int write_order; /* a write begun after another's ack got an older version */
    char first[600]; /* the first violation, described */
} check_result;

static bool acked(const hist_op *o)
{
    return o->kind == OP_WRITE && o->status == 204 && o->has_version && o->cmp != INT64_MAX;
}

static void note(check_result *res, const char *fmt, const hist_op *a, const hist_op *b)
{
    if (res->first[0])
        return;
    snprintf(res->first, sizeof res->first,
             "%s: op A (%s key %d by client %d via n%d, [%" PRId64 ", %" PRId64 "] us, status %d, "
             "value '%s', version %" PRIu64 ".%u) vs op B (%s key %d by client %d, [%" PRId64
             ", %" PRId64 "] us, status %d, value '%s', version %" PRIu64 ".%u)",
             fmt, a->kind == OP_READ ? "read" : "write", a->key, a->client, a->node, a->inv, a->cmp,
             a->status, a->value, a->ts, a->vnode,
             b ? (b->kind == OP_READ ? "read" : "write") : "-", b ? b->key : -1, b ? b->client : -1,
             b ? b->inv : 0, b ? b->cmp : 0, b ? b->status : 0, b ? b->value : "", b ? b->ts : 0,
             b ? b->vnode : 0);
}

/* The checker's indexes over one history (all keys): acknowledged writes ordered by
 * completion, with a running newest version, and every write ordered by (key, value). */
typedef struct hist_index {
    const hist_op *ops;
    size_t *acked;  /* indexes of acknowledged writes, by (key, cmp) */
    size_t *newest; /* newest[i]: the newest version among acked[first of its key .. i] */
    size_t nacked;
    size_t *writes; /* indexes of every write, by (key, value) */
    size_t nwrites;
} hist_index;

static const hist_op *g_sort_ops; /* qsort has no context argument */

static int by_key_cmp(const void *pa, const void *pb)
{
    const hist_op *a = &g_sort_ops[*(const size_t *)pa], *b = &g_sort_ops[*(const size_t *)pb];
    if (a->key != b->key)
        return a->key < b->key ? -1 : 1;
    return a->cmp < b->cmp ? -1 : a->cmp > b->cmp;
}

static int by_key_value(const void *pa, const void *pb)
{
    const hist_op *a = &g_sort_ops[*(const size_t *)pa], *b = &g_sort_ops[*(const size_t *)pb];
    if (a->key != b->key)
        return a->key < b->key ? -1 : 1;
    return strcmp(a->value, b->value);
}

static int vcmp(const hist_op *a, const hist_op *b)
{
    return th_kv_version_cmp(a->ts, a->vnode, b->ts, b->vnode);
}

static void hist_index_build(hist_index *x, const hist_op *ops, size_t n)
{
    memset(x, 0, sizeof *x);
    x->ops = ops;
    x->acked = calloc(n + 1, sizeof *x->acked);
    x->newest = calloc(n + 1, sizeof *x->newest);
    x->writes = calloc(n + 1, sizeof *x->writes);
    cr_assert(x->acked && x->newest && x->writes);
    for (size_t i = 0; i < n; i++) {
        if (ops[i].kind == OP_WRITE)
            x->writes[x->nwrites++] = i;
        if (acked(&ops[i]))
            x->acked[x->nacked++] = i;
    }
    g_sort_ops = ops;
    qsort(x->acked, x->nacked, sizeof *x->acked, by_key_cmp);
    qsort(x->writes, x->nwrites, sizeof *x->writes, by_key_value);
    for (size_t i = 0; i < x->nacked; i++) {
        const hist_op *o = &ops[x->acked[i]];
        x->newest[i] = x->acked[i];
        if (i > 0 && ops[x->acked[i - 1]].key == o->key && vcmp(&ops[x->newest[i - 1]], o) > 0)
            x->newest[i] = x->newest[i - 1];
    }
}

static void hist_index_free(hist_index *x)
{
    free(x->acked);
    free(x->newest);
    free(x->writes);
}

/* The acknowledged write of `key` with the newest version among those acknowledged before
 * time t (cmp < t), or NULL. */
static const hist_op *newest_acked_before(const hist_index *x, int key, int64_t t)
{
    size_t lo = 0, hi = x->nacked; /* first position with (key, cmp) >= (key, t) */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const hist_op *o = &x->ops[x->acked[mid]];
        if (o->key < key || (o->key == key && o->cmp < t))
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0 || x->ops[x->acked[lo - 1]].key != key)
        return NULL;
    return &x->ops[x->newest[lo - 1]];
}

/* The write of `value` to `key`, or NULL. */
static const hist_op *write_of(const hist_index *x, int key, const char *value)
{
    size_t lo = 0, hi = x->nwrites;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const hist_op *o = &x->ops[x->writes[mid]];
        int c = o->key != key ? (o->key < key ? -1 : 1) : strcmp(o->value, value);
        if (c == 0)
            return o;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/*
 * Check a history. Keys start absent and values are unique per key. For every read that
 * answered (200 or 404), let M be the newest version among writes to its key acknowledged
 * before the read began:
 *  - a 404 when M exists is stale;
 *  - a value must come from a write w of that key that began before the read ended
 *    (otherwise phantom); if w was acknowledged, its acknowledged version must be >= M, and
 *    the version the read returned must be >= M in any case (otherwise stale).
 * For every acknowledged write b, the writes to its key acknowledged before b began must all
 * have older versions than b's (otherwise write_order: an acknowledged write was overtaken
 * by an older version, i.e. lost).
 */
static void check_history(const hist_op *ops, size_t n, check_result *res)
{
    memset(res, 0, sizeof *res);
    hist_index x;
    hist_index_build(&x, ops, n);
    res->acked_writes = (int)x.nacked;
    for (size_t i = 0; i < n; i++) {
        const hist_op *a = &ops[i];
        if (acked(a)) {
            const hist_op *m = newest_acked_before(&x, a->key, a->inv);
            if (m && vcmp(a, m) <= 0) {
                res->write_order++;
                note(res, "a write that began after another's ack got an older version", a, m);
            }
        }
        if (a->kind != OP_READ || (a->status != 200 && a->status != 404))
            continue;
        res->reads_checked++;
        const hist_op *m = newest_acked_before(&x, a->key, a->inv);
        if (a->status == 404) {
            if (m) {
                res->stale++;
                note(res, "a read found nothing after a write was acknowledged", a, m);
            }
            continue;
        }
        const hist_op *w = write_of(&x, a->key, a->value);
        if (w == NULL || w->inv > a->cmp) {
            res->phantom++;
            note(res,
                 w ? "a read returned a value whose write began after the read ended"
                   : "a read returned a value nobody wrote",
                 a, w);
            continue;
        }
        if (m == NULL)
            continue;
        if (acked(w) && vcmp(w, m) < 0) {
            res->stale++;
            note(res,
                 "stale read: its value's write was acknowledged older than a write "
                 "acknowledged before the read began",
                 a, m);
        } else if (!a->has_version || vcmp(a, m) < 0) {
            res->stale++;
            note(res,
                 "stale read: it returned a version older than a write acknowledged before it "
                 "began",
                 a, m);
        }
    }
    hist_index_free(&x);
}

static hist_op hw(int key, const char *value, int64_t inv, int64_t cmp, bool ok, uint64_t ts)
{
    hist_op o = {.kind = OP_WRITE,
                 .key = key,
                 .inv = inv,
                 .cmp = cmp,
                 .status = ok ? 204 : 503,
                 .has_version = ok,
                 .ts = ts,
                 .vnode = 1};
    snprintf(o.value, sizeof o.value, "%s", value);
    return o;
}

static hist_op hr(int key, const char *value, int64_t inv, int64_t cmp, uint64_t ts)
{
    hist_op o = {.kind = OP_READ,
                 .key = key,
                 .inv = inv,
                 .cmp = cmp,
                 .status = value ? 200 : 404,
                 .has_version = value != NULL,
                 .ts = ts,
                 .vnode = 1};
    snprintf(o.value, sizeof o.value, "%s", value ? value : "");
    return o;
}

Test(replication_skew, the_history_checker_finds_each_kind_of_anomaly)
{
    check_result res;
    /* A valid history: overlapping write and read may see either value; an unacknowledged
     * write may be seen once it began. */
    hist_op ok[] = {
        hw(0, "a", 0, 10, true, 100), hw(0, "b", 20, 40, true, 200),
        hr(0, "a", 25, 30, 100),      hr(0, "b", 25, 45, 200),
        hr(0, "b", 50, 60, 200),      hw(0, "c", 70, INT64_MAX, false, 0),
        hr(0, "c", 80, 90, 300),      hr(0, "b", 80, 90, 200),
        hr(1, NULL, 0, 5, 0),         hw(1, "x", 3, 8, true, 150),
    };
    check_history(ok, sizeof ok / sizeof ok[0], &res);
    cr_assert(res.stale == 0 && res.phantom == 0 && res.write_order == 0, "valid history: %s",
              res.first);
    cr_assert_eq(res.reads_checked, 6);
    cr_assert_eq(res.acked_writes, 3);

    /* A stale read: b was acknowledged (version 200) before the read began; it returns a. */
    hist_op stale[] = {hw(0, "a", 0, 10, true, 100), hw(0, "b", 20, 30, true, 200),
                       hr(0, "a", 40, 50, 100)};
    check_history(stale, 3, &res);
    cr_assert_eq(res.stale, 1, "the stale read was not reported");
    cr_assert(strstr(res.first, "stale read") != NULL, "%s", res.first);

    /* Stale by version only: the value is the newest write's but the version is older. */
    hist_op stale_v[] = {hw(0, "a", 0, 10, true, 100), hw(0, "b", 20, 30, true, 200),
                         hw(0, "c", 35, 60, true, 300), hr(0, "c", 40, 50, 150)};
    check_history(stale_v, 4, &res);
    cr_assert_eq(res.stale, 1, "a read returning a version older than an acked write");

    /* Nothing found after an acknowledged write. */
    hist_op gone[] = {hw(2, "a", 0, 10, true, 100), hr(2, NULL, 11, 12, 0)};
    check_history(gone, 2, &res);
    cr_assert_eq(res.stale, 1, "a 404 after an acknowledged write was not reported");

    /* A value from the future, and one nobody wrote. */
    hist_op future[] = {hr(0, "z", 0, 10, 100), hw(0, "z", 20, 30, true, 100),
                        hr(0, "nobody", 40, 50, 100)};
    check_history(future, 3, &res);
    cr_assert_eq(res.phantom, 2, "phantom reads not reported (%d)", res.phantom);

    /* A lost write: b began after a was acknowledged but got an older version. */
    hist_op lost[] = {hw(0, "a", 0, 10, true, 300), hw(0, "b", 20, 30, true, 200)};
    check_history(lost, 2, &res);
    cr_assert_eq(res.write_order, 1, "a write ordered before an earlier acknowledged one");
}

#define NCLIENTS 6
#define NHKEYS   3
#define RUN_MS   8000
#define MAX_OPS  3000 /* per client */

typedef struct client_ctx {
    int id;
    hist_op *ops;
    size_t n;
    int64_t stop_us;
} client_ctx;

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void run_op(th_kv_conn *conn, hist_op *o)
{
    char key[16];
    snprintf(key, sizeof key, "hist-%d", o->key);
    th_kv_resp r;
    o->inv = mono_us();
    if (o->kind == OP_WRITE)
        th_kv_conn_request(conn, "PUT", key, NULL, o->value, strlen(o->value), 5000, &r);
    else
        th_kv_conn_request(conn, "GET", key, NULL, NULL, 0, 5000, &r);
    int64_t done = mono_us();
    o->status = r.status;
    o->cmp = r.status == 0 ? INT64_MAX : done;
    o->has_version = r.has_version;
    o->ts = r.ts;
    o->vnode = r.node;
    if (o->kind == OP_READ && r.status == 200)
        snprintf(o->value, sizeof o->value, "%.*s", (int)r.body_len, r.body);
    th_kv_resp_free(&r);
}

static void *client_main(void *arg)
{
    client_ctx *cx = arg;
    th_kv_conn conn[3];
    for (int i = 0; i < 3; i++)
        th_kv_conn_init(&conn[i], g_c.node[i].port);
    unsigned seed = 7919u * (unsigned)(cx->id + 1);
    int seq = 0;
    while (cx->n < MAX_OPS && mono_us() < cx->stop_us) {
        hist_op *o = &cx->ops[cx->n++];
        memset(o, 0, sizeof *o);
        o->client = cx->id;
        o->key = rand_r(&seed) % NHKEYS;
        o->node = rand_r(&seed) % 3;
        o->kind = rand_r(&seed) % 2 ? OP_WRITE : OP_READ;
        if (o->kind == OP_WRITE)
            snprintf(o->value, sizeof o->value, "c%d-%d", cx->id, seq++);
        run_op(&conn[o->node], o);
    }
    for (int i = 0; i < 3; i++)
        th_kv_conn_close(&conn[i]);
    return NULL;
}

Test(replication_skew, concurrent_clients_never_read_older_than_an_acknowledged_write)
{
    start_skewed_cluster(3);
    static hist_op ops[NCLIENTS * MAX_OPS + 3 * NHKEYS];
    client_ctx cx[NCLIENTS];
    pthread_t th[NCLIENTS];
    int64_t stop = mono_us() + RUN_MS * 1000LL;
    for (int i = 0; i < NCLIENTS; i++) {
        cx[i] = (client_ctx){.id = i, .ops = &ops[(size_t)i * MAX_OPS], .n = 0, .stop_us = stop};
        cr_assert_eq(pthread_create(&th[i], NULL, client_main, &cx[i]), 0);
    }
    for (int i = 0; i < NCLIENTS; i++)
        pthread_join(th[i], NULL);
    /* Compact the history, then a final quorum read of every key through every node. */
    size_t n = 0;
    for (int i = 0; i < NCLIENTS; i++)
        for (size_t j = 0; j < cx[i].n; j++)
            ops[n++] = cx[i].ops[j];
    for (int node = 0; node < 3; node++) {
        th_kv_conn conn;
        th_kv_conn_init(&conn, g_c.node[node].port);
        for (int k = 0; k < NHKEYS; k++) {
            hist_op *o = &ops[n++];
            memset(o, 0, sizeof *o);
            *o = (hist_op){.kind = OP_READ, .key = k, .client = NCLIENTS, .node = node};
            run_op(&conn, o);
        }
        th_kv_conn_close(&conn);
    }

    int writes = 0, reads = 0, w_fail = 0, r_fail = 0, no_answer = 0;
    for (size_t i = 0; i < n; i++) {
        bool w = ops[i].kind == OP_WRITE;
        writes += w;
        reads += !w;
        if (ops[i].status == 0)
            no_answer++;
        else if (w && ops[i].status != 204)
            w_fail++;
        else if (!w && ops[i].status != 200 && ops[i].status != 404)
            r_fail++;
    }
    check_result res;
    check_history(ops, n, &res);
    cr_log_info("history: %d clients, %zu operations (%d writes, %d acknowledged, %d failed; %d "
                "reads, %d checked, %d failed; %d without an answer); stale %d, phantom %d, "
                "write order %d",
                NCLIENTS, n, writes, res.acked_writes, w_fail, reads, res.reads_checked, r_fail,
                no_answer, res.stale, res.phantom, res.write_order);
    if (res.stale || res.phantom || res.write_order)
        th_cluster_dump(&g_c, NULL, 30);
    cr_assert(res.stale == 0 && res.phantom == 0 && res.write_order == 0,
              "the history has %d stale reads, %d phantom reads, %d lost writes; first: %s",
              res.stale, res.phantom, res.write_order, res.first);
    /* Not vacuous: enough of both kinds answered to mean something. */
    cr_assert_geq(res.acked_writes, 100, "only %d writes acknowledged", res.acked_writes);
    cr_assert_geq(res.reads_checked, 100, "only %d reads answered", res.reads_checked);
    /* The final reads all answered (an idle cluster with every node alive). */
    for (size_t i = n - 3 * NHKEYS; i < n; i++)
        cr_assert_eq(ops[i].status, 200, "final read of hist-%d through n%d: status %d", ops[i].key,
                     ops[i].node, ops[i].status);
    stop_all_clean();
}
